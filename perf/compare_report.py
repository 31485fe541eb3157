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
             "corekv-version", "etcd-version", "machine", "invocation"]:
    p.add_argument("--" + flag, required=True)
a = p.parse_args()

cells = {}  # name -> target -> result
order = []
disk_before = {}  # (name, target) -> the disk's flush latency before a check-perf run
for line in open(a.results):
    d = json.loads(line)
    if d["name"] not in cells:
        order.append(d["name"])
    cells.setdefault(d["name"], {})[d["target"]] = d["result"]
    if "disk_before" in d:
        disk_before[(d["name"], d["target"])] = d["disk_before"]
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
w("Produced by `{}` ({} s cells, {} s check-perf runs; exact commands "
  "below). Same load generator (`corekv-bench`, tokio current-thread runtime per load "
  "thread, clients spread over connections) against both servers in the same run, cells "
  "alternating etcd then corekv.".format(a.invocation.strip(), a.cell_seconds, a.check_perf_seconds))
w("")
w(f"- Machine: {a.machine}; ext4 on virtio. Load average (1, 5, 15 min) at start "
  f"{a.load_start}, at end {a.load_end}: the two servers are never loaded at the same time, so "
  "a 1-minute load above about 2 on these 2 cores means other jobs competed for them. The load "
  "generator runs on the same cores. The machine is shared: treat ratios as indicative.")
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
STREAM_WORKLOADS = ("watch", "watch-latency", "lease-keepalive")


def is_stream_cell(name):
    """Watch and lease cells have their own tables (their series are phases, not requests)."""
    return name.split(",")[0].split()[0] in STREAM_WORKLOADS


summary = {}
for name in order:
    if is_stream_cell(name):
        continue
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
w("")


def metric(r, k):
    return (r.get("metrics") or {}).get(k, 0)


def named(r, n):
    for x in r["series"]:
        if x["name"] == n:
            return x
    return None


watch_cells = [n for n in order if n.split(",")[0].split()[0] in ("watch", "watch-latency")]
if watch_cells:
    w("## Watch")
    w("")
    w("Watchers are created first (creation: from sending a create to the server's "
      "acknowledgement: corekv's reply to the create call, etcd's `created` response on the "
      "stream), then puts on watched keys; an event's latency runs from just before its put "
      "was sent to its arrival at the client. `watch-latency` puts one at a time and waits "
      "for all events of a put before the next; `watch` puts from 16 clients. Events/s: events "
      "received over the time from the first put to the last event. \"x etcd\": events/s "
      "ratio and event p99 ratio.")
    w("")
    w("| workload | target | watchers | created/s | create p99 | events/s | event p50 | p90 | p99 | max | errors | x etcd events/s | x etcd p99 |")
    w("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in watch_cells:
        prev = None
        for t in ["etcd", "corekv"]:
            r = cells[name].get(t)
            if series(r) is None:
                err = (r or {}).get("error", "missing")
                w(f"| {name} | {t} | failed: {err.splitlines()[0] if err else ''} | | | | | | | | | | |")
                continue
            ev, cr = named(r, "event"), named(r, "create")
            errs = sum(sum(x["errors"].values()) for x in r["series"])
            eps, p99 = metric(r, "events_per_sec"), ev["latency_us"]["p99"]
            rx = px = ""
            if t == "corekv" and prev:
                rx, px = ratio(eps, prev[0]), ratio(p99, prev[1])
            if t == "etcd":
                prev = (eps, p99)
            w(f"| {name} | {t} | {fmt(metric(r, 'watchers'))} | {fmt(metric(r, 'watchers_created_per_sec'))} | "
              f"{fmt(cr['latency_us']['p99'])} | {fmt(eps)} | {fmt(ev['latency_us']['p50'])} | "
              f"{fmt(ev['latency_us']['p90'])} | {fmt(p99)} | {fmt(ev['latency_us']['max'])} | {errs} | {rx} | {px} |")
    w("")

lease_cells = [n for n in order if n.startswith("lease-keepalive")]
if lease_cells:
    w("## Lease keep-alive")
    w("")
    w("Each loop sends keep-alive rounds for its share of the leases. **What one message "
      "carries differs**: a corekv keep-alive message carries all ids of a round; etcd's "
      "`LeaseKeepAlive` request carries one id, so an etcd round is that many messages, sent "
      "back to back on the leases' keep-alive streams (etcd-client opens one per lease) and "
      "awaited together. The 1-id rows compare one id per message on both. Keep-alives/s: "
      "leases refreshed per second; round latency: from sending a round to its last answer.")
    w("")
    w("| workload | target | ids per message | ids per round | keep-alives/s | round p50 | p99 | max | lost | errors | x etcd keep-alives/s |")
    w("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in lease_cells:
        prev = None
        for t in ["etcd", "corekv"]:
            r = cells[name].get(t)
            if series(r) is None:
                err = (r or {}).get("error", "missing")
                w(f"| {name} | {t} | failed: {err.splitlines()[0] if err else ''} | | | | | | | | |")
                continue
            s0 = r["series"][0]
            kps = metric(r, "keepalives_per_sec")
            rx = ratio(kps, prev) if (t == "corekv" and prev) else ""
            if t == "etcd":
                prev = kps
            w(f"| {name} | {t} | {fmt(metric(r, 'ids_per_message'))} | {fmt(metric(r, 'ids_per_round'))} | "
              f"{fmt(kps)} | {fmt(s0['latency_us']['p50'])} | {fmt(s0['latency_us']['p99'])} | "
              f"{fmt(s0['latency_us']['max'])} | {fmt(metric(r, 'lost'))} | {sum(s0['errors'].values())} | {rx} |")
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
        d = disk_before.get((name, t))
        if d and d.get("raw"):
            notes += (f" Disk before the run, after {d['rest_seconds']} s of rest: raw 4 KiB write "
                      f"+ fdatasync p50 {d['raw']['p50_us']} µs, p99 {d['raw']['p99_us']} µs.")
        w(f"- {name}, {t}: **{verdict}** ({checks}) {notes}")
w("")

keys = int(next(iter(restart.values()), {"keys": 0})["keys"])
w(f"## {keys:,} keys: memory, data size, restart")
w("")
w("Keys of 8 bytes with 256-byte values, loaded by `put --sequential-keys` at 1,000 clients "
  "into a fresh server; memory right after the load; data dir size (`du -sb`); then SIGKILL, "
  "start, and time until the first linearizable read of a loaded key succeeds (includes "
  "process start). Memory is VmRSS split into RssAnon (the process's own heap and stacks) "
  "and RssFile (resident pages of mapped files: both servers mmap their data file, so this "
  "is page cache that the kernel can reclaim under pressure).")
w("")
w("| target | load req/s | RSS MiB | anon MiB | file MiB | peak (VmHWM) MiB | data dir MiB | restart to first read s | RSS after restart MiB (anon / file) |")
w("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
MiB = lambda kib: f"{kib / 1024:,.0f}"
for t in ["etcd", "corekv"]:
    d = restart.get(t)
    if not d or "error" in d:
        w(f"| {t} | failed: {(d or {}).get('error', 'missing')} | | | | | | | |")
        continue
    thr = d["load"]["series"][0]["throughput"]
    ar = d["after_restart"]
    w(f"| {t} | {fmt(thr)} | {MiB(d['rss_kib'])} | {MiB(d['anon_kib'])} | {MiB(d['file_kib'])} | "
      f"{MiB(d['hwm_kib'])} | {d['data_bytes'] / 2**20:,.0f} | {d['restart_seconds']:.3f} | "
      f"{MiB(ar['rss_kib'])} ({MiB(ar['anon_kib'])} / {MiB(ar['file_kib'])}) |")
w("")
if rss:
    w("Memory over the matrix (sampled after every cell): peak VmHWM " + ", ".join(
        f"{t} {max(x[t + '_hwm_kib'] for x in rss) / 1024:,.0f} MiB" for t in ["etcd", "corekv"]) +
      "; largest sample split as RssAnon / RssFile: " + ", ".join(
        "{} {} / {} MiB".format(t, *(lambda x: (MiB(x[t + '_anon_kib']), MiB(x[t + '_file_kib'])))(
            max(rss, key=lambda x: x[t + '_rss_kib']))) for t in ["etcd", "corekv"]) + ".")
    w("")
    w("<details><summary>Memory after each cell (MiB: RSS = anon + file + shmem)</summary>")
    w("")
    w("| after | etcd RSS | etcd anon | etcd file | corekv RSS | corekv anon | corekv file |")
    w("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for x in rss:
        w(f"| {x['label']} | {MiB(x['etcd_rss_kib'])} | {MiB(x['etcd_anon_kib'])} | {MiB(x['etcd_file_kib'])} | "
          f"{MiB(x['corekv_rss_kib'])} | {MiB(x['corekv_anon_kib'])} | {MiB(x['corekv_file_kib'])} |")
    w("")
    w("</details>")
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
if c and e and "error" not in c and "error" not in e:
    w(f"| {keys:,} keys: RSS ≤ 1/4 of etcd's | {ratio(c['rss_kib'], e['rss_kib'])} "
      f"(RssAnon alone: {ratio(c['anon_kib'], e['anon_kib'])}) | "
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
w(a.invocation.strip())
for line in open(a.commands):
    w(line.rstrip())
w("```")
w("")
open(a.out, "w").write("\n".join(out))
