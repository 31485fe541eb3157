//! Offline maintenance of a data dir: consistency check and defragmentation of the backend
//! file, for `corekvctl check db` and `corekvctl defrag`.
//!
//! Both need the server stopped: the backend file is locked while a server has it open, and
//! both refuse a locked file with an error that says so. Online defragmentation (etcd's
//! `Maintenance.Defragment` on a live member) is not built.

use std::path::{Path, PathBuf};

use crate::backend::{self, Backend, CheckReport};
use crate::raft::BACKEND_FILE;

/// Name of the temporary file a defragmentation writes next to the backend file. It is
/// only ever renamed over the backend file once complete, synced and checked, so a leftover
/// one (from an interrupted defragmentation) holds nothing that is not in the backend file.
pub const DEFRAG_TEMP_FILE: &str = "db.defrag";

/// What a defragmentation did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DefragReport {
    /// The backend file.
    pub path: PathBuf,
    /// Its size before, in bytes.
    pub size_before: u64,
    /// Its size after, in bytes (the live pages packed, rounded up to the file's growth step).
    pub size_after: u64,
    /// Bytes in use before (pages reachable or holding the freelist; the rest was free).
    pub in_use_before: u64,
    /// Bytes in use after.
    pub in_use_after: u64,
}

/// The backend file of `data_dir`, which must exist (an error says it is not a data dir).
fn backend_file(data_dir: &Path) -> Result<PathBuf, String> {
    let path = data_dir.join(BACKEND_FILE);
    match std::fs::metadata(&path) {
        Ok(m) if m.is_file() => Ok(path),
        Ok(_) => Err(format!("{} is not a file", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!(
            "{} has no backend file ({BACKEND_FILE}): not a corekv data dir",
            data_dir.display()
        )),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Names the cause when the file is locked: a server is running on the data dir.
fn describe(e: backend::Error) -> String {
    match e {
        backend::Error::Locked(p) => format!(
            "{} is in use (is a corekv server running on this data dir? stop it first: \
             offline maintenance only)",
            p.display()
        ),
        other => other.to_string(),
    }
}

/// Checks the backend file of `data_dir` page by page (see [`backend::check_file`]): every
/// page reachable once, freelist disjoint, keys ordered, checksums valid. The report lists
/// every problem; an `Err` means the check could not run (no data dir, file in use, both
/// meta pages unusable).
pub fn check(data_dir: &Path) -> Result<(PathBuf, CheckReport), String> {
    let path = backend_file(data_dir)?;
    let report = backend::check_file(&path).map_err(describe)?;
    Ok((path, report))
}

/// Rewrites the backend file of `data_dir` with only its live data, packed (etcd's offline
/// defragmentation): pages freed by deletes and compaction are given back to the file
/// system. Must run on the executor thread it is awaited on (the backend's writer is
/// thread-local).
///
/// Crash safety: the copy is written to [`DEFRAG_TEMP_FILE`], synced, and checked with
/// [`backend::check_file`] before it is renamed over the backend file and the directory is
/// synced; until that rename the old file is untouched, and the rename is atomic. If anything
/// fails (a damaged page in the source, no space), the partial copy is removed and the
/// backend file is unchanged. The backend file stays locked throughout, so a server cannot
/// start on it meanwhile. The WAL is not touched: the copy keeps the applied raft index, so
/// the next start replays the same entries it would have.
pub async fn defrag(data_dir: &Path) -> Result<DefragReport, String> {
    let path = backend_file(data_dir)?;
    // Nothing else runs on this executor: the copy's syncs may block it (the copy inherits
    // the source's options).
    let options = backend::Options {
        blocking_sync: true,
        ..backend::Options::default()
    };
    let source = Backend::open(&path, options).await.map_err(describe)?;
    let before = source.stats();
    let temp = data_dir.join(DEFRAG_TEMP_FILE);
    match std::fs::remove_file(&temp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("removing the leftover {}: {e}", temp.display())),
    }
    let packed = pack(&source, &temp).await;
    let (in_use_after, size_after) = match packed {
        Ok(sizes) => sizes,
        Err(e) => {
            // Best effort: the partial copy is garbage either way (see DEFRAG_TEMP_FILE).
            let _ = std::fs::remove_file(&temp);
            return Err(e);
        }
    };
    std::fs::rename(&temp, &path).map_err(|e| {
        format!(
            "renaming {} over {}: {e} (the backend file is unchanged)",
            temp.display(),
            path.display()
        )
    })?;
    std::fs::File::open(data_dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("syncing the directory {}: {e}", data_dir.display()))?;
    drop(source);
    Ok(DefragReport {
        path,
        size_before: before.file_size,
        size_after,
        in_use_before: before.in_use_bytes,
        in_use_after,
    })
}

/// Writes the packed copy of `source` to `temp` and checks it; returns its bytes in use and
/// its file size.
async fn pack(source: &Backend, temp: &Path) -> Result<(u64, u64), String> {
    source
        .compact_into(temp)
        .await
        .map_err(|e| format!("writing the packed copy {}: {e}", temp.display()))?;
    let report = backend::check_file(temp)
        .map_err(|e| format!("checking the packed copy {}: {e}", temp.display()))?;
    if let Some(first) = report.problems.first() {
        return Err(format!(
            "the packed copy {} failed its check ({} problems, first: {first})",
            temp.display(),
            report.problems.len(),
        ));
    }
    let size = std::fs::metadata(temp)
        .map_err(|e| format!("{}: {e}", temp.display()))?
        .len();
    Ok((report.reachable_pages * backend::PAGE_SIZE as u64, size))
}
