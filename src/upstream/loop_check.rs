//! Forwarding-loop detection, like CoreDNS's `loop` plugin but without the crash loop.
//!
//! The classic trap: the node's resolv.conf names a local stub resolver (systemd-resolved's
//! 127.0.0.53) or the cluster DNS itself, so forwarded questions come back to us forever.
//! At startup every upstream is sent a question for a name only this process knows; if that
//! question ever reaches our own handler, that upstream leads back to us. CoreDNS then exits
//! and the pod crash-loops, taking the cluster zone down with it; we stop forwarding to that
//! upstream, say so loudly, and keep serving the cluster zone.
//!
//! Owns only the probe names; the [`super::Resolver`] sends the probes and acts on them.

use hickory_proto::rr::Name;

/// The probe names of one server process: `<index>.<token>.clusterdns-loop.invalid.`
/// (`.invalid` is reserved, RFC 6761: a real resolver answers NXDOMAIN at once).
pub struct LoopCheck {
    suffix: Name,
}

impl LoopCheck {
    /// Probe names with a fresh random token.
    pub fn new() -> LoopCheck {
        let token = format!("{:016x}", rand::random::<u64>());
        let suffix = Name::from_ascii(format!("{token}.clusterdns-loop.invalid."))
            .unwrap_or_else(|_| Name::root());
        LoopCheck { suffix }
    }

    /// The probe name for upstream number `index`.
    pub fn probe_name(&self, index: usize) -> Name {
        Name::from_ascii(index.to_string())
            .and_then(|label| label.append_domain(&self.suffix))
            .unwrap_or_else(|_| self.suffix.clone())
    }

    /// The upstream index if `qname` is one of our probes.
    pub fn probed_index(&self, qname: &Name) -> Option<usize> {
        if qname.num_labels() != self.suffix.num_labels() + 1 || !self.suffix.zone_of(qname) {
            return None;
        }
        let first = qname.iter().next()?;
        std::str::from_utf8(first).ok()?.parse().ok()
    }
}

impl Default for LoopCheck {
    fn default() -> Self {
        LoopCheck::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_names_round_trip_and_are_unique_per_process() {
        let check = LoopCheck::new();
        for index in [0, 1, 17] {
            assert_eq!(check.probed_index(&check.probe_name(index)), Some(index));
            let upper =
                Name::from_ascii(check.probe_name(index).to_ascii().to_uppercase()).expect("name");
            assert_eq!(check.probed_index(&upper), Some(index), "case-insensitive");
        }
        let other = LoopCheck::new();
        assert_eq!(check.probed_index(&other.probe_name(0)), None);
        assert_eq!(
            check.probed_index(&Name::from_ascii("www.example.org.").expect("name")),
            None
        );
        assert_eq!(
            check.probed_index(&Name::from_ascii("x.0.example.org.").expect("name")),
            None
        );
    }
}
