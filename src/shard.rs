//! Which worker this thread is, and how many there are: what per-worker state (stats shards,
//! connection pools) is indexed by. Set by `worker` when it starts its threads; read by anything
//! that shards, without depending on the worker runtime itself.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

thread_local! {
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// Workers started in this process (1 until the workers start).
static COUNT: AtomicUsize = AtomicUsize::new(1);

/// This thread's worker number; 0 on any thread that is not a worker.
pub fn index() -> usize {
    INDEX.get()
}

/// How many workers the process runs: per-worker state is sharded this many ways.
pub fn count() -> usize {
    COUNT.load(Ordering::Relaxed)
}

/// Marks the calling thread as worker `index`.
pub(crate) fn set_index(index: usize) {
    INDEX.set(index);
}

/// Records how many workers run.
pub(crate) fn set_count(n: usize) {
    COUNT.store(n, Ordering::Relaxed);
}
