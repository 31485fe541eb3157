//! `corekv-bench`: load generator (against corekv or etcd) and storage micro-benchmarks.
//!
//! Every subcommand lives in its own module; `main` only dispatches. Load subcommands share
//! `args` (flags), `target` (the server behind one connection type), `load` (the driver:
//! clients over connections over threads, pacing, timing) and `report` (histograms, text
//! and JSON output).

mod args;
mod backend;
mod checkperf;
mod kv;
mod lease;
mod load;
mod physical;
mod report;
mod streams;
mod target;
mod wal;
mod watch;

use std::process::ExitCode;

/// mimalloc, as in the server: with glibc's malloc, allocation and free took ~21% of the load
/// generator's CPU in `watch-latency` (Cap'n Proto messages, answer tables and futures per
/// event message), CPU the server it measures shares on a small machine
/// (`perf/watch-lease.md`, "The load generator's allocator"). Every target and every backend
/// engine runs under the same allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn usage() -> &'static str {
    "usage: corekv-bench <subcommand> [flags]   (corekv-bench <subcommand> --help for flags)\n\
     load (--target corekv|etcd): put, range, txn-put, txn-mixed, check-perf, first-read\n\
     watch and lease (--target corekv|etcd): watch, watch-latency, lease-keepalive\n\
     physical limits: loopback-rtt (and wal's raw row)\n\
     storage micro-benchmarks: backend, wal"
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(cmd) = args.next() else {
        eprintln!("{}", usage());
        return ExitCode::from(2);
    };
    let rest: Vec<String> = args.collect();
    let result = match cmd.as_str() {
        "put" | "range" | "txn-put" | "txn-mixed" => kv::run(&cmd, &rest),
        "check-perf" => checkperf::run(&rest),
        "first-read" => kv::first_read(&rest),
        "loopback-rtt" => physical::run(&rest),
        "backend" => backend::run(&rest),
        "wal" => wal::run(&rest),
        "watch" => watch::run_watch(&rest),
        "watch-latency" => watch::run_latency(&rest),
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
