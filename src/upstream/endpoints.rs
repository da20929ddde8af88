//! The endpoint set of an upstream cluster: a fixed list (STATIC) or one host kept resolved by a
//! background task (STRICT_DNS, LOGICAL_DNS), read lock-free by every connection.
//! It does not pick an endpoint (load balancing belongs to the pool) and a reader never waits on
//! DNS, except once through `wait_first` for a cluster's very first answer.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::dns::{DnsError, Resolved, Resolver};

/// Upper bound of the random delay added to each refresh, as Envoy's `dns_jitter` (100 ms in
/// Istio), so that clusters with the same TTL do not query in lockstep.
const REFRESH_JITTER_MS: u64 = 100;

/// Where a cluster's endpoints come from. Cheap to clone.
#[derive(Clone, Debug)]
pub enum Endpoints {
    /// STATIC: addresses fixed by the config. Also `NONE` on a gateway, as an empty list (503 UH).
    Static(Arc<[SocketAddr]>),
    /// STRICT_DNS or LOGICAL_DNS: the live answer for one host.
    Dns(Arc<DnsEndpoints>),
    /// STRICT_DNS over several hosts (ServiceEntry endpoints that are names): every address of
    /// every host.
    Union(Arc<[Arc<DnsEndpoints>]>),
}

impl Endpoints {
    pub fn fixed(addrs: impl IntoIterator<Item = SocketAddr>) -> Self {
        Self::Static(addrs.into_iter().collect())
    }

    /// The endpoints right now; empty means "no healthy upstream".
    pub fn current(&self) -> Arc<[SocketAddr]> {
        match self {
            Self::Static(addrs) => addrs.clone(),
            Self::Dns(dns) => dns.current(),
            Self::Union(all) => all.iter().flat_map(|d| d.current().to_vec()).collect(),
        }
    }

    /// [`Self::current`], after waiting up to `timeout` for the first DNS answer if none came yet.
    pub async fn wait_first(&self, timeout: Duration) -> Arc<[SocketAddr]> {
        match self {
            Self::Static(addrs) => addrs.clone(),
            Self::Dns(dns) => dns.wait_first(timeout).await,
            Self::Union(all) => {
                for d in all.iter() {
                    d.wait_first(timeout).await;
                }
                self.current()
            }
        }
    }
}

/// Envoy's cluster type for a DNS ServiceEntry (reference §7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum DnsMode {
    /// `resolution: DNS`: every address is an endpoint, kept sorted.
    #[serde(rename = "STRICT_DNS")]
    Strict,
    /// `resolution: DNS_ROUND_ROBIN`: only the first address of the latest answer.
    #[serde(rename = "LOGICAL_DNS")]
    Logical,
}

/// The live addresses of one cluster host, refreshed when their TTL expires.
///
/// On a failed lookup the last good answer stays (Envoy's STRICT_DNS dropped it,
/// envoyproxy/envoy#2691) and the lookup is retried after `failure_refresh`. A successful empty
/// answer (NXDOMAIN, NODATA) is the host's real state, so it is applied as Envoy applies it:
/// STRICT_DNS removes every endpoint, LOGICAL_DNS keeps its last address.
/// The background task ends when the last `Arc<DnsEndpoints>` is dropped.
#[derive(Debug)]
pub struct DnsEndpoints {
    host: String,
    port: u16,
    mode: DnsMode,
    // `Arc<[T]>` is unsized, which arc-swap cannot hold directly; the extra indirection costs
    // one pointer load on read, and `current()` still does a single refcount increment.
    addrs: ArcSwap<Arc<[SocketAddr]>>,
    first_done: AtomicBool,
    first_answer: watch::Sender<bool>,
    resolutions: AtomicU64,
    failures: AtomicU64,
    consecutive_failures: AtomicU64,
    empty_answers: AtomicU64,
    last_error: ArcSwapOption<DnsError>,
    stop: CancellationToken,
}

impl DnsEndpoints {
    /// Starts resolving `host` at once and keeps it resolved. Must be called inside a tokio
    /// runtime; use `wait_first` before the first connection.
    pub fn spawn(resolver: Resolver, host: impl Into<String>, port: u16, mode: DnsMode) -> Arc<Self> {
        let this = Arc::new(Self::idle(host.into(), port, mode));
        tokio::spawn(refresh(resolver, Arc::downgrade(&this), this.stop.clone()));
        this
    }

    fn idle(host: String, port: u16, mode: DnsMode) -> Self {
        Self {
            host,
            port,
            mode,
            addrs: ArcSwap::from_pointee(Arc::from(Vec::new())),
            first_done: AtomicBool::new(false),
            first_answer: watch::Sender::new(false),
            resolutions: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            consecutive_failures: AtomicU64::new(0),
            empty_answers: AtomicU64::new(0),
            last_error: ArcSwapOption::empty(),
            stop: CancellationToken::new(),
        }
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn mode(&self) -> DnsMode {
        self.mode
    }

    /// The endpoints right now; empty before the first answer or after an empty STRICT answer.
    pub fn current(&self) -> Arc<[SocketAddr]> {
        Arc::clone(&self.addrs.load())
    }

    /// Waits up to `timeout` for the first lookup to finish (answer or failure), so that the
    /// first request does not fail with no endpoints while that lookup is in flight.
    pub async fn wait_first(&self, timeout: Duration) -> Arc<[SocketAddr]> {
        if !self.first_done.load(Ordering::Acquire) {
            let mut done = self.first_answer.subscribe();
            // Err is a timeout or a closed channel: either way, answer with what there is.
            let _ = tokio::time::timeout(timeout, done.wait_for(|done| *done)).await;
        }
        self.current()
    }

    /// Finished lookups, successful or not (Envoy's `update_attempt`).
    pub fn resolutions(&self) -> u64 {
        self.resolutions.load(Ordering::Relaxed)
    }

    /// Failed lookups: timeouts, SERVFAIL, unreachable nameservers (Envoy's `update_failure`).
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Failed lookups since the last successful one; 0 while healthy.
    pub fn consecutive_failures(&self) -> u64 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }

    /// Successful lookups with no address (NXDOMAIN, NODATA).
    pub fn empty_answers(&self) -> u64 {
        self.empty_answers.load(Ordering::Relaxed)
    }

    /// The most recent failure, kept after later successes for diagnosis.
    pub fn last_error(&self) -> Option<Arc<DnsError>> {
        self.last_error.load_full()
    }

    /// Applies one lookup's outcome and returns the delay until the next lookup.
    fn apply(&self, outcome: Result<Resolved, DnsError>, failure_refresh: Duration) -> Duration {
        self.resolutions.fetch_add(1, Ordering::Relaxed);
        let delay = match outcome {
            Ok(resolved) => {
                self.consecutive_failures.store(0, Ordering::Relaxed);
                if resolved.addrs.is_empty() {
                    self.empty_answers.fetch_add(1, Ordering::Relaxed);
                }
                let keep_last = resolved.addrs.is_empty() && self.mode == DnsMode::Logical;
                if !keep_last {
                    let port = self.port;
                    let mut next: Vec<SocketAddr> =
                        resolved.addrs.iter().map(|ip| SocketAddr::new(*ip, port)).collect();
                    match self.mode {
                        // Servers rotate round-robin records on every answer; a sorted set keeps
                        // an unchanged answer unchanged (and `/clusters` stable).
                        DnsMode::Strict => next.sort_unstable(),
                        DnsMode::Logical => next.truncate(1),
                    }
                    if **self.addrs.load().as_ref() != next[..] {
                        tracing::debug!(host = %self.host, addrs = ?next, "DNS endpoints changed");
                        self.addrs.store(Arc::new(next.into()));
                    }
                }
                resolved.ttl
            }
            Err(error) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                let in_a_row = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
                // Once per outage, not every retry: the counters carry the rest.
                if in_a_row == 1 {
                    tracing::warn!(host = %self.host, %error, kept = self.current().len(),
                        "DNS lookup failed; keeping the last good answer");
                }
                self.last_error.store(Some(Arc::new(error)));
                failure_refresh
            }
        };
        if !self.first_done.swap(true, Ordering::AcqRel) {
            self.first_answer.send_replace(true);
        }
        delay
    }
}

impl Drop for DnsEndpoints {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The refresh loop. It holds only a `Weak` between lookups, and `stop` ends it at once when the
/// last `Arc` is dropped, even mid-lookup or mid-sleep.
async fn refresh(resolver: Resolver, endpoints: Weak<DnsEndpoints>, stop: CancellationToken) {
    let Some(host) = endpoints.upgrade().map(|e| e.host.clone()) else {
        return;
    };
    loop {
        let outcome = tokio::select! {
            _ = stop.cancelled() => return,
            outcome = resolver.lookup(&host) => outcome,
        };
        let Some(live) = endpoints.upgrade() else {
            return;
        };
        let delay = live.apply(outcome, resolver.failure_refresh());
        drop(live);
        let jitter = Duration::from_millis(fastrand::u64(0..=REFRESH_JITTER_MS));
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay + jitter) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::upstream::dns::DnsConfig;

    const RETRY: Duration = Duration::from_secs(5);

    fn answer(ips: &[&str], ttl_secs: u64) -> Result<Resolved, DnsError> {
        Ok(Resolved {
            addrs: ips.iter().map(|ip| ip.parse::<IpAddr>().unwrap()).collect(),
            ttl: Duration::from_secs(ttl_secs),
        })
    }

    fn failure() -> Result<Resolved, DnsError> {
        Err(DnsError::Lookup {
            host: "edition.cnn.com".into(),
            reason: "SERVFAIL".into(),
        })
    }

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn strict_keeps_every_address_and_logical_the_first() {
        let strict = DnsEndpoints::idle("h".into(), 80, DnsMode::Strict);
        let logical = DnsEndpoints::idle("h".into(), 80, DnsMode::Logical);
        for e in [&strict, &logical] {
            assert_eq!(
                e.apply(answer(&["127.0.0.3", "127.0.0.2"], 30), RETRY),
                Duration::from_secs(30)
            );
        }
        assert_eq!(*strict.current(), *addrs(&["127.0.0.2:80", "127.0.0.3:80"]));
        assert_eq!(*logical.current(), *addrs(&["127.0.0.3:80"]));
    }

    #[test]
    fn a_failure_keeps_the_last_good_answer_and_is_counted() {
        let e = DnsEndpoints::idle("h".into(), 443, DnsMode::Strict);
        e.apply(answer(&["127.0.0.2"], 30), RETRY);
        assert_eq!(e.apply(failure(), RETRY), RETRY);
        assert_eq!(e.apply(failure(), RETRY), RETRY);
        assert_eq!(*e.current(), *addrs(&["127.0.0.2:443"]));
        assert_eq!((e.resolutions(), e.failures(), e.consecutive_failures()), (3, 2, 2));
        assert!(e.last_error().unwrap().to_string().contains("SERVFAIL"));

        e.apply(answer(&["127.0.0.4"], 30), RETRY);
        assert_eq!(e.consecutive_failures(), 0);
        assert_eq!(*e.current(), *addrs(&["127.0.0.4:443"]));
        assert!(e.last_error().is_some(), "kept for diagnosis");
    }

    #[test]
    fn an_empty_answer_clears_strict_and_keeps_logical() {
        let strict = DnsEndpoints::idle("h".into(), 80, DnsMode::Strict);
        let logical = DnsEndpoints::idle("h".into(), 80, DnsMode::Logical);
        for e in [&strict, &logical] {
            e.apply(answer(&["127.0.0.2"], 30), RETRY);
            assert_eq!(e.apply(answer(&[], 7), RETRY), Duration::from_secs(7));
            assert_eq!(e.empty_answers(), 1);
            assert_eq!(e.failures(), 0);
        }
        assert!(strict.current().is_empty());
        assert_eq!(*logical.current(), *addrs(&["127.0.0.2:80"]));
    }

    #[tokio::test]
    async fn wait_first_returns_on_the_first_outcome_or_the_timeout() {
        let e = Arc::new(DnsEndpoints::idle("h".into(), 80, DnsMode::Strict));
        assert!(e.wait_first(Duration::from_millis(20)).await.is_empty());

        let waiter = tokio::spawn({
            let e = e.clone();
            async move { e.wait_first(Duration::from_secs(60)).await }
        });
        tokio::task::yield_now().await;
        e.apply(answer(&["127.0.0.9"], 30), RETRY);
        assert_eq!(*waiter.await.unwrap(), *addrs(&["127.0.0.9:80"]));

        let fixed = Endpoints::fixed(addrs(&["10.0.0.1:8080"]));
        assert_eq!(fixed.wait_first(Duration::ZERO).await.len(), 1);
        assert!(Endpoints::fixed([]).current().is_empty());
    }

    #[tokio::test]
    async fn the_refresh_task_ends_with_the_last_handle() {
        let resolver = Resolver::new(&DnsConfig {
            // Nothing answers here, so the task is mid-lookup when the handle goes.
            nameservers: vec!["127.0.0.1:9".parse().unwrap()],
            ..DnsConfig::default()
        })
        .unwrap();
        let metrics = tokio::runtime::Handle::current().metrics();
        let before = metrics.num_alive_tasks();
        let e = DnsEndpoints::spawn(resolver, "edition.cnn.com", 80, DnsMode::Strict);
        tokio::task::yield_now().await;
        assert!(metrics.num_alive_tasks() > before);
        drop(e);
        for _ in 0..100 {
            if metrics.num_alive_tasks() <= before {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("refresh task still alive");
    }
}
