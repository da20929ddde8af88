//! One HTTP request through the gateway: route by authority and matches, then redirect, answer
//! locally, or forward to a cluster endpoint with Istio's retry policy and timeouts; headers
//! handled as Envoy's gateway does. Failures map to replies in `local_reply`.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;

use super::body::{CountedRequestBody, ProxyBody, RequestLog};
use super::headers::{
    apply_header_ops, is_websocket_upgrade, prepare_request_headers, remove_hop_by_hop, X_FORWARDED_FOR, X_REQUEST_ID,
};
use super::local_reply::Failure;
use super::Shared;
use crate::access_log::{AccessLogRecord, Protocol};
use crate::routing::authz::{Attributes, HttpAttributes};
use crate::routing::http_match::RequestView;
use crate::routing::snapshot::{HttpConnectionManager, Redirect, Route, RouteAction, Snapshot, UpstreamProtocol};
use crate::stats::HttpConnManagerStats;
use crate::upstream::cluster::{ClusterRuntime, ConnectError};
use crate::upstream::pool::{CheckoutError, ResponseBody, UpstreamBody};

/// A downstream HTTP connection: where it came from and which route table serves it.
pub struct HttpConn {
    pub shared: Arc<Shared>,
    pub snapshot: Arc<Snapshot>,
    pub hcm: fn(&Snapshot, usize, Option<usize>) -> Option<&HttpConnectionManager>,
    pub listener: usize,
    pub chain: Option<usize>,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub scheme: &'static str,
    pub sni: Option<Box<str>>,
    pub peer_identity: Option<Arc<str>>,
    pub stats: Arc<HttpConnManagerStats>,
    /// The RBAC counters, looked up on the first request that meets a policy.
    pub rbac: std::sync::OnceLock<Arc<crate::stats::RbacStats>>,
}

static X_ENVOY_UPSTREAM_SERVICE_TIME: HeaderName = HeaderName::from_static("x-envoy-upstream-service-time");

pub async fn handle<B>(conn: Arc<HttpConn>, req: Request<B>) -> Result<Response<ProxyBody>, std::convert::Infallible>
where
    B: http_body::Body<Data = Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<super::body::BoxError>,
{
    let mut log = start_log(&conn, &req);
    let (mut parts, body) = req.into_parts();
    let downstream_version = parts.version;
    let websocket = is_websocket_upgrade(&parts);
    prepare_request_headers(&mut parts.headers, parts.version, conn.remote.ip(), conn.scheme);
    if conn.shared.logger.enabled() {
        log.record.x_forwarded_for = header_text(&parts.headers, &X_FORWARDED_FOR);
        log.record.request_id = header_text(&parts.headers, &X_REQUEST_ID);
    }

    let authority = authority_of(&parts.uri, &parts.headers).unwrap_or_default();
    let Some(hcm) = (conn.hcm)(&conn.snapshot, conn.listener, conn.chain) else {
        return Ok(local(log, &Failure::NoRoute, &conn.stats));
    };
    // No route of an Istio gateway takes a CONNECT (Envoy needs a `connect_matcher`, which
    // istiod does not write): it is never forwarded.
    if parts.method == Method::CONNECT {
        return Ok(local(log, &Failure::NoRoute, &conn.stats));
    }
    if parts.uri.path() == "*" {
        return Ok(local(log, &Failure::AsteriskTarget, &conn.stats));
    }
    let view = RequestView {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query(),
        authority: &authority,
        scheme: conn.scheme,
        headers: &parts.headers,
    };
    let route = hcm.route_config.virtual_host(&authority).and_then(|vh| {
        vh.routes
            .iter()
            .find(|r| r.matches.is_empty() || r.matches.iter().any(|m| m.matches(&view)))
    });
    // The route is chosen before the RBAC filters run, as in Envoy: a denial names its route
    // and cluster in the log.
    let weighted = match route.map(|r| &r.action) {
        Some(RouteAction::Forward(clusters)) => super::pick_weighted(clusters),
        _ => None,
    };
    if let Some(route) = route {
        log.record.route_name = route.name.as_deref().map(Arc::from);
    }
    if let Some(weighted) = weighted {
        log.record.upstream_cluster = Some(weighted.cluster.as_str().into());
    }
    if let Some(denied) = authorize(&conn, hcm, &parts, &authority, &mut log.record) {
        return Ok(local(log, &denied, &conn.stats));
    }
    let Some(route) = route else {
        return Ok(local(log, &Failure::NoRoute, &conn.stats));
    };
    if let RouteAction::Redirect(redirect) = &route.action {
        return Ok(redirect_reply(log, redirect, &parts.uri, &authority, conn.scheme));
    }
    let Some(weighted) = weighted else {
        return Ok(local(log, &Failure::NoRoute, &conn.stats));
    };
    let Some(cluster) = conn.snapshot.cluster(&weighted.cluster) else {
        log.record.upstream_cluster = Some(weighted.cluster.as_str().into());
        return Ok(local(log, &Failure::NoCluster, &conn.stats));
    };
    let rt = conn.shared.clusters.get(cluster);
    log.record.upstream_cluster = Some(rt.name.clone());

    apply_header_ops(&mut parts.headers, &route.request_headers);
    apply_header_ops(&mut parts.headers, &weighted.request_headers);
    let upstream_authority = rewrite(route, &mut parts.uri, &authority);
    // Istio's gateway enables WebSocket upgrades: HTTP/1.1 clusters carry them, plain (egressd's
    // own client) or with TLS origination (hyper's). HTTP/2 clusters would need RFC 8441's
    // extended CONNECT: there the upgrade headers stay removed and the request is an ordinary one.
    let websocket = websocket && rt.config.protocol == UpstreamProtocol::Http1;
    if websocket {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts
            .headers
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }
    let body = UpstreamBody::new(CountedRequestBody::new(body, log.received.clone()));
    match forward(&rt, route, parts, body, &upstream_authority, &mut log).await {
        Ok((mut response, service_time)) => {
            let status = response.status().as_u16();
            rt.stats.rq_completed(status);
            remove_hop_by_hop(response.headers_mut());
            if status == 101 {
                // Only an upgrade the client asked for gets here (the client refuses others).
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                response
                    .headers_mut()
                    .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            }
            response
                .headers_mut()
                .insert(X_ENVOY_UPSTREAM_SERVICE_TIME.clone(), HeaderValue::from(service_time));
            apply_header_ops(response.headers_mut(), &route.response_headers);
            apply_header_ops(response.headers_mut(), &weighted.response_headers);
            log.record.response_code = status;
            log.record.response_code_details = Some("via_upstream".into());
            // A trailers-only gRPC answer carries its status in the headers (gRPC is HTTP/2 only:
            // HTTP/1.1 requests skip the lookup).
            if downstream_version == Version::HTTP_2 {
                log.record.grpc_status = super::body::grpc_status(response.headers());
            }
            log.record.upstream_service_time_ms = Some(service_time);
            let upgrade = (status == 101 && matches!(response.body(), ResponseBody::Hyper(_)))
                .then(|| hyper::upgrade::on(&mut response));
            let (mut parts, body) = response.into_parts();
            // The client's protocol, not the upstream's, frames the response.
            parts.version = downstream_version;
            let body = ProxyBody::upstream(body, log);
            let body = match upgrade {
                Some(on) => body.with_upgrade(on),
                None => body,
            };
            Ok(Response::from_parts(parts, body))
        }
        Err(failure) => {
            let reply = failure.reply();
            rt.stats.rq_completed(reply.status);
            if matches!(failure, Failure::Timeout) {
                rt.stats.upstream_rq_timeout.inc();
            }
            Ok(local(log, &failure, &conn.stats))
        }
    }
}

/// The AuthorizationPolicy filters of HTTP chains; `Some` with the 403 when they deny.
fn authorize(
    conn: &HttpConn,
    hcm: &HttpConnectionManager,
    parts: &http::request::Parts,
    authority: &str,
    record: &mut crate::access_log::AccessLogRecord,
) -> Option<Failure> {
    let filters = &conn.snapshot.authz.http;
    if filters.is_empty() {
        return None;
    }
    let attributes = Attributes {
        principal: super::principal_of(conn.peer_identity.as_deref()),
        peer: conn.remote.ip(),
        local: conn.local,
        sni: conn.sni.as_deref(),
        http: Some(HttpAttributes {
            authority,
            method: parts.method.as_str(),
            path: parts.uri.path(),
            headers: &parts.headers,
        }),
    };
    // Registered with the config (`Shared::register_rbac_stats`); looked up once per connection.
    let stats = conn.rbac.get_or_init(|| conn.shared.rbac_stats(Some(&hcm.stat_prefix)));
    if filters.has_dry_run() {
        record.rbac_dry_run = filters.dry_run(&attributes).map(Into::into);
    }
    let details = filters.evaluate(&attributes, &**stats).details()?;
    Some(Failure::AccessDenied { details })
}

fn start_log<B>(conn: &HttpConn, req: &Request<B>) -> RequestLog {
    let mut record = AccessLogRecord::new(SystemTime::now());
    // The texts only the log line prints are copied only when there is a log.
    if conn.shared.logger.enabled() {
        record.method = Some(req.method().as_str().into());
        record.path = req.uri().path_and_query().map(|p| p.as_str().into());
        record.authority = authority_of(req.uri(), req.headers()).map(Into::into);
        record.user_agent = header_text(req.headers(), &header::USER_AGENT);
    }
    record.protocol = Protocol::from_version(req.version());
    record.downstream_local_address = Some(conn.local);
    record.downstream_remote_address = Some(conn.remote);
    record.requested_server_name = conn.sni.clone();
    record.downstream_peer_uri_san = conn.peer_identity.clone();
    RequestLog::new(record, conn.shared.logger.clone(), conn.stats.clone())
}

fn header_text(headers: &HeaderMap, name: &HeaderName) -> Option<Box<str>> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(Into::into)
}

/// `:authority` for HTTP/2, the Host header for HTTP/1.
fn authority_of(uri: &Uri, headers: &HeaderMap) -> Option<String> {
    uri.authority().map(|a| a.as_str().to_string()).or_else(|| {
        headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
    })
}

/// Applies the route's rewrite to the path; returns the authority to send upstream.
fn rewrite(route: &Route, uri: &mut Uri, authority: &str) -> String {
    let Some(rw) = &route.rewrite else {
        return authority.to_string();
    };
    if let Some(new_prefix) = &rw.uri {
        let path = uri.path();
        let matched_prefix = route.matches.iter().find_map(|m| match &m.uri {
            Some(crate::routing::http_match::StrMatch::Prefix(p)) if path.starts_with(p.as_str()) => Some(p.len()),
            _ => None,
        });
        let new_path = match matched_prefix {
            Some(len) => format!("{new_prefix}{}", &path[len..]),
            None => new_prefix.clone(),
        };
        let pq = match uri.query() {
            Some(q) => format!("{new_path}?{q}"),
            None => new_path,
        };
        if let Ok(p) = pq.parse::<http::uri::PathAndQuery>() {
            let mut parts = uri.clone().into_parts();
            parts.path_and_query = Some(p);
            if let Ok(u) = Uri::from_parts(parts) {
                *uri = u;
            }
        }
    }
    rw.authority.clone().unwrap_or_else(|| authority.to_string())
}

fn redirect_reply(
    mut log: RequestLog,
    redirect: &Redirect,
    uri: &Uri,
    authority: &str,
    scheme: &str,
) -> Response<ProxyBody> {
    let scheme = redirect.scheme.as_deref().unwrap_or(scheme);
    let mut host = redirect
        .authority
        .clone()
        .unwrap_or_else(|| crate::routing::host::strip_port(authority).to_string());
    if let Some(port) = redirect.port {
        host = format!("{host}:{port}");
    } else if redirect.authority.is_none() && authority.contains(':') {
        host = authority.to_string();
    }
    let path = redirect.path.clone().unwrap_or_else(|| {
        uri.path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into())
    });
    let location = format!("{scheme}://{host}{path}");
    log.record.response_code = redirect.code;
    log.record.response_code_details = Some("direct_response".into());
    let mut response = Response::new(ProxyBody::full(Bytes::new(), Some(log)));
    *response.status_mut() = StatusCode::from_u16(redirect.code).unwrap_or(StatusCode::MOVED_PERMANENTLY);
    if let Ok(v) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    response
}

/// A reply made here, logged with Envoy's flags and details.
fn local(mut log: RequestLog, failure: &Failure, stats: &HttpConnManagerStats) -> Response<ProxyBody> {
    let reply = failure.reply();
    match failure {
        Failure::NoRoute => stats.no_route.inc(),
        Failure::NoCluster => stats.no_cluster.inc(),
        _ => {}
    }
    log.record.response_code = reply.status;
    log.record.response_flags.insert(reply.flags);
    log.record.response_code_details = Some(reply.details);
    log.record.upstream_transport_failure_reason = reply.transport_failure;
    let body = Bytes::from_static(reply.body.as_bytes());
    let len = body.len();
    let mut response = Response::new(ProxyBody::full(body, Some(log)));
    *response.status_mut() = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    if len > 0 {
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    response
}

/// Sends the request to an endpoint of the cluster, retrying as the route's policy allows.
/// Returns the response and the upstream service time in ms.
async fn forward(
    rt: &Arc<ClusterRuntime>,
    route: &Route,
    parts: http::request::Parts,
    body: UpstreamBody,
    authority: &str,
    log: &mut RequestLog,
) -> Result<(Response<ResponseBody>, u64), Failure> {
    let endpoints = rt.endpoints().await;
    if endpoints.is_empty() {
        return Err(Failure::NoHealthyUpstream);
    }
    if rt.stats.upstream_rq_active.value() >= u64::from(rt.config.limits.max_requests) {
        // `http2MaxRequests`: Envoy's max_requests circuit breaker.
        rt.stats.upstream_rq_pending_overflow.inc();
        return Err(Failure::Overflow);
    }
    let policy = &route.retry;
    let retry_connect = policy
        .retry_on
        .iter()
        .any(|c| c == "connect-failure" || c == "reset" || c == "5xx" || c == "gateway-error");
    let retry_reset = policy
        .retry_on
        .iter()
        .any(|c| c == "reset" || c == "5xx" || c == "refused-stream");
    // Envoy retries an upstream protocol error as a reset (`reset`, `5xx`), never under
    // Istio's default `refused-stream`, which names an HTTP/2 stream refusal only.
    let retry_protocol = policy.retry_on.iter().any(|c| c == "reset" || c == "5xx");
    let retry_status = |status: u16| {
        policy.retriable_status_codes.contains(&status) && policy.retry_on.iter().any(|c| c == "retriable-status-codes")
            || (status >= 500 && policy.retry_on.iter().any(|c| c == "5xx"))
            || (matches!(status, 502..=504) && policy.retry_on.iter().any(|c| c == "gateway-error"))
    };
    let body_empty = http_body::Body::is_end_stream(&body);
    // Plaintext HTTP/1.1 upstreams get egressd's own client (zero-copy response bodies);
    // hyper originates TLS and speaks HTTP/2.
    let own =
        rt.config.protocol == UpstreamProtocol::Http1 && rt.config.tls.is_none() && parts.method != Method::CONNECT;
    let mut body = Some(body);
    let deadline = route.timeout.map(|t| Instant::now() + t);
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut attempt = 0u32;
    let mut last: Failure;
    let started = Instant::now();
    loop {
        let Some(addr) = rt.pick(&endpoints, &tried) else {
            return Err(Failure::NoHealthyUpstream);
        };
        tried.push(addr);
        log.record.upstream_host = Some(addr);
        let host = rt.host_stats(addr);
        let can_retry = attempt < policy.attempts;
        let checkout = with_deadline(deadline, rt.pool.checkout(rt, addr, Some(authority), own)).await;
        let mut sender = match checkout {
            None => return Err(Failure::Timeout),
            // Circuit breakers are not retried (Envoy: 503 UO at once).
            Some(Err(CheckoutError::Connect(ConnectError::Overflow))) => return Err(Failure::Overflow),
            Some(Err(CheckoutError::Connect(error))) => {
                last = Failure::Connect {
                    error,
                    retried: attempt > 0,
                };
                if can_retry && retry_connect {
                    attempt += 1;
                    rt.stats.upstream_rq_retry.inc();
                    continue;
                }
                if let Failure::Connect { error, .. } = last {
                    return Err(Failure::Connect {
                        error,
                        retried: attempt > 0,
                    });
                }
                return Err(last);
            }
            Some(Err(CheckoutError::Tls(reason))) => {
                if can_retry && retry_connect {
                    attempt += 1;
                    rt.stats.upstream_rq_retry.inc();
                    continue;
                }
                return Err(Failure::Tls {
                    reason,
                    retried: attempt > 0,
                });
            }
            Some(Err(CheckoutError::Handshake(_))) => {
                last = Failure::ResetBeforeResponse { retried: attempt > 0 };
                if can_retry && retry_reset {
                    attempt += 1;
                    rt.stats.upstream_rq_retry.inc();
                    continue;
                }
                return Err(last);
            }
            Some(Ok((sender, _new))) => sender,
        };
        log.record.upstream_local_address = sender.local_addr();
        let Some(req_body) = (if body_empty {
            Some(UpstreamBody::new(http_body_util::Empty::new().map_err(|e| match e {})))
        } else {
            body.take()
        }) else {
            return Err(last_or_reset(attempt));
        };
        let request = upstream_request(&parts, req_body, authority, sender.is_http2());
        rt.stats.upstream_rq_total.inc();
        // A guard, so that a request cancelled by its client still settles the gauge.
        let active = ActiveRequest::new(&rt.stats.upstream_rq_active);
        host.rq_total.fetch_add(1, Ordering::Relaxed);
        let try_deadline = match (deadline, policy.per_try_timeout) {
            (Some(d), Some(p)) => Some(d.min(Instant::now() + p)),
            (d, None) => d,
            (None, Some(p)) => Some(Instant::now() + p),
        };
        let sent = with_deadline(try_deadline, sender.send(request, rt)).await;
        drop(active);
        match sent {
            None => {
                host.rq_timeout.fetch_add(1, Ordering::Relaxed);
                if can_retry
                    && deadline.is_none_or(|d| Instant::now() < d)
                    && policy.per_try_timeout.is_some()
                    && body_empty
                {
                    attempt += 1;
                    rt.stats.upstream_rq_retry.inc();
                    continue;
                }
                return Err(Failure::Timeout);
            }
            Some(Err(error)) => {
                host.rq_error.fetch_add(1, Ordering::Relaxed);
                let failure = classify(&*error, attempt > 0);
                let retry = match failure {
                    Failure::DownstreamProtocol => false,
                    Failure::UpstreamProtocol { .. } => retry_protocol,
                    _ => retry_reset,
                };
                if can_retry && retry && body_empty {
                    attempt += 1;
                    rt.stats.upstream_rq_retry.inc();
                    continue;
                }
                return Err(failure);
            }
            Some(Ok(response))
                if matches!(response.body(), ResponseBody::Hyper(_)) && !framing_is_clean(response.headers()) =>
            {
                // hyper took what egressd's own client refuses; the connection goes with the
                // dropped response.
                host.rq_error.fetch_add(1, Ordering::Relaxed);
                if can_retry && retry_protocol && body_empty {
                    attempt += 1;
                    rt.stats.upstream_rq_retry.inc();
                    continue;
                }
                return Err(Failure::UpstreamProtocol { retried: attempt > 0 });
            }
            Some(Ok(response)) => {
                let status = response.status().as_u16();
                if can_retry && body_empty && retry_status(status) {
                    attempt += 1;
                    rt.stats.upstream_rq_retry.inc();
                    rt.stats.rq_completed(status);
                    rt.pool.checkin(sender);
                    continue;
                }
                // A connection that switched protocols belongs to its tunnel now.
                if status != 101 {
                    rt.pool.checkin(sender);
                }
                host.rq_active.fetch_add(1, Ordering::Relaxed);
                log.host = Some(host);
                return Ok((response, started.elapsed().as_millis() as u64));
            }
        }
    }
}

/// What a failed exchange was: the client's body broke its framing, the upstream broke HTTP,
/// or the upstream went away.
fn classify(error: &(dyn std::error::Error + 'static), retried: bool) -> Failure {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.is::<crate::http1::InvalidBody>() {
            return Failure::DownstreamProtocol;
        }
        if e.is::<crate::http1::ProtocolError>()
            || e.downcast_ref::<hyper::Error>()
                .is_some_and(|h| h.is_parse() || h.is_parse_status())
        {
            return Failure::UpstreamProtocol { retried };
        }
        cause = e.source();
    }
    Failure::ResetBeforeResponse { retried }
}

/// A response from hyper framed as egressd's own client requires (one lone `chunked` coding,
/// at most one length, never both).
fn framing_is_clean(headers: &HeaderMap) -> bool {
    crate::http1::response_transfer_coding(headers).is_ok() && crate::http1::response_length(headers).is_ok()
}

fn last_or_reset(attempt: u32) -> Failure {
    Failure::ResetBeforeResponse { retried: attempt > 0 }
}

async fn with_deadline<F: std::future::Future>(deadline: Option<Instant>, f: F) -> Option<F::Output> {
    match deadline {
        Some(d) => tokio::time::timeout_at(d.into(), f).await.ok(),
        None => Some(f.await),
    }
}

fn upstream_request(
    parts: &http::request::Parts,
    body: UpstreamBody,
    authority: &str,
    http2: bool,
) -> Request<UpstreamBody> {
    let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut builder = Request::builder().method(parts.method.clone());
    let mut headers = parts.headers.clone();
    // The body's length, never a header's, frames the request (see `upstream::h1::Upload`).
    let declared = headers.remove(header::CONTENT_LENGTH).is_some();
    let length = if http_body::Body::is_end_stream(&body) {
        Some(0)
    } else {
        http_body::Body::size_hint(&body).exact()
    };
    match length {
        Some(0) if !declared => {}
        Some(n) => {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
        None => {}
    }
    if http2 {
        builder = builder
            .version(Version::HTTP_2)
            .uri(format!("http://{authority}{path}"));
        headers.remove(header::HOST);
    } else {
        builder = builder.version(Version::HTTP_11).uri(path);
        if let Ok(v) = HeaderValue::from_str(authority) {
            headers.insert(header::HOST, v);
        }
    }
    let mut request = builder
        .body(body)
        .unwrap_or_else(|_| Request::new(UpstreamBody::new(http_body_util::Empty::new().map_err(|e| match e {}))));
    *request.headers_mut() = headers;
    request
}

/// Holds `upstream_rq_active` up while a request is with the upstream, even if the future is
/// dropped (the client went away).
struct ActiveRequest<'a>(&'a crate::stats::Gauge);

impl<'a> ActiveRequest<'a> {
    fn new(gauge: &'a crate::stats::Gauge) -> Self {
        gauge.inc();
        ActiveRequest(gauge)
    }
}

impl Drop for ActiveRequest<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}
