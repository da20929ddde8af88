//! Issue 3 end to end: the seed's HTTP scenario through the real egressd binary, with a real DNS
//! server, real origins and curl; every routing outcome with Envoy's status, flags and details;
//! h2c both ways; DNS refresh and failure; an upstream dropped mid-response; headers.

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use support::dns::TestDns;
use support::egressd::{Egressd, EgressdOptions, LogFormat};
use support::origin::Origin;
use support::tools::{curl_async, curl_status, stdout};

/// Istio resources for one external host, `host` → `port` (ServiceEntry resolved by DNS).
fn config(host: &str, extra: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: istio-egressgateway}}\nspec:\n  selector: {{istio: egressgateway}}\n  servers:\n  - port: {{number: 80, name: http, protocol: HTTP}}\n    hosts: ['*']\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: ext}}\nspec:\n  hosts: [{host}]\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  resolution: DNS\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: ext}}\nspec:\n  hosts: [{host}]\n  gateways: [istio-egressgateway]\n  http:\n  - name: ext-route\n    route: [{{destination: {{host: {host}, port: {{number: 80}}}}}}]\n{extra}"
    );
    std::fs::write(dir.path().join("istio.yaml"), yaml).unwrap();
    dir
}

async fn start(config_dir: &Path, dns: &TestDns, format: LogFormat) -> Egressd {
    start_workers(config_dir, dns, format, None).await
}

/// `start` with `--concurrency workers` (default: the test launcher's).
async fn start_workers(config_dir: &Path, dns: &TestDns, format: LogFormat, workers: Option<usize>) -> Egressd {
    let mut opts = EgressdOptions::new(config_dir);
    opts.dns = Some(dns.addr());
    opts.port_mapping = vec![(80, 0)];
    opts.access_log = format;
    if let Some(n) = workers {
        opts.concurrency = n;
    }
    Egressd::start_async(opts).await
}

fn gateway_url(e: &Egressd, path: &str) -> String {
    format!("http://127.0.0.1:{}{path}", e.bound_port(80))
}

/// The fields of one TEXT access-log line, split as Istio's format lays them out.
/// Reads a request head off a hand-written origin's connection (byte by byte: nothing of the
/// body is taken).
async fn read_request_head(s: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_http_scenario_with_curl() {
    let dns = TestDns::start().await;
    let ip = Ipv4Addr::new(127, 0, 0, 101);
    dns.set_a("edition.cnn.com", &[ip], 30);
    let origin = Origin::start(SocketAddr::new(ip.into(), 80), None);
    // The redirect target: https://edition.cnn.com/politics, served directly (not through the
    // gateway), as in the seed, by a TLS origin with a test CA.
    let ca = support::certs::TestCa::new("test-ca");
    let leaf = ca.server_cert(&["edition.cnn.com"]);
    let https = support::raw::RawOrigin::start(
        SocketAddr::new(ip.into(), 443),
        Some(support::certs::server_config(&leaf, &[b"http/1.1"])),
    );
    let ca_dir = tempfile::tempdir().unwrap();
    let ca_file = ca.write_root(ca_dir.path(), "ca.pem");
    let e = start(
        Path::new("tests/fixtures/seed/http-mtls-disabled"),
        &dns,
        LogFormat::Text,
    )
    .await;

    let connect_to = format!("edition.cnn.com:80:127.0.0.1:{}", e.bound_port(80));
    let resolve = format!("edition.cnn.com:443:{ip}");
    let out = curl_async(&[
        "-sL",
        "-o",
        "/dev/null",
        "-D",
        "-",
        "--connect-to",
        &connect_to,
        "--resolve",
        &resolve,
        "--cacert",
        ca_file.to_str().unwrap(),
        "-A",
        "curl/7.35.0",
        "http://edition.cnn.com/politics",
    ])
    .await;
    let headers = stdout(&out);
    let status: Vec<&str> = headers
        .lines()
        .filter(|l| l.starts_with("HTTP/"))
        .map(str::trim)
        .collect();
    assert_eq!(
        status,
        ["HTTP/1.1 301 Moved Permanently", "HTTP/1.1 200 OK"],
        "{headers}"
    );
    assert!(
        headers
            .to_ascii_lowercase()
            .contains("location: https://edition.cnn.com/politics"),
        "{headers}"
    );
    assert!(headers.contains("151654"), "{headers}");
    assert_eq!(origin.requests().len(), 1);
    assert_eq!(https.requests().len(), 1);

    let line = e.wait_for_log_lines(1, Duration::from_secs(5)).remove(0);
    let f = fields(&line);
    // 24 fields; method, path and protocol share one quoted token.
    assert_eq!(f.len(), 22, "{line}");
    assert_eq!(&f[1], "GET /politics HTTP/1.1");
    assert_eq!(
        (&f[2][..], &f[3][..], &f[4][..], &f[5][..], &f[6][..]),
        ("301", "-", "via_upstream", "-", "-")
    );
    assert_eq!((&f[7][..], &f[8][..]), ("0", "0"), "bytes in/out: {line}");
    assert_eq!(&f[11], "127.0.0.1", "XFF has the downstream address");
    assert_eq!(&f[12], "curl/7.35.0");
    assert_eq!(f[13].len(), 36, "generated x-request-id: {line}");
    assert_eq!(&f[14], "edition.cnn.com");
    assert_eq!(f[15], format!("{ip}:80"));
    assert_eq!(&f[16], "outbound|80||edition.cnn.com");
    assert!(f[17].starts_with("127.0.0.1:"), "upstream local address: {line}");
    assert_eq!(f[18], format!("127.0.0.1:{}", e.bound_port(80)));
    assert!(f[19].starts_with("127.0.0.1:"));
    assert_eq!((&f[20][..], &f[21][..]), ("-", "-"), "no SNI, unnamed route: {line}");

    let stats = e.stats();
    for expected in [
        "cluster.outbound|80||edition.cnn.com.upstream_rq_301: 1",
        "cluster.outbound|80||edition.cnn.com.upstream_rq_3xx: 1",
        "cluster.outbound|80||edition.cnn.com.upstream_cx_total: 1",
        "http.outbound_127.0.0.1_",
        "listener.127.0.0.1_",
    ] {
        assert!(stats.contains(expected), "`{expected}` not in /stats:\n{stats}");
    }
    assert_eq!(
        e.stat(&format!(
            "http.outbound_127.0.0.1_{}.downstream_rq_3xx",
            e.bound_port(80)
        )),
        Some(1)
    );
    let prom = e.get("/stats/prometheus").text();
    assert!(
        prom.contains(
            "envoy_cluster_upstream_rq{cluster_name=\"outbound|80||edition.cnn.com\",response_code=\"301\"} 1"
        ),
        "{prom}"
    );
    let filtered = e.get("/stats?filter=edition.cnn.com.upstream_rq_301").text();
    assert_eq!(
        filtered.trim(),
        "cluster.outbound|80||edition.cnn.com.upstream_rq_301: 1"
    );
    let clusters = e.get("/clusters").text();
    assert!(
        clusters.contains(&format!("outbound|80||edition.cnn.com::{ip}:80::cx_total::1")),
        "{clusters}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_outcome_has_envoys_status_flags_and_details() {
    let dns = TestDns::start().await;
    dns.set_a("ok.example.com", &[Ipv4Addr::new(127, 0, 0, 102)], 30);
    // Nothing listens on 127.0.0.103:80: connections are refused.
    dns.set_a("down.example.com", &[Ipv4Addr::new(127, 0, 0, 103)], 30);
    let _origin = Origin::start("127.0.0.102:80".parse().unwrap(), None);
    let extra = "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: more}\nspec:\n  hosts: [nocluster.example.com, none.example.com, down.example.com, noretry.example.com]\n  gateways: [istio-egressgateway]\n  http:\n  - match: [{authority: {exact: nocluster.example.com}}]\n    route: [{destination: {host: nocluster.example.com}}]\n  - match: [{authority: {exact: none.example.com}}]\n    route: [{destination: {host: none.example.com}}]\n  - match: [{authority: {exact: noretry.example.com}}]\n    retries: {attempts: 0}\n    route: [{destination: {host: down.example.com}}]\n  - route: [{destination: {host: down.example.com}}]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: slow}\nspec:\n  hosts: [slow.example.com]\n  gateways: [istio-egressgateway]\n  http:\n  - timeout: 0.3s\n    route: [{destination: {host: ok.example.com}}]\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: none}\nspec:\n  hosts: [none.example.com]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: NONE\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: down}\nspec:\n  hosts: [down.example.com]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: DNS\n";
    let dir = config("ok.example.com", extra);
    let e = start(dir.path(), &dns, LogFormat::Text).await;

    let cases: [(&str, &str, u16, &str, usize); 6] = [
        ("unknown.example.com", "/", 404, "NR route_not_found", 0),
        ("nocluster.example.com", "/", 503, "NC cluster_not_found", 0),
        ("none.example.com", "/", 503, "UH no_healthy_upstream", 19),
        (
            "down.example.com",
            "/",
            503,
            "URX,UF upstream_reset_before_response_started{remote_connection_failure|delayed_connect_error:_Connection_refused}",
            121,
        ),
        (
            "noretry.example.com",
            "/",
            503,
            "UF upstream_reset_before_response_started{remote_connection_failure|delayed_connect_error:_Connection_refused}",
            98,
        ),
        ("slow.example.com", "/hang", 504, "UT upstream_response_timeout", 24),
    ];
    for (i, (host, path, status, flags_details, body_len)) in cases.iter().enumerate() {
        let out = curl_async(&[
            "-s",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "-H",
            &format!("Host: {host}"),
            &gateway_url(&e, path),
        ])
        .await;
        let text = stdout(&out);
        let (body, code) = text.rsplit_once('\n').unwrap();
        assert_eq!(code, status.to_string(), "{host}: {text}");
        assert_eq!(body.len(), *body_len, "{host}: body {body:?}");
        let line = e.wait_for_log_lines(i + 1, Duration::from_secs(5)).remove(i);
        assert!(
            line.contains(&format!("\" {status} {flags_details} ")),
            "{host}: {line}"
        );
    }
    assert_eq!(
        e.stat("cluster.outbound|80||down.example.com.upstream_cx_connect_fail"),
        Some(4)
    );
    assert_eq!(
        e.stat("cluster.outbound|80||down.example.com.upstream_rq_total"),
        Some(0)
    );
    assert_eq!(e.stat("cluster.outbound|80||down.example.com.upstream_rq_503"), Some(2));
    assert_eq!(
        e.stat("cluster.outbound|80||ok.example.com.upstream_rq_timeout"),
        Some(1)
    );
    assert!(
        e.stat(&format!("http.outbound_127.0.0.1_{}.no_route", e.bound_port(80)))
            .unwrap()
            >= 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_from_the_client_and_to_the_upstream() {
    let dns = TestDns::start().await;
    dns.set_a("h2.example.com", &[Ipv4Addr::new(127, 0, 0, 104)], 30);
    let origin = Origin::start("127.0.0.104:80".parse().unwrap(), None);
    let dir = config("h2.example.com", "");
    // The ServiceEntry port says HTTP2: the gateway talks h2c to the origin.
    let yaml = std::fs::read_to_string(dir.path().join("istio.yaml"))
        .unwrap()
        .replace("protocol: HTTP}]\n  resolution", "protocol: HTTP2}]\n  resolution");
    std::fs::write(dir.path().join("istio.yaml"), yaml).unwrap();
    // One worker: pools are per worker (as Envoy's), and the sharing below must be certain.
    let e = start_workers(dir.path(), &dns, LogFormat::Json, Some(1)).await;
    let out = curl_async(&[
        "-s",
        "--http2-prior-knowledge",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{http_version}",
        "-H",
        "Host: h2.example.com",
        &gateway_url(&e, "/echo"),
    ])
    .await;
    assert_eq!(stdout(&out), "200 2");
    let out = curl_async(&[
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{http_version}",
        "-H",
        "Host: h2.example.com",
        &gateway_url(&e, "/echo"),
    ])
    .await;
    assert_eq!(stdout(&out), "200 1.1");
    let seen = origin.wait_for_requests(2, Duration::from_secs(5));
    assert!(seen.iter().all(|r| r.version == "HTTP/2"), "{seen:?}");
    assert_eq!(origin.connections(), 1, "both requests share one pooled h2 connection");
    let lines = e.wait_for_log_lines(2, Duration::from_secs(5));
    let first: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(first["protocol"], "HTTP/2");
    assert_eq!(first["response_code"], 200);
    assert_eq!(first["upstream_cluster"], "outbound|80||h2.example.com");
    assert_eq!(first["route_name"], "ext-route");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_changes_are_followed_and_failures_keep_the_last_answer() {
    let dns = TestDns::start().await;
    dns.set_a("moving.example.com", &[Ipv4Addr::new(127, 0, 0, 105)], 1);
    let first = Origin::start("127.0.0.105:80".parse().unwrap(), None);
    let second = Origin::start("127.0.0.106:80".parse().unwrap(), None);
    let dir = config("moving.example.com", "");
    let e = start(dir.path(), &dns, LogFormat::Text).await;
    let url = gateway_url(&e, "/");
    let get = || async { curl_status(&url, &["-H", "Host: moving.example.com"]).await };
    assert_eq!(stdout(&get().await), "200");
    assert_eq!(first.requests().len(), 1);

    dns.set_a("moving.example.com", &[Ipv4Addr::new(127, 0, 0, 106)], 1);
    let deadline = std::time::Instant::now() + Duration::from_secs(8);
    while second.requests().is_empty() && std::time::Instant::now() < deadline {
        assert_eq!(stdout(&get().await), "200");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !second.requests().is_empty(),
        "the TTL expired but the new address was never used"
    );

    dns.set_failing(true);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = second.requests().len();
    assert_eq!(
        stdout(&get().await),
        "200",
        "the last good answer is kept while DNS fails"
    );
    assert_eq!(second.requests().len(), before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_dropped_mid_response_resets_the_client() {
    let dns = TestDns::start().await;
    dns.set_a("reset.example.com", &[Ipv4Addr::new(127, 0, 0, 107)], 30);
    let _origin = Origin::start("127.0.0.107:80".parse().unwrap(), None);
    let dir = config("reset.example.com", "");
    let e = start(dir.path(), &dns, LogFormat::Text).await;
    let out = curl_async(&[
        "-s",
        "-o",
        "/dev/null",
        "-H",
        "Host: reset.example.com",
        &gateway_url(&e, "/reset-mid-body"),
    ])
    .await;
    assert_ne!(out.status.code(), Some(0), "the client must see the transfer cut short");
    let line = e.wait_for_log_lines(1, Duration::from_secs(5)).remove(0);
    assert!(
        line.contains("\" 200 UC upstream_reset_after_response_started{connection_termination} "),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_are_handled_like_envoys_gateway() {
    let dns = TestDns::start().await;
    dns.set_a("echo.example.com", &[Ipv4Addr::new(127, 0, 0, 108)], 30);
    let origin = Origin::start("127.0.0.108:80".parse().unwrap(), None);
    let dir = config("echo.example.com", "");
    let e = start(dir.path(), &dns, LogFormat::Text).await;
    let out = curl_async(&[
        "-s",
        "-D",
        "-",
        "-o",
        "/dev/null",
        "-H",
        "Host: echo.example.com",
        "-H",
        "x-forwarded-for: 10.1.2.3",
        "-H",
        "x-forwarded-client-cert: By=spiffe://cluster.local/ns/a/sa/b",
        "-H",
        "x-envoy-peer-metadata: abc",
        "-H",
        "x-envoy-peer-metadata-id: sidecar~1",
        "-H",
        "Connection: keep-alive, x-hop",
        "-H",
        "x-hop: 1",
        &gateway_url(&e, "/echo"),
    ])
    .await;
    let response = stdout(&out).to_ascii_lowercase();
    assert!(response.contains("x-envoy-upstream-service-time: "), "{response}");
    let seen = origin.wait_for_requests(1, Duration::from_secs(5)).remove(0);
    assert_eq!(seen.header("x-forwarded-for"), Some("10.1.2.3,127.0.0.1"));
    assert_eq!(seen.header("x-request-id").map(str::len), Some(36));
    assert_eq!(seen.header("host"), Some("echo.example.com"));
    for gone in [
        "x-forwarded-client-cert",
        "x-envoy-peer-metadata",
        "x-envoy-peer-metadata-id",
        "x-hop",
    ] {
        assert_eq!(seen.header(gone), None, "{gone} must not reach an external host");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_pool_limits_queue_then_overflow_with_uo() {
    let dns = TestDns::start().await;
    dns.set_a("cb.example.com", &[Ipv4Addr::new(127, 0, 0, 109)], 30);
    let origin = Origin::start("127.0.0.109:80".parse().unwrap(), None);
    // Istio's circuit-breaking task: one connection, one pending request.
    let extra = "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: cb}\nspec:\n  host: cb.example.com\n  trafficPolicy:\n    connectionPool:\n      tcp: {maxConnections: 1}\n      http: {http1MaxPendingRequests: 1}\n";
    let dir = config("cb.example.com", extra);
    // One worker: with more, each worker may open one connection past the limit (below).
    let e = start_workers(dir.path(), &dns, LogFormat::Text, Some(1)).await;
    let url = gateway_url(&e, "/slow/600");
    let mut tasks = Vec::new();
    for i in 0..3u64 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            // Staggered so that the first holds the connection and the second is pending.
            tokio::time::sleep(Duration::from_millis(100 * i)).await;
            stdout(&curl_status(&url, &["-H", "Host: cb.example.com"]).await)
        }));
    }
    let mut codes = Vec::new();
    for t in tasks {
        codes.push(t.await.unwrap());
    }
    codes.sort();
    assert_eq!(
        codes,
        ["200", "200", "503"],
        "one served, one queued then served, one overflowed"
    );
    assert_eq!(origin.connections(), 1, "maxConnections: 1");
    assert_eq!(
        e.stat("cluster.outbound|80||cb.example.com.upstream_rq_pending_overflow"),
        Some(1)
    );
    let lines = e.wait_for_log_lines(3, Duration::from_secs(5));
    assert!(
        lines
            .iter()
            .any(|l| l.contains("\" 503 UO upstream_reset_before_response_started{overflow} ")),
        "{lines:#?}"
    );
}

/// Two workers accept on one port (`SO_REUSEPORT`): connections are spread over both and counted
/// per worker as Envoy counts them; pools are per worker, and a worker with no connection to an
/// endpoint opens one even at `maxConnections` (Envoy's rule), so that its requests are not
/// stranded behind a connection another worker holds idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_the_port_and_each_keeps_its_own_pool() {
    let dns = TestDns::start().await;
    dns.set_a("wk.example.com", &[Ipv4Addr::new(127, 0, 0, 110)], 30);
    let origin = Origin::start("127.0.0.110:80".parse().unwrap(), None);
    let extra = "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: wk}\nspec:\n  host: wk.example.com\n  trafficPolicy:\n    connectionPool:\n      tcp: {maxConnections: 1}\n";
    let dir = config("wk.example.com", extra);
    let e = start_workers(dir.path(), &dns, LogFormat::Text, Some(2)).await;
    let threads: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", e.pid()))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|c| c.trim().to_string())
        .filter(|c| c.starts_with("egressd-wrk-"))
        .collect();
    assert_eq!(threads.len(), 2, "{threads:?}");

    // 16 keep-alive connections, one request each in turn: both workers get some.
    const CONNECTIONS: usize = 16;
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", e.bound_port(80)))
            .await
            .unwrap();
        let (mut client, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        let request = http::Request::get("/echo")
            .header("host", "wk.example.com")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let response = client.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        http_body_util::BodyExt::collect(response.into_body()).await.unwrap();
        clients.push(client);
    }
    let listener = format!("listener.127.0.0.1_{}", e.bound_port(80));
    let per_worker: Vec<u64> = (0..2)
        .map(|w| {
            e.stat(&format!("{listener}.worker_{w}.downstream_cx_total"))
                .unwrap_or(0)
        })
        .collect();
    assert_eq!(per_worker.iter().sum::<u64>(), CONNECTIONS as u64, "{per_worker:?}");
    assert!(per_worker.iter().all(|&n| n > 0), "both workers accept: {per_worker:?}");
    assert_eq!(
        e.stat(&format!("{listener}.downstream_cx_total")),
        Some(CONNECTIONS as u64)
    );
    assert_eq!(
        e.stat(&format!("{listener}.worker_0.downstream_cx_active")),
        Some(per_worker[0])
    );
    let prometheus = e.get("/stats/prometheus").text();
    let line = format!(
        "envoy_listener_worker_downstream_cx_total{{listener_address=\"127.0.0.1_{}\",worker_id=\"1\"}} {}",
        e.bound_port(80),
        per_worker[1]
    );
    assert!(prometheus.lines().any(|l| l == line), "`{line}` not in\n{prometheus}");

    // One upstream connection per worker, though maxConnections is 1: the second was opened
    // past the limit and counted as an overflow; every request was served.
    assert_eq!(origin.connections(), 2);
    assert_eq!(
        e.stat("cluster.outbound|80||wk.example.com.upstream_cx_overflow"),
        Some(1)
    );
    assert_eq!(
        e.stat("cluster.outbound|80||wk.example.com.upstream_rq_200"),
        Some(CONNECTIONS as u64)
    );
    drop(clients);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while e.stat(&format!("{listener}.worker_0.downstream_cx_active")) != Some(0) {
        assert!(
            std::time::Instant::now() < deadline,
            "worker_0 active connections stay counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Issue 6: plaintext HTTP/1.1 upstreams are served by egressd's own client, which hands a
/// `Content-Length` body to the client's socket with splice(2). Every framing the client meets
/// (a large length-delimited body, chunked, HEAD, 204, a request body with a length and one
/// chunked) arrives whole, on one client connection and one pooled upstream connection; the
/// large body went through a pipe; stats and the access log count the spliced bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_upstreams_splice_bodies_and_keep_one_connection() {
    use http_body_util::{BodyExt, Full};
    use support::origin::pattern;

    let dns = TestDns::start().await;
    dns.set_a("own.example.com", &[Ipv4Addr::new(127, 0, 0, 111)], 30);
    let origin = Origin::start("127.0.0.111:80".parse().unwrap(), None);
    let dir = config("own.example.com", "");
    // One worker: pools are per worker, and the reuse below must be certain.
    let e = start_workers(dir.path(), &dns, LogFormat::Json, Some(1)).await;
    let pipes = |e: &Egressd| e.fd_counts().get("pipe").copied().unwrap_or(0);
    let pipes_before = pipes(&e);

    let tcp = tokio::net::TcpStream::connect(e.gateway_addr(80)).await.unwrap();
    let (mut client, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    type Body = http_body_util::combinators::BoxBody<bytes::Bytes, std::convert::Infallible>;
    let request = |method: &str, path: &str, body: Body| {
        http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "own.example.com")
            .body(body)
            .unwrap()
    };
    let empty = || Full::new(bytes::Bytes::new()).boxed();
    const BIG: usize = 3_000_000;

    // hyper's client takes a request only once the previous exchange has settled.
    client.ready().await.unwrap();
    let r = client
        .send_request(request("GET", "/bytes/3000000", empty()))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], BIG.to_string().as_str());
    let got = r.into_body().collect().await.unwrap().to_bytes();
    assert!(
        got.len() == BIG && got[..] == pattern(0, BIG)[..],
        "large body corrupted ({} bytes)",
        got.len()
    );

    client.ready().await.unwrap();
    let r = client
        .send_request(request("GET", "/chunked/100000", empty()))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.into_body().collect().await.unwrap().to_bytes()[..],
        pattern(0, 100_000)[..]
    );

    client.ready().await.unwrap();
    let r = client
        .send_request(request("HEAD", "/bytes/77", empty()))
        .await
        .unwrap();
    assert_eq!(
        (r.status().as_u16(), r.headers()["content-length"].to_str().unwrap()),
        (200, "77")
    );
    assert!(r.into_body().collect().await.unwrap().to_bytes().is_empty());

    client.ready().await.unwrap();
    let r = client
        .send_request(request("GET", "/status/204", empty()))
        .await
        .unwrap();
    assert_eq!(r.status(), 204);

    let sized = Full::new(bytes::Bytes::from(vec![b'x'; 70_000])).boxed();
    client.ready().await.unwrap();
    let r = client.send_request(request("POST", "/echo", sized)).await.unwrap();
    let echo = String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(echo.contains("\"body_length\":70000"), "{echo}");

    // A request body of unknown length goes out chunked.
    let unsized_body = support::origin::OriginBody::pattern_unsized(5000)
        .map_err(|e| -> std::convert::Infallible { panic!("{e}") })
        .boxed();
    client.ready().await.unwrap();
    let r = client
        .send_request(request("POST", "/echo", unsized_body))
        .await
        .unwrap();
    let echo = String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(echo.contains("\"body_length\":5000"), "{echo}");
    assert!(echo.contains("\"transfer-encoding\":\"chunked\""), "{echo}");

    assert_eq!(
        origin.connections(),
        1,
        "one pooled upstream connection for every request"
    );
    // The pipe the large body went through is kept for the next one.
    assert_eq!(
        pipes(&e),
        pipes_before + 2,
        "no pipe was taken: the body was copied ({})",
        e.fd_kinds()
    );
    let lines = e.wait_for_log_lines(6, Duration::from_secs(5));
    let first: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(first["bytes_sent"], BIG as u64, "{}", lines[0]);
    assert_eq!(first["response_flags"], "-");
    let rx = e
        .stat("cluster.outbound|80||own.example.com.upstream_cx_rx_bytes_total")
        .unwrap();
    assert!(rx > (BIG + 100_000) as u64, "spliced bytes not counted: {rx}");
}

/// An upstream that answers before it has read the request body gets its answer passed on at
/// once, not after the route timeout, whether it then holds the connection without reading or
/// closes it (the upload then fails on a reset); the upload is abandoned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_before_the_request_body_is_passed_on_at_once() {
    use tokio::io::AsyncWriteExt;

    let dns = TestDns::start().await;
    dns.set_a("early.example.com", &[Ipv4Addr::new(127, 0, 0, 112)], 30);
    let listener = tokio::net::TcpListener::bind("127.0.0.112:80").await.unwrap();
    let origin = tokio::spawn(async move {
        for hold in [true, false] {
            let (mut s, _) = listener.accept().await.unwrap();
            read_request_head(&mut s).await;
            s.write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
            if hold {
                // Holds the connection without reading the body.
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    drop(s);
                });
            }
        }
    });
    let dir = config("early.example.com", "");
    let e = start(dir.path(), &dns, LogFormat::Text).await;
    let upload = dir.path().join("upload.bin");
    std::fs::write(&upload, vec![b'z'; 8_000_000]).unwrap();
    for (i, case) in ["held", "closed"].iter().enumerate() {
        let started = std::time::Instant::now();
        let out = curl_async(&[
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "Host: early.example.com",
            "--data-binary",
            &format!("@{}", upload.display()),
            &gateway_url(&e, "/upload"),
        ])
        .await;
        assert_eq!(stdout(&out), "413", "{case}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{case}: the early answer waited for the upload"
        );
        let line = e.wait_for_log_lines(i + 1, Duration::from_secs(5)).remove(i);
        assert!(
            line.contains("\"POST /upload HTTP/1.1\" 413 - via_upstream"),
            "{case}: {line}"
        );
    }
    origin.abort();
}

/// An upstream that sends its response head first and only then reads the request body (a
/// streaming echo) gets the whole body: the upload goes on while the response is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upload_goes_on_after_the_response_head() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dns = TestDns::start().await;
    dns.set_a("stream.example.com", &[Ipv4Addr::new(127, 0, 0, 113)], 30);
    let listener = tokio::net::TcpListener::bind("127.0.0.113:80").await.unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let head = read_request_head(&mut s).await;
        let text = head.to_ascii_lowercase();
        let length: usize = text
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .expect("the upload's length is forwarded")
            .trim()
            .parse()
            .unwrap();
        s.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            .await
            .unwrap();
        let mut left = length;
        let mut buf = vec![0u8; 16 * 1024];
        while left > 0 {
            let n = s.read(&mut buf[..left.min(16 * 1024)]).await.unwrap();
            assert!(n > 0, "the upload stopped with {left} bytes to go");
            left -= n;
            s.write_all(format!("{n:x}\r\n").as_bytes()).await.unwrap();
            s.write_all(&buf[..n]).await.unwrap();
            s.write_all(b"\r\n").await.unwrap();
        }
        s.write_all(b"0\r\n\r\n").await.unwrap();
    });
    let dir = config("stream.example.com", "");
    let e = start(dir.path(), &dns, LogFormat::Text).await;
    let upload = dir.path().join("upload.bin");
    let payload: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&upload, &payload).unwrap();
    let echoed = dir.path().join("echoed.bin");
    let out = curl_async(&[
        "-s",
        "--max-time",
        "20",
        "-o",
        &echoed.display().to_string(),
        "-w",
        "%{http_code}",
        "-H",
        "Host: stream.example.com",
        "--data-binary",
        &format!("@{}", upload.display()),
        &gateway_url(&e, "/stream"),
    ])
    .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "the exchange hung or failed (curl {:?})",
        out.status
    );
    assert_eq!(stdout(&out), "200");
    assert!(
        std::fs::read(&echoed).unwrap() == payload,
        "the echo differs from the upload"
    );
}

/// An idle pooled connection that the upstream closes is released within seconds (its
/// descriptor, `upstream_cx_active`, its `maxConnections` slot), although no request asks for
/// the endpoint again: Envoy notices a remote close at once, egressd's own client on a sweep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_closed_by_the_upstream_are_released() {
    use tokio::io::AsyncWriteExt;

    let dns = TestDns::start().await;
    dns.set_a("closing.example.com", &[Ipv4Addr::new(127, 0, 0, 114)], 30);
    let listener = tokio::net::TcpListener::bind("127.0.0.114:80").await.unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        read_request_head(&mut s).await;
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await
            .unwrap();
        // The upstream's keep-alive timeout, short.
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(s);
        std::future::pending::<()>().await;
    });
    let dir = config("closing.example.com", "");
    let e = start(dir.path(), &dns, LogFormat::Text).await;
    let out = curl_status(&gateway_url(&e, "/"), &["-H", "Host: closing.example.com"]).await;
    assert_eq!(stdout(&out), "200");
    let active = "cluster.outbound|80||closing.example.com.upstream_cx_active";
    assert_eq!(e.stat(active), Some(1), "the connection is pooled");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while e.stat(active) != Some(0) {
        assert!(
            std::time::Instant::now() < deadline,
            "the closed idle connection is still held: {active} = {:?}",
            e.stat(active)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
