//! Host names as Istio matches them: exact names and `*.suffix` wildcards, intersection of a
//! server's hosts with a VirtualService's, and the lookup index the data plane uses per request.

use std::collections::HashMap;

/// True when `pattern` (exact, `*`, or `*.suffix`) covers `name`. Both are lowercase.
pub fn matches(pattern: &str, name: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_prefix('*') {
        // `*.cnn.com` covers `edition.cnn.com`, not `cnn.com`.
        Some(suffix) => name.len() > suffix.len() && name.ends_with(suffix),
        None => pattern == name,
    }
}

/// Istio's host intersection: the more specific of two hosts when one covers the other.
pub fn intersect<'a>(a: &'a str, b: &'a str) -> Option<&'a str> {
    if matches(a, b) {
        Some(b)
    } else if matches(b, a) {
        Some(a)
    } else {
        None
    }
}

pub fn is_wildcard(host: &str) -> bool {
    host.starts_with('*')
}

/// Looks up a request's host among domains: exact first, then the longest matching wildcard
/// suffix, then `*`, like Envoy's virtual host selection. Values are caller indices.
#[derive(Debug, Clone, Default)]
pub struct HostIndex {
    exact: HashMap<Box<str>, usize>,
    /// Wildcard suffix including the leading dot (`.cnn.com` for `*.cnn.com`) → index.
    wildcards: HashMap<Box<str>, usize>,
    /// Length of the longest wildcard suffix, to skip probes that cannot match.
    longest_wildcard: usize,
    any: Option<usize>,
}

impl HostIndex {
    /// Builds the index; the first entry wins for a domain listed twice.
    pub fn new<'a>(domains: impl IntoIterator<Item = (&'a str, usize)>) -> Self {
        let mut index = HostIndex::default();
        for (domain, value) in domains {
            let domain = domain.to_ascii_lowercase();
            if domain == "*" {
                index.any.get_or_insert(value);
            } else if let Some(suffix) = domain.strip_prefix('*') {
                index.longest_wildcard = index.longest_wildcard.max(suffix.len());
                index.wildcards.entry(suffix.into()).or_insert(value);
            } else {
                index.exact.entry(domain.into()).or_insert(value);
            }
        }
        index
    }

    /// Finds the entry for `host` (port already stripped, any case): one hash probe per label.
    pub fn find(&self, host: &str) -> Option<usize> {
        let lowered;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = host.to_ascii_lowercase();
            lowered.as_str()
        } else {
            host
        };
        if let Some(v) = self.exact.get(host) {
            return Some(*v);
        }
        if !self.wildcards.is_empty() {
            // The host's own suffixes at each dot, longest first: the first hit is the most
            // specific wildcard.
            for (i, b) in host.bytes().enumerate().skip(1) {
                if b == b'.' && host.len() - i <= self.longest_wildcard {
                    if let Some(v) = self.wildcards.get(&host[i..]) {
                        return Some(*v);
                    }
                }
            }
        }
        self.any
    }
}

/// Strips the port from an authority (`edition.cnn.com:80` → `edition.cnn.com`, `[::1]:80` →
/// `[::1]`): Istio sets `ignore_port_in_host_matching` on gateways.
pub fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return match authority.find(']') {
            Some(end) => &authority[..=end],
            None => authority,
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_and_intersection() {
        assert!(matches("*.cnn.com", "edition.cnn.com"));
        assert!(!matches("*.cnn.com", "cnn.com"));
        assert!(matches("*", "x"));
        assert_eq!(intersect("*.cnn.com", "edition.cnn.com"), Some("edition.cnn.com"));
        assert_eq!(intersect("edition.cnn.com", "*"), Some("edition.cnn.com"));
        assert_eq!(intersect("*.a.com", "*.b.a.com"), Some("*.b.a.com"));
        assert_eq!(intersect("a.com", "b.com"), None);
    }

    #[test]
    fn index_prefers_exact_then_longest_wildcard() {
        let index = HostIndex::new([("*.com", 0), ("*.cnn.com", 1), ("edition.cnn.com", 2), ("*", 3)]);
        assert_eq!(index.find("edition.cnn.com"), Some(2));
        assert_eq!(index.find("EDITION.cnn.com"), Some(2));
        assert_eq!(index.find("money.cnn.com"), Some(1));
        assert_eq!(index.find("example.com"), Some(0));
        assert_eq!(index.find("example.org"), Some(3));
        let index = HostIndex::new([("a.com", 0)]);
        assert_eq!(index.find("b.com"), None);
    }

    #[test]
    fn ports_are_stripped() {
        assert_eq!(strip_port("edition.cnn.com:80"), "edition.cnn.com");
        assert_eq!(strip_port("edition.cnn.com"), "edition.cnn.com");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
    }
}
