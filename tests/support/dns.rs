//! A real DNS server for tests: hickory-server on 127.0.0.1 (UDP and TCP, same port) answering
//! A/AAAA/CNAME queries from records that a test changes while it runs, plus failure switches.
//! Test-only: authoritative for every name it holds, NXDOMAIN for the rest, no recursion.

use std::collections::HashMap;
use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Header, HeaderCounts, Metadata, ResponseCode};
use hickory_server::proto::rr::rdata::{A, AAAA, CNAME};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use hickory_server::Server;
use tokio::net::{TcpListener, UdpSocket};

/// Longest CNAME chain followed, as a guard against loops a test sets up by mistake.
const MAX_CNAME_HOPS: usize = 8;

const ANSWER: u8 = 0;
const SERVFAIL: u8 = 1;
const SILENT: u8 = 2;

/// A running DNS server; dropping it stops the server.
pub struct TestDns {
    addr: SocketAddr,
    zone: Arc<Zone>,
    _server: Server<Handler>,
}

#[derive(Default)]
struct Zone {
    names: Mutex<HashMap<String, Node>>,
    mode: AtomicU8,
    queries: AtomicU64,
    log: Mutex<Vec<(String, RecordType)>>,
}

#[derive(Clone, Default)]
struct Node {
    cname: Option<(Name, u32)>,
    a: Option<(Vec<Ipv4Addr>, u32)>,
    aaaa: Option<(Vec<Ipv6Addr>, u32)>,
}

impl TestDns {
    /// Binds UDP and TCP on one free loopback port and starts serving an empty zone.
    pub async fn start() -> Self {
        let zone = Arc::new(Zone::default());
        let (udp, tcp) = bind_pair().await;
        let addr = udp.local_addr().expect("udp local addr");
        let mut server = Server::new(Handler { zone: zone.clone() });
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5), 64);
        Self {
            addr,
            zone,
            _server: server,
        }
    }

    /// The address (UDP and TCP) to give a resolver.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets `name`'s A records (an empty list makes it exist with no A: NODATA); drops any CNAME.
    pub fn set_a(&self, name: &str, addrs: &[Ipv4Addr], ttl_secs: u32) {
        let mut names = self.zone.names();
        let node = names.entry(key(name)).or_default();
        node.cname = None;
        node.a = Some((addrs.to_vec(), ttl_secs));
    }

    /// Sets `name`'s AAAA records; drops any CNAME.
    pub fn set_aaaa(&self, name: &str, addrs: &[Ipv6Addr], ttl_secs: u32) {
        let mut names = self.zone.names();
        let node = names.entry(key(name)).or_default();
        node.cname = None;
        node.aaaa = Some((addrs.to_vec(), ttl_secs));
    }

    /// Makes `name` an alias of `target`, replacing its addresses.
    pub fn set_cname(&self, name: &str, target: &str, ttl_secs: u32) {
        let target = Name::from_str(&format!("{}.", key(target))).expect("valid CNAME target");
        self.zone.names().insert(
            key(name),
            Node {
                cname: Some((target, ttl_secs)),
                ..Node::default()
            },
        );
    }

    /// Removes `name`: queries for it get NXDOMAIN.
    pub fn remove(&self, name: &str) {
        self.zone.names().remove(&key(name));
    }

    /// While on, every query is answered SERVFAIL.
    pub fn set_failing(&self, failing: bool) {
        self.zone
            .mode
            .store(if failing { SERVFAIL } else { ANSWER }, Ordering::SeqCst);
    }

    /// While on, queries are read and counted but never answered (a dead nameserver).
    pub fn set_silent(&self, silent: bool) {
        self.zone
            .mode
            .store(if silent { SILENT } else { ANSWER }, Ordering::SeqCst);
    }

    /// Queries received, answered or not.
    pub fn queries(&self) -> u64 {
        self.zone.queries.load(Ordering::SeqCst)
    }

    /// Queries received for `name` with type `rtype` ("A", "AAAA", "CNAME", ...).
    pub fn queries_for(&self, name: &str, rtype: &str) -> u64 {
        let name = key(name);
        let log = self.zone.log.lock().unwrap_or_else(|e| e.into_inner());
        log.iter()
            .filter(|(n, t)| *n == name && t.to_string().eq_ignore_ascii_case(rtype))
            .count() as u64
    }
}

impl Zone {
    fn names(&self) -> MutexGuard<'_, HashMap<String, Node>> {
        // A test that panicked while holding the lock must not hide its own failure behind ours.
        self.names.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The answer section for `name`/`rtype`, or None for NXDOMAIN.
    fn answer(&self, name: &Name, rtype: RecordType) -> Option<Vec<Record>> {
        let names = self.names();
        let mut owner = name.clone();
        let mut records = Vec::new();
        for _ in 0..=MAX_CNAME_HOPS {
            let Some(node) = names.get(&key(&owner.to_string())) else {
                // A dangling alias still answers with its chain, like a real authority.
                return (!records.is_empty()).then_some(records);
            };
            if let Some((target, ttl)) = &node.cname {
                records.push(Record::from_rdata(
                    owner.clone(),
                    *ttl,
                    RData::CNAME(CNAME(target.clone())),
                ));
                if rtype == RecordType::CNAME {
                    return Some(records);
                }
                owner = target.clone();
                continue;
            }
            match rtype {
                RecordType::A => {
                    for (ip, ttl) in node.a.iter().flat_map(|(ips, t)| ips.iter().map(|ip| (*ip, *t))) {
                        records.push(Record::from_rdata(owner.clone(), ttl, RData::A(A(ip))));
                    }
                }
                RecordType::AAAA => {
                    for (ip, ttl) in node.aaaa.iter().flat_map(|(ips, t)| ips.iter().map(|ip| (*ip, *t))) {
                        records.push(Record::from_rdata(owner.clone(), ttl, RData::AAAA(AAAA(ip))));
                    }
                }
                _ => {}
            }
            return Some(records);
        }
        Some(records)
    }
}

/// Lower case, no trailing dot: the zone's key for a name.
fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// UDP and TCP on the same free port, so one `SocketAddr` serves both transports.
async fn bind_pair() -> (UdpSocket, TcpListener) {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind udp");
        let addr = udp.local_addr().expect("udp local addr");
        if let Ok(tcp) = TcpListener::bind(addr).await {
            return (udp, tcp);
        }
    }
    panic!("no loopback port free for both UDP and TCP");
}

struct Handler {
    zone: Arc<Zone>,
}

impl Handler {
    async fn respond<R: ResponseHandler>(&self, request: &Request, mut response: R) -> ResponseInfo {
        self.zone.queries.fetch_add(1, Ordering::SeqCst);
        let mut metadata = Metadata::response_from_request(&request.metadata);
        let Some(query) = request.queries.queries().first() else {
            metadata.response_code = ResponseCode::FormErr;
            return send(&mut response, request, metadata, &[]).await;
        };
        let name = Name::from(query.name().clone());
        let rtype = query.query_type();
        self.zone
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((key(&name.to_string()), rtype));

        match self.zone.mode.load(Ordering::SeqCst) {
            SILENT => {
                return ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                })
            }
            SERVFAIL => {
                metadata.response_code = ResponseCode::ServFail;
                return send(&mut response, request, metadata, &[]).await;
            }
            _ => {}
        }
        metadata.authoritative = true;
        let records = match self.zone.answer(&name, rtype) {
            Some(records) => records,
            None => {
                metadata.response_code = ResponseCode::NXDomain;
                Vec::new()
            }
        };
        send(&mut response, request, metadata, &records).await
    }
}

async fn send<R: ResponseHandler>(
    response: &mut R,
    request: &Request,
    metadata: Metadata,
    records: &[Record],
) -> ResponseInfo {
    let message = MessageResponseBuilder::from_message_request(request).build(
        metadata,
        records.iter(),
        std::iter::empty(),
        std::iter::empty(),
        std::iter::empty(),
    );
    match response.send_response(message).await {
        Ok(info) => info,
        Err(_) => ResponseInfo::from(Header {
            metadata,
            counts: HeaderCounts::default(),
        }),
    }
}

// `RequestHandler` is declared with `#[async_trait]`; this is that macro's expansion written out,
// to keep async-trait out of the dev-dependencies.
impl RequestHandler for Handler {
    fn handle_request<'life0, 'life1, 'async_trait, R, T>(
        &'life0 self,
        request: &'life1 Request,
        response_handle: R,
    ) -> Pin<Box<dyn Future<Output = ResponseInfo> + Send + 'async_trait>>
    where
        R: 'async_trait + ResponseHandler,
        T: 'async_trait + Time,
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(self.respond(request, response_handle))
    }
}
