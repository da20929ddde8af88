//! The real `egressd` binary as a child process: free loopback ports for admin, health, Prometheus
//! and every mapped gateway port, the access log and stderr in a temporary directory, readiness
//! awaited by polling `/ready` (bounded), and helpers to read stats, logs and the process's file
//! descriptors. Dropping an [`Egressd`] stops its child (SIGTERM, SIGKILL after 2 s) and only it.
//!
//! The binary is `CARGO_BIN_EXE_egressd`, which Cargo sets when it compiles an integration test
//! crate (this module is compiled inside each one); [`EgressdOptions::binary`] overrides it.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::tools::{free_addr, http_get, http_request, HttpResponse};

/// How long [`Egressd::start`] waits for `/ready`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// Poll interval of every wait here.
const POLL: Duration = Duration::from_millis(20);
/// Free ports are picked by binding port 0 and releasing it, so another test may take one
/// before egressd binds it: such a start is retried with fresh ports.
const BIND_ATTEMPTS: u32 = 4;

fn lost_port_race(stderr: &str) -> bool {
    stderr.contains("Address already in use")
}

/// Grace between SIGTERM and SIGKILL when stopping.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Access log format flag.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// How to run egressd.
#[derive(Debug, Clone)]
pub struct EgressdOptions {
    /// `--config`: a file or a directory of Istio YAML.
    pub config_dir: PathBuf,
    /// `--dns 127.0.0.1:PORT` (e.g. `TestDns::addr()`); `None`: the system's.
    pub dns: Option<SocketAddr>,
    /// `--certs DIR` (cert-chain.pem, key.pem, root-cert.pem).
    pub certs: Option<PathBuf>,
    /// Gateway server port → bound port; bound port 0 means "pick a free one".
    pub port_mapping: Vec<(u16, u16)>,
    /// `--access-log-format`.
    pub access_log: LogFormat,
    /// `--concurrency`: 2 by default, a fixed count so that tests (fds, pools per worker) do
    /// not depend on the machine's CPUs.
    pub concurrency: usize,
    /// `--bind-address` of the gateway listeners: 127.0.0.1 by default.
    pub bind_address: std::net::IpAddr,
    /// Appended after the flags above.
    pub extra_args: Vec<String>,
    /// Extra environment (after `EGRESSD_LOG=info`, so it can override it).
    pub env: Vec<(String, String)>,
    /// The binary; `None`: `CARGO_BIN_EXE_egressd`.
    pub binary: Option<PathBuf>,
}

impl Default for EgressdOptions {
    fn default() -> Self {
        EgressdOptions {
            config_dir: PathBuf::new(),
            dns: None,
            certs: None,
            port_mapping: vec![(80, 0), (443, 0)],
            access_log: LogFormat::Text,
            concurrency: 2,
            bind_address: Ipv4Addr::LOCALHOST.into(),
            extra_args: Vec::new(),
            env: Vec::new(),
            binary: None,
        }
    }
}

impl EgressdOptions {
    /// Defaults (ports 80 and 443 mapped to free ports, text log) for this config.
    pub fn new(config_dir: impl Into<PathBuf>) -> Self {
        EgressdOptions {
            config_dir: config_dir.into(),
            ..Default::default()
        }
    }
}

/// A running egressd child process.
pub struct Egressd {
    child: Option<Child>,
    pid: u32,
    dir: tempfile::TempDir,
    admin: SocketAddr,
    health: SocketAddr,
    prometheus: SocketAddr,
    ports: Vec<(u16, u16)>,
    access_log: PathBuf,
    stderr_path: PathBuf,
    stdout_path: PathBuf,
}

impl Egressd {
    /// Spawns egressd and waits (up to 15 s) until `/ready` answers 200; panics with its stderr
    /// if it exits or does not get ready (the child is stopped first).
    pub fn start(opts: EgressdOptions) -> Egressd {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut e = Egressd::spawn(opts.clone());
            match e.wait_ready(READY_TIMEOUT) {
                Ok(()) => return e,
                Err(why) => e.retry_or_panic(attempt, &why),
            }
        }
    }

    /// [`Egressd::start`] for async tests: polls with tokio's timer so that peers on the test's
    /// runtime (e.g. `TestDns`) keep running meanwhile.
    pub async fn start_async(opts: EgressdOptions) -> Egressd {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut e = Egressd::spawn(opts.clone());
            let deadline = Instant::now() + READY_TIMEOUT;
            let result = loop {
                match e.ready_once() {
                    Ok(true) => break Ok(()),
                    Ok(false) if Instant::now() < deadline => tokio::time::sleep(POLL).await,
                    Ok(false) => break Err(format!("no 200 from /ready within {READY_TIMEOUT:?}")),
                    Err(why) => break Err(why),
                }
            };
            match result {
                Ok(()) => return e,
                Err(why) => e.retry_or_panic(attempt, &why),
            }
        }
    }

    /// A start that did not get ready: stopped; returns when it lost a port race and may be
    /// tried again (`attempt` < `BIND_ATTEMPTS`), panics with its stderr otherwise.
    fn retry_or_panic(&mut self, attempt: u32, why: &str) {
        self.stop();
        let stderr = self.stderr();
        if attempt < BIND_ATTEMPTS && lost_port_race(&stderr) {
            return;
        }
        panic!("egressd did not get ready: {why}\n--- stderr ---\n{stderr}");
    }

    /// Spawns egressd without waiting for it (for tests of startup failures).
    pub fn spawn(opts: EgressdOptions) -> Egressd {
        let dir = tempfile::Builder::new()
            .prefix("egressd-test-")
            .tempdir()
            .expect("temp dir");
        let local = Ipv4Addr::LOCALHOST;
        let (admin, health, prometheus) = (free_addr(local), free_addr(local), free_addr(local));
        let ports: Vec<(u16, u16)> = opts
            .port_mapping
            .iter()
            .map(|&(server, bound)| {
                let bound = if bound == 0 { free_addr(local).port() } else { bound };
                (server, bound)
            })
            .collect();
        let access_log = dir.path().join("access.log");
        let stderr_path = dir.path().join("stderr.log");
        let stdout_path = dir.path().join("stdout.log");
        let binary = opts
            .binary
            .clone()
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_egressd")));

        let mut cmd = Command::new(&binary);
        cmd.arg("run")
            .arg("--config")
            .arg(&opts.config_dir)
            .args(["--admin", &admin.to_string()])
            .args(["--health", &health.to_string()])
            .args(["--prometheus", &prometheus.to_string()])
            .args(["--bind-address", &opts.bind_address.to_string()]);
        if !ports.is_empty() {
            let mapping: Vec<String> = ports.iter().map(|(s, b)| format!("{s}={b}")).collect();
            cmd.args(["--port-mapping", &mapping.join(",")]);
        }
        cmd.arg("--access-log").arg(&access_log);
        cmd.args([
            "--access-log-format",
            match opts.access_log {
                LogFormat::Text => "text",
                LogFormat::Json => "json",
            },
        ]);
        if let Some(dns) = opts.dns {
            cmd.args(["--dns", &dns.to_string()]);
        }
        if let Some(certs) = &opts.certs {
            cmd.arg("--certs").arg(certs);
        }
        cmd.args(["--concurrency", &opts.concurrency.to_string()]);
        cmd.args(&opts.extra_args);
        // Only what the test says: no EGRESSD_* leaking in from the environment.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("EGRESSD_") {
                cmd.env_remove(key);
            }
        }
        cmd.env("EGRESSD_LOG", "info");
        cmd.envs(opts.env.iter().map(|(k, v)| (k, v)));
        cmd.stdin(Stdio::null())
            .stdout(fs::File::create(&stdout_path).expect("stdout file"))
            .stderr(fs::File::create(&stderr_path).expect("stderr file"));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()));
        Egressd {
            pid: child.id(),
            child: Some(child),
            dir,
            admin,
            health,
            prometheus,
            ports,
            access_log,
            stderr_path,
            stdout_path,
        }
    }

    /// One readiness probe: `Ok(true)` on 200 from `/ready`, `Err` if the process has exited.
    fn ready_once(&mut self) -> Result<bool, String> {
        if let Some(status) = self.try_wait() {
            return Err(format!("egressd exited with {status}"));
        }
        Ok(matches!(http_get(self.admin, "/ready"), Ok(r) if r.status == 200))
    }

    /// Polls `/ready` every 20 ms until it answers 200, the process exits, or `timeout` passes.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.ready_once()? {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("no 200 from /ready within {timeout:?}"));
            }
            std::thread::sleep(POLL);
        }
    }

    /// The exit status if the process has ended.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().expect("try_wait")
    }

    /// Waits (bounded) for the process to exit by itself, e.g. after `/quitquitquit`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(POLL);
        }
    }

    /// `POST /quitquitquit` (immediate exit, no drain), then SIGTERM to the child only, then
    /// SIGKILL if it has not exited within 2 s; reaps it.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if super::tools::http_request(self.admin, "POST", "/quitquitquit", &[], b"").is_ok() {
            let deadline = Instant::now() + Duration::from_secs(1);
            while Instant::now() < deadline {
                if let Ok(Some(status)) = child.try_wait() {
                    return Some(status);
                }
                std::thread::sleep(POLL);
            }
        }
        // The child is not reaped yet, so its pid cannot have been reused by another process.
        signal_term(self.pid);
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(POLL);
        }
        let _ = child.kill();
        child.wait().ok()
    }

    /// Sends SIGTERM without waiting (for drain tests); [`Egressd::wait_exit`] then observes it.
    pub fn terminate(&mut self) {
        if self.child.is_some() && self.try_wait().is_none() {
            signal_term(self.pid);
        }
    }

    /// Sends SIGUSR1 (reopen the access log file), while it runs.
    pub fn sigusr1(&mut self) {
        if self.child.is_some() && self.try_wait().is_none() {
            signal(self.pid, libc::SIGUSR1);
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The port bound for gateway server port `server_port` (e.g. 80 → 41234).
    pub fn bound_port(&self, server_port: u16) -> u16 {
        self.ports
            .iter()
            .find(|(s, _)| *s == server_port)
            .map(|(_, b)| *b)
            .unwrap_or_else(|| panic!("server port {server_port} is not mapped: {:?}", self.ports))
    }

    /// `127.0.0.1:bound_port(server_port)`: where clients connect.
    pub fn gateway_addr(&self, server_port: u16) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.bound_port(server_port)))
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    pub fn health_addr(&self) -> SocketAddr {
        self.health
    }

    pub fn prometheus_addr(&self) -> SocketAddr {
        self.prometheus
    }

    /// The temporary directory holding the access log and the captured output.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn access_log_path(&self) -> &Path {
        &self.access_log
    }

    /// `GET path` on the admin port; panics if the admin does not answer.
    pub fn get(&self, path: &str) -> HttpResponse {
        http_get(self.admin, path).unwrap_or_else(|e| panic!("admin GET {path}: {e}"))
    }

    /// `POST path` on the admin port (e.g. `/quitquitquit`, `/drain_listeners?graceful`).
    pub fn post(&self, path: &str) -> HttpResponse {
        http_request(self.admin, "POST", path, &[], b"").unwrap_or_else(|e| panic!("admin POST {path}: {e}"))
    }

    /// The admin's `/stats` text.
    pub fn stats(&self) -> String {
        let r = self.get("/stats");
        assert_eq!(r.status, 200, "/stats: {}", r.text());
        r.text()
    }

    /// The value of counter or gauge `name` from `/stats` (`name: value` lines).
    pub fn stat(&self, name: &str) -> Option<u64> {
        parse_stat(&self.stats(), name)
    }

    /// Polls `/stats` until `name` is at least `at_least`; panics after `timeout`.
    pub fn wait_for_stat(&self, name: &str, at_least: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let stats = self.stats();
            let value = parse_stat(&stats, name);
            match value {
                Some(v) if v >= at_least => return v,
                _ if Instant::now() >= deadline => {
                    panic!("{name} = {value:?} after {timeout:?}, wanted ≥ {at_least}\n{stats}")
                }
                _ => std::thread::sleep(POLL),
            }
        }
    }

    /// The access log's lines so far (empty if the file does not exist yet).
    pub fn access_log_lines(&self) -> Vec<String> {
        fs::read_to_string(&self.access_log)
            .map(|s| s.lines().map(str::to_string).collect())
            .unwrap_or_default()
    }

    /// Polls the access log until it has at least `n` lines; panics after `timeout`.
    pub fn wait_for_log_lines(&self, n: usize, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let lines = self.access_log_lines();
            if lines.len() >= n {
                return lines;
            }
            assert!(
                Instant::now() < deadline,
                "access log: {} line(s) after {timeout:?}, wanted {n}: {lines:#?}\n--- stderr ---\n{}",
                lines.len(),
                self.stderr()
            );
            std::thread::sleep(POLL);
        }
    }

    /// Everything the process wrote to stderr (its tracing output) so far.
    /// The `n`th (from 0) access-log line containing `needle`; waits up to 5 s on tokio's
    /// timer (so peers on the test's runtime keep running), then panics with the log.
    pub async fn nth_log_line(&self, needle: &str, n: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(line) = self
                .access_log_lines()
                .into_iter()
                .filter(|l| l.contains(needle))
                .nth(n)
            {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "no access-log line {n} with {needle:?}: {:#?}",
                self.access_log_lines()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Everything the process wrote to stdout so far.
    pub fn stdout(&self) -> String {
        fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    /// Opens `n` connections with `open` and returns them with the growth of egressd's RSS
    /// per connection (KiB): measured over those opened after the first 50 (which grow the
    /// allocator's arenas and the pools), once all have been idle for 300 ms.
    pub async fn rss_per_idle_connection<T, F: std::future::Future<Output = T>>(
        &self,
        n: usize,
        mut open: impl FnMut() -> F,
    ) -> (Vec<T>, f64) {
        const WARM_UP: usize = 50;
        let mut conns = Vec::with_capacity(n);
        for _ in 0..WARM_UP {
            conns.push(open().await);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let before = self.rss_kib();
        for _ in WARM_UP..n {
            conns.push(open().await);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let per_conn = self.rss_kib().saturating_sub(before) as f64 / (n - WARM_UP) as f64;
        (conns, per_conn)
    }

    /// The process's resident memory (`VmRSS` of `/proc/PID/status`), in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid)).expect("egressd's /proc status");
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS line");
        line.split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .expect("VmRSS in KiB")
    }

    /// Open file descriptors of the process (entries of `/proc/PID/fd`).
    pub fn open_fds(&self) -> usize {
        fs::read_dir(format!("/proc/{}/fd", self.pid))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// egressd's descriptors by kind (`socket`, `pipe`, `anon_inode`, file paths).
    pub fn fd_counts(&self) -> std::collections::BTreeMap<String, usize> {
        let mut kinds = std::collections::BTreeMap::<String, usize>::new();
        for entry in fs::read_dir(format!("/proc/{}/fd", self.pid))
            .into_iter()
            .flatten()
            .flatten()
        {
            let target = fs::read_link(entry.path())
                .map(|t| t.display().to_string())
                .unwrap_or_default();
            let kind = target.split(":[").next().unwrap_or_default().to_string();
            *kinds.entry(kind).or_default() += 1;
        }
        kinds
    }

    /// [`Egressd::fd_counts`] as text, for failure messages.
    pub fn fd_kinds(&self) -> String {
        format!("{:?}", self.fd_counts())
    }
}

impl Drop for Egressd {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            let stderr = self.stderr();
            let tail: Vec<&str> = stderr.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            eprintln!("--- egressd stderr (last 40 lines) ---\n{}", tail.join("\n"));
        }
    }
}

/// `name: value` from a `/stats` text.
pub fn parse_stat(stats: &str, name: &str) -> Option<u64> {
    stats.lines().find_map(|line| {
        let (n, v) = line.split_once(": ")?;
        (n == name).then(|| v.trim().parse().ok()).flatten()
    })
}

fn signal_term(pid: u32) {
    signal(pid, libc::SIGTERM);
}

fn signal(pid: u32, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(pid).expect("pid fits pid_t");
    // SAFETY: kill(2) takes plain integers and touches no memory of ours; the pid is our own
    // unreaped child's.
    unsafe {
        libc::kill(pid, signal);
    }
}
