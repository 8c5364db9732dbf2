//! Hostile load on loopback (issue 8, "Floods and slow clients"): a UDP flood from many
//! source ports, slowloris TCP connections, an unfinished 65535-byte TCP message, 10,000
//! pipelined queries, a client that never reads, a random-name (NXDOMAIN) flood, and a panic
//! on the query path. The server must keep answering everyone else through each of them.
//!
//! Every test is bounded in count and time (a few seconds each in a debug build on 2 cores),
//! and asserts only "still answered" and resource bounds, never a rate: the rates seen are
//! printed (`cargo test --test flood -- --nocapture`).

mod support;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::*;

const KUBERNETES: &str = "kubernetes.default.svc.cluster.local.";
/// A headless Service with 100 ready endpoints: a large answer (about 1.7 kB).
const BIG: &str = "big.default.svc.cluster.local.";

fn encode(message: &Message) -> Vec<u8> {
    message.to_vec().expect("encode")
}

fn framed(message: &Message) -> Vec<u8> {
    let bytes = encode(message);
    let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(&bytes);
    out
}

/// The cluster still answers correctly over UDP and over TCP. Over UDP, as a real client,
/// it asks again when a question gets no answer: right after a flood the server's receive
/// buffers may still be full of it, and the kernel drops what does not fit.
fn assert_cluster_answers(server: &Server) {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind client");
    socket
        .set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    let udp = (0..10)
        .find_map(|_| udp_try(&socket, server.dns, &query(KUBERNETES, RecordType::A)))
        .expect("a UDP answer within 10 tries");
    for answer in [udp, server.tcp(&query(KUBERNETES, RecordType::A))] {
        assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
        assert_eq!(rdata(&answer.answers, RecordType::A), ["192.0.2.1"]);
    }
}

/// One UDP exchange with its own short timeout; the answer if it came and matches.
fn udp_try(socket: &UdpSocket, server: SocketAddr, q: &Message) -> Option<Message> {
    socket.send_to(&encode(q), server).ok()?;
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + socket.read_timeout().ok()??;
    while Instant::now() < deadline {
        let len = socket.recv(&mut buf).ok()?;
        // A late answer to an earlier probe of this socket: skip it.
        if let Ok(answer) = Message::from_vec(&buf[..len])
            && answer.metadata.id == q.metadata.id
        {
            return Some(answer);
        }
    }
    None
}

#[test]
fn udp_flood_from_many_ports_leaves_tcp_and_other_clients_answered() {
    let server = Server::fixtures(None);
    let flood_for = Duration::from_secs(3);
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));

    // 8 threads x 32 sockets: 256 source ports, each blasting without reading its answers.
    let packet = encode(&query(KUBERNETES, RecordType::A));
    let flooders: Vec<_> = (0..8)
        .map(|_| {
            let (stop, sent, packet, dns) =
                (stop.clone(), sent.clone(), packet.clone(), server.dns);
            std::thread::spawn(move || {
                let sockets: Vec<UdpSocket> = (0..32)
                    .map(|_| {
                        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind flooder");
                        socket.set_nonblocking(true).expect("nonblocking");
                        socket
                    })
                    .collect();
                let mut count = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    // Bursts of 16 with a 1 ms pause: far more than a debug build answers,
                    // without the flooders taking every core from the server under test.
                    for socket in sockets.iter().cycle().take(16) {
                        if socket.send_to(&packet, dns).is_ok() {
                            count += 1;
                        }
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                sent.fetch_add(count, Ordering::Relaxed);
            })
        })
        .collect();

    // TCP clients during the flood: a fresh connection per query.
    let tcp_stop = stop.clone();
    let dns = server.dns;
    let tcp = std::thread::spawn(move || {
        let (mut asked, mut answered) = (0usize, 0usize);
        while !tcp_stop.load(Ordering::Relaxed) {
            asked += 1;
            let q = query(KUBERNETES, RecordType::A);
            let Ok(mut stream) = TcpStream::connect_timeout(&dns, IO_TIMEOUT) else {
                continue;
            };
            stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
            if stream.write_all(&framed(&q)).is_ok()
                && let Some(bytes) = read_framed(&mut stream)
            {
                let answer = parse_answer(&q, &bytes);
                assert_eq!(rdata(&answer.answers, RecordType::A), ["192.0.2.1"]);
                answered += 1;
            }
        }
        (asked, answered)
    });

    // Another UDP client during the flood: one socket asking 500 times a second without
    // waiting (its questions compete with the flood's for the same receive buffers), its
    // answers matched by id.
    let probe = UdpSocket::bind("127.0.0.1:0").expect("bind probe");
    probe.set_nonblocking(true).expect("nonblocking");
    let started = Instant::now();
    let (mut asked, mut answered) = (0u16, 0usize);
    let mut buf = [0u8; 4096];
    while started.elapsed() < flood_for {
        let mut q = query(KUBERNETES, RecordType::A);
        q.metadata.id = asked;
        if probe.send_to(&encode(&q), server.dns).is_ok() {
            asked += 1;
        }
        std::thread::sleep(Duration::from_millis(2));
        while let Ok(len) = probe.recv(&mut buf) {
            let answer = Message::from_vec(&buf[..len]).expect("answer parses");
            assert!(answer.metadata.id < asked, "unknown id");
            assert_eq!(rdata(&answer.answers, RecordType::A), ["192.0.2.1"]);
            answered += 1;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for flooder in flooders {
        flooder.join().expect("flooder");
    }
    let (tcp_asked, tcp_answered) = tcp.join().expect("TCP client");
    let flood = sent.load(Ordering::Relaxed);
    let received = server.metric("coredns_dns_requests_total", "proto=\"udp\"");
    println!(
        "UDP flood: {flood} packets from 256 ports in {elapsed:.1} s ({:.0}/s); the server \
         counted {received} UDP requests ({:.0}/s)",
        flood as f64 / elapsed,
        received / elapsed,
    );
    println!(
        "during it: another UDP client got {answered} answers to {asked} questions \
         ({:.0} answers/s), TCP {tcp_answered}/{tcp_asked} answered",
        answered as f64 / elapsed,
    );
    assert!(
        answered > 0,
        "the other UDP client got no answer during the flood"
    );
    assert!(tcp_answered > 0, "no TCP answer during the flood");
    // Once the flood stops, the backlog drains and answers are prompt again.
    let stopped = Instant::now();
    probe.set_nonblocking(false).expect("blocking");
    probe
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    assert!(
        eventually(Duration::from_secs(20), || udp_try(
            &probe,
            server.dns,
            &query(KUBERNETES, RecordType::A)
        )
        .is_some()),
        "no UDP answer after the flood"
    );
    println!(
        "after the flood: answered again within {:.1?}",
        stopped.elapsed()
    );
    assert_cluster_answers(&server);
}

#[test]
fn slowloris_connections_are_closed_capped_and_fds_stay_bounded() {
    const CAP: usize = 200;
    let (server, _dir) = server_with_config(
        &format!("[server]\ntcp_idle_timeout = \"1s\"\nmax_tcp_connections = {CAP}\n"),
        None,
    );
    // This process holds every client end; keep well under its open-file limit.
    let mut wanted = 1000usize;
    if let Some(limit) = open_files_limit() {
        let room = usize::try_from(limit.saturating_sub(200)).unwrap_or(usize::MAX);
        if room < wanted {
            println!("open-file limit {limit}: {room} slowloris connections instead of 1000");
            wanted = room.max(CAP + 10);
        }
    }
    let baseline = server.open_fds().expect("server fds");

    // Sample the server's fd count while the attack runs.
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let (stop, peak, pid) = (stop.clone(), peak.clone(), server.pid());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
                    peak.fetch_max(dir.count(), Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    // Every connection sends nothing, or (every other one) one byte a second.
    let started = Instant::now();
    let mut streams: Vec<TcpStream> = (0..wanted)
        .map(|_| {
            let stream = TcpStream::connect_timeout(&server.dns, IO_TIMEOUT).expect("connect");
            stream
                .set_read_timeout(Some(Duration::from_millis(10)))
                .expect("timeout");
            stream
        })
        .collect();
    let opened = started.elapsed();
    for _ in 0..3 {
        for stream in streams.iter_mut().step_by(2) {
            let _ = stream.write_all(&[0]);
        }
        std::thread::sleep(Duration::from_secs(1));
    }

    // All of them end: rejected at once over the cap, or closed by the idle timeout.
    let mut open = streams;
    let ended = eventually(Duration::from_secs(10), || {
        open.retain_mut(|s| wait_tcp_end(s) == TcpEnd::Open);
        open.is_empty()
    });
    assert!(
        ended,
        "{} of {wanted} slowloris connections still open",
        open.len()
    );
    let closed_after = started.elapsed();
    let rejected = server.metric("clusterdns_tcp_connections_rejected_total", "");

    // Slots free again: new connections are served, and the fds went back down.
    assert_cluster_answers(&server);
    assert!(
        eventually(IO_TIMEOUT, || server.open_fds().expect("fds")
            <= baseline + 2),
        "server fds {} after the attack, {baseline} before",
        server.open_fds().expect("fds")
    );
    stop.store(true, Ordering::Relaxed);
    sampler.join().expect("sampler");
    let peak = peak.load(Ordering::Relaxed);
    println!(
        "slowloris: {wanted} connections opened in {opened:.1?}, all ended after \
         {closed_after:.1?}; {rejected} rejected at the cap of {CAP}; server fds {baseline} \
         before, peak {peak}"
    );
    assert!(rejected > 0.0, "the cap rejected nothing");
    assert!(
        rejected <= (wanted - 1) as f64,
        "{rejected} rejected of {wanted}"
    );
    // The cap holds: at most CAP connections (plus the sampler's view of a few in flight
    // between accept and rejection, and the metric scrapes).
    assert!(
        peak <= baseline + CAP + 16,
        "server fds peaked at {peak} (baseline {baseline}, cap {CAP})"
    );
}

#[test]
fn huge_prefix_pipelining_and_a_client_that_never_reads() {
    let (server, _dir) = server_with_config("[server]\ntcp_idle_timeout = \"1s\"\n", None);

    // A length prefix of 65535 and then nothing: closed by the idle timeout, nobody else
    // waits on it.
    let mut stuck = server.tcp_connect();
    stuck.write_all(&[0xff, 0xff]).expect("write prefix");
    assert_cluster_answers(&server);
    assert_eq!(wait_tcp_end(&mut stuck), TcpEnd::Closed, "65535 + nothing");

    // 10,000 pipelined queries on one connection: every one answered, ids matched. A writer
    // thread sends while this thread reads, so neither side's buffers deadlock the other.
    const PIPELINED: u16 = 10_000;
    let mut stream = server.tcp_connect();
    let mut writer = stream.try_clone().expect("clone stream");
    let started = Instant::now();
    let sender = std::thread::spawn(move || {
        let mut batch = Vec::new();
        for id in 0..PIPELINED {
            let mut q = query(KUBERNETES, RecordType::A);
            q.metadata.id = id;
            batch.extend_from_slice(&framed(&q));
            if batch.len() > 64 * 1024 {
                writer.write_all(&batch).expect("write pipelined queries");
                batch.clear();
            }
        }
        writer.write_all(&batch).expect("write pipelined queries");
    });
    let mut seen = HashSet::new();
    for _ in 0..PIPELINED {
        let bytes = read_framed(&mut stream).expect("a pipelined answer");
        let answer = Message::from_vec(&bytes).expect("answer parses");
        assert_eq!(rdata(&answer.answers, RecordType::A), ["192.0.2.1"]);
        assert!(answer.metadata.id < PIPELINED, "unknown id");
        assert!(seen.insert(answer.metadata.id), "id answered twice");
    }
    sender.join().expect("sender");
    println!(
        "{PIPELINED} pipelined queries answered on one connection in {:.2?}",
        started.elapsed()
    );
    drop(stream);

    // A client that asks for large answers and never reads them: the server stops reading
    // once its buffers are full, drops the connection after the idle timeout, and its memory
    // does not grow with what the client asked.
    let (rss_before, _) = server.memory_kb().expect("memory");
    let mut greedy = server.tcp_connect();
    greedy
        .set_write_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let mut one = Vec::new();
    for _ in 0..100 {
        one.extend_from_slice(&framed(&query(BIG, RecordType::A)));
    }
    let greedy_writer = std::thread::spawn(move || {
        let mut sent = 0usize;
        // Up to 100,000 questions (about 170 MB of answers); the kernel's buffers take some
        // of them, then the write blocks or fails once the server gives up on the client.
        for _ in 0..1000 {
            if greedy.write_all(&one).is_err() {
                break;
            }
            sent += 100;
        }
        (sent, greedy)
    });
    // Others are served while it stalls.
    std::thread::sleep(Duration::from_millis(500));
    assert_cluster_answers(&server);
    let (sent, mut greedy) = greedy_writer.join().expect("greedy client");
    let (rss_after, _) = server.memory_kb().expect("memory");
    println!(
        "never-reading client: {sent} queries written before its writes stalled; server RSS \
         {rss_before} kB before, {rss_after} kB after"
    );
    assert!(
        rss_after < rss_before + 64 * 1024,
        "RSS grew from {rss_before} kB to {rss_after} kB"
    );
    // The server gives up on it: its next writes fail, or it sees the connection end.
    greedy
        .set_write_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    assert!(
        eventually(Duration::from_secs(10), || {
            greedy
                .write_all(&framed(&query(KUBERNETES, RecordType::A)))
                .is_err()
        }),
        "the stalled connection was never closed"
    );
    drop(greedy);
    assert_cluster_answers(&server);
}

#[test]
fn random_name_flood_keeps_the_negative_cache_bounded() {
    const NEGATIVE_CAPACITY: usize = 100;
    let upstream = FakeUpstream::start(UpstreamMode::Answer);
    let (server, _dir) = server_with_config(
        &format!("[cache]\nnegative_capacity = {NEGATIVE_CAPACITY}\n"),
        Some(upstream.addr),
    );
    let (rss_before, _) = server.memory_kb().expect("memory");

    // 4 clients, each 750 random names outside the zone (NXDOMAIN from the upstream, with an
    // SOA: cacheable) and 750 inside the cluster zone (NXDOMAIN from the zone).
    const PER_CLIENT: usize = 750;
    let dns = server.dns;
    let clients: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
                socket
                    .set_read_timeout(Some(Duration::from_secs(2)))
                    .expect("timeout");
                let mut nxdomain = 0usize;
                for i in 0..PER_CLIENT * 2 {
                    let label: u64 = rand::random();
                    let name = if i % 2 == 0 {
                        format!("r{label:x}.nx.example.org.")
                    } else {
                        format!("r{label:x}.default.svc.cluster.local.")
                    };
                    let q = query(&name, RecordType::A);
                    if let Some(answer) = udp_try(&socket, dns, &q)
                        && answer.metadata.response_code == ResponseCode::NXDomain
                    {
                        nxdomain += 1;
                    }
                }
                nxdomain
            })
        })
        .collect();

    // Meanwhile the cluster's own names are answered, and promptly.
    let mut slowest = Duration::ZERO;
    let mut asked = 0;
    while !clients.iter().all(|c| c.is_finished()) {
        let started = Instant::now();
        let answer = server.udp(&query(KUBERNETES, RecordType::A));
        slowest = slowest.max(started.elapsed());
        assert_eq!(rdata(&answer.answers, RecordType::A), ["192.0.2.1"]);
        asked += 1;
        std::thread::sleep(Duration::from_millis(10));
    }
    let nxdomain: usize = clients.into_iter().map(|c| c.join().expect("client")).sum();
    let denial = server.metric("coredns_cache_entries", "type=\"denial\"");
    let (rss_after, _) = server.memory_kb().expect("memory");
    println!(
        "random-name flood: {nxdomain} of {} NXDOMAIN; {denial} denial entries cached \
         (capacity {NEGATIVE_CAPACITY}); {asked} cluster questions meanwhile, slowest \
         {slowest:.1?}; RSS {rss_before} kB before, {rss_after} kB after",
        4 * PER_CLIENT * 2
    );
    assert!(
        nxdomain >= 4 * PER_CLIENT,
        "only {nxdomain} NXDOMAIN answers"
    );
    assert!(denial > 0.0, "nothing cached");
    assert!(
        denial <= NEGATIVE_CAPACITY as f64,
        "{denial} denial entries over a capacity of {NEGATIVE_CAPACITY}"
    );
    assert!(asked > 0);
    assert!(
        rss_after < rss_before + 64 * 1024,
        "RSS grew from {rss_before} kB to {rss_after} kB"
    );
    assert_cluster_answers(&server);
}

#[test]
fn a_panic_on_one_query_is_caught_counted_and_every_socket_keeps_serving() {
    if !cfg!(debug_assertions) {
        println!("skipped: the panic hook exists only in debug builds");
        return;
    }
    const BOOM: &str = "boom.default.svc.cluster.local.";
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("clusterdns.toml");
    std::fs::write(&config, "[server]\nudp_workers = 4\n").expect("write config");
    let fixtures = fixtures().to_string_lossy().into_owned();
    let upstream = closed_port().to_string();
    let config = config.to_string_lossy().into_owned();
    let server = Server::start_env(
        &[
            "--manifests",
            &fixtures,
            "--upstream",
            &upstream,
            "--config",
            &config,
        ],
        &[("CLUSTERDNS_TEST_PANIC_NAME", BOOM)],
    );
    let panics = || server.metric("coredns_panics_total", "");
    assert_eq!(panics(), 0.0);

    // UDP: from 32 source ports (SO_REUSEPORT spreads them over the 4 worker sockets), the
    // bad question goes unanswered, and a good one from the same port is answered after it.
    let sockets: Vec<UdpSocket> = (0..32)
        .map(|_| UdpSocket::bind("127.0.0.1:0").expect("bind"))
        .collect();
    for socket in &sockets {
        socket
            .send_to(&encode(&query(BOOM, RecordType::A)), server.dns)
            .expect("send");
    }
    std::thread::sleep(Duration::from_millis(300));
    for socket in &sockets {
        socket.set_nonblocking(true).expect("nonblocking");
        let mut buf = [0u8; 512];
        assert!(
            socket.recv(&mut buf).is_err(),
            "the bad question was answered"
        );
        socket.set_nonblocking(false).expect("blocking");
        socket.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        let good = query(KUBERNETES, RecordType::A);
        let answer = udp_try(socket, server.dns, &good).expect("answered after a panic");
        assert_eq!(rdata(&answer.answers, RecordType::A), ["192.0.2.1"]);
    }
    assert!(eventually(IO_TIMEOUT, || panics() == 32.0), "{}", panics());

    // TCP: the connection survives; the bad question is dropped, the next one answered.
    let mut stream = server.tcp_connect();
    let good = query(KUBERNETES, RecordType::A);
    stream.write_all(&framed(&good)).expect("write");
    parse_answer(&good, &read_framed(&mut stream).expect("answer"));
    stream
        .write_all(&framed(&query(BOOM, RecordType::A)))
        .expect("write");
    let good = query(KUBERNETES, RecordType::A);
    stream.write_all(&framed(&good)).expect("write");
    let answer = parse_answer(
        &good,
        &read_framed(&mut stream).expect("answer after a panic"),
    );
    assert_eq!(rdata(&answer.answers, RecordType::A), ["192.0.2.1"]);
    assert_eq!(panics(), 33.0);

    // Every socket keeps serving: fresh UDP ports, fresh TCP connections.
    for _ in 0..32 {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        udp_try(&socket, server.dns, &query(KUBERNETES, RecordType::A)).expect("answered");
    }
    assert_cluster_answers(&server);
    assert!(server.log_shows("panicked", IO_TIMEOUT), "{}", server.log());

    // Reading `stream` once more shows the server never answered the bad question.
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut byte = [0u8; 1];
    assert!(
        !matches!(stream.read(&mut byte), Ok(n) if n > 0),
        "an answer to the question that panicked"
    );
}
