//! Fuzzes the HTTP/1.1 server codec (`egressd::http1`, issue 16): the request head with
//! its target, Host and framing checks, then the body decoder on the bytes after the head.
//! Checks: no panic; a head accepted whole is accepted the same way when it arrives a byte
//! short (incomplete, never a different verdict); a body decodes to the same bytes and the same
//! verdict whole and a byte at a time (the decoder's incremental contract); a decoder never
//! takes more than a Content-Length.
#![no_main]

use bytes::BytesMut;
use egressd::http1::{parse_request, Decoder, Framing, Settings};
use libfuzzer_sys::fuzz_target;

fn settings() -> Settings {
    Settings {
        max_headers: 100,
        max_head_bytes: 60 * 1024,
        header_timeout: std::time::Duration::from_secs(1),
    }
}

/// The body bytes a decoder takes from `input`, fed in pieces of `step`; `Err` on a framing
/// error, with whether the body ended.
fn decode(framing: Framing, input: &[u8], step: usize) -> (Result<Vec<u8>, ()>, bool) {
    let Some(mut decoder) = Decoder::new(framing) else {
        return (Ok(Vec::new()), true);
    };
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for piece in input.chunks(step.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(data)) => out.extend_from_slice(&data),
                Ok(None) => break,
                Err(_) => return (Err(()), decoder.is_done()),
            }
        }
        if decoder.is_done() {
            break;
        }
    }
    (Ok(out), decoder.is_done())
}

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    let verdict = parse_request(&mut buf, &settings());
    let Ok(Some((_, framing))) = verdict else {
        return;
    };
    let head_len = data.len() - buf.len();
    // A byte short of its end, the same head is incomplete, never refused or different.
    let mut short = BytesMut::from(&data[..head_len - 1]);
    assert!(
        matches!(parse_request(&mut short, &settings()), Ok(None)),
        "a head a byte short got a verdict"
    );
    let body = &data[head_len..];
    let whole = decode(framing, body, body.len());
    let bytewise = decode(framing, body, 1);
    assert_eq!(whole, bytewise, "the body decoded differently in pieces");
    if let (Framing::Length(n), (Ok(out), _)) = (framing, &whole) {
        assert!(out.len() as u64 <= n, "took more than the Content-Length");
    }
});
