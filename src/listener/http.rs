//! HTTP/1.1 (our codec, `h1`) and HTTP/2 (hyper; cleartext with prior knowledge, or h2 over
//! TLS) on one listener; every request goes to `proxy::http::handle`.

use std::net::SocketAddr;
use std::sync::Arc;

use std::time::SystemTime;

use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use super::ListenerContext;
use crate::access_log::{AccessLogRecord, Protocol, ResponseFlags};
use crate::http1 as h1;
use crate::io::prefixed::Prefixed;
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
    local: SocketAddr,
    remote: SocketAddr,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    serve(ctx, snapshot, listener, None, stream, local, remote, "http", None, None).await
}

#[allow(clippy::too_many_arguments)]
pub async fn serve<S>(
    ctx: Arc<ListenerContext>,
    snapshot: Arc<Snapshot>,
    listener: usize,
    chain: Option<usize>,
    stream: S,
    local: SocketAddr,
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
    ctx.stats.cx_opened();
    stats.downstream_cx_total.inc();
    stats.downstream_cx_active.inc();
    let conn = Arc::new(HttpConn {
        shared: ctx.shared.clone(),
        snapshot,
        hcm: hcm_of,
        listener,
        chain,
        local,
        remote,
        scheme,
        sni,
        peer_identity,
        stats: stats.clone(),
        rbac: std::sync::OnceLock::new(),
    });
    // Boxed: hyper keeps a slot the size of the service's future for the connection's whole
    // life; the request future is ~20 KiB, a box is allocated only while a request is in flight.
    let drain = ctx.shared.drain.clone();
    let limits = &ctx.bootstrap.limits;
    let settings = h1::Settings {
        max_headers: limits.max_request_headers,
        max_head_bytes: limits.max_request_headers_kb * 1024,
        header_timeout: ctx.bootstrap.timeouts.request_headers,
    };
    // Each request future is boxed: it is ~20 KiB and exists only while a request is in flight.
    let h1_conn = conn.clone();
    let served = h1::serve(
        stream,
        &settings,
        &drain,
        move |req| Box::pin(handle(h1_conn.clone(), req)),
        |why, head| reject(&conn, why, head),
    )
    .await;
    match served {
        Ok(h1::Ended::Closed) => {}
        Ok(h1::Ended::Http2 { io, read }) => {
            // Boxed: hyper's HTTP/2 connection state should not size every HTTP/1.1 task.
            Box::pin(serve_h2(&ctx, conn, Prefixed::new(read.to_vec(), io))).await
        }
        Err(e) => tracing::debug!(listener = %ctx.name, error = %e, "downstream connection ended with an error"),
    }
    stats.downstream_cx_active.dec();
    ctx.stats.cx_closed();
}

/// Cleartext HTTP/2 (prior knowledge) or h2 over TLS, with hyper.
async fn serve_h2<S>(ctx: &ListenerContext, conn: Arc<HttpConn>, io: S)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = &ctx.bootstrap.limits;
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_header_list_size((limits.max_request_headers_kb * 1024) as u32);
    let service = service_fn(move |req| Box::pin(handle(conn.clone(), req)));
    let drain = ctx.shared.drain.clone();
    let served = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(served);
    let served = tokio::select! {
        served = served.as_mut() => served,
        _ = drain.started() => {
            // GOAWAY: requests already accepted finish; the process exits at the drain
            // deadline at the latest.
            served.as_mut().graceful_shutdown();
            served.await
        }
    };
    if let Err(e) = served {
        tracing::debug!(listener = %ctx.name, error = %e, "downstream HTTP/2 connection ended with an error");
    }
}

/// A request refused by the HTTP/1.1 codec: counted and logged as Envoy does
/// (`"- - HTTP/1.1" 400 DPE http1.codec_error`; a refused request whose head was read is
/// logged with its method, path and authority, e.g. `"GET / HTTP/1.1" 400 - missing_host_header`).
fn reject(conn: &HttpConn, why: h1::Rejected, head: Option<&http::request::Parts>) {
    let mut record = AccessLogRecord::new(SystemTime::now());
    record.response_code = why.status.as_u16();
    if why.protocol_error {
        record.response_flags.insert(ResponseFlags::DPE);
    }
    record.response_code_details = Some(why.details.into());
    record.bytes_sent = h1::rejection_body(why).len() as u64;
    record.protocol = Protocol::from_version(head.map_or(http::Version::HTTP_11, |h| h.version));
    if let Some(head) = head {
        record.method = Some(head.method.as_str().into());
        record.path = head.uri.path_and_query().map(|p| p.as_str().into());
        record.authority = head.uri.authority().map(|a| a.as_str().into()).or_else(|| {
            head.headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(Into::into)
        });
        record.user_agent = head
            .headers
            .get(http::header::USER_AGENT)
            .and_then(|h| h.to_str().ok())
            .map(Into::into);
    }
    record.downstream_local_address = Some(conn.local);
    record.downstream_remote_address = Some(conn.remote);
    record.requested_server_name = conn.sni.clone();
    record.downstream_peer_uri_san = conn.peer_identity.clone();
    conn.stats.downstream_rq_total.inc();
    conn.stats.rq_completed(why.status.as_u16());
    conn.shared.logger.log(record);
}
