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

mod authz {
    use std::net::SocketAddr;

    use super::{compile, GATEWAY, SE};
    use crate::routing::authz::{Attributes, Decision, Filters, HttpAttributes, Tally};

    /// (allowed, denied, shadow outcomes as (deny prefix, allowed)).
    type Counted = (u32, u32, Vec<(bool, bool)>);

    /// Counts as the stats would, for checking Envoy's counting.
    #[derive(Default)]
    struct Counts(std::cell::RefCell<Counted>);

    impl Tally for Counts {
        fn allowed(&self) {
            self.0.borrow_mut().0 += 1;
        }
        fn denied(&self) {
            self.0.borrow_mut().1 += 1;
        }
        fn shadow(&self, deny_prefix: bool, allowed: bool) {
            self.0.borrow_mut().2.push((deny_prefix, allowed));
        }
    }

    fn policies(yaml: &str) -> crate::routing::authz::Authz {
        compile(&format!("{GATEWAY}{SE}{yaml}"))
            .unwrap_or_else(|e| panic!("{e}"))
            .authz
    }

    fn errors(yaml: &str) -> Vec<String> {
        match compile(&format!("{GATEWAY}{SE}{yaml}")) {
            Ok(_) => panic!("compiled"),
            Err(e) => e
                .errors()
                .map(|d| {
                    format!(
                        "{}:{} {}",
                        d.line.unwrap_or(0),
                        d.field.clone().unwrap_or_default(),
                        d.message
                    )
                })
                .collect(),
        }
    }

    const SLEEP: &str = "cluster.local/ns/default/sa/sleep";
    const OTHER: &str = "cluster.local/ns/other/sa/app";

    fn http<'a>(principal: Option<&'a str>, authority: &'a str, headers: &'a http::HeaderMap) -> Attributes<'a> {
        Attributes {
            principal,
            peer: "127.0.0.1".parse().unwrap(),
            local: "127.0.0.1:8080".parse::<SocketAddr>().unwrap(),
            sni: Some("edition.cnn.com"),
            http: Some(HttpAttributes {
                authority,
                method: "GET",
                path: "/politics",
                headers,
            }),
        }
    }

    fn tcp<'a>(principal: Option<&'a str>, sni: &'static str) -> Attributes<'a> {
        Attributes {
            principal,
            peer: "127.0.0.1".parse().unwrap(),
            local: "127.0.0.1:8443".parse::<SocketAddr>().unwrap(),
            sni: Some(sni),
            http: None,
        }
    }

    fn decide(f: &Filters, a: &Attributes<'_>) -> (Decision, Counted) {
        let counts = Counts::default();
        let d = f.evaluate(a, &counts);
        (d, counts.0.into_inner())
    }

    const ALLOW_SLEEP: &str = "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-sleep, namespace: istio-system}\nspec:\n  selector: {matchLabels: {istio: egressgateway}}\n  action: ALLOW\n  rules:\n  - from: [{source: {principals: [cluster.local/ns/default/sa/sleep]}}]\n    to: [{operation: {hosts: [edition.cnn.com]}}]\n  - from: [{source: {namespaces: [default]}}]\n    when: [{key: connection.sni, values: ['*.cnn.com']}]\n";
    const DENY_OTHER: &str = "---\napiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\nmetadata: {name: deny-other-ns, namespace: istio-system}\nspec:\n  action: DENY\n  rules:\n  - from: [{source: {notNamespaces: [default]}}]\n";

    /// ALLOW: a matching rule lets the request on (counted once), a miss is denied with `[none]`;
    /// the port is part of `hosts`' `:authority`; a DENY wins, named, and an allowed request is
    /// counted by both filters, as Envoy counts it.
    #[test]
    fn allow_and_deny_decide_and_count_as_envoy() {
        let headers = http::HeaderMap::new();
        let authz = policies(ALLOW_SLEEP);
        assert_eq!(
            decide(&authz.http, &http(Some(SLEEP), "edition.cnn.com", &headers)),
            (Decision::Allow, (1, 0, vec![]))
        );
        assert_eq!(
            decide(&authz.http, &http(Some(OTHER), "edition.cnn.com", &headers)),
            (Decision::Deny(None), (0, 1, vec![]))
        );
        assert_eq!(
            decide(&authz.http, &http(Some(SLEEP), "edition.cnn.com:8080", &headers)).0,
            Decision::Allow,
            "rule 1 (namespace + SNI) still matches"
        );
        let denied = decide(&authz.http, &http(None, "edition.cnn.com", &headers)).0;
        assert_eq!(denied.details().unwrap(), "rbac_access_denied_matched_policy[none]");

        let authz = policies(&format!("{ALLOW_SLEEP}{DENY_OTHER}"));
        assert_eq!(
            decide(&authz.http, &http(Some(SLEEP), "edition.cnn.com", &headers)),
            (Decision::Allow, (2, 0, vec![]))
        );
        let (d, counts) = decide(&authz.http, &http(Some(OTHER), "edition.cnn.com", &headers));
        assert_eq!(
            d.details().unwrap(),
            "rbac_access_denied_matched_policy[ns[istio-system]-policy[deny-other-ns]-rule[0]]"
        );
        assert_eq!(counts, (0, 1, vec![]));
    }

    /// On a TCP chain an ALLOW rule with an HTTP-only field matches nothing; a DENY rule loses
    /// the field and denies more (istiod's translation).
    #[test]
    fn http_only_fields_on_tcp_chains_follow_istiod() {
        let authz = policies(ALLOW_SLEEP);
        // Rule 0 (hosts) is gone on TCP; rule 1 (namespace + SNI) stays.
        assert_eq!(
            decide(&authz.tcp, &tcp(Some(SLEEP), "edition.cnn.com")).0,
            Decision::Allow
        );
        assert_eq!(
            decide(&authz.tcp, &tcp(Some(SLEEP), "example.com")).0,
            Decision::Deny(None)
        );
        // A passthrough connection carries no principal: a principal rule never matches it
        // (Envoy's `authenticated` matcher fails without a peer certificate).
        assert_eq!(
            decide(&authz.tcp, &tcp(None, "edition.cnn.com")).0,
            Decision::Deny(None)
        );
        let deny_host = "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: no-cnn, namespace: istio-system}\nspec:\n  action: DENY\n  rules:\n  - to: [{operation: {hosts: [edition.cnn.com], ports: ['8443']}}]\n";
        let authz = policies(deny_host);
        // HTTP: only the host with the port; TCP: every connection to port 8443.
        let headers = http::HeaderMap::new();
        assert_eq!(
            decide(&authz.http, &http(None, "edition.cnn.com", &headers)).0,
            Decision::Allow
        );
        assert!(matches!(
            decide(&authz.tcp, &tcp(None, "example.com")).0,
            Decision::Deny(Some(_))
        ));
        // An ALLOW policy left with no rule on TCP allows nothing there.
        let only_http = "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: paths, namespace: istio-system}\nspec:\n  rules:\n  - to: [{operation: {paths: ['/politics*']}}]\n";
        let authz = policies(only_http);
        assert_eq!(decide(&authz.http, &http(None, "x", &headers)).0, Decision::Allow);
        assert_eq!(
            decide(&authz.tcp, &tcp(Some(SLEEP), "edition.cnn.com")).0,
            Decision::Deny(None)
        );
    }

    /// `spec: {}` denies all; `rules: [{}]` allows all; dry-run only counts, with Envoy's shadow
    /// prefixes; policies of other namespaces, other selectors and targetRefs do not apply.
    #[test]
    fn deny_all_allow_all_dry_run_and_selection() {
        let headers = http::HeaderMap::new();
        let a = http(Some(SLEEP), "edition.cnn.com", &headers);
        let deny_all = "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-all, namespace: istio-system}\nspec: {}\n";
        assert_eq!(decide(&policies(deny_all).http, &a).0, Decision::Deny(None));
        let allow_all = "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-all, namespace: istio-system}\nspec:\n  rules: [{}]\n";
        assert_eq!(
            decide(&policies(&format!("{deny_all}{allow_all}")).http, &a).0,
            Decision::Allow
        );

        let dry = DENY_OTHER.replace(
            "metadata: {name: deny-other-ns, namespace: istio-system}",
            "metadata: {name: deny-other-ns, namespace: istio-system, annotations: {istio.io/dry-run: 'true'}}",
        );
        let authz = policies(&dry);
        let other = http(Some(OTHER), "edition.cnn.com", &headers);
        // Not enforced: allowed, nothing counted but the shadow denial.
        assert_eq!(
            decide(&authz.http, &other),
            (Decision::Allow, (0, 0, vec![(true, false)]))
        );

        let elsewhere = [
            "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x, namespace: team-a}\nspec: {}\n",
            "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x, namespace: istio-system}\nspec:\n  selector: {matchLabels: {app: other}}\n",
            "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x, namespace: istio-system}\nspec:\n  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: egress}]\n",
        ];
        for yaml in elsewhere {
            assert!(policies(yaml).is_empty(), "{yaml}");
        }
    }

    /// What egressd cannot enforce in full is refused, with its line and field.
    #[test]
    fn unsupported_policies_are_errors() {
        let head = "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: istio-system}\nspec:\n";
        let errs = errors(&format!(
            "{head}  action: CUSTOM\n  provider: {{name: ext}}\n  rules: [{{}}]\n"
        ));
        assert!(errs[0].starts_with("22:spec.action CUSTOM"), "{errs:?}");
        let errs = errors(&format!(
            "{head}  rules:\n  - from: [{{source: {{requestPrincipals: ['*']}}}}]\n"
        ));
        assert!(
            errs[0].starts_with("23:spec.rules[0].from[0].source.requestPrincipals request principals"),
            "{errs:?}"
        );
        let errs = errors(&format!(
            "{head}  rules:\n  - when: [{{key: 'request.auth.claims[iss]', values: [x]}}]\n"
        ));
        assert!(
            errs[0].starts_with("23:spec.rules[0].when[0].key `request.auth.claims[iss]` (JWT)"),
            "{errs:?}"
        );
        let errs = errors(&format!(
            "{head}  rules:\n  - when: [{{key: source.nope, values: [x]}}]\n"
        ));
        assert!(errs[0].contains("unknown condition key `source.nope`"), "{errs:?}");
        let errs = errors(&format!(
            "{head}  rules:\n  - from: [{{source: {{ipBlocks: [10.0.0.0/40]}}}}]\n"
        ));
        assert!(
            errs[0].contains("`10.0.0.0/40` is not an IP address or CIDR block"),
            "{errs:?}"
        );
        let errs = errors(&format!("{head}  rules:\n  - to: [{{operation: {{hostz: [a]}}}}]\n"));
        assert!(
            errs[0].contains("spec.rules[0].to[0].operation.hostz unknown field in an AuthorizationPolicy"),
            "{errs:?}"
        );
    }

    /// `check` flags rules that can never match: principals on passthrough servers, hosts that
    /// no ServiceEntry serves.
    #[test]
    fn rules_that_can_never_match_are_warned_about() {
        let passthrough = GATEWAY.replace(
            "  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: ['*']\n",
            "  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: ['*']\n  - port: {number: 443, name: tls, protocol: TLS}\n    hosts: ['*']\n    tls: {mode: PASSTHROUGH}\n",
        );
        let vs = "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: cnn, namespace: istio-system}\nspec:\n  hosts: [edition.cnn.com]\n  gateways: [gw]\n  tls:\n  - match: [{port: 443, sniHosts: [edition.cnn.com]}]\n    route: [{destination: {host: edition.cnn.com, port: {number: 443}}}]\n";
        let se = SE.replace(
            "ports: [{number: 80, name: http, protocol: HTTP}]",
            "ports: [{number: 80, name: http, protocol: HTTP}, {number: 443, name: tls, protocol: TLS}]",
        );
        let policy = "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: istio-system}\nspec:\n  rules:\n  - from: [{source: {principals: [cluster.local/ns/default/sa/sleep]}}]\n  - to: [{operation: {hosts: [edition.cnn.com, 'edition.cnn.com:*', typo.cnn.com]}}]\n";
        let snapshot = compile(&format!("{passthrough}{se}{vs}{policy}")).unwrap();
        let warnings: Vec<String> = snapshot
            .diagnostics
            .iter()
            .filter(|d| d.severity == crate::config::Severity::Warning)
            .map(|d| format!("{} {}", d.field.clone().unwrap_or_default(), d.message))
            .collect();
        assert!(
            warnings
                .iter()
                .any(|w| w.starts_with("spec.rules[0].from this ALLOW rule needs a caller's principal")),
            "{warnings:#?}"
        );
        assert!(
            warnings
                .iter()
                .any(|w| w.starts_with("spec.rules[1].to[0].operation.hosts no ServiceEntry serves `typo.cnn.com`:")),
            "{warnings:#?}"
        );
        assert!(
            !warnings.iter().any(|w| w.contains("`edition.cnn.com")),
            "{warnings:#?}"
        );
    }

    /// Every source, operation and `when` field reaches the evaluation: service accounts,
    /// addresses (peer, remote, destination), methods, paths (templates too), request headers,
    /// destination ports, and their negations.
    #[test]
    fn every_field_is_evaluated() {
        let mut headers = http::HeaderMap::new();
        headers.insert("x-team", http::HeaderValue::from_static("payments"));
        let base = http(Some(SLEEP), "edition.cnn.com", &headers);
        let allows = |rule: &str, a: &Attributes<'_>| {
            let yaml = format!("---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: f, namespace: istio-system}}\nspec:\n  rules:\n  - {rule}\n");
            decide(&policies(&yaml).http, a).0 == Decision::Allow
        };
        let cases: [(&str, bool); 16] = [
            ("from: [{source: {serviceAccounts: [default/sleep]}}]", true),
            ("from: [{source: {serviceAccounts: [other/sleep]}}]", false),
            ("from: [{source: {notServiceAccounts: [default/sleep]}}]", false),
            ("from: [{source: {ipBlocks: [127.0.0.0/8]}}]", true),
            ("from: [{source: {notIpBlocks: [127.0.0.1]}}]", false),
            ("from: [{source: {remoteIpBlocks: [10.0.0.0/8]}}]", false),
            ("to: [{operation: {methods: [GET]}}]", true),
            ("to: [{operation: {notMethods: [GET]}}]", false),
            ("to: [{operation: {paths: ['/pol*']}}]", true),
            ("to: [{operation: {paths: ['/{*}']}}]", true),
            ("to: [{operation: {notPaths: ['*tics']}}]", false),
            ("to: [{operation: {ports: ['8080']}}]", true),
            ("when: [{key: destination.ip, values: [127.0.0.1]}]", true),
            ("when: [{key: 'request.headers[X-Team]', values: [pay*]}]", true),
            ("when: [{key: 'request.headers[x-team]', notValues: [payments]}]", false),
            ("when: [{key: source.principal, values: ['*/sa/sleep']}]", true),
        ];
        for (rule, allowed) in cases {
            assert_eq!(allows(rule, &base), allowed, "{rule}");
        }
    }
}
