//! TLS origination to upstream clusters from DestinationRule `tls`: SIMPLE (server verified by
//! `caCertificates` or the system roots, `subjectAltNames`, `insecureSkipVerify`), MUTUAL (client
//! certificate files) and ISTIO_MUTUAL (this proxy's mesh identity).

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::routing::snapshot::{Cluster, UpstreamProtocol, UpstreamTls, UpstreamTlsMode};

/// Builds the client config of a cluster. The error says which file or setting is wrong.
pub fn client_config(
    tls: &UpstreamTls,
    protocol: UpstreamProtocol,
    certs_dir: &Path,
) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let (ca_file, client_files) = match tls.mode {
        UpstreamTlsMode::IstioMutual => (
            Some(certs_dir.join("root-cert.pem")),
            Some((certs_dir.join("cert-chain.pem"), certs_dir.join("key.pem"))),
        ),
        UpstreamTlsMode::Mutual => (
            tls.ca_certificates.clone(),
            match (&tls.client_certificate, &tls.private_key) {
                (Some(c), Some(k)) => Some((c.clone(), k.clone())),
                _ => return Err("MUTUAL needs clientCertificate and privateKey".into()),
            },
        ),
        UpstreamTlsMode::Simple => (tls.ca_certificates.clone(), None),
    };
    let mut roots = RootCertStore::empty();
    match &ca_file {
        Some(path) => {
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| format!("{}: {e}", path.display()))? {
                let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
                roots.add(cert).map_err(|e| format!("{}: {e}", path.display()))?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for cert in native.certs {
                let _ = roots.add(cert);
            }
        }
    }
    let verifier: Arc<dyn ServerCertVerifier> = if tls.insecure_skip_verify {
        Arc::new(NoVerification(provider.clone()))
    } else {
        if roots.is_empty() {
            return Err("no CA certificates to verify the upstream with".into());
        }
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| e.to_string())?;
        let identity = tls.mode == UpstreamTlsMode::IstioMutual;
        if tls.subject_alt_names.is_empty() && !identity {
            webpki
        } else {
            Arc::new(SanVerifier {
                inner: webpki,
                sans: tls.subject_alt_names.clone(),
                any_name: identity,
            })
        }
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match client_files {
        Some((cert, key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
                .map_err(|e| format!("{}: {e}", cert.display()))?
                .collect::<Result<_, _>>()
                .map_err(|e| format!("{}: {e}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(&key).map_err(|e| format!("{}: {e}", key.display()))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| e.to_string())?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = match protocol {
        UpstreamProtocol::Http2 => vec![b"h2".to_vec()],
        _ => Vec::new(),
    };
    Ok(Arc::new(config))
}

/// The SNI to send: `tls.sni`; else for ISTIO_MUTUAL the cluster's DNS-SRV name
/// (`outbound_.443_._.edition.cnn.com`, what istiod configures), else the request authority
/// (Envoy's auto_sni), else the cluster host.
pub fn server_name(tls: &UpstreamTls, authority: Option<&str>, cluster: &Cluster) -> Option<ServerName<'static>> {
    let name = match (&tls.sni, tls.mode) {
        (Some(sni), _) => sni.clone(),
        (None, UpstreamTlsMode::IstioMutual) => format!(
            "outbound_.{}_.{}_.{}",
            cluster.port,
            cluster.subset.as_deref().unwrap_or(""),
            cluster.host
        ),
        (None, _) => authority
            .map(|a| crate::routing::host::strip_port(a).to_string())
            .unwrap_or_else(|| cluster.host.clone()),
    };
    ServerName::try_from(name).ok()
}

/// Verifies the chain as webpki does, but the name against `subjectAltNames` (DNS or URI)
/// instead of the SNI; with `any_name` (ISTIO_MUTUAL without SANs) any name chaining to the
/// mesh root is accepted, as Envoy does.
#[derive(Debug)]
struct SanVerifier {
    inner: Arc<WebPkiServerVerifier>,
    sans: Vec<String>,
    any_name: bool,
}

impl ServerCertVerifier for SanVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // Chain first (the name check is ours): webpki reports a name mismatch only after the
        // chain verified, so that error means "chain fine, name not ours".
        match self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Ok(v) if self.sans.is_empty() => return Ok(v),
            Ok(_) => {}
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForNameContext { .. })) => {}
            Err(e) => return Err(e),
        }
        if self.sans.is_empty() && self.any_name {
            return Ok(ServerCertVerified::assertion());
        }
        let names = cert_names(end_entity);
        if self.sans.iter().any(|san| names.iter().any(|n| n == san)) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(m, c, d)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(m, c, d)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `insecureSkipVerify: true`: signatures are still checked, the certificate is not.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// DNS and URI subject alternative names of a certificate.
pub fn cert_names(der: &CertificateDer<'_>) -> Vec<String> {
    match webpki::EndEntityCert::try_from(der) {
        Ok(cert) => cert
            .valid_dns_names()
            .chain(cert.valid_uri_names())
            .map(str::to_string)
            .collect(),
        Err(_) => Vec::new(),
    }
}
