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
pub mod throttle;
