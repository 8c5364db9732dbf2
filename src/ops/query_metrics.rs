//! The per-query metrics, with CoreDNS's names, labels and buckets, so existing dashboards
//! and alerts keep working: `coredns_dns_requests_total{server,zone,view,proto,family,type}`,
//! `coredns_dns_responses_total{server,zone,view,rcode,plugin}`,
//! `coredns_dns_request_duration_seconds{server,zone,view,type}`,
//! `coredns_dns_request_size_bytes` / `coredns_dns_response_size_bytes{server,zone,view,proto}`
//! and `coredns_dns_do_requests_total{server,view,zone}`.
//!
//! One [`QueryMetrics`] per listener and transport resolves its label handles once (lazily,
//! so only series that happen appear), so the query path does atomic adds and never hashes
//! label strings or takes the metric vectors' locks.

use super::metrics::{Metrics, rcode_label};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use prometheus::local::LocalHistogram;
use prometheus::{Histogram, IntCounter};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// The query types CoreDNS labels by name (plugin/metrics/vars `monitorType`); every other
/// type is `other`.
const TYPES: [RecordType; 18] = [
    RecordType::A,
    RecordType::AAAA,
    RecordType::NS,
    RecordType::PTR,
    RecordType::SOA,
    RecordType::CNAME,
    RecordType::MX,
    RecordType::TXT,
    RecordType::SRV,
    RecordType::DS,
    RecordType::DNSKEY,
    RecordType::RRSIG,
    RecordType::NSEC,
    RecordType::NSEC3,
    RecordType::HTTPS,
    RecordType::IXFR,
    RecordType::AXFR,
    RecordType::ANY,
];
const N_TYPES: usize = TYPES.len() + 1;

/// The rcodes as CoreDNS names them; anything else shares the last slot's label.
const RCODES: [ResponseCode; 6] = [
    ResponseCode::NoError,
    ResponseCode::NXDomain,
    ResponseCode::ServFail,
    ResponseCode::Refused,
    ResponseCode::FormErr,
    ResponseCode::NotImp,
];

/// Who produced an answer: the `plugin` label, named after the CoreDNS plugin that would have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnsweredBy {
    /// The cluster zone (`kubernetes`).
    Zone,
    /// The upstream path, cache included (`forward`).
    Upstream,
    /// The server itself, for errors it decided (empty label, as CoreDNS).
    Server,
}

impl AnsweredBy {
    fn index(self) -> usize {
        self as usize
    }
    fn label(self) -> &'static str {
        match self {
            AnsweredBy::Zone => "kubernetes",
            AnsweredBy::Upstream => "forward",
            AnsweredBy::Server => "",
        }
    }
}

/// `udp` or `tcp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// UDP.
    Udp,
    /// TCP.
    Tcp,
}

impl Proto {
    /// `udp` or `tcp`.
    pub fn label(self) -> &'static str {
        match self {
            Proto::Udp => "udp",
            Proto::Tcp => "tcp",
        }
    }
}

/// The label handles of one listener and transport.
pub struct QueryMetrics {
    metrics: Arc<Metrics>,
    server: String,
    proto: Proto,
    family: &'static str,
    requests: [OnceLock<IntCounter>; N_TYPES],
    durations: [OnceLock<Histogram>; N_TYPES],
    responses: [OnceLock<IntCounter>; RCODES.len() * 3],
    request_size: Histogram,
    response_size: Histogram,
    do_requests: IntCounter,
}

/// CoreDNS's zone and view labels: a Corefile serving a cluster has one `.:53` block.
const ZONE: &str = ".";
const VIEW: &str = "";

impl QueryMetrics {
    /// The handles for queries arriving on `listen` over `proto`.
    pub fn new(metrics: Arc<Metrics>, listen: SocketAddr, proto: Proto) -> QueryMetrics {
        let server = format!("dns://{listen}");
        let family = if listen.is_ipv4() { "1" } else { "2" };
        let request_size =
            metrics
                .request_size
                .with_label_values(&[&server, ZONE, VIEW, proto.label()]);
        let response_size =
            metrics
                .response_size
                .with_label_values(&[&server, ZONE, VIEW, proto.label()]);
        let do_requests = metrics
            .do_requests
            .with_label_values(&[&server, VIEW, ZONE]);
        QueryMetrics {
            server,
            proto,
            family,
            requests: std::array::from_fn(|_| OnceLock::new()),
            durations: std::array::from_fn(|_| OnceLock::new()),
            responses: std::array::from_fn(|_| OnceLock::new()),
            request_size,
            response_size,
            do_requests,
            metrics,
        }
    }

    /// All metrics, for the counters that are not per query.
    pub fn all(&self) -> &Metrics {
        &self.metrics
    }

    /// The transport these handles count.
    pub fn proto(&self) -> Proto {
        self.proto
    }

    fn type_index(qtype: Option<RecordType>) -> usize {
        qtype
            .and_then(|t| TYPES.iter().position(|known| *known == t))
            .unwrap_or(TYPES.len())
    }

    fn type_label(index: usize) -> String {
        TYPES
            .get(index)
            .map_or_else(|| "other".to_string(), |t| t.to_string())
    }

    fn requests(&self, index: usize) -> &IntCounter {
        self.requests[index].get_or_init(|| {
            self.metrics.requests.with_label_values(&[
                &self.server,
                ZONE,
                VIEW,
                self.proto.label(),
                self.family,
                &Self::type_label(index),
            ])
        })
    }

    fn durations(&self, index: usize) -> &Histogram {
        self.durations[index].get_or_init(|| {
            self.metrics.request_duration.with_label_values(&[
                &self.server,
                ZONE,
                VIEW,
                &Self::type_label(index),
            ])
        })
    }

    /// The `responses` series of an rcode CoreDNS names (`None` for the rare others).
    fn responses(&self, rcode: ResponseCode, by: AnsweredBy) -> Option<&IntCounter> {
        let rcode_index = RCODES.iter().position(|r| *r == rcode)?;
        Some(
            self.responses[rcode_index * 3 + by.index()].get_or_init(|| {
                self.metrics.responses.with_label_values(&[
                    &self.server,
                    ZONE,
                    VIEW,
                    rcode_label(rcode),
                    by.label(),
                ])
            }),
        )
    }

    /// A request arrived (`qtype` is `None` when the packet could not be parsed).
    pub fn request(&self, qtype: Option<RecordType>, size: usize, dnssec_ok: bool) {
        self.requests(Self::type_index(qtype)).inc();
        self.request_size.observe(size as f64);
        if dnssec_ok {
            self.do_requests.inc();
        }
    }

    /// A response left, `started` being when its request arrived.
    pub fn response(
        &self,
        qtype: Option<RecordType>,
        rcode: ResponseCode,
        by: AnsweredBy,
        size: usize,
        started: Instant,
    ) {
        self.durations(Self::type_index(qtype))
            .observe(started.elapsed().as_secs_f64());
        self.response_size.observe(size as f64);
        self.count_response(rcode, by, 1);
    }

    fn count_response(&self, rcode: ResponseCode, by: AnsweredBy, n: u64) {
        match self.responses(rcode, by) {
            Some(counter) => counter.inc_by(n),
            // Rare rcodes (BADVERS...): not worth a slot each.
            None => self
                .metrics
                .responses
                .with_label_values(&[&self.server, ZONE, VIEW, rcode_label(rcode), by.label()])
                .inc_by(n),
        }
    }
}

/// The per-query metrics of one UDP worker's batch, added to the shared series when the
/// batch's answers go out ([`Tally::flush`]): one atomic add per series and batch instead of
/// a dozen per query (prometheus's `LocalHistogram`), and one clock read per batch. The
/// request duration of every query of a batch is the batch's: from reading it to sending its
/// answers, which is what each of its queries waits. Used for the answers that are ready at
/// once (the zone's and cache hits'); a question that waits for an upstream is counted when
/// its answer comes.
pub struct Tally {
    /// Queries counted since the last flush, by type index.
    by_type: [u32; N_TYPES],
    /// Responses counted since the last flush, by rcode and source.
    responses: Vec<(ResponseCode, AnsweredBy, u32)>,
    do_requests: u64,
    request_size: LocalHistogram,
    response_size: LocalHistogram,
    /// Request durations by type index, made at the first query of the type.
    durations: [Option<LocalHistogram>; N_TYPES],
}

impl Tally {
    /// An empty tally for queries arriving through `listener`.
    pub fn new(listener: &QueryMetrics) -> Tally {
        Tally {
            by_type: [0; N_TYPES],
            responses: Vec::new(),
            do_requests: 0,
            request_size: listener.request_size.local(),
            response_size: listener.response_size.local(),
            durations: std::array::from_fn(|_| None),
        }
    }

    /// One query answered at once: what [`QueryMetrics::request`] and
    /// [`QueryMetrics::response`] count, but kept here until [`Tally::flush`].
    pub fn answered(
        &mut self,
        query: (RecordType, usize, bool),
        rcode: ResponseCode,
        by: AnsweredBy,
        response_size: usize,
    ) {
        let (qtype, request_size, dnssec_ok) = query;
        self.by_type[QueryMetrics::type_index(Some(qtype))] += 1;
        self.request_size.observe(request_size as f64);
        self.do_requests += u64::from(dnssec_ok);
        self.response_size.observe(response_size as f64);
        match self
            .responses
            .iter_mut()
            .find(|(r, b, _)| *r == rcode && *b == by)
        {
            Some((_, _, n)) => *n += 1,
            None => self.responses.push((rcode, by, 1)),
        }
    }

    /// Adds what was counted to `listener`'s series; the queries arrived at `received`.
    pub fn flush(&mut self, listener: &QueryMetrics, received: Instant) {
        if self.responses.is_empty() {
            return;
        }
        let waited = received.elapsed().as_secs_f64();
        for (index, (n, durations)) in self
            .by_type
            .iter_mut()
            .zip(self.durations.iter_mut())
            .enumerate()
        {
            if *n > 0 {
                listener.requests(index).inc_by(u64::from(*n));
                let durations = durations.get_or_insert_with(|| listener.durations(index).local());
                for _ in 0..*n {
                    durations.observe(waited);
                }
                durations.flush();
                *n = 0;
            }
        }
        for (rcode, by, n) in self.responses.drain(..) {
            listener.count_response(rcode, by, u64::from(n));
        }
        if self.do_requests > 0 {
            listener.do_requests.inc_by(self.do_requests);
            self.do_requests = 0;
        }
        self.request_size.flush();
        self.response_size.flush();
    }
}
