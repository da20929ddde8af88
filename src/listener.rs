//! Listeners: bind the snapshot's ports and accept. The accept loop only accepts; sniffing,
//! handshakes and routing run in the spawned per-connection task, each under a timeout.
//! Each worker (`crate::worker`) accepts on a socket of its own per address, bound with
//! `SO_REUSEPORT` so the kernel spreads new connections across workers, as Envoy's listeners do.
//! On a config reload the bound set is diffed: an unchanged address keeps its sockets and every
//! open connection, a new one is bound, a removed one stops accepting and drains.

pub mod http;
pub mod mtls;
pub mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::config::Bootstrap;
use crate::drain::ConnectionGuard;
pub use crate::proxy::ListenerContext;
use crate::proxy::Shared;
use crate::routing::snapshot::{ListenerKind, Snapshot};
use crate::stats::ListenerStats;

struct Running {
    ctx: Arc<ListenerContext>,
    /// Set to stop accepting (the listener was removed from the config).
    stop: watch::Sender<bool>,
}

/// The bound listeners, by configured address.
pub struct Listeners {
    shared: Arc<Shared>,
    snapshot: Arc<ArcSwap<Snapshot>>,
    bootstrap: Arc<Bootstrap>,
    workers: Arc<crate::worker::Workers>,
    running: Mutex<HashMap<SocketAddr, Running>>,
}

impl Listeners {
    pub fn new(
        shared: Arc<Shared>,
        snapshot: Arc<ArcSwap<Snapshot>>,
        bootstrap: Arc<Bootstrap>,
        workers: Arc<crate::worker::Workers>,
    ) -> Listeners {
        Listeners {
            shared,
            snapshot,
            bootstrap,
            workers,
            running: Mutex::new(HashMap::new()),
        }
    }

    /// Makes the bound set match the current snapshot. Fails only when a new address cannot be
    /// bound; addresses already bound are never touched.
    pub fn reconcile(&self) -> anyhow::Result<()> {
        let current = self.snapshot.load_full();
        self.shared.register_rbac_stats(&current);
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let wanted: HashMap<SocketAddr, &str> =
            current.listeners.iter().map(|l| (l.address, l.name.as_str())).collect();
        running.retain(|addr, r| {
            let keep = wanted.contains_key(addr);
            if !keep {
                tracing::info!(listener = %r.ctx.name, "listener removed: stops accepting, open connections drain");
                r.stop.send_replace(true);
            }
            keep
        });
        let mut first_error = None;
        for (addr, name) in wanted {
            if running.contains_key(&addr) {
                continue;
            }
            match bind_each(addr, self.workers.handles().len()) {
                Ok(sockets) => {
                    let local = sockets.first().and_then(|s| s.local_addr().ok()).unwrap_or(addr);
                    let ctx = Arc::new(ListenerContext {
                        name: name.to_string(),
                        local,
                        stats: Arc::new(ListenerStats::new(&self.shared.store, name)),
                        shared: self.shared.clone(),
                        snapshot: self.snapshot.clone(),
                        bootstrap: self.bootstrap.clone(),
                    });
                    let (stop, stopped) = watch::channel(false);
                    for (socket, worker) in sockets.into_iter().zip(self.workers.handles()) {
                        let (ctx, stopped) = (ctx.clone(), stopped.clone());
                        // Registered with the worker's own event loop, inside its runtime.
                        worker.spawn(async move {
                            match TcpListener::from_std(socket) {
                                Ok(listener) => accept_loop(listener, ctx, stopped).await,
                                Err(e) => tracing::error!(listener = %ctx.name, error = %e, "cannot register listener"),
                            }
                        });
                    }
                    tracing::info!(listener = %name, address = %local, "listening");
                    running.insert(addr, Running { ctx, stop });
                }
                Err(e) => {
                    tracing::error!(listener = %name, %addr, error = %e, "cannot bind listener");
                    first_error.get_or_insert_with(|| {
                        anyhow::anyhow!(e).context(format!("cannot bind listener {name} on {addr}"))
                    });
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The bound listeners (name, local address).
    pub fn bound(&self) -> Vec<(String, SocketAddr)> {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let mut list: Vec<_> = running.values().map(|r| (r.ctx.name.clone(), r.ctx.local)).collect();
        list.sort();
        list
    }
}

/// Binds `n` listening sockets on `addr`, one per worker. With more than one they share the
/// address through `SO_REUSEPORT`; a port 0 is resolved by the first and reused by the rest.
fn bind_each(addr: SocketAddr, n: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    let first = bind(addr, n > 1)?;
    let mut addr = addr;
    addr.set_port(first.local_addr()?.port());
    let mut sockets = vec![first];
    for _ in 1..n {
        sockets.push(bind(addr, true)?);
    }
    Ok(sockets)
}

fn bind(addr: SocketAddr, reuse_port: bool) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_tcp_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

async fn accept_loop(listener: TcpListener, ctx: Arc<ListenerContext>, mut stopped: watch::Receiver<bool>) {
    let drain = ctx.shared.drain.clone();
    // egressd's own: Envoy has no counter for failed accept(2) calls.
    let accept_failed = ctx
        .shared
        .store
        .counter(&format!("listener.{}.downstream_cx_accept_failed", ctx.name));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = drain.started() => break,
            _ = stopped.wait_for(|s| *s) => break,
        };
        match accepted {
            Ok((stream, remote)) => {
                if drain.active() >= ctx.bootstrap.limits.max_downstream_connections {
                    ctx.stats.downstream_cx_overflow.inc();
                    drop(stream);
                    continue;
                }
                let guard = drain.track();
                spawn_connection(ctx.clone(), stream, remote, guard);
            }
            Err(e) => {
                // Out of file descriptors (or similar): count, back off instead of spinning;
                // open connections keep working. Logged once per burst, not per retry.
                let failures = accept_failed.value();
                accept_failed.inc();
                if failures.is_multiple_of(1000) {
                    tracing::warn!(listener = %ctx.name, error = %e, failures = failures + 1, "accept failed; backing off");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// The address a connection arrived on, as Envoy logs `%DOWNSTREAM_LOCAL_ADDRESS%`: the
/// listener's own when it is bound to one address; for a wildcard bind (`0.0.0.0:8080`) the
/// socket's (getsockname(2), once per connection, never per request): in a pod, the pod's IP.
fn arrived_on(ctx: &ListenerContext, stream: &TcpStream) -> SocketAddr {
    if ctx.local.ip().is_unspecified() {
        stream.local_addr().unwrap_or(ctx.local)
    } else {
        ctx.local
    }
}

/// tokio marks an accepted socket readable before the kernel has said so, so that the first
/// read is tried at once; a TLS client usually sends its ClientHello a little after the TCP
/// handshake completes, so that read finds nothing (measured: one failed `recvfrom` per new
/// passthrough connection). Dropping the assumption costs no system call and loses nothing, but
/// only here: bytes already there when the socket was registered are reported by the next
/// `epoll_wait` (edge-triggered registration reports the current state), and the worker's
/// single-threaded driver cannot have turned since `accept` returned, because there was no
/// `.await` in between. In the connection's task it would race with the driver: an event
/// processed before the task ran would be erased (tried: lost ClientHellos).
fn forget_assumed_readiness(stream: &TcpStream) {
    let _ = stream.try_io(tokio::io::Interest::READABLE, || {
        Err::<(), _>(std::io::ErrorKind::WouldBlock.into())
    });
}

/// Spawns the connection's task, typed by listener kind: a task is as large as its future, so
/// an idle HTTP connection does not carry room for a TLS or TCP session's state.
fn spawn_connection(ctx: Arc<ListenerContext>, stream: TcpStream, remote: SocketAddr, guard: ConnectionGuard) {
    // No setsockopt per connection: accepted sockets inherit TCP_NODELAY from the listener
    // (`bind`; a test below checks it).
    let local = arrived_on(&ctx, &stream);
    // A connection keeps the snapshot it started with for its whole life.
    let snapshot = ctx.snapshot.load_full();
    let Some(index) = snapshot.listeners.iter().position(|l| l.name == ctx.name) else {
        return;
    };
    match &snapshot.listeners[index].kind {
        ListenerKind::Http(_) => {
            tokio::spawn(async move {
                http::serve_plain(ctx, snapshot, index, stream, local, remote).await;
                drop(guard);
            });
        }
        ListenerKind::Tls(_) => {
            forget_assumed_readiness(&stream);
            tokio::spawn(async move {
                let terminate = tls::serve(ctx.clone(), snapshot.clone(), index, stream, local, remote).await;
                if let Some((chain, session)) = terminate {
                    // A new task, sized for the terminated connection alone; this one ends.
                    tokio::spawn(async move {
                        mtls::serve(ctx, snapshot, index, chain, session).await;
                        drop(guard);
                    });
                } else {
                    drop(guard);
                }
            });
        }
        ListenerKind::Tcp(_) => {
            tokio::spawn(async move {
                if let ListenerKind::Tcp(route) = &snapshot.listeners[index].kind {
                    let session = crate::proxy::tcp::TcpSession {
                        downstream: stream,
                        replay: Vec::new(),
                        local,
                        remote,
                        server_name: None,
                        peer_identity: None,
                        started: std::time::SystemTime::now(),
                    };
                    crate::proxy::tcp::proxy(&ctx, &snapshot, route, session).await;
                }
                drop(guard);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    /// Linux copies TCP_NODELAY from the listening socket to the sockets it accepts, which
    /// saves a setsockopt(2) per connection (`spawn_connection`).
    #[tokio::test]
    async fn accepted_sockets_inherit_nodelay() {
        let listener = super::bind("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert!(accepted.nodelay().unwrap());
        drop(client);
    }

    /// Bytes are read once the kernel reports them, whether they came before the accept or
    /// after it, and an accepted socket nothing was sent on is not read at all. Runs on a
    /// single-threaded runtime, as a worker does, with the clear done right after `accept`.
    #[tokio::test(flavor = "current_thread")]
    async fn accepted_sockets_are_read_when_bytes_are_there() {
        use std::time::Duration;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio::net::{TcpListener, TcpStream};

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let read_within = |mut s: TcpStream| async move {
            let mut got = [0u8; 5];
            let read = tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut got)).await;
            assert!(read.is_ok(), "bytes were sent but never reported");
            assert_eq!(&got, b"hello");
        };

        // Nothing sent: the socket is not read.
        let _silent = TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        super::forget_assumed_readiness(&accepted);
        let mut read = false;
        let _ = accepted.try_io(tokio::io::Interest::READABLE, || {
            read = true;
            Ok(())
        });
        assert!(!read, "a socket nothing was reported on was read");

        // Sent before the accept.
        let mut early = TcpStream::connect(addr).await.unwrap();
        early.write_all(b"hello").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (accepted, _) = listener.accept().await.unwrap();
        super::forget_assumed_readiness(&accepted);
        read_within(accepted).await;

        // Sent after the accept, before the driver turns (blocking sleep: no turn), then the
        // connection's task runs only after the driver has seen the bytes.
        let mut late = TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        super::forget_assumed_readiness(&accepted);
        late.write_all(b"hello").await.unwrap();
        std::thread::sleep(Duration::from_millis(50));
        tokio::time::sleep(Duration::from_millis(50)).await;
        read_within(accepted).await;
    }
}
