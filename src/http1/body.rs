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

use crate::BoxError;

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

/// A request the codec refuses: answered, then the connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected {
    pub status: StatusCode,
    pub details: &'static str,
    /// A protocol error of the client (Envoy's `DPE` flag), not a request refused for what it
    /// asks (a missing Host).
    pub protocol_error: bool,
}

pub(super) const fn rejected(status: StatusCode, details: &'static str) -> Rejected {
    Rejected {
        status,
        details,
        protocol_error: true,
    }
}

/// RFC 9112 §6.3, strictly, as Envoy does: both `Transfer-Encoding` and `Content-Length` is a
/// 400 (a smuggling vector), so is `Transfer-Encoding` on HTTP/1.0 and more than one length,
/// even equal ones (`5, 5` or two fields: Envoy 1.40 answers 400 `http1.codec_error`, and
/// forwarding them would hand the ambiguity on); a coding other than a single `chunked` is a
/// 501.
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
            if length.is_some() {
                return Err(rejected(StatusCode::BAD_REQUEST, "http1.codec_error"));
            }
            length = Some(n);
        }
    }
    Ok(match length {
        None | Some(0) => Framing::Empty,
        Some(n) => Framing::Length(n),
    })
}

/// `1*DIGIT`; leading zeros are valid (RFC 9110 §8.6) and do not count toward the bound.
pub fn parse_length(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let significant = text.trim_start_matches('0');
    if significant.len() > 19 {
        return None;
    }
    Some(if significant.is_empty() {
        0
    } else {
        significant.parse().ok()?
    })
}

/// Decodes one body from the connection's read buffer.
#[derive(Debug)]
pub enum Decoder {
    Length(u64),
    Chunked(Chunked),
}

#[derive(Debug)]
pub enum Chunked {
    /// Reading a chunk-size line: the size so far, significant digits seen, bytes of the line,
    /// where in the line the parser is, CR seen.
    Size {
        size: u64,
        digits: u8,
        len: usize,
        at: SizeLine,
        cr: bool,
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

/// Where a chunk-size line parser is (RFC 9112 §7.1.1:
/// `chunk-size *( BWS ";" BWS ext-name [ BWS "=" BWS ext-val ] )`, ext-val a token or a
/// quoted-string).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeLine {
    /// In the hex digits (none yet when `digits` and `len` are 0).
    Digits,
    /// Whitespace after the size or a value: only `;` (or the CR) may follow.
    AfterItem,
    /// After `;`, before the extension's name.
    BeforeName,
    Name,
    /// After a name: `=`, `;` or the CR.
    AfterName,
    /// After `=`, before the value.
    BeforeValue,
    Token,
    Quoted,
    /// After a backslash in a quoted string.
    QuotedPair,
    /// After a quoted string's closing quote.
    QuotedEnd,
}

/// A chunk-size line starts here.
const SIZE_LINE: Chunked = Chunked::Size {
    size: 0,
    digits: 0,
    len: 0,
    at: SizeLine::Digits,
    cr: false,
};

/// `tchar` of RFC 9110 §5.6.2.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
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
            Framing::Chunked => Some(Decoder::Chunked(SIZE_LINE)),
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
                len,
                at,
                cr,
            } => {
                *len += 1;
                if *len > MAX_CHUNK_LINE {
                    return Err(InvalidBody("chunk-size line too long"));
                }
                if *cr {
                    if byte != b'\n' {
                        return Err(InvalidBody("CR without LF after chunk size"));
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
                // Whitespace is only BWS before `;` or `=`: a line may not end in it.
                let ends_item = matches!(
                    at,
                    SizeLine::Digits | SizeLine::Name | SizeLine::Token | SizeLine::QuotedEnd
                );
                *at = match (*at, byte) {
                    (SizeLine::Quoted, b'"') => SizeLine::QuotedEnd,
                    (SizeLine::Quoted, b'\\') => SizeLine::QuotedPair,
                    (SizeLine::Quoted, b'\t' | b' ' | 0x21..=0x7e | 0x80..=0xff) => SizeLine::Quoted,
                    (SizeLine::QuotedPair, b'\t' | b' ' | 0x21..=0x7e | 0x80..=0xff) => SizeLine::Quoted,
                    (SizeLine::Quoted | SizeLine::QuotedPair, _) => {
                        return Err(InvalidBody("invalid quoted chunk extension value"))
                    }
                    (_, b'\r') if ends_item && *len > 1 => {
                        *cr = true;
                        *at
                    }
                    (_, b'\n') => return Err(InvalidBody("bare LF in chunk size line")),
                    (SizeLine::Digits, _) if byte.is_ascii_hexdigit() => {
                        let digit = u64::from((byte as char).to_digit(16).unwrap_or(0));
                        // Leading zeros are valid and do not count toward the bound.
                        if *digits > 0 || digit > 0 {
                            if *digits >= 16 {
                                return Err(InvalidBody("chunk size too large"));
                            }
                            *digits += 1;
                        }
                        *size = *size * 16 + digit;
                        SizeLine::Digits
                    }
                    (SizeLine::Digits, _) if *len == 1 => return Err(InvalidBody("missing chunk size")),
                    // BWS: whitespace around `;` and `=`.
                    (SizeLine::Digits | SizeLine::Token | SizeLine::QuotedEnd | SizeLine::AfterItem, b' ' | b'\t') => {
                        SizeLine::AfterItem
                    }
                    (SizeLine::Name | SizeLine::AfterName, b' ' | b'\t') => SizeLine::AfterName,
                    (SizeLine::BeforeName | SizeLine::BeforeValue, b' ' | b'\t') => *at,
                    (
                        SizeLine::Digits
                        | SizeLine::Token
                        | SizeLine::QuotedEnd
                        | SizeLine::AfterItem
                        | SizeLine::Name
                        | SizeLine::AfterName,
                        b';',
                    ) => SizeLine::BeforeName,
                    (SizeLine::BeforeName | SizeLine::Name, _) if is_tchar(byte) => SizeLine::Name,
                    (SizeLine::Name | SizeLine::AfterName, b'=') => SizeLine::BeforeValue,
                    (SizeLine::BeforeValue, b'"') => SizeLine::Quoted,
                    (SizeLine::BeforeValue | SizeLine::Token, _) if is_tchar(byte) => SizeLine::Token,
                    (SizeLine::Digits, _) => return Err(InvalidBody("invalid chunk size")),
                    _ => return Err(InvalidBody("invalid chunk extension")),
                };
                Ok(())
            }
            Chunked::DataEnd(cr) => {
                match (*cr, byte) {
                    (false, b'\r') => *cr = true,
                    (true, b'\n') => *self = SIZE_LINE,
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

    /// Issue 16: leading zeros in a chunk size are valid (and not counted toward its bound);
    /// extensions follow RFC 9112 §7.1.1 (`;` first, a token name, a token or quoted value,
    /// whitespace only around `;` and `=`).
    #[test]
    fn chunk_sizes_with_leading_zeros_and_valid_extensions_decode() {
        let wire = b"000000000000000000005\r\nhello\r\n6 ; a = b ;c;d=\"x \\\" y\"\r\n world\r\n00\r\n\r\n";
        let mut d = chunked();
        assert_eq!(decode_all(&mut d, wire).unwrap(), b"hello world");
        assert!(d.is_done());
    }

    #[test]
    fn broken_chunked_framing_is_refused() {
        for wire in [
            &b"5\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhelloX\r\n0\r\n\r\n",
            b"g\r\n",
            b"\r\n",
            b" 5\r\n",
            b"11111111111111111\r\n",
            b"0\r\nx: 1\n\r\n",
            // Extensions: no `;`, an empty name, a bad character, an open quote, whitespace
            // at the end, a value that is no token.
            b"5 x\r\n",
            b"5;\r\n",
            b"5;=b\r\n",
            b"5;a=\x01\r\n",
            b"5;a=\"b\r\n",
            b"5 \r\n",
            b"5;a \r\n",
            b"5;a=b c\r\n",
            b"5;a=\"b\"c\r\n",
            b"5;a=(b)\r\n",
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
        // Leading zeros are valid; any second length, even an equal one, is refused.
        assert_eq!(
            framing(v11, &headers(&[("content-length", "0000000000000000000000012")])),
            Ok(Framing::Length(12))
        );
        for twice in [
            &[("content-length", "12"), ("content-length", "12")][..],
            &[("content-length", "12, 12")],
        ] {
            assert_eq!(
                framing(v11, &headers(twice)),
                Err(rejected(StatusCode::BAD_REQUEST, "http1.codec_error"))
            );
        }
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
