//! Starts the real `corekv` binary on a free loopback port with a fresh (or given) data dir,
//! and stops it with SIGTERM (clean) or SIGKILL (crash).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to start listening.
pub const START_DEADLINE: Duration = Duration::from_secs(60);

/// A running `corekv` process.
pub struct ServerProcess {
    child: Option<Child>,
    /// Client address it listens on.
    pub addr: SocketAddr,
    /// Its data directory.
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl ServerProcess {
    /// Starts a server on a fresh temporary data dir.
    pub fn start(extra_args: &[&str]) -> ServerProcess {
        let tmp = tempfile::tempdir().expect("temp dir");
        let data_dir = tmp.path().join("data");
        let mut s = ServerProcess::start_in(&data_dir, extra_args);
        s._tmp = Some(tmp);
        s
    }

    /// Starts a server on `data_dir` (which may hold an earlier server's state).
    pub fn start_in(data_dir: &Path, extra_args: &[&str]) -> ServerProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_corekv"))
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen-client-urls", "127.0.0.1:0", "--log-level", "warn"])
            .args(extra_args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn corekv");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            while let Some(Ok(line)) = lines.next() {
                if let Some(rest) = line.split("listening for clients on ").nth(1) {
                    let addr = rest
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_string();
                    let _ = tx.send(addr);
                }
            }
        });
        let deadline = Instant::now() + START_DEADLINE;
        let addr = loop {
            if let Ok(addr) = rx.recv_timeout(Duration::from_millis(50)) {
                break addr.parse().expect("listen address");
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("corekv exited during start-up: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "corekv did not start listening within {START_DEADLINE:?}"
            );
        };
        ServerProcess {
            child: Some(child),
            addr,
            data_dir: data_dir.to_path_buf(),
            _tmp: None,
        }
    }

    /// Stops the server (SIGTERM, clean) and starts it again on the same data dir, which this
    /// value keeps owning. Panics if the clean stop fails.
    pub fn restart(&mut self, extra_args: &[&str]) {
        assert!(self.stop(), "clean shutdown before restart");
        self.start_again(extra_args);
    }

    /// Starts a new process on the same data dir after `stop` or `kill`.
    pub fn start_again(&mut self, extra_args: &[&str]) {
        assert!(
            self.child.is_none(),
            "the previous process is still running"
        );
        let mut fresh = ServerProcess::start_in(&self.data_dir, extra_args);
        self.child = fresh.child.take();
        self.addr = fresh.addr;
    }

    /// The endpoint string for clients.
    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGTERM, then wait for a clean exit; returns whether it exited successfully.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        child.wait().expect("wait corekv").success()
    }

    /// SIGKILL: a crash, with no chance to flush anything.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().expect("try_wait").is_none(),
            None => false,
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `f` with a client connected to `endpoint`, on a fresh glommio executor (the client is
/// bound to its thread).
pub fn with_client<T: Send + 'static>(
    endpoint: &str,
    f: impl AsyncFnOnce(corekv::client::Client) -> T + Send + 'static,
) -> T {
    let endpoint = endpoint.to_string();
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(move || async move {
            let client = corekv::client::Client::connect(
                &[endpoint],
                corekv::client::ClientOptions::default(),
                corekv::client::Glommio,
            )
            .await
            .expect("connect");
            f(client).await
        })
        .expect("executor")
        .join()
        .expect("client thread")
}
