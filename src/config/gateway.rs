//! Raw `Gateway` (networking.istio.io v1alpha3/v1beta1/v1), mirroring the YAML field for field.
//!
//! Both spellings Istio accepts are read (`serverCertificate` and `server_certificate`).
//! Nothing here validates: `routing::compile` does.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    #[serde(default)]
    pub servers: Vec<Server>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Server {
    pub port: Option<Port>,
    #[serde(default)]
    pub hosts: Vec<String>,
    pub tls: Option<ServerTls>,
    pub name: Option<String>,
    pub bind: Option<String>,
    #[serde(alias = "default_endpoint")]
    pub default_endpoint: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Port {
    pub number: Option<u32>,
    pub name: Option<String>,
    pub protocol: Option<String>,
    #[serde(alias = "target_port")]
    pub target_port: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerTls {
    #[serde(alias = "https_redirect")]
    pub https_redirect: Option<bool>,
    pub mode: Option<String>,
    #[serde(alias = "server_certificate")]
    pub server_certificate: Option<String>,
    #[serde(alias = "private_key")]
    pub private_key: Option<String>,
    #[serde(alias = "ca_certificates")]
    pub ca_certificates: Option<String>,
    #[serde(alias = "ca_crl")]
    pub ca_crl: Option<String>,
    #[serde(alias = "credential_name")]
    pub credential_name: Option<String>,
    #[serde(default, alias = "credential_names")]
    pub credential_names: Vec<String>,
    #[serde(default, alias = "subject_alt_names")]
    pub subject_alt_names: Vec<String>,
    #[serde(default, alias = "verify_certificate_spki")]
    pub verify_certificate_spki: Vec<String>,
    #[serde(default, alias = "verify_certificate_hash")]
    pub verify_certificate_hash: Vec<String>,
    #[serde(alias = "min_protocol_version")]
    pub min_protocol_version: Option<String>,
    #[serde(alias = "max_protocol_version")]
    pub max_protocol_version: Option<String>,
    #[serde(default, alias = "cipher_suites")]
    pub cipher_suites: Vec<String>,
}
