//! Upstream forwarding: sends a question the cluster zone does not own to the upstream
//! resolvers and brings back their answer.
//!
//! Owns: the upstream list, per-try timeouts and the overall deadline, message-id
//! randomisation and answer matching, the UDP-then-TCP fallback. Must not touch the zone or
//! build client responses (the handler does both); it returns the upstream's message as is.
//!
//! Policy here is deliberately basic (upstreams tried in order, one at a time); caching,
//! health checks and selection policies belong to the forwarding/cache issue.

pub mod resolv_conf;

use crate::config::UpstreamConfig;
use crate::ops::metrics::Metrics;
use hickory_proto::op::Message;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::{Instant, timeout_at};
use tracing::debug;

/// Largest UDP answer we accept from an upstream (the EDNS maximum).
const MAX_UPSTREAM_UDP: usize = 65_535;

/// Why no upstream answer could be produced. The handler turns every variant into SERVFAIL.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// No upstream resolver is configured (empty list, resolv.conf without nameservers).
    #[error("no upstream resolver configured")]
    NoUpstreams,
    /// The overall deadline passed before any upstream answered.
    #[error("no upstream answered within {0:?}")]
    Deadline(Duration),
    /// Every upstream failed fast (refused, unreachable, unparseable answers).
    #[error("every upstream failed; last error: {0}")]
    AllFailed(String),
    /// The question could not be encoded.
    #[error("cannot encode the upstream query: {0}")]
    Encode(String),
}

/// What one try against one upstream produced.
#[derive(Debug)]
enum TryError {
    /// The per-try timeout passed.
    Timeout,
    /// The upstream failed at once (ICMP refused, reset, malformed answer...).
    Failed(String),
}

/// Forwards questions to a fixed list of upstream resolvers.
pub struct Forwarder {
    upstreams: Vec<SocketAddr>,
    try_timeout: Duration,
    deadline: Duration,
    metrics: Arc<Metrics>,
}

impl Forwarder {
    /// A forwarder trying `upstreams` in order with the timeouts of `config`.
    pub fn new(upstreams: Vec<SocketAddr>, config: &UpstreamConfig, metrics: Arc<Metrics>) -> Self {
        Forwarder {
            upstreams,
            try_timeout: config.timeout,
            deadline: config.deadline.max(config.timeout),
            metrics,
        }
    }

    /// The upstream resolvers, in the order they are tried.
    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams
    }

    /// Sends `query` upstream and returns the first matching answer. Upstreams are tried in
    /// order, wrapping around, each for at most the per-try timeout, until the overall
    /// deadline; a round in which every upstream failed fast ends the attempt early.
    pub async fn forward(&self, query: &Message) -> Result<Message, ForwardError> {
        if self.upstreams.is_empty() {
            return Err(ForwardError::NoUpstreams);
        }
        let deadline = Instant::now() + self.deadline;
        let mut last_error = String::new();
        loop {
            let mut all_failed_fast = true;
            for &upstream in &self.upstreams {
                let now = Instant::now();
                if now >= deadline {
                    return Err(ForwardError::Deadline(self.deadline));
                }
                let try_deadline = deadline.min(now + self.try_timeout);
                match self.try_upstream(upstream, query, try_deadline).await {
                    Ok(answer) => {
                        self.count("ok");
                        return Ok(answer);
                    }
                    Err(TryError::Timeout) => {
                        self.count("timeout");
                        all_failed_fast = false;
                        debug!(%upstream, "upstream timed out");
                    }
                    Err(TryError::Failed(reason)) => {
                        self.count("error");
                        debug!(%upstream, %reason, "upstream failed");
                        last_error = format!("{upstream}: {reason}");
                    }
                }
            }
            if all_failed_fast {
                return Err(ForwardError::AllFailed(last_error));
            }
        }
    }

    fn count(&self, outcome: &str) {
        self.metrics
            .upstream_queries
            .with_label_values(&[outcome])
            .inc();
    }

    /// One try: UDP, then TCP when the UDP answer is truncated.
    async fn try_upstream(
        &self,
        upstream: SocketAddr,
        query: &Message,
        deadline: Instant,
    ) -> Result<Message, TryError> {
        let mut outgoing = query.clone();
        outgoing.metadata.id = rand::random();
        let wire = outgoing
            .to_vec()
            .map_err(|e| TryError::Failed(format!("cannot encode query: {e}")))?;
        let attempt = async {
            let answer = self.exchange_udp(upstream, &outgoing, &wire).await?;
            if answer.metadata.truncation {
                debug!(%upstream, "upstream answer truncated; retrying over TCP");
                return exchange_tcp(upstream, &outgoing, &wire).await;
            }
            Ok(answer)
        };
        match timeout_at(deadline, attempt).await {
            Ok(result) => result,
            Err(_) => Err(TryError::Timeout),
        }
    }

    async fn exchange_udp(
        &self,
        upstream: SocketAddr,
        outgoing: &Message,
        wire: &[u8],
    ) -> Result<Message, TryError> {
        let local: SocketAddr = if upstream.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = UdpSocket::bind(local).await.map_err(io_failure)?;
        // Connecting filters datagrams from other sources and surfaces ICMP port-unreachable
        // as an error, so a dead upstream fails fast instead of timing out.
        socket.connect(upstream).await.map_err(io_failure)?;
        socket.send(wire).await.map_err(io_failure)?;
        let mut buf = vec![0u8; MAX_UPSTREAM_UDP];
        loop {
            let len = socket.recv(&mut buf).await.map_err(io_failure)?;
            match matching_answer(outgoing, &buf[..len]) {
                Some(answer) => return Ok(answer),
                None => {
                    // Wrong id or question: a late answer to an earlier query or a spoof
                    // attempt. Keep waiting for the real one until the try times out.
                    self.count("mismatch");
                    debug!(%upstream, "discarded an upstream answer that does not match the query");
                }
            }
        }
    }
}

/// The answer over TCP (RFC 7766: two-byte length prefix).
async fn exchange_tcp(
    upstream: SocketAddr,
    outgoing: &Message,
    wire: &[u8],
) -> Result<Message, TryError> {
    let length = u16::try_from(wire.len())
        .map_err(|_| TryError::Failed("query longer than 65535 bytes".into()))?;
    let mut stream = TcpStream::connect(upstream).await.map_err(io_failure)?;
    let _ = stream.set_nodelay(true);
    let mut framed = Vec::with_capacity(wire.len() + 2);
    framed.extend_from_slice(&length.to_be_bytes());
    framed.extend_from_slice(wire);
    stream.write_all(&framed).await.map_err(io_failure)?;
    loop {
        let length = stream.read_u16().await.map_err(io_failure)?;
        let mut buf = vec![0u8; usize::from(length)];
        stream.read_exact(&mut buf).await.map_err(io_failure)?;
        if let Some(answer) = matching_answer(outgoing, &buf) {
            return Ok(answer);
        }
    }
}

/// `bytes` parsed, if it is a response to `outgoing` (same id, same question).
fn matching_answer(outgoing: &Message, bytes: &[u8]) -> Option<Message> {
    let answer = Message::from_vec(bytes).ok()?;
    let matches = answer.metadata.id == outgoing.metadata.id
        && answer.metadata.message_type == hickory_proto::op::MessageType::Response
        && answer.queries.len() == outgoing.queries.len()
        && answer.queries.iter().zip(&outgoing.queries).all(|(a, q)| {
            a.name() == q.name()
                && a.query_type() == q.query_type()
                && a.query_class() == q.query_class()
        });
    matches.then_some(answer)
}

fn io_failure(error: io::Error) -> TryError {
    TryError::Failed(error.to_string())
}

#[cfg(test)]
mod tests;
