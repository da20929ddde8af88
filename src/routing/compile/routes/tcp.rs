//! `tls` and `tcp` routes: SNI chains on PASSTHROUGH servers, the tcp proxy of TLS-terminating
//! and TCP servers.

use super::super::clusters::Registry;
use super::super::listeners::GatewayServer;
use super::super::Cx;
use super::{tcp_destinations, Binding};
use crate::routing::host;
use crate::routing::snapshot::{ChainKind, FilterChain, TcpProxy};

/// One chain per `tls` match that applies to this PASSTHROUGH server.
pub fn passthrough_chains(
    cx: &mut Cx<'_>,
    server: &GatewayServer<'_>,
    bindings: &[Binding<'_>],
    registry: &Registry<'_>,
) -> Vec<FilterChain> {
    let mut chains = Vec::new();
    // SNI → the match that routes it, to report a second match for the same name.
    let mut routed: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    for b in bindings {
        if b.hosts_on(server).is_empty() {
            continue;
        }
        for (j, tr) in b.spec.tls.iter().enumerate() {
            for (k, m) in tr.matches.iter().enumerate() {
                if !b.applies(cx, server, m.port, &m.gateways, &m.source_labels) {
                    continue;
                }
                let mf = format!("spec.tls[{j}].match[{k}]");
                if m.sni_hosts.is_empty() {
                    cx.error(
                        b.vs,
                        &format!("{mf}.sniHosts"),
                        "a tls match needs sniHosts",
                        "list the SNI names, e.g. sniHosts: [edition.cnn.com]",
                    );
                    continue;
                }
                let mut names = Vec::new();
                for sni in &m.sni_hosts {
                    let sni = sni.to_ascii_lowercase();
                    let covered = server
                        .hosts
                        .iter()
                        .filter(|(ns, _)| ns == "*" || *ns == b.vs.namespace)
                        .find_map(|(_, h)| host::intersect(h, &sni).map(str::to_string));
                    if let Some(owner) = covered.as_ref().and_then(|c| routed.get(c)) {
                        cx.error(b.vs, &format!("{mf}.sniHosts"), format!("SNI `{sni}` on port {} is already routed by {owner}; istiod would skip this match with only a warning", server.port), "route each SNI host once per gateway port");
                        continue;
                    }
                    match covered {
                        Some(name) if !names.contains(&name) => {
                            routed.insert(name.clone(), format!("{} {mf}", b.vs.id()));
                            names.push(name)
                        }
                        Some(_) => {}
                        None => cx.warn(
                            b.vs,
                            &format!("{mf}.sniHosts"),
                            format!(
                                "SNI `{sni}` is not among the hosts of {} {}; it is not served there",
                                server.gateway.id(),
                                server.field
                            ),
                        ),
                    }
                }
                if names.is_empty() {
                    continue;
                }
                let clusters = tcp_destinations(cx, b.vs, &format!("spec.tls[{j}]"), &tr.route, server, registry);
                let Some(first) = clusters.first() else {
                    continue;
                };
                let stat_prefix = first.cluster.clone();
                chains.push(FilterChain {
                    server_names: names,
                    kind: ChainKind::Passthrough(TcpProxy {
                        stat_prefix,
                        clusters,
                        origin: b.vs.id(),
                    }),
                });
            }
        }
    }
    chains
}

/// The first `tcp` route that applies (VirtualServices of the gateway's namespace first).
pub fn tcp_proxy(
    cx: &mut Cx<'_>,
    server: &GatewayServer<'_>,
    bindings: &[Binding<'_>],
    registry: &Registry<'_>,
) -> Option<TcpProxy> {
    let mut ordered: Vec<&Binding<'_>> = bindings.iter().filter(|b| !b.hosts_on(server).is_empty()).collect();
    ordered.sort_by_key(|b| b.vs.namespace != server.gateway.namespace);
    for b in ordered {
        for (j, route) in b.spec.tcp.iter().enumerate() {
            let applies = route.matches.is_empty()
                || route
                    .matches
                    .iter()
                    .any(|m| b.applies(cx, server, m.port, &m.gateways, &m.source_labels));
            if !applies {
                continue;
            }
            let clusters = tcp_destinations(cx, b.vs, &format!("spec.tcp[{j}]"), &route.route, server, registry);
            let first = clusters.first()?.cluster.clone();
            return Some(TcpProxy {
                stat_prefix: first,
                clusters,
                origin: b.vs.id(),
            });
        }
    }
    None
}

/// `tls:` routes never apply to a server that terminates TLS; istiod drops them silently.
pub fn reject_tls_routes_on_terminating(cx: &mut Cx<'_>, server: &GatewayServer<'_>, bindings: &[Binding<'_>]) {
    for b in bindings {
        if b.hosts_on(server).is_empty() {
            continue;
        }
        for (j, tr) in b.spec.tls.iter().enumerate() {
            if tr
                .matches
                .iter()
                .any(|m| b.applies(cx, server, m.port, &m.gateways, &m.source_labels))
            {
                cx.error(
                    b.vs,
                    &format!("spec.tls[{j}]"),
                    format!("this tls route matches {} {}, which terminates TLS; istiod ignores tls routes there (istio/istio#37293)", server.gateway.id(), server.field),
                    format!("route the decrypted traffic with a `tcp:` route matching port {}", server.port),
                );
            }
        }
    }
}
