//! Fuzzes the ClientHello parser (`egressd::tls::sni`) with arbitrary first bytes of a connection.
//! Checks: no panic; a verdict reached on a prefix never changes as more bytes arrive (the
//! incremental contract); and, as a differential oracle, tls-parser's own record parser accepts a
//! hello that we call complete when it sits whole in the first record.
#![no_main]

use egressd::tls::sni::{parse_client_hello, parse_client_hello_bounded, Parsed};
use libfuzzer_sys::fuzz_target;
use tls_parser::{
    parse_tls_client_hello_extensions, parse_tls_plaintext, SNIType, TlsExtension, TlsMessage, TlsMessageHandshake,
};

/// Prefixes checked per input: all of them would make the target quadratic.
const PREFIXES: usize = 48;

fuzz_target!(|data: &[u8]| {
    let whole = parse_client_hello(data);

    // Arrival in pieces: once a prefix has a verdict, the whole input has the same one.
    let step = (data.len() / PREFIXES).max(1);
    for end in (0..data.len()).step_by(step) {
        let partial = parse_client_hello(&data[..end]);
        if partial != Parsed::Incomplete {
            assert_eq!(partial, whole, "verdict changed after byte {end}");
        }
    }

    let Parsed::Complete(info) = whole else {
        return;
    };
    // The bound only ever refuses what cannot fit: a hello that arrived within `data` fits in it.
    assert_eq!(
        parse_client_hello_bounded(data, data.len()),
        Parsed::Complete(info.clone())
    );

    // Differential oracle, only where tls-parser can judge alone: the first record is all here
    // and holds the whole ClientHello message.
    let (Some(&[_, _, _, r0, r1]), Some(&[_, h0, h1, h2])) = (data.get(..5), data.get(5..9)) else {
        return;
    };
    let record_len = usize::from(u16::from_be_bytes([r0, r1]));
    let message_len = 4 + (usize::from(h0) << 16 | usize::from(h1) << 8 | usize::from(h2));
    let Some(record) = data.get(..5 + record_len) else {
        return;
    };
    if message_len > record_len {
        return;
    }
    let (_, plaintext) = parse_tls_plaintext(record).expect("tls-parser refused the record");
    let Some(TlsMessage::Handshake(TlsMessageHandshake::ClientHello(hello))) = plaintext.msg.first() else {
        panic!(
            "tls-parser did not find a ClientHello first: {:?}",
            plaintext.msg.first()
        );
    };
    assert_eq!(hello.version.0, info.legacy_version);

    // tls-parser stops at the first extension it cannot read, so it may not reach the server
    // name; when it does, it must read the same one (ours drops one trailing dot, as rustls).
    let Some(ours) = info.server_name else {
        return;
    };
    let Ok((_, extensions)) = parse_tls_client_hello_extensions(hello.ext.unwrap_or_default()) else {
        return;
    };
    for extension in extensions {
        if let TlsExtension::SNI(names) = extension {
            let theirs = names.iter().find(|(kind, _)| *kind == SNIType::HostName);
            let theirs = theirs.map(|(_, name)| {
                let name = name.strip_suffix(b".").unwrap_or(name);
                name.to_ascii_lowercase()
            });
            assert_eq!(theirs.as_deref(), Some(ours.as_bytes()));
        }
    }
});
