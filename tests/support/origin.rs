//! Real HTTP origins on loopback for the proxy to reach: hyper's auto server (HTTP/1.1 and h2:
//! prior-knowledge h2c on plain TCP, ALPN `h2`/`http/1.1` with TLS), with behaviour chosen by path
//! (see [`Origin`]). Each server runs on its own small tokio runtime, so it keeps answering while a
//! test blocks (on `curl`, on `std::process`), and dropping it stops it. It records the connections
//! it accepted and every request it saw, so a test can assert what reached the origin.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::runtime::Runtime;

/// Where the seed's origin redirects plain-HTTP `/politics`.
pub const POLITICS_LOCATION: &str = "https://edition.cnn.com/politics";
/// Body of every path without a special meaning.
pub const HELLO: &str = "hello from origin\n";
/// Bound on the TLS handshake of an incoming connection.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A byte stream a connection handler gets: a TCP stream or a TLS stream over one.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// What the TLS handshake of a connection settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    pub sni: Option<String>,
    pub alpn: Option<Vec<u8>>,
}

/// One accepted connection, after its TLS handshake if any.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: Option<TlsInfo>,
}

/// A loopback accept loop on its own runtime (2 worker threads); dropping it stops the runtime,
/// which closes the listener and every connection.
pub struct Server {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    established: Arc<Mutex<Vec<ConnInfo>>>,
    runtime: Option<Runtime>,
}

impl Server {
    /// Binds `bind` (SO_REUSEADDR, so fixed ports can be reused across tests) and calls `handler`
    /// for each connection, after the TLS handshake when `tls` is given.
    pub fn start<F, Fut>(bind: SocketAddr, tls: Option<Arc<rustls::ServerConfig>>, handler: F) -> Server
    where
        F: Fn(Box<dyn Io>, ConnInfo) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        assert!(bind.ip().is_loopback(), "test servers bind loopback only");
        let std_listener = bind_reuse(bind).unwrap_or_else(|e| panic!("bind {bind}: {e}"));
        let addr = std_listener.local_addr().expect("local addr");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("test-origin")
            .enable_all()
            .build()
            .expect("origin runtime");
        let accepted = Arc::new(AtomicUsize::new(0));
        let established = Arc::new(Mutex::new(Vec::new()));
        let (acc, est, handler) = (accepted.clone(), established.clone(), Arc::new(handler));
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener).expect("from_std");
            let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
            loop {
                let Ok((tcp, peer)) = listener.accept().await else {
                    // E.g. EMFILE: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                acc.fetch_add(1, Ordering::SeqCst);
                let _ = tcp.set_nodelay(true);
                let (acceptor, est, handler) = (acceptor.clone(), est.clone(), handler.clone());
                tokio::spawn(async move {
                    let (io, tls): (Box<dyn Io>, _) = match acceptor {
                        None => (Box::new(tcp), None),
                        Some(acceptor) => {
                            let hs = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
                            let Ok(Ok(stream)) = hs.await else { return };
                            let conn = stream.get_ref().1;
                            let info = TlsInfo {
                                sni: conn.server_name().map(str::to_string),
                                alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
                            };
                            (Box::new(stream), Some(info))
                        }
                    };
                    let info = ConnInfo { peer, tls };
                    est.lock().unwrap().push(info.clone());
                    handler(io, info).await;
                });
            }
        });
        Server {
            addr,
            accepted,
            established,
            runtime: Some(runtime),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// TCP connections accepted (including those whose TLS handshake failed).
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Connections that completed their TLS handshake (all accepted ones for plain TCP).
    pub fn established(&self) -> Vec<ConnInfo> {
        self.established.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

fn bind_reuse(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// A request as it reached the origin.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    pub method: String,
    /// Path and query.
    pub path: String,
    /// `HTTP/1.0`, `HTTP/1.1` or `HTTP/2`.
    pub version: String,
    /// The URI authority (h2 `:authority`) or else the `host` header.
    pub authority: Option<String>,
    /// Every header, names lowercase, in order.
    pub headers: Vec<(String, String)>,
    pub peer: SocketAddr,
    pub sni: Option<String>,
}

impl RequestRecord {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }
}

/// An HTTP origin. By path:
/// - `/politics` → 301, `location: https://edition.cnn.com/politics`, empty body;
/// - `/bytes/N` → 200 with N bytes of [`pattern`] and `content-length: N`; `/chunked/N` the
///   same without a length (sent chunked);
/// - `/echo` → 200, JSON `{method, path, version, authority, headers{name: value}, body_length,
///   sni}` (repeated header values joined with `, `);
/// - `/status/N` → status N, empty body; `/slow/MS` → 200 after MS ms;
/// - `/reset-mid-body` → `content-length: 100000`, 1000 bytes, then the connection (h1) or the
///   stream (h2) is dropped; `/hang` → never answers;
/// - anything else → 200 `hello from origin\n`.
pub struct Origin {
    server: Server,
    requests: Arc<Mutex<Vec<RequestRecord>>>,
}

impl Origin {
    /// Serves on `bind` (e.g. `127.0.0.10:0`, or `127.0.0.10:80` as the seed's external host);
    /// with `tls`, over TLS (offer ALPN `h2`/`http/1.1` in the config to negotiate h2).
    pub fn start(bind: SocketAddr, tls: Option<Arc<rustls::ServerConfig>>) -> Origin {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = requests.clone();
        let server = Server::start(bind, tls, move |io, info| {
            let log = log.clone();
            async move {
                let service = hyper::service::service_fn(move |req| handle(req, info.clone(), log.clone()));
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = builder.serve_connection(TokioIo::new(io), service).await;
            }
        });
        Origin { server, requests }
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.server.connections()
    }

    /// Connections past their TLS handshake, with SNI and ALPN.
    pub fn established(&self) -> Vec<ConnInfo> {
        self.server.established()
    }

    /// Every request seen so far, in arrival order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.requests.lock().unwrap().clone()
    }

    /// Polls (every 10 ms, up to `timeout`) until at least `n` requests arrived; panics otherwise.
    pub fn wait_for_requests(&self, n: usize, timeout: Duration) -> Vec<RequestRecord> {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self.requests();
            if seen.len() >= n {
                return seen;
            }
            assert!(
                Instant::now() < deadline,
                "origin {}: {} request(s) after {timeout:?}, wanted {n}: {seen:?}",
                self.addr(),
                seen.len()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn version_str(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/?",
    }
}

async fn handle(
    req: Request<Incoming>,
    info: ConnInfo,
    log: Arc<Mutex<Vec<RequestRecord>>>,
) -> Result<Response<OriginBody>, io::Error> {
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(n, v)| {
            let value = String::from_utf8_lossy(v.as_bytes()).into_owned();
            (n.as_str().to_string(), value)
        })
        .collect();
    let authority = req.uri().authority().map(|a| a.to_string()).or_else(|| {
        let host = headers.iter().find(|(n, _)| n == "host");
        host.map(|(_, v)| v.clone())
    });
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_string(), |p| p.to_string());
    let record = RequestRecord {
        method: req.method().to_string(),
        path: path.clone(),
        version: version_str(req.version()).to_string(),
        authority,
        headers,
        peer: info.peer,
        sni: info.tls.as_ref().and_then(|t| t.sni.clone()),
    };
    log.lock().unwrap().push(record.clone());

    // Read the whole request body, counting it (never stored: uploads may be large).
    let mut body = req.into_body();
    let mut body_length: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(io::Error::other)?;
        if let Some(data) = frame.data_ref() {
            body_length += data.len() as u64;
        }
    }

    let route = record.path.split('?').next().unwrap_or("");
    let number = |prefix: &str| -> Option<u64> { route.strip_prefix(prefix)?.parse().ok() };
    let response = if route == "/politics" {
        Response::builder()
            .status(StatusCode::MOVED_PERMANENTLY)
            .header("location", POLITICS_LOCATION)
            .body(OriginBody::full(""))
    } else if let Some(n) = number("/bytes/") {
        Response::builder()
            .header("content-type", "application/octet-stream")
            .header("content-length", n)
            .body(OriginBody::pattern(n))
    } else if let Some(n) = number("/chunked/") {
        Response::builder()
            .header("content-type", "application/octet-stream")
            .body(OriginBody::pattern_unsized(n))
    } else if route == "/echo" {
        let mut headers = serde_json::Map::new();
        for (name, value) in &record.headers {
            match headers.get_mut(name) {
                Some(serde_json::Value::String(s)) => *s = format!("{s}, {value}"),
                _ => {
                    headers.insert(name.clone(), value.clone().into());
                }
            }
        }
        let json = serde_json::json!({
            "method": record.method,
            "path": record.path,
            "version": record.version,
            "authority": record.authority,
            "headers": headers,
            "body_length": body_length,
            "sni": record.sni,
        });
        Response::builder()
            .header("content-type", "application/json")
            .body(OriginBody::full(json.to_string()))
    } else if let Some(n) = number("/status/") {
        let status = u16::try_from(n)
            .ok()
            .and_then(|n| StatusCode::from_u16(n).ok())
            .unwrap_or(StatusCode::BAD_REQUEST);
        Response::builder().status(status).body(OriginBody::full(""))
    } else if let Some(ms) = number("/slow/") {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Response::builder().body(OriginBody::full(HELLO))
    } else if route == "/reset-mid-body" {
        Response::builder()
            .header("content-length", 100_000)
            .body(OriginBody::reset_after(1000))
    } else if route == "/hang" {
        std::future::pending::<()>().await;
        unreachable!("pending never completes")
    } else {
        Response::builder()
            .header("content-type", "text/plain")
            .body(OriginBody::full(HELLO))
    };
    Ok(response.expect("valid response"))
}

/// Byte `i` of the deterministic pattern that `/bytes/N` and the raw origins send.
pub fn pattern_byte(i: u64) -> u8 {
    (i % 251) as u8
}

/// `len` bytes of the pattern starting at byte `offset`.
pub fn pattern(offset: u64, len: usize) -> Vec<u8> {
    (0..len as u64).map(|i| pattern_byte(offset + i)).collect()
}

/// Largest chunk [`pattern_chunk`] returns.
pub const PATTERN_CHUNK: usize = 251 * 261;

/// Up to [`PATTERN_CHUNK`] bytes of the pattern from `offset`, shared (no copy per chunk).
pub fn pattern_chunk(offset: u64, len: usize) -> Bytes {
    static BLOCK: OnceLock<Bytes> = OnceLock::new();
    let block = BLOCK.get_or_init(|| Bytes::from(pattern(0, PATTERN_CHUNK + 251)));
    let len = len.min(PATTERN_CHUNK);
    let start = (offset % 251) as usize;
    block.slice(start..start + len)
}

/// The response bodies the origin sends: a buffer, a pattern stream, or a body that fails.
pub struct OriginBody {
    kind: BodyKind,
}

enum BodyKind {
    Full(Option<Bytes>),
    Pattern {
        offset: u64,
        remaining: u64,
        /// Whether the length is announced (size hint): else hyper sends it chunked.
        sized: bool,
    },
    /// The chunk, then a pause (so hyper flushes it to the socket), then an error.
    ResetAfter {
        chunk: Option<Bytes>,
        pause: Pin<Box<tokio::time::Sleep>>,
    },
}

/// How long a `/reset-mid-body` response waits between its bytes and the reset.
const RESET_PAUSE: Duration = Duration::from_millis(100);

impl OriginBody {
    pub fn full(data: impl Into<Bytes>) -> Self {
        let data: Bytes = data.into();
        OriginBody {
            kind: BodyKind::Full((!data.is_empty()).then_some(data)),
        }
    }

    pub fn pattern(len: u64) -> Self {
        OriginBody {
            kind: BodyKind::Pattern {
                offset: 0,
                remaining: len,
                sized: true,
            },
        }
    }
    /// The pattern without a known length, so that it goes out chunked.
    pub fn pattern_unsized(len: u64) -> Self {
        OriginBody {
            kind: BodyKind::Pattern {
                offset: 0,
                remaining: len,
                sized: false,
            },
        }
    }

    /// `n` pattern bytes, then an error (hyper then drops the connection or resets the stream).
    pub fn reset_after(n: usize) -> Self {
        OriginBody {
            kind: BodyKind::ResetAfter {
                chunk: Some(pattern_chunk(0, n)),
                pause: Box::pin(tokio::time::sleep(RESET_PAUSE)),
            },
        }
    }
}

impl Body for OriginBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let frame = match &mut self.kind {
            BodyKind::Full(data) => data.take().map(|d| Ok(Frame::data(d))),
            BodyKind::Pattern { offset, remaining, .. } => {
                if *remaining == 0 {
                    None
                } else {
                    let len = (*remaining).min(PATTERN_CHUNK as u64) as usize;
                    let chunk = pattern_chunk(*offset, len);
                    *offset += len as u64;
                    *remaining -= len as u64;
                    Some(Ok(Frame::data(chunk)))
                }
            }
            BodyKind::ResetAfter { chunk, pause } => match chunk.take() {
                Some(c) => Some(Ok(Frame::data(c))),
                None => {
                    std::task::ready!(pause.as_mut().poll(cx));
                    Some(Err(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        "origin drops the response mid-body on purpose",
                    )))
                }
            },
        };
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            BodyKind::Full(data) => data.is_none(),
            BodyKind::Pattern { remaining, .. } => *remaining == 0,
            BodyKind::ResetAfter { .. } => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            BodyKind::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            BodyKind::Pattern {
                remaining, sized: true, ..
            } => SizeHint::with_exact(*remaining),
            BodyKind::Pattern { .. } => SizeHint::default(),
            BodyKind::ResetAfter { .. } => SizeHint::with_exact(100_000),
        }
    }
}
