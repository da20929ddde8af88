//! Services (ServiceEntries plus the gateway's own Service) and their DestinationRules →
//! clusters `outbound|PORT|SUBSET|HOST`, with endpoints, TLS origination and pool limits.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

mod validate;

use super::{of_kind, port, Cx};
use crate::config::destination_rule::{ClientTls, DestinationRuleSpec, TrafficPolicy};
use crate::config::service_entry::{ServiceEntrySpec, WorkloadEntry};
use crate::config::{Resource, Spec};
use crate::routing::host;
use crate::routing::snapshot::{
    Cluster, Discovery, DnsTarget, LoadBalancer, PoolLimits, StaticEndpoint, UpstreamProtocol, UpstreamTls,
    UpstreamTlsMode,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    Dns,
    DnsRoundRobin,
    Static,
    None,
    /// A Kubernetes Service of the mesh (the gateway's own): no endpoints are watched here.
    Mesh,
}

pub struct ServicePort {
    pub number: u16,
    pub name: String,
    pub protocol: String,
    pub target_port: Option<u16>,
}

pub struct Service<'a> {
    pub host: String,
    pub ports: Vec<ServicePort>,
    pub resolution: Resolution,
    pub endpoints: Vec<&'a WorkloadEntry>,
    /// `None` for the gateway's own Service, which comes from the bootstrap.
    pub resource: Option<&'a Resource>,
}

pub struct Registry<'a> {
    pub services: BTreeMap<String, Service<'a>>,
    /// DestinationRules with their FQDN host, load order.
    pub rules: Vec<(&'a Resource, &'a DestinationRuleSpec, String)>,
    /// Exact host → index in `rules` of the first rule for it.
    exact_rules: std::collections::HashMap<String, usize>,
}

impl<'a> Registry<'a> {
    pub fn build(cx: &mut Cx<'_>, resources: &'a [&'a Resource]) -> Registry<'a> {
        let mut services = BTreeMap::new();
        let own = cx.bootstrap.service_host();
        services.insert(
            own.clone(),
            Service {
                host: own,
                ports: cx
                    .bootstrap
                    .port_mapping
                    .iter()
                    .map(|(&number, &target)| {
                        let (name, protocol) = match number {
                            80 => ("http2", "HTTP2"),
                            443 => ("https", "HTTPS"),
                            _ => ("tcp", "TCP"),
                        };
                        ServicePort {
                            number,
                            name: name.into(),
                            protocol: protocol.into(),
                            target_port: Some(target),
                        }
                    })
                    .collect(),
                resolution: Resolution::Mesh,
                endpoints: Vec::new(),
                resource: None,
            },
        );
        let entries = of_kind(resources, |s| match s {
            Spec::ServiceEntry(se) => Some(se),
            _ => None,
        });
        for (r, se) in entries {
            for (host, service) in service_entry(cx, r, se) {
                if let Some(existing) = services.get(&host) {
                    let first = existing
                        .resource
                        .map(Resource::id)
                        .unwrap_or_else(|| "the gateway's own Service".into());
                    cx.warn(
                        r,
                        "spec.hosts",
                        format!("host `{host}` is already defined by {first}; this entry is ignored for it"),
                    );
                    continue;
                }
                services.insert(host, service);
            }
        }
        let mut rules = Vec::new();
        for (r, dr) in of_kind(resources, |s| match s {
            Spec::DestinationRule(dr) => Some(&**dr),
            _ => None,
        }) {
            let Some(raw_host) = dr.host.as_deref().filter(|h| !h.is_empty()) else {
                cx.error(
                    r,
                    "spec.host",
                    "DestinationRule has no host",
                    "set spec.host to the service or ServiceEntry host",
                );
                continue;
            };
            validate::validate_rule(cx, r, dr);
            rules.push((r, dr, cx.fqdn(raw_host, &r.namespace)));
        }
        let mut exact_rules = std::collections::HashMap::new();
        for (i, (_, _, h)) in rules.iter().enumerate() {
            if !host::is_wildcard(h) {
                exact_rules.entry(h.clone()).or_insert(i);
            }
        }
        Registry {
            services,
            rules,
            exact_rules,
        }
    }

    /// The DestinationRule for a host: exact host first, then the most specific wildcard.
    pub fn rule_for(&self, host: &str) -> Option<(&'a Resource, &'a DestinationRuleSpec)> {
        if let Some(&i) = self.exact_rules.get(host) {
            let (r, dr, _) = &self.rules[i];
            return Some((r, dr));
        }
        self.rules
            .iter()
            .filter(|(_, _, h)| host::is_wildcard(h) && host::matches(h, host))
            .max_by_key(|(_, _, h)| h.len())
            .map(|(r, dr, _)| (*r, *dr))
    }

    pub fn subset_defined(&self, host: &str, subset: &str) -> bool {
        self.rule_for(host)
            .is_some_and(|(_, dr)| dr.subsets.iter().any(|s| s.name.as_deref() == Some(subset)))
    }

    /// The service for a destination host (exact, or a wildcard ServiceEntry covering it).
    pub fn service(&self, host: &str) -> Option<&Service<'a>> {
        self.services.get(host).or_else(|| {
            self.services
                .values()
                .filter(|s| host::is_wildcard(&s.host) && host::matches(&s.host, host))
                .max_by_key(|s| s.host.len())
        })
    }
}

fn service_entry<'a>(cx: &mut Cx<'_>, r: &'a Resource, se: &'a ServiceEntrySpec) -> Vec<(String, Service<'a>)> {
    if se.hosts.is_empty() {
        cx.error(
            r,
            "spec.hosts",
            "ServiceEntry has no hosts",
            "list the external host names, e.g. edition.cnn.com",
        );
    }
    let resolution = match se.resolution.as_deref().unwrap_or("NONE") {
        "DNS" => Resolution::Dns,
        "DNS_ROUND_ROBIN" => Resolution::DnsRoundRobin,
        "STATIC" => Resolution::Static,
        "NONE" => Resolution::None,
        other => {
            cx.error(
                r,
                "spec.resolution",
                format!("unknown resolution `{other}`"),
                "use DNS, DNS_ROUND_ROBIN, STATIC or NONE",
            );
            Resolution::None
        }
    };
    let mut ports = Vec::new();
    for (i, p) in se.ports.iter().enumerate() {
        let field = format!("spec.ports[{i}]");
        let Some(number) = port(cx, r, &format!("{field}.number"), p.number) else {
            continue;
        };
        let protocol = p.protocol.clone().unwrap_or_else(|| "TCP".into()).to_ascii_uppercase();
        if !KNOWN_PROTOCOLS.contains(&protocol.as_str()) {
            cx.error(
                r,
                &format!("{field}.protocol"),
                format!("unknown protocol `{protocol}`"),
                "use HTTP, HTTPS, HTTP2, GRPC, TLS or TCP",
            );
        }
        let target_port = match p.target_port {
            Some(t) => port(cx, r, &format!("{field}.targetPort"), Some(t)),
            None => None,
        };
        ports.push(ServicePort {
            number,
            name: p.name.clone().unwrap_or_default(),
            protocol,
            target_port,
        });
    }
    if ports.is_empty() {
        cx.error(
            r,
            "spec.ports",
            "ServiceEntry has no ports",
            "list at least one port with number, name and protocol",
        );
    }
    for (i, e) in se.endpoints.iter().enumerate() {
        let Some(address) = e.address.as_deref() else {
            cx.error(
                r,
                &format!("spec.endpoints[{i}].address"),
                "endpoint has no address",
                "set an IP address or host name",
            );
            continue;
        };
        let is_ip = address.parse::<IpAddr>().is_ok();
        if resolution == Resolution::Static && !is_ip {
            cx.error(
                r,
                &format!("spec.endpoints[{i}].address"),
                format!("`{address}` is not an IP address, which STATIC resolution needs"),
                "use an IP address, or resolution: DNS for host names",
            );
        }
        for (name, p) in &e.ports {
            port(cx, r, &format!("spec.endpoints[{i}].ports.{name}"), Some(*p));
        }
        if e.network.is_some() || e.locality.is_some() || !e.labels.is_empty() {
            cx.not_enforced(
                r,
                &format!("spec.endpoints[{i}]"),
                "endpoint network, locality and labels",
            );
        }
    }
    if resolution == Resolution::Static && se.endpoints.is_empty() && se.workload_selector.is_none() {
        cx.error(
            r,
            "spec.endpoints",
            "STATIC resolution needs endpoints",
            "list endpoints with IP addresses",
        );
    }
    if se.workload_selector.is_some() {
        cx.not_enforced(
            r,
            "spec.workloadSelector",
            "workloadSelector (WorkloadEntries are not read)",
        );
    }
    if !se.export_to.is_empty() {
        cx.not_enforced(r, "spec.exportTo", "exportTo (a gateway sees every namespace)");
    }
    if !se.subject_alt_names.is_empty() {
        cx.not_enforced(r, "spec.subjectAltNames", "ServiceEntry subjectAltNames");
    }
    if !se.addresses.is_empty() {
        cx.not_enforced(r, "spec.addresses", "addresses (the gateway routes by Host and SNI)");
    }
    let mut out: Vec<(String, Service<'a>)> = Vec::new();
    for (i, raw_host) in se.hosts.iter().enumerate() {
        let host = cx.fqdn(raw_host, &r.namespace);
        if host == "*" {
            cx.error(
                r,
                &format!("spec.hosts[{i}]"),
                "a ServiceEntry host cannot be `*`",
                "name the external hosts, or a wildcard such as *.example.com",
            );
            continue;
        }
        if host::is_wildcard(&host)
            && matches!(resolution, Resolution::Dns | Resolution::DnsRoundRobin)
            && se.endpoints.is_empty()
        {
            cx.error(
                r,
                &format!("spec.hosts[{i}]"),
                format!("wildcard host `{host}` cannot be resolved by DNS without endpoints"),
                "use resolution: NONE, or list endpoints",
            );
            continue;
        }
        out.push((
            host.clone(),
            Service {
                host,
                ports: ports
                    .iter()
                    .map(|p| ServicePort {
                        number: p.number,
                        name: p.name.clone(),
                        protocol: p.protocol.clone(),
                        target_port: p.target_port,
                    })
                    .collect(),
                resolution,
                endpoints: se.endpoints.iter().collect(),
                resource: Some(r),
            },
        ));
    }
    if resolution == Resolution::DnsRoundRobin && se.endpoints.len() > 1 {
        cx.error(
            r,
            "spec.endpoints",
            "DNS_ROUND_ROBIN takes at most one endpoint",
            "use resolution: DNS for several endpoints",
        );
    }
    out
}

const KNOWN_PROTOCOLS: [&str; 10] = [
    "HTTP", "HTTPS", "HTTP2", "GRPC", "GRPC-WEB", "TLS", "TCP", "MONGO", "REDIS", "MYSQL",
];

pub fn build(cx: &mut Cx<'_>, registry: &Registry<'_>) -> BTreeMap<String, Arc<Cluster>> {
    let mut clusters = BTreeMap::new();
    for service in registry.services.values() {
        let rule = registry.rule_for(&service.host);
        for p in &service.ports {
            let mut subsets: Vec<Option<&crate::config::destination_rule::Subset>> = vec![None];
            if let Some((_, dr)) = rule {
                subsets.extend(
                    dr.subsets
                        .iter()
                        .filter(|s| s.name.as_deref().is_some_and(|n| !n.is_empty()))
                        .map(Some),
                );
            }
            for subset in subsets {
                let c = cluster(cx, service, p, rule, subset);
                clusters.insert(c.name.clone(), Arc::new(c));
            }
        }
    }
    clusters
}

pub fn cluster_name(port: u16, subset: Option<&str>, host: &str) -> String {
    format!("outbound|{port}|{}|{host}", subset.unwrap_or(""))
}

/// The policies that apply to one cluster, most general first: top level, its port level,
/// subset, subset port level (later ones override field by field, as istiod merges them).
fn policies<'a>(
    port: u16,
    dr: Option<&'a DestinationRuleSpec>,
    subset: Option<&'a crate::config::destination_rule::Subset>,
) -> Vec<(
    Option<&'a ClientTls>,
    Option<&'a crate::config::destination_rule::LoadBalancer>,
    Option<&'a crate::config::destination_rule::ConnectionPool>,
)> {
    let mut out = Vec::new();
    let mut push = |tp: Option<&'a TrafficPolicy>| {
        let Some(tp) = tp else { return };
        out.push((tp.tls.as_ref(), tp.load_balancer.as_ref(), tp.connection_pool.as_ref()));
        if let Some(p) = tp
            .port_level_settings
            .iter()
            .find(|p| p.port.as_ref().and_then(|p| p.number) == Some(port as u32))
        {
            out.push((p.tls.as_ref(), p.load_balancer.as_ref(), p.connection_pool.as_ref()));
        }
    };
    push(dr.and_then(|d| d.traffic_policy.as_ref()));
    push(subset.and_then(|s| s.traffic_policy.as_ref()));
    out
}

fn cluster(
    cx: &mut Cx<'_>,
    service: &Service<'_>,
    p: &ServicePort,
    rule: Option<(&Resource, &DestinationRuleSpec)>,
    subset: Option<&crate::config::destination_rule::Subset>,
) -> Cluster {
    let subset_name = subset.and_then(|s| s.name.clone());
    let name = cluster_name(p.number, subset_name.as_deref(), &service.host);
    let endpoint_port = |e: &WorkloadEntry| -> u16 {
        e.ports
            .get(&p.name)
            .and_then(|n| u16::try_from(*n).ok())
            .or(p.target_port)
            .unwrap_or(p.number)
    };
    let discovery = match service.resolution {
        Resolution::Dns if service.endpoints.is_empty() => Discovery::StrictDns {
            targets: vec![DnsTarget {
                host: service.host.clone(),
                port: p.target_port.unwrap_or(p.number),
                weight: 1,
            }],
        },
        Resolution::Dns => Discovery::StrictDns {
            targets: service
                .endpoints
                .iter()
                .filter_map(|e| {
                    Some(DnsTarget {
                        host: e.address.clone()?,
                        port: endpoint_port(e),
                        weight: e.weight.unwrap_or(1).max(1),
                    })
                })
                .collect(),
        },
        Resolution::DnsRoundRobin => Discovery::LogicalDns {
            target: service
                .endpoints
                .first()
                .and_then(|e| {
                    Some(DnsTarget {
                        host: e.address.clone()?,
                        port: endpoint_port(e),
                        weight: 1,
                    })
                })
                .unwrap_or(DnsTarget {
                    host: service.host.clone(),
                    port: p.target_port.unwrap_or(p.number),
                    weight: 1,
                }),
        },
        Resolution::Static => Discovery::Static {
            endpoints: service
                .endpoints
                .iter()
                .filter_map(|e| {
                    let ip: IpAddr = e.address.as_deref()?.parse().ok()?;
                    Some(StaticEndpoint {
                        address: SocketAddr::new(ip, endpoint_port(e)),
                        weight: e.weight.unwrap_or(1).max(1),
                    })
                })
                .collect(),
        },
        Resolution::None | Resolution::Mesh => Discovery::Eds,
    };
    let protocol = match p.protocol.as_str() {
        "HTTP" => UpstreamProtocol::Http1,
        "HTTP2" | "GRPC" | "GRPC-WEB" => UpstreamProtocol::Http2,
        _ => UpstreamProtocol::Tcp,
    };
    let mut tls = None;
    let mut lb = LoadBalancer::RoundRobin;
    let mut limits = PoolLimits::default();
    let mut connect_timeout = cx.bootstrap.timeouts.connect;
    let (dr_resource, dr) = match rule {
        Some((r, dr)) => (Some(r), Some(dr)),
        None => (None, None),
    };
    for (t, l, pool) in policies(p.number, dr, subset) {
        if let Some(t) = t {
            tls = upstream_tls(t);
        }
        if let Some(simple) = l.and_then(|l| l.simple.as_deref()) {
            lb = match simple {
                "RANDOM" => LoadBalancer::Random,
                "LEAST_REQUEST" | "LEAST_CONN" => LoadBalancer::LeastRequest,
                _ => LoadBalancer::RoundRobin,
            };
        }
        if let Some(pool) = pool {
            if let Some(tcp) = &pool.tcp {
                if let Some(n) = tcp.max_connections {
                    limits.max_connections = n;
                }
                if let Some(d) = tcp.connect_timeout.as_deref().and_then(crate::config::duration::parse) {
                    connect_timeout = d;
                }
            }
            if let Some(http) = &pool.http {
                if let Some(n) = http.http1_max_pending_requests {
                    limits.max_pending_requests = n;
                }
                if let Some(n) = http.http2_max_requests {
                    limits.max_requests = n;
                }
                if let Some(n) = http.max_requests_per_connection.filter(|n| *n > 0) {
                    limits.max_requests_per_connection = Some(n);
                }
                if let Some(n) = http.max_retries {
                    limits.max_retries = n;
                }
                if let Some(d) = http.idle_timeout.as_deref().and_then(crate::config::duration::parse) {
                    limits.idle_timeout = Some(d);
                }
            }
        }
    }
    let origin = match (service.resource, dr_resource) {
        (Some(se), Some(dr)) => format!("{} + {}", se.id(), dr.id()),
        (Some(se), None) => se.id(),
        (None, Some(dr)) => format!("bootstrap service + {}", dr.id()),
        (None, None) => "bootstrap service".into(),
    };
    Cluster {
        name,
        host: service.host.clone(),
        port: p.number,
        subset: subset_name,
        discovery,
        lookup_family: cx.bootstrap.dns.family,
        protocol,
        load_balancer: lb,
        tls,
        limits,
        connect_timeout,
        origin,
    }
}

fn upstream_tls(t: &ClientTls) -> Option<UpstreamTls> {
    let mode = match t.mode.as_deref()? {
        "SIMPLE" => UpstreamTlsMode::Simple,
        "MUTUAL" => UpstreamTlsMode::Mutual,
        "ISTIO_MUTUAL" => UpstreamTlsMode::IstioMutual,
        _ => return None,
    };
    Some(UpstreamTls {
        mode,
        sni: t.sni.clone(),
        ca_certificates: t.ca_certificates.as_ref().map(Into::into),
        client_certificate: t.client_certificate.as_ref().map(Into::into),
        private_key: t.private_key.as_ref().map(Into::into),
        subject_alt_names: t.subject_alt_names.clone(),
        insecure_skip_verify: t.insecure_skip_verify.unwrap_or(false),
    })
}
