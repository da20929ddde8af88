//! Issue 16: differential test of egressd's HTTP/1.1 request codec against a reference, hyper's
//! HTTP/1.1 server (the codec egressd replaced, run in-process on the same bytes). For every
//! case: if hyper refuses a request, egressd refuses it too (egressd is never more lenient);
//! when both accept, they agree on the method, the target and the body's bytes (the body
//! boundary: what follows belongs to the next request). Where egressd refuses what hyper
//! accepts, the table says so and why (RFC 9112 or Envoy 1.40's behaviour); a case marked
//! stricter that stops differing fails the test, so the table stays true.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use egressd::http1::{parse_request, Decoder, Settings};

/// What a codec made of the first request in the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    /// Method, request-target as given, body bytes.
    Accepted(String, String, Vec<u8>),
    Refused,
}

fn settings() -> Settings {
    Settings {
        max_headers: 100,
        max_head_bytes: 60 * 1024,
        header_timeout: Duration::from_secs(1),
    }
}

fn egressd(raw: &[u8]) -> Verdict {
    let mut buf = BytesMut::from(raw);
    let Ok(Some((parts, framing))) = parse_request(&mut buf, &settings()) else {
        return Verdict::Refused;
    };
    let mut body = Vec::new();
    if let Some(mut decoder) = Decoder::new(framing) {
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(data)) => body.extend_from_slice(&data),
                Ok(None) => break,
                Err(_) => return Verdict::Refused,
            }
        }
        if !decoder.is_done() {
            return Verdict::Refused; // the bytes ended inside the body
        }
    }
    Verdict::Accepted(parts.method.to_string(), parts.uri.to_string(), body)
}

/// hyper's server on an in-memory connection: the service answers with the method, target and
/// body it got; anything but that answer (a 4xx, a close) is a refusal.
async fn hyper(raw: &[u8]) -> Verdict {
    let (mut client, server) = tokio::io::duplex(1 << 20);
    let service = service_fn(|req: Request<hyper::body::Incoming>| async move {
        let head = format!("{} {}\n", req.method(), req.uri());
        let body = req.into_body().collect().await?.to_bytes();
        let mut out = head.into_bytes();
        out.extend_from_slice(&body);
        Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from(out))))
    });
    let conn = tokio::spawn(
        http1::Builder::new()
            .keep_alive(false)
            .half_close(true)
            .serve_connection(TokioIo::new(server), service),
    );
    client.write_all(raw).await.unwrap();
    client.shutdown().await.unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), client.read_to_end(&mut response)).await;
    conn.abort();
    let Some(at) = response.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Verdict::Refused;
    };
    if !response.starts_with(b"HTTP/1.1 200 ") && !response.starts_with(b"HTTP/1.0 200 ") {
        return Verdict::Refused;
    }
    let body = &response[at + 4..];
    let Some(nl) = body.iter().position(|&b| b == b'\n') else {
        return Verdict::Refused;
    };
    let line = String::from_utf8_lossy(&body[..nl]).into_owned();
    let (method, target) = line.split_once(' ').unwrap();
    Verdict::Accepted(method.into(), target.into(), body[nl + 1..].to_vec())
}

const H: &str = "host: a.example\r\n";

/// (name, raw request, `None` when both must agree or `Some(why)` when egressd refuses what
/// hyper accepts).
fn cases() -> Vec<(&'static str, String, Option<&'static str>)> {
    let smuggled = "GET /smuggled HTTP/1.1\r\nhost: a.example\r\n\r\n";
    vec![
        ("plain GET", format!("GET /a?b=c HTTP/1.1\r\n{H}\r\n"), None),
        (
            "POST with a length",
            format!("POST /p HTTP/1.1\r\n{H}content-length: 5\r\n\r\nhello{smuggled}"),
            None,
        ),
        (
            "a length with leading zeros",
            format!("POST /p HTTP/1.1\r\n{H}content-length: 0005\r\n\r\nhello"),
            None,
        ),
        (
            "chunked",
            format!("POST /c HTTP/1.1\r\n{H}transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n{smuggled}"),
            None,
        ),
        (
            "chunked, upper case",
            format!("POST /c HTTP/1.1\r\n{H}Transfer-Encoding: CHUNKED\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
            None,
        ),
        (
            "a chunk size with leading zeros",
            format!("POST /c HTTP/1.1\r\n{H}transfer-encoding: chunked\r\n\r\n0005\r\nhello\r\n0000\r\n\r\n"),
            None,
        ),
        (
            "a chunk extension",
            format!("POST /c HTTP/1.1\r\n{H}transfer-encoding: chunked\r\n\r\n5;a=b;c=\"d e\"\r\nhello\r\n0\r\n\r\n"),
            None,
        ),
        (
            "trailers",
            format!("POST /c HTTP/1.1\r\n{H}transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nx-t: 1\r\n\r\n"),
            None,
        ),
        (
            "absolute-form",
            "GET http://a.example/x HTTP/1.1\r\nhost: a.example\r\n\r\n".to_string(),
            None,
        ),
        ("OPTIONS *", format!("OPTIONS * HTTP/1.1\r\n{H}\r\n"), None),
        ("HTTP/1.0", format!("GET /old HTTP/1.0\r\n{H}\r\n"), None),
        (
            "a bad chunk size",
            format!("POST /c HTTP/1.1\r\n{H}transfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"),
            None,
        ),
        (
            "a chunk size past 64 bits",
            format!("POST /c HTTP/1.1\r\n{H}transfer-encoding: chunked\r\n\r\n10000000000000000\r\nx\r\n0\r\n\r\n"),
            None,
        ),
        (
            "a negative length",
            format!("POST /p HTTP/1.1\r\n{H}content-length: -1\r\n\r\n"),
            None,
        ),
        (
            "a length with a sign",
            format!("POST /p HTTP/1.1\r\n{H}content-length: +5\r\n\r\nhello"),
            None,
        ),
        (
            "two different lengths",
            format!("POST /p HTTP/1.1\r\n{H}content-length: 5\r\ncontent-length: 6\r\n\r\nhello!"),
            None,
        ),
        (
            "a space before the colon",
            format!("GET / HTTP/1.1\r\n{H}x-a : b\r\n\r\n"),
            None,
        ),
        ("obs-fold", format!("GET / HTTP/1.1\r\n{H}x-a: b\r\n c\r\n\r\n"), None),
        (
            "a NUL in a value",
            format!("GET / HTTP/1.1\r\n{H}x-a: b\0c\r\n\r\n"),
            None,
        ),
        ("a space in the target", format!("GET /a b HTTP/1.1\r\n{H}\r\n"), None),
        (
            "HTTP/2.0 on the request line",
            format!("GET / HTTP/2.0\r\n{H}\r\n"),
            None,
        ),
        (
            "two equal lengths",
            format!("POST /p HTTP/1.1\r\n{H}content-length: 5\r\ncontent-length: 5\r\n\r\nhello"),
            Some("any repeated length is a 400, as Envoy 1.40 answers"),
        ),
        (
            "a length list",
            format!("POST /p HTTP/1.1\r\n{H}content-length: 5, 5\r\n\r\nhello"),
            None,
        ),
        (
            "length and chunked",
            format!(
                "POST /p HTTP/1.1\r\n{H}content-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            Some("both framings is a 400 (RFC 9112 §6.1 allows a server to refuse; Envoy does)"),
        ),
        (
            "chunked twice",
            format!("POST /p HTTP/1.1\r\n{H}transfer-encoding: chunked, chunked\r\n\r\n0\r\n\r\n"),
            Some("only a single `chunked` coding is accepted"),
        ),
        (
            "gzip, chunked",
            format!("POST /p HTTP/1.1\r\n{H}transfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n"),
            Some("codings other than chunked are 501, as Envoy"),
        ),
        (
            "chunked on HTTP/1.0",
            format!("POST /p HTTP/1.0\r\n{H}transfer-encoding: chunked\r\n\r\n0\r\n\r\n"),
            None,
        ),
        (
            "a chunk extension without `;`",
            format!("POST /c HTTP/1.1\r\n{H}transfer-encoding: chunked\r\n\r\n5 x\r\nhello\r\n0\r\n\r\n"),
            None,
        ),
        (
            "no Host",
            "GET / HTTP/1.1\r\n\r\n".to_string(),
            Some("RFC 9112 §3.2: 400 without Host"),
        ),
        (
            "two Hosts",
            format!("GET / HTTP/1.1\r\n{H}{H}\r\n"),
            Some("RFC 9112 §3.2: 400 for two Host fields"),
        ),
        (
            "an empty Host",
            "GET / HTTP/1.1\r\nhost: \r\n\r\n".to_string(),
            Some("an empty Host names nothing to route by"),
        ),
        (
            "userinfo in Host",
            "GET / HTTP/1.1\r\nhost: u@a.example\r\n\r\n".to_string(),
            Some("RFC 9110 §7.2: no userinfo"),
        ),
        (
            "authority-form on GET",
            format!("GET a.example:80 HTTP/1.1\r\n{H}\r\n"),
            Some("authority-form is for CONNECT only"),
        ),
        (
            "asterisk-form on GET",
            format!("GET * HTTP/1.1\r\n{H}\r\n"),
            Some("asterisk-form is for OPTIONS only"),
        ),
        (
            "CONNECT with origin-form",
            format!("CONNECT / HTTP/1.1\r\n{H}\r\n"),
            None,
        ),
    ]
}

#[tokio::test]
async fn egressd_agrees_with_hyper_or_is_stricter_for_a_stated_reason() {
    let mut failures = Vec::new();
    for (name, raw, stricter) in cases() {
        let ours = egressd(raw.as_bytes());
        let theirs = hyper(raw.as_bytes()).await;
        let outcome = match (&ours, &theirs, stricter) {
            (a, b, None) if a == b => Ok(()),
            (Verdict::Refused, Verdict::Accepted(..), Some(_)) => Ok(()),
            (_, _, Some(why)) => Err(format!(
                "marked stricter ({why}) but egressd {ours:?}, hyper {theirs:?}"
            )),
            (Verdict::Accepted(..), Verdict::Refused, None) => {
                Err(format!("egressd accepts what hyper refuses: {ours:?}"))
            }
            _ => Err(format!("egressd {ours:?}, hyper {theirs:?}")),
        };
        eprintln!("{name}: egressd {ours:?} / hyper {theirs:?}");
        if let Err(why) = outcome {
            failures.push(format!("{name}: {why}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
