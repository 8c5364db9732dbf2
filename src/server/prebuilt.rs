//! Prebuilt zone answers: the wire bytes of recent answers from the cluster zone, so that a
//! repeated question is answered by copying bytes and patching the id and two flags, without
//! parsing the query, looking it up or encoding the answer (what Knot DNS gains by preparing
//! answers ahead; here they are prepared at first use).
//!
//! An answer is keyed by the question exactly as the client sent it (name bytes in the
//! client's case, type, class) and by what shapes the bytes (UDP or TCP, EDNS and its DO bit,
//! the UDP size limit). It is valid while the zone's generation is the one it was built at:
//! any change to the zone makes every prebuilt answer stale at once, so an answer is never
//! older than the zone. Only answers that are the same for every client are prebuilt (the
//! handler decides: zone answers without multi-address rotation, for clients the access lists
//! allow).
//!
//! Owns: the query shape check and the byte cache. Must not: decide an answer.

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use std::hash::BuildHasher;
use std::sync::{Mutex, MutexGuard};

/// Slots of the cache, a power of two. Each question has one slot (by hash); a question that
/// lands on an occupied slot replaces what was there. Memory is bounded (a few hundred bytes
/// a slot when full: under 10 MB) whatever the flood of distinct names, with no clearing
/// storms, and a hot question is rebuilt at most once per zone change or collision.
const SLOTS: usize = 32_768;

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

    /// The cache key: question bytes, transport and EDNS shape, UDP limit.
    fn key<'a>(
        &self,
        packet: &[u8],
        udp_limit: Option<u16>,
        buf: &'a mut [u8; MAX_KEY],
    ) -> Option<&'a [u8]> {
        let question = packet.get(self.question.clone())?;
        let len = question.len();
        buf.get_mut(..len)?.copy_from_slice(question);
        let (payload, dnssec_ok) = self.edns.unwrap_or((0, false));
        buf[len] = u8::from(self.edns.is_some()) | u8::from(dnssec_ok) << 1;
        let limit = match (udp_limit, self.edns) {
            (None, _) => 0, // TCP: never truncated
            (Some(cap), Some(_)) => payload.clamp(512, cap.max(512)),
            (Some(_), None) => 512,
        };
        buf[len + 1..len + 3].copy_from_slice(&limit.to_be_bytes());
        Some(&buf[..len + 3])
    }
}

struct Prebuilt {
    key: Box<[u8]>,
    generation: u64,
    rcode: ResponseCode,
    bytes: Box<[u8]>,
}

/// The prebuilt answers of one handler: a direct-mapped table.
pub struct PrebuiltAnswers {
    slots: Box<[Mutex<Option<Prebuilt>>]>,
    hasher: std::hash::RandomState,
}

impl Default for PrebuiltAnswers {
    fn default() -> Self {
        PrebuiltAnswers {
            slots: (0..SLOTS).map(|_| Mutex::new(None)).collect(),
            hasher: std::hash::RandomState::new(),
        }
    }
}

impl PrebuiltAnswers {
    fn slot(&self, key: &[u8]) -> MutexGuard<'_, Option<Prebuilt>> {
        let index = (self.hasher.hash_one(key) as usize) & (SLOTS - 1);
        // A panic while a slot was held leaves nothing half-written worth keeping.
        self.slots[index].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The answer to `query` (in `packet`, over UDP with `udp_limit` or TCP with `None`) if one
    /// was built at zone generation `generation`: its rcode and bytes, with the request's id,
    /// RD and CD.
    pub fn answer(
        &self,
        packet: &[u8],
        query: &SimpleQuery,
        udp_limit: Option<u16>,
        generation: u64,
    ) -> Option<(ResponseCode, Vec<u8>)> {
        let mut buf = [0u8; MAX_KEY];
        let key = query.key(packet, udp_limit, &mut buf)?;
        let slot = self.slot(key);
        let prebuilt = slot.as_ref()?;
        if prebuilt.generation != generation || *prebuilt.key != *key {
            return None;
        }
        let mut bytes = prebuilt.bytes.to_vec();
        bytes[0] = packet[0];
        bytes[1] = packet[1];
        bytes[2] = (bytes[2] & !0x01) | (packet[2] & 0x01); // RD
        bytes[3] = (bytes[3] & !0x10) | (packet[3] & 0x10); // CD
        Some((prebuilt.rcode, bytes))
    }

    /// Keeps `bytes`, the answer to `query` built from the zone at `generation`.
    pub fn keep(
        &self,
        packet: &[u8],
        query: &SimpleQuery,
        udp_limit: Option<u16>,
        generation: u64,
        rcode: ResponseCode,
        bytes: &[u8],
    ) {
        // A truncated answer is left to the full path, which counts it.
        if bytes.len() < 12 || bytes[2] & 0x02 != 0 {
            return;
        }
        let mut buf = [0u8; MAX_KEY];
        let Some(key) = query.key(packet, udp_limit, &mut buf) else {
            return;
        };
        *self.slot(key) = Some(Prebuilt {
            key: key.into(),
            generation,
            rcode,
            bytes: bytes.into(),
        });
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

    #[test]
    fn an_answer_is_served_for_its_exact_question_and_shape_at_its_generation_only() {
        let cache = PrebuiltAnswers::default();
        let packet = query("Web.default.", RecordType::A, Some((1232, false)));
        let q = SimpleQuery::parse(&packet).unwrap();
        let mut built = vec![0u8; 40];
        built[2] = 0x84; // QR, AA
        built[3] = 0x80; // RA
        cache.keep(&packet, &q, Some(1232), 7, ResponseCode::NoError, &built);

        let mut again = packet.clone();
        again[0] = 0xab;
        again[1] = 0xcd;
        again[2] |= 0x01; // RD
        again[3] |= 0x10; // CD
        let (rcode, bytes) = cache.answer(&again, &q, Some(1232), 7).expect("hit");
        assert_eq!(rcode, ResponseCode::NoError);
        assert_eq!(&bytes[..4], &[0xab, 0xcd, 0x85, 0x90]);
        assert_eq!(&bytes[4..], &built[4..]);

        assert!(
            cache.answer(&packet, &q, Some(1232), 8).is_none(),
            "zone changed"
        );
        assert!(
            cache.answer(&packet, &q, None, 7).is_none(),
            "TCP is another shape"
        );
        // The key is the size limit in force: 4096 asked, 1232 allowed, is the same answer.
        let bigger = query("Web.default.", RecordType::A, Some((4096, false)));
        let bq = SimpleQuery::parse(&bigger).unwrap();
        assert!(cache.answer(&bigger, &bq, Some(1232), 7).is_some());
        let smaller = query("Web.default.", RecordType::A, Some((600, false)));
        let sq = SimpleQuery::parse(&smaller).unwrap();
        assert!(
            cache.answer(&smaller, &sq, Some(1232), 7).is_none(),
            "another limit"
        );
        let lower = query("web.default.", RecordType::A, Some((1232, false)));
        let lq = SimpleQuery::parse(&lower).unwrap();
        assert!(
            cache.answer(&lower, &lq, Some(1232), 7).is_none(),
            "another spelling"
        );
        let no_edns = query("Web.default.", RecordType::A, None);
        let nq = SimpleQuery::parse(&no_edns).unwrap();
        assert!(
            cache.answer(&no_edns, &nq, Some(1232), 7).is_none(),
            "no EDNS"
        );
    }
}
