//! Raw byte-level origins for TCP and TLS-passthrough tests, without hyper in the way:
//! [`RawOrigin`] answers hand-written HTTP/1.1 (keep-alive) for `GET /politics` (the seed's page
//! size) and `GET /bytes/N`; [`SinkOrigin`] reads a stream to EOF and answers with its length and
//! SHA-256, for checking that large transfers (100 MiB) arrive intact. Both run on the
//! [`Server`](super::origin::Server) accept loop: own runtime, optional TLS, stopped on drop.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::origin::{pattern_chunk, ConnInfo, Io, Server, PATTERN_CHUNK};

/// Size of `edition.cnn.com/politics` in the seed's HTTPS scenario.
pub const POLITICS_SIZE: u64 = 151_654;
/// Longest request head the raw origin reads before giving up on the connection.
const MAX_HEAD: usize = 64 * 1024;

/// One request head a [`RawOrigin`] parsed.
#[derive(Debug, Clone)]
pub struct RawRequest {
    pub method: String,
    pub path: String,
    /// The whole head as received (request line and headers).
    pub head: String,
    pub peer: SocketAddr,
}

/// Hand-written HTTP/1.1 over TCP or TLS: `GET /politics` → 200 with a 151654-byte body,
/// `GET /bytes/N` → 200 with N pattern bytes, anything else → 404; keep-alive unless the request
/// says `connection: close`.
pub struct RawOrigin {
    server: Server,
    requests: Arc<Mutex<Vec<RawRequest>>>,
    counters: Arc<Counters>,
}

#[derive(Default)]
struct Counters {
    received: AtomicU64,
    sent: AtomicU64,
}

impl RawOrigin {
    pub fn start(bind: SocketAddr, tls: Option<Arc<rustls::ServerConfig>>) -> RawOrigin {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let counters = Arc::new(Counters::default());
        let (log, c) = (requests.clone(), counters.clone());
        let server = Server::start(bind, tls, move |io, info| {
            let (log, c) = (log.clone(), c.clone());
            async move {
                let _ = serve_raw(io, info, log, c).await;
            }
        });
        RawOrigin {
            server,
            requests,
            counters,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// TCP connections accepted.
    pub fn connections(&self) -> usize {
        self.server.connections()
    }

    /// Connections past their TLS handshake, with SNI and ALPN.
    pub fn established(&self) -> Vec<ConnInfo> {
        self.server.established()
    }

    pub fn requests(&self) -> Vec<RawRequest> {
        self.requests.lock().unwrap().clone()
    }

    /// Application bytes read from clients (after TLS decryption), all connections.
    pub fn bytes_received(&self) -> u64 {
        self.counters.received.load(Ordering::SeqCst)
    }

    /// Application bytes written to clients (before TLS encryption), all connections.
    pub fn bytes_sent(&self) -> u64 {
        self.counters.sent.load(Ordering::SeqCst)
    }
}

async fn serve_raw(
    mut io: Box<dyn Io>,
    info: ConnInfo,
    log: Arc<Mutex<Vec<RawRequest>>>,
    counters: Arc<Counters>,
) -> io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    loop {
        // Read until a full head is buffered; EOF between requests ends the connection.
        let head_end = loop {
            if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos + 4;
            }
            if buf.len() > MAX_HEAD {
                return Ok(());
            }
            let mut chunk = [0u8; 4096];
            let n = io.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            counters.received.fetch_add(n as u64, Ordering::SeqCst);
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        buf.drain(..head_end);
        let mut words = head.split_whitespace();
        let method = words.next().unwrap_or("").to_string();
        let path = words.next().unwrap_or("").to_string();
        let lower = head.to_ascii_lowercase();
        let close = lower.contains("\r\nconnection: close");
        let content_length: u64 = lower
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        log.lock().unwrap().push(RawRequest {
            method: method.clone(),
            path: path.clone(),
            head,
            peer: info.peer,
        });
        // Skip a request body, if any.
        let mut to_skip = content_length;
        let buffered = to_skip.min(buf.len() as u64) as usize;
        buf.drain(..buffered);
        to_skip -= buffered as u64;
        while to_skip > 0 {
            let mut chunk = [0u8; 16384];
            let want = to_skip.min(chunk.len() as u64) as usize;
            let n = io.read(&mut chunk[..want]).await?;
            if n == 0 {
                return Ok(());
            }
            counters.received.fetch_add(n as u64, Ordering::SeqCst);
            to_skip -= n as u64;
        }

        let body_len = match (method.as_str(), path.as_str()) {
            ("GET", "/politics") => Some(POLITICS_SIZE),
            ("GET", p) => p.strip_prefix("/bytes/").and_then(|n| n.parse::<u64>().ok()),
            _ => None,
        };
        let connection = if close { "close" } else { "keep-alive" };
        let head = match body_len {
            Some(n) => format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\n\
                 content-length: {n}\r\nconnection: {connection}\r\n\r\n"
            ),
            None => format!(
                "HTTP/1.1 404 Not Found\r\ncontent-length: 10\r\nconnection: {connection}\r\n\
                 \r\nnot found\n"
            ),
        };
        io.write_all(head.as_bytes()).await?;
        counters.sent.fetch_add(head.len() as u64, Ordering::SeqCst);
        let mut offset = 0u64;
        let total = body_len.unwrap_or(0);
        while offset < total {
            let len = (total - offset).min(PATTERN_CHUNK as u64) as usize;
            io.write_all(&pattern_chunk(offset, len)).await?;
            counters.sent.fetch_add(len as u64, Ordering::SeqCst);
            offset += len as u64;
        }
        io.flush().await?;
        if close {
            io.shutdown().await?;
            return Ok(());
        }
    }
}

/// What a [`SinkOrigin`] read on one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkResult {
    pub bytes: u64,
    /// Lowercase hex SHA-256 of everything read.
    pub sha256: String,
}

impl SinkResult {
    /// Parses the reply line `bytes=N sha256=HEX`.
    pub fn parse(reply: &str) -> Option<SinkResult> {
        let mut bytes = None;
        let mut sha256 = None;
        for word in reply.split_whitespace() {
            if let Some(v) = word.strip_prefix("bytes=") {
                bytes = v.parse().ok();
            } else if let Some(v) = word.strip_prefix("sha256=") {
                sha256 = Some(v.to_string());
            }
        }
        Some(SinkResult {
            bytes: bytes?,
            sha256: sha256?,
        })
    }

    /// The line the sink writes back.
    pub fn reply_line(&self) -> String {
        format!("bytes={} sha256={}\n", self.bytes, self.sha256)
    }
}

/// Reads each connection to EOF (the client half-closes; over TLS, `close_notify`), then replies
/// `bytes=N sha256=HEX\n` and closes.
pub struct SinkOrigin {
    server: Server,
    results: Arc<Mutex<Vec<SinkResult>>>,
}

impl SinkOrigin {
    pub fn start(bind: SocketAddr, tls: Option<Arc<rustls::ServerConfig>>) -> SinkOrigin {
        let results = Arc::new(Mutex::new(Vec::new()));
        let log = results.clone();
        let server = Server::start(bind, tls, move |mut io, _info| {
            let log = log.clone();
            async move {
                let mut hasher = Sha256::new();
                let mut bytes = 0u64;
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match io.read(&mut buf).await {
                        Ok(0) => break,
                        Ok(n) => {
                            hasher.update(&buf[..n]);
                            bytes += n as u64;
                        }
                        Err(_) => return,
                    }
                }
                let result = SinkResult {
                    bytes,
                    sha256: hasher.finish_hex(),
                };
                log.lock().unwrap().push(result.clone());
                let _ = io.write_all(result.reply_line().as_bytes()).await;
                let _ = io.shutdown().await;
            }
        });
        SinkOrigin { server, results }
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    pub fn connections(&self) -> usize {
        self.server.connections()
    }

    pub fn established(&self) -> Vec<ConnInfo> {
        self.server.established()
    }

    /// One result per connection that reached EOF.
    pub fn results(&self) -> Vec<SinkResult> {
        self.results.lock().unwrap().clone()
    }
}

/// Streaming SHA-256 (aws-lc-rs, reached through rustls's hash provider).
pub struct Sha256 {
    ctx: Box<dyn rustls::crypto::hash::Context>,
}

impl Default for Sha256 {
    fn default() -> Self {
        Self::new()
    }
}

impl Sha256 {
    pub fn new() -> Self {
        let suite = rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256;
        let rustls::SupportedCipherSuite::Tls13(suite) = suite else {
            unreachable!("a TLS 1.3 suite")
        };
        Sha256 {
            ctx: suite.common.hash_provider.start(),
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        self.ctx.update(data);
    }

    pub fn finish_hex(self) -> String {
        let out = self.ctx.finish();
        out.as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Lowercase hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(data);
    h.finish_hex()
}

/// What a sink answers for the first `n` bytes of the pattern (what a client sending
/// [`pattern_chunk`]s from offset 0 should see).
pub fn pattern_sink_result(n: u64) -> SinkResult {
    let mut h = Sha256::new();
    let mut offset = 0;
    while offset < n {
        let len = (n - offset).min(PATTERN_CHUNK as u64) as usize;
        h.update(&pattern_chunk(offset, len));
        offset += len as u64;
    }
    SinkResult {
        bytes: n,
        sha256: h.finish_hex(),
    }
}
