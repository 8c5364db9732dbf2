//! UDP workers: each owns one SO_REUSEPORT socket and answers zone queries inline, without a
//! task per datagram; only questions that need the upstream get a task of their own.

use super::UpstreamAnswer;
use super::handler::{Handler, Outcome};
use crate::ops::query_metrics::QueryMetrics;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error};

/// Largest datagram read; anything longer is not a DNS query we answer.
const MAX_DATAGRAM: usize = 65535;

/// Runs one UDP worker until `cancel` fires.
pub async fn serve(
    socket: Arc<UdpSocket>,
    handler: Arc<Handler>,
    listener_metrics: Arc<QueryMetrics>,
    cancel: CancellationToken,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (len, peer) = tokio::select! {
            _ = cancel.cancelled() => return,
            received = socket.recv_from(&mut buf) => match received {
                Ok(received) => received,
                Err(error) => {
                    // ICMP errors from earlier sends surface here on some systems; keep going.
                    debug!(%error, "UDP receive error");
                    continue;
                }
            },
        };
        // A bug triggered by one packet must not end the worker (and with it a share of the
        // port's traffic, spread by SO_REUSEPORT): drop that packet and go on.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            handler.handle(&buf[..len], peer, &listener_metrics)
        }));
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(_) => {
                listener_metrics.all().panics.inc();
                error!(%peer, len, "handler panicked on a UDP packet; dropped it");
                continue;
            }
        };
        match outcome {
            Outcome::Reply(bytes) => send(&socket, &bytes, peer).await,
            Outcome::Drop => {}
            Outcome::Upstream(pending) => {
                match super::start_upstream(&handler, pending, &listener_metrics, peer) {
                    UpstreamAnswer::Ready(Some(bytes)) => send(&socket, &bytes, peer).await,
                    UpstreamAnswer::Ready(None) => {}
                    UpstreamAnswer::Waiting(answer) => {
                        let socket = socket.clone();
                        tokio::spawn(async move {
                            if let Some(bytes) = answer.await {
                                send(&socket, &bytes, peer).await;
                            }
                        });
                    }
                }
            }
        }
    }
}

async fn send(socket: &UdpSocket, bytes: &[u8], peer: SocketAddr) {
    if let Err(error) = socket.send_to(bytes, peer).await {
        debug!(%peer, %error, "UDP send failed");
    }
}
