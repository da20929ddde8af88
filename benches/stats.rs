//! Micro-benchmarks of the stat hot path: a counter increment and `rq_completed` on a code the
//! cluster has already seen (the per-request cost a proxy pays).

use criterion::{criterion_group, criterion_main, Criterion};
use egressd::stats::{ClusterStats, HttpConnManagerStats, SniStats, Store};

fn hot_path(c: &mut Criterion) {
    let store = Store::new();
    let cluster = ClusterStats::new(&store, "outbound|443||edition.cnn.com");
    let http = HttpConnManagerStats::new(&store, "outbound_0.0.0.0_8080");
    let sni = SniStats::new(&store, 1000);
    cluster.rq_completed(200);
    sni.server_name("edition.cnn.com");

    c.bench_function("counter_inc", |b| b.iter(|| cluster.upstream_rq_total.inc()));
    c.bench_function("cluster_rq_completed_existing_code", |b| {
        b.iter(|| cluster.rq_completed(std::hint::black_box(200)))
    });
    c.bench_function("http_rq_completed", |b| {
        b.iter(|| http.rq_completed(std::hint::black_box(200)))
    });
    c.bench_function("sni_lookup_existing", |b| {
        b.iter(|| sni.server_name(std::hint::black_box("edition.cnn.com")))
    });
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
