//! The writing half of the HTTP/1.1 codec: status line and headers, the queue of pieces that
//! go out with vectored writes (shared with the client in `crate::upstream::h1`), and the
//! response writer, which frames a body and moves a `Content-Length` one with `splice(2)` when
//! the client's connection is plain TCP.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode, Version};
use http_body::Body;
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

use super::Splice;
use crate::io::splice::{BodySplice, Side};
use crate::BoxError;

/// Pieces gathered into one vectored write.
const MAX_SLICES: usize = 16;

pub(super) fn status_line(out: &mut BytesMut, version: Version, status: StatusCode) {
    out.extend_from_slice(if version == Version::HTTP_10 {
        b"HTTP/1.0 "
    } else {
        b"HTTP/1.1 "
    });
    out.extend_from_slice(status.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
    out.extend_from_slice(b"\r\n");
}

pub(super) fn date_header(out: &mut BytesMut) {
    thread_local! {
        /// (second, `date` value): formatted once per second per thread.
        static DATE: std::cell::RefCell<(u64, [u8; 29])> = const { std::cell::RefCell::new((0, [0; 29])) };
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != now {
            let format = time::macros::format_description!(
                "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
            );
            let text = time::OffsetDateTime::from_unix_timestamp(now as i64)
                .ok()
                .and_then(|t| t.format(format).ok())
                .unwrap_or_default();
            if text.len() == 29 {
                cached.1.copy_from_slice(text.as_bytes());
                cached.0 = now;
            }
        }
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(&cached.1);
        out.extend_from_slice(b"\r\n");
    });
}

/// Header lines, `name: value\r\n` each.
pub fn write_headers(out: &mut BytesMut, headers: &HeaderMap) {
    write_fields(out, headers.iter());
}

/// Header lines without `content-length` and `transfer-encoding`: for a message whose framing
/// is written from its body.
pub fn write_headers_unframed(out: &mut BytesMut, headers: &HeaderMap) {
    write_fields(
        out,
        headers
            .iter()
            .filter(|(name, _)| *name != header::CONTENT_LENGTH && *name != header::TRANSFER_ENCODING),
    );
}

fn write_fields<'a>(out: &mut BytesMut, fields: impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)>) {
    for (name, value) in fields {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// Pieces of a message waiting to go out, written with vectored writes (both directions of the
/// HTTP/1.1 codec: responses here, requests in `crate::upstream::h1`).
#[derive(Default)]
pub struct WriteQueue(std::collections::VecDeque<Bytes>);

impl WriteQueue {
    /// Room left for pieces in the next write.
    pub fn room(&self) -> usize {
        MAX_SLICES.saturating_sub(self.0.len())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }

    /// Everything queued, in order (tests).
    #[cfg(test)]
    pub fn take_all(&mut self) -> Vec<u8> {
        self.0.drain(..).flat_map(|piece| piece.to_vec()).collect()
    }

    pub fn push(&mut self, piece: Bytes) {
        if !piece.is_empty() {
            self.0.push_back(piece);
        }
    }

    /// `data` as one chunk of the chunked transfer coding (three pieces).
    pub fn push_chunk(&mut self, data: Bytes) {
        self.push(Bytes::from(format!("{:x}\r\n", data.len())));
        self.push(data);
        self.push(Bytes::from_static(b"\r\n"));
    }

    /// One vectored write of the first pieces; `Ready(Ok)` once some bytes went.
    pub fn poll_write<S: AsyncWrite + Unpin>(&mut self, cx: &mut Context<'_>, io: &mut S) -> Poll<io::Result<()>> {
        let mut slices = [IoSlice::new(&[]); MAX_SLICES];
        let count = self.0.len().min(MAX_SLICES);
        for (slot, piece) in slices.iter_mut().zip(self.0.iter()) {
            *slot = IoSlice::new(piece);
        }
        let mut n = ready!(Pin::new(io).poll_write_vectored(cx, &slices[..count]))?;
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        while n > 0 {
            let Some(front) = self.0.front_mut() else { break };
            if n >= front.len() {
                n -= front.len();
                self.0.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// Writes one response: its head, then its body (Content-Length, chunked, or until close).
pub(super) struct ResponseWriter<B> {
    body: Option<B>,
    /// The body of a `101` answer, kept for the tunnel that follows.
    pub(super) upgraded: Option<B>,
    queue: WriteQueue,
    chunked: bool,
    /// Body bytes still owed under a Content-Length.
    owed: Option<u64>,
    pub(super) keep_alive: bool,
    /// The pipe, once a body is spliced.
    pipe: BodySplice,
    /// No pipe could be had: copy.
    no_pipe: bool,
}

impl<B> ResponseWriter<B>
where
    B: Body<Data = Bytes> + Splice + Unpin,
    B::Error: Into<BoxError>,
{
    pub(super) fn new(response: Response<B>, method_head: bool, version: Version, keep_alive: bool) -> Self {
        let (mut parts, body) = response.into_parts();
        let status = parts.status;
        if status == StatusCode::SWITCHING_PROTOCOLS {
            // The upgrade's own `connection` and `upgrade` fields go out as they are; no body
            // and no framing: the bytes after this head belong to the new protocol.
            let mut head = BytesMut::with_capacity(128 + parts.headers.len() * 48);
            status_line(&mut head, version, status);
            parts.headers.remove(header::CONTENT_LENGTH);
            parts.headers.remove(header::TRANSFER_ENCODING);
            write_headers(&mut head, &parts.headers);
            if !parts.headers.contains_key(header::DATE) {
                date_header(&mut head);
            }
            head.extend_from_slice(b"\r\n");
            let mut queue = WriteQueue::default();
            queue.push(head.freeze());
            return ResponseWriter {
                body: None,
                upgraded: Some(body),
                queue,
                chunked: false,
                owed: None,
                keep_alive: false,
                pipe: BodySplice::default(),
                no_pipe: false,
            };
        }
        let mut keep_alive = keep_alive;
        let no_body_allowed = status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
            || method_head;
        // The body's own length frames it, never a header: a `content-length` that is not the
        // body's (a header operation, a mismatched upstream) would desynchronise the client's
        // connection. HEAD and 304 answers keep the length they describe.
        if !(method_head || status == StatusCode::NOT_MODIFIED) || status.is_informational() {
            parts.headers.remove(header::CONTENT_LENGTH);
        }
        parts.headers.remove(header::TRANSFER_ENCODING);
        parts.headers.remove(header::CONNECTION);
        let mut head = BytesMut::with_capacity(256 + parts.headers.len() * 48);
        status_line(&mut head, version, status);
        write_headers(&mut head, &parts.headers);
        // The framing: the body's known length, chunked, or the close.
        let mut chunked = false;
        let known = if body.is_end_stream() {
            Some(0)
        } else {
            body.size_hint().exact()
        };
        let owed = if no_body_allowed {
            None
        } else if let Some(n) = known {
            // `BytesMut` is a `fmt::Write`: no intermediate string.
            let _ = std::fmt::Write::write_fmt(&mut head, format_args!("content-length: {n}\r\n"));
            Some(n)
        } else if version == Version::HTTP_11 {
            chunked = true;
            head.extend_from_slice(b"transfer-encoding: chunked\r\n");
            None
        } else {
            keep_alive = false; // delimited by the close
            None
        };
        if !parts.headers.contains_key(header::DATE) {
            date_header(&mut head);
        }
        match (keep_alive, version) {
            (false, _) => head.extend_from_slice(b"connection: close\r\n"),
            (true, Version::HTTP_10) => head.extend_from_slice(b"connection: keep-alive\r\n"),
            _ => {}
        }
        head.extend_from_slice(b"\r\n");
        let mut queue = WriteQueue::default();
        queue.push(head.freeze());
        ResponseWriter {
            // A body that may not be sent is dropped now (its log line is written then).
            body: (!no_body_allowed).then_some(body),
            upgraded: None,
            queue,
            chunked,
            owed,
            keep_alive,
            pipe: BodySplice::default(),
            no_pipe: false,
        }
    }

    /// Drives the response out; `Ready(Ok)` once all of it is written and flushed.
    pub(super) fn poll_write<S: AsyncWrite + Unpin + 'static>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut S,
    ) -> Poll<io::Result<()>> {
        // A plain TCP client can be handed a `Content-Length` body with splice(2); a TLS one
        // needs the bytes in user space to encrypt them.
        let tcp_client = !self.chunked && (&*io as &dyn std::any::Any).is::<TcpStream>();
        loop {
            if tcp_client && !self.no_pipe && self.queue.is_empty() {
                ready!(self.poll_splice(cx, io))?;
            }
            while self.queue.room() >= 3 {
                let Some(body) = self.body.as_mut() else { break };
                // `no_pipe` is read here, not before the loop: running out of pipes switches
                // to copying mid-body.
                if tcp_client && !self.no_pipe && body.splice_source().is_some() {
                    break; // the head and any buffered bytes go first, then the splice
                }
                match Pin::new(body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Ok(data) = frame.into_data() {
                            self.push_data(data)?;
                        }
                    }
                    Poll::Ready(None) => {
                        self.body = None;
                        if self.chunked {
                            self.queue.push(Bytes::from_static(b"0\r\n\r\n"));
                        } else if self.owed.is_some_and(|n| n > 0) {
                            return Poll::Ready(Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "response body shorter than its content-length",
                            )));
                        }
                    }
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(io::Error::other(e.into()))),
                    Poll::Pending => break,
                }
            }
            if self.queue.is_empty() {
                ready!(Pin::new(&mut *io).poll_flush(cx))?;
                return if self.body.is_none() {
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Pending
                };
            }
            ready!(self.queue.poll_write(cx, &mut *io))?;
        }
    }

    /// Splices the body while it offers its socket; `Ready(Ok)` when it no longer does (done,
    /// or bytes are buffered that must be read).
    fn poll_splice<S: 'static>(&mut self, cx: &mut Context<'_>, io: &S) -> Poll<io::Result<()>> {
        let Some(to) = (io as &dyn std::any::Any).downcast_ref::<TcpStream>() else {
            return Poll::Ready(Ok(()));
        };
        while let Some(body) = self.body.as_mut() {
            let Some((from, left)) = body.splice_source() else {
                break;
            };
            if self.owed.is_some_and(|owed| left > owed) {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "response body longer than its content-length",
                )));
            }
            let moved = ready!(self.pipe.poll_move(cx, from, to, left));
            match moved {
                Ok(0) => {
                    body.upstream_broken();
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "upstream closed before the end of the response body",
                    )));
                }
                Ok(n) => {
                    body.spliced(n as u64);
                    if let Some(owed) = &mut self.owed {
                        *owed = owed.saturating_sub(n as u64);
                    }
                }
                // Out of descriptors: the body is read and copied instead, as it would be to a
                // TLS client.
                Err((Side::Pipe, _)) => {
                    self.no_pipe = true;
                    break;
                }
                Err((side, e)) => {
                    if side == Side::From {
                        body.upstream_broken();
                    }
                    return Poll::Ready(Err(e));
                }
            }
        }
        Poll::Ready(Ok(()))
    }

    fn push_data(&mut self, data: Bytes) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        if self.chunked {
            self.queue.push_chunk(data);
            return Ok(());
        }
        if let Some(owed) = &mut self.owed {
            let len = data.len() as u64;
            if len > *owed {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "response body longer than its content-length",
                ));
            }
            *owed -= len;
        }
        self.queue.push(data);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use std::future::poll_fn;

    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// A `Content-Length` body still on a socket, as egressd's upstream client leaves it; counts
    /// the bytes read through user space and those spliced past it.
    struct SocketBody {
        io: TcpStream,
        left: u64,
        read: Arc<AtomicU64>,
        spliced: Arc<AtomicU64>,
    }

    impl Body for SocketBody {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame, BoxError>>> {
            if self.left == 0 {
                return Poll::Ready(None);
            }
            let mut buf = vec![0u8; self.left.min(8192) as usize];
            let mut rb = ReadBuf::new(&mut buf);
            ready!(Pin::new(&mut self.io).poll_read(cx, &mut rb))?;
            let n = rb.filled().len();
            if n == 0 {
                return Poll::Ready(Some(Err("closed early".into())));
            }
            self.left -= n as u64;
            self.read.fetch_add(n as u64, Ordering::Relaxed);
            Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::copy_from_slice(&buf[..n])))))
        }

        fn size_hint(&self) -> http_body::SizeHint {
            http_body::SizeHint::with_exact(self.left)
        }
    }

    type Frame = http_body::Frame<Bytes>;

    impl Splice for SocketBody {
        fn splice_source(&self) -> Option<(&TcpStream, u64)> {
            (self.left > 0).then_some((&self.io, self.left))
        }

        fn spliced(&mut self, n: u64) {
            self.left -= n;
            self.spliced.fetch_add(n, Ordering::Relaxed);
        }

        fn upstream_broken(&mut self) {}
    }

    async fn pair(listener: &TcpListener) -> (TcpStream, TcpStream) {
        let a = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (b, _) = listener.accept().await.unwrap();
        (a, b)
    }

    /// Writes a response whose 300,000-byte body waits on an "upstream" socket to a plain TCP
    /// "client"; returns what the client got, and the bytes read and spliced.
    async fn serve_body(pipe: BodySplice) -> (Vec<u8>, u64, u64) {
        const LEN: usize = 300_000;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (mut origin, upstream) = pair(&listener).await;
        let (mut client, mut downstream) = pair(&listener).await;
        let payload: Vec<u8> = (0..LEN as u32).map(|i| (i % 251) as u8).collect();
        let sent = payload.clone();
        tokio::spawn(async move { origin.write_all(&sent).await.unwrap() });
        let (read, spliced) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let body = SocketBody {
            io: upstream,
            left: LEN as u64,
            read: read.clone(),
            spliced: spliced.clone(),
        };
        let response = Response::builder()
            .header(header::CONTENT_LENGTH, LEN)
            .body(body)
            .unwrap();
        let mut writer = ResponseWriter::new(response, false, Version::HTTP_11, true);
        writer.pipe = pipe;
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            while got.len() < LEN || find_body(&got).is_none_or(|at| got.len() - at < LEN) {
                let mut chunk = [0u8; 65536];
                let n = client.read(&mut chunk).await.unwrap();
                assert!(n > 0, "the client's connection ended early");
                got.extend_from_slice(&chunk[..n]);
            }
            got
        });
        poll_fn(|cx| writer.poll_write(cx, &mut downstream)).await.unwrap();
        let got = reader.await.unwrap();
        let at = find_body(&got).unwrap();
        assert!(got[at..] == payload[..], "the body arrived changed");
        (
            got[..at].to_vec(),
            read.load(Ordering::Relaxed),
            spliced.load(Ordering::Relaxed),
        )
    }

    fn find_body(got: &[u8]) -> Option<usize> {
        got.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
    }

    /// To a plain TCP client a `Content-Length` body is spliced, none of it read.
    #[tokio::test]
    async fn a_length_body_is_spliced_to_a_tcp_client() {
        let (head, read, spliced) = serve_body(BodySplice::default()).await;
        assert!(String::from_utf8_lossy(&head).contains("content-length: 300000\r\n"));
        assert_eq!((read, spliced), (0, 300_000));
    }

    /// Out of descriptors (no pipe to be had), the same body is read and copied instead of
    /// failing the response.
    #[tokio::test]
    async fn without_pipes_the_body_is_copied() {
        let (_, read, spliced) = serve_body(BodySplice::without_pipes()).await;
        assert_eq!((read, spliced), (300_000, 0));
    }

    /// A body held in memory (a local reply's), never spliced.
    struct Memory(Option<Bytes>);

    impl Body for Memory {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame, BoxError>>> {
            Poll::Ready(self.0.take().map(|b| Ok(http_body::Frame::data(b))))
        }

        fn size_hint(&self) -> http_body::SizeHint {
            http_body::SizeHint::with_exact(self.0.as_ref().map_or(0, |b| b.len() as u64))
        }
    }

    impl Splice for Memory {
        fn splice_source(&self) -> Option<(&TcpStream, u64)> {
            None
        }
        fn spliced(&mut self, _: u64) {}
        fn upstream_broken(&mut self) {}
    }

    /// Issue 16: a `content-length` header that is not the body's (a header operation, an
    /// upstream's mistake) never frames the body: the body's own length is written, once.
    #[tokio::test]
    async fn the_body_not_a_header_gives_the_length() {
        for declared in ["2", "50", "5", "5, 5"] {
            let response = Response::builder()
                .header(header::CONTENT_LENGTH, declared)
                .header("x-kept", "1")
                .body(Memory(Some(Bytes::from_static(b"hello"))))
                .unwrap();
            let mut writer = ResponseWriter::new(response, false, Version::HTTP_11, true);
            let (mut client, mut server) = tokio::io::duplex(4096);
            poll_fn(|cx| writer.poll_write(cx, &mut server)).await.unwrap();
            drop(server);
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            let text = String::from_utf8(got).unwrap();
            assert!(
                text.ends_with("\r\n\r\nhello") && text.matches("content-length").count() == 1,
                "declared {declared}: {text:?}"
            );
            assert!(text.contains("content-length: 5\r\n"), "{text:?}");
        }
        // A HEAD answer keeps the length it describes.
        let response = Response::builder()
            .header(header::CONTENT_LENGTH, "42")
            .body(Memory(None))
            .unwrap();
        let mut writer = ResponseWriter::new(response, true, Version::HTTP_11, true);
        let (mut client, mut server) = tokio::io::duplex(4096);
        poll_fn(|cx| writer.poll_write(cx, &mut server)).await.unwrap();
        drop(server);
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert!(String::from_utf8(got).unwrap().contains("content-length: 42\r\n"));
    }
}
