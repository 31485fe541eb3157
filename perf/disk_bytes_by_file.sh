#!/usr/bin/env bash
# Bytes the disk is asked to write per request, split by file (backend `db`, WAL, other),
# while a load runs against a fresh server.
#
# usage: perf/disk_bytes_by_file.sh <corekv binary> <warmup s> <window s> -- <corekv-bench args>
# example: perf/disk_bytes_by_file.sh target/release/corekv 2 3 -- put --clients 256 --conns 16 --total 250000 --val-size 256 --key-space-size 100000
#
# Starts the binary on a fresh data dir (fresh_server.sh), runs corekv-bench against it, and
# between <warmup> and <warmup + window> seconds records the block layer's write requests
# (`perf record -e block:block_rq_issue -a`, needs root) and the store revision. The data
# dir's files are mapped to disk sectors with `filefrag` at the start and at the end of the
# window, so a WAL segment released during the window still counts as WAL; "other" is what
# no file of the data dir holds: the ext4 journal and metadata, and any other process's
# writes. Prints the bench's summary line, then per class MB, bytes per request served
# (revisions in the window), disk requests and their mean size. The data dir (under mktemp
# -d's directory) must be on a filesystem that spans a whole disk, not a partition:
# `filefrag` gives sectors within the filesystem, the block layer within the device.
set -euo pipefail
[[ $# -ge 5 && $4 == -- ]] || { sed -n 5,6p "$0" >&2; exit 2; }
BIN=$1; WARMUP=$2; WINDOW=$3; shift 4
source "$(dirname "$0")/fresh_server.sh"
fresh_server "$BIN"
extents() {
  find "$D/data" -type f | while read -r f; do
    filefrag -v -b512 "$f" 2>/dev/null | awk -v f="$(basename "$f")" \
      '$1 ~ /^[0-9]+:$/ { gsub(/\.\./, " "); gsub(/:/, " "); print f, $4, $5 }'
  done
}
"$BENCH" "$@" --no-progress --endpoints $ADDR > "$D/bench" 2>&1 &
BP=$!
sleep "$WARMUP"
extents > "$D/extents"; R0=$(revision)
perf record -q -o "$D/perf.data" -e block:block_rq_issue -a -- sleep "$WINDOW" 2> /dev/null
R1=$(revision); extents >> "$D/extents"
wait $BP || true
grep -E "req/s" "$D/bench" | head -1 || true
perf script -i "$D/perf.data" 2> /dev/null | grep -oE ' W[A-Z]* [0-9]+ \(\) [0-9]+ \+ [0-9]+' > "$D/requests" || true
python3 - "$D/extents" "$D/requests" $((R1 - R0)) <<'PY'
import bisect, collections, sys
ext = sorted({(int(a), int(b), f) for f, a, b in (l.split() for l in open(sys.argv[1]))})
starts = [e[0] for e in ext]
n = max(int(sys.argv[3]), 1)
size, reqs = collections.Counter(), collections.Counter()
for line in open(sys.argv[2]):
    p = line.split()
    sector, sectors = int(p[3]), int(p[5])
    # The two snapshots can disagree (an extent that grew or merged in the window), so the
    # extent holding the sector need not be the last one starting before it.
    name = "other"
    i = bisect.bisect_right(starts, sector) - 1
    while i >= 0 and i >= bisect.bisect_right(starts, sector) - 64:
        if ext[i][0] <= sector <= ext[i][1]:
            name = "wal" if ext[i][2].endswith((".wal", ".prep")) else ext[i][2]
            break
        i -= 1
    size[name] += sectors * 512
    reqs[name] += 1
print(f"requests served in the window: {n}")
for k, v in size.most_common():
    print(f"{k:8s} {v / 1e6:8.1f} MB {v / n:7.0f} B/request {reqs[k]:7d} disk writes {v / reqs[k] / 1024:6.1f} KiB each")
print(f"{'total':8s} {sum(size.values()) / 1e6:8.1f} MB {sum(size.values()) / n:7.0f} B/request")
PY
