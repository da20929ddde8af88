//! The bootstrap: how this egressd process is set up, as istio-proxy would be in an
//! `istio-egressgateway` pod. Every field has that default; a YAML file and CLI flags override.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::duration::serde_str;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Bootstrap {
    /// Only `gateway` for now.
    pub role: Role,
    /// Namespace of this proxy (Gateways without a namespace prefix are looked up here too).
    pub namespace: String,
    /// Namespace given to resources without `metadata.namespace`.
    pub default_namespace: String,
    /// Workload labels: a Gateway applies when its selector is a subset of these.
    pub labels: BTreeMap<String, String>,
    /// The gateway's own Kubernetes Service; its ports are those of `port_mapping`.
    pub service_name: String,
    pub service_account: String,
    pub domain_suffix: String,
    pub trust_domain: String,
    /// Gateway server port → port actually bound (the Service's targetPort).
    pub port_mapping: BTreeMap<u16, u16>,
    /// Address the gateway listeners bind to.
    pub bind_address: std::net::IpAddr,
    pub admin: SocketAddr,
    pub health: SocketAddr,
    pub prometheus: SocketAddr,
    /// Holds `cert-chain.pem`, `key.pem`, `root-cert.pem`: the ISTIO_MUTUAL identity.
    pub certs: PathBuf,
    pub dns: DnsSettings,
    pub access_log: AccessLogSettings,
    #[serde(with = "serde_str")]
    pub drain_duration: Duration,
    /// Worker threads; `None` = the CPUs available to the process.
    pub concurrency: Option<usize>,
    pub timeouts: Timeouts,
    pub limits: Limits,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[default]
    Gateway,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct DnsSettings {
    /// `ip[:port]`; empty means the system's resolv.conf.
    pub nameservers: Vec<String>,
    pub family: LookupFamily,
    #[serde(with = "serde_str")]
    pub min_ttl: Duration,
    #[serde(with = "serde_str")]
    pub max_ttl: Duration,
    /// Refresh interval after a failed lookup (Envoy's dns_refresh_rate).
    #[serde(with = "serde_str")]
    pub failure_refresh: Duration,
    #[serde(with = "serde_str")]
    pub query_timeout: Duration,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub enum LookupFamily {
    /// Envoy's V4_ONLY, what Istio sets for IPv4-only pods.
    #[default]
    #[serde(rename = "v4")]
    V4Only,
    #[serde(rename = "v6")]
    V6Only,
    #[serde(rename = "all")]
    All,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct AccessLogSettings {
    /// A file path, `/dev/stdout`, or `off`.
    pub path: String,
    pub format: AccessLogFormat,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum AccessLogFormat {
    /// Istio's default 24-field TEXT format, byte for byte.
    #[default]
    Text,
    Json,
    /// The 24 fields plus the caller's SPIFFE id (`%DOWNSTREAM_PEER_URI_SAN%`).
    TextWithPeer,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Timeouts {
    #[serde(with = "serde_str")]
    pub connect: Duration,
    #[serde(with = "serde_str")]
    pub client_hello: Duration,
    #[serde(with = "serde_str")]
    pub tls_handshake: Duration,
    /// Idle HTTP connection (Envoy's 1 h default idle_timeout).
    #[serde(with = "serde_str")]
    pub http_idle: Duration,
    /// Time to receive a request's headers. hyper counts the wait for the next request on a
    /// keep-alive connection too, so this is also the idle timeout of HTTP/1.1 connections;
    /// the default matches Envoy's 1 h idle timeout, so sidecars' pooled connections stay up.
    #[serde(with = "serde_str")]
    pub request_headers: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Limits {
    pub max_downstream_connections: usize,
    pub max_request_headers_kb: usize,
    pub max_request_headers: usize,
    pub max_client_hello_bytes: usize,
    /// Distinct server names counted in per-SNI stats before the rest share one bucket.
    pub max_sni_stats: usize,
}

impl Default for Bootstrap {
    fn default() -> Self {
        Bootstrap {
            role: Role::Gateway,
            namespace: "istio-system".into(),
            default_namespace: "default".into(),
            labels: BTreeMap::from([
                ("istio".into(), "egressgateway".into()),
                ("app".into(), "istio-egressgateway".into()),
            ]),
            service_name: "istio-egressgateway".into(),
            service_account: "istio-egressgateway-service-account".into(),
            domain_suffix: "cluster.local".into(),
            trust_domain: "cluster.local".into(),
            port_mapping: BTreeMap::from([(80, 8080), (443, 8443)]),
            bind_address: std::net::Ipv4Addr::UNSPECIFIED.into(),
            admin: ([127, 0, 0, 1], 15000).into(),
            health: ([0, 0, 0, 0], 15021).into(),
            prometheus: ([0, 0, 0, 0], 15090).into(),
            certs: "/etc/certs".into(),
            dns: DnsSettings::default(),
            access_log: AccessLogSettings::default(),
            drain_duration: Duration::from_secs(5),
            concurrency: None,
            timeouts: Timeouts::default(),
            limits: Limits::default(),
        }
    }
}

impl Default for DnsSettings {
    fn default() -> Self {
        DnsSettings {
            nameservers: Vec::new(),
            family: LookupFamily::V4Only,
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(300),
            failure_refresh: Duration::from_secs(5),
            query_timeout: Duration::from_secs(5),
        }
    }
}

impl Default for AccessLogSettings {
    fn default() -> Self {
        AccessLogSettings {
            path: "/dev/stdout".into(),
            format: AccessLogFormat::Text,
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(10),
            client_hello: Duration::from_secs(15),
            tls_handshake: Duration::from_secs(15),
            http_idle: Duration::from_secs(3600),
            request_headers: Duration::from_secs(3600),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_downstream_connections: 100_000,
            max_request_headers_kb: 60,
            max_request_headers: 100,
            max_client_hello_bytes: 16 * 1024,
            max_sni_stats: 1000,
        }
    }
}

impl Bootstrap {
    /// Reads a bootstrap file; fields it omits keep their defaults.
    pub fn from_file(path: &Path) -> anyhow::Result<Bootstrap> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{}: cannot read bootstrap: {e}", path.display()))?;
        Self::from_yaml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    pub fn from_yaml(text: &str) -> anyhow::Result<Bootstrap> {
        let documents = super::yaml::parse_documents(text)
            .map_err(|e| anyhow::anyhow!("{}: YAML syntax error: {}", e.line, e.message))?;
        let Some(document) = documents.into_iter().next() else {
            return Ok(Bootstrap::default());
        };
        let value = document
            .root
            .to_json()
            .map_err(|e| anyhow::anyhow!("{}: {}", e.line, e.message))?;
        serde_path_to_error::deserialize(value).map_err(|e| {
            let steps = super::parse_field_path(&e.path().to_string());
            let line = document.root.line_of(&steps);
            anyhow::anyhow!("{line}: {}: {}", e.path(), e.inner())
        })
    }

    /// FQDN of the gateway's own Service (`istio-egressgateway.istio-system.svc.cluster.local`).
    pub fn service_host(&self) -> String {
        format!("{}.{}.svc.{}", self.service_name, self.namespace, self.domain_suffix)
    }

    /// The port bound for a Gateway server port.
    pub fn bound_port(&self, server_port: u16) -> u16 {
        self.port_mapping.get(&server_port).copied().unwrap_or(server_port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_overrides_only_what_it_sets() {
        let b = Bootstrap::from_yaml(
            "portMapping: {80: 18080}\ndns:\n  nameservers: [127.0.0.1:5353]\ndrainDuration: 1s\n",
        )
        .unwrap();
        assert_eq!(b.bound_port(80), 18080);
        assert_eq!(b.bound_port(443), 443);
        assert_eq!(b.dns.nameservers, ["127.0.0.1:5353"]);
        assert_eq!(b.drain_duration, Duration::from_secs(1));
        assert_eq!(b.namespace, "istio-system");
        assert_eq!(b.service_host(), "istio-egressgateway.istio-system.svc.cluster.local");
    }

    #[test]
    fn unknown_bootstrap_fields_are_errors_with_lines() {
        let err = Bootstrap::from_yaml("admin: 127.0.0.1:15000\nadmn: x\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("2: ") && err.contains("unknown field `admn`"), "{err}");
    }
}
