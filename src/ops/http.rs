//! The operators' HTTP endpoints, each on its own listener as CoreDNS has them:
//! `/metrics` (Prometheus, :9153), `/health` (liveness, :8080), `/ready` (readiness, :8181).
//!
//! They read state (metrics, the zone's sync flag); they never change it.

use crate::ops::metrics::Metrics;
use crate::zone::Zone;
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// The router of the metrics listener.
pub fn metrics_router(metrics: Arc<Metrics>) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    metrics.render(),
                )
            }
        }),
    )
}

/// Whether the server is going away: set on SIGTERM, for the whole lameduck period.
#[derive(Debug, Default)]
pub struct Lifecycle {
    stopping: AtomicBool,
}

impl Lifecycle {
    /// Lameduck starts: /health and /ready answer 503 from now on.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// True once [`Lifecycle::stop`] was called.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }
}

const STOPPING: &str = "shutting down: lameduck, DNS still answers until it ends";

/// The router of the health listener: 200 while the process serves, 503 during lameduck.
pub fn health_router(lifecycle: Arc<Lifecycle>) -> Router {
    Router::new().route(
        "/health",
        get(move || {
            let lifecycle = lifecycle.clone();
            async move {
                if lifecycle.is_stopping() {
                    (StatusCode::SERVICE_UNAVAILABLE, STOPPING).into_response()
                } else {
                    (StatusCode::OK, "OK").into_response()
                }
            }
        }),
    )
}

/// Lines of detail appended to the `/ready` body: degraded states that do not make the
/// server unready (it still answers the cluster zone) but that an operator must see.
pub type ReadyDetail = Arc<dyn Fn() -> Vec<String> + Send + Sync>;

/// The router of the readiness listener: 200 once the zone has its initial data, 503 before
/// (kube-proxy then keeps the pod out of the DNS Service until it can answer for the cluster).
pub fn ready_router(zone: Arc<Zone>, lifecycle: Arc<Lifecycle>, detail: ReadyDetail) -> Router {
    Router::new().route(
        "/ready",
        get(move || {
            let zone = zone.clone();
            let detail = detail.clone();
            let lifecycle = lifecycle.clone();
            async move {
                let (status, head) = if lifecycle.is_stopping() {
                    (StatusCode::SERVICE_UNAVAILABLE, STOPPING)
                } else if zone.is_synced() {
                    (StatusCode::OK, "OK")
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not ready: initial cluster data not loaded yet",
                    )
                };
                let mut body = head.to_string();
                for line in detail() {
                    body.push('\n');
                    body.push_str(&line);
                }
                (status, body).into_response()
            }
        }),
    )
}

/// How often the server probes its own `/health`, and how long a probe may take (CoreDNS).
const HEALTH_PROBE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
const HEALTH_PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Probes this server's own `/health` on `addr` every second, as CoreDNS's `health` plugin
/// does, into `coredns_health_request_duration_seconds` (and
/// `coredns_health_request_failures_total` for a probe that fails or times out). A slow probe
/// means the process is overloaded (CPU throttled, runtime starved) before liveness fails.
pub async fn probe_health(addr: SocketAddr, metrics: Arc<Metrics>, cancel: CancellationToken) {
    let target = match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => {
            SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, addr.port()))
        }
        ip if ip.is_unspecified() => SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port())),
        _ => addr,
    };
    let mut ticks = tokio::time::interval(HEALTH_PROBE_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let started = std::time::Instant::now();
        match tokio::time::timeout(HEALTH_PROBE_TIMEOUT, get_health(target)).await {
            Ok(Ok(())) => metrics
                .health_duration
                .observe(started.elapsed().as_secs_f64()),
            Ok(Err(error)) => {
                metrics.health_failures.inc();
                debug!(%target, %error, "health self-probe failed");
            }
            Err(_) => {
                metrics.health_failures.inc();
                debug!(%target, "health self-probe timed out");
            }
        }
    }
}

/// One `GET /health`, read to the end of the status line (any status: during lameduck the
/// answer is 503, and that is the endpoint working).
async fn get_health(target: SocketAddr) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(target).await?;
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await?;
    if head.starts_with(b"HTTP/1.") {
        Ok(())
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not an HTTP response",
        ))
    }
}

/// Binds an HTTP listener (port 0 picks a free port).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

/// Serves `router` on `listener` until `cancel` fires.
pub async fn serve(listener: tokio::net::TcpListener, router: Router, cancel: CancellationToken) {
    let result = axum::serve(listener, router)
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await;
    if let Err(error) = result {
        warn!(%error, "HTTP listener stopped");
    }
}
