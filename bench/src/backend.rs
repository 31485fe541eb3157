//! `corekv-bench backend`: corekv's storage backend against LMDB (heed) and redb.
//!
//! Same run, same machine, same data, equal durability. Per engine and round, in a fresh
//! directory: load `--keys` keys, then durable write batches of each `--batches` size, a
//! full-table scan that checks the key count (untimed; also warms the mappings so no engine
//! pays first-touch page faults the others do not), point reads with many reads per read
//! transaction and with one transaction per read, and `--scan-len` range scans forward and
//! backward from random start keys. Engines run interleaved (the order rotates every round)
//! and the report shows per-phase medians over rounds, because the machine is noisy.
//!
//! Every engine runs on its own glommio executor thread (corekv's writer must; LMDB and redb
//! run there too so that all three share one harness). Every read is checked against the
//! value that belongs to its key, and every round cross-checks that the engines saw the same
//! scan results.

mod engines;
mod report;
mod workload;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use engines::{Corekv, Engine, Lmdb, Redb, WriteTimes, DEFAULT_MAP_SIZE, LMDB_MAX_KEY_SIZE};
use workload::{Batch, DataShape, SplitMix64, MIN_KEY_SIZE, VALUE_TAG_SIZE};

/// Upper limit of `--keys` (and of all keys written in one run): keeps a typo from filling
/// the disk.
pub const MAX_KEYS: u64 = 100_000_000;
/// Upper limit of one `--batches` entry and of `--load-batch`.
pub const MAX_BATCH: usize = 1_000_000;
/// Upper limit of `--value-size` (bytes).
pub const MAX_VALUE_SIZE: usize = 1 << 20;
/// Upper limit of `--reads`, `--scans` and `--puts`.
pub const MAX_OPS: u64 = 1_000_000_000;
/// Upper limit of `--scan-len`.
pub const MAX_SCAN_LEN: usize = 1_000_000;
/// Lower limit of `--map-size` (bytes).
pub const MIN_MAP_SIZE: u64 = 1 << 20;
/// Upper limit of `--map-size` (bytes): 1 TiB of address space.
pub const MAX_MAP_SIZE: u64 = 1 << 40;
/// Upper limit of `--rounds`.
pub const MAX_ROUNDS: usize = 100;
/// Upper limit of `--min-commits`.
pub const MAX_MIN_COMMITS: u64 = 1_000_000;
/// Largest latency the histograms resolve (1 hour, in ns); larger ones are clamped to it.
pub const MAX_LATENCY_NS: u64 = 3_600 * 1_000_000_000;
/// Point reads time one read in this many (the others run untimed) so that reading the clock
/// does not inflate sub-microsecond reads; the sample is uniform because every read is alike.
pub const READ_SAMPLE_EVERY: u64 = 8;

/// Which engines exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineKind {
    /// corekv's backend.
    Corekv,
    /// LMDB through heed.
    Lmdb,
    /// redb.
    Redb,
}

impl EngineKind {
    /// All engines, in report order.
    pub const ALL: [EngineKind; 3] = [EngineKind::Corekv, EngineKind::Lmdb, EngineKind::Redb];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Corekv => Corekv::NAME,
            EngineKind::Lmdb => Lmdb::NAME,
            EngineKind::Redb => Redb::NAME,
        }
    }

    fn parse(s: &str) -> Result<EngineKind, String> {
        Self::ALL
            .into_iter()
            .find(|e| e.name() == s)
            .ok_or_else(|| format!("unknown engine {s:?} (known: corekv, lmdb, redb)"))
    }
}

/// Everything one run is parameterised by (see [`usage`]).
#[derive(Clone, Debug)]
pub struct Config {
    /// Parent of the fresh per-engine directories.
    pub dir: PathBuf,
    /// Keys loaded before the measured phases; reads pick among them.
    pub keys: u64,
    /// Key and value sizes and the seed.
    pub shape: DataShape,
    /// Puts per durable commit, one write phase per entry.
    pub batches: Vec<usize>,
    /// Puts per write phase (more if `min_commits` commits need more).
    pub puts: u64,
    /// Fewest commits per write phase, so large batches still give a latency distribution.
    pub min_commits: u64,
    /// Puts per commit while loading.
    pub load_batch: usize,
    /// Point reads per read phase.
    pub reads: u64,
    /// Reads per read transaction in the batched read phase.
    pub reads_per_txn: u64,
    /// Scans per scan phase (each in its own read transaction).
    pub scans: u64,
    /// Entries per scan.
    pub scan_len: usize,
    /// Rounds; the report shows medians over rounds.
    pub rounds: usize,
    /// Engines, in report order.
    pub engines: Vec<EngineKind>,
    /// Address space corekv and LMDB reserve for their maps.
    pub map_size: u64,
    /// corekv's sync as blocking syscalls (`backend::Options::blocking_sync`), like LMDB's and
    /// redb's commits; false: through io_uring, as the server's raft shard runs it.
    pub corekv_blocking_sync: bool,
    /// Print JSON on stdout and the table on stderr.
    pub json: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            dir: std::env::temp_dir(),
            keys: 100_000,
            shape: DataShape {
                key_size: 16,
                value_size: 256,
                seed: 0x5eed_c0de,
            },
            batches: vec![1, 100, 10_000],
            puts: 1_000,
            min_commits: 10,
            load_batch: 10_000,
            reads: 200_000,
            reads_per_txn: 1_000,
            scans: 2_000,
            scan_len: 1_000,
            rounds: 3,
            engines: EngineKind::ALL.to_vec(),
            map_size: DEFAULT_MAP_SIZE,
            corekv_blocking_sync: true,
            json: false,
        }
    }
}

fn usage() -> String {
    let d = Config::default();
    format!(
        "usage: corekv-bench backend [options]\n\
         \n\
         Compares corekv's backend with LMDB (heed) and redb at equal durability.\n\
         Counts accept k/M suffixes (100k, 1M) and underscores.\n\
         \n\
         --dir DIR            parent of the fresh per-engine directories [{}]\n\
         --keys N             keys loaded before measuring; reads pick among them [{}]\n\
         --key-size B         key bytes, {MIN_KEY_SIZE}..={LMDB_MAX_KEY_SIZE} [{}]\n\
         --value-size B       value bytes, {VALUE_TAG_SIZE}..={MAX_VALUE_SIZE} [{}]\n\
         --batches A,B,..     puts per durable commit, one write phase each [1,100,10000]\n\
         --puts N             puts per write phase [{}]\n\
         --min-commits N      fewest commits per write phase [{}]\n\
         --load-batch N       puts per commit while loading [{}]\n\
         --reads N            point reads per read phase [{}]\n\
         --reads-per-txn N    reads per read txn in the batched read phase [{}]\n\
         --scans N            scans per scan phase (forward and reverse) [{}]\n\
         --scan-len N         entries per scan [{}]\n\
         --rounds N           rounds; the report shows medians [{}]\n\
         --engines A,B,..     engines to run [corekv,lmdb,redb]\n\
         --seed N             seed of keys, values and random choices [{}]\n\
         --map-size BYTES     address space corekv and LMDB reserve for their maps [{}]\n\
         --corekv-sync MODE   blocking: corekv's sync blocks its thread, as LMDB's and redb's\n\
                              commits do; ring: through io_uring, as in the server [blocking]\n\
         --json               print JSON on stdout (the table goes to stderr)\n",
        d.dir.display(),
        d.keys,
        d.shape.key_size,
        d.shape.value_size,
        d.puts,
        d.min_commits,
        d.load_batch,
        d.reads,
        d.reads_per_txn,
        d.scans,
        d.scan_len,
        d.rounds,
        d.shape.seed,
        d.map_size,
    )
}

/// Parses a count: digits with optional `_` separators and an optional k (10^3) or M (10^6)
/// suffix, within `min..=max`.
fn parse_count(flag: &str, s: &str, min: u64, max: u64) -> Result<u64, String> {
    let bad = || format!("{flag}: {s:?} is not a count (examples: 500, 100k, 1M, 1_000)");
    let cleaned: String = s.chars().filter(|&c| c != '_').collect();
    let (digits, mult) = match cleaned.as_bytes().last() {
        Some(b'k' | b'K') => (&cleaned[..cleaned.len() - 1], 1_000),
        Some(b'm' | b'M') => (&cleaned[..cleaned.len() - 1], 1_000_000),
        _ => (&cleaned[..], 1),
    };
    let n = digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(bad)?;
    if n < min || n > max {
        return Err(format!("{flag}: {n} is outside the limit {min}..={max}"));
    }
    Ok(n)
}

fn parse_usize(flag: &str, s: &str, min: usize, max: usize) -> Result<usize, String> {
    // usize is 64-bit on every platform we run on; the limits keep values far below that.
    parse_count(flag, s, min as u64, max as u64).map(|n| n as usize)
}

/// Parses the command line; `Ok(None)` means help was printed.
fn parse_args(args: &[String]) -> Result<Option<Config>, String> {
    let mut cfg = Config::default();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        if flag == "--help" || flag == "-h" {
            println!("{}", usage());
            return Ok(None);
        }
        if flag == "--json" {
            cfg.json = true;
            continue;
        }
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag {
            "--dir" => cfg.dir = PathBuf::from(value()?),
            "--keys" => cfg.keys = parse_count(flag, &value()?, 1, MAX_KEYS)?,
            "--key-size" => {
                cfg.shape.key_size = parse_usize(flag, &value()?, MIN_KEY_SIZE, LMDB_MAX_KEY_SIZE)?
            }
            "--value-size" => {
                cfg.shape.value_size = parse_usize(flag, &value()?, VALUE_TAG_SIZE, MAX_VALUE_SIZE)?
            }
            "--batches" => {
                cfg.batches = value()?
                    .split(',')
                    .map(|b| parse_usize(flag, b.trim(), 1, MAX_BATCH))
                    .collect::<Result<_, _>>()?
            }
            "--puts" => cfg.puts = parse_count(flag, &value()?, 0, MAX_OPS)?,
            "--min-commits" => cfg.min_commits = parse_count(flag, &value()?, 1, MAX_MIN_COMMITS)?,
            "--load-batch" => cfg.load_batch = parse_usize(flag, &value()?, 1, MAX_BATCH)?,
            "--reads" => cfg.reads = parse_count(flag, &value()?, 0, MAX_OPS)?,
            "--reads-per-txn" => cfg.reads_per_txn = parse_count(flag, &value()?, 1, MAX_OPS)?,
            "--scans" => cfg.scans = parse_count(flag, &value()?, 0, MAX_OPS)?,
            "--scan-len" => cfg.scan_len = parse_usize(flag, &value()?, 1, MAX_SCAN_LEN)?,
            "--rounds" => cfg.rounds = parse_usize(flag, &value()?, 1, MAX_ROUNDS)?,
            "--seed" => cfg.shape.seed = parse_count(flag, &value()?, 0, u64::MAX)?,
            "--map-size" => {
                cfg.map_size = parse_count(flag, &value()?, MIN_MAP_SIZE, MAX_MAP_SIZE)?;
                if !cfg.map_size.is_multiple_of(4096) {
                    return Err(format!(
                        "--map-size: {} is not a multiple of the 4096-byte page (LMDB needs it)",
                        cfg.map_size
                    ));
                }
            }
            "--corekv-sync" => {
                cfg.corekv_blocking_sync = match value()?.as_str() {
                    "blocking" => true,
                    "ring" => false,
                    other => {
                        return Err(format!(
                            "--corekv-sync: {other:?} is neither blocking nor ring"
                        ))
                    }
                }
            }
            "--engines" => {
                let mut engines = Vec::new();
                for name in value()?.split(',') {
                    let e = EngineKind::parse(name.trim())?;
                    if engines.contains(&e) {
                        return Err(format!("--engines: {name} listed twice"));
                    }
                    engines.push(e);
                }
                cfg.engines = engines;
            }
            other => return Err(format!("unknown option {other:?}\n{}", usage())),
        }
    }
    let written = cfg.keys
        + cfg
            .batches
            .iter()
            .map(|&b| write_plan(&cfg, b).1)
            .sum::<u64>();
    if written > MAX_KEYS {
        return Err(format!(
            "this run would write {written} keys, above the limit of {MAX_KEYS}; lower --keys, \
             --puts or --min-commits"
        ));
    }
    Ok(Some(cfg))
}

/// (commits, puts) of the write phase with `batch` puts per commit.
fn write_plan(cfg: &Config, batch: usize) -> (u64, u64) {
    let commits = cfg.puts.div_ceil(batch as u64).max(cfg.min_commits);
    (commits, commits * batch as u64)
}

/// Runs the benchmark with command-line `args`.
pub fn run(args: &[String]) -> Result<(), String> {
    let Some(cfg) = parse_args(args)? else {
        return Ok(());
    };
    let runs = run_all(&cfg)?;
    if cfg.json {
        // The table still goes to stderr, so one run gives both.
        eprintln!("{}", report::table(&cfg, &runs));
        println!("{}", report::json(&cfg, &runs));
    } else {
        println!("{}", report::table(&cfg, &runs));
    }
    Ok(())
}

/// What one phase of one engine in one round measured.
#[derive(Clone, Debug)]
pub struct PhaseResult {
    /// Phase name, the same for every engine.
    pub phase: String,
    /// Operations counted for ops/s: puts, reads or scans.
    pub ops: u64,
    /// Time spent inside the measured operations (data generation excluded).
    pub busy: Duration,
    /// Latency in ns: per durable commit (writes), per read (sampled) or per scan.
    pub latency: Histogram<u64>,
    /// Entries visited (scans) or values found (reads).
    pub entries: u64,
    /// Wrapping sum of the value tags seen: must agree between engines.
    pub checksum: u64,
    /// Write phases: durable commits made.
    pub commits: u64,
    /// Write phases: where the time of all commits went (sums).
    pub write_times: WriteTimes,
}

impl PhaseResult {
    fn new(phase: String) -> Result<PhaseResult, String> {
        Ok(PhaseResult {
            phase,
            ops: 0,
            busy: Duration::ZERO,
            latency: Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3)
                .map_err(|e| format!("histogram: {e}"))?,
            entries: 0,
            checksum: 0,
            commits: 0,
            write_times: WriteTimes::default(),
        })
    }

    fn record(&mut self, d: Duration) {
        // Fixed bounds: anything above MAX_LATENCY_NS is clamped (and would be obvious).
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.latency.saturating_record(ns.clamp(1, MAX_LATENCY_NS));
    }

    /// Operations per second over the busy time.
    pub fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.busy.as_secs_f64().max(1e-9)
    }
}

/// One engine's results in one round.
#[derive(Clone, Debug)]
pub struct EngineRun {
    /// Which engine.
    pub engine: EngineKind,
    /// Which round (0-based).
    pub round: usize,
    /// Phases in run order.
    pub phases: Vec<PhaseResult>,
    /// Disk space allocated by the engine's directory at the end (st_blocks).
    pub disk_bytes: u64,
    /// Keys the final full scan found (the data set size).
    pub final_keys: u64,
}

/// Runs every round; within a round every engine once, the order rotated by the round number.
pub fn run_all(cfg: &Config) -> Result<Vec<EngineRun>, String> {
    if cfg.engines.is_empty() {
        return Err("no engines selected".into());
    }
    let mut runs = Vec::new();
    for round in 0..cfg.rounds {
        let mut order = cfg.engines.clone();
        order.rotate_left(round % cfg.engines.len());
        let mut this_round = Vec::new();
        for engine in order {
            eprintln!("round {}/{}: {} ...", round + 1, cfg.rounds, engine.name());
            let run = run_in_fresh_dir(cfg, engine, round)?;
            for p in &run.phases {
                eprintln!(
                    "  {:<18} {:>12.0} ops/s  p50 {:>10}  p99 {:>10}",
                    p.phase,
                    p.ops_per_sec(),
                    report::fmt_ns(p.latency.value_at_quantile(0.5)),
                    report::fmt_ns(p.latency.value_at_quantile(0.99)),
                );
            }
            this_round.push(run);
        }
        cross_check(&this_round)?;
        runs.extend(this_round);
    }
    Ok(runs)
}

/// Fails if two engines of one round disagree on what the reads and scans returned.
fn cross_check(round: &[EngineRun]) -> Result<(), String> {
    let Some(first) = round.first() else {
        return Ok(());
    };
    for other in &round[1..] {
        if other.final_keys != first.final_keys {
            return Err(format!(
                "{} holds {} keys but {} holds {}",
                first.engine.name(),
                first.final_keys,
                other.engine.name(),
                other.final_keys
            ));
        }
        for (a, b) in first.phases.iter().zip(&other.phases) {
            debug_assert_eq!(a.phase, b.phase);
            if (a.entries, a.checksum) != (b.entries, b.checksum) {
                return Err(format!(
                    "phase {}: {} saw {} entries (checksum {:#x}) but {} saw {} (checksum {:#x})",
                    a.phase,
                    first.engine.name(),
                    a.entries,
                    a.checksum,
                    other.engine.name(),
                    b.entries,
                    b.checksum
                ));
            }
        }
    }
    Ok(())
}

/// Removes the per-engine directory when the run ends, also on error or panic.
struct DirGuard(PathBuf);

impl Drop for DirGuard {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            eprintln!("warning: could not remove {}: {e}", self.0.display());
        }
    }
}

/// Runs one engine in a new directory under `cfg.dir` on its own glommio executor thread.
fn run_in_fresh_dir(cfg: &Config, engine: EngineKind, round: usize) -> Result<EngineRun, String> {
    let dir = cfg.dir.join(format!(
        "corekv-bench-backend-{}-r{round}-{}",
        std::process::id(),
        engine.name()
    ));
    std::fs::create_dir(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let guard = DirGuard(dir);
    let cfg2 = cfg.clone();
    let dir2 = guard.0.clone();
    let handle = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .name(&format!("bench-{}", engine.name()))
        .spawn(move || async move {
            match engine {
                EngineKind::Corekv => run_engine::<Corekv>(&cfg2, &dir2, round).await,
                EngineKind::Lmdb => run_engine::<Lmdb>(&cfg2, &dir2, round).await,
                EngineKind::Redb => run_engine::<Redb>(&cfg2, &dir2, round).await,
            }
        })
        .map_err(|e| format!("{}: start executor: {e}", engine.name()))?;
    let run = handle
        .join()
        .map_err(|e| format!("{}: executor thread failed: {e:?}", engine.name()))??;
    drop(guard);
    Ok(run)
}

/// Disk space allocated by the regular files directly inside `dir`.
fn disk_usage(dir: &Path) -> Result<u64, String> {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let entries = std::fs::read_dir(dir).map_err(|e| format!("list {}: {e}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("list {}: {e}", dir.display()))?;
        let meta = entry
            .metadata()
            .map_err(|e| format!("stat {}: {e}", entry.path().display()))?;
        total += meta.blocks() * 512;
    }
    Ok(total)
}

/// Seeds of the random choices of each phase: the same for every engine.
const SEED_READS: u64 = 0x7265_6164;
const SEED_SCANS: u64 = 0x7363_616e;

/// Every phase of one engine, in order.
async fn run_engine<E: Engine>(
    cfg: &Config,
    dir: &Path,
    round: usize,
) -> Result<EngineRun, String> {
    let kind = EngineKind::parse(E::NAME)?;
    let mut engine = E::open(dir, cfg).await?;
    let mut phases = Vec::new();
    let mut next = 0u64; // index of the next key to write

    // Load.
    let mut load = PhaseResult::new(format!("load b={}", cfg.load_batch))?;
    while next < cfg.keys {
        let n = (cfg.keys - next).min(cfg.load_batch as u64) as usize;
        write_one(
            &mut engine,
            &mut load,
            &Batch::generate(&cfg.shape, next, n),
        )
        .await?;
        next += n as u64;
    }
    phases.push(load);

    // Durable write batches of new random keys into the loaded database.
    for &batch in &cfg.batches {
        let (commits, _) = write_plan(cfg, batch);
        let mut phase = PhaseResult::new(format!("put b={batch}"))?;
        for _ in 0..commits {
            write_one(
                &mut engine,
                &mut phase,
                &Batch::generate(&cfg.shape, next, batch),
            )
            .await?;
            next += batch as u64;
        }
        phases.push(phase);
    }

    // Untimed full scan: every key written must be there, and every mapping is warm after.
    let final_keys = engine.read(|view| {
        let mut tag_sum = 0u64;
        let n = E::scan(view, &[], usize::MAX, false, |_, v| {
            tag_sum = tag_sum.wrapping_add(DataShape::value_tag(v).unwrap_or(u64::MAX));
        })?;
        // Tags are 0..next, each once.
        let expected = (0..next).fold(0u64, |s, i| s.wrapping_add(i));
        if n as u64 != next || tag_sum != expected {
            return Err(format!(
                "{}: full scan found {n} entries (tag sum {tag_sum:#x}), expected {next} \
                 (tag sum {expected:#x})",
                E::NAME
            ));
        }
        Ok(n as u64)
    })?;

    if cfg.reads > 0 {
        phases.push(point_reads(&engine, cfg, cfg.reads_per_txn)?);
        if cfg.reads_per_txn > 1 {
            phases.push(point_reads(&engine, cfg, 1)?);
        }
    }
    if cfg.scans > 0 {
        phases.push(scans(&engine, cfg, false)?);
        phases.push(scans(&engine, cfg, true)?);
    }
    engine.close().await?;
    Ok(EngineRun {
        engine: kind,
        round,
        phases,
        disk_bytes: disk_usage(dir)?,
        final_keys,
    })
}

/// One durable commit of `batch`, timed.
async fn write_one<E: Engine>(
    engine: &mut E,
    phase: &mut PhaseResult,
    batch: &Batch,
) -> Result<(), String> {
    let start = Instant::now();
    let times = engine.write(batch).await?;
    phase.busy += start.elapsed();
    phase.ops += batch.len() as u64;
    phase.record(times.commit());
    phase.commits += 1;
    phase.write_times.apply += times.apply;
    phase.write_times.publish += times.publish;
    phase.write_times.sync += times.sync;
    Ok(())
}

/// `cfg.reads` reads of random loaded keys, `per_txn` reads per read transaction.
///
/// Keys are generated before each timed chunk of `cfg.reads_per_txn` reads; the chunk's wall
/// time is the busy time, and one read (with `per_txn == 1`: one whole transaction) in
/// [`READ_SAMPLE_EVERY`] is timed on its own for the latency distribution.
fn point_reads<E: Engine>(engine: &E, cfg: &Config, per_txn: u64) -> Result<PhaseResult, String> {
    let shape = cfg.shape;
    let name = if per_txn == 1 {
        "get 1/txn".to_string()
    } else {
        format!("get {per_txn}/txn")
    };
    let mut phase = PhaseResult::new(name)?;
    let mut rng = SplitMix64::new(shape.seed ^ SEED_READS);
    let chunk_len = cfg.reads_per_txn.min(cfg.reads) as usize;
    let mut idx = vec![0u64; chunk_len];
    let mut keys = vec![0u8; chunk_len * shape.key_size];
    let mut samples: Vec<Duration> = Vec::with_capacity(chunk_len);
    let mut missing: Option<u64> = None;
    let mut done = 0u64;
    while done < cfg.reads {
        let n = (cfg.reads - done).min(chunk_len as u64) as usize;
        for (i, k) in idx[..n].iter_mut().zip(keys.chunks_mut(shape.key_size)) {
            *i = rng.below(cfg.keys);
            shape.key_into(*i, k);
        }
        let items = idx[..n].iter().zip(keys.chunks(shape.key_size));
        samples.clear();
        let mut found = 0u64;
        let mut tag_sum = 0u64;
        let mut tally = |i: u64, ok: bool| {
            if ok {
                found += 1;
                tag_sum = tag_sum.wrapping_add(i);
            } else if missing.is_none() {
                missing = Some(i);
            }
        };
        let check = |i: u64| move |v: Option<&[u8]>| v.is_some_and(|v| shape.value_matches(i, v));
        let start = Instant::now();
        if per_txn == 1 {
            for (j, (&i, key)) in items.enumerate() {
                let t0 = (done + j as u64)
                    .is_multiple_of(READ_SAMPLE_EVERY)
                    .then(Instant::now);
                let ok = engine.read(|view| E::get(view, key, check(i)))?;
                if let Some(t0) = t0 {
                    samples.push(t0.elapsed());
                }
                tally(i, ok);
            }
        } else {
            // `chunk_len == per_txn` here: the whole chunk is one read transaction.
            engine.read(|view| {
                for (j, (&i, key)) in items.enumerate() {
                    let t0 = (done + j as u64)
                        .is_multiple_of(READ_SAMPLE_EVERY)
                        .then(Instant::now);
                    let ok = E::get(view, key, check(i))?;
                    if let Some(t0) = t0 {
                        samples.push(t0.elapsed());
                    }
                    tally(i, ok);
                }
                Ok(())
            })?;
        }
        phase.busy += start.elapsed();
        for &s in &samples {
            phase.record(s);
        }
        phase.ops += n as u64;
        phase.entries += found;
        phase.checksum = phase.checksum.wrapping_add(tag_sum);
        done += n as u64;
    }
    if let Some(i) = missing {
        return Err(format!(
            "{}: {}: {} of {} reads did not return their value (first: key #{i})",
            E::NAME,
            phase.phase,
            phase.ops - phase.entries,
            phase.ops
        ));
    }
    Ok(phase)
}

/// `cfg.scans` scans of `cfg.scan_len` entries from random start keys, one read txn each.
fn scans<E: Engine>(engine: &E, cfg: &Config, reverse: bool) -> Result<PhaseResult, String> {
    let shape = cfg.shape;
    let dir = if reverse { "rev" } else { "fwd" };
    let mut phase = PhaseResult::new(format!("scan {dir} {}", cfg.scan_len))?;
    let mut rng = SplitMix64::new(shape.seed ^ SEED_SCANS ^ u64::from(reverse));
    let mut start_key = vec![0u8; shape.key_size];
    for _ in 0..cfg.scans {
        for chunk in start_key.chunks_mut(8) {
            chunk.copy_from_slice(&rng.next_u64().to_le_bytes()[..chunk.len()]);
        }
        let mut tag_sum = 0u64;
        let start = Instant::now();
        let n = engine.read(|view| {
            E::scan(view, &start_key, cfg.scan_len, reverse, |_, v| {
                tag_sum = tag_sum.wrapping_add(DataShape::value_tag(v).unwrap_or(u64::MAX));
            })
        })?;
        let elapsed = start.elapsed();
        phase.record(elapsed);
        phase.busy += elapsed;
        phase.ops += 1;
        phase.entries += n as u64;
        phase.checksum = phase.checksum.wrapping_add(tag_sum);
    }
    Ok(phase)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small_config(dir: &Path, engines: Vec<EngineKind>) -> Config {
        Config {
            dir: dir.to_path_buf(),
            keys: 300,
            batches: vec![1, 7, 50],
            puts: 20,
            min_commits: 2,
            load_batch: 128,
            reads: 500,
            reads_per_txn: 64,
            scans: 20,
            scan_len: 50,
            rounds: 2,
            engines,
            ..Config::default()
        }
    }

    /// Runs the whole benchmark on a few hundred keys: every read must find its value (the
    /// benchmark fails otherwise), the engines must agree, and the report must render.
    fn smoke(engines: Vec<EngineKind>) {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = small_config(tmp.path(), engines.clone());
        let runs = run_all(&cfg).unwrap();
        assert_eq!(runs.len(), cfg.rounds * engines.len());
        for run in &runs {
            let names: Vec<&str> = run.phases.iter().map(|p| p.phase.as_str()).collect();
            assert_eq!(
                names,
                [
                    "load b=128",
                    "put b=1",
                    "put b=7",
                    "put b=50",
                    "get 64/txn",
                    "get 1/txn",
                    "scan fwd 50",
                    "scan rev 50"
                ]
            );
            // 300 loaded + 20*1 + 3 commits of 7 + 2 commits of 50.
            assert_eq!(run.final_keys, 300 + 20 + 21 + 100);
            for p in &run.phases {
                assert!(p.ops > 0 && !p.latency.is_empty(), "{}: empty", p.phase);
                // Latencies are real measurements, not clamped to a bucket bound.
                assert!(
                    p.latency.max() > 50,
                    "{}: max {}ns",
                    p.phase,
                    p.latency.max()
                );
                // (3 significant digits: a recorded value may read up to 0.1% high.)
                assert!(p.latency.max() as f64 <= p.busy.as_nanos() as f64 * 1.01 + 1_000.0);
            }
            assert_eq!(run.phases[4].entries, 500);
            assert_eq!(run.phases[5].entries, 500);
            assert!(run.disk_bytes > 0);
        }
        let table = report::table(&cfg, &runs);
        assert!(table.contains("scan rev 50"), "{table}");
        let json = report::json(&cfg, &runs);
        assert!(json.starts_with('{') && json.ends_with('}'), "{json}");
        // Directories are removed after each run.
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    }

    #[test]
    fn smoke_all_engines() {
        smoke(EngineKind::ALL.to_vec());
    }

    /// Checks one engine's scans against a sorted model, both directions, from keys that
    /// exist, fall between keys, or lie beyond either end.
    async fn scans_match_model<E: Engine>(dir: &Path) {
        let shape = DataShape {
            key_size: 12,
            value_size: 24,
            seed: 3,
        };
        let cfg = Config {
            map_size: 1 << 30,
            ..Config::default()
        };
        let mut engine = E::open(dir, &cfg).await.unwrap();
        engine
            .write(&Batch::generate(&shape, 0, 200))
            .await
            .unwrap();
        let mut model: Vec<(Vec<u8>, u64)> = (0..200).map(|i| (shape.key(i), i)).collect();
        model.sort();
        let mut starts: Vec<Vec<u8>> = vec![vec![], vec![0xff; 12], model[17].0.clone()];
        let mut between = model[40].0.clone();
        between.push(0); // sorts right after model[40], before model[41]
        starts.push(between);
        for start in &starts {
            for reverse in [false, true] {
                let got = engine
                    .read(|view| {
                        let mut got = Vec::new();
                        E::scan(view, start, 30, reverse, |k, v| {
                            assert!(shape.value_matches(DataShape::value_tag(v).unwrap(), v));
                            got.push((k.to_vec(), DataShape::value_tag(v).unwrap()));
                        })?;
                        Ok(got)
                    })
                    .unwrap();
                let want: Vec<_> = if reverse {
                    model
                        .iter()
                        .rev()
                        .filter(|(k, _)| k <= start)
                        .take(30)
                        .cloned()
                        .collect()
                } else {
                    model
                        .iter()
                        .filter(|(k, _)| k >= start)
                        .take(30)
                        .cloned()
                        .collect()
                };
                assert_eq!(got, want, "{} reverse={reverse} start={start:?}", E::NAME);
            }
        }
        for (k, i) in &model {
            let ok = engine
                .read(|view| E::get(view, k, |v| v.is_some_and(|v| shape.value_matches(*i, v))))
                .unwrap();
            assert!(ok, "{}: key #{i}", E::NAME);
        }
        let absent = engine
            .read(|view| E::get(view, &[1, 2, 3], |v| v.is_none()))
            .unwrap();
        assert!(absent);
        engine.close().await.unwrap();
    }

    fn on_executor<F, Fut>(f: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + 'static,
    {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .spawn(f)
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn scans_and_gets_match_model() {
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let paths: Vec<PathBuf> = dirs.iter().map(|d| d.path().to_path_buf()).collect();
        on_executor(move || async move {
            scans_match_model::<Corekv>(&paths[0]).await;
            scans_match_model::<Lmdb>(&paths[1]).await;
            scans_match_model::<Redb>(&paths[2]).await;
        });
    }

    #[test]
    fn args_parse_and_reject() {
        let args = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
        let cfg = parse_args(&args(
            "--keys 1M --batches 1,10 --engines lmdb,corekv --rounds=5 --value-size 100 --json",
        ))
        .unwrap()
        .unwrap();
        assert_eq!(cfg.keys, 1_000_000);
        assert_eq!(cfg.batches, vec![1, 10]);
        assert_eq!(cfg.engines, vec![EngineKind::Lmdb, EngineKind::Corekv]);
        assert_eq!(cfg.rounds, 5);
        assert_eq!(cfg.shape.value_size, 100);
        assert!(cfg.json);
        assert!(cfg.corekv_blocking_sync, "blocking is the default");
        let ring = parse_args(&args("--corekv-sync ring")).unwrap().unwrap();
        assert!(!ring.corekv_blocking_sync);
        for bad in [
            "--corekv-sync",
            "--corekv-sync fast",
            "--keys",
            "--keys x",
            "--keys 0",
            "--keys 1000M",
            "--key-size 4",
            "--key-size 512",
            "--value-size 7",
            "--engines lmdb,lmdb",
            "--engines rocksdb",
            "--batches 1,,2",
            "--map-size 4000M",
            "--frobnicate 1",
        ] {
            assert!(parse_args(&args(bad)).is_err(), "{bad} accepted");
        }
        assert_eq!(write_plan(&Config::default(), 10_000), (10, 100_000));
        assert_eq!(write_plan(&Config::default(), 1), (1_000, 1_000));
    }
}
