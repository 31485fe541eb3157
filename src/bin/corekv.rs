//! `corekv`: the server. Flags follow etcd's (`corekv --help`). SIGINT or SIGTERM shut it
//! down cleanly: committed writes are applied, the backend is synced, the WAL closed.

use std::process::ExitCode;

use clap::Parser;
use corekv::server::config::{Config, Flags, LogLevel};

/// mimalloc, not glibc's malloc: a server put allocates and frees dozens of small objects
/// (Cap'n Proto messages and answer tables, raft entries, apply buffers), and under 256
/// clients glibc's malloc/free (with its chunk consolidation) took ~15% of the raft shard.
/// mimalloc cut server CPU per put by 12% and raised throughput by 7-10%
/// (`perf/cpu_per_write.sh`, `perf/server.md`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (its position in mimalloc v3's `mi_option_t`, which the
/// -sys crate builds; the crate names no constant for it; a test checks it by its default).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long mimalloc keeps freed memory before giving it back to the kernel (its default is
/// 1 s). At 0, the watch fan-out's per-put buffers were returned and faulted back in on every
/// put (event p50 at 1,000 watchers 0.84 -> 1.27 ms); 100 ms is far above any hot path's reuse
/// interval and still returns a finished load's memory promptly.
const PURGE_DELAY_MS: std::ffi::c_long = 100;

/// Sets mimalloc's purge delay to [`PURGE_DELAY_MS`].
fn set_purge_delay() {
    // SAFETY: sets a plain integer option; mimalloc reads options at any time.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) }
}

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
    set_purge_delay();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purge_delay_option_is_the_one_with_a_1000_ms_default() {
        // SAFETY: reads a plain integer option.
        let default = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!(
            default, 1000,
            "option {MI_OPTION_PURGE_DELAY} is not purge_delay"
        );
        set_purge_delay();
        // SAFETY: as above.
        assert_eq!(
            unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) },
            PURGE_DELAY_MS
        );
    }
}
