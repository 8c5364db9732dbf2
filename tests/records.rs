//! The cluster zone over real UDP and TCP: every record the Kubernetes DNS-Based Service
//! Discovery specification 1.1.0 (kubernetes/dns docs/specification.md) defines, and the
//! CoreDNS behaviour beyond it that clients rely on, checked field by field against the
//! fixture cluster (tests/fixtures/cluster/README.md).
//!
//! Each row is asked over UDP and over TCP (the harness checks both answers agree, the id, the
//! question echoed byte for byte and RD echoed). The row checker then checks the header
//! (rcode, AA, RA, no TC), every answer record (owner = the question, exactly as spelled;
//! TTL; type; rdata), the authority section (exactly the zone SOA for a negative answer,
//! empty otherwise) and the additional section.

mod support;

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use support::{Server, fixtures};

use RecordType::{A, AAAA, AXFR, CNAME, IXFR, NS, PTR, SOA, SRV, TXT};

const NOERROR: ResponseCode = ResponseCode::NoError;
const NXDOMAIN: ResponseCode = ResponseCode::NXDomain;

/// One question and the answer the zone must give.
///
/// - `answers`: `"<ttl> <TYPE> <rdata>"` of every answer record, each owned by the question
///   name (spelled exactly as asked). Empty: a negative answer, which must carry the zone SOA
///   (and only it) in the authority section; otherwise the authority section must be empty.
/// - `additionals`: `"<owner> <ttl> <TYPE> <rdata>"` of every additional record.
type Row = (
    &'static str,
    RecordType,
    ResponseCode,
    &'static [&'static str],
    &'static [&'static str],
);

/// A query for `name` spelled exactly as written. (`support::query` parses the name as UTF-8,
/// and IDNA lower-cases every label that does not start with `_`.)
fn query(name: &str, qtype: RecordType) -> Message {
    let mut message = support::query(name, qtype);
    let exact = Name::from_ascii(name).expect("valid name");
    message.queries = vec![Query::query(exact, qtype)];
    message
}

/// `"<ttl> <TYPE> <rdata>"`, the SOA serial shown as `SERIAL` (it is a timestamp).
fn data(record: &Record) -> String {
    let rdata = match &record.data {
        RData::SOA(soa) => {
            assert!(soa.serial > 0, "SOA serial set: {record}");
            format!(
                "{} {} SERIAL {} {} {} {}",
                soa.mname, soa.rname, soa.refresh, soa.retry, soa.expire, soa.minimum
            )
        }
        RData::TXT(txt) => txt
            .txt_data
            .iter()
            .map(|s| format!("{:?}", String::from_utf8_lossy(s)))
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    };
    format!("{} {} {}", record.ttl, record.record_type(), rdata)
}

/// `"<owner> <ttl> <TYPE> <rdata>"`.
fn full(record: &Record) -> String {
    format!("{} {}", record.name, data(record))
}

fn sorted_strings(records: &[Record], show: fn(&Record) -> String) -> Vec<String> {
    let mut out: Vec<String> = records.iter().map(show).collect();
    out.sort();
    out
}

fn strings(expected: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    out.sort();
    out
}

/// The SOA every negative answer carries, for a zone TTL of `ttl` (CoreDNS: the record TTL
/// is the zone TTL capped at 300, the minimum is the zone TTL).
fn soa(ttl: u32) -> String {
    format!(
        "cluster.local. {} SOA ns.dns.cluster.local. hostmaster.cluster.local. SERIAL 7200 1800 86400 {ttl}",
        ttl.min(300)
    )
}

/// The header of an authoritative answer from the zone.
fn check_header(answer: &Message, what: &str, rcode: ResponseCode) {
    assert_eq!(answer.metadata.response_code, rcode, "{what}: rcode");
    assert!(answer.metadata.authoritative, "{what}: AA set");
    assert!(answer.metadata.recursion_available, "{what}: RA set");
    assert!(!answer.metadata.truncation, "{what}: not truncated");
    assert!(
        answer.edns.is_none(),
        "{what}: no OPT without one in the query"
    );
}

/// Asks one row over UDP and TCP and checks every section.
fn check(server: &Server, ttl: u32, row: &Row) -> Message {
    let &(name, qtype, rcode, answers, additionals) = row;
    let what = format!("{name} {qtype}");
    let answer = server.both(&query(name, qtype));
    check_header(&answer, &what, rcode);
    let question = answer.queries[0].name().clone();
    for record in &answer.answers {
        assert!(
            record.name.eq_case(&question),
            "{what}: answer owner is the question as spelled: {record}"
        );
    }
    assert_eq!(
        sorted_strings(&answer.answers, data),
        strings(answers),
        "{what}: answer section"
    );
    let authority = if answers.is_empty() {
        vec![soa(ttl)]
    } else {
        vec![]
    };
    assert_eq!(
        sorted_strings(&answer.authorities, full),
        authority,
        "{what}: authority section"
    );
    assert_eq!(
        sorted_strings(&answer.additionals, full),
        strings(additionals),
        "{what}: additional section"
    );
    answer
}

fn check_all(server: &Server, ttl: u32, rows: &[Row]) {
    for row in rows {
        check(server, ttl, row);
    }
}

#[test]
fn apex_soa_ns_and_schema_version() {
    let server = Server::fixtures(None);
    check_all(
        &server,
        5,
        &[
            (
                "cluster.local.",
                SOA,
                NOERROR,
                &["5 SOA ns.dns.cluster.local. hostmaster.cluster.local. SERIAL 7200 1800 86400 5"],
                &[],
            ),
            (
                "cluster.local.",
                NS,
                NOERROR,
                &["5 NS ns.dns.cluster.local."],
                &[],
            ),
            ("cluster.local.", A, NOERROR, &[], &[]),
            ("cluster.local.", TXT, NOERROR, &[], &[]),
            // Specification 2.1: the schema version, with CoreDNS's TTL.
            (
                "dns-version.cluster.local.",
                TXT,
                NOERROR,
                &["28800 TXT \"1.1.0\""],
                &[],
            ),
            ("dns-version.cluster.local.", A, NOERROR, &[], &[]),
            // TXT exists nowhere else.
            (
                "kubernetes.default.svc.cluster.local.",
                TXT,
                NOERROR,
                &[],
                &[],
            ),
            ("web.default.svc.cluster.local.", TXT, NOERROR, &[], &[]),
            ("svc.cluster.local.", TXT, NOERROR, &[], &[]),
        ],
    );
}

#[test]
fn recursion_desired_is_echoed_either_way() {
    let server = Server::fixtures(None);
    for rd in [true, false] {
        let mut q = query("kubernetes.default.svc.cluster.local.", A);
        q.metadata.recursion_desired = rd;
        let answer = server.both(&q);
        assert_eq!(answer.metadata.recursion_desired, rd, "RD {rd} echoed");
        check_header(&answer, &format!("RD {rd}"), NOERROR);
        assert_eq!(
            sorted_strings(&answer.answers, full),
            ["kubernetes.default.svc.cluster.local. 5 A 192.0.2.1"],
            "RD {rd}: answer"
        );
    }
}

#[test]
fn cluster_ip_services() {
    let server = Server::fixtures(None);
    check_all(
        &server,
        5,
        &[
            // 2.3.1: A per ClusterIP; AAAA on a single-stack IPv4 service is NODATA.
            (
                "kubernetes.default.svc.cluster.local.",
                A,
                NOERROR,
                &["5 A 192.0.2.1"],
                &[],
            ),
            (
                "kubernetes.default.svc.cluster.local.",
                AAAA,
                NOERROR,
                &[],
                &[],
            ),
            // Dual-stack: one record per family from spec.clusterIPs.
            (
                "dual.default.svc.cluster.local.",
                A,
                NOERROR,
                &["5 A 192.0.2.2"],
                &[],
            ),
            (
                "dual.default.svc.cluster.local.",
                AAAA,
                NOERROR,
                &["5 AAAA 2001:db8::2"],
                &[],
            ),
            // A ClusterIP service without any EndpointSlice still answers.
            (
                "api.other.svc.cluster.local.",
                A,
                NOERROR,
                &["5 A 192.0.2.50"],
                &[],
            ),
            ("api.other.svc.cluster.local.", AAAA, NOERROR, &[], &[]),
            // 2.3.2: SRV per named port, target the service name, its address in additional.
            (
                "_https._tcp.kubernetes.default.svc.cluster.local.",
                SRV,
                NOERROR,
                &["5 SRV 0 100 443 kubernetes.default.svc.cluster.local."],
                &["kubernetes.default.svc.cluster.local. 5 A 192.0.2.1"],
            ),
            (
                "_https._udp.kubernetes.default.svc.cluster.local.",
                SRV,
                NXDOMAIN,
                &[],
                &[],
            ),
            (
                "_http._tcp.kubernetes.default.svc.cluster.local.",
                SRV,
                NXDOMAIN,
                &[],
                &[],
            ),
            // The SRV name holds only SRV.
            (
                "_https._tcp.kubernetes.default.svc.cluster.local.",
                A,
                NOERROR,
                &[],
                &[],
            ),
            (
                "_http._tcp.dual.default.svc.cluster.local.",
                SRV,
                NOERROR,
                &["5 SRV 0 100 80 dual.default.svc.cluster.local."],
                &[
                    "dual.default.svc.cluster.local. 5 A 192.0.2.2",
                    "dual.default.svc.cluster.local. 5 AAAA 2001:db8::2",
                ],
            ),
            (
                "_grpc._tcp.api.other.svc.cluster.local.",
                SRV,
                NOERROR,
                &["5 SRV 0 100 9090 api.other.svc.cluster.local."],
                &["api.other.svc.cluster.local. 5 A 192.0.2.50"],
            ),
            // Multi-port: one SRV name per named port under its own protocol label; a port
            // without protocol is TCP.
            (
                "_http._tcp.multi.default.svc.cluster.local.",
                SRV,
                NOERROR,
                &["5 SRV 0 100 80 multi.default.svc.cluster.local."],
                &["multi.default.svc.cluster.local. 5 A 192.0.2.3"],
            ),
            (
                "_https._tcp.multi.default.svc.cluster.local.",
                SRV,
                NOERROR,
                &["5 SRV 0 100 443 multi.default.svc.cluster.local."],
                &["multi.default.svc.cluster.local. 5 A 192.0.2.3"],
            ),
            (
                "_dns._udp.multi.default.svc.cluster.local.",
                SRV,
                NOERROR,
                &["5 SRV 0 100 53 multi.default.svc.cluster.local."],
                &["multi.default.svc.cluster.local. 5 A 192.0.2.3"],
            ),
            (
                "_diameter._sctp.multi.default.svc.cluster.local.",
                SRV,
                NOERROR,
                &["5 SRV 0 100 3868 multi.default.svc.cluster.local."],
                &["multi.default.svc.cluster.local. 5 A 192.0.2.3"],
            ),
            (
                "_dns._tcp.multi.default.svc.cluster.local.",
                SRV,
                NXDOMAIN,
                &[],
                &[],
            ),
            (
                "_diameter._tcp.multi.default.svc.cluster.local.",
                SRV,
                NXDOMAIN,
                &[],
                &[],
            ),
            // The bare service name answers SRV for every port, the 100 weight points shared
            // (CoreDNS); the one target address is added once.
            (
                "multi.default.svc.cluster.local.",
                SRV,
                NOERROR,
                &[
                    "5 SRV 0 25 3868 multi.default.svc.cluster.local.",
                    "5 SRV 0 25 443 multi.default.svc.cluster.local.",
                    "5 SRV 0 25 53 multi.default.svc.cluster.local.",
                    "5 SRV 0 25 80 multi.default.svc.cluster.local.",
                ],
                &["multi.default.svc.cluster.local. 5 A 192.0.2.3"],
            ),
            // An unnamed port has no _port._proto name, but the service name has its SRV.
            (
                "unnamed.default.svc.cluster.local.",
                SRV,
                NOERROR,
                &["5 SRV 0 100 8080 unnamed.default.svc.cluster.local."],
                &["unnamed.default.svc.cluster.local. 5 A 192.0.2.4"],
            ),
            (
                "unnamed.default.svc.cluster.local.",
                A,
                NOERROR,
                &["5 A 192.0.2.4"],
                &[],
            ),
            (
                "_tcp.unnamed.default.svc.cluster.local.",
                SRV,
                NXDOMAIN,
                &[],
                &[],
            ),
            // 2.3.3: PTR per ClusterIP, IPv4 and the 32-nibble IPv6 name.
            (
                "1.2.0.192.in-addr.arpa.",
                PTR,
                NOERROR,
                &["5 PTR kubernetes.default.svc.cluster.local."],
                &[],
            ),
            (
                "2.2.0.192.in-addr.arpa.",
                PTR,
                NOERROR,
                &["5 PTR dual.default.svc.cluster.local."],
                &[],
            ),
            (
                "2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa.",
                PTR,
                NOERROR,
                &["5 PTR dual.default.svc.cluster.local."],
                &[],
            ),
            (
                "3.2.0.192.in-addr.arpa.",
                PTR,
                NOERROR,
                &["5 PTR multi.default.svc.cluster.local."],
                &[],
            ),
            (
                "4.2.0.192.in-addr.arpa.",
                PTR,
                NOERROR,
                &["5 PTR unnamed.default.svc.cluster.local."],
                &[],
            ),
            (
                "50.2.0.192.in-addr.arpa.",
                PTR,
                NOERROR,
                &["5 PTR api.other.svc.cluster.local."],
                &[],
            ),
        ],
    );
}

#[test]
fn headless_services() {
    let server = Server::fixtures(None);
    check_all(
        &server,
        5,
        &[
            // 2.4.1: one A per ready endpoint: web-2 (ready: false) is left out, the endpoint
            // without conditions counts as ready.
            (
                "web.default.svc.cluster.local.",
                A,
                NOERROR,
                &["5 A 192.0.2.10", "5 A 192.0.2.11", "5 A 192.0.2.13"],
                &[],
            ),
            ("web.default.svc.cluster.local.", AAAA, NOERROR, &[], &[]),
            // Endpoint names: the hostname, else the dashed IP (CoreDNS).
            (
                "web-0.web.default.svc.cluster.local.",
                A,
                NOERROR,
                &["5 A 192.0.2.10"],
                &[],
            ),
            (
                "web-1.web.default.svc.cluster.local.",
                A,
                NOERROR,
                &["5 A 192.0.2.11"],
                &[],
            ),
            (
                "web-0.web.default.svc.cluster.local.",
                AAAA,
                NOERROR,
                &[],
                &[],
            ),
            (
                "192-0-2-13.web.default.svc.cluster.local.",
                A,
                NOERROR,
                &["5 A 192.0.2.13"],
                &[],
            ),
            (
                "web-2.web.default.svc.cluster.local.",
                A,
                NXDOMAIN,
                &[],
                &[],
            ),
            (
                "192-0-2-12.web.default.svc.cluster.local.",
                A,
                NXDOMAIN,
                &[],
                &[],
            ),
            (
                "192-0-2-10.web.default.svc.cluster.local.",
                A,
                NXDOMAIN,
                &[],
                &[],
            ),
            (
                "web-9.web.default.svc.cluster.local.",
                A,
                NXDOMAIN,
                &[],
                &[],
            ),
            // 2.4.2: SRV per ready endpoint, target its endpoint name (the dashed IP when it
            // has no hostname), weights share 100 (CoreDNS: floor(100 / n)), addresses in
            // additional.
            (
                "_http._tcp.web.default.svc.cluster.local.",
                SRV,
                NOERROR,
                &[
                    "5 SRV 0 33 80 192-0-2-13.web.default.svc.cluster.local.",
                    "5 SRV 0 33 80 web-0.web.default.svc.cluster.local.",
                    "5 SRV 0 33 80 web-1.web.default.svc.cluster.local.",
                ],
                &[
                    "192-0-2-13.web.default.svc.cluster.local. 5 A 192.0.2.13",
                    "web-0.web.default.svc.cluster.local. 5 A 192.0.2.10",
                    "web-1.web.default.svc.cluster.local. 5 A 192.0.2.11",
                ],
            ),
            (
                "web.default.svc.cluster.local.",
                SRV,
                NOERROR,
                &[
                    "5 SRV 0 33 80 192-0-2-13.web.default.svc.cluster.local.",
                    "5 SRV 0 33 80 web-0.web.default.svc.cluster.local.",
                    "5 SRV 0 33 80 web-1.web.default.svc.cluster.local.",
                ],
                &[
                    "192-0-2-13.web.default.svc.cluster.local. 5 A 192.0.2.13",
                    "web-0.web.default.svc.cluster.local. 5 A 192.0.2.10",
                    "web-1.web.default.svc.cluster.local. 5 A 192.0.2.11",
                ],
            ),
            (
                "_http._udp.web.default.svc.cluster.local.",
                SRV,
                NXDOMAIN,
                &[],
                &[],
            ),
            (
                "_tcp.web.default.svc.cluster.local.",
                SRV,
                NOERROR,
                &[],
                &[],
            ),
            // 2.4.3: PTR per ready endpoint address, to its endpoint name.
            (
                "10.2.0.192.in-addr.arpa.",
                PTR,
                NOERROR,
                &["5 PTR web-0.web.default.svc.cluster.local."],
                &[],
            ),
            (
                "11.2.0.192.in-addr.arpa.",
                PTR,
                NOERROR,
                &["5 PTR web-1.web.default.svc.cluster.local."],
                &[],
            ),
            (
                "13.2.0.192.in-addr.arpa.",
                PTR,
                NOERROR,
                &["5 PTR 192-0-2-13.web.default.svc.cluster.local."],
                &[],
            ),
            // publishNotReadyAddresses: the not-ready endpoint is published everywhere.
            (
                "pub.default.svc.cluster.local.",
                A,
                NOERROR,
                &["5 A 192.0.2.30", "5 A 192.0.2.31"],
                &[],
            ),
            (
                "pub-1.pub.default.svc.cluster.local.",
                A,
                NOERROR,
                &["5 A 192.0.2.31"],
                &[],
            ),
            (
                "_http._tcp.pub.default.svc.cluster.local.",
                SRV,
                NOERROR,
                &[
                    "5 SRV 0 50 80 pub-0.pub.default.svc.cluster.local.",
                    "5 SRV 0 50 80 pub-1.pub.default.svc.cluster.local.",
                ],
                &[
                    "pub-0.pub.default.svc.cluster.local. 5 A 192.0.2.30",
                    "pub-1.pub.default.svc.cluster.local. 5 A 192.0.2.31",
                ],
            ),
            (
                "31.2.0.192.in-addr.arpa.",
                PTR,
                NOERROR,
                &["5 PTR pub-1.pub.default.svc.cluster.local."],
                &[],
            ),
            // No ready endpoint: the service name and everything below it do not exist.
            (
                "nothing-ready.default.svc.cluster.local.",
                A,
                NXDOMAIN,
                &[],
                &[],
            ),
            (
                "nothing-ready.default.svc.cluster.local.",
                SRV,
                NXDOMAIN,
                &[],
                &[],
            ),
            (
                "_http._tcp.nothing-ready.default.svc.cluster.local.",
                SRV,
                NXDOMAIN,
                &[],
                &[],
            ),
            (
                "nr-1.nothing-ready.default.svc.cluster.local.",
                A,
                NXDOMAIN,
                &[],
                &[],
            ),
            (
                "192-0-2-40.nothing-ready.default.svc.cluster.local.",
                A,
                NXDOMAIN,
                &[],
                &[],
            ),
            // IPv6-only headless: AAAA, the RFC 5952 dashed form, SRV with AAAA additional,
            // ip6.arpa PTR.
            (
                "web6.default.svc.cluster.local.",
                AAAA,
                NOERROR,
                &["5 AAAA 2001:db8::10", "5 AAAA 2001:db8::11"],
                &[],
            ),
            ("web6.default.svc.cluster.local.", A, NOERROR, &[], &[]),
            (
                "2001-db8--10.web6.default.svc.cluster.local.",
                AAAA,
                NOERROR,
                &["5 AAAA 2001:db8::10"],
                &[],
            ),
            (
                "web6-1.web6.default.svc.cluster.local.",
                AAAA,
                NOERROR,
                &["5 AAAA 2001:db8::11"],
                &[],
            ),
            (
                "_http._tcp.web6.default.svc.cluster.local.",
                SRV,
                NOERROR,
                &[
                    "5 SRV 0 50 80 2001-db8--10.web6.default.svc.cluster.local.",
                    "5 SRV 0 50 80 web6-1.web6.default.svc.cluster.local.",
                ],
                &[
                    "2001-db8--10.web6.default.svc.cluster.local. 5 AAAA 2001:db8::10",
                    "web6-1.web6.default.svc.cluster.local. 5 AAAA 2001:db8::11",
                ],
            ),
            (
                "0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa.",
                PTR,
                NOERROR,
                &["5 PTR 2001-db8--10.web6.default.svc.cluster.local."],
                &[],
            ),
            (
                "1.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa.",
                PTR,
                NOERROR,
                &["5 PTR web6-1.web6.default.svc.cluster.local."],
                &[],
            ),
        ],
    );
}

/// Weights as CoreDNS computes them: floor(100 / n), at least 1. The answers do not fit a
/// 512-byte UDP answer, so these are asked over TCP.
#[test]
fn srv_weights_of_large_headless_services() {
    let server = Server::fixtures(None);
    for (service, count, weight, network) in [
        ("medium", 40usize, 2u16, "203.0.113"),
        ("big", 100, 1, "198.51.100"),
    ] {
        let name = format!("_http._tcp.{service}.default.svc.cluster.local.");
        let answer = server.tcp(&query(&name, SRV));
        check_header(&answer, &name, NOERROR);
        let dashed = network.replace('.', "-");
        let target = |i: usize| format!("{dashed}-{i}.{service}.default.svc.cluster.local.");
        let mut expected: Vec<String> = (1..=count)
            .map(|i| format!("{name} 5 SRV 0 {weight} 80 {}", target(i)))
            .collect();
        expected.sort();
        assert_eq!(sorted_strings(&answer.answers, full), expected, "{name}");
        let mut extra: Vec<String> = (1..=count)
            .map(|i| format!("{} 5 A {network}.{i}", target(i)))
            .collect();
        extra.sort();
        assert_eq!(
            sorted_strings(&answer.additionals, full),
            extra,
            "{name} additional"
        );
        assert!(answer.authorities.is_empty(), "{name}: no authority");
    }
}

#[test]
fn external_name_inside_the_zone_is_chased() {
    let server = Server::fixtures(None);
    // 2.5.1: a CNAME; its target is in the zone, so its address follows in the answer, in
    // chain order.
    let answer = server.both(&query("ext-in.default.svc.cluster.local.", A));
    check_header(&answer, "ext-in A", NOERROR);
    let chain: Vec<String> = answer.answers.iter().map(full).collect();
    assert_eq!(
        chain,
        [
            "ext-in.default.svc.cluster.local. 5 CNAME kubernetes.default.svc.cluster.local.",
            "kubernetes.default.svc.cluster.local. 5 A 192.0.2.1",
        ],
        "ext-in A: the chain"
    );
    assert!(answer.authorities.is_empty(), "ext-in A: no authority");
    assert!(answer.additionals.is_empty(), "ext-in A: no additional");

    // Asked for the CNAME itself: only the CNAME.
    check(
        &server,
        5,
        &(
            "ext-in.default.svc.cluster.local.",
            CNAME,
            NOERROR,
            &["5 CNAME kubernetes.default.svc.cluster.local."],
            &[],
        ),
    );

    // The target has no AAAA: NODATA for the end of the chain, the CNAME still in the answer
    // (RFC 2308 section 2.2) and the SOA in the authority.
    let answer = server.both(&query("ext-in.default.svc.cluster.local.", AAAA));
    check_header(&answer, "ext-in AAAA", NOERROR);
    assert_eq!(
        sorted_strings(&answer.answers, full),
        ["ext-in.default.svc.cluster.local. 5 CNAME kubernetes.default.svc.cluster.local."],
        "ext-in AAAA: the CNAME"
    );
    assert_eq!(
        sorted_strings(&answer.authorities, full),
        [soa(5)],
        "ext-in AAAA: SOA"
    );
}

#[test]
fn negative_answers() {
    let server = Server::fixtures(None);
    check_all(
        &server,
        5,
        &[
            // Names that do not exist: NXDOMAIN.
            ("missing.default.svc.cluster.local.", A, NXDOMAIN, &[], &[]),
            (
                "missing.default.svc.cluster.local.",
                SRV,
                NXDOMAIN,
                &[],
                &[],
            ),
            ("nonexistent-ns.svc.cluster.local.", A, NXDOMAIN, &[], &[]),
            (
                "kubernetes.nonexistent-ns.svc.cluster.local.",
                A,
                NXDOMAIN,
                &[],
                &[],
            ),
            ("kubernetes.other.svc.cluster.local.", A, NXDOMAIN, &[], &[]),
            (
                "a.b.kubernetes.default.svc.cluster.local.",
                A,
                NXDOMAIN,
                &[],
                &[],
            ),
            (
                "web-0.kubernetes.default.svc.cluster.local.",
                A,
                NXDOMAIN,
                &[],
                &[],
            ),
            ("nothing.cluster.local.", A, NXDOMAIN, &[], &[]),
            ("svc.svc.cluster.local.", A, NXDOMAIN, &[], &[]),
            ("*.default.svc.cluster.local.", A, NXDOMAIN, &[], &[]),
            ("any.default.svc.cluster.local.", A, NXDOMAIN, &[], &[]),
            // Names that exist without the type asked: NODATA.
            ("svc.cluster.local.", A, NOERROR, &[], &[]),
            ("svc.cluster.local.", SRV, NOERROR, &[], &[]),
            ("pod.cluster.local.", A, NOERROR, &[], &[]),
            ("default.svc.cluster.local.", A, NOERROR, &[], &[]),
            ("default.svc.cluster.local.", SRV, NOERROR, &[], &[]),
            ("other.svc.cluster.local.", A, NOERROR, &[], &[]),
            // A Namespace object with no service in it.
            ("empty-ns.svc.cluster.local.", A, NOERROR, &[], &[]),
            ("empty-ns.svc.cluster.local.", AAAA, NOERROR, &[], &[]),
            // The empty non-terminal between a service and its SRV names.
            (
                "_tcp.kubernetes.default.svc.cluster.local.",
                SRV,
                NOERROR,
                &[],
                &[],
            ),
            (
                "_tcp.kubernetes.default.svc.cluster.local.",
                A,
                NOERROR,
                &[],
                &[],
            ),
            (
                "_udp.multi.default.svc.cluster.local.",
                SRV,
                NOERROR,
                &[],
                &[],
            ),
            (
                "_sctp.multi.default.svc.cluster.local.",
                SRV,
                NOERROR,
                &[],
                &[],
            ),
            // Existing names, other types.
            (
                "kubernetes.default.svc.cluster.local.",
                CNAME,
                NOERROR,
                &[],
                &[],
            ),
            (
                "kubernetes.default.svc.cluster.local.",
                PTR,
                NOERROR,
                &[],
                &[],
            ),
            (
                "kubernetes.default.svc.cluster.local.",
                NS,
                NOERROR,
                &[],
                &[],
            ),
            (
                "kubernetes.default.svc.cluster.local.",
                SOA,
                NOERROR,
                &[],
                &[],
            ),
            // Pod records are disabled by default.
            (
                "192-0-2-20.default.pod.cluster.local.",
                A,
                NXDOMAIN,
                &[],
                &[],
            ),
            ("default.pod.cluster.local.", A, NXDOMAIN, &[], &[]),
        ],
    );
}

#[test]
fn question_case_is_echoed_and_answered() {
    let server = Server::fixtures(None);
    // The harness checks the question comes back byte for byte; `check` checks every answer
    // owner is spelled as asked.
    check_all(
        &server,
        5,
        &[
            (
                "KuBeRnEtEs.Default.SVC.cluster.local.",
                A,
                NOERROR,
                &["5 A 192.0.2.1"],
                &[],
            ),
            (
                "KUBERNETES.DEFAULT.SVC.CLUSTER.LOCAL.",
                A,
                NOERROR,
                &["5 A 192.0.2.1"],
                &[],
            ),
            (
                "Dual.Default.Svc.Cluster.Local.",
                AAAA,
                NOERROR,
                &["5 AAAA 2001:db8::2"],
                &[],
            ),
            (
                "_HTTPS._Tcp.Kubernetes.Default.Svc.Cluster.Local.",
                SRV,
                NOERROR,
                &["5 SRV 0 100 443 kubernetes.default.svc.cluster.local."],
                &["kubernetes.default.svc.cluster.local. 5 A 192.0.2.1"],
            ),
            (
                "WEB-0.Web.Default.Svc.Cluster.Local.",
                A,
                NOERROR,
                &["5 A 192.0.2.10"],
                &[],
            ),
            (
                "1.2.0.192.IN-ADDR.ARPA.",
                PTR,
                NOERROR,
                &["5 PTR kubernetes.default.svc.cluster.local."],
                &[],
            ),
            (
                "DNS-Version.Cluster.Local.",
                TXT,
                NOERROR,
                &["28800 TXT \"1.1.0\""],
                &[],
            ),
            ("Missing.Default.SVC.cluster.local.", A, NXDOMAIN, &[], &[]),
            ("Empty-NS.SVC.cluster.local.", A, NOERROR, &[], &[]),
        ],
    );
    // The chain keeps the question's spelling for its first owner only.
    let answer = server.both(&query("EXT-IN.default.svc.cluster.local.", A));
    check_header(&answer, "EXT-IN A", NOERROR);
    let chain: Vec<String> = answer.answers.iter().map(full).collect();
    assert_eq!(
        chain,
        [
            "EXT-IN.default.svc.cluster.local. 5 CNAME kubernetes.default.svc.cluster.local.",
            "kubernetes.default.svc.cluster.local. 5 A 192.0.2.1",
        ]
    );
}

#[test]
fn pod_records_insecure() {
    let server = Server::manifests(&fixtures(), None, &["--pods", "insecure"]);
    check_all(
        &server,
        5,
        &[
            (
                "192-0-2-20.default.pod.cluster.local.",
                A,
                NOERROR,
                &["5 A 192.0.2.20"],
                &[],
            ),
            (
                "192-0-2-20.default.pod.cluster.local.",
                AAAA,
                NOERROR,
                &[],
                &[],
            ),
            (
                "2001-db8--20.default.pod.cluster.local.",
                AAAA,
                NOERROR,
                &["5 AAAA 2001:db8::20"],
                &[],
            ),
            (
                "2001-db8--20.default.pod.cluster.local.",
                A,
                NOERROR,
                &[],
                &[],
            ),
            // Insecure: any address in an existing namespace, pod or not (CoreDNS).
            (
                "192-0-2-99.default.pod.cluster.local.",
                A,
                NOERROR,
                &["5 A 192.0.2.99"],
                &[],
            ),
            (
                "192-0-2-20.other.pod.cluster.local.",
                A,
                NOERROR,
                &["5 A 192.0.2.20"],
                &[],
            ),
            (
                "192-0-2-20.empty-ns.pod.cluster.local.",
                A,
                NOERROR,
                &["5 A 192.0.2.20"],
                &[],
            ),
            (
                "192-0-2-20.Default.POD.cluster.local.",
                A,
                NOERROR,
                &["5 A 192.0.2.20"],
                &[],
            ),
            (
                "192-0-2-20.nonexistent-ns.pod.cluster.local.",
                A,
                NXDOMAIN,
                &[],
                &[],
            ),
            ("client.default.pod.cluster.local.", A, NXDOMAIN, &[], &[]),
            ("192-0-2.default.pod.cluster.local.", A, NXDOMAIN, &[], &[]),
            (
                "x.192-0-2-20.default.pod.cluster.local.",
                A,
                NXDOMAIN,
                &[],
                &[],
            ),
            ("default.pod.cluster.local.", A, NOERROR, &[], &[]),
            ("nonexistent-ns.pod.cluster.local.", A, NXDOMAIN, &[], &[]),
            // Service records are unchanged.
            (
                "kubernetes.default.svc.cluster.local.",
                A,
                NOERROR,
                &["5 A 192.0.2.1"],
                &[],
            ),
        ],
    );
}

#[test]
fn pod_records_verified() {
    let server = Server::manifests(&fixtures(), None, &["--pods", "verified"]);
    check_all(
        &server,
        5,
        &[
            (
                "192-0-2-20.default.pod.cluster.local.",
                A,
                NOERROR,
                &["5 A 192.0.2.20"],
                &[],
            ),
            (
                "192-0-2-10.default.pod.cluster.local.",
                A,
                NOERROR,
                &["5 A 192.0.2.10"],
                &[],
            ),
            // Every address of a dual-stack pod is verified (CoreDNS only knows status.podIP).
            (
                "2001-db8--20.default.pod.cluster.local.",
                AAAA,
                NOERROR,
                &["5 AAAA 2001:db8::20"],
                &[],
            ),
            (
                "192-0-2-20.default.pod.cluster.local.",
                AAAA,
                NOERROR,
                &[],
                &[],
            ),
            // No pod with that address, or not in that namespace.
            (
                "192-0-2-99.default.pod.cluster.local.",
                A,
                NXDOMAIN,
                &[],
                &[],
            ),
            ("192-0-2-20.other.pod.cluster.local.", A, NXDOMAIN, &[], &[]),
            (
                "192-0-2-20.nonexistent-ns.pod.cluster.local.",
                A,
                NXDOMAIN,
                &[],
                &[],
            ),
            (
                "2001-db8--99.default.pod.cluster.local.",
                AAAA,
                NXDOMAIN,
                &[],
                &[],
            ),
            ("default.pod.cluster.local.", A, NOERROR, &[], &[]),
        ],
    );
}

#[test]
fn zone_transfers_are_refused() {
    let server = Server::fixtures(None);
    for qtype in [AXFR, IXFR] {
        for name in ["cluster.local.", "default.svc.cluster.local."] {
            let q = query(name, qtype);
            for (transport, answer) in [("udp", server.udp(&q)), ("tcp", server.tcp(&q))] {
                let what = format!("{name} {qtype} over {transport}");
                assert_eq!(
                    answer.metadata.response_code,
                    ResponseCode::Refused,
                    "{what}"
                );
                assert!(answer.answers.is_empty(), "{what}: no records");
                assert!(answer.authorities.is_empty(), "{what}: no authority");
                assert!(answer.additionals.is_empty(), "{what}: no additional");
            }
        }
    }
}

#[test]
fn ttl_flag_sets_record_ttls_and_the_soa_minimum() {
    let server = Server::manifests(&fixtures(), None, &["--ttl", "30"]);
    check_all(
        &server,
        30,
        &[
            (
                "kubernetes.default.svc.cluster.local.",
                A,
                NOERROR,
                &["30 A 192.0.2.1"],
                &[],
            ),
            (
                "_https._tcp.kubernetes.default.svc.cluster.local.",
                SRV,
                NOERROR,
                &["30 SRV 0 100 443 kubernetes.default.svc.cluster.local."],
                &["kubernetes.default.svc.cluster.local. 30 A 192.0.2.1"],
            ),
            (
                "web-0.web.default.svc.cluster.local.",
                A,
                NOERROR,
                &["30 A 192.0.2.10"],
                &[],
            ),
            (
                "1.2.0.192.in-addr.arpa.",
                PTR,
                NOERROR,
                &["30 PTR kubernetes.default.svc.cluster.local."],
                &[],
            ),
            (
                "ext-in.default.svc.cluster.local.",
                CNAME,
                NOERROR,
                &["30 CNAME kubernetes.default.svc.cluster.local."],
                &[],
            ),
            (
                "cluster.local.",
                NS,
                NOERROR,
                &["30 NS ns.dns.cluster.local."],
                &[],
            ),
            (
                "cluster.local.",
                SOA,
                NOERROR,
                &[
                    "30 SOA ns.dns.cluster.local. hostmaster.cluster.local. SERIAL 7200 1800 86400 30",
                ],
                &[],
            ),
            // The schema version keeps its own TTL.
            (
                "dns-version.cluster.local.",
                TXT,
                NOERROR,
                &["28800 TXT \"1.1.0\""],
                &[],
            ),
            // Negative answers: SOA TTL and minimum follow (checked by `check`).
            ("missing.default.svc.cluster.local.", A, NXDOMAIN, &[], &[]),
            (
                "kubernetes.default.svc.cluster.local.",
                AAAA,
                NOERROR,
                &[],
                &[],
            ),
        ],
    );

    // Above 300 s the SOA record's own TTL stays at 300 while its minimum follows (CoreDNS).
    let server = Server::manifests(&fixtures(), None, &["--ttl", "3600"]);
    check_all(
        &server,
        3600,
        &[
            (
                "kubernetes.default.svc.cluster.local.",
                A,
                NOERROR,
                &["3600 A 192.0.2.1"],
                &[],
            ),
            ("missing.default.svc.cluster.local.", A, NXDOMAIN, &[], &[]),
            (
                "cluster.local.",
                SOA,
                NOERROR,
                &[
                    "300 SOA ns.dns.cluster.local. hostmaster.cluster.local. SERIAL 7200 1800 86400 3600",
                ],
                &[],
            ),
        ],
    );
}
