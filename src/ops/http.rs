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
use tracing::warn;

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
