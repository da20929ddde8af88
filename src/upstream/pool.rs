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
use crate::routing::snapshot::{Cluster, UpstreamProtocol};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
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
    shared: HashMap<PoolKey, SharedHttp2>,
    /// Open connections per key, idle or busy (the rule in `Pool::checkout`).
    live: HashMap<PoolKey, Arc<AtomicUsize>>,
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
}

impl Sender {
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Sender::Http1 { local, .. } | Sender::Http2 { local, .. } => *local,
        }
    }

    pub fn is_http2(&self) -> bool {
        matches!(self, Sender::Http2 { .. })
    }

    /// Sends a request; the error is hyper's (connection reset, closed, ...).
    pub async fn send(
        &mut self,
        req: http::Request<UpstreamBody>,
    ) -> Result<http::Response<hyper::body::Incoming>, hyper::Error> {
        match self {
            Sender::Http1 { send, uses, .. } => {
                *uses += 1;
                send.send_request(req).await
            }
            Sender::Http2 { send, .. } => send.send_request(req).await,
        }
    }
}

pub struct Pool {
    protocol: UpstreamProtocol,
    max_requests_per_connection: Option<u32>,
    /// One per worker, indexed by `crate::worker::index()`.
    shards: Box<[Mutex<Shard>]>,
}

impl Pool {
    pub fn new(config: &Cluster) -> Pool {
        Pool {
            protocol: config.protocol,
            max_requests_per_connection: config.limits.max_requests_per_connection,
            shards: (0..crate::worker::count()).map(|_| Mutex::default()).collect(),
        }
    }

    /// How many connections to `key` this worker has open (the rule in `checkout`).
    fn live_here(&self, key: &PoolKey) -> Arc<AtomicUsize> {
        self.mine().live.entry(key.clone()).or_default().clone()
    }

    /// This worker's shard.
    fn mine(&self) -> std::sync::MutexGuard<'_, Shard> {
        self.shards[crate::worker::index() % self.shards.len()]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// A connection to `addr`: an idle one if any is ready, else a new one (TLS-originated when
    /// the cluster says so, with the SNI from `tls.sni` or `authority`). The bool is true when
    /// the connection is new.
    pub async fn checkout(
        &self,
        rt: &ClusterRuntime,
        addr: SocketAddr,
        authority: Option<&str>,
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
        let started = tokio::time::Instant::now();
        let slot = loop {
            if self.protocol == UpstreamProtocol::Http2 {
                if let Some((send, local)) = self.shared_ready(&key) {
                    return Ok((Sender::Http2 { send, local }, false));
                }
            } else if let Some((send, uses, local)) = self.idle_ready(&key) {
                return Ok((Sender::Http1 { send, uses, local, key }, false));
            }
            if let Some(slot) = rt.reserve() {
                break slot;
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
                let _ = conn.await;
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
        let list = shard.idle.entry(key).or_default();
        if list.len() < MAX_IDLE_PER_ENDPOINT {
            list.push((send, uses, local));
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
