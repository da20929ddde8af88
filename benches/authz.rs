//! Per-request cost of AuthorizationPolicy (issue 17): 100 rules (principals, namespaces, hosts,
//! paths, SNI conditions; 10 DENY, 90 ALLOW) evaluated for an HTTP request that only the last
//! ALLOW rule matches (every rule is tried), one that no rule matches, and a TCP connection; and
//! 10 rules, the load benchmark's policy set. Decisions run on compiled matchers: hash sets,
//! prefixes, CIDRs, no string building.

use std::fmt::Write;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use egressd::config::{self, Bootstrap};
use egressd::routing::authz::{Attributes, Filters, HttpAttributes, Tally};
use egressd::routing::{self, authz::Authz};

struct NoTally;

impl Tally for NoTally {
    fn allowed(&self) {}
    fn denied(&self) {}
    fn shadow(&self, _: bool, _: bool) {}
}

/// `rules` rules: a tenth DENY, the rest ALLOW; rule `rules - 1` allows `sleep` to
/// edition.cnn.com.
fn policies(rules: usize) -> Authz {
    let mut yaml = String::from(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: istio-system}\nspec:\n  selector: {istio: egressgateway}\n  servers:\n  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: ['*']\n",
    );
    for i in 0..rules {
        let action = if i % 10 == 0 { "DENY" } else { "ALLOW" };
        let (principal, host) = if i == rules - 1 {
            (
                "cluster.local/ns/default/sa/sleep".to_string(),
                "edition.cnn.com".to_string(),
            )
        } else {
            (
                format!("cluster.local/ns/team-{i}/sa/app"),
                format!("host-{i}.example.com"),
            )
        };
        let _ = write!(
            yaml,
            "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p-{i}, namespace: istio-system}}\nspec:\n  action: {action}\n  rules:\n  - from: [{{source: {{principals: [{principal}], notNamespaces: [blocked-{i}]}}}}]\n    to: [{{operation: {{hosts: [{host}, '*.team-{i}.example.com'], paths: ['/api/*', /politics], methods: [GET, POST]}}}}]\n    when: [{{key: connection.sni, values: ['*.example.com', edition.cnn.com]}}]\n"
        );
    }
    let mut loaded = config::Loaded::default();
    config::load_str("bench.yaml".into(), &yaml, "default", &mut loaded);
    routing::compile(&loaded, &Bootstrap::default())
        .expect("compiles")
        .authz
}

fn evaluate(filters: &Filters, principal: &str, authority: &str) -> bool {
    let headers = http::HeaderMap::new();
    let attributes = Attributes {
        principal: Some(principal),
        peer: "10.4.0.7".parse().unwrap(),
        local: "10.4.0.9:8080".parse().unwrap(),
        sni: Some("edition.cnn.com"),
        http: Some(HttpAttributes {
            authority,
            method: "GET",
            path: "/politics",
            headers: &headers,
        }),
    };
    filters.evaluate(&attributes, &NoTally) == egressd::routing::authz::Decision::Allow
}

fn authz(c: &mut Criterion) {
    let mut group = c.benchmark_group("authz");
    for rules in [10, 100] {
        let authz = policies(rules);
        assert!(evaluate(
            &authz.http,
            "cluster.local/ns/default/sa/sleep",
            "edition.cnn.com"
        ));
        assert!(!evaluate(&authz.http, "cluster.local/ns/other/sa/x", "edition.cnn.com"));
        group.bench_function(format!("http_allowed_by_the_last_of_{rules}_rules"), |b| {
            b.iter(|| {
                evaluate(
                    black_box(&authz.http),
                    "cluster.local/ns/default/sa/sleep",
                    "edition.cnn.com",
                )
            })
        });
        group.bench_function(format!("http_denied_by_none_of_{rules}_rules"), |b| {
            b.iter(|| evaluate(black_box(&authz.http), "cluster.local/ns/other/sa/x", "edition.cnn.com"))
        });
    }
    group.finish();
}

criterion_group!(benches, authz);
criterion_main!(benches);
