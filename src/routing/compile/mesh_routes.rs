//! The `mesh` half of each VirtualService: the routes sidecars take, in the seed to send egress
//! traffic to this gateway. The gateway does not serve them, but a typo there breaks the egress
//! path all the same, so their destinations are checked as `istioctl analyze` checks them
//! (IST0101 ReferencedResourceNotFound). Warnings only; nothing here goes into the snapshot.

use super::clusters::{cluster_name, Registry};
use super::{of_kind, Cx};
use crate::config::virtual_service::{Destination, VirtualServiceSpec};
use crate::config::{Diagnostic, Resource, Severity, Spec};

/// The reserved gateway name for every sidecar of the mesh.
const MESH: &str = "mesh";
const IST0101: &str = "istioctl analyze: IST0101 ReferencedResourceNotFound";

/// One http, tls or tcp route of a VirtualService, as far as this check needs it.
struct RawRoute<'a> {
    /// `spec.http[0]`.
    field: String,
    /// `gateways` of each match, in order.
    match_gateways: Vec<&'a [String]>,
    destinations: Vec<Option<&'a Destination>>,
}

fn routes(vs: &VirtualServiceSpec) -> Vec<RawRoute<'_>> {
    let mut out = Vec::new();
    for (j, r) in vs.http.iter().enumerate() {
        out.push(RawRoute {
            field: format!("spec.http[{j}]"),
            match_gateways: r.matches.iter().map(|m| m.gateways.as_slice()).collect(),
            destinations: r.route.iter().map(|d| d.destination.as_ref()).collect(),
        });
    }
    for (j, r) in vs.tls.iter().enumerate() {
        out.push(RawRoute {
            field: format!("spec.tls[{j}]"),
            match_gateways: r.matches.iter().map(|m| m.gateways.as_slice()).collect(),
            destinations: r.route.iter().map(|d| d.destination.as_ref()).collect(),
        });
    }
    for (j, r) in vs.tcp.iter().enumerate() {
        out.push(RawRoute {
            field: format!("spec.tcp[{j}]"),
            match_gateways: r.matches.iter().map(|m| m.gateways.as_slice()).collect(),
            destinations: r.route.iter().map(|d| d.destination.as_ref()).collect(),
        });
    }
    out
}

/// Warns about the destinations of the routes sidecars take that lead nowhere.
pub fn check(cx: &mut Cx<'_>, resources: &[&Resource], registry: &Registry<'_>) {
    for (r, vs) in of_kind(resources, |s| match s {
        Spec::VirtualService(vs) => Some(vs),
        _ => None,
    }) {
        // istiod gives a VirtualService to sidecars by its top-level `gateways` alone (none
        // means `mesh`); a match can narrow that list, never widen it.
        let for_sidecars = vs.gateways.is_empty() || vs.gateways.iter().any(|g| g == MESH);
        for route in routes(vs) {
            if !for_sidecars {
                unreachable_mesh_matches(cx, r, &route);
                continue;
            }
            let taken = route.match_gateways.is_empty()
                || route
                    .match_gateways
                    .iter()
                    .any(|gateways| gateways.is_empty() || gateways.iter().any(|g| g == MESH));
            if !taken {
                continue;
            }
            for (i, dest) in route.destinations.iter().enumerate() {
                if let Some(dest) = dest {
                    let field = format!("{}.route[{i}].destination", route.field);
                    check_destination(cx, r, &field, dest, registry);
                }
            }
        }
    }
}

/// A match naming `mesh` in a VirtualService whose `gateways` do not: no sidecar gets it.
fn unreachable_mesh_matches(cx: &mut Cx<'_>, r: &Resource, route: &RawRoute<'_>) {
    for (k, gateways) in route.match_gateways.iter().enumerate() {
        if let Some(i) = gateways.iter().position(|g| g == MESH) {
            let d = r
                .diagnostic(
                    Severity::Warning,
                    &format!("{}.match[{k}].gateways[{i}]", route.field),
                    "this match names `mesh`, but spec.gateways does not, so istiod gives this route to no sidecar",
                )
                .with_fix("add `mesh` to spec.gateways");
            warn(cx, d);
        }
    }
}

fn check_destination(cx: &mut Cx<'_>, r: &Resource, field: &str, dest: &Destination, registry: &Registry<'_>) {
    let Some(host) = dest.host.as_deref().filter(|h| !h.is_empty()) else {
        return;
    };
    let fqdn = cx.fqdn(host, &r.namespace);
    // A Kubernetes Service of the mesh is not in our registry (no Kubernetes API here): only
    // names outside the cluster domain can be told to be unknown.
    let in_mesh = fqdn.ends_with(&format!(".svc.{}", cx.bootstrap.domain_suffix));
    if registry.service(&fqdn).is_none() && !in_mesh {
        let d = r
            .diagnostic(
                Severity::Warning,
                &format!("{field}.host"),
                format!(
                    "sidecars route to `{fqdn}`, which no ServiceEntry defines and which is not a service of the mesh (`*.svc.{}`); they have no cluster for it and fail this traffic with NC ({IST0101})",
                    cx.bootstrap.domain_suffix
                ),
            )
            .with_fix("correct the host, or add a ServiceEntry for it");
        warn(cx, d);
    }
    let Some(subset) = dest.subset.as_deref() else {
        return;
    };
    if registry.subset_defined(&fqdn, subset) {
        return;
    }
    let cluster = dest
        .port
        .as_ref()
        .and_then(|p| p.number)
        .and_then(|n| u16::try_from(n).ok())
        .map(|port| format!(" `{}`", cluster_name(port, Some(subset), &fqdn)))
        .unwrap_or_default();
    let (defined, fix) = match registry.rule_for(&fqdn) {
        Some((rule, spec)) => {
            let names: Vec<String> = spec
                .subsets
                .iter()
                .filter_map(|s| s.name.as_deref())
                .map(|n| format!("`{n}`"))
                .collect();
            let defined = if names.is_empty() {
                format!(" ({} has no subsets)", rule.id())
            } else {
                format!(" ({} has {})", rule.id(), names.join(", "))
            };
            (
                defined,
                format!("use a subset {} defines, or add `{subset}` to it", rule.id()),
            )
        }
        None => (
            String::new(),
            format!("add a DestinationRule for {fqdn} with subset `{subset}`, or remove the subset"),
        ),
    };
    let d = r
        .diagnostic(
            Severity::Warning,
            &format!("{field}.subset"),
            format!(
                "sidecars route to subset `{subset}` of `{fqdn}`, which no DestinationRule defines{defined}; they have no cluster{cluster} and fail this traffic with NC ({IST0101})"
            ),
        )
        .with_fix(fix);
    warn(cx, d);
}

/// Adds `d` unless the gateway's own compile already reported this field (a route taken by
/// both sidecars and the gateway).
fn warn(cx: &mut Cx<'_>, d: Diagnostic) {
    let reported = cx
        .diagnostics
        .iter()
        .any(|e| e.file == d.file && e.resource == d.resource && e.field == d.field);
    if !reported {
        cx.diagnostics.push(d);
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{self, Bootstrap, Diagnostic, Severity};

    fn warnings(yaml: &str) -> Vec<Diagnostic> {
        let mut loaded = config::Loaded::default();
        config::load_str("t.yaml".into(), yaml, "default", &mut loaded);
        let snapshot = crate::routing::compile(&loaded, &Bootstrap::default()).unwrap();
        snapshot
            .diagnostics
            .into_iter()
            .filter(|d| d.severity == Severity::Warning)
            .collect()
    }

    const RULE: &str = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: egressgateway-for-cnn}\nspec:\n  host: istio-egressgateway.istio-system.svc.cluster.local\n  subsets: [{name: cnn}]\n---\n";

    fn vs(gateways: &str, match_gateways: &str, host: &str, subset: &str) -> String {
        format!(
            "{RULE}apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: cnn}}\nspec:\n  hosts: [edition.cnn.com]\n  gateways: {gateways}\n  tls:\n  - match: [{{gateways: {match_gateways}, port: 443, sniHosts: [edition.cnn.com]}}]\n    route: [{{destination: {{host: {host}, subset: {subset}, port: {{number: 443}}}}}}]\n"
        )
    }

    const GATEWAY_HOST: &str = "istio-egressgateway.istio-system.svc.cluster.local";

    #[test]
    fn the_seeds_mesh_route_is_clean() {
        assert_eq!(warnings(&vs("[mesh]", "[mesh]", GATEWAY_HOST, "cnn")), vec![]);
        // Without gateways a VirtualService is the mesh's; short names are in its namespace.
        assert_eq!(warnings(&vs("[]", "[]", GATEWAY_HOST, "cnn")), vec![]);
        let short = vs("[]", "[]", "istio-egressgateway", "cnn").replace(
            "metadata: {name: cnn}",
            "metadata: {name: cnn, namespace: istio-system}",
        );
        assert_eq!(warnings(&short), vec![]);
    }

    #[test]
    fn a_subset_typo_names_the_subsets_defined() {
        let w = warnings(&vs("[mesh]", "[mesh]", GATEWAY_HOST, "cnnx"));
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(w[0].field.as_deref(), Some("spec.tls[0].route[0].destination.subset"));
        assert_eq!(w[0].resource.as_deref(), Some("VirtualService/default/cnn"));
        assert!(
            w[0].message
                .contains("subset `cnnx` of `istio-egressgateway.istio-system.svc.cluster.local`"),
            "{}",
            w[0]
        );
        assert!(
            w[0].message
                .contains("(DestinationRule/default/egressgateway-for-cnn has `cnn`)"),
            "{}",
            w[0]
        );
        assert!(
            w[0].message
                .contains("`outbound|443|cnnx|istio-egressgateway.istio-system.svc.cluster.local`"),
            "{}",
            w[0]
        );
    }

    #[test]
    fn a_host_outside_the_mesh_needs_a_service_entry() {
        let w = warnings(&vs(
            "[mesh]",
            "[mesh]",
            "istio-egressgateway.istio-system.svc.cluster.lcoal",
            "cnn",
        ));
        let fields: Vec<_> = w.iter().map(|d| d.field.as_deref().unwrap()).collect();
        assert_eq!(
            fields,
            [
                "spec.tls[0].route[0].destination.host",
                "spec.tls[0].route[0].destination.subset"
            ]
        );
        // A misspelt mesh service name passes the host check, but not the subset's.
        let w = warnings(&vs(
            "[mesh]",
            "[mesh]",
            "istio-egresgateway.istio-system.svc.cluster.local",
            "cnn",
        ));
        let fields: Vec<_> = w.iter().map(|d| d.field.as_deref().unwrap()).collect();
        assert_eq!(fields, ["spec.tls[0].route[0].destination.subset"]);
    }

    #[test]
    fn routes_sidecars_never_take_are_not_checked_but_a_dead_mesh_match_is_named() {
        let gateway = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw}\nspec:\n  selector: {istio: egressgateway}\n  servers:\n  - port: {number: 443, name: tls, protocol: TLS}\n    hosts: [edition.cnn.com]\n    tls: {mode: PASSTHROUGH}\n---\n";
        // Only the gateway takes it: the gateway's own compile checks it (an error there).
        let yaml = format!("{gateway}{}", vs("[gw]", "[gw]", GATEWAY_HOST, "cnnx"));
        let mut loaded = config::Loaded::default();
        config::load_str("t.yaml".into(), &yaml, "default", &mut loaded);
        let errors = crate::routing::compile(&loaded, &Bootstrap::default())
            .unwrap_err()
            .diagnostics;
        assert_eq!(
            errors
                .iter()
                .filter(|d| d.field.as_deref() == Some("spec.tls[0].route[0].destination.subset"))
                .count(),
            1,
            "{errors:?}"
        );
        // `mesh` only in the match: istiod gives the VirtualService to no sidecar.
        let yaml = format!("{gateway}{}", vs("[gw]", "[mesh]", GATEWAY_HOST, "cnnx"));
        let w: Vec<Diagnostic> = warnings(&yaml)
            .into_iter()
            .filter(|d| d.resource.as_deref() == Some("VirtualService/default/cnn"))
            .collect();
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(w[0].field.as_deref(), Some("spec.tls[0].match[0].gateways[0]"));
    }
}
