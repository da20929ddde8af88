//! YAML text → documents of `Node`s that remember their line, then → `serde_json::Value`.
//!
//! Built on saphyr-parser's event stream (panic-free, YAML 1.2) so that every field keeps its
//! source line for error messages, and so that alias expansion and nesting depth are bounded:
//! a hostile file cannot make the loader use unbounded memory or stack.

use std::borrow::Cow;

use saphyr_parser::{Event, Parser, ScalarStyle, Span, Tag};
use serde_json::{Map, Number, Value};

/// Largest number of nodes one file may expand to (aliases included).
const MAX_NODES: usize = 2_000_000;
/// Deepest nesting accepted; Istio resources are a dozen levels deep at most.
const MAX_DEPTH: usize = 128;

/// One YAML node with the line and column where it starts (1-based).
#[derive(Debug, Clone)]
pub struct Node {
    pub line: usize,
    pub col: usize,
    pub kind: NodeKind,
}

#[derive(Debug, Clone)]
pub enum NodeKind {
    Scalar {
        text: String,
        plain: bool,
        tag: Option<String>,
    },
    Seq(Vec<Node>),
    /// Keys are kept as text with their own node for the line; order is the file's.
    Map(Vec<(Node, Node)>),
}

/// A parse error with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    pub line: usize,
    pub col: usize,
    pub message: String,
}

/// One path step into a document, used to find the line of a field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Key(String),
    Index(usize),
}

impl Node {
    /// The key text of a mapping key or scalar (`None` for collections).
    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    /// The value under `key` in a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.kind {
            NodeKind::Map(entries) => entries.iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The line of the deepest node reachable along `path` (a key's own line for mapping
    /// entries, so an error points at `field:` rather than at its value).
    pub fn line_of(&self, path: &[Step]) -> usize {
        let mut node = self;
        let mut line = self.line;
        for step in path {
            let next = match (step, &node.kind) {
                (Step::Key(k), NodeKind::Map(entries)) => entries
                    .iter()
                    .find(|(key, _)| key.as_str() == Some(k.as_str()))
                    .map(|(key, value)| (key.line, value)),
                (Step::Index(i), NodeKind::Seq(items)) => items.get(*i).map(|n| (n.line, n)),
                _ => None,
            };
            match next {
                Some((l, n)) => {
                    line = l;
                    node = n;
                }
                None => break,
            }
        }
        line
    }

    /// Converts to JSON with YAML 1.2 core-schema scalar resolution (quoted scalars stay strings).
    pub fn to_json(&self) -> Result<Value, YamlError> {
        Ok(match &self.kind {
            NodeKind::Scalar { text, plain, tag } => scalar_to_json(text, *plain, tag.as_deref()),
            NodeKind::Seq(items) => Value::Array(items.iter().map(Node::to_json).collect::<Result<_, _>>()?),
            NodeKind::Map(entries) => {
                let mut map = Map::new();
                for (k, v) in entries {
                    let key = match &k.kind {
                        NodeKind::Scalar { text, .. } => text.clone(),
                        _ => {
                            return Err(YamlError {
                                line: k.line,
                                col: k.col,
                                message: "a mapping key must be a plain value".into(),
                            })
                        }
                    };
                    if map.contains_key(&key) {
                        return Err(YamlError {
                            line: k.line,
                            col: k.col,
                            message: format!("duplicate key `{key}`"),
                        });
                    }
                    map.insert(key, v.to_json()?);
                }
                Value::Object(map)
            }
        })
    }
}

fn scalar_to_json(text: &str, plain: bool, tag: Option<&str>) -> Value {
    match tag {
        Some("str") => return Value::String(text.to_string()),
        Some("int") | Some("float") | Some("bool") | Some("null") | None => {}
        Some(_) => return Value::String(text.to_string()),
    }
    if !plain && tag.is_none() {
        return Value::String(text.to_string());
    }
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    if let Some(n) = parse_int(text) {
        return Value::Number(n.into());
    }
    if looks_like_float(text) {
        if let Some(n) = text.parse::<f64>().ok().and_then(Number::from_f64) {
            return Value::Number(n);
        }
    }
    Value::String(text.to_string())
}

fn parse_int(text: &str) -> Option<i64> {
    let (neg, digits) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let value = if let Some(hex) = digits.strip_prefix("0x") {
        i64::from_str_radix(hex, 16).ok()?
    } else if let Some(oct) = digits.strip_prefix("0o") {
        i64::from_str_radix(oct, 8).ok()?
    } else if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse().ok()?
    } else {
        return None;
    };
    Some(if neg { -value } else { value })
}

fn looks_like_float(text: &str) -> bool {
    let body = text.trim_start_matches(['-', '+']);
    !body.is_empty()
        && body.bytes().any(|b| b.is_ascii_digit())
        && body
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'))
}

/// A document with the line its content starts on.
#[derive(Debug, Clone)]
pub struct Document {
    pub root: Node,
}

/// Parses every document of a YAML stream. Empty documents are skipped.
pub fn parse_documents(text: &str) -> Result<Vec<Document>, YamlError> {
    let mut builder = Builder::default();
    for event in Parser::new_from_str(text) {
        let (event, span) = event.map_err(|e| YamlError {
            line: e.marker().line(),
            col: e.marker().col() + 1,
            message: e.info().to_string(),
        })?;
        builder.event(event, span)?;
    }
    Ok(builder.documents)
}

enum Open {
    Seq(Node, usize),
    Map(Node, usize, Option<Node>),
}

#[derive(Default)]
struct Builder {
    documents: Vec<Document>,
    stack: Vec<Open>,
    anchors: std::collections::HashMap<usize, (Node, usize)>,
    nodes: usize,
}

impl Builder {
    fn event(&mut self, event: Event<'_>, span: Span) -> Result<(), YamlError> {
        let at = |message: String| YamlError {
            line: span.start.line(),
            col: span.start.col() + 1,
            message,
        };
        let node_at = |kind| Node {
            line: span.start.line(),
            col: span.start.col() + 1,
            kind,
        };
        match event {
            Event::Scalar(text, style, anchor, tag) => {
                let node = node_at(NodeKind::Scalar {
                    text: text.into_owned(),
                    plain: style == ScalarStyle::Plain,
                    tag: tag.map(tag_name),
                });
                self.finish(node, anchor, 1).map_err(at)?;
            }
            Event::SequenceStart(anchor, _) => {
                self.check_depth().map_err(at)?;
                self.stack.push(Open::Seq(node_at(NodeKind::Seq(Vec::new())), anchor));
            }
            Event::MappingStart(anchor, _) => {
                self.check_depth().map_err(at)?;
                self.stack
                    .push(Open::Map(node_at(NodeKind::Map(Vec::new())), anchor, None));
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match self.stack.pop() {
                    Some(Open::Seq(n, a)) | Some(Open::Map(n, a, None)) => (n, a),
                    Some(Open::Map(_, _, Some(_))) | None => return Err(at("unbalanced collection".into())),
                };
                // Its children were already counted as they arrived.
                self.finish(node, anchor, 0).map_err(at)?;
            }
            Event::Alias(id) => {
                let (node, size) = self
                    .anchors
                    .get(&id)
                    .cloned()
                    .ok_or_else(|| at("alias to an unknown anchor".into()))?;
                self.finish(node, 0, size).map_err(at)?;
            }
            Event::DocumentStart(_) | Event::DocumentEnd => {}
            Event::StreamStart | Event::StreamEnd | Event::Nothing => {}
        }
        Ok(())
    }

    fn check_depth(&self) -> Result<(), String> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(format!("nesting deeper than {MAX_DEPTH} levels"));
        }
        Ok(())
    }

    /// Attaches a complete node to its parent (or ends a document).
    fn finish(&mut self, node: Node, anchor: usize, size: usize) -> Result<(), String> {
        self.nodes += size.max(1);
        if self.nodes > MAX_NODES {
            return Err(format!(
                "the file expands to more than {MAX_NODES} nodes (alias expansion?)"
            ));
        }
        if anchor > 0 {
            let subtree = count(&node);
            self.anchors.insert(anchor, (node.clone(), subtree));
        }
        match self.stack.last_mut() {
            None => {
                let empty = matches!(&node.kind, NodeKind::Scalar { text, plain: true, tag: None } if matches!(text.as_str(), "" | "~" | "null"));
                if !empty {
                    self.documents.push(Document { root: node });
                }
            }
            Some(Open::Seq(parent, _)) => {
                if let NodeKind::Seq(items) = &mut parent.kind {
                    items.push(node);
                }
            }
            Some(Open::Map(parent, _, pending)) => match pending.take() {
                None => *pending = Some(node),
                Some(key) => {
                    if let NodeKind::Map(entries) = &mut parent.kind {
                        entries.push((key, node));
                    }
                }
            },
        }
        Ok(())
    }
}

fn count(node: &Node) -> usize {
    match &node.kind {
        NodeKind::Scalar { .. } => 1,
        NodeKind::Seq(items) => 1 + items.iter().map(count).sum::<usize>(),
        NodeKind::Map(entries) => 1 + entries.iter().map(|(k, v)| count(k) + count(v)).sum::<usize>(),
    }
}

fn tag_name(tag: Cow<'_, Tag>) -> String {
    if tag.handle == "tag:yaml.org,2002:" || tag.handle == "!!" {
        tag.suffix.clone()
    } else {
        format!("{}{}", tag.handle, tag.suffix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_keep_lines_and_types() {
        let docs = parse_documents("a: 1\nb: \"2\"\n---\n\n---\nlist:\n- x: true\n  y: 80\n  z: ~\n").unwrap();
        assert_eq!(docs.len(), 2);
        let second = &docs[1].root;
        let line = second.line_of(&[Step::Key("list".into()), Step::Index(0), Step::Key("y".into())]);
        assert_eq!(line, 8);
        assert_eq!(docs[0].root.to_json().unwrap(), serde_json::json!({"a": 1, "b": "2"}));
        assert_eq!(
            second.to_json().unwrap(),
            serde_json::json!({"list": [{"x": true, "y": 80, "z": null}]})
        );
    }

    #[test]
    fn duplicate_keys_and_syntax_errors_have_lines() {
        let docs = parse_documents("a: 1\na: 2\n").unwrap();
        let err = docs[0].root.to_json().unwrap_err();
        assert_eq!((err.line, err.message.as_str()), (2, "duplicate key `a`"));
        let err = parse_documents("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(err.line >= 1, "{err:?}");
    }

    #[test]
    fn alias_bombs_and_deep_nesting_are_refused() {
        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let p = i - 1;
            bomb.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let err = parse_documents(&bomb).unwrap_err();
        assert!(err.message.contains("alias expansion"), "{err:?}");
        let deep = "[".repeat(10_000);
        assert!(parse_documents(&deep).is_err());
    }

    #[test]
    fn scalars_resolve_like_yaml_core_schema() {
        let docs = parse_documents("a: 0x10\nb: -3\nc: 1.5\nd: '80'\ne: 1.2.3\nf: !!str 7\n").unwrap();
        assert_eq!(
            docs[0].root.to_json().unwrap(),
            serde_json::json!({"a": 16, "b": -3, "c": 1.5, "d": "80", "e": "1.2.3", "f": "7"})
        );
    }
}
