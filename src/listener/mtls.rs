//! TLS termination (SIMPLE, MUTUAL, ISTIO_MUTUAL) on a TLS listener's chain.

use std::sync::Arc;

use tokio::net::TcpStream;

use super::ListenerContext;
use crate::proxy::tcp::TcpSession;
use crate::routing::snapshot::{FilterChain, Snapshot};

/// Terminates TLS for `chain` and serves what is inside (HTTP routes or a tcp route).
pub async fn serve(
    ctx: Arc<ListenerContext>,
    _snapshot: Arc<Snapshot>,
    _listener: usize,
    _chain: &FilterChain,
    session: TcpSession<TcpStream>,
) {
    // Termination is not served yet: refuse like an unmatched chain, so nothing leaks upstream.
    ctx.stats.ssl_connection_error.inc();
    tracing::warn!(listener = %ctx.name, remote = %session.remote, "TLS termination is not available yet; connection closed");
}
