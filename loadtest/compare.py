#!/usr/bin/env python3
"""Side-by-side DNS benchmark of clusterdns and its peers on loopback.

    loadtest/compare.py [--rounds 3] [--seconds 10] [--workloads auth,cache,tcp,scale]

Installs nothing. Needs the Debian packages
    apt-get install -y dnsperf knot nsd dnsmasq unbound
and a release build (`cargo build --release`). Every server is pinned to core 0 with
`taskset -c 0` and runs one worker; dnsperf runs on core 1. Only 127.0.0.1 is ever queried,
every dnsperf run is bounded by -l SECONDS, and every process started here is stopped (by
its own pid) before exit. See loadtest/README.md.
"""

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
SERVER_CORE = "0"
CLIENT_CORE = "1"
TOOLS = {
    "dnsperf": "dnsperf",
    "knotd": "knot",
    "nsd": "nsd",
    "dnsmasq": "dnsmasq",
    "unbound": "unbound",
    "taskset": "util-linux",
}


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def free_port():
    """A port free for both UDP and TCP on 127.0.0.1 (the peers need a number up front)."""
    for _ in range(50):
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind(("127.0.0.1", 0))
        port = u.getsockname()[1]
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            t.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            t.close()
            u.close()
    raise RuntimeError("no free port")


# ------------------------------------------------------------------ process accounting


def tree(pid):
    """pid and all its descendants."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
        except OSError:
            continue
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pid):
    """utime + stime of pid and its descendants (all threads), in seconds."""
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total / CLK_TCK


def rss_mb(pid):
    """Resident memory of pid and its descendants, MB (VmRSS)."""
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


# ------------------------------------------------------------------ a tiny DNS client


def dns_query(port, name, qtype=1, timeout=0.5):
    """One UDP question to 127.0.0.1:port; returns the response bytes or None."""
    qid = random.randrange(65536)
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.rstrip(".").split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\0" + struct.pack(">HH", qtype, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        s.sendto(q, ("127.0.0.1", port))
        while True:
            data, _ = s.recvfrom(4096)
            if data[:2] == q[:2]:
                return data
    except OSError:
        return None
    finally:
        s.close()


def answer_key(resp):
    """The response without its id: equal bytes mean the same answer."""
    return None if resp is None else resp[2:]


def rcode(resp):
    return None if resp is None else resp[3] & 0x0F


# ------------------------------------------------------------------ servers


class Server:
    """One server process pinned to the server core."""

    def __init__(self, name, argv, port, workdir, env=None, stdout=None):
        self.name, self.port, self.workdir = name, port, workdir
        self.err = open(os.path.join(workdir, f"{name}.stderr"), "w")
        self.proc = subprocess.Popen(
            ["taskset", "-c", SERVER_CORE] + argv,
            stdout=stdout or self.err,
            stderr=self.err,
            env=env,
            start_new_session=True,
        )
        self.pid = self.proc.pid

    def wait_answering(self, name="dns-version.cluster.local", qtype=16, limit=120):
        deadline = time.time() + limit
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.err.name}")
            if dns_query(self.port, name, qtype, 0.2) is not None:
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not answer on {self.port} in {limit}s")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.err.close()


def start_clusterdns(binary, manifests, upstream_port, workdir, tag="clusterdns", cache=True):
    conf = os.path.join(workdir, f"{tag}.toml")
    with open(conf, "w") as f:
        f.write(
            f'zone = "cluster.local"\nlisten = ["127.0.0.1:0"]\nmanifests = "{manifests}"\n'
            f'upstreams = ["127.0.0.1:{upstream_port}"]\nmetrics_listen = "off"\n'
            f'health_listen = "off"\nready_listen = "127.0.0.1:0"\nadmin_listen = "off"\n'
            f"[server]\nudp_workers = 1\n"
            + ("" if cache else "[cache]\ncapacity = 0\n")
        )
    out = os.path.join(workdir, f"{tag}.stdout")
    started = time.time()
    srv = Server(tag, [binary, "serve", "--config", conf], 0, workdir, env=dict(os.environ, RUST_LOG="warn"), stdout=open(out, "w"))
    dns = ready = None
    deadline = time.time() + 60
    while time.time() < deadline and (dns is None or ready is None):
        if srv.proc.poll() is not None:
            raise RuntimeError(f"clusterdns exited; see {srv.err.name}")
        with open(out) as f:
            for line in f:
                m = re.match(r"listening (\w+) (\S+)", line)
                if m and m.group(1) == "dns":
                    dns = int(m.group(2).rsplit(":", 1)[1])
                elif m and m.group(1) == "ready":
                    ready = m.group(2)
        time.sleep(0.02)
    if dns is None or ready is None:
        srv.stop()
        raise RuntimeError("not serving after 60 s (no listening lines)")
    srv.port = dns
    deadline = time.time() + 600
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://{ready}/ready", timeout=1) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if srv.proc.poll() is not None:
            raise RuntimeError(f"clusterdns exited; see {srv.err.name}")
        time.sleep(0.02)
    srv.sync_seconds = time.time() - started
    srv.wait_answering()
    return srv


def start_knot(zones, workdir, tag="knot"):
    """zones: {origin: path}."""
    port = free_port()
    d = os.path.join(workdir, tag)
    os.makedirs(d, exist_ok=True)
    conf = os.path.join(d, "knot.conf")
    with open(conf, "w") as f:
        f.write(
            f'server:\n    rundir: "{d}"\n    listen: 127.0.0.1@{port}\n    udp-workers: 1\n'
            f"    tcp-workers: 1\n    background-workers: 1\n    tcp-max-clients: 200\n"
            f'database:\n    storage: "{d}"\ncontrol:\n    listen: "{d}/knot.sock"\n'
            f"log:\n  - target: stderr\n    any: warning\n"
            f'template:\n  - id: default\n    storage: "{d}"\n    semantic-checks: off\n'
            f"    zonefile-sync: -1\n    journal-content: none\n    zonefile-load: whole\n"
            f"zone:\n"
            + "".join(f'  - domain: {o}\n    file: "{p}"\n' for o, p in zones.items())
        )
    srv = Server(tag, ["knotd", "-c", conf], port, workdir)
    origin = next(iter(zones))
    srv.wait_answering(origin, 6)
    wait_zone_loaded(srv, origin)
    return srv


def wait_zone_loaded(srv, origin, limit=300):
    deadline = time.time() + limit
    while time.time() < deadline:
        r = dns_query(srv.port, origin, 6, 0.5)
        if r is not None and rcode(r) == 0 and struct.unpack(">H", r[6:8])[0] > 0:
            return
        time.sleep(0.1)
    raise RuntimeError(f"{srv.name} never served {origin}")


def start_nsd(zonefile, workdir):
    port = free_port()
    d = os.path.join(workdir, "nsd")
    os.makedirs(d, exist_ok=True)
    conf = os.path.join(d, "nsd.conf")
    with open(conf, "w") as f:
        f.write(
            f'server:\n    ip-address: 127.0.0.1@{port}\n    server-count: 1\n    username: ""\n'
            f'    chroot: ""\n    zonesdir: "{d}"\n    database: ""\n'
            f'    zonelistfile: "{d}/zone.list"\n    xfrdfile: "{d}/xfrd.state"\n'
            f'    pidfile: "{d}/nsd.pid"\n    logfile: "{d}/nsd.log"\n    verbosity: 0\n'
            f"    tcp-count: 200\n    rrl-ratelimit: 0\n    rrl-whitelist-ratelimit: 0\n"
            f"remote-control:\n    control-enable: no\n"
            f'zone:\n    name: cluster.local\n    zonefile: "{zonefile}"\n'
        )
    srv = Server("nsd", ["nsd", "-d", "-c", conf], port, workdir)
    srv.wait_answering("cluster.local", 6)
    wait_zone_loaded(srv, "cluster.local")
    return srv


def start_dnsmasq(upstream_port, workdir):
    port = free_port()
    argv = [
        "dnsmasq", "-k", "-C", "/dev/null", "-p", str(port), "--listen-address=127.0.0.1",
        "--bind-interfaces", "--no-resolv", "--no-hosts", f"--server=127.0.0.1#{upstream_port}",
        "--cache-size=10000", "--pid-file=", "-u", "root", "--log-facility=-",
    ]
    srv = Server("dnsmasq", argv, port, workdir)
    srv.wait_answering("example.org", 6)
    return srv


def start_unbound(upstream_port, workdir):
    port = free_port()
    d = os.path.join(workdir, "unbound")
    os.makedirs(d, exist_ok=True)
    conf = os.path.join(d, "unbound.conf")
    with open(conf, "w") as f:
        f.write(
            f"server:\n    interface: 127.0.0.1\n    port: {port}\n    num-threads: 1\n"
            f'    do-daemonize: no\n    username: ""\n    chroot: ""\n    directory: "{d}"\n'
            f'    pidfile: "{d}/unbound.pid"\n    use-syslog: no\n    logfile: ""\n'
            f"    verbosity: 0\n    do-not-query-localhost: no\n    do-ip6: no\n"
            f'    access-control: 127.0.0.0/8 allow\n    module-config: "iterator"\n'
            f"    msg-cache-size: 32m\n    rrset-cache-size: 64m\n    prefetch: no\n"
            f"    qname-minimisation: no\n    so-reuseport: no\n"
            f'forward-zone:\n    name: "."\n    forward-addr: 127.0.0.1@{upstream_port}\n'
        )
    srv = Server("unbound", ["unbound", "-d", "-c", conf], port, workdir)
    srv.wait_answering("example.org", 6)
    return srv


# ------------------------------------------------------------------ dnsperf


def dnsperf(port, queries, seconds, mode="udp", clients=16, outstanding=500, qps=None, verbose=False):
    argv = [
        "taskset", "-c", CLIENT_CORE, "dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", queries,
        "-l", str(seconds), "-c", str(clients), "-q", str(outstanding), "-T", "1", "-m", mode, "-t", "2",
    ]
    if qps:
        argv += ["-Q", str(qps)]
    if verbose:
        argv += ["-v"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30).stdout, argv


def parse_dnsperf(out):
    def num(pattern, cast=float):
        m = re.search(pattern, out)
        return cast(m.group(1)) if m else None

    return {
        "sent": num(r"Queries sent:\s+(\d+)", int),
        "completed": num(r"Queries completed:\s+(\d+)", int),
        "lost": num(r"Queries lost:\s+(\d+)", int),
        "qps": num(r"Queries per second:\s+([\d.]+)"),
        "avg_ms": (num(r"Average Latency \(s\):\s+([\d.]+)") or 0) * 1000,
        "noerror": num(r"NOERROR (\d+)", int),
        "nxdomain": num(r"NXDOMAIN (\d+)", int),
        "servfail": num(r"SERVFAIL (\d+)", int) or 0,
        "refused": num(r"REFUSED (\d+)", int) or 0,
    }


def latencies(out):
    """Per-query latencies (ms) from dnsperf -v lines: `> NOERROR name type 0.000123`."""
    lat = []
    for line in out.splitlines():
        if line.startswith(">"):
            try:
                lat.append(float(line.rsplit(None, 1)[1]) * 1000)
            except (ValueError, IndexError):
                pass
    return lat


def pct(values, p):
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p / 100))]


def measure(srv, queries, seconds, mode="udp", clients=16):
    """One saturating run: QPS, lost, server CPU seconds, QPS per server core, RSS."""
    cpu0 = cpu_seconds(srv.pid)
    out, argv = dnsperf(srv.port, queries, seconds, mode, clients)
    cpu = cpu_seconds(srv.pid) - cpu0
    r = parse_dnsperf(out)
    if r["qps"] is None:
        raise RuntimeError(f"dnsperf failed against {srv.name}:\n{out}")
    r["cpu_s"] = cpu
    r["qps_per_core"] = r["completed"] / cpu if cpu > 0 else float("inf")
    r["rss_mb"] = rss_mb(srv.pid)
    r["argv"] = " ".join(argv)
    return r


# Rounds of the latency measurement at most (each server, each round: one run of 5 s).
LATENCY_ROUNDS = 5


def measure_latency(srv, queries, seconds, qps):
    out, argv = dnsperf(srv.port, queries, seconds, qps=qps, clients=4, outstanding=200, verbose=True)
    lat = latencies(out)
    return {"p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "n": len(lat), "argv": " ".join(argv)}


# ------------------------------------------------------------------ workloads


def gen(services, out, queries):
    if not os.path.exists(os.path.join(out, "cluster.json")):
        log(f"generating {services} services in {out}")
        subprocess.run([sys.executable, os.path.join(HERE, "gen_cluster.py"), "--services", str(services), "--out", out, "--queries", str(queries)], check=True, stdout=subprocess.DEVNULL)
    with open(os.path.join(out, "cluster.json")) as f:
        return json.load(f)


def rounds(servers, queries, args, mode="udp", clients=16, workload=""):
    """Alternates servers for args.rounds rounds; returns {server: [results]}."""
    results = {s.name: [] for s in servers}
    for i in range(args.rounds):
        for s in servers:
            r = measure(s, queries, args.seconds, mode, clients)
            log(f"  {workload} round {i + 1} {s.name}: {r['qps']:.0f} qps, {r['qps_per_core']:.0f} qps/core, lost {r['lost']}, cpu {r['cpu_s']:.2f}s, rss {r['rss_mb']:.1f} MB")
            results[s.name].append(r)
    return results


def summarize(workload, results, lat=None, base="clusterdns"):
    rows = []
    med = {name: statistics.median(r["qps_per_core"] for r in rs) for name, rs in results.items()}
    for name, rs in results.items():
        row = {
            "server": name,
            "workload": workload,
            "qps": statistics.median(r["qps"] for r in rs),
            "avg_ms": statistics.median(r["avg_ms"] for r in rs),
            "lost": sum(r["lost"] for r in rs),
            "sent": sum(r["sent"] for r in rs),
            "rss_mb": max(r["rss_mb"] for r in rs),
            "qps_per_core": med[name],
            "cpu_s": statistics.median(r["cpu_s"] for r in rs),
            "rcodes": {k: rs[-1][k] for k in ("noerror", "nxdomain", "servfail", "refused")},
        }
        b = med.get(base) or next((v for k, v in med.items() if k.startswith(base)), None)
        row["ratio"] = b / med[name] if b and med[name] else None
        if lat and name in lat:
            row.update({"p50_ms": lat[name]["p50_ms"], "p99_ms": lat[name]["p99_ms"]})
        rows.append(row)
    return rows


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def table(rows):
    head = "| server | workload | QPS | avg ms | p50 ms | p99 ms | lost/sent | RSS MB | server CPU s | QPS per core | clusterdns / server (per core) |"
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        lines.append(
            f"| {r['server']} | {r['workload']} | {r['qps']:.0f} | {r['avg_ms']:.3f} | {fmt(r.get('p50_ms'), '.3f')} | {fmt(r.get('p99_ms'), '.3f')} | "
            f"{r['lost']}/{r['sent']} | {r['rss_mb']:.1f} | {r['cpu_s']:.2f} | {r['qps_per_core']:.0f} | {fmt(r['ratio'], '.2f')} |"
        )
    return "\n".join(lines)


QTYPES = {"A": 1, "NS": 2, "SOA": 6, "PTR": 12, "TXT": 16, "AAAA": 28, "SRV": 33}


def verify(servers, queries, sample=400):
    """Asks every server the same sample of questions and compares (rcode, answer count):
    the peers must be serving the same zone for the comparison to mean anything."""
    with open(queries) as f:
        lines = [l.split() for l in f.readlines()[:sample]]
    mismatches = []
    for name, qtype in lines:
        seen = {}
        for s in servers:
            r = dns_query(s.port, name, QTYPES[qtype], 1.0)
            seen[s.name] = None if r is None else (rcode(r), struct.unpack(">H", r[6:8])[0])
        if len(set(seen.values())) > 1:
            mismatches.append((name, qtype, seen))
    for m in mismatches[:10]:
        log(f"  MISMATCH {m}")
    log(f"  verified {len(lines)} questions: {len(mismatches)} differ")
    return len(mismatches)


def change_latency(srv, data_dir, summary, edits=5):
    """Edits one Service's ClusterIP in its manifest (write + rename) and polls until the
    answer changes; returns the seconds per edit."""
    probe = summary["probe"]
    path = os.path.join(data_dir, probe["file"])
    name = f"{probe['name']}.{probe['namespace']}.svc.cluster.local"
    with open(path) as f:
        original = f.read()
    old_ip = probe["ip"]
    times = []
    try:
        for i in range(edits):
            new_ip = f"10.95.{i}.{i + 1}"
            before = answer_key(dns_query(srv.port, name))
            text = original.replace(f'"clusterIP":"{old_ip}","clusterIPs":["{old_ip}"]', f'"clusterIP":"{new_ip}","clusterIPs":["{new_ip}"]')
            assert text != original
            tmp = os.path.join(os.path.dirname(path), ".edit.tmp")
            with open(tmp, "w") as f:
                f.write(text)
            t0 = time.time()
            os.rename(tmp, path)
            deadline = t0 + 30
            while time.time() < deadline:
                now = answer_key(dns_query(srv.port, name))
                if now is not None and now != before and socket.inet_aton(new_ip) in now:
                    break
                time.sleep(0.002)
            times.append(time.time() - t0)
            time.sleep(1.2)
    finally:
        with open(path, "w") as f:
            f.write(original)
    return times


def headless_cluster(d, slices, per_slice):
    """One headless Service `big` in namespace `hl` with `slices` EndpointSlices of
    `per_slice` endpoints each (hostnames `e-S-I`), one file per slice."""
    os.makedirs(d, exist_ok=True)
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "big", "namespace": "hl"},
           "spec": {"clusterIP": "None", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}
    with open(os.path.join(d, "service.json"), "w") as f:
        json.dump(svc, f)
    for k in range(slices):
        write_slice(d, k, per_slice, suffix="")


def write_slice(d, k, per_slice, suffix):
    eps = [{"addresses": [f"10.{64 + k // 250}.{k % 250}.{i + 1 if i < 250 else 0}" if per_slice <= 250 else f"10.{64 + k // 250}.{k % 250}.{i % 250 + 1}"],
            "hostname": f"e-{k}-{i}{suffix if i == 0 else ''}", "conditions": {"ready": True}} for i in range(per_slice)]
    sl = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
          "metadata": {"name": f"big-{k:04d}", "namespace": "hl", "labels": {"kubernetes.io/service-name": "big"}},
          "addressType": "IPv4", "endpoints": eps, "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
    tmp = os.path.join(d, ".slice.tmp")
    with open(tmp, "w") as f:
        json.dump(sl, f)
    os.rename(tmp, os.path.join(d, f"slice-{k:04d}.json"))


def headless_change(binary, upstream_port, work, slices, per_slice, edits=5):
    """Seconds from renaming one changed slice file (one endpoint renamed) into place to the
    new hostname answering, for a headless Service of slices x per_slice endpoints."""
    d = os.path.join(work, f"headless-{slices}x{per_slice}")
    headless_cluster(d, slices, per_slice)
    srv = start_clusterdns(binary, d, upstream_port, work, f"clusterdns-headless-{slices}x{per_slice}")
    times = []
    try:
        for v in range(edits):
            k = (v * 7) % slices
            t0 = time.time()
            write_slice(d, k, per_slice, suffix=f"-v{v}")
            name = f"e-{k}-0-v{v}.big.hl.svc.cluster.local"
            while time.time() < t0 + 30:
                r = dns_query(srv.port, name)
                if r is not None and rcode(r) == 0 and struct.unpack(">H", r[6:8])[0] > 0:
                    break
                time.sleep(0.002)
            times.append(time.time() - t0)
            time.sleep(1.2)
        rss = rss_mb(srv.pid)
    finally:
        srv.stop()
    return {"slices": slices, "per_slice": per_slice, "sync_s": srv.sync_seconds, "change_s": times, "rss_mb": rss}


# ------------------------------------------------------------------ main


def check_tools():
    missing = [pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}")]
    if missing:
        sys.exit("missing: apt-get install -y " + " ".join(sorted(set(missing))))
    if (os.cpu_count() or 1) < 2:
        sys.exit("needs 2 cores: the server on core 0, dnsperf on core 1")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--services", type=int, default=5000, help="cluster size of the auth/cache workloads")
    ap.add_argument("--scale", default="1000,5000,50000", help="cluster sizes of the scale workload")
    ap.add_argument("--workloads", default="auth,cache,tcp,scale,headless")
    ap.add_argument("--data", default="/tmp/clusterdns-loadtest", help="generated clusters (kept between runs)")
    ap.add_argument("--binary", default=os.path.join(REPO, "target/release/clusterdns"))
    ap.add_argument("--also", action="append", default=[], metavar="NAME=PATH", help="another clusterdns binary in the auth and cache workloads (e.g. a patched build)")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args()
    check_tools()
    if not os.path.exists(args.binary):
        sys.exit(f"{args.binary} missing: cargo build --release")
    if os.environ.get("PATH", "").find("/usr/sbin") < 0:
        os.environ["PATH"] += ":/usr/sbin:/sbin"
    workloads = args.workloads.split(",")
    also = [a.split("=", 1) for a in args.also]
    work = tempfile.mkdtemp(prefix="clusterdns-compare-")
    log(f"work dir {work}; uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    data = os.path.join(args.data, str(args.services))
    summary = gen(args.services, data, 200000)
    rows, extra, started = [], {}, []

    def keep(s):
        started.append(s)
        return s

    try:
        upstream = keep(start_knot({"example.org": os.path.join(data, "upstream.zone")}, work, "upstream-knot"))
        if "auth" in workloads or "tcp" in workloads:
            cdns = keep(start_clusterdns(args.binary, os.path.join(data, "manifests"), upstream.port, work))
            others = [keep(start_clusterdns(p, os.path.join(data, "manifests"), upstream.port, work, n)) for n, p in also]
            knot = keep(start_knot({"cluster.local": os.path.join(data, "cluster.local.zone")}, work))
            nsd = keep(start_nsd(os.path.join(data, "cluster.local.zone"), work))
            q = os.path.join(data, "queries-zone.txt")
            extra["verify_mismatches"] = verify([cdns, *others, knot, nsd], q)
            if "auth" in workloads:
                log("workload: authoritative cluster zone, UDP")
                res = rounds([cdns, *others, knot, nsd], q, args, workload="auth")
                knot_qps = statistics.median(r["qps"] for r in res["knot"])
                rate = int(knot_qps / 2)
                # Latency in rounds too, alternating between the servers: one 5 s run per
                # server put them a few microseconds apart in either order from run to run.
                latency_rounds = min(args.rounds, LATENCY_ROUNDS)
                runs = {s.name: [] for s in (cdns, *others, knot, nsd)}
                for i in range(latency_rounds):
                    for s in (cdns, *others, knot, nsd):
                        r = measure_latency(s, q, min(args.seconds, 5), rate)
                        runs[s.name].append(r)
                        log(f"  latency round {i + 1} at {rate} qps {s.name}: p50 {r['p50_ms']:.3f} ms p99 {r['p99_ms']:.3f} ms")
                lat = {
                    name: {
                        "p50_ms": statistics.median(r["p50_ms"] for r in rs),
                        "p99_ms": statistics.median(r["p99_ms"] for r in rs),
                    }
                    for name, rs in runs.items()
                }
                extra["latency_rate_qps"] = rate
                extra["latency_rounds"] = latency_rounds
                rows += summarize(f"zone UDP ({args.services} svc)", res, lat)
            if "tcp" in workloads:
                log("workload: authoritative cluster zone, TCP, 100 connections")
                res = rounds([cdns, knot], q, args, mode="tcp", clients=100, workload="tcp")
                rows += summarize("zone TCP (100 conns)", res)
            for s in (cdns, *others, knot, nsd):
                s.stop()
                started.remove(s)
        if "cache" in workloads:
            log("workload: cache hits (upstream: Knot DNS serving example.org)")
            cdns = keep(start_clusterdns(args.binary, os.path.join(data, "manifests"), upstream.port, work, "clusterdns"))
            others = [keep(start_clusterdns(p, os.path.join(data, "manifests"), upstream.port, work, n)) for n, p in also]
            dm = keep(start_dnsmasq(upstream.port, work))
            ub = keep(start_unbound(upstream.port, work))
            q = os.path.join(data, "queries-cache.txt")
            for s in (cdns, *others, dm, ub):
                # Warm: every name once (1000 names), so the measured runs are cache hits.
                dnsperf(s.port, q, 3, clients=4, outstanding=50)
            res = rounds([cdns, *others, dm, ub], q, args, workload="cache")
            rows += summarize("cache hits UDP", res)
            for s in (cdns, *others, dm, ub):
                s.stop()
                started.remove(s)
        if "scale" in workloads:
            log("workload: scale")
            scale = []
            # Every size's server runs at once and the rounds alternate between them, as the
            # peers' do: the machine's drift from one minute to the next (up to 25% here)
            # falls on every size alike instead of on whichever ran last.
            sizes = []
            for n in [int(x) for x in args.scale.split(",")]:
                d = os.path.join(args.data, str(n))
                summ = gen(n, d, 200000)
                s = keep(start_clusterdns(args.binary, os.path.join(d, "manifests"), upstream.port, work, f"clusterdns-{n}"))
                sizes.append((n, d, summ, s, rss_mb(s.pid)))
            res = {s.name: [] for (_, _, _, s, _) in sizes}
            for i in range(args.rounds):
                for n, d, _, s, _ in sizes:
                    r = measure(s, os.path.join(d, "queries-zone.txt"), args.seconds, "udp", 16)
                    log(f"  scale {n} round {i + 1} {s.name}: {r['qps']:.0f} qps, {r['qps_per_core']:.0f} qps/core, lost {r['lost']}, cpu {r['cpu_s']:.2f}s, rss {r['rss_mb']:.1f} MB")
                    res[s.name].append(r)
            for n, d, summ, s, idle_rss in sizes:
                changes = change_latency(s, d, summ)
                log(f"  {n} services: sync {s.sync_seconds:.2f}s, idle RSS {idle_rss:.1f} MB, change {['%.3f' % c for c in changes]}")
                scale.append({
                    "services": n,
                    "endpoints": summ["endpoints"],
                    "sync_s": s.sync_seconds,
                    "idle_rss_mb": idle_rss,
                    "qps": statistics.median(r["qps"] for r in res[s.name]),
                    "qps_per_core": statistics.median(r["qps_per_core"] for r in res[s.name]),
                    "rss_mb": max(r["rss_mb"] for r in res[s.name]),
                    "change_s": changes,
                })
                s.stop()
                started.remove(s)
            extra["scale"] = scale
        if "headless" in workloads:
            log("workload: one large headless Service, one slice changed")
            extra["headless"] = []
            for slices, per in ((1, 10), (10, 100), (100, 100)):
                try:
                    h = headless_change(args.binary, upstream.port, work, slices, per)
                except RuntimeError as error:
                    # A server that cannot load the service in time is a result, not a crash.
                    log(f"  {slices} x {per} endpoints: {error}")
                    extra["headless"].append({"slices": slices, "per_slice": per, "error": str(error)})
                    continue
                log(f"  {slices} x {per} endpoints: sync {h['sync_s']:.2f}s, change {['%.3f' % c for c in h['change_s']]}")
                extra["headless"].append(h)
    finally:
        for s in started:
            s.stop()
    if rows:
        print(table(rows))
    if "latency_rate_qps" in extra:
        print(f"\np50/p99: dnsperf -v at {extra['latency_rate_qps']} qps (half of Knot's median QPS), medians of {extra['latency_rounds']} alternating runs of up to 5 s per server.")
    if "scale" in extra:
        print("\n| services | endpoints | initial sync s | idle RSS MB | QPS | QPS per core | RSS after MB | change applied s (median, max of 5) |")
        print("|---|---|---|---|---|---|---|---|")
        for s in extra["scale"]:
            print(f"| {s['services']} | {s['endpoints']} | {s['sync_s']:.2f} | {s['idle_rss_mb']:.1f} | {s['qps']:.0f} | {s['qps_per_core']:.0f} | {s['rss_mb']:.1f} | {statistics.median(s['change_s']):.3f}, {max(s['change_s']):.3f} |")
    if "headless" in extra:
        print("\n| headless Service | endpoints | initial sync s | change of one slice applied s (median, max of 5) | RSS MB |")
        print("|---|---|---|---|---|")
        for h in extra["headless"]:
            if "error" in h:
                print(f"| {h['slices']} slices x {h['per_slice']} | {h['slices'] * h['per_slice']} | {h['error']} | - | - |")
                continue
            print(f"| {h['slices']} slices x {h['per_slice']} | {h['slices'] * h['per_slice']} | {h['sync_s']:.2f} | {statistics.median(h['change_s']):.3f}, {max(h['change_s']):.3f} | {h['rss_mb']:.1f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, **extra}, f, indent=1)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
