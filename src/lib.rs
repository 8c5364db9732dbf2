//! clusterdns: a cluster DNS server for Kubernetes, a drop-in replacement for kube-dns and
//! CoreDNS.
//!
//! Data flows one way:
//!
//! ```text
//!  source (manifests dir, ...) ──SourceEvent──▶ zone ──lookup──▶ server::handler ──▶ UDP/TCP
//!                                              (records per      │  not in the zone
//!                                               object, index)   └──▶ upstream (forwarder)
//! ```
//!
//! - [`source`] turns the outside world into typed events and knows nothing of DNS.
//! - [`zone`] owns the Kubernetes DNS specification: objects to records, the name index,
//!   NXDOMAIN vs NODATA.
//! - [`server`] owns sockets; its [`server::handler`] is the one place that decides where an
//!   answer comes from and builds every response.
//! - [`upstream`] talks to the resolvers for every name outside the cluster.
//! - [`config`] and [`ops`] are what operators touch: the config file, metrics, health.
// The one exception is `server::batch`'s Linux system calls (recvmmsg/sendmmsg), which no
// safe wrapper in our dependencies offers.
#![deny(unsafe_code)]
#![warn(missing_docs, rust_2018_idioms)]

pub mod config;
#[doc(hidden)]
pub mod fuzzing;
pub mod ops;
pub mod server;
pub mod source;
pub mod upstream;
pub mod zone;
