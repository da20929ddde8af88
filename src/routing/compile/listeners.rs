//! Gateway servers selected by this proxy's labels → listeners on the mapped ports, with their
//! filter chains: plain HTTP, plain TCP, TLS passthrough by SNI, or TLS terminated here.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use super::clusters::Registry;
use super::routes::{self, Binding};
use super::{of_kind, port, selects, Cx};
use crate::config::gateway::{GatewaySpec, Server};
use crate::config::{Resource, Spec};
use crate::routing::host::HostIndex;
use crate::routing::snapshot::{
    CertificateSource, ChainKind, FilterChain, HttpConnectionManager, Listener, ListenerKind, RouteConfig, ServerTls,
    ServerTlsMode, VirtualHost,
};

/// A server of a selected Gateway, validated.
pub struct GatewayServer<'a> {
    pub gateway: &'a Resource,
    /// `namespace/name` of the Gateway, as VirtualServices reference it.
    pub gateway_key: String,
    pub field: String,
    pub server: &'a Server,
    pub port: u16,
    pub bound: u16,
    /// `(namespace constraint, host)`: `*` means any namespace.
    pub hosts: Vec<(String, String)>,
    pub mode: ServerMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerMode {
    PlainHttp,
    PlainTcp,
    Passthrough,
    AutoPassthrough,
    TerminateHttp(ServerTlsMode),
    TerminateTcp(ServerTlsMode),
}

impl ServerMode {
    fn is_tls(self) -> bool {
        !matches!(self, ServerMode::PlainHttp | ServerMode::PlainTcp)
    }
}

pub fn build(cx: &mut Cx<'_>, resources: &[&Resource], registry: &Registry<'_>) -> Vec<Listener> {
    let gateways = of_kind(resources, |s| match s {
        Spec::Gateway(g) => Some(g),
        _ => None,
    });
    let all_gateway_keys: BTreeSet<String> = gateways
        .iter()
        .map(|(r, _)| format!("{}/{}", r.namespace, r.name))
        .collect();
    let bindings = routes::bindings(cx, resources, &all_gateway_keys);

    let mut by_port: BTreeMap<u16, Vec<GatewayServer<'_>>> = BTreeMap::new();
    for (r, gw) in &gateways {
        if !selects(&gw.selector, &cx.bootstrap.labels) {
            continue;
        }
        for server in servers(cx, r, gw) {
            by_port.entry(server.bound).or_default().push(server);
        }
    }

    let mut listeners = Vec::new();
    for (bound, servers) in by_port {
        let servers = drop_conflicting(cx, servers);
        let Some(first) = servers.first() else {
            continue;
        };
        let name = format!("{}_{bound}", cx.bootstrap.bind_address);
        let address = SocketAddr::new(cx.bootstrap.bind_address, bound);
        let server_port = first.port;
        let kind = match first.mode {
            ServerMode::PlainHttp => {
                let stat_prefix = format!("outbound_{name}");
                let route_config = http_route_config(cx, format!("http.{bound}"), &servers, &bindings, registry);
                ListenerKind::Http(HttpConnectionManager {
                    stat_prefix,
                    route_config,
                })
            }
            ServerMode::PlainTcp => {
                match servers
                    .iter()
                    .find_map(|s| routes::tcp_proxy(cx, s, &bindings, registry))
                {
                    Some(tcp) => ListenerKind::Tcp(tcp),
                    None => {
                        cx.warn(
                            first.gateway,
                            &first.field,
                            format!(
                                "no VirtualService tcp route matches this server; port {} will refuse connections",
                                first.port
                            ),
                        );
                        ListenerKind::Tls(Vec::new())
                    }
                }
            }
            _ => ListenerKind::Tls(tls_chains(cx, &name, &servers, &bindings, registry)),
        };
        let sni_index = match &kind {
            ListenerKind::Tls(chains) => HostIndex::new(chains.iter().enumerate().flat_map(|(i, c)| {
                let names: Vec<&str> = if c.server_names.is_empty() {
                    vec!["*"]
                } else {
                    c.server_names.iter().map(String::as_str).collect()
                };
                names.into_iter().map(move |n| (n, i))
            })),
            _ => HostIndex::default(),
        };
        listeners.push(Listener {
            name,
            address,
            server_port,
            kind,
            sni_index,
        });
    }
    listeners
}

fn servers<'a>(cx: &mut Cx<'_>, r: &'a Resource, gw: &'a GatewaySpec) -> Vec<GatewayServer<'a>> {
    let mut out = Vec::new();
    if gw.servers.is_empty() {
        cx.error(
            r,
            "spec.servers",
            "Gateway has no servers",
            "add a server with port, hosts and (for TLS) tls",
        );
    }
    for (i, server) in gw.servers.iter().enumerate() {
        let field = format!("spec.servers[{i}]");
        let Some(raw_port) = server.port.as_ref() else {
            cx.error(
                r,
                &format!("{field}.port"),
                "server has no port",
                "set port.number, port.name and port.protocol",
            );
            continue;
        };
        let Some(number) = port(cx, r, &format!("{field}.port.number"), raw_port.number) else {
            continue;
        };
        let protocol = raw_port.protocol.clone().unwrap_or_default().to_ascii_uppercase();
        if server.hosts.is_empty() {
            cx.error(
                r,
                &format!("{field}.hosts"),
                "server has no hosts",
                "list the hosts it serves, e.g. edition.cnn.com",
            );
            continue;
        }
        let hosts = server
            .hosts
            .iter()
            .map(|h| match h.split_once('/') {
                Some((".", host)) => (r.namespace.clone(), host.to_ascii_lowercase()),
                Some((ns, host)) => (ns.to_string(), host.to_ascii_lowercase()),
                None => ("*".to_string(), h.to_ascii_lowercase()),
            })
            .collect();
        let Some(mode) = server_mode(cx, r, &field, &protocol, server) else {
            continue;
        };
        if server.bind.is_some() {
            cx.not_enforced(
                r,
                &format!("{field}.bind"),
                "bind (listeners use the bootstrap's bindAddress)",
            );
        }
        if server.default_endpoint.is_some() {
            cx.not_enforced(r, &format!("{field}.defaultEndpoint"), "defaultEndpoint");
        }
        out.push(GatewayServer {
            gateway: r,
            gateway_key: format!("{}/{}", r.namespace, r.name),
            field,
            server,
            port: number,
            bound: cx.bootstrap.bound_port(number),
            hosts,
            mode,
        });
    }
    out
}

fn server_mode(cx: &mut Cx<'_>, r: &Resource, field: &str, protocol: &str, server: &Server) -> Option<ServerMode> {
    let tls = server.tls.as_ref();
    let mode = tls.and_then(|t| t.mode.as_deref());
    if let Some(t) = tls {
        if t.https_redirect == Some(true) {
            cx.not_enforced(r, &format!("{field}.tls.httpsRedirect"), "httpsRedirect");
        }
        for (name, set) in [
            ("verifyCertificateSpki", &t.verify_certificate_spki),
            ("verifyCertificateHash", &t.verify_certificate_hash),
            ("cipherSuites", &t.cipher_suites),
            ("credentialNames", &t.credential_names),
        ] {
            if !set.is_empty() {
                cx.not_enforced(r, &format!("{field}.tls.{name}"), name);
            }
        }
        if t.ca_crl.is_some() {
            cx.not_enforced(r, &format!("{field}.tls.caCrl"), "caCrl");
        }
        for (name, v) in [
            ("minProtocolVersion", &t.min_protocol_version),
            ("maxProtocolVersion", &t.max_protocol_version),
        ] {
            if let Some(v) = v.as_deref() {
                if !matches!(v, "TLS_AUTO" | "TLSV1_2" | "TLSV1_3") {
                    cx.error(
                        r,
                        &format!("{field}.tls.{name}"),
                        format!("unsupported TLS version `{v}`"),
                        "use TLSV1_2, TLSV1_3 or TLS_AUTO (TLS 1.0 and 1.1 are not offered)",
                    );
                }
            }
        }
    }
    let terminating = |cx: &mut Cx<'_>, m: ServerTlsMode| -> bool {
        let t = tls.expect("checked by caller");
        if m == ServerTlsMode::IstioMutual {
            return true;
        }
        if t.credential_name.is_some() {
            cx.not_enforced(
                r,
                &format!("{field}.tls.credentialName"),
                "credentialName (Kubernetes secrets are not read; use serverCertificate and privateKey paths)",
            );
            return true;
        }
        let mut ok = true;
        if t.server_certificate.is_none() || t.private_key.is_none() {
            cx.error(
                r,
                &format!("{field}.tls"),
                format!(
                    "{} needs serverCertificate and privateKey",
                    if m == ServerTlsMode::Simple { "SIMPLE" } else { "MUTUAL" }
                ),
                "set both file paths, or credentialName",
            );
            ok = false;
        }
        if m == ServerTlsMode::Mutual && t.ca_certificates.is_none() {
            cx.error(
                r,
                &format!("{field}.tls.caCertificates"),
                "MUTUAL needs caCertificates to verify clients",
                "set caCertificates to the CA bundle path",
            );
            ok = false;
        }
        ok
    };
    let tls_mode = match mode {
        None => None,
        Some("PASSTHROUGH") => Some(None),
        Some("AUTO_PASSTHROUGH") => Some(None),
        Some("SIMPLE") => Some(Some(ServerTlsMode::Simple)),
        Some("MUTUAL") => Some(Some(ServerTlsMode::Mutual)),
        Some("ISTIO_MUTUAL") => Some(Some(ServerTlsMode::IstioMutual)),
        Some("OPTIONAL_MUTUAL") => {
            cx.error(
                r,
                &format!("{field}.tls.mode"),
                "OPTIONAL_MUTUAL is not supported",
                "use MUTUAL or SIMPLE",
            );
            return None;
        }
        Some(other) => {
            cx.error(
                r,
                &format!("{field}.tls.mode"),
                format!("unknown TLS mode `{other}`"),
                "use SIMPLE, MUTUAL, ISTIO_MUTUAL, PASSTHROUGH or AUTO_PASSTHROUGH",
            );
            return None;
        }
    };
    match (protocol, tls_mode) {
        ("HTTP" | "HTTP2" | "GRPC", _) => Some(ServerMode::PlainHttp),
        ("HTTPS", Some(Some(m))) => terminating(cx, m).then_some(ServerMode::TerminateHttp(m)),
        ("HTTPS" | "TLS", Some(None)) if mode == Some("AUTO_PASSTHROUGH") => Some(ServerMode::AutoPassthrough),
        ("HTTPS" | "TLS", Some(None)) => Some(ServerMode::Passthrough),
        ("TLS", Some(Some(m))) => terminating(cx, m).then_some(ServerMode::TerminateTcp(m)),
        ("HTTPS" | "TLS", None) => {
            cx.error(
                r,
                &format!("{field}.tls"),
                format!("a {protocol} server needs tls settings"),
                "add tls.mode: PASSTHROUGH, SIMPLE, MUTUAL or ISTIO_MUTUAL",
            );
            None
        }
        ("TCP" | "MONGO" | "REDIS" | "MYSQL", _) => Some(ServerMode::PlainTcp),
        ("", _) => {
            cx.error(
                r,
                &format!("{field}.port.protocol"),
                "server has no protocol",
                "set port.protocol to HTTP, HTTPS, HTTP2, GRPC, TLS or TCP",
            );
            None
        }
        (other, _) => {
            cx.error(
                r,
                &format!("{field}.port.protocol"),
                format!("unknown protocol `{other}`"),
                "use HTTP, HTTPS, HTTP2, GRPC, TLS or TCP",
            );
            None
        }
    }
}

/// Plain and TLS servers cannot share a port (istiod keeps the first and silently drops the
/// rest); neither can HTTP and TCP. Report them and keep the first kind.
fn drop_conflicting<'a>(cx: &mut Cx<'_>, servers: Vec<GatewayServer<'a>>) -> Vec<GatewayServer<'a>> {
    let Some(first) = servers.first() else {
        return servers;
    };
    let (first_mode, first_desc) = (first.mode, format!("{} {}", first.gateway.id(), first.field));
    let mut kept = Vec::new();
    for s in servers {
        let same_class = match (first_mode, s.mode) {
            (ServerMode::PlainHttp, ServerMode::PlainHttp) => true,
            (ServerMode::PlainTcp, ServerMode::PlainTcp) => false,
            (a, b) => a.is_tls() && b.is_tls(),
        };
        if kept.is_empty() || same_class {
            kept.push(s);
        } else {
            cx.error(
                s.gateway,
                &s.field,
                format!("port {} (bound as {}) is already used by a {} server ({first_desc}); plain-text, TCP and TLS servers cannot share a port", s.port, s.bound, describe(first_mode)),
                "give this server its own port",
            );
        }
    }
    kept
}

fn describe(mode: ServerMode) -> &'static str {
    match mode {
        ServerMode::PlainHttp => "plain HTTP",
        ServerMode::PlainTcp => "plain TCP",
        _ => "TLS",
    }
}

fn http_route_config(
    cx: &mut Cx<'_>,
    name: String,
    servers: &[GatewayServer<'_>],
    bindings: &[Binding<'_>],
    registry: &Registry<'_>,
) -> RouteConfig {
    let mut by_name: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut virtual_hosts: Vec<VirtualHost> = Vec::new();
    for server in servers {
        for vh in routes::virtual_hosts(cx, server, bindings, registry) {
            match by_name.get(&vh.name) {
                Some(&i) => virtual_hosts[i].routes.extend(vh.routes),
                None => {
                    by_name.insert(vh.name.clone(), virtual_hosts.len());
                    virtual_hosts.push(vh);
                }
            }
        }
    }
    let host_index = HostIndex::new(
        virtual_hosts
            .iter()
            .enumerate()
            .flat_map(|(i, v)| v.domains.iter().map(move |d| (d.as_str(), i))),
    );
    RouteConfig {
        name,
        virtual_hosts,
        host_index,
    }
}

fn tls_chains(
    cx: &mut Cx<'_>,
    listener: &str,
    servers: &[GatewayServer<'_>],
    bindings: &[Binding<'_>],
    registry: &Registry<'_>,
) -> Vec<FilterChain> {
    let errors_before = cx.diagnostics.iter().filter(|d| d.is_error()).count();
    let mut chains: Vec<FilterChain> = Vec::new();
    let mut owners: BTreeMap<String, String> = BTreeMap::new();
    for server in servers {
        let built: Vec<FilterChain> = match server.mode {
            ServerMode::Passthrough => routes::passthrough_chains(cx, server, bindings, registry),
            ServerMode::AutoPassthrough => vec![FilterChain {
                server_names: server_names(server),
                kind: ChainKind::AutoPassthrough,
            }],
            ServerMode::TerminateHttp(mode) => {
                let port_name = server
                    .server
                    .port
                    .as_ref()
                    .and_then(|p| p.name.clone())
                    .unwrap_or_default();
                let rds = format!(
                    "https.{}.{port_name}.{}.{}",
                    server.port, server.gateway.name, server.gateway.namespace
                );
                let stat_prefix = server
                    .server
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("outbound_{listener}"));
                let route_config = http_route_config(cx, rds, std::slice::from_ref(server), bindings, registry);
                vec![FilterChain {
                    server_names: server_names(server),
                    kind: ChainKind::TerminateHttp {
                        tls: server_tls(cx, server, mode),
                        http: HttpConnectionManager {
                            stat_prefix,
                            route_config,
                        },
                    },
                }]
            }
            ServerMode::TerminateTcp(mode) => {
                routes::reject_tls_routes_on_terminating(cx, server, bindings);
                match routes::tcp_proxy(cx, server, bindings, registry) {
                    Some(tcp) => vec![FilterChain {
                        server_names: server_names(server),
                        kind: ChainKind::TerminateTcp {
                            tls: server_tls(cx, server, mode),
                            tcp,
                        },
                    }],
                    None => {
                        cx.error(server.gateway, &server.field, "no VirtualService tcp route matches this TLS-terminating server, so istiod would drop its listener (istio/istio#37293)", "add a `tcp:` route for this port to a VirtualService bound to this gateway (`tls:` routes only apply to PASSTHROUGH servers)");
                        Vec::new()
                    }
                }
            }
            ServerMode::PlainHttp | ServerMode::PlainTcp => Vec::new(),
        };
        for chain in built {
            let mut clash = None;
            for name in &chain.server_names {
                if let Some(other) = owners.get(name) {
                    clash = Some((name.clone(), other.clone()));
                    break;
                }
            }
            match clash {
                Some((name, other)) => cx.error(
                    server.gateway,
                    &server.field,
                    format!("server name `{name}` on port {} is already served by {other}; a ClientHello could not be routed", server.port),
                    "serve each SNI host once per port",
                ),
                None => {
                    let owner = format!("{} {}", server.gateway.id(), server.field);
                    for name in &chain.server_names {
                        owners.insert(name.clone(), owner.clone());
                    }
                    chains.push(chain);
                }
            }
        }
    }
    let new_errors = cx.diagnostics.iter().filter(|d| d.is_error()).count() > errors_before;
    if chains.is_empty() && !new_errors {
        if let Some(s) = servers.first() {
            cx.warn(s.gateway, &s.field, format!("no route matches this TLS server; every connection to port {} will be refused (NR filter_chain_not_found)", s.bound));
        }
    }
    chains
}

/// SNI names of a terminating server: its hosts, where a bare `*` means any name.
fn server_names(server: &GatewayServer<'_>) -> Vec<String> {
    if server.hosts.iter().any(|(_, h)| h == "*") {
        return Vec::new();
    }
    server.hosts.iter().map(|(_, h)| h.clone()).collect()
}

fn server_tls(cx: &mut Cx<'_>, server: &GatewayServer<'_>, mode: ServerTlsMode) -> ServerTls {
    let t = server.server.tls.clone().unwrap_or_default();
    let certificate = match (mode, &t.credential_name) {
        (ServerTlsMode::IstioMutual, _) => CertificateSource::IstioIdentity {
            dir: cx.bootstrap.certs.clone(),
        },
        (_, Some(name)) => CertificateSource::Credential { name: name.clone() },
        _ => CertificateSource::Files {
            certificate: t.server_certificate.clone().unwrap_or_default().into(),
            private_key: t.private_key.clone().unwrap_or_default().into(),
            ca_certificates: t.ca_certificates.clone().map(Into::into),
        },
    };
    ServerTls {
        mode,
        certificate,
        subject_alt_names: t.subject_alt_names.clone(),
        min_protocol_version: t.min_protocol_version.clone(),
        max_protocol_version: t.max_protocol_version.clone(),
    }
}
