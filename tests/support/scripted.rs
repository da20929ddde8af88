//! A byte-level HTTP/1.1 origin for codec tests (issue 16): it records every byte each
//! connection sent it, splits them into requests itself (a head, then a `content-length` or
//! chunked body), and answers each request with the raw bytes its path is scripted to (default
//! `200` with `ok`), so a test sees exactly what the gateway forwarded and can make the gateway
//! parse exactly what it wants. `/ws` answers `101` and then echoes bytes (a WebSocket-style
//! upgrade); `/close/...` closes after its answer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::origin::{Io, Server};

/// What the origin saw of one connection.
#[derive(Debug, Clone, Default)]
pub struct SeenConnection {
    /// Every byte received, in order.
    pub bytes: Vec<u8>,
    /// The heads of the requests it parsed (request line and headers, without the blank line).
    pub heads: Vec<String>,
    /// The body of each request as received on the wire (chunked framing included).
    pub bodies: Vec<Vec<u8>>,
}

/// See the module doc.
pub struct ScriptedOrigin {
    server: Server,
    seen: Arc<Mutex<Vec<Arc<Mutex<SeenConnection>>>>>,
}

type Script = HashMap<String, Vec<u8>>;

impl ScriptedOrigin {
    /// Listens on `bind`; `script` maps a request path to the raw bytes answered.
    pub fn start(bind: SocketAddr, script: &[(&str, Vec<u8>)]) -> ScriptedOrigin {
        let script: Arc<Script> = Arc::new(script.iter().map(|(p, r)| (p.to_string(), r.clone())).collect());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let all = seen.clone();
        let server = Server::start(bind, None, move |io, _info| {
            let conn = Arc::new(Mutex::new(SeenConnection::default()));
            all.lock().unwrap().push(conn.clone());
            let script = script.clone();
            async move {
                serve(io, conn, script).await;
            }
        });
        ScriptedOrigin { server, seen }
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Connections accepted so far, each as seen until now.
    pub fn connections(&self) -> Vec<SeenConnection> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.lock().unwrap().clone())
            .collect()
    }

    /// Every request head, all connections.
    pub fn heads(&self) -> Vec<String> {
        self.connections().into_iter().flat_map(|c| c.heads).collect()
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The length of the body at the start of `buf` for a request with `head`, once all of it has
/// arrived.
fn body_len(head: &str, buf: &[u8]) -> Option<usize> {
    let lower = head.to_ascii_lowercase();
    if lower.contains("\r\ntransfer-encoding: chunked") {
        return find(buf, b"0\r\n\r\n").map(|at| at + 5);
    }
    let length = lower
        .split("\r\n")
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    (buf.len() >= length).then_some(length)
}

async fn serve(mut io: Box<dyn Io>, conn: Arc<Mutex<SeenConnection>>, script: Arc<Script>) {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        // Answer every whole request buffered so far.
        while let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let Some(len) = body_len(&head, &buf[end + 4..]) else {
                break;
            };
            let body = buf[end + 4..end + 4 + len].to_vec();
            buf.drain(..end + 4 + len);
            let path = head.split(' ').nth(1).unwrap_or("").to_string();
            {
                let mut c = conn.lock().unwrap();
                c.heads.push(head.clone());
                c.bodies.push(body);
            }
            if path == "/ws" {
                let _ = io
                    .write_all(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n")
                    .await;
                // Echo from here on: what came after the head first.
                let _ = io.write_all(&buf).await;
                loop {
                    match io.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            conn.lock().unwrap().bytes.extend_from_slice(&chunk[..n]);
                            if io.write_all(&chunk[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            }
            let answer = script
                .get(&path)
                .cloned()
                .unwrap_or_else(|| b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec());
            if io.write_all(&answer).await.is_err() {
                return;
            }
            if path.starts_with("/close/") {
                let _ = io.shutdown().await;
                return;
            }
        }
        match io.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                conn.lock().unwrap().bytes.extend_from_slice(&chunk[..n]);
                buf.extend_from_slice(&chunk[..n]);
            }
        }
    }
}
