//! Prebuilt answers: the wire bytes of recent answers, so that a repeated question is
//! answered by copying bytes and patching the id and two flags, without parsing the query,
//! looking it up or encoding the answer (what Knot DNS gains by preparing answers ahead; here
//! they are prepared at first use).
//!
//! An answer is keyed by the question exactly as the client sent it (name bytes in the
//! client's case, type, class) and by what shapes the bytes (UDP or TCP, EDNS and its DO bit,
//! the UDP size limit). Two kinds are kept:
//! - zone answers, valid while the zone's generation is the one they were built at: any
//!   change to the zone makes every one stale at once, so an answer is never older than the
//!   zone;
//! - cache hits for upstream names, valid within the cache entry's [`Reuse`] window (never
//!   past its TTL, nor past the point where a popular entry is prefetched), with every TTL
//!   field counted down as the cache counts, and only for clients that may have names
//!   forwarded; every one is counted as the cache counts a hit.
//!
//! Only answers that are the same for every client are prebuilt (the handler decides, for
//! clients the access lists allow), with two patches per client: RA (whether it may have
//! names forwarded) and, for a multi-address answer the zone rotates (CoreDNS
//! `loadbalance`), the address records turned one step at each use, as the zone turns them.
//!
//! Owns: the query shape check and the byte table. Must not: decide an answer.

use crate::upstream::cache::Reuse;
use arc_swap::ArcSwap;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// Buckets of the table, a power of two between these bounds: about one per name in the
/// zone (see [`PrebuiltAnswers::fit`]), so that the questions a cluster asks fit whatever its
/// size. Each bucket holds two answers (by hash of the question); a third question landing
/// on it replaces the one less recently answered. Memory is bounded (a few hundred bytes an
/// answer when full: under 20 MB at the smallest size, under 150 MB at the largest, which
/// only a zone of more than 130,000 names gets) whatever the flood of distinct names, with
/// no clearing storms, and a hot question is rebuilt at most once per zone change or
/// eviction.
const MIN_BUCKETS: usize = 16_384;
const MAX_BUCKETS: usize = 131_072;

/// Longest key: a name (255) and the fixed fields.
const MAX_KEY: usize = 255 + 4 + 3;

/// A query in the shape prebuilt answers serve: opcode QUERY, one question, no answer or
/// authority records, and at most an OPT record (EDNS version 0). Anything else takes the
/// handler's full path.
#[derive(Debug)]
pub struct SimpleQuery {
    /// The question's bytes: name, type, class.
    question: std::ops::Range<usize>,
    qtype: RecordType,
    /// `None` without EDNS, else (advertised payload, DO bit).
    edns: Option<(u16, bool)>,
}

impl SimpleQuery {
    /// Reads the shape of `packet` (a query: QR already checked by the caller).
    pub fn parse(packet: &[u8]) -> Option<SimpleQuery> {
        if packet.len() < 12 || packet[2] & 0x78 != 0 || packet[2] & 0x02 != 0 {
            return None; // opcode other than QUERY, or TC set
        }
        let count = |at: usize| u16::from_be_bytes([packet[at], packet[at + 1]]);
        let (qd, an, ns, ar) = (count(4), count(6), count(8), count(10));
        if qd != 1 || an != 0 || ns != 0 || ar > 1 {
            return None;
        }
        let mut at = 12;
        loop {
            let len = usize::from(*packet.get(at)?);
            if len == 0 {
                at += 1;
                break;
            }
            if len > 63 {
                return None; // a compression pointer or an extended label type
            }
            at += 1 + len;
        }
        if at - 12 > 255 {
            return None;
        }
        let fixed = packet.get(at..at + 4)?;
        let qtype = RecordType::from(u16::from_be_bytes([fixed[0], fixed[1]]));
        let question = 12..at + 4;
        at += 4;
        let edns = if ar == 1 {
            // OPT: root name, type 41, class = payload, TTL = ext-rcode, version, flags.
            let opt = packet.get(at..at + 11)?;
            if opt[0] != 0 || u16::from_be_bytes([opt[1], opt[2]]) != 41 || opt[6] != 0 {
                return None;
            }
            let rdlen = usize::from(u16::from_be_bytes([opt[9], opt[10]]));
            at += 11 + rdlen;
            Some((u16::from_be_bytes([opt[3], opt[4]]), opt[7] & 0x80 != 0))
        } else {
            None
        };
        (at == packet.len()).then_some(SimpleQuery {
            question,
            qtype,
            edns,
        })
    }

    /// The question's type.
    pub fn qtype(&self) -> RecordType {
        self.qtype
    }

    /// The DO bit.
    pub fn dnssec_ok(&self) -> bool {
        self.edns.is_some_and(|(_, dnssec_ok)| dnssec_ok)
    }

    /// The table key of this question: question bytes, transport and EDNS shape, UDP limit
    /// (`udp_limit` is the server's cap over UDP, `None` over TCP).
    pub fn key(&self, packet: &[u8], udp_limit: Option<u16>) -> Option<PrebuiltKey> {
        let question = packet.get(self.question.clone())?;
        let len = question.len();
        let mut key = PrebuiltKey {
            bytes: [0; MAX_KEY],
            len: len + 3,
        };
        key.bytes.get_mut(..len)?.copy_from_slice(question);
        let (payload, dnssec_ok) = self.edns.unwrap_or((0, false));
        key.bytes[len] = u8::from(self.edns.is_some()) | u8::from(dnssec_ok) << 1;
        let limit = match (udp_limit, self.edns) {
            (None, _) => 0, // TCP: never truncated
            (Some(cap), Some(_)) => payload.clamp(512, cap.max(512)),
            (Some(_), None) => 512,
        };
        key.bytes[len + 1..len + 3].copy_from_slice(&limit.to_be_bytes());
        Some(key)
    }
}

/// Which prebuilt answer a question may take: its bytes and shape, kept on the stack (a
/// question waiting on the upstream carries it to where its answer is kept).
#[derive(Clone)]
pub struct PrebuiltKey {
    bytes: [u8; MAX_KEY],
    len: usize,
}

impl PrebuiltKey {
    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl std::fmt::Debug for PrebuiltKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PrebuiltKey({} bytes)", self.len)
    }
}

/// How long an answer's bytes stay right, as the handler tells [`PrebuiltAnswers::keep`].
pub enum Validity {
    /// A zone answer: while the zone is at this generation.
    Zone {
        /// The zone's generation the answer was built from.
        generation: u64,
        /// The zone rotates its addresses (CoreDNS `loadbalance`): each use hands them out
        /// starting one further on, as the zone would.
        rotates: bool,
    },
    /// A cache hit for an upstream name: within the entry's reuse window, while the upstream
    /// path is the one it came from.
    Cache {
        /// The cache entry's terms.
        reuse: Reuse,
        /// The upstream path's generation when the answer was looked up.
        upstream_generation: u64,
    },
}

/// What a question is checked against to take a prebuilt answer.
pub struct Current {
    /// The zone's generation now.
    pub zone_generation: u64,
    /// The upstream path's generation now (changed by every reload of it).
    pub upstream_generation: u64,
    /// When the question arrived.
    pub now: Instant,
    /// Whether this client may have names forwarded: a cached answer is only for such a
    /// client, and the answer's RA bit says it.
    pub may_forward: bool,
}

/// A prebuilt answer taken: its rcode, its bytes for this request, and where it came from.
pub struct Hit {
    /// The answer's rcode.
    pub rcode: ResponseCode,
    /// The answer for this request.
    pub bytes: Vec<u8>,
    /// A cache hit for an upstream name (else a zone answer).
    pub from_cache: bool,
}

enum Kept {
    Zone {
        generation: u64,
        rotation: Option<Rotation>,
    },
    Cache {
        reuse: Reuse,
        upstream_generation: u64,
        /// Where each TTL field of the answer is (every record but OPT).
        ttls: Box<[u16]>,
    },
}

/// Where the address records of a rotating answer are: `count` records of `len` bytes each
/// from `start`. Each is an owner pointer to the question, A or AAAA, no name in its data, so
/// nothing in the message points into them and they can change places as bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Rotation {
    start: u16,
    len: u16,
    count: u16,
}

thread_local! {
    /// The turn of rotating answers taken from their bytes (the zone keeps its own for the
    /// answers it builds; either way consecutive answers start at another address).
    static TURN: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

impl Rotation {
    /// Finds the records of an answer section made only of address records of one type with
    /// compressed owners; `None` for any other shape (which is then not kept).
    fn of(message: &[u8]) -> Option<Rotation> {
        let count = |at| u16_at(message, at);
        if count(4)? != 1 {
            return None;
        }
        let answers = count(6)?;
        let start = skip_name(message, 12)? + 4;
        let mut at = start;
        let mut shape = None;
        for _ in 0..answers {
            let owner_is_pointer = message.get(at)? & 0xc0 == 0xc0;
            let rtype = count(at + 2)?;
            let rdata_len = count(at + 10)?;
            let this = (rtype, rdata_len);
            let address = matches!(this, (1, 4) | (28, 16));
            if !owner_is_pointer || !address || shape.is_some_and(|s| s != this) {
                return None;
            }
            shape = Some(this);
            at += 12 + rdata_len;
        }
        let len = 12 + shape?.1;
        (answers > 1 && at <= message.len()).then_some(Rotation {
            start: u16::try_from(start).ok()?,
            len: u16::try_from(len).ok()?,
            count: u16::try_from(answers).ok()?,
        })
    }

    /// Turns the records one step further than the last answer of this thread.
    fn turn(self, message: &mut [u8]) {
        let (start, len, count) = (
            usize::from(self.start),
            usize::from(self.len),
            usize::from(self.count),
        );
        let turn = TURN.with(|t| {
            let next = t.get().wrapping_add(1);
            t.set(next);
            next
        });
        if let Some(records) = message.get_mut(start..start + len * count) {
            records.rotate_left((turn % count) * len);
        }
    }
}

/// One kept answer. At 50,000 Services the table outgrows the CPU caches and each pointer
/// followed is a read from memory: the question's hash sits here, so a way holding another
/// question is passed over without reading its key, and the key and the answer share one
/// allocation.
struct Prebuilt {
    hash: u64,
    kept: Kept,
    rcode: ResponseCode,
    key_len: u16,
    /// The question's key, then the answer's bytes.
    key_then_answer: Box<[u8]>,
}

impl Prebuilt {
    fn key(&self) -> &[u8] {
        &self.key_then_answer[..usize::from(self.key_len)]
    }

    fn answer(&self) -> &[u8] {
        &self.key_then_answer[usize::from(self.key_len)..]
    }
}

/// Two answers whose questions hash alike, the one that answered last first (the order is
/// the recency: a bucket is 24 bytes with its lock, not 32 with an index of the last used,
/// 1 MB at the largest table).
#[derive(Default)]
struct Bucket {
    ways: [Option<Box<Prebuilt>>; 2],
}

impl Bucket {
    /// Which way holds the answer for `key` (whose hash is `hash`).
    fn way_of(&self, hash: u64, key: &[u8]) -> Option<usize> {
        self.ways.iter().position(|way| {
            way.as_ref()
                .is_some_and(|p| p.hash == hash && p.key() == key)
        })
    }

    /// Makes `way` the most recently used; returns where it is now.
    fn use_way(&mut self, way: usize) -> usize {
        if way != 0 {
            self.ways.swap(0, way);
        }
        0
    }
}

const _: () = assert!(std::mem::size_of::<Mutex<Bucket>>() == 24);

/// A fixed number of buckets.
struct Table {
    buckets: Box<[Mutex<Bucket>]>,
    hasher: std::hash::RandomState,
}

impl Table {
    fn new(buckets: usize) -> Table {
        Table {
            buckets: (0..buckets).map(|_| Mutex::default()).collect(),
            hasher: std::hash::RandomState::new(),
        }
    }

    /// The bucket of `key`, locked, and the key's hash.
    fn bucket(&self, key: &[u8]) -> (u64, MutexGuard<'_, Bucket>) {
        let hash = self.hasher.hash_one(key);
        let index = (hash as usize) & (self.buckets.len() - 1);
        // A panic while a bucket was held leaves nothing half-written worth keeping.
        let bucket = self.buckets[index]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        (hash, bucket)
    }
}

/// The prebuilt answers of one handler: a two-way set-associative table, sized to the zone.
pub struct PrebuiltAnswers {
    table: ArcSwap<Table>,
}

impl Default for PrebuiltAnswers {
    fn default() -> Self {
        PrebuiltAnswers {
            table: ArcSwap::from_pointee(Table::new(MIN_BUCKETS)),
        }
    }
}

impl PrebuiltAnswers {
    /// Sizes the table for a zone of `names` names: a bucket per name, within the bounds. A
    /// new size starts empty (answers are rebuilt at their next question); the same size
    /// keeps everything.
    pub fn fit(&self, names: usize) {
        let wanted = names
            .max(1)
            .next_power_of_two()
            .clamp(MIN_BUCKETS, MAX_BUCKETS);
        if self.table.load().buckets.len() != wanted {
            self.table.store(Arc::new(Table::new(wanted)));
        }
    }

    /// How many answers the table can hold.
    pub fn capacity(&self) -> usize {
        self.table.load().buckets.len() * 2
    }

    /// The answer kept for `key` if it is still right by `current`: its bytes with the
    /// request's id, RD and CD (from `packet`), RA for this client, and for a cache hit its
    /// TTLs counted down.
    pub fn answer(&self, packet: &[u8], key: &PrebuiltKey, current: &Current) -> Option<Hit> {
        let key = key.as_bytes();
        let table = self.table.load();
        let (hash, mut bucket) = table.bucket(key);
        let way = bucket.way_of(hash, key)?;
        let way = bucket.use_way(way);
        let prebuilt = bucket.ways[way].as_deref()?;
        let may_forward = current.may_forward;
        let mut rotation = None;
        let countdown = match &prebuilt.kept {
            Kept::Zone {
                generation,
                rotation: rotates,
            } => {
                if *generation != current.zone_generation {
                    return None;
                }
                rotation = *rotates;
                None
            }
            Kept::Cache {
                reuse,
                upstream_generation,
                ttls,
            } => {
                if *upstream_generation != current.upstream_generation
                    || current.now >= reuse.until()
                    || !may_forward
                {
                    return None;
                }
                Some((reuse, ttls, reuse.countdown(current.now)))
            }
        };
        let mut bytes = prebuilt.answer().to_vec();
        bytes[0] = *packet.first()?;
        bytes[1] = *packet.get(1)?;
        bytes[2] = (bytes[2] & !0x01) | (packet.get(2)? & 0x01); // RD
        bytes[3] = (bytes[3] & !0x10) | (packet.get(3)? & 0x10); // CD
        bytes[3] = (bytes[3] & !0x80) | if may_forward { 0x80 } else { 0 }; // RA
        if let Some(rotation) = rotation {
            rotation.turn(&mut bytes);
        }
        let from_cache = countdown.is_some();
        if let Some((reuse, ttls, countdown)) = countdown {
            if countdown > 0 {
                for &at in ttls.iter() {
                    let at = usize::from(at);
                    let field = bytes.get_mut(at..at + 4)?;
                    let ttl = u32::from_be_bytes([field[0], field[1], field[2], field[3]]);
                    field.copy_from_slice(&ttl.saturating_sub(countdown).to_be_bytes());
                }
            }
            reuse.count_hit();
        }
        Some(Hit {
            rcode: prebuilt.rcode,
            bytes,
            from_cache,
        })
    }

    /// Keeps `bytes`, the answer to the question `key`, for as long as `validity` says.
    pub fn keep(&self, key: &PrebuiltKey, validity: Validity, rcode: ResponseCode, bytes: &[u8]) {
        // A truncated answer is left to the full path, which counts it.
        if bytes.len() < 12 || bytes[2] & 0x02 != 0 {
            return;
        }
        let kept = match validity {
            Validity::Zone {
                generation,
                rotates,
            } => {
                let rotation = if rotates {
                    match Rotation::of(bytes) {
                        Some(rotation) => Some(rotation),
                        None => return, // a shape whose records cannot be turned as bytes
                    }
                } else {
                    None
                };
                Kept::Zone {
                    generation,
                    rotation,
                }
            }
            Validity::Cache {
                reuse,
                upstream_generation,
            } => {
                let Some(ttls) = ttl_fields(bytes) else {
                    return;
                };
                Kept::Cache {
                    reuse,
                    upstream_generation,
                    ttls: ttls.into(),
                }
            }
        };
        let key = key.as_bytes();
        let Ok(key_len) = u16::try_from(key.len()) else {
            return;
        };
        let table = self.table.load();
        let (hash, mut bucket) = table.bucket(key);
        // The same question's slot, else a free one, else the one less recently answered.
        let way = bucket
            .way_of(hash, key)
            .or_else(|| bucket.ways.iter().position(Option::is_none))
            .unwrap_or(1);
        bucket.ways[way] = Some(Box::new(Prebuilt {
            hash,
            kept,
            rcode,
            key_len,
            key_then_answer: [key, bytes].concat().into(),
        }));
        bucket.use_way(way);
    }
}

/// The offsets of the TTL field of every record in `message` except OPT (whose "TTL" holds
/// EDNS flags); `None` if the message does not walk cleanly to its end.
fn ttl_fields(message: &[u8]) -> Option<Vec<u16>> {
    let count = |at| u16_at(message, at);
    let (questions, records) = (count(4)?, count(6)? + count(8)? + count(10)?);
    let mut at = 12;
    for _ in 0..questions {
        at = skip_name(message, at)? + 4;
    }
    let mut ttls = Vec::with_capacity(records);
    for _ in 0..records {
        at = skip_name(message, at)?;
        let rtype = count(at)?;
        let rdata_len = count(at + 8)?;
        if rtype != 41 {
            ttls.push(u16::try_from(at + 4).ok()?);
        }
        at += 10 + rdata_len;
    }
    (at == message.len()).then_some(ttls)
}

/// The 16-bit field at `at` of a message (a count, a type, a length).
fn u16_at(message: &[u8], at: usize) -> Option<usize> {
    let field = message.get(at..at + 2)?;
    Some(usize::from(u16::from_be_bytes([field[0], field[1]])))
}

/// The offset just past the name at `at`: labels up to the root or a compression pointer.
fn skip_name(message: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *message.get(at)?;
        match len {
            0 => return Some(at + 1),
            1..=63 => at += 1 + usize::from(len),
            0xc0..=0xff => {
                message.get(at + 1)?;
                return Some(at + 2);
            }
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Edns, Message, Query};
    use hickory_proto::rr::Name;

    fn query(name: &str, qtype: RecordType, edns: Option<(u16, bool)>) -> Vec<u8> {
        let mut message = Message::query();
        message.metadata.id = 0x1234;
        message.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        if let Some((payload, dnssec_ok)) = edns {
            let mut e = Edns::new();
            e.set_max_payload(payload);
            e.set_dnssec_ok(dnssec_ok);
            message.set_edns(e);
        }
        message.to_vec().unwrap()
    }

    #[test]
    fn only_plain_queries_have_the_simple_shape() {
        let plain = query("a.b.", RecordType::A, None);
        let q = SimpleQuery::parse(&plain).expect("simple");
        assert_eq!(q.qtype(), RecordType::A);
        assert!(!q.dnssec_ok());
        let with_do = query("a.b.", RecordType::AAAA, Some((1232, true)));
        let q = SimpleQuery::parse(&with_do).expect("simple with EDNS");
        assert!(q.dnssec_ok());
        assert_eq!(q.edns, Some((1232, true)));

        let mut notify = plain.clone();
        notify[2] |= 4 << 3; // opcode NOTIFY
        assert!(SimpleQuery::parse(&notify).is_none());
        let mut trailing = plain.clone();
        trailing.push(0);
        assert!(SimpleQuery::parse(&trailing).is_none());
        assert!(SimpleQuery::parse(&plain[..plain.len() - 1]).is_none());
        let mut two = plain.clone();
        two[5] = 2; // QDCOUNT 2
        assert!(SimpleQuery::parse(&two).is_none());
        let mut edns1 = with_do.clone();
        let version_at = edns1.len() - 11 + 6;
        edns1[version_at] = 1; // EDNS version 1: BADVERS is the handler's
        assert!(SimpleQuery::parse(&edns1).is_none());
        let mut pointer = plain.clone();
        pointer[12] = 0xc0;
        assert!(SimpleQuery::parse(&pointer).is_none());
    }

    fn zone_at(generation: u64) -> Current {
        Current {
            zone_generation: generation,
            upstream_generation: 0,
            now: Instant::now(),
            may_forward: true,
        }
    }

    fn key_of(packet: &[u8], udp_limit: Option<u16>) -> PrebuiltKey {
        let query = SimpleQuery::parse(packet).expect("simple");
        query.key(packet, udp_limit).expect("key")
    }

    #[test]
    fn an_answer_is_served_for_its_exact_question_and_shape_at_its_generation_only() {
        let cache = PrebuiltAnswers::default();
        let packet = query("Web.default.", RecordType::A, Some((1232, false)));
        let key = key_of(&packet, Some(1232));
        let mut built = vec![0u8; 40];
        built[2] = 0x84; // QR, AA
        built[3] = 0x80; // RA
        let zone = |generation| Validity::Zone {
            generation,
            rotates: false,
        };
        cache.keep(&key, zone(7), ResponseCode::NoError, &built);

        let mut again = packet.clone();
        again[0] = 0xab;
        again[1] = 0xcd;
        again[2] |= 0x01; // RD
        again[3] |= 0x10; // CD
        let hit = cache.answer(&again, &key, &zone_at(7)).expect("hit");
        assert_eq!(hit.rcode, ResponseCode::NoError);
        assert!(!hit.from_cache);
        assert_eq!(&hit.bytes[..4], &[0xab, 0xcd, 0x85, 0x90]);
        assert_eq!(&hit.bytes[4..], &built[4..]);
        // The same zone answer for a client that may not have names forwarded: RA clear.
        let no_recursion = Current {
            may_forward: false,
            ..zone_at(7)
        };
        let hit = cache.answer(&again, &key, &no_recursion).expect("hit");
        assert_eq!(&hit.bytes[..4], &[0xab, 0xcd, 0x85, 0x10]);

        assert!(
            cache.answer(&packet, &key, &zone_at(8)).is_none(),
            "zone changed"
        );
        let tcp = key_of(&packet, None);
        assert!(
            cache.answer(&packet, &tcp, &zone_at(7)).is_none(),
            "TCP is another shape"
        );
        // The key is the size limit in force: 4096 asked, 1232 allowed, is the same answer.
        let bigger = query("Web.default.", RecordType::A, Some((4096, false)));
        assert!(
            cache
                .answer(&bigger, &key_of(&bigger, Some(1232)), &zone_at(7))
                .is_some()
        );
        for (other, what) in [
            (
                query("Web.default.", RecordType::A, Some((600, false))),
                "another limit",
            ),
            (
                query("web.default.", RecordType::A, Some((1232, false))),
                "another spelling",
            ),
            (query("Web.default.", RecordType::A, None), "no EDNS"),
        ] {
            let other_key = key_of(&other, Some(1232));
            assert!(
                cache.answer(&other, &other_key, &zone_at(7)).is_none(),
                "{what}"
            );
        }
    }

    #[test]
    fn a_third_question_on_a_bucket_replaces_the_one_less_recently_answered() {
        let table = PrebuiltAnswers {
            table: ArcSwap::from_pointee(Table::new(1)),
        };
        let question = |name: &str| {
            let packet = query(name, RecordType::A, None);
            let key = key_of(&packet, Some(1232));
            (packet, key)
        };
        let keep = |(_, key): &(Vec<u8>, PrebuiltKey)| {
            let mut built = vec![0u8; 20];
            built[2] = 0x84;
            table.keep(
                key,
                Validity::Zone {
                    generation: 1,
                    rotates: false,
                },
                ResponseCode::NoError,
                &built,
            );
        };
        let served = |(packet, key): &(Vec<u8>, PrebuiltKey)| {
            table.answer(packet, key, &zone_at(1)).is_some()
        };
        let [a, b, c, d] = ["a.", "b.", "c.", "d."].map(question);
        keep(&a);
        keep(&b);
        assert!(served(&a) && served(&b));
        assert!(served(&a), "a answered last");
        keep(&c);
        assert!(!served(&b), "b was the less recently answered");
        assert!(served(&a) && served(&c));
        keep(&d);
        assert!(!served(&a), "c answered last, then d came");
        assert!(served(&c) && served(&d));
        // Keeping a question again replaces its own answer, not its neighbour's.
        keep(&c);
        assert!(served(&d) && served(&c));
    }

    #[test]
    fn the_table_is_sized_to_the_zone_and_a_new_size_starts_empty() {
        let table = PrebuiltAnswers::default();
        assert_eq!(table.capacity(), 2 * MIN_BUCKETS);
        let questions: Vec<(Vec<u8>, PrebuiltKey)> = (0..30)
            .map(|i| {
                let packet = query(&format!("s{i}.default."), RecordType::A, None);
                let key = key_of(&packet, Some(1232));
                (packet, key)
            })
            .collect();
        let keep_all = || {
            for (i, (_, key)) in questions.iter().enumerate() {
                let mut built = vec![0u8; 12];
                built[2] = 0x84;
                built[11] = i as u8; // tells the answers apart
                table.keep(
                    key,
                    Validity::Zone {
                        generation: 1,
                        rotates: false,
                    },
                    ResponseCode::NoError,
                    &built,
                );
            }
        };
        let answered = || {
            questions
                .iter()
                .enumerate()
                .filter(|(i, (packet, key))| {
                    table
                        .answer(packet, key, &zone_at(1))
                        .is_some_and(|hit| hit.bytes[11] == *i as u8)
                })
                .count()
        };
        keep_all();
        assert_eq!(answered(), 30, "each question its own answer");
        table.fit(1000);
        assert_eq!(answered(), 30, "same size: kept");
        table.fit(40_000);
        assert_eq!(
            table.capacity(),
            2 * 65_536,
            "a bucket per name, power of two"
        );
        assert_eq!(answered(), 0, "a new size starts empty");
        keep_all();
        assert_eq!(answered(), 30);
        table.fit(10_000_000);
        assert_eq!(table.capacity(), 2 * MAX_BUCKETS, "bounded");
    }

    /// A cached upstream answer: a real upstream message through the real cache.
    fn cached(ttl: u32, config: crate::config::CacheConfig) -> (Reuse, Vec<u8>, Instant) {
        use crate::upstream::cache::{Cache, CacheKey, CachedAnswer, Lookup};
        use hickory_proto::rr::{RData, Record, rdata};
        let name = Name::from_ascii("www.example.org.").unwrap();
        let mut upstream = Message::response(0x1234, hickory_proto::op::OpCode::Query);
        upstream.add_query(Query::query(name.clone(), RecordType::A));
        for (octet, record_ttl) in [(1, ttl), (2, ttl + 100)] {
            upstream.add_answer(Record::from_rdata(
                name.clone(),
                record_ttl,
                RData::A(rdata::A::new(192, 0, 2, octet)),
            ));
        }
        let mut e = Edns::new();
        e.set_max_payload(1232);
        upstream.set_edns(e);
        let cache = Cache::new(
            &config,
            std::sync::Arc::new(crate::ops::metrics::Metrics::new()),
        );
        let key = CacheKey::plain(&name, RecordType::A);
        let stored_at = Instant::now();
        cache.insert(
            key.clone(),
            &CachedAnswer::from_message(&upstream),
            stored_at,
        );
        let Lookup::Fresh {
            reuse: Some(reuse), ..
        } = cache.get(&key, stored_at)
        else {
            panic!("a fresh entry with its reuse terms");
        };
        (reuse, upstream.to_vec().unwrap(), stored_at)
    }

    #[test]
    fn a_cache_hit_counts_its_ttls_down_and_ends_with_its_reuse_window() {
        let no_prefetch = crate::config::CacheConfig {
            prefetch: 0,
            ..Default::default()
        };
        let (reuse, bytes, stored_at) = cached(60, no_prefetch);
        assert_eq!(
            reuse.until(),
            stored_at + std::time::Duration::from_secs(60)
        );
        let table = PrebuiltAnswers::default();
        let packet = query("www.example.org.", RecordType::A, Some((1232, false)));
        let key = key_of(&packet, Some(1232));
        let validity = Validity::Cache {
            reuse,
            upstream_generation: 3,
        };
        table.keep(&key, validity, ResponseCode::NoError, &bytes);
        let at = |secs: u64, upstream_generation: u64, may_forward: bool| {
            Current {
                zone_generation: 99, // zone changes do not touch cached upstream answers
                upstream_generation,
                now: stored_at + std::time::Duration::from_millis(secs * 1000 + 500),
                may_forward,
            }
        };
        let ttls = |bytes: &[u8]| -> Vec<u32> {
            Message::from_vec(bytes)
                .unwrap()
                .answers
                .iter()
                .map(|r| r.ttl)
                .collect()
        };
        let hit = table.answer(&packet, &key, &at(0, 3, true)).expect("hit");
        assert!(hit.from_cache);
        assert_eq!(ttls(&hit.bytes), [60, 160]);
        let hit = table.answer(&packet, &key, &at(25, 3, true)).expect("hit");
        assert_eq!(ttls(&hit.bytes), [35, 135], "counted down by whole seconds");
        let decoded = Message::from_vec(&hit.bytes).unwrap();
        assert_eq!(
            decoded.edns.map(|e| e.max_payload()),
            Some(1232),
            "OPT untouched"
        );
        assert!(
            table.answer(&packet, &key, &at(25, 4, true)).is_none(),
            "upstream path reloaded"
        );
        assert!(
            table.answer(&packet, &key, &at(25, 3, false)).is_none(),
            "client may not have names forwarded"
        );
        assert!(
            table.answer(&packet, &key, &at(60, 3, true)).is_none(),
            "past the TTL: the cache decides (stale, refresh)"
        );
    }

    #[test]
    fn with_prefetch_a_cache_hit_is_reused_only_until_the_prefetch_point() {
        let config = crate::config::CacheConfig {
            prefetch: 2, // the default
            ..Default::default()
        };
        let (reuse, _, stored_at) = cached(100, config);
        assert_eq!(
            reuse.until(),
            stored_at + std::time::Duration::from_secs(90)
        );
    }

    #[test]
    fn ttl_fields_are_found_in_every_section_but_opt_and_bad_messages_give_none() {
        let (_, bytes, _) = cached(60, Default::default());
        let fields = ttl_fields(&bytes).expect("walks");
        assert_eq!(fields.len(), 2, "two A records; OPT skipped");
        for at in fields {
            let at = usize::from(at);
            let ttl = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
            assert!(ttl == 60 || ttl == 160, "{ttl}");
        }
        assert!(ttl_fields(&bytes[..bytes.len() - 1]).is_none(), "short");
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(ttl_fields(&longer).is_none(), "trailing byte");
        assert!(ttl_fields(&bytes[..5]).is_none(), "header cut");
    }

    #[test]
    fn a_rotating_answer_hands_its_addresses_out_in_turn_as_bytes() {
        use hickory_proto::rr::{Name, RData, Record, rdata::A};
        let name = Name::from_ascii("db.default.svc.cluster.local.").unwrap();
        let mut message = Message::response(7, hickory_proto::op::OpCode::Query);
        message.add_query(hickory_proto::op::Query::query(name.clone(), RecordType::A));
        for last in 1..=3u8 {
            let a = RData::A(A::new(192, 0, 2, last));
            message.add_answer(Record::from_rdata(name.clone(), 5, a));
        }
        let built = message.to_vec().unwrap();
        let rotation = Rotation::of(&built).expect("three A records with compressed owners");
        assert_eq!((rotation.len, rotation.count), (16, 3));

        let order = |bytes: &[u8]| -> Vec<String> {
            Message::from_vec(bytes)
                .unwrap()
                .answers
                .iter()
                .map(|r| r.data.to_string())
                .collect()
        };
        let firsts: std::collections::BTreeSet<String> = (0..3)
            .map(|_| {
                let mut bytes = built.clone();
                rotation.turn(&mut bytes);
                let got = order(&bytes);
                let mut sorted = got.clone();
                sorted.sort();
                assert_eq!(sorted, ["192.0.2.1", "192.0.2.2", "192.0.2.3"]);
                got[0].clone()
            })
            .collect();
        assert_eq!(
            firsts.len(),
            3,
            "three answers in a row start at three addresses"
        );

        // Shapes that cannot be turned as bytes are not kept: one address, or a CNAME first.
        let mut one = message.clone();
        one.answers.truncate(1);
        assert_eq!(Rotation::of(&one.to_vec().unwrap()), None);
        let mut chained = message.clone();
        let target = Name::from_ascii("web.default.svc.cluster.local.").unwrap();
        chained.answers.insert(
            0,
            Record::from_rdata(
                name,
                5,
                RData::CNAME(hickory_proto::rr::rdata::CNAME(target)),
            ),
        );
        assert_eq!(Rotation::of(&chained.to_vec().unwrap()), None);
        let table = PrebuiltAnswers::default();
        let packet = query("db.default.svc.cluster.local.", RecordType::A, None);
        let key = key_of(&packet, Some(1232));
        let rotating = Validity::Zone {
            generation: 1,
            rotates: true,
        };
        table.keep(
            &key,
            rotating,
            ResponseCode::NoError,
            &chained.to_vec().unwrap(),
        );
        assert!(table.answer(&packet, &key, &zone_at(1)).is_none());
    }
}
