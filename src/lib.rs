//! egressd: an Istio egress gateway data plane.
//!
//! Config flows one way: the user's Istio YAML (`config`) is compiled by `routing::compile` into an
//! immutable `routing::Snapshot`, which the listeners and proxies serve from.
// `deny`, not `forbid`: `proxy::splice` is the one module allowed `unsafe` (splice(2)).
#![deny(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod app;
pub mod cli;
pub mod config;
pub mod drain;
pub mod file_events;
pub mod http1;
pub mod io;
pub mod listener;
pub mod proxy;
pub mod reload;
pub mod routing;
pub mod shard;
pub mod state;
pub mod stats;
pub mod tls;
pub mod upstream;
pub mod worker;

/// The error of a body or an exchange that any layer may produce and any may look into (its
/// `source` chain): hyper's, a codec's, an I/O error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
