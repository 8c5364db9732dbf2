#!/usr/bin/env python3
"""Synthetic Kubernetes clusters for load tests: manifests for clusterdns, the equivalent
RFC 1035 zone file for Knot DNS / NSD, and dnsperf query files.

    gen_cluster.py --services 5000 --out /tmp/lt/5k

writes, under OUT:

    manifests/ns-NNNN.json   one `kind: List` per namespace (Services + EndpointSlices), as
                             `kubectl get svc,endpointslices -n NS -o json` prints them
    cluster.local.zone       the same records as a zone file (A, SRV, SOA, NS, TXT)
    upstream.zone            example.org with --upstream-names hosts, for the cache workload
    queries-zone.txt         dnsperf input: cluster-zone mix (see MIX below)
    queries-cache.txt        dnsperf input: upstream names (cache hits once warm)
    cluster.json             summary (counts, one service to edit for the change test)

Everything is deterministic for a given --seed. Only loopback is ever queried by the tools
that read these files; the addresses here are never contacted.
"""

import argparse
import ipaddress
import json
import os
import random
import sys

ZONE = "cluster.local"
TTL = 5
# Upstream names used in search-path misses: a pod with ndots:5 asking for these walks
# `<ns>.svc.cluster.local`, `svc.cluster.local`, `cluster.local` first, all NXDOMAIN.
EXTERNAL = [
    "www.google.com",
    "api.github.com",
    "s3.amazonaws.com",
    "registry-1.docker.io",
    "login.microsoftonline.com",
    "sqs.eu-west-1.amazonaws.com",
    "storage.googleapis.com",
    "pypi.org",
]
PORT_NAMES = [("http", 80), ("https", 443), ("grpc", 9090), ("metrics", 9100), ("redis", 6379)]

# Query mix of the cluster-zone workload (weights, summing to 100). A lookup of an in-cluster
# name from a pod with the default search path usually hits on the first try (short name in its
# own namespace); external names and `svc.otherns` names produce the NXDOMAIN misses.
MIX = [
    ("svc_a", 34),  # <svc>.<ns>.svc.cluster.local A (ClusterIP)
    ("svc_aaaa", 10),  # the same, AAAA: NODATA (glibc asks both)
    ("srv", 8),  # _<port>._tcp.<svc>.<ns>.svc.cluster.local SRV
    ("headless_a", 4),  # headless service name A: one record per ready endpoint
    ("host_a", 4),  # <hostname>.<svc>.<ns>.svc.cluster.local A
    ("miss_ns", 16),  # www.google.com.<ns>.svc.cluster.local A/AAAA: NXDOMAIN
    ("miss_svc", 12),  # www.google.com.svc.cluster.local A/AAAA: NXDOMAIN
    ("miss_zone", 8),  # www.google.com.cluster.local A/AAAA: NXDOMAIN
    ("miss_cross", 4),  # <svc>.<otherns>.<ns>.svc.cluster.local A: NXDOMAIN
]


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--services", type=int, required=True, help="number of Services")
    p.add_argument("--out", required=True, help="output directory (created)")
    p.add_argument("--per-namespace", type=int, default=50, help="Services per namespace (50)")
    p.add_argument("--headless", type=float, default=0.10, help="fraction headless (0.10)")
    p.add_argument("--multiport", type=float, default=0.15, help="fraction of ClusterIP with 2-3 ports (0.15)")
    p.add_argument("--endpoints", type=int, default=3, help="endpoints per Service (3)")
    p.add_argument("--queries", type=int, default=200000, help="lines per query file (200000)")
    p.add_argument("--upstream-names", type=int, default=1000, help="names in example.org (1000)")
    p.add_argument("--seed", type=int, default=1)
    return p.parse_args(argv)


def addr(base, index):
    return str(ipaddress.IPv4Address(int(ipaddress.IPv4Address(base)) + index))


def build(args):
    rng = random.Random(args.seed)
    n_ns = max(1, (args.services + args.per_namespace - 1) // args.per_namespace)
    services = []  # dicts: ns, name, kind, ip, ports, endpoints [(ip, hostname|None)]
    pod_index = 0
    for i in range(args.services):
        ns = f"ns-{i % n_ns:04d}"
        name = f"svc-{i:06d}"
        headless = rng.random() < args.headless
        if headless:
            ports = [("http", 80, "TCP")] if rng.random() < 0.7 else [("http", 80, "TCP"), ("peer", 7000, "TCP")]
        elif rng.random() < args.multiport:
            k = rng.choice([2, 3])
            ports = [(n, p, "TCP") for n, p in rng.sample(PORT_NAMES, k)]
        else:
            n, p = rng.choice(PORT_NAMES)
            ports = [(n, p, "TCP")]
        if rng.random() < 0.05:
            ports.append(("dns", 53, "UDP"))
        endpoints = []
        for e in range(args.endpoints):
            ip = addr("10.128.0.0", pod_index)
            pod_index += 1
            endpoints.append((ip, f"{name}-{e}" if headless else None))
        services.append(
            {
                "ns": ns,
                "name": name,
                "headless": headless,
                "ip": None if headless else addr("10.96.0.0", i + 16),
                "ports": ports,
                "endpoints": endpoints,
            }
        )
    return n_ns, services


def service_manifest(s):
    spec = {
        "type": "ClusterIP",
        "clusterIP": "None" if s["headless"] else s["ip"],
        "clusterIPs": ["None" if s["headless"] else s["ip"]],
        "ipFamilies": ["IPv4"],
        "ipFamilyPolicy": "SingleStack",
        "ports": [{"name": n, "port": p, "protocol": proto, "targetPort": p} for n, p, proto in s["ports"]],
        "selector": {"app": s["name"]},
        "sessionAffinity": "None",
    }
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": s["name"], "namespace": s["ns"], "labels": {"app": s["name"]}},
        "spec": spec,
    }


def slice_manifest(s):
    endpoints = []
    for ip, host in s["endpoints"]:
        ep = {"addresses": [ip], "conditions": {"ready": True, "serving": True, "terminating": False}}
        if host:
            ep["hostname"] = host
        ep["targetRef"] = {"kind": "Pod", "name": host or f"{s['name']}-{ip.replace('.', '-')}", "namespace": s["ns"]}
        endpoints.append(ep)
    labels = {"kubernetes.io/service-name": s["name"], "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}
    if s["headless"]:
        labels["service.kubernetes.io/headless"] = ""
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": f"{s['name']}-abcde", "namespace": s["ns"], "labels": labels},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": n, "port": p, "protocol": proto} for n, p, proto in s["ports"]],
    }


def namespace_file(ns, members):
    items = []
    for s in members:
        items.append(service_manifest(s))
        items.append(slice_manifest(s))
    return {"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": items}


def write_manifests(out, n_ns, services):
    d = os.path.join(out, "manifests")
    os.makedirs(d, exist_ok=True)
    by_ns = {}
    for s in services:
        by_ns.setdefault(s["ns"], []).append(s)
    for ns, members in by_ns.items():
        with open(os.path.join(d, f"{ns}.json"), "w") as f:
            json.dump(namespace_file(ns, members), f, separators=(",", ":"))


def zone_lines(services):
    """The records clusterdns serves for these services (forward names only), as CoreDNS
    computes them: SRV weight 100 / number of records of that SRV name."""
    yield f"$ORIGIN {ZONE}."
    yield f"$TTL {TTL}"
    yield f"@ 5 IN SOA ns.dns.{ZONE}. hostmaster.{ZONE}. 1 7200 1800 86400 {TTL}"
    yield f"@ IN NS ns.dns.{ZONE}."
    yield "ns.dns IN A 127.0.0.1"
    yield 'dns-version 28800 IN TXT "1.1.0"'
    for s in services:
        base = f"{s['name']}.{s['ns']}.svc"
        if s["headless"]:
            for ip, host in s["endpoints"]:
                yield f"{base} IN A {ip}"
                yield f"{host}.{base} IN A {ip}"
            weight = max(1, 100 // len(s["endpoints"]))
            for n, p, proto in s["ports"]:
                for ip, host in s["endpoints"]:
                    yield f"_{n}._{proto.lower()}.{base} IN SRV 0 {weight} {p} {host}.{base}.{ZONE}."
        else:
            yield f"{base} IN A {s['ip']}"
            for n, p, proto in s["ports"]:
                yield f"_{n}._{proto.lower()}.{base} IN SRV 0 100 {p} {base}.{ZONE}."


def write_zone(out, services):
    with open(os.path.join(out, f"{ZONE}.zone"), "w") as f:
        for line in zone_lines(services):
            f.write(line + "\n")


def write_upstream(out, count):
    with open(os.path.join(out, "upstream.zone"), "w") as f:
        f.write("$ORIGIN example.org.\n$TTL 3600\n")
        f.write("@ IN SOA ns.example.org. hostmaster.example.org. 1 7200 1800 86400 300\n")
        f.write("@ IN NS ns.example.org.\nns IN A 192.0.2.1\n")
        for i in range(count):
            f.write(f"h{i} IN A {addr('198.18.0.0', i)}\n")


def write_queries(out, n_ns, services, count, upstream_names, rng):
    clusterip = [s for s in services if not s["headless"]]
    headless = [s for s in services if s["headless"]] or clusterip
    kinds = [k for k, _ in MIX]
    weights = [w for _, w in MIX]

    def fq(s):
        return f"{s['name']}.{s['ns']}.svc.{ZONE}"

    with open(os.path.join(out, "queries-zone.txt"), "w") as f:
        for kind in rng.choices(kinds, weights, k=count):
            ns = f"ns-{rng.randrange(n_ns):04d}"
            ext = rng.choice(EXTERNAL)
            qtype = rng.choice(["A", "AAAA"])
            if kind == "svc_a":
                line = f"{fq(rng.choice(clusterip))} A"
            elif kind == "svc_aaaa":
                line = f"{fq(rng.choice(clusterip))} AAAA"
            elif kind == "srv":
                s = rng.choice(services)
                n, _, proto = s["ports"][0]
                line = f"_{n}._{proto.lower()}.{fq(s)} SRV"
            elif kind == "headless_a":
                line = f"{fq(rng.choice(headless))} A"
            elif kind == "host_a":
                s = rng.choice(headless)
                host = s["endpoints"][0][1] or s["endpoints"][0][0].replace(".", "-")
                line = f"{host}.{fq(s)} A"
            elif kind == "miss_ns":
                line = f"{ext}.{ns}.svc.{ZONE} {qtype}"
            elif kind == "miss_svc":
                line = f"{ext}.svc.{ZONE} {qtype}"
            elif kind == "miss_zone":
                line = f"{ext}.{ZONE} {qtype}"
            else:
                s = rng.choice(clusterip)
                line = f"{s['name']}.{s['ns']}.{ns}.svc.{ZONE} A"
            f.write(line + "\n")
    with open(os.path.join(out, "queries-cache.txt"), "w") as f:
        for _ in range(count):
            f.write(f"h{rng.randrange(upstream_names)}.example.org A\n")


def main(argv):
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    n_ns, services = build(args)
    write_manifests(args.out, n_ns, services)
    write_zone(args.out, services)
    write_upstream(args.out, args.upstream_names)
    write_queries(args.out, n_ns, services, args.queries, args.upstream_names, random.Random(args.seed + 1))
    probe = next(s for s in services if not s["headless"])
    summary = {
        "services": len(services),
        "namespaces": n_ns,
        "headless": sum(s["headless"] for s in services),
        "endpoints": sum(len(s["endpoints"]) for s in services),
        "probe": {"namespace": probe["ns"], "name": probe["name"], "ip": probe["ip"], "file": f"manifests/{probe['ns']}.json"},
    }
    with open(os.path.join(args.out, "cluster.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(json.dumps(summary))


if __name__ == "__main__":
    main(sys.argv[1:])
