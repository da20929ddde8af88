//! VirtualServices bound to a gateway server → virtual hosts with http routes, passthrough
//! chains from `tls` routes, and the tcp proxy from the first matching `tcp` route.

mod tcp;

use std::collections::BTreeSet;

use super::clusters::{cluster_name, Registry};
use super::listeners::GatewayServer;
use super::{duration, of_kind, port, selects, Cx};
use crate::config::virtual_service::{
    Destination, HeaderOperations, HttpRoute, HttpRouteDestination, RouteDestination, StringMatch, VirtualServiceSpec,
};
use crate::config::{Resource, Spec};
use crate::routing::host;
use crate::routing::http_match::{RouteMatch, StrMatch};
use crate::routing::snapshot::{
    HeaderOps, Redirect, RetryPolicy, Rewrite, Route, RouteAction, VirtualHost, WeightedCluster,
};

pub use tcp::{passthrough_chains, reject_tls_routes_on_terminating, tcp_proxy};

/// A VirtualService with its gateway references resolved to `namespace/name`.
pub struct Binding<'a> {
    pub vs: &'a Resource,
    pub spec: &'a VirtualServiceSpec,
    pub gateways: BTreeSet<String>,
    pub hosts: Vec<String>,
}

/// Resolves a gateway reference as istiod does: `name` is in the VirtualService's namespace,
/// `ns/name` is explicit, and the old `name.ns.svc.cluster.local` form is understood too.
fn gateway_key(reference: &str, vs_namespace: &str) -> String {
    if let Some((ns, name)) = reference.split_once('/') {
        return format!("{ns}/{name}");
    }
    let mut labels = reference.split('.');
    match (labels.next(), labels.next()) {
        (Some(name), Some(ns)) => format!("{ns}/{name}"),
        _ => format!("{vs_namespace}/{reference}"),
    }
}

pub fn bindings<'a>(cx: &mut Cx<'_>, resources: &'a [&'a Resource], known: &BTreeSet<String>) -> Vec<Binding<'a>> {
    let mut out = Vec::new();
    for (r, vs) in of_kind(resources, |s| match s {
        Spec::VirtualService(vs) => Some(vs),
        _ => None,
    }) {
        if vs.hosts.is_empty() {
            cx.error(
                r,
                "spec.hosts",
                "VirtualService has no hosts",
                "list the hosts it routes, e.g. edition.cnn.com",
            );
        }
        if !vs.export_to.is_empty() {
            cx.not_enforced(r, "spec.exportTo", "exportTo (a gateway sees every namespace)");
        }
        let mut gateways = BTreeSet::new();
        for (i, g) in vs.gateways.iter().enumerate() {
            if g == "mesh" {
                continue;
            }
            let key = gateway_key(g, &r.namespace);
            if !known.contains(&key) {
                cx.error(r, &format!("spec.gateways[{i}]"), format!("gateway `{g}` resolves to `{key}`, which no loaded Gateway is"), "name a Gateway that exists (use `namespace/name` for a Gateway in another namespace), or load its YAML too");
            }
            gateways.insert(key);
        }
        check_match_gateways(cx, r, vs, known);
        let hosts = vs.hosts.iter().map(|h| cx.fqdn(h, &r.namespace)).collect();
        out.push(Binding {
            vs: r,
            spec: vs,
            gateways,
            hosts,
        });
    }
    out
}

fn check_match_gateways(cx: &mut Cx<'_>, r: &Resource, vs: &VirtualServiceSpec, known: &BTreeSet<String>) {
    let mut refs: Vec<(String, &String)> = Vec::new();
    for (j, route) in vs.http.iter().enumerate() {
        for (k, m) in route.matches.iter().enumerate() {
            refs.extend(
                m.gateways
                    .iter()
                    .enumerate()
                    .map(|(i, g)| (format!("spec.http[{j}].match[{k}].gateways[{i}]"), g)),
            );
        }
    }
    for (j, route) in vs.tls.iter().enumerate() {
        for (k, m) in route.matches.iter().enumerate() {
            refs.extend(
                m.gateways
                    .iter()
                    .enumerate()
                    .map(|(i, g)| (format!("spec.tls[{j}].match[{k}].gateways[{i}]"), g)),
            );
        }
    }
    for (j, route) in vs.tcp.iter().enumerate() {
        for (k, m) in route.matches.iter().enumerate() {
            refs.extend(
                m.gateways
                    .iter()
                    .enumerate()
                    .map(|(i, g)| (format!("spec.tcp[{j}].match[{k}].gateways[{i}]"), g)),
            );
        }
    }
    for (field, g) in refs {
        let key = gateway_key(g, &r.namespace);
        if g != "mesh" && !known.contains(&key) {
            cx.error(
                r,
                &field,
                format!("gateway `{g}` resolves to `{key}`, which no loaded Gateway is"),
                "name a Gateway that exists, or `mesh`",
            );
        }
    }
}

impl Binding<'_> {
    /// The VS hosts this server serves (Istio's intersection, honouring `ns/host` on the server).
    fn hosts_on(&self, server: &GatewayServer<'_>) -> Vec<String> {
        if !self.gateways.contains(&server.gateway_key) {
            return Vec::new();
        }
        let mut out = Vec::new();
        for vs_host in &self.hosts {
            for (ns, server_host) in &server.hosts {
                if ns != "*" && *ns != self.vs.namespace {
                    continue;
                }
                if let Some(h) = host::intersect(server_host, vs_host) {
                    if !out.iter().any(|o| o == h) {
                        out.push(h.to_string());
                    }
                }
            }
        }
        out
    }

    /// Whether a route-level match applies to this server (port and gateways).
    fn applies(
        &self,
        cx: &Cx<'_>,
        server: &GatewayServer<'_>,
        port: Option<u32>,
        gateways: &[String],
        source_labels: &std::collections::BTreeMap<String, String>,
    ) -> bool {
        port.is_none_or(|p| p == u32::from(server.port))
            && (gateways.is_empty()
                || gateways
                    .iter()
                    .any(|g| gateway_key(g, &self.vs.namespace) == server.gateway_key))
            && selects(source_labels, &cx.bootstrap.labels)
    }
}

pub fn virtual_hosts(
    cx: &mut Cx<'_>,
    server: &GatewayServer<'_>,
    bindings: &[Binding<'_>],
    registry: &Registry<'_>,
) -> Vec<VirtualHost> {
    let mut by_name: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut vhosts: Vec<VirtualHost> = Vec::new();
    for b in bindings {
        let hosts = b.hosts_on(server);
        if hosts.is_empty() {
            continue;
        }
        let mut routes = Vec::new();
        for (j, raw) in b.spec.http.iter().enumerate() {
            if let Some(route) = http_route(cx, b, server, j, raw, registry) {
                routes.push(route);
            }
        }
        for h in hosts {
            let name = format!("{h}:{}", server.port);
            match by_name.get(&name) {
                Some(&i) => vhosts[i].routes.extend(routes.iter().cloned()),
                None => {
                    by_name.insert(name.clone(), vhosts.len());
                    vhosts.push(VirtualHost {
                        name,
                        domains: vec![h],
                        routes: routes.clone(),
                    });
                }
            }
        }
    }
    for v in &mut vhosts {
        // Routes of several VirtualServices are concatenated, catch-alls last (istiod's order).
        v.routes
            .sort_by_key(|r| r.matches.is_empty() || r.matches.iter().all(RouteMatch::is_catch_all));
    }
    vhosts
}

fn http_route(
    cx: &mut Cx<'_>,
    b: &Binding<'_>,
    server: &GatewayServer<'_>,
    j: usize,
    raw: &HttpRoute,
    registry: &Registry<'_>,
) -> Option<Route> {
    let r = b.vs;
    let field = format!("spec.http[{j}]");
    let mut matches = Vec::new();
    for (k, m) in raw.matches.iter().enumerate() {
        if !b.applies(cx, server, m.port, &m.gateways, &m.source_labels)
            || m.source_namespace
                .as_ref()
                .is_some_and(|ns| *ns != cx.bootstrap.namespace)
        {
            continue;
        }
        let mf = format!("{field}.match[{k}]");
        let mut compiled = RouteMatch {
            ignore_uri_case: m.ignore_uri_case.unwrap_or(false),
            ..Default::default()
        };
        compiled.uri = string_match(cx, r, &format!("{mf}.uri"), m.uri.as_ref());
        compiled.method = string_match(cx, r, &format!("{mf}.method"), m.method.as_ref());
        compiled.authority = string_match(cx, r, &format!("{mf}.authority"), m.authority.as_ref());
        compiled.scheme = string_match(cx, r, &format!("{mf}.scheme"), m.scheme.as_ref());
        for (list, out, name) in [
            (&m.headers, &mut compiled.headers, "headers"),
            (&m.without_headers, &mut compiled.without_headers, "withoutHeaders"),
            (&m.query_params, &mut compiled.query_params, "queryParams"),
        ] {
            for (key, sm) in list {
                let lowered = if name == "queryParams" {
                    key.clone()
                } else {
                    key.to_ascii_lowercase()
                };
                if let Some(c) = string_match(cx, r, &format!("{mf}.{name}.{key}"), Some(sm)) {
                    out.push((lowered, c));
                }
            }
        }
        if m.stat_prefix.is_some() {
            cx.not_enforced(r, &format!("{mf}.statPrefix"), "statPrefix");
        }
        matches.push(compiled);
    }
    if !raw.matches.is_empty() && matches.is_empty() {
        return None;
    }
    for (name, present) in [
        ("fault", raw.fault.is_some()),
        ("mirror", raw.mirror.is_some() || !raw.mirrors.is_empty()),
        ("mirrorPercentage", raw.mirror_percentage.is_some()),
        ("corsPolicy", raw.cors_policy.is_some()),
    ] {
        if present {
            cx.not_enforced(r, &format!("{field}.{name}"), name);
        }
    }
    let action = if let Some(redirect) = &raw.redirect {
        if redirect.derive_port.is_some() {
            cx.not_enforced(r, &format!("{field}.redirect.derivePort"), "derivePort");
        }
        let code = redirect.redirect_code.unwrap_or(301);
        if !matches!(code, 301 | 302 | 303 | 307 | 308) {
            cx.error(
                r,
                &format!("{field}.redirect.redirectCode"),
                format!("redirect code {code} is not a redirect"),
                "use 301, 302, 303, 307 or 308",
            );
        }
        let port = redirect
            .port
            .and_then(|p| port(cx, r, &format!("{field}.redirect.port"), Some(p)));
        RouteAction::Redirect(Redirect {
            scheme: redirect.scheme.clone(),
            authority: redirect.authority.clone(),
            port,
            path: redirect.uri.clone(),
            code: code as u16,
        })
    } else if !raw.route.is_empty() {
        RouteAction::Forward(http_destinations(cx, r, &field, &raw.route, server, registry))
    } else if raw.direct_response.is_some() || raw.delegate.is_some() {
        let what = if raw.delegate.is_some() {
            "delegate"
        } else {
            "directResponse"
        };
        cx.not_enforced(
            r,
            &format!("{field}.{what}"),
            &format!("{what} (this route is skipped)"),
        );
        return None;
    } else {
        cx.error(
            r,
            &field,
            "http route has neither route nor redirect",
            "add a route with a destination",
        );
        return None;
    };
    let timeout = duration(cx, r, &format!("{field}.timeout"), raw.timeout.as_ref()).filter(|d| !d.is_zero());
    let retry = match &raw.retries {
        None => RetryPolicy::istio_default(),
        Some(retries) => {
            let mut policy = RetryPolicy::istio_default();
            policy.attempts = match retries.attempts {
                Some(n) if n < 0 => {
                    cx.error(
                        r,
                        &format!("{field}.retries.attempts"),
                        "attempts cannot be negative",
                        "use 0 to disable retries",
                    );
                    0
                }
                Some(n) => n.min(100) as u32,
                None => policy.attempts,
            };
            policy.per_try_timeout = duration(
                cx,
                r,
                &format!("{field}.retries.perTryTimeout"),
                retries.per_try_timeout.as_ref(),
            );
            if let Some(on) = &retries.retry_on {
                policy.retry_on.clear();
                policy.retriable_status_codes.clear();
                for cond in on.split(',').map(str::trim).filter(|c| !c.is_empty()) {
                    match cond.parse::<u16>() {
                        Ok(code) => policy.retriable_status_codes.push(code),
                        Err(_) => policy.retry_on.push(cond.to_string()),
                    }
                }
                if !policy.retriable_status_codes.is_empty()
                    && !policy.retry_on.iter().any(|c| c == "retriable-status-codes")
                {
                    policy.retry_on.push("retriable-status-codes".into());
                }
            }
            if retries.retry_remote_localities.is_some() || retries.backoff.is_some() {
                cx.not_enforced(r, &format!("{field}.retries"), "retryRemoteLocalities and backoff");
            }
            policy
        }
    };
    let rewrite = raw.rewrite.as_ref().map(|rw| {
        if rw.uri_regex_rewrite.is_some() {
            cx.not_enforced(r, &format!("{field}.rewrite.uriRegexRewrite"), "uriRegexRewrite");
        }
        Rewrite {
            uri: rw.uri.clone(),
            authority: rw.authority.clone(),
        }
    });
    let (request_headers, response_headers) = header_ops(cx, r, &format!("{field}.headers"), raw.headers.as_ref());
    Some(Route {
        name: raw.name.clone(),
        matches,
        action,
        timeout,
        retry,
        rewrite,
        request_headers,
        response_headers,
        origin: r.id(),
    })
}

fn string_match(cx: &mut Cx<'_>, r: &Resource, field: &str, raw: Option<&StringMatch>) -> Option<StrMatch> {
    match StrMatch::compile(raw?) {
        Ok(m) => Some(m),
        Err(e) => {
            cx.error(
                r,
                field,
                e,
                "write e.g. `prefix: /politics`, `exact: GET` or `regex: /pol.*`",
            );
            None
        }
    }
}

/// Names a header operation may not touch: the message's framing and hop-by-hop fields (a
/// configured `content-length` would frame the body on a pooled connection, RFC 9112 §6), the
/// authority the gateway routed on, and pseudo-headers (istiod and Envoy refuse `:`-names and
/// `host` too).
const FRAMING_AND_HOP_BY_HOP: [&str; 9] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "host",
];

/// The refusal of a header operation's name, if it has one.
fn header_op_refusal(name: &str) -> Option<String> {
    if name.starts_with(':') {
        return Some(format!("header operation on the pseudo-header `{name}`"));
    }
    if FRAMING_AND_HOP_BY_HOP.iter().any(|n| n.eq_ignore_ascii_case(name)) {
        return Some(format!(
            "header operation on `{name}`, which frames the message or belongs to one hop; the gateway sets it"
        ));
    }
    if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
        return Some(format!("`{name}` is not a valid HTTP header name"));
    }
    None
}

/// The header operations at `field` (`...headers`), each name and value checked: a refused one
/// is an error and is left out.
fn header_ops(
    cx: &mut Cx<'_>,
    r: &Resource,
    field: &str,
    headers: Option<&crate::config::virtual_service::Headers>,
) -> (HeaderOps, HeaderOps) {
    let mut convert = |side: &str, ops: Option<&HeaderOperations>| -> HeaderOps {
        let Some(ops) = ops else {
            return HeaderOps::default();
        };
        let mut out = HeaderOps::default();
        let fix = "remove the operation: the gateway frames messages itself (use `rewrite.authority` for the host)";
        for (op, list, dest) in [("set", &ops.set, &mut out.set), ("add", &ops.add, &mut out.add)] {
            for (name, value) in list {
                let at = format!("{field}.{side}.{op}.{name}");
                if let Some(why) = header_op_refusal(name) {
                    cx.error(r, &at, why, fix);
                } else if http::HeaderValue::from_str(value).is_err() {
                    cx.error(
                        r,
                        &at,
                        "the value is not a valid HTTP header value",
                        "use visible ASCII, spaces and tabs; no line breaks",
                    );
                } else {
                    dest.push((name.to_ascii_lowercase(), value.clone()));
                }
            }
        }
        for (i, name) in ops.remove.iter().enumerate() {
            match header_op_refusal(name) {
                Some(why) => cx.error(r, &format!("{field}.{side}.remove[{i}]"), why, fix),
                None => out.remove.push(name.to_ascii_lowercase()),
            }
        }
        out
    };
    match headers {
        Some(h) => (
            convert("request", h.request.as_ref()),
            convert("response", h.response.as_ref()),
        ),
        None => (HeaderOps::default(), HeaderOps::default()),
    }
}

fn http_destinations(
    cx: &mut Cx<'_>,
    r: &Resource,
    field: &str,
    route: &[HttpRouteDestination],
    server: &GatewayServer<'_>,
    registry: &Registry<'_>,
) -> Vec<WeightedCluster> {
    let raw: Vec<(
        Option<&Destination>,
        Option<i64>,
        Option<&crate::config::virtual_service::Headers>,
    )> = route
        .iter()
        .map(|d| (d.destination.as_ref(), d.weight, d.headers.as_ref()))
        .collect();
    weighted(cx, r, &format!("{field}.route"), &raw, server, registry)
}

pub(super) fn tcp_destinations(
    cx: &mut Cx<'_>,
    r: &Resource,
    field: &str,
    route: &[RouteDestination],
    server: &GatewayServer<'_>,
    registry: &Registry<'_>,
) -> Vec<WeightedCluster> {
    let raw: Vec<_> = route.iter().map(|d| (d.destination.as_ref(), d.weight, None)).collect();
    weighted(cx, r, &format!("{field}.route"), &raw, server, registry)
}

type RawDestination<'a> = (
    Option<&'a Destination>,
    Option<i64>,
    Option<&'a crate::config::virtual_service::Headers>,
);

fn weighted(
    cx: &mut Cx<'_>,
    r: &Resource,
    field: &str,
    raw: &[RawDestination<'_>],
    server: &GatewayServer<'_>,
    registry: &Registry<'_>,
) -> Vec<WeightedCluster> {
    let mut out = Vec::new();
    let single = raw.len() == 1;
    let mut total = 0u64;
    for (i, (dest, weight, headers)) in raw.iter().enumerate() {
        let df = format!("{field}[{i}]");
        let weight = match weight {
            Some(w) if *w < 0 => {
                cx.error(
                    r,
                    &format!("{df}.weight"),
                    "weight cannot be negative",
                    "use weights from 0 to 100",
                );
                0
            }
            Some(w) if single && *w == 0 => 100,
            Some(w) => (*w).min(u32::MAX as i64) as u32,
            None if single => 100,
            None => 0,
        };
        total += u64::from(weight);
        let Some(cluster) = destination(cx, r, &format!("{df}.destination"), *dest, server, registry) else {
            continue;
        };
        let (request_headers, response_headers) = header_ops(cx, r, &format!("{df}.headers"), *headers);
        out.push(WeightedCluster {
            cluster,
            weight,
            request_headers,
            response_headers,
        });
    }
    if !raw.is_empty() && total == 0 {
        cx.error(
            r,
            field,
            "destination weights add up to 0",
            "give the destinations weights that add up to 100",
        );
    }
    out.retain(|w| w.weight > 0);
    out
}

/// A destination → its cluster name, reporting what istiod would drop or 503.
fn destination(
    cx: &mut Cx<'_>,
    r: &Resource,
    field: &str,
    dest: Option<&Destination>,
    server: &GatewayServer<'_>,
    registry: &Registry<'_>,
) -> Option<String> {
    let Some(host) = dest.and_then(|d| d.host.as_deref()).filter(|h| !h.is_empty()) else {
        cx.error(
            r,
            &format!("{field}.host"),
            "destination has no host",
            "set destination.host",
        );
        return None;
    };
    let dest = dest?;
    let fqdn = cx.fqdn(host, &r.namespace);
    let service = registry.service(&fqdn);
    let port = match dest.port.as_ref().and_then(|p| p.number) {
        Some(n) => port(cx, r, &format!("{field}.port.number"), Some(n))?,
        None => match service {
            Some(s) if s.ports.len() == 1 => s.ports[0].number,
            _ => server.port,
        },
    };
    if let Some(subset) = dest.subset.as_deref() {
        if !registry.subset_defined(&fqdn, subset) {
            cx.error(
                r,
                &format!("{field}.subset"),
                format!("subset `{subset}` of `{fqdn}` is not defined by any DestinationRule"),
                format!("add subset `{subset}` to a DestinationRule for host {fqdn}, or remove the subset"),
            );
        }
    }
    match service {
        None => cx.warn(r, &format!("{field}.host"), format!("no ServiceEntry defines `{fqdn}`; a gateway reaches only registered hosts, so these requests get 503 NC cluster_not_found")),
        Some(s) if !s.ports.iter().any(|p| p.number == port) => cx.warn(r, &format!("{field}.port"), format!("`{fqdn}` has no port {port} in its ServiceEntry; these requests get 503 NC cluster_not_found")),
        Some(_) => {}
    }
    let cluster_host = service.map(|s| s.host.as_str()).unwrap_or(&fqdn);
    Some(cluster_name(port, dest.subset.as_deref(), cluster_host))
}
