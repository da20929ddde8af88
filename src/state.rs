//! The state every part of the running process shares (admin API, reload, app wiring): its
//! own module, so that nothing has to import `app`, which wires everything.

use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::config::Bootstrap;
use crate::routing::Snapshot;
use crate::stats;

/// What every part of the running process shares.
pub struct AppState {
    pub bootstrap: Bootstrap,
    pub config_paths: Vec<std::path::PathBuf>,
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub stats: stats::Store,
    pub server_stats: stats::ServerStats,
    pub started: Instant,
    pub started_at: SystemTime,
    pub concurrency: usize,
    /// The last config reload error, shown in `/config_dump`.
    pub last_reload_error: Mutex<Option<String>>,
    /// Set to true to stop the process (`/quitquitquit`, signals).
    pub shutdown: watch::Sender<bool>,
    /// The data plane's shared state, once the listeners are up (for `/clusters`).
    pub shared: Mutex<Option<Arc<crate::proxy::Shared>>>,
    pub drain: crate::drain::Drain,
}

impl AppState {
    pub fn request_shutdown(&self) {
        self.shutdown.send_replace(true);
    }
}
