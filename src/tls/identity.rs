//! Peer identity from a verified client certificate: the SPIFFE ID (first URI SAN) that goes into
//! the access log and, later, authorization; and the server's `subjectAltNames` check, done inside
//! the handshake by wrapping the chain verifier. Nothing here trusts a certificate on its own: the
//! chain is always verified first by rustls-webpki.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// The peer's identity: the first URI SAN of its end-entity certificate
/// (`spiffe://cluster.local/ns/default/sa/sleep` for an Istio workload), as Envoy's
/// `%DOWNSTREAM_PEER_URI_SAN%` shows it. `None` without a certificate or URI SAN.
pub fn peer_identity(peer_chain: Option<&[CertificateDer<'_>]>) -> Option<Arc<str>> {
    let end_entity = peer_chain?.first()?;
    let cert = webpki::EndEntityCert::try_from(end_entity).ok()?;
    let first = cert.valid_uri_names().next()?;
    Some(first.into())
}

/// Whether the certificate has one of `wanted` as a URI or DNS SAN, compared exactly (Envoy's
/// `match_typed_subject_alt_names` with `exact`, as istiod generates it).
pub fn san_matches(end_entity: &CertificateDer<'_>, wanted: &[String]) -> bool {
    let Ok(cert) = webpki::EndEntityCert::try_from(end_entity) else {
        return false;
    };
    let found = cert.valid_uri_names().any(|uri| wanted.iter().any(|w| w == uri));
    found || cert.valid_dns_names().any(|dns| wanted.iter().any(|w| w == dns))
}

/// A client certificate verifier that, after the chain verified, also requires one of the
/// server's `subjectAltNames`. Checking inside the handshake (not after it) makes the client see
/// a handshake failure, as with Envoy, and no byte of application data is ever accepted.
#[derive(Debug)]
pub struct SanCheckingVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    wanted: Vec<String>,
}

impl SanCheckingVerifier {
    pub fn new(inner: Arc<dyn ClientCertVerifier>, wanted: Vec<String>) -> Self {
        SanCheckingVerifier { inner, wanted }
    }
}

/// The error a SAN mismatch fails the handshake with. The chain verifier never returns it for
/// client certificates (webpki does not check names there), so it identifies this check.
pub const SAN_MISMATCH: CertificateError = CertificateError::NotValidForName;

impl ClientCertVerifier for SanCheckingVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        if !san_matches(end_entity, &self.wanted) {
            return Err(rustls::Error::InvalidCertificate(SAN_MISMATCH));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(dns: &[&str], uris: &[&str]) -> CertificateDer<'static> {
        let mut params = rcgen::CertificateParams::new(dns.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        for uri in uris {
            let uri = rcgen::string::Ia5String::try_from(*uri).unwrap();
            params.subject_alt_names.push(rcgen::SanType::URI(uri));
        }
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn identity_is_the_first_uri_san() {
        let der = cert(
            &["gw.example"],
            &["spiffe://cluster.local/ns/default/sa/sleep", "spiffe://other/x"],
        );
        let id = peer_identity(Some(std::slice::from_ref(&der)));
        assert_eq!(id.as_deref(), Some("spiffe://cluster.local/ns/default/sa/sleep"));
        assert_eq!(peer_identity(Some(&[cert(&["only.dns"], &[])])), None);
        assert_eq!(peer_identity(None), None);
        assert_eq!(peer_identity(Some(&[CertificateDer::from(vec![1, 2, 3])])), None);
    }

    #[test]
    fn san_match_is_exact_on_uri_or_dns() {
        let der = cert(&["client.example"], &["spiffe://cluster.local/ns/default/sa/sleep"]);
        let want = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(san_matches(
            &der,
            &want(&["spiffe://cluster.local/ns/default/sa/sleep"])
        ));
        assert!(san_matches(&der, &want(&["nope", "client.example"])));
        assert!(!san_matches(
            &der,
            &want(&["spiffe://cluster.local/ns/default/sa/slee"])
        ));
        assert!(!san_matches(&der, &want(&["CLIENT.example.com"])));
        assert!(!san_matches(
            &CertificateDer::from(vec![0u8; 4]),
            &want(&["client.example"])
        ));
    }
}
