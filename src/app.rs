//! Process wiring: load and compile the config, start the runtime, the admin, health and
//! Prometheus listeners, and wait for a signal or `/quitquitquit`.

use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::cli::{check, RunArgs};
use crate::config::{Bootstrap, Severity};
use crate::routing::Snapshot;
use crate::state::AppState;
use crate::stats;

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    init_tracing();
    let bootstrap = args.bootstrap()?;
    let loaded_hash = crate::reload::content_hash(&args.config.config).unwrap_or_default();
    let snapshot = match crate::routing::load_and_compile(&args.config.config, &bootstrap) {
        Ok(s) => s,
        Err(e) => {
            eprint!("{}", check::render_diagnostics(&e.diagnostics));
            anyhow::bail!("the config has {} error(s); nothing is served", e.errors().count());
        }
    };
    for d in &snapshot.diagnostics {
        match d.severity {
            Severity::Warning => tracing::warn!("{d}"),
            _ => tracing::info!("{d}"),
        }
    }
    // Every proxied connection costs two descriptors; a default soft limit of 1024 would cap a
    // gateway at ~500 connections. Raise it to the hard limit, as container runtimes allow.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "file descriptor limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the file descriptor limit"),
    }
    let concurrency = bootstrap
        .concurrency
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    // The control plane (admin, reload, signals) on this thread; the data plane on the workers.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let workers = crate::worker::Workers::start(concurrency).context("cannot start the workers")?;
    runtime.block_on(serve(
        bootstrap,
        args.config.config,
        snapshot,
        Arc::new(workers),
        loaded_hash,
    ))
}

/// How often each worker drops the idle upstream connections (of egressd's own HTTP/1.1
/// client) that the upstream closed: nothing waits on an idle connection, so without this a
/// closed one would hold its descriptor, `upstream_cx_active` and its `maxConnections` slot
/// until its endpoint is next used. Envoy notices at once; here within this period.
const IDLE_SWEEP: std::time::Duration = std::time::Duration::from_secs(2);

/// Runs on each worker: its pools are per worker (`crate::upstream::pool`).
async fn sweep_idle_upstreams(shared: Arc<crate::proxy::Shared>) {
    let mut tick = tokio::time::interval(IDLE_SWEEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for cluster in shared.clusters.all() {
            cluster.pool.sweep_own_idle();
        }
    }
}

async fn serve(
    bootstrap: Bootstrap,
    config_paths: Vec<std::path::PathBuf>,
    snapshot: Snapshot,
    workers: Arc<crate::worker::Workers>,
    loaded_hash: u64,
) -> anyhow::Result<()> {
    let concurrency = workers.handles().len();
    let store = stats::Store::new();
    let server_stats = stats::ServerStats::new(&store, concurrency, env!("CARGO_PKG_VERSION"));
    let (shutdown, mut shutdown_rx) = watch::channel(false);
    let admin = TcpListener::bind(bootstrap.admin)
        .await
        .with_context(|| format!("cannot bind the admin address {}", bootstrap.admin))?;
    let health = TcpListener::bind(bootstrap.health)
        .await
        .with_context(|| format!("cannot bind the health address {}", bootstrap.health))?;
    let prometheus = TcpListener::bind(bootstrap.prometheus)
        .await
        .with_context(|| format!("cannot bind the Prometheus address {}", bootstrap.prometheus))?;
    let resolver =
        crate::upstream::dns::Resolver::new(&dns_config(&bootstrap)?).map_err(|e| anyhow::anyhow!("DNS: {e}"))?;
    let logger = Arc::new(access_logger(&bootstrap)?);
    let drain = crate::drain::Drain::default();
    let shared = Arc::new(crate::proxy::Shared::new(
        crate::upstream::cluster::ClusterManager::new(store.clone(), resolver, bootstrap.certs.clone()),
        logger.clone(),
        store.clone(),
        bootstrap.limits.max_sni_stats,
        drain.clone(),
    ));
    let state = Arc::new(AppState {
        bootstrap,
        config_paths,
        snapshot: Arc::new(ArcSwap::from_pointee(snapshot)),
        stats: store,
        server_stats,
        started: Instant::now(),
        started_at: SystemTime::now(),
        concurrency,
        last_reload_error: Mutex::new(None),
        shutdown,
        shared: Mutex::new(Some(shared.clone())),
        drain: drain.clone(),
    });
    for worker in workers.handles() {
        worker.spawn(sweep_idle_upstreams(shared.clone()));
    }
    let listeners = Arc::new(crate::listener::Listeners::new(
        shared.clone(),
        state.snapshot.clone(),
        Arc::new(state.bootstrap.clone()),
        workers,
    ));
    listeners.reconcile()?;
    tokio::spawn(crate::reload::run(state.clone(), listeners.clone(), loaded_hash));
    for (listener, surface) in [
        (admin, crate::admin::Surface::Admin),
        (health, crate::admin::Surface::Health),
        (prometheus, crate::admin::Surface::Prometheus),
    ] {
        tokio::spawn(crate::admin::serve(listener, state.clone(), surface));
    }
    tracing::info!(admin = %state.bootstrap.admin, "egressd {} ready", env!("CARGO_PKG_VERSION"));

    // SIGUSR1 reopens the access log file, as Envoy does (logrotate's postrotate).
    let mut sigusr1 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
        .context("cannot watch SIGUSR1")?;
    let reopen = logger.clone();
    tokio::spawn(async move {
        while sigusr1.recv().await.is_some() {
            let logger = reopen.clone();
            // The reopen waits for the writer thread: off the control plane's runtime.
            let _ = tokio::task::spawn_blocking(move || logger.reopen()).await;
        }
    });
    let mut sigterm =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let graceful = tokio::select! {
        _ = sigterm.recv() => { tracing::info!("SIGTERM: draining"); true }
        _ = tokio::signal::ctrl_c() => { tracing::info!("SIGINT: draining"); true }
        _ = shutdown_rx.wait_for(|stop| *stop) => { tracing::info!("/quitquitquit: stopping"); false }
    };
    if graceful {
        drain_then_exit(&state).await;
    }
    logger.flush();
    Ok(())
}

/// Stops accepting and lets open requests and tunnels finish: until the drain duration ends,
/// or, with `EXIT_ON_ZERO_ACTIVE_CONNECTIONS=true`, as soon as no downstream connection is open.
async fn drain_then_exit(state: &AppState) {
    state.drain.start();
    state
        .server_stats
        .set_state(crate::stats::family::ServerState::Draining);
    let exit_on_zero = std::env::var("EXIT_ON_ZERO_ACTIVE_CONNECTIONS").is_ok_and(|v| v == "true");
    let deadline = tokio::time::Instant::now() + state.bootstrap.drain_duration;
    loop {
        if exit_on_zero && state.drain.active() == 0 {
            tracing::info!("no active connections: exiting");
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::info!(active = state.drain.active(), "drain duration over: exiting");
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The bootstrap's `dns:` block as the resolver takes it (`ip[:port]`, port 53 by default).
fn dns_config(bootstrap: &Bootstrap) -> anyhow::Result<crate::upstream::dns::DnsConfig> {
    use crate::config::bootstrap::LookupFamily as Family;
    use crate::upstream::dns::LookupFamily;
    let mut nameservers = Vec::new();
    for ns in &bootstrap.dns.nameservers {
        let addr = ns
            .parse::<std::net::SocketAddr>()
            .or_else(|_| {
                ns.parse::<std::net::IpAddr>()
                    .map(|ip| std::net::SocketAddr::new(ip, 53))
            })
            .map_err(|_| anyhow::anyhow!("DNS nameserver `{ns}` is not ip or ip:port"))?;
        nameservers.push(addr);
    }
    Ok(crate::upstream::dns::DnsConfig {
        nameservers,
        family: match bootstrap.dns.family {
            Family::V4Only => LookupFamily::V4Only,
            Family::V6Only => LookupFamily::V6Only,
            Family::All => LookupFamily::All,
        },
        min_ttl: bootstrap.dns.min_ttl,
        max_ttl: bootstrap.dns.max_ttl,
        failure_refresh: bootstrap.dns.failure_refresh,
        query_timeout: bootstrap.dns.query_timeout,
    })
}

fn access_logger(bootstrap: &Bootstrap) -> anyhow::Result<crate::access_log::AccessLogger> {
    use crate::access_log::{AccessLogger, Format, LogTarget};
    use crate::config::bootstrap::AccessLogFormat;
    let target = match bootstrap.access_log.path.as_str() {
        "off" | "" => LogTarget::Off,
        "/dev/stdout" | "-" => LogTarget::Stdout,
        path => LogTarget::File(path.into()),
    };
    let format = match bootstrap.access_log.format {
        AccessLogFormat::Text => Format::Text,
        AccessLogFormat::Json => Format::Json,
        AccessLogFormat::TextWithPeer => Format::TextWithPeer,
    };
    AccessLogger::new(target, format, crate::access_log::DEFAULT_CAPACITY)
        .with_context(|| format!("cannot open the access log {}", bootstrap.access_log.path))
}

/// The process log goes to stderr. Colour only on a terminal: a pipe or file (container logs,
/// `kubectl logs`, log shippers) gets plain text, as from Envoy.
fn init_tracing() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("EGRESSD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}
