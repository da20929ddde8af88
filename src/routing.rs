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

/// Loads the config paths and compiles them; the error lists every problem.
pub fn load_and_compile(
    paths: &[std::path::PathBuf],
    bootstrap: &crate::config::Bootstrap,
) -> Result<Snapshot, CompileError> {
    let loaded = crate::config::load_paths(paths, &bootstrap.default_namespace);
    compile(&loaded, bootstrap)
}
