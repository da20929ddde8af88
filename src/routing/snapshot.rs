//! The compiled, immutable configuration the data plane serves from. It is `Serialize`, so
//! `/config_dump` shows exactly what runs. Built only by `routing::compile`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::host::HostIndex;
use super::http_match::RouteMatch;
use crate::config::bootstrap::LookupFamily;
use crate::config::Diagnostic;

#[derive(Debug, Serialize)]
pub struct Snapshot {
    pub listeners: Vec<Listener>,
    pub clusters: BTreeMap<String, Arc<Cluster>>,
    /// The AuthorizationPolicies that select the gateway, as RBAC filters per kind of chain.
    pub authz: crate::routing::authz::Authz,
    /// Warnings, skipped kinds and fields accepted but not enforced (never errors: a config
    /// with errors does not become a snapshot).
    pub diagnostics: Vec<Diagnostic>,
}

impl Snapshot {
    pub fn cluster(&self, name: &str) -> Option<&Arc<Cluster>> {
        self.clusters.get(name)
    }
}

#[derive(Debug, Serialize)]
pub struct Listener {
    /// `0.0.0.0_8080`: the bound address, as istiod names gateway listeners.
    pub name: String,
    pub address: SocketAddr,
    /// The Gateway server port (80), which VirtualService `match.port` compares against.
    pub server_port: u16,
    pub kind: ListenerKind,
    /// TLS listeners: SNI → filter chain index (exact, then longest wildcard, then `*` for
    /// chains without server names).
    #[serde(skip)]
    pub sni_index: HostIndex,
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", content = "config", rename_all = "snake_case")]
pub enum ListenerKind {
    /// Plain HTTP/1.1 and h2c (HTTP, HTTP2 and GRPC servers).
    Http(HttpConnectionManager),
    /// Plain TCP servers: the first matching `tcp` route.
    Tcp(TcpProxy),
    /// TLS servers: one chain per server name set, chosen by the ClientHello's SNI.
    Tls(Vec<FilterChain>),
}

#[derive(Debug, Serialize)]
pub struct FilterChain {
    /// SNI names this chain serves (exact or `*.suffix`); empty means any name.
    pub server_names: Vec<String>,
    pub kind: ChainKind,
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ChainKind {
    /// The client's TLS goes through untouched to the `tls` route's destination.
    Passthrough(TcpProxy),
    /// AUTO_PASSTHROUGH: the SNI itself names the cluster (`outbound_.443_._.edition.cnn.com`).
    AutoPassthrough,
    /// TLS terminated here, then HTTP routes (HTTPS servers).
    TerminateHttp {
        tls: ServerTls,
        http: HttpConnectionManager,
    },
    /// TLS terminated here, then the inner bytes by `tcp` routes (TLS servers).
    TerminateTcp { tls: ServerTls, tcp: TcpProxy },
}

#[derive(Debug, Serialize)]
pub struct ServerTls {
    pub mode: ServerTlsMode,
    pub certificate: CertificateSource,
    /// Required client SANs (exact match against URI or DNS SANs); empty accepts any chain to
    /// the root, as Envoy does.
    pub subject_alt_names: Vec<String>,
    pub min_protocol_version: Option<String>,
    pub max_protocol_version: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServerTlsMode {
    Simple,
    Mutual,
    IstioMutual,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum CertificateSource {
    /// The proxy's own mesh identity from the bootstrap's certs dir.
    IstioIdentity { dir: PathBuf },
    Files {
        certificate: PathBuf,
        private_key: PathBuf,
        ca_certificates: Option<PathBuf>,
    },
    /// A Kubernetes secret (SDS); not served yet.
    Credential { name: String },
}

#[derive(Debug, Serialize)]
pub struct HttpConnectionManager {
    /// `outbound_0.0.0.0_8080`.
    pub stat_prefix: String,
    pub route_config: RouteConfig,
}

#[derive(Debug, Serialize)]
pub struct RouteConfig {
    /// `http.8080` or `https.443.<port name>.<gateway>.<namespace>`.
    pub name: String,
    pub virtual_hosts: Vec<VirtualHost>,
    #[serde(skip)]
    pub host_index: HostIndex,
}

impl RouteConfig {
    /// The virtual host for a request authority (port ignored).
    pub fn virtual_host(&self, authority: &str) -> Option<&VirtualHost> {
        self.host_index
            .find(super::host::strip_port(authority))
            .and_then(|i| self.virtual_hosts.get(i))
    }
}

#[derive(Debug, Serialize)]
pub struct VirtualHost {
    /// `edition.cnn.com:80`.
    pub name: String,
    pub domains: Vec<String>,
    pub routes: Vec<Route>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Route {
    /// The VirtualService http route's `name` (the access log's last field).
    pub name: Option<String>,
    /// Any of these matches; empty matches every request.
    pub matches: Vec<RouteMatch>,
    pub action: RouteAction,
    pub timeout: Option<Duration>,
    pub retry: RetryPolicy,
    pub rewrite: Option<Rewrite>,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    /// `VirtualService/ns/name`, for `check` and `/config_dump`.
    pub origin: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteAction {
    Forward(Vec<WeightedCluster>),
    Redirect(Redirect),
}

#[derive(Debug, Clone, Serialize)]
pub struct WeightedCluster {
    pub cluster: String,
    pub weight: u32,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct HeaderOps {
    pub set: Vec<(String, String)>,
    pub add: Vec<(String, String)>,
    pub remove: Vec<String>,
}

impl HeaderOps {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub authority: Option<String>,
    pub port: Option<u16>,
    pub path: Option<String>,
    pub code: u16,
}

#[derive(Debug, Clone, Serialize)]
pub struct Rewrite {
    /// Replaces the matched prefix (or the whole path when the match was not a prefix).
    pub uri: Option<String>,
    pub authority: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RetryPolicy {
    /// Retries after the first attempt (0 disables).
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    /// Envoy retry_on conditions, e.g. `connect-failure`.
    pub retry_on: Vec<String>,
    pub retriable_status_codes: Vec<u16>,
}

impl RetryPolicy {
    /// What istiod gives a route without `retries`.
    pub fn istio_default() -> Self {
        RetryPolicy {
            attempts: 2,
            per_try_timeout: None,
            retry_on: [
                "connect-failure",
                "refused-stream",
                "unavailable",
                "cancelled",
                "retriable-status-codes",
            ]
            .map(String::from)
            .to_vec(),
            retriable_status_codes: vec![503],
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TcpProxy {
    /// Stat prefix: the (first) cluster name, as istiod sets it.
    pub stat_prefix: String,
    pub clusters: Vec<WeightedCluster>,
    pub origin: String,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Cluster {
    /// `outbound|443||edition.cnn.com`.
    pub name: String,
    pub host: String,
    pub port: u16,
    pub subset: Option<String>,
    pub discovery: Discovery,
    pub lookup_family: LookupFamily,
    pub protocol: UpstreamProtocol,
    pub load_balancer: LoadBalancer,
    pub tls: Option<UpstreamTls>,
    pub limits: PoolLimits,
    pub connect_timeout: Duration,
    pub origin: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Discovery {
    /// Every resolved address of every target is an endpoint (ServiceEntry `DNS`).
    StrictDns { targets: Vec<DnsTarget> },
    /// Only the first address of the one target (`DNS_ROUND_ROBIN`).
    LogicalDns { target: DnsTarget },
    /// Fixed IP endpoints (`STATIC`).
    Static { endpoints: Vec<StaticEndpoint> },
    /// No endpoints are known here (`NONE` on a gateway, or a mesh Service): requests get 503 UH.
    Eds,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DnsTarget {
    pub host: String,
    pub port: u16,
    pub weight: u32,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StaticEndpoint {
    pub address: SocketAddr,
    pub weight: u32,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    Http1,
    Http2,
    /// TCP/TLS ports: only tcp_proxy uses the cluster.
    Tcp,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LoadBalancer {
    RoundRobin,
    Random,
    LeastRequest,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct UpstreamTls {
    pub mode: UpstreamTlsMode,
    pub sni: Option<String>,
    pub ca_certificates: Option<PathBuf>,
    pub client_certificate: Option<PathBuf>,
    pub private_key: Option<PathBuf>,
    pub subject_alt_names: Vec<String>,
    pub insecure_skip_verify: bool,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum UpstreamTlsMode {
    Simple,
    Mutual,
    IstioMutual,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PoolLimits {
    pub max_connections: u32,
    pub max_pending_requests: u32,
    pub max_requests: u32,
    pub max_requests_per_connection: Option<u32>,
    pub max_retries: u32,
    pub idle_timeout: Option<Duration>,
}

impl Default for PoolLimits {
    /// Envoy's circuit-breaker defaults (Istio raises them to 2^32-1; we keep Istio's).
    fn default() -> Self {
        PoolLimits {
            max_connections: u32::MAX,
            max_pending_requests: u32::MAX,
            max_requests: u32::MAX,
            max_requests_per_connection: None,
            max_retries: u32::MAX,
            idle_timeout: None,
        }
    }
}
