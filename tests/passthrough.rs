//! Issue 4 end to end: TLS passthrough by SNI through the real egressd binary, from the seed's
//! HTTPS YAML, with a real DNS server, TLS origins holding an `edition.cnn.com` certificate from a
//! test CA, and real clients (curl, openssl s_client, rustls). The seed's HTTPS section with its
//! stats and access-log line; every refusal (nothing reaches the origin, one `NR` line, the fds
//! come back); the ClientHello size bound; a hello fragmented over many segments and records;
//! 100 MiB each way with checksums at both ends; half-close.

mod support;

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use support::certs::{provider, server_config, TestCa};
use support::dns::TestDns;
use support::egressd::{Egressd, EgressdOptions};
use support::origin::{pattern, pattern_chunk, PATTERN_CHUNK};
use support::raw::{pattern_sink_result, RawOrigin, Sha256, SinkOrigin, SinkResult, POLITICS_SIZE};
use support::tools::{curl_async, curl_status, openssl_async, stderr, stdout};

/// The seed's YAML verbatim: edition.cnn.com:443 TLS, Gateway 443 PASSTHROUGH, VS `tls` route.
const SEED: &str = "tests/fixtures/seed/https-passthrough";
const HOST: &str = "edition.cnn.com";
const CLUSTER: &str = "outbound|443||edition.cnn.com";
const HUNDRED_MIB: u64 = 100 << 20;

/// A test PKI and DNS answering `edition.cnn.com` with `ip` (origins then bind `ip:443`).
struct World {
    dns: TestDns,
    ca: TestCa,
    ip: Ipv4Addr,
    dir: tempfile::TempDir,
}

impl World {
    async fn new(ip: Ipv4Addr) -> World {
        let dns = TestDns::start().await;
        dns.set_a(HOST, &[ip], 30);
        World {
            dns,
            ca: TestCa::new("passthrough-test-ca"),
            ip,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn origin_addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip.into(), 443)
    }

    fn origin_tls(&self) -> Arc<rustls::ServerConfig> {
        server_config(&self.ca.server_cert(&[HOST]), &[b"http/1.1"])
    }

    fn ca_file(&self) -> String {
        self.ca
            .write_root(self.dir.path(), "ca.pem")
            .to_str()
            .unwrap()
            .to_string()
    }

    /// egressd from the seed's YAML with port 443 mapped, and this bootstrap YAML if any.
    async fn egressd(&self, bootstrap: Option<&str>) -> Egressd {
        let mut opts = EgressdOptions::new(SEED);
        opts.dns = Some(self.dns.addr());
        opts.port_mapping = vec![(443, 0)];
        if let Some(yaml) = bootstrap {
            let path = self.dir.path().join("bootstrap.yaml");
            std::fs::write(&path, yaml).unwrap();
            opts.extra_args = vec!["--bootstrap".into(), path.to_str().unwrap().into()];
        }
        Egressd::start_async(opts).await
    }

    /// A rustls client trusting the test CA (aws-lc-rs, TLS 1.2 and 1.3, post-quantum share).
    fn client(&self) -> ClientConfig {
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(self.roots())
            .with_no_client_auth()
    }

    /// A rustls client that sends an X25519MLKEM768 key share (its ClientHello is ~1.3 KB).
    fn pq_client(&self) -> ClientConfig {
        let mut p = rustls::crypto::aws_lc_rs::default_provider();
        p.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519MLKEM768];
        ClientConfig::builder_with_provider(Arc::new(p))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(self.roots())
            .with_no_client_auth()
    }

    /// A rustls client whose ClientHello is small: TLS 1.3 and X25519 only.
    fn small_client(&self) -> ClientConfig {
        let mut p = rustls::crypto::aws_lc_rs::default_provider();
        p.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
        ClientConfig::builder_with_provider(Arc::new(p))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(self.roots())
            .with_no_client_auth()
    }

    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.root_der().clone()).unwrap();
        roots
    }
}

fn sni(name: &str) -> ServerName<'static> {
    ServerName::try_from(name.to_string()).unwrap()
}

/// The first flight of a rustls client (its ClientHello records), as it would go on the wire.
fn client_hello(config: ClientConfig, name: ServerName<'static>) -> Vec<u8> {
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

/// `(content type, length)` of each TLS record header in `wire`, until the data runs out.
fn records(wire: &[u8]) -> Vec<(u8, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(h) = wire.get(at..at + 5) {
        let len = usize::from(u16::from_be_bytes([h[3], h[4]]));
        out.push((h[0], len));
        at += 5 + len;
    }
    out
}

async fn tls_connect<S>(config: ClientConfig, name: &str, stream: S) -> io::Result<tokio_rustls::client::TlsStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    TlsConnector::from(Arc::new(config)).connect(sni(name), stream).await
}

/// Sends `GET path` with `connection: close` and reads the response to EOF, hashing the body as
/// it arrives: (response head, body length, body SHA-256).
async fn get<S: AsyncRead + AsyncWrite + Unpin>(io: &mut S, path: &str) -> (String, u64, String) {
    let req = format!("GET {path} HTTP/1.1\r\nhost: {HOST}\r\nconnection: close\r\n\r\n");
    io.write_all(req.as_bytes()).await.unwrap();
    io.flush().await.unwrap();
    let mut buf = vec![0u8; 256 * 1024];
    let mut head = Vec::new();
    let mut hasher = Sha256::new();
    let mut body_len = 0u64;
    let mut in_body = false;
    loop {
        let n = match io.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            // The origin's close_notify may be followed by a plain TCP close: EOF either way.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => panic!("reading {path} after {body_len} body bytes: {e}"),
        };
        let mut data = &buf[..n];
        if !in_body {
            head.extend_from_slice(data);
            let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let body_start = n - (head.len() - (end + 4));
            head.truncate(end + 4);
            data = &buf[body_start..n];
            in_body = true;
        }
        hasher.update(data);
        body_len += data.len() as u64;
    }
    (
        String::from_utf8_lossy(&head).into_owned(),
        body_len,
        hasher.finish_hex(),
    )
}

/// The fields of one TEXT access-log line, split as Istio's format lays them out (quoted fields
/// are one field): 0 start time, 1 `"- - -"`, 2 code, 3 flags, 4 details, 5 termination details,
/// 6 transport failure, 7 bytes received, 8 bytes sent, 9 duration, 10 upstream service time,
/// 11 XFF, 12 UA, 13 request id, 14 authority, 15 upstream host, 16 cluster, 17 upstream local,
/// 18 downstream local, 19 downstream remote, 20 SNI, 21 route.
fn fields(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line.trim_end();
    if let Some(end) = rest.find("] ") {
        out.push(rest[1..end].to_string());
        rest = &rest[end + 2..];
    }
    while !rest.is_empty() {
        if let Some(stripped) = rest.strip_prefix('"') {
            let end = stripped.find('"').unwrap();
            out.push(stripped[..end].to_string());
            rest = stripped[end + 1..].trim_start();
        } else {
            let end = rest.find(' ').unwrap_or(rest.len());
            out.push(rest[..end].to_string());
            rest = rest[end..].trim_start();
        }
    }
    out
}

/// Asserts a TCP access-log line for a connection that went through to the origin at `ip:443`.
fn assert_passthrough_line(line: &str, e: &Egressd, ip: Ipv4Addr) -> (u64, u64) {
    let f = fields(line);
    assert_eq!(f.len(), 22, "{line}");
    assert!(line.contains("\"- - -\" 0 - - - \"-\" "), "{line}");
    let (rx, tx): (u64, u64) = (f[7].parse().unwrap(), f[8].parse().unwrap());
    assert!(rx > 0 && tx > 0, "bytes received/sent: {line}");
    assert_eq!(f[15], format!("{ip}:443"), "upstream host: {line}");
    assert_eq!(f[16], CLUSTER, "{line}");
    assert!(f[17].starts_with("127.0.0.1:"), "upstream local address: {line}");
    assert_eq!(f[18], format!("127.0.0.1:{}", e.bound_port(443)), "{line}");
    assert!(f[19].starts_with("127.0.0.1:"), "{line}");
    assert_eq!(f[20], HOST, "requested server name: {line}");
    (rx, tx)
}

fn listener_stat(e: &Egressd, name: &str) -> u64 {
    e.stat(&format!("listener.127.0.0.1_{}.{name}", e.bound_port(443)))
        .unwrap_or(0)
}

/// Waits (bounded) for the gateway to close `stream` without sending anything; returns how long
/// it took.
async fn expect_closed(stream: &mut TcpStream, within: Duration, what: &str) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    match tokio::time::timeout(within, stream.read(&mut buf)).await {
        Err(_) => panic!("{what}: connection still open after {within:?}"),
        Ok(Ok(0)) | Ok(Err(_)) => start.elapsed(),
        Ok(Ok(n)) => panic!("{what}: the gateway answered {n} bytes: {:?}", &buf[..n]),
    }
}

/// Asserts refusal number `n` of this egressd: exactly `n` log lines, the last one
/// `NR filter_chain_not_found` with this SNI (and remote address when known); `n` unmatched
/// connections counted, none accepted, and nothing reached the origin.
fn assert_refused(
    e: &Egressd,
    origin: &RawOrigin,
    n: usize,
    sni: Option<&str>,
    remote: Option<SocketAddr>,
    what: &str,
) {
    let lines = e.wait_for_log_lines(n, Duration::from_secs(5));
    assert_eq!(lines.len(), n, "{what}: one line per refusal: {lines:#?}");
    let line = &lines[n - 1];
    assert!(
        line.contains("\"- - -\" 0 NR filter_chain_not_found - \"-\" 0 0 "),
        "{what}: {line}"
    );
    let f = fields(line);
    assert_eq!(f.len(), 22, "{what}: {line}");
    assert_eq!(
        (&f[15][..], &f[16][..], &f[17][..]),
        ("-", "-", "-"),
        "{what}: no upstream: {line}"
    );
    assert_eq!(f[18], format!("127.0.0.1:{}", e.bound_port(443)), "{what}: {line}");
    if let Some(remote) = remote {
        assert_eq!(f[19], remote.to_string(), "{what}: {line}");
    }
    assert_eq!(f[20], sni.unwrap_or("-"), "{what}: requested server name: {line}");
    assert_eq!(
        listener_stat(e, "no_filter_chain_match"),
        n as u64,
        "{what}\n{}",
        e.stats()
    );
    assert_eq!(listener_stat(e, "downstream_cx_total"), 0, "{what}\n{}", e.stats());
    assert_eq!(origin.connections(), 0, "{what}: the origin was reached");
}

/// Writes `bytes` on a fresh connection and expects it closed within 3 s, unanswered.
async fn refuse_bytes(e: &Egressd, bytes: &[u8], what: &str) -> SocketAddr {
    let mut s = TcpStream::connect(e.gateway_addr(443)).await.unwrap();
    let local = s.local_addr().unwrap();
    // The gateway may close (and reset) before it read everything: only the close matters.
    let _ = s.write_all(bytes).await;
    expect_closed(&mut s, Duration::from_secs(3), what).await;
    local
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_https_scenario_with_curl_and_openssl() {
    let w = World::new(Ipv4Addr::new(127, 0, 0, 120)).await;
    let origin = RawOrigin::start(w.origin_addr(), Some(w.origin_tls()));
    let e = w.egressd(None).await;
    let ca_file = w.ca_file();
    let port = e.bound_port(443);

    let connect_to = format!("{HOST}:443:127.0.0.1:{port}");
    let out = curl_async(&[
        "-sL",
        "--http1.1",
        "-o",
        "/dev/null",
        "-D",
        "-",
        "--connect-to",
        &connect_to,
        "--cacert",
        &ca_file,
        "https://edition.cnn.com/politics",
    ])
    .await;
    let headers = stdout(&out);
    assert!(out.status.success(), "curl: {:?} {}", out.status, stderr(&out));
    let status: Vec<&str> = headers
        .lines()
        .filter(|l| l.starts_with("HTTP/"))
        .map(str::trim)
        .collect();
    assert_eq!(status, ["HTTP/1.1 200 OK"], "{headers}");
    assert!(
        headers.lines().any(|l| l.trim() == "content-length: 151654"),
        "{headers}"
    );
    assert_eq!(origin.requests().len(), 1);
    assert_eq!(origin.requests()[0].path, "/politics");

    // The seed's troubleshooting step: the chain is the origin's, untouched by the gateway.
    let connect = format!("127.0.0.1:{port}");
    let out = openssl_async(
        &[
            "s_client",
            "-connect",
            &connect,
            "-servername",
            HOST,
            "-CAfile",
            &ca_file,
        ],
        b"",
    )
    .await;
    let text = stdout(&out);
    assert!(text.contains("Certificate chain"), "{text}\n{}", stderr(&out));
    let compact: String = text.chars().filter(|c| *c != ' ').collect();
    assert!(compact.contains("0s:CN=edition.cnn.com"), "{text}");
    assert!(compact.contains("i:O=cluster.local,CN=passthrough-test-ca"), "{text}");
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");

    let lines = e.wait_for_log_lines(2, Duration::from_secs(5));
    assert_eq!(lines.len(), 2, "{lines:#?}");
    let (_, curl_tx) = assert_passthrough_line(&lines[0], &e, w.ip);
    assert!(curl_tx > POLITICS_SIZE, "the curl line carries the page: {}", lines[0]);
    assert_passthrough_line(&lines[1], &e, w.ip);
    assert_eq!(origin.connections(), 2);
    assert!(
        origin
            .established()
            .iter()
            .all(|c| c.tls.as_ref().unwrap().sni.as_deref() == Some(HOST)),
        "{:?}",
        origin.established()
    );

    let stats = e.stats();
    for line in [
        "cluster.outbound|443||edition.cnn.com.upstream_cx_total: 2",
        "tcp.outbound|443||edition.cnn.com.downstream_cx_total: 2",
        "sni.edition.cnn.com.downstream_cx_total: 2",
    ] {
        assert!(stats.lines().any(|l| l == line), "`{line}` not in /stats:\n{stats}");
    }
    assert_eq!(listener_stat(&e, "downstream_cx_total"), 2, "{stats}");
    assert_eq!(listener_stat(&e, "no_filter_chain_match"), 0, "{stats}");
    let filtered = e.get("/stats?filter=edition.cnn.com.upstream_cx_total").text();
    assert_eq!(
        filtered.trim(),
        "cluster.outbound|443||edition.cnn.com.upstream_cx_total: 2"
    );
    let prom = e.get("/stats/prometheus").text();
    assert!(
        prom.lines()
            .any(|l| l == "envoy_cluster_upstream_cx_total{cluster_name=\"outbound|443||edition.cnn.com\"} 2"),
        "{prom}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_close_log_nr_and_never_reach_the_origin() {
    let w = World::new(Ipv4Addr::new(127, 0, 0, 121)).await;
    let origin = RawOrigin::start(w.origin_addr(), Some(w.origin_tls()));
    let e = w.egressd(Some("timeouts: {clientHello: 1s}\n")).await;
    let baseline_fds = e.open_fds();
    let ca_file = w.ca_file();
    let port = e.bound_port(443);
    let mut n = 0;

    // Unknown SNI: curl's handshake fails (35: SSL connect error).
    let connect_to = format!("other.example.com:443:127.0.0.1:{port}");
    let out = curl_async(&[
        "-s",
        "-o",
        "/dev/null",
        "--connect-to",
        &connect_to,
        "--cacert",
        &ca_file,
        "https://other.example.com/",
    ])
    .await;
    assert_eq!(out.status.code(), Some(35), "curl: {}", stderr(&out));
    n += 1;
    assert_refused(&e, &origin, n, Some("other.example.com"), None, "unknown SNI");

    // No SNI: rustls sends none when the server name is an IP address.
    let tcp = TcpStream::connect(e.gateway_addr(443)).await.unwrap();
    let local = tcp.local_addr().unwrap();
    let ip = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into());
    let hs = TlsConnector::from(Arc::new(w.client())).connect(ip, tcp);
    let result = tokio::time::timeout(Duration::from_secs(3), hs)
        .await
        .expect("handshake still pending");
    assert!(result.is_err(), "a handshake without SNI completed");
    n += 1;
    assert_refused(&e, &origin, n, None, Some(local), "no SNI");

    let hello = client_hello(w.client(), sni(HOST));
    let mut sslv2 = vec![0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15, 0x00, 0x00, 0x00, 0x10];
    sslv2.extend_from_slice(&[0x07, 0x00, 0xc0, 0x05, 0x00, 0x80, 0x03, 0x00, 0x80]);
    sslv2.extend_from_slice(&[0x01, 0x00, 0x80, 0x06, 0x00, 0x40, 0x04, 0x00, 0x80, 0x02, 0x00, 0x80]);
    sslv2.extend_from_slice(&[0x5a; 16]);
    // A handshake record claiming 20000 bytes (TLS allows 2^14), starting like a real hello.
    let mut huge_record = vec![0x16, 0x03, 0x01, 0x4e, 0x20];
    huge_record.extend_from_slice(&hello[5..]);
    let cases: [(&str, Vec<u8>); 4] = [
        (
            "garbage bytes",
            b"\x00\x9f\x13garbage\xff\xfe\x01\x02 not TLS at all\r\n".to_vec(),
        ),
        (
            "plain HTTP",
            b"GET / HTTP/1.1\r\nhost: edition.cnn.com\r\n\r\n".to_vec(),
        ),
        ("SSLv2-style hello", sslv2),
        ("20000-byte record", huge_record),
    ];
    for (what, bytes) in &cases {
        let local = refuse_bytes(&e, bytes, what).await;
        n += 1;
        assert_refused(&e, &origin, n, None, Some(local), what);
    }

    // Half a ClientHello, then silence: closed when `timeouts.clientHello` (1 s) passes.
    let mut s = TcpStream::connect(e.gateway_addr(443)).await.unwrap();
    let local = s.local_addr().unwrap();
    s.write_all(&hello[..hello.len() / 2]).await.unwrap();
    let took = expect_closed(&mut s, Duration::from_secs(3), "slow hello").await;
    assert!(
        took >= Duration::from_millis(900),
        "closed after {took:?}, before the 1 s timeout"
    );
    n += 1;
    assert_refused(&e, &origin, n, None, Some(local), "slow hello");
    assert_eq!(listener_stat(&e, "downstream_pre_cx_timeout"), 1, "{}", e.stats());

    assert_eq!(e.get("/ready").status, 200);
    let deadline = Instant::now() + Duration::from_secs(3);
    while e.open_fds() > baseline_fds + 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        e.open_fds() <= baseline_fds + 3,
        "fds: {} after refusals, {baseline_fds} before",
        e.open_fds()
    );

    // The same listener still passes a good hello through.
    let connect_to = format!("{HOST}:443:127.0.0.1:{port}");
    let out = curl_status(
        "https://edition.cnn.com/politics",
        &["--connect-to", &connect_to, "--cacert", &ca_file],
    )
    .await;
    assert_eq!(stdout(&out), "200", "{}", stderr(&out));
    assert_eq!(origin.connections(), 1);
    let lines = e.wait_for_log_lines(n + 1, Duration::from_secs(5));
    assert_eq!(lines.len(), n + 1, "{lines:#?}");
    assert_passthrough_line(&lines[n], &e, w.ip);
    assert_eq!(listener_stat(&e, "no_filter_chain_match"), n as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_hello_larger_than_the_bound_is_refused() {
    let w = World::new(Ipv4Addr::new(127, 0, 0, 122)).await;
    let origin = RawOrigin::start(w.origin_addr(), Some(w.origin_tls()));
    let e = w.egressd(Some("limits: {maxClientHelloBytes: 512}\n")).await;

    // Padded past the bound with ALPN protocols: refused before any SNI is known.
    let mut padded = w.small_client();
    padded.alpn_protocols = (0..40)
        .map(|i| format!("padding-protocol-{i:03}").into_bytes())
        .collect();
    let size = client_hello(padded.clone(), sni(HOST)).len();
    assert!(size > 1024, "padded hello is only {size} bytes");
    let tcp = TcpStream::connect(e.gateway_addr(443)).await.unwrap();
    let local = tcp.local_addr().unwrap();
    let hs = tokio::time::timeout(Duration::from_secs(3), tls_connect(padded, HOST, tcp)).await;
    assert!(
        hs.expect("handshake still pending").is_err(),
        "an oversized hello was passed through"
    );
    assert_refused(&e, &origin, 1, None, Some(local), "oversized hello");

    // A hello within the bound goes through on the same listener.
    let small = w.small_client();
    let size = client_hello(small.clone(), sni(HOST)).len();
    assert!(size <= 512, "small hello is {size} bytes");
    let tcp = TcpStream::connect(e.gateway_addr(443)).await.unwrap();
    let mut tls = tls_connect(small, HOST, tcp)
        .await
        .expect("handshake through the gateway");
    let (head, len, sha) = get(&mut tls, "/politics").await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert_eq!((len, sha), (POLITICS_SIZE, pattern_sink_result(POLITICS_SIZE).sha256));
    assert_eq!(origin.connections(), 1);
    assert_eq!(listener_stat(&e, "no_filter_chain_match"), 1);
}

/// Writes at most `max` bytes per `poll_write`, pausing 2 ms after each write of the first 8 KiB
/// so that each lands in its own TCP segment and the gateway reads the hello piecemeal; keeps
/// the first 8 KiB written.
struct Trickle {
    inner: TcpStream,
    max: usize,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
    writes: usize,
    sent: Vec<u8>,
}

const TRICKLE_PREFIX: usize = 8 * 1024;

impl AsyncRead for Trickle {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Trickle {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        if let Some(pause) = self.pause.as_mut() {
            ready!(pause.as_mut().poll(cx));
            self.pause = None;
        }
        let max = self.max.min(data.len());
        let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &data[..max]))?;
        self.writes += 1;
        if self.sent.len() < TRICKLE_PREFIX {
            self.sent.extend_from_slice(&data[..n]);
            self.pause = Some(Box::pin(tokio::time::sleep(Duration::from_millis(2))));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_hello_over_many_segments_and_records_works() {
    let w = World::new(Ipv4Addr::new(127, 0, 0, 123)).await;
    let origin = RawOrigin::start(w.origin_addr(), Some(w.origin_tls()));
    let e = w.egressd(None).await;

    // A post-quantum first key share, as browsers send: a ~1.3 KB hello, in 64-byte records.
    let mut config = w.pq_client();
    config.max_fragment_size = Some(64);
    let tcp = TcpStream::connect(e.gateway_addr(443)).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let trickle = Trickle {
        inner: tcp,
        max: 100,
        pause: None,
        writes: 0,
        sent: Vec::new(),
    };
    let mut tls = tokio::time::timeout(Duration::from_secs(10), tls_connect(config, HOST, trickle))
        .await
        .expect("handshake timed out")
        .expect("handshake through the gateway");

    // The hello really was cut up: many handshake records, many writes.
    let (trickle, _) = tls.get_ref();
    let hello_records: Vec<(u8, usize)> = records(&trickle.sent)
        .into_iter()
        .take_while(|(t, _)| *t == 22)
        .collect();
    let hello_len: usize = hello_records.iter().map(|(_, l)| 5 + l).sum();
    assert!(hello_len > 1200, "a {hello_len}-byte hello");
    assert!(
        hello_records.len() >= 20,
        "hello in {} record(s): {hello_records:?}",
        hello_records.len()
    );
    assert!(hello_records.iter().all(|(_, l)| *l <= 64), "{hello_records:?}");
    assert!(
        trickle.writes >= hello_len / 100,
        "{} writes for a {hello_len}-byte hello",
        trickle.writes
    );

    let (head, len, sha) = get(&mut tls, "/politics").await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("content-length: 151654\r\n"), "{head}");
    assert_eq!(len, POLITICS_SIZE);
    assert_eq!(
        sha,
        pattern_sink_result(POLITICS_SIZE).sha256,
        "the page arrived altered"
    );
    assert_eq!(origin.connections(), 1);
    assert_eq!(origin.established()[0].tls.as_ref().unwrap().sni.as_deref(), Some(HOST));
    drop(tls);
    let line = e.wait_for_log_lines(1, Duration::from_secs(5)).remove(0);
    let (rx, tx) = assert_passthrough_line(&line, &e, w.ip);
    assert!(rx >= hello_len as u64 && tx > POLITICS_SIZE, "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_mib_upload_with_half_close_matches_at_the_sink() {
    let w = World::new(Ipv4Addr::new(127, 0, 0, 124)).await;
    let sink = SinkOrigin::start(w.origin_addr(), Some(w.origin_tls()));
    let e = w.egressd(None).await;
    let started = Instant::now();

    let tcp = TcpStream::connect(e.gateway_addr(443)).await.unwrap();
    let mut tls = tls_connect(w.client(), HOST, tcp)
        .await
        .expect("handshake through the gateway");
    let mut offset = 0;
    while offset < HUNDRED_MIB {
        let len = (HUNDRED_MIB - offset).min(PATTERN_CHUNK as u64) as usize;
        tls.write_all(&pattern_chunk(offset, len)).await.unwrap();
        offset += len as u64;
    }
    // Half-close: close_notify and FIN; the sink's answer must still come back.
    tls.shutdown().await.unwrap();
    let mut reply = String::new();
    let read = tokio::time::timeout(Duration::from_secs(20), tls.read_to_string(&mut reply)).await;
    read.expect("no reply after the half-close").expect("reading the reply");
    let expected = pattern_sink_result(HUNDRED_MIB);
    assert_eq!(
        SinkResult::parse(&reply),
        Some(expected.clone()),
        "sink replied {reply:?}"
    );
    assert_eq!(sink.results(), [expected]);
    eprintln!("100 MiB upload through passthrough: {:?}", started.elapsed());

    let line = e.wait_for_log_lines(1, Duration::from_secs(5)).remove(0);
    let (rx, tx) = assert_passthrough_line(&line, &e, w.ip);
    assert!(rx >= HUNDRED_MIB, "{line}");
    assert!(tx < 64 * 1024, "{line}");
    let rx_stat = e
        .stat("tcp.outbound|443||edition.cnn.com.downstream_cx_rx_bytes_total")
        .unwrap();
    assert!(rx_stat >= HUNDRED_MIB, "rx {rx_stat}");
    assert_eq!(rx_stat, rx, "the log line and the counter agree");
    assert!(e.stat("sni.edition.cnn.com.rx_bytes_total").unwrap() >= HUNDRED_MIB);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_mib_download_matches_the_origins_checksum() {
    let w = World::new(Ipv4Addr::new(127, 0, 0, 125)).await;
    let origin = RawOrigin::start(w.origin_addr(), Some(w.origin_tls()));
    let e = w.egressd(None).await;
    let started = Instant::now();

    let tcp = TcpStream::connect(e.gateway_addr(443)).await.unwrap();
    let mut tls = tls_connect(w.client(), HOST, tcp)
        .await
        .expect("handshake through the gateway");
    let (head, len, sha) = get(&mut tls, &format!("/bytes/{HUNDRED_MIB}")).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert_eq!(len, HUNDRED_MIB);
    // Computed incrementally over the pattern, as the origin sent it.
    assert_eq!(sha, pattern_sink_result(HUNDRED_MIB).sha256, "the body arrived altered");
    assert_eq!(origin.bytes_sent(), HUNDRED_MIB + head.len() as u64);
    eprintln!("100 MiB download through passthrough: {:?}", started.elapsed());
    // The origin closed; the connection ends (and is logged) once the client closes too.
    drop(tls);

    let line = e.wait_for_log_lines(1, Duration::from_secs(5)).remove(0);
    let (_, tx) = assert_passthrough_line(&line, &e, w.ip);
    assert!(tx >= HUNDRED_MIB, "{line}");
    let tx_stat = e
        .stat("tcp.outbound|443||edition.cnn.com.downstream_cx_tx_bytes_total")
        .unwrap();
    assert_eq!(tx_stat, tx, "the log line and the counter agree");
}

/// Half-close at the TCP level (not only TLS close_notify): the client sends a real hello and
/// 1 MiB, shuts down its write side, and still gets everything the origin sends after its EOF.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_is_forwarded_and_the_reply_still_arrives() {
    let w = World::new(Ipv4Addr::new(127, 0, 0, 126)).await;
    // A plain-TCP sink: it sees the client's exact bytes and replies only after their FIN.
    let sink = SinkOrigin::start(w.origin_addr(), None);
    let e = w.egressd(None).await;

    let hello = client_hello(w.client(), sni(HOST));
    let data = pattern(0, 1 << 20);
    let mut s = TcpStream::connect(e.gateway_addr(443)).await.unwrap();
    s.write_all(&hello).await.unwrap();
    s.write_all(&data).await.unwrap();
    s.shutdown().await.unwrap();
    let mut reply = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut reply)).await;
    read.expect("no reply after the half-close").expect("reading the reply");

    let mut h = Sha256::new();
    h.update(&hello);
    h.update(&data);
    let expected = SinkResult {
        bytes: (hello.len() + data.len()) as u64,
        sha256: h.finish_hex(),
    };
    assert_eq!(
        String::from_utf8_lossy(&reply),
        expected.reply_line(),
        "the origin's reply after the FIN"
    );
    assert_eq!(sink.results(), std::slice::from_ref(&expected));

    let line = e.wait_for_log_lines(1, Duration::from_secs(5)).remove(0);
    let (rx, tx) = assert_passthrough_line(&line, &e, w.ip);
    assert_eq!((rx, tx), (expected.bytes, reply.len() as u64), "{line}");
}

/// A plain TCP Gateway server with a `tcp` route: bytes go through, counted under the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_tcp_server_forwards_by_tcp_route() {
    let dns = TestDns::start().await;
    let ip = Ipv4Addr::new(127, 0, 0, 130);
    dns.set_a("db.example.com", &[ip], 30);
    let sink = SinkOrigin::start(SocketAddr::new(ip.into(), 5432), None);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("tcp.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw}\nspec:\n  selector: {istio: egressgateway}\n  servers:\n  - port: {number: 5432, name: tcp, protocol: TCP}\n    hosts: ['*']\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: db}\nspec:\n  hosts: [db.example.com]\n  ports: [{number: 5432, name: tcp, protocol: TCP}]\n  resolution: DNS\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: db}\nspec:\n  hosts: [db.example.com]\n  gateways: [gw]\n  tcp:\n  - match: [{port: 5432}]\n    route: [{destination: {host: db.example.com, port: {number: 5432}}}]\n",
    )
    .unwrap();
    let mut opts = EgressdOptions::new(dir.path());
    opts.dns = Some(dns.addr());
    opts.port_mapping = vec![(5432, 0)];
    let e = Egressd::start_async(opts).await;
    let mut stream = tokio::net::TcpStream::connect(e.gateway_addr(5432)).await.unwrap();
    let payload = pattern(0, 1 << 20);
    stream.write_all(&payload).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).await.unwrap();
    assert_eq!(SinkResult::parse(&reply), Some(pattern_sink_result(1 << 20)), "{reply}");
    assert_eq!(sink.connections(), 1);
    drop(stream);
    let line = e.wait_for_log_lines(1, Duration::from_secs(5)).remove(0);
    assert!(
        line.contains(&format!("\"{ip}:5432\" outbound|5432||db.example.com ")),
        "{line}"
    );
    assert_eq!(
        e.stat("tcp.outbound|5432||db.example.com.downstream_cx_rx_bytes_total"),
        Some(1 << 20)
    );
}
