//! `corekv-bench`: load generator and storage micro-benchmarks for corekv.
//!
//! Subcommands are dispatched to one module each so that every layer's benchmark lives
//! next to the others but is written independently.

mod backend;
mod lease;
mod server;
mod wal;
mod watch;

use std::process::ExitCode;

fn usage() -> &'static str {
    "usage: corekv-bench <put|range|backend|wal|watch-latency|lease-keepalive> [options]   (corekv-bench <cmd> --help for options)"
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(cmd) = args.next() else {
        eprintln!("{}", usage());
        return ExitCode::from(2);
    };
    let rest: Vec<String> = args.collect();
    let result = match cmd.as_str() {
        "put" | "range" => server::run(&cmd, &rest),
        "backend" => backend::run(&rest),
        "wal" => wal::run(&rest),
        "watch-latency" => watch::run(&rest),
        "lease-keepalive" => lease::run(&rest),
        "-h" | "--help" | "help" => {
            println!("{}", usage());
            Ok(())
        }
        other => Err(format!("unknown subcommand {other:?}\n{}", usage())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("corekv-bench: {e}");
            ExitCode::from(2)
        }
    }
}
