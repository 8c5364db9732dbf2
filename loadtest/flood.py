#!/usr/bin/env python3
"""Random-name flood against clusterdns's cache (issue 6: "cache memory stays within its
configured capacity under a random-name flood").

    loadtest/flood.py [--capacity 10000] [--names 500000] [--seconds 20]
                      [--phases positive,negative,zone]

Starts a local upstream (Knot DNS, as compare.py's cache workload) serving two zones:
`flood.test` with a wildcard A record (every name answers, TTL 3600) and `nx.test` with
nothing but its apex (every name NXDOMAIN, negative TTL 3600). For each phase it starts a
fresh clusterdns (release build, `[cache] capacity = negative_capacity = --capacity`,
forwarding to that upstream, serving a generated cluster of --services Services), reads VmRSS
and the `coredns_cache_entries` gauges, sends --names unique random names with dnsperf for
--seconds (open-ended: dnsperf loops over the file if it gets through it), samples RSS every
second meanwhile, then reads RSS, VmHWM and the gauges again:

    positive  <random>.flood.test A: every answer a new positive cache entry
    negative  <random>.nx.test A: every answer a new negative (NXDOMAIN) cache entry
    zone      <random>.<ns>.svc.cluster.local / <random>.svc.cluster.local A: NXDOMAIN from
              the cluster zone, never cached: memory must not grow at all

It checks that the entries never exceed the capacity (exit status 1 otherwise) and prints a
table. Nothing is asserted on memory: the figures go to RESULTS.md. Only 127.0.0.1 is used;
every process is stopped by its own pid. Needs dnsperf, knotd and `cargo build --release`.
"""

import argparse
import os
import random
import re
import shutil
import string
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402  (the server helpers: Server, start_knot, rss_mb, dnsperf, ...)

UPSTREAM_ZONES = {
    "flood.test": "$ORIGIN flood.test.\n$TTL 3600\n"
    "@ SOA ns.flood.test. hostmaster.flood.test. 1 7200 1800 86400 3600\n"
    "@ NS ns.flood.test.\nns A 127.0.0.1\n* A 192.0.2.1\n",
    "nx.test": "$ORIGIN nx.test.\n$TTL 3600\n"
    "@ SOA ns.nx.test. hostmaster.nx.test. 1 7200 1800 86400 3600\n"
    "@ NS ns.nx.test.\nns A 127.0.0.1\n",
}


def vm(pid, field):
    """VmRSS / VmHWM of one process, MB."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def metrics(addr):
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=5) as r:
        return r.read().decode()


def sample(text, name, **labels):
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        series, _, value = line.rpartition(" ")
        if series.split("{", 1)[0] != name:
            continue
        if all(f'{k}="{v}"' in series for k, v in labels.items()):
            total += float(value)
    return total


def cache_state(addr):
    text = metrics(addr)
    return {
        "success": int(sample(text, "coredns_cache_entries", type="success")),
        "denial": int(sample(text, "coredns_cache_entries", type="denial")),
        "evictions": int(sample(text, "coredns_cache_evictions_total")),
        "misses": int(sample(text, "coredns_cache_misses_total")),
    }


def start_clusterdns(binary, manifests, upstream_port, workdir, capacity, tag):
    """clusterdns with a small cache and its metrics listener on; returns (server, metrics addr)."""
    conf = os.path.join(workdir, f"{tag}.toml")
    with open(conf, "w") as f:
        f.write(
            f'zone = "cluster.local"\nlisten = ["127.0.0.1:0"]\nmanifests = "{manifests}"\n'
            f'upstreams = ["127.0.0.1:{upstream_port}"]\nmetrics_listen = "127.0.0.1:0"\n'
            f'health_listen = "off"\nready_listen = "127.0.0.1:0"\nadmin_listen = "off"\n'
            f"[server]\nudp_workers = 1\n"
            f"[cache]\ncapacity = {capacity}\nnegative_capacity = {capacity}\n"
        )
    out = os.path.join(workdir, f"{tag}.stdout")
    srv = compare.Server(tag, [binary, "serve", "--config", conf], 0, workdir, env=dict(os.environ, RUST_LOG="warn"), stdout=open(out, "w"))
    found = {}
    deadline = time.time() + 60
    while time.time() < deadline and not {"dns", "ready", "metrics"} <= found.keys():
        if srv.proc.poll() is not None:
            raise RuntimeError(f"clusterdns exited; see {srv.err.name}")
        with open(out) as f:
            for line in f:
                m = re.match(r"listening (\w+) (\S+)", line)
                if m:
                    found[m.group(1)] = m.group(2)
        time.sleep(0.02)
    if not {"dns", "ready", "metrics"} <= found.keys():
        srv.stop()
        raise RuntimeError("not serving after 60 s (no listening lines)")
    srv.port = int(found["dns"].rsplit(":", 1)[1])
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://{found['ready']}/ready", timeout=1) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        time.sleep(0.05)
    srv.wait_answering()
    return srv, found["metrics"]


def rand_label(rng, n=12):
    return "".join(rng.choice(string.ascii_lowercase + string.digits) for _ in range(n))


def query_file(path, phase, names, namespaces, rng):
    with open(path, "w") as f:
        for i in range(names):
            label = rand_label(rng)
            if phase == "positive":
                f.write(f"{label}.flood.test A\n")
            elif phase == "negative":
                f.write(f"{label}.nx.test A\n")
            elif i % 2:
                f.write(f"{label}.{rng.choice(namespaces)}.svc.cluster.local A\n")
            else:
                f.write(f"{label}.svc.cluster.local A\n")


def flood(srv, maddr, queries, seconds, capacity):
    """RSS and cache gauges before, during (every second) and after one dnsperf run."""
    time.sleep(1)
    before = cache_state(maddr)
    rss0 = vm(srv.pid, "VmRSS")
    argv = [
        "taskset", "-c", compare.CLIENT_CORE, "dnsperf", "-s", "127.0.0.1", "-p", str(srv.port), "-d", queries,
        "-l", str(seconds), "-c", "16", "-q", "500", "-T", "1", "-t", "2",
    ]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    samples, peak_entries = [], 0
    t0 = time.time()
    while p.poll() is None and time.time() - t0 < seconds + 30:
        time.sleep(1)
        rss = vm(srv.pid, "VmRSS")
        state = cache_state(maddr)
        peak_entries = max(peak_entries, state["success"], state["denial"])
        samples.append((round(time.time() - t0), rss, state["success"], state["denial"]))
    try:
        out, _ = p.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
        out, _ = p.communicate()
    time.sleep(1)
    after = cache_state(maddr)
    peak_entries = max(peak_entries, after["success"], after["denial"])
    r = compare.parse_dnsperf(out)
    return {
        "rss_before": rss0,
        "rss_after": vm(srv.pid, "VmRSS"),
        "hwm": vm(srv.pid, "VmHWM"),
        "before": before,
        "after": after,
        "peak_entries": peak_entries,
        "within": peak_entries <= capacity,
        "samples": samples,
        "dnsperf": r,
        "argv": " ".join(argv),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default=os.path.join(compare.REPO, "target", "release", "clusterdns"))
    ap.add_argument("--capacity", type=int, default=10000, help="[cache] capacity and negative_capacity (10000)")
    ap.add_argument("--names", type=int, default=500000, help="unique random names per query file (500000)")
    ap.add_argument("--seconds", type=int, default=20, help="length of each flood (dnsperf -l)")
    ap.add_argument("--services", type=int, default=1000, help="cluster served meanwhile (1000)")
    ap.add_argument("--phases", default="positive,negative,zone")
    ap.add_argument("--data", default="/tmp/clusterdns-loadtest")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    for tool in ("dnsperf", "knotd", "taskset"):
        if shutil.which(tool) is None and shutil.which(tool, path="/usr/sbin:/sbin") is None:
            sys.exit(f"{tool} missing (apt-get install -y dnsperf knot)")
    if not os.path.exists(args.binary):
        sys.exit(f"{args.binary} missing: cargo build --release")
    if "/usr/sbin" not in os.environ.get("PATH", ""):
        os.environ["PATH"] += ":/usr/sbin:/sbin"
    work = tempfile.mkdtemp(prefix="clusterdns-flood-")
    compare.log(f"work dir {work}; uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    data = os.path.join(args.data, str(args.services))
    compare.gen(args.services, data, 200000)
    namespaces = sorted(f[:-5] for f in os.listdir(os.path.join(data, "manifests")) if f.endswith(".json"))
    zones = {}
    for origin, text in UPSTREAM_ZONES.items():
        zones[origin] = os.path.join(work, f"{origin}.zone")
        with open(zones[origin], "w") as f:
            f.write(text)
    rng = random.Random(args.seed)
    results, started = {}, []
    try:
        upstream = compare.start_knot(zones, work, "upstream-knot")
        started.append(upstream)
        for phase in args.phases.split(","):
            queries = os.path.join(work, f"flood-{phase}.txt")
            query_file(queries, phase, args.names, namespaces, rng)
            srv, maddr = start_clusterdns(args.binary, os.path.join(data, "manifests"), upstream.port, work, args.capacity, f"clusterdns-{phase}")
            started.append(srv)
            compare.log(f"phase {phase}: {args.names} random names for {args.seconds} s")
            r = flood(srv, maddr, queries, args.seconds, args.capacity)
            results[phase] = r
            d = r["dnsperf"]
            compare.log(
                f"  RSS {r['rss_before']:.1f} -> {r['rss_after']:.1f} MB (VmHWM {r['hwm']:.1f}); entries success/denial "
                f"{r['before']['success']}/{r['before']['denial']} -> {r['after']['success']}/{r['after']['denial']} "
                f"(peak {r['peak_entries']}); evictions {r['after']['evictions']}; sent {d['sent']}, completed {d['completed']}, "
                f"QPS {d['qps']}, NOERROR {d['noerror']}, NXDOMAIN {d['nxdomain']}, SERVFAIL {d['servfail']}"
            )
            compare.log("  samples (s, RSS MB, success, denial): " + ", ".join(f"({t}, {m:.1f}, {s}, {n})" for t, m, s, n in r["samples"]))
            srv.stop()
            started.remove(srv)
    finally:
        for s in started:
            s.stop()
    compare.log(f"uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    print(f"\ncapacity {args.capacity} positive + {args.capacity} negative entries; {args.names} unique names per phase, {args.seconds} s each\n")
    print("| flood | questions answered | QPS | RSS before MB | RSS after MB | VmHWM MB | cache entries before (success/denial) | after | peak | evictions | within capacity |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for phase, r in results.items():
        d = r["dnsperf"]
        print(
            f"| {phase} | {d['completed']:,} | {d['qps']:,.0f} | {r['rss_before']:.1f} | {r['rss_after']:.1f} | {r['hwm']:.1f} | "
            f"{r['before']['success']}/{r['before']['denial']} | {r['after']['success']}/{r['after']['denial']} | {r['peak_entries']} | "
            f"{r['after']['evictions']:,} | {'yes' if r['within'] else '**no**'} |"
        )
    shutil.rmtree(work, ignore_errors=True)
    sys.exit(0 if all(r["within"] for r in results.values()) else 1)


if __name__ == "__main__":
    main()
