//! Issue 17, interop: each AuthorizationPolicy case runs through egressd (the policies as Istio
//! YAML beside the seed's two mTLS servers) and through Envoy 1.40 as the gateway with the RBAC
//! filters istiod generates for the same policies (`tests/fixtures/envoy/gateway.yaml`, one
//! fixture per policy in `tests/fixtures/envoy/authz/`). The same callers (`sleep`, and an
//! identity of namespace `other`) call both; the test compares what they get, the access log's
//! details and the rbac counters. Envoy is `target/envoy/envoy` or `$EGRESSD_ENVOY`.
//!
//! Deliberately not compared: egressd decides a tunnel before it dials the upstream (and before
//! it reads), Envoy on the tunnel's first bytes after dialing, so the upstream fields, upstream
//! counters and bytes of a denied tunnel differ.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use support::certs::{self, Leaf, TestCa};
use support::egressd::LogFormat;
use support::envoy::Envoy;
use support::mesh::{runtime, Mesh, WAIT};
use support::origin::Origin;
use support::tools::{curl, stderr, stdout};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/envoy/authz");
const OTHER_SPIFFE_ID: &str = "spiffe://cluster.local/ns/other/sa/app";
/// Where a case fixture's Envoy filters start (HTTP, then network).
const HTTP_FILTERS: &str = "# --- envoy http_filters\n";
const NETWORK_FILTERS: &str = "# --- envoy network filters\n";
/// Fields of Istio's TEXT access log (after `[%START_TIME%]`, quotes removed).
const RESPONSE_CODE: usize = 1;
const CONNECTION_TERMINATION_DETAILS: usize = 4;
const DOWNSTREAM_REMOTE_ADDRESS: usize = 18;

/// One AuthorizationPolicy and what istiod builds from it when it is the only policy of its
/// action: its HTTP and its network RBAC filter.
struct Fixture {
    policy: String,
    http_filters: String,
    network_filters: String,
}

impl Fixture {
    fn load(name: &str) -> Fixture {
        let text = std::fs::read_to_string(Path::new(FIXTURES).join(format!("{name}.yaml"))).unwrap();
        let (policy, filters) = text.split_once(HTTP_FILTERS).expect(HTTP_FILTERS);
        let (http, network) = filters.split_once(NETWORK_FILTERS).expect(NETWORK_FILTERS);
        Fixture {
            policy: policy.to_string(),
            http_filters: http.to_string(),
            network_filters: network.to_string(),
        }
    }
}

fn indent(text: &str, by: usize) -> String {
    text.lines().map(|l| format!("{:by$}{l}\n", "")).collect()
}

/// Both gateways' peers and callers: the mesh (CA, gateway identity, `sleep`), the identity of
/// another namespace, the HTTP origin of the port-80 routes and the TLS origin of the tcp route.
struct World {
    mesh: Mesh,
    other: Leaf,
    public_ca: TestCa,
    http_origin: Origin,
    tls_origin: Origin,
}

impl World {
    fn new() -> World {
        let mesh = Mesh::new();
        let public_ca = TestCa::new("public-ca");
        let tls = certs::server_config(&public_ca.server_cert(&["edition.cnn.com"]), &[b"http/1.1"]);
        let loopback: SocketAddr = "127.0.0.1:0".parse().unwrap();
        World {
            other: mesh.ca.spiffe_cert(OTHER_SPIFFE_ID),
            mesh,
            public_ca,
            http_origin: Origin::start(loopback, None),
            tls_origin: Origin::start(loopback, Some(tls)),
        }
    }

    fn callers(&self) -> [(&'static str, &Leaf); 2] {
        [("sleep", &self.mesh.sleep), ("other", &self.other)]
    }

    /// egressd's config: the seed's two "mutual TLS enabled" scenarios side by side (HTTPS on
    /// 80, TLS with a tcp route on 443, both ISTIO_MUTUAL), the second's resources renamed so that
    /// they do not replace the first's, and the policies.
    fn egressd_config(&self, fixtures: &[Fixture]) {
        let mesh = &self.mesh;
        let files = format!(
            "      mode: MUTUAL\n      serverCertificate: {0}/cert-chain.pem\n      privateKey: {0}/key.pem\n      caCertificates: {0}/root-cert.pem\n",
            mesh.certs().display()
        );
        let istio_mutual = (files.as_str(), "      mode: ISTIO_MUTUAL\n");
        mesh.seed("http-mtls-enabled", "2-gateway-destination-rule.yaml", &[istio_mutual]);
        mesh.seed("http-mtls-enabled", "3-virtual-service.yaml", &[]);
        mesh.seed(
            "https-mtls-enabled",
            "2-gateway-destination-rule-virtual-service.yaml",
            &[
                istio_mutual,
                ("istio-egressgateway\n", "istio-egressgateway-tls\n"),
                ("name: egressgateway-for-cnn\n", "name: egressgateway-for-cnn-tls\n"),
                (
                    "name: direct-cnn-through-egress-gateway\n",
                    "name: direct-cnn-through-egress-gateway-tls\n",
                ),
            ],
        );
        mesh.service_entry(self.http_origin.addr().port(), self.tls_origin.addr().port());
        let policies: Vec<&str> = fixtures.iter().map(|f| f.policy.as_str()).collect();
        std::fs::write(
            mesh.config().join("9-authorization-policy.yaml"),
            policies.join("---\n"),
        )
        .unwrap();
    }

    /// Envoy as the gateway: `gateway.yaml` with the fixtures' filters in the order given.
    fn start_envoy(&self, fixtures: &[Fixture]) -> (Envoy, SocketAddr, SocketAddr) {
        let http_rbac: String = fixtures.iter().map(|f| indent(&f.http_filters, 10)).collect();
        let tcp_rbac: String = fixtures.iter().map(|f| indent(&f.network_filters, 6)).collect();
        let vars = |http: SocketAddr, tcp: SocketAddr| {
            vec![
                ("HTTP_PORT", http.port().to_string()),
                ("TCP_PORT", tcp.port().to_string()),
                ("CERTS", self.mesh.certs().display().to_string()),
                ("ORIGIN_HTTP_PORT", self.http_origin.addr().port().to_string()),
                ("ORIGIN_TLS_PORT", self.tls_origin.addr().port().to_string()),
                ("HTTP_RBAC", http_rbac.clone()),
                ("TCP_RBAC", tcp_rbac.clone()),
            ]
        };
        runtime().block_on(Envoy::start_on_free_ports("gateway.yaml", vars))
    }
}

/// A gateway under test: where its two servers listen, and its access log and `/stats`.
struct Gateway<'a> {
    http: SocketAddr,
    tcp: SocketAddr,
    access_log: &'a dyn Fn() -> String,
    stats: &'a dyn Fn() -> String,
}

/// What the callers saw at one gateway: one line per call, then the rbac counters (the HTTP
/// connection manager's stat prefix, which names the bound port, replaced by `*`).
#[derive(Debug)]
struct Seen {
    calls: Vec<String>,
    stats: BTreeMap<String, u64>,
}

impl Seen {
    /// The calls and the counters that moved, one per line.
    fn summary(&self) -> String {
        let moved = self.stats.iter().filter(|(_, v)| **v > 0);
        let stats = moved.map(|(k, v)| format!("{k}: {v}"));
        self.calls.iter().cloned().chain(stats).collect::<Vec<_>>().join("\n")
    }
}

/// Each caller makes one HTTP request (curl, h2 in mTLS to server 80) and one tunnel (its own
/// TLS in mTLS to server 443, then `GET /politics`), which it ends as `close` says.
fn observe(world: &World, gw: &Gateway<'_>, close: Close) -> Seen {
    let mut calls = Vec::new();
    for (name, leaf) in world.callers() {
        let (status, body, port) = curl_as(world, leaf, name, gw.http);
        let f = log_fields(gw, port);
        calls.push(format!(
            "http {name}: {status} {body:?} | log: {}",
            f[RESPONSE_CODE..=CONNECTION_TERMINATION_DETAILS].join(" ")
        ));
        let (answer, port) = runtime().block_on(tunnel(world, leaf, gw.tcp, close));
        let f = log_fields(gw, port);
        calls.push(format!(
            "tcp {name}: {answer} | log: {}",
            f[RESPONSE_CODE..=CONNECTION_TERMINATION_DETAILS].join(" ")
        ));
    }
    Seen {
        calls,
        stats: rbac_stats(&(gw.stats)()),
    }
}

/// curl as `leaf` to `https://edition.cnn.com:80/politics` at `addr`: (status, body, curl's port).
fn curl_as(world: &World, leaf: &Leaf, name: &str, addr: SocketAddr) -> (String, String, u16) {
    let dir = world.mesh.dir.path();
    let (cert, key) = leaf.write_to(dir, &format!("{name}.pem"), &format!("{name}-key.pem"));
    let body = dir.join(format!("{name}-body"));
    let connect_to = format!("edition.cnn.com:80:{addr}");
    let cacert = world.mesh.certs().join("root-cert.pem");
    let out = curl(&[
        "-sS",
        "-o",
        body.to_str().unwrap(),
        "-w",
        "%{http_code} %{local_port}",
        "--max-time",
        "5",
        "--cacert",
        cacert.to_str().unwrap(),
        "--connect-to",
        &connect_to,
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "https://edition.cnn.com:80/politics",
    ]);
    assert!(out.status.success(), "curl: {}", stderr(&out));
    let written = stdout(&out);
    let (status, port) = written.split_once(' ').unwrap();
    let body_text = std::fs::read_to_string(&body).unwrap_or_default();
    (status.to_string(), body_text, port.parse().unwrap())
}

/// How a caller ends a tunnel once it has the whole answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Close {
    /// TLS close_notify, then FIN, as a well-behaved client does.
    Notify,
    /// FIN without close_notify (the peer went away, or a client that skips it).
    BareFin,
}

/// A tunnel as `leaf`: mesh mTLS to `addr` (SNI edition.cnn.com), the app's own TLS to the
/// origin inside, `GET /politics` with `connection: close`, read to the end; then the outer
/// connection is closed as `close` says. Returns the status (`-` when the gateway cut the
/// tunnel) and the tunnel's local port.
async fn tunnel(world: &World, leaf: &Leaf, addr: SocketAddr, close: Close) -> (String, u16) {
    let name = ServerName::try_from("edition.cnn.com").unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let port = tcp.local_addr().unwrap().port();
    let outer_config = certs::client_config_alpn(&world.mesh.ca, Some(leaf), &[b"istio"]);
    let outer = TlsConnector::from(outer_config)
        .connect(name.clone(), tcp)
        .await
        .unwrap();
    let inner_config = certs::client_config_alpn(&world.public_ca, None, &[b"http/1.1"]);
    let inner = TlsConnector::from(inner_config).connect(name, outer);
    let Ok(mut inner) = tokio::time::timeout(WAIT, inner).await.expect("inner handshake hung") else {
        return ("-".to_string(), port);
    };
    let request = "GET /politics HTTP/1.1\r\nhost: edition.cnn.com\r\nconnection: close\r\n\r\n";
    inner.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, inner.read_to_end(&mut response))
        .await
        .unwrap()
        .unwrap();
    let (mut outer, _) = inner.into_inner();
    match close {
        Close::Notify => outer.shutdown().await.unwrap(),
        Close::BareFin => outer.get_mut().0.shutdown().await.unwrap(),
    }
    let _ = tokio::time::timeout(WAIT, outer.get_mut().0.read_to_end(&mut Vec::new()))
        .await
        .unwrap();
    let response = String::from_utf8_lossy(&response);
    (response.split(' ').nth(1).unwrap_or("?").to_string(), port)
}

/// The fields of the access-log line of the connection from local port `port`; waits for it.
fn log_fields(gw: &Gateway<'_>, port: u16) -> Vec<String> {
    let remote = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + WAIT;
    loop {
        let log = (gw.access_log)();
        let found = log
            .lines()
            .map(fields)
            .find(|f| f.get(DOWNSTREAM_REMOTE_ADDRESS) == Some(&remote));
        if let Some(found) = found {
            return found;
        }
        assert!(Instant::now() < deadline, "no access-log line from {remote}:\n{log}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// An Istio TEXT access-log line's fields after `[%START_TIME%]`, quoted ones without quotes.
fn fields(line: &str) -> Vec<String> {
    let mut rest = line.split_once("] ").map_or("", |(_, r)| r);
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (field, tail) = match rest.strip_prefix('"') {
            Some(quoted) => quoted.split_once("\" ").unwrap_or((quoted.trim_end_matches('"'), "")),
            None => rest.split_once(' ').unwrap_or((rest, "")),
        };
        out.push(field.to_string());
        rest = tail;
    }
    out
}

/// `http.<prefix>.rbac.*` (as `http.*.rbac.*`) and `tcp.rbac.*` counters from `/stats`.
fn rbac_stats(stats: &str) -> BTreeMap<String, u64> {
    stats
        .lines()
        .filter_map(|line| {
            let (name, value) = line.split_once(": ")?;
            let name = match name.strip_prefix("http.") {
                Some(rest) => format!("http.*.rbac.{}", rest.split_once(".rbac.")?.1),
                None => name.starts_with("tcp.rbac.").then(|| name.to_string())?,
            };
            Some((name, value.trim().parse().ok()?))
        })
        .collect()
}

/// Runs the case through Envoy (the fixtures' filters in the order given: AUDIT, DENY, ALLOW)
/// and through egressd; returns what each showed.
fn run(case: &[&str], close: Close) -> (Seen, Seen) {
    let fixtures: Vec<Fixture> = case.iter().map(|name| Fixture::load(name)).collect();
    let world = World::new();

    let (envoy, http, tcp) = world.start_envoy(&fixtures);
    let access_log = || envoy.access_log();
    let stats = || envoy.stats();
    let through_envoy = observe(
        &world,
        &Gateway {
            http,
            tcp,
            access_log: &access_log,
            stats: &stats,
        },
        close,
    );
    drop(envoy);

    world.egressd_config(&fixtures);
    let egressd = world.mesh.start(LogFormat::Text);
    let access_log = || egressd.access_log_lines().join("\n");
    let stats = || egressd.stats();
    let through_egressd = observe(
        &world,
        &Gateway {
            http: egressd.gateway_addr(80),
            tcp: egressd.gateway_addr(443),
            access_log: &access_log,
            stats: &stats,
        },
        close,
    );
    (through_envoy, through_egressd)
}

/// Envoy shows `expected` (the calls, then the counters that moved); egressd shows the same.
/// Counters at 0 are left out: which ones exist differs (see
/// `rbac_counters_registered_as_envoy_registers_them`).
fn compare(case: &[&str], expected: &[String]) {
    let (envoy, egressd) = run(case, Close::Notify);
    assert_eq!(envoy.summary(), expected.join("\n"), "Envoy, case {case:?}");
    assert_eq!(egressd.summary(), envoy.summary(), "egressd vs Envoy, case {case:?}");
}

fn http_allowed(caller: &str) -> String {
    format!("http {caller}: 301 \"\" | log: 301 - via_upstream -")
}

/// Denied by `policy` (`none`: no ALLOW policy matched).
fn http_denied(caller: &str, policy: &str) -> String {
    format!("http {caller}: 403 \"RBAC: access denied\" | log: 403 - rbac_access_denied_matched_policy[{policy}] -")
}

fn tcp_allowed(caller: &str) -> String {
    format!("tcp {caller}: 301 | log: 0 - - -")
}

fn tcp_denied(caller: &str, policy: &str) -> String {
    format!("tcp {caller}: - | log: 0 - - rbac_access_denied_matched_policy[{policy}]")
}

fn counters(moved: &[(&str, u64)]) -> Vec<String> {
    moved.iter().map(|(name, value)| format!("{name}: {value}")).collect()
}

/// ALLOW `sleep` by principal and host (HTTP) or SNI (TCP); the other namespace's caller
/// matches no ALLOW policy.
fn allow_sleep_expected() -> Vec<String> {
    let mut expected = vec![
        http_allowed("sleep"),
        tcp_allowed("sleep"),
        http_denied("other", "none"),
        tcp_denied("other", "none"),
    ];
    expected.extend(counters(&[
        ("http.*.rbac.allowed", 1),
        ("http.*.rbac.denied", 1),
        ("tcp.rbac.allowed", 1),
        ("tcp.rbac.denied", 1),
    ]));
    expected
}

#[test]
fn allow_sleep_by_principal_host_and_sni() {
    compare(&["allow-sleep"], &allow_sleep_expected());
}

/// A DENY filter before the ALLOW filter: the denial names the DENY rule, and an allowed
/// request or tunnel counts `allowed` once per filter.
#[test]
fn deny_other_namespace_beside_allow() {
    const RULE: &str = "ns[istio-system]-policy[deny-other-ns]-rule[0]";
    let mut expected = vec![
        http_allowed("sleep"),
        tcp_allowed("sleep"),
        http_denied("other", RULE),
        tcp_denied("other", RULE),
    ];
    expected.extend(counters(&[
        ("http.*.rbac.allowed", 2),
        ("http.*.rbac.denied", 1),
        ("tcp.rbac.allowed", 2),
        ("tcp.rbac.denied", 1),
    ]));
    compare(&["deny-other-ns", "allow-sleep"], &expected);
}

/// `spec: {}` allows nothing; the denials name no policy.
#[test]
fn empty_spec_denies_all() {
    let mut expected = vec![
        http_denied("sleep", "none"),
        tcp_denied("sleep", "none"),
        http_denied("other", "none"),
        tcp_denied("other", "none"),
    ];
    expected.extend(counters(&[("http.*.rbac.denied", 2), ("tcp.rbac.denied", 2)]));
    compare(&["deny-all"], &expected);
}

/// A dry-run DENY policy denies nothing and counts only in its shadow counters.
#[test]
fn dry_run_deny_only_counts() {
    let mut expected = vec![
        http_allowed("sleep"),
        tcp_allowed("sleep"),
        http_allowed("other"),
        tcp_allowed("other"),
    ];
    expected.extend(counters(&[
        ("http.*.rbac.istio_dry_run_deny_.shadow_allowed", 1),
        ("http.*.rbac.istio_dry_run_deny_.shadow_denied", 1),
        ("tcp.rbac.istio_dry_run_deny_.shadow_allowed", 1),
        ("tcp.rbac.istio_dry_run_deny_.shadow_denied", 1),
    ]));
    compare(&["dry-run-deny-other-ns"], &expected);
}

/// DENY by method: a GET passes; on TCP chains the method is dropped from the DENY rule, which
/// then denies every tunnel.
#[test]
fn deny_by_method_denies_every_tunnel() {
    const RULE: &str = "ns[istio-system]-policy[deny-post]-rule[0]";
    let mut expected = vec![
        http_allowed("sleep"),
        tcp_denied("sleep", RULE),
        http_allowed("other"),
        tcp_denied("other", RULE),
    ];
    expected.extend(counters(&[("http.*.rbac.allowed", 2), ("tcp.rbac.denied", 2)]));
    compare(&["deny-post"], &expected);
}

/// ALLOW by host without a port pattern: `:authority` carries `:80`, so no request matches;
/// on TCP chains the ALLOW filter keeps no policy and allows no tunnel.
#[test]
fn allow_by_host_without_port_allows_nothing() {
    let mut expected = vec![
        http_denied("sleep", "none"),
        tcp_denied("sleep", "none"),
        http_denied("other", "none"),
        tcp_denied("other", "none"),
    ];
    expected.extend(counters(&[("http.*.rbac.denied", 2), ("tcp.rbac.denied", 2)]));
    compare(&["allow-host"], &expected);
}

/// AUDIT (Envoy's LOG action) never denies and counts everything as allowed.
#[test]
fn audit_counts_allowed() {
    let mut expected = vec![
        http_allowed("sleep"),
        tcp_allowed("sleep"),
        http_allowed("other"),
        tcp_allowed("other"),
    ];
    expected.extend(counters(&[("http.*.rbac.allowed", 2), ("tcp.rbac.allowed", 2)]));
    compare(&["audit-all"], &expected);
}

/// Found by this test (fixed): a caller ends an allowed tunnel with a bare FIN (no close_notify
/// on the mesh mTLS) once it has the whole answer. Envoy logs CONNECTION_TERMINATION_DETAILS `-`
/// (as it does, observed, after a RST or a drop mid-answer); egressd logged `connection_reset`
/// whenever its copy loop ended with an error. Flags are `-` on both.
#[test]
fn tunnel_closed_without_close_notify_has_no_termination_details() {
    let (envoy, egressd) = run(&["allow-sleep"], Close::BareFin);
    let expected = allow_sleep_expected().join("\n");
    assert_eq!(envoy.summary(), expected, "Envoy");
    assert_eq!(egressd.summary(), envoy.summary(), "egressd vs Envoy");
}

/// Found by this test (fixed): which rbac counters exist. Envoy registers, per RBAC filter,
/// `allowed`, `denied` and the shadow counters under that filter's own
/// `shadow_rules_stat_prefix` only: with ALLOW policies alone no `istio_dry_run_deny_.*`, with a
/// dry-run DENY policy alone no `istio_dry_run_allow_.*`. egressd registered both families.
#[test]
fn rbac_counters_registered_as_envoy_registers_them() {
    for (case, prefix) in [
        ("allow-sleep", "istio_dry_run_allow_"),
        ("dry-run-deny-other-ns", "istio_dry_run_deny_"),
    ] {
        let (envoy, egressd) = run(&[case], Close::Notify);
        let mut expected: Vec<String> = ["http.*.rbac", "tcp.rbac"]
            .iter()
            .flat_map(|chain| {
                let shadow = |outcome| format!("{prefix}.shadow_{outcome}");
                [
                    "allowed".to_string(),
                    "denied".to_string(),
                    shadow("allowed"),
                    shadow("denied"),
                ]
                .map(|name| format!("{chain}.{name}"))
            })
            .collect();
        expected.sort();
        let names = |seen: &Seen| seen.stats.keys().cloned().collect::<Vec<_>>();
        assert_eq!(names(&envoy), expected, "Envoy, case {case}");
        assert_eq!(names(&egressd), names(&envoy), "egressd vs Envoy, case {case}");
    }
}
