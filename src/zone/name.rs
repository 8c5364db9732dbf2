//! Name helpers for the cluster zone: building owner names from Kubernetes identifiers, the
//! dashed-IP labels of endpoints and pods, and reverse (`in-addr.arpa`/`ip6.arpa`) names.
//!
//! Pure functions on strings and addresses; nothing here knows about the index or the wire.

use hickory_proto::rr::Name;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A DNS label as Kubernetes allows it in object names, hostnames and port names (RFC 1123
/// label: lowercase letters, digits and `-`, not at either end), checked before it is put into
/// a name so a bad object cannot produce a broken zone.
pub fn is_valid_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Builds a fully qualified name from dotted text relative to the root (`"a.b.c"` -> `a.b.c.`).
pub fn fqdn(text: &str) -> Option<Name> {
    let text = text.trim_end_matches('.');
    let mut name = Name::from_ascii(text).ok()?;
    name.set_fqdn(true);
    Some(name.to_lowercase())
}

/// The label of an endpoint or pod named by its address: `192-0-2-10`, `2001-db8--10`
/// (IPv6 in its RFC 5952 compressed form with `:` turned into `-`, as CoreDNS does).
pub fn dashed_ip(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string().replace('.', "-"),
        IpAddr::V6(v6) => v6.to_string().replace(':', "-"),
    }
}

/// The address a dashed label stands for, the inverse of [`dashed_ip`]. Like CoreDNS, a label
/// with exactly three dashes and no `--` is IPv4; anything else is tried as IPv6.
pub fn parse_dashed_ip(label: &str) -> Option<IpAddr> {
    if label.matches('-').count() == 3 && !label.contains("--") {
        label
            .replace('-', ".")
            .parse::<Ipv4Addr>()
            .ok()
            .map(IpAddr::V4)
    } else {
        label
            .replace('-', ":")
            .parse::<Ipv6Addr>()
            .ok()
            .map(IpAddr::V6)
    }
}

/// The reverse-lookup name of an address: `d.c.b.a.in-addr.arpa.` or the 32-nibble
/// `ip6.arpa.` name (RFC 1035 section 3.5, RFC 3596 section 2.5).
pub fn reverse_name(ip: IpAddr) -> Name {
    let mut text = String::with_capacity(73);
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            let _ = write!(text, "{}.{}.{}.{}.in-addr.arpa.", o[3], o[2], o[1], o[0]);
        }
        IpAddr::V6(v6) => {
            for byte in v6.octets().iter().rev() {
                let _ = write!(text, "{:x}.{:x}.", byte & 0x0f, byte >> 4);
            }
            text.push_str("ip6.arpa.");
        }
    }
    // The text is built from digits and fixed labels only, so it always parses.
    Name::from_ascii(&text).unwrap_or_else(|_| Name::root())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dashed_labels_round_trip_for_both_families() {
        for ip in ["192.0.2.10", "2001:db8::10", "::1", "2001:db8:0:1:2:3:4:5"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(parse_dashed_ip(&dashed_ip(ip)), Some(ip), "{ip}");
        }
        assert_eq!(dashed_ip("2001:db8::10".parse().unwrap()), "2001-db8--10");
        assert_eq!(parse_dashed_ip("192-0-2"), None);
        assert_eq!(parse_dashed_ip("not-an-ip"), None);
    }

    #[test]
    fn reverse_names_follow_rfc_1035_and_3596() {
        assert_eq!(
            reverse_name("192.0.2.10".parse().unwrap()).to_ascii(),
            "10.2.0.192.in-addr.arpa."
        );
        assert_eq!(
            reverse_name("2001:db8::1".parse().unwrap()).to_ascii(),
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa."
        );
    }

    #[test]
    fn labels_are_checked_before_use() {
        assert!(is_valid_label("web-0"));
        assert!(!is_valid_label(""));
        assert!(!is_valid_label("a.b"));
        assert!(!is_valid_label(&"x".repeat(64)));
        assert!(!is_valid_label("Bad_Name"));
        assert!(!is_valid_label("Upper"));
        assert!(!is_valid_label("-lead"));
        assert!(!is_valid_label("trail-"));
        assert!(is_valid_label("8080"));
    }
}
