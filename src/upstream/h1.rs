//! egressd's own HTTP/1.1 client, for plaintext HTTP/1.1 upstreams (issue 6).
//!
//! hyper's client reads a response body into its own buffers and hands it on as frames, so a
//! proxied body is copied into user space and out again. Here the response head is parsed with
//! httparse and the body stays on the upstream socket: the downstream HTTP/1.1 codec moves a
//! `Content-Length` body with `splice(2)` (`crate::listener::h1`), and reads it through
//! [`Body::poll_frame`] otherwise (TLS or HTTP/2 clients, chunked or close-delimited bodies).
//! The exchange also runs inline in the request's task, without hyper's connection task and the
//! channel to it. TLS-originating and HTTP/2 clusters, and CONNECT, keep hyper
//! (`crate::proxy::http::forward` decides); upgrades are not proxied (their headers are
//! hop-by-hop), so a 101 is an upstream error here.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::net::TcpStream;

use super::cluster::{ClusterRuntime, CountedStream};
use super::pool::{BoxError, PoolKey, UpstreamBody};
use crate::listener::h1::{poll_read_buf, wants_keep_alive, write_headers_unframed, Decoder, Framing, WriteQueue};

/// Bound on a response head, as Envoy's default `max_request_headers_kb` (60 KiB) for the
/// upstream codec, and on its header count (Envoy's `max_headers_count`).
const MAX_HEAD: usize = 60 * 1024;
const MAX_HEADERS: usize = 100;
/// First read for a response head; most heads and small bodies fit.
const HEAD_READ: usize = 8 * 1024;
/// Bytes read per call while a body is read through user space.
const BODY_READ: usize = 64 * 1024;

/// The upstream broke HTTP/1.1 framing or syntax: answered 502 `UPE`, the connection closed.
#[derive(Debug, thiserror::Error)]
#[error("upstream protocol error: {0}")]
pub struct ProtocolError(pub &'static str);

fn protocol_error(why: &'static str) -> BoxError {
    Box::new(ProtocolError(why))
}

/// An upstream connection this client owns: pooled while idle, owned by the response body
/// while one is in flight.
pub struct Conn {
    io: CountedStream,
    uses: u32,
    key: PoolKey,
    /// Asked once per connection (getsockname(2)), for the access log's upstream address.
    local: Option<SocketAddr>,
}

impl Conn {
    /// Boxed: it moves between the pool, the request and the response body, which stay small.
    pub fn new(io: CountedStream, key: PoolKey) -> Box<Conn> {
        let local = io.local_addr();
        Box::new(Conn {
            io,
            uses: 0,
            key,
            local,
        })
    }

    pub fn key(&self) -> &PoolKey {
        &self.key
    }

    pub fn uses(&self) -> u32 {
        self.uses
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local
    }

    /// Whether an idle connection can carry a request: nothing arrived on it since its last
    /// response (a close, or bytes nobody asked for). Costs a system call only when epoll
    /// reported something on the socket.
    pub fn is_usable(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.io.tcp().try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

/// Sends `request` and reads the response head. The request body is sent as it comes, with
/// its `Content-Length` or chunked; a response that arrives before the whole body was sent is
/// taken (the connection is then not reused). The response body is read from the connection
/// as it is consumed; when it ends on a reusable connection, the connection goes back to
/// `rt`'s pool.
pub async fn send(
    mut conn: Box<Conn>,
    request: Request<UpstreamBody>,
    rt: Arc<ClusterRuntime>,
) -> Result<Response<RawBody>, BoxError> {
    conn.uses += 1;
    let (parts, body) = request.into_parts();
    let mut upload = Upload::new(&parts, body);
    let mut buf = BytesMut::with_capacity(HEAD_READ);
    // Interim answers together may not exceed one head's bound (a 1xx flood never ends).
    let mut interim = 0;
    let head = poll_fn(|cx| {
        // Send while the body has bytes and the socket room; a response may come first, and
        // may still be read after the upstream stopped taking the body.
        if let Poll::Ready(Err(e)) = upload.poll_send(cx, &mut conn.io) {
            return Poll::Ready(Err(e)); // the client's body failed
        }
        loop {
            let before = buf.len();
            match parse_response(&mut buf) {
                Err(e) => return Poll::Ready(Err(e)),
                // 100 Continue and other interim responses: the final one follows.
                Ok(Some(r)) if r.status().is_informational() && r.status() != StatusCode::SWITCHING_PROTOCOLS => {
                    interim += before - buf.len();
                    if interim > MAX_HEAD {
                        return Poll::Ready(Err(protocol_error("interim responses without end")));
                    }
                    continue;
                }
                Ok(Some(r)) => return Poll::Ready(Ok(r)),
                Ok(None) => {}
            }
            if buf.len() + interim >= MAX_HEAD {
                return Poll::Ready(Err(protocol_error("response head too large")));
            }
            let error: BoxError = match std::task::ready!(poll_read_buf(cx, &mut conn.io, &mut buf, HEAD_READ)) {
                Ok(0) => "upstream closed the connection before the response".into(),
                Ok(_) => continue,
                Err(e) => e.into(),
            };
            // The write's failure, if any, says more (the upstream reset the upload).
            return Poll::Ready(Err(upload.write_error.take().map_or(error, Into::into)));
        }
    })
    .await?;
    let (parts_in, ()) = head.into_parts();
    if parts_in.status == StatusCode::SWITCHING_PROTOCOLS {
        if !is_upgrade(&parts.headers) || !upload.is_done() {
            return Err(protocol_error("switched protocols, which no request asked for"));
        }
        // The connection is the tunnel's now; it never returns to the pool.
        return Ok(Response::from_parts(
            parts_in,
            RawBody {
                conn: Some(conn),
                buf,
                state: State::Upgraded,
                keep_alive: false,
                upload: None,
                rt,
            },
        ));
    }
    let framing = response_framing(&parts.method, parts_in.status, &parts_in.headers)?;
    let mut keep_alive = framing.is_some() && wants_keep_alive(parts_in.version, &parts_in.headers);
    // The rest of the request body goes on while the response is read (an upstream may answer
    // first and read after); one whose upload failed is not reused.
    let upload = if upload.write_error.is_some() {
        keep_alive = false;
        None
    } else {
        (!upload.is_done()).then(|| Box::new(upload))
    };
    let mut body = RawBody {
        conn: Some(conn),
        buf,
        state: match framing {
            Some(framing) => Decoder::new(framing).map_or(State::Done, State::Decode),
            None => State::UntilClose,
        },
        keep_alive,
        upload,
        rt,
    };
    if matches!(body.state, State::Done) {
        body.finish();
    }
    Ok(Response::from_parts(parts_in, body))
}

/// A request that asks to switch protocols (`Connection: upgrade` and an `Upgrade` field).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && crate::listener::h1::connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

/// The request going out: its head, then its body, framed.
struct Upload {
    /// Encoded bytes not yet written (the head, chunk framing, body data).
    queue: WriteQueue,
    body: Option<UpstreamBody>,
    chunked: bool,
    /// The upstream stopped taking the request (the write failed): the rest is dropped, and
    /// the error kept in case no response follows.
    write_error: Option<io::Error>,
}

impl Upload {
    fn new(parts: &http::request::Parts, body: UpstreamBody) -> Upload {
        let ended = body.is_end_stream();
        let length = if ended { Some(0) } else { body.size_hint().exact() };
        let mut head = encode_head(parts);
        // The body frames itself: its exact length (what the client's codec checked it
        // against), else chunked. A `content-length` header is never trusted for this (on a
        // pooled connection a wrong one turns the rest of a body into a second request); it
        // only says that an empty body is sent with an explicit length of 0.
        let chunked = length.is_none();
        match length {
            Some(0) if !parts.headers.contains_key(header::CONTENT_LENGTH) => {}
            Some(n) => {
                let _ = std::fmt::Write::write_fmt(&mut head, format_args!("content-length: {n}\r\n"));
            }
            None => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        }
        head.extend_from_slice(b"\r\n");
        let mut queue = WriteQueue::default();
        queue.push(head.freeze());
        Upload {
            queue,
            body: (!ended).then_some(body),
            chunked,
            write_error: None,
        }
    }

    /// The whole request went out.
    fn is_done(&self) -> bool {
        self.queue.is_empty() && self.body.is_none() && self.write_error.is_none()
    }

    fn stop(&mut self, error: io::Error) -> Poll<Result<(), BoxError>> {
        self.queue.clear();
        self.body = None;
        self.write_error = Some(error);
        Poll::Ready(Ok(()))
    }

    /// Writes what can be written now; `Ready(Ok)` once all of it went, `Pending` while the
    /// socket or the body has nothing more for now.
    fn poll_send(&mut self, cx: &mut Context<'_>, io: &mut CountedStream) -> Poll<Result<(), BoxError>> {
        loop {
            while self.queue.room() >= 3 {
                let Some(body) = self.body.as_mut() else { break };
                match Pin::new(body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Ok(data) = frame.into_data() {
                            if data.is_empty() {
                                continue;
                            }
                            if self.chunked {
                                self.queue.push_chunk(data);
                            } else {
                                self.queue.push(data);
                            }
                        }
                    }
                    Poll::Ready(None) => {
                        self.body = None;
                        if self.chunked {
                            self.queue.push(Bytes::from_static(b"0\r\n\r\n"));
                        }
                    }
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                    Poll::Pending => break,
                }
            }
            if self.queue.is_empty() {
                return if self.body.is_none() {
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Pending
                };
            }
            if let Err(e) = std::task::ready!(self.queue.poll_write(cx, &mut *io)) {
                return self.stop(e);
            }
        }
    }
}

/// The request line and headers, without the blank line that ends them.
fn encode_head(parts: &http::request::Parts) -> BytesMut {
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut head = BytesMut::with_capacity(64 + path.len() + parts.headers.len() * 48);
    head.extend_from_slice(parts.method.as_str().as_bytes());
    head.extend_from_slice(b" ");
    head.extend_from_slice(path.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    // Framing is written from the body (`Upload::new`).
    write_headers_unframed(&mut head, &parts.headers);
    head
}

/// Parses a complete response head off the front of `buf`; `None` while it is incomplete. Any
/// syntax error (obs-fold included, which httparse refuses by default) is a protocol error.
fn parse_response(buf: &mut BytesMut) -> Result<Option<Response<()>>, BoxError> {
    const INVALID: &str = "invalid response head";
    // Slots left uninitialized: httparse writes the ones it fills.
    let mut slots = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut parsed, buf, &mut slots)
        .map_err(|_| protocol_error(INVALID))?
    {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => return Ok(None),
    };
    let status = StatusCode::from_u16(parsed.code.unwrap_or(0)).map_err(|_| protocol_error("invalid status code"))?;
    let version = if parsed.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let base = buf.as_ptr() as usize;
    let fields: Vec<(HeaderName, std::ops::Range<usize>)> = parsed
        .headers
        .iter()
        .map(|h| {
            let start = h.value.as_ptr() as usize - base;
            let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| protocol_error(INVALID))?;
            Ok((name, start..start + h.value.len()))
        })
        .collect::<Result<_, BoxError>>()?;
    // Header values share the head's bytes rather than being copied one by one.
    let head = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(fields.len());
    for (name, range) in fields {
        let value = HeaderValue::from_maybe_shared(head.slice(range)).map_err(|_| protocol_error(INVALID))?;
        headers.append(name, value);
    }
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = version;
    *response.headers_mut() = headers;
    Ok(Some(response))
}

/// RFC 9112 §6.3 for a response: `None` when the body ends with the connection. As strict as
/// Envoy 1.40 (502 `UPE` for each): `Transfer-Encoding` with `Content-Length` (a
/// response-splitting vector), a transfer coding other than one `chunked` (`gzip, chunked`
/// would lose its `gzip` when re-framed), and more than one length, even equal ones.
fn response_framing(method: &Method, status: StatusCode, headers: &HeaderMap) -> Result<Option<Framing>, BoxError> {
    if method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(Some(Framing::Empty));
    }
    if let Some(framing) = response_transfer_coding(headers)? {
        return Ok(Some(framing));
    }
    Ok(match response_length(headers)? {
        Some(0) => Some(Framing::Empty),
        Some(n) => Some(Framing::Length(n)),
        None => None,
    })
}

/// `Some(Chunked)` for a lone `chunked` coding, `None` for no `Transfer-Encoding`; anything
/// else is a protocol error. Shared with hyper's responses (`crate::proxy::http`).
pub fn response_transfer_coding(headers: &HeaderMap) -> Result<Option<Framing>, BoxError> {
    let mut codings = headers.get_all(header::TRANSFER_ENCODING).iter();
    let Some(first) = codings.next() else {
        return Ok(None);
    };
    if headers.contains_key(header::CONTENT_LENGTH) {
        return Err(protocol_error("both transfer-encoding and content-length"));
    }
    if codings.next().is_some() || !first.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked") {
        return Err(protocol_error("a transfer coding other than chunked"));
    }
    Ok(Some(Framing::Chunked))
}

/// The one `Content-Length`, if any; two, a list, or a value that is not digits is a protocol
/// error.
pub fn response_length(headers: &HeaderMap) -> Result<Option<u64>, BoxError> {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(protocol_error("more than one content-length"));
    }
    let length = value
        .to_str()
        .ok()
        .and_then(|v| crate::listener::h1::parse_length(v.trim()))
        .ok_or_else(|| protocol_error("invalid content-length"))?;
    Ok(Some(length))
}

enum State {
    Decode(Decoder),
    /// No length and not chunked: the body is everything until the upstream closes.
    UntilClose,
    Done,
    /// A `101`: no body; the connection waits for [`RawBody::take_upgrade`].
    Upgraded,
}

/// A response body still on its upstream connection.
pub struct RawBody {
    conn: Option<Box<Conn>>,
    /// Bytes read past the head (or past the last frame) not yet handed on.
    buf: BytesMut,
    state: State,
    keep_alive: bool,
    /// The rest of the request body, when the response came before all of it went.
    upload: Option<Box<Upload>>,
    rt: Arc<ClusterRuntime>,
}

impl RawBody {
    /// The socket holding the rest of a `Content-Length` body and how many bytes are left,
    /// when nothing of it is buffered here: the caller may then move them with `splice(2)`
    /// and report them with [`RawBody::spliced`].
    pub fn splice_source(&self) -> Option<(&TcpStream, u64)> {
        match (&self.state, &self.conn) {
            (State::Decode(Decoder::Length(left)), Some(conn))
                if *left > 0 && self.buf.is_empty() && self.upload.is_none() =>
            {
                Some((conn.io.tcp(), *left))
            }
            _ => None,
        }
    }

    /// The connection of a `101` answer and the bytes read past its head.
    pub fn take_upgrade(&mut self) -> Option<crate::listener::h1::Upgraded> {
        if !matches!(self.state, State::Upgraded) {
            return None;
        }
        self.state = State::Done;
        let conn = self.conn.take()?;
        Some(crate::listener::h1::Upgraded {
            io: Box::new(conn.io),
            read: self.buf.split().freeze(),
        })
    }

    /// `n` bytes of the body were moved past this reader.
    pub fn spliced(&mut self, n: u64) {
        if let (State::Decode(Decoder::Length(left)), Some(conn)) = (&mut self.state, &self.conn) {
            *left = left.saturating_sub(n);
            conn.io.count_spliced(n, 0);
            if *left == 0 {
                self.finish();
            }
        }
    }

    /// The body is complete: the connection goes back to the pool when it can carry another
    /// request (nothing unasked-for arrived after the body), else it is closed.
    fn finish(&mut self) {
        self.state = State::Done;
        if let Some(conn) = self.conn.take() {
            if self.keep_alive && self.buf.is_empty() && self.upload.is_none() {
                self.rt.pool.checkin_h1(conn);
            }
        }
    }
}

impl Body for RawBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let (Some(upload), Some(conn)) = (this.upload.as_mut(), this.conn.as_mut()) {
            match upload.poll_send(cx, &mut conn.io) {
                Poll::Ready(Ok(())) => {
                    this.keep_alive &= upload.write_error.is_none();
                    this.upload = None;
                }
                // The client's request body failed: the exchange cannot complete.
                Poll::Ready(Err(e)) => {
                    this.state = State::Done;
                    this.conn = None;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Pending => {}
            }
        }
        loop {
            match &mut this.state {
                State::Done | State::Upgraded => return Poll::Ready(None),
                State::Decode(decoder) => match decoder.decode(&mut this.buf) {
                    Ok(Some(data)) => {
                        // Ended with this piece: the connection is free now, since a consumer
                        // (hyper's HTTP/2 server) stops polling once `is_end_stream` says so.
                        if decoder.is_done() {
                            this.finish();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Ok(None) if decoder.is_done() => {
                        this.finish();
                        return Poll::Ready(None);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        this.state = State::Done;
                        this.conn = None;
                        return Poll::Ready(Some(Err(e.into())));
                    }
                },
                State::UntilClose => {
                    if !this.buf.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(this.buf.split().freeze()))));
                    }
                }
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let chunk = match &this.state {
                State::Decode(Decoder::Length(left)) => usize::try_from(*left).unwrap_or(BODY_READ).min(BODY_READ),
                _ => BODY_READ,
            };
            let read = std::task::ready!(poll_read_buf(cx, &mut conn.io, &mut this.buf, chunk));
            match read {
                Ok(0) if matches!(this.state, State::UntilClose) => {
                    this.state = State::Done;
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    this.state = State::Done;
                    this.conn = None;
                    return Poll::Ready(Some(Err("upstream closed the connection mid-body".into())));
                }
                Ok(_) => {}
                Err(e) => {
                    this.state = State::Done;
                    this.conn = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            State::Done | State::Upgraded => true,
            State::Decode(d) => d.is_done() && self.buf.is_empty(),
            State::UntilClose => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            State::Done | State::Upgraded => SizeHint::with_exact(0),
            State::Decode(Decoder::Length(left)) => SizeHint::with_exact(*left),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framing_of(method: Method, status: u16, headers: &[(&str, &str)]) -> Result<Option<Framing>, BoxError> {
        let mut map = HeaderMap::new();
        for (n, v) in headers {
            map.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        response_framing(&method, StatusCode::from_u16(status).unwrap(), &map)
    }

    fn is_protocol_error(r: Result<Option<Framing>, BoxError>) -> bool {
        r.is_err_and(|e| e.is::<ProtocolError>())
    }

    /// RFC 9112 §6.3 as Envoy 1.40 enforces it on responses (issue 16: each of these it
    /// answers 502 `UPE`).
    #[test]
    fn response_framing_follows_rfc_9112() {
        let length = |n| Some(Framing::Length(n));
        assert_eq!(
            framing_of(Method::GET, 200, &[("content-length", "5")]).unwrap(),
            length(5)
        );
        assert_eq!(
            framing_of(Method::GET, 200, &[("content-length", "005")]).unwrap(),
            length(5)
        );
        assert_eq!(
            framing_of(Method::GET, 200, &[("content-length", "0")]).unwrap(),
            Some(Framing::Empty)
        );
        assert_eq!(
            framing_of(Method::HEAD, 200, &[("content-length", "5")]).unwrap(),
            Some(Framing::Empty)
        );
        assert_eq!(
            framing_of(Method::GET, 304, &[("content-length", "5")]).unwrap(),
            Some(Framing::Empty)
        );
        assert_eq!(framing_of(Method::GET, 204, &[]).unwrap(), Some(Framing::Empty));
        assert_eq!(
            framing_of(Method::GET, 200, &[("transfer-encoding", "Chunked")]).unwrap(),
            Some(Framing::Chunked)
        );
        // No framing at all: the body runs until the close.
        assert_eq!(framing_of(Method::GET, 200, &[]).unwrap(), None);
        for refused in [
            &[("transfer-encoding", "chunked"), ("content-length", "5")][..],
            &[("transfer-encoding", "gzip, chunked")],
            &[("transfer-encoding", "gzip"), ("transfer-encoding", "chunked")],
            &[("transfer-encoding", "gzip")],
            &[("content-length", "7, 7")],
            &[("content-length", "7"), ("content-length", "7")],
            &[("content-length", "7"), ("content-length", "8")],
            &[("content-length", "-1")],
            &[("content-length", "+5")],
        ] {
            assert!(is_protocol_error(framing_of(Method::GET, 200, refused)), "{refused:?}");
        }
    }

    #[test]
    fn a_head_is_parsed_across_reads_and_interim_responses_are_seen() {
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\ncontent-le"[..]);
        assert!(parse_response(&mut buf).unwrap().is_none());
        buf.extend_from_slice(b"ngth: 3\r\nx-a: b\r\n\r\nabc");
        let response = parse_response(&mut buf).unwrap().unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["x-a"], "b");
        assert_eq!(&buf[..], b"abc", "the body's first bytes stay buffered");
        for bad in [
            &b"HTTP/1.1 2000 OK\r\n\r\n"[..],
            b"garbage\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nx-a: b\r\n c\r\ncontent-length: 0\r\n\r\n",
        ] {
            let e = parse_response(&mut BytesMut::from(bad)).unwrap_err();
            assert!(e.is::<ProtocolError>(), "{e}");
        }
    }

    #[test]
    fn requests_are_encoded_with_their_path_and_headers() {
        let (parts, ()) = Request::builder()
            .method(Method::GET)
            .uri("/politics?x=1")
            .header("host", "edition.cnn.com")
            .body(())
            .unwrap()
            .into_parts();
        assert_eq!(
            &encode_head(&parts)[..],
            b"GET /politics?x=1 HTTP/1.1\r\nhost: edition.cnn.com\r\n"
        );
    }

    /// Issue 16: the request's framing comes from its body, never from a `content-length` or
    /// `transfer-encoding` header (a wrong one on a pooled connection makes the rest of a body
    /// a second request).
    #[test]
    fn the_body_not_a_header_frames_the_request() {
        use http_body_util::BodyExt;
        let encode = |headers: &[(&str, &str)], body: UpstreamBody| {
            let mut builder = Request::builder().method(Method::POST).uri("/up");
            for (n, v) in headers {
                builder = builder.header(*n, *v);
            }
            let (parts, ()) = builder.body(()).unwrap().into_parts();
            let mut upload = Upload::new(&parts, body);
            String::from_utf8(upload.queue.take_all()).unwrap()
        };
        let full = |data: &'static [u8]| {
            UpstreamBody::new(http_body_util::Full::new(Bytes::from_static(data)).map_err(|e| match e {}))
        };
        let head = encode(&[("content-length", "2"), ("x-a", "b")], full(b"hello"));
        assert_eq!(head, "POST /up HTTP/1.1\r\nx-a: b\r\ncontent-length: 5\r\n\r\n");
        let head = encode(&[("transfer-encoding", "chunked")], full(b"hello"));
        assert_eq!(head, "POST /up HTTP/1.1\r\ncontent-length: 5\r\n\r\n");
        let empty = || UpstreamBody::new(http_body_util::Empty::new().map_err(|e| match e {}));
        assert_eq!(
            encode(&[("content-length", "7")], empty()),
            "POST /up HTTP/1.1\r\ncontent-length: 0\r\n\r\n"
        );
        assert_eq!(encode(&[], empty()), "POST /up HTTP/1.1\r\n\r\n");
    }
}
