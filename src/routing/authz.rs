//! Compiled AuthorizationPolicy (issue 17): the RBAC filters istiod would give the gateway, one
//! set for HTTP chains and one for TCP chains, and their evaluation, as Envoy's RBAC filters do
//! it: an AUDIT filter, then DENY, then ALLOW; each policy is one rule, named
//! `ns[NS]-policy[NAME]-rule[I]`; dry-run policies are shadow rules that only count.
//! Everything is decided on compiled matchers (hash sets, prefixes, CIDRs): no string is built
//! and no regex runs per request.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::HeaderMap;
use serde::Serialize;

/// The filters for both kinds of chain.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Authz {
    pub http: Filters,
    pub tcp: Filters,
}

impl Authz {
    pub fn is_empty(&self) -> bool {
        self.http.is_empty() && self.tcp.is_empty()
    }
}

/// The RBAC filters of one chain, in the order they run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Filters {
    pub audit: Option<Filter>,
    pub deny: Option<Filter>,
    pub allow: Option<Filter>,
}

impl Filters {
    pub fn is_empty(&self) -> bool {
        self.audit.is_none() && self.deny.is_none() && self.allow.is_none()
    }
}

/// One RBAC filter: its enforced policies (`None` when all of its policies are dry-run, so it
/// enforces and counts nothing) and its shadow (dry-run) policies. Policies are sorted by name,
/// as Envoy keeps them, so the first match reported is Envoy's.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Filter {
    pub enforced: Option<Vec<Policy>>,
    pub shadow: Option<Vec<Policy>>,
}

/// One rule of one AuthorizationPolicy.
#[derive(Debug, Clone, Serialize)]
pub struct Policy {
    /// `ns[NS]-policy[NAME]-rule[I]`.
    pub name: Arc<str>,
    /// `from` entries, OR'ed; each an AND of conditions. Empty: any source.
    pub sources: Vec<Vec<Cond>>,
    /// `to` entries, OR'ed. Empty: any operation.
    pub operations: Vec<Vec<Cond>>,
    /// `when` conditions, AND'ed.
    pub when: Vec<Cond>,
    /// `spec: {}`: a rule that matches nothing.
    pub never: bool,
}

/// One condition: an attribute, its accepted values (OR'ed), negated for `not*` fields.
#[derive(Debug, Clone, Serialize)]
pub struct Cond {
    pub attr: Attr,
    pub values: Values,
    pub negate: bool,
}

/// What a condition looks at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Attr {
    /// The peer certificate's SPIFFE id, without `spiffe://`.
    Principal,
    /// The namespace in the principal (`.../ns/<ns>/...`).
    Namespace,
    /// The peer address of the connection.
    PeerIp,
    /// The original client (the peer, at a gateway that trusts no hops).
    RemoteIp,
    /// The address the connection arrived on.
    DestinationIp,
    /// The port the connection arrived on (the listening port, as Envoy's `destination_port`).
    DestinationPort,
    /// The TLS server name the chain matched.
    Sni,
    /// `:authority`, port included, compared without case (HTTP only).
    Host,
    /// `:method` (HTTP only).
    Method,
    /// The path without its query (HTTP only).
    Path,
    /// A request header (HTTP only).
    Header(String),
}

impl Attr {
    /// Fields only an HTTP request has: on a TCP chain an ALLOW rule using them never matches
    /// and a DENY or AUDIT rule drops them, as istiod builds it.
    pub fn http_only(&self) -> bool {
        matches!(self, Attr::Host | Attr::Method | Attr::Path | Attr::Header(_))
    }
}

#[derive(Debug, Clone, Serialize)]
pub enum Values {
    Strings(StrSet),
    Ips(Vec<Cidr>),
    Ports(Vec<u16>),
    Paths(Vec<PathPattern>),
}

/// Istio's string forms: exact, `prefix*`, `*suffix`, `*` (present and not empty).
#[derive(Debug, Clone, Default, Serialize)]
pub struct StrSet {
    pub exact: HashSet<String>,
    pub prefixes: Vec<String>,
    pub suffixes: Vec<String>,
    pub any: bool,
    /// Hosts compare without case: the set holds lower-case forms.
    pub ignore_case: bool,
}

impl StrSet {
    pub fn new(values: &[String], ignore_case: bool) -> StrSet {
        let mut set = StrSet {
            ignore_case,
            ..StrSet::default()
        };
        for v in values {
            let v = if ignore_case { v.to_ascii_lowercase() } else { v.clone() };
            if v == "*" {
                set.any = true;
            } else if let Some(prefix) = v.strip_suffix('*') {
                set.prefixes.push(prefix.to_string());
            } else if let Some(suffix) = v.strip_prefix('*') {
                set.suffixes.push(suffix.to_string());
            } else {
                set.exact.insert(v);
            }
        }
        set
    }

    pub fn matches(&self, value: &str) -> bool {
        if self.any && !value.is_empty() {
            return true;
        }
        let lowered;
        let value = if self.ignore_case && value.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = value.to_ascii_lowercase();
            lowered.as_str()
        } else {
            value
        };
        self.exact.contains(value)
            || self.prefixes.iter().any(|p| value.starts_with(p.as_str()))
            || self.suffixes.iter().any(|s| value.ends_with(s.as_str()))
    }
}

/// An address block (`10.0.0.0/8`, or one address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Option<Cidr> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, p.parse::<u8>().ok()?),
            None => {
                let addr = text.parse::<IpAddr>().ok()?;
                (addr, if addr.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 peer on a dual-stack socket shows as `::ffff:a.b.c.d`.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// A `paths` value: Istio's string forms, or a template with `{*}` (one segment) and `{**}`
/// (the rest of the path, last only).
#[derive(Debug, Clone, Serialize)]
pub enum PathPattern {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Any,
    Template(Vec<Segment>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Segment {
    Literal(String),
    One,
    Rest,
}

impl PathPattern {
    /// `None` for a template Istio refuses (`{**}` not last, or mixed into a segment).
    pub fn parse(text: &str) -> Option<PathPattern> {
        if text.contains('{') {
            let parts: Vec<&str> = text.strip_prefix('/')?.split('/').collect();
            let mut segments = Vec::with_capacity(parts.len());
            for (i, part) in parts.iter().enumerate() {
                segments.push(match *part {
                    "{*}" => Segment::One,
                    "{**}" if i == parts.len() - 1 => Segment::Rest,
                    p if p.contains('{') || p.contains('}') || p.contains('*') => return None,
                    p => Segment::Literal(p.to_string()),
                });
            }
            return Some(PathPattern::Template(segments));
        }
        Some(if text == "*" {
            PathPattern::Any
        } else if let Some(p) = text.strip_suffix('*') {
            PathPattern::Prefix(p.to_string())
        } else if let Some(s) = text.strip_prefix('*') {
            PathPattern::Suffix(s.to_string())
        } else {
            PathPattern::Exact(text.to_string())
        })
    }

    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Exact(p) => path == p,
            PathPattern::Prefix(p) => path.starts_with(p.as_str()),
            PathPattern::Suffix(s) => path.ends_with(s.as_str()),
            PathPattern::Any => !path.is_empty(),
            PathPattern::Template(segments) => {
                let Some(rest) = path.strip_prefix('/') else {
                    return false;
                };
                let mut parts = rest.split('/');
                for segment in segments {
                    match segment {
                        Segment::Rest => return true,
                        Segment::One => match parts.next() {
                            Some(p) if !p.is_empty() => {}
                            _ => return false,
                        },
                        Segment::Literal(l) => match parts.next() {
                            Some(p) if p == l => {}
                            _ => return false,
                        },
                    }
                }
                parts.next().is_none()
            }
        }
    }
}

/// What a request or connection shows the filters.
pub struct Attributes<'a> {
    /// The caller's SPIFFE id without `spiffe://` (mTLS only).
    pub principal: Option<&'a str>,
    pub peer: IpAddr,
    pub local: SocketAddr,
    pub sni: Option<&'a str>,
    pub http: Option<HttpAttributes<'a>>,
}

pub struct HttpAttributes<'a> {
    pub authority: &'a str,
    pub method: &'a str,
    /// Without the query.
    pub path: &'a str,
    pub headers: &'a HeaderMap,
}

impl Cond {
    fn matches(&self, a: &Attributes<'_>) -> bool {
        self.matches_positive(a) != self.negate
    }

    fn matches_positive(&self, a: &Attributes<'_>) -> bool {
        let text = |value: Option<&str>| match (&self.values, value) {
            (Values::Strings(set), Some(v)) => set.matches(v),
            _ => false,
        };
        let ip = |ip: IpAddr| match &self.values {
            Values::Ips(blocks) => blocks.iter().any(|b| b.contains(ip)),
            _ => false,
        };
        match &self.attr {
            Attr::Principal => text(a.principal),
            Attr::Namespace => text(a.principal.and_then(namespace_of)),
            Attr::PeerIp | Attr::RemoteIp => ip(a.peer),
            Attr::DestinationIp => ip(a.local.ip()),
            Attr::DestinationPort => matches!(&self.values, Values::Ports(ports) if ports.contains(&a.local.port())),
            Attr::Sni => text(a.sni),
            Attr::Host => text(a.http.as_ref().map(|h| h.authority)),
            Attr::Method => text(a.http.as_ref().map(|h| h.method)),
            Attr::Path => match (&self.values, &a.http) {
                (Values::Paths(patterns), Some(h)) => patterns.iter().any(|p| p.matches(h.path)),
                _ => false,
            },
            Attr::Header(name) => a.http.as_ref().is_some_and(|h| {
                h.headers
                    .get_all(name.as_str())
                    .iter()
                    .any(|v| v.to_str().is_ok_and(|v| text(Some(v))))
            }),
        }
    }
}

/// The namespace of a SPIFFE id `<trust domain>/ns/<ns>/sa/<sa>`.
fn namespace_of(principal: &str) -> Option<&str> {
    let (_, rest) = principal.split_once("/ns/")?;
    Some(rest.split_once('/').map_or(rest, |(ns, _)| ns))
}

impl Policy {
    pub fn matches(&self, a: &Attributes<'_>) -> bool {
        let all = |conds: &Vec<Cond>| conds.iter().all(|c| c.matches(a));
        !self.never
            && (self.sources.is_empty() || self.sources.iter().any(all))
            && (self.operations.is_empty() || self.operations.iter().any(all))
            && all(&self.when)
    }
}

/// The first matching policy, in name order.
fn first_match<'p>(policies: &'p [Policy], a: &Attributes<'_>) -> Option<&'p Policy> {
    policies.iter().find(|p| p.matches(a))
}

/// Counters one chain's filters share, as Envoy's do (`http.<prefix>.rbac.*`, `tcp.rbac.*`).
pub trait Tally {
    fn allowed(&self);
    fn denied(&self);
    /// A dry-run policy set's outcome; `deny_prefix` for a DENY filter's
    /// (`istio_dry_run_deny_`), else `istio_dry_run_allow_`.
    fn shadow(&self, deny_prefix: bool, allowed: bool);
}

/// The outcome for one request or connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Denied by this policy (`None`: no ALLOW policy matched).
    Deny(Option<Arc<str>>),
}

impl Decision {
    /// Envoy's response code details (HTTP) or connection termination details (TCP).
    pub fn details(&self) -> Option<String> {
        match self {
            Decision::Allow => None,
            Decision::Deny(policy) => Some(format!(
                "rbac_access_denied_matched_policy[{}]",
                policy.as_deref().unwrap_or("none")
            )),
        }
    }
}

impl Filters {
    /// What the dry-run policies would have decided, had they been enforced (`None`: they would
    /// have let the request on, or there are none): the denial's details, for the log.
    pub fn dry_run(&self, a: &Attributes<'_>) -> Option<String> {
        fn shadow(f: &Option<Filter>) -> Option<&Vec<Policy>> {
            f.as_ref().and_then(|f| f.shadow.as_ref())
        }
        if let Some(p) = shadow(&self.deny).and_then(|policies| first_match(policies, a)) {
            return Decision::Deny(Some(p.name.clone())).details();
        }
        let allow_shadow = shadow(&self.allow)?;
        let enforced = self.allow.as_ref().and_then(|f| f.enforced.as_deref()).unwrap_or(&[]);
        let allowed = first_match(allow_shadow, a).is_some() || first_match(enforced, a).is_some();
        (!allowed).then(|| Decision::Deny(None).details()).flatten()
    }

    /// Whether any filter has dry-run policies.
    pub fn has_dry_run(&self) -> bool {
        [&self.audit, &self.deny, &self.allow]
            .iter()
            .any(|f| f.as_ref().is_some_and(|f| f.shadow.is_some()))
    }

    /// Runs the filters in order, counting as Envoy does: each filter with enforced rules
    /// counts one `allowed` when it lets the request on (so an allowed request counts twice
    /// with a DENY and an ALLOW filter) or one `denied` when it stops it; shadow rules count
    /// before the filter's enforcement; filters after a denial do not run.
    pub fn evaluate(&self, a: &Attributes<'_>, tally: &impl Tally) -> Decision {
        if let Some(audit) = &self.audit {
            if audit.shadow.is_some() {
                tally.shadow(false, true);
            }
            if audit.enforced.is_some() {
                tally.allowed(); // LOG never denies
            }
        }
        if let Some(deny) = &self.deny {
            if let Some(shadow) = &deny.shadow {
                tally.shadow(true, first_match(shadow, a).is_none());
            }
            if let Some(enforced) = &deny.enforced {
                if let Some(p) = first_match(enforced, a) {
                    tally.denied();
                    return Decision::Deny(Some(p.name.clone()));
                }
                tally.allowed();
            }
        }
        if let Some(allow) = &self.allow {
            if let Some(shadow) = &allow.shadow {
                tally.shadow(false, first_match(shadow, a).is_some());
            }
            if let Some(enforced) = &allow.enforced {
                if first_match(enforced, a).is_none() {
                    tally.denied();
                    return Decision::Deny(None);
                }
                tally.allowed();
            }
        }
        Decision::Allow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_sets_follow_istios_forms() {
        let set = StrSet::new(&["a.example".into(), "*.cnn.com".into(), "api-*".into()], true);
        assert!(set.matches("A.Example"));
        assert!(set.matches("edition.cnn.com"));
        assert!(set.matches("api-1"));
        assert!(!set.matches("a.example:80"), "the port is part of :authority");
        assert!(!set.matches("cnn.com"));
        let any = StrSet::new(&["*".into()], false);
        assert!(any.matches("x") && !any.matches(""));
    }

    #[test]
    fn cidrs_contain_their_addresses() {
        let block = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(block.contains("10.1.2.3".parse().unwrap()));
        assert!(!block.contains("10.2.0.1".parse().unwrap()));
        assert!(block.contains("::ffff:10.1.0.9".parse().unwrap()));
        assert!(Cidr::parse("127.0.0.1").unwrap().contains("127.0.0.1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains("8.8.8.8".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        assert!(Cidr::parse("nope").is_none());
    }

    #[test]
    fn path_templates_match_segments() {
        let t = PathPattern::parse("/api/{*}/items/{**}").unwrap();
        assert!(t.matches("/api/v1/items/a/b"));
        assert!(t.matches("/api/v1/items/"));
        assert!(!t.matches("/api//items/a"));
        assert!(!t.matches("/api/v1/other/a"));
        let one = PathPattern::parse("/a/{*}").unwrap();
        assert!(one.matches("/a/b") && !one.matches("/a/b/c"));
        assert!(PathPattern::parse("/a/{**}/b").is_none());
        assert!(PathPattern::parse("/a/x{*}").is_none());
        assert!(PathPattern::parse("/politics*").unwrap().matches("/politics/x"));
    }

    #[test]
    fn namespaces_come_from_the_principal() {
        assert_eq!(namespace_of("cluster.local/ns/default/sa/sleep"), Some("default"));
        assert_eq!(namespace_of("cluster.local/sa/x"), None);
    }
}
