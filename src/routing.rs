//! Routing: compiles the user's Istio resources into one immutable `Snapshot` (following
//! istiod's gateway semantics) and answers per-request route lookups from it.
//! Nothing outside `compile` validates config.

pub mod authz;
mod compile;
pub mod host;
pub mod http_match;
pub mod snapshot;

pub use compile::{compile, CompileError};
pub use snapshot::Snapshot;
