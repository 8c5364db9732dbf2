//! TCP: length-prefixed messages (RFC 1035 4.2.2), several queries per connection answered
//! as they complete (pipelining, RFC 7766 6.2.1.1), an idle timeout, and a cap on connections.

use super::handler::{Handler, Outcome};
use crate::ops::query_metrics::QueryMetrics;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error};

/// TCP limits.
#[derive(Clone, Copy, Debug)]
pub struct TcpLimits {
    /// A connection with no query for this long is closed; so is one whose client takes
    /// none of an answer's bytes for this long.
    pub idle_timeout: Duration,
    /// Connections beyond this are closed at once (and counted).
    pub max_connections: usize,
    /// Queries answered on one connection before it is closed; 0 = unlimited.
    pub max_queries_per_connection: usize,
}

/// Accepts connections until `cancel` fires.
pub async fn serve(
    listener: TcpListener,
    handler: Arc<Handler>,
    listener_metrics: Arc<QueryMetrics>,
    limits: TcpLimits,
    cancel: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    loop {
        let (stream, peer) = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    debug!(%error, "TCP accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            listener_metrics.all().tcp_connections_rejected.inc();
            debug!(%peer, "TCP connection refused: max_tcp_connections reached");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let cancel = cancel.clone();
        let listener_metrics = listener_metrics.clone();
        tokio::spawn(async move {
            connection(stream, peer, handler, listener_metrics, limits, cancel).await;
            drop(slot);
        });
    }
}

/// Why the reading side of a connection stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// The client closed, reset, or sent nothing for the idle timeout; or the server stops.
    Done,
    /// `max_tcp_queries_per_connection` was reached: the client may still be sending.
    Limit,
}

/// One connection: a reader that answers zone queries inline and hands upstream questions to
/// tasks, and a writer that sends answers in the order they are ready.
///
/// A write that makes no progress for the idle timeout ends the connection: a client that
/// asks and never reads would otherwise hold its slot (and a task) forever.
async fn connection(
    stream: TcpStream,
    peer: std::net::SocketAddr,
    handler: Arc<Handler>,
    listener_metrics: Arc<QueryMetrics>,
    limits: TcpLimits,
    cancel: CancellationToken,
) {
    let (mut reader, mut writer) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(64);
    let idle = limits.idle_timeout;
    let writer_task = tokio::spawn(async move {
        while let Some(bytes) = rx.recv().await {
            let Ok(len) = u16::try_from(bytes.len()) else {
                continue;
            };
            let mut framed = Vec::with_capacity(bytes.len() + 2);
            framed.extend_from_slice(&len.to_be_bytes());
            framed.extend_from_slice(&bytes);
            match tokio::time::timeout(idle, writer.write_all(&framed)).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    debug!(%error, "TCP write failed; closing the connection");
                    return false;
                }
                Err(_) => {
                    debug!("TCP client does not read its answers; closing the connection");
                    return false;
                }
            }
        }
        matches!(
            tokio::time::timeout(idle, writer.shutdown()).await,
            Ok(Ok(()))
        )
    });
    let end = read_queries(
        &mut reader,
        peer,
        &tx,
        &handler,
        &listener_metrics,
        limits,
        &cancel,
    )
    .await;
    // Answers still being resolved upstream hold a sender; the writer finishes them first.
    drop(tx);
    let flushed = writer_task.await.unwrap_or(false);
    if end == End::Limit && flushed {
        // The client may have pipelined queries past the limit. Closing with them unread
        // would send a RST that can destroy answers still in flight; the FIN is out, so read
        // and discard until the client closes too (bounded by the idle timeout).
        let mut sink = [0u8; 1024];
        let _ = tokio::time::timeout(idle, async {
            while let Ok(n) = reader.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
    }
}

/// Reads and answers length-prefixed queries until the connection should end.
async fn read_queries(
    reader: &mut OwnedReadHalf,
    peer: std::net::SocketAddr,
    tx: &mpsc::Sender<Vec<u8>>,
    handler: &Arc<Handler>,
    listener_metrics: &Arc<QueryMetrics>,
    limits: TcpLimits,
    cancel: &CancellationToken,
) -> End {
    let mut answered = 0usize;
    let mut buf = Vec::new();
    loop {
        let mut len = [0u8; 2];
        let read = tokio::select! {
            _ = cancel.cancelled() => return End::Done,
            // The writer gave up (stalled or broken client): stop reading too.
            _ = tx.closed() => return End::Done,
            read = tokio::time::timeout(limits.idle_timeout, reader.read_exact(&mut len)) => read,
        };
        match read {
            Ok(Ok(_)) => {}
            Ok(Err(_)) | Err(_) => return End::Done, // closed by the peer, or idle too long
        }
        let len = usize::from(u16::from_be_bytes(len));
        buf.resize(len, 0);
        match tokio::time::timeout(limits.idle_timeout, reader.read_exact(&mut buf)).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) | Err(_) => return End::Done,
        }
        // As on UDP: a bug triggered by one query must not take the connection's task (and
        // its other queries) down uncounted. The query is dropped; the connection goes on.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            handler.handle(&buf, peer, listener_metrics)
        }));
        let Ok(outcome) = outcome else {
            listener_metrics.all().panics.inc();
            error!(%peer, len, "handler panicked on a TCP query; dropped it");
            continue;
        };
        match outcome {
            Outcome::Reply(bytes) => {
                if tx.send(bytes).await.is_err() {
                    return End::Done;
                }
            }
            Outcome::Drop => {}
            Outcome::Upstream(pending) => {
                match super::start_upstream(handler, pending, listener_metrics, peer) {
                    super::UpstreamAnswer::Ready(Some(bytes)) => {
                        if tx.send(bytes).await.is_err() {
                            return End::Done;
                        }
                    }
                    super::UpstreamAnswer::Ready(None) => {}
                    // Pipelined questions are answered as they complete, in any order.
                    super::UpstreamAnswer::Waiting(answer) => {
                        let tx = tx.clone();
                        tokio::spawn(async move {
                            if let Some(bytes) = answer.await {
                                let _ = tx.send(bytes).await;
                            }
                        });
                    }
                }
            }
        }
        answered += 1;
        if limits.max_queries_per_connection != 0 && answered >= limits.max_queries_per_connection {
            return End::Limit;
        }
    }
}
