//! What the kernel knows about this server's own UDP sockets: datagrams it dropped because a
//! socket's receive buffer was full, and the bytes waiting to be read. Read at scrape time
//! from `/proc/self/net/udp` and `udp6` (one line per socket, matched by inode), so the query
//! path pays nothing.
//!
//! `clusterdns doctor` can only show the machine's `RcvbufErrors` since boot, every process
//! together; this says whether *this* server loses queries now, per listen address. CoreDNS
//! has no such metric: node-exporter's machine-wide counter is all an operator gets there.
//!
//! Owns: the socket registry and the two metrics' values. Must not: touch the sockets.

use prometheus::{IntCounterVec, IntGaugeVec};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

/// The server's UDP sockets by inode, and the drops already counted for each.
#[derive(Default)]
pub struct UdpSocketStats {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    sockets: HashMap<u64, Tracked>,
    /// `server` labels given a queue gauge at the last refresh (to remove those gone since).
    queued_labels: Vec<String>,
}

struct Tracked {
    /// The `server` label: `dns://` and the listen address as bound.
    server: String,
    /// The socket's kernel drop counter as last read.
    drops_seen: u64,
}

/// One socket's line of `/proc/net/udp`: what the refresh reads.
#[derive(Debug, PartialEq, Eq)]
struct KernelLine {
    inode: u64,
    receive_queue: u64,
    drops: u64,
}

/// Keeps a socket counted while it lives; dropping it stops the counting (the drops already
/// counted stay in the counter).
pub struct TrackedSocket {
    stats: Arc<UdpSocketStats>,
    inode: u64,
}

impl Drop for TrackedSocket {
    fn drop(&mut self) {
        self.stats.lock().sockets.remove(&self.inode);
    }
}

impl UdpSocketStats {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts `socket`, bound for `listen`, until the returned guard is dropped. `None` where
    /// the socket has no inode to find it by (not Linux).
    pub fn track(
        self: &Arc<Self>,
        listen: SocketAddr,
        socket: &impl std::os::fd::AsRawFd,
    ) -> Option<TrackedSocket> {
        let link = std::fs::read_link(format!("/proc/self/fd/{}", socket.as_raw_fd())).ok()?;
        let inode = socket_inode(&link.to_string_lossy())?;
        self.lock().sockets.insert(
            inode,
            Tracked {
                server: format!("dns://{listen}"),
                drops_seen: 0,
            },
        );
        Some(TrackedSocket {
            stats: self.clone(),
            inode,
        })
    }

    /// Reads the kernel's lines and brings the metrics up to date: the drops since the last
    /// read added to `drops`, the bytes waiting set in `queued` (per listen address).
    pub fn refresh(&self, drops: &IntCounterVec, queued: &IntGaugeVec) {
        let mut lines = Vec::new();
        for table in ["/proc/self/net/udp", "/proc/self/net/udp6"] {
            if let Ok(text) = std::fs::read_to_string(table) {
                lines.extend(text.lines().skip(1).filter_map(parse_line));
            }
        }
        let mut state = self.lock();
        let mut queue_by_server: BTreeMap<String, i64> = BTreeMap::new();
        for line in lines {
            let Some(tracked) = state.sockets.get_mut(&line.inode) else {
                continue;
            };
            let new_drops = line.drops.saturating_sub(tracked.drops_seen);
            tracked.drops_seen = line.drops;
            // Touched even at 0, so the series exists before the first drop (rate() works).
            drops
                .with_label_values(&[&tracked.server])
                .inc_by(new_drops);
            *queue_by_server.entry(tracked.server.clone()).or_default() +=
                i64::try_from(line.receive_queue).unwrap_or(i64::MAX);
        }
        for gone in state
            .queued_labels
            .iter()
            .filter(|label| !queue_by_server.contains_key(*label))
        {
            let _ = queued.remove_label_values(&[gone]);
        }
        for (server, bytes) in &queue_by_server {
            queued.with_label_values(&[server]).set(*bytes);
        }
        state.queued_labels = queue_by_server.into_keys().collect();
    }
}

/// The inode of a `/proc/self/fd` link to a socket: `socket:[12345]`.
fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// One line of `/proc/net/udp` (or `udp6`): `sl local rem st tx_queue:rx_queue tr:tm->when
/// retrnsmt uid timeout inode ref pointer drops`, queues in hex.
fn parse_line(line: &str) -> Option<KernelLine> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (_, receive_queue) = fields.get(4)?.split_once(':')?;
    Some(KernelLine {
        inode: fields.get(9)?.parse().ok()?,
        receive_queue: u64::from_str_radix(receive_queue, 16).ok()?,
        drops: fields.get(12)?.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_lines_are_read_by_their_columns() {
        let v4 = "  812: 0100007F:14E9 00000000:0000 07 00000000:00000A00 00:00000000 00000000  \
                  1000        0 4242 2 0000000000000000 17";
        assert_eq!(
            parse_line(v4),
            Some(KernelLine {
                inode: 4242,
                receive_queue: 0xA00,
                drops: 17
            })
        );
        let v6 = "  812: 00000000000000000000000001000000:14E9 \
                  00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 \
                  00000000  1000        0 99 2 0000000000000000 0";
        assert_eq!(
            parse_line(v6),
            Some(KernelLine {
                inode: 99,
                receive_queue: 0,
                drops: 0
            })
        );
        let header = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when \
                      retrnsmt   uid  timeout inode ref pointer drops";
        assert_eq!(parse_line(header), None);
        assert_eq!(parse_line("  1: 0100007F:14E9"), None, "a short line");
    }

    #[test]
    fn socket_links_give_their_inode() {
        assert_eq!(socket_inode("socket:[123456]"), Some(123_456));
        assert_eq!(socket_inode("pipe:[123456]"), None);
        assert_eq!(socket_inode("/dev/null"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_tracked_socket_is_found_in_the_kernel_table_until_its_guard_drops() {
        let stats = Arc::new(UdpSocketStats::default());
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let addr = socket.local_addr().expect("addr");
        // Three datagrams waiting, unread.
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        for _ in 0..3 {
            sender.send_to(&[0u8; 100], addr).expect("send");
        }
        let drops = IntCounterVec::new(prometheus::Opts::new("d", "d"), &["server"]).unwrap();
        let queued = IntGaugeVec::new(prometheus::Opts::new("q", "q"), &["server"]).unwrap();
        let label = format!("dns://{addr}");
        let guard = stats.track(addr, &socket).expect("an inode on Linux");
        stats.refresh(&drops, &queued);
        assert_eq!(drops.with_label_values(&[&label]).get(), 0);
        assert!(
            queued.with_label_values(&[&label]).get() >= 300,
            "three datagrams waiting"
        );
        drop(guard);
        stats.refresh(&drops, &queued);
        assert!(
            queued.remove_label_values(&[&label]).is_err(),
            "no queue gauge for a socket no longer tracked"
        );
    }
}
