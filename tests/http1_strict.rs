//! Issue 16: the HTTP/1.1 codec as strict as Envoy 1.40 (and stricter where RFC 9112 says so),
//! through the real binary and a byte-level origin that records what it received
//! ([`ScriptedOrigin`]). The expected answers and log lines were taken from Envoy 1.40 on the
//! same raw requests (an HCM with Istio's gateway settings and a `prefix: /` route); where
//! egressd differs on purpose, the case says so.
//!
//! Loopback address 127.0.0.190 (origin).

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::egressd::{Egressd, EgressdOptions};
use support::scripted::ScriptedOrigin;

const HOST: &str = "strict.example.com";
const ORIGIN_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 190);

fn istio_yaml(origin_port: u16) -> String {
    istio_yaml_for(HOST, ORIGIN_IP, origin_port)
}

/// A Gateway on 80 for every host, and `host` routed to `ip:port`.
fn istio_yaml_for(host: &str, ip: Ipv4Addr, port: u16) -> String {
    support::istio::gateway_to_static_host(host, "HTTP", ip, port)
}

/// Answers the origin gives by path: framing errors Envoy answers with 502 `UPE`.
fn script() -> Vec<(&'static str, Vec<u8>)> {
    let mut flood = b"HTTP/1.1 102 Processing\r\n\r\n".repeat(3000);
    flood.extend_from_slice(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello");
    let mut some_interim = b"HTTP/1.1 102 Processing\r\n\r\n".repeat(200);
    some_interim.extend_from_slice(b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n");
    some_interim.extend_from_slice(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello");
    vec![
        (
            "/both",
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                .to_vec(),
        ),
        (
            "/two-lengths",
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!".to_vec(),
        ),
        (
            "/same-lengths",
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\nhello".to_vec(),
        ),
        (
            "/gzip-chunked",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec(),
        ),
        (
            "/obs-fold",
            b"HTTP/1.1 200 OK\r\nx-a: b\r\n c\r\ncontent-length: 5\r\n\r\nhello".to_vec(),
        ),
        ("/interim-flood", flood),
        ("/interim", some_interim),
    ]
}

struct Gateway {
    e: Egressd,
    origin: ScriptedOrigin,
    _dir: tempfile::TempDir,
}

async fn start() -> Gateway {
    start_bound(Ipv4Addr::LOCALHOST).await
}

async fn start_bound(bind: Ipv4Addr) -> Gateway {
    let origin = ScriptedOrigin::start(SocketAddr::new(ORIGIN_IP.into(), 0), &script());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("istio.yaml"), istio_yaml(origin.addr().port())).unwrap();
    let mut opts = EgressdOptions::new(dir.path());
    opts.port_mapping = vec![(80, 0)];
    opts.bind_address = bind.into();
    let e = Egressd::start_async(opts).await;
    Gateway { e, origin, _dir: dir }
}

/// What a raw exchange got: the bytes, and how the connection ended.
#[derive(Debug)]
struct Raw {
    text: String,
    /// `Some(false)`: FIN; `Some(true)`: reset; `None`: still open after the wait.
    closed: Option<bool>,
}

impl Raw {
    fn status(&self) -> Option<u16> {
        self.text.get(9..12)?.parse().ok()
    }
}

/// Writes `bytes` on a new connection and reads for `wait` or until the gateway closes.
async fn raw(g: &Gateway, bytes: &[u8], wait: Duration) -> Raw {
    let mut s = TcpStream::connect(g.e.gateway_addr(80)).await.unwrap();
    s.write_all(bytes).await.unwrap();
    read_for(&mut s, wait).await
}

async fn read_for(s: &mut TcpStream, wait: Duration) -> Raw {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + wait;
    let closed = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => break None,
            Ok(Ok(0)) => break Some(false),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Ok(Err(_)) => break Some(true),
        }
    };
    Raw {
        text: String::from_utf8_lossy(&out).into_owned(),
        closed,
    }
}

/// How many whole responses `text` holds (heads, then `content-length` bodies; a `101` ends
/// at its head).
fn complete_responses(text: &str) -> usize {
    let mut rest = text;
    let mut n = 0;
    while let Some(start) = rest.find("HTTP/1.") {
        let Some(end) = rest[start..].find("\r\n\r\n").map(|e| start + e + 4) else {
            break;
        };
        let head = rest[start..end].to_ascii_lowercase();
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        let body_end = if head.starts_with("http/1.1 101") {
            end
        } else {
            end + length
        };
        if rest.len() < body_end {
            break;
        }
        n += 1;
        rest = &rest[body_end..];
    }
    n
}

/// Reads until `n` whole responses arrived (5 s at most), or the gateway closed.
async fn read_responses(s: &mut TcpStream, n: usize) -> Raw {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + Duration::from_secs(5);
    let closed = loop {
        if complete_responses(&String::from_utf8_lossy(&out)) >= n {
            break None;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => break None,
            Ok(Ok(0)) => break Some(false),
            Ok(Ok(read)) => out.extend_from_slice(&buf[..read]),
            Ok(Err(_)) => break Some(true),
        }
    };
    Raw {
        text: String::from_utf8_lossy(&out).into_owned(),
        closed,
    }
}

/// Writes `bytes` on a new connection and reads `n` whole responses.
async fn raw_responses(g: &Gateway, bytes: &[u8], n: usize) -> Raw {
    let mut s = TcpStream::connect(g.e.gateway_addr(80)).await.unwrap();
    s.write_all(bytes).await.unwrap();
    read_responses(&mut s, n).await
}

/// The access-log line containing `needle` (waits up to 5 s).
async fn log_line(e: &Egressd, needle: &str) -> String {
    nth_log_line(e, needle, 0).await
}

async fn nth_log_line(e: &Egressd, needle: &str, n: usize) -> String {
    e.nth_log_line(needle, n).await
}

const CLOSE_WAIT: Duration = Duration::from_secs(3);

/// Request heads the gateway refuses itself: status, access-log fragment (Envoy's, unless
/// said), and the close after the answer. None reaches the origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_refused_and_never_forwarded() {
    let g = start().await;
    let h = format!("host: {HOST}\r\n");
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "two equal Content-Length fields",
            format!("POST /a HTTP/1.1\r\n{h}content-length: 2\r\ncontent-length: 2\r\n\r\nhi"),
            400,
            "\"- - HTTP/1.1\" 400 DPE http1.codec_error ",
        ),
        (
            "a Content-Length list",
            format!("POST /a HTTP/1.1\r\n{h}content-length: 2, 2\r\n\r\nhi"),
            400,
            "\"- - HTTP/1.1\" 400 DPE http1.codec_error ",
        ),
        (
            "authority-form on GET",
            format!("GET {HOST}:80 HTTP/1.1\r\n{h}\r\n"),
            400,
            "\"- - HTTP/1.1\" 400 DPE http1.codec_error ",
        ),
        (
            "asterisk-form on GET",
            format!("GET * HTTP/1.1\r\n{h}\r\n"),
            400,
            "\"- - HTTP/1.1\" 400 DPE http1.invalid_url ",
        ),
        (
            "no Host",
            "GET /no-host HTTP/1.1\r\n\r\n".to_string(),
            400,
            "\"GET /no-host HTTP/1.1\" 400 - missing_host_header ",
        ),
        (
            "an invalid Host",
            "GET / HTTP/1.1\r\nhost: a b\r\n\r\n".to_string(),
            400,
            "\"- - HTTP/1.1\" 400 DPE http.invalid_authority ",
        ),
        // Envoy joins two Host fields and forwards `a,a`; RFC 9112 §3.2 says 400.
        (
            "two Host fields",
            format!("GET /two-hosts HTTP/1.1\r\n{h}{h}\r\n"),
            400,
            "\"- - HTTP/1.1\" 400 DPE http1.codec_error ",
        ),
        // Envoy forwards these two; neither names a host the gateway can route by. Logged as
        // Envoy logs its codec errors.
        (
            "an empty Host",
            "GET /empty-host HTTP/1.1\r\nhost: \r\n\r\n".to_string(),
            400,
            "\"- - HTTP/1.1\" 400 DPE http.invalid_authority ",
        ),
        (
            "userinfo in Host",
            format!("GET /userinfo HTTP/1.1\r\nhost: user@{HOST}\r\n\r\n"),
            400,
            "\"- - HTTP/1.1\" 400 DPE http.invalid_authority ",
        ),
        (
            "a malformed chunk size",
            format!("POST /bad-chunk HTTP/1.1\r\n{h}transfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"),
            400,
            "\"POST /bad-chunk HTTP/1.1\" 400 DPE http1.codec_error ",
        ),
        // Envoy accepts both of these; RFC 9112 §7.1.1 does not.
        (
            "a chunk extension without `;`",
            format!("POST /ext HTTP/1.1\r\n{h}transfer-encoding: chunked\r\n\r\n5 x\r\nhello\r\n0\r\n\r\n"),
            400,
            "\"POST /ext HTTP/1.1\" 400 DPE http1.codec_error ",
        ),
        (
            "a control byte in a chunk extension",
            format!("POST /ext2 HTTP/1.1\r\n{h}transfer-encoding: chunked\r\n\r\n5;a=\x01\r\nhello\r\n0\r\n\r\n"),
            400,
            "\"POST /ext2 HTTP/1.1\" 400 DPE http1.codec_error ",
        ),
    ];
    for (i, (what, request, status, log)) in cases.iter().enumerate() {
        let earlier = cases[..i].iter().filter(|c| c.3 == *log).count();
        let r = raw(&g, request.as_bytes(), CLOSE_WAIT).await;
        assert_eq!(r.status(), Some(*status), "{what}: {r:?}");
        assert_eq!(
            r.closed,
            Some(false),
            "{what}: not closed with a FIN after the answer: {r:?}"
        );
        assert!(r.text.contains("connection: close\r\n"), "{what}: {r:?}");
        let line = nth_log_line(&g.e, log, earlier).await;
        eprintln!("{what}: {line}");
    }
    // A chunk error may be found after the head went upstream; nothing else may have.
    let heads = g.origin.heads();
    assert!(
        heads
            .iter()
            .all(|h| h.starts_with("POST /bad-chunk") || h.starts_with("POST /ext")),
        "refused requests reached the origin: {heads:#?}"
    );
    assert_eq!(
        g.e.stat("cluster.outbound|80||strict.example.com.upstream_rq_retry"),
        Some(0)
    );
}

/// CONNECT is never forwarded: 404 NR as Envoy answers it (no route of an Istio gateway has a
/// `connect_matcher`), and the connection closes (what follows was meant for a tunnel).
/// `OPTIONS *` is 404 `absolute_path_rejected` and the connection carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_and_asterisk_form_are_answered_by_the_gateway() {
    let g = start().await;
    let connect = format!("CONNECT {HOST}:443 HTTP/1.1\r\nhost: {HOST}:443\r\n\r\n\x16\x03\x01tunnel bytes");
    let r = raw(&g, connect.as_bytes(), CLOSE_WAIT).await;
    assert_eq!(r.status(), Some(404), "{r:?}");
    assert_eq!(r.closed, Some(false), "{r:?}");
    log_line(&g.e, "\"CONNECT - HTTP/1.1\" 404 NR route_not_found - \"-\" 0 0 ").await;

    let mut s = TcpStream::connect(g.e.gateway_addr(80)).await.unwrap();
    let options = format!("OPTIONS * HTTP/1.1\r\nhost: {HOST}\r\n\r\nGET /after HTTP/1.1\r\nhost: {HOST}\r\n\r\n");
    s.write_all(options.as_bytes()).await.unwrap();
    let r = read_responses(&mut s, 2).await;
    assert!(r.text.starts_with("HTTP/1.1 404 Not Found\r\n"), "{r:?}");
    assert!(
        r.text.contains("HTTP/1.1 200 OK\r\n"),
        "the connection carried on: {r:?}"
    );
    log_line(&g.e, "\"OPTIONS * HTTP/1.1\" 404 - absolute_path_rejected ").await;

    assert_eq!(
        g.origin
            .heads()
            .iter()
            .map(|h| h.lines().next().unwrap_or("").to_string())
            .collect::<Vec<_>>(),
        ["GET /after HTTP/1.1"],
        "only the request after OPTIONS * reached the origin"
    );
}

/// What is accepted is forwarded framed by its body: leading zeros in a length or a chunk
/// size, valid chunk extensions (dropped, the body re-chunked), absolute-form (its authority
/// wins over Host, RFC 9112 §3.2.2), and HTTP/1.0 `keep-alive, close` closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_requests_are_forwarded_normalized() {
    let g = start().await;
    let h = format!("host: {HOST}\r\n");
    let r = raw_responses(
        &g,
        format!("POST /zeros HTTP/1.1\r\n{h}content-length: 0002\r\n\r\nhi").as_bytes(),
        1,
    )
    .await;
    assert_eq!(r.status(), Some(200), "{r:?}");
    let r = raw_responses(
        &g,
        format!("POST /chunks HTTP/1.1\r\n{h}transfer-encoding: chunked\r\n\r\n0005;a=\"b c\";d\r\nhello\r\n0\r\n\r\n")
            .as_bytes(),
        1,
    )
    .await;
    assert_eq!(r.status(), Some(200), "{r:?}");
    let r = raw_responses(
        &g,
        format!("GET http://{HOST}/absolute HTTP/1.1\r\nhost: other.example\r\n\r\n").as_bytes(),
        1,
    )
    .await;
    assert_eq!(r.status(), Some(200), "{r:?}");
    let r = raw(
        &g,
        format!("GET /ten HTTP/1.0\r\n{h}connection: keep-alive, close\r\n\r\n").as_bytes(),
        CLOSE_WAIT,
    )
    .await;
    assert_eq!(r.status(), Some(200), "{r:?}");
    assert_eq!(r.closed, Some(false), "close must win over keep-alive: {r:?}");

    let conns = g.origin.connections();
    let find = |path: &str| {
        conns
            .iter()
            .flat_map(|c| c.heads.iter().zip(&c.bodies))
            .find(|(h, _)| h.contains(path))
            .map(|(h, b)| (h.to_ascii_lowercase(), String::from_utf8_lossy(b).into_owned()))
            .unwrap_or_else(|| panic!("{path} did not reach the origin: {conns:#?}"))
    };
    let (head, body) = find("/zeros");
    assert!(head.contains("\r\ncontent-length: 2") && body == "hi", "{head}");
    let (head, body) = find("/chunks");
    assert!(head.contains("\r\ntransfer-encoding: chunked"), "{head}");
    assert_eq!(body, "5\r\nhello\r\n0\r\n\r\n");
    let (head, _) = find("/absolute");
    assert!(head.starts_with("get /absolute http/1.1\r\n"), "{head}");
    assert!(head.contains(&format!("\r\nhost: {HOST}")), "{head}");
}

/// An upstream's framing errors are 502 `UPE` answered once, as Envoy 1.40 answers them, and
/// not retried under Istio's default retry policy; a bounded number of interim answers is
/// passed over, a flood of them is an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_framing_errors_are_502_upe_and_not_retried() {
    let g = start().await;
    for path in [
        "/both",
        "/two-lengths",
        "/same-lengths",
        "/gzip-chunked",
        "/obs-fold",
        "/interim-flood",
    ] {
        let before = g.origin.heads().len();
        let r = raw_responses(&g, format!("GET {path} HTTP/1.1\r\nhost: {HOST}\r\n\r\n").as_bytes(), 1).await;
        assert_eq!(r.status(), Some(502), "{path}: {r:?}");
        assert!(
            r.text
                .ends_with("upstream connect error or disconnect/reset before headers. reset reason: protocol error"),
            "{path}: {r:?}"
        );
        log_line(
            &g.e,
            &format!("\"GET {path} HTTP/1.1\" 502 UPE upstream_reset_before_response_started{{protocol_error}} "),
        )
        .await;
        assert_eq!(g.origin.heads().len(), before + 1, "{path}: sent more than once");
    }
    assert_eq!(
        g.e.stat("cluster.outbound|80||strict.example.com.upstream_rq_retry"),
        Some(0)
    );
    let r = raw_responses(
        &g,
        format!("GET /interim HTTP/1.1\r\nhost: {HOST}\r\n\r\n").as_bytes(),
        1,
    )
    .await;
    assert!(
        r.text.starts_with("HTTP/1.1 200 OK\r\n") && r.text.ends_with("hello"),
        "{r:?}"
    );
}

/// A refusal or a local reply that leaves input unread closes gracefully: the write side
/// first, then the rest of the client's bytes are read and dropped, so the client gets the
/// whole answer and a FIN, never a reset that could destroy the answer before it is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closes_after_unread_input_are_graceful() {
    let g = start().await;
    // 431 with the rest of a 100 KiB header still coming.
    let big = format!(
        "GET / HTTP/1.1\r\nhost: {HOST}\r\nx-big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let r = raw(&g, big.as_bytes(), CLOSE_WAIT).await;
    assert_eq!((r.status(), r.closed), (Some(431), Some(false)), "{r:?}");
    // A 404 (no route) for a POST whose 200 KiB body is never read.
    let mut post = b"POST /x HTTP/1.1\r\nhost: unrouted.example\r\ncontent-length: 204800\r\n\r\n".to_vec();
    post.extend(std::iter::repeat_n(b'x', 200 * 1024));
    let r = raw(&g, &post, CLOSE_WAIT).await;
    assert_eq!((r.status(), r.closed), (Some(404), Some(false)), "{r:?}");
    // `Connection: close` with a pipelined request behind it: one answer, then the FIN.
    let pipelined = format!(
        "GET /first HTTP/1.1\r\nhost: {HOST}\r\nconnection: close\r\n\r\nGET /second HTTP/1.1\r\nhost: {HOST}\r\n\r\n"
    );
    let r = raw(&g, pipelined.as_bytes(), CLOSE_WAIT).await;
    assert_eq!((r.status(), r.closed), (Some(200), Some(false)), "{r:?}");
    assert_eq!(r.text.matches("HTTP/1.1 ").count(), 1, "{r:?}");
}

/// `%DOWNSTREAM_LOCAL_ADDRESS%` is the address a connection arrived on, as Envoy logs it (in a
/// pod, the pod IP), not the listener's wildcard bind address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_names_the_address_a_connection_arrived_on() {
    let g = start_bound(Ipv4Addr::UNSPECIFIED).await;
    let port = g.e.bound_port(80);
    let arrived = SocketAddr::new(Ipv4Addr::new(127, 0, 0, 191).into(), port);
    let mut s = TcpStream::connect(arrived).await.unwrap();
    for path in ["/one", "/two"] {
        s.write_all(format!("GET {path} HTTP/1.1\r\nhost: {HOST}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let r = read_responses(&mut s, 1).await;
        assert_eq!(r.status(), Some(200), "{r:?}");
        let line = log_line(&g.e, &format!("\"GET {path} HTTP/1.1\" 200")).await;
        assert!(line.contains(&format!(" {arrived} 127.0.0.1:")), "{line}");
        assert!(!line.contains("0.0.0.0"), "{line}");
    }
}

/// Issue 16: WebSocket through the gateway (Istio's gateway enables the `websocket` upgrade):
/// the upgrade headers are forwarded, the `101` relayed, then the connection is a byte tunnel
/// both ways, logged once as Envoy logs it (`101 - via_upstream` with the tunnel's bytes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrades_become_tunnels() {
    let g = start().await;
    let mut s = TcpStream::connect(g.e.gateway_addr(80)).await.unwrap();
    let upgrade = format!(
        "GET /ws HTTP/1.1\r\nhost: {HOST}\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n"
    );
    s.write_all(upgrade.as_bytes()).await.unwrap();
    let r = read_responses(&mut s, 1).await;
    assert!(r.text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"), "{r:?}");
    let head = r.text.to_ascii_lowercase();
    assert!(
        head.contains("\r\nconnection: upgrade\r\n") && head.contains("\r\nupgrade: websocket\r\n"),
        "{r:?}"
    );
    assert!(
        !head.contains("content-length") && !head.contains("transfer-encoding"),
        "{r:?}"
    );
    // Bytes both ways, as they are (the origin echoes).
    for message in [&b"\x81\x05hello"[..], &[0x42; 70_000]] {
        s.write_all(message).await.unwrap();
        let mut echoed = vec![0u8; message.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut echoed))
            .await
            .expect("echo within 5 s")
            .unwrap();
        assert!(echoed == message, "the tunnel changed the bytes");
    }
    // Counted as Envoy counts upgrades.
    let upgrades = |e: &Egressd, suffix: &str| {
        e.stats()
            .lines()
            .find_map(|l| {
                l.strip_prefix("http.")
                    .and_then(|l| l.split_once(&format!(".{suffix}: ")))
            })
            .and_then(|(_, v)| v.trim().parse::<u64>().ok())
    };
    assert_eq!(upgrades(&g.e, "downstream_cx_upgrades_total"), Some(1));
    assert_eq!(upgrades(&g.e, "downstream_cx_upgrades_active"), Some(1));
    drop(s);
    let line = log_line(&g.e, "\"GET /ws HTTP/1.1\" 101 - via_upstream ").await;
    assert_eq!(upgrades(&g.e, "downstream_cx_upgrades_active"), Some(0));
    assert!(line.contains(" 70007 70007 "), "bytes of the tunnel: {line}");
    let head = g
        .origin
        .heads()
        .into_iter()
        .find(|h| h.starts_with("GET /ws"))
        .unwrap()
        .to_ascii_lowercase();
    assert!(
        head.contains("\r\nupgrade: websocket") && head.contains("\r\nconnection: upgrade"),
        "{head}"
    );
    assert!(
        head.contains("\r\nsec-websocket-key: dghlihnhbxbszsbub25jzq=="),
        "{head}"
    );

    // An upgrade the origin declines stays HTTP on a connection that carries on.
    let mut s = TcpStream::connect(g.e.gateway_addr(80)).await.unwrap();
    let declined = format!(
        "GET /declined HTTP/1.1\r\nhost: {HOST}\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\nGET /next HTTP/1.1\r\nhost: {HOST}\r\n\r\n"
    );
    s.write_all(declined.as_bytes()).await.unwrap();
    let r = read_responses(&mut s, 2).await;
    assert_eq!(r.text.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{r:?}");
}

/// The same with real WebSocket peers (Python `websockets`, installed by `.ci/run`): a client
/// through the gateway to an echo server, text and a 256 KiB binary message, a clean close;
/// once plain, once with the gateway originating TLS (`ws://` in, `wss://` out, hyper's client).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_websocket_client_and_server_talk_through_the_gateway() {
    let ip = Ipv4Addr::new(127, 0, 0, 192);
    let plain = WebSocketServer::start(ip, None);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("istio.yaml"),
        istio_yaml_for("ws.example.com", ip, plain.port),
    )
    .unwrap();
    websocket_client_through(dir.path(), "ws.example.com").await;

    // TLS origination: the DestinationRule of the seed's origination task, for a WebSocket.
    let ca = support::certs::TestCa::new("websocket-ca");
    let leaf = ca.server_cert(&["wss.example.com"]);
    let files = tempfile::tempdir().unwrap();
    let (cert, key) = leaf.write_to(files.path(), "cert.pem", "key.pem");
    let root = ca.write_root(files.path(), "root.pem");
    let tls = WebSocketServer::start(ip, Some((&cert, &key)));
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "{}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: originate}}
spec:
  host: wss.example.com
  trafficPolicy:
    tls: {{mode: SIMPLE, caCertificates: {}}}
",
        istio_yaml_for("wss.example.com", ip, tls.port),
        root.display()
    );
    std::fs::write(dir.path().join("istio.yaml"), yaml).unwrap();
    websocket_client_through(dir.path(), "wss.example.com").await;
}

const WEBSOCKET_PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/websocket/peer.py");

/// The Python echo server, stopped (by its id) on drop.
struct WebSocketServer {
    child: std::process::Child,
    port: u16,
}

impl WebSocketServer {
    fn start(ip: Ipv4Addr, tls: Option<(&std::path::Path, &std::path::Path)>) -> WebSocketServer {
        let port = support::tools::free_port();
        let mut cmd = std::process::Command::new("python3");
        cmd.args([WEBSOCKET_PEER, "server", &ip.to_string(), &port.to_string()]);
        if let Some((cert, key)) = tls {
            cmd.arg(cert).arg(key);
        }
        let mut child = cmd.stdout(std::process::Stdio::piped()).spawn().expect("python3");
        let mut ready = String::new();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        std::io::BufRead::read_line(&mut out, &mut ready).unwrap();
        assert_eq!(
            ready.trim(),
            "ready",
            "the WebSocket server did not start (is `websockets` installed?)"
        );
        WebSocketServer { child, port }
    }
}

impl Drop for WebSocketServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs egressd on `config` and the Python client through it to `host`; checks the client's
/// verdict and the access log's line.
async fn websocket_client_through(config: &std::path::Path, host: &'static str) {
    let mut opts = EgressdOptions::new(config);
    opts.port_mapping = vec![(80, 0)];
    let e = Egressd::start_async(opts).await;
    let gateway = e.gateway_addr(80).to_string();
    let client = tokio::task::spawn_blocking(move || {
        let mut cmd = std::process::Command::new("python3");
        cmd.args([WEBSOCKET_PEER, "client", &gateway, host]);
        support::tools::run_with_timeout(cmd, None, Duration::from_secs(30))
    })
    .await
    .unwrap();
    assert!(
        client.status.success() && support::tools::stdout(&client).starts_with("ok "),
        "{host}: {}\n{}\n{}",
        support::tools::stdout(&client),
        support::tools::stderr(&client),
        e.stderr()
    );
    let line = log_line(&e, "\"GET /ws HTTP/1.1\" 101 - via_upstream ").await;
    eprintln!("{host}: {line}");
}
