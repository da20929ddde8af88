//! `Tls12Alerts`: the downstream stream of a terminating handshake, so that a TLS 1.2 client
//! without the required certificate gets the `handshake_failure` alert (40) that TLS 1.2 peers
//! expect and Envoy (BoringSSL) sends, not TLS 1.3's `certificate_required` (116), which rustls
//! sends for every version and has no hook to change. That one plaintext record is rewritten on
//! its way out; every other byte passes through unchanged.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// rustls' fatal `certificate_required` alert as a plaintext record (rustls queues each record
/// as one write buffer). Only TLS 1.2 sends it in plaintext: TLS 1.3 asks for the certificate
/// after encryption started, where every record, alerts included, goes out as application_data
/// (0x17), and an encrypted TLS 1.2 alert is longer than 2 bytes.
const CERTIFICATE_REQUIRED: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 116];
/// The same record saying `handshake_failure`; the same length, so write counts still hold.
const HANDSHAKE_FAILURE: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 40];

/// A stream whose TLS 1.2 `certificate_required` alert record goes out as `handshake_failure`,
/// until [`Tls12Alerts::handshake_done`].
#[derive(Debug)]
pub struct Tls12Alerts<S> {
    inner: S,
    handshaking: bool,
}

impl<S> Tls12Alerts<S> {
    pub fn new(inner: S) -> Self {
        Tls12Alerts {
            inner,
            handshaking: true,
        }
    }

    /// After the handshake every record is encrypted: writes are no longer looked at.
    pub fn handshake_done(&mut self) {
        self.handshaking = false;
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tls12Alerts<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tls12Alerts<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let buf = if this.handshaking && buf == CERTIFICATE_REQUIRED {
            &HANDSHAKE_FAILURE[..]
        } else {
            buf
        };
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.handshaking && bufs.iter().any(|b| **b == CERTIFICATE_REQUIRED) {
            let replaced: Vec<IoSlice<'_>> = bufs
                .iter()
                .map(|b| {
                    if **b == CERTIFICATE_REQUIRED {
                        IoSlice::new(&HANDSHAKE_FAILURE)
                    } else {
                        *b
                    }
                })
                .collect();
            return Pin::new(&mut this.inner).poll_write_vectored(cx, &replaced);
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn sent(handshaking: bool, vectored: &[&[u8]]) -> Vec<u8> {
        let (mut peer, inner) = tokio::io::duplex(1024);
        let mut stream = Tls12Alerts::new(inner);
        if !handshaking {
            stream.handshake_done();
        }
        let slices: Vec<IoSlice<'_>> = vectored.iter().map(|b| IoSlice::new(b)).collect();
        let n = stream.write_vectored(&slices).await.unwrap();
        assert_eq!(n, vectored.iter().map(|b| b.len()).sum::<usize>());
        drop(stream);
        let mut out = Vec::new();
        peer.read_to_end(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn the_plaintext_certificate_required_record_becomes_handshake_failure() {
        assert_eq!(sent(true, &[&CERTIFICATE_REQUIRED]).await, HANDSHAKE_FAILURE);
        let mut plain = Tls12Alerts::new(Vec::new());
        plain.write_all(&CERTIFICATE_REQUIRED).await.unwrap();
        assert_eq!(plain.get_ref(), &HANDSHAKE_FAILURE);
    }

    #[tokio::test]
    async fn everything_else_passes_unchanged() {
        // Another alert (bad_certificate), a record that merely starts like the alert, and the
        // alert after the handshake.
        let bad_certificate = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 42];
        assert_eq!(sent(true, &[&bad_certificate]).await, bad_certificate);
        let longer = [&CERTIFICATE_REQUIRED[..], b"x"].concat();
        assert_eq!(sent(true, &[&longer]).await, longer);
        assert_eq!(sent(false, &[&CERTIFICATE_REQUIRED]).await, CERTIFICATE_REQUIRED);
    }
}
