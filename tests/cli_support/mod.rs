//! Runs the real `corekvctl` binary and collects its exit code and output, with a watchdog
//! so a hung client fails the test instead of hanging it.
#![allow(dead_code)]

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Longest a single `corekvctl` run may take before the test fails (generous: the machine
/// is shared; the client's own timeouts are far shorter).
pub const RUN_DEADLINE: Duration = Duration::from_secs(60);

/// What one run produced.
#[derive(Debug)]
pub struct Out {
    /// Exit code (-1 if killed by a signal).
    pub code: i32,
    /// Raw standard output.
    pub stdout: Vec<u8>,
    /// Standard error, lossily decoded.
    pub stderr: String,
}

impl Out {
    /// Standard output as text.
    pub fn text(&self) -> String {
        String::from_utf8(self.stdout.clone()).expect("utf-8 stdout")
    }

    /// Asserts a zero exit and returns stdout as text.
    pub fn ok(&self) -> String {
        assert_eq!(self.code, 0, "corekvctl failed: {self:?}");
        self.text()
    }

    /// Asserts exit code `code`, an empty stdout and an "Error: " message containing
    /// `needle` (case-insensitive) on stderr.
    pub fn fails(&self, code: i32, needle: &str) {
        assert_eq!(self.code, code, "exit code: {self:?}");
        assert!(
            self.stderr.starts_with("Error: ") || self.stderr.contains("\nError: "),
            "etcdctl-style error line expected: {self:?}"
        );
        assert!(
            self.stderr.to_lowercase().contains(&needle.to_lowercase()),
            "stderr should mention {needle:?}: {self:?}"
        );
    }
}

/// Runs `corekvctl args...` with `stdin` (none: an empty, closed stdin).
pub fn run(args: &[&str], stdin: Option<&[u8]>) -> Out {
    let mut child = Command::new(env!("CARGO_BIN_EXE_corekvctl"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn corekvctl");
    let mut input = child.stdin.take().expect("piped stdin");
    if let Some(bytes) = stdin {
        // A client that exits early closes the pipe; that is its business, not the test's.
        let _ = input.write_all(bytes);
    }
    drop(input);
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let output = match rx.recv_timeout(RUN_DEADLINE) {
        Ok(r) => r.expect("wait for corekvctl"),
        Err(_) => {
            // SAFETY: signalling our own child, which has not been reaped yet.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("corekvctl {args:?} did not finish within {RUN_DEADLINE:?}");
        }
    };
    Out {
        code: output.status.code().unwrap_or(-1),
        stdout: output.stdout,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A `corekvctl` bound to one endpoint.
pub struct Ctl {
    endpoints: String,
}

impl Ctl {
    /// Runs against `endpoints` (comma-separated).
    pub fn new(endpoints: &str) -> Ctl {
        Ctl {
            endpoints: format!("--endpoints={endpoints}"),
        }
    }

    /// `corekvctl --endpoints=.. args...`.
    pub fn run(&self, args: &[&str]) -> Out {
        self.run_with_stdin(args, None)
    }

    /// `corekvctl --endpoints=.. args...` with `stdin`.
    pub fn run_with_stdin(&self, args: &[&str], stdin: Option<&[u8]>) -> Out {
        let mut all = vec![self.endpoints.as_str()];
        all.extend_from_slice(args);
        run(&all, stdin)
    }
}
