//! TLS termination (SIMPLE, MUTUAL, ISTIO_MUTUAL) on a TLS listener's chain: choose ALPN from
//! the ClientHello, handshake under a deadline, verify the client certificate, learn the peer's
//! SPIFFE identity, then serve the decrypted stream by the chain's HTTP routes or tcp route.
//! Nothing is connected upstream before the downstream handshake succeeded (unlike Envoy,
//! envoyproxy/envoy#11694), so a refused client never costs an upstream connection.

use std::io;
use std::sync::Arc;

use rustls::server::Acceptor;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::LazyConfigAcceptor;

use super::ListenerContext;
use crate::io::prefixed::Prefixed;
use crate::proxy::tcp::TcpSession;
use crate::routing::snapshot::{ChainKind, FilterChain, ListenerKind, ServerTls, Snapshot};
use crate::tls::certs::{CertError, ServerCerts};
use crate::tls::identity::{self, SAN_MISMATCH};
use crate::tls::tls12_alerts::Tls12Alerts;

/// What runs inside the terminated TLS; it decides which ALPN protocols are acceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Inner {
    Http,
    Tcp,
}

/// In the server's order of preference, as Envoy's HTTPS chains advertise them. A sidecar's
/// `istio-http/1.1,istio,http/1.1` or `istio-h2,istio,h2` thus gets the plain protocol.
const HTTP_ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];
/// Envoy advertises `istio-peer-exchange,h2,http/1.1` on terminated TCP chains. We do not speak
/// the metadata exchange protocol, so `istio-peer-exchange` is never selected (the sidecar would
/// otherwise write its header into the tunnelled bytes); plain `istio` is accepted instead.
const TCP_ALPN: &[&[u8]] = &[b"istio", b"h2", b"http/1.1"];

/// The protocol to negotiate: the server's first preference the client offered, or none. With
/// none, the handshake completes without ALPN, as Envoy (BoringSSL) does; rustls would abort it
/// if the config listed protocols, hence the per-ClientHello choice.
fn choose_alpn<'a>(inner: Inner, offered: Option<impl Iterator<Item = &'a [u8]>>) -> Option<&'static [u8]> {
    let offered: Vec<&[u8]> = offered?.collect();
    let preference = match inner {
        Inner::Http => HTTP_ALPN,
        Inner::Tcp => TCP_ALPN,
    };
    preference.iter().copied().find(|p| offered.contains(p))
}

/// Terminates TLS for chain `chain` of listener `listener` and serves what is inside. Runs as a
/// task of its own (see `listener::spawn_connection`), which holds only the serving state.
pub async fn serve(
    ctx: Arc<ListenerContext>,
    snapshot: Arc<Snapshot>,
    listener: usize,
    chain: usize,
    session: TcpSession<TcpStream>,
) {
    // Boxed: the handshake's state (~5 KiB) is freed once it is done instead of staying in
    // this connection's future for its whole life.
    let Some(accepted) = Box::pin(accept(&ctx, &snapshot, listener, chain, session)).await else {
        return;
    };
    let Some(filter_chain) = chain_of(&snapshot, listener, chain) else {
        return;
    };
    match &filter_chain.kind {
        ChainKind::TerminateHttp { .. } => {
            let sni = accepted.server_name.map(String::into_boxed_str);
            super::http::serve(
                ctx.clone(),
                snapshot.clone(),
                listener,
                Some(chain),
                accepted.stream,
                accepted.local,
                accepted.remote,
                "https",
                sni,
                accepted.peer_identity,
            )
            .await
        }
        ChainKind::TerminateTcp { tcp, .. } => {
            let session = TcpSession {
                downstream: accepted.stream,
                replay: Vec::new(),
                local: accepted.local,
                remote: accepted.remote,
                server_name: accepted.server_name,
                peer_identity: accepted.peer_identity,
                started: accepted.started,
            };
            // Boxed: only this branch needs a TCP session's state.
            Box::pin(crate::proxy::tcp::proxy(&ctx, &snapshot, tcp, session)).await
        }
        ChainKind::Passthrough(_) | ChainKind::AutoPassthrough => {}
    }
}

/// A downstream connection whose TLS handshake succeeded.
struct Accepted {
    /// Boxed once: moved by value through the serving futures, the 1.2 KiB TLS stream would be
    /// laid out in each of them.
    stream: Box<TlsStream<Tls12Alerts<Prefixed<TcpStream>>>>,
    local: std::net::SocketAddr,
    remote: std::net::SocketAddr,
    server_name: Option<String>,
    peer_identity: Option<Arc<str>>,
    started: std::time::SystemTime,
}

/// Handshakes under the deadline; failures are counted and logged here (`None`).
async fn accept(
    ctx: &ListenerContext,
    snapshot: &Snapshot,
    listener: usize,
    chain: usize,
    session: TcpSession<TcpStream>,
) -> Option<Accepted> {
    let filter_chain = chain_of(snapshot, listener, chain)?;
    let (tls, inner) = match &filter_chain.kind {
        ChainKind::TerminateHttp { tls, .. } => (tls, Inner::Http),
        ChainKind::TerminateTcp { tls, .. } => (tls, Inner::Tcp),
        ChainKind::Passthrough(_) | ChainKind::AutoPassthrough => return None,
    };
    let TcpSession {
        downstream,
        replay,
        local,
        remote,
        server_name,
        started,
        ..
    } = session;
    let handshake = handshake(ctx, tls, inner, Prefixed::new(replay, downstream));
    let stream = match tokio::time::timeout(ctx.bootstrap.timeouts.tls_handshake, handshake).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(failure)) => {
            // Envoy counts the connection at the listener even when its handshake fails.
            ctx.stats.cx_failed();
            failure.count(ctx);
            // Debug only: clients cause these at will; certificate and settings problems are
            // warned about once by `ServerCerts`.
            let sni = server_name.as_deref().unwrap_or("-");
            tracing::debug!(listener = %ctx.name, %remote, sni, reason = %failure, "TLS handshake failed");
            return None;
        }
        Err(_) => {
            ctx.stats.cx_failed();
            ctx.stats.ssl_connection_error.inc();
            tracing::debug!(listener = %ctx.name, %remote, timeout = ?ctx.bootstrap.timeouts.tls_handshake, "TLS handshake timed out");
            return None;
        }
    };
    ctx.stats.ssl_handshake.inc();
    if stream.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
        ctx.stats.ssl_session_reused.inc();
    }
    let peer_identity = identity::peer_identity(stream.get_ref().1.peer_certificates());
    Some(Accepted {
        stream: Box::new(stream),
        local,
        remote,
        server_name,
        peer_identity,
        started,
    })
}

fn chain_of(snapshot: &Snapshot, listener: usize, chain: usize) -> Option<&FilterChain> {
    match &snapshot.listeners.get(listener)?.kind {
        ListenerKind::Tls(chains) => chains.get(chain),
        _ => None,
    }
}

/// Reads the ClientHello (replayed from `io`), picks the config for its ALPN offer, handshakes.
async fn handshake<S>(
    ctx: &ListenerContext,
    tls: &ServerTls,
    inner: Inner,
    io: S,
) -> Result<TlsStream<Tls12Alerts<S>>, Failure>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let start = LazyConfigAcceptor::new(Acceptor::default(), Tls12Alerts::new(io))
        .await
        .map_err(Failure::from_io)?;
    let alpn = choose_alpn(inner, start.client_hello().alpn());
    let config = ServerCerts::global()
        .server_config(tls, alpn, &ctx.shared.store)
        .map_err(Failure::Config)?;
    let mut stream = start.into_stream(config).await.map_err(Failure::from_io)?;
    stream.get_mut().0.handshake_done();
    Ok(stream)
}

/// Why a handshake failed, in Envoy's `ssl.*` vocabulary.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("no client certificate")]
    NoCertificate,
    #[error("client certificate not verified: {0}")]
    Verify(rustls::CertificateError),
    #[error("client certificate has none of the server's subjectAltNames")]
    SubjectAltName,
    #[error("{0}")]
    Config(CertError),
    #[error("{0}")]
    Connection(io::Error),
}

impl Failure {
    fn from_io(e: io::Error) -> Failure {
        match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
            Some(rustls::Error::NoCertificatesPresented) => Failure::NoCertificate,
            Some(rustls::Error::InvalidCertificate(c)) if *c == SAN_MISMATCH => Failure::SubjectAltName,
            Some(rustls::Error::InvalidCertificate(c)) => Failure::Verify(c.clone()),
            _ => Failure::Connection(e),
        }
    }

    fn count(&self, ctx: &ListenerContext) {
        let stats = &ctx.stats;
        match self {
            Failure::NoCertificate => stats.ssl_fail_verify_no_cert.inc(),
            Failure::Verify(_) => stats.ssl_fail_verify_error.inc(),
            Failure::SubjectAltName => stats.ssl_fail_verify_san.inc(),
            Failure::Config(_) | Failure::Connection(_) => stats.ssl_connection_error.inc(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn choose(inner: Inner, offers: &[&str]) -> Option<&'static str> {
        let offered = offers.iter().map(|s| s.as_bytes());
        choose_alpn(inner, Some(offered)).map(|p| std::str::from_utf8(p).unwrap())
    }

    #[test]
    fn http_chains_answer_the_plain_protocol_of_istio_offers() {
        assert_eq!(
            choose(Inner::Http, &["istio-http/1.1", "istio", "http/1.1"]),
            Some("http/1.1")
        );
        assert_eq!(choose(Inner::Http, &["istio-h2", "istio", "h2"]), Some("h2"));
        assert_eq!(
            choose(Inner::Http, &["http/1.1", "h2"]),
            Some("h2"),
            "the server's order decides"
        );
        assert_eq!(choose(Inner::Http, &["istio-peer-exchange", "istio"]), None);
        assert_eq!(choose(Inner::Http, &[]), None);
        assert_eq!(choose_alpn(Inner::Http, None::<std::iter::Empty<&[u8]>>), None);
    }

    #[test]
    fn tcp_chains_accept_istio_but_never_peer_exchange() {
        assert_eq!(choose(Inner::Tcp, &["istio-peer-exchange", "istio"]), Some("istio"));
        assert_eq!(choose(Inner::Tcp, &["istio-peer-exchange"]), None);
        assert_eq!(
            choose(Inner::Tcp, &["istio-peer-exchange", "istio", "h2"]),
            Some("istio")
        );
    }
}
