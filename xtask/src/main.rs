//! `cargo run -p corekv-xtask -- capnp [--check]`: regenerates `src/generated/*_capnp.rs`
//! from `schema/*.capnp` with the `capnp` compiler (Debian packages `capnproto` and
//! `libcapnp-dev`, whose `/capnp/stream.capnp` the schema imports).
//!
//! The generated code is checked in so that a fresh machine builds without the compiler;
//! CI runs `--check`, which regenerates into a scratch directory and fails if the checked-in
//! files differ.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Schemas compiled into `src/generated/`, relative to the workspace root.
const SCHEMAS: &[&str] = &["schema/rpc.capnp", "schema/proposal.capnp"];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

fn generate(out_dir: &Path) -> Result<(), String> {
    let root = workspace_root();
    std::fs::create_dir_all(out_dir).map_err(|e| format!("create {}: {e}", out_dir.display()))?;
    let mut cmd = capnpc::CompilerCommand::new();
    cmd.src_prefix(root.join("schema"))
        .output_path(out_dir)
        .default_parent_module(vec!["generated".into()]);
    for schema in SCHEMAS {
        cmd.file(root.join(schema));
    }
    cmd.run()
        .map_err(|e| format!("capnp compile failed (is the `capnp` compiler installed?): {e}"))
}

fn generated_name(schema: &str) -> String {
    let stem = Path::new(schema)
        .file_stem()
        .and_then(|s| s.to_str())
        .expect("schema paths are valid UTF-8");
    format!("{stem}_capnp.rs")
}

fn run(args: &[String]) -> Result<(), String> {
    let checked_in = workspace_root().join("src/generated");
    match args {
        [cmd] if cmd == "capnp" => generate(&checked_in),
        [cmd, flag] if cmd == "capnp" && flag == "--check" => {
            let scratch = std::env::temp_dir().join(format!("corekv-capnp-{}", std::process::id()));
            generate(&scratch)?;
            let mut stale = Vec::new();
            for schema in SCHEMAS {
                let name = generated_name(schema);
                let fresh = std::fs::read(scratch.join(&name))
                    .map_err(|e| format!("read regenerated {name}: {e}"))?;
                let current = std::fs::read(checked_in.join(&name)).unwrap_or_default();
                if fresh != current {
                    stale.push(name);
                }
            }
            let _ = std::fs::remove_dir_all(&scratch);
            if stale.is_empty() {
                println!("generated Cap'n Proto code is fresh");
                Ok(())
            } else {
                Err(format!(
                    "src/generated is stale for {stale:?}: run `cargo run -p corekv-xtask -- capnp` and commit"
                ))
            }
        }
        _ => Err("usage: corekv-xtask capnp [--check]".into()),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("corekv-xtask: {e}");
            ExitCode::FAILURE
        }
    }
}
