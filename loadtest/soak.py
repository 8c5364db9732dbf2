#!/usr/bin/env python3
"""Soak test of clusterdns (issue 8): steady mixed load while the cluster churns and an
upstream flaps, for N minutes, checking every answer and watching memory and descriptors.

    loadtest/soak.py [--minutes 10] [--rate 1000] [--binary target/release/clusterdns]

What it does, all on 127.0.0.1 and with the standard library only:

- writes a manifest directory: `stable.json` (--stable Services in namespace `stable`, never
  touched) and one file per churned Service (`churn-NNNNN.json`, namespace `soak`);
- starts a fake upstream (UDP and TCP) answering `hN.example.org A` with an address derived
  from N (TTL 5), NXDOMAIN for anything else; every --flap-period seconds it goes silent for
  --flap-silent seconds (it receives and never answers), then comes back;
- starts the server on that directory, forwarding to the fake upstream;
- sends queries at a fixed rate (open loop: answers are matched by id, a slow answer does not
  slow the sender): UDP from --udp-sockets sockets and pipelined TCP on --tcp-connections
  connections (--tcp-share of the queries). The mix: stable Services (A, exact answer
  required), churned Services (A: the answer must be one the zone held within --grace seconds
  before the question, NXDOMAIN only if the Service was absent in that window), missing names
  in the zone (NXDOMAIN), and upstream names (the right address, or SERVFAIL while the upstream
  is down and nothing is cached);
- every second: adds a Service, changes another's ClusterIP, removes a third (files written
  atomically, by rename);
- every --report-every seconds prints RSS and open file descriptors of the server, and the
  counts of answers, wrong answers, timeouts and SERVFAILs;
- at the end: whether RSS or fds trend upward after --warmup seconds (least-squares slope and
  first/last comparison), the server's own counters, and whether it is still alive. The exit
  status is 1 on any wrong answer, a crash, or an upward trend.

Every process it starts is stopped by its own pid before exit. See loadtest/README.md.
"""

import argparse
import json
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

ZONE = "cluster.local"
UPSTREAM_TTL = 5
UPSTREAM_NAMES = 500

TYPE_A = 1
RCODE_NOERROR, RCODE_SERVFAIL, RCODE_NXDOMAIN = 0, 2, 3


def log(*a):
    print(*a, flush=True)


# --------------------------------------------------------------------------------------------
# DNS wire format (just what the soak needs)


def encode_name(name):
    out = b""
    for label in name.rstrip(".").split("."):
        out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def build_query(qid, name, qtype=TYPE_A):
    header = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    return header + encode_name(name) + struct.pack(">HH", qtype, 1)


def skip_name(buf, pos):
    while True:
        length = buf[pos]
        if length == 0:
            return pos + 1
        if length & 0xC0 == 0xC0:
            return pos + 2
        pos += 1 + length


def read_name(buf, pos):
    labels, jumps = [], 0
    while True:
        length = buf[pos]
        if length == 0:
            return ".".join(labels).lower() + "."
        if length & 0xC0 == 0xC0:
            pos = ((length & 0x3F) << 8) | buf[pos + 1]
            jumps += 1
            if jumps > 20:
                raise ValueError("compression loop")
            continue
        labels.append(buf[pos + 1 : pos + 1 + length].decode("ascii", "replace"))
        pos += 1 + length


def parse_response(buf):
    """(id, rcode, qname, {A addresses in the answer section})."""
    qid, flags, qd, an, _ns, _ar = struct.unpack(">HHHHHH", buf[:12])
    pos, qname = 12, None
    for _ in range(qd):
        qname = read_name(buf, pos)
        pos = skip_name(buf, pos) + 4
    addrs = set()
    for _ in range(an):
        pos = skip_name(buf, pos)
        rtype, _cls, _ttl, rdlen = struct.unpack(">HHIH", buf[pos : pos + 10])
        pos += 10
        if rtype == TYPE_A and rdlen == 4:
            addrs.add(socket.inet_ntoa(buf[pos : pos + 4]))
        pos += rdlen
    return qid, flags & 0x0F, qname, addrs


# --------------------------------------------------------------------------------------------
# The fake upstream


def upstream_addr(n):
    return f"198.18.{n // 250}.{n % 250 + 1}"


class FlappingUpstream:
    """Answers hN.example.org A; NXDOMAIN for the rest; silent while `silent` is set."""

    def __init__(self):
        self.silent = threading.Event()
        self.received = 0
        for _ in range(50):
            self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.udp.bind(("127.0.0.1", 0))
            self.port = self.udp.getsockname()[1]
            self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                self.tcp.bind(("127.0.0.1", self.port))
                break
            except OSError:
                self.udp.close()
                self.tcp.close()
        self.tcp.listen(64)
        threading.Thread(target=self._serve_udp, daemon=True).start()
        threading.Thread(target=self._serve_tcp, daemon=True).start()

    def answer(self, request):
        self.received += 1
        if self.silent.is_set() or len(request) < 12:
            return None
        qid, flags = struct.unpack(">HH", request[:4])
        end = skip_name(request, 12) + 4
        question = request[12:end]
        qname = read_name(request, 12)
        qtype = struct.unpack(">H", request[end - 4 : end - 2])[0]
        m = re.fullmatch(r"h(\d+)\.example\.org\.", qname)
        rd = flags & 0x0100
        if m and int(m.group(1)) < UPSTREAM_NAMES:
            answers = b""
            if qtype == TYPE_A:
                answers = (
                    b"\xc0\x0c"
                    + struct.pack(">HHIH", TYPE_A, 1, UPSTREAM_TTL, 4)
                    + socket.inet_aton(upstream_addr(int(m.group(1))))
                )
            header = struct.pack(">HHHHHH", qid, 0x8080 | rd, 1, 1 if answers else 0, 0, 0)
            return header + question + answers
        soa = (
            encode_name("example.org")
            + struct.pack(">HHIH", 6, 1, 60, 0)  # rdlength patched below
        )
        rdata = encode_name("ns.example.org") + encode_name("hostmaster.example.org")
        rdata += struct.pack(">IIIII", 1, 7200, 1800, 86400, 60)
        soa = soa[:-2] + struct.pack(">H", len(rdata)) + rdata
        header = struct.pack(">HHHHHH", qid, 0x8080 | rd | RCODE_NXDOMAIN, 1, 0, 1, 0)
        return header + question + soa

    def _serve_udp(self):
        while True:
            try:
                data, peer = self.udp.recvfrom(4096)
            except OSError:
                return
            try:
                reply = self.answer(data)
            except (IndexError, struct.error, ValueError):
                reply = None
            if reply:
                self.udp.sendto(reply, peer)

    def _serve_tcp(self):
        while True:
            try:
                conn, _ = self.tcp.accept()
            except OSError:
                return
            threading.Thread(target=self._tcp_conn, args=(conn,), daemon=True).start()

    def _tcp_conn(self, conn):
        with conn:
            while True:
                data = recv_framed(conn)
                if data is None:
                    return
                reply = self.answer(data)
                if reply:
                    conn.sendall(struct.pack(">H", len(reply)) + reply)


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def recv_framed(sock):
    try:
        head = recv_exact(sock, 2)
        if head is None:
            return None
        return recv_exact(sock, struct.unpack(">H", head)[0])
    except OSError:
        return None


# --------------------------------------------------------------------------------------------
# The cluster: what the zone holds, and when it held it


def service_doc(ns, name, ip):
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": ip,
            "clusterIPs": [ip],
            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
        },
    }


def write_atomic(path, doc):
    directory, base = os.path.split(path)
    tmp = os.path.join(directory, f".{base}.tmp")
    with open(tmp, "w") as f:
        json.dump(doc, f)
    os.replace(tmp, path)


class Cluster:
    """The manifest directory and the history of every churned Service's address."""

    def __init__(self, directory, stable, churned, rng):
        self.dir = directory
        self.rng = rng
        self.lock = threading.Lock()
        self.next_ip = 1
        self.next_id = 0
        # name -> [(time, ip or None)], in time order; absent before the first entry.
        self.history = {}
        self.live = []
        self.removed = []
        self.stable = {}
        for i in range(stable):
            self.stable[f"s{i}.stable.svc.{ZONE}."] = self.ip()
        items = [service_doc("stable", n.split(".")[0], ip) for n, ip in self.stable.items()]
        write_atomic(
            os.path.join(directory, "stable.json"),
            {"apiVersion": "v1", "kind": "List", "items": items},
        )
        for _ in range(churned):
            self.add(0.0)
        self.changes = 0

    def ip(self):
        n = self.next_ip
        self.next_ip += 1
        return f"10.{96 + n // 65536}.{(n // 256) % 256}.{n % 256}"

    def path(self, name):
        return os.path.join(self.dir, name.split(".")[0] + ".json")

    def fqdn(self, short):
        return f"{short}.soak.svc.{ZONE}."

    def add(self, now):
        short = f"churn-{self.next_id:05d}"
        self.next_id += 1
        name, ip = self.fqdn(short), self.ip()
        with self.lock:
            self.history[name] = [(now, ip)]
            self.live.append(name)
        write_atomic(self.path(name), service_doc("soak", short, ip))

    def change(self, now):
        with self.lock:
            name = self.rng.choice(self.live)
            ip = self.ip()
            self.history[name].append((now, ip))
        write_atomic(self.path(name), service_doc("soak", name.split(".")[0], ip))

    def remove(self, now):
        with self.lock:
            name = self.live.pop(self.rng.randrange(len(self.live)))
            self.history[name].append((now, None))
            self.removed.append(name)
            self.removed = self.removed[-200:]
        os.remove(self.path(name))

    def churn(self, now):
        self.add(now)
        self.change(now)
        self.remove(now)
        self.changes += 3

    def pick(self):
        with self.lock:
            if self.removed and self.rng.random() < 0.2:
                return self.rng.choice(self.removed)
            return self.rng.choice(self.live)

    def acceptable(self, name, sent, received, grace):
        """The states (ip or None) the zone may answer with for a question asked at `sent`
        and answered at `received`: any it held from `sent - grace` until `received`."""
        with self.lock:
            history = list(self.history.get(name, []))
        states = set()
        if not history or history[0][0] > sent - grace:
            states.add(None)  # not created yet at some point in the window
        for i, (start, ip) in enumerate(history):
            end = history[i + 1][0] if i + 1 < len(history) else float("inf")
            if start <= received and end >= sent - grace:
                states.add(ip)
        return states


# --------------------------------------------------------------------------------------------
# Load


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.c = dict(
            sent=0, answered=0, wrong=0, timeout=0, servfail=0, upstream_ok=0, tcp_reconnects=0
        )
        self.wrong_examples = []

    def add(self, key, n=1):
        with self.lock:
            self.c[key] += n

    def timeouts(self, kinds):
        with self.lock:
            self.c["timeout"] += len(kinds)
            for kind in kinds:
                self.c[f"timeout_{kind}"] = self.c.get(f"timeout_{kind}", 0) + 1

    def snapshot(self):
        with self.lock:
            return dict(self.c)


class Checker:
    """Builds questions and judges answers."""

    def __init__(self, cluster, stats, rng, grace):
        self.cluster, self.stats, self.rng, self.grace = cluster, stats, rng, grace
        self.stable_names = list(cluster.stable)
        self.lock = threading.Lock()

    def question(self):
        with self.lock:
            r = self.rng.random()
            if r < 0.35:
                return ("stable", self.rng.choice(self.stable_names))
            if r < 0.65:
                return ("churn", self.cluster.pick())
            if r < 0.80:
                return ("missing", f"nope-{self.rng.randrange(10**9)}.soak.svc.{ZONE}.")
            return ("upstream", f"h{self.rng.randrange(UPSTREAM_NAMES)}.example.org.")

    def judge(self, kind, name, sent, received, rcode, addrs):
        ok = True
        if kind == "stable":
            ok = rcode == RCODE_NOERROR and addrs == {self.cluster.stable[name]}
        elif kind == "missing":
            ok = rcode == RCODE_NXDOMAIN and not addrs
        elif kind == "churn":
            states = self.cluster.acceptable(name, sent, received, self.grace)
            if rcode == RCODE_NXDOMAIN:
                ok = None in states and not addrs
            elif rcode == RCODE_NOERROR and len(addrs) == 1:
                ok = next(iter(addrs)) in states
            else:
                ok = False
        elif kind == "upstream":
            n = int(name[1:].split(".")[0])
            if rcode == RCODE_SERVFAIL:
                self.stats.add("servfail")
                return
            ok = rcode == RCODE_NOERROR and addrs == {upstream_addr(n)}
            if ok:
                self.stats.add("upstream_ok")
        if ok:
            return
        self.stats.add("wrong")
        with self.stats.lock:
            if len(self.stats.wrong_examples) < 20:
                self.stats.wrong_examples.append(
                    f"{kind} {name} rcode={rcode} addrs={sorted(addrs)} "
                    f"after {received - sent:.3f} s"
                )


class Outstanding:
    """Questions sent and not answered yet, by id, on one socket or connection."""

    def __init__(self):
        self.lock = threading.Lock()
        self.by_id = {}
        self.next_id = random.randrange(65536)

    def register(self, kind, name):
        with self.lock:
            for _ in range(65536):
                self.next_id = (self.next_id + 1) % 65536
                if self.next_id not in self.by_id:
                    break
            self.by_id[self.next_id] = (kind, name, time.monotonic())
            return self.next_id

    def take(self, qid):
        with self.lock:
            return self.by_id.pop(qid, None)

    def expire(self, older_than):
        now = time.monotonic()
        with self.lock:
            old = [q for q, (_, _, t) in self.by_id.items() if now - t > older_than]
            kinds = [self.by_id.pop(q)[0] for q in old]
        return kinds


def paced(rate, stop, step):
    """Calls step() `rate` times a second until stop is set (missed slots are skipped)."""
    interval = 1.0 / rate
    next_at = time.monotonic()
    while not stop.is_set():
        now = time.monotonic()
        if now < next_at:
            time.sleep(min(next_at - now, 0.05))
            continue
        if now - next_at > 1.0:
            next_at = now  # fell behind by a second: do not burst to catch up
        step()
        next_at += interval


def udp_client(addr, rate, checker, stats, stop, timeout):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(0.2)
    pending = Outstanding()
    done = threading.Event()  # set once the last answers had --timeout to arrive

    def receive():
        while not done.is_set():
            try:
                data = sock.recv(65535)
            except socket.timeout:
                continue
            except OSError:
                return
            received = time.monotonic()
            try:
                qid, rcode, _qname, addrs = parse_response(data)
            except (IndexError, struct.error, ValueError, UnicodeError):
                stats.add("wrong")
                continue
            entry = pending.take(qid)
            if entry is None:
                continue  # answered after we gave up on it
            kind, name, sent = entry
            stats.add("answered")
            checker.judge(kind, name, sent, received, rcode, addrs)

    def send():
        kind, name = checker.question()
        qid = pending.register(kind, name)
        stats.add("sent")
        try:
            sock.sendto(build_query(qid, name), addr)
        except OSError:
            pass

    def expire():
        while not stop.wait(0.5):
            stats.timeouts(pending.expire(timeout))

    threads = [threading.Thread(target=f, daemon=True) for f in (receive, expire)]
    for t in threads:
        t.start()
    paced(rate, stop, send)
    time.sleep(timeout)
    stats.timeouts(pending.expire(0))
    done.set()
    threads[0].join()
    sock.close()


def tcp_client(addr, rate, checker, stats, stop, timeout):
    pending = Outstanding()
    state = {"sock": None}
    lock = threading.Lock()

    def connect():
        s = socket.create_connection(addr, timeout=5)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.settimeout(None)
        threading.Thread(target=receive, args=(s,), daemon=True).start()
        return s

    def receive(s):
        while True:
            data = recv_framed(s)
            if data is None:
                break
            received = time.monotonic()
            try:
                qid, rcode, _qname, addrs = parse_response(data)
            except (IndexError, struct.error, ValueError, UnicodeError):
                stats.add("wrong")
                continue
            entry = pending.take(qid)
            if entry is None:
                continue
            kind, name, sent = entry
            stats.add("answered")
            checker.judge(kind, name, sent, received, rcode, addrs)
        with lock:
            if state["sock"] is s:
                state["sock"] = None

    def send():
        kind, name = checker.question()
        qid = pending.register(kind, name)
        stats.add("sent")
        msg = build_query(qid, name)
        with lock:
            try:
                if state["sock"] is None:
                    state["sock"] = connect()
                    stats.add("tcp_reconnects")
                state["sock"].sendall(struct.pack(">H", len(msg)) + msg)
            except OSError:
                state["sock"] = None

    def expire():
        while not stop.wait(0.5):
            stats.timeouts(pending.expire(timeout))

    threading.Thread(target=expire, daemon=True).start()
    paced(rate, stop, send)
    time.sleep(timeout)
    stats.timeouts(pending.expire(0))
    with lock:
        if state["sock"] is not None:
            state["sock"].close()


# --------------------------------------------------------------------------------------------
# The server


class ClusterDns:
    def __init__(self, binary, manifests, upstream_port, config):
        cmd = [
            binary,
            "serve",
            "--config",
            config,
            "--manifests",
            manifests,
            "--upstream",
            f"127.0.0.1:{upstream_port}",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--health-listen",
            "127.0.0.1:0",
            "--ready-listen",
            "127.0.0.1:0",
        ]
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=self.stderr, text=True, env=dict(os.environ, RUST_LOG="warn")
        )
        self.addrs = {}
        deadline = time.monotonic() + 20
        while len(self.addrs) < 4 and time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            m = re.match(r"listening (\w+) (\S+)", line)
            if m:
                host, port = m.group(2).rsplit(":", 1)
                self.addrs[m.group(1)] = (host, int(port))
        if len(self.addrs) < 4:
            self.stop()
            raise RuntimeError("clusterdns did not announce its listeners")
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        for _ in self.proc.stdout:
            pass

    def rss_kb(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def fds(self):
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def metrics(self):
        host, port = self.addrs["metrics"]
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            if line.startswith("#") or " " not in line:
                continue
            series, value = line.rsplit(" ", 1)
            name = series.split("{", 1)[0]
            try:
                out[name] = out.get(name, 0.0) + float(value)
            except ValueError:
                pass
        return out

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def log_tail(self, lines=20):
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace").splitlines()[-lines:]


# --------------------------------------------------------------------------------------------
# Trend


def slope(xs, ys):
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else 0.0


def trend(samples, key, tolerance):
    """(slope per minute, first, last, upward?) over the samples after warm-up. Upward means:
    the fitted line rises by more than `tolerance` over the window AND the last third's mean
    is above the first third's by more than `tolerance` (a single spike is not a trend)."""
    xs = [s["t"] / 60 for s in samples]
    ys = [s[key] for s in samples]
    if len(ys) < 3:
        return 0.0, ys[0] if ys else 0, ys[-1] if ys else 0, False
    per_min = slope(xs, ys)
    rise = per_min * (xs[-1] - xs[0])
    third = max(1, len(ys) // 3)
    early, late = sum(ys[:third]) / third, sum(ys[-third:]) / third
    upward = rise > tolerance and late - early > tolerance
    return per_min, ys[0], ys[-1], upward


# --------------------------------------------------------------------------------------------


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10, help="how long to run (default 10)")
    p.add_argument("--rate", type=int, default=1000, help="queries per second in all (default 1000)")
    p.add_argument("--tcp-share", type=float, default=0.3, help="fraction of queries over TCP")
    p.add_argument("--udp-sockets", type=int, default=4)
    p.add_argument("--tcp-connections", type=int, default=2)
    p.add_argument("--stable", type=int, default=200, help="Services never changed")
    p.add_argument("--churned", type=int, default=200, help="Services churned (the count stays)")
    p.add_argument("--flap-period", type=float, default=30, help="upstream cycle, seconds")
    p.add_argument("--flap-silent", type=float, default=10, help="silent part of each cycle")
    p.add_argument("--grace", type=float, default=5, help="seconds a change may take to be served")
    p.add_argument("--timeout", type=float, default=5, help="seconds before a question counts as lost")
    p.add_argument("--report-every", type=float, default=10)
    p.add_argument("--warmup", type=float, default=60, help="seconds left out of the trend")
    p.add_argument("--binary", default=os.path.join(REPO, "target/release/clusterdns"))
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", help="also write the samples and totals to this file")
    args = p.parse_args(argv)
    if not os.access(args.binary, os.X_OK):
        sys.exit(f"{args.binary} not found: run `cargo build --release` first")

    rng = random.Random(args.seed)
    random.seed(args.seed)
    work = tempfile.TemporaryDirectory(prefix="clusterdns-soak-")
    manifests = os.path.join(work.name, "manifests")
    os.mkdir(manifests)
    cluster = Cluster(manifests, args.stable, args.churned, rng)
    config = os.path.join(work.name, "clusterdns.toml")
    with open(config, "w") as f:
        f.write('[upstream]\ntimeout = "500ms"\ndeadline = "1500ms"\n')
    upstream = FlappingUpstream()
    server = ClusterDns(args.binary, manifests, upstream.port, config)
    dns = server.addrs["dns"]
    log(
        f"soak: clusterdns pid {server.proc.pid} on {dns[0]}:{dns[1]}, {args.minutes:g} min, "
        f"{args.rate} q/s ({args.tcp_share:.0%} TCP), {args.stable} stable + {args.churned} "
        f"churned Services (3 changes/s), upstream silent {args.flap_silent:g} s of every "
        f"{args.flap_period:g} s"
    )
    # Wait until the zone serves the stable Services before the clock starts.
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.settimeout(0.5)
    name = next(iter(cluster.stable))
    for _ in range(40):
        try:
            probe.sendto(build_query(1, name), dns)
            if parse_response(probe.recv(4096))[1] == RCODE_NOERROR:
                break
        except OSError:
            pass
        time.sleep(0.25)
    probe.close()

    stats = Stats()
    checker = Checker(cluster, stats, rng, args.grace)
    stop = threading.Event()
    tcp_rate = args.rate * args.tcp_share / max(1, args.tcp_connections)
    udp_rate = args.rate * (1 - args.tcp_share) / max(1, args.udp_sockets)
    clients = [
        threading.Thread(target=udp_client, args=(dns, udp_rate, checker, stats, stop, args.timeout))
        for _ in range(args.udp_sockets)
    ] + [
        threading.Thread(target=tcp_client, args=(dns, tcp_rate, checker, stats, stop, args.timeout))
        for _ in range(args.tcp_connections)
    ]
    start = time.monotonic()
    for c in clients:
        c.start()

    samples = []
    next_report = start + args.report_every
    next_churn = start + 1
    end = start + args.minutes * 60
    last = stats.snapshot()
    header = f"{'t':>6} {'rss_kB':>8} {'fds':>5} {'q/s':>6} {'answered':>9} {'wrong':>6} {'timeout':>8} {'servfail':>8} {'upstream':>9}"
    log(header)
    crashed = False
    while time.monotonic() < end:
        now = time.monotonic()
        if not server.alive():
            crashed = True
            break
        phase = (now - start) % args.flap_period
        if phase >= args.flap_period - args.flap_silent:
            upstream.silent.set()
        else:
            upstream.silent.clear()
        if now >= next_churn:
            cluster.churn(now)
            next_churn += 1
        if now >= next_report:
            snap = stats.snapshot()
            sample = dict(
                t=round(now - start, 1),
                rss_kb=server.rss_kb(),
                fds=server.fds(),
                qps=round((snap["sent"] - last["sent"]) / args.report_every),
                **snap,
            )
            samples.append(sample)
            last = snap
            log(
                f"{sample['t']:>6.0f} {sample['rss_kb']:>8} {sample['fds']:>5} {sample['qps']:>6} "
                f"{snap['answered']:>9} {snap['wrong']:>6} {snap['timeout']:>8} {snap['servfail']:>8} "
                f"{'down' if upstream.silent.is_set() else 'up':>9}"
            )
            next_report += args.report_every
        time.sleep(0.02)
    stop.set()
    upstream.silent.clear()
    for c in clients:
        c.join(timeout=args.timeout + 10)
    alive = server.alive()
    metrics = server.metrics() if alive else {}
    exit_code = server.stop()
    totals = stats.snapshot()

    after = [s for s in samples if s["t"] > args.warmup] or samples
    if len(after) < len(samples) and len(after) < 3:
        after = samples[len(samples) // 3 :]
    # Tolerances: 5% of the post-warm-up RSS (allocator noise), 3 descriptors.
    rss_tol = 0.05 * (after[0]["rss_kb"] if after else 0)
    rss = trend(after, "rss_kb", rss_tol)
    fds = trend(after, "fds", 3)
    elapsed = min(time.monotonic(), end) - start
    lost = {k[len("timeout_"):]: v for k, v in totals.items() if k.startswith("timeout_")}
    log("")
    log(f"ran {elapsed / 60:.1f} min; {totals['sent']} questions ({totals['sent'] / elapsed:.0f}/s), "
        f"{totals['answered']} answered, {totals['wrong']} wrong, {totals['timeout']} timed out, "
        f"{totals['servfail']} SERVFAIL (upstream names while it was down), "
        f"{totals['upstream_ok']} upstream answers right, {totals['tcp_reconnects']} TCP connects; "
        f"{cluster.changes} manifest changes")
    if lost:
        log("timed out, by kind of question: " + ", ".join(f"{k} {v}" for k, v in sorted(lost.items())))
    log(f"RSS after {args.warmup:g} s warm-up: {rss[1]} -> {rss[2]} kB, slope {rss[0]:+.0f} kB/min: "
        f"{'UPWARD TREND' if rss[3] else 'no upward trend'}")
    log(f"fds after warm-up: {fds[1]} -> {fds[2]}, slope {fds[0]:+.2f}/min: "
        f"{'UPWARD TREND' if fds[3] else 'no upward trend'}")
    interesting = [
        "coredns_panics_total",
        "clusterdns_manifest_errors_total",
        "clusterdns_objects_rejected_total",
        "clusterdns_tcp_connections_rejected_total",
        "coredns_cache_served_stale_total",
        "clusterdns_zone_services",
    ]
    log("server counters: " + ", ".join(f"{k.split('_', 1)[1]}={metrics.get(k, 0):g}" for k in interesting))
    log(f"server {'alive at the end' if alive else 'DIED'}; exit status after SIGTERM: {exit_code}")
    if stats.wrong_examples:
        log("wrong answers (first ones):")
        for w in stats.wrong_examples:
            log("  " + w)
    if crashed or not alive:
        log("server log tail:")
        for line in server.log_tail():
            log("  " + line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(samples=samples, totals=totals, metrics=metrics, exit=exit_code), f, indent=1)
    failed = totals["wrong"] > 0 or crashed or not alive or rss[3] or fds[3] or metrics.get("coredns_panics_total", 0) > 0
    work.cleanup()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
