//! A failed write poisons the WAL: the group's appenders and every later append get an error
//! naming the cause; nothing is retried after a failed write (its durability is unknown).
//! The failure is real: the active segment is made immutable (FS_IMMUTABLE_FL), so the O_DIRECT
//! write fails with EPERM. Skipped (with a message) where the flag cannot be set (not root, or a
//! filesystem without it).

mod wal_support;

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use corekv::wal::{Record, WalError};
use wal_support::{entry, open_collect, run_fresh, small_opts, tempdir};

const FS_IMMUTABLE_FL: libc::c_long = 0x10;

fn set_immutable(p: &Path, on: bool) -> std::io::Result<()> {
    let f = std::fs::File::open(p)?;
    let mut flags: libc::c_long = 0;
    // SAFETY: FS_IOC_GETFLAGS/SETFLAGS take a pointer to a long; `f` outlives the calls.
    unsafe {
        if libc::ioctl(f.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if on {
            flags |= FS_IMMUTABLE_FL;
        } else {
            flags &= !FS_IMMUTABLE_FL;
        }
        if libc::ioctl(f.as_raw_fd(), libc::FS_IOC_SETFLAGS, &flags) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Clears the flag again even if the test panics, so the temp dir can be removed.
struct Unfreeze(PathBuf);
impl Drop for Unfreeze {
    fn drop(&mut self) {
        let _ = set_immutable(&self.0, false);
    }
}

#[test]
fn failed_write_fails_the_group_and_every_later_append() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run_fresh(move || async move {
        let opts = small_opts(64 << 10);
        let (wal, _, _) = open_collect(&path, opts.clone()).await.unwrap();
        wal.append(vec![entry(1, 10)]).await.unwrap();
        let seg = wal.segments()[0].path.clone();
        if let Err(e) = set_immutable(&seg, true) {
            eprintln!(
                "skipping: cannot set FS_IMMUTABLE_FL on {}: {e}",
                seg.display()
            );
            return;
        }
        let _guard = Unfreeze(seg.clone());
        let f1 = wal.append(vec![entry(2, 10)]);
        let f2 = wal.append(vec![entry(3, 10)]);
        for f in [f1, f2] {
            match f.await {
                Err(WalError::Failed(m)) => {
                    assert!(m.contains(&seg.display().to_string()), "{m}");
                }
                other => panic!("expected Failed, got {other:?}"),
            }
        }
        assert!(matches!(
            wal.append(vec![entry(4, 10)]).await,
            Err(WalError::Failed(_))
        ));
        wal.close().await;
        drop(wal);
        set_immutable(&seg, false).unwrap();
        // Only what was acknowledged is there.
        let (_wal, got, _) = open_collect(&path, opts).await.unwrap();
        assert_eq!(got, vec![entry(1, 10)] as Vec<Record>);
    });
}
