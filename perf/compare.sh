#!/usr/bin/env bash
# corekv against etcd, side by side, with the same load generator (corekv-bench) in the same
# run; writes perf/results/<date>.md and PNG plots next to it.
#
# Usage: perf/compare.sh [--cell-seconds N] [--check-perf-seconds N] [--check-perf-rest N]
#                        [--keys N] [--out-dir D] [--quick]
#   --cell-seconds        length of each matrix cell (default 10)
#   --check-perf-seconds  length of each check-perf run (default 60, etcdctl's; shorter runs
#                         are marked non-standard)
#   --check-perf-rest     seconds of rest (after a `sync`) before each check-perf run, for
#                         either target alike (default 45): this virtual disk is slow for a
#                         while after a few GB of writes, and the second target's run always
#                         followed the first's; the disk's flush latency measured after the
#                         rest is in the report next to each verdict
#   --keys                keys loaded before the RSS / data size / restart measurement
#                         (default 1000000; --restart-keys is the older name)
#   --out-dir             where <date>.md and the plots go (default perf/results)
#   --quick               a few minutes end to end, to check that everything works:
#                         --cell-seconds 2 --check-perf-seconds 5 --keys 20000, results under
#                         /tmp/corekv-compare-quick (not perf/results: not a measurement)
#
# What it does: installs Debian's etcd-server, etcd-client, protobuf-compiler (etcd-client's
# build needs protoc) and gnuplot-nox if missing (needs root, as CI runs); builds release
# binaries (corekv-bench with --features etcd); measures the physical limits (the disk's raw
# write+fdatasync, the loopback round trip); starts etcd and corekv on loopback with fresh
# data dirs (both fsync every commit: etcd's default, and corekv's only mode); runs the
# matrix against both, alternating cells; samples each server's RSS; loads N keys into fresh
# servers and measures RSS, data-dir size and restart time (SIGKILL, start, first
# successful linearizable read); stops both.
set -euo pipefail
cd "$(dirname "$0")/.."

CELL=10
CHECK=60
CHECK_REST=45
RESTART_KEYS=1000000
OUT=perf/results
INVOCATION="perf/compare.sh $*"
while [ $# -gt 0 ]; do
  case "$1" in
    --cell-seconds) CELL=$2; shift 2 ;;
    --check-perf-seconds) CHECK=$2; shift 2 ;;
    --check-perf-rest) CHECK_REST=$2; shift 2 ;;
    --keys|--restart-keys) RESTART_KEYS=$2; shift 2 ;;
    --out-dir) OUT=$2; shift 2 ;;
    --quick) CELL=2; CHECK=5; CHECK_REST=0; RESTART_KEYS=20000; OUT=/tmp/corekv-compare-quick; shift ;;
    *) echo "unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done

need=()
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
command -v gnuplot >/dev/null 2>&1 || need+=(gnuplot-nox)
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi

echo "== building release binaries" >&2
# One invocation, so both binaries share one feature set (building them apart would rebuild
# corekv's library each time the other is built).
cargo build --release -q -p corekv -p corekv-bench --features corekv-bench/etcd --bins
TARGET_DIR=$(cd "${CARGO_TARGET_DIR:-target}" && pwd)
BENCH=$TARGET_DIR/release/corekv-bench
COREKV=$TARGET_DIR/release/corekv

# 1,000 client connections plus the servers' files: raise the soft limit to the hard one.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 4096 ]; then
  echo "open-file limit $(ulimit -n) is below 4096; check-perf xl needs 1,000 connections" >&2
fi

# perf/results/<date>.md; a later run on the same day gets <date>-2.md, -3, ... so an earlier
# result that other documents cite is never overwritten.
DATE=$(date -u +%Y-%m-%d)
mkdir -p "$OUT"
NAME=$DATE
n=2
while [ -e "$OUT/$NAME.md" ]; do
  NAME="$DATE-$n"
  n=$((n + 1))
done
RESULT="$OUT/$NAME.md"
WORK=$(mktemp -d /tmp/corekv-compare.XXXXXX)
JSONL="$WORK/results.jsonl"
RSSLOG="$WORK/rss.jsonl"
: > "$JSONL"
: > "$RSSLOG"
CK_PORT=${CK_PORT:-23790}
ET_PORT=${ET_PORT:-23791}
ET_PEER=${ET_PEER:-23792}
QUOTA=$((8 * 1024 * 1024 * 1024))
CK_PID=""
ET_PID=""

cleanup() {
  local status=$?
  [ -n "$CK_PID" ] && kill "$CK_PID" 2>/dev/null || true
  [ -n "$ET_PID" ] && kill "$ET_PID" 2>/dev/null || true
  wait 2>/dev/null || true
  if [ "$status" -eq 0 ]; then
    rm -rf "$WORK"
  else
    # Keep the measurements and both servers' logs for the post-mortem (data dirs removed).
    rm -rf "$WORK"/*-data "$WORK"/*-big
    echo "compare.sh failed; measurements and logs kept in $WORK" >&2
  fi
}
trap cleanup EXIT

start_corekv() { # data dir
  "$COREKV" --data-dir "$1" --listen-client-urls "127.0.0.1:$CK_PORT" --log-level warn \
    --quota-backend-bytes "$QUOTA" >> "$WORK/corekv.log" 2>&1 &
  CK_PID=$!
}
start_etcd() { # data dir
  etcd --name compare --data-dir "$1" \
    --listen-client-urls "http://127.0.0.1:$ET_PORT" --advertise-client-urls "http://127.0.0.1:$ET_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ET_PEER" --initial-advertise-peer-urls "http://127.0.0.1:$ET_PEER" \
    --initial-cluster "compare=http://127.0.0.1:$ET_PEER" --quota-backend-bytes "$QUOTA" \
    --log-level warn >> "$WORK/etcd.log" 2>&1 &
  ET_PID=$!
}
endpoint() { [ "$1" = corekv ] && echo "127.0.0.1:$CK_PORT" || echo "127.0.0.1:$ET_PORT"; }
wait_ready() { # target: a put succeeds (bounded: 600 tries, 0.1 s apart)
  for _ in $(seq 1 600); do
    if "$BENCH" put --target "$1" --endpoints "$(endpoint "$1")" --total 1 --timeout 2 --no-progress --json >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.1
  done
  echo "$1 did not become ready; logs:" >&2
  tail -20 "$WORK/$1.log" >&2
  return 1
}
# Memory of a process as JSON fields: VmRSS split into RssAnon (heap, stacks: the process's
# own memory) and RssFile (file pages mapped and resident: both servers mmap their data
# file, so this is mostly page cache the kernel can drop), plus the peak VmHWM. KiB.
mem_json() { # pid prefix
  awk -v p="$2" '/^(VmRSS|RssAnon|RssFile|RssShmem|VmHWM):/ { gsub(":", "", $1); f[$1] = $2 }
    END { printf "\"%srss_kib\":%d,\"%sanon_kib\":%d,\"%sfile_kib\":%d,\"%sshmem_kib\":%d,\"%shwm_kib\":%d",
      p, f["VmRSS"], p, f["RssAnon"], p, f["RssFile"], p, f["RssShmem"], p, f["VmHWM"] }' "/proc/$1/status"
}
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
sample_rss() { # label
  echo "{\"label\":\"$1\",$(mem_json "$CK_PID" corekv_),$(mem_json "$ET_PID" etcd_)}" >> "$RSSLOG"
}

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
echo "== physical limits" >&2
"$BENCH" wal --dir "$WORK/walbench" --appenders 1 --duration 2 --reps 1 > "$WORK/wal.txt" 2>&1
rm -rf "$WORK/walbench"
"$BENCH" loopback-rtt --total 20000 --json > "$WORK/rtt.json"

echo "== starting corekv and etcd on fresh data dirs" >&2
start_corekv "$WORK/corekv-data"
start_etcd "$WORK/etcd-data"
wait_ready corekv || exit 1
wait_ready etcd || exit 1

# The disk's state right now: corekv-bench wal's raw row (4 KiB O_DIRECT write + fdatasync,
# the same measurement as the physical limits above), 200 writes, as JSON.
disk_flush_json() {
  local raw
  raw=$("$BENCH" wal --dir "$WORK/disk-probe" --appenders 1 --records 200 --reps 1 --json 2>/dev/null \
    | grep '"name":"raw"') || raw=null  # a failed probe is reported as missing, not fatal
  rm -rf "$WORK/disk-probe"
  echo "{\"rest_seconds\":$CHECK_REST,\"raw\":$raw}"
}

COMMANDS="$WORK/commands.txt"
: > "$COMMANDS"
cell() { # name, then corekv-bench arguments (without --target/--endpoints)
  local name=$1; shift
  echo "corekv-bench $* --target <corekv|etcd> --endpoints <addr> --json" >> "$COMMANDS"
  for t in etcd corekv; do
    echo "== $name: $t" >&2
    local out disk=""
    if [ "${name#check-perf}" != "$name" ]; then
      sync
      sleep "$CHECK_REST"
      disk=",\"disk_before\":$(disk_flush_json)"
    fi
    # check-perf exits non-zero on FAIL; its JSON is still the result.
    out=$("$BENCH" "$@" --target "$t" --endpoints "$(endpoint "$t")" --json --no-progress 2>"$WORK/err.txt") || true
    if [ -z "$out" ]; then
      out="{\"error\":$(python3 -c 'import json,sys; print(json.dumps(open(sys.argv[1]).read().strip()))' "$WORK/err.txt")}"
      echo "   failed: $(cat "$WORK/err.txt")" >&2
    fi
    echo "{\"name\":\"$name\",\"target\":\"$t\",\"result\":$out$disk}" >> "$JSONL"
    sample_rss "$name / $t"
  done
}

D="--duration $CELL"
KV="--key-size 8 --val-size 256"
cell "put, 1 client" put $D $KV --key-space-size 100000 --clients 1 --conns 1
cell "put, 256 clients / 16 conns" put $D $KV --key-space-size 100000 --clients 256 --conns 16
cell "put, 1000 clients / 100 conns" put $D $KV --key-space-size 100000 --clients 1000 --conns 100
cell "range 1 key serializable, 1 client" range $D $KV --key-space-size 10000 --consistency s --clients 1 --conns 1
cell "range 1 key linearizable, 1 client" range $D $KV --key-space-size 10000 --consistency l --clients 1 --conns 1
cell "range 1 key serializable, 256 clients / 16 conns" range $D $KV --key-space-size 10000 --consistency s --clients 256 --conns 16
cell "range 1 key linearizable, 256 clients / 16 conns" range $D $KV --key-space-size 10000 --consistency l --clients 256 --conns 16
cell "range 1000 keys linearizable, 16 clients / 4 conns" range $D $KV --key-space-size 10000 --limit 1000 --consistency l --clients 16 --conns 4
cell "txn-put 16 ops, 256 clients / 16 conns" txn-put $D $KV --key-space-size 100000 --txn-ops 16 --clients 256 --conns 16
cell "txn-mixed 4 reads : 1 write, 256 clients / 16 conns" txn-mixed $D $KV --key-space-size 10000 --rw-ratio 4 --clients 256 --conns 16
# Watch: put -> event latency with 1,000 watchers on one key over 100 streams (one
# connection each), puts one at a time; then etcd benchmark's watch shape (10 streams x 100
# watchers, puts from 16 clients) for event throughput.
cell "watch-latency, 1,000 watchers / 100 streams" watch-latency --watchers 1000 --streams 100 --puts $((20 * CELL))
cell "watch, 10 streams x 100 watchers, 1 key" watch --streams 10 --watchers-per-stream 100 --conns 10 --total $((50 * CELL)) --clients 16
# Lease keep-alive: 10,000 leases, 4 connections x 2 loops (1,250 leases per loop). A corekv
# message carries the round's ids; etcd's carries one (a round is that many pipelined
# messages). The second row sends one id per message on both.
cell "lease-keepalive, 10,000 leases, rounds of 1,000 ids" lease-keepalive --leases 10000 --conns 4 --inflight 2 --batch 1000 --duration "$CELL"
cell "lease-keepalive, 10,000 leases, 1 id per round" lease-keepalive --leases 10000 --conns 4 --inflight 2 --batch 1 --duration "$CELL"
cell "check-perf l" check-perf --load l --duration "$CHECK"
cell "check-perf xl" check-perf --load xl --duration "$CHECK"

echo "== $RESTART_KEYS keys: RSS, data size, restart to first read" >&2
kill "$CK_PID" "$ET_PID"; wait "$CK_PID" "$ET_PID" 2>/dev/null || true
CK_PID=""; ET_PID=""
RESTART="$WORK/restart.jsonl"
: > "$RESTART"
echo "corekv-bench put --sequential-keys --key-size 8 --val-size 256 --key-space-size $RESTART_KEYS --total $RESTART_KEYS --clients 1000 --conns 100 --target <t> --endpoints <addr> --json" >> "$COMMANDS"
echo "corekv-bench first-read --target <t> --endpoints <addr> --key-size 8 --json   (right after SIGKILL and start)" >> "$COMMANDS"
pid_of() { [ "$1" = corekv ] && echo "$CK_PID" || echo "$ET_PID"; }
start_target() { if [ "$1" = corekv ]; then start_corekv "$2"; else start_etcd "$2"; fi; }
# One target's step; a failure is recorded and the other target still runs.
restart_step() { # target
  local t=$1 dir="$WORK/$1-big" load mem size t0 t1 first mem_after
  start_target "$t" "$dir"
  wait_ready "$t" || return 1
  load=$("$BENCH" put --target "$t" --endpoints "$(endpoint "$t")" --sequential-keys --key-size 8 --val-size 256 \
    --key-space-size "$RESTART_KEYS" --total "$RESTART_KEYS" --clients 1000 --conns 100 --json --no-progress) \
    || { echo "load of $RESTART_KEYS keys into $t failed" >&2; return 1; }
  mem=$(mem_json "$(pid_of "$t")" "")
  size=$(du -sb "$dir" | cut -f1)
  kill -9 "$(pid_of "$t")"; wait "$(pid_of "$t")" 2>/dev/null || true
  t0=$(date +%s%N)
  start_target "$t" "$dir"
  first=$("$BENCH" first-read --target "$t" --endpoints "$(endpoint "$t")" --key-size 8 --json) \
    || { echo "$t: no successful read after the restart" >&2; return 1; }
  t1=$(date +%s%N)
  mem_after=$(mem_json "$(pid_of "$t")" "")
  echo "{\"target\":\"$t\",\"keys\":$RESTART_KEYS,\"load\":$load,$mem,\"data_bytes\":$size,\"restart_seconds\":$(python3 -c "print(($t1-$t0)/1e9)"),\"first_read\":$first,\"after_restart\":{$mem_after}}" >> "$RESTART"
}
for t in etcd corekv; do
  if ! restart_step "$t"; then
    echo "{\"target\":\"$t\",\"keys\":$RESTART_KEYS,\"error\":\"see $t.log in the kept work dir\"}" >> "$RESTART"
    RESTART_FAILED=1
  fi
  p=$(pid_of "$t")
  if [ -n "$p" ]; then kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; fi
  if [ "$t" = corekv ]; then CK_PID=""; else ET_PID=""; fi
  rm -rf "$WORK/$t-big"
done
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

echo "== writing $RESULT" >&2
python3 perf/compare_report.py \
  --results "$JSONL" --rss "$RSSLOG" --restart "$RESTART" --wal "$WORK/wal.txt" --rtt "$WORK/rtt.json" \
  --commands "$COMMANDS" --out "$RESULT" --plots "$OUT/$NAME" \
  --cell-seconds "$CELL" --check-perf-seconds "$CHECK" --invocation "$INVOCATION" \
  --load-start "$LOAD_START" --load-end "$LOAD_END" \
  --corekv-version "$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . || echo '-dirty')" \
  --etcd-version "$(etcd --version | head -1)" \
  --machine "$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)"
echo "wrote $RESULT" >&2
if [ -n "${RESTART_FAILED:-}" ]; then
  echo "the $RESTART_KEYS-key restart step failed for at least one server (see $RESULT)" >&2
  exit 1
fi
