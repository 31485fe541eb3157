#!/usr/bin/env python3
"""Turns perf/compare.sh's measurements into perf/results/<date>.md and PNG plots.

Inputs are the JSON lines corekv-bench printed (one per matrix cell and target), the RSS
samples, the restart measurements, corekv-bench wal's table (the raw fdatasync row) and
corekv-bench loopback-rtt's JSON. Plots are drawn with gnuplot when it is installed.
"""
import argparse
import json
import re
import shutil
import subprocess
import sys

p = argparse.ArgumentParser()
for flag in ["results", "rss", "restart", "wal", "rtt", "commands", "out", "plots",
             "cell-seconds", "check-perf-seconds", "load-start", "load-end",
             "corekv-version", "etcd-version", "machine"]:
    p.add_argument("--" + flag, required=True)
a = p.parse_args()

cells = {}  # name -> target -> result
order = []
for line in open(a.results):
    d = json.loads(line)
    if d["name"] not in cells:
        order.append(d["name"])
    cells.setdefault(d["name"], {})[d["target"]] = d["result"]
restart = {}
for line in open(a.restart):
    d = json.loads(line)
    restart[d["target"]] = d
rss = [json.loads(line) for line in open(a.rss)]
rtt = json.load(open(a.rtt))
raw = None
for line in open(a.wal):
    m = re.match(r"\|\s*raw\s*\|\s*\d+\s*\|\s*(\d+)\s*\|[^|]*\|\s*(\d+)\s*\|\s*(\d+)\s*\|", line)
    if m:
        raw = {"rate": int(m.group(1)), "p50": int(m.group(2)), "p99": int(m.group(3))}


def series(result):
    """The series of a result, or None when the run failed."""
    if result is None or "error" in result:
        return None
    return result["series"]


def fmt(x, digits=0):
    return f"{x:,.{digits}f}"


def ratio(a_, b_):
    return f"{a_ / b_:.2f}x" if b_ else "n/a"


out = []
w = out.append
w(f"# corekv vs etcd, {a.out.split('/')[-1][:-3]}")
w("")
w("Produced by `perf/compare.sh --cell-seconds {} --check-perf-seconds {}` (exact commands "
  "below). Same load generator (`corekv-bench`, tokio current-thread runtime per load "
  "thread, clients spread over connections) against both servers in the same run, cells "
  "alternating etcd then corekv.".format(a.cell_seconds, a.check_perf_seconds))
w("")
w(f"- Machine: {a.machine}; ext4 on virtio. **Shared**: other jobs (parallel builds and tests "
  f"of other work) ran on the same 2 cores; load average at start {a.load_start}, at end "
  f"{a.load_end}. The load generator also runs on these cores. Treat ratios as indicative.")
w(f"- corekv: {a.corekv_version} (release build, default flags: one shard per core, "
  "WAL fdatasync per group commit). etcd: {} (Debian package), single member, default "
  "flags (WAL fsync per commit).".format(a.etcd_version))
w("- Both on loopback, fresh data dirs, backend quota 8 GiB each.")
if raw:
    w(f"- Physical limits in the same run: the disk's raw 4 KiB write + fdatasync p50 "
      f"{raw['p50']} µs, p99 {raw['p99']} µs ({fmt(raw['rate'])}/s at one writer); loopback TCP "
      f"round trip p50 {rtt['p50_us']} µs, p99 {rtt['p99_us']} µs.")
w("")
w("## Matrix")
w("")
w("Throughput in successful requests/s; latencies in µs; \"x etcd\" is corekv's value divided "
  "by etcd's (throughput: higher is better; p99: lower is better).")
w("")
w("| workload | target | req/s | p50 | p90 | p99 | p99.9 | max | errors | x etcd req/s | x etcd p99 |")
w("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
summary = {}
for name in order:
    for t in ["etcd", "corekv"]:
        r = cells[name].get(t)
        ss = series(r)
        if ss is None:
            err = (r or {}).get("error", "missing")
            w(f"| {name} | {t} | failed: {err.splitlines()[0] if err else ''} | | | | | | | | |")
            continue
        for s in ss:
            label = name if len(ss) == 1 else f"{name} [{s['name']}]"
            lat = s["latency_us"]
            errs = sum(s["errors"].values())
            summary[(label, t)] = (s["throughput"], lat["p99"])
            rx = px = ""
            if t == "corekv" and (label, "etcd") in summary:
                et, ep = summary[(label, "etcd")]
                rx, px = ratio(s["throughput"], et), ratio(lat["p99"], ep)
            w(f"| {label} | {t} | {fmt(s['throughput'])} | {fmt(lat['p50'])} | {fmt(lat['p90'])} | "
              f"{fmt(lat['p99'])} | {fmt(lat['p999'])} | {fmt(lat['max'])} | {errs} | {rx} | {px} |")
w("| watch-latency, 1,000 watchers | both | not yet (watch subcommands land with the watch work) | | | | | | | | |")
w("| lease-keepalive | both | not yet (lease subcommands land with the lease work) | | | | | | | | |")
w("")
w("Load generator CPU seconds per cell (client-side cost; both targets share the machine "
  "with it):")
w("")
w("| workload | etcd | corekv |")
w("| --- | ---: | ---: |")
for name in order:
    row = []
    for t in ["etcd", "corekv"]:
        r = cells[name].get(t)
        row.append(f"{r['client_cpu_seconds']:.1f}" if series(r) is not None else "-")
    w(f"| {name} | {row[0]} | {row[1]} |")
w("")

w("## check-perf (etcdctl check perf's loads and criteria)")
w("")
for name in order:
    if not name.startswith("check-perf"):
        continue
    for t in ["etcd", "corekv"]:
        r = cells[name].get(t)
        if series(r) is None:
            w(f"- {name}, {t}: run failed: {(r or {}).get('error', 'missing')}")
            continue
        verdict = "PASS" if r["passed"] else "FAIL"
        checks = "; ".join(("ok " if c["pass"] else "FAIL ") + c["what"] for c in r["checks"])
        notes = " ".join(r.get("notes", []))
        w(f"- {name}, {t}: **{verdict}** ({checks}) {notes}")
w("")

w(f"## {int(restart.get('corekv', restart.get('etcd', {'keys': 0}))['keys']):,} keys: memory, data size, restart")
w("")
w("Keys of 8 bytes with 256-byte values, loaded by `put --sequential-keys` at 1,000 clients "
  "into a fresh server; RSS right after the load; data dir size (`du -sb`); then SIGKILL, "
  "start, and time until the first linearizable read of a loaded key succeeds (includes "
  "process start).")
w("")
w("| target | load req/s | RSS MiB | data dir MiB | restart to first read s | RSS after restart MiB |")
w("| --- | ---: | ---: | ---: | ---: | ---: |")
for t in ["etcd", "corekv"]:
    d = restart.get(t)
    if not d:
        w(f"| {t} | failed | | | | |")
        continue
    thr = d["load"]["series"][0]["throughput"]
    w(f"| {t} | {fmt(thr)} | {d['rss_kib'] / 1024:,.0f} | {d['data_bytes'] / 2**20:,.0f} | "
      f"{d['restart_seconds']:.3f} | {d['rss_after_restart_kib'] / 1024:,.0f} |")
w("")
w("Peak RSS (VmHWM) over the matrix: " + ", ".join(
    f"{t} {max(x[t + '_hwm_kib'] for x in rss) / 1024:,.0f} MiB" for t in ["etcd", "corekv"]) + "."
  if rss else "")
w("")

# Targets of the issue, computed from the numbers above.
w("## Against the targets (ratios to etcd in this run)")
w("")
w("| target | measured | met? |")
w("| --- | --- | --- |")


def get(label, t):
    return summary.get((label, t))


for label in ["put, 256 clients / 16 conns", "put, 1000 clients / 100 conns",
              "txn-put 16 ops, 256 clients / 16 conns"]:
    c, e = get(label, "corekv"), get(label, "etcd")
    if c and e:
        ok = c[0] >= 3 * e[0] and c[1] * 3 <= e[1]
        w(f"| writes ({label}): ≥ 3x throughput, ≤ 1/3 p99 | {ratio(c[0], e[0])} throughput, "
          f"{ratio(c[1], e[1])} p99 | {'yes' if ok else 'no'} |")
for label in ["range 1 key serializable, 256 clients / 16 conns",
              "range 1 key linearizable, 256 clients / 16 conns"]:
    c, e = get(label, "corekv"), get(label, "etcd")
    if c and e:
        w(f"| reads ({label}): ≥ 2x throughput | {ratio(c[0], e[0])} | {'yes' if c[0] >= 2 * e[0] else 'no'} |")
xl = cells.get("check-perf xl", {})
if series(xl.get("corekv")) is not None:
    w(f"| check-perf: corekv passes xl | {'PASS' if xl['corekv']['passed'] else 'FAIL'} | "
      f"{'yes' if xl['corekv']['passed'] else 'no'} |")
passes = []
for name in order:
    if name.startswith("check-perf") and series(cells[name].get("etcd")) is not None:
        passes.append(f"{name.split()[-1]}: {'PASS' if cells[name]['etcd']['passed'] else 'FAIL'}")
w(f"| check-perf: where etcd stops passing | {', '.join(passes) or 'n/a'} | (recorded) |")
c, e = restart.get("corekv"), restart.get("etcd")
if c and e:
    w(f"| restart: RSS ≤ 1/4 of etcd's | {ratio(c['rss_kib'], e['rss_kib'])} | "
      f"{'yes' if c['rss_kib'] * 4 <= e['rss_kib'] else 'no'} |")
    ok = c["restart_seconds"] <= 1 and c["restart_seconds"] * 10 <= e["restart_seconds"]
    w(f"| restart to first read ≤ 1 s and ≤ 1/10 of etcd's | {c['restart_seconds']:.3f} s vs "
      f"{e['restart_seconds']:.3f} s ({ratio(c['restart_seconds'], e['restart_seconds'])}) | "
      f"{'yes' if ok else 'no'} |")
w("")

# Plots: throughput and p99 against clients for puts and serializable 1-key ranges.
plots = []
if shutil.which("gnuplot"):
    curves = {
        "put": ["put, 1 client", "put, 256 clients / 16 conns", "put, 1000 clients / 100 conns"],
        "range-s": ["range 1 key serializable, 1 client",
                    "range 1 key serializable, 256 clients / 16 conns"],
        "range-l": ["range 1 key linearizable, 1 client",
                    "range 1 key linearizable, 256 clients / 16 conns"],
    }
    data = f"{a.plots}.dat"
    with open(data, "w") as f:
        for curve, labels in curves.items():
            for t in ["etcd", "corekv"]:
                f.write(f"# {curve} {t}\n")
                for label in labels:
                    v = get(label, t)
                    if v:
                        clients = int(re.search(r"(\d+) client", label).group(1))
                        f.write(f"{clients} {v[0]:.1f} {v[1]}\n")
                f.write("\n\n")
    for what, col, ylabel in [("throughput", 2, "successful requests/s"), ("p99", 3, "p99 latency, µs")]:
        png = f"{a.plots}-{what}.png"
        script = f"""
set terminal png size 900,500
set output '{png}'
set logscale x
set logscale y
set xlabel 'clients'
set ylabel '{ylabel}'
set key outside right
set title '{what} vs clients (corekv vs etcd, same run)'
plot '{data}' index 0 using 1:{col} with linespoints title 'put etcd', \
     '' index 1 using 1:{col} with linespoints title 'put corekv', \
     '' index 2 using 1:{col} with linespoints title 'range s etcd', \
     '' index 3 using 1:{col} with linespoints title 'range s corekv', \
     '' index 4 using 1:{col} with linespoints title 'range l etcd', \
     '' index 5 using 1:{col} with linespoints title 'range l corekv'
"""
        r = subprocess.run(["gnuplot"], input=script, text=True, capture_output=True)
        if r.returncode == 0:
            plots.append(png)
        else:
            print(f"gnuplot failed: {r.stderr}", file=sys.stderr)
if plots:
    w("## Plots")
    w("")
    for png in plots:
        name = png.split("/")[-1]
        w(f"![{name}]({name})")
    w("")

w("## Exact commands")
w("")
w("```")
w(f"perf/compare.sh --cell-seconds {a.cell_seconds} --check-perf-seconds {a.check_perf_seconds}")
for line in open(a.commands):
    w(line.rstrip())
w("```")
w("")
open(a.out, "w").write("\n".join(out))
