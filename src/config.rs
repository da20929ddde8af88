//! The user's config as written: Istio resources (raw serde types, one file per kind), their
//! source locations, and the bootstrap. Loading never validates semantics; `routing::compile`
//! does, and reports every problem at once.

pub mod authorization_policy;
pub mod bootstrap;
pub mod destination_rule;
pub mod diagnostic;
pub mod duration;
pub mod gateway;
mod load;
pub mod service_entry;
pub mod virtual_service;
pub mod yaml;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

pub use bootstrap::Bootstrap;
pub use diagnostic::{Diagnostic, Severity};
pub use load::{load_paths, load_str, Loaded};

/// The Istio kinds egressd reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Kind {
    Gateway,
    VirtualService,
    DestinationRule,
    ServiceEntry,
    AuthorizationPolicy,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Gateway => "Gateway",
            Kind::VirtualService => "VirtualService",
            Kind::DestinationRule => "DestinationRule",
            Kind::ServiceEntry => "ServiceEntry",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
        }
    }

    /// The API group the kind belongs to.
    pub fn group(self) -> &'static str {
        match self {
            Kind::AuthorizationPolicy => "security.istio.io",
            _ => "networking.istio.io",
        }
    }

    fn from_name(kind: &str) -> Option<Kind> {
        Some(match kind {
            "Gateway" => Kind::Gateway,
            "VirtualService" => Kind::VirtualService,
            "DestinationRule" => Kind::DestinationRule,
            "ServiceEntry" => Kind::ServiceEntry,
            "AuthorizationPolicy" => Kind::AuthorizationPolicy,
            _ => return None,
        })
    }
}

/// Where a resource came from, kept so that compile errors can name a file and line.
#[derive(Debug, Clone)]
pub struct Origin {
    pub file: Arc<str>,
    /// The resource's YAML tree (for looking up the line of any field).
    pub node: Arc<yaml::Node>,
}

impl Origin {
    /// Line of a field path such as `spec.servers[0].tls.mode` (the nearest existing parent).
    pub fn line_of(&self, field: &str) -> usize {
        self.node.line_of(&parse_field_path(field))
    }
}

/// Splits `a.b[2].c` into steps. Keys containing dots cannot be addressed, which is fine for
/// Istio field names.
pub fn parse_field_path(field: &str) -> Vec<yaml::Step> {
    let mut steps = Vec::new();
    for part in field.split('.') {
        let mut rest = part;
        if let Some(open) = rest.find('[') {
            if open > 0 {
                steps.push(yaml::Step::Key(rest[..open].to_string()));
            }
            rest = &rest[open..];
            while let Some(stripped) = rest.strip_prefix('[') {
                let close = stripped.find(']').unwrap_or(stripped.len());
                if let Ok(i) = stripped[..close].parse() {
                    steps.push(yaml::Step::Index(i));
                }
                rest = stripped.get(close + 1..).unwrap_or("");
            }
        } else if !rest.is_empty() {
            steps.push(yaml::Step::Key(rest.to_string()));
        }
    }
    steps
}

/// One Istio resource, typed.
#[derive(Debug, Clone)]
pub struct Resource {
    pub api_version: String,
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub origin: Origin,
    pub spec: Spec,
}

#[derive(Debug, Clone)]
pub enum Spec {
    Gateway(gateway::GatewaySpec),
    VirtualService(virtual_service::VirtualServiceSpec),
    /// Boxed: by far the largest spec, and resources are built once per load.
    DestinationRule(Box<destination_rule::DestinationRuleSpec>),
    ServiceEntry(service_entry::ServiceEntrySpec),
    AuthorizationPolicy(authorization_policy::AuthorizationPolicySpec),
}

impl Resource {
    pub fn kind(&self) -> Kind {
        match self.spec {
            Spec::Gateway(_) => Kind::Gateway,
            Spec::VirtualService(_) => Kind::VirtualService,
            Spec::DestinationRule(_) => Kind::DestinationRule,
            Spec::ServiceEntry(_) => Kind::ServiceEntry,
            Spec::AuthorizationPolicy(_) => Kind::AuthorizationPolicy,
        }
    }

    /// `Kind/namespace/name`, as errors print it.
    pub fn id(&self) -> String {
        format!("{}/{}/{}", self.kind().as_str(), self.namespace, self.name)
    }

    /// A diagnostic about `field` of this resource.
    pub fn diagnostic(&self, severity: Severity, field: &str, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity,
            file: Some(self.origin.file.clone()),
            line: Some(self.origin.line_of(field)),
            resource: Some(self.id()),
            field: (!field.is_empty()).then(|| field.to_string()),
            message: message.into(),
            fix: None,
        }
    }
}
