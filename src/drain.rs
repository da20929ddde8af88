//! The one drain primitive: a trigger every listener and connection watches, and the count of
//! open downstream connections that decides when a draining process may exit.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

/// Cheap to clone; all clones see the same state.
#[derive(Clone)]
pub struct Drain {
    draining: Arc<watch::Sender<bool>>,
    active: Arc<AtomicUsize>,
}

impl Default for Drain {
    fn default() -> Self {
        Drain {
            draining: Arc::new(watch::channel(false).0),
            active: Arc::new(AtomicUsize::new(0)),
        }
    }
}

impl Drain {
    /// Starts draining (idempotent): listeners stop accepting, HTTP/1.1 responses carry
    /// `Connection: close`, HTTP/2 connections get GOAWAY, tunnels run on until the deadline.
    pub fn start(&self) {
        self.draining.send_replace(true);
    }

    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// Resolves once draining has started.
    pub async fn started(&self) {
        let mut rx = self.draining.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }

    /// Counts a downstream connection until the guard drops.
    pub fn track(&self) -> ConnectionGuard {
        self.active.fetch_add(1, Ordering::AcqRel);
        ConnectionGuard(self.active.clone())
    }

    /// Open downstream connections.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }
}

pub struct ConnectionGuard(Arc<AtomicUsize>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn guards_count_and_drain_wakes_watchers() {
        let drain = Drain::default();
        let a = drain.track();
        let b = drain.track();
        assert_eq!(drain.active(), 2);
        drop(a);
        assert_eq!(drain.active(), 1);
        let watcher = {
            let d = drain.clone();
            tokio::spawn(async move { d.started().await })
        };
        drain.start();
        watcher.await.unwrap();
        assert!(drain.is_draining());
        drop(b);
        assert_eq!(drain.active(), 0);
    }
}
