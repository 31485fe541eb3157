//! Helpers for watch tests: receiving with deadlines, collecting a watcher's events.
#![allow(dead_code)]

use std::time::Duration;

use corekv::client::watch::{WatchResponse, WatchStream};
use corekv::client::{Client, ClientOptions, Glommio};
use futures::FutureExt;

/// How long a test waits for a watch response that must come.
pub const RECV_DEADLINE: Duration = Duration::from_secs(30);

/// A client on `endpoint` (call on a glommio executor).
pub async fn connect(endpoint: &str) -> Client {
    Client::connect(&[endpoint], ClientOptions::default(), Glommio)
        .await
        .expect("connect")
}

/// The next response, or None if none arrives within `d`; panics on a stream error or end.
pub async fn next_within(stream: &mut WatchStream, d: Duration) -> Option<WatchResponse> {
    futures::select_biased! {
        r = stream.next().fuse() => match r {
            Some(Ok(r)) => Some(r),
            Some(Err(e)) => panic!("watch stream error: {e}"),
            None => panic!("watch stream ended"),
        },
        _ = glommio::timer::sleep(d).fuse() => None,
    }
}

/// The next response; panics if none arrives within [`RECV_DEADLINE`].
pub async fn next(stream: &mut WatchStream) -> WatchResponse {
    next_within(stream, RECV_DEADLINE)
        .await
        .expect("a watch response within the deadline")
}

/// Reads responses until `done` says so (given everything received); panics at the deadline.
pub async fn until(
    stream: &mut WatchStream,
    mut done: impl FnMut(&[WatchResponse]) -> bool,
) -> Vec<WatchResponse> {
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + RECV_DEADLINE;
    while !done(&got) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match next_within(stream, left).await {
            Some(r) => got.push(r),
            None => panic!("deadline passed; received so far: {got:#?}"),
        }
    }
    got
}

/// Total events in `responses`.
pub fn event_count(responses: &[WatchResponse]) -> usize {
    responses.iter().map(|r| r.events.len()).sum()
}
