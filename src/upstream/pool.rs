//! Pooled upstream HTTP connections per cluster endpoint: idle HTTP/1.1 connections reused
//! (keep-alive), one shared HTTP/2 connection per endpoint. Connection I/O is counted by the
//! cluster's `CountedStream`; this module only decides reuse.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::cluster::{ClusterRuntime, ConnectError};
use crate::routing::snapshot::{Cluster, UpstreamProtocol};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Request bodies sent upstream.
pub type UpstreamBody = BoxBody<Bytes, BoxError>;

/// Idle HTTP/1.1 connections kept per endpoint (beyond that they are closed).
const MAX_IDLE_PER_ENDPOINT: usize = 256;

/// A connection ready to carry one request.
pub enum Sender {
    Http1 { send: http1::SendRequest<UpstreamBody>, uses: u32, local: Option<SocketAddr> },
    Http2 { send: http2::SendRequest<UpstreamBody>, local: Option<SocketAddr> },
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
    idle: Mutex<HashMap<SocketAddr, Vec<(http1::SendRequest<UpstreamBody>, u32, Option<SocketAddr>)>>>,
    shared: Mutex<HashMap<SocketAddr, (http2::SendRequest<UpstreamBody>, Option<SocketAddr>)>>,
}

impl Pool {
    pub fn new(config: &Cluster) -> Pool {
        Pool {
            protocol: config.protocol,
            max_requests_per_connection: config.limits.max_requests_per_connection,
            idle: Mutex::new(HashMap::new()),
            shared: Mutex::new(HashMap::new()),
        }
    }

    /// A connection to `addr`: an idle one if any is ready, else a new one. The bool is true
    /// when the connection is new.
    pub async fn checkout(&self, rt: &ClusterRuntime, addr: SocketAddr) -> Result<(Sender, bool), CheckoutError> {
        if self.protocol == UpstreamProtocol::Http2 {
            if let Some((send, local)) = self.shared_ready(addr) {
                return Ok((Sender::Http2 { send, local }, false));
            }
        } else if let Some((send, uses, local)) = self.idle_ready(addr) {
            return Ok((Sender::Http1 { send, uses, local }, false));
        }
        let stream = rt.connect(addr).await.map_err(CheckoutError::Connect)?;
        let local = stream.local;
        let io = TokioIo::new(stream);
        if self.protocol == UpstreamProtocol::Http2 {
            let (send, conn) = http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| CheckoutError::Handshake(e.to_string()))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
            shared.insert(addr, (send.clone(), local));
            Ok((Sender::Http2 { send, local }, true))
        } else {
            let (send, conn) = http1::handshake(io)
                .await
                .map_err(|e| CheckoutError::Handshake(e.to_string()))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok((Sender::Http1 { send, uses: 0, local }, true))
        }
    }

    fn idle_ready(&self, addr: SocketAddr) -> Option<(http1::SendRequest<UpstreamBody>, u32, Option<SocketAddr>)> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(&addr)?;
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

    fn shared_ready(&self, addr: SocketAddr) -> Option<(http2::SendRequest<UpstreamBody>, Option<SocketAddr>)> {
        let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        match shared.get(&addr) {
            Some((send, _)) if send.is_closed() => {
                shared.remove(&addr);
                None
            }
            Some((send, local)) => Some((send.clone(), *local)),
            None => None,
        }
    }

    /// Returns an HTTP/1.1 connection after its response headers arrived; it becomes reusable
    /// once that response's body has been read (hyper reports it ready then).
    pub fn checkin(&self, addr: SocketAddr, sender: Sender) {
        let Sender::Http1 { send, uses, local } = sender else { return };
        if send.is_closed() || self.max_requests_per_connection.is_some_and(|max| uses >= max) {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.entry(addr).or_default();
        if list.len() < MAX_IDLE_PER_ENDPOINT {
            list.push((send, uses, local));
        }
    }
}

#[derive(Debug)]
pub enum CheckoutError {
    Connect(ConnectError),
    Handshake(String),
}
