//! Proxying: HTTP requests (`http`) and TCP/TLS byte streams, with what every connection shares:
//! the cluster runtime, the access log, and stat families resolved once per prefix.

pub mod body;
pub mod headers;
pub mod http;
pub mod local_reply;
pub mod tcp;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::access_log::AccessLogger;
use crate::config::Bootstrap;
use crate::routing::snapshot::Snapshot;
use crate::stats::{HttpConnManagerStats, ListenerStats, RbacStats, SniStats, Store, TcpProxyStats};
use crate::upstream::cluster::ClusterManager;

/// What a connection task needs, besides its socket: its listener's name, bound address and
/// counters, and what all connections share.
pub struct ListenerContext {
    pub name: String,
    pub local: SocketAddr,
    pub stats: Arc<ListenerStats>,
    pub shared: Arc<Shared>,
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub bootstrap: Arc<Bootstrap>,
}

/// State shared by all listeners and connections; survives snapshot swaps.
pub struct Shared {
    pub clusters: ClusterManager,
    pub logger: Arc<AccessLogger>,
    pub store: Store,
    /// Drain trigger and open downstream connections.
    pub drain: crate::drain::Drain,
    /// Beyond Envoy: per-SNI counters for passthrough traffic, capped.
    pub sni: SniStats,
    hcm_stats: Mutex<HashMap<String, Arc<HttpConnManagerStats>>>,
    /// `http.<prefix>.rbac.*` by prefix, and `tcp.rbac.*` (key ""), made on first use: Envoy has
    /// them only where an RBAC filter is.
    rbac_stats: Mutex<HashMap<String, Arc<RbacStats>>>,
    tcp_stats: Mutex<HashMap<String, Arc<TcpProxyStats>>>,
}

impl Shared {
    pub fn new(
        clusters: ClusterManager,
        logger: Arc<AccessLogger>,
        store: Store,
        max_sni_stats: usize,
        drain: crate::drain::Drain,
    ) -> Shared {
        Shared {
            clusters,
            logger,
            sni: SniStats::new(&store, max_sni_stats),
            drain,
            store,
            hcm_stats: Mutex::new(HashMap::new()),
            tcp_stats: Mutex::new(HashMap::new()),
            rbac_stats: Mutex::new(HashMap::new()),
        }
    }

    /// The `tcp.<prefix>.` stats, resolved once per prefix.
    pub fn tcp_stats(&self, prefix: &str) -> Arc<TcpProxyStats> {
        cached(&self.tcp_stats, prefix, || TcpProxyStats::new(&self.store, prefix))
    }

    /// Registers (at 0) the RBAC counters of every chain a config's policies apply to, as Envoy
    /// creates them with its filters when a config is loaded.
    pub fn register_rbac_stats(&self, snapshot: &crate::routing::Snapshot) {
        use crate::routing::snapshot::{ChainKind, ListenerKind};
        let authz = &snapshot.authz;
        let mut tcp = false;
        for l in &snapshot.listeners {
            let http = |prefix: &str| {
                if !authz.http.is_empty() {
                    self.rbac_stats(Some(prefix)).register_for(&authz.http);
                }
            };
            match &l.kind {
                ListenerKind::Http(hcm) => http(&hcm.stat_prefix),
                ListenerKind::Tcp(_) => tcp = true,
                ListenerKind::Tls(chains) => {
                    for chain in chains {
                        match &chain.kind {
                            ChainKind::TerminateHttp { http: hcm, .. } => http(&hcm.stat_prefix),
                            _ => tcp = true,
                        }
                    }
                }
            }
        }
        if tcp && !authz.tcp.is_empty() {
            self.rbac_stats(None).register_for(&authz.tcp);
        }
    }

    /// The RBAC counters of an HTTP connection manager (`Some(prefix)`) or of TCP chains.
    pub fn rbac_stats(&self, http_prefix: Option<&str>) -> Arc<RbacStats> {
        cached(&self.rbac_stats, http_prefix.unwrap_or(""), || match http_prefix {
            Some(prefix) => RbacStats::http(&self.store, prefix),
            None => RbacStats::tcp(&self.store),
        })
    }

    /// The `http.<prefix>.` stats, resolved once per prefix (one map lookup per connection,
    /// none per request).
    pub fn hcm_stats(&self, prefix: &str) -> Arc<HttpConnManagerStats> {
        cached(&self.hcm_stats, prefix, || {
            HttpConnManagerStats::new(&self.store, prefix)
        })
    }
}

/// A stat family by its prefix, made once (one map lookup per connection, none per request).
fn cached<T>(map: &Mutex<HashMap<String, Arc<T>>>, key: &str, make: impl FnOnce() -> T) -> Arc<T> {
    let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(s) = map.get(key) {
        return s.clone();
    }
    let s = Arc::new(make());
    map.insert(key.to_string(), s.clone());
    s
}

/// The principal RBAC matches: the peer certificate's SPIFFE id without `spiffe://`.
pub fn principal_of(peer_identity: Option<&str>) -> Option<&str> {
    peer_identity?.strip_prefix("spiffe://")
}

/// Picks one destination by weight (a single destination is taken as is).
pub fn pick_weighted(
    clusters: &[crate::routing::snapshot::WeightedCluster],
) -> Option<&crate::routing::snapshot::WeightedCluster> {
    if clusters.len() <= 1 {
        return clusters.first();
    }
    let total: u64 = clusters.iter().map(|c| u64::from(c.weight)).sum();
    let mut ticket = fastrand::u64(..total.max(1));
    for c in clusters {
        if ticket < u64::from(c.weight) {
            return Some(c);
        }
        ticket -= u64::from(c.weight);
    }
    clusters.last()
}

#[cfg(test)]
mod tests {
    use crate::routing::snapshot::{HeaderOps, WeightedCluster};

    fn wc(name: &str, weight: u32) -> WeightedCluster {
        WeightedCluster {
            cluster: name.into(),
            weight,
            request_headers: HeaderOps::default(),
            response_headers: HeaderOps::default(),
        }
    }

    #[test]
    fn weights_split_traffic() {
        let clusters = [wc("a", 70), wc("b", 30)];
        let a = (0..10_000)
            .filter(|_| super::pick_weighted(&clusters).unwrap().cluster == "a")
            .count();
        assert!((6_600..7_400).contains(&a), "{a} of 10000 went to the 70% destination");
        assert_eq!(super::pick_weighted(&[wc("only", 0)]).unwrap().cluster, "only");
        assert!(super::pick_weighted(&[]).is_none());
    }
}
