//! Forwarder tests against fake upstreams on 127.0.0.1 that the tests start themselves.

use super::*;
use crate::config::Policy;
use hickory_proto::op::{Message, MessageType, Query};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use std::net::UdpSocket as StdUdpSocket;
use std::str::FromStr;
use std::time::Instant as StdInstant;

fn config(timeout_ms: u64, deadline_ms: u64) -> UpstreamConfig {
    UpstreamConfig {
        timeout: Duration::from_millis(timeout_ms),
        deadline: Duration::from_millis(deadline_ms),
        timeout_explicit: true,
        // Deterministic order, so a test knows which upstream is asked first.
        policy: Policy::Sequential,
        ..UpstreamConfig::default()
    }
}

fn question(name: &str) -> Message {
    let mut query = Message::query();
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(
        Name::from_str(name).expect("valid test name"),
        RecordType::A,
    ));
    query
}

/// The answer a fake upstream sends: one A record, optionally truncated, optionally with a
/// wrong id first.
fn answer_to(request: &Message, truncated: bool) -> Vec<u8> {
    let mut answer = Message::response(request.metadata.id, request.metadata.op_code);
    answer.metadata.message_type = MessageType::Response;
    answer.metadata.recursion_available = true;
    answer.metadata.truncation = truncated;
    answer.queries = request.queries.clone();
    if !truncated {
        let name = request.queries[0].name().clone();
        answer
            .answers
            .push(Record::from_rdata(name, 30, RData::A(A::new(192, 0, 2, 1))));
    }
    answer.to_vec().expect("test answer encodes")
}

#[derive(Clone, Copy)]
enum Behaviour {
    Answer,
    WrongIdFirst,
    Truncate,
    Silent,
}

/// A fake upstream on 127.0.0.1:<ephemeral>, UDP and (for Truncate) TCP on the same port.
fn fake_upstream(behaviour: Behaviour) -> SocketAddr {
    let udp = StdUdpSocket::bind("127.0.0.1:0").expect("bind fake upstream");
    let addr = udp.local_addr().expect("local addr");
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok((len, peer)) = udp.recv_from(&mut buf) {
            let Ok(request) = Message::from_vec(&buf[..len]) else {
                continue;
            };
            match behaviour {
                Behaviour::Silent => {}
                Behaviour::Answer => {
                    let _ = udp.send_to(&answer_to(&request, false), peer);
                }
                Behaviour::WrongIdFirst => {
                    let mut wrong = request.clone();
                    wrong.metadata.id = request.metadata.id.wrapping_add(1);
                    let _ = udp.send_to(&answer_to(&wrong, false), peer);
                    let _ = udp.send_to(&answer_to(&request, false), peer);
                }
                Behaviour::Truncate => {
                    let _ = udp.send_to(&answer_to(&request, true), peer);
                }
            }
        }
    });
    if let Behaviour::Truncate = behaviour {
        let tcp = std::net::TcpListener::bind(addr).expect("bind fake TCP upstream");
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            for stream in tcp.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut len = [0u8; 2];
                if stream.read_exact(&mut len).is_err() {
                    continue;
                }
                let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
                if stream.read_exact(&mut buf).is_err() {
                    continue;
                }
                let Ok(request) = Message::from_vec(&buf) else {
                    continue;
                };
                let answer = answer_to(&request, false);
                let mut framed = (answer.len() as u16).to_be_bytes().to_vec();
                framed.extend_from_slice(&answer);
                let _ = stream.write_all(&framed);
            }
        });
    }
    addr
}

/// A loopback port with nothing listening: the kernel answers ICMP port unreachable.
fn closed_port() -> SocketAddr {
    let socket = StdUdpSocket::bind("127.0.0.1:0").expect("bind");
    socket.local_addr().expect("local addr")
}

fn forwarder(upstreams: Vec<SocketAddr>, config: &UpstreamConfig) -> (Forwarder, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    (Forwarder::new(upstreams, config, metrics.clone()), metrics)
}

fn outcome(metrics: &Metrics, label: &str) -> u64 {
    metrics.upstream_queries.with_label_values(&[label]).get()
}

fn assert_answered(answer: &Message, query: &Message) {
    assert_eq!(answer.queries, query.queries);
    assert_eq!(answer.answers.len(), 1);
    assert_eq!(answer.answers[0].data, RData::A(A::new(192, 0, 2, 1)));
    assert!(answer.metadata.recursion_available);
}

#[tokio::test]
async fn forwards_and_returns_the_matching_answer() {
    let (fwd, metrics) = forwarder(vec![fake_upstream(Behaviour::Answer)], &config(1000, 2000));
    let query = question("example.org.");
    let answer = fwd.forward(&query).await.expect("answered");
    assert_answered(&answer, &query);
    assert_eq!(outcome(&metrics, "ok"), 1);
}

#[tokio::test]
async fn discards_an_answer_with_the_wrong_id_and_counts_it() {
    let (fwd, metrics) = forwarder(
        vec![fake_upstream(Behaviour::WrongIdFirst)],
        &config(1000, 2000),
    );
    let query = question("example.org.");
    let answer = fwd.forward(&query).await.expect("answered");
    assert_answered(&answer, &query);
    assert_eq!(outcome(&metrics, "mismatch"), 1);
    assert_eq!(outcome(&metrics, "ok"), 1);
}

#[tokio::test]
async fn truncated_udp_answer_is_retried_over_tcp() {
    let (fwd, _) = forwarder(
        vec![fake_upstream(Behaviour::Truncate)],
        &config(1000, 2000),
    );
    let query = question("big.example.org.");
    let answer = fwd.forward(&query).await.expect("answered over TCP");
    assert!(!answer.metadata.truncation);
    assert_answered(&answer, &query);
}

#[tokio::test]
async fn silent_upstream_is_skipped_for_the_next_one() {
    let (fwd, metrics) = forwarder(
        vec![
            fake_upstream(Behaviour::Silent),
            fake_upstream(Behaviour::Answer),
        ],
        &config(200, 2000),
    );
    let query = question("example.org.");
    let answer = fwd.forward(&query).await.expect("second upstream answers");
    assert_answered(&answer, &query);
    assert_eq!(outcome(&metrics, "timeout"), 1);
}

#[tokio::test]
async fn all_silent_upstreams_end_at_the_deadline() {
    let (fwd, _) = forwarder(vec![fake_upstream(Behaviour::Silent)], &config(100, 350));
    let started = StdInstant::now();
    let error = fwd
        .forward(&question("example.org."))
        .await
        .expect_err("nobody answers");
    assert!(matches!(error, ForwardError::Deadline(_)), "{error}");
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
}

#[tokio::test]
async fn refused_upstreams_fail_fast_not_at_the_deadline() {
    let (fwd, metrics) = forwarder(vec![closed_port()], &config(2000, 10_000));
    let started = StdInstant::now();
    let error = fwd
        .forward(&question("example.org."))
        .await
        .expect_err("refused");
    assert!(matches!(error, ForwardError::AllFailed(_)), "{error}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(outcome(&metrics, "error"), 1);
}

#[tokio::test]
async fn no_upstreams_is_an_error_at_once() {
    let (fwd, _) = forwarder(Vec::new(), &config(1000, 2000));
    assert!(matches!(
        fwd.forward(&question("example.org.")).await,
        Err(ForwardError::NoUpstreams)
    ));
}

#[tokio::test]
async fn a_failing_upstream_is_marked_down_and_skipped() {
    let config = UpstreamConfig {
        policy: Policy::Sequential,
        max_fails: 2,
        ..config(500, 2000)
    };
    let dead = closed_port();
    let (fwd, metrics) = forwarder(vec![dead, fake_upstream(Behaviour::Answer)], &config);
    let query = question("example.org.");
    for _ in 0..2 {
        assert_answered(&fwd.forward(&query).await.expect("second answers"), &query);
    }
    assert_eq!(outcome(&metrics, "error"), 2);
    let healthy = |addr: SocketAddr| {
        metrics
            .upstream_healthy
            .with_label_values(&[&addr.to_string()])
            .get()
    };
    assert_eq!(healthy(dead), 0, "marked down after max_fails");
    // Down: tried last, so no more errors while the other one answers.
    for _ in 0..3 {
        assert_answered(&fwd.forward(&query).await.expect("answered"), &query);
    }
    assert_eq!(outcome(&metrics, "error"), 2);
    // The probe keeps failing against the closed port and says so.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert!(
        metrics
            .healthcheck_failures
            .with_label_values(&["forward", &dead.to_string()])
            .get()
            >= 1
    );
}

#[tokio::test]
async fn a_down_upstream_is_probed_back_up() {
    let config = UpstreamConfig {
        policy: Policy::Sequential,
        max_fails: 1,
        health_check: Duration::from_millis(100),
        ..config(300, 1000)
    };
    // Bound but not yet answering: the first query times out on it.
    let socket = StdUdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = socket.local_addr().expect("addr");
    let (fwd, metrics) = forwarder(vec![addr], &config);
    let query = question("example.org.");
    assert!(fwd.forward(&query).await.is_err());
    let healthy = || {
        metrics
            .upstream_healthy
            .with_label_values(&[&addr.to_string()])
            .get()
    };
    assert_eq!(healthy(), 0);
    // Now it answers, the probe notices.
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((len, peer)) = socket.recv_from(&mut buf) {
            if let Ok(request) = Message::from_vec(&buf[..len]) {
                let _ = socket.send_to(&answer_to(&request, false), peer);
            }
        }
    });
    let mut up = false;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if healthy() == 1 {
            up = true;
            break;
        }
    }
    assert!(up, "the probe brought the upstream back");
}

#[tokio::test]
async fn round_robin_spreads_queries_over_upstreams() {
    let config = UpstreamConfig {
        policy: Policy::RoundRobin,
        ..config(500, 1000)
    };
    let (fwd, _) = forwarder(
        vec![
            fake_upstream(Behaviour::Answer),
            fake_upstream(Behaviour::Answer),
        ],
        &config,
    );
    let firsts: Vec<SocketAddr> = (0..4).map(|_| fwd.order()[0].addr).collect();
    assert_ne!(firsts[0], firsts[1]);
    assert_eq!(firsts[0], firsts[2]);
    assert_eq!(firsts[1], firsts[3]);
}

/// A TCP-only upstream that answers every query on a connection (or closes it after one
/// answer, as an upstream with a short idle timeout does) and counts connections.
fn tcp_upstream(close_after_answer: bool) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind TCP upstream");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::thread::spawn(move || {
                loop {
                    let mut len = [0u8; 2];
                    if stream.read_exact(&mut len).is_err() {
                        return;
                    }
                    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
                    if stream.read_exact(&mut buf).is_err() {
                        return;
                    }
                    let Ok(request) = Message::from_vec(&buf) else {
                        return;
                    };
                    let answer = answer_to(&request, false);
                    let mut framed = (answer.len() as u16).to_be_bytes().to_vec();
                    framed.extend_from_slice(&answer);
                    if stream.write_all(&framed).is_err() || close_after_answer {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn force_tcp_asks_over_tcp_and_reuses_the_connection() {
    let (addr, accepted) = tcp_upstream(false);
    let config = UpstreamConfig {
        force_tcp: true,
        ..config(1000, 2000)
    };
    let (fwd, metrics) = forwarder(vec![addr], &config);
    for name in ["a.example.org.", "b.example.org.", "c.example.org."] {
        let query = question(name);
        assert_answered(
            &fwd.forward(&query).await.expect("answered over TCP"),
            &query,
        );
    }
    assert_eq!(outcome(&metrics, "ok"), 3);
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one connection for three queries"
    );
}

#[tokio::test]
async fn a_kept_connection_closed_by_the_upstream_is_replaced_not_a_failure() {
    let (addr, accepted) = tcp_upstream(true);
    let config = UpstreamConfig {
        force_tcp: true,
        ..config(1000, 2000)
    };
    let (fwd, metrics) = forwarder(vec![addr], &config);
    for name in ["a.example.org.", "b.example.org."] {
        let query = question(name);
        // Let the upstream's close reach us, so the kept connection is really stale.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_answered(&fwd.forward(&query).await.expect("answered"), &query);
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert_eq!(
        outcome(&metrics, "error"),
        0,
        "a stale kept connection is not a failed try"
    );
}
