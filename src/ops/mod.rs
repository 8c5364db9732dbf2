//! What operators touch: metrics and the HTTP endpoints for health, readiness and scraping.
//!
//! This module observes the rest of the server; nothing in the DNS path depends on it except
//! through the counters in [`metrics::Metrics`].

pub mod http;
pub mod metrics;
pub mod query_metrics;
pub mod throttle;
