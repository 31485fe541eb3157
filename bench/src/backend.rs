//! `corekv-bench backend`: storage micro-benchmark (filled in by the backend work).

/// Runs the benchmark with command-line `args`.
pub fn run(args: &[String]) -> Result<(), String> {
    let _ = args;
    Err("not built yet".into())
}
