//! Reads Istio YAML from files and directories exactly as `kubectl apply -f` would take it:
//! multi-document files, `kind: List`, other kinds skipped with one info line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::yaml::{self, Node, NodeKind};
use super::{Diagnostic, Kind, Origin, Resource, Severity, Spec};

/// Config files larger than this are refused (a ConfigMap is at most 1 MiB).
const MAX_FILE_BYTES: u64 = 16 << 20;

const ISTIO_VERSIONS: [&str; 3] = ["v1alpha3", "v1beta1", "v1"];
/// `security.istio.io` has no v1alpha3 AuthorizationPolicy.
const SECURITY_VERSIONS: [&str; 2] = ["v1beta1", "v1"];

/// Everything read from the config paths: the resources, and what was found wrong on the way.
#[derive(Debug, Default, Clone)]
pub struct Loaded {
    pub resources: Vec<Resource>,
    pub diagnostics: Vec<Diagnostic>,
}

/// Loads every `*.yaml`/`*.yml` file of each path (a file, or a directory read one level deep,
/// skipping hidden entries such as Kubernetes' `..data`). Files are read in name order.
pub fn load_paths(paths: &[PathBuf], default_namespace: &str) -> Loaded {
    let mut loaded = Loaded::default();
    for path in paths {
        for file in files_of(path, &mut loaded.diagnostics) {
            let name: Arc<str> = file.display().to_string().into();
            match read_bounded(&file) {
                Ok(text) => load_str(name, &text, default_namespace, &mut loaded),
                Err(message) => loaded.diagnostics.push(file_diagnostic(&name, None, message)),
            }
        }
    }
    loaded
}

fn files_of(path: &Path, diagnostics: &mut Vec<Diagnostic>) -> Vec<PathBuf> {
    let name: Arc<str> = path.display().to_string().into();
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) => {
            diagnostics.push(
                file_diagnostic(&name, None, format!("cannot read config path: {e}"))
                    .with_fix("pass an existing file or directory with --config"),
            );
            return Vec::new();
        }
    };
    if !meta.is_dir() {
        return vec![path.to_path_buf()];
    }
    let entries = match std::fs::read_dir(path) {
        Ok(entries) => entries,
        Err(e) => {
            diagnostics.push(file_diagnostic(&name, None, format!("cannot list directory: {e}")));
            return Vec::new();
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|p| {
            let file_name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            !file_name.starts_with('.') && (file_name.ends_with(".yaml") || file_name.ends_with(".yml")) && p.is_file()
        })
        .collect();
    files.sort();
    files
}

fn read_bounded(file: &Path) -> Result<String, String> {
    let meta = std::fs::metadata(file).map_err(|e| format!("cannot read file: {e}"))?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!(
            "file is {} bytes, more than the {MAX_FILE_BYTES} accepted",
            meta.len()
        ));
    }
    let bytes = std::fs::read(file).map_err(|e| format!("cannot read file: {e}"))?;
    String::from_utf8(bytes).map_err(|e| format!("file is not UTF-8: {e}"))
}

fn file_diagnostic(file: &Arc<str>, line: Option<usize>, message: impl Into<String>) -> Diagnostic {
    Diagnostic {
        file: Some(file.clone()),
        line,
        ..Diagnostic::new(Severity::Error, message)
    }
}

/// Loads the documents of one YAML text; `file` names it in diagnostics.
pub fn load_str(file: Arc<str>, text: &str, default_namespace: &str, loaded: &mut Loaded) {
    let documents = match yaml::parse_documents(text) {
        Ok(documents) => documents,
        Err(e) => {
            loaded.diagnostics.push(
                file_diagnostic(&file, Some(e.line), format!("YAML syntax error: {}", e.message))
                    .with_fix("fix the YAML at this line; nothing from this file was loaded"),
            );
            return;
        }
    };
    for document in documents {
        load_object(&file, Arc::new(document.root), default_namespace, loaded);
    }
}

fn load_object(file: &Arc<str>, node: Arc<Node>, default_namespace: &str, loaded: &mut Loaded) {
    let value = match node.to_json() {
        Ok(value) => value,
        Err(e) => {
            loaded.diagnostics.push(file_diagnostic(file, Some(e.line), e.message));
            return;
        }
    };
    let Value::Object(object) = &value else {
        loaded.diagnostics.push(file_diagnostic(
            file,
            Some(node.line),
            "a document must be a mapping with apiVersion and kind",
        ));
        return;
    };
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or("");
    let api_version = object.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    if kind.is_empty() || api_version.is_empty() {
        let missing = if kind.is_empty() { "kind" } else { "apiVersion" };
        loaded.diagnostics.push(
            file_diagnostic(file, Some(node.line), format!("document has no `{missing}`"))
                .with_fix("every document needs apiVersion and kind, as for kubectl apply"),
        );
        return;
    }
    if kind == "List" && api_version == "v1" {
        if let Some(NodeKind::Seq(items)) = node.get("items").map(|n| &n.kind) {
            for item in items {
                load_object(file, Arc::new(item.clone()), default_namespace, loaded);
            }
        }
        return;
    }
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let known = Kind::from_name(kind).filter(|k| group == k.group());
    let Some(kind) = known else {
        let name = object
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
            .unwrap_or("-");
        loaded.diagnostics.push(Diagnostic {
            severity: Severity::Info,
            file: Some(file.clone()),
            line: Some(node.line),
            resource: Some(format!("{kind}/{name}")),
            field: None,
            message: format!("skipped {api_version} {kind}: egressd reads only networking.istio.io Gateway, VirtualService, DestinationRule and ServiceEntry, and security.istio.io AuthorizationPolicy"),
            fix: None,
        });
        return;
    };
    let metadata = object.get("metadata").cloned().unwrap_or(Value::Null);
    let name = metadata.get("name").and_then(Value::as_str).unwrap_or("").to_string();
    let namespace = metadata
        .get("namespace")
        .and_then(Value::as_str)
        .filter(|ns| !ns.is_empty())
        .unwrap_or(default_namespace)
        .to_string();
    let labels: BTreeMap<String, String> = metadata
        .get("labels")
        .and_then(|l| serde_json::from_value(l.clone()).ok())
        .unwrap_or_default();
    let annotations: BTreeMap<String, String> = metadata
        .get("annotations")
        .and_then(|l| serde_json::from_value(l.clone()).ok())
        .unwrap_or_default();
    let origin = Origin {
        file: file.clone(),
        node: node.clone(),
    };
    let mut resource = Resource {
        api_version: api_version.to_string(),
        name,
        namespace,
        labels,
        annotations,
        origin,
        spec: match kind {
            Kind::Gateway => Spec::Gateway(Default::default()),
            Kind::VirtualService => Spec::VirtualService(Default::default()),
            Kind::DestinationRule => Spec::DestinationRule(Box::default()),
            Kind::ServiceEntry => Spec::ServiceEntry(Default::default()),
            Kind::AuthorizationPolicy => Spec::AuthorizationPolicy(Default::default()),
        },
    };
    if resource.name.is_empty() {
        loaded.diagnostics.push(
            resource
                .diagnostic(Severity::Error, "metadata.name", "resource has no name")
                .with_fix("set metadata.name"),
        );
        return;
    }
    let versions: &[&str] = match kind {
        Kind::AuthorizationPolicy => &SECURITY_VERSIONS,
        _ => &ISTIO_VERSIONS,
    };
    if !versions.contains(&version) {
        loaded.diagnostics.push(
            resource
                .diagnostic(
                    Severity::Error,
                    "apiVersion",
                    format!("unknown version `{api_version}`"),
                )
                .with_fix(format!("use {}/{}", kind.group(), versions.join(", "))),
        );
        return;
    }
    let spec_value = object.get("spec").cloned().unwrap_or(Value::Object(Default::default()));
    let parsed = match kind {
        Kind::Gateway => typed(&resource, spec_value, loaded).map(Spec::Gateway),
        Kind::VirtualService => typed(&resource, spec_value, loaded).map(Spec::VirtualService),
        Kind::DestinationRule => typed(&resource, spec_value, loaded).map(|dr| Spec::DestinationRule(Box::new(dr))),
        Kind::ServiceEntry => typed(&resource, spec_value, loaded).map(Spec::ServiceEntry),
        Kind::AuthorizationPolicy => typed(&resource, spec_value, loaded).map(Spec::AuthorizationPolicy),
    };
    if let Some(spec) = parsed {
        resource.spec = spec;
        loaded.resources.push(resource);
    }
}

/// Deserializes a spec, reporting a type error with its field path and line, and every unknown
/// field as a warning (Istio adds fields every release; they must not break loading).
fn typed<T: DeserializeOwned>(resource: &Resource, spec: Value, loaded: &mut Loaded) -> Option<T> {
    let mut unknown: Vec<String> = Vec::new();
    let result: Result<T, _> = {
        let mut track = |path: serde_ignored::Path<'_>| unknown.push(path.to_string());
        let ignoring = serde_ignored::Deserializer::new(spec, &mut track);
        serde_path_to_error::deserialize(ignoring)
    };
    // An authorization condition egressd does not read would widen an ALLOW rule or narrow a
    // DENY one: refused, so that the config is not served rather than failing open.
    let refuse_unknown = resource.kind() == Kind::AuthorizationPolicy;
    let unknown_count = unknown.len();
    for path in unknown {
        let field = format!("spec.{}", dotted_to_indexed(&path));
        let diagnostic = if refuse_unknown {
            resource
                .diagnostic(Severity::Error, &field, "unknown field in an AuthorizationPolicy: egressd does not serve policies it cannot enforce in full")
                .with_fix("check the spelling; remove the field if this Istio version does not have it")
        } else {
            resource
                .diagnostic(Severity::Warning, &field, "unknown field, ignored")
                .with_fix("check the spelling; egressd reads both camelCase and snake_case names")
        };
        loaded.diagnostics.push(diagnostic);
    }
    if refuse_unknown && unknown_count > 0 {
        return None;
    }
    match result {
        Ok(spec) => Some(spec),
        Err(e) => {
            let path = e.path().to_string();
            let field = if path == "." {
                "spec".to_string()
            } else {
                format!("spec.{path}")
            };
            let message = e.into_inner().to_string();
            loaded.diagnostics.push(
                resource
                    .diagnostic(Severity::Error, &field, message)
                    .with_fix("correct the value's type; the resource was not loaded"),
            );
            None
        }
    }
}

/// serde_ignored prints sequence indices as `servers.0.foo`; show them as `servers[0].foo`.
fn dotted_to_indexed(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    // `?` marks an Option layer, not a field.
    for part in path.split('.').filter(|p| *p != "?") {
        if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
            out.push('[');
            out.push_str(part);
            out.push(']');
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(part);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Loaded {
        let mut loaded = Loaded::default();
        load_str("test.yaml".into(), text, "default", &mut loaded);
        loaded
    }

    #[test]
    fn both_spellings_and_lists_load() {
        let loaded = load(
            "apiVersion: v1\nkind: List\nitems:\n- apiVersion: networking.istio.io/v1\n  kind: VirtualService\n  metadata: {name: a}\n  spec:\n    hosts: [x.com]\n    tls:\n    - match:\n      - sni_hosts: [x.com]\n- apiVersion: networking.istio.io/v1beta1\n  kind: VirtualService\n  metadata: {name: b, namespace: ns}\n  spec:\n    tls:\n    - match:\n      - sniHosts: [y.com]\n",
        );
        assert!(loaded.diagnostics.is_empty(), "{:?}", loaded.diagnostics);
        assert_eq!(loaded.resources.len(), 2);
        let hosts: Vec<_> = loaded
            .resources
            .iter()
            .map(|r| match &r.spec {
                Spec::VirtualService(vs) => vs.tls[0].matches[0].sni_hosts[0].clone(),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(hosts, ["x.com", "y.com"]);
        assert_eq!(loaded.resources[0].namespace, "default");
        assert_eq!(loaded.resources[1].id(), "VirtualService/ns/b");
    }

    #[test]
    fn type_errors_and_unknown_fields_name_line_and_path() {
        let loaded = load(
            "apiVersion: networking.istio.io/v1alpha3\nkind: Gateway\nmetadata:\n  name: gw\nspec:\n  servers:\n  - port:\n      number: eighty\n      nmae: http\n",
        );
        let text: Vec<String> = loaded.diagnostics.iter().map(|d| d.to_string()).collect();
        assert_eq!(
            text,
            [
                "test.yaml:9: warning: Gateway/default/gw spec.servers[0].port.nmae: unknown field, ignored\n  fix: check the spelling; egressd reads both camelCase and snake_case names",
                "test.yaml:8: error: Gateway/default/gw spec.servers[0].port.number: invalid type: string \"eighty\", expected u32\n  fix: correct the value's type; the resource was not loaded",
            ]
        );
    }

    #[test]
    fn other_kinds_are_skipped_with_one_info_line() {
        let loaded = load("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: np\nspec: {}\n");
        assert!(loaded.resources.is_empty());
        assert_eq!(loaded.diagnostics.len(), 1);
        assert_eq!(loaded.diagnostics[0].severity, Severity::Info);
        assert!(loaded.diagnostics[0]
            .message
            .starts_with("skipped networking.k8s.io/v1 NetworkPolicy"));
    }
}
