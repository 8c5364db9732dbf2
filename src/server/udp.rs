//! UDP workers: each owns one SO_REUSEPORT socket, reads the queries waiting on it in one
//! batch ([`super::batch`]), answers zone queries inline, without a task per datagram, and
//! sends the batch's answers together; only questions that wait on an upstream get a task of
//! their own (which sends its answer when it comes).

use super::UpstreamAnswer;
use super::batch::{Inbox, Outbox};
use super::handler::{Handler, Outcome};
use crate::ops::query_metrics::{QueryMetrics, Tally};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error};

/// Runs one UDP worker until `cancel` fires.
pub async fn serve(
    socket: Arc<UdpSocket>,
    handler: Arc<Handler>,
    listener_metrics: Arc<QueryMetrics>,
    cancel: CancellationToken,
) {
    let mut inbox = Inbox::default();
    let mut outbox = Outbox::default();
    let mut tally = Tally::new(&listener_metrics);
    loop {
        let count = tokio::select! {
            _ = cancel.cancelled() => return,
            received = inbox.receive(&socket) => match received {
                Ok(count) => count,
                Err(error) => {
                    // ICMP errors from earlier sends surface here on some systems; keep going.
                    debug!(%error, "UDP receive error");
                    continue;
                }
            },
        };
        let received = Instant::now();
        for index in 0..count {
            let Some(datagram) = inbox.get(index) else {
                continue;
            };
            if datagram.oversize {
                listener_metrics
                    .all()
                    .malformed_packets
                    .with_label_values(&["oversize"])
                    .inc();
                debug!(peer = %datagram.peer, "UDP datagram longer than any query; dropped");
                continue;
            }
            answer(
                (&socket, &handler, &listener_metrics),
                datagram.bytes,
                datagram.peer,
                (received, &mut tally),
                &mut outbox,
            );
        }
        tally.flush(&listener_metrics, received);
        outbox.flush(&socket).await;
    }
}

/// Answers one datagram: into `outbox` when the answer is ready now, else from a task that
/// waits for the upstream.
fn answer(
    (socket, handler, listener_metrics): (&Arc<UdpSocket>, &Arc<Handler>, &Arc<QueryMetrics>),
    packet: &[u8],
    peer: SocketAddr,
    (received, tally): (Instant, &mut Tally),
    outbox: &mut Outbox,
) {
    // A bug triggered by one packet must not end the worker (and with it a share of the
    // port's traffic, spread by SO_REUSEPORT): drop that packet and go on.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        handler.handle_received(packet, peer, listener_metrics, received, Some(tally))
    }));
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(_) => {
            listener_metrics.all().panics.inc();
            error!(%peer, len = packet.len(), "handler panicked on a UDP packet; dropped it");
            return;
        }
    };
    match outcome {
        Outcome::Reply(bytes) => outbox.push(bytes, peer),
        Outcome::Drop => {}
        Outcome::Upstream(pending) => {
            match super::start_upstream(handler, pending, listener_metrics, peer) {
                UpstreamAnswer::Ready(Some(bytes)) => outbox.push(bytes, peer),
                UpstreamAnswer::Ready(None) => {}
                UpstreamAnswer::Waiting(answer) => {
                    let socket = socket.clone();
                    tokio::spawn(async move {
                        if let Some(bytes) = answer.await
                            && let Err(error) = socket.send_to(&bytes, peer).await
                        {
                            debug!(%peer, %error, "UDP send failed");
                        }
                    });
                }
            }
        }
    }
}
