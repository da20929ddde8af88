//! Bodies in both directions, counted, and the per-request guard that writes exactly one access
//! log line (and settles the request stats) when the response body ends or is dropped.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::access_log::{AccessLogRecord, AccessLogger, ResponseFlags};
use crate::stats::HttpConnManagerStats;
use crate::upstream::cluster::HostStats;
use crate::upstream::pool::ResponseBody;
pub use crate::BoxError;

/// Owns a request's access-log record; logs it once, on drop.
pub struct RequestLog {
    pub record: AccessLogRecord,
    started: Instant,
    logger: Arc<AccessLogger>,
    pub(super) hcm: Arc<HttpConnManagerStats>,
    /// Request body bytes, counted by the upstream request body.
    pub received: Arc<AtomicU64>,
    sent: u64,
    /// Set when a request went upstream: its host counters settle with the log.
    pub host: Option<Arc<HostStats>>,
}

impl RequestLog {
    pub fn new(record: AccessLogRecord, logger: Arc<AccessLogger>, hcm: Arc<HttpConnManagerStats>) -> RequestLog {
        hcm.downstream_rq_total.inc();
        hcm.downstream_rq_active.inc();
        RequestLog {
            record,
            started: Instant::now(),
            logger,
            hcm,
            received: Arc::new(AtomicU64::new(0)),
            sent: 0,
            host: None,
        }
    }

    pub fn elapsed_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        self.hcm.downstream_rq_active.dec();
        if self.record.response_code != 0 {
            self.hcm.rq_completed(self.record.response_code);
        }
        if self.record.response_code == 0 && self.record.response_flags.is_empty() {
            // Dropped before any response: the client went away while the request was with
            // the upstream (Envoy: `0 DC downstream_remote_disconnect`).
            self.record.response_flags.insert(ResponseFlags::DC);
            self.record.response_code_details = Some("downstream_remote_disconnect".into());
        }
        if let Some(host) = &self.host {
            host.rq_active.fetch_sub(1, Ordering::Relaxed);
            let failed = self.record.response_code >= 500 || !self.record.response_flags.is_empty();
            let counter = if failed { &host.rq_error } else { &host.rq_success };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        let start = self.record.start_time;
        let mut record = std::mem::replace(&mut self.record, AccessLogRecord::new(start));
        record.bytes_received = self.received.load(Ordering::Relaxed);
        record.bytes_sent = self.sent;
        record.duration_ms = self.elapsed_ms();
        self.logger.log(record);
    }
}

/// The body the client receives: the upstream's, streamed, or a local reply. Holds the request's
/// log guard so the line is written when the body is done.
pub struct ProxyBody {
    inner: Inner,
    log: Option<RequestLog>,
    /// hyper's half of a `101` answer's connection, for the tunnel.
    upgrade: Option<hyper::upgrade::OnUpgrade>,
    /// A tunnel runs: `downstream_cx_upgrades_active` is up until this body goes.
    tunnel: Option<Arc<HttpConnManagerStats>>,
}

enum Inner {
    Upstream(ResponseBody),
    Full(Option<Bytes>),
}

impl ProxyBody {
    /// A `101` answer from hyper's client: the connection it hands over becomes the tunnel.
    pub fn with_upgrade(mut self, on: hyper::upgrade::OnUpgrade) -> ProxyBody {
        self.upgrade = Some(on);
        self
    }

    pub fn upstream(body: ResponseBody, log: RequestLog) -> ProxyBody {
        ProxyBody {
            inner: Inner::Upstream(body),
            log: Some(log),
            upgrade: None,
            tunnel: None,
        }
    }

    pub fn full(bytes: Bytes, log: Option<RequestLog>) -> ProxyBody {
        let data = (!bytes.is_empty()).then_some(bytes);
        ProxyBody {
            inner: Inner::Full(data),
            log,
            upgrade: None,
            tunnel: None,
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = match &mut this.inner {
            Inner::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Inner::Upstream(body) => {
                let polled = match body {
                    ResponseBody::Hyper(body) => Pin::new(body).poll_frame(cx).map_err(|e| Box::new(e) as BoxError),
                    ResponseBody::Own(body) => Pin::new(body).poll_frame(cx),
                };
                if let (Poll::Ready(Some(Err(_))), Some(log)) = (&polled, &mut this.log) {
                    upstream_reset(log);
                }
                polled
            }
        };
        if let Poll::Ready(frame) = &polled {
            match frame {
                Some(Ok(f)) => {
                    if let (Some(data), Some(log)) = (f.data_ref(), &mut this.log) {
                        log.sent += data.len() as u64;
                    }
                    if let (Some(trailers), Some(log)) = (f.trailers_ref(), &mut this.log) {
                        log.record.grpc_status = grpc_status(trailers).or(log.record.grpc_status);
                    }
                }
                // End of stream: write the log now rather than when hyper drops the body.
                None => this.log = None,
                Some(Err(_)) => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Full(data) => data.is_none(),
            Inner::Upstream(ResponseBody::Hyper(body)) => body.is_end_stream(),
            Inner::Upstream(ResponseBody::Own(body)) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Full(Some(d)) => SizeHint::with_exact(d.len() as u64),
            Inner::Full(None) => SizeHint::with_exact(0),
            Inner::Upstream(ResponseBody::Hyper(body)) => body.size_hint(),
            Inner::Upstream(ResponseBody::Own(body)) => body.size_hint(),
        }
    }
}

/// A `grpc-status` field's code (RFC-less: gRPC's PROTOCOL-HTTP2.md, a decimal 0-16, or any
/// other number an implementation sends).
pub fn grpc_status(headers: &http::HeaderMap) -> Option<u16> {
    static GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
    headers.get(&GRPC_STATUS)?.to_str().ok()?.trim().parse().ok()
}

/// The upstream went away mid-response: the client sees a reset too.
fn upstream_reset(log: &mut RequestLog) {
    log.record.response_flags.insert(ResponseFlags::UC);
    log.record.response_code_details = Some("upstream_reset_after_response_started{connection_termination}".into());
}

/// The HTTP/1.1 codec moves a `Content-Length` body of egressd's own upstream client with
/// `splice(2)` when the client's connection is plain TCP; the bytes are counted here.
impl crate::http1::Splice for ProxyBody {
    fn splice_source(&self) -> Option<(&tokio::net::TcpStream, u64)> {
        match &self.inner {
            Inner::Upstream(ResponseBody::Own(body)) => body.splice_source(),
            _ => None,
        }
    }

    fn spliced(&mut self, n: u64) {
        if let Inner::Upstream(ResponseBody::Own(body)) = &mut self.inner {
            body.spliced(n);
            if let Some(log) = &mut self.log {
                log.sent += n;
            }
        }
    }

    fn upstream_broken(&mut self) {
        if let Some(log) = &mut self.log {
            upstream_reset(log);
        }
    }

    fn take_upgrade(&mut self) -> Option<crate::http1::PendingUpgrade> {
        // Counted as Envoy counts upgrades (`http.<prefix>.downstream_cx_upgrades_*`).
        if let Some(log) = &self.log {
            log.hcm.downstream_cx_upgrades_total.inc();
            log.hcm.downstream_cx_upgrades_active.inc();
            self.tunnel = Some(log.hcm.clone());
        }
        if let Some(on) = self.upgrade.take() {
            return Some(Box::pin(async move {
                let upgraded = on.await.map_err(std::io::Error::other)?;
                // hyper's `Upgraded` replays the bytes it read past the head itself.
                Ok(crate::http1::Upgraded {
                    io: Box::new(hyper_util::rt::TokioIo::new(upgraded)),
                    read: Bytes::new(),
                })
            }));
        }
        match &mut self.inner {
            Inner::Upstream(ResponseBody::Own(body)) => {
                let upgraded = body.take_upgrade()?;
                Some(Box::pin(std::future::ready(Ok(upgraded))))
            }
            _ => None,
        }
    }

    fn upgrade_finished(&mut self, from_client: u64, to_client: u64) {
        if let Some(log) = &mut self.log {
            log.received.fetch_add(from_client, Ordering::Relaxed);
            log.sent += to_client;
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        if let Some(hcm) = self.tunnel.take() {
            hcm.downstream_cx_upgrades_active.dec();
        }
        // Dropped before its end: the client went away (or the connection closed) mid-body.
        let ended = Body::is_end_stream(&*self);
        if let (Some(log), Inner::Upstream(_)) = (&mut self.log, &self.inner) {
            if !ended && !log.record.response_flags.contains(ResponseFlags::UC) {
                log.record.response_flags.insert(ResponseFlags::DC);
                log.record.response_code_details = Some("downstream_remote_disconnect".into());
            }
        }
    }
}

/// The request body sent upstream (hyper's for HTTP/2, ours for HTTP/1.1), counting bytes
/// into the request's log.
pub struct CountedRequestBody<B> {
    inner: B,
    received: Arc<AtomicU64>,
}

impl<B> CountedRequestBody<B> {
    pub fn new(inner: B, received: Arc<AtomicU64>) -> Self {
        CountedRequestBody { inner, received }
    }
}

impl<B> Body for CountedRequestBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.received.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
        }
        polled.map(|f| f.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
