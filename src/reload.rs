//! Config hot reload: watch the config paths (directories, because Kubernetes swaps a `..data`
//! symlink), poll a content hash as a fallback, and take SIGHUP. A good config is swapped in
//! atomically and the listeners diffed; a bad one is logged, counted and shown in
//! `/config_dump`, and the running config keeps serving.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::listener::Listeners;
use crate::routing::load_and_compile;
use crate::state::AppState;

/// The files must be quiet this long before they are read: events closer together are one
/// change (editors and kubelet write in bursts, `cp` truncates and then writes in pieces).
const DEBOUNCE: Duration = Duration::from_millis(200);
/// A writer that never pauses gets its files read this long after its first event anyway
/// (and again once it stops).
const SETTLE_MAX: Duration = Duration::from_secs(2);
/// Fallback check when no file-system event arrives (network file systems, missed events).
const POLL: Duration = Duration::from_secs(2);

/// Runs until the process ends. `loaded_hash` is [`content_hash`] of the config as it was
/// loaded, taken before serving so that no change between load and watch is missed.
pub async fn run(state: Arc<AppState>, listeners: Arc<Listeners>, loaded_hash: u64) {
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let _watcher = watch_paths(&state.config_paths, tx.clone());
    let mut sighup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut last_hash = loaded_hash;
    let mut poll = tokio::time::interval(POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let forced = tokio::select! {
            Some(()) = rx.recv() => false,
            _ = poll.tick() => false,
            Some(()) = async { match sighup.as_mut() { Some(s) => s.recv().await, None => std::future::pending().await } } => true,
        };
        // Let the burst finish: a file written in place must not be read half-written (an
        // empty file is a valid, empty config).
        let first = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(DEBOUNCE).await;
            let mut more = false;
            while rx.try_recv().is_ok() {
                more = true;
            }
            if !more || first.elapsed() >= SETTLE_MAX {
                break;
            }
        }
        // One trip to the blocking pool for the hash and, if it changed, the reload: this
        // thread also serves the admin API and health probes, which must answer while 10,000
        // resources compile.
        let (state, listeners) = (state.clone(), listeners.clone());
        let checked = tokio::task::spawn_blocking(move || {
            // None when reading failed (e.g. out of file descriptors): not a config change.
            let hash = content_hash(&state.config_paths)?;
            if hash != last_hash || forced {
                reload(&state, &listeners);
            }
            Some(hash)
        })
        .await;
        if let Ok(Some(hash)) = checked {
            last_hash = hash;
        }
    }
}

/// Loads, compiles and, when the config is good, swaps it in.
pub fn reload(state: &AppState, listeners: &Listeners) {
    match load_and_compile(&state.config_paths, &state.bootstrap) {
        Ok(snapshot) => {
            state.snapshot.store(Arc::new(snapshot));
            state.server_stats.config_reload.inc();
            *state.last_reload_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
            if let Err(e) = listeners.reconcile() {
                tracing::error!("config reloaded, but {e:#}");
            }
            tracing::info!("config reloaded");
        }
        Err(e) => {
            state.server_stats.config_reload_failed.inc();
            for d in e.errors() {
                tracing::error!("config reload rejected: {d}");
            }
            let text: Vec<String> = e.errors().map(|d| d.to_string()).collect();
            *state.last_reload_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(text.join("\n"));
            tracing::warn!("the previous config keeps serving");
        }
    }
}

/// Watches each path's directory (a file's parent), non-recursively.
fn watch_paths(paths: &[PathBuf], tx: mpsc::UnboundedSender<()>) -> Option<notify::RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| crate::file_events::is_change(&e.kind)) {
            let _ = tx.send(());
        }
    })
    .map_err(|e| tracing::warn!(error = %e, "cannot watch the config; polling only"))
    .ok()?;
    for path in paths {
        let dir = if path.is_dir() {
            path.as_path()
        } else {
            path.parent().unwrap_or(Path::new("."))
        };
        if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
            tracing::warn!(path = %dir.display(), error = %e, "cannot watch; polling only");
        }
    }
    Some(watcher)
}

/// A hash of every config file's name and content, as loading would read them; `None` when
/// a directory or file could not be read for a reason other than not existing.
pub fn content_hash(paths: &[PathBuf]) -> Option<u64> {
    let mut hasher = DefaultHasher::new();
    for path in paths {
        let mut files = Vec::new();
        if path.is_dir() {
            let entries = std::fs::read_dir(path).ok()?;
            files.extend(entries.filter_map(Result::ok).map(|e| e.path()).filter(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml"))
            }));
        } else {
            files.push(path.clone());
        }
        files.sort();
        for file in files {
            file.hash(&mut hasher);
            match std::fs::read(&file) {
                Ok(bytes) => bytes.hash(&mut hasher),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0u8.hash(&mut hasher),
                Err(_) => return None,
            }
        }
    }
    Some(hasher.finish())
}
