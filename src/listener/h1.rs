//! The HTTP/1.1 server side of a downstream connection.
//!
//! Written for the idle footprint (issue 6): a keep-alive connection waiting for its next
//! request owns no buffer at all. hyper keeps an 8 KiB read buffer, an 8 KiB header write
//! buffer and a slot the size of the request future for the life of every connection; here a
//! read lands in a stack buffer until bytes arrive, the head is parsed with httparse into
//! zero-copy header values, the body is framed strictly (RFC 9112 §6; both Content-Length and
//! Transfer-Encoding is a 400, as in Envoy), and the response goes out with vectored writes.
//! A connection that opens with the HTTP/2 preface is handed back to the caller (h2c).

mod body;
mod write;

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
use tokio::net::TcpStream;

use body::Pumped;
pub use body::{poll_read_buf, Decoder, Framing, Rejected, RequestBody};
use write::{date_header, status_line, ResponseWriter};
pub use write::{write_headers, write_headers_unframed, WriteQueue};

use crate::drain::Drain;
use crate::upstream::pool::BoxError;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// A read while no request is in progress goes to the stack first: most heads fit.
const IDLE_READ: usize = 4096;
/// Header slots parsed on the stack; a configured limit above this parses on the heap.
const STACK_HEADERS: usize = 128;
/// Bytes of pipelined requests read while a response is pending, at most.
const MAX_PIPELINED: usize = 64 * 1024;
/// A response body the codec can move with `splice(2)` instead of reading it (egressd's own
/// upstream client's `Content-Length` bodies, `crate::upstream::h1`).
pub trait Splice {
    /// The socket holding the body's next bytes and how many are left, when none of them is
    /// buffered in user space.
    fn splice_source(&self) -> Option<(&TcpStream, u64)>;
    /// `n` bytes were moved to the client.
    fn spliced(&mut self, n: u64);
    /// The upstream side failed (or closed) mid-body.
    fn upstream_broken(&mut self);
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
/// request heads refused here (answered with their status, then the connection closes).
pub async fn serve<S, F, Fut, B>(
    mut io: S,
    settings: &Settings,
    drain: &Drain,
    mut service: F,
    reject: impl Fn(Rejected),
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
                reject(why);
                write_rejection(&mut io, why).await?;
                return Ok(Ended::Closed);
            }
        };
        if !Box::pin(exchange(&mut io, &mut buf, request, drain, &mut service, &reject)).await? {
            let _ = io.shutdown().await;
            return Ok(Ended::Closed);
        }
        if buf.is_empty() {
            // Idle from here on: hold no buffer (the next read goes through the stack).
            buf = BytesMut::new();
        }
    }
}

/// One request and its response; `Ok(true)` when the connection can carry another.
async fn exchange<S, F, Fut, B>(
    io: &mut S,
    buf: &mut BytesMut,
    request: Request<()>,
    drain: &Drain,
    service: &mut F,
    reject: &impl Fn(Rejected),
) -> io::Result<bool>
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
    F: FnMut(Request<RequestBody>) -> Fut,
    Fut: Future<Output = Result<Response<B>, std::convert::Infallible>> + Unpin,
    B: Body<Data = Bytes> + Splice + Unpin,
    B::Error: Into<BoxError>,
{
    let (mut parts, ()) = request.into_parts();
    let framing = match body::framing(parts.version, &parts.headers) {
        Ok(framing) => framing,
        Err(why) => {
            reject(why);
            write_rejection(io, why).await?;
            return Ok(false);
        }
    };
    let keep_alive = wants_keep_alive(parts.version, &parts.headers);
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
            let keep = keep_alive && !drain.is_draining();
            writer = Some(ResponseWriter::new(response, method_head, version, keep));
        }
        let w = writer.as_mut().expect("set above");
        ready!(w.poll_write(cx, io))?;
        Poll::Ready(Ok::<bool, io::Error>(w.keep_alive))
    })
    .await?;
    // Reused only when the whole request body was read and both sides want it.
    Ok(written && body_intact && pump.is_none() && !drain.is_draining())
}

/// The options of every `Connection` field, trimmed, empty list elements skipped.
pub fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Whether the other side keeps the connection after this message (RFC 9112 §9.3).
pub fn wants_keep_alive(version: Version, headers: &HeaderMap) -> bool {
    let has = |token: &str| connection_tokens(headers).any(|t| t.eq_ignore_ascii_case(token));
    match version {
        Version::HTTP_11 => !has("close"),
        _ => has("keep-alive"),
    }
}

/// Reads until a whole request head is in `buf` (or the connection is not HTTP/1.1 for us).
async fn read_head<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut BytesMut,
    settings: &Settings,
    first: bool,
) -> io::Result<Head> {
    loop {
        if !buf.is_empty() {
            let seen = buf.len().min(H2_PREFACE.len());
            if first && buf[..seen] == H2_PREFACE[..seen] {
                if seen == H2_PREFACE.len() {
                    return Ok(Head::Http2);
                }
            } else {
                match parse_head(buf, settings) {
                    Ok(Some(request)) => return Ok(Head::Request(request)),
                    Ok(None) => {}
                    Err(why) => return Ok(Head::Rejected(why)),
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

const HEADERS_TOO_LARGE: Rejected = Rejected {
    status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
    details: "http1.headers_too_large",
};
const CODEC_ERROR: Rejected = Rejected {
    status: StatusCode::BAD_REQUEST,
    details: "http1.codec_error",
};

/// Parses a complete head off the front of `buf`; `Ok(None)` when it is not complete yet.
fn parse_head(buf: &mut BytesMut, settings: &Settings) -> Result<Option<Request<()>>, Rejected> {
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
            return Err(Rejected {
                status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                details: "http1.too_many_headers",
            })
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

async fn write_rejection<S: AsyncWrite + Unpin>(io: &mut S, why: Rejected) -> io::Result<()> {
    let text = why.status.canonical_reason().unwrap_or("Bad Request");
    let mut out = BytesMut::with_capacity(192);
    status_line(&mut out, Version::HTTP_11, why.status);
    out.extend_from_slice(format!("content-length: {}\r\ncontent-type: text/plain\r\n", text.len()).as_bytes());
    date_header(&mut out);
    out.extend_from_slice(b"connection: close\r\n\r\n");
    out.extend_from_slice(text.as_bytes());
    io.write_all(&out).await?;
    io.flush().await?;
    io.shutdown().await
}
