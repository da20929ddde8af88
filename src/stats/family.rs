//! Pre-resolved stat families (Envoy's cluster, HTTP connection manager, listener, tcp_proxy and
//! server stats): structs of handles created once per cluster/listener/prefix, so the request
//! path only touches atomics. Names come from `names`; nothing here renders or does I/O.
//! Creating a family twice with the same tag value shares the values (a reload keeps counts).

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use arc_swap::ArcSwap;

use super::names::{cluster, http, labels, listener, rbac, server, tcp};
use super::{Counter, Gauge, Kind, StatDesc, Store};

/// `cluster.<name>.*`. Hold it behind an `Arc` on the hot path: cloning copies every handle.
#[derive(Debug, Clone)]
pub struct ClusterStats {
    pub upstream_cx_total: Counter,
    pub upstream_cx_active: Gauge,
    pub upstream_cx_connect_fail: Counter,
    pub upstream_cx_connect_timeout: Counter,
    pub upstream_cx_rx_bytes_total: Counter,
    pub upstream_cx_tx_bytes_total: Counter,
    pub upstream_cx_overflow: Counter,
    pub upstream_rq_total: Counter,
    pub upstream_rq_active: Gauge,
    pub upstream_rq_timeout: Counter,
    pub upstream_rq_retry: Counter,
    pub upstream_rq_pending_overflow: Counter,
    pub upstream_rq_completed: Counter,
    pub ssl_handshake: Counter,
    pub ssl_fail_verify_san: Counter,
    pub ssl_fail_verify_error: Counter,
    pub ssl_connection_error: Counter,
    codes: Arc<ResponseCodeStats>,
}

/// Envoy creates the per-code and per-class counters when a response first carries them, so
/// `/stats` shows only codes seen; so do we, without formatting a name after the first time.
#[derive(Debug)]
struct ResponseCodeStats {
    store: Store,
    cluster_name: Box<str>,
    /// Indexed by `status / 100 - 1`.
    classes: [OnceLock<Counter>; 5],
    /// Sorted by code. Copy-on-write: a response reads it lock-free, and a new code (rare, at
    /// most 500 of them) swaps in a copy.
    by_code: ArcSwap<Vec<(u16, Counter)>>,
    unknown: OnceLock<Counter>,
}

impl ClusterStats {
    pub fn new(store: &Store, cluster_name: &str) -> ClusterStats {
        let c = |suffix| store.counter_with(StatDesc::scoped(cluster::SCOPE, cluster_name, suffix));
        let g = |suffix| store.gauge_with(StatDesc::scoped(cluster::SCOPE, cluster_name, suffix));
        ClusterStats {
            upstream_cx_total: c(cluster::UPSTREAM_CX_TOTAL),
            upstream_cx_active: g(cluster::UPSTREAM_CX_ACTIVE),
            upstream_cx_connect_fail: c(cluster::UPSTREAM_CX_CONNECT_FAIL),
            upstream_cx_connect_timeout: c(cluster::UPSTREAM_CX_CONNECT_TIMEOUT),
            upstream_cx_rx_bytes_total: c(cluster::UPSTREAM_CX_RX_BYTES_TOTAL),
            upstream_cx_tx_bytes_total: c(cluster::UPSTREAM_CX_TX_BYTES_TOTAL),
            upstream_cx_overflow: c(cluster::UPSTREAM_CX_OVERFLOW),
            upstream_rq_total: c(cluster::UPSTREAM_RQ_TOTAL),
            upstream_rq_active: g(cluster::UPSTREAM_RQ_ACTIVE),
            upstream_rq_timeout: c(cluster::UPSTREAM_RQ_TIMEOUT),
            upstream_rq_retry: c(cluster::UPSTREAM_RQ_RETRY),
            upstream_rq_pending_overflow: c(cluster::UPSTREAM_RQ_PENDING_OVERFLOW),
            upstream_rq_completed: c(cluster::UPSTREAM_RQ_COMPLETED),
            ssl_handshake: c(cluster::SSL_HANDSHAKE),
            ssl_fail_verify_san: c(cluster::SSL_FAIL_VERIFY_SAN),
            ssl_fail_verify_error: c(cluster::SSL_FAIL_VERIFY_ERROR),
            ssl_connection_error: c(cluster::SSL_CONNECTION_ERROR),
            codes: Arc::new(ResponseCodeStats {
                store: store.clone(),
                cluster_name: cluster_name.into(),
                classes: Default::default(),
                by_code: ArcSwap::from_pointee(Vec::new()),
                unknown: OnceLock::new(),
            }),
        }
    }

    /// An upstream response completed: `upstream_rq_completed`, `upstream_rq_<code>` and
    /// `upstream_rq_<N>xx`, or `upstream_rq_unknown` for a status outside 100..=599 (as Envoy).
    pub fn rq_completed(&self, status: u16) {
        self.upstream_rq_completed.inc();
        self.codes.charge(status);
    }
}

impl ResponseCodeStats {
    fn charge(&self, status: u16) {
        let Some(class) = status_class(status) else {
            self.unknown
                .get_or_init(|| {
                    self.counter(StatDesc::scoped(
                        cluster::SCOPE,
                        &self.cluster_name,
                        cluster::UPSTREAM_RQ_UNKNOWN,
                    ))
                })
                .inc();
            return;
        };
        self.classes[class]
            .get_or_init(|| {
                self.counter(self.tagged(
                    cluster::UPSTREAM_RQ_CLASS[class],
                    labels::RESPONSE_CODE_CLASS,
                    labels::CLASS_VALUES[class],
                ))
            })
            .inc();
        let by_code = self.by_code.load();
        if let Ok(i) = by_code.binary_search_by_key(&status, |(code, _)| *code) {
            by_code[i].1.inc();
            return;
        }
        drop(by_code);
        let code = status.to_string();
        let counter = self.counter(self.tagged(
            &format!("{}{code}", cluster::UPSTREAM_RQ_CODE_PREFIX),
            labels::RESPONSE_CODE,
            &code,
        ));
        counter.inc();
        // Racing inserts of the same code resolve to the same stored counter, so whichever
        // copy wins, no increment is lost.
        self.by_code.rcu(|current| {
            let mut next = Vec::clone(current);
            if let Err(i) = next.binary_search_by_key(&status, |(code, _)| *code) {
                next.insert(i, (status, counter.clone()));
            }
            next
        });
    }

    fn tagged(&self, suffix: &str, label: &'static str, value: &str) -> StatDesc {
        StatDesc::scoped_tagged(
            cluster::SCOPE,
            &self.cluster_name,
            suffix,
            cluster::UPSTREAM_RQ_TAGGED,
            label,
            value,
        )
    }

    fn counter(&self, desc: StatDesc) -> Counter {
        self.store.counter_with(desc)
    }
}

/// `0` for 1xx .. `4` for 5xx; `None` for what Envoy calls unknown.
fn status_class(status: u16) -> Option<usize> {
    matches!(status, 100..=599).then(|| usize::from(status / 100 - 1))
}

/// The RBAC filters' counters of one chain kind: `http.<prefix>.rbac.*` or `tcp.rbac.*`. As in
/// Envoy, the dry-run counters exist only under the prefixes of the filters present
/// ([`RbacStats::register_for`]).
pub struct RbacStats {
    pub allowed: Counter,
    pub denied: Counter,
    /// Dry-run outcomes, `[allow prefix, deny prefix]`, each `[shadow_allowed, shadow_denied]`.
    shadow: [OnceLock<[Counter; 2]>; 2],
    store: Store,
    /// `Some(prefix)`: an HTTP connection manager's; `None`: TCP chains'.
    http_prefix: Option<String>,
}

impl RbacStats {
    pub fn http(store: &Store, prefix: &str) -> RbacStats {
        let c = |suffix: &str| store.counter_with(StatDesc::scoped(http::SCOPE, prefix, suffix));
        RbacStats {
            allowed: c(rbac::HTTP_ALLOWED),
            denied: c(rbac::HTTP_DENIED),
            shadow: Default::default(),
            store: store.clone(),
            http_prefix: Some(prefix.to_string()),
        }
    }

    pub fn tcp(store: &Store) -> RbacStats {
        let c = |suffix: &str| store.counter_with(StatDesc::scoped(tcp::SCOPE, rbac::TCP_TAG, suffix));
        RbacStats {
            allowed: c(rbac::TCP_ALLOWED),
            denied: c(rbac::TCP_DENIED),
            shadow: Default::default(),
            store: store.clone(),
            http_prefix: None,
        }
    }

    /// Registers (at 0) the dry-run counters of the filters present: each RBAC filter's
    /// `shadow_rules_stat_prefix` is `istio_dry_run_deny_` for a DENY filter with dry-run
    /// policies and `istio_dry_run_allow_` for every other filter, as istiod sets it.
    pub fn register_for(&self, filters: &crate::routing::authz::Filters) {
        let deny_dry_run = filters.deny.as_ref().is_some_and(|f| f.shadow.is_some());
        let allow_family =
            filters.allow.is_some() || filters.audit.is_some() || (filters.deny.is_some() && !deny_dry_run);
        if allow_family {
            self.family(false);
        }
        if deny_dry_run {
            self.family(true);
        }
    }

    fn family(&self, deny_prefix: bool) -> &[Counter; 2] {
        self.shadow[usize::from(deny_prefix)].get_or_init(|| {
            let dry = if deny_prefix {
                rbac::DRY_RUN_DENY
            } else {
                rbac::DRY_RUN_ALLOW
            };
            [rbac::SHADOW_ALLOWED, rbac::SHADOW_DENIED].map(|suffix| match &self.http_prefix {
                Some(prefix) => {
                    self.store
                        .counter_with(StatDesc::scoped(http::SCOPE, prefix, &format!("rbac.{dry}.{suffix}")))
                }
                None => self.store.counter_with(StatDesc::scoped(
                    tcp::SCOPE,
                    &format!("{}.{dry}", rbac::TCP_TAG),
                    suffix,
                )),
            })
        })
    }
}

impl crate::routing::authz::Tally for RbacStats {
    fn allowed(&self) {
        self.allowed.inc();
    }

    fn denied(&self) {
        self.denied.inc();
    }

    fn shadow(&self, deny_prefix: bool, allowed: bool) {
        self.family(deny_prefix)[usize::from(!allowed)].inc();
    }
}

/// `http.<stat prefix>.*`: the HTTP connection manager and router stats of one listener.
#[derive(Debug, Clone)]
pub struct HttpConnManagerStats {
    pub downstream_cx_total: Counter,
    pub downstream_cx_active: Gauge,
    pub downstream_cx_http1_total: Counter,
    pub downstream_cx_http2_total: Counter,
    pub downstream_cx_upgrades_total: Counter,
    pub downstream_cx_upgrades_active: Gauge,
    pub downstream_rq_total: Counter,
    pub downstream_rq_active: Gauge,
    pub downstream_rq_completed: Counter,
    pub downstream_rq_timeout: Counter,
    /// `downstream_rq_1xx` .. `downstream_rq_5xx`, indexed by `status / 100 - 1`.
    pub downstream_rq_class: [Counter; 5],
    pub no_route: Counter,
    pub no_cluster: Counter,
    pub rq_direct_response: Counter,
}

impl HttpConnManagerStats {
    pub fn new(store: &Store, prefix: &str) -> HttpConnManagerStats {
        let c = |suffix| store.counter_with(StatDesc::scoped(http::SCOPE, prefix, suffix));
        let g = |suffix| store.gauge_with(StatDesc::scoped(http::SCOPE, prefix, suffix));
        // Envoy creates the class counters with the connection manager, unlike a cluster's.
        let class = |i: usize| {
            store.counter_with(StatDesc::scoped_tagged(
                http::SCOPE,
                prefix,
                http::DOWNSTREAM_RQ_CLASS[i],
                http::DOWNSTREAM_RQ_TAGGED,
                labels::RESPONSE_CODE_CLASS,
                labels::CLASS_VALUES[i],
            ))
        };
        HttpConnManagerStats {
            downstream_cx_total: c(http::DOWNSTREAM_CX_TOTAL),
            downstream_cx_active: g(http::DOWNSTREAM_CX_ACTIVE),
            downstream_cx_http1_total: c(http::DOWNSTREAM_CX_HTTP1_TOTAL),
            downstream_cx_http2_total: c(http::DOWNSTREAM_CX_HTTP2_TOTAL),
            downstream_cx_upgrades_total: c(http::DOWNSTREAM_CX_UPGRADES_TOTAL),
            downstream_cx_upgrades_active: g(http::DOWNSTREAM_CX_UPGRADES_ACTIVE),
            downstream_rq_total: c(http::DOWNSTREAM_RQ_TOTAL),
            downstream_rq_active: g(http::DOWNSTREAM_RQ_ACTIVE),
            downstream_rq_completed: c(http::DOWNSTREAM_RQ_COMPLETED),
            downstream_rq_timeout: c(http::DOWNSTREAM_RQ_TIMEOUT),
            downstream_rq_class: std::array::from_fn(class),
            no_route: c(http::NO_ROUTE),
            no_cluster: c(http::NO_CLUSTER),
            rq_direct_response: c(http::RQ_DIRECT_RESPONSE),
        }
    }

    /// A response was sent downstream: `downstream_rq_completed` and `downstream_rq_<N>xx`
    /// (Envoy counts no class for a status outside 100..=599).
    pub fn rq_completed(&self, status: u16) {
        self.downstream_rq_completed.inc();
        if let Some(class) = status_class(status) {
            self.downstream_rq_class[class].inc();
        }
    }
}

/// `listener.<address>.*`, e.g. `listener.0.0.0.0_8443.no_filter_chain_match`.
#[derive(Debug, Clone)]
pub struct ListenerStats {
    pub downstream_cx_total: Counter,
    pub downstream_cx_active: Gauge,
    pub downstream_cx_destroy: Counter,
    pub downstream_cx_overflow: Counter,
    pub no_filter_chain_match: Counter,
    pub downstream_pre_cx_timeout: Counter,
    pub ssl_handshake: Counter,
    pub ssl_session_reused: Counter,
    pub ssl_connection_error: Counter,
    pub ssl_fail_verify_no_cert: Counter,
    pub ssl_fail_verify_error: Counter,
    pub ssl_fail_verify_san: Counter,
    /// `worker_<N>.downstream_cx_total` and `worker_<N>.downstream_cx_active`, per worker.
    per_worker: Box<[(Counter, Gauge)]>,
}

impl ListenerStats {
    /// A connection is served (after its filter chain was found): counted at the listener and
    /// at the worker that accepted it, as Envoy counts them.
    pub fn cx_opened(&self) {
        self.downstream_cx_total.inc();
        self.downstream_cx_active.inc();
        let (total, active) = self.worker();
        total.inc();
        active.inc();
    }

    /// A connection counted by `cx_opened` ended.
    pub fn cx_closed(&self) {
        self.downstream_cx_active.dec();
        self.worker().1.dec();
    }

    /// A connection that ended before it was served (a failed TLS handshake) is still counted.
    pub fn cx_failed(&self) {
        self.downstream_cx_total.inc();
        self.worker().0.inc();
    }

    fn worker(&self) -> &(Counter, Gauge) {
        &self.per_worker[crate::shard::index() % self.per_worker.len()]
    }

    /// `addr_name` is Istio's listener name, `0.0.0.0_8080`.
    pub fn new(store: &Store, addr_name: &str) -> ListenerStats {
        let c = |suffix| store.counter_with(StatDesc::scoped(listener::SCOPE, addr_name, suffix));
        ListenerStats {
            downstream_cx_total: c(listener::DOWNSTREAM_CX_TOTAL),
            downstream_cx_active: store.gauge_with(StatDesc::scoped(
                listener::SCOPE,
                addr_name,
                listener::DOWNSTREAM_CX_ACTIVE,
            )),
            downstream_cx_destroy: c(listener::DOWNSTREAM_CX_DESTROY),
            downstream_cx_overflow: c(listener::DOWNSTREAM_CX_OVERFLOW),
            no_filter_chain_match: c(listener::NO_FILTER_CHAIN_MATCH),
            downstream_pre_cx_timeout: c(listener::DOWNSTREAM_PRE_CX_TIMEOUT),
            ssl_handshake: c(listener::SSL_HANDSHAKE),
            ssl_session_reused: c(listener::SSL_SESSION_REUSED),
            ssl_connection_error: c(listener::SSL_CONNECTION_ERROR),
            ssl_fail_verify_no_cert: c(listener::SSL_FAIL_VERIFY_NO_CERT),
            ssl_fail_verify_error: c(listener::SSL_FAIL_VERIFY_ERROR),
            ssl_fail_verify_san: c(listener::SSL_FAIL_VERIFY_SAN),
            per_worker: (0..crate::shard::count())
                .map(|i| {
                    let (id, scope) = (i.to_string(), listener::SCOPE);
                    let stat = |suffix: &str| {
                        let family = format!("worker_{suffix}");
                        StatDesc::scoped_tagged(
                            scope,
                            addr_name,
                            &format!("worker_{i}.{suffix}"),
                            &family,
                            "worker_id",
                            &id,
                        )
                    };
                    (
                        store.counter_with(stat(listener::DOWNSTREAM_CX_TOTAL)),
                        store.gauge_with(stat(listener::DOWNSTREAM_CX_ACTIVE)),
                    )
                })
                .collect(),
        }
    }
}

/// `tcp.<stat prefix>.*`; the prefix is the cluster name in Istio.
#[derive(Debug, Clone)]
pub struct TcpProxyStats {
    pub downstream_cx_total: Counter,
    pub downstream_cx_no_route: Counter,
    pub downstream_cx_rx_bytes_total: Counter,
    pub downstream_cx_tx_bytes_total: Counter,
    pub idle_timeout: Counter,
}

impl TcpProxyStats {
    pub fn new(store: &Store, prefix: &str) -> TcpProxyStats {
        let c = |suffix| store.counter_with(StatDesc::scoped(tcp::SCOPE, prefix, suffix));
        TcpProxyStats {
            downstream_cx_total: c(tcp::DOWNSTREAM_CX_TOTAL),
            downstream_cx_no_route: c(tcp::DOWNSTREAM_CX_NO_ROUTE),
            downstream_cx_rx_bytes_total: c(tcp::DOWNSTREAM_CX_RX_BYTES_TOTAL),
            downstream_cx_tx_bytes_total: c(tcp::DOWNSTREAM_CX_TX_BYTES_TOTAL),
            idle_timeout: c(tcp::IDLE_TIMEOUT),
        }
    }
}

/// Envoy's `server.state` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    Live = 0,
    Draining = 1,
    PreInitializing = 2,
    Initializing = 3,
}

/// Process-wide stats. Starts `Live` (state 0, live 1, workers started), which pilot-agent's
/// readiness probe requires; call `set_state` if the server is created before it serves.
#[derive(Debug, Clone)]
pub struct ServerStats {
    pub live: Gauge,
    pub state: Gauge,
    pub uptime: Gauge,
    pub concurrency: Gauge,
    pub total_connections: Gauge,
    pub version: Gauge,
    pub workers_started: Gauge,
    pub config_reload: Counter,
    pub config_reload_failed: Counter,
    pub access_log_dropped: Counter,
    store: Store,
    started: Instant,
}

impl ServerStats {
    pub fn new(store: &Store, concurrency: usize, version: &str) -> ServerStats {
        let stats = ServerStats {
            live: store.gauge(server::LIVE),
            state: store.gauge(server::STATE),
            uptime: store.gauge(server::UPTIME),
            concurrency: store.gauge(server::CONCURRENCY),
            total_connections: store.gauge(server::TOTAL_CONNECTIONS),
            version: store.gauge(server::VERSION),
            workers_started: store.gauge(server::WORKERS_STARTED),
            config_reload: store.counter(server::CONFIG_RELOAD),
            config_reload_failed: store.counter(server::CONFIG_RELOAD_FAILED),
            access_log_dropped: store.counter(server::ACCESS_LOG_DROPPED),
            store: store.clone(),
            started: Instant::now(),
        };
        stats.concurrency.set(u64::try_from(concurrency).unwrap_or(u64::MAX));
        stats.version.set(version_number(version));
        stats.set_state(ServerState::Live);
        stats.refresh();
        stats
    }

    /// Sets `server.state`, `server.live` (1 unless draining) and
    /// `listener_manager.workers_started` (1 once live or draining), keeping them consistent.
    pub fn set_state(&self, state: ServerState) {
        self.state.set(state as u64);
        self.live.set(u64::from(state != ServerState::Draining));
        let serving = matches!(state, ServerState::Live | ServerState::Draining);
        self.workers_started.set(u64::from(serving));
    }

    /// Updates the derived gauges; the admin API calls it before rendering.
    /// `server.total_connections` is the sum of every listener's `downstream_cx_active`, as Envoy's.
    pub fn refresh(&self) {
        self.uptime.set(self.started.elapsed().as_secs());
        let family = format!("{}_{}", listener::SCOPE.prom_prefix, listener::DOWNSTREAM_CX_ACTIVE);
        let total = self
            .store
            .snapshot()
            .samples()
            .iter()
            .filter(|s| s.kind() == Kind::Gauge && s.desc().prom_family() == family)
            .map(|s| s.value())
            .fold(0u64, u64::wrapping_add);
        self.total_connections.set(total);
    }
}

/// `major.minor.patch[-suffix]` as `major * 1_000_000 + minor * 1_000 + patch`; Envoy's
/// `server.version` is a number too (derived from its build SHA).
fn version_number(version: &str) -> u64 {
    let mut parts = version.split(['.', '-', '+']).map(|p| p.parse::<u64>().unwrap_or(0));
    let mut next = || parts.next().unwrap_or(0).min(999);
    let (major, minor, patch) = (next(), next(), next());
    major * 1_000_000 + minor * 1_000 + patch
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(store: &Store, name: &str) -> Option<u64> {
        let snap = store.snapshot();
        snap.samples().iter().find(|s| s.name() == name).map(|s| s.value())
    }

    const CNN: &str = "outbound|80||edition.cnn.com";

    #[test]
    fn cluster_rq_completed_counts_code_and_class() {
        let store = Store::new();
        let stats = ClusterStats::new(&store, CNN);
        stats.rq_completed(301);
        stats.rq_completed(301);
        stats.rq_completed(503);
        assert_eq!(value(&store, &format!("cluster.{CNN}.upstream_rq_301")), Some(2));
        assert_eq!(value(&store, &format!("cluster.{CNN}.upstream_rq_3xx")), Some(2));
        assert_eq!(value(&store, &format!("cluster.{CNN}.upstream_rq_503")), Some(1));
        assert_eq!(value(&store, &format!("cluster.{CNN}.upstream_rq_5xx")), Some(1));
        assert_eq!(value(&store, &format!("cluster.{CNN}.upstream_rq_completed")), Some(3));
        // Like Envoy, classes never seen do not exist.
        assert_eq!(value(&store, &format!("cluster.{CNN}.upstream_rq_2xx")), None);
    }

    #[test]
    fn cluster_unknown_status_is_not_a_code() {
        let store = Store::new();
        let stats = ClusterStats::new(&store, CNN);
        stats.rq_completed(600);
        stats.rq_completed(42);
        assert_eq!(value(&store, &format!("cluster.{CNN}.upstream_rq_unknown")), Some(2));
        assert_eq!(value(&store, &format!("cluster.{CNN}.upstream_rq_600")), None);
    }

    #[test]
    fn families_created_twice_share_values() {
        let store = Store::new();
        ClusterStats::new(&store, CNN).rq_completed(200);
        ClusterStats::new(&store, CNN).rq_completed(200);
        assert_eq!(value(&store, &format!("cluster.{CNN}.upstream_rq_200")), Some(2));
    }

    #[test]
    fn http_conn_manager_classes_exist_up_front() {
        let store = Store::new();
        let stats = HttpConnManagerStats::new(&store, "outbound_0.0.0.0_8080");
        assert_eq!(value(&store, "http.outbound_0.0.0.0_8080.downstream_rq_2xx"), Some(0));
        stats.rq_completed(404);
        stats.rq_completed(700);
        assert_eq!(value(&store, "http.outbound_0.0.0.0_8080.downstream_rq_4xx"), Some(1));
        assert_eq!(
            value(&store, "http.outbound_0.0.0.0_8080.downstream_rq_completed"),
            Some(2)
        );
    }

    #[test]
    fn listener_and_tcp_names() {
        let store = Store::new();
        ListenerStats::new(&store, "0.0.0.0_8443").ssl_handshake.inc();
        TcpProxyStats::new(&store, "outbound|443||edition.cnn.com")
            .downstream_cx_total
            .inc();
        assert_eq!(value(&store, "listener.0.0.0.0_8443.ssl.handshake"), Some(1));
        assert_eq!(
            value(&store, "tcp.outbound|443||edition.cnn.com.downstream_cx_total"),
            Some(1)
        );
    }

    #[test]
    fn server_starts_live_and_drains() {
        let store = Store::new();
        let server = ServerStats::new(&store, 2, "0.1.0");
        assert_eq!(value(&store, "server.state"), Some(0));
        assert_eq!(value(&store, "server.live"), Some(1));
        assert_eq!(value(&store, "server.concurrency"), Some(2));
        assert_eq!(value(&store, "server.version"), Some(1_000));
        assert_eq!(value(&store, "listener_manager.workers_started"), Some(1));
        server.set_state(ServerState::Draining);
        assert_eq!(value(&store, "server.state"), Some(1));
        assert_eq!(value(&store, "server.live"), Some(0));
    }

    #[test]
    fn server_total_connections_sums_listeners() {
        let store = Store::new();
        let server = ServerStats::new(&store, 1, "1.2.3-dev");
        ListenerStats::new(&store, "0.0.0.0_8080").downstream_cx_active.add(3);
        ListenerStats::new(&store, "0.0.0.0_8443").downstream_cx_active.add(2);
        server.refresh();
        assert_eq!(server.total_connections.value(), 5);
        assert_eq!(server.version.value(), 1_002_003);
    }

    #[test]
    fn concurrent_rq_completed_is_exact() {
        let store = Store::new();
        let stats = Arc::new(ClusterStats::new(&store, CNN));
        let threads: Vec<_> = (0..4u16)
            .map(|t| {
                let stats = Arc::clone(&stats);
                std::thread::spawn(move || {
                    for i in 0..5_000u16 {
                        // New codes appear concurrently in every thread.
                        stats.rq_completed(200 + (i + t) % 7);
                        stats.upstream_cx_total.inc();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("worker thread panicked");
        }
        let per_code: u64 = (200..207)
            .filter_map(|code| value(&store, &format!("cluster.{CNN}.upstream_rq_{code}")))
            .sum();
        assert_eq!(per_code, 20_000);
        assert_eq!(value(&store, &format!("cluster.{CNN}.upstream_rq_2xx")), Some(20_000));
        assert_eq!(stats.upstream_cx_total.value(), 20_000);
    }
}
