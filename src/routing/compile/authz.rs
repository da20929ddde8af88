//! AuthorizationPolicy → the RBAC filters istiod builds for the gateway (issue 17;
//! `shared/reference/istio-authz-behavior.md`). Selection: policies in the root namespace and
//! the gateway's own namespace whose selector is among the gateway's labels. Anything egressd
//! cannot enforce in full (CUSTOM, JWT fields, unknown `when` keys) is an error, so the config
//! is refused rather than served open.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{of_kind, selects, Cx};
use crate::config::authorization_policy::{AuthorizationPolicySpec, Operation, Rule, Source};
use crate::config::{Resource, Spec};
use crate::routing::authz::{Attr, Authz, Cidr, Cond, Filter, Filters, PathPattern, Policy, StrSet, Values};

/// The root namespace's default (istiod's `meshConfig.rootNamespace`).
pub const ROOT_NAMESPACE: &str = "istio-system";
const DRY_RUN: &str = "istio.io/dry-run";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Action {
    Allow,
    Deny,
    Audit,
}

/// One compiled rule with where it came from, before the chains split.
struct Compiled {
    action: Action,
    dry_run: bool,
    policy: Policy,
}

/// What kinds of server the gateway has, for the warnings about rules that can never match.
pub struct Servers {
    /// Servers whose traffic is not HTTP (passthrough, tcp routes): an ALLOW rule with HTTP-only
    /// fields matches nothing there.
    pub tcp: bool,
    /// Passthrough servers: no client certificate reaches the gateway, so no principal.
    pub passthrough: bool,
}

pub fn build(cx: &mut Cx<'_>, resources: &[&Resource], servers: Servers) -> Authz {
    let registered = registered_hosts(resources);
    let mut compiled = Vec::new();
    for (r, spec) in of_kind(resources, |s| match s {
        Spec::AuthorizationPolicy(p) => Some(p),
        _ => None,
    }) {
        if !applies(cx, r, spec) {
            continue;
        }
        let action = match spec.action.as_deref().unwrap_or("ALLOW") {
            "ALLOW" => Action::Allow,
            "DENY" => Action::Deny,
            "AUDIT" => Action::Audit,
            "CUSTOM" => {
                cx.error(
                    r,
                    "spec.action",
                    "CUSTOM (external authorization) is not supported by egressd; serving without it would let every request through",
                    "use ALLOW or DENY policies, or keep istio-proxy for this gateway",
                );
                continue;
            }
            other => {
                cx.error(
                    r,
                    "spec.action",
                    format!("unknown action `{other}`"),
                    "use ALLOW, DENY or AUDIT",
                );
                continue;
            }
        };
        let dry_run = r
            .annotations
            .get(DRY_RUN)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let rules = spec.rules.as_deref().unwrap_or(&[]);
        if rules.is_empty() {
            // `spec: {}`: one rule that matches nothing (with ALLOW: deny all).
            compiled.push(Compiled {
                action,
                dry_run,
                policy: Policy {
                    name: policy_name(r, 0),
                    sources: Vec::new(),
                    operations: Vec::new(),
                    when: Vec::new(),
                    never: true,
                },
            });
        }
        for (i, rule) in rules.iter().enumerate() {
            let Some(rule) = rule else { continue };
            if let Some(policy) = rule_policy(cx, r, i, rule) {
                warn_never_matching(cx, r, i, &policy, action, &servers, &registered);
                if servers.tcp && action == Action::Allow && for_tcp(&policy, action).is_none() {
                    cx.warn(
                        r,
                        &format!("spec.rules[{i}]"),
                        "this ALLOW rule uses HTTP-only fields (hosts, methods, paths, request.headers), so on the gateway's TCP and passthrough servers it matches nothing (istiod drops it there); match them with connection.sni or ports",
                    );
                }
                compiled.push(Compiled {
                    action,
                    dry_run,
                    policy,
                });
            }
        }
    }
    Authz {
        http: filters(&compiled, false),
        tcp: filters(&compiled, true),
    }
}

/// The hosts ServiceEntries register (lower case; `*.x` wildcards kept).
fn registered_hosts(resources: &[&Resource]) -> Vec<String> {
    of_kind(resources, |s| match s {
        Spec::ServiceEntry(se) => Some(se),
        _ => None,
    })
    .into_iter()
    .flat_map(|(_, se)| se.hosts.iter().map(|h| h.to_ascii_lowercase()))
    .collect()
}

/// Warnings for rules that can never match what they name: principals where connections carry
/// none (passthrough servers), hosts no ServiceEntry serves (the gateway answers those 404 or
/// 503 whatever the policy says).
fn warn_never_matching(
    cx: &mut Cx<'_>,
    r: &Resource,
    i: usize,
    policy: &Policy,
    action: Action,
    servers: &Servers,
    registered: &[String],
) {
    let needs_principal = |conds: &Vec<Cond>| {
        conds
            .iter()
            .any(|c| !c.negate && matches!(c.attr, Attr::Principal | Attr::Namespace))
    };
    if servers.passthrough
        && action == Action::Allow
        && !policy.sources.is_empty()
        && policy.sources.iter().all(needs_principal)
    {
        cx.warn(
            r,
            &format!("spec.rules[{i}].from"),
            "this ALLOW rule needs a caller's principal, which TLS passthrough connections never carry (the gateway does not terminate them): on the passthrough servers it matches nothing",
        );
    }
    let served = |host: &str| {
        let host = host.split(':').next().unwrap_or(host).to_ascii_lowercase();
        registered.iter().any(|h| match h.strip_prefix("*.") {
            Some(suffix) => host.ends_with(&format!(".{suffix}")),
            None => *h == host,
        })
    };
    for (j, operation) in policy.operations.iter().enumerate() {
        for c in operation.iter().filter(|c| c.attr == Attr::Host && !c.negate) {
            let Values::Strings(set) = &c.values else { continue };
            let mut unserved: Vec<&String> = set.exact.iter().filter(|h| !served(h)).collect();
            unserved.sort();
            if !unserved.is_empty() {
                cx.warn(
                    r,
                    &format!("spec.rules[{i}].to[{j}].operation.hosts"),
                    format!(
                        "no ServiceEntry serves {}: the gateway routes no request there, whatever this rule says",
                        unserved.iter().map(|h| format!("`{h}`")).collect::<Vec<_>>().join(", ")
                    ),
                );
            }
        }
    }
}

/// Whether istiod would give this policy to the gateway workload.
fn applies(cx: &mut Cx<'_>, r: &Resource, spec: &AuthorizationPolicySpec) -> bool {
    if spec.target_ref.is_some() || spec.target_refs.as_ref().is_some_and(|t| !t.is_empty()) {
        cx.warn(
            r,
            "spec.targetRefs",
            "targetRef attaches a policy to a Gateway API Gateway; it does not select this classic gateway, so egressd (as istiod) does not apply it here",
        );
        return false;
    }
    let namespace_applies = r.namespace == ROOT_NAMESPACE || r.namespace == cx.bootstrap.namespace;
    if !namespace_applies {
        cx.info(
            r,
            "metadata.namespace",
            format!(
                "applies to workloads in `{}` only, not to the gateway in `{}`",
                r.namespace, cx.bootstrap.namespace
            ),
        );
        return false;
    }
    let selector = spec.selector.as_ref().map(|s| &s.match_labels);
    selector.is_none_or(|labels| selects(labels, &cx.bootstrap.labels))
}

fn policy_name(r: &Resource, rule: usize) -> Arc<str> {
    format!("ns[{}]-policy[{}]-rule[{rule}]", r.namespace, r.name).into()
}

fn rule_policy(cx: &mut Cx<'_>, r: &Resource, i: usize, rule: &Rule) -> Option<Policy> {
    let field = format!("spec.rules[{i}]");
    let mut ok = true;
    let mut sources = Vec::new();
    for (j, from) in rule.from.iter().enumerate() {
        let at = format!("{field}.from[{j}].source");
        match &from.source {
            Some(source) => sources.push(source_conds(cx, r, &at, source, &mut ok)),
            None => sources.push(Vec::new()),
        }
    }
    let mut operations = Vec::new();
    for (j, to) in rule.to.iter().enumerate() {
        let at = format!("{field}.to[{j}].operation");
        match &to.operation {
            Some(op) => operations.push(operation_conds(cx, r, &at, op, &mut ok)),
            None => operations.push(Vec::new()),
        }
    }
    let mut when = Vec::new();
    for (j, condition) in rule.when.iter().enumerate() {
        let at = format!("{field}.when[{j}]");
        let Some(attr) = when_attr(cx, r, &at, &condition.key) else {
            ok = false;
            continue;
        };
        if condition.values.as_ref().is_none_or(Vec::is_empty)
            && condition.not_values.as_ref().is_none_or(Vec::is_empty)
        {
            cx.error(
                r,
                &at,
                "a condition needs values or notValues",
                "add values or notValues",
            );
            ok = false;
            continue;
        }
        for (negate, list) in [(false, &condition.values), (true, &condition.not_values)] {
            if let Some(values) = list.as_ref().filter(|v| !v.is_empty()) {
                match cond(&attr, values, negate) {
                    Ok(c) => when.push(c),
                    Err(why) => {
                        cx.error(r, &at, why, "correct the value");
                        ok = false;
                    }
                }
            }
        }
    }
    ok.then(|| Policy {
        name: policy_name(r, i),
        sources,
        operations,
        when,
        never: false,
    })
}

fn source_conds(cx: &mut Cx<'_>, r: &Resource, at: &str, s: &Source, ok: &mut bool) -> Vec<Cond> {
    for (name, list) in [
        ("requestPrincipals", &s.request_principals),
        ("notRequestPrincipals", &s.not_request_principals),
    ] {
        if list.as_ref().is_some_and(|l| !l.is_empty()) {
            cx.error(
                r,
                &format!("{at}.{name}"),
                "request principals (JWT) are not supported by egressd; ignoring them would change who the rule matches",
                "remove the field, or keep istio-proxy for this gateway",
            );
            *ok = false;
        }
    }
    // Service accounts are principals `<trust domain>/ns/<ns>/sa/<sa>`.
    let accounts = |list: &Option<Vec<String>>| {
        list.as_ref().map(|l| {
            l.iter()
                .map(|sa| match sa.split_once('/') {
                    Some((ns, name)) => format!("*/ns/{ns}/sa/{name}"),
                    None => format!("*/sa/{sa}"),
                })
                .collect::<Vec<_>>()
        })
    };
    let service_accounts = accounts(&s.service_accounts);
    let not_service_accounts = accounts(&s.not_service_accounts);
    let fields = [
        ("principals", Attr::Principal, &s.principals, false),
        ("notPrincipals", Attr::Principal, &s.not_principals, true),
        ("serviceAccounts", Attr::Principal, &service_accounts, false),
        ("notServiceAccounts", Attr::Principal, &not_service_accounts, true),
        ("namespaces", Attr::Namespace, &s.namespaces, false),
        ("notNamespaces", Attr::Namespace, &s.not_namespaces, true),
        ("ipBlocks", Attr::PeerIp, &s.ip_blocks, false),
        ("notIpBlocks", Attr::PeerIp, &s.not_ip_blocks, true),
        ("remoteIpBlocks", Attr::RemoteIp, &s.remote_ip_blocks, false),
        ("notRemoteIpBlocks", Attr::RemoteIp, &s.not_remote_ip_blocks, true),
    ];
    conds_of(cx, r, at, &fields, ok)
}

fn operation_conds(cx: &mut Cx<'_>, r: &Resource, at: &str, op: &Operation, ok: &mut bool) -> Vec<Cond> {
    let fields = [
        ("hosts", Attr::Host, &op.hosts, false),
        ("notHosts", Attr::Host, &op.not_hosts, true),
        ("ports", Attr::DestinationPort, &op.ports, false),
        ("notPorts", Attr::DestinationPort, &op.not_ports, true),
        ("methods", Attr::Method, &op.methods, false),
        ("notMethods", Attr::Method, &op.not_methods, true),
        ("paths", Attr::Path, &op.paths, false),
        ("notPaths", Attr::Path, &op.not_paths, true),
    ];
    conds_of(cx, r, at, &fields, ok)
}

type Field<'a> = (&'static str, Attr, &'a Option<Vec<String>>, bool);

fn conds_of(cx: &mut Cx<'_>, r: &Resource, at: &str, fields: &[Field<'_>], ok: &mut bool) -> Vec<Cond> {
    let mut out = Vec::new();
    for (name, attr, list, negate) in fields {
        let Some(values) = list.as_ref().filter(|l| !l.is_empty()) else {
            continue;
        };
        match cond(attr, values, *negate) {
            Ok(c) => out.push(c),
            Err(why) => {
                cx.error(r, &format!("{at}.{name}"), why, "correct the value");
                *ok = false;
            }
        }
    }
    out
}

fn cond(attr: &Attr, values: &[String], negate: bool) -> Result<Cond, String> {
    let values = match attr {
        Attr::PeerIp | Attr::RemoteIp | Attr::DestinationIp => Values::Ips(
            values
                .iter()
                .map(|v| Cidr::parse(v).ok_or_else(|| format!("`{v}` is not an IP address or CIDR block")))
                .collect::<Result<_, _>>()?,
        ),
        Attr::DestinationPort => Values::Ports(
            values
                .iter()
                .map(|v| {
                    v.parse::<u16>()
                        .ok()
                        .filter(|p| *p > 0)
                        .ok_or_else(|| format!("`{v}` is not a port"))
                })
                .collect::<Result<_, _>>()?,
        ),
        Attr::Path => Values::Paths(
            values
                .iter()
                .map(|v| {
                    PathPattern::parse(v).ok_or_else(|| {
                        format!("`{v}` is not a path Istio accepts ({{**}} goes last, {{*}} fills a segment)")
                    })
                })
                .collect::<Result<_, _>>()?,
        ),
        Attr::Host => Values::Strings(StrSet::new(values, true)),
        _ => Values::Strings(StrSet::new(values, false)),
    };
    Ok(Cond {
        attr: attr.clone(),
        values,
        negate,
    })
}

/// The attribute of a `when` key; unknown and unsupported keys are errors.
fn when_attr(cx: &mut Cx<'_>, r: &Resource, at: &str, key: &str) -> Option<Attr> {
    let attr = match key {
        "source.ip" => Attr::PeerIp,
        "remote.ip" => Attr::RemoteIp,
        "source.namespace" => Attr::Namespace,
        "source.principal" => Attr::Principal,
        "destination.ip" => Attr::DestinationIp,
        "destination.port" => Attr::DestinationPort,
        "connection.sni" => Attr::Sni,
        _ => {
            if let Some(name) = key.strip_prefix("request.headers[").and_then(|k| k.strip_suffix(']')) {
                if http::HeaderName::from_bytes(name.as_bytes()).is_ok() {
                    return Some(Attr::Header(name.to_ascii_lowercase()));
                }
            }
            let why = if key.starts_with("request.auth.") {
                format!("`{key}` (JWT) is not supported by egressd; ignoring it would change who the rule matches")
            } else {
                format!("unknown condition key `{key}`")
            };
            cx.error(
                r,
                &format!("{at}.key"),
                why,
                "use source.ip, remote.ip, source.namespace, source.principal, destination.ip, destination.port, connection.sni or request.headers[NAME]",
            );
            return None;
        }
    };
    Some(attr)
}

/// The filters of one kind of chain. On TCP chains a rule's HTTP-only conditions make an
/// ALLOW rule match nothing and are dropped from DENY and AUDIT rules (istiod's translation).
fn filters(compiled: &[Compiled], tcp: bool) -> Filters {
    let filter = |action: Action| -> Option<Filter> {
        let mut enforced: BTreeMap<Arc<str>, Policy> = BTreeMap::new();
        let mut shadow: BTreeMap<Arc<str>, Policy> = BTreeMap::new();
        let mut any_enforced = false;
        let mut any_shadow = false;
        for c in compiled.iter().filter(|c| c.action == action) {
            if c.dry_run {
                any_shadow = true;
            } else {
                any_enforced = true;
            }
            let Some(policy) = (if tcp {
                for_tcp(&c.policy, action)
            } else {
                Some(c.policy.clone())
            }) else {
                continue;
            };
            let target = if c.dry_run { &mut shadow } else { &mut enforced };
            target.insert(policy.name.clone(), policy);
        }
        (any_enforced || any_shadow).then(|| Filter {
            enforced: any_enforced.then(|| enforced.into_values().collect()),
            shadow: any_shadow.then(|| shadow.into_values().collect()),
        })
    };
    Filters {
        audit: filter(Action::Audit),
        deny: filter(Action::Deny),
        allow: filter(Action::Allow),
    }
}

fn for_tcp(policy: &Policy, action: Action) -> Option<Policy> {
    let uses_http = policy
        .sources
        .iter()
        .chain(policy.operations.iter())
        .flatten()
        .chain(policy.when.iter())
        .any(|c| c.attr.http_only());
    if !uses_http {
        return Some(policy.clone());
    }
    if action == Action::Allow {
        return None;
    }
    let keep = |conds: &Vec<Cond>| {
        conds
            .iter()
            .filter(|c| !c.attr.http_only())
            .cloned()
            .collect::<Vec<_>>()
    };
    Some(Policy {
        name: policy.name.clone(),
        sources: policy.sources.iter().map(keep).collect(),
        operations: policy.operations.iter().map(keep).collect(),
        when: keep(&policy.when),
        never: policy.never,
    })
}
