//! `corekv-bench wal`: storage micro-benchmark (filled in by the wal work).

/// Runs the benchmark with command-line `args`.
pub fn run(args: &[String]) -> Result<(), String> {
    let _ = args;
    Err("not built yet".into())
}
