//! The ClientHello message body → the facts routing needs: server name (SNI), ALPN, versions.
//! tls-parser reads the structure; this module adds the checks that keep our reading of the
//! bytes and the origin's reading of the same bytes from disagreeing (exactly one host name, no
//! duplicate extensions, no bytes left over). Pure: no I/O, and no panic on any input.

use rustls_pki_types::ServerName;
use tls_parser::{
    parse_tls_extension_alpn_content, parse_tls_extension_sni_content, parse_tls_extension_supported_versions,
    parse_tls_handshake_client_hello, SNIType, TlsExtension,
};

use super::sni::Refusal;

const EXTENSION_SERVER_NAME: u16 = 0;
const EXTENSION_ALPN: u16 = 16;
const EXTENSION_SUPPORTED_VERSIONS: u16 = 43;
/// Far more than any client offers (browsers send 2 or 3). Without a cap, a 16 KiB hello of
/// one-byte names would become thousands of allocations held for the connection's life.
const MAX_ALPN_PROTOCOLS: usize = 64;

/// What a ClientHello asks for, as far as routing and logging care.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientHelloInfo {
    /// The SNI host name, lowercased and without a trailing dot (RFC 6066 forbids one; rustls
    /// drops it the same way, so termination and passthrough route alike; the origin still gets
    /// the bytes as sent). `None` when the client sent no `server_name` extension or
    /// sent an IP literal in it (RFC 6066 forbids that; rustls ignores it the same way). A name
    /// that is not a valid DNS name is refused as malformed instead, as rustls and OpenSSL do, so
    /// no unvalidated bytes ever reach routing or the access log.
    pub server_name: Option<String>,
    /// ALPN protocol names in the client's order of preference; empty without the extension.
    pub alpn: Vec<Vec<u8>>,
    /// `legacy_version` of the ClientHello (0x0303 for TLS 1.2 and 1.3 clients).
    pub legacy_version: u16,
    /// The `supported_versions` extension as sent (GREASE values included); empty when absent,
    /// which means a client that speaks at most TLS 1.2.
    pub supported_versions: Vec<u16>,
}

impl ClientHelloInfo {
    /// Whether the client offers TLS 1.3.
    pub fn offers_tls13(&self) -> bool {
        self.supported_versions.contains(&0x0304)
    }
}

/// Reads a complete ClientHello body (the handshake message without its 4-byte header).
pub(crate) fn parse_client_hello_body(body: &[u8]) -> Result<ClientHelloInfo, Refusal> {
    let (rest, hello) = parse_tls_handshake_client_hello(body).map_err(|_| Refusal::Malformed)?;
    // tls-parser turns a truncated extension block into "no extensions" and leaves the bytes
    // unread; we must not route a hello whose extensions we could not read.
    if !rest.is_empty() {
        return Err(Refusal::Malformed);
    }
    let mut info = ClientHelloInfo {
        legacy_version: hello.version.0,
        ..ClientHelloInfo::default()
    };
    let mut seen = [false; 3];
    let mut block = hello.ext.unwrap_or_default();
    while !block.is_empty() {
        let (extension, rest) = split_extension(block).ok_or(Refusal::Malformed)?;
        block = rest;
        let slot = match extension.kind {
            EXTENSION_SERVER_NAME => 0,
            EXTENSION_ALPN => 1,
            EXTENSION_SUPPORTED_VERSIONS => 2,
            _ => continue,
        };
        // RFC 8446 §4.2 forbids duplicates; two server names would let us route by one while
        // the origin serves the other.
        if std::mem::replace(&mut seen[slot], true) {
            return Err(Refusal::Malformed);
        }
        match extension.kind {
            EXTENSION_SERVER_NAME => info.server_name = server_name(extension.data)?,
            EXTENSION_ALPN => info.alpn = alpn_protocols(extension.data)?,
            _ => info.supported_versions = supported_versions(extension.raw)?,
        }
    }
    Ok(info)
}

/// One extension of the block: its type, its data, and its whole encoding.
struct Extension<'a> {
    kind: u16,
    data: &'a [u8],
    raw: &'a [u8],
}

fn split_extension(block: &[u8]) -> Option<(Extension<'_>, &[u8])> {
    let (&[t0, t1, l0, l1], _) = block.split_first_chunk::<4>()?;
    let data_len = usize::from(u16::from_be_bytes([l0, l1]));
    let (raw, rest) = block.split_at_checked(4 + data_len)?;
    let extension = Extension {
        kind: u16::from_be_bytes([t0, t1]),
        data: raw.get(4..)?,
        raw,
    };
    Some((extension, rest))
}

/// The `server_name` extension must hold exactly one `host_name` entry: OpenSSL refuses anything
/// else, and any looser reading could pick a name the origin does not see. The shape is checked
/// before tls-parser reads it, so no attacker-sized list is ever built.
fn server_name(data: &[u8]) -> Result<Option<String>, Refusal> {
    let one_host_name = matches!(data, [l0, l1, 0, n0, n1, name @ ..]
        if usize::from(u16::from_be_bytes([*l0, *l1])) == 3 + name.len()
            && usize::from(u16::from_be_bytes([*n0, *n1])) == name.len());
    if !one_host_name {
        return Err(Refusal::Malformed);
    }
    let name = match parse_tls_extension_sni_content(data) {
        Ok(([], TlsExtension::SNI(names))) => match names.as_slice() {
            [(kind, name)] if *kind == SNIType::HostName => *name,
            _ => return Err(Refusal::Malformed),
        },
        _ => return Err(Refusal::Malformed),
    };
    match ServerName::try_from(name) {
        Ok(ServerName::DnsName(dns_name)) => Ok(Some(dns_name.as_ref().to_ascii_lowercase())),
        Ok(ServerName::IpAddress(_)) => Ok(None),
        _ => Err(Refusal::Malformed),
    }
}

/// RFC 7301: a non-empty list of non-empty protocol names, here at most `MAX_ALPN_PROTOCOLS`.
/// The list is walked and counted before anything is allocated per entry.
fn alpn_protocols(data: &[u8]) -> Result<Vec<Vec<u8>>, Refusal> {
    let Some((&[l0, l1], mut list)) = data.split_first_chunk::<2>() else {
        return Err(Refusal::Malformed);
    };
    if usize::from(u16::from_be_bytes([l0, l1])) != list.len() {
        return Err(Refusal::Malformed);
    }
    let mut count = 0;
    while let Some((&name_len, rest)) = list.split_first() {
        if name_len == 0 {
            return Err(Refusal::Malformed);
        }
        list = rest.get(usize::from(name_len)..).ok_or(Refusal::Malformed)?;
        count += 1;
    }
    if count == 0 || count > MAX_ALPN_PROTOCOLS {
        return Err(Refusal::Malformed);
    }
    match parse_tls_extension_alpn_content(data) {
        Ok(([], TlsExtension::ALPN(names))) if names.len() == count => {
            Ok(names.iter().map(|name| name.to_vec()).collect())
        }
        _ => Err(Refusal::Malformed),
    }
}

/// The client form is a one-byte length then 2-byte versions; tls-parser also accepts the server
/// form (a bare version) for a 2-byte body, which a ClientHello must not use.
fn supported_versions(raw: &[u8]) -> Result<Vec<u16>, Refusal> {
    let data = raw.get(4..).unwrap_or_default();
    let client_form = matches!(data.split_first(), Some((&list_len, versions))
        if usize::from(list_len) == versions.len() && !versions.is_empty() && versions.len() % 2 == 0);
    if !client_form {
        return Err(Refusal::Malformed);
    }
    match parse_tls_extension_supported_versions(raw) {
        Ok(([], TlsExtension::SupportedVersions(versions))) => Ok(versions.iter().map(|version| version.0).collect()),
        _ => Err(Refusal::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ClientHello body around the given extension block.
    fn body_with_extensions(extensions: &[u8]) -> Vec<u8> {
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[7; 32]); // random
        body.push(0); // no session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one cipher suite
        body.extend_from_slice(&[1, 0]); // null compression
        body.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
        body.extend_from_slice(extensions);
        body
    }

    fn extension(kind: u16, data: &[u8]) -> Vec<u8> {
        let mut out = kind.to_be_bytes().to_vec();
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        out.extend_from_slice(data);
        out
    }

    fn sni_entry(kind: u8, name: &[u8]) -> Vec<u8> {
        let mut out = vec![kind];
        out.extend_from_slice(&(name.len() as u16).to_be_bytes());
        out.extend_from_slice(name);
        out
    }

    fn sni_extension(entries: &[Vec<u8>]) -> Vec<u8> {
        let list = entries.concat();
        let mut data = (list.len() as u16).to_be_bytes().to_vec();
        data.extend_from_slice(&list);
        extension(EXTENSION_SERVER_NAME, &data)
    }

    fn parse_with(extensions: &[Vec<u8>]) -> Result<ClientHelloInfo, Refusal> {
        parse_client_hello_body(&body_with_extensions(&extensions.concat()))
    }

    #[test]
    fn server_name_is_lowercased() {
        let info = parse_with(&[sni_extension(&[sni_entry(0, b"Edition.CNN.com")])]).unwrap();
        assert_eq!(info.server_name.as_deref(), Some("edition.cnn.com"));
    }

    #[test]
    fn hello_without_extensions_has_no_server_name() {
        let mut body = body_with_extensions(&[]);
        body.truncate(body.len() - 2); // drop the empty extension block entirely, as TLS 1.0 may
        let info = parse_client_hello_body(&body).unwrap();
        assert_eq!(
            info,
            ClientHelloInfo {
                legacy_version: 0x0303,
                ..Default::default()
            }
        );
    }

    #[test]
    fn trailing_dot_is_dropped_like_rustls_does() {
        let info = parse_with(&[sni_extension(&[sni_entry(0, b"edition.cnn.com.")])]).unwrap();
        assert_eq!(info.server_name.as_deref(), Some("edition.cnn.com"));
        let two_dots = parse_with(&[sni_extension(&[sni_entry(0, b"edition.cnn.com..")])]);
        assert_eq!(two_dots, Err(Refusal::Malformed));
    }

    #[test]
    fn ip_literal_server_name_counts_as_absent() {
        let info = parse_with(&[sni_extension(&[sni_entry(0, b"10.1.2.3")])]).unwrap();
        assert_eq!(info.server_name, None);
    }

    #[test]
    fn invalid_server_names_are_malformed() {
        for name in [&b"bad name.com"[..], b"caf\xc3\xa9.com", b"a..b", b"", b"x\0.com"] {
            let result = parse_with(&[sni_extension(&[sni_entry(0, name)])]);
            assert_eq!(result, Err(Refusal::Malformed), "{name:?}");
        }
    }

    #[test]
    fn ambiguous_server_names_are_malformed() {
        let two_names = sni_extension(&[sni_entry(0, b"a.com"), sni_entry(0, b"b.com")]);
        let other_kind = sni_extension(&[sni_entry(1, b"a.com")]);
        let duplicate = sni_extension(&[sni_entry(0, b"a.com")]);
        let empty_list = sni_extension(&[]);
        for extensions in [
            vec![two_names],
            vec![other_kind],
            vec![duplicate.clone(), duplicate],
            vec![empty_list],
        ] {
            assert_eq!(parse_with(&extensions), Err(Refusal::Malformed));
        }
    }

    #[test]
    fn trailing_bytes_in_server_name_list_are_malformed() {
        let mut data = vec![0, 9];
        data.extend_from_slice(&sni_entry(0, b"a.com")); // 8 bytes, list claims 9
        data.push(0);
        assert_eq!(parse_with(&[extension(0, &data)]), Err(Refusal::Malformed));
    }

    #[test]
    fn alpn_and_supported_versions_are_read() {
        let alpn = extension(EXTENSION_ALPN, b"\x00\x0c\x02h2\x08http/1.1");
        let versions = extension(EXTENSION_SUPPORTED_VERSIONS, &[4, 0x03, 0x04, 0x03, 0x03]);
        let info = parse_with(&[alpn, versions]).unwrap();
        assert_eq!(info.alpn, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
        assert_eq!(info.supported_versions, vec![0x0304, 0x0303]);
        assert!(info.offers_tls13());
    }

    #[test]
    fn malformed_alpn_and_versions_are_refused() {
        let mut too_many_alpn = vec![0, 2 * 65];
        too_many_alpn.extend_from_slice(&[1, b'a'].repeat(65));
        for bad in [
            extension(EXTENSION_ALPN, b"\x00\x00"),
            extension(EXTENSION_ALPN, b"\x00\x03\x00\x01a"),
            extension(EXTENSION_ALPN, b"\x00\x04\x02h2"),
            extension(EXTENSION_ALPN, &too_many_alpn),
            extension(EXTENSION_SUPPORTED_VERSIONS, &[0x03, 0x04]),
            extension(EXTENSION_SUPPORTED_VERSIONS, &[3, 0x03, 0x04, 0x03]),
        ] {
            assert_eq!(parse_with(&[bad]), Err(Refusal::Malformed));
        }
    }

    #[test]
    fn truncated_extension_block_is_malformed() {
        let mut body = body_with_extensions(&sni_extension(&[sni_entry(0, b"a.com")]));
        body.pop();
        assert_eq!(parse_client_hello_body(&body), Err(Refusal::Malformed));
        let body = body_with_extensions(&[0, 0x2b, 0]); // three bytes of an extension header
        assert_eq!(parse_client_hello_body(&body), Err(Refusal::Malformed));
    }
}
