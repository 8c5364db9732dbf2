//! The query handler: the one place that decides where an answer comes from (zone or
//! upstream) and builds the response (flags, EDNS, truncation) for every path.
//!
//! ```text
//!  packet ─▶ validate ─▶ zone.lookup ─▶ Answer ────────────────┐
//!   (rcode policy)          │ NotOurs / CNAME leaves the zone   ├─▶ respond() ─▶ bytes
//!                           └──────────▶ Pending ─▶ upstream ───┘
//! ```
//!
//! [`Handler::handle`] is synchronous and does no I/O: zone answers are built inline on the
//! socket's task, and only a question that needs the upstream becomes a [`Pending`] that the
//! server runs as a task. The handler owns no socket.

use super::prebuilt::{Current, PrebuiltAnswers, PrebuiltKey, SimpleQuery, Validity};
use super::rate_limit::{RateLimiter, Verdict};
use crate::config::AclConfig;
use crate::ops::explain::{self, ExplainContext};
use crate::ops::metrics::Metrics;
use crate::ops::query_metrics::{AnsweredBy, QueryMetrics, Tally};
use crate::upstream::{ForwardError, Resolver, UpstreamAnswer};
use crate::zone::{Lookup, Zone, ZoneAnswer};
use arc_swap::{ArcSwap, ArcSwapOption};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, Record, RecordType};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use tracing::debug;

/// The smallest payload every DNS client accepts over UDP (RFC 1035 section 4.2.1).
pub const MIN_UDP_PAYLOAD: u16 = 512;

/// How the query arrived: it sets the size limit of the answer (UDP answers are limited to
/// the client's payload size and truncated beyond it; TCP answers are complete).
pub use crate::ops::query_metrics::Proto as Transport;

/// What to do with one received packet.
pub enum Outcome {
    /// Send these bytes back.
    Reply(Vec<u8>),
    /// Send nothing (the packet was not a query we can answer; it was counted).
    Drop,
    /// The answer needs the upstream: run [`Handler::finish`] off the socket's loop.
    Upstream(Box<Pending>),
}

/// The parts of a request a response is built from.
#[derive(Clone, Debug)]
struct Request {
    id: u16,
    op_code: OpCode,
    recursion_desired: bool,
    checking_disabled: bool,
    query: Option<Query>,
    /// The client's EDNS, if it sent one: the response then carries ours.
    edns: Option<Edns>,
    transport: Transport,
    /// When the packet arrived: the start of `coredns_dns_request_duration_seconds`.
    started: Instant,
    /// Who asked (for the query log).
    peer: SocketAddr,
    /// RA: whether this client may have names forwarded (`[acl] recursion`). A client that
    /// may not sees RA clear on every answer, so `dig` says "recursion requested but not
    /// available" instead of leaving a REFUSED unexplained (BIND does the same).
    recursion_available: bool,
}

/// A question waiting for the upstream.
pub struct Pending {
    listener: Arc<QueryMetrics>,
    request: Request,
    message: Message,
    /// Set when a CNAME chain from the zone left it: the upstream is asked for the target and
    /// its answer is appended to the zone's part.
    chain: Option<(ZoneAnswer, Name)>,
    /// Where a cache hit's bytes are kept for the same question (a plain forwarded query).
    prebuilt_key: Option<PrebuiltKey>,
}

/// The answer to build, whatever path produced it.
struct Response {
    rcode: ResponseCode,
    authoritative: bool,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    additionals: Vec<Record>,
    origin: AnsweredBy,
    /// For the query log: `zone`, `upstream`, `cache`, `stale`, `server` or `rate_limit`.
    source: &'static str,
    /// Sent with TC and no records whatever its size (a rate-limited answer that slips).
    truncated: bool,
}

impl Response {
    fn error(rcode: ResponseCode) -> Response {
        Response {
            rcode,
            authoritative: false,
            answers: Vec::new(),
            authorities: Vec::new(),
            additionals: Vec::new(),
            origin: AnsweredBy::Server,
            source: "server",
            truncated: false,
        }
    }

    /// A rate-limited answer that slips: TC and nothing else, so the client asks over TCP.
    fn slipped() -> Response {
        Response {
            source: "rate_limit",
            truncated: true,
            ..Response::error(ResponseCode::NoError)
        }
    }

    /// An answer from the upstream path (fresh, cached or stale): never authoritative.
    fn from_upstream(upstream: UpstreamAnswer) -> Response {
        let answer = upstream.answer;
        Response {
            rcode: answer.rcode,
            authoritative: false,
            answers: answer.answers,
            authorities: answer.authorities,
            additionals: answer.additionals,
            origin: AnsweredBy::Upstream,
            source: upstream.served.label(),
            truncated: false,
        }
    }

    fn from_zone(answer: ZoneAnswer) -> Response {
        Response {
            rcode: answer.rcode,
            authoritative: true,
            answers: answer.answers,
            authorities: answer.authorities,
            additionals: answer.additionals,
            origin: AnsweredBy::Zone,
            source: "zone",
            truncated: false,
        }
    }
}

/// Answers queries. Shared by every UDP worker and TCP connection.
pub struct Handler {
    zone: Arc<Zone>,
    /// Swapped whole on a config reload; queries in flight keep the one they started with.
    upstream: ArcSwap<Resolver>,
    metrics: Arc<Metrics>,
    max_udp_payload: u16,
    /// The query log's sample fraction as f64 bits; `QUERY_LOG_OFF` when off. Changed by
    /// reloads.
    query_log: AtomicU64,
    /// Who may ask, and who may have names forwarded; swapped on reload.
    acl: ArcSwap<Acl>,
    /// `[acl.rate_limit]` (UDP only); `None` when off. Swapped on reload.
    rate_limit: ArcSwap<Option<RateLimiter>>,
    /// Questions waiting on the upstream path right now (shutdown waits for them).
    in_flight: std::sync::atomic::AtomicUsize,
    /// Zone answers and cache hits as wire bytes, for repeated questions.
    prebuilt: PrebuiltAnswers,
    /// `clusterdns_prebuilt_answers_total` for `zone` and `cache`.
    prebuilt_counts: [prometheus::IntCounter; 2],
    /// The zone generation the prebuilt table was last sized at.
    prebuilt_fitted: AtomicU64,
    /// Changed each time the upstream path is swapped: a cache hit kept as bytes is only
    /// served while the path it came from is the one in use.
    upstream_generation: AtomicU64,
    /// `--trace-name`: the one name whose queries are logged with their explanation.
    trace: ArcSwapOption<Trace>,
}

/// The name `--trace-name` traces, and what its explanation mentions.
#[derive(Debug)]
pub struct Trace {
    /// The traced name (fully qualified; DNS names compare case-insensitively).
    pub name: Name,
    /// Configuration the explanation mentions.
    pub context: ExplainContext,
}

/// Counts one question in flight for as long as it lives (also if its task is dropped).
struct InFlight<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> InFlight<'a> {
    fn enter(counter: &'a std::sync::atomic::AtomicUsize) -> InFlight<'a> {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        InFlight(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The `[acl]` lists, ready for per-query checks.
struct Acl {
    allow: Networks,
    recursion: Networks,
}

/// One `[acl]` list. The default lists (`0.0.0.0/0` and `::/0`) hold every client: known
/// once here rather than found again for each query.
struct Networks {
    nets: Vec<ipnet::IpNet>,
    everyone: bool,
}

impl Networks {
    fn new(nets: &[ipnet::IpNet]) -> Networks {
        let everywhere = |v4: bool| {
            nets.iter()
                .any(|n| n.prefix_len() == 0 && n.addr().is_ipv4() == v4)
        };
        Networks {
            nets: nets.to_vec(),
            everyone: everywhere(true) && everywhere(false),
        }
    }

    fn contain(&self, ip: std::net::IpAddr) -> bool {
        self.everyone || self.nets.iter().any(|net| net.contains(&ip))
    }
}

impl From<&AclConfig> for Acl {
    fn from(config: &AclConfig) -> Acl {
        Acl {
            allow: Networks::new(&config.allow),
            recursion: Networks::new(&config.recursion),
        }
    }
}

impl Acl {
    fn allows(&self, ip: std::net::IpAddr) -> bool {
        self.allow.contain(ip)
    }
    fn may_forward(&self, ip: std::net::IpAddr) -> bool {
        self.recursion.contain(ip)
    }
}

/// `Handler::query_log` when the query log is off (a NaN no config can produce).
const QUERY_LOG_OFF: u64 = u64::MAX;

/// The optional query log: one `clusterdns::query` event per answered query.
struct QueryLog {
    sample: f64,
}

impl QueryLog {
    fn sampled(&self) -> bool {
        self.sample >= 1.0 || rand::random::<f64>() < self.sample
    }

    fn write(&self, request: &Request, rcode: ResponseCode, source: &str, size: usize) {
        let (name, qtype) = match &request.query {
            Some(q) => (q.name().to_string(), q.query_type().to_string()),
            None => ("-".to_string(), "-".to_string()),
        };
        tracing::info!(
            target: "clusterdns::query",
            client = %request.peer,
            name = %name,
            r#type = %qtype,
            proto = request.transport.label(),
            rcode = crate::ops::metrics::rcode_label(rcode),
            source,
            size,
            duration_us = request.started.elapsed().as_micros() as u64,
            "query"
        );
    }
}

impl Handler {
    /// A handler answering from `zone` and the rest through the `upstream` path.
    /// `max_udp_payload` caps what a client may ask for (and is what we advertise).
    pub fn new(
        zone: Arc<Zone>,
        upstream: Arc<Resolver>,
        metrics: Arc<Metrics>,
        max_udp_payload: u16,
    ) -> Handler {
        Handler {
            zone,
            upstream: ArcSwap::new(upstream),
            metrics: metrics.clone(),
            max_udp_payload: max_udp_payload.max(MIN_UDP_PAYLOAD),
            query_log: AtomicU64::new(QUERY_LOG_OFF),
            acl: ArcSwap::new(Arc::new(Acl::from(&AclConfig::default()))),
            rate_limit: ArcSwap::new(Arc::new(None)),
            in_flight: std::sync::atomic::AtomicUsize::new(0),
            prebuilt: PrebuiltAnswers::default(),
            prebuilt_counts: ["zone", "cache"]
                .map(|source| metrics.prebuilt_answers.with_label_values(&[source])),
            prebuilt_fitted: AtomicU64::new(u64::MAX),
            upstream_generation: AtomicU64::new(0),
            trace: ArcSwapOption::empty(),
        }
    }

    /// Logs every query for one name with its explanation (`--trace-name`); `None`: off.
    /// Replaced on a config reload.
    pub fn set_trace(&self, trace: Option<Trace>) {
        self.trace.store(trace.map(Arc::new));
    }

    /// The traced query's explanation, computed after its answer was built, so it shows the
    /// state the answer came from (and, for a forwarded name, the cache entry it left).
    fn write_trace(&self, request: &Request, rcode: ResponseCode, source: &str) {
        let trace = self.trace.load();
        let (Some(trace), Some(query)) = (trace.as_ref(), &request.query) else {
            return;
        };
        if query.name() != &trace.name {
            return;
        }
        let explanation = explain::explain(
            &self.zone,
            &self.upstream(),
            &trace.context,
            query.name(),
            query.query_type(),
        );
        tracing::info!(
            target: "clusterdns::query",
            client = %request.peer,
            name = %query.name(),
            r#type = %query.query_type(),
            rcode = crate::ops::metrics::rcode_label(rcode),
            source,
            explanation = %explain::render(&explanation),
            "traced query"
        );
    }

    /// Replaces the access lists and the rate limit (config reload). The rate limit's
    /// buckets start full again only when its settings change.
    pub fn set_acl(&self, acl: &AclConfig) {
        self.acl.store(Arc::new(Acl::from(acl)));
        let unchanged = match self.rate_limit.load().as_ref() {
            Some(limiter) => limiter.config() == &acl.rate_limit,
            None => acl.rate_limit.responses_per_second == 0,
        };
        if !unchanged {
            self.rate_limit
                .store(Arc::new(RateLimiter::new(&acl.rate_limit, &self.metrics)));
        }
    }

    fn refused_by_acl(&self, reason: &str) {
        self.metrics.acl_refused.with_label_values(&[reason]).inc();
    }

    /// RFC 8482: an ANY question gets one synthesized HINFO record, not every record of the
    /// name: ANY answers are the classic amplification vector. A cluster name that does not
    /// exist is still NXDOMAIN; a name outside the zone is answered here, not forwarded.
    fn minimal_any(&self, query: &Query, may_forward: bool) -> Response {
        let ours = match self.zone.lookup(query.name(), RecordType::A) {
            Lookup::Answer(answer) if answer.rcode == ResponseCode::NXDomain => {
                return Response::from_zone(answer);
            }
            Lookup::Answer(_) => true,
            Lookup::NotSynced => return Response::error(ResponseCode::ServFail),
            Lookup::Refused => return Response::error(ResponseCode::Refused),
            Lookup::NotOurs if !may_forward => {
                self.refused_by_acl("no_recursion");
                return Response::error(ResponseCode::Refused);
            }
            Lookup::NotOurs => false,
        };
        let hinfo = Record::from_rdata(
            query.name().clone(),
            self.zone.ttl(),
            hickory_proto::rr::RData::HINFO(hickory_proto::rr::rdata::HINFO::new(
                "RFC8482".to_string(),
                String::new(),
            )),
        );
        Response {
            rcode: ResponseCode::NoError,
            authoritative: ours,
            answers: vec![hinfo],
            authorities: Vec::new(),
            additionals: Vec::new(),
            origin: if ours {
                AnsweredBy::Zone
            } else {
                AnsweredBy::Server
            },
            source: if ours { "zone" } else { "server" },
            truncated: false,
        }
    }

    /// Questions waiting on the upstream path right now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Logs one line per query (a `sample` fraction of them), like CoreDNS's `log` plugin;
    /// `None` turns the query log off.
    pub fn set_query_log(&self, sample: Option<f64>) {
        let bits = sample.map_or(QUERY_LOG_OFF, f64::to_bits);
        self.query_log.store(bits, Ordering::Relaxed);
    }

    fn query_log(&self) -> Option<QueryLog> {
        match self.query_log.load(Ordering::Relaxed) {
            QUERY_LOG_OFF => None,
            bits => Some(QueryLog {
                sample: f64::from_bits(bits),
            }),
        }
    }

    /// The upstream path in use.
    pub fn upstream(&self) -> Arc<Resolver> {
        self.upstream.load_full()
    }

    /// Replaces the upstream path (config reload).
    pub fn set_upstream(&self, upstream: Arc<Resolver>) {
        // Swapped before the generation moves on: an answer taken from the old path is
        // then tagged with the old generation (see `finish`), never with the new one.
        self.upstream.store(upstream);
        self.upstream_generation.fetch_add(1, Ordering::AcqRel);
    }

    fn malformed(&self, reason: &str) {
        self.metrics
            .malformed_packets
            .with_label_values(&[reason])
            .inc();
    }

    /// Handles one packet. The rcode policy, in order (CoreDNS and hickory agree on it):
    ///
    /// | input                                   | result            |
    /// |-----------------------------------------|-------------------|
    /// | shorter than a header                   | dropped           |
    /// | QR set (a response, maybe reflected)    | dropped           |
    /// | header readable, rest undecodable       | FORMERR           |
    /// | opcode other than QUERY                 | NOTIMP            |
    /// | QDCOUNT != 1                            | FORMERR           |
    /// | EDNS version > 0                        | BADVERS (RFC 6891)|
    /// | class other than IN                     | REFUSED           |
    /// | AXFR/IXFR                               | REFUSED           |
    /// | in the zone, before the first sync      | SERVFAIL          |
    /// | in the zone                             | the zone's answer |
    /// | anywhere else                           | the upstream's    |
    pub fn handle(&self, packet: &[u8], peer: SocketAddr, listener: &Arc<QueryMetrics>) -> Outcome {
        self.handle_received(packet, peer, listener, Instant::now(), None)
    }

    /// [`Handler::handle`] for a query of a batch read at `received` (one clock read per
    /// batch); answers ready at once are counted into `tally` when there is one (which the
    /// caller flushes when it sends the batch's answers).
    pub fn handle_received(
        &self,
        packet: &[u8],
        peer: SocketAddr,
        listener: &Arc<QueryMetrics>,
        received: Instant,
        tally: Option<&mut Tally>,
    ) -> Outcome {
        let started = received;
        let transport = listener.proto();
        if packet.len() < 12 {
            listener.request(None, packet.len(), false);
            self.malformed("short");
            return Outcome::Drop;
        }
        if packet[2] & 0x80 != 0 {
            listener.request(None, packet.len(), false);
            self.malformed("response");
            return Outcome::Drop;
        }
        let acl = self.acl.load();
        let simple = SimpleQuery::parse(packet);
        let prebuilt_key = simple
            .as_ref()
            .and_then(|query| query.key(packet, self.udp_cap(transport)));
        if let (Some(query), Some(key)) = (&simple, &prebuilt_key)
            && let Some(outcome) =
                self.prebuilt_answer(packet, (query, key), (peer, &acl), listener, started, tally)
        {
            return outcome;
        }
        let header_request = Request {
            id: u16::from_be_bytes([packet[0], packet[1]]),
            op_code: OpCode::from_u8((packet[2] >> 3) & 0x0f),
            recursion_desired: packet[2] & 0x01 != 0,
            checking_disabled: packet[3] & 0x10 != 0,
            query: None,
            edns: None,
            transport,
            started,
            peer,
            recursion_available: acl.may_forward(peer.ip()),
        };
        let message = match Message::from_vec(packet) {
            Ok(message) => message,
            Err(error) => {
                debug!(%error, "undecodable query");
                listener.request(None, packet.len(), false);
                self.malformed("undecodable");
                return Outcome::Reply(self.respond(
                    listener,
                    &header_request,
                    Response::error(ResponseCode::FormErr),
                ));
            }
        };
        listener.request(
            message.queries.first().map(|q| q.query_type()),
            packet.len(),
            message.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok),
        );
        let mut request = Request {
            edns: message.edns.clone(),
            ..header_request
        };
        if message.metadata.op_code != OpCode::Query {
            self.malformed("opcode");
            request.query = message.queries.first().cloned();
            return Outcome::Reply(self.respond(
                listener,
                &request,
                Response::error(ResponseCode::NotImp),
            ));
        }
        if message.queries.len() != 1 {
            self.malformed("qdcount");
            return Outcome::Reply(self.respond(
                listener,
                &request,
                Response::error(ResponseCode::FormErr),
            ));
        }
        let query = message.queries[0].clone();
        super::injected_panic(query.name());
        request.query = Some(query.clone());
        if transport == Transport::Udp
            && let Some(limiter) = self.rate_limit.load().as_ref()
        {
            match limiter.check(peer.ip(), started) {
                Verdict::Send => {}
                Verdict::Drop => return Outcome::Drop,
                Verdict::Slip => {
                    return Outcome::Reply(self.respond(listener, &request, Response::slipped()));
                }
            }
        }
        if message.edns.as_ref().is_some_and(|e| e.version() > 0) {
            return Outcome::Reply(self.respond(
                listener,
                &request,
                Response::error(ResponseCode::BADVERS),
            ));
        }
        if !matches!(query.query_class(), DNSClass::IN) {
            return Outcome::Reply(self.respond(
                listener,
                &request,
                Response::error(ResponseCode::Refused),
            ));
        }
        if !acl.allows(peer.ip()) {
            self.refused_by_acl("not_allowed");
            return Outcome::Reply(self.respond(
                listener,
                &request,
                Response::error(ResponseCode::Refused),
            ));
        }
        let may_forward = request.recursion_available;
        if query.query_type() == RecordType::ANY {
            let response = self.minimal_any(&query, may_forward);
            return Outcome::Reply(self.respond(listener, &request, response));
        }
        let generation = self.zone.generation();
        match self.zone.lookup(query.name(), query.query_type()) {
            Lookup::Answer(answer) if answer.external_target.is_some() && !may_forward => {
                // The CNAME is the zone's; following it out of the zone is forwarding.
                let mut answer = answer;
                answer.external_target = None;
                Outcome::Reply(self.respond(listener, &request, Response::from_zone(answer)))
            }
            Lookup::NotOurs if !may_forward => {
                self.refused_by_acl("no_recursion");
                Outcome::Reply(self.respond(
                    listener,
                    &request,
                    Response::error(ResponseCode::Refused),
                ))
            }
            Lookup::Answer(answer) => match answer.external_target.clone() {
                Some(target) => Outcome::Upstream(Box::new(Pending {
                    listener: listener.clone(),
                    request,
                    message,
                    chain: Some((answer, target)),
                    prebuilt_key: None,
                })),
                None => {
                    let rcode = answer.rcode;
                    let rotates = rotates(&answer);
                    let bytes = self.respond(listener, &request, Response::from_zone(answer));
                    if let Some(key) = prebuilt_key.as_ref() {
                        if self.prebuilt_fitted.swap(generation, Ordering::Relaxed) != generation {
                            // The zone changed since the table was sized: it may have grown.
                            self.prebuilt.fit(self.zone.name_count());
                        }
                        let validity = Validity::Zone {
                            generation,
                            rotates,
                        };
                        self.prebuilt.keep(key, validity, rcode, &bytes);
                    }
                    Outcome::Reply(bytes)
                }
            },
            Lookup::NotSynced => Outcome::Reply(self.respond(
                listener,
                &request,
                Response::error(ResponseCode::ServFail),
            )),
            Lookup::Refused => Outcome::Reply(self.respond(
                listener,
                &request,
                Response::error(ResponseCode::Refused),
            )),
            Lookup::NotOurs
                if matches!(query.query_type(), RecordType::AXFR | RecordType::IXFR) =>
            {
                Outcome::Reply(self.respond(
                    listener,
                    &request,
                    Response::error(ResponseCode::Refused),
                ))
            }
            Lookup::NotOurs => Outcome::Upstream(Box::new(Pending {
                listener: listener.clone(),
                request,
                message,
                chain: None,
                prebuilt_key,
            })),
        }
    }

    /// The UDP size cap prebuilt answers are keyed by; `None` over TCP.
    fn udp_cap(&self, transport: Transport) -> Option<u16> {
        (transport == Transport::Udp).then_some(self.max_udp_payload)
    }

    /// A prebuilt answer to a repeated question (a zone answer, or a cache hit for a client
    /// that may have names forwarded): the same bytes the full path would build, with the
    /// request's id and flags (and TTLs counted down). Counted like any answer. The full path
    /// runs instead wherever it decides per client or per query: access lists that refuse
    /// this client, the UDP rate limit, the query log and `--trace-name`, the test panic hook.
    fn prebuilt_answer(
        &self,
        packet: &[u8],
        (query, key): (&SimpleQuery, &PrebuiltKey),
        (peer, acl): (SocketAddr, &Acl),
        listener: &Arc<QueryMetrics>,
        started: Instant,
        tally: Option<&mut Tally>,
    ) -> Option<Outcome> {
        let transport = listener.proto();
        if self.query_log.load(Ordering::Relaxed) != QUERY_LOG_OFF
            || self.trace.load().is_some()
            || super::injected_panic_armed()
            || (transport == Transport::Udp && self.rate_limit.load().is_some())
            || !acl.allows(peer.ip())
        {
            return None;
        }
        let current = Current {
            zone_generation: self.zone.generation(),
            upstream_generation: self.upstream_generation.load(Ordering::Acquire),
            // The cache counts TTLs down on tokio's clock, which is this one (no paused time).
            now: started,
            may_forward: acl.may_forward(peer.ip()),
        };
        let hit = self.prebuilt.answer(packet, key, &current)?;
        let by = if hit.from_cache {
            AnsweredBy::Upstream
        } else {
            AnsweredBy::Zone
        };
        self.prebuilt_counts[usize::from(hit.from_cache)].inc();
        let qtype = query.qtype();
        match tally {
            Some(tally) => tally.answered(
                (qtype, packet.len(), query.dnssec_ok()),
                hit.rcode,
                by,
                hit.bytes.len(),
            ),
            None => {
                listener.request(Some(qtype), packet.len(), query.dnssec_ok());
                listener.response(Some(qtype), hit.rcode, by, hit.bytes.len(), started);
            }
        }
        Some(Outcome::Reply(hit.bytes))
    }

    /// Completes a question that needed the upstream. Always yields an answer: SERVFAIL when
    /// no upstream answered before the deadline, never silence.
    pub async fn finish(&self, pending: Box<Pending>) -> Vec<u8> {
        let _in_flight = InFlight::enter(&self.in_flight);
        let Pending {
            listener,
            request,
            message,
            chain,
            prebuilt_key,
        } = *pending;
        // Read before the path is loaded: see `set_upstream`.
        let upstream_generation = self.upstream_generation.load(Ordering::Acquire);
        let mut reuse = None;
        let response = match chain {
            None => match self.upstream.load_full().resolve(&message).await {
                Ok(mut upstream) => {
                    reuse = upstream.reuse.take();
                    Response::from_upstream(upstream)
                }
                Err(error) => {
                    debug!(%error, "upstream path failed");
                    Response::error(upstream_failure_rcode(&error))
                }
            },
            Some((zone_part, target)) => {
                self.resolve_chain(&request, &message, zone_part, target)
                    .await
            }
        };
        let rcode = response.rcode;
        let bytes = self.respond(&listener, &request, response);
        if let (Some(reuse), Some(key)) = (reuse, prebuilt_key) {
            let validity = Validity::Cache {
                reuse,
                upstream_generation,
            };
            self.prebuilt.keep(&key, validity, rcode, &bytes);
        }
        bytes
    }

    /// An ExternalName's CNAME left the zone: ask the upstream for the target and include the
    /// chain, as CoreDNS does. If the upstream fails, SERVFAIL with the CNAME kept.
    async fn resolve_chain(
        &self,
        request: &Request,
        original: &Message,
        zone_part: ZoneAnswer,
        target: Name,
    ) -> Response {
        let qtype = request
            .query
            .as_ref()
            .map(|q| q.query_type())
            .unwrap_or(RecordType::A);
        let mut query = Message::query();
        query.metadata.recursion_desired = true;
        query.add_query(Query::query(target, qtype));
        query.edns = original.edns.clone();
        let mut response = Response::from_zone(zone_part);
        match self.upstream.load_full().resolve(&query).await {
            Ok(upstream) => {
                response.source = upstream.served.label();
                let upstream = upstream.answer;
                response.rcode = upstream.rcode;
                response.answers.extend(upstream.answers);
                if response.rcode != ResponseCode::NoError || response.answers.len() <= 1 {
                    response.authorities = upstream.authorities;
                }
            }
            Err(error) => {
                debug!(%error, "upstream failed while following an ExternalName CNAME");
                response.rcode = upstream_failure_rcode(&error);
            }
        }
        response
    }

    /// The UDP size limit for this request (RFC 6891 section 6.2.5): the client's payload,
    /// at least 512, at most our configured cap; 512 without EDNS.
    fn udp_limit(&self, request: &Request) -> usize {
        match &request.edns {
            Some(edns) => edns
                .max_payload()
                .clamp(MIN_UDP_PAYLOAD, self.max_udp_payload)
                .into(),
            None => MIN_UDP_PAYLOAD.into(),
        }
    }

    /// Builds the wire answer. Every path ends here, so flags, EDNS and truncation are decided
    /// once: a UDP answer over the limit keeps the records that fit and goes out with TC
    /// (RFC 2181 9, RFC 7766 5) so the client retries over TCP ([`fit_udp_limit`]).
    fn respond(&self, listener: &QueryMetrics, request: &Request, response: Response) -> Vec<u8> {
        let (rcode, by, source) = (response.rcode, response.origin, response.source);
        let bytes = self.encode_response(request, response);
        listener.response(
            request.query.as_ref().map(|q| q.query_type()),
            rcode,
            by,
            bytes.len(),
            request.started,
        );
        if let Some(log) = self.query_log()
            && log.sampled()
        {
            log.write(request, rcode, source, bytes.len());
        }
        self.write_trace(request, rcode, source);
        bytes
    }

    fn encode_response(&self, request: &Request, response: Response) -> Vec<u8> {
        let mut message = Message::response(request.id, request.op_code);
        message.metadata.message_type = MessageType::Response;
        message.metadata.recursion_desired = request.recursion_desired;
        message.metadata.checking_disabled = request.checking_disabled;
        message.metadata.recursion_available = request.recursion_available;
        message.metadata.authoritative = response.authoritative;
        message.metadata.response_code = response.rcode;
        if let Some(query) = &request.query {
            message.add_query(query.clone());
        }
        if let Some(client) = &request.edns {
            let mut edns = Edns::new();
            edns.set_max_payload(self.max_udp_payload);
            edns.set_version(0);
            edns.set_dnssec_ok(client.flags().dnssec_ok);
            message.set_edns(edns);
        }
        message.answers = response.answers;
        message.authorities = response.authorities;
        message.additionals = response.additionals;
        if response.truncated {
            message.metadata.truncation = true;
            return encode(&message);
        }
        let bytes = encode(&message);
        let limit = self.udp_limit(request);
        if request.transport == Transport::Udp && bytes.len() > limit {
            let fitted = fit_udp_limit(message, limit);
            if fitted.truncated {
                self.metrics.truncated_responses.inc();
            }
            return fitted.bytes;
        }
        bytes
    }
}

/// An answer cut down to a UDP size limit.
struct Fitted {
    bytes: Vec<u8>,
    /// Answer or authority records were left out (TC is set).
    truncated: bool,
}

/// Keeps the longest run of whole records that fits `limit` bytes: answer section first, then
/// authority, then additional, as CoreDNS does. Clients that never retry over TCP (musl libc
/// before 1.2.4, so Alpine images) still get the addresses that fit instead of nothing. TC is
/// set only when answer or authority records are left out: additional records are extra
/// information, and RFC 2181 9 says their absence must not set TC. The EDNS OPT record is
/// not a section record here and always stays.
fn fit_udp_limit(mut message: Message, limit: usize) -> Fitted {
    let fits = |message: &Message| message.to_vec().is_ok_and(|b| b.len() <= limit);
    let sections = [
        std::mem::take(&mut message.answers),
        std::mem::take(&mut message.authorities),
        std::mem::take(&mut message.additionals),
    ];
    let mut truncated = false;
    for (index, records) in sections.into_iter().enumerate() {
        // The encoded size only grows with each record kept: the longest prefix that fits is
        // found by bisection. No record is shorter than 11 bytes, so no probe encodes more
        // than `limit / 11` records even for a service with thousands of endpoints.
        let section_len = records.len();
        let most = section_len.min(limit / MIN_RECORD_LEN);
        let (mut fit, mut over) = (0, most + 1);
        while over - fit > 1 {
            let mid = (fit + over) / 2;
            *section(&mut message, index) = records[..mid].to_vec();
            if fits(&message) {
                fit = mid;
            } else {
                over = mid;
            }
        }
        *section(&mut message, index) = records;
        section(&mut message, index).truncate(fit);
        if fit < section_len {
            truncated = index < 2;
            break;
        }
    }
    message.metadata.truncation = truncated;
    Fitted {
        bytes: encode(&message),
        truncated,
    }
}

/// The shortest record on the wire: a root owner name (1 byte), type, class, TTL and
/// rdlength (10 bytes), no data.
const MIN_RECORD_LEN: usize = 11;

/// Section 0, 1 or 2 of a message: answer, authority, additional.
fn section(message: &mut Message, index: usize) -> &mut Vec<Record> {
    match index {
        0 => &mut message.answers,
        1 => &mut message.authorities,
        _ => &mut message.additionals,
    }
}

/// The rcode for a question the upstream path could not answer: REFUSED when we shed load
/// (the client should try another server now), SERVFAIL for everything else.
fn upstream_failure_rcode(error: &ForwardError) -> ResponseCode {
    match error {
        ForwardError::Overloaded => ResponseCode::Refused,
        _ => ResponseCode::ServFail,
    }
}

/// Encodes a message; a message that cannot be encoded (a bug, or an upstream record we
/// cannot re-encode) becomes a bare SERVFAIL for the same id and question.
fn encode(message: &Message) -> Vec<u8> {
    match message.to_vec() {
        Ok(bytes) => bytes,
        Err(error) => {
            tracing::error!(%error, "could not encode a response; sending SERVFAIL");
            let mut fallback = Message::response(message.metadata.id, message.metadata.op_code);
            fallback.metadata.response_code = ResponseCode::ServFail;
            fallback.metadata.recursion_desired = message.metadata.recursion_desired;
            fallback.metadata.recursion_available = message.metadata.recursion_available;
            fallback.queries = message.queries.clone();
            fallback.to_vec().unwrap_or_default()
        }
    }
}

/// Whether the zone rotated this answer's addresses (CoreDNS `loadbalance`): such an answer
/// differs from one query to the next, so its prebuilt bytes are turned at each use.
fn rotates(answer: &ZoneAnswer) -> bool {
    let addresses = answer
        .answers
        .iter()
        .filter(|r| matches!(r.record_type(), RecordType::A | RecordType::AAAA))
        .count();
    addresses > 1
}
