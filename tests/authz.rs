//! Issue 17: AuthorizationPolicy at the gateway, end to end with the real binary on the seed's
//! mTLS scenarios (`tests/support/mesh.rs`): curl and rustls clients holding SPIFFE
//! certificates of the test mesh, one as `sleep` (ns default), one from another namespace.
//! Answers, log details and stat names are Envoy 1.40's
//! (`shared/reference/istio-authz-behavior.md`); where egressd does better (a denied tunnel
//! never dials the upstream) the test says so.

mod support;

use std::time::Duration;

use hyper::StatusCode;
use rustls_pki_types::ServerName;
use tokio::io::AsyncReadExt;
use tokio_rustls::TlsConnector;

use support::certs::{self, Leaf, TestCa};
use support::egressd::{Egressd, LogFormat};
use support::mesh::*;
use support::origin::Origin;
use support::tools::{curl, stderr, stdout};

const OTHER_SPIFFE_ID: &str = "spiffe://cluster.local/ns/other/sa/app";

fn policy(name: &str, body: &str) -> String {
    format!("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: {name}\n  namespace: istio-system\n{body}")
}

/// Only `sleep` may reach edition.cnn.com (by host on HTTP chains, by SNI on TCP chains).
const ALLOW_SLEEP: &str = "spec:\n  selector:\n    matchLabels: {istio: egressgateway}\n  action: ALLOW\n  rules:\n  - from: [{source: {principals: [cluster.local/ns/default/sa/sleep]}}]\n    to: [{operation: {hosts: [edition.cnn.com, 'edition.cnn.com:*']}}]\n  - from: [{source: {principals: [cluster.local/ns/default/sa/sleep]}}]\n    when: [{key: connection.sni, values: [edition.cnn.com]}]\n";

/// Every caller outside `default` is denied.
const DENY_OTHER_NS: &str = "spec:\n  action: DENY\n  rules:\n  - from: [{source: {notNamespaces: [default]}}]\n";

fn write_policy(mesh: &Mesh, file: &str, yaml: &str) {
    std::fs::write(mesh.config().join(file), yaml).unwrap();
}

/// curl to the gateway's HTTPS server (HTTP in mTLS) as `client`; (status, body).
fn curl_as(mesh: &Mesh, egressd: &Egressd, client: &Leaf, name: &str) -> (String, String) {
    let (cert, key) = client.write_to(mesh.dir.path(), &format!("{name}.pem"), &format!("{name}-key.pem"));
    let connect_to = format!("edition.cnn.com:80:127.0.0.1:{}", egressd.bound_port(80));
    let cacert = mesh.certs().join("root-cert.pem").display().to_string();
    let body = mesh.dir.path().join(format!("{name}-body"));
    let out = curl(&[
        "-sS",
        "-o",
        &body.display().to_string(),
        "-w",
        "%{http_code}",
        "--max-time",
        "5",
        "--cacert",
        &cacert,
        "--connect-to",
        &connect_to,
        "--cert",
        &cert.display().to_string(),
        "--key",
        &key.display().to_string(),
        "https://edition.cnn.com:80/politics",
    ]);
    assert!(out.status.success(), "curl: {}", stderr(&out));
    (stdout(&out), std::fs::read_to_string(body).unwrap_or_default())
}

fn rbac_stat(egressd: &Egressd, suffix: &str) -> u64 {
    egressd
        .stats()
        .lines()
        .find_map(|l| {
            l.strip_prefix("http.")
                .and_then(|l| l.split_once(&format!(".{suffix}: ")))
                .and_then(|(_, v)| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// HTTP in mTLS: `sleep` gets through; another namespace's caller gets Envoy's 403 with
/// `[none]` (no ALLOW rule matched); with a DENY policy beside the ALLOW, the DENY names its
/// rule and an allowed request counts `rbac.allowed` once per filter, as Envoy counts; a
/// dry-run DENY changes nothing but its shadow counter.
#[test]
fn http_in_mtls_allows_one_principal_and_denies_another() {
    let mesh = Mesh::new();
    let origin = Origin::start("127.0.0.1:0".parse().unwrap(), None);
    istio_mutual_http_scenario(&mesh, &origin);
    write_policy(&mesh, "9-allow.yaml", &policy("allow-sleep", ALLOW_SLEEP));
    let other = mesh.ca.spiffe_cert(OTHER_SPIFFE_ID);
    let egressd = mesh.start(LogFormat::Text);

    assert_eq!(curl_as(&mesh, &egressd, &mesh.sleep, "sleep").0, "301");
    let (status, body) = curl_as(&mesh, &egressd, &other, "other");
    assert_eq!((status.as_str(), body.as_str()), ("403", "RBAC: access denied"));
    assert_eq!(origin.requests().len(), 1, "the denied request reached the origin");
    let lines = egressd.wait_for_log_lines(2, WAIT);
    assert!(
        lines[1].contains("\"GET /politics HTTP/2\" 403 - rbac_access_denied_matched_policy[none] - \"-\" 0 19 ")
            && lines[1].contains(" \"-\" outbound|80||edition.cnn.com "),
        "{}",
        lines[1]
    );
    assert_eq!(
        (rbac_stat(&egressd, "rbac.allowed"), rbac_stat(&egressd, "rbac.denied")),
        (1, 1)
    );
    drop(egressd);

    write_policy(&mesh, "9-deny.yaml", &policy("deny-other-ns", DENY_OTHER_NS));
    let egressd = mesh.start(LogFormat::Text);
    assert_eq!(curl_as(&mesh, &egressd, &mesh.sleep, "sleep").0, "301");
    assert_eq!(curl_as(&mesh, &egressd, &other, "other").0, "403");
    let lines = egressd.wait_for_log_lines(2, WAIT);
    assert!(
        lines[1].contains(" 403 - rbac_access_denied_matched_policy[ns[istio-system]-policy[deny-other-ns]-rule[0]] "),
        "{}",
        lines[1]
    );
    // Allowed: counted by the DENY and the ALLOW filter; denied: once, by the DENY filter.
    assert_eq!(
        (rbac_stat(&egressd, "rbac.allowed"), rbac_stat(&egressd, "rbac.denied")),
        (2, 1)
    );
    drop(egressd);

    let dry = DENY_OTHER_NS.replace("spec:", "spec:\n  selector: {matchLabels: {app: istio-egressgateway}}");
    let dry = policy("deny-other-ns", &dry).replace(
        "  namespace: istio-system\n",
        "  namespace: istio-system\n  annotations: {istio.io/dry-run: \"true\"}\n",
    );
    write_policy(&mesh, "9-deny.yaml", &dry);
    write_policy(&mesh, "9-allow.yaml", "");
    let egressd = mesh.start(LogFormat::Json);
    assert_eq!(
        curl_as(&mesh, &egressd, &other, "other").0,
        "301",
        "a dry-run policy denies nothing"
    );
    // The JSON log says what the dry-run policy would have done.
    let line: serde_json::Value = serde_json::from_str(&egressd.wait_for_log_lines(1, WAIT)[0]).unwrap();
    assert_eq!(
        line["rbac_dry_run"], "rbac_access_denied_matched_policy[ns[istio-system]-policy[deny-other-ns]-rule[0]]",
        "{line}"
    );
    assert_eq!(line["response_code"], 301, "{line}");
    assert_eq!(rbac_stat(&egressd, "rbac.istio_dry_run_deny_.shadow_denied"), 1);
    assert_eq!(rbac_stat(&egressd, "rbac.denied"), 0);
    let prometheus = support::tools::http_get(egressd.prometheus_addr(), "/stats/prometheus")
        .unwrap()
        .text();
    assert!(
        prometheus.lines().any(|l| l
            .starts_with("envoy_http_rbac_istio_dry_run_deny__shadow_denied{http_conn_manager_prefix=")
            && l.ends_with(" 1")),
        "{prometheus}"
    );
}

/// TLS in mTLS (a tcp route): `sleep` reaches the origin through its own TLS; another
/// namespace's caller is cut after the mTLS handshake with the policy in the connection
/// termination details, and egressd (unlike Envoy) never dials the upstream for it.
/// `spec: {}` then denies everyone.
#[test]
fn tls_in_mtls_denies_before_dialing() {
    let mesh = Mesh::new();
    let public_ca = TestCa::new("public-ca");
    let origin_tls = certs::server_config(&public_ca.server_cert(&["edition.cnn.com"]), &[b"http/1.1"]);
    let origin = Origin::start("127.0.0.1:0".parse().unwrap(), Some(origin_tls));
    istio_mutual_tls_scenario(&mesh, &origin);
    write_policy(&mesh, "9-allow.yaml", &policy("allow-sleep", ALLOW_SLEEP));
    let other = mesh.ca.spiffe_cert(OTHER_SPIFFE_ID);
    let egressd = mesh.start(LogFormat::Text);
    let addr = egressd.gateway_addr(443);

    let through = |client: &Leaf| {
        let (mesh, public_ca) = (&mesh, &public_ca);
        runtime().block_on(async move {
            let outer = mesh.connect(addr, Some(client), &[b"istio"]).await.unwrap();
            let inner_config = certs::client_config_alpn(public_ca, None, &[b"http/1.1"]);
            let name = ServerName::try_from("edition.cnn.com").unwrap();
            match TlsConnector::from(inner_config).connect(name, outer).await {
                Ok(inner) => Some(get1(&mut http1_over(inner).await, "/politics").await),
                Err(_) => None,
            }
        })
    };
    assert_eq!(through(&mesh.sleep), Some(StatusCode::MOVED_PERMANENTLY));
    assert_eq!(through(&other), None, "the denied tunnel carried a TLS session");
    assert_eq!(origin.connections(), 1, "the denied tunnel dialed the upstream");
    let lines = egressd.wait_for_log_lines(2, WAIT);
    let denied = lines.iter().find(|l| l.contains("rbac_access_denied")).unwrap();
    assert!(
        denied.contains("\"- - -\" 0 - - rbac_access_denied_matched_policy[none] \"-\" 0 0 ")
            && denied.contains(" \"-\" outbound|443||edition.cnn.com - "),
        "{denied}"
    );
    assert_eq!(egressd.stat("tcp.rbac.allowed"), Some(1));
    assert_eq!(egressd.stat("tcp.rbac.denied"), Some(1));
    assert_eq!(
        egressd.stat("cluster.outbound|443||edition.cnn.com.upstream_cx_total"),
        Some(1),
        "Envoy counts the denied tunnel here; egressd never dials it"
    );
    drop(egressd);

    write_policy(&mesh, "9-allow.yaml", &policy("deny-all", "spec: {}\n"));
    let egressd = mesh.start(LogFormat::Text);
    let addr2 = egressd.gateway_addr(443);
    let denied = runtime().block_on(async {
        let mut outer = mesh.connect(addr2, Some(&mesh.sleep), &[b"istio"]).await.unwrap();
        let mut buf = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(5), outer.read(&mut buf)).await
    });
    assert!(matches!(denied, Ok(Ok(0)) | Ok(Err(_))), "{denied:?}");
    assert_eq!(egressd.stat("tcp.rbac.denied"), Some(1));
    // The real openssl as `sleep`: the mTLS handshake completes, then the gateway closes.
    let out = s_client(&mesh, &egressd, 443, true, &[]);
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    assert!(!out.contains("HTTP/1.1"), "{out}");
    egressd.wait_for_stat("tcp.rbac.denied", 2, WAIT);
}

/// Unsupported policies are refused: `check` names file, line and field, and exits 1.
#[test]
fn custom_and_jwt_policies_are_refused_by_check() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.yaml");
    std::fs::write(
        &file,
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: ext, namespace: istio-system}\nspec:\n  action: CUSTOM\n  provider: {name: opa}\n  rules: [{}]\n---\napiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\nmetadata: {name: jwt, namespace: istio-system}\nspec:\n  rules:\n  - from: [{source: {requestPrincipals: ['*']}}]\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_egressd"))
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let path = file.display().to_string();
    assert!(
        err.contains(&format!(
            "{path}:5: error: AuthorizationPolicy/istio-system/ext spec.action: CUSTOM"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("{path}:14: error: AuthorizationPolicy/istio-system/jwt spec.rules[0].from[0].source.requestPrincipals: request principals (JWT)")),
        "{err}"
    );
}

/// A reload that adds a DENY policy: new connections follow it at once, an established
/// keep-alive connection keeps the config it started on (as every egressd connection keeps
/// its snapshot). The JSON log names the policy and the caller.
#[test]
fn a_reload_adding_a_deny_applies_to_new_connections_only() {
    let mesh = Mesh::new();
    let origin = Origin::start("127.0.0.1:0".parse().unwrap(), None);
    istio_mutual_http_scenario(&mesh, &origin);
    let other = mesh.ca.spiffe_cert(OTHER_SPIFFE_ID);
    let egressd = mesh.start(LogFormat::Json);
    let addr = egressd.gateway_addr(80);
    let rt = runtime();
    let mut established = rt.block_on(async {
        let tls = mesh.connect(addr, Some(&other), &[b"http/1.1"]).await.unwrap();
        let mut sender = http1_over(tls).await;
        assert_eq!(get1(&mut sender, "/politics").await, StatusCode::MOVED_PERMANENTLY);
        sender
    });

    write_policy(&mesh, "9-deny.yaml", &policy("deny-other-ns", DENY_OTHER_NS));
    egressd.wait_for_stat("server.config_reload", 1, WAIT);

    rt.block_on(async {
        assert_eq!(
            get1(&mut established, "/politics").await,
            StatusCode::MOVED_PERMANENTLY,
            "the established connection follows the config it started on"
        );
        let tls = mesh.connect(addr, Some(&other), &[b"http/1.1"]).await.unwrap();
        let mut fresh = http1_over(tls).await;
        assert_eq!(get1(&mut fresh, "/politics").await, StatusCode::FORBIDDEN);
    });
    let lines = egressd.wait_for_log_lines(3, WAIT);
    let denied: serde_json::Value = serde_json::from_str(&lines[2]).unwrap();
    assert_eq!(denied["response_code"], 403, "{denied}");
    assert_eq!(
        denied["response_code_details"],
        "rbac_access_denied_matched_policy[ns[istio-system]-policy[deny-other-ns]-rule[0]]"
    );
    assert_eq!(denied["downstream_peer_uri_san"], OTHER_SPIFFE_ID, "{denied}");
}

/// TLS passthrough: no certificate reaches the gateway, so only the SNI (and addresses) can
/// decide; a DENY on `connection.sni` refuses the tunnel before it dials.
#[test]
fn passthrough_is_decided_by_sni() {
    let mesh = Mesh::new();
    let public_ca = TestCa::new("public-ca");
    let origin_tls = certs::server_config(
        &public_ca.server_cert(&["edition.cnn.com", "blocked.cnn.com"]),
        &[b"http/1.1"],
    );
    let origin = Origin::start("127.0.0.1:0".parse().unwrap(), Some(origin_tls));
    let port = origin.addr().port();
    let yaml = format!(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: gw}}\nspec:\n  selector: {{istio: egressgateway}}\n  servers:\n  - port: {{number: 443, name: tls, protocol: TLS}}\n    hosts: ['*.cnn.com']\n    tls: {{mode: PASSTHROUGH}}\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: cnn}}\nspec:\n  hosts: [edition.cnn.com, blocked.cnn.com]\n  ports: [{{number: 443, name: tls, protocol: TLS}}]\n  resolution: STATIC\n  endpoints: [{{address: 127.0.0.1, ports: {{tls: {port}}}}}]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: cnn}}\nspec:\n  hosts: [edition.cnn.com, blocked.cnn.com]\n  gateways: [gw]\n  tls:\n  - match: [{{port: 443, sniHosts: [edition.cnn.com]}}]\n    route: [{{destination: {{host: edition.cnn.com, port: {{number: 443}}}}}}]\n  - match: [{{port: 443, sniHosts: [blocked.cnn.com]}}]\n    route: [{{destination: {{host: blocked.cnn.com, port: {{number: 443}}}}}}]\n"
    );
    std::fs::write(mesh.config().join("1-passthrough.yaml"), yaml).unwrap();
    write_policy(
        &mesh,
        "9-deny.yaml",
        &policy(
            "no-blocked",
            "spec:\n  action: DENY\n  rules:\n  - when: [{key: connection.sni, values: [blocked.cnn.com]}]\n",
        ),
    );
    let egressd = mesh.start(LogFormat::Text);
    // Registered at 0 with the config, before any traffic, as Envoy creates them with its filters.
    assert_eq!(egressd.stat("tcp.rbac.denied"), Some(0));
    assert_eq!(egressd.stat("tcp.rbac.istio_dry_run_allow_.shadow_denied"), Some(0));
    assert_eq!(egressd.stat("tcp.rbac.istio_dry_run_deny_.shadow_denied"), None);
    let addr = egressd.gateway_addr(443);
    let fetch = |sni: &'static str| {
        let public_ca = &public_ca;
        runtime().block_on(async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let config = certs::client_config_alpn(public_ca, None, &[b"http/1.1"]);
            let tls = TlsConnector::from(config)
                .connect(ServerName::try_from(sni).unwrap(), tcp)
                .await
                .ok()?;
            Some(get1(&mut http1_over(tls).await, "/politics").await)
        })
    };
    assert_eq!(fetch("edition.cnn.com"), Some(StatusCode::MOVED_PERMANENTLY));
    assert_eq!(fetch("blocked.cnn.com"), None);
    assert_eq!(origin.connections(), 1, "the denied tunnel dialed the upstream");
    let lines = egressd.wait_for_log_lines(2, WAIT);
    assert!(
        lines.iter().any(|l| l.contains(
            "\"- - -\" 0 - - rbac_access_denied_matched_policy[ns[istio-system]-policy[no-blocked]-rule[0]] "
        ) && l.contains(" blocked.cnn.com -")),
        "{lines:#?}"
    );
    assert_eq!(egressd.stat("tcp.rbac.denied"), Some(1));
    assert_eq!(egressd.stat("tcp.rbac.allowed"), Some(1));
    // The running config explains itself (the admin API's `check --explain`).
    let explain =
        |query: &str| support::tools::http_get(egressd.admin_addr(), &format!("/authz/explain?{query}")).unwrap();
    let denied = explain("port=443&sni=blocked.cnn.com");
    assert_eq!(denied.status, 200);
    assert!(
        denied
            .text()
            .contains("DENY by ns[istio-system]-policy[no-blocked]-rule[0]: when sni in [blocked.cnn.com]"),
        "{}",
        denied.text()
    );
    assert!(explain("port=443&sni=edition.cnn.com")
        .text()
        .contains("ALLOW: no DENY policy matched"));
    assert_eq!(explain("port=x").status, 400);
}

/// `egressd check` lists the policies per kind of server in plain words and warns of an ALLOW
/// rule that can never match on TCP servers; `--explain` gives the decision and the deciding
/// rule in Envoy's naming without traffic (exit 0 for ALLOW and DENY, 1 on bad input).
#[test]
fn check_lists_policies_and_explains_decisions() {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/seed/https-mtls-enabled"
    ))
    .unwrap()
    {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    let hosts_rule = "  - to: [{operation: {hosts: [edition.cnn.com]}}]\n";
    let allow = ALLOW_SLEEP.replace(
        "    to: [{operation: {hosts: [edition.cnn.com, 'edition.cnn.com:*']}}]\n",
        "    when: [{key: connection.sni, values: [edition.cnn.com]}]\n",
    ) + hosts_rule;
    std::fs::write(dir.path().join("9-allow.yaml"), policy("allow-sleep", &allow)).unwrap();
    std::fs::write(dir.path().join("9-deny.yaml"), policy("deny-other-ns", DENY_OTHER_NS)).unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_egressd"))
            .args(["check", "--config"])
            .arg(dir.path())
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            stdout(&out),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, listing, _) = run(&[]);
    assert_eq!(code, Some(0), "{listing}");
    assert!(
        listing.contains("TCP servers (0.0.0.0_8443):\n  DENY ns[istio-system]-policy[deny-other-ns]-rule[0]: from namespace not in [default]\n  ALLOW ns[istio-system]-policy[allow-sleep]-rule[0]: from principal in [cluster.local/ns/default/sa/sleep], when sni in [edition.cnn.com]\n"),
        "{listing}"
    );
    assert!(listing.contains("9-allow.yaml:"), "{listing}");
    assert!(
        listing.contains("spec.rules[2]: this ALLOW rule uses HTTP-only fields"),
        "{listing}"
    );

    let explain =
        |principal: &str, sni: &str| run(&["--explain", "--principal", principal, "--sni", sni, "--port", "443"]);
    let (code, out, _) = explain("spiffe://cluster.local/ns/default/sa/sleep", "edition.cnn.com");
    assert_eq!(code, Some(0));
    assert!(
        out.contains("ALLOW by ns[istio-system]-policy[allow-sleep]-rule[0]"),
        "{out}"
    );
    let (code, out, _) = explain("cluster.local/ns/other/sa/app", "edition.cnn.com");
    assert_eq!(code, Some(0));
    assert!(
        out.contains("DENY by ns[istio-system]-policy[deny-other-ns]-rule[0]: from namespace not in [default]"),
        "{out}"
    );
    let (code, _, err) = explain("cluster.local/ns/default/sa/sleep", "other.example");
    assert_eq!(code, Some(1));
    assert!(
        err.contains("no filter chain of 0.0.0.0_8443 serves SNI `other.example`"),
        "{err}"
    );
}
