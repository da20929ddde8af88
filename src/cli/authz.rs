//! `egressd check`'s view of AuthorizationPolicy (issue 17): the policies that apply to the
//! gateway's HTTP and TCP servers with their rules in plain words, and `--explain`, the decision
//! for one request or connection, computed by the data plane's own evaluation without traffic.

use std::fmt::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use crate::cli::CheckArgs;
use crate::config::Bootstrap;
use crate::routing::authz::{
    Attr, Attributes, Cond, Decision, Filter, Filters, HttpAttributes, PathPattern, Policy, Tally, Values,
};
use crate::routing::snapshot::{ChainKind, ListenerKind, Snapshot};

/// The AUTHORIZATION section: one line per rule, per kind of server.
pub fn render(snapshot: &Snapshot) -> String {
    let mut out = String::new();
    if snapshot.authz.is_empty() {
        return out;
    }
    let _ = writeln!(out, "AUTHORIZATION");
    let (http, tcp) = servers(snapshot);
    for (kind, filters, listeners) in [("HTTP", &snapshot.authz.http, http), ("TCP", &snapshot.authz.tcp, tcp)] {
        if listeners.is_empty() {
            continue;
        }
        let _ = writeln!(out, "{kind} servers ({}):", listeners.join(", "));
        for (action, filter) in [
            ("AUDIT", &filters.audit),
            ("DENY", &filters.deny),
            ("ALLOW", &filters.allow),
        ] {
            let Some(filter) = filter else { continue };
            write_filter(&mut out, action, filter);
        }
    }
    out.push('\n');
    out
}

/// Listener names serving HTTP (plain, or terminated TLS with HTTP routes) and TCP (everything
/// else).
fn servers(snapshot: &Snapshot) -> (Vec<String>, Vec<String>) {
    let (mut http, mut tcp) = (Vec::new(), Vec::new());
    for l in &snapshot.listeners {
        match &l.kind {
            ListenerKind::Http(_) => http.push(l.name.clone()),
            ListenerKind::Tcp(_) => tcp.push(l.name.clone()),
            ListenerKind::Tls(chains) => {
                let list = if chains.iter().any(|c| matches!(c.kind, ChainKind::TerminateHttp { .. })) {
                    &mut http
                } else {
                    &mut tcp
                };
                list.push(l.name.clone());
            }
        }
    }
    (http, tcp)
}

fn write_filter(out: &mut String, action: &str, filter: &Filter) {
    for (dry, policies) in [("", &filter.enforced), (" (dry-run)", &filter.shadow)] {
        let Some(policies) = policies else { continue };
        if policies.is_empty() && dry.is_empty() && action == "ALLOW" {
            let _ = writeln!(
                out,
                "  ALLOW: no rule applies to this kind of server: nothing is allowed"
            );
        }
        for p in policies {
            let _ = writeln!(out, "  {action}{dry} {}: {}", p.name, rule_words(p));
        }
    }
}

/// A rule in plain words: `from ... to ... when ...`, or what it matches.
pub fn rule_words(p: &Policy) -> String {
    if p.never {
        return "matches nothing (spec: {})".into();
    }
    let group = |entries: &Vec<Vec<Cond>>| {
        entries
            .iter()
            .map(|conds| match conds.is_empty() {
                true => "anything".to_string(),
                false => conds.iter().map(cond_words).collect::<Vec<_>>().join(" and "),
            })
            .collect::<Vec<_>>()
            .join(" or ")
    };
    let mut parts = Vec::new();
    if !p.sources.is_empty() {
        parts.push(format!("from {}", group(&p.sources)));
    }
    if !p.operations.is_empty() {
        parts.push(format!("to {}", group(&p.operations)));
    }
    if !p.when.is_empty() {
        parts.push(format!(
            "when {}",
            p.when.iter().map(cond_words).collect::<Vec<_>>().join(" and ")
        ));
    }
    if parts.is_empty() {
        "matches everything".into()
    } else {
        parts.join(", ")
    }
}

fn cond_words(c: &Cond) -> String {
    let attr = match &c.attr {
        Attr::Principal => "principal".to_string(),
        Attr::Namespace => "namespace".into(),
        Attr::PeerIp => "source ip".into(),
        Attr::RemoteIp => "remote ip".into(),
        Attr::DestinationIp => "destination ip".into(),
        Attr::DestinationPort => "port".into(),
        Attr::Sni => "sni".into(),
        Attr::Host => "host".into(),
        Attr::Method => "method".into(),
        Attr::Path => "path".into(),
        Attr::Header(name) => format!("header {name}"),
    };
    let values: Vec<String> = match &c.values {
        Values::Strings(set) => {
            let mut v: Vec<String> = set.exact.iter().cloned().collect();
            v.sort();
            v.extend(set.prefixes.iter().map(|p| format!("{p}*")));
            v.extend(set.suffixes.iter().map(|s| format!("*{s}")));
            if set.any {
                v.push("*".into());
            }
            v
        }
        Values::Ips(blocks) => blocks.iter().map(|b| format!("{}/{}", b.addr, b.prefix)).collect(),
        Values::Ports(ports) => ports.iter().map(u16::to_string).collect(),
        Values::Paths(paths) => paths
            .iter()
            .map(|p| match p {
                PathPattern::Exact(s) => s.clone(),
                PathPattern::Prefix(s) => format!("{s}*"),
                PathPattern::Suffix(s) => format!("*{s}"),
                PathPattern::Any => "*".into(),
                PathPattern::Template(_) => "(template)".into(),
            })
            .collect(),
    };
    let not = if c.negate { "not " } else { "" };
    format!("{attr} {not}in [{}]", values.join(", "))
}

/// Counts nothing: `--explain` only looks.
struct NoTally;

impl Tally for NoTally {
    fn allowed(&self) {}
    fn denied(&self) {}
    fn shadow(&self, _: bool, _: bool) {}
}

/// A request or connection to explain: `check --explain`'s flags, the admin API's parameters.
#[derive(Debug, Clone, Default)]
pub struct ExplainQuery {
    pub principal: Option<String>,
    pub sni: Option<String>,
    /// The Gateway server port.
    pub port: Option<u16>,
    pub host: Option<String>,
    pub method: Option<String>,
    pub path: Option<String>,
    pub source_ip: Option<IpAddr>,
}

impl From<&CheckArgs> for ExplainQuery {
    fn from(a: &CheckArgs) -> Self {
        ExplainQuery {
            principal: a.principal.clone(),
            sni: a.sni.clone(),
            port: a.port,
            host: a.host.clone(),
            method: a.method.clone(),
            path: a.path.clone(),
            source_ip: a.source_ip,
        }
    }
}

/// The decision for the request or connection `args` describes, as text.
pub fn explain(snapshot: &Snapshot, bootstrap: &Bootstrap, args: &ExplainQuery) -> Result<String, String> {
    let server_port = args
        .port
        .ok_or("--explain needs --port (the Gateway server port, e.g. 443)")?;
    let bound = bootstrap.port_mapping.get(&server_port).copied().unwrap_or(server_port);
    let listener = snapshot
        .listeners
        .iter()
        .find(|l| l.server_port == server_port)
        .ok_or_else(|| format!("no Gateway server listens on port {server_port}"))?;
    let http_chain = match &listener.kind {
        ListenerKind::Http(_) => true,
        ListenerKind::Tcp(_) => false,
        ListenerKind::Tls(chains) => {
            let sni = args.sni.as_deref().unwrap_or("");
            let chain = listener
                .sni_index
                .find(sni)
                .and_then(|i| chains.get(i))
                .ok_or_else(|| {
                    format!(
                        "no filter chain of {} serves SNI `{sni}` (the connection is refused before any policy)",
                        listener.name
                    )
                })?;
            matches!(chain.kind, ChainKind::TerminateHttp { .. })
        }
    };
    let principal = args
        .principal
        .as_deref()
        .map(|p| p.strip_prefix("spiffe://").unwrap_or(p));
    let headers = http::HeaderMap::new();
    let authority = args.host.clone().or_else(|| args.sni.clone()).unwrap_or_default();
    let path = args.path.clone().unwrap_or_else(|| "/".into());
    let method = args.method.clone().unwrap_or_else(|| "GET".into());
    let attributes = Attributes {
        principal,
        peer: args.source_ip.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        local: SocketAddr::new(bootstrap.bind_address, bound),
        sni: args.sni.as_deref(),
        http: http_chain.then(|| HttpAttributes {
            authority: &authority,
            method: &method,
            path: path.split('?').next().unwrap_or("/"),
            headers: &headers,
        }),
    };
    let filters: &Filters = if http_chain {
        &snapshot.authz.http
    } else {
        &snapshot.authz.tcp
    };
    let decision = filters.evaluate(&attributes, &NoTally);
    let mut out = String::new();
    let kind = if http_chain { "HTTP" } else { "TCP" };
    let _ = writeln!(
        out,
        "{kind} server port {server_port} (listener {}, port {bound})",
        listener.name
    );
    match decision {
        Decision::Allow if filters.is_empty() => {
            let _ = writeln!(out, "ALLOW: no AuthorizationPolicy applies to the gateway");
        }
        Decision::Allow => {
            let by = filters
                .allow
                .as_ref()
                .and_then(|f| f.enforced.as_ref())
                .and_then(|policies| policies.iter().find(|p| p.matches(&attributes)));
            match by {
                Some(p) => {
                    let _ = writeln!(out, "ALLOW by {}: {}", p.name, rule_words(p));
                }
                None => {
                    let _ = writeln!(out, "ALLOW: no DENY policy matched and no ALLOW policy applies");
                }
            }
        }
        Decision::Deny(Some(name)) => {
            let rule = filters
                .deny
                .as_ref()
                .and_then(|f| f.enforced.as_ref())
                .and_then(|policies| policies.iter().find(|p| p.name == name))
                .map(rule_words)
                .unwrap_or_default();
            let _ = writeln!(out, "DENY by {name}: {rule}");
        }
        Decision::Deny(None) => {
            let _ = writeln!(
                out,
                "DENY: no ALLOW policy matched (rbac_access_denied_matched_policy[none])"
            );
        }
    }
    Ok(out)
}
