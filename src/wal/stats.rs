//! WAL counters and dependency-free power-of-two histograms.

/// Number of buckets: bucket 0 holds the value 0, bucket `i` (1..=64) holds values in
/// `[2^(i-1), 2^i)`, so every `u64` has a bucket.
pub const HISTOGRAM_BUCKETS: usize = 65;

/// A histogram with power-of-two buckets: fixed size, O(1) record, no allocation. Quantiles are
/// reported as the upper bound of the bucket that holds them (within a factor of two).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pow2Histogram {
    buckets: [u64; HISTOGRAM_BUCKETS],
    count: u64,
    sum: u128,
    max: u64,
}

impl Default for Pow2Histogram {
    fn default() -> Self {
        Self {
            buckets: [0; HISTOGRAM_BUCKETS],
            count: 0,
            sum: 0,
            max: 0,
        }
    }
}

impl Pow2Histogram {
    /// Adds one sample.
    #[inline]
    pub fn record(&mut self, v: u64) {
        let b = (u64::BITS - v.leading_zeros()) as usize;
        debug_assert!(b < HISTOGRAM_BUCKETS);
        self.buckets[b] += 1;
        self.count += 1;
        self.sum += v as u128;
        self.max = self.max.max(v);
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Largest sample (exact).
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Mean of all samples (exact), 0 when empty.
    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum as f64 / self.count as f64
        }
    }

    /// Upper bound of the bucket holding quantile `q` (0.0..=1.0), capped at the exact max;
    /// 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let upper = if i == 0 {
                    0
                } else if i == 64 {
                    u64::MAX
                } else {
                    (1u64 << i) - 1
                };
                return upper.min(self.max);
            }
        }
        self.max
    }

    /// Non-empty buckets as `(inclusive lower bound, count)`.
    pub fn buckets(&self) -> Vec<(u64, u64)> {
        self.buckets
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .map(|(i, &n)| (if i == 0 { 0 } else { 1u64 << (i - 1) }, n))
            .collect()
    }
}

/// Cumulative WAL counters since [`super::Wal::open`]. A snapshot is returned by
/// [`super::Wal::stats`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WalStats {
    /// Records made durable (including the state records repeated at segment starts).
    pub records: u64,
    /// Batches made durable.
    pub batches: u64,
    /// Record bytes made durable (framing included, block padding and rewrites excluded).
    pub bytes: u64,
    /// Bytes handed to `write` (whole blocks, including rewrites of the partial last block).
    pub bytes_written: u64,
    /// `fdatasync` calls on segment files by the append path (one per group).
    pub syncs: u64,
    /// Segment rollovers.
    pub rollovers: u64,
    /// Segments prepared (preallocated) in the background since open.
    pub segments_prepared: u64,
    /// Rollovers that had to wait for the background preparation to finish (the log filled a
    /// segment faster than the next one could be zero-filled).
    pub rollovers_waited_for_prepare: u64,
    /// Records per `fdatasync` (group size).
    pub records_per_sync: Pow2Histogram,
    /// Latency of the group `fdatasync` in microseconds.
    pub sync_latency_us: Pow2Histogram,
    /// Latency of the group `write` in microseconds.
    pub write_latency_us: Pow2Histogram,
    /// Time appends were held by each rollover, in microseconds: waiting for the background
    /// preparation if it had not finished, plus the rename and directory fsync.
    pub rollover_latency_us: Pow2Histogram,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_bucket_upper_bounds() {
        let mut h = Pow2Histogram::default();
        assert_eq!(h.quantile(0.5), 0);
        for v in 1..=100u64 {
            h.record(v);
        }
        h.record(0);
        assert_eq!(h.count(), 101);
        assert_eq!(h.max(), 100);
        // median 50 lies in [32, 64)
        assert_eq!(h.quantile(0.5), 63);
        assert_eq!(h.quantile(1.0), 100);
        assert_eq!(h.quantile(0.0), 0);
        h.record(u64::MAX);
        assert_eq!(h.quantile(1.0), u64::MAX);
        assert_eq!(h.buckets()[0], (0, 1));
    }
}
