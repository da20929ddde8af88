//! egressd's own HTTP/1.1 client, for plaintext HTTP/1.1 upstreams (issue 6).
//!
//! hyper's client reads a response body into its own buffers and hands it on as frames, so a
//! proxied body is copied into user space and out again. Here the response head is parsed with
//! httparse and the body stays on the upstream socket: the downstream HTTP/1.1 codec moves a
//! `Content-Length` body with `splice(2)` (`crate::http1`), and reads it through
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
use http::header;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use tokio::net::TcpStream;

use super::cluster::{ClusterRuntime, CountedStream};
use super::pool::{PoolKey, UpstreamBody};
use crate::http1::{
    encode_head, is_upgrade, parse_response, poll_read_buf, response_framing, wants_keep_alive, Decoder, ProtocolError,
    WriteQueue, MAX_RESPONSE_HEAD,
};
use crate::BoxError;

/// First read for a response head; most heads and small bodies fit.
const HEAD_READ: usize = 8 * 1024;
/// Bytes read per call while a body is read through user space.
const BODY_READ: usize = 64 * 1024;

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
                    if interim > MAX_RESPONSE_HEAD {
                        return Poll::Ready(Err(ProtocolError::boxed("interim responses without end")));
                    }
                    continue;
                }
                Ok(Some(r)) => return Poll::Ready(Ok(r)),
                Ok(None) => {}
            }
            if buf.len() + interim >= MAX_RESPONSE_HEAD {
                return Poll::Ready(Err(ProtocolError::boxed("response head too large")));
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
            return Err(ProtocolError::boxed("switched protocols, which no request asked for"));
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
    pub fn take_upgrade(&mut self) -> Option<crate::http1::Upgraded> {
        if !matches!(self.state, State::Upgraded) {
            return None;
        }
        self.state = State::Done;
        let conn = self.conn.take()?;
        Some(crate::http1::Upgraded {
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

    /// Issue 16: the request's framing comes from its body, never from a `content-length` or
    /// `transfer-encoding` header (a wrong one on a pooled connection makes the rest of a body
    /// a second request).
    #[test]
    fn the_body_not_a_header_frames_the_request() {
        use http::Method;
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
