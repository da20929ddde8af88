//! Raw `ServiceEntry`: external hosts, their ports, and how their endpoints are found.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::gateway::Port;

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceEntrySpec {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(default)]
    pub ports: Vec<Port>,
    pub location: Option<String>,
    pub resolution: Option<String>,
    #[serde(default)]
    pub endpoints: Vec<WorkloadEntry>,
    #[serde(alias = "workload_selector")]
    pub workload_selector: Option<serde_json::Value>,
    #[serde(default, alias = "export_to")]
    pub export_to: Vec<String>,
    #[serde(default, alias = "subject_alt_names")]
    pub subject_alt_names: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadEntry {
    pub address: Option<String>,
    #[serde(default)]
    pub ports: BTreeMap<String, u32>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub network: Option<String>,
    pub locality: Option<String>,
    pub weight: Option<u32>,
    #[serde(alias = "service_account")]
    pub service_account: Option<String>,
}
