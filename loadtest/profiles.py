#!/usr/bin/env python3
"""Where a server's CPU goes under dnsperf load, and where clusterdns's heap goes.

    loadtest/profiles.py perf --server clusterdns|knot --workload zone|cache [--services 5000]
    loadtest/profiles.py heap --services 5000 [--seconds 120]

`perf`: starts the server pinned to core 0 as compare.py does (with the Knot upstream for the
cache workload, warmed), records `perf record -F 2999 -p PID` while dnsperf runs --seconds on
core 1, and prints the share of the server's CPU per component (kernel, hickory_proto, malloc,
moka, tokio, ...). Needs `perf` (linux-perf). `heap`: runs clusterdns under
`valgrind --tool=massif` until it has loaded the cluster (then SIGINT) and prints the peak heap
attributed to the first clusterdns function of each allocation stack. Needs valgrind.
Only loopback is queried; every process started is stopped by pid.
"""

import argparse
import collections
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare as c  # noqa: E402

COMPONENTS = [
    "hickory_proto", "prometheus", "moka", "dashmap", "tokio", "clusterdns::zone",
    "clusterdns::server", "clusterdns::upstream", "clusterdns::ops", "clusterdns::source",
    "crossbeam", "hashbrown", "core", "alloc", "std",
]


def component(dso, kind, sym):
    if kind == "k":
        return "kernel (network stack, syscalls)"
    if dso.startswith("libc"):
        if re.search(r"malloc|free|_int_|unlink_chunk|tcache|realloc", sym):
            return "libc malloc/free"
        return "libc memcpy/memset" if "mem" in sym else "libc other"
    s = sym.lstrip("<").strip()
    for crate in COMPONENTS:
        if s.startswith(crate):
            return crate
    return dso if not dso.startswith("clusterdns") else "clusterdns other"


def perf_summary(data):
    out = subprocess.run(["perf", "report", "-i", data, "--no-children", "--sort", "dso,sym", "--stdio", "-g", "none"], capture_output=True, text=True).stdout
    agg = collections.Counter()
    for line in out.splitlines():
        m = re.match(r"\s+([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(.*)", line)
        if m:
            agg[component(m.group(2), m.group(3), m.group(4))] += float(m.group(1))
    for k, v in agg.most_common(16):
        print(f"{v:6.1f}%  {k}")


def run_perf(args, work):
    data = os.path.join(args.data, str(args.services))
    c.gen(args.services, data, 200000)
    started = []
    try:
        up = c.start_knot({"example.org": os.path.join(data, "upstream.zone")}, work, "upstream-knot")
        started.append(up)
        if args.server == "clusterdns":
            srv = c.start_clusterdns(args.binary, os.path.join(data, "manifests"), up.port, work)
        else:
            if args.workload == "cache":
                sys.exit("knot is authoritative only: use --workload zone")
            srv = c.start_knot({"cluster.local": os.path.join(data, "cluster.local.zone")}, work)
        started.append(srv)
        q = os.path.join(data, f"queries-{args.workload}.txt")
        c.dnsperf(srv.port, q, 3, clients=4, outstanding=50)
        out = os.path.join(work, "perf.data")
        perf = subprocess.Popen(["perf", "record", "-F", "2999", "-o", out, "-p", str(srv.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        r = c.measure(srv, q, args.seconds)
        perf.send_signal(signal.SIGINT)
        perf.wait(30)
        print(f"{args.server} {args.workload} {args.services} services: {r['qps']:.0f} QPS, {r['qps_per_core']:.0f} QPS per core, lost {r['lost']}")
    finally:
        for s in started:
            s.stop()
    perf_summary(out)


def massif_summary(path):
    lines = open(path).read().splitlines()
    peak = max(i for i, line in enumerate(lines) if line.startswith("heap_tree=peak"))
    tree = []
    for line in lines[peak + 1:]:
        if line.startswith("#---") or line.startswith("snapshot="):
            break
        m = re.match(r"( *)n\d+: (\d+) (.*)", line)
        if m:
            tree.append((len(m.group(1)), int(m.group(2)), m.group(3)))
    total, agg, skip_below = tree[0][1], collections.Counter(), None
    for depth, size, fn in tree[1:]:
        if skip_below is not None and depth > skip_below:
            continue
        skip_below = None
        m = re.search(r"(clusterdns::[\w:]+)", fn)
        if m and "clusterdns::main" not in fn and "clusterdns::serve" not in fn:
            agg[m.group(1)] += size
            skip_below = depth
        elif "below massif's threshold" in fn:
            agg["(small allocations below massif's threshold)"] += size
            skip_below = depth
    print(f"peak heap {total / 1e6:.1f} MB")
    for k, v in agg.most_common(20):
        print(f"{v / 1e6:7.1f} MB {100 * v / total:5.1f}%  {k}")


def run_heap(args, work):
    data = os.path.join(args.data, str(args.services))
    c.gen(args.services, data, 200000)
    conf = os.path.join(work, "massif.toml")
    with open(conf, "w") as f:
        f.write(
            f'zone = "cluster.local"\nlisten = ["127.0.0.1:0"]\nmanifests = "{data}/manifests"\n'
            'upstreams = ["127.0.0.1:9"]\nmetrics_listen = "off"\nhealth_listen = "off"\nready_listen = "off"\n'
        )
    out = os.path.join(work, "massif.out")
    proc = subprocess.Popen(["valgrind", "--tool=massif", f"--massif-out-file={out}", "--depth=30", args.binary, "serve", "--config", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait(args.seconds)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        proc.wait(120)
    massif_summary(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["perf", "heap"])
    ap.add_argument("--server", default="clusterdns", choices=["clusterdns", "knot"])
    ap.add_argument("--workload", default="zone", choices=["zone", "cache"])
    ap.add_argument("--services", type=int, default=5000)
    ap.add_argument("--seconds", type=int, default=None, help="perf: dnsperf run (5); heap: time under valgrind before SIGINT (120)")
    ap.add_argument("--data", default="/tmp/clusterdns-loadtest")
    ap.add_argument("--binary", default=os.path.join(c.REPO, "target/release/clusterdns"))
    args = ap.parse_args()
    if "/usr/sbin" not in os.environ.get("PATH", ""):
        os.environ["PATH"] += ":/usr/sbin:/sbin"
    work = tempfile.mkdtemp(prefix="clusterdns-profile-")
    if args.mode == "perf":
        args.seconds = args.seconds or 5
        run_perf(args, work)
    else:
        args.seconds = args.seconds or 120
        run_heap(args, work)
    print(f"(raw data in {work})")


if __name__ == "__main__":
    main()
