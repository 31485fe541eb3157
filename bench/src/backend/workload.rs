//! Deterministic keys and values shared by every engine, and the generated write batches.
//!
//! Every engine sees byte-identical data: key `i` and value `i` are pure functions of the seed
//! and `i`, so a read can pick a random index and rebuild the key without storing the key set,
//! and a value can be checked for belonging to its key by its first 8 bytes.

/// The splitmix64 finaliser: a fast bijective 64-bit mixer with good avalanche behaviour.
/// A bijection, so distinct inputs never collide.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// A splitmix64 generator: tiny, seedable, and the same on every platform, so every engine
/// gets the same sequence of random indices.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator whose sequence is fully determined by `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN);
        mix64(self.state)
    }

    /// A value in `0..n` (`n > 0`), by multiply-shift (bias below 2^-32 for our sizes).
    pub fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0, "below(0) has no valid result");
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// Fills `out` with 8-byte chunks of `mix64(base + j * GOLDEN)` (the tail chunk truncated).
fn fill_random(base: u64, out: &mut [u8]) {
    for (j, chunk) in out.chunks_mut(8).enumerate() {
        let word = mix64(base.wrapping_add((j as u64 + 1).wrapping_mul(GOLDEN)));
        chunk.copy_from_slice(&word.to_le_bytes()[..chunk.len()]);
    }
}

/// The shape of the data set: sizes and the seed every key and value derives from.
#[derive(Clone, Copy, Debug)]
pub struct DataShape {
    /// Bytes per key (at least [`MIN_KEY_SIZE`]).
    pub key_size: usize,
    /// Bytes per value (at least [`VALUE_TAG_SIZE`]).
    pub value_size: usize,
    /// Seed of keys and values.
    pub seed: u64,
}

/// Smallest key size: with 8 random bytes the chance of any two of 10^6 keys colliding is
/// about 3 * 10^-8, so every generated key is distinct in practice.
pub const MIN_KEY_SIZE: usize = 8;
/// Every value starts with its key index (u64 little-endian), so a read can verify it found
/// the value that belongs to the key it asked for.
pub const VALUE_TAG_SIZE: usize = 8;

impl DataShape {
    /// Writes key number `i` into `out` (`out.len() == key_size`).
    pub fn key_into(&self, i: u64, out: &mut [u8]) {
        debug_assert_eq!(out.len(), self.key_size);
        fill_random(mix64(self.seed ^ mix64(i)), out);
    }

    /// Key number `i`, allocated.
    #[cfg(test)]
    pub fn key(&self, i: u64) -> Vec<u8> {
        let mut k = vec![0; self.key_size];
        self.key_into(i, &mut k);
        k
    }

    /// Writes value number `i` into `out` (`out.len() == value_size`): the tag `i`, then
    /// random bytes (incompressible, like real payloads).
    pub fn value_into(&self, i: u64, out: &mut [u8]) {
        debug_assert_eq!(out.len(), self.value_size);
        out[..VALUE_TAG_SIZE].copy_from_slice(&i.to_le_bytes());
        fill_random(mix64(!self.seed ^ mix64(i)), &mut out[VALUE_TAG_SIZE..]);
    }

    /// The index tag of a stored value, if it is long enough to carry one.
    pub fn value_tag(value: &[u8]) -> Option<u64> {
        let tag: [u8; VALUE_TAG_SIZE] = value.get(..VALUE_TAG_SIZE)?.try_into().ok()?;
        Some(u64::from_le_bytes(tag))
    }

    /// Whether `value` is exactly value number `i` (length and tag; the random tail is not
    /// compared, to keep the check cheap inside timed loops).
    pub fn value_matches(&self, i: u64, value: &[u8]) -> bool {
        value.len() == self.value_size && Self::value_tag(value) == Some(i)
    }
}

/// Keys `first..first + len` and their values, generated before the timed section so the
/// engines are timed on storage work only. Flat buffers: one allocation each.
pub struct Batch {
    key_size: usize,
    value_size: usize,
    keys: Vec<u8>,
    values: Vec<u8>,
}

impl Batch {
    /// Generates `len` consecutive items starting at index `first`.
    pub fn generate(shape: &DataShape, first: u64, len: usize) -> Batch {
        let mut keys = vec![0; len * shape.key_size];
        let mut values = vec![0; len * shape.value_size];
        for (n, (k, v)) in keys
            .chunks_mut(shape.key_size)
            .zip(values.chunks_mut(shape.value_size))
            .enumerate()
        {
            shape.key_into(first + n as u64, k);
            shape.value_into(first + n as u64, v);
        }
        Batch {
            key_size: shape.key_size,
            value_size: shape.value_size,
            keys,
            values,
        }
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.keys.len() / self.key_size
    }

    /// The (key, value) pairs in generation order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.keys
            .chunks(self.key_size)
            .zip(self.values.chunks(self.value_size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values_are_deterministic_and_tagged() {
        let shape = DataShape {
            key_size: 16,
            value_size: 40,
            seed: 7,
        };
        let b = Batch::generate(&shape, 100, 50);
        assert_eq!(b.len(), 50);
        let mut seen = std::collections::HashSet::new();
        for (n, (k, v)) in b.iter().enumerate() {
            let i = 100 + n as u64;
            assert_eq!(k, shape.key(i).as_slice());
            assert!(shape.value_matches(i, v));
            assert!(!shape.value_matches(i + 1, v));
            assert!(seen.insert(k.to_vec()), "duplicate key {i}");
        }
        let other = DataShape { seed: 8, ..shape };
        assert_ne!(shape.key(1), other.key(1));
    }

    #[test]
    fn below_stays_in_range() {
        let mut rng = SplitMix64::new(1);
        for n in [1u64, 2, 3, 1000, u64::MAX] {
            for _ in 0..1000 {
                assert!(rng.below(n) < n);
            }
        }
    }
}
