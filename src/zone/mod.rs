//! The authoritative cluster zone: records per object, a name index, and `lookup`.
//!
//! ```text
//!  SourceEvent ──apply──▶ writer state (compact objects, records each owner published)
//!                              │ diff: only the names of the object that changed
//!                              ▼
//!                         name index (DashMap<NameKey, Node>) ◀──lookup── query handler
//!                         + empty non-terminals (DashMap<NameKey, u32>)
//! ```
//!
//! The zone owns the specification: which names exist, what they hold, and which negative
//! answer (NXDOMAIN or NODATA) a missing record gets. Applying one event costs in proportion to
//! the size of the one Service (with its EndpointSlices), Pod or Namespace that changed, never
//! to the size of the zone: there is no rebuild. Readers take a shard read lock for the
//! duration of one name lookup and never wait on the writer's own lock.
//!
//! The zone does no I/O and knows nothing of sockets, upstreams or where objects come from.
//!
//! Endpoints moving between EndpointSlices: the EndpointSlice controller may move an endpoint
//! from slice A to slice B of the same Service (rebalancing, a slice replaced by another), and
//! the watch can deliver A's update (endpoint gone) before B's (endpoint added). Applied as they
//! come, the Service's name would lose that address, or vanish (NXDOMAIN) if it was the only
//! one, for the moment between the two. So endpoints that leave a Service's slices *linger*:
//! they stay published for [`ENDPOINT_GRACE`] unless a slice of the same Service has their
//! address again by then (then that slice's version counts and the lingering copy is dropped at
//! once). When the grace ends they go. [`Zone::expire_endpoints`] ends the graces that are due;
//! [`Zone::run_endpoint_expiry`] drives it from a timer task (main.rs starts it).

pub mod explain;
pub mod name;
pub mod records;

use crate::config::PodMode;
use crate::ops::metrics::Metrics;
use crate::source::{
    ClusterObject, EventSink, ObjectKey, ObjectKind, ResourceVersion, SourceEvent,
};
use dashmap::DashMap;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{NS, SOA, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use records::{
    EndpointInfo, PodInfo, RecordsByName, Rejection, ServiceInfo, SliceInfo, StoredData,
    StoredRecord,
};
use smallvec::SmallVec;
use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// The version of the Kubernetes DNS schema this zone implements (specification 2.1).
pub const SCHEMA_VERSION: &str = "1.1.0";
/// TTL of `dns-version.<zone>`, as CoreDNS serves it.
const DNS_VERSION_TTL: u32 = 28800;
/// Largest TTL of the SOA record itself (CoreDNS); its minimum field still carries the zone TTL.
const MAX_SOA_TTL: u32 = 300;
/// How many CNAMEs inside the zone are followed before giving up.
const MAX_CNAME_CHAIN: usize = 8;
/// How long an endpoint that left its Service's EndpointSlices stays published (see the
/// module documentation). The two writes of a move are consecutive API calls of one
/// EndpointSlice controller sync, a few milliseconds apart, and one watch delivers them in
/// order; 2 s covers that with a wide margin (a slow watch, a retried write) while a genuinely
/// removed endpoint stays at most 2 s longer. That costs little: an endpoint that is being shut
/// down turns not-ready (and leaves the answers at once) long before it leaves its slice, and
/// clients cache answers for the zone TTL anyway.
pub const ENDPOINT_GRACE: Duration = Duration::from_secs(2);

/// How the zone is shaped.
#[derive(Clone, Debug)]
pub struct ZoneConfig {
    /// The zone apex, e.g. `cluster.local.`.
    pub origin: Name,
    /// TTL of every record and of negative answers (the SOA minimum).
    pub ttl: u32,
    /// Pod records mode.
    pub pods: PodMode,
}

/// What the zone says about a question.
#[derive(Debug)]
pub enum Lookup {
    /// Not a name this zone answers for: the handler forwards it upstream.
    NotOurs,
    /// An authoritative answer (AA).
    Answer(ZoneAnswer),
    /// The name was not found but the sources have not delivered their initial state yet:
    /// SERVFAIL, which clients retry, rather than NXDOMAIN, which they cache (as CoreDNS).
    NotSynced,
    /// A zone transfer (AXFR/IXFR): not offered.
    Refused,
}

/// An authoritative answer built from the zone.
#[derive(Debug, Default)]
pub struct ZoneAnswer {
    /// NOERROR (with data, or NODATA) or NXDOMAIN.
    pub rcode: ResponseCode,
    /// The answer section; owner names of records at the question name echo its case.
    pub answers: Vec<Record>,
    /// The authority section (the SOA of negative answers).
    pub authorities: Vec<Record>,
    /// The additional section (addresses of SRV targets).
    pub additionals: Vec<Record>,
    /// The CNAME chain left the zone at this name: the handler resolves it upstream for the
    /// question's type and appends what it finds.
    pub external_target: Option<Name>,
}

/// Who contributed records to a name. Several owners can share a name (two Services whose
/// IPs reverse to the same PTR name during a change, a Namespace and its Services).
type OwnerId = u64;
const STATIC_OWNER: OwnerId = 0;

/// A name as the index keys it: its labels in wire form (each behind its length byte), lower
/// case, without the root label. Names compare case-insensitively, so one key serves every
/// spelling. One pointer and one allocation of the name's length, where a hickory `Name` is
/// 80 bytes inline plus a second allocation for names longer than 32 bytes (SRV names are):
/// at 50,000 Services the index has about 260,000 names and its tables were 63 MB.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct NameKey(Box<[u8]>);

/// Room for the longest name's key (255 bytes of wire name, less the root label).
type KeyBuffer = [u8; 255];

impl NameKey {
    fn new(name: &Name) -> NameKey {
        NameKey(key_bytes(name, &mut [0; 255]).into())
    }

    /// The name again (fully qualified, lower case).
    fn to_name(&self) -> Name {
        records::name_from_wire_labels(&self.0)
    }
}

impl std::borrow::Borrow<[u8]> for NameKey {
    fn borrow(&self) -> &[u8] {
        &self.0
    }
}

/// `name`'s index key, written into `buffer` (no allocation: what a lookup uses).
fn key_bytes<'a>(name: &Name, buffer: &'a mut KeyBuffer) -> &'a [u8] {
    records::wire_labels(name, buffer, true)
}

/// One name in the index.
#[derive(Debug)]
struct Node {
    /// Records per owner. An owner with no records makes the name exist (NODATA).
    owners: Owners,
    /// How many names lie directly below this one: an empty non-terminal exists too.
    children: u32,
}

const _: () = assert!(std::mem::size_of::<Node>() == 32);

impl Node {
    fn records(&self) -> impl Iterator<Item = &StoredRecord> {
        self.owners.iter().flat_map(|(_, records)| records.iter())
    }
}

/// The records of a name, per owner. Almost every name has one owner: kept inline, in the 24
/// bytes of its id and records (a `Vec` cost 48 bytes more per name, 15 MB at 50,000
/// Services, and a `SmallVec` of one 8 bytes more, 2 MB, for the length it keeps). Two
/// variants only: the records' pointer, never null, tells them apart without a tag.
#[derive(Debug)]
enum Owners {
    One((OwnerId, Box<[StoredRecord]>)),
    /// More than one; or none, for the moment between a name losing its last owner and
    /// leaving the index. (Boxed: a `Vec` inline would make every name 8 bytes larger.)
    #[allow(clippy::box_collection)]
    Several(Box<Vec<(OwnerId, Box<[StoredRecord]>)>>),
}

const _: () = assert!(std::mem::size_of::<Owners>() == 24);

impl Owners {
    fn as_slice(&self) -> &[(OwnerId, Box<[StoredRecord]>)] {
        match self {
            Owners::One(one) => std::slice::from_ref(one),
            Owners::Several(several) => several,
        }
    }

    fn iter(&self) -> std::slice::Iter<'_, (OwnerId, Box<[StoredRecord]>)> {
        self.as_slice().iter()
    }

    fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }

    /// Puts `records` as `owner`'s; returns how many records `owner` had.
    fn replace(&mut self, owner: OwnerId, records: Box<[StoredRecord]>) -> usize {
        match self {
            Owners::One((o, old)) if *o == owner => std::mem::replace(old, records).len(),
            Owners::One(_) => {
                let several = Owners::Several(Box::new(Vec::with_capacity(2)));
                if let (Owners::One(one), Owners::Several(several)) =
                    (std::mem::replace(self, several), &mut *self)
                {
                    several.extend([one, (owner, records)]);
                }
                0
            }
            Owners::Several(several) => {
                if let Some(at) = several.iter().position(|(o, _)| *o == owner) {
                    return std::mem::replace(&mut several[at].1, records).len();
                }
                if several.is_empty() {
                    *self = Owners::One((owner, records));
                } else {
                    several.push((owner, records));
                }
                0
            }
        }
    }

    /// Takes `owner`'s records away; returns how many there were.
    fn remove(&mut self, owner: OwnerId) -> usize {
        match self {
            Owners::One((o, records)) if *o == owner => {
                let count = records.len();
                *self = Owners::Several(Box::default());
                count
            }
            Owners::One(_) => 0,
            Owners::Several(several) => {
                let Some(at) = several.iter().position(|(o, _)| *o == owner) else {
                    return 0;
                };
                let (_, records) = several.remove(at);
                if several.len() == 1
                    && let Some(one) = several.pop()
                {
                    *self = Owners::One(one);
                }
                records.len()
            }
        }
    }
}

/// The names of a Service's EndpointSlices, sorted: a vector, not a set (a set's first node
/// reserves room for 11 names, where a Service has one slice, or a few), and the first name
/// inline (a `Vec` grows to room for four names at the first insert: 5 MB at 50,000 Services).
#[derive(Debug, Default)]
struct SliceNames(SmallVec<[Box<str>; 1]>);

impl SliceNames {
    fn insert(&mut self, name: &str) {
        if let Err(at) = self.0.binary_search_by(|n| (**n).cmp(name)) {
            self.0.insert(at, name.into());
        }
    }

    fn remove(&mut self, name: &str) {
        if let Ok(at) = self.0.binary_search_by(|n| (**n).cmp(name)) {
            self.0.remove(at);
        }
    }

    fn iter(&self) -> impl Iterator<Item = &str> + Clone {
        self.0.iter().map(|n| &**n)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Endpoints in their grace, each with when it ends and the ports of the slice they left.
/// Almost always none: one pointer, not the 24 bytes of an empty `Vec` per Service.
#[derive(Debug, Default)]
#[allow(clippy::box_collection)] // the Box is the point: 8 bytes when empty
struct Lingering(Option<Box<Vec<(Instant, SliceInfo)>>>);

impl Lingering {
    fn push(&mut self, until: Instant, endpoints: SliceInfo) {
        self.0.get_or_insert_default().push((until, endpoints));
    }

    fn iter(&self) -> impl Iterator<Item = &(Instant, SliceInfo)> + Clone {
        self.0.iter().flat_map(|v| v.iter())
    }

    fn is_empty(&self) -> bool {
        self.0.is_none()
    }
}

impl From<Vec<(Instant, SliceInfo)>> for Lingering {
    fn from(lingering: Vec<(Instant, SliceInfo)>) -> Lingering {
        Lingering((!lingering.is_empty()).then(|| Box::new(lingering)))
    }
}

#[derive(Debug)]
struct ServiceEntry {
    owner: OwnerId,
    info: Option<ServiceInfo>,
    slices: SliceNames,
    /// Endpoints that left this Service's slices and are still published until their grace
    /// ends (each with the ports of the slice they left).
    lingering: Lingering,
    /// Where the Service object came from (for explanations).
    origin: Option<Origin>,
}

impl ServiceEntry {
    fn new(owner: OwnerId) -> ServiceEntry {
        ServiceEntry {
            owner,
            origin: None,
            info: None,
            slices: SliceNames::default(),
            lingering: Lingering::default(),
        }
    }
}

#[derive(Debug, Default)]
struct NamespaceEntry {
    owner: OwnerId,
    explicit: bool,
    services: usize,
    pods: usize,
    published: bool,
    /// Where the Namespace object came from, when there is one (for explanations).
    origin: Option<Origin>,
}

impl NamespaceEntry {
    fn exists(&self) -> bool {
        self.explicit || self.services > 0 || self.pods > 0
    }
}

/// Where an object the zone holds came from, kept per object for `clusterdns explain`: a few
/// words in 24 bytes, never the object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Origin {
    /// `metadata.resourceVersion`, if the object has one.
    resource_version: Option<ResourceVersion>,
    /// The manifest file that defines it (manifest source only).
    file: Option<FileId>,
    /// When the zone applied this version, in seconds since the Unix epoch (a `u32` lasts
    /// until 2106).
    changed: u32,
}

const _: () = assert!(std::mem::size_of::<Origin>() == 24);

/// A manifest path, by its number in [`WriterState::files`] (a file defines many objects:
/// one copy of each path, and 4 bytes an object instead of a 16-byte pointer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileId(std::num::NonZeroU32);

/// One EndpointSlice: what DNS needs of it, and where it came from (for explanations).
#[derive(Debug)]
struct SliceEntry {
    info: SliceInfo,
    origin: Origin,
}

/// A Service or EndpointSlice in the writer's maps: its namespace (one copy shared by the
/// namespace's objects, [`WriterState::object_id`]) and its name. A pair of `String`s is 48
/// bytes and two allocations: 5 MB more at 50,000 Services and as many EndpointSlices.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct ObjectId {
    namespace: Arc<str>,
    name: Box<str>,
}

impl ObjectId {
    /// An id to look an object up with (not interned: for keys that are not kept).
    fn lookup(namespace: &str, name: &str) -> ObjectId {
        ObjectId {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for ObjectId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Everything only the writer touches.
#[derive(Debug, Default)]
struct WriterState {
    next_owner: OwnerId,
    services: HashMap<ObjectId, ServiceEntry>,
    slices: HashMap<ObjectId, SliceEntry>,
    namespaces: HashMap<String, NamespaceEntry>,
    pods: HashMap<(String, String), PodInfo>,
    /// When lingering endpoints of which Service end their grace, oldest first. The grace is a
    /// constant, so appending keeps the queue in order and expiry only looks at its front.
    expiries: VecDeque<(Instant, ObjectId)>,
    /// The manifest paths objects came from, one copy each, numbered by [`FileId`] (never
    /// forgotten: a directory has far fewer files than objects).
    files: Vec<Arc<str>>,
    file_ids: HashMap<Arc<str>, FileId>,
    /// The shared copy of each namespace name the ids use; those no id uses any more are
    /// dropped whenever the set has doubled since the last sweep.
    namespace_names: HashSet<Arc<str>>,
    namespace_names_swept: usize,
    /// While a batch is applied: the Services to republish at its end
    /// ([`Zone::apply_batch`]), each with the records it had in the index before the batch
    /// first changed it (see [`Zone::published_records`]).
    deferred: Option<BTreeMap<ObjectId, RecordsByName>>,
    /// Programming latencies to observe once the batch that carries them is published.
    programmed: Vec<(&'static str, SystemTime)>,
}

impl WriterState {
    /// Where `object` came from, applied `now`.
    fn origin_of(&mut self, object: &ClusterObject, now: u32) -> Origin {
        Origin {
            resource_version: object.resource_version(),
            file: object.manifest_file().and_then(|file| self.file_id(file)),
            changed: now,
        }
    }

    /// The number of a manifest path (`None` past 4 billion paths: only explanations lose it).
    fn file_id(&mut self, file: &str) -> Option<FileId> {
        if let Some(id) = self.file_ids.get(file) {
            return Some(*id);
        }
        let id = FileId(std::num::NonZeroU32::new(
            u32::try_from(self.files.len() + 1).ok()?,
        )?);
        let file: Arc<str> = file.into();
        self.files.push(file.clone());
        self.file_ids.insert(file, id);
        Some(id)
    }

    /// The path of a manifest by its number.
    fn file(&self, id: FileId) -> Option<&str> {
        let index = usize::try_from(id.0.get()).ok()? - 1;
        self.files.get(index).map(|file| &**file)
    }

    /// The id of object `name` in `namespace`, with the namespace's shared name.
    /// Whether the zone holds this object (so that deleting it changes something).
    fn holds(&self, key: &ObjectKey) -> bool {
        match key.kind {
            ObjectKind::Service => self
                .services
                .get(&ObjectId::lookup(&key.namespace, &key.name))
                .is_some_and(|entry| entry.info.is_some()),
            ObjectKind::EndpointSlice => self
                .slices
                .contains_key(&ObjectId::lookup(&key.namespace, &key.name)),
            ObjectKind::Pod => self
                .pods
                .contains_key(&(key.namespace.clone(), key.name.clone())),
            ObjectKind::Namespace => self
                .namespaces
                .get(&key.name)
                .is_some_and(|entry| entry.explicit),
        }
    }

    fn object_id(&mut self, namespace: &str, name: &str) -> ObjectId {
        let namespace = match self.namespace_names.get(namespace) {
            Some(shared) => shared.clone(),
            None => {
                if self.namespace_names.len() >= 2 * self.namespace_names_swept.max(64) {
                    self.namespace_names
                        .retain(|shared| Arc::strong_count(shared) > 1);
                    self.namespace_names_swept = self.namespace_names.len();
                }
                let shared: Arc<str> = namespace.into();
                self.namespace_names.insert(shared.clone());
                shared
            }
        };
        ObjectId {
            namespace,
            name: name.into(),
        }
    }

    fn new_owner(&mut self) -> OwnerId {
        self.next_owner += 1;
        self.next_owner
    }
}

/// The cluster zone.
pub struct Zone {
    config: ZoneConfig,
    index: DashMap<NameKey, Node>,
    /// Empty non-terminals: names nobody owns that exist because names below them do (the
    /// `_tcp` of `_http._tcp.<svc>`), with their number of children. Kept apart from the
    /// index because they hold nothing: a fifth of the names at 50,000 Services, in 24-byte
    /// entries rather than 56. A name is in one of the two maps, never both for longer than
    /// the writer takes to move it (readers then find it in the index first).
    ents: DashMap<NameKey, u32>,
    /// `(namespace, ip)` of every Pod, for `pods verified`.
    pod_ips: DashMap<(String, IpAddr), u32>,
    serial: AtomicU32,
    /// Bumped after every change, once the change is in the index: an answer built at one
    /// generation is still the zone's answer while the generation is unchanged.
    generation: AtomicU64,
    synced: AtomicBool,
    /// When the last event was applied (seconds since the Unix epoch; 0: none yet).
    last_change: AtomicU64,
    writer: Mutex<WriterState>,
    /// Woken when the expiry queue gets its first entry (see [`Zone::run_endpoint_expiry`]).
    expiry_added: tokio::sync::Notify,
    metrics: Arc<Metrics>,
    soa_mname: Name,
    soa_rname: Name,
}

thread_local! {
    /// Rotates multi-address answers so clients spread over endpoints (CoreDNS `loadbalance`).
    static ROTATION: Cell<usize> = const { Cell::new(0) };
}

impl Zone {
    /// An empty zone with its static names: apex SOA/NS, `dns-version`, `svc`, `pod`.
    pub fn new(config: ZoneConfig, metrics: Arc<Metrics>) -> Zone {
        let origin = config.origin.to_lowercase();
        let child = |label: &str| {
            Name::from_ascii(label)
                .and_then(|l| l.append_name(&origin))
                .unwrap_or_else(|_| origin.clone())
        };
        let soa_mname = child("ns.dns");
        let soa_rname = child("hostmaster");
        let zone = Zone {
            config: ZoneConfig {
                origin: origin.clone(),
                ..config
            },
            index: DashMap::new(),
            ents: DashMap::new(),
            pod_ips: DashMap::new(),
            serial: AtomicU32::new(now_serial()),
            generation: AtomicU64::new(0),
            synced: AtomicBool::new(false),
            last_change: AtomicU64::new(0),
            writer: Mutex::new(WriterState::default()),
            expiry_added: tokio::sync::Notify::new(),
            metrics,
            soa_mname: soa_mname.clone(),
            soa_rname,
        };
        zone.put(
            &origin,
            STATIC_OWNER,
            Box::new([StoredRecord::new(RData::NS(NS(soa_mname)))]),
        );
        let version = child("dns-version");
        zone.put(
            &version,
            STATIC_OWNER,
            Box::new([StoredRecord::with_ttl(
                DNS_VERSION_TTL,
                RData::TXT(TXT::new(vec![SCHEMA_VERSION.to_string()])),
            )]),
        );
        zone.put(&child("svc"), STATIC_OWNER, Box::new([]));
        zone.put(&child("pod"), STATIC_OWNER, Box::new([]));
        zone
    }

    /// The zone apex.
    pub fn origin(&self) -> &Name {
        &self.config.origin
    }

    /// The TTL of the zone's records.
    pub fn ttl(&self) -> u32 {
        self.config.ttl
    }

    /// True once every source delivered its initial state.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// The SOA record of the zone (RFC 1035 3.3.13; values as CoreDNS serves them). The
    /// minimum (the negative-caching TTL, RFC 2308 section 4) is the zone TTL; the record's own
    /// TTL is the zone TTL capped at [`MAX_SOA_TTL`], as CoreDNS does (plugin/backend_lookup.go,
    /// `SOA`), which also caps how long a resolver caches a negative answer.
    pub fn soa(&self) -> Record {
        let ttl = self.config.ttl;
        Record::from_rdata(
            self.config.origin.clone(),
            ttl.min(MAX_SOA_TTL),
            RData::SOA(SOA::new(
                self.soa_mname.clone(),
                self.soa_rname.clone(),
                self.serial.load(Ordering::Relaxed),
                7200,
                1800,
                86400,
                ttl,
            )),
        )
    }

    // ---------------------------------------------------------------- reading

    /// Answers one question from the zone (see [`Lookup`]).
    pub fn lookup(&self, qname: &Name, qtype: RecordType) -> Lookup {
        let in_zone = self.config.origin.zone_of(qname);
        if matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
            return if in_zone {
                Lookup::Refused
            } else {
                Lookup::NotOurs
            };
        }
        if !in_zone {
            return self.lookup_reverse(qname, qtype);
        }
        if let Some(answer) = self.lookup_pod(qname, qtype) {
            return answer;
        }
        let mut answer = ZoneAnswer::default();
        let key = &mut [0; 255];
        let key = key_bytes(qname, key);
        let found = match self.index.get(key) {
            None => self.exists_without_node(key),
            Some(node) => {
                self.collect(&node, qname, qtype, &mut answer.answers);
                if answer.answers.is_empty()
                    && !matches!(qtype, RecordType::CNAME | RecordType::ANY)
                    && let Some(target) = cname_target(&node)
                {
                    let cname = node
                        .records()
                        .find(|r| r.record_type() == RecordType::CNAME)
                        .map(|r| r.to_record(qname, self.config.ttl));
                    drop(node);
                    answer.answers.extend(cname);
                    return self.follow_cname(target, qtype, answer);
                }
                true
            }
        };
        if !found {
            return self.negative(ResponseCode::NXDomain, answer);
        }
        if qname == &self.config.origin && matches!(qtype, RecordType::SOA | RecordType::ANY) {
            let mut soa = self.soa();
            soa.name = qname.clone();
            answer.answers.insert(0, soa);
        }
        if answer.answers.is_empty() {
            return self.negative(ResponseCode::NoError, answer);
        }
        if qtype == RecordType::SRV {
            self.add_srv_targets(&mut answer);
        }
        Lookup::Answer(answer)
    }

    /// A negative answer with the SOA in the authority section (RFC 2308 section 3). Before the
    /// initial sync a missing name is SERVFAIL instead.
    fn negative(&self, rcode: ResponseCode, mut answer: ZoneAnswer) -> Lookup {
        if rcode == ResponseCode::NXDomain && !self.is_synced() {
            return Lookup::NotSynced;
        }
        answer.rcode = rcode;
        answer.authorities.push(self.soa());
        Lookup::Answer(answer)
    }

    /// Records of `qtype` at a node, owner names set to the question's spelling.
    fn collect(&self, node: &Node, qname: &Name, qtype: RecordType, out: &mut Vec<Record>) {
        let start = out.len();
        for record in node.records() {
            if qtype == RecordType::ANY || record.record_type() == qtype {
                out.push(record.to_record(qname, self.config.ttl));
            }
        }
        let added = out.len() - start;
        if added > 1 && matches!(qtype, RecordType::A | RecordType::AAAA) {
            let turn = ROTATION.with(|r| {
                let n = r.get().wrapping_add(1);
                r.set(n);
                n
            });
            out[start..].rotate_left(turn % added);
        }
    }

    /// A name the index did not have a moment ago that exists: an empty non-terminal, or one
    /// the writer just moved from `ents` into the index (it adds it there before it takes it
    /// out of `ents`, so looking twice cannot miss it).
    fn exists_without_node(&self, key: &[u8]) -> bool {
        self.ents.contains_key(key) || self.index.contains_key(key)
    }

    /// Follows a CNAME chain inside the zone; stops at the first name outside it, which the
    /// handler resolves upstream. The rcode is the one of the last name (RFC 6604 section 2.1).
    fn follow_cname(&self, mut target: Name, qtype: RecordType, mut answer: ZoneAnswer) -> Lookup {
        for _ in 0..MAX_CNAME_CHAIN {
            if !self.config.origin.zone_of(&target) {
                answer.external_target = Some(target);
                return Lookup::Answer(answer);
            }
            let key = &mut [0; 255];
            let key = key_bytes(&target, key);
            let Some(node) = self.index.get(key) else {
                let rcode = if self.exists_without_node(key) {
                    ResponseCode::NoError
                } else {
                    ResponseCode::NXDomain
                };
                return self.negative(rcode, answer);
            };
            let before = answer.answers.len();
            self.collect(&node, &target, qtype, &mut answer.answers);
            if answer.answers.len() > before {
                return Lookup::Answer(answer);
            }
            let Some(next) = cname_target(&node) else {
                drop(node);
                return self.negative(ResponseCode::NoError, answer);
            };
            if let Some(cname) = node
                .records()
                .find(|r| r.record_type() == RecordType::CNAME)
            {
                answer
                    .answers
                    .push(cname.to_record(&node.key().to_name(), self.config.ttl));
            }
            target = next;
        }
        warn!(name = %target, "CNAME chain inside the zone is too long; answering with what was found");
        Lookup::Answer(answer)
    }

    /// Addresses of SRV targets go in the additional section (RFC 2782, "Target").
    fn add_srv_targets(&self, answer: &mut ZoneAnswer) {
        let mut seen = BTreeSet::new();
        for record in &answer.answers {
            if let RData::SRV(srv) = &record.data
                && seen.insert(srv.target.clone())
                && let Some(node) = self.index.get(key_bytes(&srv.target, &mut [0; 255]))
            {
                let owner = node.key().to_name();
                answer.additionals.extend(
                    node.records()
                        .filter(|r| matches!(r.record_type(), RecordType::A | RecordType::AAAA))
                        .map(|r| r.to_record(&owner, self.config.ttl)),
                );
            }
        }
    }

    /// PTR records for cluster IPs and endpoints. Any other reverse name, and any other type,
    /// belongs to the upstream resolvers.
    fn lookup_reverse(&self, qname: &Name, qtype: RecordType) -> Lookup {
        if !matches!(qtype, RecordType::PTR | RecordType::ANY) {
            return Lookup::NotOurs;
        }
        let Some(node) = self.index.get(key_bytes(qname, &mut [0; 255])) else {
            return Lookup::NotOurs;
        };
        let mut answer = ZoneAnswer::default();
        self.collect(&node, qname, RecordType::PTR, &mut answer.answers);
        if answer.answers.is_empty() {
            return Lookup::NotOurs;
        }
        Lookup::Answer(answer)
    }

    /// `<dashed-ip>.<ns>.pod.<zone>` (CoreDNS `pods` option). `None` when the name is not
    /// under `pod.<zone>` at pod depth.
    fn lookup_pod(&self, qname: &Name, qtype: RecordType) -> Option<Lookup> {
        let relative = usize::from(qname.num_labels() - self.config.origin.num_labels());
        if relative < 3 {
            return None;
        }
        let labels: Vec<&[u8]> = qname.iter().take(relative).collect();
        if !labels[relative - 1].eq_ignore_ascii_case(b"pod") {
            return None;
        }
        let nxdomain = || Some(self.negative(ResponseCode::NXDomain, ZoneAnswer::default()));
        if relative > 3 || self.config.pods == PodMode::Disabled {
            return nxdomain();
        }
        let (Ok(label), Ok(namespace)) = (
            std::str::from_utf8(labels[0]),
            std::str::from_utf8(labels[1]),
        ) else {
            return nxdomain();
        };
        let Some(ip) = name::parse_dashed_ip(label) else {
            return nxdomain();
        };
        let namespace = namespace.to_ascii_lowercase();
        let known = match self.config.pods {
            PodMode::Verified => self.pod_ips.contains_key(&(namespace, ip)),
            _ => self
                .index
                .contains_key(key_bytes(&qname.base_name(), &mut [0; 255])),
        };
        if !known {
            return nxdomain();
        }
        let record = Record::from_rdata(qname.clone(), self.config.ttl, records::address_rdata(ip));
        let mut answer = ZoneAnswer::default();
        if qtype == RecordType::ANY || record.record_type() == qtype {
            answer.answers.push(record);
            Some(Lookup::Answer(answer))
        } else {
            Some(self.negative(ResponseCode::NoError, answer))
        }
    }

    // ---------------------------------------------------------------- writing

    fn lock(&self) -> MutexGuard<'_, WriterState> {
        // A panic while applying an event must not stop every later update.
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_forward_name(&self, name: &Name) -> bool {
        self.config.origin.zone_of(name)
    }

    fn name_gauge(&self, name: &Name) -> &'static str {
        if self.is_forward_name(name) {
            "forward"
        } else {
            "reverse"
        }
    }

    /// Sets `owner`'s records at `name`; creates the name (and links it to its parent), or
    /// turns the empty non-terminal it was into a node of the index.
    fn put(&self, name: &Name, owner: OwnerId, records: Box<[StoredRecord]>) {
        let mut created = false;
        let mut was_ent = false;
        {
            let mut buffer = [0; 255];
            let key = key_bytes(name, &mut buffer);
            let added = records.len() as i64;
            let replaced = match self.index.entry(NameKey::new(name)) {
                dashmap::Entry::Occupied(mut node) => node.get_mut().owners.replace(owner, records),
                dashmap::Entry::Vacant(vacant) => {
                    created = true;
                    let children = self.ents.get(key).map(|n| *n);
                    was_ent = children.is_some();
                    vacant.insert(Node {
                        owners: Owners::One((owner, records)),
                        children: children.unwrap_or(0),
                    });
                    0
                }
            } as i64;
            self.metrics.zone_records.add(added - replaced);
            if was_ent {
                // In the index now: readers find it there first.
                self.ents.remove(key);
            }
        }
        if created && !was_ent {
            self.count_name(name, 1);
            self.link_to_parent(name);
        }
    }

    /// A new node counts as a child of its parent; a missing parent is created as an empty
    /// non-terminal, and so on up to the names right under the apex.
    fn link_to_parent(&self, name: &Name) {
        let mut current = name.clone();
        while let Some(parent) = self.tracked_parent(&current) {
            let key = NameKey::new(&parent);
            if let Some(mut node) = self.index.get_mut(&key) {
                node.children += 1;
                return;
            }
            let mut created = false;
            *self.ents.entry(key).or_insert_with(|| {
                created = true;
                0
            }) += 1;
            if !created {
                return;
            }
            self.count_name(&parent, 1);
            current = parent;
        }
    }

    /// Removes `owner`'s records at `name`. A name nobody owns any more becomes an empty
    /// non-terminal if it has children, or is gone, and so is every empty non-terminal above
    /// it that it leaves childless.
    fn remove(&self, name: &Name, owner: OwnerId) {
        let key = NameKey::new(name);
        let orphaned_children = match self.index.get_mut(&key) {
            Some(mut node) => {
                let removed = node.owners.remove(owner) as i64;
                self.metrics.zone_records.sub(removed);
                node.owners.is_empty().then_some(node.children)
            }
            None => None,
        };
        let Some(children) = orphaned_children else {
            return;
        };
        if children > 0 {
            // Still there, as an empty non-terminal (in `ents` before it leaves the index).
            self.ents.insert(key.clone(), children);
            self.index.remove(&key);
            return;
        }
        self.index.remove(&key);
        self.count_name(name, -1);
        let mut current = name.clone();
        while let Some(parent) = self.tracked_parent(&current) {
            let key = NameKey::new(&parent);
            if let Some(mut node) = self.index.get_mut(&key) {
                node.children = node.children.saturating_sub(1);
                return;
            }
            let childless = match self.ents.get_mut(&key) {
                Some(mut children) => {
                    *children = children.saturating_sub(1);
                    *children == 0
                }
                None => false,
            };
            if !childless || self.ents.remove_if(&key, |_, n| *n == 0).is_none() {
                return;
            }
            self.count_name(&parent, -1);
            current = parent;
        }
    }

    /// The parent whose existence depends on `name`: none for names right under the apex
    /// (their parent is the apex, always there) and none for reverse names (`in-addr.arpa`
    /// belongs to the upstream resolvers except for the exact names the cluster owns).
    fn tracked_parent(&self, name: &Name) -> Option<Name> {
        (self.is_forward_name(name) && name.num_labels() > self.config.origin.num_labels() + 1)
            .then(|| name.base_name())
    }

    fn count_name(&self, name: &Name, delta: i64) {
        self.metrics
            .zone_names
            .with_label_values(&[self.name_gauge(name)])
            .add(delta);
    }

    /// The zone's generation: read it *before* a lookup to tag what the lookup built.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn bump_serial(&self) {
        self.generation.fetch_add(1, Ordering::Release);
        let now = now_serial();
        let _ = self
            .serial
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some(now.max(old.wrapping_add(1)))
            });
    }

    fn reject(&self, kind: ObjectKind, key: &dyn std::fmt::Display, reason: Rejection) {
        warn!(object = %key, reason = reason.as_str(), "object skipped; the rest of the zone keeps serving");
        self.metrics
            .objects_rejected
            .with_label_values(&[&kind.to_string(), reason.as_str()])
            .inc();
    }

    /// Applies one event from a source.
    pub fn apply(&self, event: SourceEvent) {
        self.apply_batch(std::iter::once(event));
    }

    /// Applies events in order under one writer lock, and republishes each Service they
    /// touch once, at the end: a file or a list that brings a Service's 100 EndpointSlices
    /// rebuilds it once, not 100 times (the records of a large headless Service cost in
    /// proportion to its size on each rebuild). Readers see the batch's names change one
    /// Service at a time, as with single events.
    pub fn apply_batch(&self, events: impl IntoIterator<Item = SourceEvent>) {
        let mut state = self.lock();
        self.last_change.store(unix_now(), Ordering::Relaxed);
        state.deferred = Some(BTreeMap::new());
        let mut changed = false;
        for event in events {
            changed |= self.apply_locked(&mut state, event);
        }
        let now = Instant::now();
        for (service_id, published) in state.deferred.take().into_iter().flatten() {
            self.publish(&mut state, &service_id, published, now);
        }
        for (kind, triggered) in std::mem::take(&mut state.programmed) {
            // A trigger time ahead of our clock (skew with the control plane) counts as 0.
            let latency = SystemTime::now()
                .duration_since(triggered)
                .unwrap_or_default();
            self.metrics
                .dns_programming_duration
                .with_label_values(&[kind])
                .observe(latency.as_secs_f64());
        }
        if changed {
            self.bump_serial();
        }
    }

    /// One event; true when it may have changed the zone.
    fn apply_locked(&self, state: &mut WriterState, event: SourceEvent) -> bool {
        match event {
            SourceEvent::InitialSyncDone => {
                self.synced.store(true, Ordering::Release);
                self.metrics.synced.set(1);
                true // missing names turn from SERVFAIL into NXDOMAIN
            }
            SourceEvent::Apply(object) => {
                let Some(key) = object.key() else {
                    self.metrics
                        .objects_rejected
                        .with_label_values(&[&object.kind().to_string(), "no_name"])
                        .inc();
                    return false;
                };
                // Namespace and Service names become labels of the zone; Pod and EndpointSlice
                // names never do (they may be dotted subdomains), only their namespace does.
                let name_is_label = matches!(key.kind, ObjectKind::Service | ObjectKind::Namespace);
                let namespace_ok =
                    key.kind == ObjectKind::Namespace || name::is_valid_label(&key.namespace);
                if !namespace_ok || (name_is_label && !name::is_valid_label(&key.name)) {
                    self.reject(key.kind, &key, Rejection::InvalidName);
                    return false;
                }
                let now = u32::try_from(unix_now()).unwrap_or(u32::MAX);
                let origin = state.origin_of(&object, now);
                match object {
                    ClusterObject::Service(service) => match records::service_info(&service) {
                        Ok(info) => self.set_service(state, &key, Some((info, origin))),
                        Err(reason) => self.reject(key.kind, &key, reason),
                    },
                    ClusterObject::EndpointSlice(slice) => match records::slice_info(&slice) {
                        Ok(info) => self.set_slice(state, &key, Some((info, origin))),
                        Err(reason) => self.reject(key.kind, &key, reason),
                    },
                    ClusterObject::Pod(pod) => {
                        self.set_pod(state, &key, Some(records::pod_info(&pod)))
                    }
                    ClusterObject::Namespace(_) => {
                        self.set_namespace(state, &key.name, Some(origin))
                    }
                }
                true
            }
            SourceEvent::Delete(key) => {
                // Sources pass on every delete they see (a relist's, or one of an object this
                // zone rejected); one of an object the zone does not hold changes nothing, so
                // it must not move the serial nor drop the prebuilt answers.
                if !state.holds(&key) {
                    debug!(object = %key, "delete of an object the zone does not hold; nothing to do");
                    return false;
                }
                match key.kind {
                    ObjectKind::Service => self.set_service(state, &key, None),
                    ObjectKind::EndpointSlice => self.set_slice(state, &key, None),
                    ObjectKind::Pod => self.set_pod(state, &key, None),
                    ObjectKind::Namespace => self.set_namespace(state, &key.name, None),
                }
                true
            }
        }
    }

    fn set_service(
        &self,
        state: &mut WriterState,
        key: &ObjectKey,
        info: Option<(ServiceInfo, Origin)>,
    ) {
        let (info, origin) = info.unzip();
        let id = state.object_id(&key.namespace, &key.name);
        let was_present = state
            .services
            .get(&id)
            .is_some_and(|entry| entry.info.is_some());
        let is_present = info.is_some();
        if !was_present && !is_present && !state.services.contains_key(&id) {
            return;
        }
        self.touch(state, &id);
        let owner = match state.services.get(&id) {
            Some(entry) => entry.owner,
            None => state.new_owner(),
        };
        let entry = state
            .services
            .entry(id.clone())
            .or_insert_with(|| ServiceEntry::new(owner));
        entry.info = info;
        entry.origin = keep_change_time(entry.origin.take(), origin);
        self.republish(state, &id, Instant::now());
        if was_present != is_present {
            let delta: isize = if is_present { 1 } else { -1 };
            self.metrics.zone_services.add(delta as i64);
            let ns = state.namespaces.entry(key.namespace.clone()).or_default();
            ns.services = ns.services.saturating_add_signed(delta);
            self.sync_namespace(state, &key.namespace);
        }
    }

    fn set_slice(
        &self,
        state: &mut WriterState,
        key: &ObjectKey,
        info: Option<(SliceInfo, Origin)>,
    ) {
        let now = Instant::now();
        let slice_id = state.object_id(&key.namespace, &key.name);
        let new_service = info.as_ref().map(|(s, _)| s.service.to_string());
        let old_service = state
            .slices
            .get(&slice_id)
            .map(|e| e.info.service.to_string());
        for service in [&old_service, &new_service].into_iter().flatten() {
            let service_id = state.object_id(&key.namespace, service);
            self.touch(state, &service_id);
        }
        let old = match info {
            Some((info, origin)) => {
                let old = state.slices.get(&slice_id).map(|e| e.origin.clone());
                let origin = keep_change_time(old, Some(origin)).unwrap_or_default();
                state
                    .slices
                    .insert(slice_id.clone(), SliceEntry { info, origin })
            }
            None => state.slices.remove(&slice_id),
        }
        .map(|entry| entry.info);
        let current = state.slices.get(&slice_id).map(|e| &e.info);
        let endpoint_count = |s: Option<&SliceInfo>| s.map_or(0, |s| s.endpoints.len() as i64);
        self.metrics
            .zone_endpoints
            .add(endpoint_count(current) - endpoint_count(old.as_ref()));
        // The programming latency of a change is measured once, when the slice that carries
        // it is applied; a relist re-delivering an unchanged slice is not a change.
        let programmed = current
            .filter(|new| old.as_ref() != Some(*new))
            .and_then(|new| Some((new.trigger_time?.time(), new.service.to_string())));
        // Endpoints this change takes away from the slice's (old) Service linger for a grace
        // (module documentation): those of a deleted or relabelled slice, and those whose
        // addresses the new version of the slice no longer has.
        if let Some(old) = &old {
            let kept: HashSet<IpAddr> = match state.slices.get(&slice_id).map(|e| &e.info) {
                Some(new) if new.service == old.service => new
                    .endpoints
                    .iter()
                    .flat_map(|e| e.addresses.iter().copied())
                    .collect(),
                _ => HashSet::new(),
            };
            let gone: Vec<EndpointInfo> = old
                .endpoints
                .iter()
                .filter(|e| !e.addresses.iter().any(|ip| kept.contains(ip)))
                .cloned()
                .collect();
            let service_id = state.object_id(&key.namespace, &old.service);
            // Only a headless Service publishes its endpoints; a ClusterIP Service's answers
            // do not depend on them, so endpoint churn there queues nothing.
            if !gone.is_empty()
                && let Some(entry) = state.services.get_mut(&service_id)
                && entry
                    .info
                    .as_ref()
                    .is_some_and(|i| i.shape == records::ServiceShape::Headless)
            {
                let until = now + ENDPOINT_GRACE;
                entry.lingering.push(
                    until,
                    SliceInfo {
                        service: old.service.clone(),
                        endpoints: gone.into(),
                        ports: old.ports.clone(),
                        excluded: Box::default(),
                        trigger_time: None,
                    },
                );
                if state.expiries.is_empty() {
                    self.expiry_added.notify_one();
                }
                state.expiries.push_back((until, service_id));
            }
        }
        // A slice that moved to another service leaves the old one first.
        if let Some(old) = old
            .map(|s| s.service.to_string())
            .filter(|old| Some(old) != new_service.as_ref())
        {
            let service_id = state.object_id(&key.namespace, &old);
            if let Some(entry) = state.services.get_mut(&service_id) {
                entry.slices.remove(&key.name);
            }
            self.republish(state, &service_id, now);
        }
        if let Some(new) = new_service {
            let service_id = state.object_id(&key.namespace, &new);
            if !state.services.contains_key(&service_id) {
                let owner = state.new_owner();
                state
                    .services
                    .insert(service_id.clone(), ServiceEntry::new(owner));
            }
            if let Some(entry) = state.services.get_mut(&service_id) {
                entry.slices.insert(&key.name);
            }
            self.republish(state, &service_id, now);
        }
        if let Some((triggered, service)) = programmed {
            let service_id = ObjectId::lookup(&key.namespace, &service);
            self.observe_programming(state, service_id, triggered);
        }
    }

    /// `coredns_kubernetes_dns_programming_duration_seconds`: from the change the EndpointSlice
    /// controller recorded to the moment its records are in the index (observed when the
    /// batch that carries it is published). Like CoreDNS, only for a Service the zone knows
    /// (`cluster_ip`, or `headless_with_selector`: a slice with the annotation was written by
    /// the controller, so the Service has a selector), and not for the initial state, whose
    /// changes happened before this server started.
    fn observe_programming(
        &self,
        state: &mut WriterState,
        service_id: ObjectId,
        triggered: SystemTime,
    ) {
        if !self.is_synced() {
            return;
        }
        let kind = match state
            .services
            .get(&service_id)
            .and_then(|e| e.info.as_ref())
        {
            Some(info) if info.shape == records::ServiceShape::Headless => "headless_with_selector",
            Some(_) => "cluster_ip",
            None => return,
        };
        state.programmed.push((kind, triggered));
    }

    /// Ends the grace of lingering endpoints that is over at `now` (their Services are
    /// published again without them); returns when the next grace ends. Costs in proportion to
    /// the Services whose grace ends, never to the size of the zone.
    pub fn expire_endpoints(&self, now: Instant) -> Option<Instant> {
        let mut state = self.lock();
        let mut changed = false;
        while let Some((until, _)) = state.expiries.front()
            && *until <= now
        {
            let Some((_, service_id)) = state.expiries.pop_front() else {
                break;
            };
            let due = state
                .services
                .get(&service_id)
                .is_some_and(|e| e.lingering.iter().any(|(until, _)| *until <= now));
            if due {
                self.republish(&mut state, &service_id, now);
                changed = true;
            }
        }
        if changed {
            self.bump_serial();
        }
        state.expiries.front().map(|(until, _)| *until)
    }

    /// Runs [`Zone::expire_endpoints`] whenever a grace ends, until `cancel`.
    pub async fn run_endpoint_expiry(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            let next = self.expire_endpoints(Instant::now());
            let wait = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = wait => {}
                _ = self.expiry_added.notified() => {}
            }
        }
    }

    /// The records a Service has in the index, computed from the writer state as its last
    /// publication left it: its Service, the slices it lists and the lingering endpoints it
    /// kept. Every change to those goes through [`Zone::touch`] first and ends in
    /// [`Zone::publish`], so the index holds exactly these and they need not be stored a
    /// second time (a copy per Service, by name, was 17 MB at 50,000 Services).
    fn published_records(&self, state: &WriterState, service_id: &ObjectId) -> RecordsByName {
        let Some(entry) = state.services.get(service_id) else {
            return RecordsByName::new();
        };
        let live = self.live_slices(state, service_id, entry);
        self.service_records(
            service_id,
            entry,
            live.chain(entry.lingering.iter().map(|(_, s)| s)),
        )
    }

    /// The slices a Service lists, as the writer has them.
    fn live_slices<'a>(
        &self,
        state: &'a WriterState,
        service_id: &'a ObjectId,
        entry: &'a ServiceEntry,
    ) -> impl Iterator<Item = &'a SliceInfo> + Clone {
        entry
            .slices
            .iter()
            .filter_map(|s| {
                state.slices.get(&ObjectId {
                    namespace: service_id.namespace.clone(),
                    name: s.into(),
                })
            })
            .map(|e| &e.info)
    }

    /// Every record of a Service given the slices that count (none without a Service object).
    fn service_records<'a>(
        &self,
        service_id: &ObjectId,
        entry: &ServiceEntry,
        slices: impl Iterator<Item = &'a SliceInfo>,
    ) -> RecordsByName {
        match (
            &entry.info,
            records::service_name(&service_id.name, &service_id.namespace, &self.config.origin),
        ) {
            (Some(info), Some(name)) => records::service_records(info, slices, &name),
            _ => RecordsByName::new(),
        }
    }

    /// To be called before anything a Service's records depend on changes: inside a batch,
    /// notes the records it has now (once, at the first change) and defers its publication to
    /// the end of the batch.
    fn touch(&self, state: &mut WriterState, service_id: &ObjectId) {
        if state
            .deferred
            .as_ref()
            .is_none_or(|deferred| deferred.contains_key(service_id))
        {
            return;
        }
        let published = self.published_records(state, service_id);
        if let Some(deferred) = state.deferred.as_mut() {
            deferred.insert(service_id.clone(), published);
        }
    }

    /// Republishes a Service whose inputs did not change since its last publication (the end
    /// of a lingering endpoint's grace); inside a batch, at the batch's end.
    fn republish(&self, state: &mut WriterState, service_id: &ObjectId, now: Instant) {
        if state.deferred.is_some() {
            self.touch(state, service_id);
            return;
        }
        let published = self.published_records(state, service_id);
        self.publish(state, service_id, published, now);
    }

    /// Recomputes one Service's records and changes only the names whose records differ from
    /// `published` (what the index has for it). Lingering endpoints whose grace is over at
    /// `now`, or whose address a slice of the Service has again, are dropped first.
    fn publish(
        &self,
        state: &mut WriterState,
        service_id: &ObjectId,
        published: RecordsByName,
        now: Instant,
    ) {
        // A Service leaves the writer only here, once it has no records: without an entry,
        // `published` is empty.
        let Some(entry) = state.services.get(service_id) else {
            return;
        };
        let live = self.live_slices(state, service_id, entry);
        let lingering: Vec<(Instant, SliceInfo)> = if entry.lingering.is_empty() {
            Vec::new()
        } else {
            let addresses: HashSet<IpAddr> = live
                .clone()
                .flat_map(|s| s.endpoints.iter())
                .flat_map(|e| e.addresses.iter().copied())
                .collect();
            entry
                .lingering
                .iter()
                .filter(|(until, _)| *until > now)
                .filter_map(|(until, slice)| {
                    let endpoints: Vec<EndpointInfo> = slice
                        .endpoints
                        .iter()
                        .filter(|e| !e.addresses.iter().any(|ip| addresses.contains(ip)))
                        .cloned()
                        .collect();
                    (!endpoints.is_empty()).then(|| {
                        (
                            *until,
                            SliceInfo {
                                endpoints: endpoints.into(),
                                ..slice.clone()
                            },
                        )
                    })
                })
                .collect()
        };
        let fresh = self.service_records(
            service_id,
            entry,
            live.chain(lingering.iter().map(|(_, s)| s)),
        );
        let owner = entry.owner;
        for name in published.keys().filter(|n| !fresh.contains_key(*n)) {
            self.remove(name, owner);
        }
        debug!(service = %service_id, names = fresh.len(), lingering = lingering.len(), "service records published");
        for (name, records) in fresh {
            // Unchanged: the index keeps the set it holds.
            if published.get(&name) != Some(&records) {
                self.put(&name, owner, records);
            }
        }
        let remove_entry = entry.info.is_none() && entry.slices.is_empty();
        if remove_entry {
            state.services.remove(service_id);
        } else if let Some(entry) = state.services.get_mut(service_id) {
            entry.lingering = lingering.into();
        }
    }

    fn set_pod(&self, state: &mut WriterState, key: &ObjectKey, info: Option<PodInfo>) {
        if self.config.pods == PodMode::Disabled {
            return;
        }
        let id = (key.namespace.clone(), key.name.clone());
        let old = match info {
            Some(info) => {
                for ip in &info.ips {
                    *self
                        .pod_ips
                        .entry((key.namespace.clone(), *ip))
                        .or_insert(0) += 1;
                }
                state.pods.insert(id, info)
            }
            None => state.pods.remove(&id),
        };
        let existed = old.is_some();
        for ip in old.into_iter().flat_map(|o| o.ips) {
            let ip_key = (key.namespace.clone(), ip);
            let gone = match self.pod_ips.get_mut(&ip_key) {
                Some(mut n) => {
                    *n = n.saturating_sub(1);
                    *n == 0
                }
                None => false,
            };
            if gone {
                self.pod_ips.remove_if(&ip_key, |_, n| *n == 0);
            }
        }
        let exists = state
            .pods
            .contains_key(&(key.namespace.clone(), key.name.clone()));
        if existed != exists {
            let ns = state.namespaces.entry(key.namespace.clone()).or_default();
            ns.pods = if exists {
                ns.pods + 1
            } else {
                ns.pods.saturating_sub(1)
            };
            self.sync_namespace(state, &key.namespace);
        }
    }

    /// `origin` is the Namespace object's; `None` when it was deleted.
    fn set_namespace(&self, state: &mut WriterState, namespace: &str, origin: Option<Origin>) {
        let entry = state.namespaces.entry(namespace.to_string()).or_default();
        entry.explicit = origin.is_some();
        entry.origin = keep_change_time(entry.origin.take(), origin);
        self.sync_namespace(state, namespace);
    }

    /// `<ns>.svc.<zone>` (and `<ns>.pod.<zone>` when pod records are on) exist exactly while
    /// the namespace does: NODATA rather than NXDOMAIN for a real namespace.
    fn sync_namespace(&self, state: &mut WriterState, namespace: &str) {
        let Some(entry) = state.namespaces.get(namespace) else {
            return;
        };
        let exists = entry.exists();
        if exists == entry.published {
            if !exists {
                state.namespaces.remove(namespace);
            }
            return;
        }
        let owner = if entry.owner == 0 {
            state.new_owner()
        } else {
            entry.owner
        };
        for sub in ["svc", "pod"] {
            if sub == "pod" && self.config.pods == PodMode::Disabled {
                continue;
            }
            let Ok(name) = Name::from_labels([namespace.as_bytes(), sub.as_bytes()])
                .and_then(|n| n.append_name(&self.config.origin))
            else {
                continue;
            };
            let name = name.to_lowercase();
            if exists {
                self.put(&name, owner, Box::new([]));
            } else {
                self.remove(&name, owner);
            }
        }
        if exists {
            if let Some(entry) = state.namespaces.get_mut(namespace) {
                entry.owner = owner;
                entry.published = true;
            }
        } else {
            state.namespaces.remove(namespace);
        }
    }

    /// Number of names in the index (for tests and the scale benchmark).
    pub fn name_count(&self) -> usize {
        self.index.len() + self.ents.len()
    }
}

impl EventSink for Zone {
    fn handle(&self, event: SourceEvent) {
        self.apply(event);
    }

    fn handle_batch(&self, events: Vec<SourceEvent>) {
        if !events.is_empty() {
            self.apply_batch(events);
        }
    }

    fn unlisted(
        &self,
        kind: ObjectKind,
        namespace: Option<&str>,
        listed: &dyn Fn(&str, &str) -> bool,
    ) -> Vec<ObjectKey> {
        let state = self.lock();
        let in_scope = |ns: &str| namespace.is_none_or(|wanted| wanted == ns);
        let key = |namespace: &str, name: &str| ObjectKey {
            kind,
            namespace: namespace.to_string(),
            name: name.to_string(),
        };
        let from_ids = |ids: &mut dyn Iterator<Item = &ObjectId>| -> Vec<ObjectKey> {
            ids.filter(|id| in_scope(&id.namespace) && !listed(&id.namespace, &id.name))
                .map(|id| key(&id.namespace, &id.name))
                .collect()
        };
        match kind {
            ObjectKind::Service => from_ids(
                &mut state
                    .services
                    .iter()
                    .filter(|(_, entry)| entry.info.is_some())
                    .map(|(id, _)| id),
            ),
            ObjectKind::EndpointSlice => from_ids(&mut state.slices.keys()),
            ObjectKind::Pod => state
                .pods
                .keys()
                .filter(|(ns, name)| in_scope(ns) && !listed(ns, name))
                .map(|(ns, name)| key(ns, name))
                .collect(),
            ObjectKind::Namespace => state
                .namespaces
                .iter()
                .filter(|(name, entry)| entry.explicit && !listed("", name))
                .map(|(name, _)| key("", name))
                .collect(),
        }
    }
}

fn cname_target(node: &Node) -> Option<Name> {
    node.records().find_map(|r| match &r.data {
        StoredData::Cname(target) => Some(target.to_name()),
        _ => None,
    })
}

/// A re-delivery of the same version of an object (a relist, a resumed watch) is no change:
/// it keeps the time the version was first applied, so explanations say when it changed.
fn keep_change_time(old: Option<Origin>, new: Option<Origin>) -> Option<Origin> {
    let mut new = new?;
    if let Some(old) = old
        && old.resource_version.is_some()
        && old.resource_version == new.resource_version
    {
        new.changed = old.changed;
    }
    Some(new)
}

/// Seconds since the Unix epoch (0 if the clock is before it).
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn now_serial() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(1)
}

#[cfg(test)]
mod tests;
