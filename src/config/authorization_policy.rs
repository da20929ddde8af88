//! `security.istio.io` AuthorizationPolicy, as written (issue 17). Unlike the networking kinds,
//! an unknown field here is an error, not a warning: a condition egressd does not read would
//! widen an ALLOW rule or narrow a DENY one, and a gateway must never fail open.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    pub selector: Option<WorkloadSelector>,
    /// Gateway API attachment: never selects a classic gateway (reported by `check`).
    #[serde(alias = "target_ref")]
    pub target_ref: Option<serde_json::Value>,
    #[serde(alias = "target_refs")]
    pub target_refs: Option<Vec<serde_json::Value>>,
    /// `ALLOW` (the default), `DENY`, `AUDIT`, `CUSTOM`.
    pub action: Option<String>,
    /// The CUSTOM action's extension provider.
    pub provider: Option<serde_json::Value>,
    /// `None` and `Some([])` differ: no rules at all (`spec: {}`) matches nothing; a null rule is
    /// skipped.
    pub rules: Option<Vec<Option<Rule>>>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSelector {
    #[serde(default, alias = "match_labels")]
    pub match_labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    #[serde(default)]
    pub from: Vec<From>,
    #[serde(default)]
    pub to: Vec<To>,
    #[serde(default)]
    pub when: Vec<Condition>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct From {
    pub source: Option<Source>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Source {
    pub principals: Option<Vec<String>>,
    #[serde(alias = "not_principals")]
    pub not_principals: Option<Vec<String>>,
    #[serde(alias = "request_principals")]
    pub request_principals: Option<Vec<String>>,
    #[serde(alias = "not_request_principals")]
    pub not_request_principals: Option<Vec<String>>,
    pub namespaces: Option<Vec<String>>,
    #[serde(alias = "not_namespaces")]
    pub not_namespaces: Option<Vec<String>>,
    #[serde(alias = "ip_blocks")]
    pub ip_blocks: Option<Vec<String>>,
    #[serde(alias = "not_ip_blocks")]
    pub not_ip_blocks: Option<Vec<String>>,
    #[serde(alias = "remote_ip_blocks")]
    pub remote_ip_blocks: Option<Vec<String>>,
    #[serde(alias = "not_remote_ip_blocks")]
    pub not_remote_ip_blocks: Option<Vec<String>>,
    #[serde(alias = "service_accounts")]
    pub service_accounts: Option<Vec<String>>,
    #[serde(alias = "not_service_accounts")]
    pub not_service_accounts: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct To {
    pub operation: Option<Operation>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    pub hosts: Option<Vec<String>>,
    #[serde(alias = "not_hosts")]
    pub not_hosts: Option<Vec<String>>,
    pub ports: Option<Vec<String>>,
    #[serde(alias = "not_ports")]
    pub not_ports: Option<Vec<String>>,
    pub methods: Option<Vec<String>>,
    #[serde(alias = "not_methods")]
    pub not_methods: Option<Vec<String>>,
    pub paths: Option<Vec<String>>,
    #[serde(alias = "not_paths")]
    pub not_paths: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(default)]
    pub key: String,
    pub values: Option<Vec<String>>,
    #[serde(alias = "not_values")]
    pub not_values: Option<Vec<String>>,
}
