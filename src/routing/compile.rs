//! Raw Istio resources + bootstrap → one `Snapshot`, collecting every error at once.
//!
//! Follows istiod's gateway semantics (see `shared/reference/istio-egress-behavior.md` §2, §5,
//! §7), and reports as errors the combinations istiod silently drops. The `mesh` routes, which
//! sidecars take and the gateway does not serve, are only checked (warnings).

mod authz;
mod clusters;
mod listeners;
mod mesh_routes;
mod routes;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::config::{Bootstrap, Diagnostic, Loaded, Resource, Severity, Spec};

use super::snapshot::Snapshot;

/// The config could not be compiled; `diagnostics` holds every finding, errors first.
#[derive(Debug)]
pub struct CompileError {
    pub diagnostics: Vec<Diagnostic>,
}

impl CompileError {
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| d.is_error())
    }
}

impl fmt::Display for CompileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.errors().count();
        writeln!(f, "{count} error{} in the config:", if count == 1 { "" } else { "s" })?;
        for d in self.errors() {
            writeln!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for CompileError {}

/// Compiles the loaded resources. Load diagnostics are carried over; any error fails the whole
/// compile so that a broken config never replaces a good one.
pub fn compile(loaded: &Loaded, bootstrap: &Bootstrap) -> Result<Snapshot, CompileError> {
    let mut cx = Cx {
        bootstrap,
        diagnostics: loaded.diagnostics.clone(),
    };
    let resources: Vec<&Resource> = loaded.resources.iter().collect();
    check_duplicate_names(&mut cx, &resources);
    let registry = clusters::Registry::build(&mut cx, &resources);
    let clusters = clusters::build(&mut cx, &registry);
    let listeners = listeners::build(&mut cx, &resources, &registry);
    mesh_routes::check(&mut cx, &resources, &registry);
    let tcp_servers = listeners.iter().any(|l| match &l.kind {
        super::snapshot::ListenerKind::Http(_) => false,
        super::snapshot::ListenerKind::Tcp(_) => true,
        super::snapshot::ListenerKind::Tls(chains) => chains
            .iter()
            .any(|c| !matches!(c.kind, super::snapshot::ChainKind::TerminateHttp { .. })),
    });
    let passthrough = listeners.iter().any(|l| match &l.kind {
        super::snapshot::ListenerKind::Tls(chains) => chains.iter().any(|c| {
            matches!(
                c.kind,
                super::snapshot::ChainKind::Passthrough(_) | super::snapshot::ChainKind::AutoPassthrough
            )
        }),
        _ => false,
    });
    let authz = authz::build(
        &mut cx,
        &resources,
        authz::Servers {
            tcp: tcp_servers,
            passthrough,
        },
    );

    let mut diagnostics = cx.diagnostics;
    diagnostics.sort_by(|a, b| (a.severity, &a.file, a.line).cmp(&(b.severity, &b.file, b.line)));
    if diagnostics.iter().any(Diagnostic::is_error) {
        return Err(CompileError { diagnostics });
    }
    Ok(Snapshot {
        listeners,
        clusters,
        authz,
        diagnostics,
    })
}

/// Compile context: the bootstrap and the findings so far.
pub(crate) struct Cx<'a> {
    pub bootstrap: &'a Bootstrap,
    pub diagnostics: Vec<Diagnostic>,
}

impl Cx<'_> {
    pub fn error(&mut self, r: &Resource, field: &str, message: impl Into<String>, fix: impl Into<String>) {
        let d = r.diagnostic(Severity::Error, field, message).with_fix(fix);
        self.diagnostics.push(d);
    }

    pub fn warn(&mut self, r: &Resource, field: &str, message: impl Into<String>) {
        self.diagnostics.push(r.diagnostic(Severity::Warning, field, message));
    }

    pub fn info(&mut self, r: &Resource, field: &str, message: impl Into<String>) {
        self.diagnostics.push(r.diagnostic(Severity::Info, field, message));
    }

    /// A field that is parsed and shown but that the data plane does not act on yet.
    pub fn not_enforced(&mut self, r: &Resource, field: &str, what: &str) {
        self.diagnostics.push(r.diagnostic(
            Severity::NotEnforced,
            field,
            format!("{what} is accepted but not enforced yet"),
        ));
    }

    /// Turns a host as written in a resource of `namespace` into an FQDN: short names such as
    /// `reviews` become `reviews.<namespace>.svc.cluster.local`, as istiod resolves them.
    pub fn fqdn(&self, host: &str, namespace: &str) -> String {
        let host = host.to_ascii_lowercase();
        if host.contains('.') || host.starts_with('*') {
            host
        } else {
            format!("{host}.{namespace}.svc.{}", self.bootstrap.domain_suffix)
        }
    }
}

fn check_duplicate_names(cx: &mut Cx<'_>, resources: &[&Resource]) {
    let mut seen = BTreeSet::new();
    for r in resources {
        if !seen.insert(r.id()) {
            cx.error(
                r,
                "metadata.name",
                "a resource with this kind, namespace and name is defined twice; the later one would replace the earlier in Kubernetes",
                "rename one of them or remove the duplicate",
            );
        }
    }
}

/// Resources of one kind, in load order.
pub(crate) fn of_kind<'a, T>(
    resources: &'a [&'a Resource],
    pick: impl Fn(&'a Spec) -> Option<&'a T>,
) -> Vec<(&'a Resource, &'a T)> {
    resources
        .iter()
        .filter_map(|r| pick(&r.spec).map(|s| (*r, s)))
        .collect()
}

/// Parses an Istio duration field, reporting a bad one.
pub(crate) fn duration(
    cx: &mut Cx<'_>,
    r: &Resource,
    field: &str,
    value: Option<&String>,
) -> Option<std::time::Duration> {
    let text = value?;
    match crate::config::duration::parse(text) {
        Some(d) => Some(d),
        None => {
            cx.error(
                r,
                field,
                format!("invalid duration `{text}`"),
                "write durations like `10s` or `250ms`",
            );
            None
        }
    }
}

/// Checks a port number from the YAML.
pub(crate) fn port(cx: &mut Cx<'_>, r: &Resource, field: &str, value: Option<u32>) -> Option<u16> {
    match value {
        Some(n) if (1..=65535).contains(&n) => Some(n as u16),
        Some(n) => {
            cx.error(
                r,
                field,
                format!("port {n} is out of range"),
                "use a port between 1 and 65535",
            );
            None
        }
        None => {
            cx.error(r, field, "port number is missing", "set the port number");
            None
        }
    }
}

/// Label selector semantics: every selector label must be on the workload.
pub(crate) fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[cfg(test)]
mod tests;
