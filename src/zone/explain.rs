//! Why the zone answers a question the way it does, and the whole zone as a zone file.
//!
//! Owns: the zone's half of `clusterdns explain` (for each record of the answer, the object
//! that produced it; for a Service, the endpoints left out and the rule; for NXDOMAIN, the
//! label that failed and the names that exist close to it; for NODATA, the types the name
//! has) and `clusterdns dump`.
//!
//! The answer explained is [`Zone::lookup`]'s own, taken under the writer's lock so the
//! provenance read next to it is of the same state: an explanation can never disagree with
//! what a client gets. Nothing here changes the zone. Finding the object behind a record
//! walks the Services once per owner in the answer: O(Services) per explanation, an admin
//! request, so the writer keeps no reverse map (memory) for it.

use super::name::dashed_ip;
use super::records::{Exclusion, ServiceShape, endpoint_exclusion};
use super::{
    Lookup, NameKey, ObjectId, Origin, OwnerId, STATIC_OWNER, ServiceEntry, WriterState, Zone,
};
use crate::config::PodMode;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

/// The object that produced a record (or a name), as `--json` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    /// `Service`, `EndpointSlice`, `Namespace`, `Pod`, or `Zone` for the zone's own records.
    pub kind: String,
    /// The object's namespace (none for Namespace and Zone).
    pub namespace: Option<String>,
    /// The object's name.
    pub name: Option<String>,
    /// Its `metadata.resourceVersion`, when it has one (API objects).
    pub resource_version: Option<String>,
    /// The manifest file that defines it (manifest source).
    pub file: Option<String>,
    /// When the server applied this version of it, seconds since the Unix epoch.
    pub changed_unix: Option<u64>,
    /// What else matters (which endpoint, a grace in progress, ...).
    pub note: Option<String>,
}

impl WriterState {
    /// The provenance of an object the writer holds, from where it came from.
    fn provenance(
        &self,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
        origin: Option<&Origin>,
    ) -> Provenance {
        Provenance {
            kind: kind.to_string(),
            namespace: namespace.map(str::to_string),
            name: Some(name.to_string()),
            resource_version: origin
                .and_then(|o| o.resource_version.as_ref().map(ToString::to_string)),
            file: origin.and_then(|o| self.file(o.file?)).map(str::to_string),
            changed_unix: origin.map(|o| u64::from(o.changed)),
            note: None,
        }
    }
}

impl Provenance {
    fn zone(note: &str) -> Provenance {
        Provenance {
            kind: "Zone".to_string(),
            note: Some(note.to_string()),
            ..Provenance::default()
        }
    }

    fn with_note(mut self, note: impl Into<String>) -> Provenance {
        self.note = Some(note.into());
        self
    }
}

/// An endpoint of the Service that has no records, and the rule that left it out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExcludedEndpoint {
    /// The address as the EndpointSlice has it.
    pub address: String,
    /// The endpoint's `hostname`, if any.
    pub hostname: Option<String>,
    /// The EndpointSlice (`namespace/name`).
    pub slice: String,
    /// The rule: `not_ready`, `terminating`, `address_type` or `invalid_address`.
    pub reason: String,
    /// The rule in words.
    pub rule: String,
}

/// The label of an NXDOMAIN question that names nothing that exists.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedLabel {
    /// The label as asked (lower case).
    pub label: String,
    /// What it should have named: `namespace`, `service`, `endpoint`, `port`, `pod` or
    /// `zone_child` (the label right under the zone: `svc`, `pod`).
    pub expected: String,
    /// Where it was looked for: the namespace of a service, `namespace/service` of an
    /// endpoint or port.
    pub within: Option<String>,
    /// Names that exist there, closest first (edit distance), at most 3.
    pub suggestions: Vec<String>,
    /// The finding in words, e.g. `no service 'order' in namespace 'shop'`.
    pub message: String,
}

impl FailedLabel {
    /// A namespace label that names no namespace, with the namespaces close to it.
    fn no_namespace(namespace: &str, state: &WriterState) -> FailedLabel {
        FailedLabel {
            label: namespace.to_string(),
            expected: "namespace".into(),
            within: None,
            suggestions: close_matches(namespace, state_namespaces(state)),
            message: format!("no namespace '{namespace}'"),
        }
    }
}

/// The zone's explanation of one question.
#[derive(Debug)]
pub struct ZoneExplanation {
    /// What [`Zone::lookup`] answers: exactly what a client gets from the zone.
    pub lookup: Lookup,
    /// For each answer record (same order), the object behind it.
    pub answer_sources: Vec<Option<Provenance>>,
    /// The Service the name belongs to, if it names one that exists.
    pub service: Option<Provenance>,
    /// That Service's endpoints that have no records, with the rule.
    pub excluded: Vec<ExcludedEndpoint>,
    /// For NXDOMAIN: the label that failed.
    pub failed: Option<FailedLabel>,
    /// For NODATA: the types the name has.
    pub types_present: Vec<String>,
    /// Everything else worth saying, in words.
    pub notes: Vec<String>,
}

/// A record in zone-file presentation (RFC 1035 section 5.1): `name ttl IN type rdata`, one
/// line, names fully qualified. TXT strings are quoted so the line parses back.
pub fn zone_file_line(record: &Record) -> String {
    let rdata = match &record.data {
        RData::TXT(txt) => txt
            .txt_data
            .iter()
            .map(|s| {
                let s = String::from_utf8_lossy(s);
                format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
            })
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    };
    format!(
        "{} {} IN {} {}",
        record.name,
        record.ttl,
        record.record_type(),
        rdata
    )
}

/// Edit distance over bytes (labels are ASCII): Levenshtein with a swap of two adjacent
/// letters counted as one edit (optimal string alignment), since `shpo` for `shop` is the
/// typo people make. What "did you mean" ranks by.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let width = b.len() + 1;
    // Three rows of the DP table: two back (for swaps), one back, current.
    let mut before: Vec<usize> = vec![0; width];
    let mut previous: Vec<usize> = (0..width).collect();
    let mut current = vec![0; width];
    for i in 0..a.len() {
        current[0] = i + 1;
        for j in 0..b.len() {
            let substitute = previous[j] + usize::from(a[i] != b[j]);
            let mut best = substitute.min(previous[j + 1] + 1).min(current[j] + 1);
            if i > 0 && j > 0 && a[i] == b[j - 1] && a[i - 1] == b[j] {
                best = best.min(before[j - 1] + 1);
            }
            current[j + 1] = best;
        }
        std::mem::swap(&mut before, &mut previous);
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

/// The candidates close to `word`, closest first (then alphabetical), at most 3. Close: at
/// most a third of the longer word's letters differ (at least 1, at most 3), so `order`
/// finds `orders` and `shpo` finds `shop` but `db` does not find `web`.
pub fn close_matches<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut scored: Vec<(usize, &str)> = candidates
        .into_iter()
        .filter(|c| *c != word)
        .filter_map(|c| {
            let distance = edit_distance(word, c);
            let limit = (word.len().max(c.len()) / 3).clamp(1, 3);
            (distance <= limit).then_some((distance, c))
        })
        .collect();
    scored.sort();
    scored.dedup();
    scored
        .into_iter()
        .take(3)
        .map(|(_, c)| c.to_string())
        .collect()
}

impl Zone {
    /// Explains the zone's answer to `qname`/`qtype` (see the module documentation).
    pub fn explain(&self, qname: &Name, qtype: RecordType) -> ZoneExplanation {
        // Holding the writer's lock keeps the state still between the lookup and the
        // provenance read; queries never take this lock, so they are not held up.
        let state = self.lock();
        let lookup = self.lookup(qname, qtype);
        let mut out = ZoneExplanation {
            lookup,
            answer_sources: Vec::new(),
            service: None,
            excluded: Vec::new(),
            failed: None,
            types_present: Vec::new(),
            notes: Vec::new(),
        };
        // Owner id -> Service, filled as records need it: one walk of the Services per owner
        // (a headless answer has many records and one owner).
        let mut owners: HashMap<OwnerId, Option<ObjectId>> = HashMap::new();
        let (rcode, empty, external) = match &out.lookup {
            Lookup::Answer(answer) => {
                out.answer_sources = answer
                    .answers
                    .iter()
                    .map(|r| self.provenance(&state, r, &mut owners))
                    .collect();
                (
                    answer.rcode,
                    answer.answers.is_empty(),
                    answer.external_target.clone(),
                )
            }
            Lookup::NotSynced => {
                out.notes.push(
                    "the sources have not delivered their initial state yet: a missing name is \
                     SERVFAIL (clients retry) rather than NXDOMAIN (clients cache)"
                        .to_string(),
                );
                (ResponseCode::ServFail, true, None)
            }
            Lookup::Refused => {
                out.notes
                    .push("zone transfers (AXFR/IXFR) are refused; use `clusterdns dump`".into());
                return out;
            }
            Lookup::NotOurs => return out,
        };
        if let Some(target) = external {
            out.notes.push(format!(
                "the CNAME chain leaves the zone at {target}: the server asks the upstream path \
                 for it and appends that answer"
            ));
        }
        let qname = qname.to_lowercase();
        if let Some(labels) = self.relative_labels(&qname) {
            self.explain_labels(&state, &labels, rcode, &mut out);
        }
        if rcode == ResponseCode::NoError && empty {
            out.types_present = self.types_at(&qname);
            if out.types_present.is_empty() {
                out.notes.push(
                    "the name exists but holds no records (a namespace, or a name with names \
                     below it): every type is NODATA"
                        .to_string(),
                );
            }
        }
        out
    }

    /// The whole zone as records, sorted by name, type and data: what `clusterdns dump`
    /// prints. Pod names (`<a-b-c-d>.<ns>.pod.<zone>`) are computed per query, not stored,
    /// so they are not in it.
    pub fn dump(&self) -> Vec<Record> {
        let mut records = vec![self.soa()];
        for node in self.index.iter() {
            let name = node.key().to_name();
            records.extend(node.records().map(|r| r.to_record(&name, self.config.ttl)));
        }
        let mut keyed: Vec<(Name, u16, String, Record)> = records
            .into_iter()
            .map(|r| {
                (
                    r.name.to_lowercase(),
                    u16::from(r.record_type()),
                    r.data.to_string(),
                    r,
                )
            })
            .collect();
        keyed.sort_by(|a, b| (&a.0, a.1, &a.2).cmp(&(&b.0, b.1, &b.2)));
        keyed.into_iter().map(|(.., r)| r).collect()
    }

    /// Seconds since the Unix epoch of the last event applied (`None` before the first).
    pub fn last_change_unix(&self) -> Option<u64> {
        match self.last_change.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            at => Some(at),
        }
    }

    /// The SOA serial now.
    pub fn serial(&self) -> u32 {
        self.serial.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The labels of `qname` below the zone apex, lower case, leftmost first; `None` outside.
    fn relative_labels(&self, qname: &Name) -> Option<Vec<String>> {
        if !self.config.origin.zone_of(qname) {
            return None;
        }
        let relative = usize::from(qname.num_labels() - self.config.origin.num_labels());
        Some(
            qname
                .iter()
                .take(relative)
                .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
                .collect(),
        )
    }

    /// The record types stored at `name` (NODATA: what the name does have).
    fn types_at(&self, name: &Name) -> Vec<String> {
        let mut types: BTreeSet<String> = BTreeSet::new();
        if name == &self.config.origin {
            types.insert(RecordType::SOA.to_string());
        }
        if let Some(node) = self.index.get(&NameKey::new(name)) {
            types.extend(node.records().map(|r| r.record_type().to_string()));
        } else if let Some(Lookup::Answer(a)) = self.lookup_pod(name, RecordType::ANY) {
            types.extend(a.answers.iter().map(|r| r.record_type().to_string()));
        }
        types.into_iter().collect()
    }

    /// The object behind one answer record.
    fn provenance(
        &self,
        state: &WriterState,
        record: &Record,
        owners: &mut HashMap<OwnerId, Option<ObjectId>>,
    ) -> Option<Provenance> {
        if record.record_type() == RecordType::SOA {
            return Some(Provenance::zone("the zone's SOA"));
        }
        let name = record.name.to_lowercase();
        let owner = {
            let Some(node) = self.index.get(&NameKey::new(&name)) else {
                return self.pod_provenance(state, &name, record);
            };
            node.owners
                .iter()
                .find(|(_, records)| {
                    records.iter().any(|r| {
                        r.record_type() == record.record_type() && r.rdata() == record.data
                    })
                })
                .map(|(owner, _)| *owner)?
        };
        if owner == STATIC_OWNER {
            return Some(Provenance::zone("a record every cluster zone has"));
        }
        let service_id = owners.entry(owner).or_insert_with(|| {
            state
                .services
                .iter()
                .find(|(_, e)| e.owner == owner)
                .map(|(id, _)| id.clone())
        });
        if let Some(id) = service_id
            && let Some(entry) = state.services.get(id)
        {
            return Some(service_record_source(
                state,
                &id.namespace,
                &id.name,
                entry,
                record,
            ));
        }
        state
            .namespaces
            .iter()
            .find(|(_, e)| e.owner == owner)
            .map(|(ns, e)| state.provenance("Namespace", None, ns, e.origin.as_ref()))
    }

    /// Pod names are computed from the question, not stored.
    fn pod_provenance(
        &self,
        state: &WriterState,
        name: &Name,
        record: &Record,
    ) -> Option<Provenance> {
        let ip = match &record.data {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(a) => IpAddr::V6(a.0),
            _ => return None,
        };
        let labels = self.relative_labels(name)?;
        let namespace = labels.get(1)?;
        match self.config.pods {
            PodMode::Verified => state
                .pods
                .iter()
                .find(|((ns, _), pod)| ns == namespace && pod.ips.contains(&ip))
                .map(|((ns, pod), _)| {
                    state
                        .provenance("Pod", Some(ns), pod, None)
                        .with_note(format!("pods = verified: this Pod has {ip}"))
                }),
            _ => Some(Provenance::zone(&format!(
                "pods = insecure: the address is read from the name, in existing namespace '{namespace}'"
            ))),
        }
    }

    /// The NXDOMAIN, Service and endpoint findings for a name under the zone.
    fn explain_labels(
        &self,
        state: &WriterState,
        labels: &[String],
        rcode: ResponseCode,
        out: &mut ZoneExplanation,
    ) {
        let nxdomain = rcode == ResponseCode::NXDomain;
        let Some((top, below)) = labels.split_last() else {
            return;
        };
        match top.as_str() {
            "svc" => self.explain_service_name(state, below, nxdomain, out),
            "pod" if nxdomain => {
                let message = match (self.config.pods, below) {
                    (PodMode::Disabled, _) => {
                        "pod records are off (pods = disabled): every name under pod.<zone> is NXDOMAIN".to_string()
                    }
                    (_, [_, namespace]) if !self.namespace_exists(state, namespace) => {
                        out.failed = Some(FailedLabel::no_namespace(namespace, state));
                        return;
                    }
                    (_, [ip, _]) if super::name::parse_dashed_ip(ip).is_none() => {
                        format!("'{ip}' is not an address written with dashes (10-1-2-3)")
                    }
                    (PodMode::Verified, [ip, namespace]) => format!(
                        "pods = verified: no Pod in namespace '{namespace}' has the address '{ip}'"
                    ),
                    _ => "pod names are <a-b-c-d>.<namespace>.pod.<zone>".to_string(),
                };
                out.notes.push(message);
            }
            "pod" => {}
            "dns-version" if below.is_empty() => {}
            _ if nxdomain => {
                let mut message = format!(
                    "no name '{top}' under {}: only svc.{0} and pod.{0} exist there",
                    self.config.origin
                );
                if let [service, namespace] = labels
                    && state
                        .services
                        .get(&ObjectId::lookup(namespace, service))
                        .is_some_and(|e| e.info.is_some())
                {
                    message.push_str(&format!(
                        "; did you mean {service}.{namespace}.svc.{}?",
                        self.config.origin
                    ));
                }
                out.failed = Some(FailedLabel {
                    label: top.clone(),
                    expected: "zone_child".into(),
                    within: None,
                    suggestions: close_matches(top, ["svc", "pod"]),
                    message,
                });
            }
            _ => {}
        }
    }

    fn namespace_exists(&self, state: &WriterState, namespace: &str) -> bool {
        state.namespaces.get(namespace).is_some_and(|e| e.exists())
    }

    /// `[<endpoint|_port._proto>.]<service>.<namespace>` below `svc.<zone>`.
    fn explain_service_name(
        &self,
        state: &WriterState,
        labels: &[String],
        nxdomain: bool,
        out: &mut ZoneExplanation,
    ) {
        let Some((namespace, below)) = labels.split_last() else {
            return;
        };
        if !self.namespace_exists(state, namespace) {
            if nxdomain {
                out.failed = Some(FailedLabel::no_namespace(namespace, state));
            }
            return;
        }
        let Some((service, below)) = below.split_last() else {
            return;
        };
        let id = ObjectId::lookup(namespace, service);
        let entry = state.services.get(&id);
        let Some((entry, info)) = entry.and_then(|e| Some((e, e.info.as_ref()?))) else {
            if nxdomain {
                let in_namespace = state
                    .services
                    .iter()
                    .filter(|(id, e)| *id.namespace == **namespace && e.info.is_some())
                    .map(|(id, _)| &*id.name);
                out.failed = Some(FailedLabel {
                    label: service.clone(),
                    expected: "service".into(),
                    within: Some(namespace.clone()),
                    suggestions: close_matches(service, in_namespace),
                    message: format!("no service '{service}' in namespace '{namespace}'"),
                });
                if entry.is_some() {
                    out.notes.push(format!(
                        "EndpointSlices name Service '{service}' (label kubernetes.io/service-name), \
                         but there is no Service object '{namespace}/{service}'"
                    ));
                }
            }
            return;
        };
        out.service =
            Some(state.provenance("Service", Some(namespace), service, entry.origin.as_ref()));
        out.excluded = excluded_endpoints(state, namespace, entry);
        let published = self.published_records(state, &id);
        match &info.shape {
            ServiceShape::Headless if published.is_empty() => out.notes.push(format!(
                "headless Service '{namespace}/{service}' has no published endpoint: its names \
                 are NXDOMAIN until one is ready{}",
                if out.excluded.is_empty() {
                    " (it has no endpoints at all)"
                } else {
                    " (see the endpoints left out)"
                }
            )),
            ServiceShape::Headless if info.publish_not_ready => out.notes.push(
                "the Service sets publishNotReadyAddresses: not-ready endpoints are published too"
                    .into(),
            ),
            ServiceShape::Unaddressed => out.notes.push(format!(
                "Service '{namespace}/{service}' has no ClusterIP (not assigned yet, or a type \
                 without one): it has no records"
            )),
            ServiceShape::ClusterIp(_) => out.notes.push(
                "a ClusterIP Service answers with its cluster IP whatever its endpoints; \
                 kube-proxy picks an endpoint per connection"
                    .into(),
            ),
            _ => {}
        }
        if !nxdomain || below.is_empty() {
            return;
        }
        let Some(service_name) =
            super::records::service_name(service, namespace, &self.config.origin)
        else {
            return;
        };
        let depth = service_name.num_labels();
        let first_labels = |extra: u8| -> Vec<String> {
            published
                .keys()
                .filter(|n| n.num_labels() == depth + extra && service_name.zone_of(n))
                .map(|n| {
                    n.iter()
                        .take(usize::from(extra))
                        .map(|l| String::from_utf8_lossy(l).into_owned())
                        .collect::<Vec<_>>()
                        .join(".")
                })
                .collect()
        };
        let within = Some(format!("{namespace}/{service}"));
        match below {
            [endpoint] => {
                let existing = first_labels(1);
                if let Some(left_out) = out.excluded.iter().find(|e| {
                    e.hostname.as_deref() == Some(endpoint.as_str())
                        || e.address
                            .parse::<IpAddr>()
                            .is_ok_and(|ip| dashed_ip(ip) == *endpoint)
                }) {
                    out.notes.push(format!(
                        "endpoint '{endpoint}' exists ({}) but is left out: {}",
                        left_out.address, left_out.rule
                    ));
                }
                out.failed = Some(FailedLabel {
                    label: endpoint.clone(),
                    expected: "endpoint".into(),
                    within,
                    suggestions: close_matches(endpoint, existing.iter().map(String::as_str)),
                    message: format!(
                        "no published endpoint '{endpoint}' in service '{service}' of namespace '{namespace}'"
                    ),
                });
            }
            [port, protocol] if port.starts_with('_') && protocol.starts_with('_') => {
                let asked = format!("{port}.{protocol}");
                let existing = first_labels(2);
                out.failed = Some(FailedLabel {
                    label: asked.clone(),
                    expected: "port".into(),
                    within,
                    suggestions: close_matches(&asked, existing.iter().map(String::as_str)),
                    message: format!(
                        "no named port '{asked}' in service '{service}' of namespace '{namespace}' \
                         (SRV names exist only for named ports)"
                    ),
                });
            }
            _ => out.notes.push(format!(
                "no such name below service '{namespace}/{service}': names there are \
                 <endpoint>.{service_name} and _<port>._<proto>.{service_name}"
            )),
        }
    }
}

fn state_namespaces(state: &WriterState) -> impl Iterator<Item = &str> {
    state
        .namespaces
        .iter()
        .filter(|(_, e)| e.exists())
        .map(|(n, _)| n.as_str())
}

/// The endpoints of a Service's slices that have no records, with the rule, sorted.
fn excluded_endpoints(
    state: &WriterState,
    namespace: &str,
    entry: &ServiceEntry,
) -> Vec<ExcludedEndpoint> {
    let Some(info) = entry.info.as_ref() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for slice_name in entry.slices.iter() {
        let Some(slice) = state.slices.get(&ObjectId::lookup(namespace, slice_name)) else {
            continue;
        };
        let slice_id = format!("{namespace}/{slice_name}");
        let mut push = |address: String, hostname: Option<String>, reason: Exclusion| {
            out.push(ExcludedEndpoint {
                address,
                hostname,
                slice: slice_id.clone(),
                reason: reason.as_str().to_string(),
                rule: reason.describe().to_string(),
            })
        };
        // A ClusterIP Service's answer does not depend on its endpoints: nothing is "left
        // out" of it, so only headless Services report endpoint rules.
        if info.shape == ServiceShape::Headless {
            for endpoint in &slice.info.endpoints {
                if let Some(reason) = endpoint_exclusion(info, endpoint) {
                    for ip in &endpoint.addresses {
                        push(
                            ip.to_string(),
                            endpoint.hostname.as_deref().map(String::from),
                            reason,
                        );
                    }
                }
            }
        }
        for dropped in &slice.info.excluded {
            push(dropped.address.to_string(), None, dropped.reason);
        }
    }
    out.sort_by(|a, b| (&a.slice, &a.address).cmp(&(&b.slice, &b.address)));
    out
}

/// The object behind one record of a Service: the Service itself, or for a headless
/// Service the EndpointSlice whose endpoint the record is about.
fn service_record_source(
    state: &WriterState,
    namespace: &str,
    service: &str,
    entry: &ServiceEntry,
    record: &Record,
) -> Provenance {
    let service_source =
        || state.provenance("Service", Some(namespace), service, entry.origin.as_ref());
    if entry.info.as_ref().map(|i| &i.shape) != Some(&ServiceShape::Headless) {
        return service_source();
    }
    // Which endpoint the record is about: its address, or its name's first label.
    let (ip, label): (Option<IpAddr>, Option<String>) = match &record.data {
        RData::A(a) => (Some(IpAddr::V4(a.0)), None),
        RData::AAAA(a) => (Some(IpAddr::V6(a.0)), None),
        RData::PTR(target) => (None, first_label(&target.0)),
        RData::SRV(srv) => (None, first_label(&srv.target)),
        _ => (None, None),
    };
    for slice_name in entry.slices.iter() {
        let Some(slice) = state.slices.get(&ObjectId::lookup(namespace, slice_name)) else {
            continue;
        };
        let endpoint = slice.info.endpoints.iter().find(|e| {
            e.addresses.iter().any(|a| {
                Some(*a) == ip
                    || label.as_deref() == Some(&dashed_ip(*a))
                    || (label.is_some() && e.hostname.as_deref() == label.as_deref())
            })
        });
        if let Some(endpoint) = endpoint {
            let addresses: Vec<String> = endpoint.addresses.iter().map(|a| a.to_string()).collect();
            let state_word = match (endpoint.ready, endpoint.terminating) {
                (true, _) => "ready",
                (false, true) => "terminating, published because of publishNotReadyAddresses",
                (false, false) => "not ready, published because of publishNotReadyAddresses",
            };
            return state
                .provenance(
                    "EndpointSlice",
                    Some(namespace),
                    slice_name,
                    Some(&slice.origin),
                )
                .with_note(format!(
                    "endpoint {}{} ({state_word}) of Service {namespace}/{service}",
                    addresses.join(","),
                    endpoint
                        .hostname
                        .as_deref()
                        .map(|h| format!(" hostname {h}"))
                        .unwrap_or_default(),
                ));
        }
    }
    service_source().with_note(
        "this endpoint left its EndpointSlice moments ago and stays published for a grace of \
         2 s (a move between slices must not make the name vanish)",
    )
}

fn first_label(name: &Name) -> Option<String> {
    name.iter()
        .next()
        .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::super::records::{self, EndpointInfo, ServiceInfo};
    use super::super::{ZoneAnswer, ZoneConfig};
    use super::*;
    use crate::ops::metrics::Metrics;
    use crate::source::{ClusterObject, ObjectKey, ObjectKind, SourceEvent};
    use serde_json::json;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    fn zone() -> Zone {
        let zone = Zone::new(
            ZoneConfig {
                origin: Name::from_ascii("cluster.local.").unwrap(),
                ttl: 5,
                pods: PodMode::Disabled,
            },
            Arc::new(Metrics::new()),
        );
        zone.apply(SourceEvent::InitialSyncDone);
        zone
    }

    fn service(ns: &str, name: &str, spec: serde_json::Value) -> SourceEvent {
        SourceEvent::Apply(ClusterObject::Service(Box::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": ns, "resourceVersion": "7"},
                "spec": spec,
            }))
            .unwrap(),
        )))
    }

    fn slice_object(ns: &str, name: &str, svc: &str, body: serde_json::Value) -> ClusterObject {
        let mut value = json!({
            "metadata": {"name": name, "namespace": ns,
                         "labels": {"kubernetes.io/service-name": svc},
                         "selfLink": "file:///m/web.yaml"},
            "addressType": "IPv4",
            "endpoints": [],
        });
        if let (Some(v), Some(b)) = (value.as_object_mut(), body.as_object()) {
            for (k, x) in b {
                v.insert(k.clone(), x.clone());
            }
        }
        ClusterObject::EndpointSlice(Box::new(serde_json::from_value(value).unwrap()))
    }

    fn slice_info(body: serde_json::Value) -> records::SliceInfo {
        let ClusterObject::EndpointSlice(slice) = slice_object("default", "s", "web", body) else {
            unreachable!()
        };
        records::slice_info(&slice).unwrap()
    }

    fn headless_web(zone: &Zone) {
        zone.apply(service("default", "web", json!({"clusterIP": "None"})));
        zone.apply(SourceEvent::Apply(slice_object(
            "default",
            "web-abc",
            "web",
            json!({"endpoints": [
                {"addresses": ["192.0.2.10"], "hostname": "web-0"},
                {"addresses": ["192.0.2.11"], "hostname": "web-1",
                 "conditions": {"ready": false, "terminating": true}},
            ]}),
        )));
    }

    fn answer(lookup: &Lookup) -> &ZoneAnswer {
        match lookup {
            Lookup::Answer(a) => a,
            other => panic!("expected an answer, got {other:?}"),
        }
    }

    #[test]
    fn the_same_version_delivered_again_keeps_its_change_time() {
        let origin = |version: Option<&str>, changed| Origin {
            resource_version: version.map(crate::source::ResourceVersion::new),
            file: None,
            changed,
        };
        let keep = super::super::keep_change_time;
        assert_eq!(
            keep(Some(origin(Some("5"), 100)), Some(origin(Some("5"), 200))),
            Some(origin(Some("5"), 100)),
            "a relist is no change"
        );
        assert_eq!(
            keep(Some(origin(Some("5"), 100)), Some(origin(Some("6"), 200))),
            Some(origin(Some("6"), 200))
        );
        assert_eq!(
            keep(Some(origin(None, 100)), Some(origin(None, 200))),
            Some(origin(None, 200)),
            "without versions every delivery is a change (manifests only send changes)"
        );
        assert_eq!(keep(Some(origin(Some("5"), 100)), None), None);
    }

    #[test]
    fn slice_info_reports_what_it_drops_and_why() {
        let fqdn = slice_info(json!({"addressType": "FQDN", "endpoints": [
            {"addresses": ["db.example.org"]}, {"addresses": ["cache.example.org"]}]}));
        assert!(fqdn.endpoints.is_empty());
        let reasons: Vec<(&str, Exclusion)> = fqdn
            .excluded
            .iter()
            .map(|e| (&*e.address, e.reason))
            .collect();
        assert_eq!(
            reasons,
            [
                ("db.example.org", Exclusion::AddressType),
                ("cache.example.org", Exclusion::AddressType)
            ]
        );
        let mixed = slice_info(json!({"endpoints": [
            {"addresses": ["192.0.2.1", "not-an-ip"]}]}));
        assert_eq!(mixed.endpoints.len(), 1);
        assert_eq!(mixed.excluded.len(), 1);
        assert_eq!(mixed.excluded[0].reason, Exclusion::InvalidAddress);
        assert_eq!(&*mixed.excluded[0].address, "not-an-ip");
        let clean = slice_info(json!({"endpoints": [{"addresses": ["192.0.2.1"]}]}));
        assert!(clean.excluded.is_empty(), "nothing dropped, nothing kept");
    }

    #[test]
    fn endpoint_exclusion_names_the_rule_and_publish_not_ready_lifts_it() {
        let endpoint = |ready, terminating| EndpointInfo {
            addresses: smallvec::smallvec!["192.0.2.1".parse().unwrap()],
            hostname: None,
            ready,
            terminating,
        };
        let info = |publish_not_ready| ServiceInfo {
            shape: ServiceShape::Headless,
            ports: Box::default(),
            publish_not_ready,
        };
        assert_eq!(
            endpoint_exclusion(&info(false), &endpoint(true, false)),
            None
        );
        assert_eq!(
            endpoint_exclusion(&info(false), &endpoint(false, false)),
            Some(Exclusion::NotReady)
        );
        assert_eq!(
            endpoint_exclusion(&info(false), &endpoint(false, true)),
            Some(Exclusion::Terminating)
        );
        assert_eq!(
            endpoint_exclusion(&info(true), &endpoint(false, true)),
            None
        );
        assert_eq!(Exclusion::Terminating.as_str(), "terminating");
        assert!(Exclusion::AddressType.describe().contains("FQDN"));
    }

    #[test]
    fn every_record_names_the_object_behind_it() {
        let zone = zone();
        headless_web(&zone);
        let e = zone.explain(
            &Name::from_ascii("10.2.0.192.in-addr.arpa.").unwrap(),
            RecordType::PTR,
        );
        assert_eq!(answer(&e.lookup).answers.len(), 1);
        let source = e.answer_sources[0].as_ref().expect("a source");
        assert_eq!(source.kind, "EndpointSlice");
        assert_eq!(source.name.as_deref(), Some("web-abc"));
        assert_eq!(source.file.as_deref(), Some("/m/web.yaml"));
        assert!(
            source
                .note
                .as_deref()
                .unwrap_or("")
                .contains("hostname web-0")
        );

        let e = zone.explain(
            &Name::from_ascii("web.default.svc.cluster.local.").unwrap(),
            RecordType::A,
        );
        let service = e.service.expect("the service");
        assert_eq!(service.resource_version.as_deref(), Some("7"));
        assert_eq!(e.excluded.len(), 1);
        assert_eq!(e.excluded[0].address, "192.0.2.11");
        assert_eq!(e.excluded[0].reason, "terminating");

        let e = zone.explain(
            &Name::from_ascii("dns-version.cluster.local.").unwrap(),
            RecordType::TXT,
        );
        assert_eq!(
            e.answer_sources[0].as_ref().map(|p| p.kind.as_str()),
            Some("Zone")
        );
    }

    #[test]
    fn an_endpoint_in_its_grace_is_explained_as_lingering() {
        let zone = zone();
        headless_web(&zone);
        zone.apply(SourceEvent::Delete(ObjectKey {
            kind: ObjectKind::EndpointSlice,
            namespace: "default".into(),
            name: "web-abc".into(),
        }));
        let e = zone.explain(
            &Name::from_ascii("web-0.web.default.svc.cluster.local.").unwrap(),
            RecordType::A,
        );
        let source = e.answer_sources[0].as_ref().expect("a source");
        assert_eq!(source.kind, "Service");
        assert!(
            source.note.as_deref().unwrap_or("").contains("grace"),
            "{source:?}"
        );
        zone.expire_endpoints(Instant::now() + Duration::from_secs(3));
        let e = zone.explain(
            &Name::from_ascii("web.default.svc.cluster.local.").unwrap(),
            RecordType::A,
        );
        assert_eq!(answer(&e.lookup).rcode, ResponseCode::NXDomain);
        assert!(
            e.notes.iter().any(|n| n.contains("no published endpoint")),
            "{:?}",
            e.notes
        );
    }

    #[test]
    fn names_outside_svc_and_pod_say_what_was_probably_meant() {
        let zone = zone();
        headless_web(&zone);
        let e = zone.explain(
            &Name::from_ascii("web.default.cluster.local.").unwrap(),
            RecordType::A,
        );
        let failed = e.failed.expect("a failed label");
        assert_eq!(failed.expected, "zone_child");
        assert_eq!(failed.label, "default");
        assert!(
            failed
                .message
                .contains("did you mean web.default.svc.cluster.local."),
            "{}",
            failed.message
        );
        let e = zone.explain(
            &Name::from_ascii("10-0-0-1.default.pod.cluster.local.").unwrap(),
            RecordType::A,
        );
        assert!(
            e.notes.iter().any(|n| n.contains("pods = disabled")),
            "{:?}",
            e.notes
        );
        assert_eq!(
            zone.dump()
                .iter()
                .filter(|r| r.record_type() == RecordType::SOA)
                .count(),
            1
        );
    }

    #[test]
    fn edit_distance_counts_insertions_deletions_and_substitutions() {
        assert_eq!(edit_distance("order", "orders"), 1);
        assert_eq!(edit_distance("shpo", "shop"), 1, "a swap is one edit");
        assert_eq!(edit_distance("ab", "ba"), 1);
        assert_eq!(edit_distance("", "web"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }

    #[test]
    fn close_matches_rank_by_distance_and_skip_far_names() {
        let names = ["orders", "order-db", "payments", "ordered", "web"];
        assert_eq!(close_matches("order", names), ["orders", "ordered"]);
        assert_eq!(
            close_matches("shpo", ["shop", "default", "kube-system"]),
            ["shop"]
        );
        assert!(close_matches("db", ["web"]).is_empty());
        assert!(
            close_matches("orders", ["orders"]).is_empty(),
            "the name itself is no suggestion"
        );
    }

    #[test]
    fn zone_file_lines_quote_txt_strings() {
        let record = Record::from_rdata(
            Name::from_ascii("dns-version.cluster.local.").unwrap(),
            28800,
            RData::TXT(hickory_proto::rr::rdata::TXT::new(vec!["1.1.0".into()])),
        );
        assert_eq!(
            zone_file_line(&record),
            "dns-version.cluster.local. 28800 IN TXT \"1.1.0\""
        );
    }
}
