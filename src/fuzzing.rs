//! Entry points for the fuzz targets in `fuzz/` and the bounded property run of the test
//! suite (`tests/fuzz_targets.rs`). Not an API: every function takes arbitrary bytes, drives
//! one reader of outside input, and panics when an invariant breaks.
//!
//! Invariants checked on every input: no panic; a response, when one is sent, parses, is a
//! response, echoes the id and (for a query with one readable question) the question, and
//! over UDP is never larger than the client allows (512 without EDNS, else the advertised
//! size capped by `max_udp_payload`).
//!
//! The message path runs against a zone built from the test fixtures and an in-process fake
//! upstream on 127.0.0.1 (a thread answering over UDP), so forwarded names take the real
//! forwarder, cache and response path.

use crate::config::PodMode;
use crate::config::{CacheConfig, Config, UpstreamConfig};
use crate::ops::metrics::Metrics;
use crate::ops::query_metrics::{Proto, QueryMetrics};
use crate::server::handler::{Handler, MIN_UDP_PAYLOAD, Outcome};
use crate::server::tcp::{self, TcpLimits};
use crate::source::{ClusterObject, SourceEvent, manifests, snapshot};
use crate::upstream::cache::{Cache, CacheKey, CachedAnswer};
use crate::upstream::{Resolver, matching_answer};
use crate::zone::{Zone, ZoneConfig};
use hickory_proto::op::{Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, CNAME, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// The UDP payload cap the harness is configured with (the config default).
pub const MAX_UDP_PAYLOAD: u16 = 1232;

/// The client address queries come from (a pod network: recursion allowed).
const PEER: &str = "10.1.2.3:40000";

/// The fixture manifests the harness zone is built from.
const FIXTURES: [(&str, &str); 4] = [
    (
        "core.yaml",
        include_str!("../tests/fixtures/cluster/core.yaml"),
    ),
    (
        "headless.yml",
        include_str!("../tests/fixtures/cluster/headless.yml"),
    ),
    (
        "external.json",
        include_str!("../tests/fixtures/cluster/external.json"),
    ),
    (
        "pods.json",
        include_str!("../tests/fixtures/cluster/pods.json"),
    ),
];

/// What the fake upstream answers next, in "upstream response" mode: these bytes (with the
/// query's id) first, then a well-formed answer (so a rejected answer costs no timeout).
static NEXT_UPSTREAM_ANSWER: Mutex<Option<Vec<u8>>> = Mutex::new(None);

/// Everything one fuzzing process shares across inputs.
struct Harness {
    runtime: tokio::runtime::Runtime,
    metrics: Arc<Metrics>,
    handler: Arc<Handler>,
    udp: Arc<QueryMetrics>,
    tcp: Arc<QueryMetrics>,
    tcp_addr: SocketAddr,
    /// The fake upstream that answers from the fuzz input.
    scripted_upstream: SocketAddr,
    /// A handler whose resolver is replaced for each input (fresh cache).
    scripted_handler: Arc<Handler>,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(Harness::new)
}

fn upstream_config() -> UpstreamConfig {
    UpstreamConfig {
        timeout: Duration::from_millis(300),
        deadline: Duration::from_millis(600),
        max_fails: 0,
        policy: crate::config::Policy::Sequential,
        ..UpstreamConfig::default()
    }
}

impl Harness {
    fn new() -> Harness {
        let metrics = Arc::new(Metrics::new());
        let zone = fixture_zone(&metrics);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let upstream = spawn_fake_upstream(false);
        let scripted_upstream = spawn_fake_upstream(true);
        let resolver = Resolver::new(
            vec![upstream],
            &upstream_config(),
            &CacheConfig::default(),
            metrics.clone(),
        );
        let handler = Arc::new(Handler::new(
            zone.clone(),
            resolver.clone(),
            metrics.clone(),
            MAX_UDP_PAYLOAD,
        ));
        let scripted_handler = Arc::new(Handler::new(
            zone,
            resolver,
            metrics.clone(),
            MAX_UDP_PAYLOAD,
        ));
        let any: SocketAddr = "127.0.0.1:53".parse().expect("address");
        let udp = Arc::new(QueryMetrics::new(metrics.clone(), any, Proto::Udp));
        let tcp_metrics = Arc::new(QueryMetrics::new(metrics.clone(), any, Proto::Tcp));
        let tcp_addr = runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind TCP");
            let addr = listener.local_addr().expect("TCP address");
            let limits = TcpLimits {
                idle_timeout: Duration::from_secs(2),
                max_connections: 64,
                max_queries_per_connection: 0,
            };
            tokio::spawn(tcp::serve(
                listener,
                handler.clone(),
                tcp_metrics.clone(),
                limits,
                CancellationToken::new(),
            ));
            addr
        });
        Harness {
            runtime,
            metrics,
            handler,
            udp,
            tcp: tcp_metrics,
            tcp_addr,
            scripted_upstream,
            scripted_handler,
        }
    }
}

/// A synced zone (`cluster.local.`, verified pods) holding the test fixtures.
fn fixture_zone(metrics: &Arc<Metrics>) -> Arc<Zone> {
    let zone = Arc::new(Zone::new(
        ZoneConfig {
            origin: Name::from_ascii("cluster.local.").expect("origin"),
            ttl: 5,
            pods: PodMode::Verified,
        },
        metrics.clone(),
    ));
    for (name, text) in FIXTURES {
        let objects = manifests::parse_file(Path::new(name), text.as_bytes(), metrics)
            .unwrap_or_else(|e| panic!("fixture {name}: {e}"));
        for object in objects.into_values() {
            zone.apply(SourceEvent::Apply(object));
        }
    }
    zone.apply(SourceEvent::InitialSyncDone);
    zone
}

/// A UDP resolver on 127.0.0.1 answering every query, in a thread of its own. Its answer
/// depends on the first label: `nx*` NXDOMAIN with a SOA, `big*` 100 A records (more than
/// any UDP limit), `cname*` a CNAME and an A, `tc*` an empty truncated answer, anything
/// else one A record. `scripted` sends [`NEXT_UPSTREAM_ANSWER`] first when set.
fn spawn_fake_upstream(scripted: bool) -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind fake upstream");
    let addr = socket.local_addr().expect("fake upstream address");
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65_535];
        loop {
            let Ok((len, from)) = socket.recv_from(&mut buf) else {
                continue;
            };
            let query = &buf[..len];
            if scripted && let Some(mut answer) = NEXT_UPSTREAM_ANSWER.lock().unwrap().take() {
                if answer.len() >= 2 && query.len() >= 2 {
                    answer[..2].copy_from_slice(&query[..2]);
                }
                let _ = socket.send_to(&answer, from);
            }
            if let Some(answer) = fake_answer(query) {
                let _ = socket.send_to(&answer, from);
            }
        }
    });
    addr
}

fn fake_answer(query: &[u8]) -> Option<Vec<u8>> {
    let query = Message::from_vec(query).ok()?;
    let question = query.queries.first()?.clone();
    let mut answer = Message::response(query.metadata.id, query.metadata.op_code);
    answer.metadata.recursion_desired = query.metadata.recursion_desired;
    answer.metadata.recursion_available = true;
    answer.add_query(question.clone());
    answer.edns = query.edns.clone();
    let name = question.name().clone();
    let first = name
        .iter()
        .next()
        .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
        .unwrap_or_default();
    let a = |i: u32| {
        Record::from_rdata(
            name.clone(),
            30,
            RData::A(A::from(std::net::Ipv4Addr::from(0xc633_6400 + i))),
        )
    };
    if first.starts_with("nx") {
        answer.metadata.response_code = ResponseCode::NXDomain;
        let soa = SOA::new(Name::root(), Name::root(), 1, 1800, 900, 604_800, 60);
        answer.add_authority(Record::from_rdata(Name::root(), 60, RData::SOA(soa)));
    } else if first.starts_with("big") {
        for i in 0..100 {
            answer.add_answer(a(i));
        }
    } else if first.starts_with("cname") {
        let target = Name::from_ascii("target.example.net.").expect("name");
        answer.add_answer(Record::from_rdata(
            name.clone(),
            30,
            RData::CNAME(CNAME(target.clone())),
        ));
        answer.add_answer(Record::from_rdata(
            target,
            30,
            RData::A(A::new(198, 51, 100, 7)),
        ));
    } else if first.starts_with("tc") {
        answer.metadata.truncation = true;
    } else if question.query_type() == RecordType::A {
        answer.add_answer(a(1));
    }
    answer.to_vec().ok()
}

/// The UDP limit a client asking with `query` may be answered within.
fn udp_limit(query: Option<&Message>) -> usize {
    match query.and_then(|q| q.edns.as_ref()) {
        Some(edns) => edns
            .max_payload()
            .clamp(MIN_UDP_PAYLOAD, MAX_UDP_PAYLOAD)
            .into(),
        None => MIN_UDP_PAYLOAD.into(),
    }
}

/// Checks the response the server sent for `query` (raw bytes as received).
///
/// # Panics
/// When the response breaks an invariant.
pub fn check_response(query: &[u8], udp: bool, response: &[u8]) {
    if let Err(problem) = response_problem(query, udp, response) {
        panic!("{problem}; query {query:02x?}; response {response:02x?}");
    }
}

/// What is wrong with `response` as the answer to `query`, if anything.
fn response_problem(query: &[u8], udp: bool, response: &[u8]) -> Result<(), String> {
    let parsed_query = Message::from_vec(query).ok();
    let reply = Message::from_vec(response).map_err(|e| format!("response does not parse: {e}"))?;
    if query.len() < 2 {
        return Err("answered a packet shorter than an id".into());
    }
    if reply.metadata.id != u16::from_be_bytes([query[0], query[1]]) {
        return Err("response does not echo the id".into());
    }
    if reply.metadata.message_type != MessageType::Response {
        return Err("response without QR".into());
    }
    match parsed_query.as_ref().map(|q| q.queries.as_slice()) {
        Some([question]) => {
            let [echoed] = reply.queries.as_slice() else {
                return Err(format!(
                    "response has {} questions, query had one",
                    reply.queries.len()
                ));
            };
            let key = |q: &Query| (q.name().to_ascii(), q.query_type(), q.query_class());
            if key(echoed) != key(question) {
                return Err(format!(
                    "response does not echo the question: {:?} for {:?}",
                    key(echoed),
                    key(question)
                ));
            }
        }
        _ if reply.queries.len() > 1 => return Err("response invents questions".into()),
        _ => {}
    }
    let limit = if udp {
        udp_limit(parsed_query.as_ref())
    } else {
        usize::from(u16::MAX)
    };
    if response.len() > limit {
        return Err(format!(
            "response of {} bytes over the client's limit {limit} (udp: {udp})",
            response.len()
        ));
    }
    Ok(())
}

fn peer() -> SocketAddr {
    PEER.parse().expect("peer address")
}

/// Runs one packet through `handler` over `transport` and checks the response, if any.
fn one_packet(harness: &Harness, handler: &Arc<Handler>, packet: &[u8], udp: bool) {
    let listener = if udp { &harness.udp } else { &harness.tcp };
    let response = match handler.handle(packet, peer(), listener) {
        Outcome::Reply(bytes) => Some(bytes),
        Outcome::Drop => None,
        Outcome::Upstream(pending) => Some(harness.runtime.block_on(handler.finish(pending))),
    };
    if let Some(response) = response {
        check_response(packet, udp, &response);
    }
}

/// A DNS message through the whole query path (parse, zone or upstream, response bytes),
/// once as if received over UDP and once over TCP.
pub fn message(data: &[u8]) {
    let harness = harness();
    one_packet(harness, &harness.handler, data, true);
    one_packet(harness, &harness.handler, data, false);
}

/// A TCP byte stream to a real listener: `data[0]` picks where the stream is split into
/// writes, the rest is sent as it is (length prefixes included). Every framed answer must
/// answer one of the complete queries sent.
pub fn tcp_stream(data: &[u8]) {
    let Some((&split, stream)) = data.split_first() else {
        return;
    };
    let harness = harness();
    // The complete length-prefixed messages in the stream, as the server will see them.
    let mut queries = Vec::new();
    let mut rest = stream;
    while rest.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        if rest.len() < 2 + len {
            break;
        }
        queries.push(&rest[2..2 + len]);
        rest = &rest[2 + len..];
    }
    let answers = harness.runtime.block_on(async {
        let mut client = tokio::net::TcpStream::connect(harness.tcp_addr)
            .await
            .expect("connect to the TCP listener");
        let _ = client.set_nodelay(true);
        let chunk = usize::from(split).max(1);
        for part in stream.chunks(chunk) {
            if client.write_all(part).await.is_err() {
                break;
            }
        }
        let _ = client.shutdown().await;
        let mut received = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut received)).await;
        assert!(read.is_ok(), "TCP answers not complete within 10 s");
        received
    });
    let mut rest = answers.as_slice();
    let mut count = 0;
    while !rest.is_empty() {
        assert!(rest.len() >= 2, "half a length prefix from the server");
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        assert!(rest.len() >= 2 + len, "a truncated answer from the server");
        let answer = &rest[2..2 + len];
        let id = answer.get(..2).expect("answer shorter than an id");
        // Pipelined queries may share an id: the answer must be right for one of them.
        let candidates: Vec<&&[u8]> = queries.iter().filter(|q| q.get(..2) == Some(id)).collect();
        assert!(
            !candidates.is_empty(),
            "answer with id {id:02x?} answers no query sent"
        );
        if !candidates
            .iter()
            .any(|q| response_problem(q, false, answer).is_ok())
        {
            check_response(candidates[0], false, answer);
        }
        rest = &rest[2 + len..];
        count += 1;
    }
    assert!(count <= queries.len(), "more answers than queries");
}

/// An upstream's answer: the forwarder's answer matching and the cache insert directly, then
/// the whole forwarded path with a fake upstream that sends these bytes (under the query's
/// id) before a well-formed answer.
pub fn upstream_response(data: &[u8]) {
    let harness = harness();
    let parsed = Message::from_vec(data).ok();
    // Direct: the question asked is the one the answer carries (so that it can match).
    let question = parsed
        .as_ref()
        .and_then(|m| m.queries.first().cloned())
        .unwrap_or_else(|| Query::query(Name::from_ascii("fuzz.example.").unwrap(), RecordType::A));
    let mut outgoing = Message::query();
    outgoing.metadata.id = data
        .get(..2)
        .map_or(0, |id| u16::from_be_bytes([id[0], id[1]]));
    outgoing.metadata.recursion_desired = true;
    outgoing.add_query(question.clone());
    if let Some(answer) = matching_answer(&outgoing, data) {
        let cached = CachedAnswer::from_message(&answer);
        let cache = Cache::new(&CacheConfig::default(), harness.metrics.clone());
        let key = CacheKey::of(&outgoing).expect("one question");
        let now = std::time::Instant::now();
        if let Some(stored) = cache.insert(key.clone(), &cached, now) {
            assert_eq!(stored.rcode, cached.rcode, "the cache changed the rcode");
            match cache.get(&key, now) {
                crate::upstream::cache::Lookup::Fresh { answer, .. } => {
                    assert_eq!(answer.rcode, cached.rcode);
                    assert_eq!(answer.answers.len(), cached.answers.len());
                }
                other => panic!("an answer just stored is not fresh: {other:?}"),
            }
        }
    }
    // Whole path: a client asks the question (IN only; a name outside the zone).
    if question.query_class() != DNSClass::IN
        || question.name().num_labels() == 0
        || matches!(question.query_type(), RecordType::AXFR | RecordType::IXFR)
    {
        return;
    }
    let mut query = Message::query();
    query.metadata.id = 0x4242;
    query.metadata.recursion_desired = true;
    query.add_query(question);
    if data.len() % 2 == 1 {
        let mut edns = hickory_proto::op::Edns::new();
        edns.set_max_payload(4096);
        query.set_edns(edns);
    }
    let Ok(packet) = query.to_vec() else {
        return;
    };
    let resolver = Resolver::new(
        vec![harness.scripted_upstream],
        &upstream_config(),
        &CacheConfig::default(),
        harness.metrics.clone(),
    );
    harness.scripted_handler.set_upstream(resolver);
    *NEXT_UPSTREAM_ANSWER.lock().unwrap() = Some(data.to_vec());
    one_packet(harness, &harness.scripted_handler, &packet, true);
    NEXT_UPSTREAM_ANSWER.lock().unwrap().take();
}

/// A manifest file (as YAML and as JSON): parsed, every object applied to a fresh zone,
/// the names it should create looked up, then every object deleted.
pub fn manifest(data: &[u8]) {
    let metrics = &harness().metrics;
    for path in ["fuzz.yaml", "fuzz.json"] {
        let Ok(objects) = manifests::parse_file(Path::new(path), data, metrics) else {
            continue;
        };
        apply_to_zone(objects.into_values().collect(), metrics);
    }
}

fn apply_to_zone(objects: Vec<ClusterObject>, metrics: &Arc<Metrics>) {
    if objects.is_empty() {
        return;
    }
    let zone = Zone::new(
        ZoneConfig {
            origin: Name::from_ascii("cluster.local.").expect("origin"),
            ttl: 5,
            pods: PodMode::Verified,
        },
        metrics.clone(),
    );
    zone.apply(SourceEvent::InitialSyncDone);
    let mut keys = Vec::new();
    for object in objects {
        if let Some(key) = object.key() {
            keys.push(key);
        }
        zone.apply(SourceEvent::Apply(object));
    }
    for key in &keys {
        for name in [
            format!("{}.{}.svc.cluster.local.", key.name, key.namespace),
            format!("{}.svc.cluster.local.", key.namespace),
            format!(
                "_http._tcp.{}.{}.svc.cluster.local.",
                key.name, key.namespace
            ),
        ] {
            if let Ok(name) = Name::from_str(&name) {
                for qtype in [
                    RecordType::A,
                    RecordType::AAAA,
                    RecordType::SRV,
                    RecordType::ANY,
                ] {
                    let _ = zone.lookup(&name, qtype);
                }
            }
        }
    }
    for key in keys {
        zone.apply(SourceEvent::Delete(key));
    }
}

/// A config file.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = Config::from_toml_str(text, Path::new("fuzz.toml"));
}

/// A snapshot file: as it is, and with a header whose length and checksum are right (so the
/// body parser is reached); what decodes is applied to a zone.
pub fn snapshot(data: &[u8]) {
    let path = Path::new("fuzz.snapshot");
    let _ = snapshot::decode(path, data);
    let mut file = format!(
        "clusterdns-snapshot 1 {} {:016x} 0\n",
        data.len(),
        fnv1a(data)
    )
    .into_bytes();
    file.extend_from_slice(data);
    if let Ok(decoded) = snapshot::decode(path, &file) {
        apply_to_zone(decoded.objects, &harness().metrics);
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}
