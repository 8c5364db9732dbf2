//! The fuzz targets of `fuzz/`, driven for a fixed number of iterations by a seeded RNG so
//! that every change runs each of them: the checked-in seed corpus (`fuzz/corpus/<target>/`)
//! and the seeds built here, then byte-level mutations of them. Each target panics when an
//! invariant breaks (see `clusterdns::fuzzing`).
//!
//! `cargo test --test fuzz_targets -- --ignored write_seed_corpus` rewrites the seed files.

use clusterdns::fuzzing;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, CNAME, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

/// A query as dig sends it: RD, and an EDNS OPT of 1232 bytes unless `edns` is `None`.
fn query(name: &str, qtype: RecordType, edns: Option<u16>) -> Message {
    let mut message = Message::query();
    message.metadata.id = 0xbeef;
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    if let Some(size) = edns {
        let mut opt = Edns::new();
        opt.set_max_payload(size);
        message.set_edns(opt);
    }
    message
}

fn wire(message: &Message) -> Vec<u8> {
    message.to_vec().unwrap()
}

fn message_seeds() -> Vec<Vec<u8>> {
    let e = Some(1232);
    let mut seeds: Vec<Vec<u8>> = [
        ("kubernetes.default.svc.cluster.local.", RecordType::A, e),
        ("dual.default.svc.cluster.local.", RecordType::AAAA, None),
        (
            "_https._tcp.kubernetes.default.svc.cluster.local.",
            RecordType::SRV,
            e,
        ),
        ("web.default.svc.cluster.local.", RecordType::A, Some(4096)),
        ("web.default.svc.cluster.local.", RecordType::SRV, None),
        ("1.2.0.192.in-addr.arpa.", RecordType::PTR, e),
        ("ext.default.svc.cluster.local.", RecordType::A, e),
        ("ext-in.default.svc.cluster.local.", RecordType::A, None),
        ("missing.default.svc.cluster.local.", RecordType::A, e),
        ("cluster.local.", RecordType::SOA, e),
        ("cluster.local.", RecordType::AXFR, None),
        ("kubernetes.default.svc.cluster.local.", RecordType::ANY, e),
        ("www.example.org.", RecordType::A, e),
        ("big.example.com.", RecordType::A, None),
        ("big.example.com.", RecordType::A, Some(4096)),
        ("big.example.com.", RecordType::A, Some(100)),
        ("nx.example.com.", RecordType::AAAA, e),
        ("cname.example.com.", RecordType::A, e),
        ("tc.example.com.", RecordType::A, e),
        ("example.com.", RecordType::MX, e),
    ]
    .iter()
    .map(|(name, qtype, edns)| wire(&query(name, *qtype, *edns)))
    .collect();
    let mut chaos = query("version.bind.", RecordType::TXT, None);
    chaos.queries[0].set_query_class(DNSClass::CH);
    seeds.push(wire(&chaos));
    let mut notify = query("cluster.local.", RecordType::SOA, None);
    notify.metadata.op_code = OpCode::Notify;
    seeds.push(wire(&notify));
    let mut two = query("a.example.com.", RecordType::A, None);
    two.add_query(Query::query(
        Name::from_ascii("b.example.com.").unwrap(),
        RecordType::A,
    ));
    seeds.push(wire(&two));
    let mut badvers = query("kubernetes.default.svc.cluster.local.", RecordType::A, e);
    badvers.edns.as_mut().unwrap().set_version(1);
    seeds.push(wire(&badvers));
    let mut response = query("www.example.org.", RecordType::A, None);
    response.metadata.message_type = MessageType::Response;
    seeds.push(wire(&response));
    // Damaged packets: cut short, header only.
    let full = wire(&query(
        "kubernetes.default.svc.cluster.local.",
        RecordType::A,
        e,
    ));
    seeds.push(full[..full.len() - 5].to_vec());
    seeds.push(full[..12].to_vec());
    seeds.push(full[..7].to_vec());
    seeds
}

fn framed(packets: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in packets {
        out.extend_from_slice(&(p.len() as u16).to_be_bytes());
        out.extend_from_slice(p);
    }
    out
}

fn tcp_seeds() -> Vec<Vec<u8>> {
    let m = message_seeds();
    let mut seeds = Vec::new();
    // Byte 0: the write size the stream is split into.
    for (split, packets) in [
        (255u8, vec![&m[0][..]]),
        (1, vec![&m[0][..], &m[12][..]]),
        (7, vec![&m[2][..], &m[13][..], &m[8][..]]),
        (3, vec![&m[16][..], &m[16][..]]),
    ] {
        let mut seed = vec![split];
        seed.extend(framed(&packets));
        seeds.push(seed);
    }
    // A complete query, then a length prefix of 65535 and nothing.
    let mut seed = vec![255];
    seed.extend(framed(&[&m[0]]));
    seed.extend_from_slice(&[0xff, 0xff]);
    seeds.push(seed);
    // A zero-length message, then half a query.
    let mut seed = vec![4, 0, 0];
    seed.extend(framed(&[&m[1]])[..10].iter());
    seeds.push(seed);
    seeds
}

fn answer_to(query: &Message) -> Message {
    let mut answer = Message::response(query.metadata.id, OpCode::Query);
    answer.metadata.recursion_desired = true;
    answer.metadata.recursion_available = true;
    answer.queries = query.queries.clone();
    answer.edns = query.edns.clone();
    answer
}

fn upstream_seeds() -> Vec<Vec<u8>> {
    let name = Name::from_ascii("www.example.org.").unwrap();
    let q = query("www.example.org.", RecordType::A, Some(1232));
    let mut ok = answer_to(&q);
    ok.add_answer(Record::from_rdata(
        name.clone(),
        300,
        RData::CNAME(CNAME(Name::from_ascii("cdn.example.net.").unwrap())),
    ));
    ok.add_answer(Record::from_rdata(
        Name::from_ascii("cdn.example.net.").unwrap(),
        20,
        RData::A(A::new(198, 51, 100, 1)),
    ));
    let mut nx = answer_to(&query("nothing.example.org.", RecordType::AAAA, None));
    nx.metadata.response_code = ResponseCode::NXDomain;
    nx.add_authority(Record::from_rdata(
        Name::from_ascii("example.org.").unwrap(),
        900,
        RData::SOA(SOA::new(
            Name::from_ascii("ns.example.org.").unwrap(),
            Name::from_ascii("hostmaster.example.org.").unwrap(),
            2024,
            7200,
            3600,
            1_209_600,
            300,
        )),
    ));
    let mut tc = answer_to(&q);
    tc.metadata.truncation = true;
    let mut servfail = answer_to(&q);
    servfail.metadata.response_code = ResponseCode::ServFail;
    let mut big = answer_to(&query("big.example.org.", RecordType::A, None));
    for i in 0..80u8 {
        big.add_answer(Record::from_rdata(
            Name::from_ascii("big.example.org.").unwrap(),
            60,
            RData::A(A::new(203, 0, 113, i)),
        ));
    }
    let ok_wire = wire(&ok);
    vec![
        ok_wire.clone(),
        wire(&nx),
        wire(&tc),
        wire(&servfail),
        wire(&big),
        // Truncated answers: cut inside the answer section and inside the header.
        ok_wire[..ok_wire.len() - 9].to_vec(),
        ok_wire[..8].to_vec(),
        // A query (QR clear) where an answer was expected.
        wire(&q),
    ]
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/cluster")
            .join(name),
    )
    .unwrap()
}

fn manifest_seeds() -> Vec<Vec<u8>> {
    [
        "core.yaml",
        "headless.yml",
        "external.json",
        "pods.json",
        "sizes.yaml",
    ]
    .iter()
    .map(|f| fixture(f))
    .collect()
}

fn config_seeds() -> Vec<Vec<u8>> {
    let shipped =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/clusterdns.toml"))
            .unwrap();
    vec![
        shipped,
        br#"zone = "cluster.local"
listen = ["127.0.0.1:5353"]
upstreams = ["192.0.2.53:53", "[2001:db8::53]:53"]
[server]
max_udp_payload = 1232
[cache]
capacity = 100
[upstream]
timeout = "1s"
"#
        .to_vec(),
    ]
}

fn snapshot_seeds() -> Vec<Vec<u8>> {
    let mut items = Vec::new();
    for f in ["core.yaml", "headless.yml"] {
        let text = String::from_utf8(fixture(f)).unwrap();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let value = <serde_json::Value as serde::Deserialize>::deserialize(doc).unwrap();
            items.push(serde_json::to_string(&value).unwrap());
        }
    }
    let file = clusterdns::source::snapshot::encode(
        items.iter().map(String::as_str),
        SystemTime::UNIX_EPOCH,
    );
    let body_start = file.iter().position(|&b| b == b'\n').unwrap() + 1;
    vec![file.clone(), file[body_start..].to_vec()]
}

type Target = fn(&[u8]);
type Seeds = fn() -> Vec<Vec<u8>>;

fn targets() -> Vec<(&'static str, Target, Seeds, usize)> {
    // (name, target, seeds, mutated iterations): sized for ~30 s in all on 2 debug cores.
    vec![
        (
            "message",
            fuzzing::message as Target,
            message_seeds as _,
            3000,
        ),
        ("tcp_stream", fuzzing::tcp_stream, tcp_seeds, 300),
        (
            "upstream_response",
            fuzzing::upstream_response,
            upstream_seeds,
            600,
        ),
        ("manifest", fuzzing::manifest, manifest_seeds, 150),
        ("config", fuzzing::config, config_seeds, 1000),
        ("snapshot", fuzzing::snapshot, snapshot_seeds, 150),
    ]
}

/// One libFuzzer-like mutation: flip, set, insert, delete or splice bytes.
fn mutate(rng: &mut StdRng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        let len = out.len();
        match rng.random_range(0..6) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                out[i] ^= 1 << rng.random_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.random_range(0..len);
                out[i] = [0, 0xff, 0x7f, 0x80, 0xc0, 1, b'.', b'\\'][rng.random_range(0..8)];
            }
            2 => {
                let i = rng.random_range(0..=len);
                out.insert(i, rng.random());
            }
            3 if len > 0 => {
                let i = rng.random_range(0..len);
                let n = rng.random_range(1..=(len - i).min(16));
                out.drain(i..i + n);
            }
            4 if len > 0 => {
                out.truncate(rng.random_range(0..len));
            }
            _ if !other.is_empty() => {
                let i = rng.random_range(0..=out.len());
                let a = rng.random_range(0..other.len());
                let b = rng.random_range(a..=other.len().min(a + 32));
                out.splice(i..i, other[a..b].iter().copied());
            }
            _ => {}
        }
    }
    out
}

fn checked_in(target: &str) -> Vec<Vec<u8>> {
    let Ok(dir) = std::fs::read_dir(corpus_dir(target)) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
    files.sort();
    files.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

fn run(name: &str, target: Target, seeds: Vec<Vec<u8>>, iterations: usize) {
    let mut inputs = checked_in(name);
    assert!(!inputs.is_empty(), "no checked-in seed corpus for {name}");
    inputs.extend(seeds);
    for input in &inputs {
        target(input);
    }
    let mut rng = StdRng::seed_from_u64(0x00c1_d25f_u64 ^ name.len() as u64);
    for i in 0..iterations {
        let base = &inputs[rng.random_range(0..inputs.len())];
        let other = &inputs[rng.random_range(0..inputs.len())];
        let input = mutate(&mut rng, base, other);
        let result = std::panic::catch_unwind(|| target(&input));
        if result.is_err() {
            panic!("{name}: iteration {i} broke an invariant on input {input:02x?}");
        }
    }
}

#[test]
fn message_path() {
    let (name, target, seeds, n) = targets()[0];
    run(name, target, seeds(), n);
}

#[test]
fn tcp_stream() {
    let (name, target, seeds, n) = targets()[1];
    run(name, target, seeds(), n);
}

#[test]
fn upstream_response() {
    let (name, target, seeds, n) = targets()[2];
    run(name, target, seeds(), n);
}

#[test]
fn manifest_file() {
    let (name, target, seeds, n) = targets()[3];
    run(name, target, seeds(), n);
}

#[test]
fn config_file() {
    let (name, target, seeds, n) = targets()[4];
    run(name, target, seeds(), n);
}

#[test]
fn snapshot_file() {
    let (name, target, seeds, n) = targets()[5];
    run(name, target, seeds(), n);
}

/// The seed snapshot is a valid snapshot: the target reaches the body parser.
#[test]
fn seed_snapshot_decodes() {
    let seeds = snapshot_seeds();
    let snapshot = clusterdns::source::snapshot::decode(Path::new("seed"), &seeds[0]).unwrap();
    assert!(snapshot.objects.len() > 3);
}

/// Writes the seeds built here to `fuzz/corpus/<target>/seed-<n>`.
#[test]
#[ignore]
fn write_seed_corpus() {
    for (name, _, seeds, _) in targets() {
        let dir = corpus_dir(name);
        std::fs::create_dir_all(&dir).unwrap();
        for (i, seed) in seeds().iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i:02}")), seed).unwrap();
        }
    }
}
