//! The stat store: counters and gauges with Envoy's names, each registered with its Prometheus
//! family and labels. Connections hold pre-resolved handles (`family`, `sni`) and never look a stat
//! up by name; the admin API renders a `Snapshot` (`render`). Nothing here does I/O or knows about
//! routing; stats are never removed, so a cluster dropped by a reload keeps its last values.

pub mod family;
pub mod names;
pub mod render;
pub mod sni;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

pub use family::{
    ClusterStats, HttpConnManagerStats, ListenerStats, RbacStats, ServerState, ServerStats, TcpProxyStats,
};
pub use names::Scope;
pub use render::RenderOptions;
pub use sni::{SniCounters, SniStats};

/// Whether a stat only grows or can go both ways; decides the Prometheus `# TYPE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Counter,
    Gauge,
}

/// What a stat is called: its `/stats` name and its Prometheus family and labels. Built by the
/// families, which know the tag values; a cluster name contains dots, so the Prometheus form
/// cannot be recovered from the text name by splitting it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatDesc {
    name: Box<str>,
    prom_family: Box<str>,
    /// Sorted by label name, as the exposition renders them.
    labels: Vec<(&'static str, Box<str>)>,
}

impl StatDesc {
    /// An unscoped stat such as `server.live`: Prometheus `<prom_prefix><name with . as _>{}`.
    pub fn plain(name: &str, prom_prefix: &str) -> Self {
        StatDesc {
            name: name.into(),
            prom_family: prom_name(prom_prefix, name).into(),
            labels: Vec::new(),
        }
    }

    /// `<scope>.<tag value>.<suffix>`, rendered `<scope prefix>_<suffix>{<scope label>="<tag value>"}`.
    pub fn scoped(scope: Scope, tag_value: &str, suffix: &str) -> Self {
        StatDesc {
            name: format!("{}.{tag_value}.{suffix}", scope.text_prefix).into(),
            prom_family: prom_name(&format!("{}_", scope.prom_prefix), suffix).into(),
            labels: vec![(scope.label, tag_value.into())],
        }
    }

    /// Like `scoped`, with one more tag taken out of the suffix, as Envoy's tag regexes do:
    /// `upstream_rq_301` renders as family `upstream_rq` with `response_code="301"`.
    pub fn scoped_tagged(
        scope: Scope,
        tag_value: &str,
        suffix: &str,
        family_suffix: &str,
        label: &'static str,
        label_value: &str,
    ) -> Self {
        let mut desc = StatDesc::scoped(scope, tag_value, suffix);
        desc.prom_family = prom_name(&format!("{}_", scope.prom_prefix), family_suffix).into();
        desc.labels.push((label, label_value.into()));
        desc.labels.sort_by(|a, b| a.0.cmp(b.0));
        desc
    }

    /// The `/stats` name, e.g. `cluster.outbound|443||edition.cnn.com.upstream_cx_total`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The Prometheus metric family, e.g. `envoy_cluster_upstream_cx_total`.
    pub fn prom_family(&self) -> &str {
        &self.prom_family
    }

    /// Prometheus labels, sorted by label name; values unescaped.
    pub fn labels(&self) -> impl Iterator<Item = (&str, &str)> {
        self.labels.iter().map(|(k, v)| (*k, &**v))
    }
}

/// Envoy's Prometheus name sanitizing: the prefix, then every character outside `[a-zA-Z0-9_]`
/// of the name turned into `_`.
fn prom_name(prefix: &str, name: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + name.len());
    out.push_str(prefix);
    out.extend(name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }));
    out
}

#[derive(Debug)]
struct Stat {
    desc: StatDesc,
    kind: Kind,
    value: AtomicU64,
    /// Set on every write, for `?usedonly` (Envoy marks a stat used even on `add(0)`).
    used: AtomicBool,
}

impl Stat {
    fn new(desc: StatDesc, kind: Kind) -> Arc<Stat> {
        Arc::new(Stat {
            desc,
            kind,
            value: AtomicU64::new(0),
            used: AtomicBool::new(false),
        })
    }
}

/// A monotonically increasing count. Cloning shares the value.
#[derive(Debug, Clone)]
pub struct Counter(Arc<Stat>);

impl Counter {
    /// A counter registered nowhere, for code paths that have no stats to charge.
    pub fn detached() -> Counter {
        Counter(Stat::new(StatDesc::plain("", ""), Kind::Counter))
    }

    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    #[inline]
    pub fn add(&self, n: u64) {
        // Relaxed: a stat orders nothing else; readers only need an eventually exact value.
        self.0.value.fetch_add(n, Ordering::Relaxed);
        self.0.used.store(true, Ordering::Relaxed);
    }

    pub fn value(&self) -> u64 {
        self.0.value.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down. Unsigned like Envoy's: a `dec` below zero wraps, which shows
/// up in `/stats` as a huge number rather than hiding an unbalanced guard.
#[derive(Debug, Clone)]
pub struct Gauge(Arc<Stat>);

impl Gauge {
    /// A gauge registered nowhere, for code paths that have no stats to charge.
    pub fn detached() -> Gauge {
        Gauge(Stat::new(StatDesc::plain("", ""), Kind::Gauge))
    }

    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    #[inline]
    pub fn dec(&self) {
        self.sub(1);
    }

    #[inline]
    pub fn add(&self, n: u64) {
        self.0.value.fetch_add(n, Ordering::Relaxed);
        self.0.used.store(true, Ordering::Relaxed);
    }

    #[inline]
    pub fn sub(&self, n: u64) {
        self.0.value.fetch_sub(n, Ordering::Relaxed);
        self.0.used.store(true, Ordering::Relaxed);
    }

    pub fn set(&self, n: u64) {
        self.0.value.store(n, Ordering::Relaxed);
        self.0.used.store(true, Ordering::Relaxed);
    }

    pub fn value(&self) -> u64 {
        self.0.value.load(Ordering::Relaxed)
    }
}

/// Every stat of the process, keyed by `/stats` name. Cheap to clone; all clones share the stats.
#[derive(Debug, Clone, Default)]
pub struct Store {
    stats: Arc<RwLock<BTreeMap<Box<str>, Arc<Stat>>>>,
}

impl Store {
    pub fn new() -> Store {
        Store::default()
    }

    /// Get or create an unscoped counter (Prometheus `envoy_<name>{}`, or `egressd_` for our own).
    pub fn counter(&self, name: &str) -> Counter {
        Counter(self.get_or_create(name, Kind::Counter, || {
            StatDesc::plain(name, names::prom_prefix_for(name))
        }))
    }

    /// Get or create an unscoped gauge (Prometheus `envoy_<name>{}`, or `egressd_` for our own).
    pub fn gauge(&self, name: &str) -> Gauge {
        Gauge(self.get_or_create(name, Kind::Gauge, || {
            StatDesc::plain(name, names::prom_prefix_for(name))
        }))
    }

    /// Get or create a counter with the given names; an existing stat keeps its first description.
    pub fn counter_with(&self, desc: StatDesc) -> Counter {
        let name = desc.name.clone();
        Counter(self.get_or_create(&name, Kind::Counter, || desc))
    }

    /// Get or create a gauge with the given names; an existing stat keeps its first description.
    pub fn gauge_with(&self, desc: StatDesc) -> Gauge {
        let name = desc.name.clone();
        Gauge(self.get_or_create(&name, Kind::Gauge, || desc))
    }

    /// How many stats exist.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// Every stat's current value, sorted by `/stats` name. Values are read one by one, so a
    /// snapshot is not atomic across stats (neither is Envoy's).
    pub fn snapshot(&self) -> Snapshot {
        let stats: Vec<Arc<Stat>> = self.read().values().cloned().collect();
        // Read the atomics after releasing the lock so rendering never blocks stat creation.
        let samples = stats
            .into_iter()
            .map(|stat| Sample {
                value: stat.value.load(Ordering::Relaxed),
                used: stat.used.load(Ordering::Relaxed),
                stat,
            })
            .collect();
        Snapshot { samples }
    }

    fn get_or_create(&self, name: &str, kind: Kind, desc: impl FnOnce() -> StatDesc) -> Arc<Stat> {
        if let Some(stat) = self.read().get(name) {
            return checked_kind(stat, kind);
        }
        let mut stats = self.stats.write().unwrap_or_else(PoisonError::into_inner);
        let stat = stats.entry(name.into()).or_insert_with(|| Stat::new(desc(), kind));
        checked_kind(stat, kind)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<Box<str>, Arc<Stat>>> {
        // A writer that panicked left the map consistent (a single insert), so keep serving.
        self.stats.read().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Every name comes from `names`, so a kind clash is a bug in this module's callers; in release
/// the handle shares the existing value rather than failing a connection.
fn checked_kind(stat: &Arc<Stat>, kind: Kind) -> Arc<Stat> {
    debug_assert_eq!(stat.kind, kind, "stat {} registered as {:?}", stat.desc.name, stat.kind);
    Arc::clone(stat)
}

/// The values of every stat at one moment, sorted by `/stats` name; input of the renderers.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    samples: Vec<Sample>,
}

impl Snapshot {
    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }
}

/// One stat's value in a `Snapshot`.
#[derive(Debug, Clone)]
pub struct Sample {
    stat: Arc<Stat>,
    value: u64,
    used: bool,
}

impl Sample {
    pub fn desc(&self) -> &StatDesc {
        &self.stat.desc
    }

    pub fn name(&self) -> &str {
        &self.stat.desc.name
    }

    pub fn kind(&self) -> Kind {
        self.stat.kind
    }

    pub fn value(&self) -> u64 {
        self.value
    }

    /// Whether the stat was ever written (Envoy's `?usedonly`).
    pub fn used(&self) -> bool {
        self.used
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_get_or_create_shares_value() {
        let store = Store::new();
        let a = store.counter("server.config_reload");
        let b = store.counter("server.config_reload");
        a.inc();
        b.add(2);
        assert_eq!(a.value(), 3);
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn gauge_moves_both_ways_and_marks_used() {
        let store = Store::new();
        let g = store.gauge("server.live");
        assert!(!store.snapshot().samples()[0].used());
        g.inc();
        g.add(5);
        g.dec();
        g.sub(2);
        assert_eq!(g.value(), 3);
        g.set(0);
        let snap = store.snapshot();
        assert_eq!(snap.samples()[0].value(), 0);
        assert!(snap.samples()[0].used());
        assert_eq!(snap.samples()[0].kind(), Kind::Gauge);
    }

    #[test]
    fn plain_desc_sanitizes_prometheus_name() {
        let desc = StatDesc::plain("listener_manager.workers_started", names::ENVOY_PROM_PREFIX);
        assert_eq!(desc.prom_family(), "envoy_listener_manager_workers_started");
        assert_eq!(desc.labels().count(), 0);
    }

    #[test]
    fn scoped_tagged_desc_sorts_labels() {
        let desc = StatDesc::scoped_tagged(
            names::cluster::SCOPE,
            "outbound|80||edition.cnn.com",
            "upstream_rq_301",
            names::cluster::UPSTREAM_RQ_TAGGED,
            names::labels::RESPONSE_CODE,
            "301",
        );
        assert_eq!(desc.name(), "cluster.outbound|80||edition.cnn.com.upstream_rq_301");
        assert_eq!(desc.prom_family(), "envoy_cluster_upstream_rq");
        let labels: Vec<_> = desc.labels().collect();
        assert_eq!(
            labels,
            [
                ("cluster_name", "outbound|80||edition.cnn.com"),
                ("response_code", "301")
            ]
        );
    }

    #[test]
    fn snapshot_is_sorted_by_name() {
        let store = Store::new();
        store.counter("b.x");
        store.gauge("a.y");
        store.counter("a.x");
        let names: Vec<_> = store.snapshot().samples().iter().map(|s| s.name().to_owned()).collect();
        assert_eq!(names, ["a.x", "a.y", "b.x"]);
    }

    #[test]
    fn detached_handles_count_without_a_store() {
        let c = Counter::detached();
        c.inc();
        assert_eq!(c.value(), 1);
        let g = Gauge::detached();
        g.set(7);
        assert_eq!(g.value(), 7);
    }

    #[test]
    fn concurrent_increments_are_exact() {
        let store = Store::new();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let store = store.clone();
                std::thread::spawn(move || {
                    // Each thread resolves its own handle, racing the creation too.
                    let c = store.counter("server.config_reload");
                    let g = store.gauge("server.total_connections");
                    for _ in 0..10_000 {
                        c.inc();
                        g.inc();
                        g.dec();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("worker thread panicked");
        }
        assert_eq!(store.counter("server.config_reload").value(), 40_000);
        assert_eq!(store.gauge("server.total_connections").value(), 0);
        assert_eq!(store.len(), 2);
    }
}
