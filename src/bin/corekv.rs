//! `corekv`: the server. Flags follow etcd's (`corekv --help`). SIGINT or SIGTERM shut it
//! down cleanly: committed writes are applied, the backend is synced, the WAL closed.

use std::process::ExitCode;

use clap::Parser;
use corekv::server::config::{Config, Flags, LogLevel};

/// Blocks SIGINT and SIGTERM in this thread (and every thread it starts later), so that
/// `wait_for_signal` can take them synchronously.
fn block_shutdown_signals() -> libc::sigset_t {
    // SAFETY: plain libc signal-mask calls on a zeroed, initialized sigset_t.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_for_signal(set: &libc::sigset_t) -> i32 {
    let mut sig: libc::c_int = 0;
    // SAFETY: `set` is an initialized signal set; sigwait writes the signal number.
    unsafe { libc::sigwait(set, &mut sig) };
    sig
}

fn main() -> ExitCode {
    let flags = Flags::parse();
    let config = match Config::from_flags(flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("corekv: {e}");
            return ExitCode::from(2);
        }
    };
    corekv::log::set_level(match config.log_level {
        LogLevel::Error => corekv::log::Level::Error,
        LogLevel::Warn => corekv::log::Level::Warn,
        LogLevel::Info => corekv::log::Level::Info,
        LogLevel::Debug => corekv::log::Level::Debug,
    });
    let signals = block_shutdown_signals();
    let shards = config.shards;
    let data_dir = config.data_dir.clone();
    let server = match corekv::server::start(config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("corekv: {e}");
            return ExitCode::FAILURE;
        }
    };
    for addr in &server.addrs {
        println!(
            "corekv {} listening for clients on {addr} ({shards} shards, data dir {})",
            env!("CARGO_PKG_VERSION"),
            data_dir.display()
        );
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let sig = wait_for_signal(&signals);
    corekv::log!(Info, "received signal {sig}, shutting down");
    match server.shutdown() {
        Ok(()) => {
            corekv::log!(Info, "stopped cleanly");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("corekv: shutdown: {e}");
            ExitCode::FAILURE
        }
    }
}
