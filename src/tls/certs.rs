//! Server certificates for TLS termination: PEM files read when first needed, cached per
//! certificate source (cert, key, CA paths), and re-read when they change, so new handshakes get
//! the new identity while open connections keep theirs. A bad rotation (unreadable file, key not
//! matching the certificate) keeps the old identity, logs once and counts
//! `server.cert_reload_failed`. Builds rustls `ServerConfig`s; never touches sockets.
//!
//! The cache is process-wide because certificate files have their own life, apart from the
//! config snapshot: a config reload must not re-read them, and a file change must not need one.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use notify::{RecursiveMode, Watcher};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{RootCertStore, ServerConfig, SupportedProtocolVersion};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::identity::SanCheckingVerifier;
use super::tickets::TicketKeys;
use crate::routing::snapshot::{CertificateSource, ServerTls, ServerTlsMode};
use crate::stats::Store;

/// Counter of failed certificate loads (first load or rotation).
pub const CERT_RELOAD_FAILED: &str = "server.cert_reload_failed";
/// How often a handshake may compare file stamps when the directory watcher said nothing
/// (a watcher can miss events, e.g. on some network file systems).
const STAT_INTERVAL: Duration = Duration::from_secs(1);
/// How long certificate files must stay unchanged before a rotation is loaded (config reloads
/// debounce the same way, `reload::DEBOUNCE`).
const SETTLE: Duration = Duration::from_millis(200);

/// Why no server config could be had for a chain.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CertError {
    #[error("credentialName `{0}` (an SDS secret) is not supported; use serverCertificate/privateKey files")]
    Credential(String),
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("certificate {cert} and key {key} do not go together: {reason}")]
    KeyMismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("mode {0:?} verifies client certificates but the server has no caCertificates")]
    NoCaCertificates(ServerTlsMode),
    #[error("no TLS version satisfies minProtocolVersion {min:?} and maxProtocolVersion {max:?}")]
    NoVersions { min: Option<String>, max: Option<String> },
    #[error("cannot build the TLS server config: {0}")]
    Config(String),
}

/// The files one certificate source reads; the cache key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SourceFiles {
    cert: PathBuf,
    key: PathBuf,
    ca: Option<PathBuf>,
}

impl SourceFiles {
    fn of(source: &CertificateSource) -> Result<SourceFiles, CertError> {
        match source {
            CertificateSource::IstioIdentity { dir } => Ok(SourceFiles {
                cert: dir.join("cert-chain.pem"),
                key: dir.join("key.pem"),
                ca: Some(dir.join("root-cert.pem")),
            }),
            CertificateSource::Files {
                certificate,
                private_key,
                ca_certificates,
            } => Ok(SourceFiles {
                cert: certificate.clone(),
                key: private_key.clone(),
                ca: ca_certificates.clone(),
            }),
            CertificateSource::Credential { name } => Err(CertError::Credential(name.clone())),
        }
    }

    fn paths(&self) -> impl Iterator<Item = &Path> {
        [Some(self.cert.as_path()), Some(self.key.as_path()), self.ca.as_deref()]
            .into_iter()
            .flatten()
    }
}

/// What identifies a file version without reading it. `metadata` follows symlinks, so the
/// Kubernetes `..data` swap shows up as a new inode.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamps(files: &SourceFiles) -> Vec<Option<FileStamp>> {
    use std::os::unix::fs::MetadataExt;
    files
        .paths()
        .map(|p| {
            let m = std::fs::metadata(p).ok()?;
            Some(FileStamp {
                modified: m.modified().ok(),
                len: m.len(),
                inode: m.ino(),
            })
        })
        .collect()
}

/// One loaded version of a source's files, and the configs built from it (kept so TLS session
/// resumption works across connections; a new version starts with fresh configs and caches).
struct Material {
    /// The raw file contents: a touch or a rewrite with the same bytes changes nothing.
    contents: Vec<Vec<u8>>,
    key: Arc<CertifiedKey>,
    roots: Option<Arc<RootCertStore>>,
    configs: Mutex<HashMap<ConfigKey, Arc<ServerConfig>>>,
}

/// What varies between the configs of one source. ALPN is chosen per ClientHello, so each
/// config offers at most the one protocol already chosen.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ConfigKey {
    client_auth: bool,
    subject_alt_names: Vec<String>,
    /// Newest first.
    versions: Vec<u16>,
    alpn: Option<&'static [u8]>,
}

struct Source {
    files: SourceFiles,
    state: Mutex<SourceState>,
}

#[derive(Default)]
struct SourceState {
    material: Option<Arc<Material>>,
    /// Why the last load failed while nothing was loaded yet.
    error: Option<CertError>,
    /// At the last load attempt: the file stamps, and the watcher's change count.
    stamps: Vec<Option<FileStamp>>,
    changes_seen: u64,
    attempted: bool,
    /// The last load attempt failed.
    failing: bool,
    next_stat_check: Option<Instant>,
    /// A change seen while a certificate is loaded: the files' stamps then, and since when
    /// they have stayed so. Reloaded once they are quiet for `SETTLE`.
    settling: Option<(Vec<Option<FileStamp>>, Instant)>,
}

/// The certificate cache; [`ServerCerts::global`] is the one the listeners use.
pub struct ServerCerts {
    provider: Arc<CryptoProvider>,
    sources: Mutex<HashMap<SourceFiles, Arc<Source>>>,
    /// Bumped by the directory watcher on any change in a watched directory.
    changes: Arc<AtomicU64>,
    watcher: Mutex<DirWatcher>,
    /// Settings errors already logged.
    warned: Mutex<HashSet<String>>,
    /// Session ticket keys: one set for the process, so every worker resumes every session.
    tickets: TicketKeys,
}

#[derive(Default)]
struct DirWatcher {
    watcher: Option<notify::RecommendedWatcher>,
    unavailable: bool,
    dirs: HashSet<PathBuf>,
}

static GLOBAL: LazyLock<ServerCerts> = LazyLock::new(ServerCerts::new);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves only cached data behind, still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Default for ServerCerts {
    fn default() -> Self {
        ServerCerts::new()
    }
}

impl ServerCerts {
    pub fn new() -> ServerCerts {
        ServerCerts {
            provider: Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
            sources: Mutex::new(HashMap::new()),
            changes: Arc::new(AtomicU64::new(0)),
            watcher: Mutex::new(DirWatcher::default()),
            warned: Mutex::new(HashSet::new()),
            tickets: TicketKeys::new(),
        }
    }

    pub fn global() -> &'static ServerCerts {
        &GLOBAL
    }

    /// The server config for a terminating chain, offering `alpn` (or no ALPN). Reads or re-reads
    /// the certificate files when needed; load failures are counted in `store`. The file reads
    /// are small and rare (first use, then only after a change), so they run inline.
    pub fn server_config(
        &self,
        tls: &ServerTls,
        alpn: Option<&'static [u8]>,
        store: &Store,
    ) -> Result<Arc<ServerConfig>, CertError> {
        let (files, key) = config_key(tls, alpn).inspect_err(|e| self.warn_once(e))?;
        let material = self.material(files, store)?;
        let mut configs = lock(&material.configs);
        if let Some(config) = configs.get(&key) {
            return Ok(config.clone());
        }
        let config = self.build(&material, &key)?;
        configs.insert(key, config.clone());
        Ok(config)
    }

    /// A chain whose TLS settings cannot work fails every handshake: say so once, not per
    /// connection (file problems are logged once per file change by `material`).
    fn warn_once(&self, e: &CertError) {
        if lock(&self.warned).insert(e.to_string()) {
            tracing::warn!(error = %e, "TLS termination unavailable on a chain; its handshakes fail");
        }
    }

    fn source(&self, files: SourceFiles) -> Arc<Source> {
        let mut sources = lock(&self.sources);
        if let Some(s) = sources.get(&files) {
            return s.clone();
        }
        self.watch(&files);
        let source = Arc::new(Source {
            files: files.clone(),
            state: Mutex::new(SourceState::default()),
        });
        sources.insert(files, source.clone());
        source
    }

    /// The current material of a source, (re)loading it first when a file changed.
    fn material(&self, files: SourceFiles, store: &Store) -> Result<Arc<Material>, CertError> {
        let source = self.source(files);
        let mut state = lock(&source.state);
        let now = Instant::now();
        let changes = self.changes.load(Ordering::Acquire);
        let mut due = !state.attempted || changes != state.changes_seen;
        if !due && state.next_stat_check.is_none_or(|at| now >= at) {
            state.next_stat_check = Some(now + STAT_INTERVAL);
            due = stamps(&source.files) != state.stamps;
        }
        if due && state.material.is_some() {
            // A rotation writes several files (key, then cert): wait until they have been
            // quiet for `SETTLE`, serving the loaded certificate meanwhile, so that a pair
            // caught half-written is never tried (nor counted as a failed reload).
            let current = stamps(&source.files);
            match &state.settling {
                Some((seen, since)) if *seen == current && now.duration_since(*since) >= SETTLE => {
                    state.settling = None;
                }
                Some((seen, _)) if *seen == current => due = false,
                _ => {
                    state.settling = Some((current, now));
                    due = false;
                }
            }
        }
        if due {
            state.attempted = true;
            state.changes_seen = changes;
            state.next_stat_check = Some(now + STAT_INTERVAL);
            // Stamped before reading: a write racing the read shows up at the next check.
            let stamps = stamps(&source.files);
            // One rotation raises several directory events; a failure is reported once per
            // state of the files, not once per event.
            let reported = state.failing && stamps == state.stamps;
            state.stamps = stamps;
            let loaded = load(&source.files, &self.provider, state.material.as_deref());
            state.failing = loaded.is_err();
            match loaded {
                Ok(None) => {}
                Ok(Some(material)) => {
                    let rotated = state.material.is_some();
                    tracing::info!(cert = %source.files.cert.display(), rotated, "server certificate loaded");
                    state.material = Some(Arc::new(material));
                    state.error = None;
                }
                Err(_) if reported => {}
                Err(e) => {
                    store.counter(CERT_RELOAD_FAILED).inc();
                    if state.material.is_some() {
                        tracing::warn!(error = %e, "server certificate not reloaded; keeping the previous one");
                    } else {
                        tracing::warn!(error = %e, "server certificate cannot be loaded; TLS handshakes on it fail");
                        state.error = Some(e);
                    }
                }
            }
        }
        match (&state.material, &state.error) {
            (Some(m), _) => Ok(m.clone()),
            (None, Some(e)) => Err(e.clone()),
            (None, None) => Err(CertError::Config("no certificate loaded".into())),
        }
    }

    fn build(&self, material: &Material, key: &ConfigKey) -> Result<Arc<ServerConfig>, CertError> {
        let versions: Vec<&'static SupportedProtocolVersion> = key
            .versions
            .iter()
            .filter_map(|v| match v {
                13 => Some(&rustls::version::TLS13),
                12 => Some(&rustls::version::TLS12),
                _ => None,
            })
            .collect();
        let builder = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&versions)
            .map_err(|e| CertError::Config(e.to_string()))?;
        let builder = match (&material.roots, key.client_auth) {
            (_, false) => builder.with_no_client_auth(),
            (None, true) => return Err(CertError::Config("client verification without roots".into())),
            (Some(roots), true) => {
                // webpki's client verification checks the chain, validity and EKU but no names:
                // Istio workload certs carry only a URI SAN, and any chain to the root is
                // accepted unless the server lists subjectAltNames (as Envoy does).
                let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), self.provider.clone())
                    .build()
                    .map_err(|e| CertError::Config(e.to_string()))?;
                let verifier: Arc<dyn ClientCertVerifier> = if key.subject_alt_names.is_empty() {
                    verifier
                } else {
                    Arc::new(SanCheckingVerifier::new(verifier, key.subject_alt_names.clone()))
                };
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_cert_resolver(Arc::new(SingleCertAndKey::from(material.key.clone())));
        // TLS 1.2 suites in the gateway's order (AES-256-GCM, AES-128-GCM, ChaCha20), as Envoy
        // uses its own: what a gateway negotiates is set by the gateway, not by each client.
        config.ignore_client_order = true;
        // Stateless resumption (TLS 1.2 tickets, TLS 1.3 tickets without a server cache), as
        // Envoy offers it: a reconnecting sidecar skips the full handshake. The config is
        // cached with its certificate, so its tickets outlive config reloads.
        if let Some(ticketer) = self.tickets.for_config() {
            config.ticketer = ticketer;
        }
        config.alpn_protocols = key.alpn.map(|p| vec![p.to_vec()]).unwrap_or_default();
        Ok(Arc::new(config))
    }

    /// Watches the directories of a source's files (not the files: Kubernetes replaces the
    /// `..data` symlink, and editors replace files by rename). Without a watcher, the stamp
    /// comparison still notices changes within `STAT_INTERVAL`.
    fn watch(&self, files: &SourceFiles) {
        let mut w = lock(&self.watcher);
        if w.watcher.is_none() && !w.unavailable {
            let changes = self.changes.clone();
            let handler = move |event: notify::Result<notify::Event>| {
                if let Ok(event) = event {
                    if crate::file_events::is_change(&event.kind) {
                        changes.fetch_add(1, Ordering::Release);
                    }
                }
            };
            match notify::recommended_watcher(handler) {
                Ok(watcher) => w.watcher = Some(watcher),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch certificate directories; checking file times instead");
                    w.unavailable = true;
                }
            }
        }
        for path in files.paths() {
            let dir = match path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                _ => PathBuf::from("."),
            };
            if !w.dirs.insert(dir.clone()) {
                continue;
            }
            if let Some(watcher) = w.watcher.as_mut() {
                if let Err(e) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
                    tracing::debug!(dir = %dir.display(), error = %e, "cannot watch certificate directory");
                }
            }
        }
    }
}

/// The files and the config variant a chain's TLS settings need, or why they cannot work.
fn config_key(tls: &ServerTls, alpn: Option<&'static [u8]>) -> Result<(SourceFiles, ConfigKey), CertError> {
    let files = SourceFiles::of(&tls.certificate)?;
    let client_auth = tls.mode != ServerTlsMode::Simple;
    if client_auth && files.ca.is_none() {
        return Err(CertError::NoCaCertificates(tls.mode));
    }
    let (min, max) = (tls.min_protocol_version.as_deref(), tls.max_protocol_version.as_deref());
    let versions = protocol_versions(min, max).ok_or_else(|| CertError::NoVersions {
        min: tls.min_protocol_version.clone(),
        max: tls.max_protocol_version.clone(),
    })?;
    let subject_alt_names = if client_auth {
        tls.subject_alt_names.clone()
    } else {
        Vec::new()
    };
    Ok((
        files,
        ConfigKey {
            client_auth,
            subject_alt_names,
            versions,
            alpn,
        },
    ))
}

/// Reads and checks a source's files; `None` when they hold exactly what `current` was built from.
fn load(
    files: &SourceFiles,
    provider: &CryptoProvider,
    current: Option<&Material>,
) -> Result<Option<Material>, CertError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| CertError::File {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    };
    let mut contents = vec![read(&files.cert)?, read(&files.key)?];
    if let Some(ca) = &files.ca {
        contents.push(read(ca)?);
    }
    if current.is_some_and(|m| m.contents == contents) {
        return Ok(None);
    }
    let chain = pem_certs(&files.cert, &contents[0])?;
    let private_key = PrivateKeyDer::from_pem_slice(&contents[1]).map_err(|e| CertError::File {
        path: files.key.clone(),
        reason: format!("no usable private key: {e}"),
    })?;
    let key = CertifiedKey::from_der(chain, private_key, provider).map_err(|e| CertError::KeyMismatch {
        cert: files.cert.clone(),
        key: files.key.clone(),
        reason: e.to_string(),
    })?;
    let roots = match (&files.ca, contents.get(2)) {
        (Some(path), Some(pem)) => {
            let mut roots = RootCertStore::empty();
            for cert in pem_certs(path, pem)? {
                roots.add(cert).map_err(|e| CertError::File {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            }
            Some(Arc::new(roots))
        }
        _ => None,
    };
    Ok(Some(Material {
        contents,
        key: Arc::new(key),
        roots,
        configs: Mutex::new(HashMap::new()),
    }))
}

fn pem_certs(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::File {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(CertError::File {
            path: path.to_path_buf(),
            reason: "no CERTIFICATE block".into(),
        });
    }
    Ok(certs)
}

/// TLS versions allowed by Istio's `minProtocolVersion`/`maxProtocolVersion` (`TLSV1_2` → 12),
/// newest first; `None` when none is left. rustls has nothing below 1.2, so a lower minimum
/// means 1.2 (Istio's own default minimum for servers); unset or `TLS_AUTO` means 1.2 to 1.3.
pub fn protocol_versions(min: Option<&str>, max: Option<&str>) -> Option<Vec<u16>> {
    fn rank(v: Option<&str>, auto: u16) -> Option<u16> {
        match v.map(str::to_ascii_uppercase).as_deref() {
            None | Some("") | Some("TLS_AUTO") => Some(auto),
            Some("TLSV1_0") => Some(10),
            Some("TLSV1_1") => Some(11),
            Some("TLSV1_2") => Some(12),
            Some("TLSV1_3") => Some(13),
            Some(_) => None,
        }
    }
    let (min, max) = (rank(min, 12)?, rank(max, 13)?);
    let versions: Vec<u16> = [13, 12].into_iter().filter(|v| (min..=max).contains(v)).collect();
    (!versions.is_empty()).then_some(versions)
}

#[cfg(test)]
mod tests;
