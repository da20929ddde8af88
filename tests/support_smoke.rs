//! The shared test support itself, without egressd's data plane: the test PKI issues what it
//! promises, the origins answer real clients (hyper, curl, openssl) as documented, and the
//! egressd launcher gets a real process ready and stops it.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::{ServerName, UnixTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::certs::{self, LeafOptions, TestCa, SLEEP_SPIFFE_ID};
use support::egressd::{Egressd, EgressdOptions};
use support::origin::{self, Origin, POLITICS_LOCATION};
use support::raw::{self, RawOrigin, SinkOrigin, POLITICS_SIZE};
use support::tools::{self, curl, openssl};

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn verify(leaf: &certs::Leaf, ca: &TestCa, usage: webpki::KeyUsage) -> Result<(), webpki::Error> {
    let anchor = webpki::anchor_from_trusted_cert(ca.root_der()).unwrap();
    let ee = webpki::EndEntityCert::try_from(&leaf.cert_der).unwrap();
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &[anchor],
        &leaf.chain_der[1..],
        UnixTime::now(),
        usage,
        None,
        None,
    )
    .map(|_| ())
}

#[test]
fn ca_issues_spiffe_cert_whose_uri_san_parses_back() {
    let ca = TestCa::new("cluster.local");
    let leaf = ca.spiffe_cert(SLEEP_SPIFFE_ID);
    let ee = webpki::EndEntityCert::try_from(&leaf.cert_der).unwrap();
    let uris: Vec<&str> = ee.valid_uri_names().collect();
    assert_eq!(uris, [SLEEP_SPIFFE_ID]);
    // Istio workload certs serve both ends of mTLS.
    verify(&leaf, &ca, webpki::KeyUsage::client_auth()).unwrap();
    verify(&leaf, &ca, webpki::KeyUsage::server_auth()).unwrap();
    assert!(leaf.key_pem.contains("PRIVATE KEY"));
    assert_eq!(certs::pem_certs(&leaf.chain_pem).len(), 1);
}

#[test]
fn ca_refusal_cases_fail_verification() {
    let ca = TestCa::new("cluster.local");
    let expired = ca.issue(&LeafOptions::spiffe(SLEEP_SPIFFE_ID).expired());
    assert!(matches!(
        verify(&expired, &ca, webpki::KeyUsage::client_auth()),
        Err(webpki::Error::CertExpired { .. })
    ));
    let other = TestCa::new("other").spiffe_cert(SLEEP_SPIFFE_ID);
    assert_eq!(
        verify(&other, &ca, webpki::KeyUsage::client_auth()),
        Err(webpki::Error::UnknownIssuer)
    );
    // A server cert has no client EKU.
    let server = ca.server_cert(&["edition.cnn.com"]);
    assert!(verify(&server, &ca, webpki::KeyUsage::client_auth()).is_err());
    let ee = webpki::EndEntityCert::try_from(&server.cert_der).unwrap();
    let name = ServerName::try_from("edition.cnn.com").unwrap();
    ee.verify_is_valid_for_subject_name(&name).unwrap();
}

#[test]
fn rsa_ca_with_intermediate_writes_istio_layout() {
    let root = TestCa::new_rsa("root");
    let ca = root.intermediate("intermediate");
    let dir = tempfile::tempdir().unwrap();
    let leaf = ca.write_istio_certs(dir.path());
    assert_eq!(leaf.chain_der.len(), 2, "leaf + intermediate");
    verify(&leaf, &ca, webpki::KeyUsage::client_auth()).unwrap();
    for file in ["cert-chain.pem", "key.pem", "root-cert.pem"] {
        assert!(dir.path().join(file).is_file(), "{file}");
    }
    let root_pem = std::fs::read_to_string(dir.path().join("root-cert.pem")).unwrap();
    assert_eq!(root_pem, root.root_pem());
    let ee = webpki::EndEntityCert::try_from(&leaf.cert_der).unwrap();
    assert_eq!(ee.valid_uri_names().collect::<Vec<_>>(), [certs::GATEWAY_SPIFFE_ID]);
}

async fn hyper_get(addr: SocketAddr, path: &str, h2: bool) -> (StatusCode, Vec<(String, String)>, Bytes) {
    let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let req = Request::get(path)
        .header("host", "edition.cnn.com")
        .header("x-test", "1")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = if h2 {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(conn);
        send.send_request(req).await.unwrap()
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        send.send_request(req).await.unwrap()
    };
    let status = resp.status();
    let headers = resp
        .headers()
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
        .collect();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, body)
}

#[tokio::test]
async fn origin_answers_hyper_over_h1_and_h2c() {
    let origin = Origin::start(addr("127.0.0.10:0"), None);
    for h2 in [false, true] {
        let (status, headers, body) = hyper_get(origin.addr(), "/politics", h2).await;
        assert_eq!(status, StatusCode::MOVED_PERMANENTLY);
        assert!(headers.contains(&("location".into(), POLITICS_LOCATION.into())));
        assert!(body.is_empty());

        let (status, _, body) = hyper_get(origin.addr(), "/bytes/200000", h2).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body.as_ref(), origin::pattern(0, 200_000));

        let (_, _, body) = hyper_get(origin.addr(), "/echo?x=1", h2).await;
        let echo: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(echo["method"], "GET");
        assert_eq!(echo["path"], "/echo?x=1");
        assert_eq!(echo["version"], if h2 { "HTTP/2" } else { "HTTP/1.1" });
        assert_eq!(echo["headers"]["x-test"], "1");
        assert_eq!(echo["body_length"], 0);

        let (status, _, _) = hyper_get(origin.addr(), "/status/503", h2).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let (_, _, body) = hyper_get(origin.addr(), "/anything", h2).await;
        assert_eq!(body.as_ref(), origin::HELLO.as_bytes());
    }
    let requests = origin.requests();
    assert_eq!(requests.len(), 10);
    assert_eq!(requests[0].version, "HTTP/1.1");
    assert_eq!(requests[5].version, "HTTP/2");
    assert_eq!(requests[0].header("X-Test"), Some("1"));
    assert_eq!(requests[0].authority.as_deref(), Some("edition.cnn.com"));
    assert_eq!(origin.connections(), 10);
}

#[tokio::test]
async fn origin_reset_mid_body_and_hang() {
    let origin = Origin::start(addr("127.0.0.10:0"), None);
    let io = TokioIo::new(TcpStream::connect(origin.addr()).await.unwrap());
    let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let req = Request::get("/reset-mid-body").body(Empty::<Bytes>::new()).unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.headers()["content-length"], "100000");
    let mut body = resp.into_body();
    let mut got = 0;
    let err = loop {
        match body.frame().await {
            Some(Ok(f)) => got += f.data_ref().map_or(0, |d| d.len()),
            Some(Err(e)) => break e,
            None => panic!("body ended cleanly after {got} bytes"),
        }
    };
    assert_eq!(got, 1000, "{err}");

    let io = TokioIo::new(TcpStream::connect(origin.addr()).await.unwrap());
    let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let req = Request::get("/hang").body(Empty::<Bytes>::new()).unwrap();
    let hung = tokio::time::timeout(Duration::from_millis(300), send.send_request(req)).await;
    assert!(hung.is_err(), "/hang answered");
    assert_eq!(origin.requests().last().unwrap().path, "/hang");
}

#[test]
fn origin_answers_curl_h1_and_h2_prior_knowledge() {
    let origin = Origin::start(addr("127.0.0.11:0"), None);
    let url = format!("http://{}/politics", origin.addr());
    for extra in [&[][..], &["--http2-prior-knowledge"][..]] {
        let mut args = vec!["-sS", "-o", "/dev/null", "-D", "-", "-H", "Host: edition.cnn.com"];
        args.extend_from_slice(extra);
        args.push(&url);
        let out = curl(&args);
        let head = tools::stdout(&out);
        assert!(out.status.success(), "{}", tools::stderr(&out));
        let first = head.lines().next().unwrap();
        assert!(
            first == "HTTP/1.1 301 Moved Permanently" || first == "HTTP/2 301 ",
            "{head}"
        );
        assert!(head.contains(&format!("location: {POLITICS_LOCATION}")), "{head}");
    }
    let versions: Vec<String> = origin.requests().into_iter().map(|r| r.version).collect();
    assert_eq!(versions, ["HTTP/1.1", "HTTP/2"]);
}

#[test]
fn tls_origin_answers_curl_and_openssl_with_the_test_ca() {
    let ca = TestCa::new("test-ca");
    let leaf = ca.server_cert(&["edition.cnn.com"]);
    let tls = certs::server_config(&leaf, &[b"h2", b"http/1.1"]);
    let origin = Origin::start(addr("127.0.0.12:0"), Some(tls));
    let dir = tempfile::tempdir().unwrap();
    let root = ca.write_root(dir.path(), "root-cert.pem");
    let port = origin.addr().port();
    let resolve = format!("edition.cnn.com:{port}:127.0.0.12");
    let url = format!("https://edition.cnn.com:{port}/politics");
    let out = curl(&[
        "-sS",
        "-D",
        "-",
        "-o",
        "/dev/null",
        "--cacert",
        root.to_str().unwrap(),
        "--resolve",
        &resolve,
        &url,
    ]);
    assert!(out.status.success(), "{}", tools::stderr(&out));
    assert!(tools::stdout(&out).starts_with("HTTP/2 301"), "{}", tools::stdout(&out));
    let conns = origin.established();
    let tls_info = conns[0].tls.as_ref().unwrap();
    assert_eq!(tls_info.sni.as_deref(), Some("edition.cnn.com"));
    assert_eq!(tls_info.alpn.as_deref(), Some(&b"h2"[..]));

    let connect = origin.addr().to_string();
    let out = openssl(
        &[
            "s_client",
            "-connect",
            &connect,
            "-servername",
            "edition.cnn.com",
            "-CAfile",
            root.to_str().unwrap(),
            "-showcerts",
        ],
        b"",
    );
    let text = tools::stdout(&out);
    assert!(text.contains("CN = edition.cnn.com"), "{text}");
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
}

#[tokio::test]
async fn raw_and_sink_origins_over_tls() {
    let ca = TestCa::new("test-ca");
    let tls = certs::server_config(&ca.server_cert(&["edition.cnn.com"]), &[]);
    let client = tokio_rustls::TlsConnector::from(certs::client_config(&ca, None));
    let name = ServerName::try_from("edition.cnn.com").unwrap();

    let raw_origin = RawOrigin::start(addr("127.0.0.13:0"), Some(tls.clone()));
    let tcp = TcpStream::connect(raw_origin.addr()).await.unwrap();
    let mut s = client.connect(name.clone(), tcp).await.unwrap();
    s.write_all(b"GET /politics HTTP/1.1\r\nhost: edition.cnn.com\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).await.unwrap();
    let head_end = reply.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&reply[..head_end]);
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(head.contains(&format!("content-length: {POLITICS_SIZE}")));
    assert_eq!(reply.len() - head_end, POLITICS_SIZE as usize);
    assert_eq!(raw_origin.requests()[0].path, "/politics");

    let sink = SinkOrigin::start(addr("127.0.0.13:0"), Some(tls));
    let tcp = TcpStream::connect(sink.addr()).await.unwrap();
    let mut s = client.connect(name, tcp).await.unwrap();
    let n: u64 = 3 * 1024 * 1024 + 17;
    let mut offset = 0;
    while offset < n {
        let len = (n - offset).min(origin::PATTERN_CHUNK as u64) as usize;
        s.write_all(&origin::pattern_chunk(offset, len)).await.unwrap();
        offset += len as u64;
    }
    s.shutdown().await.unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).await.unwrap();
    let result = raw::SinkResult::parse(&reply).unwrap();
    assert_eq!(result, raw::pattern_sink_result(n));
    assert_eq!(sink.results(), [result]);
    assert_eq!(
        raw::sha256_hex(b"abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[test]
fn egressd_starts_ready_serves_stats_and_stops() {
    let ca = TestCa::new("cluster.local");
    let certs_dir = tempfile::tempdir().unwrap();
    ca.write_istio_certs(certs_dir.path());
    let mut opts = EgressdOptions::new("tests/fixtures/seed/http-mtls-disabled");
    opts.certs = Some(certs_dir.path().to_path_buf());
    let egressd = Egressd::start(opts);
    let pid = egressd.pid();
    assert!(egressd.stats().contains("server."), "{}", egressd.stats());
    assert!(egressd.stat("server.live").is_some(), "{}", egressd.stats());
    let health = tools::http_get(egressd.health_addr(), "/healthz/ready").unwrap();
    assert_eq!(health.status, 200);
    let prom = tools::http_get(egressd.prometheus_addr(), "/stats/prometheus").unwrap();
    assert_eq!(prom.status, 200);
    assert!(egressd.open_fds() > 0);
    assert_ne!(egressd.bound_port(80), egressd.bound_port(443));
    drop(egressd);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "egressd {pid} still running after drop"
    );
}

#[test]
fn egressd_spawn_reports_an_exit() {
    let mut opts = EgressdOptions::new("tests/fixtures/broken");
    opts.port_mapping.clear();
    let mut egressd = Egressd::spawn(opts);
    let err = egressd.wait_ready(Duration::from_secs(15)).unwrap_err();
    assert!(err.contains("exited"), "{err}");
    assert!(!egressd.stderr().is_empty());
}
