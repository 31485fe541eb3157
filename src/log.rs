//! A minimal leveled logger to stderr: one line per event, prefixed with the level.
//!
//! The level is process-wide (set once by the binary from `--log-level`).

use std::sync::atomic::{AtomicU8, Ordering};

/// Severity of a log line; lower is more severe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Level {
    /// Something failed.
    Error = 0,
    /// Something is wrong but the server continues.
    Warn = 1,
    /// Start-up, shutdown, notable events.
    Info = 2,
    /// Everything else.
    Debug = 3,
}

static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);

/// Sets the most verbose level printed.
pub fn set_level(level: Level) {
    LEVEL.store(level as u8, Ordering::Relaxed);
}

/// Whether lines of `level` are printed.
pub fn enabled(level: Level) -> bool {
    level as u8 <= LEVEL.load(Ordering::Relaxed)
}

/// Prints a line at a level: `corekv::log!(Info, "listening on {}", addr)`.
#[macro_export]
macro_rules! log {
    ($level:ident, $($arg:tt)*) => {
        if $crate::log::enabled($crate::log::Level::$level) {
            eprintln!("{} {}", stringify!($level).to_lowercase(), format_args!($($arg)*));
        }
    };
}
