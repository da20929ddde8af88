//! Snapshot compile at scale: 10,000 ServiceEntries and 10,000 VirtualServices on one gateway
//! (HTTP by Host and TLS passthrough by SNI), from YAML text to the immutable snapshot.

use std::fmt::Write;

use criterion::{criterion_group, criterion_main, Criterion};
use egressd::config::{self, Bootstrap};
use egressd::routing;

fn yaml(n: usize) -> String {
    let mut out = String::from(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: istio-egressgateway}\nspec:\n  selector: {istio: egressgateway}\n  servers:\n  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: ['*']\n  - port: {number: 443, name: tls, protocol: TLS}\n    hosts: ['*']\n    tls: {mode: PASSTHROUGH}\n",
    );
    for i in 0..n {
        let _ = write!(
            out,
            "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: se-{i}}}\nspec:\n  hosts: [host-{i}.example.com]\n  ports:\n  - {{number: 80, name: http, protocol: HTTP}}\n  - {{number: 443, name: tls, protocol: TLS}}\n  resolution: DNS\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: vs-{i}}}\nspec:\n  hosts: [host-{i}.example.com]\n  gateways: [istio-egressgateway]\n  http:\n  - match:\n    - uri: {{prefix: /api}}\n    route:\n    - destination: {{host: host-{i}.example.com, port: {{number: 80}}}}\n  tls:\n  - match:\n    - {{port: 443, sniHosts: [host-{i}.example.com]}}\n    route:\n    - destination: {{host: host-{i}.example.com, port: {{number: 443}}}}\n"
        );
    }
    out
}

fn compile(c: &mut Criterion) {
    let text = yaml(10_000);
    let bootstrap = Bootstrap::default();
    let mut group = c.benchmark_group("compile");
    group.sample_size(10);
    group.bench_function("load_and_compile_10k_se_10k_vs", |b| {
        b.iter(|| {
            let mut loaded = config::Loaded::default();
            config::load_str("bench.yaml".into(), &text, "default", &mut loaded);
            let snapshot = routing::compile(&loaded, &bootstrap).expect("compiles");
            assert_eq!(snapshot.clusters.len(), 20_002);
            snapshot
        })
    });
    let mut loaded = config::Loaded::default();
    config::load_str("bench.yaml".into(), &text, "default", &mut loaded);
    group.bench_function("compile_only_10k_se_10k_vs", |b| {
        b.iter(|| routing::compile(&loaded, &bootstrap).expect("compiles"))
    });
    group.finish();
}

criterion_group!(benches, compile);
criterion_main!(benches);
