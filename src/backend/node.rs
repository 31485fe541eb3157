//! In-memory form of a branch or leaf page inside the write transaction, its page encoding,
//! and the choice of split points.
//!
//! The writer decodes a page into a [`Node`] when it first copies it (copy-on-write), edits
//! the node in memory, and encodes it again at publish.

use super::page::*;
use super::view::{self, Loc, View};
use super::{Error, Result, PAGE_SIZE};

/// A key held by a node. Keys longer than [`KEY_INLINE_MAX`] live in an overflow run owned by
/// this key (`ovf` is its head page; 0 for inline keys). A run is never shared: a separator
/// copied from a long leaf key gets its own run.
#[derive(Clone, Debug)]
pub(crate) struct Key {
    pub bytes: Vec<u8>,
    pub ovf: u64,
}

/// A value held by a leaf: inline bytes, or an overflow run `(head page, length)` it owns.
#[derive(Clone, Debug)]
pub(crate) enum Val {
    Inline(Vec<u8>),
    Ovf(u64, usize),
}

/// A decoded branch or leaf.
#[derive(Clone, Debug)]
pub(crate) enum Node {
    /// Entries in strictly increasing key order.
    Leaf(Vec<(Key, Val)>),
    /// `children.len() == keys.len() + 1`; `keys[i]` is the smallest key of `children[i+1]`'s
    /// subtree boundary: keys `>= keys[i]` go right of it.
    Branch { keys: Vec<Key>, children: Vec<u64> },
}

/// Smallest size (bytes of slots + cells) below which a non-root node is merged with, or
/// refilled from, a sibling.
pub(crate) const MIN_FILL: usize = USABLE / 4;

fn key_part(k: &Key) -> usize {
    if k.ovf != 0 {
        8
    } else {
        k.bytes.len()
    }
}

/// Bytes a leaf entry takes in a page (slot + cell).
pub(crate) fn leaf_entry_size(k: &Key, v: &Val) -> usize {
    let vp = match v {
        Val::Inline(b) => b.len(),
        Val::Ovf(..) => 8,
    };
    2 + LEAF_CELL_HDR + key_part(k) + vp
}

/// Bytes a branch entry with separator `k` takes (slot + cell); the first entry has no key.
pub(crate) fn branch_entry_size(k: Option<&Key>) -> usize {
    2 + BRANCH_CELL_HDR + k.map_or(0, key_part)
}

impl Node {
    /// Number of entries (leaf) or children (branch).
    pub(crate) fn len(&self) -> usize {
        match self {
            Node::Leaf(e) => e.len(),
            Node::Branch { children, .. } => children.len(),
        }
    }

    /// Per-entry sizes; for a branch, entry `i > 0` carries `keys[i-1]`.
    pub(crate) fn entry_sizes(&self) -> Vec<usize> {
        match self {
            Node::Leaf(e) => e.iter().map(|(k, v)| leaf_entry_size(k, v)).collect(),
            Node::Branch { keys, children } => (0..children.len())
                .map(|i| branch_entry_size(if i == 0 { None } else { Some(&keys[i - 1]) }))
                .collect(),
        }
    }

    /// Bytes of slots and cells when encoded.
    pub(crate) fn size(&self) -> usize {
        self.entry_sizes().iter().sum()
    }

    /// Encodes into a sealed page with id `id` written by `txid`.
    pub(crate) fn encode(&self, id: u64, txid: u64) -> Vec<u8> {
        let mut p = vec![0u8; PAGE_SIZE];
        let n = self.len();
        debug_assert!(n > 0 && n <= u16::MAX as usize);
        debug_assert!(self.size() <= USABLE, "node {id} overflows its page");
        let mut at = HDR + 2 * n;
        let put_key = |p: &mut [u8], at: usize, k: &Key| -> usize {
            if k.ovf != 0 {
                wr_u64(p, at, k.ovf);
                8
            } else {
                p[at..at + k.bytes.len()].copy_from_slice(&k.bytes);
                k.bytes.len()
            }
        };
        let kind = match self {
            Node::Leaf(entries) => {
                for (i, (k, v)) in entries.iter().enumerate() {
                    wr_u16(&mut p, HDR + 2 * i, at as u16);
                    let mut flags = 0;
                    if k.ovf != 0 {
                        flags |= FLAG_KEY_OVF;
                    }
                    let vlen = match v {
                        Val::Inline(b) => b.len(),
                        Val::Ovf(_, len) => {
                            flags |= FLAG_VAL_OVF;
                            *len
                        }
                    };
                    p[at] = flags;
                    wr_u16(&mut p, at + 1, k.bytes.len() as u16);
                    wr_u32(&mut p, at + 3, vlen as u32);
                    at += LEAF_CELL_HDR;
                    at += put_key(&mut p, at, k);
                    match v {
                        Val::Inline(b) => {
                            p[at..at + b.len()].copy_from_slice(b);
                            at += b.len();
                        }
                        Val::Ovf(pg, _) => {
                            wr_u64(&mut p, at, *pg);
                            at += 8;
                        }
                    }
                }
                KIND_LEAF
            }
            Node::Branch { keys, children } => {
                for (i, &c) in children.iter().enumerate() {
                    wr_u16(&mut p, HDR + 2 * i, at as u16);
                    wr_u64(&mut p, at, c);
                    let k = if i == 0 { None } else { Some(&keys[i - 1]) };
                    p[at + 8] = if k.is_some_and(|k| k.ovf != 0) {
                        FLAG_KEY_OVF
                    } else {
                        0
                    };
                    wr_u16(&mut p, at + 9, k.map_or(0, |k| k.bytes.len()) as u16);
                    at += BRANCH_CELL_HDR;
                    if let Some(k) = k {
                        at += put_key(&mut p, at, k);
                    }
                }
                KIND_BRANCH
            }
        };
        debug_assert!(at <= PAGE_SIZE);
        seal(&mut p, kind, n as u16, id, txid, 0);
        p
    }

    /// Decodes the clean page `pg` of the snapshot `v` (copying keys, not overflow values).
    pub(crate) fn decode(v: &View<'_>, pg: u64) -> Result<Node> {
        let (p, leaf) = view::node_page(v, pg)?;
        let n = view::count(p);
        let key = |loc: Loc<'_>| -> Result<Key> {
            Ok(match loc {
                Loc::Inline(b) => Key {
                    bytes: b.to_vec(),
                    ovf: 0,
                },
                Loc::Ovf(opg, len) => Key {
                    bytes: v.overflow(opg, len)?.to_vec(),
                    ovf: opg,
                },
            })
        };
        if leaf {
            let mut entries = Vec::with_capacity(n);
            for i in 0..n {
                let (k, val) = view::leaf_cell(p, i)?;
                let val = match val {
                    Loc::Inline(b) => Val::Inline(b.to_vec()),
                    Loc::Ovf(opg, len) => Val::Ovf(opg, len),
                };
                entries.push((key(k)?, val));
            }
            Ok(Node::Leaf(entries))
        } else {
            let mut keys = Vec::with_capacity(n.saturating_sub(1));
            let mut children = Vec::with_capacity(n);
            for i in 0..n {
                let (c, k) = view::branch_cell(p, i)?;
                children.push(c);
                if i > 0 {
                    keys.push(key(k)?);
                }
            }
            Ok(Node::Branch { keys, children })
        }
    }
}

/// Where to cut a node whose entries have `sizes` so every piece fits in `cap` bytes. Returns
/// the start index of every piece after the first (empty: it fits). `append` packs the left
/// pieces full (sequential inserts at the right edge then leave full pages behind); otherwise
/// a two-way cut balances the bytes.
pub(crate) fn split_points(sizes: &[usize], cap: usize, append: bool) -> Result<Vec<usize>> {
    let total: usize = sizes.iter().sum();
    if total <= cap {
        return Ok(Vec::new());
    }
    if let Some(&big) = sizes.iter().find(|&&s| s > cap) {
        return Err(Error::Corrupt(format!(
            "internal: a {big}-byte entry cannot fit a page of {cap} bytes"
        )));
    }
    if !append {
        let mut best: Option<(usize, usize)> = None;
        let mut left = 0;
        for (k, &s) in sizes.iter().enumerate().take(sizes.len() - 1) {
            left += s;
            let right = total - left;
            if left <= cap && right <= cap {
                let worst = left.max(right);
                if best.is_none_or(|(_, w)| worst < w) {
                    best = Some((k + 1, worst));
                }
            }
        }
        if let Some((k, _)) = best {
            return Ok(vec![k]);
        }
    }
    let mut points = Vec::new();
    let mut acc = 0;
    for (i, &s) in sizes.iter().enumerate() {
        if acc + s > cap {
            points.push(i);
            acc = 0;
        }
        acc += s;
    }
    Ok(points)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::view::Bitmap;

    fn k(b: &[u8]) -> Key {
        Key {
            bytes: b.to_vec(),
            ovf: 0,
        }
    }

    #[test]
    fn leaf_and_branch_roundtrip_through_a_page() {
        let bits = Bitmap::new(16).unwrap();
        let mut map = vec![0u8; 4 * PAGE_SIZE];
        let leaf = Node::Leaf(vec![
            (k(b"a"), Val::Inline(b"1".to_vec())),
            (k(b"bb"), Val::Ovf(3, 5000)),
            (
                Key {
                    bytes: vec![7; 600],
                    ovf: 3,
                },
                Val::Inline(vec![]),
            ),
        ]);
        map[2 * PAGE_SIZE..3 * PAGE_SIZE].copy_from_slice(&leaf.encode(2, 1));
        // Page 3: the overflow run of the long key.
        let mut run = vec![0u8; PAGE_SIZE];
        run[HDR..HDR + 600].fill(7);
        seal(&mut run, KIND_OVERFLOW, 0, 3, 1, 600);
        map[3 * PAGE_SIZE..].copy_from_slice(&run);
        let v = View::new(&map, 4, &bits);
        match Node::decode(&v, 2).unwrap() {
            Node::Leaf(e) => {
                assert_eq!(e.len(), 3);
                assert_eq!(e[1].0.bytes, b"bb");
                assert!(matches!(e[1].1, Val::Ovf(3, 5000)));
                assert_eq!((e[2].0.bytes.len(), e[2].0.ovf), (600, 3));
            }
            n => panic!("decoded {n:?}"),
        }
        let br = Node::Branch {
            keys: vec![k(b"m")],
            children: vec![5, 6],
        };
        map[2 * PAGE_SIZE..3 * PAGE_SIZE].copy_from_slice(&br.encode(2, 2));
        bits.clear(2, 1);
        let v = View::new(&map, 4, &bits);
        match Node::decode(&v, 2).unwrap() {
            Node::Branch { keys, children } => {
                assert_eq!(children, vec![5, 6]);
                assert_eq!(keys[0].bytes, b"m");
            }
            n => panic!("decoded {n:?}"),
        }
    }

    #[test]
    fn flipped_byte_is_reported_not_panicked() {
        let bits = Bitmap::new(16).unwrap();
        let mut map = vec![0u8; 3 * PAGE_SIZE];
        let leaf = Node::Leaf(vec![(k(b"a"), Val::Inline(b"1".to_vec()))]);
        map[2 * PAGE_SIZE..].copy_from_slice(&leaf.encode(2, 1));
        map[2 * PAGE_SIZE + 50] ^= 0x10;
        let v = View::new(&map, 3, &bits);
        let e = Node::decode(&v, 2).unwrap_err().to_string();
        assert!(e.contains("page 2") && e.contains("checksum"), "{e}");
    }

    #[test]
    fn split_points_fit_and_balance() {
        let sizes = vec![1000; 5];
        assert_eq!(split_points(&sizes, 4064, false).unwrap(), vec![2]);
        assert_eq!(split_points(&sizes, 4064, true).unwrap(), vec![4]);
        assert!(split_points(&[10, 10], 4064, false).unwrap().is_empty());
        // Needs three pieces.
        let sizes = vec![1500; 7];
        let pts = split_points(&sizes, 4064, false).unwrap();
        assert_eq!(pts, vec![2, 4, 6]);
        assert!(split_points(&[5000], 4064, false).is_err());
    }
}
