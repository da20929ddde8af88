//! DNS endpoint discovery against a real DNS server on loopback: answers, STRICT vs LOGICAL, TTL
//! refresh, the last good answer on failure, lookup family and CNAME TTLs.

mod support;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use egressd::upstream::dns::{DnsConfig, DnsError, LookupFamily, Resolver};
use egressd::upstream::endpoints::{DnsEndpoints, DnsMode, Endpoints};
use support::dns::TestDns;

const HOST: &str = "edition.cnn.com";

fn config(dns: &TestDns) -> DnsConfig {
    DnsConfig {
        nameservers: vec![dns.addr()],
        min_ttl: Duration::from_secs(1),
        failure_refresh: Duration::from_millis(200),
        query_timeout: Duration::from_secs(1),
        ..DnsConfig::default()
    }
}

fn resolver(config: &DnsConfig) -> Resolver {
    Resolver::new(config).expect("resolver")
}

fn v4(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

fn at(ips: &[Ipv4Addr], port: u16) -> Vec<SocketAddr> {
    ips.iter().map(|ip| SocketAddr::new((*ip).into(), port)).collect()
}

/// Polls `done` until it holds, for at most `within`; TTLs are whole seconds, so a refresh takes
/// about one second plus jitter.
async fn eventually(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    done()
}

#[tokio::test]
async fn lookup_returns_the_loopback_address_and_its_ttl() {
    let dns = TestDns::start().await;
    dns.set_a(HOST, &[v4(7)], 60);
    let answer = resolver(&config(&dns)).lookup(HOST).await.expect("lookup");
    assert_eq!(answer.addrs, vec![IpAddr::from(v4(7))]);
    assert_eq!(answer.ttl, Duration::from_secs(60));
    assert!(dns.queries() >= 1);
}

#[tokio::test]
async fn strict_uses_every_address_and_logical_the_first() {
    let dns = TestDns::start().await;
    dns.set_a(HOST, &[v4(4), v4(2), v4(3)], 60);
    let r = resolver(&config(&dns));
    let strict = Endpoints::Dns(DnsEndpoints::spawn(r.clone(), HOST, 80, DnsMode::Strict));
    let logical = Endpoints::Dns(DnsEndpoints::spawn(r, HOST, 80, DnsMode::Logical));

    let wait = Duration::from_secs(2);
    let sorted = at(&[v4(2), v4(3), v4(4)], 80);
    assert_eq!(*strict.wait_first(wait).await, *sorted);
    assert_eq!(
        *logical.wait_first(wait).await,
        *at(&[v4(4)], 80),
        "first in answer order"
    );
    assert_eq!(*strict.current(), *sorted);
}

#[tokio::test]
async fn ttl_expiry_refreshes_to_a_changed_address() {
    let dns = TestDns::start().await;
    dns.set_a(HOST, &[v4(2)], 1);
    let endpoints = DnsEndpoints::spawn(resolver(&config(&dns)), HOST, 80, DnsMode::Strict);
    assert_eq!(*endpoints.wait_first(Duration::from_secs(2)).await, *at(&[v4(2)], 80));

    dns.set_a(HOST, &[v4(3)], 1);
    let changed = eventually(Duration::from_secs(4), || *endpoints.current() == *at(&[v4(3)], 80)).await;
    assert!(changed, "still {:?}", endpoints.current());
    assert!(endpoints.resolutions() >= 2);
    assert_eq!(endpoints.failures(), 0);
}

#[tokio::test]
async fn a_failing_server_keeps_the_last_good_answer() {
    let dns = TestDns::start().await;
    dns.set_a(HOST, &[v4(2)], 1);
    let endpoints = DnsEndpoints::spawn(resolver(&config(&dns)), HOST, 80, DnsMode::Strict);
    assert_eq!(endpoints.wait_first(Duration::from_secs(2)).await.len(), 1);
    assert!(endpoints.last_error().is_none());

    dns.set_failing(true);
    // The retry after a failure comes after 200 ms, not the TTL: wait for two in a row.
    assert!(eventually(Duration::from_secs(4), || endpoints.consecutive_failures() >= 2).await);
    assert_eq!(*endpoints.current(), *at(&[v4(2)], 80));
    let error = endpoints.last_error().expect("error recorded");
    assert!(matches!(*error, DnsError::Lookup { .. }), "{error}");

    dns.set_a(HOST, &[v4(5)], 1);
    dns.set_failing(false);
    assert!(eventually(Duration::from_secs(2), || *endpoints.current() == *at(&[v4(5)], 80)).await);
    assert_eq!(endpoints.consecutive_failures(), 0);
    assert!(endpoints.failures() >= 2);
}

#[tokio::test]
async fn a_silent_server_times_out_within_the_query_timeout() {
    let dns = TestDns::start().await;
    dns.set_a(HOST, &[v4(2)], 60);
    dns.set_silent(true);
    let config = DnsConfig {
        query_timeout: Duration::from_millis(400),
        ..config(&dns)
    };
    let started = Instant::now();
    let error = resolver(&config).lookup(HOST).await.expect_err("no answer");
    assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
    assert!(
        matches!(error, DnsError::Timeout { .. } | DnsError::Lookup { .. }),
        "{error}"
    );
    assert!(dns.queries() >= 1);
}

#[tokio::test]
async fn nxdomain_empties_strict_and_keeps_logical() {
    let dns = TestDns::start().await;
    dns.set_a(HOST, &[v4(2)], 1);
    let r = resolver(&config(&dns));
    let strict = DnsEndpoints::spawn(r.clone(), HOST, 443, DnsMode::Strict);
    let logical = DnsEndpoints::spawn(r, HOST, 443, DnsMode::Logical);
    for e in [&strict, &logical] {
        assert_eq!(e.wait_first(Duration::from_secs(2)).await.len(), 1);
    }

    dns.remove(HOST);
    assert!(eventually(Duration::from_secs(4), || strict.current().is_empty()).await);
    assert!(eventually(Duration::from_secs(2), || logical.empty_answers() >= 1).await);
    assert_eq!(*logical.current(), *at(&[v4(2)], 443));
    for e in [&strict, &logical] {
        assert_eq!(e.failures(), 0, "an empty answer is not a failure");
    }
}

#[tokio::test]
async fn the_lookup_family_chooses_a_or_aaaa() {
    let dns = TestDns::start().await;
    dns.set_a(HOST, &[v4(2)], 60);
    dns.set_aaaa(HOST, &[Ipv6Addr::LOCALHOST], 60);
    let with = |family| DnsConfig { family, ..config(&dns) };

    let v4_only = resolver(&with(LookupFamily::V4Only)).lookup(HOST).await.expect("v4");
    assert_eq!(v4_only.addrs, vec![IpAddr::from(v4(2))]);
    assert_eq!(dns.queries_for(HOST, "AAAA"), 0, "V4_ONLY must not ask for AAAA");

    let v6_only = resolver(&with(LookupFamily::V6Only)).lookup(HOST).await.expect("v6");
    assert_eq!(v6_only.addrs, vec![IpAddr::from(Ipv6Addr::LOCALHOST)]);

    let all = resolver(&with(LookupFamily::All)).lookup(HOST).await.expect("all");
    assert_eq!(all.addrs, vec![IpAddr::from(v4(2)), IpAddr::from(Ipv6Addr::LOCALHOST)]);
}

#[tokio::test]
async fn a_cname_chain_refreshes_by_its_lowest_ttl() {
    let dns = TestDns::start().await;
    dns.set_cname(HOST, "turner-tls.map.fastly.net", 30);
    dns.set_cname("turner-tls.map.fastly.net", "cnn.edge.example", 5);
    dns.set_a("cnn.edge.example", &[v4(8), v4(9)], 120);

    let answer = resolver(&config(&dns)).lookup(HOST).await.expect("lookup");
    assert_eq!(answer.addrs, vec![IpAddr::from(v4(8)), IpAddr::from(v4(9))]);
    assert_eq!(answer.ttl, Duration::from_secs(5));

    // Clamped: a 0 TTL anywhere in the chain becomes `min_ttl`, not a tight loop.
    dns.set_cname(HOST, "turner-tls.map.fastly.net", 0);
    let answer = resolver(&config(&dns)).lookup(HOST).await.expect("lookup");
    assert_eq!(answer.ttl, Duration::from_secs(1));
}

#[tokio::test]
async fn dropping_the_last_handle_stops_the_queries() {
    let dns = TestDns::start().await;
    dns.set_a(HOST, &[v4(2)], 1);
    let endpoints = DnsEndpoints::spawn(resolver(&config(&dns)), HOST, 80, DnsMode::Strict);
    let weak = Arc::downgrade(&endpoints);
    endpoints.wait_first(Duration::from_secs(2)).await;
    drop(endpoints);
    assert!(weak.upgrade().is_none());

    let after_drop = dns.queries();
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(dns.queries(), after_drop, "a dropped cluster kept resolving");
}
