#!/usr/bin/env python3
"""The disk's write ceilings: random 4 KiB O_DIRECT writes per second at several queue
depths, and sequential 1 MiB O_DIRECT write bandwidth.

Usage: python3 perf/disk_ceilings.py [DIR] [SECONDS]   (DIR on the disk under test,
default /work/benchtmp; SECONDS per measurement, default 5)

Why: write-heavy benchmarks (256-client puts, check-perf xl) write every backend page a put
copies, scattered over the file, so besides fdatasync latency (`corekv-bench wal`) the disk's
small-write rate is a physical limit for them; `perf/server.md` compares the two. The random
writes go to a 2 GiB file that is written once first (so no write allocates blocks); the
sequential ones wrap within 8 GiB. Both files are removed afterwards. Queue depth is the
number of processes each doing blocking `pwrite`s (processes, not threads: threads contend
for Python's lock above ~60k writes/s; with processes the rates match a C thread pool's).

Cost: the sequential part writes SECONDS times the disk's bandwidth (5-7 GB at 5 s here) and
the random part ~2 GiB more. On this machine heavy writing wears down a write budget the host
refills slowly (`perf/server.md`), so do not run this right before a write benchmark.
"""
import mmap
import multiprocessing
import os
import random
import sys
import time

MIB = 1 << 20
RANDOM_FILE_BYTES = 2 << 30
SEQUENTIAL_WRAP_BYTES = 8 << 30


def aligned(size, fill):
    buf = mmap.mmap(-1, size)  # page-aligned, as O_DIRECT needs
    buf.write(fill * size)
    return buf


def random_writes(path, workers, seconds):
    """Writes per second of `workers` processes (one blocking write each in flight)."""
    # fork: the workers share `writer`, a closure, and the counters.
    ctx = multiprocessing.get_context("fork")
    counts = ctx.Array("q", workers)
    start = time.time()
    stop = start + seconds

    def writer(i):
        fd = os.open(path, os.O_RDWR | os.O_DIRECT)
        buf, rng = aligned(4096, b"r"), random.Random(i)
        pages, done = RANDOM_FILE_BYTES // 4096, 0
        while time.time() < stop:
            os.pwrite(fd, buf, rng.randrange(pages) * 4096)
            done += 1
        counts[i] = done
        os.close(fd)

    procs = [ctx.Process(target=writer, args=(i,)) for i in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    return sum(counts) / (time.time() - start)


def main():
    where = sys.argv[1] if len(sys.argv) > 1 else "/work/benchtmp"
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 5.0
    os.makedirs(where, exist_ok=True)
    rnd = os.path.join(where, "disk_ceilings.random")
    seq = os.path.join(where, "disk_ceilings.sequential")
    try:
        fd = os.open(rnd, os.O_CREAT | os.O_RDWR | os.O_DIRECT, 0o644)
        buf = aligned(MIB, b"i")
        for off in range(0, RANDOM_FILE_BYTES, MIB):
            os.pwrite(fd, buf, off)
        os.fdatasync(fd)
        os.close(fd)
        for depth in (1, 8, 32):
            rate = random_writes(rnd, depth, seconds)
            print(f"random 4 KiB O_DIRECT writes, queue depth {depth}: {rate:,.0f}/s "
                  f"({rate * 4096 / 1e6:.0f} MB/s)")
        fd = os.open(seq, os.O_CREAT | os.O_WRONLY | os.O_DIRECT, 0o644)
        off, written, start = 0, 0, time.time()
        while time.time() - start < seconds:
            os.pwrite(fd, buf, off)
            written += MIB
            off = (off + MIB) % SEQUENTIAL_WRAP_BYTES
        os.fdatasync(fd)
        elapsed = time.time() - start
        os.close(fd)
        print(f"sequential 1 MiB O_DIRECT writes: {written / elapsed / 1e6:,.0f} MB/s")
    finally:
        for p in (rnd, seq):
            if os.path.exists(p):
                os.unlink(p)


if __name__ == "__main__":
    main()
