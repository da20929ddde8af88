//! The server side of the HTTP/1.1 codec: one downstream connection's requests, read, checked
//! and framed here and answered by the caller's service; upgrades become tunnels.
//!
//! Written for the idle footprint (issue 6): a keep-alive connection waiting for its next
//! request owns no buffer at all. hyper keeps an 8 KiB read buffer, an 8 KiB header write
//! buffer and a slot the size of the request future for the life of every connection; here a
//! read lands in a stack buffer until bytes arrive, the head is parsed with httparse into
//! zero-copy header values, the body is framed strictly (RFC 9112 §6; both Content-Length and
//! Transfer-Encoding is a 400, as in Envoy), and the response goes out with vectored writes.
//! A connection that opens with the HTTP/2 preface is handed back to the caller (h2c).

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::body::{self, Decoder, Framing, Pumped, Rejected, RequestBody};
use super::write::{date_header, status_line, ResponseWriter};
use super::{wants_keep_alive, Splice};
use crate::drain::Drain;
use crate::BoxError;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// A read while no request is in progress goes to the stack first: most heads fit.
const IDLE_READ: usize = 4096;
/// Header slots parsed on the stack; a configured limit above this parses on the heap.
const STACK_HEADERS: usize = 128;
/// Bytes of pipelined requests read while a response is pending, at most.
const MAX_PIPELINED: usize = 64 * 1024;
/// What follows an exchange.
enum Next<B> {
    KeepAlive,
    Close,
    /// The response was a `101`: the connection is a tunnel from here on.
    Upgrade(B),
}

/// Limits of the HTTP/1.1 codec, from the bootstrap.
pub struct Settings {
    pub max_headers: usize,
    pub max_head_bytes: usize,
    /// Time for a request head, counted from the end of the previous response (so also the
    /// keep-alive idle timeout).
    pub header_timeout: Duration,
}

/// How a connection ended.
pub enum Ended<S> {
    Closed,
    /// The client opened with the HTTP/2 preface: `read` holds the bytes already read.
    Http2 {
        io: S,
        read: Bytes,
    },
}

enum Head {
    Request(Request<()>),
    Http2,
    Closed,
    Rejected(Rejected),
}

/// Serves requests on `io` until the client closes, a request says `Connection: close`, the
/// gateway drains, or the connection breaks. `service` answers one request; `reject` hears of
/// requests refused here, with their head when it was parsed (answered with their status, then
/// the connection closes).
pub async fn serve<S, F, Fut, B>(
    mut io: S,
    settings: &Settings,
    drain: &Drain,
    mut service: F,
    reject: impl Fn(Rejected, Option<&http::request::Parts>),
) -> io::Result<Ended<S>>
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
    F: FnMut(Request<RequestBody>) -> Fut,
    Fut: Future<Output = Result<Response<B>, std::convert::Infallible>> + Unpin,
    B: Body<Data = Bytes> + Splice + Unpin,
    B::Error: Into<BoxError>,
{
    let mut buf = BytesMut::new();
    let mut first = true;
    loop {
        let idle = buf.is_empty();
        let head = tokio::select! {
            biased;
            head = tokio::time::timeout(settings.header_timeout, read_head(&mut io, &mut buf, settings, first)) => match head {
                Ok(head) => head?,
                Err(_) => Head::Closed, // Envoy closes too (request_headers_timeout)
            },
            _ = drain.started(), if idle => Head::Closed,
        };
        first = false;
        let request = match head {
            Head::Request(request) => request,
            Head::Closed => return Ok(Ended::Closed),
            Head::Http2 => return Ok(Ended::Http2 { io, read: buf.freeze() }),
            Head::Rejected(why) => {
                reject(why, None);
                write_rejection(&mut io, why).await?;
                linger_close(&mut io, &mut buf).await;
                return Ok(Ended::Closed);
            }
        };
        match Box::pin(exchange(&mut io, &mut buf, request, drain, &mut service, &reject)).await? {
            Next::KeepAlive => {}
            Next::Close => {
                linger_close(&mut io, &mut buf).await;
                return Ok(Ended::Closed);
            }
            Next::Upgrade(body) => {
                tunnel(&mut io, &mut buf, body).await;
                return Ok(Ended::Closed);
            }
        }
        if buf.is_empty() {
            // Idle from here on: hold no buffer (the next read goes through the stack).
            buf = BytesMut::new();
        }
    }
}

/// Relays bytes both ways between the client and the upstream that answered `101`, until
/// either side closes; what either had sent past the heads goes first.
async fn tunnel<S, B>(io: &mut S, buf: &mut BytesMut, mut body: B)
where
    S: AsyncRead + AsyncWrite + Unpin,
    B: Splice,
{
    let Some(pending) = body.take_upgrade() else {
        return;
    };
    let Ok(mut upstream) = pending.await else {
        return;
    };
    let (mut from_client, mut to_client) = (buf.len() as u64, upstream.read.len() as u64);
    let relayed = async {
        io.write_all(&upstream.read).await?;
        upstream.io.write_all(buf).await?;
        tokio::io::copy_bidirectional(io, &mut upstream.io).await
    };
    if let Ok((up, down)) = relayed.await {
        from_client += up;
        to_client += down;
    }
    body.upgrade_finished(from_client, to_client);
}

/// One request and its response, and what the connection does next.
async fn exchange<S, F, Fut, B>(
    io: &mut S,
    buf: &mut BytesMut,
    request: Request<()>,
    drain: &Drain,
    service: &mut F,
    reject: &impl Fn(Rejected, Option<&http::request::Parts>),
) -> io::Result<Next<B>>
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
    F: FnMut(Request<RequestBody>) -> Fut,
    Fut: Future<Output = Result<Response<B>, std::convert::Infallible>> + Unpin,
    B: Body<Data = Bytes> + Splice + Unpin,
    B::Error: Into<BoxError>,
{
    let (mut parts, ()) = request.into_parts();
    let framing = check_target(&parts).and_then(|()| body::framing(parts.version, &parts.headers));
    let framing = match framing {
        Ok(framing) => framing,
        Err(why) => {
            // Envoy's codec errors are logged without the request (`"- - HTTP/1.1"`); a
            // refused well-formed request with it.
            reject(why, (!why.protocol_error).then_some(&parts));
            write_rejection(io, why).await?;
            return Ok(Next::Close);
        }
    };
    // A CONNECT is answered (no route takes it) and the connection closed: the bytes after it
    // were meant for a tunnel.
    let keep_alive = wants_keep_alive(parts.version, &parts.headers) && parts.method != Method::CONNECT;
    let expects_continue = parts
        .headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue {
        // Envoy's default (proxy_100_continue off): answer 100 here and drop the expectation.
        parts.headers.remove(header::EXPECT);
        if framing != body::Framing::Empty && parts.version == Version::HTTP_11 {
            io.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
            io.flush().await?;
        }
    }
    let (request_body, mut pump) = match Decoder::new(framing) {
        Some(decoder) => {
            let (body, pump) = RequestBody::channel(decoder);
            (body, Some(pump))
        }
        None => (RequestBody::empty(), None),
    };
    let method_head = parts.method == Method::HEAD;
    let version = parts.version;
    let mut response_future = service(Request::from_parts(parts, request_body));
    let mut writer: Option<ResponseWriter<B>> = None;
    let mut body_intact = true;
    let written = poll_fn(|cx| {
        if let Some(p) = &mut pump {
            match p.poll_pump(cx, io, buf) {
                Poll::Ready(Ok(Pumped::Complete)) => pump = None,
                Poll::Ready(Ok(Pumped::Abandoned) | Err(_)) => {
                    pump = None;
                    body_intact = false;
                }
                Poll::Pending => {}
            }
        }
        if writer.is_none() && pump.is_none() {
            // Watch the client while the upstream works: a close (or half-close, as Envoy and
            // hyper treat it) abandons the request (logged DC). Pipelined bytes wait in `buf`.
            while buf.len() < MAX_PIPELINED {
                match body::poll_read_buf(cx, io, buf, IDLE_READ) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::ConnectionAborted,
                            "client closed before the response",
                        )))
                    }
                    Poll::Ready(Ok(_)) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => break,
                }
            }
        }
        if writer.is_none() {
            let Ok(response) = ready!(Pin::new(&mut response_future).poll(cx));
            // A request body that broke its framing (or was cut) ends the connection: say so.
            let keep = keep_alive && body_intact && !drain.is_draining();
            writer = Some(ResponseWriter::new(response, method_head, version, keep));
        }
        let w = writer.as_mut().expect("set above");
        ready!(w.poll_write(cx, io))?;
        Poll::Ready(Ok::<bool, io::Error>(w.keep_alive))
    })
    .await?;
    if let Some(body) = writer.and_then(|mut w| w.upgraded.take()) {
        return Ok(Next::Upgrade(body));
    }
    // Reused only when the whole request body was read and both sides want it.
    Ok(match written && body_intact && pump.is_none() && !drain.is_draining() {
        true => Next::KeepAlive,
        false => Next::Close,
    })
}

const MISSING_HOST: Rejected = Rejected {
    status: StatusCode::BAD_REQUEST,
    details: "missing_host_header",
    protocol_error: false,
};
const INVALID_AUTHORITY: Rejected = body::rejected(StatusCode::BAD_REQUEST, "http.invalid_authority");
const INVALID_URL: Rejected = body::rejected(StatusCode::BAD_REQUEST, "http1.invalid_url");

/// RFC 9112 §3.2-3.3: the request-target's form fits the method (authority-form only for
/// CONNECT, asterisk-form only for OPTIONS, as Envoy) and the request names one valid host:
/// exactly one `Host` field, a valid `uri-host [":" port]` without userinfo. An absolute-form
/// target's authority wins over `Host` (RFC 9112 §3.2.2); a missing `Host` is refused on
/// HTTP/1.0 too, since the gateway routes by it. Envoy joins two `Host` fields with a comma
/// and forwards an empty one; both are 400 here.
fn check_target(parts: &http::request::Parts) -> Result<(), Rejected> {
    let uri = &parts.uri;
    let authority_form = uri.scheme().is_none() && uri.authority().is_some();
    if (parts.method == Method::CONNECT) != authority_form {
        return Err(CODEC_ERROR);
    }
    if uri.authority().is_none() && uri.path() == "*" && parts.method != Method::OPTIONS {
        return Err(INVALID_URL);
    }
    if let Some(scheme) = uri.scheme_str() {
        if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
            return Err(INVALID_URL);
        }
    }
    if uri.authority().is_some_and(|a| !valid_host(a.as_str())) {
        return Err(INVALID_AUTHORITY);
    }
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (_, Some(_)) => Err(CODEC_ERROR),
        (None, None) if uri.authority().is_none() => Err(MISSING_HOST),
        (Some(host), None) if uri.authority().is_none() && !valid_host_bytes(host.as_bytes()) => Err(INVALID_AUTHORITY),
        _ => Ok(()),
    }
}

fn valid_host(host: &str) -> bool {
    valid_host_bytes(host.as_bytes())
}

/// `uri-host [":" port]` (RFC 9110 §7.2, RFC 3986 §3.2.2): an IP literal in brackets or a
/// non-empty reg-name (unreserved, sub-delims, percent-encodings: so no userinfo), then a port
/// of digits up to 65535 when there is a colon. A byte loop, no allocation: it runs per request.
fn valid_host_bytes(host: &[u8]) -> bool {
    let (name, port) = if let Some(literal) = host.strip_prefix(b"[") {
        let Some(end) = literal.iter().position(|&b| b == b']') else {
            return false;
        };
        let inside = &literal[..end];
        if inside.is_empty() || !inside.iter().all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.') {
            return false;
        }
        (&host[..end + 2], &host[end + 2..])
    } else {
        let end = host.iter().position(|&b| b == b':').unwrap_or(host.len());
        let name = &host[..end];
        let mut i = 0;
        while i < name.len() {
            match name[i] {
                b'%' if name
                    .get(i + 1..i + 3)
                    .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) =>
                {
                    i += 3
                }
                b if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(&b) => i += 1,
                _ => return false,
            }
        }
        (name, &host[end..])
    };
    if name.is_empty() {
        return false;
    }
    match port {
        [] => true,
        [b':', digits @ ..] => {
            !digits.is_empty()
                && digits.len() <= 5
                && digits.iter().all(u8::is_ascii_digit)
                && digits.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0')) <= 65535
        }
        _ => false,
    }
}

/// Reads until a whole request head is in `buf` (or the connection is not HTTP/1.1 for us).
async fn read_head<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut BytesMut,
    settings: &Settings,
    first: bool,
) -> io::Result<Head> {
    // A head that arrives in pieces is parsed again only once its end has arrived, or once it
    // doubled since the last parse (which still finds garbage early): a head sent a byte at a
    // time costs linear, not quadratic, work.
    let mut scanned = 0;
    let mut parsed_at = 0;
    loop {
        if !buf.is_empty() {
            let seen = buf.len().min(H2_PREFACE.len());
            if first && buf[..seen] == H2_PREFACE[..seen] {
                if seen == H2_PREFACE.len() {
                    return Ok(Head::Http2);
                }
            } else {
                // The first bytes are parsed at once (most heads arrive whole): no scan then.
                let parse = parsed_at == 0 || buf.len() >= 2 * parsed_at || head_end_seen(buf, scanned);
                scanned = buf.len();
                if parse {
                    parsed_at = buf.len();
                    match parse_head(buf, settings) {
                        Ok(Some(request)) => return Ok(Head::Request(request)),
                        Ok(None) => {}
                        Err(why) => return Ok(Head::Rejected(why)),
                    }
                }
                if buf.len() >= settings.max_head_bytes {
                    return Ok(Head::Rejected(HEADERS_TOO_LARGE));
                }
            }
        }
        let n = if buf.capacity() == 0 {
            poll_fn(|cx| poll_read_via_stack(cx, io, buf)).await?
        } else {
            poll_fn(|cx| body::poll_read_buf(cx, io, buf, IDLE_READ)).await?
        };
        if n == 0 {
            return Ok(Head::Closed);
        }
    }
}

/// Whether `buf` holds an empty line (the end of a head: `LF CRLF` or `LF LF`, as httparse
/// accepts) that starts at or after `from - 2`, where the last look stopped.
fn head_end_seen(buf: &[u8], from: usize) -> bool {
    let start = from.saturating_sub(2);
    buf[start..].iter().enumerate().any(|(i, &b)| {
        b == b'\n'
            && match buf.get(start + i + 1) {
                Some(b'\n') => true,
                Some(b'\r') => buf.get(start + i + 2) == Some(&b'\n'),
                _ => false,
            }
    })
}

/// Reads into a stack buffer and copies what arrived into `buf`: a connection waiting for a
/// request owns no heap buffer while it waits.
fn poll_read_via_stack<S: AsyncRead + Unpin>(
    cx: &mut Context<'_>,
    io: &mut S,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    // Not zeroed first: tokio reads into it as it is (4 KiB of memset per read was 11% of the
    // worker's instructions on keep-alive requests).
    let mut stack = [std::mem::MaybeUninit::<u8>::uninit(); IDLE_READ];
    let mut rb = ReadBuf::uninit(&mut stack);
    ready!(Pin::new(io).poll_read(cx, &mut rb))?;
    buf.extend_from_slice(rb.filled());
    Poll::Ready(Ok(rb.filled().len()))
}

const HEADERS_TOO_LARGE: Rejected =
    body::rejected(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "http1.headers_too_large");
const CODEC_ERROR: Rejected = body::rejected(StatusCode::BAD_REQUEST, "http1.codec_error");

/// A whole request head off the front of `buf`, checked as the server checks it (target,
/// Host, framing); `Ok(None)` while incomplete. For the fuzz target and differential tests.
pub fn parse_request(
    buf: &mut BytesMut,
    settings: &Settings,
) -> Result<Option<(http::request::Parts, Framing)>, Rejected> {
    let Some(request) = parse_head(buf, settings)? else {
        return Ok(None);
    };
    let (parts, ()) = request.into_parts();
    check_target(&parts)?;
    let framing = body::framing(parts.version, &parts.headers)?;
    Ok(Some((parts, framing)))
}

#[cfg(test)]
thread_local! {
    /// Calls of `parse_head` on this thread (tests).
    static PARSES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Parses a complete head off the front of `buf`; `Ok(None)` when it is not complete yet.
fn parse_head(buf: &mut BytesMut, settings: &Settings) -> Result<Option<Request<()>>, Rejected> {
    #[cfg(test)]
    PARSES.with(|p| p.set(p.get() + 1));
    // Slots left uninitialized: httparse writes the ones it fills.
    let mut stack = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_HEADERS];
    let mut heap;
    let slots: &mut [std::mem::MaybeUninit<httparse::Header<'_>>] = if settings.max_headers <= STACK_HEADERS {
        &mut stack[..settings.max_headers]
    } else {
        heap = Vec::with_capacity(settings.max_headers);
        heap.resize_with(settings.max_headers, std::mem::MaybeUninit::uninit);
        &mut heap
    };
    let mut parsed = httparse::Request::new(&mut []);
    let len = match parsed.parse_with_uninit_headers(buf, slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(body::rejected(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "http1.too_many_headers",
            ))
        }
        Err(_) => return Err(CODEC_ERROR),
    };
    if len > settings.max_head_bytes {
        return Err(HEADERS_TOO_LARGE);
    }
    let base = buf.as_ptr() as usize;
    let range = |s: &[u8]| {
        let start = s.as_ptr() as usize - base;
        start..start + s.len()
    };
    let method = Method::from_bytes(parsed.method.unwrap_or_default().as_bytes()).map_err(|_| CODEC_ERROR)?;
    let target = range(parsed.path.unwrap_or_default().as_bytes());
    let version = match parsed.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let mut fields = Vec::with_capacity(parsed.headers.len());
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| CODEC_ERROR)?;
        fields.push((name, range(h.value)));
    }
    let head = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(target)).map_err(|_| CODEC_ERROR)?;
    let mut headers = HeaderMap::with_capacity(fields.len());
    for (name, value) in fields {
        let value = HeaderValue::from_maybe_shared(head.slice(value)).map_err(|_| CODEC_ERROR)?;
        headers.append(name, value);
    }
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    Ok(Some(request))
}

/// How long a closing connection keeps reading what the client still sends (Envoy's
/// `delayed_close_timeout`, 1 s), and how much of it, at most.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 256 * 1024;

/// Closes gracefully: the write side first (the client sees the whole reply, then the end),
/// then what the client still sends (an unread body, pipelined requests) is read and dropped
/// until it closes too, for a bounded time and amount. Closing with unread input would send a
/// reset, which may destroy the reply before the client read it.
async fn linger_close<S: AsyncRead + AsyncWrite + Unpin>(io: &mut S, buf: &mut BytesMut) {
    if io.shutdown().await.is_err() {
        return;
    }
    let drain = async {
        let mut dropped = 0;
        while dropped < LINGER_BYTES {
            buf.clear();
            match poll_fn(|cx| body::poll_read_buf(cx, io, buf, IDLE_READ)).await {
                Ok(0) | Err(_) => return,
                Ok(n) => dropped += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// The body of a refusal: Envoy's codec errors say their reason; its refusals of a
/// well-formed request say nothing.
pub fn rejection_body(why: Rejected) -> &'static str {
    match why.protocol_error {
        true => why.status.canonical_reason().unwrap_or("Bad Request"),
        false => "",
    }
}

async fn write_rejection<S: AsyncWrite + Unpin>(io: &mut S, why: Rejected) -> io::Result<()> {
    let text = rejection_body(why);
    let mut out = BytesMut::with_capacity(192);
    status_line(&mut out, Version::HTTP_11, why.status);
    out.extend_from_slice(format!("content-length: {}\r\ncontent-type: text/plain\r\n", text.len()).as_bytes());
    date_header(&mut out);
    out.extend_from_slice(b"connection: close\r\n\r\n");
    out.extend_from_slice(text.as_bytes());
    io.write_all(&out).await?;
    io.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> Result<http::request::Parts, Rejected> {
        let settings = Settings {
            max_headers: 100,
            max_head_bytes: 60 * 1024,
            header_timeout: Duration::from_secs(1),
        };
        let mut buf = BytesMut::from(raw.as_bytes());
        let (parts, ()) = parse_head(&mut buf, &settings)?.expect("a whole head").into_parts();
        Ok(parts)
    }

    fn target(raw: &str) -> Result<(), Rejected> {
        check_target(&head(raw)?)
    }

    /// Issue 16, RFC 9112 §3.2-3.3: the target's form fits the method, and one valid host.
    #[test]
    fn request_targets_and_hosts_are_checked() {
        let ok = [
            "GET / HTTP/1.1\r\nhost: a.example\r\n\r\n",
            "GET / HTTP/1.1\r\nhost: a.example:8080\r\n\r\n",
            "GET / HTTP/1.1\r\nhost: [::1]:80\r\n\r\n",
            "GET / HTTP/1.1\r\nhost: My_Svc.ns.svc.cluster.local:8080\r\n\r\n",
            "GET / HTTP/1.1\r\nhost: 10.0.0.1\r\n\r\n",
            "GET / HTTP/1.1\r\nhost: a%2Db.example:65535\r\n\r\n",
            "GET / HTTP/1.1\r\nhost: [2001:db8::1]\r\n\r\n",
            "GET / HTTP/1.0\r\nhost: a.example\r\n\r\n",
            "GET http://a.example/x HTTP/1.1\r\nhost: b.example\r\n\r\n",
            "GET http://a.example/x HTTP/1.1\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\nhost: a.example\r\n\r\n",
            "CONNECT a.example:443 HTTP/1.1\r\nhost: a.example:443\r\n\r\n",
        ];
        for raw in ok {
            assert_eq!(target(raw), Ok(()), "{raw:?}");
        }
        let refused = [
            (
                "GET a.example:80 HTTP/1.1\r\nhost: a.example\r\n\r\n",
                "http1.codec_error",
            ),
            ("CONNECT / HTTP/1.1\r\nhost: a.example\r\n\r\n", "http1.codec_error"),
            ("GET * HTTP/1.1\r\nhost: a.example\r\n\r\n", "http1.invalid_url"),
            (
                "GET ftp://a.example/ HTTP/1.1\r\nhost: a.example\r\n\r\n",
                "http1.invalid_url",
            ),
            (
                "GET http://u@a.example/ HTTP/1.1\r\nhost: a.example\r\n\r\n",
                "http.invalid_authority",
            ),
            ("GET / HTTP/1.1\r\n\r\n", "missing_host_header"),
            ("GET / HTTP/1.0\r\n\r\n", "missing_host_header"),
            (
                "GET / HTTP/1.1\r\nhost: a.example\r\nhost: a.example\r\n\r\n",
                "http1.codec_error",
            ),
            ("GET / HTTP/1.1\r\nhost: \r\n\r\n", "http.invalid_authority"),
            ("GET / HTTP/1.1\r\nhost: a@b\r\n\r\n", "http.invalid_authority"),
            ("GET / HTTP/1.1\r\nhost: a b\r\n\r\n", "http.invalid_authority"),
            (
                "GET / HTTP/1.1\r\nhost: a.example:80x\r\n\r\n",
                "http.invalid_authority",
            ),
            (
                "GET / HTTP/1.1\r\nhost: a.example:65536\r\n\r\n",
                "http.invalid_authority",
            ),
            ("GET / HTTP/1.1\r\nhost: a.example:\r\n\r\n", "http.invalid_authority"),
            ("GET / HTTP/1.1\r\nhost: [::1\r\n\r\n", "http.invalid_authority"),
            ("GET / HTTP/1.1\r\nhost: [zz]:80\r\n\r\n", "http.invalid_authority"),
            ("GET / HTTP/1.1\r\nhost: a%zz.example\r\n\r\n", "http.invalid_authority"),
            ("GET / HTTP/1.1\r\nhost: a/b\r\n\r\n", "http.invalid_authority"),
        ];
        for (raw, details) in refused {
            assert_eq!(target(raw).map_err(|r| r.details), Err(details), "{raw:?}");
        }
        assert!(!target("GET / HTTP/1.1\r\n\r\n").unwrap_err().protocol_error);
    }

    /// Issue 16: `close` wins over an HTTP/1.0 `keep-alive` beside it, on either side.
    #[test]
    fn close_wins_over_keep_alive() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONNECTION, HeaderValue::from_str(v).unwrap());
            h
        };
        assert!(wants_keep_alive(Version::HTTP_10, &with("keep-alive")));
        assert!(!wants_keep_alive(Version::HTTP_10, &with("keep-alive, close")));
        assert!(!wants_keep_alive(Version::HTTP_10, &with("Close ,Keep-Alive")));
        assert!(!wants_keep_alive(Version::HTTP_10, &HeaderMap::new()));
        assert!(wants_keep_alive(Version::HTTP_11, &HeaderMap::new()));
        assert!(!wants_keep_alive(Version::HTTP_11, &with("keep-alive, close")));
    }

    /// The end of a head is found by looking only at what arrived since the last look.
    #[test]
    fn the_end_of_a_head_is_found_across_pieces() {
        let wire = b"GET / HTTP/1.1\r\nhost: a\r\n\r\n";
        for split in 1..wire.len() {
            let (first, _) = wire.split_at(split);
            assert!(!head_end_seen(first, 0), "{split}");
            assert!(head_end_seen(wire, split), "{split}");
        }
        assert!(head_end_seen(b"GET / HTTP/1.1\nhost: a\n\n", 0));
        assert!(!head_end_seen(b"GET / HTTP/1.1\r\nhost: a\r\n", 0));
    }

    /// A head sent a byte at a time is parsed a logarithmic number of times before its end,
    /// not once per byte.
    #[tokio::test]
    async fn a_head_sent_a_byte_at_a_time_is_read_in_linear_work() {
        let filler: String = (0..400).map(|i| format!("x-h{i}: {}\r\n", "v".repeat(20))).collect();
        let wire = format!("GET / HTTP/1.1\r\nhost: a.example\r\n{filler}\r\n");
        let settings = Settings {
            max_headers: 500,
            max_head_bytes: 60 * 1024,
            header_timeout: Duration::from_secs(5),
        };
        let (mut client, mut server) = tokio::io::duplex(64);
        let bytes = wire.clone().into_bytes();
        let writer = tokio::spawn(async move {
            for b in bytes {
                client.write_all(&[b]).await.unwrap();
                tokio::task::yield_now().await;
            }
            client
        });
        let mut buf = BytesMut::new();
        let before = PARSES.with(|p| p.get());
        let head = read_head(&mut server, &mut buf, &settings, true).await.unwrap();
        assert!(matches!(head, Head::Request(_)));
        let _ = writer.await;
        let parses = PARSES.with(|p| p.get()) - before;
        // 11 KiB arrived in about as many reads: once for the first bytes, once per doubling,
        // once at the end.
        assert!(
            wire.len() > 10_000 && parses <= 16,
            "{parses} parses for {} bytes",
            wire.len()
        );
    }
}
