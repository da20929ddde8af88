//! The seed's YAML, verbatim, compiles to the names istiod gives; broken configs print every
//! error with file:line, resource and field, and `egressd check` exits 1 for them.

use std::path::PathBuf;
use std::process::Command;

use egressd::config::{self, Bootstrap};
use egressd::routing::snapshot::{ChainKind, ListenerKind, RouteAction, Snapshot};
use egressd::routing::{self};

fn compile(dir: &str) -> Snapshot {
    let bootstrap = Bootstrap::default();
    let loaded = config::load_paths(&[PathBuf::from(dir)], &bootstrap.default_namespace);
    routing::compile(&loaded, &bootstrap).unwrap_or_else(|e| panic!("{dir}: {e}"))
}

/// Every seed snapshot renders as JSON (what `/config_dump` serves).
#[test]
fn every_seed_snapshot_serializes_for_config_dump() {
    for dir in [
        "http-mtls-disabled",
        "http-mtls-enabled",
        "https-passthrough",
        "https-mtls-enabled",
        "network-policy",
    ] {
        let s = compile(&format!("tests/fixtures/seed/{dir}"));
        let json = serde_json::to_value(&s).unwrap_or_else(|e| panic!("{dir}: {e}"));
        assert!(json["listeners"].is_array(), "{dir}");
    }
}

fn cluster_names(s: &Snapshot) -> Vec<&str> {
    s.clusters.keys().map(String::as_str).collect()
}

#[test]
fn seed_http_mtls_disabled() {
    let s = compile("tests/fixtures/seed/http-mtls-disabled");
    assert_eq!(s.listeners.len(), 1);
    let l = &s.listeners[0];
    assert_eq!(
        (l.name.as_str(), l.server_port, l.address.port()),
        ("0.0.0.0_8080", 80, 8080)
    );
    let ListenerKind::Http(hcm) = &l.kind else {
        panic!("{:?}", l.kind)
    };
    assert_eq!(hcm.stat_prefix, "outbound_0.0.0.0_8080");
    assert_eq!(hcm.route_config.name, "http.8080");
    let vh = &hcm.route_config.virtual_hosts;
    assert_eq!(vh.len(), 1);
    assert_eq!(vh[0].name, "edition.cnn.com:80");
    assert_eq!(vh[0].domains, ["edition.cnn.com"]);
    // The `mesh` route is not the gateway's; the gateway route goes to the external host.
    assert_eq!(vh[0].routes.len(), 1);
    let RouteAction::Forward(dest) = &vh[0].routes[0].action else {
        panic!()
    };
    assert_eq!(dest[0].cluster, "outbound|80||edition.cnn.com");
    assert_eq!(dest[0].weight, 100);
    assert_eq!(vh[0].routes[0].retry.attempts, 2, "istiod's default retry policy");
    // Lookups ignore the port, like ignore_port_in_host_matching.
    assert!(hcm.route_config.virtual_host("edition.cnn.com:80").is_some());
    assert!(hcm.route_config.virtual_host("other.com").is_none());
    for name in [
        "outbound|80||edition.cnn.com",
        "outbound|443||edition.cnn.com",
        "outbound|80|cnn|istio-egressgateway.istio-system.svc.cluster.local",
        "outbound|80||istio-egressgateway.istio-system.svc.cluster.local",
    ] {
        assert!(
            cluster_names(&s).contains(&name),
            "{name} missing from {:?}",
            cluster_names(&s)
        );
    }
    assert!(
        s.diagnostics.iter().all(|d| d.severity != config::Severity::Warning),
        "{:?}",
        s.diagnostics
    );
}

#[test]
fn seed_http_mtls_enabled() {
    let s = compile("tests/fixtures/seed/http-mtls-enabled");
    let l = &s.listeners[0];
    assert_eq!((l.name.as_str(), l.server_port), ("0.0.0.0_8080", 80));
    let ListenerKind::Tls(chains) = &l.kind else { panic!() };
    assert_eq!(chains.len(), 1);
    assert_eq!(chains[0].server_names, ["edition.cnn.com"]);
    let ChainKind::TerminateHttp { tls, http } = &chains[0].kind else {
        panic!()
    };
    assert_eq!(format!("{:?}", tls.mode), "Mutual");
    assert_eq!(http.route_config.name, "https.80.https.istio-egressgateway.default");
    assert_eq!(http.route_config.virtual_hosts[0].name, "edition.cnn.com:80");
    let c = &s.clusters["outbound|80|cnn|istio-egressgateway.istio-system.svc.cluster.local"];
    let tls = c.tls.as_ref().expect("subset port-level ISTIO_MUTUAL");
    assert_eq!(tls.sni.as_deref(), Some("edition.cnn.com"));
}

#[test]
fn seed_https_passthrough() {
    let s = compile("tests/fixtures/seed/https-passthrough");
    let l = &s.listeners[0];
    assert_eq!(
        (l.name.as_str(), l.server_port, l.address.port()),
        ("0.0.0.0_8443", 443, 8443)
    );
    let ListenerKind::Tls(chains) = &l.kind else { panic!() };
    assert_eq!(chains.len(), 1);
    assert_eq!(chains[0].server_names, ["edition.cnn.com"]);
    let ChainKind::Passthrough(tcp) = &chains[0].kind else {
        panic!()
    };
    assert_eq!(tcp.stat_prefix, "outbound|443||edition.cnn.com");
    assert_eq!(tcp.clusters[0].cluster, "outbound|443||edition.cnn.com");
    assert!(cluster_names(&s).contains(&"outbound|443|cnn|istio-egressgateway.istio-system.svc.cluster.local"));
}

#[test]
fn seed_https_mtls_enabled() {
    let s = compile("tests/fixtures/seed/https-mtls-enabled");
    let ListenerKind::Tls(chains) = &s.listeners[0].kind else {
        panic!()
    };
    assert_eq!(s.listeners[0].name, "0.0.0.0_8443");
    let ChainKind::TerminateTcp { tcp, .. } = &chains[0].kind else {
        panic!()
    };
    assert_eq!(tcp.clusters[0].cluster, "outbound|443||edition.cnn.com");
}

#[test]
fn seed_network_policy_is_skipped() {
    let s = compile("tests/fixtures/seed/network-policy");
    assert!(s.listeners.is_empty());
    assert_eq!(s.diagnostics.len(), 1);
    assert!(s.diagnostics[0]
        .to_string()
        .contains("skipped networking.k8s.io/v1 NetworkPolicy"));
}

fn check(path: &str) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_egressd"))
        .args(["check", "--config", path])
        .output()
        .expect("run egressd check");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_prints_tables_for_every_seed_scenario() {
    for (dir, expect) in [
        (
            "http-mtls-disabled",
            ["0.0.0.0_8080", "http.8080", "outbound|80||edition.cnn.com"],
        ),
        (
            "http-mtls-enabled",
            [
                "0.0.0.0_8080",
                "terminate MUTUAL, http",
                "outbound|80|cnn|istio-egressgateway.istio-system.svc.cluster.local",
            ],
        ),
        (
            "https-passthrough",
            ["0.0.0.0_8443", "passthrough", "outbound|443||edition.cnn.com"],
        ),
        (
            "https-mtls-enabled",
            ["0.0.0.0_8443", "terminate MUTUAL, tcp", "outbound|443||edition.cnn.com"],
        ),
        ("network-policy", ["SKIPPED (1)", "NetworkPolicy", "CLUSTERS"]),
    ] {
        let (code, stdout, stderr) = check(&format!("tests/fixtures/seed/{dir}"));
        assert_eq!(code, 0, "{dir}: {stderr}");
        for e in expect {
            assert!(stdout.contains(e), "{dir}: `{e}` not in\n{stdout}");
        }
    }
}

/// Broken configs: every error, in order, exactly.
#[test]
fn broken_configs_print_every_error_with_file_and_line() {
    let f = |name: &str| format!("tests/fixtures/broken/{name}.yaml");
    let cases: Vec<(String, Vec<String>)> = vec![
        (f("tls-routes-on-mutual-server"), vec![
            format!("{}:24: error: Gateway/default/istio-egressgateway spec.servers[0]: no VirtualService tcp route matches this TLS-terminating server, so istiod would drop its listener (istio/istio#37293)", f("tls-routes-on-mutual-server")),
            format!("{}:43: error: VirtualService/default/cnn spec.tls[0]: this tls route matches Gateway/default/istio-egressgateway spec.servers[0], which terminates TLS; istiod ignores tls routes there (istio/istio#37293)", f("tls-routes-on-mutual-server")),
        ]),
        (f("plain-and-tls-on-one-port"), vec![
            format!("{}:16: error: Gateway/istio-system/istio-egressgateway spec.servers[1]: port 80 (bound as 8080) is already used by a plain HTTP server (Gateway/istio-system/istio-egressgateway spec.servers[0]); plain-text, TCP and TLS servers cannot share a port", f("plain-and-tls-on-one-port")),
        ]),
        (f("duplicate-sni"), vec![
            format!("{}:45: error: VirtualService/default/cnn-b spec.tls[0].match[0].sniHosts: SNI `edition.cnn.com` on port 443 is already routed by VirtualService/default/cnn-a spec.tls[0].match[0]; istiod would skip this match with only a warning", f("duplicate-sni")),
        ]),
        (f("undefined-subset-and-gateway"), vec![
            format!("{}:37: error: VirtualService/default/direct-cnn-through-egress-gateway spec.gateways[0]: gateway `istio-egresgateway` resolves to `default/istio-egresgateway`, which no loaded Gateway is", f("undefined-subset-and-gateway")),
            format!("{}:47: error: VirtualService/default/direct-cnn-through-egress-gateway spec.http[0].route[0].destination.subset: subset `v1` of `edition.cnn.com` is not defined by any DestinationRule", f("undefined-subset-and-gateway")),
            format!("{}:52: warning: VirtualService/default/direct-cnn-through-egress-gateway spec.http[1].route[0].destination.host: no ServiceEntry defines `money.cnn.com`; a gateway reaches only registered hosts, so these requests get 503 NC cluster_not_found", f("undefined-subset-and-gateway")),
        ]),
        (f("bad-values"), vec![
            format!("{}:16: error: Gateway/default/istio-egressgateway spec.servers[0].tls.mode: unknown TLS mode `MUTAUL`", f("bad-values")),
            format!("{}:18: error: Gateway/default/istio-egressgateway spec.servers[1].port.number: port 70000 is out of range", f("bad-values")),
            format!("{}:33: error: DestinationRule/default/cnn spec.trafficPolicy.connectionPool.tcp.connectTimeout: invalid duration `10 seconds`", f("bad-values")),
            format!("{}:35: error: DestinationRule/default/cnn spec.trafficPolicy.tls.mode: MUTUAL needs clientCertificate and privateKey", f("bad-values")),
            format!("{}:45: error: ServiceEntry/default/cnn spec.ports[0].number: invalid type: string \"eighty\", expected u32", f("bad-values")),
        ]),
        // Issue 16: a configured length would frame a body on a pooled upstream connection.
        (f("framing-header-ops"), vec![
            format!("{}:33: error: VirtualService/default/cnn spec.http[0].headers.request.set.content-length: header operation on `content-length`, which frames the message or belongs to one hop; the gateway sets it", f("framing-header-ops")),
            format!("{}:36: error: VirtualService/default/cnn spec.http[0].headers.response.add.transfer-encoding: header operation on `transfer-encoding`, which frames the message or belongs to one hop; the gateway sets it", f("framing-header-ops")),
        ]),
        (f("yaml-syntax"), vec![
            format!("{}:8: error: YAML syntax error: while parsing a flow mapping, did not find expected ',' or '}}'", f("yaml-syntax")),
        ]),
    ];
    for (path, expected) in cases {
        let (code, stdout, stderr) = check(&path);
        assert_eq!(code, 1, "{path}: {stdout}");
        let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with(&path)).collect();
        assert_eq!(lines, expected, "{path}:\n{stderr}");
        // Each error also says how to fix it.
        assert_eq!(
            stderr.lines().filter(|l| l.starts_with("  fix: ")).count(),
            expected.iter().filter(|l| l.contains(": error: ")).count(),
            "{stderr}"
        );
    }
}

/// Issue 16: the seed's `mesh` route (sidecars to the gateway) is checked as `istioctl analyze`
/// checks it: a typo in its subset or host is a warning naming file:line, resource and field,
/// and `egressd check` still exits 0.
#[test]
fn a_typo_in_the_seeds_mesh_route_is_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let seed = std::path::Path::new("tests/fixtures/seed/http-mtls-disabled");
    for entry in std::fs::read_dir(seed).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    let vs = dir.path().join("3-virtual-service.yaml");
    let seed_vs = std::fs::read_to_string(&vs).unwrap();
    let typo = |from: &str, to: &str| {
        assert!(seed_vs.contains(from), "the seed has no `{from}`");
        std::fs::write(&vs, seed_vs.replace(from, to)).unwrap();
        let (code, stdout, stderr) = check(dir.path().to_str().unwrap());
        assert_eq!(code, 0, "{stdout}{stderr}");
        let prefix = vs.display().to_string();
        let findings: Vec<String> = stdout
            .lines()
            .filter(|l| l.starts_with(&prefix) || l.starts_with("  fix: "))
            .map(|l| l.replace(&prefix, "VS"))
            .collect();
        findings
    };
    const ID: &str = "VirtualService/default/direct-cnn-through-egress-gateway";
    const GATEWAY: &str = "istio-egressgateway.istio-system.svc.cluster.local";
    const NC: &str = "fail this traffic with NC (istioctl analyze: IST0101 ReferencedResourceNotFound)";

    assert_eq!(
        typo("subset: cnn\n", "subset: cnnx\n"),
        [
            format!("VS:19: warning: {ID} spec.http[0].route[0].destination.subset: sidecars route to subset `cnnx` of `{GATEWAY}`, which no DestinationRule defines (DestinationRule/default/egressgateway-for-cnn has `cnn`); they have no cluster `outbound|80|cnnx|{GATEWAY}` and {NC}"),
            "  fix: use a subset DestinationRule/default/egressgateway-for-cnn defines, or add `cnnx` to it".to_string(),
        ]
    );
    assert_eq!(
        typo(&format!("host: {GATEWAY}"), "host: istio-egressgateway.istio-system.svc.cluster.lcoal"),
        [
            format!("VS:18: warning: {ID} spec.http[0].route[0].destination.host: sidecars route to `istio-egressgateway.istio-system.svc.cluster.lcoal`, which no ServiceEntry defines and which is not a service of the mesh (`*.svc.cluster.local`); they have no cluster for it and {NC}"),
            "  fix: correct the host, or add a ServiceEntry for it".to_string(),
            format!("VS:19: warning: {ID} spec.http[0].route[0].destination.subset: sidecars route to subset `cnn` of `istio-egressgateway.istio-system.svc.cluster.lcoal`, which no DestinationRule defines; they have no cluster `outbound|80|cnn|istio-egressgateway.istio-system.svc.cluster.lcoal` and {NC}"),
            "  fix: add a DestinationRule for istio-egressgateway.istio-system.svc.cluster.lcoal with subset `cnn`, or remove the subset".to_string(),
        ]
    );
    // `mesh` left out of spec.gateways: no sidecar is sent to the gateway at all.
    assert_eq!(
        typo("  - istio-egressgateway\n  - mesh\n", "  - istio-egressgateway\n"),
        [
            format!("VS:13: warning: {ID} spec.http[0].match[0].gateways[0]: this match names `mesh`, but spec.gateways does not, so istiod gives this route to no sidecar"),
            "  fix: add `mesh` to spec.gateways".to_string(),
        ]
    );
}

#[test]
fn errors_in_several_files_are_all_reported() {
    let (code, _, stderr) = check("tests/fixtures/broken");
    assert_eq!(code, 1);
    for file in [
        "bad-values.yaml",
        "duplicate-sni.yaml",
        "yaml-syntax.yaml",
        "plain-and-tls-on-one-port.yaml",
    ] {
        assert!(stderr.contains(file), "{file} not reported:\n{stderr}");
    }
}

#[test]
fn documented_bootstrap_is_the_default() {
    let documented = Bootstrap::from_file(std::path::Path::new("deploy/bootstrap.yaml")).unwrap();
    assert_eq!(documented, Bootstrap::default());
}

#[test]
fn example_config_compiles_cleanly() {
    let s = compile("config");
    let names: Vec<&str> = s.listeners.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["0.0.0.0_8080", "0.0.0.0_8443"]);
    assert!(s.diagnostics.is_empty(), "{:?}", s.diagnostics);
}

/// Issue 18, item 6: `--config k8s` outside a cluster says what it looked for, not "no such
/// directory"; with a kubeconfig it says plainly that the API source is not served yet.
#[test]
fn config_k8s_says_what_it_looked_for() {
    let home = tempfile::tempdir().unwrap();
    let run = |kubeconfig: Option<&std::path::Path>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_egressd"));
        cmd.args(["check", "--config", "k8s"])
            .current_dir(home.path())
            .env("HOME", home.path())
            .env_remove("KUBECONFIG");
        if let Some(path) = kubeconfig {
            cmd.env("KUBECONFIG", path);
        }
        let out = cmd.output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, err) = run(None);
    assert_eq!(code, Some(1), "{err}");
    assert!(!err.contains("No such file"), "{err}");
    // (A machine that is itself a pod has a service account: then the second answer applies.)
    if !std::path::Path::new("/var/run/secrets/kubernetes.io/serviceaccount/token").exists() {
        assert!(
            err.contains("--config k8s reads the Kubernetes API, but no kubeconfig ($KUBECONFIG, ~/.kube/config) and no in-cluster service account"),
            "{err}"
        );
    }
    let kubeconfig = home.path().join("kubeconfig");
    std::fs::write(&kubeconfig, "apiVersion: v1\nkind: Config\n").unwrap();
    let (code, err) = run(Some(&kubeconfig));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("is not served by this egressd yet"), "{err}");
}
