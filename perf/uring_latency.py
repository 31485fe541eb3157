#!/usr/bin/env python3
"""io_uring operation latencies (submit -> complete) by opcode, from a perf recording.

Usage (server PID, while a load runs):
  perf record -e io_uring:io_uring_submit_req -e io_uring:io_uring_complete -p PID -o ur.perf -- sleep 3
  perf script -i ur.perf | python3 perf/uring_latency.py

corekv's WAL writes are WRITE_FIXED (O_DIRECT), its fdatasyncs and the backend's are FSYNC;
glommio's socket I/O and timers show up as WRITE, READ, POLL_ADD, TIMEOUT, ASYNC_CANCEL.
"""
import collections
import re
import sys


def main():
    submitted = {}
    latencies = collections.defaultdict(list)
    for line in sys.stdin:
        parts = line.split()
        at = [j for j, p in enumerate(parts) if p.startswith("io_uring:")]
        if not at:
            continue
        i = at[0]
        t = float(parts[i - 1].rstrip(":"))
        req = re.search(r"req (0x[0-9a-f]+)", line)
        if not req:
            continue
        req = req.group(1)
        if "submit_req" in parts[i]:
            op = re.search(r"opcode (\w+)", line)
            submitted[req] = (t, op.group(1) if op else "?")
        elif req in submitted:
            t0, op = submitted.pop(req)
            latencies[op].append((t - t0) * 1e6)
    for op, lat in sorted(latencies.items()):
        lat.sort()
        n = len(lat)
        print(
            f"{op:14} n={n:6} mean={sum(lat) / n:8.0f} p50={lat[n // 2]:8.0f} "
            f"p90={lat[int(n * .9)]:8.0f} p99={lat[int(n * .99)]:8.0f} max={lat[-1]:8.0f} us"
        )


if __name__ == "__main__":
    main()
