//! `corekv-bench wal`: WAL group-commit benchmark.
//!
//! Measured in one run, on one glommio executor, against files in `--dir`:
//! * `raw`: the physical limit: one 4 KiB O_DIRECT write in place (offset 0) of a zero-filled
//!   file + fdatasync, in a loop.
//! * `naive`: one record per write + fdatasync, appended sequentially (the partial block is
//!   rewritten), into a zero-filled file: what a WAL without group commit does.
//! * `append4k-zerofilled` / `append4k-fallocated`: one new 4 KiB block per write+fdatasync,
//!   appended into a zero-filled file versus a fallocate'd (unwritten-extent) file: the cost
//!   of the unwritten->written conversion that zero-filled preallocation avoids.
//! * `wal`: `corekv::wal::Wal` with N concurrent appenders, each awaiting one single-record
//!   append at a time.

use std::cell::RefCell;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use corekv::wal::{Options, Preallocate, Record, Wal};
use glommio::io::{DmaFile, OpenOptions};
use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;

const USAGE: &str = "usage: corekv-bench wal [--dir DIR] [--appenders 1,16,256,1024] \
[--record-size 256] [--duration SECS | --records N] [--segment-size BYTES] [--reps N] \
[--preallocate zero|fallocate] [--skip-baselines] [--json]

  --dir            directory for the benchmark files (default ./corekv-bench-wal); on the disk
                   under test, not tmpfs. Its contents are deleted.
  --appenders      comma-separated concurrency levels for the WAL runs
  --record-size    record payload bytes (entry index+term included), default 256
  --duration       seconds per measurement (default 3)
  --records        stop each measurement after this many records instead
  --segment-size   WAL segment size (default 64 MiB)
  --reps           repetitions of the whole sequence; medians are reported (default 1)
  --preallocate    WAL segment preallocation (default zero)
  --skip-baselines run only the WAL measurements
  --json           one JSON object per measurement on stdout instead of the table";

/// Largest file used by the baselines: they stop early when it is full.
const BASELINE_FILE_BYTES: u64 = 64 << 20;
const BLOCK: usize = 4096;

#[derive(Clone)]
struct Args {
    dir: PathBuf,
    appenders: Vec<usize>,
    record_size: usize,
    duration: Duration,
    records: Option<u64>,
    segment_size: u64,
    reps: usize,
    preallocate: Preallocate,
    baselines: bool,
    json: bool,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut a = Args {
        dir: PathBuf::from("corekv-bench-wal"),
        appenders: vec![1, 16, 256, 1024],
        record_size: 256,
        duration: Duration::from_secs(3),
        records: None,
        segment_size: 64 << 20,
        reps: 1,
        preallocate: Preallocate::ZeroFill,
        baselines: true,
        json: false,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))
        };
        let num = |v: String| {
            v.parse::<u64>()
                .map_err(|e| format!("{flag}: {v:?}: {e}\n{USAGE}"))
        };
        match flag.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            "--dir" => a.dir = PathBuf::from(val()?),
            "--appenders" => {
                a.appenders = val()?
                    .split(',')
                    .map(|s| {
                        s.trim()
                            .parse::<usize>()
                            .map_err(|e| format!("--appenders {s:?}: {e}"))
                    })
                    .collect::<Result<_, _>>()?;
                if a.appenders.iter().any(|&n| n == 0 || n > 65536) {
                    return Err("--appenders values must be in 1..=65536".into());
                }
            }
            "--record-size" => a.record_size = num(val()?)? as usize,
            "--duration" => {
                a.duration = Duration::from_secs_f64(
                    val()?
                        .parse::<f64>()
                        .map_err(|e| format!("--duration: {e}"))?,
                )
            }
            "--records" => a.records = Some(num(val()?)?),
            "--segment-size" => a.segment_size = num(val()?)?,
            "--reps" => a.reps = num(val()?)?.clamp(1, 100) as usize,
            "--preallocate" => {
                a.preallocate = match val()?.as_str() {
                    "zero" => Preallocate::ZeroFill,
                    "fallocate" => Preallocate::Fallocate,
                    o => return Err(format!("--preallocate {o:?}: zero|fallocate")),
                }
            }
            "--skip-baselines" => a.baselines = false,
            "--json" => a.json = true,
            o => return Err(format!("unknown flag {o:?}\n{USAGE}")),
        }
    }
    if !(16..=(1 << 20)).contains(&a.record_size) {
        return Err("--record-size must be in 16..=1048576".into());
    }
    Ok(a)
}

/// One measurement.
#[derive(Clone, Debug)]
struct Result1 {
    name: String,
    appenders: usize,
    records: u64,
    secs: f64,
    syncs: u64,
    p50_us: u64,
    p99_us: u64,
    /// WAL runs: segment rollovers, how many waited for the background preparation, and the
    /// longest time one held appends (µs).
    rollovers: u64,
    rollovers_waited: u64,
    rollover_max_us: u64,
    /// WAL runs: time to reopen (recover) the log just written, its segments and records.
    reopen_ms: f64,
    reopen_segments: usize,
    reopen_records: u64,
}

impl Result1 {
    fn rate(&self) -> f64 {
        self.records as f64 / self.secs
    }
    fn per_sync(&self) -> f64 {
        self.records as f64 / self.syncs.max(1) as f64
    }
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

/// Runs the benchmark with command-line `args`.
pub fn run(args: &[String]) -> Result<(), String> {
    let a = parse(args)?;
    let results = {
        let a = a.clone();
        LocalExecutorBuilder::new(Placement::Unbound)
            .spawn(move || async move { run_all(&a).await })
            .map_err(|e| format!("start executor: {e}"))?
            .join()
            .map_err(|e| format!("executor: {e:?}"))??
    };
    report(&a, &results);
    Ok(())
}

async fn run_all(a: &Args) -> Result<Vec<Vec<Result1>>, String> {
    std::fs::create_dir_all(&a.dir).map_err(|e| format!("create {}: {e}", a.dir.display()))?;
    let mut reps = Vec::new();
    for rep in 0..a.reps {
        let mut rs = Vec::new();
        if a.baselines {
            // The first DMA file opened on this thread must be non-empty with written blocks
            // (glommio's polled-I/O probe), so the zero-filled raw file goes first.
            let zf = a.dir.join("baseline-zero");
            zero_file(&zf, BASELINE_FILE_BYTES).map_err(|e| format!("{}: {e}", zf.display()))?;
            rs.push(raw(a, &zf).await?);
            let rec = a.record_size as u64 + 16; // same framing overhead as the WAL
            rs.push(naive(a, &zf, "naive", rec).await?);
            zero_file(&zf, BASELINE_FILE_BYTES).map_err(|e| format!("{}: {e}", zf.display()))?;
            rs.push(naive(a, &zf, "append4k-zerofilled", BLOCK as u64).await?);
            let ff = a.dir.join("baseline-falloc");
            falloc_file(&ff, BASELINE_FILE_BYTES).map_err(|e| format!("{}: {e}", ff.display()))?;
            rs.push(naive(a, &ff, "append4k-fallocated", BLOCK as u64).await?);
            let _ = std::fs::remove_file(&zf);
            let _ = std::fs::remove_file(&ff);
        }
        for &n in &a.appenders {
            rs.push(wal(a, n).await?);
        }
        if !a.json {
            eprintln!("rep {} done", rep + 1);
        }
        reps.push(rs);
    }
    Ok(reps)
}

fn zero_file(p: &Path, size: u64) -> std::io::Result<()> {
    fill_file(p, size, 0)
}

fn fill_file(p: &Path, size: u64, byte: u8) -> std::io::Result<()> {
    let _ = std::fs::remove_file(p);
    let mut f = std::fs::File::create(p)?;
    let z = vec![byte; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(z.len() as u64) as usize;
        f.write_all(&z[..n])?;
        left -= n as u64;
    }
    f.sync_all()?;
    // Drop the (clean) page cache so O_DIRECT writes do not pay for invalidating it.
    use std::os::fd::AsRawFd;
    // SAFETY: plain posix_fadvise(2) on an fd we own.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    Ok(())
}

fn falloc_file(p: &Path, size: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let _ = std::fs::remove_file(p);
    let f = std::fs::File::create(p)?;
    // SAFETY: plain fallocate(2) on an fd we own.
    let r = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, size as libc::off_t) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    f.sync_all()
}

async fn open_dma(p: &Path) -> Result<DmaFile, String> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .dma_open(p)
        .await
        .map_err(|e| format!("open {}: {e}", p.display()))
}

fn done(a: &Args, start: Instant, n: u64) -> bool {
    match a.records {
        Some(max) => n >= max,
        None => start.elapsed() >= a.duration,
    }
}

async fn raw(a: &Args, p: &Path) -> Result<Result1, String> {
    let f = open_dma(p).await?;
    let mut h = hist();
    let start = Instant::now();
    let mut n = 0u64;
    while !done(a, start, n) {
        let t = Instant::now();
        let mut buf = f.alloc_dma_buffer(BLOCK);
        buf.as_bytes_mut().fill(n as u8);
        f.write_at(buf, 0)
            .await
            .map_err(|e| format!("raw write: {e}"))?;
        f.fdatasync()
            .await
            .map_err(|e| format!("raw fdatasync: {e}"))?;
        h.saturating_record(t.elapsed().as_micros() as u64);
        n += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    let _ = f.close().await;
    Ok(Result1 {
        name: "raw".into(),
        appenders: 1,
        records: n,
        secs,
        syncs: n,
        p50_us: h.value_at_quantile(0.5),
        p99_us: h.value_at_quantile(0.99),
        rollovers: 0,
        rollovers_waited: 0,
        reopen_ms: 0.0,
        reopen_segments: 0,
        reopen_records: 0,
        rollover_max_us: 0,
    })
}

/// One record per write+fdatasync, appended: the block holding the record is (re)written.
/// With `rec == BLOCK` every operation writes a new block: this measures what an append into
/// preallocated space costs (zero-filled: pure overwrite; fallocated: extent conversion).
async fn naive(a: &Args, p: &Path, name: &str, rec: u64) -> Result<Result1, String> {
    let f = open_dma(p).await?;
    let mut h = hist();
    let mut tail = vec![0u8; BLOCK];
    let start = Instant::now();
    let mut n = 0u64;
    let mut pos = 0u64;
    while !done(a, start, n) && pos + rec + BLOCK as u64 <= BASELINE_FILE_BYTES {
        let t = Instant::now();
        let blk = pos / BLOCK as u64 * BLOCK as u64;
        let end = pos + rec;
        let len = (end - blk).div_ceil(BLOCK as u64) as usize * BLOCK;
        let mut buf = f.alloc_dma_buffer(len);
        let b = buf.as_bytes_mut();
        let in_blk = (pos - blk) as usize;
        b[..in_blk].copy_from_slice(&tail[..in_blk]);
        b[in_blk..in_blk + rec as usize].fill(0xA5);
        b[in_blk + rec as usize..].fill(0);
        let nb = ((end - blk) / BLOCK as u64) as usize * BLOCK;
        let keep = (end - blk) as usize - nb;
        tail[..keep].copy_from_slice(&b[nb..nb + keep]);
        f.write_at(buf, blk)
            .await
            .map_err(|e| format!("{name} write: {e}"))?;
        f.fdatasync()
            .await
            .map_err(|e| format!("{name} fdatasync: {e}"))?;
        h.saturating_record(t.elapsed().as_micros() as u64);
        pos = end;
        n += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    let _ = f.close().await;
    Ok(Result1 {
        name: name.into(),
        appenders: 1,
        records: n,
        secs,
        syncs: n,
        p50_us: h.value_at_quantile(0.5),
        p99_us: h.value_at_quantile(0.99),
        rollovers: 0,
        rollovers_waited: 0,
        reopen_ms: 0.0,
        reopen_segments: 0,
        reopen_records: 0,
        rollover_max_us: 0,
    })
}

async fn wal(a: &Args, appenders: usize) -> Result<Result1, String> {
    let data_dir = a.dir.join("wal-data");
    let _ = std::fs::remove_dir_all(&data_dir);
    let d = Options::default();
    let max_batch_bytes = d.max_batch_bytes.min((a.segment_size / 2) as usize);
    let opts = Options {
        segment_size: a.segment_size,
        preallocate: a.preallocate,
        max_batch_bytes,
        max_queued_bytes: d.max_queued_bytes.max(max_batch_bytes),
        ..d
    };
    let opts_copy = opts.clone();
    let (wal, _) = Wal::open(&data_dir, opts, |_| {})
        .await
        .map_err(|e| format!("open WAL: {e}"))?;
    let wal = Rc::new(wal);
    // Start measuring once the background preparation of the next segment (a 64 MiB zero-fill
    // by default) is done, so every run starts from the same steady state. Rollovers during
    // the run still prepare segments concurrently, as in production.
    let deadline = Instant::now() + Duration::from_secs(60);
    while wal.stats().segments_prepared == 0 {
        if Instant::now() > deadline {
            return Err("the WAL's first background segment preparation took over 60 s".into());
        }
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    let h = Rc::new(RefCell::new(hist()));
    let count = Rc::new(RefCell::new(0u64));
    let data = vec![0x5Au8; a.record_size - 16];
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(appenders);
    for t in 0..appenders {
        let (wal, h, count, data) = (wal.clone(), h.clone(), count.clone(), data.clone());
        let (limit, dur) = (a.records, a.duration);
        tasks.push(glommio::spawn_local(async move {
            let mut i = 0u64;
            loop {
                let n = {
                    let mut c = count.borrow_mut();
                    let stop = match limit {
                        Some(m) => *c >= m,
                        None => start.elapsed() >= dur,
                    };
                    if stop {
                        break;
                    }
                    *c += 1;
                    *c
                };
                let rec = Record::Entry {
                    index: n,
                    term: t as u64,
                    data: data.clone(),
                };
                let t0 = Instant::now();
                wal.append(vec![rec]).await.map_err(|e| e.to_string())?;
                h.borrow_mut()
                    .saturating_record(t0.elapsed().as_micros() as u64);
                i += 1;
            }
            Ok::<u64, String>(i)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await?;
    }
    let secs = start.elapsed().as_secs_f64();
    let s = wal.stats();
    wal.close().await;
    drop(wal);
    // Recovery cost: reopen the log just written (reads every segment to its end).
    let t = Instant::now();
    let mut replayed = 0u64;
    let (wal, info) = Wal::open(&data_dir, opts_copy, |_| replayed += 1)
        .await
        .map_err(|e| format!("reopen WAL: {e}"))?;
    let reopen_ms = t.elapsed().as_secs_f64() * 1e3;
    wal.close().await;
    drop(wal);
    let _ = std::fs::remove_dir_all(&data_dir);
    let h = h.borrow();
    Ok(Result1 {
        name: "wal".into(),
        appenders,
        records: total,
        secs,
        syncs: s.syncs,
        p50_us: h.value_at_quantile(0.5),
        p99_us: h.value_at_quantile(0.99),
        rollovers: s.rollovers,
        rollovers_waited: s.rollovers_waited_for_prepare,
        reopen_ms,
        reopen_segments: info.segments,
        reopen_records: replayed,
        rollover_max_us: s.rollover_latency_us.max(),
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn report(a: &Args, reps: &[Vec<Result1>]) {
    if a.json {
        for (ri, rs) in reps.iter().enumerate() {
            for r in rs {
                println!(
                    "{{\"rep\":{},\"name\":\"{}\",\"appenders\":{},\"records\":{},\"secs\":{:.3},\"records_per_sec\":{:.1},\"syncs\":{},\"records_per_sync\":{:.2},\"p50_us\":{},\"p99_us\":{},\"rollovers\":{},\"rollovers_waited\":{},\"rollover_max_us\":{},\"reopen_ms\":{:.1},\"reopen_segments\":{},\"reopen_records\":{}}}",
                    ri + 1, r.name, r.appenders, r.records, r.secs, r.rate(), r.syncs, r.per_sync(), r.p50_us, r.p99_us, r.rollovers, r.rollovers_waited, r.rollover_max_us, r.reopen_ms, r.reopen_segments, r.reopen_records
                );
            }
        }
        return;
    }
    let first = &reps[0];
    let med =
        |i: usize, f: &dyn Fn(&Result1) -> f64| median(reps.iter().map(|rs| f(&rs[i])).collect());
    let naive_rate = first
        .iter()
        .position(|r| r.name == "naive")
        .map(|i| med(i, &|r| r.rate()));
    let raw_p50 = first
        .iter()
        .position(|r| r.name == "raw")
        .map(|i| med(i, &|r| r.p50_us as f64));
    println!(
        "record size {} B, {} rep(s), medians; {}",
        a.record_size,
        reps.len(),
        match a.records {
            Some(n) => format!("{n} records per measurement"),
            None => format!("{:.1} s per measurement", a.duration.as_secs_f64()),
        }
    );
    println!(
        "| run | appenders | records/s | records/fdatasync | p50 µs | p99 µs | x naive rec/s | p50 / raw p50 |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (i, r) in first.iter().enumerate() {
        let rate = med(i, &|r| r.rate());
        let p50 = med(i, &|r| r.p50_us as f64);
        let p99 = med(i, &|r| r.p99_us as f64);
        let per = med(i, &|r| r.per_sync());
        let xn = naive_rate.map_or("-".into(), |n| format!("{:.1}", rate / n));
        let xr = raw_p50.map_or("-".into(), |p| format!("{:.2}", p50 / p));
        println!(
            "| {} | {} | {:.0} | {:.1} | {:.0} | {:.0} | {} | {} |",
            r.name, r.appenders, rate, per, p50, p99, xn, xr
        );
    }
    for (i, r) in first.iter().enumerate() {
        if r.name == "wal" {
            let rolls: u64 = reps.iter().map(|rs| rs[i].rollovers).sum();
            let waited: u64 = reps.iter().map(|rs| rs[i].rollovers_waited).sum();
            let worst = reps
                .iter()
                .map(|rs| rs[i].rollover_max_us)
                .max()
                .unwrap_or(0);
            let reopen = med(i, &|r| r.reopen_ms);
            let segs = med(i, &|r| r.reopen_segments as f64);
            let recs = med(i, &|r| r.reopen_records as f64);
            println!(
                "wal, {} appenders: {rolls} segment rollovers over all reps ({waited} waited for the background preparation), longest held appends {worst} µs; reopen (recovery) {reopen:.0} ms for {segs:.0} segment(s), {recs:.0} records (medians)",
                r.appenders
            );
        }
    }
}
