//! Formatting cost of one access-log line (the writer thread's per-record CPU), TEXT and JSON.

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use criterion::{criterion_group, criterion_main, Criterion};
use egressd::access_log::{AccessLogRecord, Format, Protocol};

fn http_record() -> AccessLogRecord {
    let addr = |s: &str| Some(s.parse().expect("bench address"));
    AccessLogRecord {
        method: Some("GET".into()),
        path: Some("/politics".into()),
        protocol: Some(Protocol::Http11),
        response_code: 301,
        response_code_details: Some("via_upstream".into()),
        duration_ms: 1,
        upstream_service_time_ms: Some(1),
        x_forwarded_for: Some("192.0.2.2".into()),
        user_agent: Some("curl/7.35.0".into()),
        request_id: Some("901a3e4c-0b1d-4f43-9d5a-2f0c3c5c9e11".into()),
        authority: Some("edition.cnn.com".into()),
        upstream_host: addr("151.101.1.67:80"),
        upstream_cluster: Some("outbound|80||edition.cnn.com".into()),
        upstream_local_address: addr("10.244.0.12:56218"),
        downstream_local_address: addr("10.244.0.12:8080"),
        downstream_remote_address: addr("10.244.0.7:35154"),
        route_name: Some("cnn-route".into()),
        ..AccessLogRecord::new(SystemTime::UNIX_EPOCH + Duration::from_millis(1_528_976_783_596))
    }
}

fn format_http(c: &mut Criterion) {
    let record = http_record();
    let mut line = Vec::with_capacity(1024);
    for (name, format) in [("text", Format::Text), ("json", Format::Json)] {
        c.bench_function(&format!("access_log_format_http_{name}"), |b| {
            b.iter(|| {
                line.clear();
                format.write(black_box(&record), &mut line);
                black_box(line.len())
            })
        });
    }
}

criterion_group!(benches, format_http);
criterion_main!(benches);
