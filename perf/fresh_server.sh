# Sourced by perf/cpu_per_write.sh and perf/machine_cpu_per_write.sh (not run on its own).
# `fresh_server <corekv binary>` starts it on a fresh data dir at $ADDR (127.0.0.1:24113, 8 GiB
# quota as in compare.sh), waits for "listening" (exits with its output if it never comes) and
# removes everything on exit. Sets ROOT, BENCH, CTL, ADDR, D (the scratch dir) and PID;
# `revision` prints the store's revision.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH=$ROOT/target/release/corekv-bench
CTL=$ROOT/target/release/corekvctl
ADDR=127.0.0.1:24113
fresh_server() {
  D=$(mktemp -d)
  "$1" --data-dir "$D/data" --listen-client-urls $ADDR --log-level warn \
    --quota-backend-bytes 8589934592 > "$D/out" 2>&1 &
  PID=$!
  trap 'kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; rm -rf "$D"' EXIT
  for _ in $(seq 100); do grep -q listening "$D/out" && break; sleep 0.1; done
  grep -q listening "$D/out" || { echo "corekv did not start within 10 s:" >&2; cat "$D/out" >&2; exit 1; }
}
revision() {
  "$CTL" --endpoints $ADDR endpoint status -w json | grep -oE '"revision":[0-9]+' | head -1 | cut -d: -f2
}
