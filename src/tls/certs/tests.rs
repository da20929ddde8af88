//! Unit tests of the certificate cache: caching, rotation, bad rotations, version bounds.

use super::*;

fn leaf(key: &rcgen::KeyPair, issuer: &rcgen::Issuer<'_, rcgen::KeyPair>, name: &str) -> String {
    let params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
    params.signed_by(key, issuer).unwrap().pem()
}

struct Pki {
    dir: tempfile::TempDir,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    std::fs::write(
        dir.path().join("root-cert.pem"),
        params.self_signed(&ca_key).unwrap().pem(),
    )
    .unwrap();
    Pki {
        dir,
        issuer: rcgen::Issuer::new(params, ca_key),
    }
}

impl Pki {
    /// Writes a new gateway identity; returns its certificate PEM.
    fn issue(&self, name: &str) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = leaf(&key, &self.issuer, name);
        std::fs::write(self.dir.path().join("cert-chain.pem"), &cert).unwrap();
        std::fs::write(self.dir.path().join("key.pem"), key.serialize_pem()).unwrap();
        cert
    }

    fn tls(&self, mode: ServerTlsMode) -> ServerTls {
        ServerTls {
            mode,
            certificate: CertificateSource::IstioIdentity {
                dir: self.dir.path().to_path_buf(),
            },
            subject_alt_names: Vec::new(),
            min_protocol_version: None,
            max_protocol_version: None,
        }
    }
}

fn current_cert(certs: &ServerCerts, tls: &ServerTls) -> Vec<u8> {
    let files = SourceFiles::of(&tls.certificate).unwrap();
    let source = certs.source(files);
    let state = lock(&source.state);
    state.material.as_ref().unwrap().key.cert[0].to_vec()
}

fn der(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().to_vec()
}

#[test]
fn configs_are_cached_and_rebuilt_only_after_a_change() {
    let pki = pki();
    let first = pki.issue("one.example");
    let (certs, store) = (ServerCerts::new(), Store::new());
    let tls = pki.tls(ServerTlsMode::IstioMutual);
    let a = certs.server_config(&tls, Some(b"h2"), &store).unwrap();
    let b = certs.server_config(&tls, Some(b"h2"), &store).unwrap();
    assert!(Arc::ptr_eq(&a, &b));
    assert_eq!(a.alpn_protocols, vec![b"h2".to_vec()]);
    assert!(certs
        .server_config(&tls, None, &store)
        .unwrap()
        .alpn_protocols
        .is_empty());
    assert_eq!(current_cert(&certs, &tls), der(&first));

    // A change noticed by the watcher (simulated) gives new configs with the new cert, once
    // the files have been quiet for `SETTLE`; until then the loaded one is served.
    let second = pki.issue("two.example");
    certs.changes.fetch_add(1, Ordering::Release);
    let during = certs.server_config(&tls, Some(b"h2"), &store).unwrap();
    assert!(Arc::ptr_eq(&a, &during));
    std::thread::sleep(SETTLE + Duration::from_millis(50));
    let c = certs.server_config(&tls, Some(b"h2"), &store).unwrap();
    assert!(!Arc::ptr_eq(&a, &c));
    assert_eq!(current_cert(&certs, &tls), der(&second));
    assert_eq!(store.counter(CERT_RELOAD_FAILED).value(), 0);
}

#[test]
fn a_bad_rotation_keeps_the_old_identity_and_is_counted_once() {
    let pki = pki();
    let first = pki.issue("one.example");
    let (certs, store) = (ServerCerts::new(), Store::new());
    let tls = pki.tls(ServerTlsMode::IstioMutual);
    certs.server_config(&tls, None, &store).unwrap();

    // A key that does not match the certificate.
    let other = rcgen::KeyPair::generate().unwrap();
    std::fs::write(pki.dir.path().join("key.pem"), other.serialize_pem()).unwrap();
    certs.changes.fetch_add(1, Ordering::Release);
    settle(&certs, &tls, &store);
    certs.server_config(&tls, None, &store).unwrap();
    certs.server_config(&tls, None, &store).unwrap();
    assert_eq!(current_cert(&certs, &tls), der(&first));
    assert_eq!(store.counter(CERT_RELOAD_FAILED).value(), 1);

    // Unreadable: still the old one.
    std::fs::remove_file(pki.dir.path().join("cert-chain.pem")).unwrap();
    certs.changes.fetch_add(1, Ordering::Release);
    settle(&certs, &tls, &store);
    certs.server_config(&tls, None, &store).unwrap();
    assert_eq!(store.counter(CERT_RELOAD_FAILED).value(), 2);

    // Fixed: the new identity is served.
    let third = pki.issue("three.example");
    certs.changes.fetch_add(1, Ordering::Release);
    settle(&certs, &tls, &store);
    certs.server_config(&tls, None, &store).unwrap();
    assert_eq!(current_cert(&certs, &tls), der(&third));
}

/// Lets a change be noticed and the files be quiet for `SETTLE`.
fn settle(certs: &ServerCerts, tls: &ServerTls, store: &Store) {
    certs.server_config(tls, None, store).unwrap();
    std::thread::sleep(SETTLE + Duration::from_millis(50));
}

/// The soak's rotation: the key is renamed into place, then the certificate. A handshake
/// between the two must neither fail nor count a failed reload.
#[test]
fn a_rotation_caught_half_written_is_not_tried() {
    let pki = pki();
    let first = pki.issue("one.example");
    let (certs, store) = (ServerCerts::new(), Store::new());
    let tls = pki.tls(ServerTlsMode::IstioMutual);
    certs.server_config(&tls, None, &store).unwrap();

    let next_key = rcgen::KeyPair::generate().unwrap();
    std::fs::write(pki.dir.path().join("key.pem"), next_key.serialize_pem()).unwrap();
    certs.changes.fetch_add(1, Ordering::Release);
    certs.server_config(&tls, None, &store).unwrap();
    assert_eq!(current_cert(&certs, &tls), der(&first), "half-written: the old pair");
    let second = pki.issue("two.example");
    certs.changes.fetch_add(1, Ordering::Release);
    certs.server_config(&tls, None, &store).unwrap();
    assert_eq!(current_cert(&certs, &tls), der(&first), "not quiet yet");
    settle(&certs, &tls, &store);
    certs.server_config(&tls, None, &store).unwrap();
    assert_eq!(current_cert(&certs, &tls), der(&second));
    assert_eq!(store.counter(CERT_RELOAD_FAILED).value(), 0);
}

#[test]
fn missing_files_and_unsupported_sources_fail_without_panicking() {
    let (certs, store) = (ServerCerts::new(), Store::new());
    let dir = tempfile::tempdir().unwrap();
    let mut tls = ServerTls {
        mode: ServerTlsMode::IstioMutual,
        certificate: CertificateSource::IstioIdentity {
            dir: dir.path().join("absent"),
        },
        subject_alt_names: Vec::new(),
        min_protocol_version: None,
        max_protocol_version: None,
    };
    assert!(matches!(
        certs.server_config(&tls, None, &store),
        Err(CertError::File { .. })
    ));
    assert!(matches!(
        certs.server_config(&tls, None, &store),
        Err(CertError::File { .. })
    ));
    assert_eq!(
        store.counter(CERT_RELOAD_FAILED).value(),
        1,
        "one failure per file change"
    );
    tls.certificate = CertificateSource::Credential {
        name: "cnn-secret".into(),
    };
    assert!(matches!(
        certs.server_config(&tls, None, &store),
        Err(CertError::Credential(_))
    ));
    tls.certificate = CertificateSource::Files {
        certificate: "c".into(),
        private_key: "k".into(),
        ca_certificates: None,
    };
    tls.mode = ServerTlsMode::Mutual;
    assert!(matches!(
        certs.server_config(&tls, None, &store),
        Err(CertError::NoCaCertificates(_))
    ));
}

#[test]
fn protocol_version_bounds() {
    assert_eq!(protocol_versions(None, None), Some(vec![13, 12]));
    assert_eq!(protocol_versions(Some("TLSV1_3"), None), Some(vec![13]));
    assert_eq!(protocol_versions(Some("TLSV1_0"), Some("TLSV1_2")), Some(vec![12]));
    assert_eq!(
        protocol_versions(Some("TLS_AUTO"), Some("TLS_AUTO")),
        Some(vec![13, 12])
    );
    assert_eq!(protocol_versions(Some("TLSV1_3"), Some("TLSV1_2")), None);
    assert_eq!(protocol_versions(None, Some("TLSV1_1")), None);
    assert_eq!(protocol_versions(Some("SSLV3"), None), None);
}
