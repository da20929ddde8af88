//! Command line: `egressd run | check | version`. Flags (and their `EGRESSD_*` environment
//! variables, for containers) override the bootstrap file, which overrides the defaults.

pub mod authz;
pub mod check;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};

use crate::config::bootstrap::{AccessLogFormat, Bootstrap};

#[derive(Debug, Parser)]
#[command(name = "egressd", version, about = "Istio egress gateway data plane")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the gateway (the default command).
    Run(RunArgs),
    /// Load and compile the config; print what would be served, or every error (exit 1). With
    /// `--explain`, the AuthorizationPolicy decision for one request or connection instead.
    Check(CheckArgs),
    /// Print the version.
    Version,
}

#[derive(Debug, Clone, Args)]
pub struct ConfigArgs {
    /// Istio YAML: a file or a directory of *.yaml / *.yml (repeatable).
    #[arg(
        long = "config",
        env = "EGRESSD_CONFIG",
        value_delimiter = ',',
        default_value = "config"
    )]
    pub config: Vec<PathBuf>,
    /// Bootstrap YAML (defaults match istio-proxy in an istio-egressgateway pod).
    #[arg(long, env = "EGRESSD_BOOTSTRAP")]
    pub bootstrap: Option<PathBuf>,
    /// Gateway server port to bound port, e.g. `80=8080,443=8443`.
    #[arg(long, env = "EGRESSD_PORT_MAPPING")]
    pub port_mapping: Option<String>,
    /// Address the gateway listeners bind to.
    #[arg(long, env = "EGRESSD_BIND_ADDRESS")]
    pub bind_address: Option<std::net::IpAddr>,
    /// Directory with cert-chain.pem, key.pem and root-cert.pem (the ISTIO_MUTUAL identity).
    #[arg(long, env = "EGRESSD_CERTS")]
    pub certs: Option<PathBuf>,
    /// This proxy's role; only `gateway` exists today.
    #[arg(long, env = "EGRESSD_ROLE")]
    pub role: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Print the authorization decision for the request or connection the flags below describe
    /// (exit 0 for ALLOW and DENY alike, 1 on bad input).
    #[arg(long)]
    pub explain: bool,
    /// The caller's SPIFFE id, with or without `spiffe://` (none: no client certificate).
    #[arg(long, requires = "explain")]
    pub principal: Option<String>,
    /// The TLS server name (SNI) of the connection.
    #[arg(long, requires = "explain")]
    pub sni: Option<String>,
    /// The Gateway server port (e.g. 443), mapped to the listening port as the listeners are.
    #[arg(long, requires = "explain")]
    pub port: Option<u16>,
    /// HTTP: the `:authority` (Host), as the client sends it.
    #[arg(long, requires = "explain")]
    pub host: Option<String>,
    /// HTTP: the method (default GET).
    #[arg(long, requires = "explain")]
    pub method: Option<String>,
    /// HTTP: the path (default `/`).
    #[arg(long, requires = "explain")]
    pub path: Option<String>,
    /// The caller's address (default 127.0.0.1).
    #[arg(long, requires = "explain")]
    pub source_ip: Option<std::net::IpAddr>,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Admin API address (loopback only by default).
    #[arg(long, env = "EGRESSD_ADMIN")]
    pub admin: Option<SocketAddr>,
    /// Readiness listener (`/healthz/ready`).
    #[arg(long, env = "EGRESSD_HEALTH")]
    pub health: Option<SocketAddr>,
    /// Prometheus listener (`/stats/prometheus`).
    #[arg(long, env = "EGRESSD_PROMETHEUS")]
    pub prometheus: Option<SocketAddr>,
    /// DNS server `ip[:port]` (repeatable); default: the system's resolv.conf.
    #[arg(long, env = "EGRESSD_DNS", value_delimiter = ',')]
    pub dns: Vec<String>,
    /// Access log destination: a path, `/dev/stdout`, or `off`.
    #[arg(long, env = "EGRESSD_ACCESS_LOG")]
    pub access_log: Option<String>,
    /// Access log format: `text` (Istio's default), `json`, or `text-with-peer` (text plus the
    /// caller's SPIFFE id).
    #[arg(long, env = "EGRESSD_ACCESS_LOG_FORMAT")]
    pub access_log_format: Option<String>,
    /// Worker threads (default: the CPUs available to the process).
    #[arg(long, env = "EGRESSD_CONCURRENCY")]
    pub concurrency: Option<usize>,
}

/// Where a kubeconfig or an in-cluster service account would be, for `--config k8s`.
const IN_CLUSTER_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// `--config k8s` names the Kubernetes API, not a directory (unless a `k8s` directory exists).
/// It is not served yet; the refusal says what was looked for, so that outside a cluster the
/// answer is not "no such directory".
fn refuse_k8s_source(paths: &[PathBuf]) -> anyhow::Result<()> {
    let k8s = Path::new("k8s");
    if !paths.iter().any(|p| p == k8s) || k8s.exists() {
        return Ok(());
    }
    let kubeconfig = std::env::var_os("KUBECONFIG")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".kube/config")))
        .filter(|p| p.is_file());
    let in_cluster = Path::new(IN_CLUSTER_TOKEN).is_file();
    match (kubeconfig, in_cluster) {
        (None, false) => bail!(
            "--config k8s reads the Kubernetes API, but no kubeconfig ($KUBECONFIG, ~/.kube/config) and no in-cluster service account ({IN_CLUSTER_TOKEN}) was found; outside a cluster, pass Istio YAML files or directories"
        ),
        (Some(path), _) => bail!(
            "--config k8s (the Kubernetes API, found kubeconfig {}) is not served by this egressd yet; mount the Istio resources as files (a ConfigMap) and pass their directory",
            path.display()
        ),
        (None, true) => bail!(
            "--config k8s (the Kubernetes API, in-cluster service account found) is not served by this egressd yet; mount the Istio resources as files (a ConfigMap) and pass their directory"
        ),
    }
}

impl ConfigArgs {
    /// The bootstrap: defaults, then the file, then these flags.
    pub fn bootstrap(&self) -> anyhow::Result<Bootstrap> {
        refuse_k8s_source(&self.config)?;
        let mut b = match &self.bootstrap {
            Some(path) => Bootstrap::from_file(path)?,
            None => Bootstrap::default(),
        };
        if let Some(mapping) = &self.port_mapping {
            b.port_mapping = parse_port_mapping(mapping)?;
        }
        if let Some(addr) = self.bind_address {
            b.bind_address = addr;
        }
        if let Some(certs) = &self.certs {
            b.certs = certs.clone();
        }
        match self.role.as_deref() {
            None | Some("gateway") => {}
            Some(other) => bail!("--role {other}: only `gateway` is supported"),
        }
        Ok(b)
    }
}

impl RunArgs {
    pub fn bootstrap(&self) -> anyhow::Result<Bootstrap> {
        let mut b = self.config.bootstrap()?;
        if let Some(a) = self.admin {
            b.admin = a;
        }
        if let Some(a) = self.health {
            b.health = a;
        }
        if let Some(a) = self.prometheus {
            b.prometheus = a;
        }
        if !self.dns.is_empty() {
            b.dns.nameservers = self.dns.clone();
        }
        if let Some(path) = &self.access_log {
            b.access_log.path = path.clone();
        }
        if let Some(format) = self.access_log_format.as_deref() {
            b.access_log.format = match format {
                "text" => AccessLogFormat::Text,
                "json" => AccessLogFormat::Json,
                "text-with-peer" => AccessLogFormat::TextWithPeer,
                other => bail!("--access-log-format {other}: use text, json or text-with-peer"),
            };
        }
        if let Some(n) = self.concurrency {
            if n == 0 {
                bail!("--concurrency must be at least 1");
            }
            b.concurrency = Some(n);
        }
        Ok(b)
    }
}

/// `80=8080,443=8443` → map.
pub fn parse_port_mapping(text: &str) -> anyhow::Result<std::collections::BTreeMap<u16, u16>> {
    let mut map = std::collections::BTreeMap::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (from, to) = pair
            .split_once('=')
            .with_context(|| format!("--port-mapping: `{pair}` is not SERVER_PORT=BOUND_PORT"))?;
        let from: u16 = from
            .trim()
            .parse()
            .with_context(|| format!("--port-mapping: bad port `{from}`"))?;
        let to: u16 = to
            .trim()
            .parse()
            .with_context(|| format!("--port-mapping: bad port `{to}`"))?;
        map.insert(from, to);
    }
    Ok(map)
}
