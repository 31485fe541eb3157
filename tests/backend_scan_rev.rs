//! `TreeMut::scan_rev` (reverse scans inside the write transaction, used by MVCC's
//! latest-version lookups) against a BTreeMap, on trees with several levels, over committed
//! pages and over pages dirtied by the same transaction.

use std::collections::BTreeMap;
use std::ops::Bound;

use corekv::backend::{Backend, KeyOrder, Options};

fn rng(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn bound(state: &mut u64, keys: &[Vec<u8>]) -> Bound<Vec<u8>> {
    let k = keys[(rng(state) % keys.len() as u64) as usize].clone();
    match rng(state) % 4 {
        0 => Bound::Unbounded,
        1 => Bound::Included(k),
        2 => Bound::Excluded(k),
        _ => {
            let mut k = k;
            k.push(b'~'); // between stored keys
            Bound::Included(k)
        }
    }
}

fn as_slice(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match b {
        Bound::Unbounded => Bound::Unbounded,
        Bound::Included(k) => Bound::Included(k.as_slice()),
        Bound::Excluded(k) => Bound::Excluded(k.as_slice()),
    }
}

#[test]
fn scan_rev_matches_a_btreemap() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .make()
        .unwrap()
        .run(async move {
            let backend = Backend::open(&path, Options::default()).await.unwrap();
            let mut model = BTreeMap::new();
            let mut state = 0x9E37_79B9_7F4A_7C15u64;
            for round in 0..3 {
                let mut w = backend.begin_write().unwrap();
                {
                    let mut t = w.open_tree(b"t", KeyOrder::Bytewise).unwrap();
                    for _ in 0..3000 {
                        let k = format!("key{:06}", rng(&mut state) % 20_000).into_bytes();
                        let v = vec![round as u8; (rng(&mut state) % 300) as usize];
                        t.put(&k, &v).unwrap();
                        model.insert(k, v);
                    }
                    // Check inside the transaction (dirty pages) as well as after publish.
                    let keys: Vec<Vec<u8>> = model.keys().cloned().collect();
                    for _ in 0..300 {
                        let (lo, hi) = (bound(&mut state, &keys), bound(&mut state, &keys));
                        if let (
                            Bound::Included(a) | Bound::Excluded(a),
                            Bound::Included(b) | Bound::Excluded(b),
                        ) = (&lo, &hi)
                        {
                            if a > b {
                                continue; // BTreeMap panics on inverted ranges
                            }
                        }
                        let limit = 1 + (rng(&mut state) % 50) as usize;
                        let want: Vec<(Vec<u8>, Vec<u8>)> = model
                            .range::<Vec<u8>, _>((lo.clone(), hi.clone()))
                            .rev()
                            .take(limit)
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect();
                        let got = t.scan_rev((as_slice(&lo), as_slice(&hi)), limit).unwrap();
                        assert_eq!(got, want, "round {round}: {lo:?}..{hi:?} limit {limit}");
                    }
                }
                w.publish().await.unwrap();
            }
        });
}
