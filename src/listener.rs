//! Listeners: bind the snapshot's ports and accept. The accept loop only accepts; sniffing,
//! handshakes and routing run in the spawned per-connection task, each under a timeout.

pub mod http;
pub mod mtls;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpStream};

use crate::config::Bootstrap;
use crate::proxy::Shared;
use crate::routing::snapshot::{ListenerKind, Snapshot};
use crate::stats::ListenerStats;

/// What a connection task needs, besides its socket.
pub struct ListenerContext {
    pub name: String,
    pub local: SocketAddr,
    pub stats: Arc<ListenerStats>,
    pub shared: Arc<Shared>,
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub bootstrap: Arc<Bootstrap>,
}

/// Binds every listener of the snapshot and starts its accept loop.
pub async fn bind_all(
    snapshot: &Arc<ArcSwap<Snapshot>>,
    shared: &Arc<Shared>,
    bootstrap: &Arc<Bootstrap>,
) -> anyhow::Result<Vec<Arc<ListenerContext>>> {
    let current = snapshot.load_full();
    let mut out = Vec::new();
    for l in &current.listeners {
        let listener = bind(l.address).with_context(|| format!("cannot bind listener {} on {}", l.name, l.address))?;
        let local = listener.local_addr()?;
        let ctx = Arc::new(ListenerContext {
            name: l.name.clone(),
            local,
            stats: Arc::new(ListenerStats::new(&shared.store, &l.name)),
            shared: shared.clone(),
            snapshot: snapshot.clone(),
            bootstrap: bootstrap.clone(),
        });
        tokio::spawn(accept_loop(listener, ctx.clone()));
        out.push(ctx);
    }
    Ok(out)
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

async fn accept_loop(listener: TcpListener, ctx: Arc<ListenerContext>) {
    loop {
        match listener.accept().await {
            Ok((stream, remote)) => {
                let ctx = ctx.clone();
                tokio::spawn(async move { connection(ctx, stream, remote).await });
            }
            Err(e) => {
                // Out of file descriptors (or similar): back off instead of spinning; open
                // connections keep working.
                tracing::warn!(listener = %ctx.name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

async fn connection(ctx: Arc<ListenerContext>, stream: TcpStream, remote: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let snapshot = ctx.snapshot.load_full();
    let Some(index) = snapshot.listeners.iter().position(|l| l.name == ctx.name) else {
        return;
    };
    match &snapshot.listeners[index].kind {
        ListenerKind::Http(_) => http::serve_plain(ctx, snapshot, index, stream, remote).await,
        ListenerKind::Tls(_) => tls::serve(ctx, snapshot, index, stream, remote).await,
        ListenerKind::Tcp(route) => {
            let session = crate::proxy::tcp::TcpSession {
                downstream: stream,
                replay: Vec::new(),
                remote,
                server_name: None,
                peer_identity: None,
                started: std::time::SystemTime::now(),
            };
            crate::proxy::tcp::proxy(&ctx, &snapshot, route, session).await
        }
    }
}
