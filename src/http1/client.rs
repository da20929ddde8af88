//! The client side of the HTTP/1.1 codec: request heads encoded, response heads parsed and
//! framed as strictly as Envoy 1.40 (every ambiguity a protocol error, answered 502 `UPE`).
//! The connections themselves, their pool and response bodies are `crate::upstream::h1`'s.

use bytes::BytesMut;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode, Version};

use super::{connection_tokens, write_headers_unframed, Framing};
use crate::BoxError;

/// Bound on a response head (interim answers included), as Envoy's default
/// `max_request_headers_kb` (60 KiB) for the upstream codec, and on its header count (Envoy's
/// `max_headers_count`).
pub const MAX_RESPONSE_HEAD: usize = 60 * 1024;
const MAX_HEADERS: usize = 100;

/// The upstream broke HTTP/1.1 framing or syntax: answered 502 `UPE`, the connection closed.
#[derive(Debug, thiserror::Error)]
#[error("upstream protocol error: {0}")]
pub struct ProtocolError(pub &'static str);

impl ProtocolError {
    pub fn boxed(why: &'static str) -> BoxError {
        Box::new(ProtocolError(why))
    }
}

/// A request that asks to switch protocols (`Connection: upgrade` and an `Upgrade` field).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

/// The request line and headers, without the blank line that ends them.
pub fn encode_head(parts: &http::request::Parts) -> BytesMut {
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut head = BytesMut::with_capacity(64 + path.len() + parts.headers.len() * 48);
    head.extend_from_slice(parts.method.as_str().as_bytes());
    head.extend_from_slice(b" ");
    head.extend_from_slice(path.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    // Framing is written from the body (`Upload::new`).
    write_headers_unframed(&mut head, &parts.headers);
    head
}

/// Parses a complete response head off the front of `buf`; `None` while it is incomplete. Any
/// syntax error (obs-fold included, which httparse refuses by default) is a protocol error.
pub fn parse_response(buf: &mut BytesMut) -> Result<Option<Response<()>>, BoxError> {
    const INVALID: &str = "invalid response head";
    // Slots left uninitialized: httparse writes the ones it fills.
    let mut slots = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut parsed, buf, &mut slots)
        .map_err(|_| ProtocolError::boxed(INVALID))?
    {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => return Ok(None),
    };
    let status =
        StatusCode::from_u16(parsed.code.unwrap_or(0)).map_err(|_| ProtocolError::boxed("invalid status code"))?;
    let version = if parsed.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let base = buf.as_ptr() as usize;
    let fields: Vec<(HeaderName, std::ops::Range<usize>)> = parsed
        .headers
        .iter()
        .map(|h| {
            let start = h.value.as_ptr() as usize - base;
            let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| ProtocolError::boxed(INVALID))?;
            Ok((name, start..start + h.value.len()))
        })
        .collect::<Result<_, BoxError>>()?;
    // Header values share the head's bytes rather than being copied one by one.
    let head = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(fields.len());
    for (name, range) in fields {
        let value = HeaderValue::from_maybe_shared(head.slice(range)).map_err(|_| ProtocolError::boxed(INVALID))?;
        headers.append(name, value);
    }
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = version;
    *response.headers_mut() = headers;
    Ok(Some(response))
}

/// RFC 9112 §6.3 for a response: `None` when the body ends with the connection. As strict as
/// Envoy 1.40 (502 `UPE` for each): `Transfer-Encoding` with `Content-Length` (a
/// response-splitting vector), a transfer coding other than one `chunked` (`gzip, chunked`
/// would lose its `gzip` when re-framed), and more than one length, even equal ones.
pub fn response_framing(method: &Method, status: StatusCode, headers: &HeaderMap) -> Result<Option<Framing>, BoxError> {
    if method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(Some(Framing::Empty));
    }
    if let Some(framing) = response_transfer_coding(headers)? {
        return Ok(Some(framing));
    }
    Ok(match response_length(headers)? {
        Some(0) => Some(Framing::Empty),
        Some(n) => Some(Framing::Length(n)),
        None => None,
    })
}

/// `Some(Chunked)` for a lone `chunked` coding, `None` for no `Transfer-Encoding`; anything
/// else is a protocol error. Shared with hyper's responses (`crate::proxy::http`).
pub fn response_transfer_coding(headers: &HeaderMap) -> Result<Option<Framing>, BoxError> {
    let mut codings = headers.get_all(header::TRANSFER_ENCODING).iter();
    let Some(first) = codings.next() else {
        return Ok(None);
    };
    if headers.contains_key(header::CONTENT_LENGTH) {
        return Err(ProtocolError::boxed("both transfer-encoding and content-length"));
    }
    if codings.next().is_some() || !first.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked") {
        return Err(ProtocolError::boxed("a transfer coding other than chunked"));
    }
    Ok(Some(Framing::Chunked))
}

/// The one `Content-Length`, if any; two, a list, or a value that is not digits is a protocol
/// error.
pub fn response_length(headers: &HeaderMap) -> Result<Option<u64>, BoxError> {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ProtocolError::boxed("more than one content-length"));
    }
    let length = value
        .to_str()
        .ok()
        .and_then(|v| super::parse_length(v.trim()))
        .ok_or_else(|| ProtocolError::boxed("invalid content-length"))?;
    Ok(Some(length))
}

#[cfg(test)]
mod tests {
    use http::Request;

    use super::*;

    fn framing_of(method: Method, status: u16, headers: &[(&str, &str)]) -> Result<Option<Framing>, BoxError> {
        let mut map = HeaderMap::new();
        for (n, v) in headers {
            map.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        response_framing(&method, StatusCode::from_u16(status).unwrap(), &map)
    }

    fn is_protocol_error(r: Result<Option<Framing>, BoxError>) -> bool {
        r.is_err_and(|e| e.is::<ProtocolError>())
    }

    /// RFC 9112 §6.3 as Envoy 1.40 enforces it on responses (issue 16: each of these it
    /// answers 502 `UPE`).
    #[test]
    fn response_framing_follows_rfc_9112() {
        let length = |n| Some(Framing::Length(n));
        assert_eq!(
            framing_of(Method::GET, 200, &[("content-length", "5")]).unwrap(),
            length(5)
        );
        assert_eq!(
            framing_of(Method::GET, 200, &[("content-length", "005")]).unwrap(),
            length(5)
        );
        assert_eq!(
            framing_of(Method::GET, 200, &[("content-length", "0")]).unwrap(),
            Some(Framing::Empty)
        );
        assert_eq!(
            framing_of(Method::HEAD, 200, &[("content-length", "5")]).unwrap(),
            Some(Framing::Empty)
        );
        assert_eq!(
            framing_of(Method::GET, 304, &[("content-length", "5")]).unwrap(),
            Some(Framing::Empty)
        );
        assert_eq!(framing_of(Method::GET, 204, &[]).unwrap(), Some(Framing::Empty));
        assert_eq!(
            framing_of(Method::GET, 200, &[("transfer-encoding", "Chunked")]).unwrap(),
            Some(Framing::Chunked)
        );
        // No framing at all: the body runs until the close.
        assert_eq!(framing_of(Method::GET, 200, &[]).unwrap(), None);
        for refused in [
            &[("transfer-encoding", "chunked"), ("content-length", "5")][..],
            &[("transfer-encoding", "gzip, chunked")],
            &[("transfer-encoding", "gzip"), ("transfer-encoding", "chunked")],
            &[("transfer-encoding", "gzip")],
            &[("content-length", "7, 7")],
            &[("content-length", "7"), ("content-length", "7")],
            &[("content-length", "7"), ("content-length", "8")],
            &[("content-length", "-1")],
            &[("content-length", "+5")],
        ] {
            assert!(is_protocol_error(framing_of(Method::GET, 200, refused)), "{refused:?}");
        }
    }

    #[test]
    fn a_head_is_parsed_across_reads_and_interim_responses_are_seen() {
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\ncontent-le"[..]);
        assert!(parse_response(&mut buf).unwrap().is_none());
        buf.extend_from_slice(b"ngth: 3\r\nx-a: b\r\n\r\nabc");
        let response = parse_response(&mut buf).unwrap().unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["x-a"], "b");
        assert_eq!(&buf[..], b"abc", "the body's first bytes stay buffered");
        for bad in [
            &b"HTTP/1.1 2000 OK\r\n\r\n"[..],
            b"garbage\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nx-a: b\r\n c\r\ncontent-length: 0\r\n\r\n",
        ] {
            let e = parse_response(&mut BytesMut::from(bad)).unwrap_err();
            assert!(e.is::<ProtocolError>(), "{e}");
        }
    }

    #[test]
    fn requests_are_encoded_with_their_path_and_headers() {
        let (parts, ()) = Request::builder()
            .method(Method::GET)
            .uri("/politics?x=1")
            .header("host", "edition.cnn.com")
            .body(())
            .unwrap()
            .into_parts();
        assert_eq!(
            &encode_head(&parts)[..],
            b"GET /politics?x=1 HTTP/1.1\r\nhost: edition.cnn.com\r\n"
        );
    }
}
