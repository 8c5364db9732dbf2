//! Shared harness of the integration tests: runs the real `clusterdns` binary on loopback
//! (every listener on port 0), talks to it over real UDP and TCP sockets, starts fake
//! upstream resolvers, and reads its metrics.
//!
//! Everything here is bounded in time: a server that does not answer fails the test after a
//! few seconds instead of hanging it.
#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod fakeapi;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// How long any single exchange with the server may take before the test fails.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// The fixture cluster every test serves (see tests/fixtures/cluster/README.md).
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cluster")
}

/// A copy of the fixture cluster in a temporary directory, for tests that edit manifests.
pub fn fixtures_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("create temp dir");
    for entry in std::fs::read_dir(fixtures()).expect("read fixtures") {
        let entry = entry.expect("fixture entry");
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).expect("copy fixture");
    }
    dir
}

/// A server for the fixture cluster with a config file holding `toml`, forwarding to
/// `upstream` (the file lives as long as the returned dir).
pub fn server_with_config(toml: &str, upstream: Option<SocketAddr>) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("clusterdns.toml");
    std::fs::write(&path, toml).expect("write config");
    let path = path.to_string_lossy().into_owned();
    let server = Server::manifests(&fixtures(), upstream, &["--config", &path]);
    (server, dir)
}

/// A running `clusterdns serve`, killed when dropped.
pub struct Server {
    child: Child,
    /// The DNS address (UDP and TCP).
    pub dns: SocketAddr,
    /// `/metrics` listener.
    pub metrics: SocketAddr,
    /// `/health` listener.
    pub health: SocketAddr,
    /// `/ready` listener.
    pub ready: SocketAddr,
    /// The admin listener (`/explain`, `/dump`); `None` with `--admin-listen off`.
    pub admin: Option<SocketAddr>,
    stderr: Arc<Mutex<String>>,
}

impl Server {
    /// Serves the fixture cluster, forwarding to `upstream` (a closed port when `None`, so
    /// nothing ever reaches a real resolver).
    pub fn fixtures(upstream: Option<SocketAddr>) -> Server {
        Server::manifests(&fixtures(), upstream, &[])
    }

    /// Serves `dir` with extra command-line arguments.
    pub fn manifests(dir: &Path, upstream: Option<SocketAddr>, extra: &[&str]) -> Server {
        let upstream = upstream.unwrap_or_else(closed_port).to_string();
        let dir = dir.to_string_lossy().into_owned();
        let mut args = vec!["--manifests", &dir, "--upstream", &upstream];
        args.extend_from_slice(extra);
        Server::start(&args)
    }

    /// Serves the cluster of a fake API server through `--kubeconfig`, with extra arguments.
    pub fn kubernetes(api: &fakeapi::FakeApi, extra: &[&str]) -> Server {
        let upstream = closed_port().to_string();
        let kubeconfig = api.kubeconfig().to_string_lossy().into_owned();
        let mut args = vec!["--kubeconfig", &kubeconfig, "--upstream", &upstream];
        args.extend_from_slice(extra);
        Server::start(&args)
    }

    /// `clusterdns serve <args>` with every listener on 127.0.0.1:0 unless `args` sets it.
    pub fn start(args: &[&str]) -> Server {
        Server::start_with_defaults(args, true, &[])
    }

    /// As [`Server::start`], but the DNS listen addresses come from the config file given in
    /// `args` (a `--listen` flag would replace the file's list, and a reload could not change
    /// it). The HTTP listeners still default to port 0.
    pub fn start_listen_from_config(args: &[&str]) -> Server {
        Server::start_with_defaults(args, false, &[])
    }

    /// As [`Server::start`], with extra environment variables for the server process.
    pub fn start_env(args: &[&str], env: &[(&str, &str)]) -> Server {
        Server::start_with_defaults(args, true, env)
    }

    fn start_with_defaults(args: &[&str], default_listen: bool, env: &[(&str, &str)]) -> Server {
        let mut command = Command::new(env!("CARGO_BIN_EXE_clusterdns"));
        command.arg("serve");
        for (flag, default) in [
            ("--listen", "127.0.0.1:0"),
            ("--metrics-listen", "127.0.0.1:0"),
            ("--health-listen", "127.0.0.1:0"),
            ("--ready-listen", "127.0.0.1:0"),
            ("--admin-listen", "127.0.0.1:0"),
        ] {
            if flag == "--listen" && !default_listen {
                continue;
            }
            if !args.contains(&flag) {
                command.args([flag, default]);
            }
        }
        command
            .args(args)
            .env("RUST_LOG", "clusterdns=debug")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("start clusterdns");
        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(pipe) = child.stderr.take() {
            let stderr = stderr.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if let Ok(mut log) = stderr.lock() {
                        log.push_str(&line);
                        log.push('\n');
                    }
                }
            });
        }
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout is piped");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let admin_off = args
            .windows(2)
            .any(|w| w[0] == "--admin-listen" && w[1] == "off");
        let expected = if admin_off { 4 } else { 5 };
        let mut listening = std::collections::HashMap::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while listening.len() < expected {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let mut words = line.split_whitespace();
                    if let (Some("listening"), Some(kind), Some(addr)) =
                        (words.next(), words.next(), words.next())
                    {
                        let addr: SocketAddr = addr.parse().expect("announced address");
                        listening.insert(kind.to_string(), addr);
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let log = stderr.lock().map(|s| s.clone()).unwrap_or_default();
                    panic!("clusterdns did not announce its listeners; stderr:\n{log}");
                }
            }
        }
        let addr = |kind: &str| listening[kind];
        Server {
            dns: addr("dns"),
            metrics: addr("metrics"),
            health: addr("health"),
            ready: addr("ready"),
            admin: listening.get("admin").copied(),
            child,
            stderr,
        }
    }

    /// The server's resident memory from /proc (kB): (current VmRSS, peak VmHWM).
    pub fn memory_kb(&self) -> Option<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        };
        Some((field("VmRSS:")?, field("VmHWM:")?))
    }

    /// Sends SIGTERM and waits (at most 10 s) for the process to exit; its exit status.
    pub fn terminate_and_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.terminate();
        self.wait_exit(Duration::from_secs(10))
    }

    /// Sends SIGHUP (reload the config).
    pub fn hangup(&self) {
        let status = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -HUP failed");
    }

    /// Sends SIGTERM (what the kubelet sends to stop a pod).
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits up to `within` for the process to exit; its exit status if it did.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Whether the log shows `text` within `within` (the log reaches the test through a
    /// reader thread, a moment after the server wrote it).
    pub fn log_shows(&self, text: &str, within: Duration) -> bool {
        eventually(within, || self.log().contains(text))
    }

    /// Asks over UDP and returns the parsed answer (panics on timeout).
    pub fn udp(&self, query: &Message) -> Message {
        let bytes = self
            .udp_raw(&query.to_vec().expect("encode query"))
            .expect("an answer over UDP");
        parse_answer(query, &bytes)
    }

    /// Sends raw bytes over UDP; the raw answer, or `None` after `wait`.
    pub fn udp_raw_wait(&self, packet: &[u8], wait: Duration) -> Option<Vec<u8>> {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind client");
        socket.set_read_timeout(Some(wait)).expect("timeout");
        socket.send_to(packet, self.dns).expect("send");
        let mut buf = vec![0u8; 65535];
        match socket.recv(&mut buf) {
            Ok(len) => Some(buf[..len].to_vec()),
            Err(_) => None,
        }
    }

    /// Sends raw bytes over UDP; the raw answer, or `None` after [`IO_TIMEOUT`].
    pub fn udp_raw(&self, packet: &[u8]) -> Option<Vec<u8>> {
        self.udp_raw_wait(packet, IO_TIMEOUT)
    }

    /// Asks over a fresh TCP connection.
    pub fn tcp(&self, query: &Message) -> Message {
        let mut stream = self.tcp_connect();
        write_framed(&mut stream, &query.to_vec().expect("encode query"));
        let bytes = read_framed(&mut stream).expect("an answer over TCP");
        parse_answer(query, &bytes)
    }

    /// A TCP connection to the DNS port with I/O timeouts set.
    pub fn tcp_connect(&self) -> TcpStream {
        let stream = TcpStream::connect_timeout(&self.dns, IO_TIMEOUT).expect("connect TCP");
        stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        stream.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
        stream
    }

    /// Asks over UDP and over TCP, checks both answers are the same, returns the UDP one.
    pub fn both(&self, query: &Message) -> Message {
        let udp = self.udp(query);
        let tcp = self.tcp(query);
        assert_eq!(
            udp.metadata.response_code, tcp.metadata.response_code,
            "rcode UDP vs TCP"
        );
        assert_eq!(
            sorted(&udp.answers),
            sorted(&tcp.answers),
            "answers UDP vs TCP"
        );
        assert_eq!(udp.authorities, tcp.authorities, "authority UDP vs TCP");
        udp
    }

    /// The text of `/metrics`.
    pub fn metrics_text(&self) -> String {
        let (status, body) = http_get(self.metrics, "/metrics");
        assert_eq!(status, 200, "/metrics status");
        body
    }

    /// The value of one sample of `/metrics` (0 when absent). `labels` is the exact label
    /// set as Prometheus prints it, e.g. `proto="udp"`, or "" for none.
    pub fn metric(&self, name: &str, labels: &str) -> f64 {
        metric_value(&self.metrics_text(), name, labels)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The sum of the samples of metric `name` whose labels include every `key="value"` pair of
/// `labels` (comma-separated, as Prometheus prints them; "" matches every series). 0 when
/// none match. A subset, so tests need not spell labels they do not care about (`server`,
/// `zone`, ...), and an exact label set still selects exactly its one series.
pub fn metric_value(text: &str, name: &str, labels: &str) -> f64 {
    let wanted: Vec<&str> = split_labels(labels);
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter_map(|(series, value)| {
            let (series_name, series_labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.strip_suffix('}').unwrap_or(rest)),
                None => (series, ""),
            };
            (series_name == name).then_some((series_labels, value))
        })
        .filter(|(series_labels, _)| {
            let have = split_labels(series_labels);
            wanted.iter().all(|w| have.contains(w))
        })
        .map(|(_, value)| value.parse::<f64>().expect("numeric sample"))
        .sum()
}

/// `a="x",b="y,z"` -> [`a="x"`, `b="y,z"`] (commas inside quotes are kept).
fn split_labels(labels: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, c) in labels.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(labels[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    let last = labels[start..].trim();
    if !last.is_empty() {
        out.push(last);
    }
    out
}

/// A GET over a plain HTTP/1.1 connection: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect HTTP");
    stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read HTTP response");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("HTTP status");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Polls `check` every 20 ms until it holds or `within` passes; true if it held.
pub fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A query with RD set and a random id.
pub fn query(name: &str, qtype: RecordType) -> Message {
    let mut message = Message::query();
    message.metadata.id = rand::random();
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(
        // from_ascii keeps the case as written (from_str lowercases), so case echo is tested.
        Name::from_ascii(name).expect("valid name"),
        qtype,
    ));
    message
}

/// A query with an EDNS OPT advertising `payload` bytes.
pub fn query_edns(name: &str, qtype: RecordType, payload: u16) -> Message {
    let mut message = query(name, qtype);
    let mut edns = Edns::new();
    edns.set_max_payload(payload);
    message.edns = Some(edns);
    message
}

/// Parses an answer and checks it belongs to `query` (id, QR, opcode, question echoed
/// byte for byte, including the case of the name).
pub fn parse_answer(query: &Message, bytes: &[u8]) -> Message {
    let answer = Message::from_vec(bytes).expect("the answer parses");
    assert_eq!(answer.metadata.id, query.metadata.id, "id echoed");
    assert_eq!(
        answer.metadata.message_type,
        MessageType::Response,
        "QR set"
    );
    assert_eq!(answer.metadata.op_code, OpCode::Query);
    assert_eq!(answer.queries.len(), query.queries.len(), "question echoed");
    for (a, q) in answer.queries.iter().zip(&query.queries) {
        assert!(
            a.name().eq_case(q.name()),
            "question case echoed: {} vs {}",
            a.name(),
            q.name()
        );
        assert_eq!(a.query_type(), q.query_type());
    }
    assert_eq!(
        answer.metadata.recursion_desired, query.metadata.recursion_desired,
        "RD echoed"
    );
    answer
}

/// Asks `dns` over UDP from a thread of its own (for questions that must be in flight while
/// the test does something else); joining gives the parsed answer.
pub fn udp_in_background(dns: SocketAddr, name: &'static str) -> std::thread::JoinHandle<Message> {
    std::thread::spawn(move || {
        let q = query(name, RecordType::A);
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        socket
            .send_to(&q.to_vec().expect("encode"), dns)
            .expect("send");
        let mut buf = vec![0u8; 4096];
        let len = socket.recv(&mut buf).expect("an answer over UDP");
        parse_answer(&q, &buf[..len])
    })
}

/// Writes one length-prefixed DNS message.
pub fn write_framed(stream: &mut TcpStream, bytes: &[u8]) {
    let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(bytes);
    stream.write_all(&framed).expect("write TCP");
}

/// Reads one length-prefixed DNS message; `None` when the server closed the connection.
pub fn read_framed(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).ok()?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut buf).ok()?;
    Some(buf)
}

/// Records as comparable strings, sorted (answer order rotates between queries).
pub fn sorted(records: &[Record]) -> Vec<String> {
    let mut out: Vec<String> = records.iter().map(|r| r.to_string()).collect();
    out.sort();
    out
}

/// The rdata of `records` of type `rtype` as text, sorted.
pub fn rdata(records: &[Record], rtype: RecordType) -> Vec<String> {
    let mut out: Vec<String> = records
        .iter()
        .filter(|r| r.record_type() == rtype)
        .map(|r| r.data.to_string())
        .collect();
    out.sort();
    out
}

/// A loopback port, free for UDP and TCP now, for a process the test starts later on a
/// port it must know in advance. Taken below the kernel's ephemeral range (32768 and up on
/// Linux), so that no other test's port-0 socket can take it in the meantime.
pub fn unused_port() -> u16 {
    for _ in 0..1000 {
        let port = rand::random_range(20_000..32_000);
        if UdpSocket::bind(("127.0.0.1", port)).is_ok()
            && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
        {
            return port;
        }
    }
    panic!("no free loopback port in 20000..32000");
}

/// A loopback UDP/TCP port with nothing listening (the kernel refuses at once).
/// Drawn as [`unused_port`] is, so a parallel test's port-0 listener cannot be behind it.
pub fn closed_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], unused_port()))
}

/// How a [`FakeUpstream`] reacts to a query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamMode {
    /// Answer every A query with 203.0.113.53 (TTL 300), every other type NOERROR/empty;
    /// names under `nx.example.org.` get NXDOMAIN.
    Answer,
    /// Receive and never answer.
    Silent,
    /// As `Answer`, but each answer leaves after this many milliseconds.
    Slow(u64),
    /// Pass every query on to this address and its answer back: a resolver that leads
    /// back to the server under test when pointed at it (the forwarding-loop trap).
    Relay(SocketAddr),
}

/// A resolver the test runs itself on 127.0.0.1 (UDP and TCP on the same port).
pub struct FakeUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Queries received (UDP and TCP).
    pub received: Arc<AtomicUsize>,
    /// The last question received, as `name type`.
    pub last_question: Arc<Mutex<Option<String>>>,
    silenced: Arc<std::sync::atomic::AtomicBool>,
}

/// TTL of the SOA a fake upstream sends with NXDOMAIN.
pub const UPSTREAM_SOA_TTL: u32 = 600;
/// MINIMUM of that SOA: the negative TTL (RFC 2308: the smaller of the two).
pub const UPSTREAM_SOA_MINIMUM: u32 = 60;

/// The address every fake upstream answers A queries with.
pub const UPSTREAM_A: [u8; 4] = [203, 0, 113, 53];

impl FakeUpstream {
    /// Starts one; its threads live until the test process ends.
    pub fn start(mode: UpstreamMode) -> FakeUpstream {
        // The UDP port the kernel picks may already be taken for TCP (by a client connection
        // of another test, say): pick again, as the server itself does.
        let (udp, addr, tcp) = (0..20)
            .find_map(|_| {
                let udp = UdpSocket::bind("127.0.0.1:0").expect("bind fake upstream");
                let addr = udp.local_addr().expect("addr");
                let tcp = std::net::TcpListener::bind(addr).ok()?;
                Some((udp, addr, tcp))
            })
            .expect("bind fake upstream UDP and TCP on one port");
        let received = Arc::new(AtomicUsize::new(0));
        let last_question = Arc::new(Mutex::new(None));
        let silenced = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let state = (received.clone(), last_question.clone(), silenced.clone());
        let udp = Arc::new(udp);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok((len, peer)) = udp.recv_from(&mut buf) {
                let (request, state, udp) = (buf[..len].to_vec(), state.clone(), udp.clone());
                // One thread per query, so a slow answer does not hold up the others.
                std::thread::spawn(move || {
                    if let Some(answer) = upstream_answer(mode, &request, &state) {
                        let _ = udp.send_to(&answer, peer);
                    }
                });
            }
        });
        let state = (received.clone(), last_question.clone(), silenced.clone());
        std::thread::spawn(move || {
            for stream in tcp.incoming() {
                let Ok(mut stream) = stream else { continue };
                let state = state.clone();
                std::thread::spawn(move || {
                    while let Some(request) = read_framed(&mut stream) {
                        if let Some(answer) = upstream_answer(mode, &request, &state) {
                            write_framed(&mut stream, &answer);
                        }
                    }
                });
            }
        });
        FakeUpstream {
            addr,
            received,
            last_question,
            silenced,
        }
    }

    /// From now on, receive and never answer (an upstream that died).
    pub fn go_silent(&self) {
        self.silenced.store(true, Ordering::SeqCst);
    }

    /// Queries received so far.
    pub fn count(&self) -> usize {
        self.received.load(Ordering::SeqCst)
    }
}

type UpstreamState = (
    Arc<AtomicUsize>,
    Arc<Mutex<Option<String>>>,
    Arc<std::sync::atomic::AtomicBool>,
);

/// The server's startup loop probes are for names under this domain (see
/// src/upstream/loop_check.rs); a fake upstream answers them without counting them, so
/// tests count only the questions they caused.
const LOOP_PROBE_DOMAIN: &str = "clusterdns-loop.invalid.";

fn upstream_answer(mode: UpstreamMode, wire: &[u8], state: &UpstreamState) -> Option<Vec<u8>> {
    let request = Message::from_vec(wire).ok()?;
    let question = request.queries.first()?.clone();
    if let UpstreamMode::Relay(target) = mode {
        let socket = UdpSocket::bind("127.0.0.1:0").ok()?;
        socket.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        socket.send_to(wire, target).ok()?;
        let mut buf = vec![0u8; 65535];
        let len = socket.recv(&mut buf).ok()?;
        return Some(buf[..len].to_vec());
    }
    let probe = Name::from_ascii(LOOP_PROBE_DOMAIN)
        .expect("valid")
        .zone_of(question.name());
    if !probe {
        state.0.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut last) = state.1.lock() {
            *last = Some(format!("{} {}", question.name(), question.query_type()));
        }
    }
    if state.2.load(Ordering::SeqCst) {
        return None;
    }
    match mode {
        UpstreamMode::Silent => return None,
        UpstreamMode::Slow(ms) => std::thread::sleep(Duration::from_millis(ms)),
        _ => {}
    }
    let mut answer = Message::response(request.metadata.id, request.metadata.op_code);
    answer.metadata.recursion_desired = request.metadata.recursion_desired;
    answer.metadata.recursion_available = true;
    answer.queries = request.queries.clone();
    let nx = Name::from_str("nx.example.org.").expect("valid");
    if probe || nx.zone_of(question.name()) {
        answer.metadata.response_code = hickory_proto::op::ResponseCode::NXDomain;
        answer.authorities.push(Record::from_rdata(
            nx.clone(),
            UPSTREAM_SOA_TTL,
            RData::SOA(hickory_proto::rr::rdata::SOA::new(
                Name::from_ascii("ns.example.org.").expect("valid"),
                Name::from_ascii("hostmaster.example.org.").expect("valid"),
                1,
                7200,
                1800,
                86400,
                UPSTREAM_SOA_MINIMUM,
            )),
        ));
    } else if question.query_type() == RecordType::A {
        let [a, b, c, d] = UPSTREAM_A;
        answer.answers.push(Record::from_rdata(
            question.name().clone(),
            300,
            RData::A(A::new(a, b, c, d)),
        ));
    }
    answer.to_vec().ok()
}

/// Sends raw bytes over UDP to `addr` from a socket of the same address family (IPv4 or
/// IPv6 loopback); the raw answer, or `None` after `wait`.
pub fn udp_raw_to(addr: SocketAddr, packet: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let local = if addr.is_ipv6() {
        "[::1]:0"
    } else {
        "127.0.0.1:0"
    };
    let socket = UdpSocket::bind(local).expect("bind client");
    socket.set_read_timeout(Some(wait)).expect("timeout");
    socket.send_to(packet, addr).expect("send");
    let mut buf = vec![0u8; 65535];
    match socket.recv(&mut buf) {
        Ok(len) => Some(buf[..len].to_vec()),
        Err(_) => None,
    }
}

/// How a TCP connection ended, as seen by a reader waiting for more bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpEnd {
    /// The server closed it (FIN).
    Closed,
    /// The server reset it (RST), or it broke otherwise.
    Reset,
    /// Still open when the read timeout passed.
    Open,
    /// The server sent more bytes.
    Data,
}

/// Waits (up to the stream's read timeout) for the server to end the connection, without
/// sending anything; a byte from the server is reported as [`TcpEnd::Data`].
pub fn wait_tcp_end(stream: &mut TcpStream) -> TcpEnd {
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => TcpEnd::Closed,
        Ok(_) => TcpEnd::Data,
        Err(error)
            if matches!(
                error.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            TcpEnd::Open
        }
        Err(_) => TcpEnd::Reset,
    }
}

impl Server {
    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// File descriptors the server has open right now (entries of /proc/<pid>/fd).
    pub fn open_fds(&self) -> Option<usize> {
        Some(
            std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
                .ok()?
                .count(),
        )
    }
}

/// The soft limit on open files of this process (from /proc/self/limits); `None` if unknown
/// or unlimited.
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|soft| soft.parse().ok())
}
