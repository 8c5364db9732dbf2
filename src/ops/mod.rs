//! What operators touch: metrics and the HTTP endpoints for health, readiness and scraping,
//! the admin endpoint with `explain` and `dump`, `doctor` (the machine's kernel knobs, limits, ports and upstreams) and the kube-dns
//! ConfigMap import.
//!
//! This module observes the rest of the server; nothing in the DNS path depends on it except
//! through the counters in [`metrics::Metrics`].

pub mod admin;
pub mod doctor;
pub mod explain;
pub mod http;
pub mod import;
pub mod metrics;
pub mod query_metrics;
pub mod reload;
pub mod socket_stats;
pub mod throttle;

/// Writes a command's report to stdout. A reader that went away (`clusterdns doctor | head`)
/// ends the output quietly: `println!` would panic on the broken pipe.
pub fn print_report(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}
