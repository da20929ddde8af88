//! Raw HTTP/2 (RFC 9113) for conformance tests: a client connection that writes hand-built frames
//! after the preface and reads back the gateway's frames, RFC 9113 error codes by name, and just
//! enough HPACK (RFC 7541) to write a request head: literals without Huffman coding or indexing.
//! It does no flow control and decodes no headers.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The client connection preface (RFC 9113 §3.4), without the SETTINGS frame that follows it.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// How long [`H2Conn`] waits for the gateway's next frame or close.
const WAIT: Duration = Duration::from_secs(3);

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;

/// `END_STREAM` on DATA and HEADERS.
pub const END_STREAM: u8 = 0x1;
/// `ACK` on SETTINGS and PING.
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

pub const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;
pub const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
pub const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
/// The HPACK dynamic table size both sides start with (RFC 9113 §6.5.2).
pub const DEFAULT_HEADER_TABLE_SIZE: u32 = 4096;

/// An RFC 9113 §7 error code, as carried by GOAWAY and RST_STREAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    NoError,
    ProtocolError,
    InternalError,
    FlowControlError,
    SettingsTimeout,
    StreamClosed,
    FrameSizeError,
    RefusedStream,
    Cancel,
    CompressionError,
    ConnectError,
    EnhanceYourCalm,
    InadequateSecurity,
    Http11Required,
    Unknown(u32),
}

impl ErrorCode {
    pub fn from_u32(code: u32) -> ErrorCode {
        use ErrorCode::*;
        match code {
            0x0 => NoError,
            0x1 => ProtocolError,
            0x2 => InternalError,
            0x3 => FlowControlError,
            0x4 => SettingsTimeout,
            0x5 => StreamClosed,
            0x6 => FrameSizeError,
            0x7 => RefusedStream,
            0x8 => Cancel,
            0x9 => CompressionError,
            0xa => ConnectError,
            0xb => EnhanceYourCalm,
            0xc => InadequateSecurity,
            0xd => Http11Required,
            other => Unknown(other),
        }
    }
}

/// One frame as read off the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The error code of a GOAWAY frame.
    pub fn goaway(&self) -> Option<ErrorCode> {
        let code = self.payload.get(4..8).filter(|_| self.kind == GOAWAY)?;
        Some(ErrorCode::from_u32(u32::from_be_bytes(code.try_into().unwrap())))
    }

    /// The error code of a RST_STREAM frame.
    pub fn rst_stream(&self) -> Option<ErrorCode> {
        let code = self.payload.get(0..4).filter(|_| self.kind == RST_STREAM)?;
        Some(ErrorCode::from_u32(u32::from_be_bytes(code.try_into().unwrap())))
    }

    /// The value of setting `id` in a SETTINGS frame.
    pub fn setting(&self, id: u16) -> Option<u32> {
        if self.kind != SETTINGS {
            return None;
        }
        self.payload
            .chunks_exact(6)
            .find(|s| u16::from_be_bytes([s[0], s[1]]) == id)
            .map(|s| u32::from_be_bytes([s[2], s[3], s[4], s[5]]))
    }
}

/// A frame's bytes: the 9-octet header (RFC 9113 §4.1), then `payload`.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("payload length");
    assert!(len < 1 << 24, "payload over 2^24-1 octets");
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// SETTINGS parameters `(id, value)`, 6 octets each.
pub fn settings_payload(settings: &[(u16, u32)]) -> Vec<u8> {
    settings
        .iter()
        .flat_map(|(id, value)| id.to_be_bytes().into_iter().chain(value.to_be_bytes()))
        .collect()
}

/// An HPACK integer (RFC 7541 §5.1) with an `n`-bit prefix; `high` holds the representation's
/// pattern bits above the prefix.
pub fn hpack_int(high: u8, n: u32, value: u32) -> Vec<u8> {
    let max = (1u32 << n) - 1;
    if value < max {
        return vec![high | value as u8];
    }
    let mut out = vec![high | max as u8];
    let mut rest = value - max;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
    out
}

/// A dynamic table size update to `size` (RFC 7541 §6.3).
pub fn hpack_size_update(size: u32) -> Vec<u8> {
    hpack_int(0x20, 5, size)
}

/// The field block of `GET http://{authority}{path}`: `:method GET` and `:scheme http` from the
/// static table, `:path` and `:authority` as literals without indexing (RFC 7541 §6.2.2).
pub fn request_block(authority: &str, path: &str) -> Vec<u8> {
    let mut out = vec![0x82, 0x86];
    // Static table index 4 is `:path`, 1 is `:authority`.
    for (index, value) in [(4, path), (1, authority)] {
        out.extend(hpack_int(0x00, 4, index));
        out.extend(hpack_int(0x00, 7, value.len() as u32));
        out.extend_from_slice(value.as_bytes());
    }
    out
}

/// A raw HTTP/2 client connection. Every frame read is kept in [`H2Conn::received`].
pub struct H2Conn {
    tcp: TcpStream,
    unparsed: Vec<u8>,
    pub received: Vec<Frame>,
    closed: bool,
}

impl H2Conn {
    /// Connects, sends the preface and an empty SETTINGS frame, and waits for the server's
    /// SETTINGS (its preface).
    pub async fn open(addr: SocketAddr) -> H2Conn {
        let tcp = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        tcp.set_nodelay(true).unwrap();
        let mut conn = H2Conn {
            tcp,
            unparsed: Vec::new(),
            received: Vec::new(),
            closed: false,
        };
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        conn.send(&hello).await;
        let first = conn.next_frame().await.expect("server preface");
        assert!(
            first.kind == SETTINGS && first.flags & ACK == 0,
            "server preface: {first:?}"
        );
        conn
    }

    /// The server's preface SETTINGS frame.
    pub fn server_settings(&self) -> &Frame {
        &self.received[0]
    }

    /// Writes `bytes` (one or more frames) in one go.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.tcp.write_all(bytes).await.expect("write frames");
    }

    /// The next frame, or `None` once the server has closed the connection (FIN or reset);
    /// panics if neither comes within 3 s.
    pub async fn next_frame(&mut self) -> Option<Frame> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(frame) = self.parse_one() {
                self.received.push(frame.clone());
                return Some(frame);
            }
            if self.closed {
                return None;
            }
            let mut buf = [0u8; 16 * 1024];
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.tcp.read(&mut buf)).await {
                Err(_) => panic!(
                    "no frame and no close within {WAIT:?}; frames so far: {:?}",
                    self.received
                ),
                Ok(Ok(0)) | Ok(Err(_)) => self.closed = true,
                Ok(Ok(n)) => self.unparsed.extend_from_slice(&buf[..n]),
            }
        }
    }

    /// Reads until a frame matches `stop` (returned) or the server closes (`None`).
    pub async fn read_until(&mut self, stop: impl Fn(&Frame) -> bool) -> Option<Frame> {
        while let Some(frame) = self.next_frame().await {
            if stop(&frame) {
                return Some(frame);
            }
        }
        None
    }

    /// Reads every frame until the server closes the connection; panics if it stays open.
    pub async fn read_to_close(&mut self) -> &[Frame] {
        while self.next_frame().await.is_some() {}
        &self.received
    }

    fn parse_one(&mut self) -> Option<Frame> {
        let h = self.unparsed.get(..9)?;
        let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
        if self.unparsed.len() < 9 + len {
            return None;
        }
        let frame = Frame {
            kind: h[3],
            flags: h[4],
            stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
            payload: self.unparsed[9..9 + len].to_vec(),
        };
        self.unparsed.drain(..9 + len);
        Some(frame)
    }
}
