//! Clusters at run time: endpoints (DNS or static), load balancing, connection limits, per-host
//! counters for `/clusters`, and TCP connect with Envoy's stats. Built lazily on first use, so
//! memory follows the destinations actually used, and kept across snapshot swaps.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::dns::Resolver;
use super::endpoints::{DnsEndpoints, DnsMode, Endpoints};
use super::pool::Pool;
use crate::routing::snapshot::{Cluster, Discovery, LoadBalancer};
use crate::stats::{ClusterStats, Store};

/// Why an upstream connection could not be made.
#[derive(Debug, Clone)]
pub enum ConnectError {
    /// The OS refused or failed the connect (`delayed_connect_error: Connection refused`).
    Refused(Arc<str>),
    Timeout,
    /// Connection limit reached (`maxConnections`).
    Overflow,
}

impl ConnectError {
    /// Envoy's `%UPSTREAM_TRANSPORT_FAILURE_REASON%` for this failure.
    pub fn transport_failure_reason(&self) -> String {
        match self {
            ConnectError::Refused(reason) => format!("delayed_connect_error: {reason}"),
            ConnectError::Timeout => "connection_timeout".into(),
            ConnectError::Overflow => "overflow".into(),
        }
    }
}

/// Counters of one endpoint of one cluster (`/clusters` per-host lines).
#[derive(Debug, Default)]
pub struct HostStats {
    pub cx_total: AtomicU64,
    pub cx_active: AtomicU64,
    pub cx_connect_fail: AtomicU64,
    pub rq_total: AtomicU64,
    pub rq_active: AtomicU64,
    pub rq_success: AtomicU64,
    pub rq_error: AtomicU64,
    pub rq_timeout: AtomicU64,
}

/// One cluster's live state.
pub struct ClusterRuntime {
    pub config: Arc<Cluster>,
    pub name: Arc<str>,
    pub stats: ClusterStats,
    endpoints: Endpoints,
    next: AtomicUsize,
    hosts: Mutex<HashMap<SocketAddr, Arc<HostStats>>>,
    pub pool: Pool,
    /// Open upstream connections, against `maxConnections`.
    open: Arc<AtomicU64>,
    pending: AtomicU64,
    /// TLS origination (DestinationRule `tls`), or why it cannot be set up.
    pub tls: Option<Result<Arc<rustls::ClientConfig>, String>>,
}

impl ClusterRuntime {
    fn new(config: Arc<Cluster>, store: &Store, resolver: &Resolver, certs_dir: &std::path::Path) -> ClusterRuntime {
        let tls = config.tls.as_ref().map(|t| {
            super::tls::client_config(t, config.protocol, certs_dir).inspect_err(|e| {
                tracing::warn!(cluster = %config.name, error = %e, "TLS origination is misconfigured; requests will fail with UF");
            })
        });
        let endpoints = match &config.discovery {
            Discovery::StrictDns { targets } if targets.len() == 1 => Endpoints::Dns(DnsEndpoints::spawn(
                resolver.clone(),
                targets[0].host.clone(),
                targets[0].port,
                DnsMode::Strict,
            )),
            Discovery::StrictDns { targets } => {
                // Several DNS targets: STRICT_DNS over each; endpoints are the union, resolved
                // per target (the common single-host case above avoids the merge).
                Endpoints::Union(
                    targets
                        .iter()
                        .map(|t| DnsEndpoints::spawn(resolver.clone(), t.host.clone(), t.port, DnsMode::Strict))
                        .collect::<Vec<_>>()
                        .into(),
                )
            }
            Discovery::LogicalDns { target } => Endpoints::Dns(DnsEndpoints::spawn(
                resolver.clone(),
                target.host.clone(),
                target.port,
                DnsMode::Logical,
            )),
            Discovery::Static { endpoints } => Endpoints::fixed(endpoints.iter().map(|e| e.address)),
            Discovery::Eds => Endpoints::fixed([]),
        };
        let name: Arc<str> = config.name.as_str().into();
        ClusterRuntime {
            stats: ClusterStats::new(store, &name),
            pool: Pool::new(&config),
            name,
            config,
            endpoints,
            next: AtomicUsize::new(0),
            hosts: Mutex::new(HashMap::new()),
            open: Arc::new(AtomicU64::new(0)),
            pending: AtomicU64::new(0),
            tls,
        }
    }

    /// Current endpoints, without waiting.
    pub fn current_endpoints(&self) -> Arc<[SocketAddr]> {
        self.endpoints.current()
    }

    /// The endpoints' host name (DNS clusters), for `/clusters`.
    pub fn hostname(&self) -> Option<&str> {
        match &self.config.discovery {
            Discovery::StrictDns { targets } => targets.first().map(|t| t.host.as_str()),
            Discovery::LogicalDns { target } => Some(target.host.as_str()),
            _ => None,
        }
    }

    /// Current endpoints; waits (bounded) for the first DNS answer of a new cluster.
    pub async fn endpoints(&self) -> Arc<[SocketAddr]> {
        self.endpoints.wait_first(self.config.connect_timeout).await
    }

    /// Picks an endpoint by the cluster's load balancer, avoiding `tried` when another exists
    /// (Istio's retry host predicate `previous_hosts`).
    pub fn pick(&self, endpoints: &[SocketAddr], tried: &[SocketAddr]) -> Option<SocketAddr> {
        if endpoints.is_empty() {
            return None;
        }
        let candidates: Vec<SocketAddr> = endpoints.iter().copied().filter(|e| !tried.contains(e)).collect();
        let pool: &[SocketAddr] = if candidates.is_empty() { endpoints } else { &candidates };
        let i = match self.config.load_balancer {
            LoadBalancer::Random => fastrand::usize(..pool.len()),
            // Least request falls back to round robin until per-host load is tracked.
            LoadBalancer::RoundRobin | LoadBalancer::LeastRequest => {
                self.next.fetch_add(1, Ordering::Relaxed) % pool.len()
            }
        };
        Some(pool[i])
    }

    pub fn host_stats(&self, addr: SocketAddr) -> Arc<HostStats> {
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        hosts.entry(addr).or_default().clone()
    }

    /// Per-host counters, for `/clusters`.
    pub fn hosts(&self) -> Vec<(SocketAddr, Arc<HostStats>)> {
        let hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        let mut list: Vec<_> = hosts.iter().map(|(a, s)| (*a, s.clone())).collect();
        list.sort_by_key(|(a, _)| *a);
        list
    }

    /// Opens a TCP connection to `addr` under the connect timeout and `maxConnections`, counting
    /// it in the cluster and host stats. The stream counts bytes and releases the slot on drop.
    pub async fn connect(&self, addr: SocketAddr) -> Result<CountedStream, ConnectError> {
        let Some(slot) = self.reserve() else {
            self.stats.upstream_cx_overflow.inc();
            return Err(ConnectError::Overflow);
        };
        self.connect_with(addr, slot).await
    }

    /// A connection slot under `maxConnections`, if one is free.
    pub fn reserve(&self) -> Option<Slot> {
        let limit = u64::from(self.config.limits.max_connections);
        if self.open.fetch_add(1, Ordering::AcqRel) >= limit {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Slot(self.open.clone(), None))
    }

    /// A slot past `maxConnections`, counted as `upstream_cx_overflow`: for a worker whose pool
    /// has no connection at all, as Envoy does, so that requests on one worker are not
    /// stranded behind connections held idle by another.
    pub fn reserve_over_limit(&self) -> Slot {
        self.stats.upstream_cx_overflow.inc();
        self.open.fetch_add(1, Ordering::AcqRel);
        Slot(self.open.clone(), None)
    }

    /// Requests waiting for a connection slot (`http1MaxPendingRequests`).
    pub fn pending(&self) -> &AtomicU64 {
        &self.pending
    }

    /// [`Self::connect`] with a slot already reserved.
    pub async fn connect_with(&self, addr: SocketAddr, slot: Slot) -> Result<CountedStream, ConnectError> {
        let host = self.host_stats(addr);
        self.stats.upstream_cx_total.inc();
        host.cx_total.fetch_add(1, Ordering::Relaxed);
        let result = tokio::time::timeout(self.config.connect_timeout, TcpStream::connect(addr)).await;
        let stream = match result {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                self.stats.upstream_cx_connect_fail.inc();
                host.cx_connect_fail.fetch_add(1, Ordering::Relaxed);
                return Err(ConnectError::Refused(describe_io_error(&e).into()));
            }
            Err(_) => {
                self.stats.upstream_cx_connect_fail.inc();
                self.stats.upstream_cx_connect_timeout.inc();
                host.cx_connect_fail.fetch_add(1, Ordering::Relaxed);
                return Err(ConnectError::Timeout);
            }
        };
        let _ = stream.set_nodelay(true);
        self.stats.upstream_cx_active.inc();
        host.cx_active.fetch_add(1, Ordering::Relaxed);
        Ok(CountedStream {
            inner: stream,
            rx: self.stats.upstream_cx_rx_bytes_total.clone(),
            tx: self.stats.upstream_cx_tx_bytes_total.clone(),
            active: self.stats.upstream_cx_active.clone(),
            host,
            _slot: slot,
        })
    }
}

/// `Connection refused` as the OS says it, without the `(os error 111)` suffix.
fn describe_io_error(e: &io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// One of the cluster's `maxConnections`, released on drop.
pub struct Slot(Arc<AtomicU64>, Option<Arc<std::sync::atomic::AtomicUsize>>);

impl Slot {
    /// Also counts the connection in `live` (a worker's connections to one endpoint) while
    /// it is open.
    pub fn counted_in(mut self, live: Arc<std::sync::atomic::AtomicUsize>) -> Slot {
        live.fetch_add(1, Ordering::AcqRel);
        self.1 = Some(live);
        self
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
        if let Some(live) = &self.1 {
            live.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// An upstream TCP stream that counts bytes into the cluster stats and, when dropped, the
/// connection's end (`upstream_cx_active`, the `maxConnections` slot).
pub struct CountedStream {
    inner: TcpStream,
    rx: crate::stats::Counter,
    tx: crate::stats::Counter,
    active: crate::stats::Gauge,
    host: Arc<HostStats>,
    _slot: Slot,
}

impl CountedStream {
    pub fn tcp(&self) -> &TcpStream {
        &self.inner
    }

    /// The local address (getsockname(2) on each call: asked only when a log line needs it).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.inner.local_addr().ok()
    }

    /// Counts bytes moved without passing through this stream's read/write (splice(2)).
    pub fn count_spliced(&self, from_upstream: u64, to_upstream: u64) {
        self.rx.add(from_upstream);
        self.tx.add(to_upstream);
    }
}

impl Drop for CountedStream {
    fn drop(&mut self) {
        self.active.dec();
        self.host.cx_active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl AsyncRead for CountedStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.rx.add(n as u64);
        }
        result
    }
}

impl AsyncWrite for CountedStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = &result {
            self.tx.add(*n as u64);
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = &result {
            self.tx.add(*n as u64);
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// All clusters' runtime state, by name. A cluster is rebuilt when its compiled config changes;
/// its counters live in the store and so survive.
pub struct ClusterManager {
    store: Store,
    resolver: Resolver,
    /// The mesh identity for ISTIO_MUTUAL origination.
    certs_dir: std::path::PathBuf,
    clusters: Mutex<HashMap<Arc<str>, Arc<ClusterRuntime>>>,
}

impl ClusterManager {
    pub fn new(store: Store, resolver: Resolver, certs_dir: std::path::PathBuf) -> ClusterManager {
        ClusterManager {
            store,
            resolver,
            certs_dir,
            clusters: Mutex::new(HashMap::new()),
        }
    }

    /// The runtime of a compiled cluster, created on first use.
    pub fn get(&self, config: &Arc<Cluster>) -> Arc<ClusterRuntime> {
        let mut clusters = self.clusters.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rt) = clusters.get(config.name.as_str()) {
            if Arc::ptr_eq(&rt.config, config) || *rt.config == **config {
                return rt.clone();
            }
        }
        let rt = Arc::new(ClusterRuntime::new(
            config.clone(),
            &self.store,
            &self.resolver,
            &self.certs_dir,
        ));
        clusters.insert(rt.name.clone(), rt.clone());
        rt
    }

    /// The runtime of a cluster if it was used.
    pub fn existing(&self, name: &str) -> Option<Arc<ClusterRuntime>> {
        let clusters = self.clusters.lock().unwrap_or_else(|p| p.into_inner());
        clusters.get(name).cloned()
    }

    /// Every cluster used so far, by name.
    pub fn all(&self) -> Vec<Arc<ClusterRuntime>> {
        let clusters = self.clusters.lock().unwrap_or_else(|p| p.into_inner());
        let mut list: Vec<_> = clusters.values().cloned().collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    }
}
