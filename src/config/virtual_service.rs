//! Raw `VirtualService`: hosts, the gateways it binds to, and its http/tls/tcp routes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VirtualServiceSpec {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub gateways: Vec<String>,
    #[serde(default)]
    pub http: Vec<HttpRoute>,
    #[serde(default)]
    pub tls: Vec<TlsRoute>,
    #[serde(default)]
    pub tcp: Vec<TcpRoute>,
    #[serde(default, alias = "export_to")]
    pub export_to: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRoute {
    pub name: Option<String>,
    #[serde(rename = "match", default)]
    pub matches: Vec<HttpMatch>,
    #[serde(default)]
    pub route: Vec<HttpRouteDestination>,
    pub redirect: Option<HttpRedirect>,
    #[serde(alias = "direct_response")]
    pub direct_response: Option<serde_json::Value>,
    pub delegate: Option<serde_json::Value>,
    pub rewrite: Option<HttpRewrite>,
    pub timeout: Option<String>,
    pub retries: Option<HttpRetry>,
    pub fault: Option<serde_json::Value>,
    pub mirror: Option<serde_json::Value>,
    #[serde(default)]
    pub mirrors: Vec<serde_json::Value>,
    #[serde(alias = "mirror_percentage")]
    pub mirror_percentage: Option<serde_json::Value>,
    #[serde(alias = "cors_policy")]
    pub cors_policy: Option<serde_json::Value>,
    pub headers: Option<Headers>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpMatch {
    pub name: Option<String>,
    pub uri: Option<StringMatch>,
    pub scheme: Option<StringMatch>,
    pub method: Option<StringMatch>,
    pub authority: Option<StringMatch>,
    #[serde(default)]
    pub headers: BTreeMap<String, StringMatch>,
    pub port: Option<u32>,
    #[serde(default, alias = "source_labels")]
    pub source_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub gateways: Vec<String>,
    #[serde(default, alias = "query_params")]
    pub query_params: BTreeMap<String, StringMatch>,
    #[serde(alias = "ignore_uri_case")]
    pub ignore_uri_case: Option<bool>,
    #[serde(default, alias = "without_headers")]
    pub without_headers: BTreeMap<String, StringMatch>,
    #[serde(alias = "source_namespace")]
    pub source_namespace: Option<String>,
    #[serde(alias = "stat_prefix")]
    pub stat_prefix: Option<String>,
}

/// Istio's `StringMatch`: exactly one of exact, prefix, regex.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StringMatch {
    pub exact: Option<String>,
    pub prefix: Option<String>,
    pub regex: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Destination {
    pub host: Option<String>,
    pub subset: Option<String>,
    pub port: Option<PortSelector>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortSelector {
    pub number: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteDestination {
    pub destination: Option<Destination>,
    pub weight: Option<i64>,
    pub headers: Option<Headers>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Headers {
    pub request: Option<HeaderOperations>,
    pub response: Option<HeaderOperations>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderOperations {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRedirect {
    pub uri: Option<String>,
    pub authority: Option<String>,
    pub port: Option<u32>,
    #[serde(alias = "derive_port")]
    pub derive_port: Option<String>,
    pub scheme: Option<String>,
    #[serde(alias = "redirect_code")]
    pub redirect_code: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRewrite {
    pub uri: Option<String>,
    pub authority: Option<String>,
    #[serde(alias = "uri_regex_rewrite")]
    pub uri_regex_rewrite: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRetry {
    pub attempts: Option<i64>,
    #[serde(alias = "per_try_timeout")]
    pub per_try_timeout: Option<String>,
    #[serde(alias = "retry_on")]
    pub retry_on: Option<String>,
    #[serde(alias = "retry_remote_localities")]
    pub retry_remote_localities: Option<bool>,
    pub backoff: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsRoute {
    #[serde(rename = "match", default)]
    pub matches: Vec<TlsMatch>,
    #[serde(default)]
    pub route: Vec<RouteDestination>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsMatch {
    #[serde(default, alias = "sni_hosts")]
    pub sni_hosts: Vec<String>,
    #[serde(default, alias = "destination_subnets")]
    pub destination_subnets: Vec<String>,
    pub port: Option<u32>,
    #[serde(default, alias = "source_labels")]
    pub source_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub gateways: Vec<String>,
    #[serde(alias = "source_namespace")]
    pub source_namespace: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TcpRoute {
    #[serde(rename = "match", default)]
    pub matches: Vec<TcpMatch>,
    #[serde(default)]
    pub route: Vec<RouteDestination>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TcpMatch {
    #[serde(default, alias = "destination_subnets")]
    pub destination_subnets: Vec<String>,
    pub port: Option<u32>,
    #[serde(alias = "source_subnet")]
    pub source_subnet: Option<String>,
    #[serde(default, alias = "source_labels")]
    pub source_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub gateways: Vec<String>,
    #[serde(alias = "source_namespace")]
    pub source_namespace: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteDestination {
    pub destination: Option<Destination>,
    pub weight: Option<i64>,
}
