//! Fuzzes the HTTP/1.1 client codec (`egressd::http1`, issue 16): an upstream's response head,
//! its framing (as strict as Envoy: every ambiguity a protocol error), then the body decoder.
//! Checks: no panic; a head accepted whole is incomplete a byte short; an accepted framing of
//! an answer that has a body never has both or two lengths or a coding other than a lone
//! chunked; the body decodes alike
//! whole and a byte at a time, never past a Content-Length.
#![no_main]

use bytes::BytesMut;
use egressd::http1::{parse_response, response_framing, Decoder, Framing};
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::Method;
use libfuzzer_sys::fuzz_target;

fn decode(framing: Framing, input: &[u8], step: usize) -> Result<(Vec<u8>, bool), ()> {
    let Some(mut decoder) = Decoder::new(framing) else {
        return Ok((Vec::new(), true));
    };
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for piece in input.chunks(step.max(1)) {
        buf.extend_from_slice(piece);
        while let Some(data) = decoder.decode(&mut buf).map_err(|_| ())? {
            out.extend_from_slice(&data);
        }
        if decoder.is_done() {
            break;
        }
    }
    Ok((out, decoder.is_done()))
}

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    let Ok(Some(response)) = parse_response(&mut buf) else {
        return;
    };
    let head_len = data.len() - buf.len();
    let mut short = BytesMut::from(&data[..head_len - 1]);
    assert!(matches!(parse_response(&mut short), Ok(None)), "a head a byte short got a verdict");
    let headers = response.headers();
    let Ok(framing) = response_framing(&Method::GET, response.status(), headers) else {
        return;
    };
    // Answers that never have a body (1xx, 204, 304) are not framed by their fields.
    let status = response.status();
    let bodiless = status.is_informational() || status == 204 || status == 304;
    let lengths = headers.get_all(CONTENT_LENGTH).iter().count();
    let codings = headers.get_all(TRANSFER_ENCODING).iter().count();
    assert!(bodiless || (lengths <= 1 && codings <= 1 && lengths + codings <= 1), "ambiguous framing accepted");
    let Some(framing) = framing else {
        return; // until the close
    };
    let body = &data[head_len..];
    let whole = decode(framing, body, body.len());
    assert_eq!(whole, decode(framing, body, 1), "the body decoded differently in pieces");
    if let (Framing::Length(n), Ok((out, _))) = (framing, &whole) {
        assert!(out.len() as u64 <= n, "took more than the Content-Length");
    }
});
