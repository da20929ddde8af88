//! The HTTP/1.1 codec, used by both sides: the server side of a downstream connection
//! (`server`), request and response framing and the body decoders (`body`), the writer of
//! heads and bodies (`write`), and the client side's message parsing and encoding (`client`;
//! egressd's own upstream connections, their pool and bodies, live in `crate::upstream::h1`).
//! It imports none of `listener`, `proxy` and `upstream`: they import it.

mod body;
mod client;
mod server;
mod write;

use http::header::{self, HeaderMap};
use http::Version;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use bytes::Bytes;

pub use body::{parse_length, poll_read_buf, Decoder, Framing, InvalidBody, Rejected, RequestBody};
pub use client::{
    encode_head, is_upgrade, parse_response, response_framing, response_length, response_transfer_coding,
    ProtocolError, MAX_RESPONSE_HEAD,
};
pub use server::{parse_request, rejection_body, serve, Ended, Settings};
pub use write::{write_headers, write_headers_unframed, WriteQueue};

/// A response body the codec can move with `splice(2)` instead of reading it (egressd's own
/// upstream client's `Content-Length` bodies, `crate::upstream::h1`).
pub trait Splice {
    /// The socket holding the body's next bytes and how many are left, when none of them is
    /// buffered in user space.
    fn splice_source(&self) -> Option<(&TcpStream, u64)>;
    /// `n` bytes were moved to the client.
    fn spliced(&mut self, n: u64);
    /// The upstream side failed (or closed) mid-body.
    fn upstream_broken(&mut self);
    /// The upstream connection of a `101 Switching Protocols` answer, with the bytes already
    /// read past its head, once it is handed over: the connection becomes a tunnel (WebSocket).
    fn take_upgrade(&mut self) -> Option<PendingUpgrade> {
        None
    }
    /// The tunnel ended after moving these bytes from and to the client.
    fn upgrade_finished(&mut self, _from_client: u64, _to_client: u64) {}
}

/// An upstream connection that switched protocols.
pub struct Upgraded {
    pub io: Box<dyn UpgradedIo>,
    pub read: Bytes,
}

/// The upstream side of a tunnel, once the client that got the `101` hands it over (at once
/// for egressd's own client; hyper's after its connection task lets go of it).
pub type PendingUpgrade = std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<Upgraded>> + Send>>;

/// A byte stream a tunnel can run over.
pub trait UpgradedIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> UpgradedIo for T {}

/// The options of every `Connection` field, trimmed, empty list elements skipped.
pub fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Whether the other side keeps the connection after this message (RFC 9112 §9.3): `close`
/// always wins, also over an HTTP/1.0 `keep-alive` beside it.
pub fn wants_keep_alive(version: Version, headers: &HeaderMap) -> bool {
    let has = |token: &str| connection_tokens(headers).any(|t| t.eq_ignore_ascii_case(token));
    match version {
        Version::HTTP_11 => !has("close"),
        _ => has("keep-alive") && !has("close"),
    }
}
