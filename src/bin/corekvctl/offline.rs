//! Commands that work on a stopped member's data dir instead of a server: `defrag
//! --data-dir` and `check db --data-dir` (see `corekv::maintenance`).

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::json;

use crate::output::{human_bytes, Format};
use crate::{exit, write_stdout, Failure};

/// `defrag`: offline only, so `--data-dir` is required.
#[derive(Args, Debug)]
pub struct DefragArgs {
    /// Data dir of a stopped member (online defragmentation is not supported).
    #[arg(long, required = true)]
    data_dir: PathBuf,
}

/// `check ...`.
#[derive(Subcommand, Debug)]
pub enum CheckCommand {
    /// Check a stopped member's backend file page by page (reachability, freelist, key
    /// order, checksums); exit 1 and list the problems if any.
    Db {
        /// Data dir of a stopped member.
        #[arg(long, required = true)]
        data_dir: PathBuf,
    },
}

/// An offline command, parsed.
pub enum OfflineOp {
    /// `defrag --data-dir`.
    Defrag(PathBuf),
    /// `check db --data-dir`.
    CheckDb(PathBuf),
}

impl OfflineOp {
    /// `defrag` with its arguments.
    pub fn defrag(args: DefragArgs) -> OfflineOp {
        OfflineOp::Defrag(args.data_dir)
    }

    /// `check ...` with its arguments.
    pub fn check(cmd: CheckCommand) -> OfflineOp {
        match cmd {
            CheckCommand::Db { data_dir } => OfflineOp::CheckDb(data_dir),
        }
    }
}

/// Runs an offline command on the calling thread's executor and prints its result.
pub async fn run(op: OfflineOp, format: Format) -> Result<(), Failure> {
    match op {
        OfflineOp::Defrag(dir) => {
            let r = corekv::maintenance::defrag(&dir)
                .await
                .map_err(|e| Failure::new(exit::ERROR, format!("defrag {}: {e}", dir.display())))?;
            let text = match format {
                Format::Json => json!({
                    "dataDir": dir.display().to_string(),
                    "dbSizeBefore": r.size_before,
                    "dbSizeAfter": r.size_after,
                    "dbSizeInUseBefore": r.in_use_before,
                    "dbSizeInUseAfter": r.in_use_after,
                })
                .to_string(),
                _ => format!(
                    "Finished defragmenting data dir {}: db file {} -> {} (in use {} -> {})",
                    dir.display(),
                    human_bytes(r.size_before),
                    human_bytes(r.size_after),
                    human_bytes(r.in_use_before),
                    human_bytes(r.in_use_after)
                ),
            };
            write_stdout(format!("{text}\n").as_bytes())
        }
        OfflineOp::CheckDb(dir) => {
            let (path, report) = corekv::maintenance::check(&dir)
                .map_err(|e| Failure::new(exit::ERROR, format!("check db: {e}")))?;
            let text = match format {
                Format::Json => json!({
                    "path": path.display().to_string(),
                    "reachablePages": report.reachable_pages,
                    "freePages": report.free_pages,
                    "problems": report.problems,
                })
                .to_string(),
                _ if report.problems.is_empty() => format!(
                    "OK: {}: {} pages reachable, {} free",
                    path.display(),
                    report.reachable_pages,
                    report.free_pages
                ),
                _ => report.problems.join("\n"),
            };
            write_stdout(format!("{text}\n").as_bytes())?;
            if report.problems.is_empty() {
                Ok(())
            } else {
                Err(Failure::new(
                    exit::ERROR,
                    format!(
                        "check db: {} problem(s) in {}",
                        report.problems.len(),
                        path.display()
                    ),
                ))
            }
        }
    }
}
