//! Workers, as Envoy has them: one thread per worker, each running its own single-threaded
//! event loop. Every worker accepts on its own `SO_REUSEPORT` socket of each listener
//! (`listener::Listeners`), and the connections it accepts, the upstream connections they open
//! and the pool shard that keeps those (`upstream::pool`) stay on it: no work stealing and no
//! cross-thread wake-ups on the request path. The control plane (admin, reload, signals) runs
//! on the main thread's runtime.

use tokio::runtime::Handle;

/// A timer always due within a second, which is what a worker's event loop runs. tokio wakes
/// its own driver (a write to the worker's eventfd, and one more `epoll_wait`) whenever a new
/// timer is due before every other one; with this one pending, a connection's timeouts (seconds
/// away) never are, and setting them costs no system call. Measured: one `write(2)` and one
/// `epoll_wait(2)` less per new connection (of about 40 syscalls); at rest, one wake-up a
/// second per worker.
async fn heartbeat() {
    loop {
        tokio::time::sleep(HEARTBEAT).await;
    }
}

const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(1);

/// The running workers' runtimes. They run until the process exits.
pub struct Workers {
    handles: Vec<Handle>,
}

impl Workers {
    /// Starts `n` worker threads (`n` ≥ 1), each with its own runtime.
    pub fn start(n: usize) -> std::io::Result<Workers> {
        let n = n.max(1);
        let mut handles = Vec::with_capacity(n);
        for index in 0..n {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::Builder::new()
                .name(format!("egressd-wrk-{index}"))
                .spawn(move || {
                    crate::shard::set_index(index);
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_io()
                        .enable_time()
                        .build();
                    match runtime {
                        Ok(runtime) => {
                            let _ = tx.send(Ok(runtime.handle().clone()));
                            runtime.block_on(heartbeat());
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                        }
                    }
                })?;
            let handle = rx
                .recv()
                .map_err(|_| std::io::Error::other("a worker thread ended while starting"))??;
            handles.push(handle);
        }
        crate::shard::set_count(n);
        Ok(Workers { handles })
    }

    /// One runtime handle per worker, in worker order.
    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::{count, index};

    #[test]
    fn each_worker_runs_tasks_on_its_own_thread_and_knows_its_index() {
        let workers = Workers::start(3).unwrap();
        assert_eq!(count(), 3);
        let mut seen = Vec::new();
        for handle in workers.handles() {
            let (tx, rx) = std::sync::mpsc::channel();
            handle.spawn(async move {
                // A task spawned from a worker's task stays on that worker.
                let inner = tokio::spawn(async { (index(), std::thread::current().id()) });
                let outer = (index(), std::thread::current().id());
                let _ = tx.send((outer, inner.await.unwrap()));
            });
            let (outer, inner) = rx.recv().unwrap();
            assert_eq!(outer, inner);
            seen.push(outer);
        }
        let indexes: Vec<usize> = seen.iter().map(|s| s.0).collect();
        assert_eq!(indexes, vec![0, 1, 2]);
        let threads: std::collections::HashSet<_> = seen.iter().map(|s| s.1).collect();
        assert_eq!(threads.len(), 3);
        assert_eq!(index(), 0, "the test thread is not a worker");
    }

    /// `write(2)` calls made by the calling thread so far.
    fn writes_by_this_thread() -> u64 {
        let io = std::fs::read_to_string("/proc/thread-self/io").unwrap();
        let line = io.lines().find(|l| l.starts_with("syscw:")).unwrap();
        line["syscw:".len()..].trim().parse().unwrap()
    }

    /// A connection's timeout set on a worker costs no system call: with the heartbeat due
    /// first, tokio does not wake its own driver (a write to the worker's eventfd).
    #[test]
    fn setting_a_timeout_on_a_worker_writes_nothing() {
        let workers = Workers::start(1).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        workers.handles()[0].spawn(async move {
            // A timer that fires first, so that the worker has parked and woken with what
            // remains in its timer wheel.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            let before = writes_by_this_thread();
            let timeout = tokio::time::timeout(std::time::Duration::from_secs(30), std::future::pending::<()>());
            let mut timeout = std::pin::pin!(timeout);
            std::future::poll_fn(|cx| {
                assert!(std::future::Future::poll(timeout.as_mut(), cx).is_pending());
                std::task::Poll::Ready(())
            })
            .await;
            let _ = tx.send(writes_by_this_thread() - before);
        });
        assert_eq!(rx.recv().unwrap(), 0, "the worker wrote to wake itself");
    }
}
