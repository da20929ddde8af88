//! TLS termination at the gateway, end to end with the real binary: the seed's "mutual TLS
//! enabled" scenarios (HTTPS server with HTTP routes, TLS server with a tcp route) driven by curl
//! and rustls clients holding SPIFFE certificates from a test mesh CA; refusals counted in Envoy's
//! `ssl.*` stats and never reaching the origin; Istio's ALPN offers; certificate rotation; TLS 1.2
//! and 1.3 as the real `openssl s_client` sees them (cipher choice, session tickets, alerts).

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Empty;
use hyper::client::conn::http2;
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};

use rustls_pki_types::ServerName;
use tokio_rustls::TlsConnector;

use support::certs::{self, LeafOptions, TestCa, SLEEP_SPIFFE_ID};
use support::egressd::LogFormat;
use support::mesh::*;
use support::origin::Origin;
use support::tools::{stderr, stdout};

#[test]
fn seed_http_mtls_curl_gets_301_and_the_log_names_the_caller() {
    let mesh = Mesh::new();
    let origin = Origin::start("127.0.0.1:0".parse().unwrap(), None);
    http_scenario(&mesh, &origin, "");
    let egressd = mesh.start(LogFormat::Json);

    let out = curl_politics(
        &mesh,
        &egressd,
        Some((&mesh.path("sleep.pem"), &mesh.path("sleep-key.pem"))),
    );
    assert_eq!(stdout(&out), "301", "curl: {}", stderr(&out));
    let requests = origin.wait_for_requests(1, WAIT);
    assert_eq!(requests[0].path, "/politics");
    let log = json_lines(&egressd, 1);
    assert_eq!(log[0]["response_code"], 301, "{}", log[0]);
    assert_eq!(log[0]["downstream_peer_uri_san"], SLEEP_SPIFFE_ID, "{}", log[0]);
    assert_eq!(log[0]["requested_server_name"], "edition.cnn.com", "{}", log[0]);
    assert_eq!(egressd.stat(&listener_stat(&egressd, 80, "ssl.handshake")), Some(1));

    // Istio's ALPN offers get the plain protocol, and both protocols carry requests.
    let addr = egressd.gateway_addr(80);
    runtime().block_on(async {
        let tls = mesh.connect(addr, Some(&mesh.sleep), ISTIO_HTTP11).await.unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        assert_eq!(
            get1(&mut http1_over(tls).await, "/politics").await,
            StatusCode::MOVED_PERMANENTLY
        );

        let tls = mesh.connect(addr, Some(&mesh.sleep), ISTIO_H2).await.unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (mut sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.unwrap();
        tokio::spawn(conn);
        let req = Request::get("https://edition.cnn.com/politics")
            .body(Empty::<Bytes>::new())
            .unwrap();
        assert_eq!(
            sender.send_request(req).await.unwrap().status(),
            StatusCode::MOVED_PERMANENTLY
        );

        // No acceptable offer: the handshake still completes, without ALPN (as Envoy).
        let tls = mesh.connect(addr, Some(&mesh.sleep), ISTIO_TCP).await.unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), None);
    });
    let log = json_lines(&egressd, 3);
    assert_eq!(log[1]["protocol"], "HTTP/1.1", "{}", log[1]);
    assert_eq!(log[2]["protocol"], "HTTP/2", "{}", log[2]);
    assert_eq!(log[2]["downstream_peer_uri_san"], SLEEP_SPIFFE_ID, "{}", log[2]);
}

#[test]
fn refused_clients_are_counted_and_never_reach_the_origin() {
    let mesh = Mesh::new();
    let origin = Origin::start("127.0.0.1:0".parse().unwrap(), None);
    http_scenario(
        &mesh,
        &origin,
        &format!("      subjectAltNames:\n      - {SLEEP_SPIFFE_ID}\n"),
    );
    let egressd = mesh.start(LogFormat::Text);
    let stat = |name| listener_stat(&egressd, 80, name);

    let out = curl_politics(&mesh, &egressd, None);
    assert!(
        !out.status.success() && stdout(&out) != "301",
        "no client cert was accepted"
    );
    egressd.wait_for_stat(&stat("ssl.fail_verify_no_cert"), 1, WAIT);

    let refused = [
        (
            "foreign",
            TestCa::new("other-mesh").spiffe_cert(SLEEP_SPIFFE_ID),
            "ssl.fail_verify_error",
            1,
        ),
        (
            "expired",
            mesh.ca.issue(&LeafOptions::spiffe(SLEEP_SPIFFE_ID).expired()),
            "ssl.fail_verify_error",
            2,
        ),
        (
            "intruder",
            mesh.ca.spiffe_cert("spiffe://cluster.local/ns/default/sa/intruder"),
            "ssl.fail_verify_san",
            1,
        ),
    ];
    for (name, leaf, counter, count) in refused {
        leaf.write_to(mesh.dir.path(), &format!("{name}.pem"), &format!("{name}-key.pem"));
        let (cert, key) = (mesh.path(&format!("{name}.pem")), mesh.path(&format!("{name}-key.pem")));
        let out = curl_politics(&mesh, &egressd, Some((&cert, &key)));
        assert!(
            !out.status.success() && stdout(&out) != "301",
            "{name} cert was accepted"
        );
        egressd.wait_for_stat(&stat(counter), count, WAIT);
    }
    assert_eq!(origin.connections(), 0, "a refused client reached the origin");
    assert_eq!(egressd.stat(&stat("ssl.handshake")).unwrap_or(0), 0);

    // The listed SAN is accepted.
    let out = curl_politics(
        &mesh,
        &egressd,
        Some((&mesh.path("sleep.pem"), &mesh.path("sleep-key.pem"))),
    );
    assert_eq!(stdout(&out), "301", "curl: {}", stderr(&out));
    assert_eq!(egressd.stat(&stat("ssl.handshake")), Some(1));
    assert_eq!(egressd.stat(&stat("ssl.connection_error")).unwrap_or(0), 0);
}

#[test]
fn tls_server_forwards_the_inner_tls_with_istio_alpn() {
    let mesh = Mesh::new();
    // The external host's own TLS, from a CA the gateway knows nothing of.
    let public_ca = TestCa::new("public-ca");
    let origin_tls = certs::server_config(&public_ca.server_cert(&["edition.cnn.com"]), &[b"http/1.1"]);
    let origin = Origin::start("127.0.0.1:0".parse().unwrap(), Some(origin_tls));
    istio_mutual_tls_scenario(&mesh, &origin);
    let egressd = mesh.start(LogFormat::Json);
    let addr = egressd.gateway_addr(443);

    runtime().block_on(async {
        let outer = mesh.connect(addr, Some(&mesh.sleep), ISTIO_TCP).await.unwrap();
        assert_eq!(
            outer.get_ref().1.alpn_protocol(),
            Some(&b"istio"[..]),
            "never istio-peer-exchange"
        );
        let inner_config = certs::client_config_alpn(&public_ca, None, &[b"http/1.1"]);
        let name = ServerName::try_from("edition.cnn.com").unwrap();
        let inner = TlsConnector::from(inner_config).connect(name, outer).await.unwrap();
        let mut sender = http1_over(inner).await;
        assert_eq!(get1(&mut sender, "/politics").await, StatusCode::MOVED_PERMANENTLY);
        drop(sender);

        let outer = mesh
            .connect(addr, Some(&mesh.sleep), &[b"istio-peer-exchange"])
            .await
            .unwrap();
        assert_eq!(outer.get_ref().1.alpn_protocol(), None);
        // Closed without a byte: a connection with nothing to forward.
        drop(outer);

        let refused = mesh.connect(addr, None, ISTIO_TCP).await;
        if let Ok(mut tls) = refused {
            // TLS 1.3: the client learns of the refusal on its first read.
            let mut buf = [0u8; 1];
            let read = tokio::io::AsyncReadExt::read(&mut tls, &mut buf).await;
            assert!(!matches!(read, Ok(n) if n > 0), "an unauthenticated client got data");
        }
    });
    assert_eq!(
        origin.established()[0].tls.as_ref().unwrap().sni.as_deref(),
        Some("edition.cnn.com")
    );
    let log = json_lines(&egressd, 1);
    assert_eq!(
        log[0]["upstream_cluster"], "outbound|443||edition.cnn.com",
        "{}",
        log[0]
    );
    assert_eq!(log[0]["downstream_peer_uri_san"], SLEEP_SPIFFE_ID, "{}", log[0]);
    assert_eq!(log[0]["requested_server_name"], "edition.cnn.com", "{}", log[0]);
    egressd.wait_for_stat(&listener_stat(&egressd, 443, "ssl.fail_verify_no_cert"), 1, WAIT);
    assert_eq!(egressd.stat(&listener_stat(&egressd, 443, "ssl.handshake")), Some(2));
}

#[test]
fn rotated_certificate_serves_new_handshakes_while_open_connections_keep_working() {
    let mesh = Mesh::new();
    let origin = Origin::start("127.0.0.1:0".parse().unwrap(), None);
    http_scenario(&mesh, &origin, "");
    let egressd = mesh.start(LogFormat::Text);
    let addr = egressd.gateway_addr(80);

    runtime().block_on(async {
        let old = mesh.connect(addr, Some(&mesh.sleep), &[b"http/1.1"]).await.unwrap();
        let old_cert = old.get_ref().1.peer_certificates().unwrap()[0].clone();
        let mut old_sender = http1_over(old).await;
        assert_eq!(get1(&mut old_sender, "/politics").await, StatusCode::MOVED_PERMANENTLY);

        let new = mesh.rotate_gateway_cert();
        assert_ne!(new.cert_der, old_cert);
        let deadline = Instant::now() + WAIT;
        let fresh = loop {
            let tls = mesh.connect(addr, Some(&mesh.sleep), &[b"http/1.1"]).await;
            // A handshake may race the two file writes; any refusal is retried.
            if let Ok(tls) = tls {
                if tls.get_ref().1.peer_certificates().unwrap()[0] == new.cert_der {
                    break tls;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the new certificate was not served within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(
            get1(&mut http1_over(fresh).await, "/politics").await,
            StatusCode::MOVED_PERMANENTLY
        );
        // The connection opened before the rotation is untouched.
        assert_eq!(get1(&mut old_sender, "/politics").await, StatusCode::MOVED_PERMANENTLY);
    });
    assert_eq!(origin.requests().len(), 3);
}

/// Issue 16: a TLS 1.2 suite is the gateway's choice, not the client's (as with Envoy): a client
/// listing ChaCha20 first still gets the gateway's first choice, AES-256-GCM.
#[test]
fn tls12_cipher_suite_is_chosen_in_the_gateways_order() {
    let mesh = Mesh::new();
    let origin = Origin::start("127.0.0.1:0".parse().unwrap(), None);
    istio_mutual_http_scenario(&mesh, &origin);
    let egressd = mesh.start(LogFormat::Text);
    let client_order = "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384";
    let out = s_client(&mesh, &egressd, 80, true, &["-tls1_2", "-cipher", client_order]);
    assert!(
        out.contains("New, TLSv1.2, Cipher is ECDHE-ECDSA-AES256-GCM-SHA384"),
        "{out}"
    );
    assert!(out.contains("HTTP/1.1 301"), "{out}");
}

/// Issue 16: TLS 1.2 sessions resume from a session ticket, as Envoy offers them, also after a
/// config reload (the ticket keys are the process's); TLS 1.3 sessions resume too.
#[test]
fn sessions_resume_from_tickets_across_a_config_reload() {
    let mesh = Mesh::new();
    let origin = Origin::start("127.0.0.1:0".parse().unwrap(), None);
    istio_mutual_http_scenario(&mesh, &origin);
    let egressd = mesh.start(LogFormat::Text);
    let tls12 = mesh.path("tls12.session");

    let first = s_client(&mesh, &egressd, 80, true, &["-tls1_2", "-sess_out", &tls12]);
    assert!(first.contains("New, TLSv1.2"), "{first}");
    assert!(
        first.contains("TLS session ticket lifetime hint: 43200 (seconds)"),
        "no ticket: {first}"
    );
    let resumed = s_client(&mesh, &egressd, 80, true, &["-tls1_2", "-sess_in", &tls12]);
    assert!(resumed.contains("Reused, TLSv1.2"), "{resumed}");
    assert!(resumed.contains("HTTP/1.1 301"), "{resumed}");

    let vs = mesh.config().join("3-virtual-service.yaml");
    let text = std::fs::read_to_string(&vs).unwrap();
    std::fs::write(&vs, text.replace("weight: 100", "weight: 100\n    timeout: 30s")).unwrap();
    egressd.wait_for_stat("server.config_reload", 1, WAIT);
    let after_reload = s_client(&mesh, &egressd, 80, true, &["-tls1_2", "-sess_in", &tls12]);
    assert!(after_reload.contains("Reused, TLSv1.2"), "{after_reload}");

    let tls13 = mesh.path("tls13.session");
    let first = s_client(&mesh, &egressd, 80, true, &["-tls1_3", "-sess_out", &tls13]);
    assert!(first.contains("New, TLSv1.3"), "{first}");
    let resumed = s_client(&mesh, &egressd, 80, true, &["-tls1_3", "-sess_in", &tls13]);
    assert!(resumed.contains("Reused, TLSv1.3"), "{resumed}");
    assert!(resumed.contains("HTTP/1.1 301"), "{resumed}");
    assert_eq!(egressd.stat(&listener_stat(&egressd, 80, "ssl.handshake")), Some(5));
    assert_eq!(
        egressd.stat(&listener_stat(&egressd, 80, "ssl.session_reused")),
        Some(3)
    );
}

/// Issue 16: a client without the required certificate is refused with the alert of its TLS
/// version, as Envoy refuses it: `handshake_failure` (40) for TLS 1.2, `certificate_required`
/// (116) for TLS 1.3.
#[test]
fn a_missing_client_certificate_gets_the_alert_of_its_tls_version() {
    let mesh = Mesh::new();
    let origin = Origin::start("127.0.0.1:0".parse().unwrap(), None);
    istio_mutual_http_scenario(&mesh, &origin);
    let egressd = mesh.start(LogFormat::Text);

    let tls12 = s_client(&mesh, &egressd, 80, false, &["-tls1_2"]);
    assert!(
        tls12.contains("alert handshake failure") && tls12.contains("SSL alert number 40"),
        "{tls12}"
    );
    let tls13 = s_client(&mesh, &egressd, 80, false, &["-tls1_3"]);
    assert!(
        tls13.contains("alert certificate required") && tls13.contains("SSL alert number 116"),
        "{tls13}"
    );
    egressd.wait_for_stat(&listener_stat(&egressd, 80, "ssl.fail_verify_no_cert"), 2, WAIT);
    assert_eq!(origin.connections(), 0);
    // The sleep workload still gets in over TLS 1.2.
    let sleep = s_client(&mesh, &egressd, 80, true, &["-tls1_2"]);
    assert!(sleep.contains("HTTP/1.1 301"), "{sleep}");
}

/// A ticket resumes only on the chain that issued it: rustls does not ask for the client
/// certificate again on resumption, so a session from a SIMPLE server must not open a MUTUAL
/// server with the same SNI (with one unsealed ticket key for all, it did: 200 without a client
/// certificate).
#[test]
fn a_ticket_from_a_simple_server_does_not_open_a_mutual_one() {
    let mesh = Mesh::new();
    let origin = Origin::start("127.0.0.1:0".parse().unwrap(), None);
    mesh.service_entry(origin.addr().port(), 1);
    let yaml = format!(
        "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: istio-egressgateway}}
spec:
  selector: {{istio: egressgateway}}
  servers:
  - port: {{number: 80, name: https-mesh, protocol: HTTPS}}
    hosts: [edition.cnn.com]
    tls: {{mode: ISTIO_MUTUAL}}
  - port: {{number: 443, name: https-public, protocol: HTTPS}}
    hosts: [edition.cnn.com]
    tls: {{mode: SIMPLE, serverCertificate: {0}/cert-chain.pem, privateKey: {0}/key.pem}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: cnn}}
spec:
  hosts: [edition.cnn.com]
  gateways: [istio-egressgateway]
  http:
  - route:
    - destination: {{host: edition.cnn.com, port: {{number: 80}}}}
",
        mesh.certs().display()
    );
    std::fs::write(mesh.config().join("2-gateway-virtual-service.yaml"), yaml).unwrap();
    let egressd = mesh.start(LogFormat::Text);

    for version in ["-tls1_2", "-tls1_3"] {
        let session = mesh.path(&format!("simple{version}.session"));
        let simple = s_client(&mesh, &egressd, 443, false, &[version, "-sess_out", &session]);
        assert!(simple.contains("HTTP/1.1 301"), "{simple}");
        let simple = s_client(&mesh, &egressd, 443, false, &[version, "-sess_in", &session]);
        assert!(simple.contains("Reused, TLSv1."), "{simple}");
        let mutual = s_client(&mesh, &egressd, 80, false, &[version, "-sess_in", &session]);
        assert!(!mutual.contains("Reused"), "{version}: {mutual}");
        assert!(!mutual.contains("HTTP/1.1"), "{version}: {mutual}");
    }
    egressd.wait_for_stat(&listener_stat(&egressd, 80, "ssl.fail_verify_no_cert"), 2, WAIT);
    assert_eq!(egressd.stat(&listener_stat(&egressd, 80, "ssl.handshake")), Some(0));
    assert_eq!(origin.requests().len(), 4);
}

/// Issue 6: an idle ISTIO_MUTUAL connection (one request done) costs the gateway about what
/// rustls keeps per session, not the handshake's state or a copy of every listener kind's
/// (an earlier egressd measured 55 KiB in the release build).
#[test]
fn idle_istio_mutual_connections_keep_only_the_session() {
    let mesh = Mesh::new();
    let origin = Origin::start("127.0.0.1:0".parse().unwrap(), None);
    http_scenario(&mesh, &origin, "");
    let egressd = mesh.start(LogFormat::Text);
    let addr = egressd.gateway_addr(80);
    let (egressd, mesh) = (&egressd, &mesh);
    runtime().block_on(async {
        let (mut senders, per_conn) = egressd
            .rss_per_idle_connection(600, || async move {
                let tls = mesh.connect(addr, Some(&mesh.sleep), ISTIO_HTTP11).await.unwrap();
                let mut sender = http1_over(tls).await;
                assert_eq!(get1(&mut sender, "/politics").await, StatusCode::MOVED_PERMANENTLY);
                sender
            })
            .await;
        eprintln!("RSS per idle ISTIO_MUTUAL connection: {per_conn:.2} KiB");
        assert!(per_conn < IDLE_MTLS_MAX_KIB, "{per_conn:.2} KiB per idle connection");
        for sender in senders.iter_mut().step_by(97) {
            assert_eq!(get1(sender, "/politics").await, StatusCode::MOVED_PERMANENTLY);
        }
    });
}

/// The bound of `idle_istio_mutual_connections_keep_only_the_session` (debug build).
const IDLE_MTLS_MAX_KIB: f64 = 20.0;
