//! Raw `DestinationRule`: per-host traffic policy (TLS origination, pools, load balancing) and
//! subsets.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DestinationRuleSpec {
    pub host: Option<String>,
    #[serde(alias = "traffic_policy")]
    pub traffic_policy: Option<TrafficPolicy>,
    #[serde(default)]
    pub subsets: Vec<Subset>,
    #[serde(default, alias = "export_to")]
    pub export_to: Vec<String>,
    #[serde(alias = "workload_selector")]
    pub workload_selector: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Subset {
    pub name: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(alias = "traffic_policy")]
    pub traffic_policy: Option<TrafficPolicy>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicy {
    #[serde(alias = "load_balancer")]
    pub load_balancer: Option<LoadBalancer>,
    #[serde(alias = "connection_pool")]
    pub connection_pool: Option<ConnectionPool>,
    #[serde(alias = "outlier_detection")]
    pub outlier_detection: Option<serde_json::Value>,
    pub tls: Option<ClientTls>,
    #[serde(default, alias = "port_level_settings")]
    pub port_level_settings: Vec<PortTrafficPolicy>,
    pub tunnel: Option<serde_json::Value>,
    #[serde(alias = "proxy_protocol")]
    pub proxy_protocol: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortTrafficPolicy {
    pub port: Option<PortSelector>,
    #[serde(alias = "load_balancer")]
    pub load_balancer: Option<LoadBalancer>,
    #[serde(alias = "connection_pool")]
    pub connection_pool: Option<ConnectionPool>,
    #[serde(alias = "outlier_detection")]
    pub outlier_detection: Option<serde_json::Value>,
    pub tls: Option<ClientTls>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortSelector {
    pub number: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancer {
    pub simple: Option<String>,
    #[serde(alias = "consistent_hash")]
    pub consistent_hash: Option<serde_json::Value>,
    #[serde(alias = "locality_lb_setting")]
    pub locality_lb_setting: Option<serde_json::Value>,
    #[serde(alias = "warmup_duration_secs")]
    pub warmup_duration_secs: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionPool {
    pub tcp: Option<TcpSettings>,
    pub http: Option<HttpSettings>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TcpSettings {
    #[serde(alias = "max_connections")]
    pub max_connections: Option<u32>,
    #[serde(alias = "connect_timeout")]
    pub connect_timeout: Option<String>,
    #[serde(alias = "tcp_keepalive")]
    pub tcp_keepalive: Option<serde_json::Value>,
    #[serde(alias = "max_connection_duration")]
    pub max_connection_duration: Option<String>,
    #[serde(alias = "idle_timeout")]
    pub idle_timeout: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpSettings {
    #[serde(alias = "http1_max_pending_requests")]
    pub http1_max_pending_requests: Option<u32>,
    #[serde(alias = "http2_max_requests")]
    pub http2_max_requests: Option<u32>,
    #[serde(alias = "max_requests_per_connection")]
    pub max_requests_per_connection: Option<u32>,
    #[serde(alias = "max_retries")]
    pub max_retries: Option<u32>,
    #[serde(alias = "idle_timeout")]
    pub idle_timeout: Option<String>,
    #[serde(alias = "h2_upgrade_policy")]
    pub h2_upgrade_policy: Option<String>,
    #[serde(alias = "use_client_protocol")]
    pub use_client_protocol: Option<bool>,
    #[serde(alias = "max_concurrent_streams")]
    pub max_concurrent_streams: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientTls {
    pub mode: Option<String>,
    #[serde(alias = "client_certificate")]
    pub client_certificate: Option<String>,
    #[serde(alias = "private_key")]
    pub private_key: Option<String>,
    #[serde(alias = "ca_certificates")]
    pub ca_certificates: Option<String>,
    #[serde(alias = "ca_crl")]
    pub ca_crl: Option<String>,
    #[serde(alias = "credential_name")]
    pub credential_name: Option<String>,
    #[serde(default, alias = "subject_alt_names")]
    pub subject_alt_names: Vec<String>,
    pub sni: Option<String>,
    #[serde(alias = "insecure_skip_verify")]
    pub insecure_skip_verify: Option<bool>,
}
