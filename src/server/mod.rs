//! The DNS server: sockets and the tasks that read and write them, nothing else.
//!
//! Every listen address gets UDP and TCP on the same port (with port 0, the port the kernel
//! picks for UDP is then taken for TCP too). UDP has one SO_REUSEPORT socket per worker;
//! answers come from the [`handler::Handler`], which is the only place that knows DNS.

pub mod batch;
pub mod handler;
pub mod prebuilt;
pub mod rate_limit;
pub mod socket;
pub mod tcp;
pub mod udp;

use crate::config::ServerConfig;
use crate::ops::metrics::Metrics;
use crate::ops::query_metrics::{Proto, QueryMetrics};
use handler::Handler;
use socket::BufferSizes;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// UDP sockets and a TCP listener bound on one address.
pub struct DnsListener {
    addr: SocketAddr,
    udp: Vec<std::net::UdpSocket>,
    tcp: std::net::TcpListener,
}

impl DnsListener {
    /// The address actually bound (the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Binds UDP and TCP on `addr`. With port 0 the UDP port is chosen first and TCP takes the
/// same number, retrying a few times if TCP already has it in use.
pub fn bind(addr: SocketAddr, config: &ServerConfig) -> io::Result<DnsListener> {
    let workers = config.effective_udp_workers();
    let buffers = BufferSizes {
        recv: config.recv_buffer_bytes,
        send: config.send_buffer_bytes,
    };
    let mut attempts = 0;
    loop {
        attempts += 1;
        let first = socket::bind_udp(addr, buffers)?;
        let bound = first.local_addr()?;
        let tcp = match socket::bind_tcp(bound) {
            Ok(tcp) => tcp,
            Err(error)
                if addr.port() == 0
                    && error.kind() == io::ErrorKind::AddrInUse
                    && attempts < 20 =>
            {
                continue;
            }
            Err(error) => return Err(error),
        };
        let mut udp = vec![first];
        for _ in 1..workers {
            udp.push(socket::bind_udp(bound, buffers)?);
        }
        return Ok(DnsListener {
            addr: bound,
            udp,
            tcp,
        });
    }
}

/// Starts the UDP workers and the TCP acceptor of every listener. Must run inside a tokio
/// runtime. The tasks stop when `cancel` fires.
pub fn spawn(
    listeners: Vec<DnsListener>,
    handler: Arc<Handler>,
    metrics: Arc<Metrics>,
    config: &ServerConfig,
    cancel: CancellationToken,
) -> io::Result<JoinSet<()>> {
    let limits = tcp::TcpLimits {
        idle_timeout: config.tcp_idle_timeout,
        max_connections: config.max_tcp_connections,
        max_queries_per_connection: config.max_tcp_queries_per_connection,
    };
    let mut tasks = JoinSet::new();
    for listener in listeners {
        let udp_metrics = Arc::new(QueryMetrics::new(
            metrics.clone(),
            listener.addr,
            Proto::Udp,
        ));
        for socket in listener.udp {
            // Counted (kernel drops, queue) while its worker runs.
            let tracked = metrics.udp_sockets.track(listener.addr, &socket);
            let socket = Arc::new(tokio::net::UdpSocket::from_std(socket)?);
            let worker = udp::serve(socket, handler.clone(), udp_metrics.clone(), cancel.clone());
            tasks.spawn(async move {
                worker.await;
                drop(tracked);
            });
        }
        let tcp_metrics = Arc::new(QueryMetrics::new(
            metrics.clone(),
            listener.addr,
            Proto::Tcp,
        ));
        let tcp = tokio::net::TcpListener::from_std(listener.tcp)?;
        tasks.spawn(tcp::serve(
            tcp,
            handler.clone(),
            tcp_metrics,
            limits,
            cancel.clone(),
        ));
    }
    Ok(tasks)
}

/// One listen address being served: its UDP workers and TCP acceptor, stoppable on its own
/// (a config reload removes a listen address without touching the others).
pub struct RunningListener {
    /// The address as configured (port 0 stays 0 here).
    pub configured: SocketAddr,
    /// The address actually bound.
    pub bound: SocketAddr,
    cancel: CancellationToken,
    tasks: JoinSet<()>,
}

impl RunningListener {
    /// Binds `addr` (UDP and TCP) and starts serving it. Must run inside a tokio runtime.
    pub fn start(
        addr: SocketAddr,
        handler: Arc<Handler>,
        metrics: Arc<Metrics>,
        config: &ServerConfig,
    ) -> io::Result<RunningListener> {
        RunningListener::serve(addr, bind(addr, config)?, handler, metrics, config)
    }

    /// Starts serving `listener`, bound earlier for the configured address `addr`.
    pub fn serve(
        addr: SocketAddr,
        listener: DnsListener,
        handler: Arc<Handler>,
        metrics: Arc<Metrics>,
        config: &ServerConfig,
    ) -> io::Result<RunningListener> {
        let bound = listener.local_addr();
        let cancel = CancellationToken::new();
        let tasks = spawn(vec![listener], handler, metrics, config, cancel.clone())?;
        Ok(RunningListener {
            configured: addr,
            bound,
            cancel,
            tasks,
        })
    }

    /// Stops reading new queries; answers already being written finish.
    pub async fn stop(mut self) {
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Debug builds only (what `cargo test` runs): when `CLUSTERDNS_TEST_PANIC_NAME` is set in
/// the server's environment, a question for exactly that name panics inside
/// [`handler::Handler::handle`], so the integration tests can check that a panic on the query
/// path is caught and counted and that every socket keeps serving. Read once; a release build
/// has no hook at all.
#[cfg(debug_assertions)]
pub(crate) fn injected_panic(name: &hickory_proto::rr::Name) {
    static NAME: std::sync::OnceLock<Option<hickory_proto::rr::Name>> = std::sync::OnceLock::new();
    let injected = NAME.get_or_init(|| {
        std::env::var("CLUSTERDNS_TEST_PANIC_NAME")
            .ok()
            .and_then(|name| hickory_proto::rr::Name::from_ascii(name).ok())
    });
    if injected.as_ref() == Some(name) {
        panic!("CLUSTERDNS_TEST_PANIC_NAME: injected panic for {name}");
    }
}

/// Whether the test hook above is armed (prebuilt answers then stand aside, so that the
/// hook sees every question).
#[cfg(debug_assertions)]
pub(crate) fn injected_panic_armed() -> bool {
    static ARMED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ARMED.get_or_init(|| std::env::var_os("CLUSTERDNS_TEST_PANIC_NAME").is_some())
}

/// Release builds: no test hook.
#[cfg(not(debug_assertions))]
#[inline(always)]
pub(crate) fn injected_panic_armed() -> bool {
    false
}

/// Release builds: no test hook.
#[cfg(not(debug_assertions))]
#[inline(always)]
pub(crate) fn injected_panic(_name: &hickory_proto::rr::Name) {}

/// An answer from the upstream path: at once, or a future to run on a task of its own.
pub(crate) enum UpstreamAnswer {
    /// Answered already (a cache hit); `None` when the handler panicked (counted).
    Ready(Option<Vec<u8>>),
    /// Waiting on an upstream: run it off the socket's loop.
    Waiting(Pin<Box<dyn Future<Output = Option<Vec<u8>>> + Send>>),
}

/// Starts answering a question that needs the upstream path. It is polled once here, with a
/// waker that does nothing: a cache hit is ready at once and is answered on the caller's loop,
/// without the cost of a task (measured: +28% cache-hit answers per core). Otherwise the task
/// that runs it re-polls it with a real waker (every future registers the waker of each poll).
pub(crate) fn start_upstream(
    handler: &Arc<Handler>,
    pending: Box<handler::Pending>,
    listener_metrics: &Arc<QueryMetrics>,
    peer: SocketAddr,
) -> UpstreamAnswer {
    let handler = handler.clone();
    let listener_metrics = listener_metrics.clone();
    let mut answer: Pin<Box<dyn Future<Output = Option<Vec<u8>>> + Send>> =
        Box::pin(async move { finish_caught(&handler, pending, &listener_metrics, peer).await });
    match answer
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(bytes) => UpstreamAnswer::Ready(bytes),
        Poll::Pending => UpstreamAnswer::Waiting(answer),
    }
}

/// [`handler::Handler::finish`], with a panic caught and counted in `coredns_panics_total`
/// like one in `handle` (the answer is then not sent).
async fn finish_caught(
    handler: &Handler,
    pending: Box<handler::Pending>,
    listener_metrics: &QueryMetrics,
    peer: SocketAddr,
) -> Option<Vec<u8>> {
    use futures::FutureExt;
    match std::panic::AssertUnwindSafe(handler.finish(pending))
        .catch_unwind()
        .await
    {
        Ok(bytes) => Some(bytes),
        Err(_) => {
            listener_metrics.all().panics.inc();
            tracing::error!(%peer, "handler panicked on an upstream answer; dropped it");
            None
        }
    }
}
