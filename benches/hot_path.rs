//! Per-connection and per-request hot pieces: ClientHello parse (classic and post-quantum sized)
//! and route lookup among 10,000 hosts, exact and wildcard.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use egressd::routing::host::HostIndex;
use egressd::tls::sni::{parse_client_hello, Parsed};

/// A real ClientHello from rustls, with or without the post-quantum key share.
fn client_hello(post_quantum: bool) -> Vec<u8> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    if post_quantum {
        provider
            .kx_groups
            .insert(0, rustls::crypto::aws_lc_rs::kx_group::X25519MLKEM768);
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = "edition.cnn.com".try_into().expect("name");
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
    let mut out = Vec::new();
    conn.write_tls(&mut out).expect("hello");
    out
}

fn hello(c: &mut Criterion) {
    for (label, pq) in [("classic", false), ("post_quantum", true)] {
        let bytes = client_hello(pq);
        c.bench_function(&format!("client_hello_parse_{label}_{}B", bytes.len()), |b| {
            b.iter(|| match parse_client_hello(std::hint::black_box(&bytes)) {
                Parsed::Complete(info) => info,
                other => panic!("{other:?}"),
            })
        });
    }
}

fn route_lookup(c: &mut Criterion) {
    let exact: Vec<String> = (0..10_000).map(|i| format!("host-{i}.example.com")).collect();
    let wildcard: Vec<String> = (0..10_000).map(|i| format!("*.zone-{i}.example.org")).collect();
    let index = HostIndex::new(
        exact
            .iter()
            .chain(wildcard.iter())
            .enumerate()
            .map(|(i, d)| (d.as_str(), i)),
    );
    c.bench_function("route_lookup_10k_exact", |b| {
        b.iter(|| index.find(std::hint::black_box("host-7777.example.com")))
    });
    c.bench_function("route_lookup_10k_wildcard", |b| {
        b.iter(|| index.find(std::hint::black_box("api.zone-4242.example.org")))
    });
    c.bench_function("route_lookup_10k_miss", |b| {
        b.iter(|| index.find(std::hint::black_box("nowhere.example.net")))
    });
}

criterion_group!(benches, hello, route_lookup);
criterion_main!(benches);
