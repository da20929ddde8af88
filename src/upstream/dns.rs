//! DNS resolution for upstream clusters: the resolver settings and a [`Resolver`] that
//! answers one host's addresses with the TTL to refresh them by.
//! It owns no per-host state and never caches (hickory's cache is off, so it cannot hide a TTL
//! expiry); keeping answers alive between lookups is `upstream::endpoints`' job.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError as HickoryDnsError, NetError};
use hickory_resolver::TokioResolver;
use serde::{Deserialize, Serialize};

use crate::config::duration::serde_str;

/// The resolver settings, as built from the bootstrap's `dns:` block. Every field has a default.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct DnsConfig {
    /// Nameservers to query over UDP (TCP on truncation). Empty: the system's `/etc/resolv.conf`,
    /// with its search list and `ndots`, as Envoy's c-ares resolver does in a pod.
    pub nameservers: Vec<SocketAddr>,
    /// Which address families to ask for. Istio gives IPv4-only pods `V4_ONLY`.
    pub family: LookupFamily,
    /// Lower clamp on a record TTL: a TTL of 0 would otherwise re-resolve in a tight loop.
    #[serde(with = "serde_str")]
    pub min_ttl: Duration,
    /// Upper clamp on a record TTL, so that a changed record is seen within this bound even when
    /// the zone publishes a TTL of a day.
    #[serde(with = "serde_str")]
    pub max_ttl: Duration,
    /// Delay before retrying a failed lookup, and the refresh period of an empty answer that
    /// carries no negative TTL. Envoy uses `dns_refresh_rate` (60 s in Istio) here; egressd keeps
    /// the last good answer on failure, so retrying sooner costs little and recovers sooner.
    #[serde(with = "serde_str")]
    pub failure_refresh: Duration,
    /// Bound on one whole lookup (all nameservers and retries).
    #[serde(with = "serde_str")]
    pub query_timeout: Duration,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            nameservers: Vec::new(),
            family: LookupFamily::default(),
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(300),
            failure_refresh: Duration::from_secs(5),
            query_timeout: Duration::from_secs(5),
        }
    }
}

/// Envoy's `dns_lookup_family`, spelled as Envoy spells it; the bootstrap's `v4`/`v6`/`all` too.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum LookupFamily {
    /// A records only (Istio's choice for IPv4-only pods, and the default).
    #[default]
    #[serde(rename = "V4_ONLY", alias = "v4")]
    V4Only,
    /// AAAA records only.
    #[serde(rename = "V6_ONLY", alias = "v6")]
    V6Only,
    /// A and AAAA in parallel; IPv4 addresses come first, so LOGICAL_DNS picks IPv4 when it can.
    #[serde(rename = "ALL", alias = "all")]
    All,
}

impl LookupFamily {
    fn strategy(self) -> LookupIpStrategy {
        match self {
            Self::V4Only => LookupIpStrategy::Ipv4Only,
            Self::V6Only => LookupIpStrategy::Ipv6Only,
            Self::All => LookupIpStrategy::Ipv4AndIpv6,
        }
    }
}

/// Why a lookup produced no answer. An empty answer (NXDOMAIN, NODATA) is not an error: it is an
/// `Ok` [`Resolved`] with no addresses.
#[derive(Clone, Debug, thiserror::Error)]
pub enum DnsError {
    #[error("cannot read the system DNS configuration (/etc/resolv.conf): {0}")]
    SystemConfig(String),
    #[error("DNS lookup of {host} timed out after {after:?}")]
    Timeout { host: String, after: Duration },
    #[error("DNS lookup of {host} failed: {reason}")]
    Lookup { host: String, reason: String },
}

/// One lookup's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// In answer order, duplicates removed. Empty for NXDOMAIN or NODATA.
    pub addrs: Vec<IpAddr>,
    /// When to ask again: the lowest TTL in the answer, CNAME chain included (envoyproxy/envoy#28925
    /// used the last record's), clamped to `[min_ttl, max_ttl]`. For an empty answer, the negative
    /// TTL from the SOA if the server sent one, else `failure_refresh`.
    pub ttl: Duration,
}

/// A DNS client for upstream hosts. Cheap to clone; clones share connections to the nameservers.
#[derive(Clone)]
pub struct Resolver {
    inner: TokioResolver,
    min_ttl: Duration,
    max_ttl: Duration,
    failure_refresh: Duration,
    query_timeout: Duration,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("min_ttl", &self.min_ttl)
            .field("max_ttl", &self.max_ttl)
            .finish_non_exhaustive()
    }
}

impl Resolver {
    pub fn new(config: &DnsConfig) -> Result<Self, DnsError> {
        let mut builder = if config.nameservers.is_empty() {
            TokioResolver::builder_tokio().map_err(|e| DnsError::SystemConfig(e.to_string()))?
        } else {
            let servers = config.nameservers.iter().map(|addr| {
                let mut server = NameServerConfig::udp_and_tcp(addr.ip());
                for connection in &mut server.connections {
                    connection.port = addr.port();
                }
                server
            });
            let mut builder = TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, Vec::new(), servers.collect()),
                TokioRuntimeProvider::default(),
            );
            // Explicit nameservers are the whole truth, as they are for Envoy with
            // `dns_resolvers` set; /etc/hosts stays in play only with the system configuration.
            builder.options_mut().use_hosts_file = ResolveHosts::Never;
            builder
        };
        let options = builder.options_mut();
        // Per-host state lives in `DnsEndpoints`; a second cache here would only return answers
        // whose TTL has counted down, shifting refreshes (a capacity of 0 disables moka's map).
        options.cache_size = 0;
        options.ip_strategy = config.family.strategy();
        // Two tries per lookup fit in `query_timeout`, which `lookup` enforces as a whole.
        options.attempts = 2;
        options.timeout = (config.query_timeout / 2).max(Duration::from_millis(100));
        let inner = builder.build().map_err(|e| DnsError::SystemConfig(e.to_string()))?;
        Ok(Self {
            inner,
            min_ttl: config.min_ttl,
            max_ttl: config.max_ttl.max(config.min_ttl),
            failure_refresh: config.failure_refresh,
            query_timeout: config.query_timeout,
        })
    }

    /// The delay before retrying after a failed lookup.
    pub fn failure_refresh(&self) -> Duration {
        self.failure_refresh
    }

    /// Resolves `host` to its addresses in the configured family. Never takes longer than
    /// `query_timeout`.
    pub async fn lookup(&self, host: &str) -> Result<Resolved, DnsError> {
        let lookup = tokio::time::timeout(self.query_timeout, self.inner.lookup_ip(host)).await;
        match lookup {
            Err(_elapsed) => Err(DnsError::Timeout {
                host: host.to_owned(),
                after: self.query_timeout,
            }),
            Ok(Ok(answer)) => {
                let mut addrs: Vec<IpAddr> = Vec::new();
                for ip in answer.iter() {
                    if !addrs.contains(&ip) {
                        addrs.push(ip);
                    }
                }
                let lowest = answer.as_lookup().answers().iter().map(|r| r.ttl).min();
                let ttl = match lowest {
                    Some(secs) if !addrs.is_empty() => self.clamp(secs),
                    _ => self.failure_refresh,
                };
                Ok(Resolved { addrs, ttl })
            }
            Ok(Err(NetError::Dns(HickoryDnsError::NoRecordsFound(none)))) => Ok(Resolved {
                addrs: Vec::new(),
                ttl: none.negative_ttl.map_or(self.failure_refresh, |secs| self.clamp(secs)),
            }),
            Ok(Err(e)) => Err(DnsError::Lookup {
                host: host.to_owned(),
                reason: e.to_string(),
            }),
        }
    }

    fn clamp(&self, ttl_secs: u32) -> Duration {
        Duration::from_secs(u64::from(ttl_secs)).clamp(self.min_ttl, self.max_ttl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolver(config: DnsConfig) -> Resolver {
        Resolver::new(&config).expect("resolver")
    }

    #[test]
    fn defaults_match_the_design() {
        let config = DnsConfig::default();
        assert!(config.nameservers.is_empty());
        assert_eq!(config.family, LookupFamily::V4Only);
        assert_eq!(config.query_timeout, Duration::from_secs(5));
    }

    #[test]
    fn config_reads_istio_style_yaml_fields() {
        let json = r#"{"nameservers": ["127.0.0.1:5353"], "family": "ALL",
                       "minTtl": "500ms", "maxTtl": "1m", "failureRefresh": "2s", "queryTimeout": "1.5s"}"#;
        let config: DnsConfig = serde_json::from_str(json).expect("parse");
        assert_eq!(config.nameservers, vec!["127.0.0.1:5353".parse().unwrap()]);
        assert_eq!(config.family, LookupFamily::All);
        assert_eq!(config.min_ttl, Duration::from_millis(500));
        assert_eq!(config.max_ttl, Duration::from_secs(60));
        assert_eq!(config.failure_refresh, Duration::from_secs(2));
        assert_eq!(config.query_timeout, Duration::from_millis(1500));

        let back = serde_json::to_value(&config).expect("serialize");
        assert_eq!(back["family"], "ALL");
        let again: DnsConfig = serde_json::from_value(back).expect("round trip");
        assert_eq!(again, config);
    }

    #[test]
    fn config_rejects_bad_durations_and_fields() {
        for bad in [
            r#"{"minTtl": "5 parsecs"}"#,
            r#"{"minTtl": "-1s"}"#,
            r#"{"minTtl": 5}"#,
            r#"{"family": "V5_ONLY"}"#,
            r#"{"ttl": "1s"}"#,
        ] {
            assert!(serde_json::from_str::<DnsConfig>(bad).is_err(), "{bad}");
        }
        assert_eq!(serde_json::from_str::<DnsConfig>("{}").unwrap(), DnsConfig::default());
    }

    #[test]
    fn family_accepts_the_bootstrap_spelling() {
        for (text, family) in [
            ("v4", LookupFamily::V4Only),
            ("v6", LookupFamily::V6Only),
            ("all", LookupFamily::All),
        ] {
            assert_eq!(
                serde_json::from_str::<LookupFamily>(&format!("{text:?}")).unwrap(),
                family
            );
        }
    }

    #[tokio::test]
    async fn ttl_is_clamped_to_the_configured_bounds() {
        let r = resolver(DnsConfig {
            nameservers: vec!["127.0.0.1:53".parse().unwrap()],
            min_ttl: Duration::from_secs(2),
            max_ttl: Duration::from_secs(30),
            ..DnsConfig::default()
        });
        assert_eq!(r.clamp(0), Duration::from_secs(2));
        assert_eq!(r.clamp(10), Duration::from_secs(10));
        assert_eq!(r.clamp(86_400), Duration::from_secs(30));
    }

    #[tokio::test]
    async fn an_ip_literal_resolves_to_itself_without_a_query() {
        let r = resolver(DnsConfig {
            // Nothing listens here: the literal must not need a nameserver.
            nameservers: vec!["127.0.0.1:9".parse().unwrap()],
            ..DnsConfig::default()
        });
        let answer = r.lookup("127.0.0.7").await.expect("literal");
        assert_eq!(answer.addrs, vec!["127.0.0.7".parse::<IpAddr>().unwrap()]);
        assert_eq!(answer.ttl, DnsConfig::default().max_ttl);
    }

    #[tokio::test]
    async fn an_unreachable_nameserver_is_an_error_within_the_timeout() {
        let r = resolver(DnsConfig {
            nameservers: vec!["127.0.0.1:9".parse().unwrap()],
            query_timeout: Duration::from_millis(300),
            ..DnsConfig::default()
        });
        let started = std::time::Instant::now();
        let err = r.lookup("edition.cnn.com").await.expect_err("no server");
        assert!(started.elapsed() < Duration::from_secs(2), "{err}");
        assert!(matches!(err, DnsError::Timeout { .. } | DnsError::Lookup { .. }));
    }
}
