//! Recovery: torn tails at every byte of the last two records, mid-log corruption (clear
//! error naming file and offset; repair keeps the prefix), release.

mod wal_support;

use std::path::{Path, PathBuf};

use corekv::wal::{Options, Record, SegmentSummary, WalError};
use wal_support::{entry, open_collect, run_fresh, small_opts, tempdir};

/// Encoded size of an entry with `len` data bytes (mirrors FORMAT.md: 16-byte header,
/// 16-byte index+term, data, zero padding to 8).
fn entry_encoded_len(len: usize) -> u64 {
    ((16 + 16 + len).div_ceil(8) * 8) as u64
}

const HEADER_BLOCK: u64 = 4096;

/// Writes `n` single-record batches (one write each) and returns (records, offsets, path of
/// the only segment).
async fn build_log(dir: &Path, opts: &Options, n: u64) -> (Vec<Record>, Vec<(u64, u64)>, PathBuf) {
    let (wal, got, _) = open_collect(dir, opts.clone()).await.unwrap();
    assert!(got.is_empty());
    let mut recs = Vec::new();
    let mut spans = Vec::new();
    let mut off = HEADER_BLOCK;
    for i in 1..=n {
        let len = 5 + (i as usize * 13) % 40;
        let r = entry(i, len);
        wal.append(vec![r.clone()]).await.unwrap();
        let end = off + entry_encoded_len(len);
        spans.push((off, end));
        recs.push(r);
        off = end;
    }
    let segs = wal.segments();
    assert_eq!(segs.len(), 1);
    wal.close().await;
    (recs, spans, segs[0].path.clone())
}

#[derive(Debug, Clone, Copy)]
enum Damage {
    Truncate(u64),
    Zero(u64),
    Flip(u64),
}

fn apply(pristine: &[u8], d: Damage) -> Vec<u8> {
    let mut b = pristine.to_vec();
    match d {
        Damage::Truncate(t) => b.truncate(t as usize),
        Damage::Zero(p) => b[p as usize] = 0,
        Damage::Flip(p) => b[p as usize] ^= 0x5a,
    }
    b
}

/// Is the record spanning `[s, e)` unchanged in `damaged` (bytes past its end read as zero)?
fn intact(pristine: &[u8], damaged: &[u8], (s, e): (u64, u64)) -> bool {
    (s..e).all(|i| damaged.get(i as usize).copied().unwrap_or(0) == pristine[i as usize])
}

#[test]
fn torn_and_damaged_tails_keep_exactly_the_intact_prefix() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run_fresh(move || async move {
        let opts = small_opts(64 << 10);
        let (recs, spans, seg) = build_log(&path, &opts, 10).await;
        let pristine = std::fs::read(&seg).unwrap();
        let region = spans[spans.len() - 2].0..spans[spans.len() - 1].1;
        let mut cases = Vec::new();
        for t in region.clone() {
            cases.push(Damage::Truncate(t));
            cases.push(Damage::Zero(t));
            cases.push(Damage::Flip(t));
        }
        cases.push(Damage::Truncate(region.end));
        let (mut ok_cases, mut err_cases) = (0, 0);
        for (ci, &d) in cases.iter().enumerate() {
            let damaged = apply(&pristine, d);
            std::fs::write(&seg, &damaged).unwrap();
            let k = spans
                .iter()
                .position(|&sp| !intact(&pristine, &damaged, sp))
                .unwrap_or(spans.len());
            let later_intact = spans[k.min(spans.len())..]
                .iter()
                .skip(1)
                .any(|&sp| intact(&pristine, &damaged, sp));
            let res = open_collect(&path, opts.clone()).await;
            if k < spans.len() && later_intact {
                // Damage followed by a later acknowledged write: corruption, named precisely.
                match res {
                    Err(WalError::Corrupt {
                        path: p, offset, ..
                    }) => {
                        assert_eq!(p, seg, "{d:?}");
                        assert_eq!(offset, spans[k].0, "{d:?}");
                    }
                    Err(e) => panic!("{d:?}: expected Corrupt, got {e}"),
                    Ok((_, got, _)) => panic!("{d:?}: expected Corrupt, got {} records", got.len()),
                }
                err_cases += 1;
                // The repair option keeps the intact prefix.
                let repair = Options {
                    repair_truncate_corrupt_tail: true,
                    ..opts.clone()
                };
                let (wal, got, info) = open_collect(&path, repair).await.unwrap();
                assert_eq!(got, recs[..k].to_vec(), "{d:?}");
                assert_eq!(info.repaired.as_ref().map(|r| r.1), Some(spans[k].0));
                wal.close().await;
            } else {
                let (wal, got, info) = res.unwrap_or_else(|e| panic!("{d:?}: {e}"));
                assert_eq!(got, recs[..k].to_vec(), "{d:?}");
                let leftover = k < spans.len()
                    && (spans[k].0..spans[k].1)
                        .any(|i| damaged.get(i as usize).is_some_and(|&x| x != 0));
                if leftover {
                    // Remains of the torn record were zeroed.
                    assert!(info.tail_bytes_zeroed > 0, "{d:?}: {info:?}");
                }
                ok_cases += 1;
                if ci % 5 == 0 {
                    // The repaired log accepts appends and reopens cleanly.
                    wal.append(vec![entry(1000, 7)]).await.unwrap();
                    wal.close().await;
                    drop(wal);
                    let (wal, got2, info2) = open_collect(&path, opts.clone()).await.unwrap();
                    let mut want = recs[..k].to_vec();
                    want.push(entry(1000, 7));
                    assert_eq!(got2, want, "{d:?}");
                    assert_eq!(info2.tail_bytes_zeroed, 0, "{d:?}");
                    wal.close().await;
                } else {
                    wal.close().await;
                }
            }
            // Back to exactly one pristine segment for the next case.
            for e in std::fs::read_dir(seg.parent().unwrap()).unwrap() {
                let p = e.unwrap().path();
                if p != seg && p.extension().is_some_and(|x| x == "wal") {
                    std::fs::remove_file(p).unwrap();
                }
            }
        }
        assert!(ok_cases > 100 && err_cases > 10, "{ok_cases} {err_cases}");
    });
}

#[test]
fn mid_log_corruption_is_a_clear_error_and_repair_keeps_the_prefix() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run_fresh(move || async move {
        let opts = small_opts(64 << 10);
        let (wal, _, _) = open_collect(&path, opts.clone()).await.unwrap();
        let mut recs = Vec::new();
        for i in 1..=60u64 {
            let r = entry(i, 3000);
            wal.append(vec![r.clone()]).await.unwrap();
            recs.push(r);
        }
        let segs = wal.segments();
        assert!(segs.len() >= 3, "{segs:?}");
        wal.close().await;
        drop(wal);
        let first = segs[0].path.clone();
        let pristine = std::fs::read(&first).unwrap();
        let rec_len = entry_encoded_len(3000);
        let in_first = (pristine.len() as u64 - HEADER_BLOCK) / rec_len;
        assert!(in_first >= 3);

        // (a) A flipped byte inside the third record of the first segment.
        let bad_off = HEADER_BLOCK + 2 * rec_len;
        let mut b = pristine.clone();
        b[(bad_off + 100) as usize] ^= 1;
        std::fs::write(&first, &b).unwrap();
        let err = open_collect(&path, opts.clone())
            .await
            .err()
            .expect("must refuse");
        match &err {
            WalError::Corrupt {
                path: p, offset, ..
            } => {
                assert_eq!(p, &first);
                assert_eq!(*offset, bad_off);
            }
            e => panic!("expected Corrupt, got {e}"),
        }
        let msg = err.to_string();
        assert!(msg.contains(&first.display().to_string()) && msg.contains(&bad_off.to_string()));

        // (b) A whole block of acknowledged records zeroed: must not look like a clean end.
        let mut b = pristine.clone();
        let blk = (bad_off / 4096 + 1) * 4096;
        b[blk as usize..blk as usize + 4096].fill(0);
        std::fs::write(&first, &b).unwrap();
        match open_collect(&path, opts.clone()).await {
            Err(WalError::Corrupt { path: p, .. }) => assert_eq!(p, first),
            Err(e) => panic!("expected Corrupt, got {e}"),
            Ok((_, got, _)) => panic!("zeroed block silently accepted ({} records)", got.len()),
        }

        // (c) Repair keeps exactly the prefix before the damage and deletes later segments.
        let mut b = pristine.clone();
        b[(bad_off + 100) as usize] ^= 1;
        std::fs::write(&first, &b).unwrap();
        let repair = Options {
            repair_truncate_corrupt_tail: true,
            ..opts.clone()
        };
        let (wal, got, info) = open_collect(&path, repair).await.unwrap();
        assert_eq!(got, recs[..2].to_vec());
        let (p, off, dropped) = info.repaired.clone().unwrap();
        assert_eq!((p, off), (first.clone(), bad_off));
        assert_eq!(dropped, segs.len() - 1);
        wal.append(vec![entry(3, 10)]).await.unwrap();
        wal.close().await;
        drop(wal);
        let (_wal, got, _) = open_collect(&path, opts).await.unwrap();
        let mut want = recs[..2].to_vec();
        want.push(entry(3, 10));
        assert_eq!(got, want);
    });
}

#[test]
fn missing_segment_is_reported() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run_fresh(move || async move {
        let opts = small_opts(64 << 10);
        let (wal, _, _) = open_collect(&path, opts.clone()).await.unwrap();
        for i in 1..=60u64 {
            wal.append(vec![entry(i, 3000)]).await.unwrap();
        }
        let segs = wal.segments();
        wal.close().await;
        drop(wal);
        std::fs::remove_file(&segs[1].path).unwrap();
        match open_collect(&path, opts).await {
            Err(WalError::Corrupt {
                path: p, reason, ..
            }) => {
                assert_eq!(p, segs[2].path);
                assert!(reason.contains("missing"), "{reason}");
            }
            Err(e) => panic!("expected Corrupt, got {e}"),
            Ok(_) => panic!("missing segment accepted"),
        }
    });
}

#[test]
fn release_deletes_exactly_the_segments_wholly_below_the_index() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run_fresh(move || async move {
        let opts = small_opts(64 << 10);
        let (wal, _, _) = open_collect(&path, opts.clone()).await.unwrap();
        let hs = Record::HardState {
            term: 7,
            vote: 2,
            commit: 5,
        };
        let meta = Record::Metadata {
            cluster_id: 11,
            member_id: 12,
        };
        wal.append(vec![meta.clone(), hs.clone()]).await.unwrap();
        for i in 1..=80u64 {
            wal.append(vec![entry(i, 3000)]).await.unwrap();
        }
        let segs = wal.segments();
        assert!(segs.len() >= 4, "{segs:?}");
        // Indexes are increasing: segment k holds (max of k-1, max of k].
        let target = segs[2].max_index.unwrap(); // everything in segs[0..2] is below it
        let deleted = wal.release(target).await.unwrap();
        assert_eq!(deleted, 2);
        let left = wal.segments();
        assert_eq!(left, segs[2..].to_vec());
        assert!(!segs[0].path.exists() && !segs[1].path.exists());
        assert!(segs[2].path.exists());
        // Never the active segment, even when everything is below the index.
        let n = wal.release(u64::MAX).await.unwrap();
        assert_eq!(n, left.len() - 1);
        assert_eq!(wal.segments().len(), 1);
        wal.append(vec![entry(81, 10)]).await.unwrap();
        wal.close().await;
        drop(wal);
        // Recovery after release: the remaining segment starts with the carried-over state.
        let (_wal, got, _) = open_collect(&path, opts).await.unwrap();
        assert!(got.contains(&hs) && got.contains(&meta), "{:?}", &got[..3]);
        assert_eq!(got.last(), Some(&entry(81, 10)));
        let first_entry = got.iter().find_map(|r| match r {
            Record::Entry { index, .. } => Some(*index),
            _ => None,
        });
        assert!(first_entry.unwrap() > target);
    });
}

/// Builds a log of 3000-byte entries spanning several segments; returns (records, segments).
async fn multi_segment_log(path: &Path, opts: &Options) -> (Vec<Record>, Vec<SegmentSummary>) {
    let (wal, _, _) = open_collect(path, opts.clone()).await.unwrap();
    let mut recs = Vec::new();
    for i in 1..=60u64 {
        let r = entry(i, 3000);
        wal.append(vec![r.clone()]).await.unwrap();
        recs.push(r);
    }
    let segs = wal.segments();
    assert!(segs.len() >= 3);
    wal.close().await;
    (recs, segs)
}

#[test]
fn lost_tail_of_a_sealed_segment_is_detected() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run_fresh(move || async move {
        let opts = small_opts(64 << 10);
        let (recs, segs) = multi_segment_log(&path, &opts).await;
        let first = segs[0].path.clone();
        let pristine = std::fs::read(&first).unwrap();
        let rec_len = entry_encoded_len(3000);
        let n_first = ((pristine.len() as u64 - HEADER_BLOCK) / rec_len) as usize;
        // Zero the last record of segment 1: it now ends cleanly one record early, which only
        // the next segment's segment-start record can reveal.
        let cut = HEADER_BLOCK + (n_first as u64 - 1) * rec_len;
        let mut b = pristine.clone();
        b[cut as usize..].fill(0);
        std::fs::write(&first, &b).unwrap();
        match open_collect(&path, opts.clone()).await {
            Err(WalError::Corrupt {
                path: p,
                offset,
                reason,
            }) => {
                assert_eq!((p, offset), (first.clone(), cut));
                assert!(reason.contains("missing"), "{reason}");
            }
            Err(e) => panic!("expected Corrupt, got {e}"),
            Ok((_, got, _)) => panic!("lost tail accepted ({} records)", got.len()),
        }
        // A truncated sealed segment is reported too.
        std::fs::write(&first, &pristine[..cut as usize]).unwrap();
        assert!(matches!(
            open_collect(&path, opts.clone()).await,
            Err(WalError::Corrupt { path: p, .. }) if p == first
        ));
        // Repair keeps segment 1's surviving records and drops the later segments.
        std::fs::write(&first, &b).unwrap();
        let repair = Options {
            repair_truncate_corrupt_tail: true,
            ..opts.clone()
        };
        let (wal, got, info) = open_collect(&path, repair).await.unwrap();
        assert_eq!(indexes(&got), indexes(&recs[..n_first - 1]));
        assert_eq!(got, recs[..n_first - 1].to_vec());
        assert_eq!(info.repaired, Some((first.clone(), cut, segs.len() - 1)));
        wal.close().await;
    });
}

#[test]
fn torn_first_write_of_a_new_segment_recovers_and_continues() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run_fresh(move || async move {
        let opts = small_opts(64 << 10);
        let (recs, segs) = multi_segment_log(&path, &opts).await;
        let last = segs.last().unwrap().path.clone();
        let pristine = std::fs::read(&last).unwrap();
        // Entries are 1..=60 in order: the last segment holds those above the previous max.
        let before = segs[segs.len() - 2].max_index.unwrap() as usize;
        // Leave only the first 100 bytes of the last segment's first write: a torn write that
        // never completed its fdatasync.
        let mut b = pristine.clone();
        b[HEADER_BLOCK as usize + 100..].fill(0);
        std::fs::write(&last, &b).unwrap();
        let (wal, got, info) = open_collect(&path, opts.clone()).await.unwrap();
        let keep = before;
        assert_eq!(indexes(&got), indexes(&recs[..keep]));
        assert_eq!(got, recs[..keep].to_vec());
        assert!(info.tail_bytes_zeroed > 0);
        // The fresh segment gets its segment-start record on the next write and verifies.
        wal.append(vec![entry(500, 10)]).await.unwrap();
        wal.close().await;
        drop(wal);
        let (_wal, got, info) = open_collect(&path, opts).await.unwrap();
        let mut want = recs[..keep].to_vec();
        want.push(entry(500, 10));
        assert_eq!(indexes(&got), indexes(&want));
        assert_eq!(got, want);
        assert_eq!(info.tail_bytes_zeroed, 0);
    });
}

/// Entry indexes, for readable assertion failures.
fn indexes(v: &[Record]) -> Vec<u64> {
    v.iter().filter_map(Record::index).collect()
}

#[test]
fn torn_multi_block_write_is_cut_whole_and_its_remains_zeroed() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run_fresh(move || async move {
        let opts = small_opts(256 << 10);
        let (wal, _, _) = open_collect(&path, opts.clone()).await.unwrap();
        let a: Vec<Record> = (1..=3).map(|i| entry(i, 20)).collect();
        wal.append(a.clone()).await.unwrap();
        // One batch of three ~3 KB records: a single write spanning several blocks.
        let b: Vec<Record> = (4..=6).map(|i| entry(i, 3000)).collect();
        wal.append(b.clone()).await.unwrap();
        let seg = wal.segments()[0].path.clone();
        wal.close().await;
        drop(wal);
        let a_end = HEADER_BLOCK + a.iter().map(|_| entry_encoded_len(20)).sum::<u64>();
        let b_second = a_end + entry_encoded_len(3000);
        // Lose one block inside the batch's second record, as if that part of the write never
        // reached the disk; the batch's first and third records survive.
        let mut bytes = std::fs::read(&seg).unwrap();
        let blk = (b_second / 4096 + 1) * 4096;
        assert!(blk + 4096 < b_second + entry_encoded_len(3000) + 4096);
        bytes[blk as usize..blk as usize + 4096].fill(0);
        std::fs::write(&seg, &bytes).unwrap();

        let (wal, got, info) = open_collect(&path, opts.clone()).await.unwrap();
        assert_eq!(got, a, "a torn batch must vanish whole");
        assert!(info.tail_bytes_zeroed > 0);
        let after = std::fs::read(&seg).unwrap();
        assert!(
            after[a_end as usize..].iter().all(|&x| x == 0),
            "remains of the torn write must be zeroed so they can never be mistaken for records"
        );
        let c = vec![entry(7, 5)];
        wal.append(c.clone()).await.unwrap();
        wal.close().await;
        drop(wal);
        let (_wal, got, info) = open_collect(&path, opts).await.unwrap();
        let mut want = a.clone();
        want.extend(c);
        assert_eq!(got, want);
        assert_eq!(info.tail_bytes_zeroed, 0);
    });
}

#[test]
fn torn_tail_before_an_unused_published_segment_is_still_a_torn_tail() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    run_fresh(move || async move {
        let opts = small_opts(64 << 10);
        let (wal, _, _) = open_collect(&path, opts.clone()).await.unwrap();
        let recs: Vec<Record> = (1..=5).map(|i| entry(i, 100)).collect();
        for r in &recs {
            wal.append(vec![r.clone()]).await.unwrap();
        }
        // Wait (bounded) until the next segment has been published ahead of need.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while wal.stats().segments_prepared == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "no background preparation"
            );
            glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
        }
        let active = wal.segments()[0].path.clone();
        wal.close().await;
        drop(wal);
        let wal_files = |p: &Path| {
            std::fs::read_dir(p.join("wal"))
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .path()
                        .extension()
                        .is_some_and(|x| x == "wal")
                })
                .count()
        };
        assert_eq!(wal_files(&path), 2, "published-ahead segment is on disk");
        // Tear the last record of the active segment.
        let mut b = std::fs::read(&active).unwrap();
        let last = HEADER_BLOCK + 4 * entry_encoded_len(100);
        b[last as usize + 40] ^= 0xff;
        std::fs::write(&active, &b).unwrap();
        let (wal, got, info) = open_collect(&path, opts.clone()).await.unwrap();
        assert_eq!(got, recs[..4].to_vec());
        assert!(info.tail_bytes_zeroed > 0);
        assert_eq!(wal.segments().len(), 1);
        wal.append(vec![entry(9, 1)]).await.unwrap();
        wal.close().await;
    });
}
