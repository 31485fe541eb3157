#!/usr/bin/env bash
# Reproduces perf/server.md: corekv-bench put/range against a fresh corekv on loopback,
# with the disk's raw write+fdatasync latency measured in the same run (the physical limit).
# Usage: perf/server.sh [rounds]   (default 3 rounds per workload; medians are reported)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
PORT=${PORT:-23790}
cargo build --release -q -p corekv -p corekv-bench
DIR=$(mktemp -d /tmp/corekv-perf.XXXXXX)
BENCH=./target/release/corekv-bench
./target/release/corekv --data-dir "$DIR/data" --listen-client-urls "127.0.0.1:$PORT" --log-level warn > "$DIR/server.out" 2>&1 &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; rm -rf "$DIR"' EXIT
for _ in $(seq 1 600); do grep -q "listening for clients" "$DIR/server.out" && break; sleep 0.1; done
grep -q "listening for clients" "$DIR/server.out" || { cat "$DIR/server.out"; echo "server did not start"; exit 1; }

RESULTS="$DIR/results.jsonl"
# Server CPU seconds (user+system, from /proc) by thread kind: the raft shard (shard 0, which
# also serves its share of client connections), the other shards, and the kernel's io_uring
# workers. On a shared 2-core machine CPU per request is steadier than throughput, and it shows
# how far the cores are from the request rate (2 cores / CPU per request = the ceiling).
server_cpu() {
  local tick; tick=$(getconf CLK_TCK)
  for t in /proc/"$SERVER"/task/*; do
    echo "$(cat "$t/comm" 2>/dev/null) $(awk '{print $14+$15}' "$t/stat" 2>/dev/null)"
  done | awk -v tick="$tick" '
    /^corekv-shard-0/ {r += $NF; next}
    /^corekv-shard-/ {o += $NF; next}
    /^iou-wrk/ {w += $NF; next}
    {m += $NF}
    END {printf "{\"raft_shard\":%f,\"other_shards\":%f,\"io_workers\":%f,\"other\":%f}", r/tick, o/tick, w/tick, m/tick}'
}
run() { # name, then corekv-bench arguments
  local name=$1; shift
  for r in $(seq 1 "$ROUNDS"); do
    echo "$name round $r: corekv-bench $*" >&2
    local before after
    before=$(server_cpu)
    "$BENCH" "$@" --val-size 256 --no-progress --endpoints "127.0.0.1:$PORT" --json > "$DIR/one.json"
    after=$(server_cpu)
    # io_uring workers come and go: their CPU is counted only while they live (a lower bound).
    sed "s|^{|{\"name\":\"$name\",\"server_cpu_before\":$before,\"server_cpu_after\":$after,|" "$DIR/one.json" >> "$RESULTS"
  done
}
run "put, 1 client" put --clients 1 --conns 1 --total 3000 --key-space-size 100000
run "put, 256 clients / 16 conns" put --clients 256 --conns 16 --total 100000 --key-space-size 100000
run "range 1 key serializable, 1 client" range --clients 1 --conns 1 --total 20000 --key-space-size 10000 --consistency s
run "range 1 key linearizable, 1 client" range --clients 1 --conns 1 --total 20000 --key-space-size 10000 --consistency l
run "range 1 key serializable, 256 clients / 16 conns" range --clients 256 --conns 16 --total 300000 --key-space-size 10000 --consistency s
run "range 1 key linearizable, 256 clients / 16 conns" range --clients 256 --conns 16 --total 300000 --key-space-size 10000 --consistency l

echo "physical limit: corekv-bench wal --appenders 1 (raw write+fdatasync baseline)" >&2
"$BENCH" wal --dir "$DIR/walbench" --appenders 1 --duration 2 --reps 1 > "$DIR/wal.txt" 2>&1 || true

python3 - "$RESULTS" "$DIR/wal.txt" <<'PY'
import json, statistics, sys, platform, subprocess, datetime
rows = {}
for line in open(sys.argv[1]):
    d = json.loads(line)
    s = d["series"][0]  # corekv-bench's report: one series per request kind
    s["name"] = d["name"]
    s["cpu_before"], s["cpu_after"] = d["server_cpu_before"], d["server_cpu_after"]
    s["client_cpu_seconds"] = d["client_cpu_seconds"]
    rows.setdefault(d["name"], []).append(s)
print("| workload | throughput (req/s) | p50 µs | p99 µs | p99.9 µs | errors | CPU µs/request: raft shard | other shards | io workers | load generator |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for name, runs in rows.items():
    med = lambda f: statistics.median(f(r) for r in runs)
    errs = sum(r["failed"] for r in runs)
    cpu = lambda k: med(lambda r: (r["cpu_after"][k] - r["cpu_before"][k]) * 1e6 / max(r["ok"], 1))
    print(f"| {name} | {med(lambda r: r['throughput']):,.0f} | {med(lambda r: r['latency_us']['p50']):,.0f} | "
          f"{med(lambda r: r['latency_us']['p99']):,.0f} | {med(lambda r: r['latency_us']['p999']):,.0f} | {errs} | "
          f"{cpu('raft_shard'):.1f} | {cpu('other_shards'):.1f} | {cpu('io_workers'):.1f} | "
          f"{med(lambda r: r['client_cpu_seconds'] * 1e6 / max(r['ok'], 1)):.1f} |")
print()
print("Raw disk limit in the same run (`corekv-bench wal --appenders 1`):")
print()
print("```")
print(open(sys.argv[2]).read().strip())
print("```")
PY
