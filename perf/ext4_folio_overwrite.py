#!/usr/bin/env python3
"""Cost of overwriting one 4 KiB page of a file, by the size of the writes that created it.

Why this exists: since Linux 6.16, ext4 caches regular files in large folios whose size
follows the write that created them, and every later buffered write into a folio walks all of
the folio's block buffers. The backend overwrites single freed pages all the time, so the size
of its own earlier writes decides what each page write costs (`MAX_WRITE_BYTES` in
`src/backend/mod.rs`). Usage: python3 perf/ext4_folio_overwrite.py [dir on the disk to test]
"""
import os
import random
import sys
import time

REGION = 8 << 20
SIZES = [4096, 16384, 65536, 262144, 1 << 20, 8 << 20]
PAGE = b"x" * 4096


def main():
    d = sys.argv[1] if len(sys.argv) > 1 else "."
    path = os.path.join(d, "ext4_folio_overwrite.tmp")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for i, size in enumerate(SIZES):
            chunk = b"y" * size
            for off in range(0, REGION, size):
                os.pwrite(fd, chunk, i * REGION + off)
        os.fsync(fd)

        def overwrite_us(base, n=20000):
            rng = random.Random(1)
            offs = [base + rng.randrange(REGION // 4096) * 4096 for _ in range(n)]
            t = time.perf_counter()
            for o in offs:
                os.pwrite(fd, PAGE, o)
            return (time.perf_counter() - t) / n * 1e6

        print(f"kernel {os.uname().release}")
        print("| region written with | 4 KiB overwrite, µs (best of 3) |")
        print("| ---: | ---: |")
        for i, size in enumerate(SIZES):
            best = min(overwrite_us(i * REGION) for _ in range(3))
            print(f"| {size // 1024} KiB writes | {best:.2f} |")
    finally:
        os.close(fd)
        os.unlink(path)


if __name__ == "__main__":
    main()
