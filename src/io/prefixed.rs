//! `Prefixed`: a downstream stream that first yields bytes already read from it (the peeked
//! ClientHello) and then continues with the stream itself, so a TLS terminator sees the
//! connection from its first byte. Writes, flushes and shutdown go straight to the inner stream;
//! it must never buffer writes or reorder reads.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A stream that reads `prefix` before reading from `inner`.
#[derive(Debug)]
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    consumed: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Prefixed {
            prefix,
            consumed: 0,
            inner,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The prefix bytes not yet read, and the inner stream.
    pub fn into_parts(mut self) -> (Vec<u8>, S) {
        self.prefix.drain(..self.consumed.min(self.prefix.len()));
        (self.prefix, self.inner)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let unread = this.prefix.get(this.consumed..).unwrap_or_default();
        if unread.is_empty() {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let (now, _) = unread.split_at(unread.len().min(buf.remaining()));
        buf.put_slice(now);
        this.consumed += now.len();
        if this.consumed == this.prefix.len() {
            // A connection lives for hours; the replayed hello should not.
            this.prefix = Vec::new();
            this.consumed = 0;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::crypto::aws_lc_rs::default_provider;
    use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::tls::sni::{read_client_hello, DEFAULT_MAX_CLIENT_HELLO_BYTES};

    #[tokio::test]
    async fn replays_prefix_then_reads_inner_and_passes_writes_through() {
        let (mut peer, inner) = tokio::io::duplex(1024);
        let mut stream = Prefixed::new(b"hello ".to_vec(), inner);
        peer.write_all(b"world").await.unwrap();
        peer.shutdown().await.unwrap();

        let mut first = [0u8; 4];
        stream.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"hell");
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"o world");

        stream.write_all(b"reply").await.unwrap();
        stream.flush().await.unwrap();
        stream.shutdown().await.unwrap();
        let mut reply = Vec::new();
        peer.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"reply");
    }

    #[test]
    fn into_parts_returns_the_unread_prefix() {
        let mut stream = Prefixed::new(b"abcdef".to_vec(), ());
        stream.consumed = 2;
        assert_eq!(stream.into_parts().0, b"cdef");
    }

    /// The point of `Prefixed`: peek the ClientHello, then let rustls terminate the same
    /// connection as if nothing had been read.
    #[tokio::test]
    async fn tls_handshake_succeeds_after_the_hello_was_peeked() {
        let certified = rcgen::generate_simple_self_signed(vec!["edition.cnn.com".into()]).unwrap();
        let cert = certified.cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der()));
        let provider = Arc::new(default_provider());
        let server_config = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let client_config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();

        // A small pipe makes the hello arrive over several reads.
        let (client_io, mut server_io) = tokio::io::duplex(256);
        let client = tokio::spawn(async move {
            let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
            let name = ServerName::try_from("edition.cnn.com").unwrap();
            let mut tls = connector.connect(name, client_io).await.unwrap();
            tls.write_all(b"ping").await.unwrap();
            let mut pong = [0u8; 4];
            tls.read_exact(&mut pong).await.unwrap();
            pong
        });

        let (info, replay) = read_client_hello(&mut server_io, DEFAULT_MAX_CLIENT_HELLO_BYTES)
            .await
            .unwrap();
        assert_eq!(info.server_name.as_deref(), Some("edition.cnn.com"));
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
        let mut tls = acceptor.accept(Prefixed::new(replay, server_io)).await.unwrap();
        let mut ping = [0u8; 4];
        tls.read_exact(&mut ping).await.unwrap();
        assert_eq!(&ping, b"ping");
        tls.write_all(b"pong").await.unwrap();
        tls.flush().await.unwrap();
        assert_eq!(&client.await.unwrap(), b"pong");
    }
}
