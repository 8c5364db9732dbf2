//! Black-box tests of the DNS transport: the real binary over real UDP and TCP sockets.
//!
//! EDNS0 and truncation, the rcode policy for malformed input (and its counters), header
//! flags, TCP pipelining and limits, the operators' endpoints, and an IPv6 listener. Every
//! server here serves the fixture cluster (tests/fixtures/cluster/README.md).

mod support;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RecordType};
use std::collections::BTreeSet;
use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::str::FromStr;
use std::time::{Duration, Instant};
use support::*;

const KUBERNETES: &str = "kubernetes.default.svc.cluster.local.";
const MISSING: &str = "missing.default.svc.cluster.local.";
const MEDIUM: &str = "medium.default.svc.cluster.local.";
const BIG: &str = "big.default.svc.cluster.local.";

/// How long a dropped packet is waited for before deciding that no answer comes.
const NO_ANSWER_WAIT: Duration = Duration::from_millis(300);

// ---------------------------------------------------------------------------------------------
// Helpers

fn encode(message: &Message) -> Vec<u8> {
    message.to_vec().expect("encode query")
}

fn decode(bytes: &[u8]) -> Message {
    Message::from_vec(bytes).expect("the answer parses")
}

/// The rcode as the 12-bit number on the wire (header low bits + OPT high bits).
fn rcode_value(message: &Message) -> u16 {
    u16::from(message.metadata.response_code)
}

fn malformed(server: &Server, reason: &str) -> f64 {
    server.metric(
        "clusterdns_malformed_packets_total",
        &format!("reason=\"{reason}\""),
    )
}

fn malformed_total(server: &Server) -> f64 {
    [
        "short",
        "response",
        "undecodable",
        "qdcount",
        "opcode",
        "oversize",
    ]
    .iter()
    .map(|reason| malformed(server, reason))
    .sum()
}

/// The wire size of one more A record in a truncated answer: a compressed owner name (2),
/// type, class, TTL, rdlength (10) and the address (4).
const ONE_MORE_A: usize = 16;

/// The addresses of a truncated A answer: some, each one the server holds, none twice, and
/// as many as fit (one more would not have).
fn assert_fitted_prefix(answer: &Message, bytes: &[u8], limit: usize, all: &BTreeSet<String>) {
    let got = rdata(&answer.answers, RecordType::A);
    assert!(!got.is_empty(), "the records that fit are kept");
    assert!(got.len() < all.len(), "not all {} records", all.len());
    let distinct: BTreeSet<String> = got.iter().cloned().collect();
    assert_eq!(distinct.len(), got.len(), "no record twice: {got:?}");
    assert!(distinct.is_subset(all), "{got:?}");
    assert!(bytes.len() <= limit, "{} bytes over {limit}", bytes.len());
    assert!(
        bytes.len() + ONE_MORE_A > limit,
        "{} bytes: another record would have fit {limit}",
        bytes.len()
    );
}

fn truncated(server: &Server) -> f64 {
    server.metric("clusterdns_truncated_responses_total", "")
}

/// The server still answers a plain zone query, over UDP and over TCP.
fn assert_serving(server: &Server) {
    for answer in [
        server.udp(&query(KUBERNETES, RecordType::A)),
        server.tcp(&query(KUBERNETES, RecordType::A)),
    ] {
        assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
        assert_eq!(rdata(&answer.answers, RecordType::A), ["192.0.2.1"]);
    }
}

/// A 12-byte header.
fn header(id: u16, flags: u16, counts: [u16; 4]) -> Vec<u8> {
    let mut out = id.to_be_bytes().to_vec();
    out.extend_from_slice(&flags.to_be_bytes());
    for count in counts {
        out.extend_from_slice(&count.to_be_bytes());
    }
    out
}

/// A query whose OPT record advertises `payload` as is (hickory raises values below 512,
/// so the field is patched on the wire). The OPT is the last record: root name (1 byte),
/// type (2), class = payload (2), TTL (4), RDLENGTH 0 (2).
fn query_raw_payload(name: &str, qtype: RecordType, payload: u16) -> (Message, Vec<u8>) {
    let message = query_edns(name, qtype, 4096);
    let mut bytes = encode(&message);
    let len = bytes.len();
    assert_eq!(
        &bytes[len - 11..len - 8],
        &[0, 0, 41],
        "OPT is the last record"
    );
    bytes[len - 8..len - 6].copy_from_slice(&payload.to_be_bytes());
    (message, bytes)
}

/// A deterministic stream of pseudo-random bytes (xorshift64*).
struct Garbage(u64);

impl Garbage {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// EDNS0 and truncation

#[test]
fn edns_opt_answered_only_when_asked() {
    let server = Server::fixtures(None);

    for payload in [512, 1232, 4096] {
        let q = query_edns(KUBERNETES, RecordType::A, payload);
        for answer in [server.udp(&q), server.tcp(&q)] {
            assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
            assert_eq!(rdata(&answer.answers, RecordType::A), ["192.0.2.1"]);
            let edns = answer.edns.as_ref().expect("OPT in the answer");
            assert_eq!(
                edns.max_payload(),
                1232,
                "advertised payload = max_udp_payload"
            );
            assert_eq!(edns.version(), 0);
            assert_eq!(edns.rcode_high(), 0);
            assert!(!edns.flags().dnssec_ok, "DO not set when not asked");
            assert!(
                answer
                    .additionals
                    .iter()
                    .all(|r| r.record_type() != RecordType::OPT),
                "exactly one OPT"
            );
        }
    }

    // The DO bit is echoed (RFC 3225 3).
    let mut q = query_edns(KUBERNETES, RecordType::A, 1232);
    q.edns.as_mut().expect("edns").set_dnssec_ok(true);
    let answer = server.udp(&q);
    assert!(answer.edns.expect("OPT").flags().dnssec_ok, "DO echoed");

    // No OPT in the query, none in the answer (RFC 6891 7), checked on the wire too.
    let q = query(KUBERNETES, RecordType::A);
    let bytes = server
        .udp_raw(&encode(&q))
        .expect("an answer to a plain query");
    assert_eq!(&bytes[10..12], &[0, 0], "ARCOUNT 0 without EDNS");
    let answer = parse_answer(&q, &bytes);
    assert!(answer.edns.is_none(), "no OPT without EDNS in the query");
    let answer = server.tcp(&q);
    assert!(
        answer.edns.is_none(),
        "no OPT over TCP without EDNS in the query"
    );
}

#[test]
fn udp_without_edns_truncates_at_512() {
    let server = Server::fixtures(None);
    assert_eq!(truncated(&server), 0.0);

    // medium: 40 A records do not fit 512 bytes.
    let q = query(MEDIUM, RecordType::A);
    let bytes = server.udp_raw(&encode(&q)).expect("an answer");
    assert!(bytes.len() <= 512, "UDP answer of {} bytes", bytes.len());
    let answer = parse_answer(&q, &bytes);
    assert!(answer.metadata.truncation, "TC set");
    assert!(
        answer.metadata.authoritative,
        "AA kept on a truncated zone answer"
    );
    assert!(answer.metadata.recursion_available, "RA set");
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    let all: BTreeSet<String> = (1..=40).map(|i| format!("203.0.113.{i}")).collect();
    assert_fitted_prefix(&answer, &bytes, 512, &all);
    assert!(answer.authorities.is_empty());
    assert!(answer.additionals.is_empty());
    assert!(answer.edns.is_none());
    assert_eq!(truncated(&server), 1.0, "truncation counted");

    // With EDNS 1232 the same answer fits.
    let q = query_edns(MEDIUM, RecordType::A, 1232);
    let bytes = server.udp_raw(&encode(&q)).expect("an answer");
    assert!(
        bytes.len() > 512 && bytes.len() <= 1232,
        "{} bytes",
        bytes.len()
    );
    let answer = parse_answer(&q, &bytes);
    assert!(!answer.metadata.truncation, "TC not set");
    assert!(answer.metadata.authoritative);
    let expected: Vec<String> = {
        let mut v: Vec<String> = (1..=40).map(|i| format!("203.0.113.{i}")).collect();
        v.sort();
        v
    };
    assert_eq!(rdata(&answer.answers, RecordType::A), expected);
    assert_eq!(truncated(&server), 1.0, "a complete answer is not counted");

    // Over TCP without EDNS it is complete too (the retry the TC asks for).
    let answer = server.tcp(&query(MEDIUM, RecordType::A));
    assert!(!answer.metadata.truncation);
    assert_eq!(rdata(&answer.answers, RecordType::A), expected);
    assert_eq!(truncated(&server), 1.0, "TCP answers are never truncated");
}

#[test]
fn udp_payload_capped_at_max_udp_payload_and_tcp_complete() {
    let server = Server::fixtures(None);

    // big: 100 A records, more than 1232 bytes; the client's 4096 is capped at 1232.
    let q = query_edns(BIG, RecordType::A, 4096);
    let bytes = server.udp_raw(&encode(&q)).expect("an answer");
    assert!(bytes.len() <= 1232, "UDP answer of {} bytes", bytes.len());
    let answer = parse_answer(&q, &bytes);
    assert!(answer.metadata.truncation, "TC set");
    assert!(answer.metadata.authoritative);
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    let expected: BTreeSet<String> = (1..=100).map(|i| format!("198.51.100.{i}")).collect();
    assert_fitted_prefix(&answer, &bytes, 1232, &expected);
    assert!(answer.additionals.is_empty());
    let edns = answer.edns.expect("OPT kept on a truncated answer");
    assert_eq!(edns.max_payload(), 1232);
    assert_eq!(truncated(&server), 1.0);

    for q in [
        query(BIG, RecordType::A),
        query_edns(BIG, RecordType::A, 4096),
    ] {
        let answer = server.tcp(&q);
        assert!(!answer.metadata.truncation, "TCP answer complete");
        assert!(answer.metadata.authoritative);
        assert_eq!(answer.answers.len(), 100, "every endpoint, once");
        let got: BTreeSet<String> = rdata(&answer.answers, RecordType::A).into_iter().collect();
        assert_eq!(got, expected);
    }
    assert_eq!(truncated(&server), 1.0);
}

#[test]
fn configured_max_udp_payload_is_advertised_and_used() {
    let (server, _dir) = server_with_config("[server]\nmax_udp_payload = 4096\n", None);

    let q = query_edns(BIG, RecordType::A, 4096);
    let bytes = server.udp_raw(&encode(&q)).expect("an answer");
    assert!(
        bytes.len() > 1232 && bytes.len() <= 4096,
        "{} bytes",
        bytes.len()
    );
    let answer = parse_answer(&q, &bytes);
    assert!(!answer.metadata.truncation);
    assert_eq!(answer.answers.len(), 100);
    assert_eq!(answer.edns.expect("OPT").max_payload(), 4096);

    // The client's own smaller payload still limits the answer.
    let q = query_edns(BIG, RecordType::A, 1232);
    let bytes = server.udp_raw(&encode(&q)).expect("an answer");
    assert!(bytes.len() <= 1232);
    let answer = parse_answer(&q, &bytes);
    assert!(answer.metadata.truncation, "TC at the client's 1232");
    assert_eq!(truncated(&server), 1.0);
}

#[test]
fn additional_records_that_do_not_fit_are_left_out_without_tc() {
    let (server, _dir) = server_with_config("[server]\nmax_udp_payload = 4096\n", None);
    let name = "_http._tcp.medium.default.svc.cluster.local.";

    // The whole answer over TCP: 40 SRV records, each target's address in the additional
    // section. The size of the answer section alone (with the OPT) sets the client's payload.
    let full = server.tcp(&query_edns(name, RecordType::SRV, 4096));
    assert_eq!(full.answers.len(), 40);
    assert_eq!(full.additionals.len(), 40);
    let mut answers_only = full.clone();
    answers_only.additionals.clear();
    let payload = encode(&answers_only).len() + 20;
    assert!(payload < encode(&full).len());

    let (q, bytes) = query_raw_payload(name, RecordType::SRV, payload as u16);
    let reply = server.udp_raw(&bytes).expect("an answer");
    assert!(
        reply.len() <= payload,
        "{} bytes over {payload}",
        reply.len()
    );
    let answer = parse_answer(&q, &reply);
    assert!(
        !answer.metadata.truncation,
        "no TC for missing additional records (RFC 2181 9)"
    );
    assert!(answer.metadata.authoritative);
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert_eq!(
        answer.answers, full.answers,
        "every SRV record, as over TCP"
    );
    assert!(
        answer.additionals.len() < 40,
        "{} additional records in {payload} bytes",
        answer.additionals.len()
    );
    assert!(
        answer
            .additionals
            .iter()
            .all(|r| full.additionals.contains(r)),
        "only records of the full answer"
    );
    assert!(answer.edns.is_some(), "OPT kept");
    assert_eq!(truncated(&server), 0.0, "not counted as truncated");

    // A payload that cuts into the SRV records: TC, the SRV records that fit, no additional.
    let (q, bytes) = query_raw_payload(name, RecordType::SRV, 1232);
    let reply = server.udp_raw(&bytes).expect("an answer");
    assert!(reply.len() <= 1232);
    let answer = parse_answer(&q, &reply);
    assert!(answer.metadata.truncation);
    assert!(!answer.answers.is_empty() && answer.answers.len() < 40);
    assert_eq!(answer.answers[..], full.answers[..answer.answers.len()]);
    assert!(answer.additionals.is_empty());
    assert_eq!(truncated(&server), 1.0);
}

/// CoreDNS `loadbalance`: a multi-address answer starts at another address from one answer
/// to the next, also once it is answered from prebuilt bytes.
#[test]
fn a_multi_address_answer_is_rotated_prebuilt_or_not() {
    let server = Server::fixtures(None);
    let prebuilt = || server.metric("clusterdns_prebuilt_answers_total", "source=\"zone\"");
    let before = prebuilt();
    let expected: BTreeSet<String> = (1..=40).map(|i| format!("203.0.113.{i}")).collect();
    let q = query_edns(MEDIUM, RecordType::A, 1232);
    let client = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind client");
    client.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    let mut firsts = BTreeSet::new();
    for _ in 0..10 {
        client.send_to(&encode(&q), server.dns).expect("send");
        let mut buf = vec![0u8; 4096];
        let len = client.recv(&mut buf).expect("an answer");
        let answer = parse_answer(&q, &buf[..len]);
        assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
        assert!(answer.metadata.authoritative);
        assert!(!answer.metadata.truncation);
        let order: Vec<String> = answer.answers.iter().map(|r| r.data.to_string()).collect();
        assert_eq!(order.len(), 40, "every address once: {order:?}");
        assert_eq!(order.iter().cloned().collect::<BTreeSet<_>>(), expected);
        assert!(answer.answers.iter().all(|r| r.ttl == 5));
        firsts.insert(order[0].clone());
    }
    assert!(
        prebuilt() - before >= 9.0,
        "answered from prebuilt bytes after the first"
    );
    assert!(
        firsts.len() > 1,
        "the answers did not rotate: always {firsts:?} first"
    );
}

#[test]
fn client_payload_below_512_is_treated_as_512() {
    let server = Server::fixtures(None);

    // Pick an answer between 100 and 512 bytes (measured over TCP, with an OPT).
    let candidates = [
        ("web.default.svc.cluster.local.", RecordType::SRV),
        (
            "_https._tcp.multi.default.svc.cluster.local.",
            RecordType::SRV,
        ),
        ("web.default.svc.cluster.local.", RecordType::A),
        ("pub.default.svc.cluster.local.", RecordType::A),
    ];
    let (name, qtype, size) = candidates
        .iter()
        .find_map(|&(name, qtype)| {
            let q = query_edns(name, qtype, 4096);
            let mut stream = server.tcp_connect();
            write_framed(&mut stream, &encode(&q));
            let bytes = read_framed(&mut stream).expect("TCP answer");
            (bytes.len() > 100 && bytes.len() <= 512).then_some((name, qtype, bytes.len()))
        })
        .expect("a fixture answer between 100 and 512 bytes");

    for payload in [0u16, 1, 100, 511] {
        let (q, bytes) = query_raw_payload(name, qtype, payload);
        let reply = server.udp_raw(&bytes).expect("an answer");
        assert_eq!(
            reply.len(),
            size,
            "payload {payload}: the whole {size}-byte answer"
        );
        let answer = parse_answer(&q, &reply);
        assert!(
            !answer.metadata.truncation,
            "payload {payload}: not truncated"
        );
        assert!(!answer.answers.is_empty());
        assert_eq!(answer.edns.expect("OPT").max_payload(), 1232);
    }

    // And 512 is still the limit: medium (> 512 bytes) is truncated at a payload of 100.
    let (q, bytes) = query_raw_payload(MEDIUM, RecordType::A, 100);
    let reply = server.udp_raw(&bytes).expect("an answer");
    let answer = parse_answer(&q, &reply);
    assert!(answer.metadata.truncation);
    let all: BTreeSet<String> = (1..=40).map(|i| format!("203.0.113.{i}")).collect();
    assert_fitted_prefix(&answer, &reply, 512, &all);
    assert_eq!(truncated(&server), 1.0);
}

#[test]
fn edns_version_1_gets_badvers() {
    let server = Server::fixtures(None);
    let mut q = query_edns(KUBERNETES, RecordType::A, 1232);
    q.edns.as_mut().expect("edns").set_version(1);

    let udp = server.udp_raw(&encode(&q)).expect("an answer over UDP");
    let mut stream = server.tcp_connect();
    write_framed(&mut stream, &encode(&q));
    let tcp = read_framed(&mut stream).expect("an answer over TCP");
    for bytes in [udp, tcp] {
        // On the wire: header rcode 0, OPT extended rcode 1 => 16 (BADVERS, RFC 6891 6.1.3).
        assert_eq!(bytes[3] & 0x0f, 0, "low rcode bits");
        let answer = parse_answer(&q, &bytes);
        assert_eq!(rcode_value(&answer), 16, "BADVERS");
        let edns = answer.edns.expect("OPT carries the extended rcode");
        assert_eq!(edns.rcode_high(), 1);
        assert_eq!(edns.version(), 0, "we speak version 0");
        assert!(answer.answers.is_empty());
    }
    // miekg/dns (and so CoreDNS) names rcode 16 BADSIG.
    assert_eq!(
        server.metric(
            "coredns_dns_responses_total",
            "plugin=\"\",rcode=\"BADSIG\""
        ),
        2.0
    );
    assert_eq!(malformed_total(&server), 0.0, "BADVERS is not malformed");
    assert_serving(&server);
}

// ---------------------------------------------------------------------------------------------
// Header flags

#[test]
fn flags_and_ids_echoed() {
    let upstream = FakeUpstream::start(UpstreamMode::Answer);
    let server = Server::fixtures(Some(upstream.addr));

    for id in [0u16, 1, 0x1234, 0xffff] {
        for rd in [false, true] {
            let mut q = query(KUBERNETES, RecordType::A);
            q.metadata.id = id;
            q.metadata.recursion_desired = rd;
            for answer in [server.udp(&q), server.tcp(&q)] {
                assert_eq!(answer.metadata.id, id, "id echoed");
                assert_eq!(answer.metadata.recursion_desired, rd, "RD echoed");
                assert!(answer.metadata.recursion_available, "RA set");
                assert!(answer.metadata.authoritative, "AA set on a zone answer");
                assert!(!answer.metadata.truncation);
                assert!(!answer.metadata.checking_disabled);
                assert_eq!(answer.metadata.message_type, MessageType::Response);
            }
        }
    }

    // CD is echoed (RFC 6840 5.9).
    let mut q = query(KUBERNETES, RecordType::A);
    q.metadata.checking_disabled = true;
    assert!(server.udp(&q).metadata.checking_disabled, "CD echoed");

    // AA on a negative zone answer too.
    let answer = server.udp(&query(MISSING, RecordType::A));
    assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain);
    assert!(
        answer.metadata.authoritative,
        "AA on NXDOMAIN from the zone"
    );

    // Not authoritative for what the upstream answered.
    let q = query("www.example.org.", RecordType::A);
    let answer = server.udp(&q);
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert_eq!(rdata(&answer.answers, RecordType::A), ["203.0.113.53"]);
    assert!(
        !answer.metadata.authoritative,
        "no AA on a forwarded answer"
    );
    assert!(answer.metadata.recursion_available);
    assert_eq!(upstream.count(), 1);
}

// ---------------------------------------------------------------------------------------------
// Malformed input

#[test]
fn short_packets_are_dropped() {
    let server = Server::fixtures(None);
    for len in [0usize, 1, 2, 11] {
        let packet = vec![0x12u8; len];
        assert_eq!(
            server.udp_raw_wait(&packet, NO_ANSWER_WAIT),
            None,
            "{len}-byte packet answered"
        );
    }
    assert!(
        eventually(IO_TIMEOUT, || malformed(&server, "short") == 4.0),
        "short packets counted: {}",
        malformed(&server, "short")
    );
    assert_serving(&server);
}

#[test]
fn oversize_udp_datagram_is_dropped_and_counted() {
    let server = Server::fixtures(None);
    // A well-formed query followed by junk up to 5,000 bytes: longer than any query (the
    // server reads 4,096 bytes a datagram), so it is dropped, not answered from its start.
    let mut packet = encode(&query(KUBERNETES, RecordType::A));
    packet.resize(5000, 0xab);
    assert_eq!(server.udp_raw_wait(&packet, NO_ANSWER_WAIT), None);
    assert!(
        eventually(IO_TIMEOUT, || malformed(&server, "oversize") == 1.0),
        "oversize datagram counted: {}",
        malformed(&server, "oversize")
    );
    // The datagrams around it in the same read are answered.
    assert_serving(&server);
}

/// Queries the kernel drops on a full receive buffer never reach the server's code; it reads
/// them from the kernel's socket table, per listen address: every query sent is either
/// counted as a request or as a drop.
#[test]
fn queries_dropped_by_the_kernel_on_a_full_receive_buffer_are_counted() {
    let (server, _dir) = server_with_config(
        "[server]\nudp_workers = 1\nrecv_buffer_bytes = 4096\n",
        None,
    );
    let label = format!("server=\"dns://{}\"", server.dns);
    let text = server.metrics_text();
    assert!(
        text.contains(&format!("clusterdns_udp_receive_drops_total{{{label}}} 0")),
        "the series exists before the first drop:\n{text}"
    );
    assert!(text.contains(&format!("clusterdns_udp_receive_queue_bytes{{{label}}}")));
    let requests = || {
        server.metric(
            "coredns_dns_requests_total",
            &format!("{label},proto=\"udp\""),
        )
    };
    let drops = || server.metric("clusterdns_udp_receive_drops_total", &label);
    let before = requests();

    // Far more than a 4 KiB buffer holds, sent without reading an answer.
    const SENT: u16 = 3000;
    let client = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind client");
    let mut q = query(KUBERNETES, RecordType::A);
    for id in 0..SENT {
        q.metadata.id = id;
        client.send_to(&encode(&q), server.dns).expect("send");
    }
    assert!(
        eventually(Duration::from_secs(10), || requests() - before + drops()
            == f64::from(SENT)),
        "requests {} + drops {} != {SENT} sent",
        requests() - before,
        drops()
    );
    assert!(drops() > 0.0, "a 4 KiB buffer overflowed");
    assert!(requests() - before > 0.0, "and some were answered");
    assert_serving(&server);
}

/// Many clients sending at once: the server reads several datagrams per system call and
/// writes their answers together; every answer must reach its own client, with its own id.
#[test]
fn a_burst_from_many_clients_is_answered_each_to_its_own() {
    let server = Server::fixtures(None);
    let names = [
        (KUBERNETES, "192.0.2.1"),
        ("unnamed.default.svc.cluster.local.", "192.0.2.4"),
    ];
    let clients: Vec<std::net::UdpSocket> = (0..8)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").expect("bind client"))
        .collect();
    const PER_CLIENT: u16 = 40;
    // Everything is sent before anything is read, so the server's socket holds a backlog.
    for (c, client) in clients.iter().enumerate() {
        for i in 0..PER_CLIENT {
            let mut q = query(names[usize::from(i) % 2].0, RecordType::A);
            q.metadata.id = (c as u16) << 8 | i;
            client.send_to(&encode(&q), server.dns).expect("send");
        }
    }
    for (c, client) in clients.iter().enumerate() {
        client
            .set_read_timeout(Some(IO_TIMEOUT))
            .expect("read timeout");
        let mut ids = BTreeSet::new();
        let mut buf = [0u8; 4096];
        for _ in 0..PER_CLIENT {
            let (len, from) = client
                .recv_from(&mut buf)
                .expect("an answer for every query");
            assert_eq!(from, server.dns);
            let answer = decode(&buf[..len]);
            let id = answer.metadata.id;
            assert_eq!(
                usize::from(id >> 8),
                c,
                "answer for another client: id {id:#06x}"
            );
            assert!(ids.insert(id), "id {id:#06x} answered twice");
            let (name, address) = names[usize::from(id & 0xff) % 2];
            assert_eq!(answer.queries[0].name().to_ascii(), name);
            assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
            assert!(answer.metadata.authoritative);
            assert_eq!(rdata(&answer.answers, RecordType::A), [address]);
        }
        assert_eq!(ids.len(), usize::from(PER_CLIENT));
    }
}

#[test]
fn responses_are_dropped() {
    let server = Server::fixtures(None);
    let mut packet = encode(&query(KUBERNETES, RecordType::A));
    packet[2] |= 0x80; // QR
    assert_eq!(server.udp_raw_wait(&packet, NO_ANSWER_WAIT), None);
    // A well-formed response (what a reflection attack would send) too.
    let mut response = Message::response(7, OpCode::Query);
    response.add_query(Query::query(
        Name::from_str(KUBERNETES).expect("name"),
        RecordType::A,
    ));
    assert_eq!(
        server.udp_raw_wait(&encode(&response), NO_ANSWER_WAIT),
        None
    );
    assert!(
        eventually(IO_TIMEOUT, || malformed(&server, "response") == 2.0),
        "responses counted: {}",
        malformed(&server, "response")
    );
    assert_serving(&server);
}

#[test]
fn undecodable_query_gets_formerr_with_id() {
    let server = Server::fixtures(None);
    let bodies: [&[u8]; 3] = [
        &[0xc0, 0xff, 0x13],       // a compression pointer out of the message
        &[0x03, b'a', b'b'],       // a label running past the end
        &[0x01, b'a', 0x00, 0x00], // a question cut in its type
    ];
    for (i, body) in bodies.iter().enumerate() {
        for rd in [false, true] {
            let id = 0xbe00 + i as u16;
            let flags = if rd { 0x0100 } else { 0 };
            let mut packet = header(id, flags, [1, 0, 0, 0]);
            packet.extend_from_slice(body);
            let bytes = server.udp_raw(&packet).expect("FORMERR answer");
            let answer = decode(&bytes);
            assert_eq!(answer.metadata.id, id, "id echoed");
            assert_eq!(answer.metadata.message_type, MessageType::Response);
            assert_eq!(answer.metadata.response_code, ResponseCode::FormErr);
            assert_eq!(answer.metadata.recursion_desired, rd, "RD echoed");
            assert!(!answer.metadata.authoritative);
            assert!(answer.queries.is_empty(), "no question to echo");
            assert!(answer.answers.is_empty());
        }
    }
    // Two OPT records (RFC 6891 6.1.1): FORMERR too.
    let q = query_edns(KUBERNETES, RecordType::A, 1232);
    let mut packet = encode(&q);
    let opt = packet[packet.len() - 11..].to_vec();
    packet.extend_from_slice(&opt);
    packet[11] += 1; // ARCOUNT
    let answer = decode(&server.udp_raw(&packet).expect("FORMERR answer"));
    assert_eq!(answer.metadata.id, q.metadata.id);
    assert_eq!(answer.metadata.response_code, ResponseCode::FormErr);

    assert_eq!(malformed(&server, "undecodable"), 7.0);
    assert_eq!(
        server.metric(
            "coredns_dns_responses_total",
            "plugin=\"\",rcode=\"FORMERR\""
        ),
        7.0
    );
    assert_serving(&server);
}

#[test]
fn question_count_other_than_one_is_formerr() {
    let server = Server::fixtures(None);

    let mut none = Message::query();
    none.metadata.id = 0x0a0a;
    none.metadata.recursion_desired = true;
    let mut two = query(KUBERNETES, RecordType::A);
    two.metadata.id = 0x0b0b;
    two.add_query(Query::query(
        Name::from_str(MEDIUM).expect("name"),
        RecordType::A,
    ));
    for q in [none, two] {
        let packet = encode(&q);
        for bytes in [server.udp_raw(&packet).expect("UDP answer"), {
            let mut stream = server.tcp_connect();
            write_framed(&mut stream, &packet);
            read_framed(&mut stream).expect("TCP answer")
        }] {
            let answer = decode(&bytes);
            assert_eq!(answer.metadata.id, q.metadata.id);
            assert_eq!(answer.metadata.message_type, MessageType::Response);
            assert_eq!(answer.metadata.response_code, ResponseCode::FormErr);
            assert!(answer.metadata.recursion_desired);
            assert!(answer.answers.is_empty());
        }
    }
    assert_eq!(malformed(&server, "qdcount"), 4.0);
    assert_serving(&server);
}

#[test]
fn other_opcodes_get_notimp() {
    let server = Server::fixtures(None);
    let opcodes = [
        OpCode::Notify,
        OpCode::Update,
        OpCode::Status,
        OpCode::Unknown(3),
    ];
    for (i, op) in opcodes.into_iter().enumerate() {
        let mut q = query(KUBERNETES, RecordType::A);
        q.metadata.op_code = op;
        q.metadata.id = 0x4400 + i as u16;
        let bytes = server.udp_raw(&encode(&q)).expect("an answer");
        let answer = decode(&bytes);
        assert_eq!(answer.metadata.id, q.metadata.id);
        assert_eq!(answer.metadata.message_type, MessageType::Response);
        assert_eq!(answer.metadata.op_code, op, "opcode echoed");
        assert_eq!(
            answer.metadata.response_code,
            ResponseCode::NotImp,
            "{op:?}"
        );
        assert!(answer.answers.is_empty());
        assert!(!answer.metadata.authoritative);
        assert_serving(&server);
    }
    assert_eq!(malformed(&server, "opcode"), 4.0);
}

#[test]
fn class_chaos_is_refused() {
    let server = Server::fixtures(None);
    for name in [KUBERNETES, "version.bind."] {
        let mut q = Message::query();
        q.metadata.id = rand_id();
        q.metadata.recursion_desired = true;
        let mut question = Query::query(Name::from_str(name).expect("name"), RecordType::TXT);
        question.set_query_class(DNSClass::CH);
        q.add_query(question);
        for answer in [server.udp(&q), server.tcp(&q)] {
            assert_eq!(answer.metadata.response_code, ResponseCode::Refused);
            assert_eq!(
                answer.queries[0].query_class(),
                DNSClass::CH,
                "class echoed"
            );
            assert!(answer.answers.is_empty());
            assert!(!answer.metadata.authoritative);
        }
    }
    assert_eq!(malformed_total(&server), 0.0, "a CH query is not malformed");
    assert_serving(&server);
}

fn rand_id() -> u16 {
    query(KUBERNETES, RecordType::A).metadata.id
}

#[test]
fn udp_garbage_never_stops_the_server() {
    let server = Server::fixtures(None);
    let mut garbage = Garbage(0x9e37_79b9_7f4a_7c15);
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    for _ in 0..300 {
        let len = (garbage.next() % 600) as usize;
        socket
            .send_to(&garbage.bytes(len), server.dns)
            .expect("send garbage");
    }
    assert!(
        eventually(IO_TIMEOUT, || server
            .metric("coredns_dns_requests_total", "proto=\"udp\"")
            >= 300.0),
        "garbage received"
    );
    assert!(
        malformed_total(&server) > 0.0,
        "garbage counted as malformed"
    );
    // Valid queries (with EDNS) with a few bytes changed reach deeper into the decoder.
    let names = [
        KUBERNETES,
        MEDIUM,
        "_https._tcp.multi.default.svc.cluster.local.",
    ];
    let mut sent = 300.0;
    for i in 0..600 {
        let mut q = query_edns(names[i % names.len()], RecordType::SRV, 1232);
        q.metadata.recursion_desired = false;
        let mut packet = encode(&q);
        for _ in 0..=(garbage.next() % 4) {
            let at = (garbage.next() as usize) % packet.len();
            packet[at] = garbage.next() as u8;
        }
        socket
            .send_to(&packet, server.dns)
            .expect("send mutated query");
        sent += 1.0;
    }
    assert!(
        eventually(IO_TIMEOUT, || server
            .metric("coredns_dns_requests_total", "proto=\"udp\"")
            >= sent),
        "mutated queries received"
    );
    // Every UDP worker is still alive: queries from many source ports (spread over the
    // SO_REUSEPORT sockets) are all answered.
    for _ in 0..32 {
        let answer = server.udp(&query(KUBERNETES, RecordType::A));
        assert_eq!(rdata(&answer.answers, RecordType::A), ["192.0.2.1"]);
    }
    assert_serving(&server);
}

#[test]
fn tcp_garbage_gets_formerr_or_close() {
    let server = Server::fixtures(None);
    let mut garbage = Garbage(0x0123_4567_89ab_cdef);
    for round in 0..20 {
        let mut stream = server.tcp_connect();
        let mut ids = BTreeSet::new();
        for _ in 0..10 {
            let len = 12 + (garbage.next() % 300) as usize;
            let mut packet = garbage.bytes(len);
            packet[2] &= 0x7f; // a query, so the server has something to answer
            ids.insert(u16::from_be_bytes([packet[0], packet[1]]));
            write_framed(&mut stream, &packet);
        }
        let q = query(KUBERNETES, RecordType::A);
        write_framed(&mut stream, &encode(&q));
        // Each garbage packet gets an error answer; the real query its answer, unless the
        // server chose to close the connection.
        // (None: the server closed the connection, which is allowed.)
        while let Some(bytes) = read_framed(&mut stream) {
            let answer = decode(&bytes);
            assert_eq!(answer.metadata.message_type, MessageType::Response);
            if answer.metadata.id == q.metadata.id && answer.queries.len() == 1 {
                let answer = parse_answer(&q, &bytes);
                assert_eq!(rdata(&answer.answers, RecordType::A), ["192.0.2.1"]);
                break;
            }
            assert!(
                ids.contains(&answer.metadata.id),
                "round {round}: unknown id"
            );
            assert!(
                matches!(
                    answer.metadata.response_code,
                    ResponseCode::FormErr | ResponseCode::NotImp | ResponseCode::Refused
                ),
                "round {round}: {:?} for garbage",
                answer.metadata.response_code
            );
        }
    }
    assert!(malformed(&server, "undecodable") > 0.0);
    assert_serving(&server);
}

#[test]
fn tcp_short_and_incomplete_frames() {
    let server = Server::fixtures(None);

    // A zero-length and an 11-byte frame are dropped; the connection goes on.
    let mut stream = server.tcp_connect();
    write_framed(&mut stream, &[]);
    write_framed(&mut stream, &[0u8; 11]);
    let q = query(KUBERNETES, RecordType::A);
    write_framed(&mut stream, &encode(&q));
    let answer = parse_answer(
        &q,
        &read_framed(&mut stream).expect("answer after short frames"),
    );
    assert_eq!(rdata(&answer.answers, RecordType::A), ["192.0.2.1"]);
    assert_eq!(malformed(&server, "short"), 2.0);
    drop(stream);

    // A length prefix announcing more than is sent, then a half-close: the server closes.
    let mut stream = server.tcp_connect();
    stream.write_all(&[0x01, 0x00]).expect("write prefix");
    stream.write_all(&[0xab; 10]).expect("write some bytes");
    stream.shutdown(Shutdown::Write).expect("half-close");
    assert_eq!(wait_tcp_end(&mut stream), TcpEnd::Closed);

    // The same, then a full close; and a lone first byte of a prefix.
    let mut stream = server.tcp_connect();
    stream.write_all(&[0xff, 0xff, 1, 2, 3]).expect("write");
    drop(stream);
    let mut stream = server.tcp_connect();
    stream.write_all(&[0x00]).expect("write");
    drop(stream);

    assert_serving(&server);
}

// ---------------------------------------------------------------------------------------------
// TCP connections

#[test]
fn tcp_pipelining() {
    let upstream = FakeUpstream::start(UpstreamMode::Answer);
    let server = Server::fixtures(Some(upstream.addr));
    let names = [
        (KUBERNETES, RecordType::A),
        ("dual.default.svc.cluster.local.", RecordType::AAAA),
        ("web.default.svc.cluster.local.", RecordType::A),
        (MISSING, RecordType::A),
        (MEDIUM, RecordType::A),
        ("www.example.org.", RecordType::A),
        (BIG, RecordType::A),
        (
            "_https._tcp.multi.default.svc.cluster.local.",
            RecordType::SRV,
        ),
        ("ext.default.svc.cluster.local.", RecordType::CNAME),
        ("kubernetes.default.svc.cluster.local.", RecordType::AAAA),
    ];
    let mut queries: Vec<Message> = names
        .iter()
        .map(|&(name, qtype)| query(name, qtype))
        .collect();
    for (i, q) in queries.iter_mut().enumerate() {
        q.metadata.id = 0x7000 + i as u16; // distinct
    }

    let mut stream = server.tcp_connect();
    let mut all = Vec::new();
    for q in &queries {
        let bytes = encode(q);
        all.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
        all.extend_from_slice(&bytes);
    }
    stream.write_all(&all).expect("write 10 queries at once");

    let mut seen = BTreeSet::new();
    for _ in 0..queries.len() {
        let bytes = read_framed(&mut stream).expect("an answer for every pipelined query");
        let id = u16::from_be_bytes([bytes[0], bytes[1]]);
        let q = queries
            .iter()
            .find(|q| q.metadata.id == id)
            .expect("answer id matches a query");
        let answer = parse_answer(q, &bytes);
        assert!(!answer.metadata.truncation);
        assert!(seen.insert(id), "one answer per query");
        match q.queries[0].name().to_ascii().as_str() {
            KUBERNETES if q.queries[0].query_type() == RecordType::A => {
                assert_eq!(rdata(&answer.answers, RecordType::A), ["192.0.2.1"])
            }
            MISSING => assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain),
            MEDIUM => assert_eq!(answer.answers.len(), 40),
            BIG => assert_eq!(answer.answers.len(), 100),
            "www.example.org." => {
                assert_eq!(rdata(&answer.answers, RecordType::A), ["203.0.113.53"])
            }
            _ => assert_eq!(answer.metadata.response_code, ResponseCode::NoError),
        }
    }
    assert_eq!(seen.len(), 10);
    // The connection is still usable afterwards.
    let q = query(KUBERNETES, RecordType::A);
    write_framed(&mut stream, &encode(&q));
    parse_answer(
        &q,
        &read_framed(&mut stream).expect("answer after the pipeline"),
    );
    assert_eq!(
        server.metric("coredns_dns_requests_total", "proto=\"tcp\""),
        11.0
    );
}

#[test]
fn tcp_idle_timeout() {
    let (server, _dir) = server_with_config("[server]\ntcp_idle_timeout = \"300ms\"\n", None);
    let timeout = Duration::from_millis(300);

    // After an answer, the connection is closed about the idle timeout later.
    let mut stream = server.tcp_connect();
    let q = query(KUBERNETES, RecordType::A);
    write_framed(&mut stream, &encode(&q));
    parse_answer(&q, &read_framed(&mut stream).expect("answer"));
    let start = Instant::now();
    assert_eq!(
        wait_tcp_end(&mut stream),
        TcpEnd::Closed,
        "closed when idle"
    );
    let waited = start.elapsed();
    assert!(
        waited >= timeout / 2 && waited < Duration::from_secs(4),
        "closed after {waited:?}"
    );

    // A connection that never sends anything, and one that stops mid-prefix.
    for first in [&[][..], &[0x00][..], &[0x00, 0x30, 1, 2][..]] {
        let start = Instant::now();
        let mut stream = server.tcp_connect();
        stream.write_all(first).expect("write");
        assert_eq!(wait_tcp_end(&mut stream), TcpEnd::Closed, "{first:?}");
        let waited = start.elapsed();
        assert!(
            waited >= timeout / 2 && waited < Duration::from_secs(4),
            "closed after {waited:?}"
        );
    }

    // Activity resets the timer: queries every 100 ms keep one connection for over 1 s.
    let mut stream = server.tcp_connect();
    let start = Instant::now();
    for _ in 0..12 {
        let q = query(KUBERNETES, RecordType::A);
        write_framed(&mut stream, &encode(&q));
        parse_answer(
            &q,
            &read_framed(&mut stream).expect("answer on a busy connection"),
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(start.elapsed() > timeout * 3);
}

#[test]
fn tcp_max_queries_per_connection() {
    let (server, _dir) = server_with_config("[server]\nmax_tcp_queries_per_connection = 3\n", None);

    // One at a time: three answers, then the server closes (long before the 10 s idle timeout).
    let mut stream = server.tcp_connect();
    for _ in 0..3 {
        let q = query(KUBERNETES, RecordType::A);
        write_framed(&mut stream, &encode(&q));
        parse_answer(
            &q,
            &read_framed(&mut stream).expect("answer within the limit"),
        );
    }
    assert_eq!(
        wait_tcp_end(&mut stream),
        TcpEnd::Closed,
        "closed after 3 queries"
    );

    // Pipelined beyond the limit: the first three are answered, then the connection ends.
    let mut stream = server.tcp_connect();
    let queries: Vec<Message> = (0..5)
        .map(|i| {
            let mut q = query(KUBERNETES, RecordType::A);
            q.metadata.id = 0x5000 + i;
            q
        })
        .collect();
    let mut all = Vec::new();
    for q in &queries {
        let bytes = encode(q);
        all.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
        all.extend_from_slice(&bytes);
    }
    stream.write_all(&all).expect("write 5 queries");
    for q in &queries[..3] {
        let bytes = read_framed(&mut stream).expect("the first three are answered");
        parse_answer(q, &bytes);
    }
    // A clean close (FIN, not RST): the server reads the queries beyond the limit away
    // instead of resetting the connection under the answers it sent.
    assert_eq!(
        wait_tcp_end(&mut stream),
        TcpEnd::Closed,
        "nothing beyond the limit"
    );
    assert_serving(&server);
}

#[test]
fn tcp_max_connections() {
    let (server, _dir) = server_with_config("[server]\nmax_tcp_connections = 2\n", None);
    let rejected = || server.metric("clusterdns_tcp_connections_rejected_total", "");

    let ask = |stream: &mut TcpStream| -> Option<Message> {
        let q = query(KUBERNETES, RecordType::A);
        // The write may fail on a connection the server already closed.
        let mut framed = (encode(&q).len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&encode(&q));
        stream.write_all(&framed).ok()?;
        read_framed(stream).map(|bytes| parse_answer(&q, &bytes))
    };

    let mut first = server.tcp_connect();
    let mut second = server.tcp_connect();
    assert!(ask(&mut first).is_some(), "first connection served");
    assert!(ask(&mut second).is_some(), "second connection served");
    assert_eq!(rejected(), 0.0);

    let mut third = server.tcp_connect();
    assert!(
        ask(&mut third).is_none(),
        "third connection is closed unanswered"
    );
    assert_eq!(rejected(), 1.0, "rejection counted");

    // The two first are still served.
    assert!(ask(&mut first).is_some());
    assert!(ask(&mut second).is_some());

    // Once one closes, its slot frees up.
    drop(first);
    assert!(
        eventually(IO_TIMEOUT, || ask(&mut server.tcp_connect()).is_some()),
        "a slot frees up after a close"
    );
    // UDP is not affected by the TCP cap.
    assert_eq!(
        server
            .udp(&query(KUBERNETES, RecordType::A))
            .metadata
            .response_code,
        ResponseCode::NoError
    );
}

// ---------------------------------------------------------------------------------------------
// Operators' endpoints

#[test]
fn request_and_response_metrics_and_endpoints() {
    let server = Server::fixtures(None);
    let requests =
        |proto: &str| server.metric("coredns_dns_requests_total", &format!("proto=\"{proto}\""));
    let responses = |rcode: &str, plugin: &str| {
        server.metric(
            "coredns_dns_responses_total",
            &format!("plugin=\"{plugin}\",rcode=\"{rcode}\""),
        )
    };
    assert_eq!(requests("udp"), 0.0);
    assert_eq!(requests("tcp"), 0.0);

    for _ in 0..3 {
        server.udp(&query(KUBERNETES, RecordType::A));
    }
    assert_eq!(requests("udp"), 3.0);
    assert_eq!(requests("tcp"), 0.0);
    assert_eq!(responses("NOERROR", "kubernetes"), 3.0);

    for _ in 0..2 {
        server.tcp(&query(KUBERNETES, RecordType::A));
    }
    server.tcp(&query(MISSING, RecordType::A));
    assert_eq!(requests("udp"), 3.0);
    assert_eq!(requests("tcp"), 3.0);
    assert_eq!(responses("NOERROR", "kubernetes"), 5.0);
    assert_eq!(responses("NXDOMAIN", "kubernetes"), 1.0);

    // Dropped packets are requests without a response.
    assert_eq!(server.udp_raw_wait(&[1, 2, 3], NO_ANSWER_WAIT), None);
    assert!(eventually(IO_TIMEOUT, || requests("udp") == 4.0));
    let text = server.metrics_text();
    let total_responses: f64 = text
        .lines()
        .filter(|l| l.starts_with("coredns_dns_responses_total{"))
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(_, v)| v.parse::<f64>().expect("number"))
        .sum();
    assert_eq!(total_responses, 6.0, "one response per answered query");

    assert_eq!(http_get(server.health, "/health"), (200, "OK".to_string()));
    let (status, body) = http_get(server.ready, "/ready");
    assert_eq!(status, 200, "ready after the manifests loaded: {body}");
    assert_eq!(body, "OK");
    // Each endpoint is on its own listener.
    assert_eq!(http_get(server.metrics, "/health").0, 404);
    assert_eq!(http_get(server.health, "/metrics").0, 404);
}

// ---------------------------------------------------------------------------------------------
// IPv6

#[test]
fn ipv6_listener() {
    if let Err(error) = std::net::UdpSocket::bind("[::1]:0")
        .and_then(|_| std::net::TcpListener::bind("[::1]:0").map(|_| ()))
    {
        println!("skipping ipv6_listener: cannot bind [::1]: {error}");
        return;
    }
    let dir = fixtures().to_string_lossy().into_owned();
    let upstream = closed_port().to_string();
    let server = Server::start(&[
        "--manifests",
        &dir,
        "--upstream",
        &upstream,
        "--listen",
        "[::1]:0",
    ]);
    assert!(server.dns.is_ipv6(), "listening on {}", server.dns);
    assert!(server.dns.ip().is_loopback());

    let q = query_edns(KUBERNETES, RecordType::A, 1232);
    let bytes = udp_raw_to(server.dns, &encode(&q), IO_TIMEOUT).expect("an answer over UDP/IPv6");
    let answer = parse_answer(&q, &bytes);
    assert_eq!(rdata(&answer.answers, RecordType::A), ["192.0.2.1"]);
    assert_eq!(answer.edns.expect("OPT").max_payload(), 1232);

    let q = query("dual.default.svc.cluster.local.", RecordType::AAAA);
    let answer = server.tcp(&q);
    assert_eq!(rdata(&answer.answers, RecordType::AAAA), ["2001:db8::2"]);

    // Truncation works the same over IPv6.
    let q = query(MEDIUM, RecordType::A);
    let bytes = udp_raw_to(server.dns, &encode(&q), IO_TIMEOUT).expect("an answer");
    assert!(parse_answer(&q, &bytes).metadata.truncation);

    assert_eq!(
        server.metric("coredns_dns_requests_total", "proto=\"udp\""),
        2.0
    );
    assert_eq!(
        server.metric("coredns_dns_requests_total", "proto=\"tcp\""),
        1.0
    );
}

#[test]
fn tcp_client_that_never_reads_does_not_hold_a_slot() {
    let (server, _dir) = server_with_config(
        "[server]\ntcp_idle_timeout = \"300ms\"\nmax_tcp_connections = 1\n",
        None,
    );
    // A client with a tiny receive window that asks for big answers and never reads them:
    // the server's writes stall. It must give up on the connection rather than keep the only
    // slot forever.
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    socket
        .connect_timeout(&server.dns.into(), IO_TIMEOUT)
        .expect("connect");
    let mut stalled: TcpStream = socket.into();
    stalled
        .set_write_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let q = encode(&query(BIG, RecordType::A));
    let mut framed = (q.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&q);
    let batch: Vec<u8> = framed.repeat(100);
    let start = Instant::now();
    // Enough to fill every buffer on the way back (each answer is about 1.7 KB); stop early
    // when the server stops taking queries.
    for _ in 0..100 {
        if stalled.write_all(&batch).is_err() || start.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    assert!(
        eventually(Duration::from_secs(10), || {
            let Ok(mut stream) = TcpStream::connect_timeout(&server.dns, IO_TIMEOUT) else {
                return false;
            };
            stream
                .set_read_timeout(Some(Duration::from_secs(1)))
                .expect("timeout");
            let q = encode(&query(KUBERNETES, RecordType::A));
            let mut framed = (q.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&q);
            stream.write_all(&framed).is_ok() && read_framed(&mut stream).is_some()
        }),
        "the stalled connection still holds the only TCP slot"
    );
    drop(stalled);
}

#[test]
fn answer_larger_than_a_tcp_message_is_truncated_not_lost() {
    // A headless service with 2500 ready IPv6 endpoints: about 70 KB of AAAA records, more
    // than one TCP message can carry (65535 bytes).
    let dir = tempfile::tempdir().expect("temp dir");
    let mut items = vec![serde_json::json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "huge", "namespace": "default"},
        "spec": {"clusterIP": "None", "clusterIPs": ["None"],
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
    })];
    // (The API allows 1000 endpoints per slice.)
    for slice in 0..3 {
        let endpoints: Vec<serde_json::Value> = (0..1000)
            .map(|i| slice * 1000 + i)
            .filter(|n| *n < 2500)
            .map(|n| {
                serde_json::json!({
                    "addresses": [format!("2001:db8:1::{n:x}")],
                    "conditions": {"ready": true}
                })
            })
            .collect();
        items.push(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": format!("huge-{slice}"), "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "huge"}},
            "addressType": "IPv6",
            "endpoints": endpoints
        }));
    }
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
    std::fs::write(dir.path().join("huge.json"), list.to_string()).expect("write manifest");
    let server = Server::manifests(dir.path(), None, &[]);

    let name = "huge.default.svc.cluster.local.";
    let q = query_edns(name, RecordType::AAAA, 1232);
    let mut stream = server.tcp_connect();
    write_framed(&mut stream, &encode(&q));
    let bytes = read_framed(&mut stream).expect("an answer over TCP, not silence");
    let answer = parse_answer(&q, &bytes);
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert!(answer.metadata.truncation, "TC: not every record fits");
    assert!(
        answer.answers.len() > 1000 && answer.answers.len() < 2500,
        "{} records",
        answer.answers.len()
    );
    let distinct: BTreeSet<String> = rdata(&answer.answers, RecordType::AAAA)
        .into_iter()
        .collect();
    assert_eq!(distinct.len(), answer.answers.len(), "no record twice");
    // The connection goes on.
    let q = query(name, RecordType::A);
    write_framed(&mut stream, &encode(&q));
    parse_answer(&q, &read_framed(&mut stream).expect("next answer"));

    let q = query_edns(name, RecordType::AAAA, 1232);
    let answer = server.udp(&q);
    assert!(answer.metadata.truncation);
    let kept = answer.answers.len();
    assert!(
        kept > 0 && kept <= 1232 / 28,
        "{kept} AAAA records of 28 bytes in 1232"
    );
}

/// One TCP exchange of raw bytes.
fn tcp_raw(server: &Server, packet: &[u8]) -> Vec<u8> {
    let mut stream = server.tcp_connect();
    write_framed(&mut stream, packet);
    read_framed(&mut stream).expect("an answer over TCP")
}

#[test]
fn a_repeated_question_gets_the_first_answers_bytes_with_its_own_id_and_flags() {
    let dir = tempfile::tempdir().expect("tempdir");
    let service = |ip: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: default}}\n\
             spec: {{clusterIP: {ip}, ports: [{{name: http, port: 80}}]}}\n"
        )
    };
    std::fs::write(dir.path().join("web.yaml"), service("10.0.0.1")).expect("write");
    let server = Server::manifests(dir.path(), None, &[]);
    let ask = |id: u16, rd: bool, cd: bool, name: &str, qtype: RecordType, edns: bool| {
        let mut q = if edns {
            query_edns(name, qtype, 1232)
        } else {
            query(name, qtype)
        };
        q.metadata.id = id;
        q.metadata.recursion_desired = rd;
        q.metadata.checking_disabled = cd;
        encode(&q)
    };
    for (name, qtype, edns) in [
        ("web.default.svc.cluster.local.", RecordType::A, false),
        ("WEB.Default.svc.cluster.local.", RecordType::A, true),
        (
            "_http._tcp.web.default.svc.cluster.local.",
            RecordType::SRV,
            true,
        ),
        ("nope.default.svc.cluster.local.", RecordType::A, false),
        ("web.default.svc.cluster.local.", RecordType::TXT, true),
        ("1.0.0.10.in-addr.arpa.", RecordType::PTR, false),
    ] {
        for transport in ["udp", "tcp"] {
            let send = |packet: &[u8]| match transport {
                "udp" => server.udp_raw(packet).expect("UDP answer"),
                _ => tcp_raw(&server, packet),
            };
            let first = send(&ask(0x1111, true, false, name, qtype, edns));
            let second = send(&ask(0x2222, false, true, name, qtype, edns));
            let third = send(&ask(0x3333, true, true, name, qtype, edns));
            let what = format!("{name} {qtype} over {transport}");
            assert_eq!(&first[..2], &[0x11, 0x11], "{what}");
            assert_eq!(&second[..2], &[0x22, 0x22], "{what}");
            assert_eq!(&third[..2], &[0x33, 0x33], "{what}");
            assert_eq!(first[2] & 0x01, 0x01, "{what}: RD echoed");
            assert_eq!(second[2] & 0x01, 0x00, "{what}: RD echoed");
            assert_eq!(first[3] & 0x10, 0x00, "{what}: CD echoed");
            assert_eq!(second[3] & 0x10, 0x10, "{what}: CD echoed");
            assert_eq!(third[2..4], [first[2], first[3] | 0x10], "{what}");
            assert_eq!(first[2] & !0x01, second[2] & !0x01, "{what}: QR, AA, TC");
            assert_eq!(first[3] & !0x10, second[3] & !0x10, "{what}: RA, rcode");
            assert_eq!(first[4..], second[4..], "{what}: the same answer");
            assert_eq!(first[4..], third[4..], "{what}: the same answer");
            // And it parses to what the question asked, in the client's spelling.
            let answer = decode(&second);
            assert_eq!(answer.queries[0].name().to_ascii(), name, "{what}");
            for record in answer.answers.iter().filter(|r| r.record_type() == qtype) {
                assert_eq!(
                    record.name.to_ascii(),
                    name,
                    "{what}: owner echoes the case"
                );
            }
        }
    }
    // Every one of them counted, as requests and as responses.
    assert_eq!(
        server.metric("coredns_dns_requests_total", ""),
        36.0,
        "6 questions x 2 transports x 3"
    );
    assert_eq!(server.metric("coredns_dns_responses_total", ""), 36.0);
    assert_eq!(
        server.metric("clusterdns_prebuilt_answers_total", ""),
        24.0,
        "the second and third of each from prebuilt bytes"
    );

    // A change to the zone is answered at once, not from the bytes built before it.
    let a = |server: &Server| {
        rdata(
            &server
                .udp(&query("web.default.svc.cluster.local.", RecordType::A))
                .answers,
            RecordType::A,
        )
    };
    assert_eq!(a(&server), ["10.0.0.1"]);
    std::fs::write(dir.path().join("web.yaml"), service("10.0.0.2")).expect("write");
    assert!(eventually(Duration::from_secs(10), || a(&server) == ["10.0.0.2"]));
    for _ in 0..20 {
        assert_eq!(a(&server), ["10.0.0.2"], "never the old answer again");
    }
    // A negative answer too: the name appears as soon as the Service does.
    let rcode = |server: &Server| {
        server
            .udp(&query("later.default.svc.cluster.local.", RecordType::A))
            .metadata
            .response_code
    };
    assert_eq!(rcode(&server), ResponseCode::NXDomain);
    assert_eq!(rcode(&server), ResponseCode::NXDomain);
    std::fs::write(
        dir.path().join("later.yaml"),
        service("10.0.0.3").replace("name: web", "name: later"),
    )
    .expect("write");
    assert!(eventually(Duration::from_secs(10), || rcode(&server)
        == ResponseCode::NoError));
}
