//! What the gateway does to headers, as Envoy's gateway does: hop-by-hop and mesh-internal
//! names removed, `x-forwarded-for`, `x-forwarded-proto` and `x-request-id` set, `te: trailers`
//! kept for HTTP/2 clients, WebSocket upgrades recognised, and the routes' header operations.

use std::net::IpAddr;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Version};

use crate::routing::snapshot::HeaderOps;

/// Headers that describe one hop and never cross the proxy.
static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TE,
    header::TRAILER,
];
/// Mesh-internal headers that must not leave the mesh (Envoy forwards them; we do not).
static MESH_INTERNAL: [HeaderName; 3] = [
    HeaderName::from_static("x-forwarded-client-cert"),
    HeaderName::from_static("x-envoy-peer-metadata"),
    HeaderName::from_static("x-envoy-peer-metadata-id"),
];
// Names the request path sets or reads, made at compile time: a `&str` key is parsed (and a
// non-standard name copied) at every use.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// An HTTP/1.1 `GET` asking to switch to WebSocket (RFC 6455 §4.1): `Upgrade: websocket` and
/// `Connection: upgrade`.
pub fn is_websocket_upgrade(parts: &http::request::Parts) -> bool {
    parts.version == Version::HTTP_11
        && parts.method == Method::GET
        && crate::http1::is_upgrade(&parts.headers)
        && parts.headers.get_all(header::UPGRADE).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|p| p.trim().eq_ignore_ascii_case("websocket")))
        })
}

/// What Envoy's gateway does to request headers before routing (use_remote_address: true).
pub fn prepare_request_headers(headers: &mut HeaderMap, version: Version, remote_ip: IpAddr, scheme: &'static str) {
    // `te: trailers` is the one TE value that crosses (gRPC servers require it), as Envoy keeps
    // it; only from HTTP/2 clients, since trailers reach HTTP/2 clients only (the HTTP/1.1
    // codec reads and drops them, Envoy's default without `enable_trailers`).
    let trailers = version == Version::HTTP_2 && accepts_trailers(headers);
    remove_hop_by_hop(headers);
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    remove_any(headers, &MESH_INTERNAL);
    let xff = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(existing) if !existing.is_empty() => format!("{existing},{remote_ip}"),
        _ => remote_ip.to_string(),
    };
    if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(xff)) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(scheme));
    if !headers.contains_key(&X_REQUEST_ID) {
        let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut text);
        if let Ok(v) = HeaderValue::from_str(id) {
            headers.insert(X_REQUEST_ID.clone(), v);
        }
    }
}

/// Whether a `TE` field lists `trailers`.
fn accepts_trailers(headers: &HeaderMap) -> bool {
    headers.get_all(header::TE).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',').any(|t| {
                t.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .eq_ignore_ascii_case("trailers")
            })
        })
    })
}

/// Removes those of `names` that `headers` has. Most messages have none of them, and a look at
/// each name they carry costs less than a lookup for each name removed.
fn remove_any(headers: &mut HeaderMap, names: &[HeaderName]) {
    if headers.keys().any(|k| names.contains(k)) {
        for name in names {
            headers.remove(name);
        }
    }
}

pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Every name `Connection` lists goes (RFC 9110 §7.6.1), `close` too should a field carry
    // that name; names are made only for fields that are there, so the common `close` and
    // `keep-alive` tokens cost no allocation.
    let listed: Vec<HeaderName> = crate::http1::connection_tokens(headers)
        .filter(|token| headers.contains_key(*token))
        .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    remove_any(headers, &HOP_BY_HOP);
}

pub fn apply_header_ops(headers: &mut HeaderMap, ops: &HeaderOps) {
    if ops.is_empty() {
        return;
    }
    for (name, value) in &ops.set {
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
            headers.insert(n, v);
        }
    }
    for (name, value) in &ops.add {
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
            headers.append(n, v);
        }
    }
    for name in &ops.remove {
        headers.remove(name.as_str());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        headers
    }

    fn names(headers: &HeaderMap) -> Vec<&str> {
        let mut names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        names
    }

    /// RFC 9110 §7.6.1: the hop-by-hop names and those `Connection` lists (any case, with or
    /// with `close` among them, and a field named `close` too) go; the rest stays.
    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut headers = map(&[
            ("connection", "Close, X-Listed ,keep-alive"),
            ("connection", "x-second"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-t"),
            ("upgrade", "websocket"),
            ("transfer-encoding", "chunked"),
            ("x-listed", "1"),
            ("x-second", "2"),
            ("close", "a field named close"),
            ("x-kept", "3"),
            ("host", "a.example"),
        ]);
        remove_hop_by_hop(&mut headers);
        assert_eq!(names(&headers), ["host", "x-kept"]);

        let mut upper = map(&[("connection", "X-UPPER, , ,"), ("x-upper", "1"), ("x-kept", "2")]);
        remove_hop_by_hop(&mut upper);
        assert_eq!(names(&upper), ["x-kept"]);

        let mut plain = map(&[("host", "a.example"), ("accept", "*/*")]);
        remove_hop_by_hop(&mut plain);
        assert_eq!(names(&plain), ["accept", "host"]);
    }

    #[test]
    fn mesh_internal_headers_are_removed_only_when_present() {
        let mut headers = map(&[
            ("x-forwarded-client-cert", "By=spiffe://cluster.local/ns/a/sa/b"),
            ("x-envoy-peer-metadata-id", "sidecar~1"),
            ("x-kept", "1"),
        ]);
        remove_any(&mut headers, &MESH_INTERNAL);
        assert_eq!(names(&headers), ["x-kept"]);
        remove_any(&mut headers, &MESH_INTERNAL);
        assert_eq!(names(&headers), ["x-kept"]);
    }
}
