//! TLS listeners: read the ClientHello (bounded in size and time) without consuming it, pick
//! the filter chain by SNI, then pass the bytes through or hand them to the TLS terminator.
//! Anything that cannot be routed is closed with one `NR filter_chain_not_found` log line.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::net::TcpStream;

use super::ListenerContext;
use crate::access_log::{AccessLogRecord, ResponseFlags};
use crate::proxy::tcp::{self, TcpSession};
use crate::routing::snapshot::{ChainKind, ListenerKind, Snapshot, TcpProxy, WeightedCluster};
use crate::tls::sni::read_client_hello;

/// Routes one connection by its ClientHello: passthrough and auto-passthrough chains are
/// proxied here; for a chain that terminates TLS, returns the chain and the session for
/// `mtls::serve`.
pub async fn serve(
    ctx: Arc<ListenerContext>,
    snapshot: Arc<Snapshot>,
    index: usize,
    mut stream: TcpStream,
    local: SocketAddr,
    remote: SocketAddr,
) -> Option<(usize, TcpSession<TcpStream>)> {
    let started = SystemTime::now();
    let listener = &snapshot.listeners[index];
    let ListenerKind::Tls(chains) = &listener.kind else {
        return None;
    };
    let limits = &ctx.bootstrap.limits;
    // Boxed: the read's state is transient and should not stay in the tunnel's task.
    let hello = Box::pin(tokio::time::timeout(
        ctx.bootstrap.timeouts.client_hello,
        read_client_hello(&mut stream, limits.max_client_hello_bytes),
    ))
    .await;
    let (info, replay) = match hello {
        Ok(Ok(found)) => found,
        Ok(Err(e)) => {
            tracing::debug!(listener = %ctx.name, %remote, reason = e.as_str(), "ClientHello refused");
            refuse(&ctx, started, local, remote, None, e.as_str());
            return None;
        }
        Err(_) => {
            ctx.stats.downstream_pre_cx_timeout.inc();
            refuse(&ctx, started, local, remote, None, "client_hello_timeout");
            return None;
        }
    };
    let server_name = info.server_name.clone();
    let found = listener.sni_index.find(server_name.as_deref().unwrap_or(""));
    let Some((chain_index, chain)) = found.and_then(|i| Some((i, chains.get(i)?))) else {
        refuse(&ctx, started, local, remote, server_name, "no_matching_server_name");
        return None;
    };
    let session = TcpSession {
        downstream: stream,
        replay,
        local,
        remote,
        server_name,
        peer_identity: None,
        started,
    };
    match &chain.kind {
        ChainKind::Passthrough(route) => tcp::proxy(&ctx, &snapshot, route, session).await,
        ChainKind::AutoPassthrough => match session.server_name.as_deref().and_then(auto_passthrough_cluster) {
            Some(cluster) if snapshot.cluster(&cluster).is_some() => {
                let route = TcpProxy {
                    stat_prefix: cluster.clone(),
                    clusters: vec![WeightedCluster {
                        cluster,
                        weight: 100,
                        request_headers: Default::default(),
                        response_headers: Default::default(),
                    }],
                    origin: "AUTO_PASSTHROUGH".into(),
                };
                tcp::proxy(&ctx, &snapshot, &route, session).await
            }
            _ => refuse(
                &ctx,
                started,
                local,
                remote,
                session.server_name,
                "no_cluster_for_server_name",
            ),
        },
        // TLS termination goes on in a task of its own (`listener::spawn_connection`), sized
        // for it alone rather than for a passthrough tunnel too.
        ChainKind::TerminateHttp { .. } | ChainKind::TerminateTcp { .. } => return Some((chain_index, session)),
    }
    None
}

/// `outbound_.443_._.edition.cnn.com` (istiod's DNS-SRV form) → `outbound|443||edition.cnn.com`.
fn auto_passthrough_cluster(sni: &str) -> Option<String> {
    let rest = sni.strip_prefix("outbound_.")?;
    let (port, rest) = rest.split_once("_.")?;
    let (subset, host) = rest.split_once("_.")?;
    port.parse::<u16>().ok()?;
    Some(format!("outbound|{port}|{subset}|{host}"))
}

/// Closes a connection that matches no chain: counted and logged at the listener, as Envoy's
/// listener access log does (`NR filter_chain_not_found`), and never sent upstream.
fn refuse(
    ctx: &ListenerContext,
    started: SystemTime,
    local: SocketAddr,
    remote: SocketAddr,
    server_name: Option<String>,
    why: &'static str,
) {
    ctx.stats.no_filter_chain_match.inc();
    tracing::debug!(listener = %ctx.name, %remote, server_name = server_name.as_deref().unwrap_or("-"), why, "connection refused");
    let mut record = AccessLogRecord::new(started);
    record.response_flags.insert(ResponseFlags::NR);
    record.response_code_details = Some("filter_chain_not_found".into());
    record.downstream_local_address = Some(local);
    record.downstream_remote_address = Some(remote);
    record.requested_server_name = server_name.map(Into::into);
    record.duration_ms = started.elapsed().map(|d| d.as_millis() as u64).unwrap_or(0);
    ctx.shared.logger.log(record);
}

#[cfg(test)]
mod tests {
    #[test]
    fn auto_passthrough_names() {
        assert_eq!(
            super::auto_passthrough_cluster("outbound_.443_._.edition.cnn.com").as_deref(),
            Some("outbound|443||edition.cnn.com")
        );
        assert_eq!(
            super::auto_passthrough_cluster("outbound_.80_.cnn_.istio-egressgateway.istio-system.svc.cluster.local")
                .as_deref(),
            Some("outbound|80|cnn|istio-egressgateway.istio-system.svc.cluster.local")
        );
        assert_eq!(super::auto_passthrough_cluster("edition.cnn.com"), None);
    }
}
