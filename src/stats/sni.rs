//! Per-server-name (TLS SNI) stats for passthrough traffic, which Envoy lacks: `sni.<name>.*`.
//! The name comes from an untrusted ClientHello, so the number of distinct names is capped and
//! anything beyond the cap or not shaped like a host name is counted under `other`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use super::names::sni;
use super::{Counter, StatDesc, Store};

/// The stats of one server name; a connection looks them up once and keeps the `Arc`.
#[derive(Debug)]
pub struct SniCounters {
    pub downstream_cx_total: Counter,
    pub rx_bytes_total: Counter,
    pub tx_bytes_total: Counter,
}

impl SniCounters {
    fn new(store: &Store, server_name: &str) -> SniCounters {
        let c = |suffix| store.counter_with(StatDesc::scoped(sni::SCOPE, server_name, suffix));
        SniCounters {
            downstream_cx_total: c(sni::DOWNSTREAM_CX_TOTAL),
            rx_bytes_total: c(sni::RX_BYTES_TOTAL),
            tx_bytes_total: c(sni::TX_BYTES_TOTAL),
        }
    }
}

/// Server name → its stats, at most `cap` distinct names plus `other`.
#[derive(Debug)]
pub struct SniStats {
    store: Store,
    cap: usize,
    by_name: RwLock<HashMap<Box<str>, Arc<SniCounters>>>,
    other: Arc<SniCounters>,
    overflow: Counter,
}

/// The longest DNS name (RFC 1035).
const MAX_NAME_LEN: usize = 253;

impl SniStats {
    pub fn new(store: &Store, cap: usize) -> SniStats {
        SniStats {
            store: store.clone(),
            cap,
            by_name: RwLock::new(HashMap::new()),
            other: Arc::new(SniCounters::new(store, sni::OTHER)),
            overflow: store.counter(sni::OVERFLOW),
        }
    }

    /// The stats of `server_name`, compared case-insensitively. Does not allocate once the name
    /// is known (if given in lower case). A name past the cap counts `sni.overflow` and gets
    /// `other`'s stats; so does an empty or malformed one, which could otherwise inject lines
    /// into `/stats`.
    pub fn server_name(&self, server_name: &str) -> Arc<SniCounters> {
        let Some(name) = normalize(server_name) else {
            return Arc::clone(&self.other);
        };
        if let Some(found) = self.read().get(&*name) {
            return Arc::clone(found);
        }
        let mut by_name = self.by_name.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(found) = by_name.get(&*name) {
            return Arc::clone(found);
        }
        if by_name.len() >= self.cap {
            self.overflow.inc();
            return Arc::clone(&self.other);
        }
        let counters = Arc::new(SniCounters::new(&self.store, &name));
        by_name.insert(name.into(), Arc::clone(&counters));
        counters
    }

    /// How many distinct names have their own stats (at most the cap).
    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Box<str>, Arc<SniCounters>>> {
        // Inserts are single map operations, so a poisoned map is still consistent.
        self.by_name.read().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Lower-cased host name, or `None` if it is not one (only letters, digits, `-`, `_`, `.`).
fn normalize(server_name: &str) -> Option<Cow<'_, str>> {
    let valid = !server_name.is_empty()
        && server_name.len() <= MAX_NAME_LEN
        && server_name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !valid {
        return None;
    }
    if server_name.bytes().any(|b| b.is_ascii_uppercase()) {
        Some(Cow::Owned(server_name.to_ascii_lowercase()))
    } else {
        Some(Cow::Borrowed(server_name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(store: &Store, name: &str) -> Option<u64> {
        let snap = store.snapshot();
        snap.samples().iter().find(|s| s.name() == name).map(|s| s.value())
    }

    #[test]
    fn same_name_shares_counters_case_insensitively() {
        let store = Store::new();
        let stats = SniStats::new(&store, 10);
        stats.server_name("edition.cnn.com").downstream_cx_total.inc();
        stats.server_name("Edition.CNN.com").downstream_cx_total.inc();
        stats.server_name("edition.cnn.com").rx_bytes_total.add(736);
        assert_eq!(value(&store, "sni.edition.cnn.com.downstream_cx_total"), Some(2));
        assert_eq!(value(&store, "sni.edition.cnn.com.rx_bytes_total"), Some(736));
        assert_eq!(stats.len(), 1);
    }

    #[test]
    fn names_past_the_cap_count_as_other() {
        let store = Store::new();
        let stats = SniStats::new(&store, 2);
        for name in ["a.com", "b.com", "c.com", "d.com", "a.com"] {
            stats.server_name(name).downstream_cx_total.inc();
        }
        assert_eq!(stats.len(), 2);
        assert_eq!(value(&store, "sni.a.com.downstream_cx_total"), Some(2));
        assert_eq!(value(&store, "sni.c.com.downstream_cx_total"), None);
        assert_eq!(value(&store, "sni.other.downstream_cx_total"), Some(2));
        assert_eq!(value(&store, "sni.overflow"), Some(2));
    }

    #[test]
    fn malformed_names_count_as_other_without_overflow() {
        let store = Store::new();
        let stats = SniStats::new(&store, 10);
        let long = "a".repeat(MAX_NAME_LEN + 1);
        for name in ["", "evil\ncluster.x: 1", "quo\"te", long.as_str()] {
            stats.server_name(name).downstream_cx_total.inc();
        }
        assert_eq!(value(&store, "sni.other.downstream_cx_total"), Some(4));
        assert_eq!(value(&store, "sni.overflow"), Some(0));
        assert!(stats.is_empty());
    }

    #[test]
    fn concurrent_lookups_respect_the_cap() {
        let store = Store::new();
        let stats = Arc::new(SniStats::new(&store, 5));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let stats = Arc::clone(&stats);
                std::thread::spawn(move || {
                    for i in 0..1_000 {
                        let name = format!("host{}.example.com", (i * 7 + t) % 20);
                        stats.server_name(&name).downstream_cx_total.inc();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("worker thread panicked");
        }
        assert_eq!(stats.len(), 5);
        let total: u64 = store
            .snapshot()
            .samples()
            .iter()
            .filter(|s| s.name().ends_with(".downstream_cx_total"))
            .map(|s| s.value())
            .sum();
        assert_eq!(total, 4_000);
    }
}
