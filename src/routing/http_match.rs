//! Compiled HTTP request matches (uri, method, authority, headers, query parameters) and their
//! evaluation. Regexes are anchored (RE2 full match, as Envoy applies Istio's `regex`).

use regex::Regex;
use serde::{Serialize, Serializer};

use crate::config::virtual_service::StringMatch;

/// Regexes are bounded so a config cannot make a huge automaton.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StrMatch {
    Exact(String),
    Prefix(String),
    Regex(#[serde(serialize_with = "regex_source")] Regex),
}

fn regex_source<S: Serializer>(r: &Regex, s: S) -> Result<S::Ok, S::Error> {
    let source = r.as_str();
    let inner = source
        .strip_prefix("^(?:")
        .and_then(|r| r.strip_suffix(")$"))
        .unwrap_or(source);
    s.serialize_str(inner)
}

impl StrMatch {
    /// Compiles an Istio `StringMatch`; the error says what is wrong with it.
    pub fn compile(raw: &StringMatch) -> Result<StrMatch, String> {
        match (&raw.exact, &raw.prefix, &raw.regex) {
            (Some(e), None, None) => Ok(StrMatch::Exact(e.clone())),
            (None, Some(p), None) => Ok(StrMatch::Prefix(p.clone())),
            (None, None, Some(r)) => regex::RegexBuilder::new(&format!("^(?:{r})$"))
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
                .map(StrMatch::Regex)
                .map_err(|e| format!("invalid regex: {}", e.to_string().lines().last().unwrap_or(""))),
            (None, None, None) => Err("set one of exact, prefix or regex".into()),
            _ => Err("set only one of exact, prefix or regex".into()),
        }
    }

    pub fn matches(&self, value: &str) -> bool {
        match self {
            StrMatch::Exact(e) => e == value,
            StrMatch::Prefix(p) => value.starts_with(p.as_str()),
            StrMatch::Regex(r) => r.is_match(value),
        }
    }

    fn matches_ignore_case(&self, value: &str) -> bool {
        match self {
            StrMatch::Exact(e) => e.eq_ignore_ascii_case(value),
            StrMatch::Prefix(p) => value.get(..p.len()).is_some_and(|head| head.eq_ignore_ascii_case(p)),
            StrMatch::Regex(r) => r.is_match(value),
        }
    }

    /// A match that every request satisfies (`prefix: /` or `regex: .*`): Istio moves routes
    /// with only such matches to the end.
    pub fn is_catch_all(&self) -> bool {
        match self {
            StrMatch::Prefix(p) => p == "/" || p.is_empty(),
            StrMatch::Regex(r) => r.as_str() == "^(?:.*)$",
            StrMatch::Exact(_) => false,
        }
    }
}

/// One `match` entry of an http route; all its conditions must hold.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RouteMatch {
    pub uri: Option<StrMatch>,
    pub ignore_uri_case: bool,
    pub method: Option<StrMatch>,
    pub authority: Option<StrMatch>,
    pub scheme: Option<StrMatch>,
    /// Lowercase header names.
    pub headers: Vec<(String, StrMatch)>,
    pub without_headers: Vec<(String, StrMatch)>,
    pub query_params: Vec<(String, StrMatch)>,
}

/// The parts of a request a match looks at.
pub struct RequestView<'a> {
    pub method: &'a str,
    /// Path without the query string.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub authority: &'a str,
    pub scheme: &'a str,
    pub headers: &'a http::HeaderMap,
}

impl RouteMatch {
    pub fn is_catch_all(&self) -> bool {
        self.uri.as_ref().is_none_or(StrMatch::is_catch_all)
            && self.method.is_none()
            && self.authority.is_none()
            && self.scheme.is_none()
            && self.headers.is_empty()
            && self.without_headers.is_empty()
            && self.query_params.is_empty()
    }

    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        if let Some(uri) = &self.uri {
            let ok = if self.ignore_uri_case {
                uri.matches_ignore_case(req.path)
            } else {
                uri.matches(req.path)
            };
            if !ok {
                return false;
            }
        }
        if self.method.as_ref().is_some_and(|m| !m.matches(req.method))
            || self.authority.as_ref().is_some_and(|a| !a.matches(req.authority))
            || self.scheme.as_ref().is_some_and(|s| !s.matches(req.scheme))
        {
            return false;
        }
        for (name, m) in &self.headers {
            match req.headers.get(name).and_then(|v| v.to_str().ok()) {
                Some(value) if m.matches(value) => {}
                _ => return false,
            }
        }
        for (name, m) in &self.without_headers {
            if let Some(value) = req.headers.get(name).and_then(|v| v.to_str().ok()) {
                if m.matches(value) {
                    return false;
                }
            }
        }
        for (name, m) in &self.query_params {
            let found = req.query.and_then(|q| {
                q.split('&').find_map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    (k == name).then_some(v)
                })
            });
            match found {
                Some(value) if m.matches(value) => {}
                _ => return false,
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sm(exact: Option<&str>, prefix: Option<&str>, regex: Option<&str>) -> StringMatch {
        StringMatch {
            exact: exact.map(Into::into),
            prefix: prefix.map(Into::into),
            regex: regex.map(Into::into),
        }
    }

    #[test]
    fn regex_is_a_full_match_and_errors_are_clear() {
        let m = StrMatch::compile(&sm(None, None, Some("/pol.*"))).unwrap();
        assert!(m.matches("/politics"));
        assert!(!m.matches("/x/politics"));
        assert_eq!(
            StrMatch::compile(&sm(Some("a"), Some("b"), None)).unwrap_err(),
            "set only one of exact, prefix or regex"
        );
        assert!(StrMatch::compile(&sm(None, None, Some("(")))
            .unwrap_err()
            .starts_with("invalid regex"));
    }

    #[test]
    fn route_match_checks_every_condition() {
        let mut headers = http::HeaderMap::new();
        headers.insert("x-env", "prod".parse().unwrap());
        let m = RouteMatch {
            uri: Some(StrMatch::Prefix("/politics".into())),
            method: Some(StrMatch::Exact("GET".into())),
            headers: vec![("x-env".into(), StrMatch::Exact("prod".into()))],
            query_params: vec![("a".into(), StrMatch::Exact("1".into()))],
            ..Default::default()
        };
        let view = |path, query| RequestView {
            method: "GET",
            path,
            query,
            authority: "edition.cnn.com",
            scheme: "http",
            headers: &headers,
        };
        assert!(m.matches(&view("/politics/x", Some("b=2&a=1"))));
        assert!(!m.matches(&view("/politics/x", Some("a=2"))));
        assert!(!m.matches(&view("/sport", Some("a=1"))));
        assert!(!m.is_catch_all());
        assert!(RouteMatch {
            uri: Some(StrMatch::Prefix("/".into())),
            ..Default::default()
        }
        .is_catch_all());
    }
}
