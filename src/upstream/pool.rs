//! Pooled upstream HTTP connections per cluster endpoint: idle HTTP/1.1 connections reused
//! (keep-alive), one shared HTTP/2 connection per endpoint. Connection I/O is counted by the
//! cluster's `CountedStream`; this module only decides reuse.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::cluster::{ClusterRuntime, ConnectError, Slot};
use super::h1;
use crate::routing::snapshot::{Cluster, UpstreamProtocol};

pub use crate::BoxError;
/// Request bodies sent upstream.
pub type UpstreamBody = BoxBody<Bytes, BoxError>;

/// Connections are shared per endpoint and, with TLS origination, per SNI.
pub type PoolKey = (SocketAddr, Option<Arc<str>>);

/// An idle HTTP/1.1 connection: its sender, requests carried so far, and local address.
type IdleHttp1 = (http1::SendRequest<UpstreamBody>, u32, Option<SocketAddr>);
/// The shared HTTP/2 connection of an endpoint and its local address.
type SharedHttp2 = (http2::SendRequest<UpstreamBody>, Option<SocketAddr>);

/// A worker's connections (`crate::worker`): used only by the worker whose event loop
/// drives them, as Envoy's pools are.
#[derive(Default)]
struct Shard {
    idle: HashMap<PoolKey, Vec<IdleHttp1>>,
    /// Idle connections of egressd's own HTTP/1.1 client (`super::h1`).
    /// Boxed as they travel (checkout, the response body, checkin): no move reallocates.
    #[allow(clippy::vec_box)]
    own_idle: HashMap<PoolKey, Vec<Box<h1::Conn>>>,
    shared: HashMap<PoolKey, SharedHttp2>,
    /// Open connections per key, idle or busy (the rule in `Pool::checkout`).
    live: HashMap<PoolKey, Arc<AtomicUsize>>,
    /// A new key added to a map this large first prunes the shard ([`Shard::prune`]).
    prune_at: usize,
}

/// The smallest map size at which a new key prunes the shard.
const PRUNE_AT: usize = 64;

impl Shard {
    /// This worker's connection count for `key`, added when new.
    fn live(&mut self, key: &PoolKey) -> Arc<AtomicUsize> {
        if !self.live.contains_key(key) {
            self.make_room(self.live.len());
        }
        self.live.entry(key.clone()).or_default().clone()
    }

    fn make_room(&mut self, len: usize) {
        if len >= self.prune_at.max(PRUNE_AT) {
            self.prune();
            // Amortized: what is still in use is not scanned again until the maps double.
            self.prune_at = 2 * self
                .live
                .len()
                .max(self.idle.len())
                .max(self.own_idle.len())
                .max(self.shared.len());
        }
    }

    /// Forgets endpoints this worker has no open connection to any more (DNS moved on, or an
    /// SNI is no longer asked for), so the maps follow the endpoints in use, not every endpoint
    /// ever used.
    fn prune(&mut self) {
        self.idle.retain(|_, list| {
            list.retain(|c| !c.0.is_closed());
            !list.is_empty()
        });
        self.own_idle.retain(|_, list| {
            list.retain(|c| c.is_usable());
            !list.is_empty()
        });
        self.shared.retain(|_, (send, _)| !send.is_closed());
        // A count is held by each open connection's slot as well as by the map.
        self.live
            .retain(|_, n| Arc::strong_count(n) > 1 || n.load(Ordering::Acquire) > 0);
    }
}

/// Idle HTTP/1.1 connections kept per endpoint (beyond that they are closed).
const MAX_IDLE_PER_ENDPOINT: usize = 256;

/// A connection ready to carry one request.
pub enum Sender {
    Http1 {
        send: http1::SendRequest<UpstreamBody>,
        uses: u32,
        local: Option<SocketAddr>,
        key: PoolKey,
    },
    Http2 {
        send: http2::SendRequest<UpstreamBody>,
        local: Option<SocketAddr>,
    },
    /// egressd's own HTTP/1.1 client, for plaintext HTTP/1.1 upstreams; `None` once sent (the response body owns the connection then).
    Own(Option<Box<h1::Conn>>),
}

/// A response body from the upstream, by client.
pub enum ResponseBody {
    Hyper(hyper::body::Incoming),
    Own(h1::RawBody),
}

impl Sender {
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Sender::Http1 { local, .. } | Sender::Http2 { local, .. } => *local,
            Sender::Own(conn) => conn.as_ref().and_then(|c| c.local_addr()),
        }
    }

    pub fn is_http2(&self) -> bool {
        matches!(self, Sender::Http2 { .. })
    }

    /// Sends a request (connection reset, closed, a malformed response... are errors).
    pub async fn send(
        &mut self,
        req: http::Request<UpstreamBody>,
        rt: &Arc<ClusterRuntime>,
    ) -> Result<http::Response<ResponseBody>, BoxError> {
        let hyper = match self {
            Sender::Http1 { send, uses, .. } => {
                *uses += 1;
                send.send_request(req).await
            }
            Sender::Http2 { send, .. } => send.send_request(req).await,
            Sender::Own(conn) => {
                let conn = conn.take().ok_or("connection already used")?;
                let response = h1::send(conn, req, rt.clone()).await?;
                return Ok(response.map(ResponseBody::Own));
            }
        };
        Ok(hyper?.map(ResponseBody::Hyper))
    }
}

pub struct Pool {
    protocol: UpstreamProtocol,
    max_requests_per_connection: Option<u32>,
    /// One per worker, indexed by `crate::shard::index()`.
    shards: Box<[Mutex<Shard>]>,
}

impl Pool {
    pub fn new(config: &Cluster) -> Pool {
        Pool {
            protocol: config.protocol,
            max_requests_per_connection: config.limits.max_requests_per_connection,
            shards: (0..crate::shard::count()).map(|_| Mutex::default()).collect(),
        }
    }

    /// How many connections to `key` this worker has open (the rule in `checkout`).
    fn live_here(&self, key: &PoolKey) -> Arc<AtomicUsize> {
        self.mine().live(key)
    }

    /// This worker's shard.
    fn mine(&self) -> std::sync::MutexGuard<'_, Shard> {
        self.shards[crate::shard::index() % self.shards.len()]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// A connection to `addr`: an idle one if any is ready, else a new one (TLS-originated when
    /// the cluster says so, with the SNI from `tls.sni` or `authority`). The bool is true when
    /// the connection is new.
    /// With `own`, the connection is for egressd's own HTTP/1.1 client (`super::h1`; the
    /// caller checks the request and the cluster allow it).
    pub async fn checkout(
        &self,
        rt: &ClusterRuntime,
        addr: SocketAddr,
        authority: Option<&str>,
        own: bool,
    ) -> Result<(Sender, bool), CheckoutError> {
        let tls = match (&rt.tls, &rt.config.tls) {
            (Some(Ok(config)), Some(settings)) => {
                let name = super::tls::server_name(settings, authority, &rt.config)
                    .ok_or_else(|| CheckoutError::Tls("invalid SNI".into()))?;
                Some((config.clone(), name))
            }
            (Some(Err(e)), _) => return Err(CheckoutError::Tls(e.clone())),
            _ => None,
        };
        let key: PoolKey = (addr, tls.as_ref().map(|(_, n)| Arc::from(n.to_str().as_ref())));
        // Reuse a connection; else open one if `maxConnections` allows, or past it when this
        // worker has none to the endpoint (Envoy's rule); else wait as a pending request (at
        // most `http1MaxPendingRequests` of them, as Envoy queues) until either.
        let mut waiting: Option<PendingGuard<'_>> = None;
        // This worker's connection count for `key`, looked up only when none is idle.
        let mut live: Option<Arc<AtomicUsize>> = None;
        let mut swept = false;
        let started = tokio::time::Instant::now();
        let slot = loop {
            if own {
                if let Some(conn) = self.own_idle_ready(&key) {
                    return Ok((Sender::Own(Some(conn)), false));
                }
            } else if self.protocol == UpstreamProtocol::Http2 {
                if let Some((send, local)) = self.shared_ready(&key) {
                    return Ok((Sender::Http2 { send, local }, false));
                }
            } else if let Some((send, uses, local)) = self.idle_ready(&key) {
                return Ok((Sender::Http1 { send, uses, local, key }, false));
            }
            if let Some(slot) = rt.reserve() {
                break slot;
            }
            // Closed idle connections may hold the slots: free them and look again.
            if !swept {
                swept = true;
                if self.sweep_own_idle() {
                    continue;
                }
            }
            let live = live.get_or_insert_with(|| self.live_here(&key));
            if live.load(Ordering::Acquire) == 0 {
                break rt.reserve_over_limit();
            }
            if waiting.is_none() {
                let pending = rt.pending().fetch_add(1, Ordering::AcqRel);
                let guard = PendingGuard(rt.pending());
                if pending >= u64::from(rt.config.limits.max_pending_requests) {
                    rt.stats.upstream_rq_pending_overflow.inc();
                    return Err(CheckoutError::Connect(ConnectError::Overflow));
                }
                waiting = Some(guard);
            }
            if started.elapsed() >= rt.config.connect_timeout {
                rt.stats.upstream_cx_overflow.inc();
                return Err(CheckoutError::Connect(ConnectError::Overflow));
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        };
        drop(waiting);
        let slot = slot.counted_in(live.unwrap_or_else(|| self.live_here(&key)));
        // The rare path, boxed: its future (connect, TLS, HTTP handshake) is several KiB that
        // every request's future would otherwise carry, and copy into its box.
        if own && tls.is_none() {
            let stream = Box::pin(rt.connect_with(addr, slot))
                .await
                .map_err(CheckoutError::Connect)?;
            return Ok((Sender::Own(Some(h1::Conn::new(stream, key))), true));
        }
        Box::pin(self.open(rt, addr, slot, tls, &key))
            .await
            .map(|sender| (sender, true))
    }

    /// Opens a new connection to `addr` in `slot`: TCP, then TLS when originating, then HTTP.
    async fn open(
        &self,
        rt: &ClusterRuntime,
        addr: SocketAddr,
        slot: Slot,
        tls: Option<(Arc<rustls::ClientConfig>, rustls_pki_types::ServerName<'static>)>,
        key: &PoolKey,
    ) -> Result<Sender, CheckoutError> {
        let stream = rt.connect_with(addr, slot).await.map_err(CheckoutError::Connect)?;
        let local = stream.local_addr();
        let sender = match tls {
            None => self.handshake(TokioIo::new(stream), local, key).await?,
            Some((config, name)) => {
                let connector = tokio_rustls::TlsConnector::from(config);
                let handshake = tokio::time::timeout(rt.config.connect_timeout, connector.connect(name, stream)).await;
                match handshake {
                    Ok(Ok(tls_stream)) => {
                        rt.stats.ssl_handshake.inc();
                        self.handshake(TokioIo::new(tls_stream), local, key).await?
                    }
                    Ok(Err(e)) => {
                        // As Envoy counts them: a failed TLS handshake is a failed connect, and
                        // a certificate the verifier refused is `fail_verify_*`, not a
                        // connection error.
                        rt.stats.upstream_cx_connect_fail.inc();
                        rt.host_stats(addr)
                            .cx_connect_fail
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let text = e.to_string();
                        let rustls_error = e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>());
                        match rustls_error {
                            Some(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
                            | Some(rustls::Error::InvalidCertificate(
                                rustls::CertificateError::NotValidForNameContext { .. },
                            )) => rt.stats.ssl_fail_verify_san.inc(),
                            Some(rustls::Error::InvalidCertificate(_)) => rt.stats.ssl_fail_verify_error.inc(),
                            _ => rt.stats.ssl_connection_error.inc(),
                        }
                        return Err(CheckoutError::Tls(text));
                    }
                    Err(_) => {
                        rt.stats.ssl_connection_error.inc();
                        return Err(CheckoutError::Tls("TLS handshake timeout".into()));
                    }
                }
            }
        };
        Ok(sender)
    }

    async fn handshake<I>(
        &self,
        io: TokioIo<I>,
        local: Option<SocketAddr>,
        key: &PoolKey,
    ) -> Result<Sender, CheckoutError>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        if self.protocol == UpstreamProtocol::Http2 {
            let (send, conn) = http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| CheckoutError::Handshake(e.to_string()))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            self.mine().shared.insert(key.clone(), (send.clone(), local));
            Ok(Sender::Http2 { send, local })
        } else {
            let (send, conn) = http1::handshake(io)
                .await
                .map_err(|e| CheckoutError::Handshake(e.to_string()))?;
            tokio::spawn(async move {
                // A `101` hands the connection to the response (a WebSocket tunnel).
                let _ = conn.with_upgrades().await;
            });
            Ok(Sender::Http1 {
                send,
                uses: 0,
                local,
                key: key.clone(),
            })
        }
    }

    fn idle_ready(&self, key: &PoolKey) -> Option<IdleHttp1> {
        let mut shard = self.mine();
        let list = shard.idle.get_mut(key)?;
        // Newest first: the most recently used connection is the least likely to have been
        // closed by the upstream's idle timeout.
        let mut busy = Vec::new();
        let mut found = None;
        while let Some(entry) = list.pop() {
            if entry.0.is_closed() {
                continue;
            }
            if entry.0.is_ready() {
                found = Some(entry);
                break;
            }
            busy.push(entry);
        }
        list.extend(busy);
        found
    }

    /// The most recently used idle connection of the own client that is still usable; those
    /// the upstream closed are dropped on the way (the rest by the periodic sweep, so a request
    /// does not scan the whole list). The check costs a system call only for a socket epoll
    /// reported something on.
    fn own_idle_ready(&self, key: &PoolKey) -> Option<Box<h1::Conn>> {
        let mut shard = self.mine();
        let list = shard.own_idle.get_mut(key)?;
        while let Some(conn) = list.pop() {
            if conn.is_usable() {
                return Some(conn);
            }
        }
        None
    }

    /// Drops this worker's idle own-client connections to every endpoint that the upstream
    /// closed; asked when the cluster is out of connection slots, and every few seconds
    /// (`crate::app`). True when one was dropped.
    pub fn sweep_own_idle(&self) -> bool {
        let mut shard = self.mine();
        let before: usize = shard.own_idle.values().map(Vec::len).sum();
        shard.own_idle.retain(|_, list| {
            list.retain(|c| c.is_usable());
            !list.is_empty()
        });
        shard.own_idle.values().map(Vec::len).sum::<usize>() < before
    }

    fn shared_ready(&self, key: &PoolKey) -> Option<SharedHttp2> {
        let mut shard = self.mine();
        match shard.shared.get(key) {
            Some((send, _)) if send.is_closed() => {
                shard.shared.remove(key);
                None
            }
            Some((send, local)) => Some((send.clone(), *local)),
            None => None,
        }
    }

    /// Returns an HTTP/1.1 connection after its response headers arrived; it becomes reusable
    /// once that response's body has been read (hyper reports it ready then).
    pub fn checkin(&self, sender: Sender) {
        let Sender::Http1 { send, uses, local, key } = sender else {
            return;
        };
        if send.is_closed() || self.max_requests_per_connection.is_some_and(|max| uses >= max) {
            return;
        }
        let mut shard = self.mine();
        if !shard.idle.contains_key(&key) {
            let len = shard.idle.len();
            shard.make_room(len);
        }
        let list = shard.idle.entry(key).or_default();
        if list.len() < MAX_IDLE_PER_ENDPOINT {
            list.push((send, uses, local));
        }
    }

    /// Returns a connection of the own client whose response has ended, unless it has
    /// carried `maxRequestsPerConnection`.
    pub fn checkin_h1(&self, conn: Box<h1::Conn>) {
        if self.max_requests_per_connection.is_some_and(|max| conn.uses() >= max) {
            return;
        }
        let mut shard = self.mine();
        if !shard.own_idle.contains_key(conn.key()) {
            let len = shard.own_idle.len();
            shard.make_room(len);
        }
        let list = shard.own_idle.entry(conn.key().clone()).or_default();
        if list.len() < MAX_IDLE_PER_ENDPOINT {
            list.push(conn);
        }
    }
}

#[derive(Debug)]
pub enum CheckoutError {
    Connect(ConnectError),
    /// The HTTP/2 or HTTP/1.1 connection setup failed.
    Handshake(String),
    /// TLS origination failed (bad config, handshake or verification).
    Tls(String),
}

/// Counts a request waiting for a connection slot while it waits.
struct PendingGuard<'a>(&'a std::sync::atomic::AtomicU64);

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u16) -> PoolKey {
        (SocketAddr::from(([127, 0, 0, 1], i)), None)
    }

    /// Endpoints left behind (DNS answered other addresses) are forgotten once the map has grown;
    /// those with an open connection stay.
    #[test]
    fn endpoints_without_connections_are_forgotten() {
        let mut shard = Shard::default();
        let held = shard.live(&key(1));
        held.fetch_add(1, Ordering::AcqRel);
        for i in 2..=PRUNE_AT as u16 {
            drop(shard.live(&key(i)));
        }
        assert_eq!(shard.live.len(), PRUNE_AT);
        let _new = shard.live(&key(1000));
        let mut kept: Vec<u16> = shard.live.keys().map(|k| k.0.port()).collect();
        kept.sort();
        assert_eq!(kept, [1, 1000]);
        // The same key again is found, not re-added, and prunes nothing.
        assert!(Arc::ptr_eq(&shard.live(&key(1)), &held));
        assert_eq!(held.load(Ordering::Acquire), 1);
        // Still in use after the prune: no scan until the maps have doubled.
        for i in 2..PRUNE_AT as u16 {
            drop(shard.live(&key(i)));
        }
        assert_eq!(shard.live.len(), PRUNE_AT);
    }
}
