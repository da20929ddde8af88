//! `egressd check`: the listeners, routes and clusters a config compiles to, as readable tables
//! (in the spirit of `istioctl proxy-config`), followed by every finding.

use std::fmt::Write;

use crate::config::{Diagnostic, Severity};
use crate::routing::http_match::{RouteMatch, StrMatch};
use crate::routing::snapshot::{
    ChainKind, Cluster, Discovery, HttpConnectionManager, ListenerKind, RouteAction, Snapshot, TcpProxy,
    UpstreamTlsMode, WeightedCluster,
};

/// Renders the snapshot as tables.
pub fn render(snapshot: &Snapshot) -> String {
    let mut out = String::new();
    let mut listeners = Table::new(["LISTENER", "ADDRESS", "SERVER PORT", "TYPE", "SERVES"]);
    let mut routes = Table::new([
        "ROUTE CONFIG",
        "VIRTUAL HOST",
        "DOMAINS",
        "MATCH",
        "ROUTE NAME",
        "ACTION",
    ]);
    let mut chains = Table::new(["LISTENER", "SNI", "CHAIN", "DESTINATION"]);
    for l in &snapshot.listeners {
        let (kind, serves) = match &l.kind {
            ListenerKind::Http(hcm) => {
                add_routes(&mut routes, hcm);
                ("HTTP", format!("routes {}", hcm.route_config.name))
            }
            ListenerKind::Tcp(tcp) => ("TCP", format!("tcp -> {}", destinations(&tcp.clusters))),
            ListenerKind::Tls(list) => {
                for chain in list {
                    let sni = if chain.server_names.is_empty() {
                        "*".to_string()
                    } else {
                        chain.server_names.join(",")
                    };
                    let (kind, dest) = match &chain.kind {
                        ChainKind::Passthrough(tcp) => ("passthrough", destinations(&tcp.clusters)),
                        ChainKind::AutoPassthrough => ("auto passthrough", "cluster named by the SNI".into()),
                        ChainKind::TerminateHttp { tls, http } => {
                            add_routes(&mut routes, http);
                            (
                                mode_name(tls.mode, "http"),
                                format!("routes {}", http.route_config.name),
                            )
                        }
                        ChainKind::TerminateTcp { tls, tcp } => (mode_name(tls.mode, "tcp"), tcp_dest(tcp)),
                    };
                    chains.row([l.name.clone(), sni, kind.to_string(), dest]);
                }
                (
                    "TLS",
                    format!("{} filter chain{}", list.len(), if list.len() == 1 { "" } else { "s" }),
                )
            }
        };
        listeners.row([
            l.name.clone(),
            l.address.to_string(),
            l.server_port.to_string(),
            kind.into(),
            serves,
        ]);
    }
    let mut clusters = Table::new(["CLUSTER", "TYPE", "ENDPOINTS", "PROTOCOL", "TLS ORIGINATION"]);
    for c in snapshot.clusters.values() {
        add_cluster(&mut clusters, c);
    }
    section(&mut out, "LISTENERS", &listeners);
    section(&mut out, "ROUTES", &routes);
    section(&mut out, "TLS FILTER CHAINS", &chains);
    section(&mut out, "CLUSTERS", &clusters);
    out.push_str(&super::authz::render(snapshot));
    out.push_str(&render_diagnostics(&snapshot.diagnostics));
    out
}

/// Findings grouped by severity, errors first.
pub fn render_diagnostics(diagnostics: &[Diagnostic]) -> String {
    let mut out = String::new();
    for (severity, title) in [
        (Severity::Error, "ERRORS"),
        (Severity::Warning, "WARNINGS"),
        (Severity::NotEnforced, "ACCEPTED, NOT ENFORCED"),
        (Severity::Info, "SKIPPED"),
    ] {
        let list: Vec<&Diagnostic> = diagnostics.iter().filter(|d| d.severity == severity).collect();
        if list.is_empty() {
            continue;
        }
        let _ = writeln!(out, "{title} ({})", list.len());
        for d in list {
            let _ = writeln!(out, "{d}");
        }
        out.push('\n');
    }
    out
}

fn mode_name(mode: crate::routing::snapshot::ServerTlsMode, inner: &str) -> &'static str {
    use crate::routing::snapshot::ServerTlsMode::*;
    match (mode, inner) {
        (Simple, "http") => "terminate SIMPLE, http",
        (Mutual, "http") => "terminate MUTUAL, http",
        (IstioMutual, "http") => "terminate ISTIO_MUTUAL, http",
        (Simple, _) => "terminate SIMPLE, tcp",
        (Mutual, _) => "terminate MUTUAL, tcp",
        (IstioMutual, _) => "terminate ISTIO_MUTUAL, tcp",
    }
}

fn tcp_dest(tcp: &TcpProxy) -> String {
    destinations(&tcp.clusters)
}

fn destinations(clusters: &[WeightedCluster]) -> String {
    if clusters.len() == 1 {
        return clusters[0].cluster.clone();
    }
    clusters
        .iter()
        .map(|w| format!("{} ({}%)", w.cluster, w.weight))
        .collect::<Vec<_>>()
        .join(", ")
}

fn add_routes(table: &mut Table, hcm: &HttpConnectionManager) {
    let rc = &hcm.route_config;
    if rc.virtual_hosts.is_empty() {
        table.row([
            rc.name.clone(),
            "-".into(),
            "-".into(),
            "-".into(),
            "-".into(),
            "404 (no VirtualService bound)".into(),
        ]);
    }
    for vh in &rc.virtual_hosts {
        if vh.routes.is_empty() {
            table.row([
                rc.name.clone(),
                vh.name.clone(),
                vh.domains.join(","),
                "-".into(),
                "-".into(),
                "404 (no route)".into(),
            ]);
        }
        for r in &vh.routes {
            let action = match &r.action {
                RouteAction::Forward(w) => destinations(w),
                RouteAction::Redirect(re) => {
                    format!("redirect {} {}", re.code, re.path.as_deref().unwrap_or(""))
                }
            };
            let matches = if r.matches.is_empty() {
                "/*".to_string()
            } else {
                r.matches.iter().map(describe_match).collect::<Vec<_>>().join(" | ")
            };
            table.row([
                rc.name.clone(),
                vh.name.clone(),
                vh.domains.join(","),
                matches,
                r.name.clone().unwrap_or_else(|| "-".into()),
                action,
            ]);
        }
    }
}

fn describe_match(m: &RouteMatch) -> String {
    let s = |m: &StrMatch| match m {
        StrMatch::Exact(e) => e.clone(),
        StrMatch::Prefix(p) => format!("{p}*"),
        StrMatch::Regex(r) => format!("~{}", r.as_str()),
    };
    let mut parts = vec![m.uri.as_ref().map(s).unwrap_or_else(|| "/*".into())];
    if let Some(method) = &m.method {
        parts.push(format!("method={}", s(method)));
    }
    if let Some(a) = &m.authority {
        parts.push(format!("authority={}", s(a)));
    }
    for (name, v) in &m.headers {
        parts.push(format!("{name}={}", s(v)));
    }
    parts.join(" ")
}

fn add_cluster(table: &mut Table, c: &Cluster) {
    let (kind, endpoints) = match &c.discovery {
        Discovery::StrictDns { targets } => (
            "STRICT_DNS",
            targets
                .iter()
                .map(|t| format!("{}:{}", t.host, t.port))
                .collect::<Vec<_>>()
                .join(","),
        ),
        Discovery::LogicalDns { target } => ("LOGICAL_DNS", format!("{}:{}", target.host, target.port)),
        Discovery::Static { endpoints } => (
            "STATIC",
            endpoints
                .iter()
                .map(|e| e.address.to_string())
                .collect::<Vec<_>>()
                .join(","),
        ),
        Discovery::Eds => ("EDS", "(none here)".into()),
    };
    let tls = match &c.tls {
        None => "-".to_string(),
        Some(t) => {
            let mode = match t.mode {
                UpstreamTlsMode::Simple => "SIMPLE",
                UpstreamTlsMode::Mutual => "MUTUAL",
                UpstreamTlsMode::IstioMutual => "ISTIO_MUTUAL",
            };
            match &t.sni {
                Some(sni) => format!("{mode} sni={sni}"),
                None => mode.to_string(),
            }
        }
    };
    let protocol = match c.protocol {
        crate::routing::snapshot::UpstreamProtocol::Http1 => "http/1.1",
        crate::routing::snapshot::UpstreamProtocol::Http2 => "h2",
        crate::routing::snapshot::UpstreamProtocol::Tcp => "tcp",
    };
    table.row([c.name.clone(), kind.into(), endpoints, protocol.into(), tls]);
}

fn section(out: &mut String, title: &str, table: &Table) {
    let _ = writeln!(out, "{title}");
    if table.rows.is_empty() {
        out.push_str("(none)\n\n");
        return;
    }
    out.push_str(&table.render());
    out.push('\n');
}

/// Left-aligned columns separated by two spaces, like istioctl.
struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new<const N: usize>(header: [&str; N]) -> Self {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    fn row<const N: usize>(&mut self, cells: [String; N]) {
        self.rows.push(cells.into());
    }

    fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    let _ = write!(line, "{cell:<width$}  ", width = widths[i]);
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}
