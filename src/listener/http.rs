//! HTTP/1.1 and cleartext HTTP/2 (prior knowledge) on one listener, with hyper; every request
//! goes to `proxy::http::handle`.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};

use super::ListenerContext;
use crate::proxy::http::{handle, HttpConn};
use crate::routing::snapshot::{ChainKind, HttpConnectionManager, ListenerKind, Snapshot};

/// The route table of a listener (plain HTTP) or of one of its chains (TLS-terminated).
fn hcm_of(snapshot: &Snapshot, listener: usize, chain: Option<usize>) -> Option<&HttpConnectionManager> {
    match (&snapshot.listeners.get(listener)?.kind, chain) {
        (ListenerKind::Http(hcm), None) => Some(hcm),
        (ListenerKind::Tls(chains), Some(c)) => match &chains.get(c)?.kind {
            ChainKind::TerminateHttp { http, .. } => Some(http),
            _ => None,
        },
        _ => None,
    }
}

pub async fn serve_plain<S>(
    ctx: Arc<ListenerContext>,
    snapshot: Arc<Snapshot>,
    listener: usize,
    stream: S,
    remote: SocketAddr,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    serve(ctx, snapshot, listener, None, stream, remote, "http", None, None).await
}

#[allow(clippy::too_many_arguments)]
pub async fn serve<S>(
    ctx: Arc<ListenerContext>,
    snapshot: Arc<Snapshot>,
    listener: usize,
    chain: Option<usize>,
    stream: S,
    remote: SocketAddr,
    scheme: &'static str,
    sni: Option<Box<str>>,
    peer_identity: Option<Arc<str>>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Some(hcm) = hcm_of(&snapshot, listener, chain) else {
        return;
    };
    let stats = ctx.shared.hcm_stats(&hcm.stat_prefix);
    ctx.stats.downstream_cx_total.inc();
    ctx.stats.downstream_cx_active.inc();
    stats.downstream_cx_total.inc();
    stats.downstream_cx_active.inc();
    let conn = Arc::new(HttpConn {
        shared: ctx.shared.clone(),
        snapshot,
        hcm: hcm_of,
        listener,
        chain,
        local: ctx.local,
        remote,
        scheme,
        sni,
        peer_identity,
        stats: stats.clone(),
    });
    // Boxed: hyper keeps a slot the size of the service's future for the connection's whole
    // life; the request future is ~20 KiB, a box is allocated only while a request is in flight.
    let service = service_fn(move |req| Box::pin(handle(conn.clone(), req)));
    let limits = &ctx.bootstrap.limits;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(ctx.bootstrap.timeouts.request_headers)
        .max_headers(limits.max_request_headers)
        .max_buf_size((limits.max_request_headers_kb * 1024).max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size((limits.max_request_headers_kb * 1024) as u32);
    let drain = ctx.shared.drain.clone();
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let served = tokio::select! {
        served = conn.as_mut() => served,
        _ = drain.started() => {
            // HTTP/1.1: the in-flight response gets `Connection: close`; HTTP/2: GOAWAY. Requests
            // already accepted finish; the process exits at the drain deadline at the latest.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = served {
        tracing::debug!(listener = %ctx.name, error = %e, "downstream connection ended with an error");
    }
    stats.downstream_cx_active.dec();
    ctx.stats.downstream_cx_active.dec();
}
