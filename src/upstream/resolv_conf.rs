//! resolv.conf reading: the default upstream resolvers, as every Kubernetes DNS server takes
//! them (CoreDNS `forward . /etc/resolv.conf`, kube-dns's dnsmasq).
//!
//! Owns only the parsing; deciding whether to use it is the caller's business.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

/// What clusterdns uses from a resolv.conf.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResolvConf {
    /// `nameserver` lines, port 53, in file order.
    pub nameservers: Vec<SocketAddr>,
    /// `options timeout:N`.
    pub timeout: Option<Duration>,
    /// `options attempts:N`.
    pub attempts: Option<u32>,
    /// `search` domains (the last `search` or `domain` line wins, as in glibc).
    pub search: Vec<String>,
    /// `options ndots:N`.
    pub ndots: Option<u32>,
}

/// Reads and parses the resolv.conf at `path`.
pub fn read(path: &Path) -> std::io::Result<ResolvConf> {
    Ok(parse(&std::fs::read_to_string(path)?))
}

/// Parses resolv.conf text. Unknown lines and unparseable values are ignored, like the C
/// resolver does; a `nameserver` with an IPv6 zone (`fe80::1%eth0`) is skipped.
pub fn parse(text: &str) -> ResolvConf {
    let mut conf = ResolvConf::default();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or_default().trim();
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => {
                if let Some(ip) = words.next().and_then(|w| w.parse::<IpAddr>().ok()) {
                    conf.nameservers.push(SocketAddr::new(ip, 53));
                }
            }
            Some("search") => {
                conf.search = words.map(|w| w.trim_end_matches('.').to_owned()).collect()
            }
            Some("domain") => {
                conf.search = words
                    .next()
                    .map(|w| w.trim_end_matches('.').to_owned())
                    .into_iter()
                    .collect()
            }
            Some("options") => {
                for option in words {
                    let (key, value) = option.split_once(':').unwrap_or((option, ""));
                    let number = value.parse::<u32>().ok();
                    match key {
                        "timeout" => {
                            conf.timeout = number
                                .filter(|n| *n > 0)
                                .map(|n| Duration::from_secs(n.into()))
                        }
                        "attempts" => conf.attempts = number,
                        "ndots" => conf.ndots = number,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    conf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_kubelet_and_systemd_write() {
        let conf = parse(
            "# generated\nnameserver 10.0.0.2\nnameserver 2001:db8::53 ; v6\nnameserver fe80::1%eth0\n\
             search default.svc.cluster.local svc.cluster.local cluster.local\n\
             options ndots:5 timeout:3 attempts:2 rotate\n",
        );
        assert_eq!(
            conf.nameservers,
            vec![
                "10.0.0.2:53".parse::<SocketAddr>().unwrap(),
                "[2001:db8::53]:53".parse::<SocketAddr>().unwrap()
            ]
        );
        assert_eq!(conf.timeout, Some(Duration::from_secs(3)));
        assert_eq!(conf.attempts, Some(2));
        assert_eq!(conf.ndots, Some(5));
        assert_eq!(
            conf.search,
            [
                "default.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local"
            ]
        );
    }

    #[test]
    fn empty_and_garbage_give_no_nameservers() {
        assert_eq!(parse(""), ResolvConf::default());
        let conf = parse("nameserver\nnameserver not-an-ip\noptions timeout:x timeout:0\n");
        assert!(conf.nameservers.is_empty());
        assert_eq!(conf.timeout, None);
    }

    #[test]
    fn last_search_or_domain_wins() {
        assert_eq!(parse("search a b\ndomain c.\n").search, ["c"]);
    }

    #[test]
    fn missing_file_is_an_error() {
        assert!(read(Path::new("/nonexistent/resolv.conf")).is_err());
    }
}
