//! TCP proxying for TLS passthrough, `tcp` routes and terminated TLS: connect to a cluster
//! endpoint, replay what was already read, copy both ways until both sides close (half-close
//! kept), then write the TCP access-log line and the tcp_proxy, cluster and per-SNI counters.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::ListenerContext;
use crate::access_log::{AccessLogRecord, ResponseFlags};
use crate::routing::authz::Attributes;
use crate::routing::snapshot::{Snapshot, TcpProxy};
use crate::upstream::cluster::ConnectError;

/// One downstream connection to forward.
pub struct TcpSession<S> {
    pub downstream: S,
    /// Bytes already read from downstream (the ClientHello), sent upstream first.
    pub replay: Vec<u8>,
    /// The address the connection arrived on.
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub server_name: Option<String>,
    pub peer_identity: Option<Arc<str>>,
    pub started: SystemTime,
}

pub async fn proxy<S>(ctx: &ListenerContext, snapshot: &Snapshot, route: &TcpProxy, session: TcpSession<S>)
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let clock = Instant::now();
    let mut record = AccessLogRecord::new(session.started);
    record.downstream_local_address = Some(session.local);
    record.downstream_remote_address = Some(session.remote);
    record.requested_server_name = session.server_name.as_deref().map(Into::into);
    record.downstream_peer_uri_san = session.peer_identity.clone();
    ctx.stats.cx_opened();
    let tcp_stats = ctx.shared.tcp_stats(&route.stat_prefix);
    tcp_stats.downstream_cx_total.inc();
    let sni_stats = session.server_name.as_deref().map(|n| ctx.shared.sni.server_name(n));
    if let Some(s) = &sni_stats {
        s.downstream_cx_total.inc();
    }

    let outcome = forward(ctx, snapshot, route, session, &mut record).await;
    if let Some((rx, tx)) = outcome {
        tcp_stats.downstream_cx_rx_bytes_total.add(rx);
        tcp_stats.downstream_cx_tx_bytes_total.add(tx);
        if let Some(s) = &sni_stats {
            s.rx_bytes_total.add(rx);
            s.tx_bytes_total.add(tx);
        }
        record.bytes_received = rx;
        record.bytes_sent = tx;
    }
    record.duration_ms = clock.elapsed().as_millis() as u64;
    ctx.stats.cx_closed();
    ctx.shared.logger.log(record);
}

/// Returns the bytes received from and sent to downstream, or `None` when no upstream was
/// reached (the record then says why).
async fn forward<S>(
    ctx: &ListenerContext,
    snapshot: &Snapshot,
    route: &TcpProxy,
    mut session: TcpSession<S>,
    record: &mut AccessLogRecord,
) -> Option<(u64, u64)>
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let weighted = super::pick_weighted(&route.clusters)?;
    let Some(cluster) = snapshot.cluster(&weighted.cluster) else {
        record.upstream_cluster = Some(weighted.cluster.as_str().into());
        record.response_flags.insert(ResponseFlags::NC);
        return None;
    };
    let rt = ctx.shared.clusters.get(cluster);
    record.upstream_cluster = Some(rt.name.clone());
    // AuthorizationPolicy, decided before dialing: a denied tunnel never reaches the upstream
    // (Envoy dials first and denies on the first byte).
    let filters = &snapshot.authz.tcp;
    if !filters.is_empty() {
        let attributes = Attributes {
            principal: super::principal_of(session.peer_identity.as_deref()),
            peer: session.remote.ip(),
            local: session.local,
            sni: session.server_name.as_deref(),
            http: None,
        };
        let stats = ctx.shared.rbac_stats(None);
        if filters.has_dry_run() {
            record.rbac_dry_run = filters.dry_run(&attributes).map(Into::into);
        }
        if let Some(details) = filters.evaluate(&attributes, &*stats).details() {
            record.connection_termination_details = Some(details.into());
            return None;
        }
    }
    let endpoints = rt.endpoints().await;
    let Some(addr) = rt.pick(&endpoints, &[]) else {
        record.response_flags.insert(ResponseFlags::UH);
        return None;
    };
    record.upstream_host = Some(addr);
    // Boxed: the connect state is transient; inline it would stay in the tunnel's future.
    let mut upstream = match Box::pin(rt.connect(addr)).await {
        Ok(stream) => stream,
        Err(e) => {
            record.response_flags.insert(match e {
                ConnectError::Overflow => ResponseFlags::UO,
                _ => ResponseFlags::UF,
            });
            record.upstream_transport_failure_reason = Some(e.transport_failure_reason().into());
            return None;
        }
    };
    if ctx.shared.logger.enabled() {
        record.upstream_local_address = upstream.local_addr();
    }
    rt.stats.upstream_rq_total.inc();
    let host = rt.host_stats(addr);
    host.rq_total.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let replayed = session.replay.len() as u64;
    if replayed > 0 && upstream.write_all(&session.replay).await.is_err() {
        record.response_flags.insert(ResponseFlags::UC);
        return Some((replayed, 0));
    }
    session.replay = Vec::new();
    // Plain TCP downstream (passthrough, tcp routes): move bytes with splice(2), never through
    // user space. TLS-terminated streams need the bytes decrypted, so they are copied.
    if let Some(tcp) = (&session.downstream as &dyn std::any::Any).downcast_ref::<tokio::net::TcpStream>() {
        let progress = crate::io::splice::Progress::default();
        if let Err(e) = crate::io::splice::bidirectional(tcp, upstream.tcp(), &progress).await {
            tracing::debug!(error = %e, cluster = %rt.name, "tcp proxy ended with an error");
        }
        let to_upstream = progress.a_to_b.load(std::sync::atomic::Ordering::Relaxed);
        let to_downstream = progress.b_to_a.load(std::sync::atomic::Ordering::Relaxed);
        upstream.count_spliced(to_downstream, to_upstream);
        return Some((replayed + to_upstream, to_downstream));
    }
    let mut downstream = Counted {
        inner: &mut session.downstream,
        read: 0,
        written: 0,
    };
    if let Err(e) = tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await {
        // A reset on either side ends both; what was copied until then still counts. Envoy's
        // tcp_proxy logs no termination details for a reset or a close without close_notify.
        tracing::debug!(error = %e, cluster = %rt.name, "tcp proxy ended with an error");
    }
    Some((replayed + downstream.read, downstream.written))
}

/// Counts the bytes read from and written to a stream, so totals survive an error.
struct Counted<'a, S> {
    inner: &'a mut S,
    read: u64,
    written: u64,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<'_, S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut *self.inner).poll_read(cx, buf);
        self.read += (buf.filled().len() - before) as u64;
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<'_, S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut *self.inner).poll_write(cx, data);
        if let std::task::Poll::Ready(Ok(n)) = &polled {
            self.written += *n as u64;
        }
        polled
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}
