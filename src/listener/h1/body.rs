//! Request bodies of the HTTP/1.1 server: framing from the head (RFC 9112 §6.3), the decoders
//! (Content-Length, chunked), and the body handed to the request handler, fed by the
//! connection through a one-slot channel so that a slow upstream slows the client down.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::AsyncRead;
use tokio::sync::mpsc;
use tokio_util::sync::PollSender;

use crate::upstream::pool::BoxError;

/// Bytes read from the socket per read call while a body streams in.
const READ_CHUNK: usize = 16 * 1024;
/// Bound on one chunk-size line (size and extensions) and on all trailer lines together.
const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;

/// How the request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Empty,
    Length(u64),
    Chunked,
}

/// A request head whose framing cannot be trusted: answered, then the connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected {
    pub status: StatusCode,
    pub details: &'static str,
}

const fn rejected(status: StatusCode, details: &'static str) -> Rejected {
    Rejected { status, details }
}

/// RFC 9112 §6.3, strictly, as Envoy does: both `Transfer-Encoding` and `Content-Length` is a
/// 400 (a smuggling vector), so is `Transfer-Encoding` on HTTP/1.0 and differing lengths; a
/// coding other than a single `chunked` is a 501.
pub fn framing(version: Version, headers: &HeaderMap) -> Result<Framing, Rejected> {
    let mut te = headers.get_all(TRANSFER_ENCODING).iter().peekable();
    if te.peek().is_some() {
        if version == Version::HTTP_10 {
            return Err(rejected(StatusCode::BAD_REQUEST, "http1.invalid_transfer_encoding"));
        }
        if headers.contains_key(CONTENT_LENGTH) {
            return Err(rejected(
                StatusCode::BAD_REQUEST,
                "http1.content_length_and_chunked_not_allowed",
            ));
        }
        let mut codings = 0;
        for value in te {
            let text = value
                .to_str()
                .map_err(|_| rejected(StatusCode::BAD_REQUEST, "http1.invalid_transfer_encoding"))?;
            for coding in text.split(',').map(str::trim).filter(|c| !c.is_empty()) {
                codings += 1;
                if !coding.eq_ignore_ascii_case("chunked") {
                    return Err(rejected(StatusCode::NOT_IMPLEMENTED, "http1.invalid_transfer_encoding"));
                }
            }
        }
        return match codings {
            1 => Ok(Framing::Chunked),
            _ => Err(rejected(StatusCode::BAD_REQUEST, "http1.invalid_transfer_encoding")),
        };
    }
    let mut length = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        let text = value
            .to_str()
            .map_err(|_| rejected(StatusCode::BAD_REQUEST, "http1.content_length_not_allowed"))?;
        for item in text.split(',').map(str::trim) {
            let n = parse_length(item).ok_or(rejected(StatusCode::BAD_REQUEST, "http1.invalid_content_length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(rejected(StatusCode::BAD_REQUEST, "http1.multiple_content_length"));
            }
            length = Some(n);
        }
    }
    Ok(match length {
        None | Some(0) => Framing::Empty,
        Some(n) => Framing::Length(n),
    })
}

fn parse_length(text: &str) -> Option<u64> {
    if text.is_empty() || text.len() > 19 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Decodes one body from the connection's read buffer.
#[derive(Debug)]
pub enum Decoder {
    Length(u64),
    Chunked(Chunked),
}

#[derive(Debug)]
pub enum Chunked {
    /// Reading a chunk-size line: the size so far, digits seen, in an extension, CR seen.
    Size {
        size: u64,
        digits: u8,
        ext: bool,
        cr: bool,
        len: usize,
    },
    Data(u64),
    /// The CRLF after chunk data: `false` before the CR, `true` after it.
    DataEnd(bool),
    /// Trailer section: bytes of the current line, CR seen, bytes of all trailers.
    Trailers {
        line: usize,
        cr: bool,
        total: usize,
    },
    Done,
}

/// A body that breaks its framing: the connection cannot be reused.
#[derive(Debug, thiserror::Error)]
#[error("invalid chunked request body: {0}")]
pub struct InvalidBody(&'static str);

impl Decoder {
    pub fn new(framing: Framing) -> Option<Decoder> {
        match framing {
            Framing::Empty => None,
            Framing::Length(n) => Some(Decoder::Length(n)),
            Framing::Chunked => Some(Decoder::Chunked(Chunked::Size {
                size: 0,
                digits: 0,
                ext: false,
                cr: false,
                len: 0,
            })),
        }
    }

    pub fn is_done(&self) -> bool {
        matches!(self, Decoder::Length(0) | Decoder::Chunked(Chunked::Done))
    }

    /// Takes the next piece of body data out of `buf`; `None` when more bytes are needed or
    /// the body is complete (see `is_done`).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, InvalidBody> {
        match self {
            Decoder::Length(remaining) => {
                if *remaining == 0 || buf.is_empty() {
                    return Ok(None);
                }
                let take = buf.len().min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                *remaining -= take as u64;
                Ok(Some(buf.split_to(take).freeze()))
            }
            Decoder::Chunked(state) => state.decode(buf),
        }
    }
}

impl Chunked {
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, InvalidBody> {
        loop {
            match self {
                Chunked::Done => return Ok(None),
                Chunked::Data(remaining) => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let take = buf.len().min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                    *remaining -= take as u64;
                    if *remaining == 0 {
                        *self = Chunked::DataEnd(false);
                    }
                    return Ok(Some(buf.split_to(take).freeze()));
                }
                _ => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let byte = buf[0];
                    buf.advance(1);
                    self.step(byte)?;
                }
            }
        }
    }

    /// One byte of framing (size lines, CRLFs, trailers). Bare LF is refused everywhere.
    fn step(&mut self, byte: u8) -> Result<(), InvalidBody> {
        match self {
            Chunked::Size {
                size,
                digits,
                ext,
                cr,
                len,
            } => {
                *len += 1;
                if *len > MAX_CHUNK_LINE {
                    return Err(InvalidBody("chunk-size line too long"));
                }
                if *cr {
                    if byte != b'\n' {
                        return Err(InvalidBody("CR without LF after chunk size"));
                    }
                    if *digits == 0 {
                        return Err(InvalidBody("missing chunk size"));
                    }
                    *self = match *size {
                        0 => Chunked::Trailers {
                            line: 0,
                            cr: false,
                            total: 0,
                        },
                        n => Chunked::Data(n),
                    };
                    return Ok(());
                }
                match byte {
                    b'\r' => *cr = true,
                    b'\n' => return Err(InvalidBody("bare LF in chunk size line")),
                    _ if *ext => {}
                    b';' => *ext = true,
                    b' ' | b'\t' if *digits > 0 => *ext = true, // BWS before an extension
                    _ => {
                        let digit = (byte as char).to_digit(16).ok_or(InvalidBody("invalid chunk size"))?;
                        if *digits >= 16 {
                            return Err(InvalidBody("chunk size too large"));
                        }
                        *size = *size * 16 + u64::from(digit);
                        *digits += 1;
                    }
                }
                Ok(())
            }
            Chunked::DataEnd(cr) => {
                match (*cr, byte) {
                    (false, b'\r') => *cr = true,
                    (true, b'\n') => {
                        *self = Chunked::Size {
                            size: 0,
                            digits: 0,
                            ext: false,
                            cr: false,
                            len: 0,
                        }
                    }
                    _ => return Err(InvalidBody("chunk data not followed by CRLF")),
                }
                Ok(())
            }
            Chunked::Trailers { line, cr, total } => {
                *total += 1;
                if *total > MAX_TRAILERS {
                    return Err(InvalidBody("trailers too large"));
                }
                if *cr {
                    if byte != b'\n' {
                        return Err(InvalidBody("CR without LF in trailers"));
                    }
                    if *line == 0 {
                        *self = Chunked::Done;
                    } else {
                        *line = 0;
                        *cr = false;
                    }
                    return Ok(());
                }
                match byte {
                    b'\r' => *cr = true,
                    b'\n' => return Err(InvalidBody("bare LF in trailers")),
                    _ => *line += 1,
                }
                Ok(())
            }
            Chunked::Data(_) | Chunked::Done => Ok(()),
        }
    }
}

/// The request body as the handler sees it.
pub struct RequestBody {
    rx: Option<mpsc::Receiver<Result<Bytes, BoxError>>>,
    /// Bytes still to come, when the length is known.
    remaining: Option<u64>,
}

impl RequestBody {
    pub fn empty() -> RequestBody {
        RequestBody {
            rx: None,
            remaining: Some(0),
        }
    }

    /// A body fed by the returned `Pump`.
    pub fn channel(decoder: Decoder) -> (RequestBody, Pump) {
        let (tx, rx) = mpsc::channel(1);
        let remaining = match &decoder {
            Decoder::Length(n) => Some(*n),
            Decoder::Chunked(_) => None,
        };
        let body = RequestBody {
            rx: Some(rx),
            remaining,
        };
        let pump = Pump {
            tx: Some(PollSender::new(tx)),
            decoder,
        };
        (body, pump)
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(rx) = self.rx.as_mut() else {
            return Poll::Ready(None);
        };
        match ready!(rx.poll_recv(cx)) {
            Some(Ok(data)) => {
                if let Some(r) = &mut self.remaining {
                    *r = r.saturating_sub(data.len() as u64);
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Some(Err(e)) => {
                self.rx = None;
                Poll::Ready(Some(Err(e)))
            }
            None => {
                self.rx = None;
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.rx.is_none() || self.remaining == Some(0)
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

/// Moves one request body from the connection into its `RequestBody`, a piece at a time, only
/// as fast as the handler takes it.
pub struct Pump {
    tx: Option<PollSender<Result<Bytes, BoxError>>>,
    decoder: Decoder,
}

/// How a pump ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Pumped {
    /// The whole body was read off the connection.
    Complete,
    /// The handler dropped the body before its end; the rest is still on the connection.
    Abandoned,
}

impl Pump {
    /// Feeds the body until it is complete, abandoned, or broken (`Err`: the client closed or
    /// broke the framing; the handler's body sees an error too). Reads from `io` into `buf`.
    pub fn poll_pump<R: AsyncRead + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut R,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<Pumped>> {
        loop {
            let Some(tx) = self.tx.as_mut() else {
                return Poll::Ready(Ok(if self.decoder.is_done() {
                    Pumped::Complete
                } else {
                    Pumped::Abandoned
                }));
            };
            if ready!(tx.poll_reserve(cx)).is_err() {
                self.tx = None;
                continue;
            }
            match self.decoder.decode(buf) {
                Ok(Some(data)) => {
                    let _ = tx.send_item(Ok(data));
                    if self.decoder.is_done() {
                        self.tx = None;
                    }
                    continue;
                }
                Ok(None) if self.decoder.is_done() => {
                    tx.abort_send();
                    self.tx = None;
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    let _ = tx.send_item(Err(Box::new(e)));
                    self.tx = None;
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, "invalid chunked body")));
                }
            }
            match ready!(poll_read_buf(cx, io, buf, READ_CHUNK)) {
                Ok(0) => {
                    let _ = tx.send_item(Err("downstream closed mid-body".into()));
                    self.tx = None;
                    return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = tx.send_item(Err("downstream read failed mid-body".into()));
                    self.tx = None;
                    return Poll::Ready(Err(e));
                }
            }
        }
    }
}

/// One read into `buf`, after making room for `chunk` more bytes when it is nearly full.
pub fn poll_read_buf<R: AsyncRead + Unpin>(
    cx: &mut Context<'_>,
    io: &mut R,
    buf: &mut BytesMut,
    chunk: usize,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(chunk);
    }
    tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunked() -> Decoder {
        Decoder::new(Framing::Chunked).unwrap()
    }

    fn decode_all(d: &mut Decoder, input: &[u8]) -> Result<Vec<u8>, InvalidBody> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(data) = d.decode(&mut buf)? {
            out.extend_from_slice(&data);
        }
        Ok(out)
    }

    #[test]
    fn chunked_bodies_decode_byte_by_byte_and_whole() {
        let wire = b"5\r\nhello\r\n6;name=value\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n";
        let mut d = chunked();
        assert_eq!(decode_all(&mut d, wire).unwrap(), b"hello world");
        assert!(d.is_done());
        let mut d = chunked();
        let mut out = Vec::new();
        for byte in wire {
            out.extend(decode_all(&mut d, &[*byte]).unwrap());
        }
        assert_eq!(out, b"hello world");
        assert!(d.is_done());
    }

    #[test]
    fn broken_chunked_framing_is_refused() {
        for wire in [
            &b"5\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhelloX\r\n0\r\n\r\n",
            b"g\r\n",
            b"\r\n",
            b"11111111111111111\r\n",
            b"0\r\nx: 1\n\r\n",
        ] {
            let mut d = chunked();
            assert!(decode_all(&mut d, wire).is_err(), "{:?}", String::from_utf8_lossy(wire));
        }
    }

    #[test]
    fn length_bodies_stop_at_their_length() {
        let mut d = Decoder::new(Framing::Length(3)).unwrap();
        let mut buf = BytesMut::from(&b"abcGET / HTTP/1.1"[..]);
        assert_eq!(d.decode(&mut buf).unwrap().unwrap(), "abc");
        assert!(d.is_done());
        assert_eq!(d.decode(&mut buf).unwrap(), None);
        assert_eq!(&buf[..], b"GET / HTTP/1.1");
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (n, v) in pairs {
            map.append(http::HeaderName::from_bytes(n.as_bytes()).unwrap(), v.parse().unwrap());
        }
        map
    }

    #[test]
    fn framing_follows_rfc_9112_strictly() {
        let v11 = Version::HTTP_11;
        assert_eq!(framing(v11, &headers(&[])), Ok(Framing::Empty));
        assert_eq!(
            framing(v11, &headers(&[("content-length", "12")])),
            Ok(Framing::Length(12))
        );
        assert_eq!(
            framing(v11, &headers(&[("content-length", "12"), ("content-length", "12")])),
            Ok(Framing::Length(12))
        );
        assert_eq!(
            framing(v11, &headers(&[("transfer-encoding", "Chunked")])),
            Ok(Framing::Chunked)
        );
        let status = |h: &[(&str, &str)], v| framing(v, &headers(h)).unwrap_err().status.as_u16();
        assert_eq!(status(&[("content-length", "1"), ("content-length", "2")], v11), 400);
        assert_eq!(status(&[("content-length", "+1")], v11), 400);
        assert_eq!(
            status(&[("content-length", "1"), ("transfer-encoding", "chunked")], v11),
            400
        );
        assert_eq!(status(&[("transfer-encoding", "chunked, chunked")], v11), 400);
        assert_eq!(status(&[("transfer-encoding", "gzip, chunked")], v11), 501);
        assert_eq!(status(&[("transfer-encoding", "chunked")], Version::HTTP_10), 400);
    }
}
