#!/usr/bin/env bash
# Whole-machine CPU (user, system, iowait, softirq, ...) and disk writes per write, while a
# load runs against a fresh server.
#
# usage: perf/machine_cpu_per_write.sh <corekv binary> <warmup s> <window s> -- <corekv-bench args>
# example: perf/machine_cpu_per_write.sh target/release/corekv 3 6 -- put --clients 256 --conns 16 --total 350000 --val-size 256 --key-space-size 100000
#
# Starts the binary on a fresh data dir (127.0.0.1:24113, 8 GiB quota), runs corekv-bench
# against it, and between <warmup> and <warmup + window> seconds reads /proc/stat, the store
# revision and /proc/diskstats (device vda). Prints the bench's summary line, then each CPU
# state's share and µs per write, and disk writes/s, MB/s and 512-byte sectors per write.
# iowait is idle time with I/O outstanding (glommio's io_uring waits count there): CPU the
# machine had to spare. Meant for A/B comparisons of builds, alternating, on the same machine.
set -euo pipefail
[[ $# -ge 5 && $4 == -- ]] || { sed -n 5,6p "$0" >&2; exit 2; }
BIN=$1; WARMUP=$2; WINDOW=$3; shift 4
source "$(dirname "$0")/fresh_server.sh"
DEV=${DISK_DEVICE:-vda}
fresh_server "$BIN"
disk() { awk -v d="$DEV" '$3 == d {print $8, $10}' /proc/diskstats; }
"$BENCH" "$@" --no-progress --endpoints $ADDR > "$D/bench" 2>&1 &
BP=$!
sleep "$WARMUP"; R0=$(revision); S0=$(head -1 /proc/stat); IO0=$(disk)
sleep "$WINDOW"; R1=$(revision); S1=$(head -1 /proc/stat); IO1=$(disk)
wait $BP || true
grep -E "req/s" "$D/bench" | head -2 || true
python3 - "$S0" "$S1" $((R1 - R0)) "$WINDOW" "$IO0" "$IO1" "$(getconf CLK_TCK)" <<'PY'
import sys
a = list(map(int, sys.argv[1].split()[1:9])); b = list(map(int, sys.argv[2].split()[1:9]))
n, secs, hz = int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[7])
d = [y - x for x, y in zip(a, b)]
tot = sum(d)
print(f"writes/s {n / secs:.0f}")
for k, v in zip(["user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"], d):
    print(f"{k:8s} {100 * v / tot:5.1f}%  {v * 1e6 / hz / n:6.1f} us/write")
if sys.argv[5] and sys.argv[6]:
    w0, s0 = map(int, sys.argv[5].split()); w1, s1 = map(int, sys.argv[6].split())
    print(f"disk writes/s {(w1 - w0) / secs:.0f}  MB/s {(s1 - s0) * 512 / secs / 1e6:.0f}  sectors/write {(s1 - s0) / n:.1f}")
PY
