//! From Kubernetes objects to DNS records: the Kubernetes DNS-Based Service Discovery
//! specification (kubernetes/dns docs/specification.md, schema 1.1.0) as pure functions.
//!
//! Objects are first reduced to the compact data DNS needs ([`ServiceInfo`], [`SliceInfo`],
//! [`PodInfo`]); whole API objects are never kept. Then [`service_records`] turns one Service
//! and its EndpointSlices into every record that Service owns. Nothing here touches the index.

use super::name::{dashed_ip, fqdn, is_valid_label, reverse_name};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, PTR, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use smallvec::SmallVec;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;
use std::time::SystemTime;

/// Why an object was not turned into records; the label of `clusterdns_objects_rejected_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// Namespace or name is not a DNS label.
    InvalidName,
    /// A Service without a spec.
    NoSpec,
    /// A cluster IP or endpoint address that is not an IP address.
    InvalidAddress,
    /// An ExternalName that is not a valid domain name.
    InvalidExternalName,
    /// An EndpointSlice without the `kubernetes.io/service-name` label.
    NoServiceLabel,
}

impl Rejection {
    /// The metric label for this reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::InvalidName => "invalid_name",
            Rejection::NoSpec => "no_spec",
            Rejection::InvalidAddress => "invalid_address",
            Rejection::InvalidExternalName => "invalid_external_name",
            Rejection::NoServiceLabel => "no_service_label",
        }
    }
}

/// A port as DNS needs it. SRV names exist only for named ports; the bare service name
/// answers SRV for every port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PortInfo {
    /// `ports[].name`, if any.
    pub name: Option<Box<str>>,
    /// The protocol, whose label (`tcp`, `udp`, `sctp`) names SRV records.
    pub protocol: Protocol,
    /// The port number.
    pub port: u16,
}

/// What kind of answers a Service gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceShape {
    /// A/AAAA for each ClusterIP (every family of a dual-stack Service).
    ClusterIp(SmallVec<[IpAddr; 1]>),
    /// `clusterIP: None`: records per endpoint.
    Headless,
    /// CNAME to this name.
    ExternalName(WireName),
    /// No ClusterIP assigned yet (or a type DNS has nothing for): no records.
    Unaddressed,
}

/// The compact form of a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceInfo {
    /// What the Service answers with.
    pub shape: ServiceShape,
    /// Service ports (used for ClusterIP SRV records).
    pub ports: Box<[PortInfo]>,
    /// `spec.publishNotReadyAddresses`: not-ready endpoints get records too.
    pub publish_not_ready: bool,
}

/// One endpoint of a slice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointInfo {
    /// Its addresses: one in practice (kept inline), the API allows more.
    pub addresses: SmallVec<[IpAddr; 1]>,
    /// `hostname`, which names the endpoint `<hostname>.<svc>.<ns>.svc.<zone>`.
    pub hostname: Option<Box<str>>,
    /// `conditions.ready`; an absent condition means ready (discovery.k8s.io/v1 API doc).
    pub ready: bool,
    /// `conditions.terminating`: only says *why* a not-ready endpoint is left out.
    pub terminating: bool,
}

/// Why an endpoint of a Service's EndpointSlices has no records (what `clusterdns explain`
/// reports next to the answer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exclusion {
    /// `conditions.ready` is false and the Service does not set `publishNotReadyAddresses`.
    NotReady,
    /// As `NotReady`, and `conditions.terminating` is true: the Pod is shutting down.
    Terminating,
    /// The slice's `addressType` is not IPv4/IPv6 (FQDN slices have no address records).
    AddressType,
    /// The address does not parse as an IP address.
    InvalidAddress,
}

impl Exclusion {
    /// The stable name of the rule (the `--json` output's `reason`).
    pub fn as_str(self) -> &'static str {
        match self {
            Exclusion::NotReady => "not_ready",
            Exclusion::Terminating => "terminating",
            Exclusion::AddressType => "address_type",
            Exclusion::InvalidAddress => "invalid_address",
        }
    }

    /// The rule in words.
    pub fn describe(self) -> &'static str {
        match self {
            Exclusion::NotReady => {
                "not ready (conditions.ready=false) and the Service does not set publishNotReadyAddresses"
            }
            Exclusion::Terminating => {
                "terminating (conditions.terminating=true, not ready) and the Service does not set publishNotReadyAddresses"
            }
            Exclusion::AddressType => {
                "the EndpointSlice's addressType is not IPv4 or IPv6 (e.g. FQDN): no address records"
            }
            Exclusion::InvalidAddress => "the address is not an IP address",
        }
    }
}

/// An endpoint [`slice_info`] dropped: kept (the address as written, the rule) only so it can
/// be explained; usually there is none, so this costs an empty `Vec` per slice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExcludedEndpoint {
    /// The address as the slice has it.
    pub address: Box<str>,
    /// Why it has no records.
    pub reason: Exclusion,
}

/// Whether `endpoint` of a Service shaped `info` gets records, and if not, why (spec 2.4.1:
/// ready endpoints only, unless `publishNotReadyAddresses`).
pub fn endpoint_exclusion(info: &ServiceInfo, endpoint: &EndpointInfo) -> Option<Exclusion> {
    if endpoint.ready || info.publish_not_ready {
        None
    } else if endpoint.terminating {
        Some(Exclusion::Terminating)
    } else {
        Some(Exclusion::NotReady)
    }
}

/// The compact form of an EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceInfo {
    /// The Service it belongs to (label `kubernetes.io/service-name`).
    pub service: Box<str>,
    /// Endpoints with IPv4/IPv6 addresses (FQDN slices carry none).
    pub endpoints: Box<[EndpointInfo]>,
    /// Endpoint ports (headless SRV records use these, as CoreDNS does).
    pub ports: Box<[PortInfo]>,
    /// Endpoints dropped while reducing the slice, with the rule (for explanations only).
    pub excluded: Box<[ExcludedEndpoint]>,
    /// When the change this version of the slice carries was triggered (the EndpointSlice
    /// controller's `endpoints.kubernetes.io/last-change-trigger-time` annotation): the start
    /// of the DNS-programming latency SLI.
    pub trigger_time: Option<TriggerTime>,
}

/// A [`LAST_CHANGE_TRIGGER_TIME`] in microseconds since the Unix epoch: with `Option`, 8
/// bytes in every slice where a `SystemTime` takes 16 (0.5 MB at 50,000 slices).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TriggerTime(std::num::NonZeroU64);

impl TriggerTime {
    /// `time`, if it is after the epoch (the controller never writes one before).
    pub fn new(time: SystemTime) -> Option<TriggerTime> {
        let micros = time.duration_since(std::time::UNIX_EPOCH).ok()?.as_micros();
        u64::try_from(micros)
            .ok()
            .and_then(std::num::NonZeroU64::new)
            .map(TriggerTime)
    }

    /// The time it says.
    pub fn time(self) -> SystemTime {
        std::time::UNIX_EPOCH + std::time::Duration::from_micros(self.0.get())
    }
}

/// The compact form of a Pod: its addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    /// `status.podIPs` (or `status.podIP`).
    pub ips: Vec<IpAddr>,
}

/// A port's protocol: the three Kubernetes has without an allocation each (a `String` per
/// port was 5 MB at 50,000 Services), anything else as written.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Protocol {
    /// SCTP.
    Sctp,
    /// TCP, also what a port without a protocol is.
    Tcp,
    /// UDP.
    Udp,
    /// Another protocol, lower case.
    Other(Box<str>),
}

impl Protocol {
    /// The SRV label without its underscore: the protocol in lower case.
    pub fn label(&self) -> &str {
        match self {
            Protocol::Sctp => "sctp",
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Other(label) => label,
        }
    }
}

fn protocol_label(protocol: Option<&str>) -> Protocol {
    match protocol.unwrap_or("TCP").to_ascii_lowercase().as_str() {
        "sctp" => Protocol::Sctp,
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        other => Protocol::Other(other.into()),
    }
}

fn port_number(port: i32) -> Option<u16> {
    u16::try_from(port).ok().filter(|p| *p != 0)
}

/// Reduce a Service to what DNS needs.
pub fn service_info(service: &Service) -> Result<ServiceInfo, Rejection> {
    let spec = service.spec.as_ref().ok_or(Rejection::NoSpec)?;
    let ports = spec
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            Some(PortInfo {
                name: p
                    .name
                    .as_deref()
                    .filter(|n| is_valid_label(n))
                    .map(Box::from),
                protocol: protocol_label(p.protocol.as_deref()),
                port: port_number(p.port)?,
            })
        })
        .collect();
    let shape = if spec.type_.as_deref() == Some("ExternalName") {
        let target = spec.external_name.as_deref().unwrap_or_default();
        match fqdn(target) {
            Some(name) if !target.is_empty() && name.num_labels() > 0 => {
                ServiceShape::ExternalName(WireName::new(&name))
            }
            _ => return Err(Rejection::InvalidExternalName),
        }
    } else {
        let ips: Vec<&str> = match (&spec.cluster_ips, &spec.cluster_ip) {
            (Some(ips), _) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
            (_, Some(ip)) if !ip.is_empty() => vec![ip.as_str()],
            _ => Vec::new(),
        };
        if ips.iter().any(|ip| ip.eq_ignore_ascii_case("None")) {
            ServiceShape::Headless
        } else if ips.is_empty() {
            ServiceShape::Unaddressed
        } else {
            let parsed: Result<SmallVec<[IpAddr; 1]>, _> =
                ips.iter().map(|ip| ip.parse()).collect();
            ServiceShape::ClusterIp(parsed.map_err(|_| Rejection::InvalidAddress)?)
        }
    };
    Ok(ServiceInfo {
        shape,
        ports,
        publish_not_ready: spec.publish_not_ready_addresses.unwrap_or(false),
    })
}

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Reduce an EndpointSlice to what DNS needs. Addresses that do not parse are skipped (the
/// rest of the slice still serves); a slice whose every address is bad is rejected.
pub fn slice_info(slice: &EndpointSlice) -> Result<SliceInfo, Rejection> {
    let service = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .filter(|s| is_valid_label(s))
        .ok_or(Rejection::NoServiceLabel)?
        .clone();
    let address_family = slice.address_type.as_str();
    let mut bad_addresses = 0usize;
    let mut endpoints = Vec::with_capacity(slice.endpoints.len());
    let mut excluded = Vec::new();
    let mut exclude = |address: &str, reason| {
        excluded.push(ExcludedEndpoint {
            address: address.into(),
            reason,
        })
    };
    if address_family == "IPv4" || address_family == "IPv6" {
        for endpoint in &slice.endpoints {
            let mut addresses = SmallVec::new();
            for address in &endpoint.addresses {
                match address.parse::<IpAddr>() {
                    Ok(ip) => addresses.push(ip),
                    Err(_) => {
                        bad_addresses += 1;
                        exclude(address, Exclusion::InvalidAddress);
                    }
                }
            }
            if addresses.is_empty() {
                continue;
            }
            endpoints.push(EndpointInfo {
                addresses,
                hostname: endpoint
                    .hostname
                    .as_deref()
                    .filter(|h| is_valid_label(h))
                    .map(Box::from),
                ready: endpoint
                    .conditions
                    .as_ref()
                    .and_then(|c| c.ready)
                    .unwrap_or(true),
                terminating: endpoint
                    .conditions
                    .as_ref()
                    .and_then(|c| c.terminating)
                    .unwrap_or(false),
            });
        }
    } else {
        for address in slice.endpoints.iter().flat_map(|e| &e.addresses) {
            exclude(address, Exclusion::AddressType);
        }
    }
    if endpoints.is_empty() && bad_addresses > 0 {
        return Err(Rejection::InvalidAddress);
    }
    let ports = slice
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            Some(PortInfo {
                name: p
                    .name
                    .as_deref()
                    .filter(|n| is_valid_label(n))
                    .map(Box::from),
                protocol: protocol_label(p.protocol.as_deref()),
                port: port_number(p.port?)?,
            })
        })
        .collect();
    Ok(SliceInfo {
        service: service.into(),
        endpoints: endpoints.into(),
        ports,
        excluded: excluded.into(),
        trigger_time: trigger_time(slice),
    })
}

/// The annotation the EndpointSlice controller sets to the time of the change that made it
/// write the slice (a Pod or Service change), RFC 3339.
pub const LAST_CHANGE_TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// The slice's [`LAST_CHANGE_TRIGGER_TIME`]; `None` when absent or not a valid time (the
/// latency of that change is then simply not measured, as in CoreDNS).
fn trigger_time(slice: &EndpointSlice) -> Option<TriggerTime> {
    let value = slice
        .metadata
        .annotations
        .as_ref()?
        .get(LAST_CHANGE_TRIGGER_TIME)?;
    let time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time =
        serde_json::from_value(serde_json::Value::String(value.clone())).ok()?;
    TriggerTime::new(SystemTime::from(time.0))
}

/// Reduce a Pod to its addresses.
pub fn pod_info(pod: &Pod) -> PodInfo {
    let status = pod.status.as_ref();
    let mut ips: Vec<IpAddr> = status
        .and_then(|s| s.pod_ips.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|p| p.ip.parse().ok())
        .collect();
    if let Some(ip) = status
        .and_then(|s| s.pod_ip.as_deref())
        .and_then(|ip| ip.parse().ok())
        && !ips.contains(&ip)
    {
        ips.push(ip);
    }
    PodInfo { ips }
}

/// One record as the zone keeps it: its data. The owner name is the name it is filed under
/// (a hickory [`Record`] carries a copy of its own: 272 bytes a record plus the name's heap,
/// ~90 MB of the 290,000 records of a 50,000-Service cluster), and the TTL is the zone's,
/// given when the record is read (8 bytes less for each of them), but for the few static
/// records that have one of their own ([`StoredRecord::with_ttl`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRecord {
    /// Its data.
    pub data: StoredData,
}

impl StoredRecord {
    /// A record of `data` with the zone's TTL, kept compact.
    pub fn new(data: RData) -> StoredRecord {
        StoredRecord {
            data: StoredData::from(data),
        }
    }

    /// A record with a TTL of its own (`dns-version`, as CoreDNS serves it).
    pub fn with_ttl(ttl: u32, data: RData) -> StoredRecord {
        StoredRecord {
            data: StoredData::Other(Box::new(OtherRecord {
                ttl: Some(ttl),
                data,
            })),
        }
    }

    /// Its type.
    pub fn record_type(&self) -> RecordType {
        match &self.data {
            StoredData::A(_) => RecordType::A,
            StoredData::Aaaa(_) => RecordType::AAAA,
            StoredData::Ptr(_) => RecordType::PTR,
            StoredData::Cname(_) => RecordType::CNAME,
            StoredData::Srv { .. } => RecordType::SRV,
            StoredData::Other(other) => other.data.record_type(),
        }
    }

    /// Its data in hickory's form.
    pub fn rdata(&self) -> RData {
        match &self.data {
            StoredData::A(ip) => RData::A(A(*ip)),
            StoredData::Aaaa(ip) => RData::AAAA(AAAA(*ip)),
            StoredData::Ptr(name) => RData::PTR(PTR(name.to_name())),
            StoredData::Cname(name) => RData::CNAME(CNAME(name.to_name())),
            StoredData::Srv {
                priority,
                weight,
                port,
                target,
            } => RData::SRV(SRV::new(*priority, *weight, *port, target.to_name())),
            StoredData::Other(other) => other.data.clone(),
        }
    }

    /// The record with `name` as its owner name (the spelling an answer echoes), in a zone
    /// whose TTL is `zone_ttl`.
    pub fn to_record(&self, name: &Name, zone_ttl: u32) -> Record {
        let ttl = match &self.data {
            StoredData::Other(other) => other.ttl.unwrap_or(zone_ttl),
            _ => zone_ttl,
        };
        Record::from_rdata(name.clone(), ttl, self.rdata())
    }
}

/// The data of the record types the zone holds by the hundred thousand, in as few bytes as
/// they need (hickory's `RData` is 184 bytes whatever the type, and its `Name` 80, which made
/// every A record as large as an SRV); anything else (the apex NS, the schema TXT) as hickory
/// has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoredData {
    /// A.
    A(std::net::Ipv4Addr),
    /// AAAA.
    Aaaa(std::net::Ipv6Addr),
    /// PTR.
    Ptr(WireName),
    /// CNAME.
    Cname(WireName),
    /// SRV.
    Srv {
        /// Priority.
        priority: u16,
        /// Weight.
        weight: u16,
        /// Port.
        port: u16,
        /// Target.
        target: WireName,
    },
    /// Any other type (the static records: the apex NS, the schema TXT).
    Other(Box<OtherRecord>),
}

/// A record of a type the zone holds only a few of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtherRecord {
    /// Its own TTL; `None`: the zone's.
    pub ttl: Option<u32>,
    /// Its data.
    pub data: RData,
}

impl From<RData> for StoredData {
    fn from(data: RData) -> StoredData {
        match data {
            RData::A(A(ip)) => StoredData::A(ip),
            RData::AAAA(AAAA(ip)) => StoredData::Aaaa(ip),
            RData::PTR(PTR(name)) => StoredData::Ptr(WireName::new(&name)),
            RData::CNAME(CNAME(name)) => StoredData::Cname(WireName::new(&name)),
            RData::SRV(srv) => StoredData::Srv {
                priority: srv.priority,
                weight: srv.weight,
                port: srv.port,
                target: WireName::new(&srv.target),
            },
            data => StoredData::Other(Box::new(OtherRecord { ttl: None, data })),
        }
    }
}

/// A name in wire form (its labels, each behind its length byte, without the root label),
/// spelled as given: one pointer and one allocation of the name's length, where a hickory
/// `Name` is 80 bytes inline (and a second allocation past 32 bytes of labels).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireName(Box<[u8]>);

impl WireName {
    /// `name` in wire form.
    pub fn new(name: &Name) -> WireName {
        WireName(wire_labels(name, &mut [0; 255], false).into())
    }

    /// The name again, fully qualified.
    pub fn to_name(&self) -> Name {
        name_from_wire_labels(&self.0)
    }
}

/// Writes `name`'s labels in wire form (each behind its length byte, no root label) into
/// `buffer`, in lower case if asked; returns the bytes written. Room for the longest name:
/// 255 bytes on the wire, root label included.
pub fn wire_labels<'a>(name: &Name, buffer: &'a mut [u8; 255], lower_case: bool) -> &'a [u8] {
    let mut at = 0;
    for label in name.iter() {
        let Some(slot) = buffer.get_mut(at..at + 1 + label.len()) else {
            break;
        };
        slot[0] = label.len() as u8;
        for (to, from) in slot[1..].iter_mut().zip(label) {
            *to = if lower_case {
                from.to_ascii_lowercase()
            } else {
                *from
            };
        }
        at += 1 + label.len();
    }
    &buffer[..at]
}

/// The name whose labels [`wire_labels`] wrote, fully qualified.
pub fn name_from_wire_labels(bytes: &[u8]) -> Name {
    let mut labels = Vec::new();
    let mut rest = bytes;
    while let Some((&len, tail)) = rest.split_first() {
        let (label, tail) = tail.split_at(usize::from(len).min(tail.len()));
        labels.push(label);
        rest = tail;
    }
    // The bytes came from a valid name: this cannot fail.
    Name::from_labels(labels).unwrap_or_else(|_| Name::root())
}

/// Every record one Service owns, by owner name (lower case, fully qualified).
pub type RecordsByName = BTreeMap<Name, Box<[StoredRecord]>>;

/// Where the records of one Service live: `<svc>.<ns>.svc.<zone>`.
pub fn service_name(service: &str, namespace: &str, origin: &Name) -> Option<Name> {
    if !is_valid_label(service) || !is_valid_label(namespace) {
        return None;
    }
    Name::from_ascii(service)
        .ok()?
        .append_name(&Name::from_ascii(namespace).ok()?)
        .ok()?
        .append_name(&Name::from_ascii("svc").ok()?)
        .ok()?
        .append_name(origin)
        .ok()
        .map(|n| n.to_lowercase())
}

/// The A or AAAA data of an address.
pub fn address_rdata(ip: IpAddr) -> RData {
    match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    }
}

/// SRV weight as CoreDNS computes it: the 100 points of a priority shared evenly by the
/// records of that priority, at least 1 (coredns plugin/backend_lookup.go, SRVRecords).
pub fn srv_weight(records_in_set: usize) -> u16 {
    let n = records_in_set.max(1) as f64;
    ((100.0 / (100.0 * n)) * 100.0).floor().max(1.0) as u16
}

/// Collects records per name, de-duplicated, and builds SRV sets with their weights at the end.
struct Builder {
    records: BTreeMap<Name, RecordSet>,
    srv: BTreeMap<Name, BTreeSet<(u16, Name)>>,
}

/// The records of one name in the order they were added, without duplicates. The set makes
/// adding constant time: a linear `contains` made a headless Service of n endpoints cost n²
/// (10,000 endpoints in 100 slices did not load in two minutes; loadtest/RESULTS.md).
#[derive(Default)]
struct RecordSet {
    data: Vec<RData>,
    seen: HashSet<RData>,
}

impl Builder {
    fn new() -> Builder {
        Builder {
            records: BTreeMap::new(),
            srv: BTreeMap::new(),
        }
    }

    fn add(&mut self, name: &Name, data: RData) {
        let set = self.records.entry(name.clone()).or_default();
        if set.seen.insert(data.clone()) {
            set.data.push(data);
        }
    }

    fn add_srv(&mut self, name: &Name, port: u16, target: &Name) {
        self.srv
            .entry(name.clone())
            .or_default()
            .insert((port, target.clone()));
    }

    /// `_<port>._<proto>.<owner>` for a named port, and the bare owner for every port.
    fn add_port(&mut self, owner: &Name, port: &PortInfo, target: &Name) {
        self.add_srv(owner, port.port, target);
        if let Some(port_name) = &port.name
            && let Ok(name) = Name::from_labels([
                format!("_{port_name}").as_bytes(),
                format!("_{}", port.protocol.label()).as_bytes(),
            ])
            .and_then(|prefix| prefix.append_name(owner))
        {
            self.add_srv(&name.to_lowercase(), port.port, target);
        }
    }

    fn finish(mut self) -> RecordsByName {
        for (name, set) in std::mem::take(&mut self.srv) {
            let weight = srv_weight(set.len());
            for (port, target) in set {
                self.add(&name, RData::SRV(SRV::new(0, weight, port, target)));
            }
        }
        self.records
            .into_iter()
            .map(|(name, set)| {
                // Into a new allocation of the exact size: collected from the `Vec<RData>`,
                // the records would reuse its allocation, six times their size.
                let mut records = Vec::with_capacity(set.data.len());
                records.extend(set.data.into_iter().map(StoredRecord::new));
                (name, records.into_boxed_slice())
            })
            .collect()
    }
}

/// Every record of one Service, given its EndpointSlices (specification sections 2.3 - 2.5).
///
/// - ClusterIP: A/AAAA per ClusterIP at the service name, SRV per named port pointing at the
///   service name, PTR per ClusterIP (2.3).
/// - Headless: A/AAAA per ready endpoint (all endpoints with `publishNotReadyAddresses`),
///   `<hostname-or-dashed-ip>.<svc>` per endpoint, SRV per named endpoint port per endpoint,
///   PTR per endpoint address (2.4). No ready endpoint: no records, so the name is NXDOMAIN.
/// - ExternalName: a CNAME (2.5).
pub fn service_records<'a>(
    info: &ServiceInfo,
    slices: impl IntoIterator<Item = &'a SliceInfo>,
    service_name: &Name,
) -> RecordsByName {
    let mut b = Builder::new();
    match &info.shape {
        ServiceShape::Unaddressed => {}
        ServiceShape::ExternalName(target) => {
            b.add(service_name, RData::CNAME(CNAME(target.to_name())));
        }
        ServiceShape::ClusterIp(ips) => {
            for ip in ips {
                b.add(service_name, address_rdata(*ip));
                b.add(&reverse_name(*ip), RData::PTR(PTR(service_name.clone())));
            }
            for port in &info.ports {
                b.add_port(service_name, port, service_name);
            }
        }
        ServiceShape::Headless => {
            for slice in slices {
                for endpoint in &slice.endpoints {
                    if endpoint_exclusion(info, endpoint).is_some() {
                        continue;
                    }
                    for ip in &endpoint.addresses {
                        let label = match &endpoint.hostname {
                            Some(hostname) => hostname.to_string(),
                            None => dashed_ip(*ip),
                        };
                        let Ok(endpoint_name) = Name::from_labels([label.as_bytes()])
                            .and_then(|l| l.append_name(service_name))
                            .map(|n| n.to_lowercase())
                        else {
                            continue;
                        };
                        b.add(service_name, address_rdata(*ip));
                        b.add(&endpoint_name, address_rdata(*ip));
                        b.add(&reverse_name(*ip), RData::PTR(PTR(endpoint_name.clone())));
                        for port in &slice.ports {
                            b.add_port(service_name, port, &endpoint_name);
                        }
                    }
                }
            }
        }
    }
    b.finish()
}
