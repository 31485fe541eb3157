#!/usr/bin/env bash
# Server CPU per write, by thread, while a load runs.
#
# usage: perf/cpu_per_write.sh [--warmup S] [--window S] <corekv binary> -- <corekv-bench args>
# example: perf/cpu_per_write.sh target/release/corekv -- check-perf --load xl
#
# Starts the given corekv binary on a fresh data dir (127.0.0.1:24113, 8 GiB quota as in
# compare.sh), runs `corekv-bench <args> --no-progress --endpoints 127.0.0.1:24113` in the
# background, and after --warmup seconds (default 10) reads every server thread's CPU time
# (/proc/<pid>/task/*/stat) and the store revision; again after --window seconds (default 30).
# Prints CPU µs per write (revision difference) for each thread, so set-up and clean-up of
# the load are not counted. Meant for A/B comparisons of two builds on the same machine.
set -euo pipefail
WARMUP=10 WINDOW=30
while [[ $# -gt 0 && $1 == --* ]]; do
  case $1 in
    --warmup) WARMUP=$2; shift 2 ;;
    --window) WINDOW=$2; shift 2 ;;
    *) echo "unknown flag $1" >&2; exit 2 ;;
  esac
done
[[ $# -ge 2 && $2 == -- ]] || { sed -n 4,5p "$0" >&2; exit 2; }
BIN=$1; shift 2
source "$(dirname "$0")/fresh_server.sh"
fresh_server "$BIN"
ticks() {
  for t in /proc/$PID/task/*; do
    echo "$(tr ' ' _ < "$t/comm") $(awk '{print $14 + $15}' "$t/stat")"
  done | awk '{a[$1] += $2} END {for (k in a) print k, a[k]}' | sort
}
"$BENCH" "$@" --no-progress --endpoints $ADDR > "$D/bench" 2>&1 &
BP=$!
sleep "$WARMUP"; R0=$(revision); ticks > "$D/before"
sleep "$WINDOW"; R1=$(revision); ticks > "$D/after"
wait $BP || true
grep -E "req/s|error|PASS|FAIL" "$D/bench" || true
TICK_US=$((1000000 / $(getconf CLK_TCK)))
join "$D/before" "$D/after" | awk -v n=$((R1 - R0)) -v us="$TICK_US" '
  { d = ($3 - $2) * us / n; tot += d; printf "%-20s %7.1f us/write\n", $1, d }
  END { printf "%-20s %7.1f us/write (%d writes in the window)\n", "total", tot, n }'
