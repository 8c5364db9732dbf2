//! Benchmark, run by hand (issue 6): the Kubernetes API source at scale, through the fake API
//! server of tests/support/fakeapi.rs and the real kube-rs client of the release binary.
//!
//! ```sh
//! cargo test --release --test api_scale -- --ignored --nocapture
//! CLUSTERDNS_API_SCALE_SERVICES=1000 cargo test --release --test api_scale -- --ignored --nocapture
//! ```
//!
//! It loads the fake API with N Services (`CLUSTERDNS_API_SCALE_SERVICES`, default 50,000) in
//! namespaces of 50, each with one EndpointSlice of 3 ready endpoints (every tenth Service is
//! headless, its endpoints with hostnames; every seventh ClusterIP Service has two ports), as
//! `loadtest/gen_cluster.py` shapes a cluster. Then:
//!
//! 1. **Initial sync**: starts clusterdns against it and measures the time from process start
//!    to `/ready` answering 200, and the process's VmRSS / VmHWM once ready.
//! 2. **Churn**: `CLUSTERDNS_API_SCALE_RATE` updates a second (default 100) for
//!    `CLUSTERDNS_API_SCALE_SECONDS` (default 30), each to a different object: a ClusterIP
//!    Service gets a new ClusterIP, or (every fourth update) a headless Service's EndpointSlice
//!    gets one endpoint's address replaced. For each update, a poller asks the name over UDP
//!    every 5 ms until the answer carries the new address (given up after 5 s: a timeout). The
//!    change-to-answer latency is from just before the change is handed to the fake API to the
//!    receipt of the first answer carrying it.
//!
//! It prints the figures; it asserts only that the measurement ran (every update was seen).
//! Nothing here runs in a normal `cargo test` (the test is `#[ignore]`).

mod support;

use hickory_proto::op::Message;
use hickory_proto::rr::RecordType;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use support::fakeapi::{self, FakeApi};
use support::*;

/// Services per namespace (as gen_cluster.py's default).
const PER_NAMESPACE: usize = 50;
/// Endpoints per Service (one EndpointSlice each).
const ENDPOINTS: usize = 3;
/// How often a pending update's name is asked.
const POLL_EVERY: Duration = Duration::from_millis(5);
/// An update not seen after this long is counted as a timeout.
const GIVE_UP: Duration = Duration::from_secs(5);
/// Poller threads (each polls all of its pending updates from one UDP socket).
const POLLERS: usize = 4;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn addr(base: Ipv4Addr, index: usize) -> String {
    let index = u32::try_from(index).expect("index fits an address");
    Ipv4Addr::from(u32::from(base) + index).to_string()
}

fn ns_of(i: usize) -> String {
    format!("ns-{:04}", i / PER_NAMESPACE)
}

fn svc_name(i: usize) -> String {
    format!("svc-{i:06}")
}

fn headless(i: usize) -> bool {
    i % 10 == 2
}

fn cluster_ip(i: usize) -> String {
    addr(Ipv4Addr::new(10, 96, 0, 0), i)
}

fn endpoint_ip(i: usize, j: usize) -> String {
    addr(Ipv4Addr::new(10, 128, 0, 0), i * ENDPOINTS + j)
}

fn service(i: usize, ip: &str) -> Value {
    let (ns, name) = (ns_of(i), svc_name(i));
    let mut svc = if headless(i) {
        fakeapi::headless_service(&ns, &name)
    } else {
        fakeapi::service(&ns, &name, ip)
    };
    if !headless(i) && i.is_multiple_of(7) {
        svc["spec"]["ports"] = json!([
            {"name": "http", "port": 80, "protocol": "TCP"},
            {"name": "grpc", "port": 9090, "protocol": "TCP"}
        ]);
    }
    svc
}

fn slice(i: usize, ips: &[String]) -> Value {
    let (ns, name) = (ns_of(i), svc_name(i));
    let mut slice = fakeapi::endpoint_slice(&ns, &format!("{name}-abcde"), &name, &[]);
    slice["endpoints"] = ips
        .iter()
        .enumerate()
        .map(|(j, ip)| {
            let mut endpoint = json!({"addresses": [ip], "conditions": {"ready": true}});
            if headless(i) {
                endpoint["hostname"] = json!(format!("{name}-{j}"));
            }
            endpoint
        })
        .collect();
    slice
}

fn cluster(n: usize) -> impl Iterator<Item = Value> {
    let namespaces = n.div_ceil(PER_NAMESPACE);
    (0..namespaces)
        .map(|k| fakeapi::namespace(&format!("ns-{k:04}")))
        .chain((0..n).flat_map(|i| {
            let ips: Vec<String> = (0..ENDPOINTS).map(|j| endpoint_ip(i, j)).collect();
            [service(i, &cluster_ip(i)), slice(i, &ips)]
        }))
}

/// One update to watch for: `name` must answer with `want` among its A records (exactly
/// `[want]` when `exact`).
struct Job {
    name: String,
    want: String,
    exact: bool,
    changed: Instant,
}

/// What a poller saw.
#[derive(Default)]
struct Seen {
    latencies: Vec<Duration>,
    timeouts: Vec<String>,
    queries: usize,
}

/// Polls every pending job's name every [`POLL_EVERY`] until its answer carries the new
/// address; ends when `jobs` is closed and nothing is pending.
fn poller(dns: SocketAddr, jobs: mpsc::Receiver<Job>) -> Seen {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind poller");
    socket
        .set_read_timeout(Some(Duration::from_millis(1)))
        .expect("timeout");
    let mut seen = Seen::default();
    // Pending jobs by sequence number; questions in flight by id (an answer of an earlier
    // tick still counts when it arrives).
    let mut pending: HashMap<u64, Job> = HashMap::new();
    let mut in_flight: HashMap<u16, u64> = HashMap::new();
    let (mut next_id, mut next_seq): (u16, u64) = (0, 0);
    let mut open = true;
    let mut buf = vec![0u8; 4096];
    while open || !pending.is_empty() {
        loop {
            match jobs.try_recv() {
                Ok(job) => {
                    pending.insert(next_seq, job);
                    next_seq += 1;
                }
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        let tick = Instant::now();
        in_flight.retain(|_, seq| pending.contains_key(seq));
        for (&seq, job) in &pending {
            let mut q = query(&job.name, RecordType::A);
            next_id = next_id.wrapping_add(1);
            q.metadata.id = next_id;
            in_flight.insert(next_id, seq);
            socket
                .send_to(&q.to_vec().expect("encode"), dns)
                .expect("send poll");
            seen.queries += 1;
        }
        while tick.elapsed() < POLL_EVERY {
            let Ok(len) = socket.recv(&mut buf) else {
                continue;
            };
            let received = Instant::now();
            let Ok(answer) = Message::from_vec(&buf[..len]) else {
                continue;
            };
            let Some(job) = in_flight
                .get(&answer.metadata.id)
                .and_then(|seq| pending.get(seq))
            else {
                continue;
            };
            let addresses = rdata(&answer.answers, RecordType::A);
            let carried = if job.exact {
                addresses == [job.want.clone()]
            } else {
                addresses.contains(&job.want)
            };
            if carried {
                seen.latencies.push(received - job.changed);
                if let Some(seq) = in_flight.remove(&answer.metadata.id) {
                    pending.remove(&seq);
                }
            }
        }
        pending.retain(|_, job| {
            if job.changed.elapsed() > GIVE_UP {
                seen.timeouts.push(job.name.clone());
                return false;
            }
            true
        });
        if pending.is_empty() && open {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    seen
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1000.0
}

fn memory(server: &Server) -> String {
    match server.memory_kb() {
        Some((rss, hwm)) => format!(
            "VmRSS {:.1} MB, VmHWM {:.1} MB",
            rss as f64 / 1024.0,
            hwm as f64 / 1024.0
        ),
        None => "no /proc/<pid>/status".to_string(),
    }
}

#[test]
#[ignore = "benchmark, minutes at the default size: cargo test --release --test api_scale -- --ignored --nocapture"]
fn api_scale_initial_sync_and_change_to_answer_latency_under_churn() {
    let n = env_usize("CLUSTERDNS_API_SCALE_SERVICES", 50_000);
    let rate = env_usize("CLUSTERDNS_API_SCALE_RATE", 100).max(1);
    let seconds = env_usize("CLUSTERDNS_API_SCALE_SECONDS", 30);
    if cfg!(debug_assertions) {
        eprintln!(
            "note: a debug build (of the test and of clusterdns): run with --release for figures"
        );
    }
    eprintln!(
        "cluster: {n} services in {} namespaces, {} headless, {} endpoints; churn {rate}/s for {seconds} s",
        n.div_ceil(PER_NAMESPACE),
        (0..n).filter(|&i| headless(i)).count(),
        n * ENDPOINTS
    );

    let api = FakeApi::start();
    let generated = Instant::now();
    api.apply_all(cluster(n));
    eprintln!(
        "fake API loaded in {:.2} s (objects generated and serialized in the test process; not part of the sync)",
        generated.elapsed().as_secs_f64()
    );

    let kubeconfig = api.kubeconfig().to_string_lossy().into_owned();
    let upstream = closed_port().to_string();
    let started = Instant::now();
    let server = Server::start_env(
        &["--kubeconfig", &kubeconfig, "--upstream", &upstream],
        &[("RUST_LOG", "warn")],
    );
    let listening = started.elapsed();
    assert!(
        eventually(Duration::from_secs(600), || http_get(
            server.ready,
            "/ready"
        )
        .0 == 200),
        "never ready; log:\n{}",
        server.log()
    );
    let sync = started.elapsed();
    let synced_memory = memory(&server);
    eprintln!(
        "initial sync: listening after {:.2} s, /ready 200 after {:.2} s from process start; {synced_memory}",
        listening.as_secs_f64(),
        sync.as_secs_f64()
    );
    assert_eq!(
        server.metric("clusterdns_zone_services", ""),
        n as f64,
        "every Service in the zone once ready"
    );

    // Churn.
    let (senders, handles): (Vec<_>, Vec<_>) = (0..POLLERS)
        .map(|_| {
            let (tx, rx) = mpsc::channel();
            let dns = server.dns;
            (tx, std::thread::spawn(move || poller(dns, rx)))
        })
        .unzip();
    let updates = (rate * seconds).min(n);
    let clusterip: Vec<usize> = (0..n).filter(|&i| !headless(i)).collect();
    let headless_ones: Vec<usize> = (0..n).filter(|&i| headless(i)).collect();
    let (mut next_clusterip, mut next_headless) = (0, 0);
    let churn = Instant::now();
    let mut late = Duration::ZERO;
    for k in 0..updates {
        let due = churn + Duration::from_secs_f64(k as f64 / rate as f64);
        match due.checked_duration_since(Instant::now()) {
            Some(wait) => std::thread::sleep(wait),
            None => late = late.max(due.elapsed()),
        }
        // A quarter of the updates move an endpoint of a headless Service (while any are
        // left), the rest give a ClusterIP Service a new address; never the same object twice.
        let use_headless = k % 4 == 3 && next_headless < headless_ones.len();
        let new_ip = addr(Ipv4Addr::new(10, 112, 0, 0), k);
        let (i, object, exact) = if use_headless || next_clusterip >= clusterip.len() {
            let i = headless_ones[next_headless];
            next_headless += 1;
            let mut ips: Vec<String> = (0..ENDPOINTS).map(|j| endpoint_ip(i, j)).collect();
            ips[0] = new_ip.clone();
            (i, slice(i, &ips), false)
        } else {
            let i = clusterip[next_clusterip];
            next_clusterip += 1;
            (i, service(i, &new_ip), true)
        };
        let name = format!("{}.{}.svc.cluster.local.", svc_name(i), ns_of(i));
        let changed = Instant::now();
        api.apply(object);
        senders[k % POLLERS]
            .send(Job {
                name,
                want: new_ip,
                exact,
                changed,
            })
            .expect("poller alive");
    }
    let churned = churn.elapsed();
    drop(senders);
    let mut seen = Seen::default();
    for handle in handles {
        let part = handle.join().expect("poller thread");
        seen.latencies.extend(part.latencies);
        seen.timeouts.extend(part.timeouts);
        seen.queries += part.queries;
    }
    seen.latencies.sort();
    let lat = &seen.latencies;
    eprintln!(
        "churn: {updates} updates in {:.2} s ({:.1}/s; the sender was at most {:.1} ms behind schedule), {} polls sent",
        churned.as_secs_f64(),
        updates as f64 / churned.as_secs_f64(),
        late.as_secs_f64() * 1000.0,
        seen.queries
    );
    eprintln!(
        "change-to-answer latency over {} updates seen: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms; timeouts (> {} s): {}",
        lat.len(),
        pct(lat, 50.0),
        pct(lat, 90.0),
        pct(lat, 99.0),
        pct(lat, 100.0),
        GIVE_UP.as_secs(),
        seen.timeouts.len()
    );
    if !seen.timeouts.is_empty() {
        eprintln!(
            "first timeouts: {:?}",
            &seen.timeouts[..seen.timeouts.len().min(10)]
        );
    }
    eprintln!("after the churn: {}", memory(&server));
    eprintln!(
        "SUMMARY services={n} endpoints={} sync_s={:.2} synced=[{synced_memory}] updates={updates} seen={} timeouts={} p50_ms={:.1} p90_ms={:.1} p99_ms={:.1} max_ms={:.1}",
        n * ENDPOINTS,
        sync.as_secs_f64(),
        lat.len(),
        seen.timeouts.len(),
        pct(lat, 50.0),
        pct(lat, 90.0),
        pct(lat, 99.0),
        pct(lat, 100.0),
    );
    assert_eq!(
        lat.len() + seen.timeouts.len(),
        updates,
        "every update measured"
    );
    assert!(
        seen.timeouts.is_empty(),
        "{} updates never reached the answers within {GIVE_UP:?}",
        seen.timeouts.len()
    );
}
