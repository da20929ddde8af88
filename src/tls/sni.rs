//! ClientHello inspection for routing TLS passthrough by server name (SNI).
//! Owns the TLS record reassembly around the ClientHello and its bounded async read; the message
//! body is read by `client_hello` (tls-parser). It never consumes bytes it cannot hand back (the
//! caller replays them upstream or through `Prefixed`), never panics, and never buffers or
//! allocates past the caller's bound.

use std::borrow::Cow;
use std::io;

use tokio::io::{AsyncRead, AsyncReadExt};

use super::client_hello::parse_client_hello_body;
pub use super::client_hello::ClientHelloInfo;

/// The default bound on the bytes a ClientHello may occupy on the wire, record headers included
/// (issue 4). Post-quantum hellos are ~1.3–1.8 KB; 16 KiB leaves room for large session tickets.
pub const DEFAULT_MAX_CLIENT_HELLO_BYTES: usize = 16 * 1024;

/// RFC 8446 §5.2 allows 2^14 + 256 bytes for a protected record; a plaintext ClientHello record
/// must be smaller still, so anything above this is not TLS we should try to read.
const MAX_RECORD_LEN: usize = 16384 + 256;
const RECORD_HEADER_LEN: usize = 5;
const HANDSHAKE_HEADER_LEN: usize = 4;
const CONTENT_TYPE_HANDSHAKE: u8 = 22;
const HANDSHAKE_TYPE_CLIENT_HELLO: u8 = 1;
/// Most ClientHellos fit in one read of this size; the buffer only grows for the rest.
const INITIAL_READ_BUFFER: usize = 2048;

/// The parser's verdict on the bytes received so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Everything so far is a valid prefix of a ClientHello: read more.
    Incomplete,
    /// The whole ClientHello has arrived (bytes after it are not looked at).
    Complete(ClientHelloInfo),
    /// These bytes can never become an acceptable ClientHello.
    Invalid(Refusal),
}

/// Why a connection's first bytes were refused; `as_str` is stable for logs and counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Refusal {
    /// The stream does not start with a TLS handshake record: plain HTTP, an SSLv2-compatible
    /// hello (first byte 0x80..), an alert, or any other protocol.
    #[error("not a TLS handshake")]
    NotTls,
    /// TLS framing or ClientHello contents that violate the protocol, or that two readers could
    /// read differently (see `ClientHelloInfo::server_name`).
    #[error("malformed TLS ClientHello")]
    Malformed,
    /// The ClientHello cannot end within the byte bound.
    #[error("TLS ClientHello larger than the bound")]
    TooLarge,
}

impl Refusal {
    pub const fn as_str(self) -> &'static str {
        match self {
            Refusal::NotTls => "not_tls",
            Refusal::Malformed => "malformed",
            Refusal::TooLarge => "too_large",
        }
    }
}

/// Why `read_client_hello` returned without a ClientHello.
#[derive(Debug, thiserror::Error)]
pub enum SniError {
    #[error("{0}")]
    Refused(#[from] Refusal),
    #[error("downstream closed after {received} bytes, before the ClientHello was complete")]
    ClosedEarly { received: usize },
    #[error("reading the ClientHello: {0}")]
    Io(#[from] io::Error),
}

impl SniError {
    /// A stable label for logs and counters.
    pub fn as_str(&self) -> &'static str {
        match self {
            SniError::Refused(refusal) => refusal.as_str(),
            SniError::ClosedEarly { .. } => "closed_early",
            SniError::Io(_) => "io",
        }
    }
}

/// Parses the first bytes of a connection as a ClientHello, bounded by
/// [`DEFAULT_MAX_CLIENT_HELLO_BYTES`].
pub fn parse_client_hello(buf: &[u8]) -> Parsed {
    parse_client_hello_bounded(buf, DEFAULT_MAX_CLIENT_HELLO_BYTES)
}

/// Parses the first bytes of a connection as a ClientHello that must end within `max_bytes`
/// bytes of the stream (record headers included, i.e. what a reader has to buffer).
///
/// Incremental by re-reading: call it again with the longer buffer after every read. Verdicts
/// come as early as the bytes allow (`NotTls` after one byte, `TooLarge` as soon as a length
/// proves it), so a non-TLS or hostile peer is refused without waiting for more.
pub fn parse_client_hello_bounded(buf: &[u8], max_bytes: usize) -> Parsed {
    match reassemble_client_hello(buf, max_bytes) {
        Ok(None) => Parsed::Incomplete,
        Ok(Some(body)) => match parse_client_hello_body(&body) {
            Ok(info) => Parsed::Complete(info),
            Err(refusal) => Parsed::Invalid(refusal),
        },
        Err(refusal) => Parsed::Invalid(refusal),
    }
}

/// Reads from `stream` until a whole ClientHello has arrived, and returns it with every byte
/// read so far (the hello and anything after it), which the caller must replay upstream.
///
/// The buffer starts at 2 KiB and grows only while the hello is incomplete, never past
/// `max_bytes`. This waits as long as the peer keeps the connection open: the caller bounds it
/// with its own `tokio::time::timeout` (issue 4: 15 s by default).
pub async fn read_client_hello<S: AsyncRead + Unpin>(
    stream: &mut S,
    max_bytes: usize,
) -> Result<(ClientHelloInfo, Vec<u8>), SniError> {
    let mut buf = vec![0; INITIAL_READ_BUFFER.min(max_bytes).max(1)];
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            // The parser refuses a hello that cannot fit, so a full buffer at the bound is only
            // reached if it somehow did not; refuse rather than grow.
            if buf.len() >= max_bytes {
                return Err(Refusal::TooLarge.into());
            }
            buf.resize(buf.len().saturating_mul(2).min(max_bytes), 0);
        }
        let read = stream.read(&mut buf[filled..]).await?;
        if read == 0 {
            return Err(SniError::ClosedEarly { received: filled });
        }
        filled += read;
        match parse_client_hello_bounded(&buf[..filled], max_bytes) {
            Parsed::Incomplete => continue,
            Parsed::Complete(info) => {
                buf.truncate(filled);
                return Ok((info, buf));
            }
            Parsed::Invalid(refusal) => return Err(refusal.into()),
        }
    }
}

/// Walks the handshake records at the start of `buf` and returns the ClientHello body once all
/// of it has arrived: borrowed when it sits in one record, copied together when it spans several.
fn reassemble_client_hello(buf: &[u8], max_bytes: usize) -> Result<Option<Cow<'_, [u8]>>, Refusal> {
    let mut record_start = 0;
    // The 4-byte handshake header may itself be split across records, so it is gathered a byte
    // at a time: type in the top byte, body length in the low 24 bits.
    let mut handshake_header: u32 = 0;
    let mut header_bytes = 0;
    let mut body_len: Option<usize> = None;
    let mut body: Cow<'_, [u8]> = Cow::Borrowed(&[]);
    loop {
        let wanted = remaining(header_bytes, body_len, &body);
        if record_start + RECORD_HEADER_LEN + wanted > max_bytes {
            return Err(Refusal::TooLarge);
        }
        let record = buf.get(record_start..).unwrap_or_default();
        let Some(record_len) = record_header(record, record_start == 0)? else {
            return Ok(None);
        };
        let payload_start = record_start + RECORD_HEADER_LEN;
        let arrived = buf.get(payload_start..).unwrap_or_default();
        let mut payload = arrived.get(..record_len).unwrap_or(arrived);
        let mut cursor = payload_start;
        loop {
            let wanted = remaining(header_bytes, body_len, &body);
            if body_len.is_some() && wanted == 0 {
                // Whatever follows in this record or the stream is not ours to judge.
                return Ok(Some(body));
            }
            if cursor + wanted > max_bytes {
                return Err(Refusal::TooLarge);
            }
            let (chunk, rest) = payload.split_at(wanted.min(payload.len()));
            if chunk.is_empty() {
                break;
            }
            match body_len {
                None => {
                    for &byte in chunk {
                        handshake_header = handshake_header << 8 | u32::from(byte);
                    }
                    header_bytes += chunk.len();
                    if header_bytes == HANDSHAKE_HEADER_LEN {
                        body_len = Some(client_hello_len(handshake_header)?);
                    }
                }
                Some(len) => append(&mut body, chunk, len),
            }
            cursor += chunk.len();
            payload = rest;
        }
        if arrived.len() < record_len {
            return Ok(None);
        }
        record_start = payload_start + record_len;
    }
}

/// Handshake bytes still needed: the rest of the header, then the rest of the body.
fn remaining(header_bytes: usize, body_len: Option<usize>, body: &[u8]) -> usize {
    match body_len {
        None => HANDSHAKE_HEADER_LEN.saturating_sub(header_bytes),
        Some(len) => len.saturating_sub(body.len()),
    }
}

/// Validates as much of a record header as has arrived; `Some(payload length)` once all has.
fn record_header(record: &[u8], first: bool) -> Result<Option<usize>, Refusal> {
    let mut bytes = record.iter().copied();
    match bytes.next() {
        None => return Ok(None),
        Some(CONTENT_TYPE_HANDSHAKE) => {}
        Some(_) if first => return Err(Refusal::NotTls),
        // Anything interleaved with the ClientHello's records (alert, change_cipher_spec, data)
        // is a protocol violation.
        Some(_) => return Err(Refusal::Malformed),
    }
    // legacy_record_version: 0x0301..=0x0304; SSL 3.0 (0x0300) is not served.
    match (bytes.next(), bytes.next()) {
        (None, _) | (Some(3), None) => return Ok(None),
        (Some(3), Some(1..=4)) => {}
        _ => return Err(Refusal::Malformed),
    }
    let (Some(high), Some(low)) = (bytes.next(), bytes.next()) else {
        return Ok(None);
    };
    let len = usize::from(u16::from_be_bytes([high, low]));
    // RFC 8446 §5.1: zero-length handshake fragments are forbidden (and would let a peer make
    // us walk many empty records).
    if len == 0 || len > MAX_RECORD_LEN {
        return Err(Refusal::Malformed);
    }
    Ok(Some(len))
}

fn client_hello_len(handshake_header: u32) -> Result<usize, Refusal> {
    let [message_type, len @ ..] = handshake_header.to_be_bytes();
    if message_type != HANDSHAKE_TYPE_CLIENT_HELLO {
        return Err(Refusal::Malformed);
    }
    let [a, b, c] = len;
    Ok(usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c))
}

/// Adds a piece of the body: the first piece is borrowed, a second one forces a copy, sized
/// once for the whole body (already checked against the bound).
fn append<'a>(body: &mut Cow<'a, [u8]>, chunk: &'a [u8], body_len: usize) {
    match body {
        Cow::Borrowed([]) => *body = Cow::Borrowed(chunk),
        Cow::Borrowed(first) => {
            let mut whole = Vec::with_capacity(body_len);
            whole.extend_from_slice(first);
            whole.extend_from_slice(chunk);
            *body = Cow::Owned(whole);
        }
        Cow::Owned(whole) => whole.extend_from_slice(chunk),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use rustls::crypto::aws_lc_rs::{default_provider, kx_group};
    use rustls_pki_types::ServerName;
    use tokio::io::AsyncWriteExt;

    use super::*;

    const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

    /// The first flight of a real rustls client: one record holding the ClientHello. The
    /// post-quantum one puts X25519MLKEM768 first, as rustls does by default with its
    /// `prefer-post-quantum` feature (which this crate does not enable) and as browsers do:
    /// rustls then sends both a hybrid and an X25519 key share.
    pub(crate) fn rustls_client_hello(server_name: &str, post_quantum: bool) -> Vec<u8> {
        let mut provider = default_provider();
        provider.kx_groups = match post_quantum {
            true => vec![kx_group::X25519MLKEM768, kx_group::X25519],
            false => vec![kx_group::X25519],
        };
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        let name = ServerName::try_from(server_name.to_owned()).unwrap();
        let mut client = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut first_flight = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut first_flight).unwrap();
        }
        first_flight
    }

    /// Re-frames a one-record hello into records whose payloads have the given sizes (the last
    /// record takes the rest), as a client with a small record size limit would send it.
    pub(crate) fn reframe(hello: &[u8], sizes: &[usize]) -> Vec<u8> {
        let mut message = &hello[RECORD_HEADER_LEN..];
        assert_eq!(message.len(), usize::from(u16::from_be_bytes([hello[3], hello[4]])));
        let mut out = Vec::new();
        for &size in sizes.iter().chain(std::iter::once(&usize::MAX)) {
            let (payload, rest) = message.split_at(size.min(message.len()));
            out.extend_from_slice(&[CONTENT_TYPE_HANDSHAKE, 3, 1]);
            out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
            out.extend_from_slice(payload);
            message = rest;
            if message.is_empty() {
                break;
            }
        }
        out
    }

    fn complete(parsed: Parsed) -> ClientHelloInfo {
        match parsed {
            Parsed::Complete(info) => info,
            other => panic!("expected a complete ClientHello, got {other:?}"),
        }
    }

    fn assert_cnn(info: &ClientHelloInfo) {
        assert_eq!(info.server_name.as_deref(), Some("edition.cnn.com"));
        assert_eq!(info.alpn, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
        assert_eq!(info.legacy_version, 0x0303);
        assert_eq!(info.supported_versions, vec![0x0304, 0x0303]);
    }

    #[test]
    fn whole_hello_is_complete() {
        let hello = rustls_client_hello("edition.cnn.com", false);
        assert_cnn(&complete(parse_client_hello(&hello)));
    }

    #[test]
    fn post_quantum_hello_is_complete() {
        let classic = rustls_client_hello("edition.cnn.com", false);
        let hello = rustls_client_hello("edition.cnn.com", true);
        println!(
            "ClientHello sizes: classic {} B, post-quantum {} B",
            classic.len(),
            hello.len()
        );
        assert!((1200..=1800).contains(&hello.len()), "{} bytes", hello.len());
        assert_cnn(&complete(parse_client_hello(&hello)));
    }

    #[test]
    fn hello_fed_one_byte_at_a_time_is_incomplete_until_its_last_byte() {
        let hello = rustls_client_hello("edition.cnn.com", true);
        for end in 0..hello.len() {
            assert_eq!(parse_client_hello(&hello[..end]), Parsed::Incomplete, "at {end}");
        }
        assert_cnn(&complete(parse_client_hello(&hello)));
    }

    #[test]
    fn hello_split_across_records() {
        let hello = rustls_client_hello("edition.cnn.com", true);
        // Two records; then many, with the 4-byte handshake header itself split.
        for sizes in [&[700][..], &[1, 2, 3, 100, 1000]] {
            let framed = reframe(&hello, sizes);
            for end in 0..framed.len() {
                assert_eq!(parse_client_hello(&framed[..end]), Parsed::Incomplete);
            }
            assert_cnn(&complete(parse_client_hello(&framed)));
        }
    }

    #[test]
    fn bytes_after_the_hello_are_left_alone() {
        let mut stream = rustls_client_hello("edition.cnn.com", false);
        stream.extend_from_slice(&[23, 3, 3, 0, 5, 1, 2]); // early data, partly arrived
        assert_cnn(&complete(parse_client_hello(&stream)));
    }

    #[test]
    fn ip_address_gives_no_server_name() {
        let hello = rustls_client_hello("192.0.2.7", true);
        let info = complete(parse_client_hello(&hello));
        assert_eq!(info.server_name, None);
        assert_eq!(info.alpn.len(), 2);
    }

    #[test]
    fn non_tls_first_bytes_are_refused_at_once() {
        let cases: [&[u8]; 5] = [
            b"GET / HTTP/1.1\r\nHost: edition.cnn.com\r\n\r\n",
            b"\x80\x2e\x01\x03\x01\x00\x15\x00\x00\x00\x10", // SSLv2-compatible hello
            b"\x15\x03\x03\x00\x02\x02\x28",                 // alert record
            b"\x00\xff\x13garbage",
            b"SSH-2.0-OpenSSH_9.6\r\n",
        ];
        for bytes in cases {
            assert_eq!(parse_client_hello(&bytes[..1]), Parsed::Invalid(Refusal::NotTls));
            assert_eq!(parse_client_hello(bytes), Parsed::Invalid(Refusal::NotTls));
        }
    }

    #[test]
    fn malformed_framing_is_refused() {
        let hello = rustls_client_hello("edition.cnn.com", false);
        let mut alert_mid_hello = reframe(&hello, &[100]);
        alert_mid_hello[105] = 21;
        let mut server_hello = hello.clone();
        server_hello[5] = 2;
        let cases: [(&str, &[u8]); 6] = [
            ("record of 20000 bytes", b"\x16\x03\x01\x4e\x20"),
            ("zero-length record", b"\x16\x03\x01\x00\x00"),
            ("SSL 3.0 record", b"\x16\x03\x00\x00\x10"),
            ("garbage after type byte", b"\x16garbage"),
            ("alert between hello records", &alert_mid_hello),
            ("ServerHello", &server_hello),
        ];
        for (name, bytes) in cases {
            assert_eq!(parse_client_hello(bytes), Parsed::Invalid(Refusal::Malformed), "{name}");
        }
    }

    #[test]
    fn truncated_hello_is_incomplete_and_inconsistent_lengths_are_malformed() {
        let hello = rustls_client_hello("edition.cnn.com", false);
        assert_eq!(parse_client_hello(&hello[..hello.len() - 1]), Parsed::Incomplete);
        // The record ends where it says, but the handshake message claims one byte less than the
        // record holds: the body parser sees no room for the last extension.
        let mut short_message = hello.clone();
        short_message[8] -= 1;
        assert_eq!(parse_client_hello(&short_message), Parsed::Invalid(Refusal::Malformed));
    }

    #[test]
    fn hello_larger_than_the_bound_is_refused_once_its_length_is_known() {
        let hello = rustls_client_hello("edition.cnn.com", true);
        // Record header and handshake header prove it cannot fit in 1 KiB.
        let header = &hello[..RECORD_HEADER_LEN + HANDSHAKE_HEADER_LEN];
        assert_eq!(
            parse_client_hello_bounded(header, 1024),
            Parsed::Invalid(Refusal::TooLarge)
        );
        assert_eq!(
            parse_client_hello_bounded(&hello, hello.len() - 1),
            Parsed::Invalid(Refusal::TooLarge)
        );
        assert!(matches!(
            parse_client_hello_bounded(&hello, hello.len()),
            Parsed::Complete(_)
        ));
        // A handshake message claiming 20 000 bytes over several records.
        let big = [22, 3, 1, 0x40, 0, 1, 0, 0x4e, 0x20];
        assert_eq!(parse_client_hello(&big), Parsed::Invalid(Refusal::TooLarge));
        // Record headers count too: 1-byte records cost six bytes per hello byte.
        let tiny_records = reframe(&hello, &[1; 3000]);
        let bound = hello.len() * 2;
        assert_eq!(
            parse_client_hello_bounded(&tiny_records, bound),
            Parsed::Invalid(Refusal::TooLarge)
        );
    }

    #[tokio::test]
    async fn read_client_hello_over_dribbled_writes() {
        let hello = reframe(&rustls_client_hello("edition.cnn.com", true), &[300]);
        let (mut client, mut server) = tokio::io::duplex(64);
        let sent = hello.clone();
        let writer = tokio::spawn(async move {
            for chunk in sent.chunks(97) {
                client.write_all(chunk).await.unwrap();
                tokio::task::yield_now().await;
            }
            client.write_all(b"after").await.unwrap();
            client
        });
        let (info, replay) = read_client_hello(&mut server, DEFAULT_MAX_CLIENT_HELLO_BYTES)
            .await
            .unwrap();
        assert_cnn(&info);
        assert!(replay.starts_with(&hello), "replay holds the whole hello");
        assert!(replay.len() <= hello.len() + 5);
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn read_client_hello_errors() {
        let hello = rustls_client_hello("edition.cnn.com", true);
        let (mut client, mut server) = tokio::io::duplex(4096);
        client.write_all(&hello[..600]).await.unwrap();
        drop(client);
        let error = read_client_hello(&mut server, 4096).await.unwrap_err();
        assert!(matches!(error, SniError::ClosedEarly { received: 600 }), "{error}");
        assert_eq!(error.as_str(), "closed_early");

        let (mut client, mut server) = tokio::io::duplex(4096);
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let error = read_client_hello(&mut server, 4096).await.unwrap_err();
        assert_eq!(error.as_str(), "not_tls");

        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        client.write_all(&hello).await.unwrap();
        let error = read_client_hello(&mut server, 1024).await.unwrap_err();
        assert!(matches!(error, SniError::Refused(Refusal::TooLarge)), "{error}");
    }

    /// Writes the seed corpus for `fuzz/fuzz_targets/client_hello.rs`. Run once with
    /// `cargo test --lib tls::sni::tests::write_fuzz_seed_corpus -- --ignored`.
    #[test]
    #[ignore = "writes files into fuzz/corpus"]
    fn write_fuzz_seed_corpus() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/client_hello");
        std::fs::create_dir_all(&dir).unwrap();
        let post_quantum = rustls_client_hello("edition.cnn.com", true);
        let seeds = [
            ("classic", rustls_client_hello("edition.cnn.com", false)),
            ("post_quantum", post_quantum.clone()),
            ("two_records", reframe(&post_quantum, &[700])),
            ("split_header", reframe(&post_quantum, &[2, 300])),
            ("no_sni", rustls_client_hello("192.0.2.7", false)),
        ];
        for (name, bytes) in seeds {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
}
