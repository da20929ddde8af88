//! Compile semantics on small configs (the seed's own YAML is tested in tests/config_check.rs).

use crate::config::{self, Bootstrap, Severity};
use crate::routing::snapshot::{ListenerKind, RouteAction, Snapshot};

fn compile(yaml: &str) -> Result<Snapshot, super::CompileError> {
    let mut loaded = config::Loaded::default();
    config::load_str("t.yaml".into(), yaml, "default", &mut loaded);
    super::compile(&loaded, &Bootstrap::default())
}

const GATEWAY: &str = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: istio-system}\nspec:\n  selector: {istio: egressgateway}\n  servers:\n  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: ['*']\n";
const SE: &str = "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: cnn}\nspec:\n  hosts: [edition.cnn.com]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: DNS\n";

fn http_routes(s: &Snapshot) -> Vec<(Option<String>, String)> {
    let ListenerKind::Http(hcm) = &s.listeners[0].kind else {
        panic!("not http")
    };
    hcm.route_config.virtual_hosts[0]
        .routes
        .iter()
        .map(|r| {
            let dest = match &r.action {
                RouteAction::Forward(w) => w[0].cluster.clone(),
                RouteAction::Redirect(_) => "redirect".into(),
            };
            (r.name.clone(), dest)
        })
        .collect()
}

#[test]
fn catch_all_routes_go_last_and_match_port_is_the_server_port() {
    let yaml = format!(
        "{GATEWAY}{SE}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: a, namespace: istio-system}}\nspec:\n  hosts: [edition.cnn.com]\n  gateways: [gw]\n  http:\n  - name: all\n    route: [{{destination: {{host: edition.cnn.com}}}}]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: b, namespace: istio-system}}\nspec:\n  hosts: [edition.cnn.com]\n  gateways: [gw]\n  http:\n  - name: bound-port\n    match: [{{port: 8080}}]\n    route: [{{destination: {{host: edition.cnn.com}}}}]\n  - name: politics\n    match: [{{uri: {{prefix: /politics}}, port: 80}}]\n    route: [{{destination: {{host: edition.cnn.com}}}}]\n"
    );
    let s = compile(&yaml).unwrap();
    let routes = http_routes(&s);
    // `match.port: 8080` is the bound port, not the server port: no route, as in istiod.
    assert_eq!(
        routes,
        [
            (Some("politics".into()), "outbound|80||edition.cnn.com".into()),
            (Some("all".into()), "outbound|80||edition.cnn.com".into()),
        ]
    );
}

#[test]
fn server_host_namespaces_and_selectors_restrict_binding() {
    let gateway = GATEWAY.replace("hosts: ['*']", "hosts: ['other/*']");
    let vs = "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: a, namespace: istio-system}\nspec:\n  hosts: [edition.cnn.com]\n  gateways: [gw]\n  http:\n  - route: [{destination: {host: edition.cnn.com}}]\n";
    let s = compile(&format!("{gateway}{SE}{vs}")).unwrap();
    let ListenerKind::Http(hcm) = &s.listeners[0].kind else {
        panic!()
    };
    assert!(
        hcm.route_config.virtual_hosts.is_empty(),
        "a VS outside `other` must not bind"
    );

    let unselected = GATEWAY.replace("istio: egressgateway", "istio: ingressgateway");
    let s = compile(&format!("{unselected}{SE}")).unwrap();
    assert!(s.listeners.is_empty());
}

#[test]
fn short_host_names_resolve_in_the_resource_namespace() {
    let yaml = format!(
        "{GATEWAY}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: a, namespace: istio-system}}\nspec:\n  hosts: ['*']\n  gateways: [gw]\n  http:\n  - route: [{{destination: {{host: reviews, port: {{number: 9080}}}}}}]\n"
    );
    let s = compile(&yaml).unwrap();
    assert_eq!(
        http_routes(&s)[0].1,
        "outbound|9080||reviews.istio-system.svc.cluster.local"
    );
    let warning = s.diagnostics.iter().find(|d| d.severity == Severity::Warning).unwrap();
    assert!(warning.message.contains("503 NC cluster_not_found"), "{warning}");
}

#[test]
fn retries_and_unenforced_fields_are_reported() {
    let yaml = format!(
        "{GATEWAY}{SE}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: a, namespace: istio-system}}\nspec:\n  hosts: [edition.cnn.com]\n  gateways: [gw]\n  http:\n  - retries: {{attempts: 0}}\n    fault: {{abort: {{httpStatus: 500}}}}\n    route: [{{destination: {{host: edition.cnn.com}}}}]\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: cnn}}\nspec:\n  host: edition.cnn.com\n  trafficPolicy:\n    outlierDetection: {{consecutive5xxErrors: 7}}\n    connectionPool: {{tcp: {{maxConnections: 3}}}}\n"
    );
    let s = compile(&yaml).unwrap();
    let ListenerKind::Http(hcm) = &s.listeners[0].kind else {
        panic!()
    };
    assert_eq!(hcm.route_config.virtual_hosts[0].routes[0].retry.attempts, 0);
    assert_eq!(s.clusters["outbound|80||edition.cnn.com"].limits.max_connections, 3);
    let not_enforced: Vec<String> = s
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::NotEnforced)
        .map(|d| {
            format!(
                "{}:{} {}",
                d.line.unwrap_or(0),
                d.field.clone().unwrap_or_default(),
                d.message
            )
        })
        .collect();
    assert_eq!(
        not_enforced,
        [
            "26:spec.http[0].fault fault is accepted but not enforced yet",
            "35:spec.trafficPolicy.outlierDetection outlierDetection is accepted but not enforced yet",
        ]
    );
}

#[test]
fn terminating_tls_server_takes_the_first_tcp_route() {
    let yaml = format!(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: gw}}\nspec:\n  selector: {{istio: egressgateway}}\n  servers:\n  - port: {{number: 443, name: tls, protocol: TLS}}\n    hosts: [edition.cnn.com]\n    tls: {{mode: ISTIO_MUTUAL}}\n{SE}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: a}}\nspec:\n  hosts: [edition.cnn.com]\n  gateways: [gw]\n  tcp:\n  - match: [{{port: 443}}]\n    route: [{{destination: {{host: edition.cnn.com, port: {{number: 443}}}}}}]\n  - route: [{{destination: {{host: other.cnn.com}}}}]\n"
    );
    let s = compile(&yaml).unwrap();
    let ListenerKind::Tls(chains) = &s.listeners[0].kind else {
        panic!()
    };
    let crate::routing::snapshot::ChainKind::TerminateTcp { tcp, tls } = &chains[0].kind else {
        panic!()
    };
    assert_eq!(tcp.stat_prefix, "outbound|443||edition.cnn.com");
    assert!(matches!(
        tls.certificate,
        crate::routing::snapshot::CertificateSource::IstioIdentity { .. }
    ));
}

/// Issue 16: a header operation may not frame the message or touch a hop-by-hop field, the
/// authority or a pseudo-header (a configured `content-length` on a pooled upstream connection
/// turns a body into a second request). Each refusal names its line and field; the config is
/// refused.
#[test]
fn header_operations_on_framing_and_hop_by_hop_names_are_refused() {
    let yaml = format!(
        "{GATEWAY}{SE}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: a, namespace: istio-system}}\nspec:\n  hosts: [edition.cnn.com]\n  gateways: [gw]\n  http:\n  - headers:\n      request:\n        set: {{Content-Length: '5', x-ok: a}}\n        add: {{transfer-encoding: chunked}}\n        remove: [connection, ':authority']\n      response:\n        set: {{host: evil, x-bad: \"a\\nb\"}}\n    route:\n    - destination: {{host: edition.cnn.com}}\n      headers: {{request: {{add: {{te: trailers, x-fine: b}}}}}}\n"
    );
    let errors: Vec<String> = match compile(&yaml) {
        Ok(_) => panic!("compiled with framing header operations"),
        Err(e) => e
            .errors()
            .map(|d| format!("{}:{}", d.line.unwrap_or(0), d.field.clone().unwrap_or_default()))
            .collect(),
    };
    assert_eq!(
        errors,
        [
            "27:spec.http[0].headers.request.set.Content-Length",
            "28:spec.http[0].headers.request.add.transfer-encoding",
            "29:spec.http[0].headers.request.remove[0]",
            "29:spec.http[0].headers.request.remove[1]",
            "31:spec.http[0].headers.response.set.host",
            "31:spec.http[0].headers.response.set.x-bad",
            "34:spec.http[0].route[0].headers.request.add.te",
        ]
    );
}
