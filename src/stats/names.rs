//! Every stat name egressd emits, grouped by family, with its Prometheus scope and tag label.
//! Names match Envoy's where Envoy has one; names Envoy lacks are marked "egressd's own" and get the
//! `egressd_` Prometheus prefix so no dashboard mistakes them for Envoy's. Data only: no logic here.

/// How one family of scoped stats is named: `<text_prefix>.<tag value>.<suffix>` in `/stats`,
/// `<prom_prefix>_<suffix>{<label>="<tag value>"}` in `/stats/prometheus` (Envoy's tag extraction).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scope {
    pub text_prefix: &'static str,
    pub prom_prefix: &'static str,
    pub label: &'static str,
}

/// Prometheus prefix Envoy puts before every stat it renders.
pub const ENVOY_PROM_PREFIX: &str = "envoy_";
/// Prometheus prefix for stats Envoy does not have.
pub const EGRESSD_PROM_PREFIX: &str = "egressd_";

/// The Prometheus prefix of an unscoped stat: `egressd_` for egressd's own names, else `envoy_`.
pub fn prom_prefix_for(name: &str) -> &'static str {
    if server::EGRESSD_OWN.contains(&name) || name.starts_with("sni.") {
        EGRESSD_PROM_PREFIX
    } else {
        ENVOY_PROM_PREFIX
    }
}

/// Tag labels that are not a family's scope label.
pub mod labels {
    /// `upstream_rq_301` → `upstream_rq{response_code="301"}` (Istio regex `_rq(_(\d{3}))$`).
    pub const RESPONSE_CODE: &str = "response_code";
    /// `upstream_rq_3xx` → `upstream_rq{response_code_class="3xx"}` (regex `_rq(_(\dxx))$`).
    pub const RESPONSE_CODE_CLASS: &str = "response_code_class";
    /// `response_code_class` values, indexed by `status / 100 - 1`.
    pub const CLASS_VALUES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
}

/// `cluster.<cluster name>.*`, e.g. `cluster.outbound|443||edition.cnn.com.upstream_cx_total`.
pub mod cluster {
    use super::Scope;

    pub const SCOPE: Scope = Scope {
        text_prefix: "cluster",
        prom_prefix: "envoy_cluster",
        label: "cluster_name",
    };

    pub const UPSTREAM_CX_TOTAL: &str = "upstream_cx_total";
    /// Gauge.
    pub const UPSTREAM_CX_ACTIVE: &str = "upstream_cx_active";
    pub const UPSTREAM_CX_CONNECT_FAIL: &str = "upstream_cx_connect_fail";
    pub const UPSTREAM_CX_CONNECT_TIMEOUT: &str = "upstream_cx_connect_timeout";
    pub const UPSTREAM_CX_RX_BYTES_TOTAL: &str = "upstream_cx_rx_bytes_total";
    pub const UPSTREAM_CX_TX_BYTES_TOTAL: &str = "upstream_cx_tx_bytes_total";
    pub const UPSTREAM_CX_OVERFLOW: &str = "upstream_cx_overflow";
    pub const UPSTREAM_RQ_TOTAL: &str = "upstream_rq_total";
    /// Gauge.
    pub const UPSTREAM_RQ_ACTIVE: &str = "upstream_rq_active";
    pub const UPSTREAM_RQ_TIMEOUT: &str = "upstream_rq_timeout";
    pub const UPSTREAM_RQ_RETRY: &str = "upstream_rq_retry";
    pub const UPSTREAM_RQ_PENDING_OVERFLOW: &str = "upstream_rq_pending_overflow";
    pub const UPSTREAM_RQ_COMPLETED: &str = "upstream_rq_completed";
    /// Envoy counts a status outside 100..=599 here instead of per code and class.
    pub const UPSTREAM_RQ_UNKNOWN: &str = "upstream_rq_unknown";
    /// `upstream_rq_<code>`: the code is appended when the first response with it completes.
    pub const UPSTREAM_RQ_CODE_PREFIX: &str = "upstream_rq_";
    /// Prometheus family of both the per-code and the per-class counters.
    pub const UPSTREAM_RQ_TAGGED: &str = "upstream_rq";
    /// Indexed by `status / 100 - 1`.
    pub const UPSTREAM_RQ_CLASS: [&str; 5] = [
        "upstream_rq_1xx",
        "upstream_rq_2xx",
        "upstream_rq_3xx",
        "upstream_rq_4xx",
        "upstream_rq_5xx",
    ];
    pub const SSL_HANDSHAKE: &str = "ssl.handshake";
    pub const SSL_FAIL_VERIFY_SAN: &str = "ssl.fail_verify_san";
    pub const SSL_FAIL_VERIFY_ERROR: &str = "ssl.fail_verify_error";
    pub const SSL_CONNECTION_ERROR: &str = "ssl.connection_error";
}

/// `http.<stat prefix>.*`, e.g. `http.outbound_0.0.0.0_8080.downstream_rq_total`.
pub mod http {
    use super::Scope;

    pub const SCOPE: Scope = Scope {
        text_prefix: "http",
        prom_prefix: "envoy_http",
        label: "http_conn_manager_prefix",
    };

    pub const DOWNSTREAM_CX_TOTAL: &str = "downstream_cx_total";
    /// Gauge.
    pub const DOWNSTREAM_CX_ACTIVE: &str = "downstream_cx_active";
    pub const DOWNSTREAM_CX_HTTP1_TOTAL: &str = "downstream_cx_http1_total";
    pub const DOWNSTREAM_CX_HTTP2_TOTAL: &str = "downstream_cx_http2_total";
    /// Requests that became tunnels (WebSocket).
    pub const DOWNSTREAM_CX_UPGRADES_TOTAL: &str = "downstream_cx_upgrades_total";
    /// Gauge: tunnels open.
    pub const DOWNSTREAM_CX_UPGRADES_ACTIVE: &str = "downstream_cx_upgrades_active";
    pub const DOWNSTREAM_RQ_TOTAL: &str = "downstream_rq_total";
    /// Gauge.
    pub const DOWNSTREAM_RQ_ACTIVE: &str = "downstream_rq_active";
    pub const DOWNSTREAM_RQ_COMPLETED: &str = "downstream_rq_completed";
    pub const DOWNSTREAM_RQ_TIMEOUT: &str = "downstream_rq_timeout";
    /// Prometheus family of the per-class counters.
    pub const DOWNSTREAM_RQ_TAGGED: &str = "downstream_rq";
    /// Indexed by `status / 100 - 1`.
    pub const DOWNSTREAM_RQ_CLASS: [&str; 5] = [
        "downstream_rq_1xx",
        "downstream_rq_2xx",
        "downstream_rq_3xx",
        "downstream_rq_4xx",
        "downstream_rq_5xx",
    ];
    // The router filter's stats share the connection manager's prefix in Envoy.
    pub const NO_ROUTE: &str = "no_route";
    pub const NO_CLUSTER: &str = "no_cluster";
    pub const RQ_DIRECT_RESPONSE: &str = "rq_direct_response";
}

/// `listener.<address>.*`, e.g. `listener.0.0.0.0_8080.downstream_cx_total`.
pub mod listener {
    use super::Scope;

    pub const SCOPE: Scope = Scope {
        text_prefix: "listener",
        prom_prefix: "envoy_listener",
        label: "listener_address",
    };

    pub const DOWNSTREAM_CX_TOTAL: &str = "downstream_cx_total";
    /// Gauge; Istio's EXIT_ON_ZERO_ACTIVE_CONNECTIONS drain watches it.
    pub const DOWNSTREAM_CX_ACTIVE: &str = "downstream_cx_active";
    pub const DOWNSTREAM_CX_DESTROY: &str = "downstream_cx_destroy";
    pub const DOWNSTREAM_CX_OVERFLOW: &str = "downstream_cx_overflow";
    pub const NO_FILTER_CHAIN_MATCH: &str = "no_filter_chain_match";
    pub const DOWNSTREAM_PRE_CX_TIMEOUT: &str = "downstream_pre_cx_timeout";
    pub const SSL_HANDSHAKE: &str = "ssl.handshake";
    /// Of `ssl.handshake`, those that resumed a session (ticket or session ID).
    pub const SSL_SESSION_REUSED: &str = "ssl.session_reused";
    pub const SSL_CONNECTION_ERROR: &str = "ssl.connection_error";
    pub const SSL_FAIL_VERIFY_NO_CERT: &str = "ssl.fail_verify_no_cert";
    pub const SSL_FAIL_VERIFY_ERROR: &str = "ssl.fail_verify_error";
    pub const SSL_FAIL_VERIFY_SAN: &str = "ssl.fail_verify_san";
}

/// `tcp.<stat prefix>.*`; Istio's tcp_proxy stat prefix is the cluster name.
pub mod tcp {
    use super::Scope;

    pub const SCOPE: Scope = Scope {
        text_prefix: "tcp",
        prom_prefix: "envoy_tcp",
        label: "tcp_prefix",
    };

    pub const DOWNSTREAM_CX_TOTAL: &str = "downstream_cx_total";
    pub const DOWNSTREAM_CX_NO_ROUTE: &str = "downstream_cx_no_route";
    pub const DOWNSTREAM_CX_RX_BYTES_TOTAL: &str = "downstream_cx_rx_bytes_total";
    pub const DOWNSTREAM_CX_TX_BYTES_TOTAL: &str = "downstream_cx_tx_bytes_total";
    pub const IDLE_TIMEOUT: &str = "idle_timeout";
}

/// Unscoped process-wide stats (full names; the Prometheus name is the prefix plus the name with
/// every non-alphanumeric character turned into `_`).
pub mod server {
    /// Gauge: 1 unless draining.
    pub const LIVE: &str = "server.live";
    /// Gauge: Envoy's `ServerState` (0 LIVE, 1 DRAINING, 2 PRE_INITIALIZING, 3 INITIALIZING).
    /// pilot-agent's readiness probe reads it with `?usedonly&filter=`, so it is always set.
    pub const STATE: &str = "server.state";
    /// Gauge, seconds.
    pub const UPTIME: &str = "server.uptime";
    /// Gauge: worker threads.
    pub const CONCURRENCY: &str = "server.concurrency";
    /// Gauge: active downstream connections over every listener.
    pub const TOTAL_CONNECTIONS: &str = "server.total_connections";
    /// Gauge: Envoy puts a number derived from its build here; egressd encodes its semver.
    pub const VERSION: &str = "server.version";
    /// Gauge: 1 once the listeners serve; pilot-agent's readiness probe requires it.
    pub const WORKERS_STARTED: &str = "listener_manager.workers_started";
    /// egressd's own counter: config snapshots swapped in (files changed on disk).
    pub const CONFIG_RELOAD: &str = "server.config_reload";
    /// egressd's own counter: reloads rejected because the new config did not compile.
    pub const CONFIG_RELOAD_FAILED: &str = "server.config_reload_failed";
    /// egressd's own counter: access-log records dropped because the writer fell behind.
    pub const ACCESS_LOG_DROPPED: &str = "access_log.dropped";

    /// The egressd-owned names above, which render with the `egressd_` Prometheus prefix.
    pub const EGRESSD_OWN: [&str; 3] = [CONFIG_RELOAD, CONFIG_RELOAD_FAILED, ACCESS_LOG_DROPPED];
}

/// egressd's own per-server-name (TLS SNI) stats for passthrough traffic, which Envoy lacks
/// (istio/istio#23176): `sni.<server name>.*`, `egressd_sni_*{server_name="..."}`.
pub mod sni {
    use super::Scope;

    pub const SCOPE: Scope = Scope {
        text_prefix: "sni",
        prom_prefix: "egressd_sni",
        label: "server_name",
    };

    pub const DOWNSTREAM_CX_TOTAL: &str = "downstream_cx_total";
    pub const RX_BYTES_TOTAL: &str = "rx_bytes_total";
    pub const TX_BYTES_TOTAL: &str = "tx_bytes_total";
    /// Server name under which connections beyond the cap (or with an unusable name) are counted.
    pub const OTHER: &str = "other";
    /// Counter (unscoped): connections counted under `other` because the cap was reached.
    pub const OVERFLOW: &str = "sni.overflow";
}

/// The RBAC filters' counters (AuthorizationPolicy, issue 17), as Envoy 1.40 names them:
/// `http.<prefix>.rbac.allowed` on HTTP chains, `tcp.rbac.allowed` on TCP chains (the network
/// filter's `stat_prefix: "tcp."` makes `rbac` the tcp scope's tag), and the dry-run shadow
/// counters under Istio's prefixes, with the `.` Envoy puts after them.
pub mod rbac {
    pub const HTTP_ALLOWED: &str = "rbac.allowed";
    pub const HTTP_DENIED: &str = "rbac.denied";
    pub const TCP_TAG: &str = "rbac";
    pub const TCP_ALLOWED: &str = "allowed";
    pub const TCP_DENIED: &str = "denied";
    pub const DRY_RUN_ALLOW: &str = "istio_dry_run_allow_";
    pub const DRY_RUN_DENY: &str = "istio_dry_run_deny_";
    pub const SHADOW_ALLOWED: &str = "shadow_allowed";
    pub const SHADOW_DENIED: &str = "shadow_denied";
}
