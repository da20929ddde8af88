//! A test PKI built with rcgen: a CA (ECDSA P-256 by default, RSA-2048 as Istio uses), server
//! certificates for origins (`edition.cnn.com`), SPIFFE workload certificates (URI SAN, client and
//! server EKU, empty subject, like istiod issues them), expired certificates, intermediates, the
//! Istio `/etc/certs` layout, and rustls configs built on the aws-lc-rs provider explicitly (never
//! the process default, so parallel tests do not fight over the global provider).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::{Duration, OffsetDateTime};

/// The identity of the egress gateway as istiod issues it.
pub const GATEWAY_SPIFFE_ID: &str = "spiffe://cluster.local/ns/istio-system/sa/istio-egressgateway-service-account";
/// The identity of the seed's `sleep` client workload.
pub const SLEEP_SPIFFE_ID: &str = "spiffe://cluster.local/ns/default/sa/sleep";

/// Key algorithm of a CA or a leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyType {
    /// ECDSA P-256 with SHA-256: fast to generate, the default.
    #[default]
    EcdsaP256,
    /// RSA-2048 with SHA-256 (PKCS#1 v1.5): what Istio's CA issues.
    Rsa2048,
}

impl KeyType {
    fn generate(self) -> KeyPair {
        match self {
            KeyType::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
            KeyType::Rsa2048 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048),
        }
        .expect("generate key pair")
    }
}

/// A certificate authority: a self-signed root, or an intermediate under another `TestCa`.
pub struct TestCa {
    name: String,
    key_type: KeyType,
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    /// PEM of the intermediates from this CA up to (not including) the root, this CA first.
    intermediates_pem: String,
    /// PEM of the self-signed root at the top of this CA's chain.
    root_pem: String,
    root_der: CertificateDer<'static>,
}

/// What to put in a leaf certificate; build with [`LeafOptions::server`] or
/// [`LeafOptions::spiffe`] and adjust the fields.
#[derive(Debug, Clone)]
pub struct LeafOptions {
    pub dns_names: Vec<String>,
    pub uris: Vec<String>,
    pub ips: Vec<std::net::IpAddr>,
    /// Subject CN; `None` leaves the subject empty (SAN then critical), as istiod does.
    pub common_name: Option<String>,
    pub server_auth: bool,
    pub client_auth: bool,
    /// `not_after` one day in the past.
    pub expired: bool,
    /// `None`: the CA's key type.
    pub key_type: Option<KeyType>,
}

impl LeafOptions {
    /// A TLS server certificate for these DNS names (server EKU only), CN = the first name.
    pub fn server(dns_names: &[&str]) -> Self {
        LeafOptions {
            dns_names: dns_names.iter().map(|s| s.to_string()).collect(),
            uris: Vec::new(),
            ips: Vec::new(),
            common_name: dns_names.first().map(|s| s.to_string()),
            server_auth: true,
            client_auth: false,
            expired: false,
            key_type: None,
        }
    }

    /// An Istio workload certificate: URI SAN `spiffe://...`, empty subject, client+server EKU.
    pub fn spiffe(uri: &str) -> Self {
        LeafOptions {
            dns_names: Vec::new(),
            uris: vec![uri.to_string()],
            ips: Vec::new(),
            common_name: None,
            server_auth: true,
            client_auth: true,
            expired: false,
            key_type: None,
        }
    }

    /// The same certificate with `not_after` in the past.
    pub fn expired(mut self) -> Self {
        self.expired = true;
        self
    }
}

/// An issued certificate and its key, all PEM (PKCS#8 key) plus DER for rustls.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// The leaf certificate alone.
    pub cert_pem: String,
    /// PKCS#8 private key.
    pub key_pem: String,
    /// The leaf then its intermediates (not the root): what `cert-chain.pem` holds.
    pub chain_pem: String,
    pub cert_der: CertificateDer<'static>,
    /// Leaf then intermediates, DER.
    pub chain_der: Vec<CertificateDer<'static>>,
    pub key_der: Vec<u8>,
}

impl Leaf {
    /// Writes `chain_pem` to `dir/cert_file` and `key_pem` to `dir/key_file`; returns both paths.
    pub fn write_to(&self, dir: &Path, cert_file: &str, key_file: &str) -> (PathBuf, PathBuf) {
        fs::create_dir_all(dir).expect("create cert dir");
        let cert = dir.join(cert_file);
        let key = dir.join(key_file);
        fs::write(&cert, &self.chain_pem).expect("write cert chain");
        fs::write(&key, &self.key_pem).expect("write key");
        (cert, key)
    }

    /// The private key for rustls.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "cluster.local");
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = now() - Duration::days(1);
    params.not_after = now() + Duration::days(3650);
    params.use_authority_key_identifier_extension = true;
    params
}

impl TestCa {
    /// A self-signed ECDSA P-256 root named `name`.
    pub fn new(name: &str) -> Self {
        Self::with_key_type(name, KeyType::EcdsaP256)
    }

    /// A self-signed RSA-2048 root, as Istio's CA (slower to generate).
    pub fn new_rsa(name: &str) -> Self {
        Self::with_key_type(name, KeyType::Rsa2048)
    }

    /// A self-signed root with the given key type.
    pub fn with_key_type(name: &str, key_type: KeyType) -> Self {
        let key = key_type.generate();
        let params = ca_params(name);
        let cert = params.self_signed(&key).expect("self-sign CA");
        let cert_der = cert.der().clone();
        let cert_pem = cert.pem();
        TestCa {
            name: name.to_string(),
            key_type,
            issuer: Issuer::new(params, key),
            root_pem: cert_pem.clone(),
            root_der: cert_der.clone(),
            cert_der,
            cert_pem,
            intermediates_pem: String::new(),
        }
    }

    /// An intermediate CA signed by this one (same key type); its leaves carry it in `chain_pem`.
    pub fn intermediate(&self, name: &str) -> TestCa {
        let key = self.key_type.generate();
        let params = ca_params(name);
        let cert = params.signed_by(&key, &self.issuer).expect("sign CA");
        let cert_pem = cert.pem();
        TestCa {
            name: name.to_string(),
            key_type: self.key_type,
            issuer: Issuer::new(params, key),
            cert_der: cert.der().clone(),
            intermediates_pem: format!("{cert_pem}{}", self.intermediates_pem),
            cert_pem,
            root_pem: self.root_pem.clone(),
            root_der: self.root_der.clone(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// This CA's own certificate (the root for a root CA).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The trust anchor: the self-signed root at the top of the chain.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    pub fn root_der(&self) -> &CertificateDer<'static> {
        &self.root_der
    }

    /// Writes the root certificate to `dir/file` and returns the path.
    pub fn write_root(&self, dir: &Path, file: &str) -> PathBuf {
        fs::create_dir_all(dir).expect("create cert dir");
        let path = dir.join(file);
        fs::write(&path, &self.root_pem).expect("write root cert");
        path
    }

    /// A server certificate for origins, e.g. `ca.server_cert(&["edition.cnn.com"])`.
    pub fn server_cert(&self, dns_names: &[&str]) -> Leaf {
        self.issue(&LeafOptions::server(dns_names))
    }

    /// A workload certificate with this SPIFFE ID as URI SAN (client and server EKU).
    pub fn spiffe_cert(&self, uri: &str) -> Leaf {
        self.issue(&LeafOptions::spiffe(uri))
    }

    /// Issues a leaf certificate as described.
    pub fn issue(&self, opts: &LeafOptions) -> Leaf {
        let mut sans = Vec::new();
        for name in &opts.dns_names {
            sans.push(SanType::DnsName(ia5(name)));
        }
        for uri in &opts.uris {
            sans.push(SanType::URI(ia5(uri)));
        }
        sans.extend(opts.ips.iter().map(|ip| SanType::IpAddress(*ip)));
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        let mut dn = DistinguishedName::new();
        if let Some(cn) = &opts.common_name {
            dn.push(DnType::CommonName, cn.as_str());
        }
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        if opts.server_auth {
            params.extended_key_usages.push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        if opts.client_auth {
            params.extended_key_usages.push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        params.use_authority_key_identifier_extension = true;
        if opts.expired {
            params.not_before = now() - Duration::days(30);
            params.not_after = now() - Duration::days(1);
        } else {
            params.not_before = now() - Duration::hours(1);
            params.not_after = now() + Duration::days(365);
        }
        let key = opts.key_type.unwrap_or(self.key_type).generate();
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        let cert_pem = cert.pem();
        let chain_pem = format!("{cert_pem}{}", self.intermediates_pem);
        let chain_der = pem_certs(&chain_pem);
        Leaf {
            cert_der: cert.der().clone(),
            chain_der,
            key_der: key.serialize_der(),
            key_pem: key.serialize_pem(),
            cert_pem,
            chain_pem,
        }
    }

    /// Writes the Istio `/etc/certs` layout into `dir` for the gateway identity
    /// ([`GATEWAY_SPIFFE_ID`]): `cert-chain.pem`, `key.pem`, `root-cert.pem`. Returns the leaf.
    pub fn write_istio_certs(&self, dir: &Path) -> Leaf {
        self.write_istio_certs_for(dir, GATEWAY_SPIFFE_ID)
    }

    /// As [`TestCa::write_istio_certs`] for any SPIFFE ID (e.g. to rotate to a new identity).
    pub fn write_istio_certs_for(&self, dir: &Path, spiffe_id: &str) -> Leaf {
        let leaf = self.spiffe_cert(spiffe_id);
        leaf.write_to(dir, "cert-chain.pem", "key.pem");
        self.write_root(dir, "root-cert.pem");
        leaf
    }
}

fn ia5(s: &str) -> Ia5String {
    Ia5String::try_from(s).unwrap_or_else(|e| panic!("not IA5 `{s}`: {e}"))
}

/// Parses every `CERTIFICATE` block of a PEM text.
pub fn pem_certs(pem: &str) -> Vec<CertificateDer<'static>> {
    use rustls_pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("parse PEM certificates")
}

/// The aws-lc-rs provider, passed explicitly to every config built here.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn roots(ca: &TestCa) -> RootCertStore {
    let mut store = RootCertStore::empty();
    store.add(ca.root_der().clone()).expect("add root");
    store
}

/// A TLS server config presenting `leaf` (with its chain), no client authentication, offering
/// these ALPN protocols (e.g. `&[b"h2", b"http/1.1"]`; empty: no ALPN).
pub fn server_config(leaf: &Leaf, alpn: &[&[u8]]) -> Arc<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(leaf.chain_der.clone(), leaf.private_key())
        .expect("server cert and key");
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A TLS server config that requires a client certificate chaining to `client_ca`'s root.
pub fn server_config_mtls(leaf: &Leaf, client_ca: &TestCa, alpn: &[&[u8]]) -> Arc<ServerConfig> {
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots(client_ca)), provider())
        .build()
        .expect("client verifier");
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(leaf.chain_der.clone(), leaf.private_key())
        .expect("server cert and key");
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A TLS client config trusting `root`'s root certificate, presenting `client` if given.
pub fn client_config(root: &TestCa, client: Option<&Leaf>) -> Arc<ClientConfig> {
    client_config_alpn(root, client, &[])
}

/// As [`client_config`], offering these ALPN protocols.
pub fn client_config_alpn(root: &TestCa, client: Option<&Leaf>, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots(root));
    let mut config = match client {
        Some(leaf) => builder
            .with_client_auth_cert(leaf.chain_der.clone(), leaf.private_key())
            .expect("client cert and key"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}
