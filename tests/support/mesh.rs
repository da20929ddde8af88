//! The test mesh of the mTLS suites (tests/mtls.rs, tests/authz.rs): a CA, the gateway's
//! ISTIO_MUTUAL identity in a certs dir, the `sleep` workload's certificate, the seed's mTLS
//! scenarios written into a config dir, and the clients that speak to them (curl, openssl,
//! rustls, hyper).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::client::conn::http1;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::certs::{self, Leaf, LeafOptions, TestCa, GATEWAY_SPIFFE_ID, SLEEP_SPIFFE_ID};
use super::egressd::{Egressd, EgressdOptions, LogFormat};
use super::origin::Origin;
use super::tools::{curl, openssl, stderr, stdout};

pub const SEED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/seed");
pub const WAIT: Duration = Duration::from_secs(5);
pub const ISTIO_HTTP11: &[&[u8]] = &[b"istio-http/1.1", b"istio", b"http/1.1"];
pub const ISTIO_H2: &[&[u8]] = &[b"istio-h2", b"istio", b"h2"];
pub const ISTIO_TCP: &[&[u8]] = &[b"istio-peer-exchange", b"istio"];

/// The test mesh: its CA, the gateway identity in `certs/` (istiod's URI SAN plus the DNS name
/// curl checks), the `sleep` workload's certificate, and the config dir egressd reads.
pub struct Mesh {
    pub ca: TestCa,
    pub dir: tempfile::TempDir,
    pub sleep: Leaf,
}

impl Mesh {
    pub fn new() -> Mesh {
        let ca = TestCa::new("cluster.local");
        let dir = tempfile::tempdir().unwrap();
        let mesh = Mesh {
            sleep: ca.spiffe_cert(SLEEP_SPIFFE_ID),
            ca,
            dir,
        };
        mesh.rotate_gateway_cert();
        mesh.ca.write_root(&mesh.certs(), "root-cert.pem");
        mesh.sleep.write_to(mesh.dir.path(), "sleep.pem", "sleep-key.pem");
        std::fs::create_dir_all(mesh.config()).unwrap();
        mesh
    }

    pub fn certs(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("config")
    }

    pub fn path(&self, file: &str) -> String {
        self.dir.path().join(file).display().to_string()
    }

    /// Issues and writes (in place) a new gateway certificate and key.
    pub fn rotate_gateway_cert(&self) -> Leaf {
        let opts = LeafOptions {
            dns_names: vec!["edition.cnn.com".into()],
            ..LeafOptions::spiffe(GATEWAY_SPIFFE_ID)
        };
        let leaf = self.ca.issue(&opts);
        leaf.write_to(&self.certs(), "cert-chain.pem", "key.pem");
        leaf
    }

    /// Copies a seed file into the config dir with `/etc/certs` pointing at our certs and the
    /// given replacements applied (each must apply).
    pub fn seed(&self, scenario: &str, file: &str, replace: &[(&str, &str)]) {
        let text = std::fs::read_to_string(Path::new(SEED).join(scenario).join(file)).unwrap();
        let mut text = text.replace("/etc/certs", &self.certs().display().to_string());
        for (from, to) in replace {
            assert!(text.contains(from), "{scenario}/{file} has no `{from}`");
            text = text.replace(from, to);
        }
        std::fs::write(self.config().join(file), text).unwrap();
    }

    /// The seed's `cnn` ServiceEntry, made STATIC to reach loopback origins.
    pub fn service_entry(&self, http_port: u16, https_port: u16) {
        let yaml = format!(
            "apiVersion: networking.istio.io/v1alpha3\nkind: ServiceEntry\nmetadata:\n  name: cnn\nspec:\n  hosts:\n  - edition.cnn.com\n  ports:\n  - number: 80\n    name: http-port\n    protocol: HTTP\n  - number: 443\n    name: https\n    protocol: HTTPS\n  resolution: STATIC\n  endpoints:\n  - address: 127.0.0.1\n    ports:\n      http-port: {http_port}\n      https: {https_port}\n"
        );
        std::fs::write(self.config().join("1-service-entry.yaml"), yaml).unwrap();
    }

    pub fn start(&self, format: LogFormat) -> Egressd {
        let opts = EgressdOptions {
            certs: Some(self.certs()),
            access_log: format,
            ..EgressdOptions::new(self.config())
        };
        Egressd::start(opts)
    }

    /// A rustls mTLS connection to the gateway with SNI `edition.cnn.com`.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        client: Option<&Leaf>,
        alpn: &[&[u8]],
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let config = certs::client_config_alpn(&self.ca, client, alpn);
        let tcp = TcpStream::connect(addr).await?;
        TlsConnector::from(config)
            .connect(ServerName::try_from("edition.cnn.com").unwrap(), tcp)
            .await
    }
}

/// The seed's "HTTP with mutual TLS enabled" scenario: an HTTPS server on port 80, MUTUAL with
/// the `/etc/certs` files, and the VirtualService routing to `edition.cnn.com:80`.
pub fn http_scenario(mesh: &Mesh, origin: &Origin, extra_tls: &str) {
    mesh.service_entry(origin.addr().port(), 1);
    let ca_line = format!("      caCertificates: {}/root-cert.pem\n", mesh.certs().display());
    let with_extra = format!("{ca_line}{extra_tls}");
    mesh.seed(
        "http-mtls-enabled",
        "2-gateway-destination-rule.yaml",
        &[(&ca_line, &with_extra)],
    );
    mesh.seed("http-mtls-enabled", "3-virtual-service.yaml", &[]);
}

/// [`http_scenario`] with the gateway's mesh identity (`mode: ISTIO_MUTUAL`: the `--certs` files)
/// instead of the seed's MUTUAL files.
pub fn istio_mutual_http_scenario(mesh: &Mesh, origin: &Origin) {
    mesh.service_entry(origin.addr().port(), 1);
    let files = mutual_files(mesh);
    mesh.seed(
        "http-mtls-enabled",
        "2-gateway-destination-rule.yaml",
        &[(&files, "      mode: ISTIO_MUTUAL\n")],
    );
    mesh.seed("http-mtls-enabled", "3-virtual-service.yaml", &[]);
}

/// The seed's MUTUAL `tls` fields (the `/etc/certs` files), which the ISTIO_MUTUAL scenarios
/// replace.
fn mutual_files(mesh: &Mesh) -> String {
    format!(
        "      mode: MUTUAL\n      serverCertificate: {0}/cert-chain.pem\n      privateKey: {0}/key.pem\n      caCertificates: {0}/root-cert.pem\n",
        mesh.certs().display()
    )
}

/// The seed's "HTTPS with mutual TLS enabled" scenario (a TLS server on 443 terminating the
/// mesh mTLS, a `tcp` route to `edition.cnn.com:443` at `origin`) with the gateway's mesh
/// identity (`mode: ISTIO_MUTUAL`: the `--certs` files) instead of the seed's MUTUAL files.
pub fn istio_mutual_tls_scenario(mesh: &Mesh, origin: &Origin) {
    mesh.service_entry(1, origin.addr().port());
    let files = mutual_files(mesh);
    mesh.seed(
        "https-mtls-enabled",
        "2-gateway-destination-rule-virtual-service.yaml",
        &[(&files, "      mode: ISTIO_MUTUAL\n")],
    );
}

/// The real `openssl s_client` to the gateway's `server_port` with SNI `edition.cnn.com`, trusting the
/// mesh root, as the `sleep` workload when `as_sleep`, plus `args`. It sends one request and
/// reads until the gateway closes (`-ign_eof`), so tickets sent after a TLS 1.3 handshake are
/// seen. Returns stdout and stderr together.
pub fn s_client(mesh: &Mesh, egressd: &Egressd, server_port: u16, as_sleep: bool, args: &[&str]) -> String {
    let connect = format!("127.0.0.1:{}", egressd.bound_port(server_port));
    let cafile = mesh.certs().join("root-cert.pem").display().to_string();
    let (cert, key) = (mesh.path("sleep.pem"), mesh.path("sleep-key.pem"));
    let mut all = vec!["s_client", "-connect", &connect, "-servername", "edition.cnn.com"];
    all.extend(["-CAfile", &cafile, "-ign_eof"]);
    if as_sleep {
        all.extend(["-cert", &cert, "-key", &key]);
    }
    all.extend_from_slice(args);
    let out = openssl(
        &all,
        b"GET /politics HTTP/1.1\r\nhost: edition.cnn.com\r\nconnection: close\r\n\r\n",
    );
    format!("{}{}", stdout(&out), stderr(&out))
}

pub fn listener_stat(egressd: &Egressd, server_port: u16, stat: &str) -> String {
    format!("listener.127.0.0.1_{}.{stat}", egressd.bound_port(server_port))
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// `curl https://edition.cnn.com:80/politics` through the gateway, as the sidecar would send it.
pub fn curl_politics(mesh: &Mesh, egressd: &Egressd, client: Option<(&str, &str)>) -> std::process::Output {
    let connect_to = format!("edition.cnn.com:80:127.0.0.1:{}", egressd.bound_port(80));
    let cacert = mesh.certs().join("root-cert.pem").display().to_string();
    let mut args = vec!["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5"];
    args.extend(["--cacert", &cacert, "--connect-to", &connect_to]);
    if let Some((cert, key)) = client {
        args.extend(["--cert", cert, "--key", key]);
    }
    args.push("https://edition.cnn.com:80/politics");
    curl(&args)
}

pub async fn http1_over<S>(io: S) -> http1::SendRequest<Empty<Bytes>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http1::handshake(TokioIo::new(io)).await.unwrap();
    tokio::spawn(conn);
    sender
}

pub async fn get1(sender: &mut http1::SendRequest<Empty<Bytes>>, path: &str) -> StatusCode {
    let req = Request::get(path)
        .header("host", "edition.cnn.com")
        .body(Empty::new())
        .unwrap();
    sender.send_request(req).await.unwrap().status()
}

pub fn json_lines(egressd: &Egressd, n: usize) -> Vec<serde_json::Value> {
    let lines = egressd.wait_for_log_lines(n, WAIT);
    lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}
