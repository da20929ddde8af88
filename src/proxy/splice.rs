//! Zero-copy TCP forwarding with `splice(2)` through a pipe, for passthrough and plain TCP.
//!
//! Why unsafe: `splice(2)` and `pipe2(2)` have no safe wrapper in std or tokio. This is the only
//! module allowed to use `unsafe`; each call passes file descriptors owned by live values
//! (`TcpStream`, `OwnedFd`) and checks the return value. Bytes never enter user space, which
//! is what makes bulk passthrough cheap (issue 6).
#![allow(unsafe_code)]

use std::io;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use tokio::io::Interest;
use tokio::net::TcpStream;

/// Bytes moved per `splice(2)` call; the pipe is resized to hold this much.
const CHUNK: usize = 1 << 16;

/// Copies both ways until both sides have closed, keeping half-close: when one side ends its
/// stream, the other side's write half is shut down and the reverse direction goes on. Returns
/// (a → b, b → a) byte counts; on error, the counts so far are in `progress`.
pub async fn bidirectional(a: &TcpStream, b: &TcpStream, progress: &Progress) -> io::Result<()> {
    let forward = one_way(a, b, &progress.a_to_b);
    let backward = one_way(b, a, &progress.b_to_a);
    tokio::try_join!(forward, backward).map(|_| ())
}

/// Byte counts of a splice session, readable even when it ended with an error.
#[derive(Default)]
pub struct Progress {
    pub a_to_b: std::sync::atomic::AtomicU64,
    pub b_to_a: std::sync::atomic::AtomicU64,
}

struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
        let pipe = unsafe {
            Pipe {
                read: OwnedFd::from_raw_fd(fds[0]),
                write: OwnedFd::from_raw_fd(fds[1]),
            }
        };
        // A bigger pipe means fewer wakeups; failure to resize only costs speed.
        // SAFETY: the descriptor is open (owned by `pipe`).
        unsafe { libc::fcntl(pipe.write.as_raw_fd(), libc::F_SETPIPE_SZ, CHUNK as libc::c_int) };
        Ok(pipe)
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: both descriptors are open for the duration of the call (borrowed from live
    // owners by the caller); null offsets are allowed for pipes and sockets.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Empty pipes kept for reuse: a direction holds a pipe only while bytes flow, so idle
/// tunnels cost two descriptors (their sockets), not six.
static PIPES: std::sync::Mutex<Vec<Pipe>> = std::sync::Mutex::new(Vec::new());
const MAX_POOLED_PIPES: usize = 64;

fn take_pipe() -> io::Result<Pipe> {
    let pooled = PIPES.lock().unwrap_or_else(|p| p.into_inner()).pop();
    match pooled {
        Some(pipe) => Ok(pipe),
        None => Pipe::new(),
    }
}

/// Returns an empty pipe to the pool.
fn give_back(pipe: Pipe) {
    let mut pool = PIPES.lock().unwrap_or_else(|p| p.into_inner());
    if pool.len() < MAX_POOLED_PIPES {
        pool.push(pipe);
    }
}

/// Returns a pipe with bytes left in it (the other side went away mid-transfer): they are read
/// out and discarded first, which is cheaper than a new pipe (pipe2, fcntl, two closes).
fn discard(pipe: Pipe) {
    let mut scratch = [0u8; 4096];
    loop {
        // SAFETY: the descriptor is open (owned by `pipe`) and `scratch` is writable for its length.
        let n = unsafe { libc::read(pipe.read.as_raw_fd(), scratch.as_mut_ptr().cast(), scratch.len()) };
        if n < scratch.len() as isize {
            if n < 0 && io::Error::last_os_error().kind() != io::ErrorKind::WouldBlock {
                return; // broken: drop it
            }
            break;
        }
    }
    give_back(pipe);
}

async fn one_way(from: &TcpStream, to: &TcpStream, count: &std::sync::atomic::AtomicU64) -> io::Result<()> {
    pump(from, to, count, take_pipe).await
}

/// Buffer for small messages (handshake flights, requests, responses); a read that fills it
/// means bulk, and the rest of the burst is spliced. A full TLS record (16 KiB of plaintext plus
/// its header and tag) does not fit, so a bulk TLS stream stays on splice.
const SMALL: usize = 16 * 1024;

/// [`one_way`] with the pipe source given (tests make it fail).
async fn pump(
    from: &TcpStream,
    to: &TcpStream,
    count: &std::sync::atomic::AtomicU64,
    take_pipe: impl Fn() -> io::Result<Pipe>,
) -> io::Result<()> {
    // Whether the last burst was bulk: then the next one is spliced from its first byte.
    let mut bulk = false;
    loop {
        from.readable().await?;
        if !bulk {
            // A small message costs one read and one write this way, against two splices and
            // the read that finds the socket empty: a short read already shows it drained.
            match copy_once(from, to, count).await? {
                Burst::Drained => continue,
                Burst::Ended => return Ok(()),
                Burst::Full => {} // more is probably waiting: splice it
            }
        }
        let pipe = match take_pipe() {
            Ok(pipe) => pipe,
            // Out of descriptors (EMFILE) and no pooled pipe: copy through user space rather
            // than drop a tunnel that was working.
            Err(_) => {
                bulk = false;
                continue;
            }
        };
        // Move bytes while they are there; when the socket runs dry, give the pipe back and
        // wait again.
        let mut moved = 0;
        loop {
            let n = match from.try_io(Interest::READABLE, || {
                splice(from.as_raw_fd(), pipe.write.as_raw_fd(), CHUNK)
            }) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    give_back(pipe);
                    return Err(e);
                }
            };
            if n == 0 {
                // The sender finished: pass the half-close on and let the other direction run.
                give_back(pipe);
                let _ = socket2::SockRef::from(to).shutdown(Shutdown::Write);
                return Ok(());
            }
            let mut left = n;
            while left > 0 {
                let written = to.try_io(Interest::WRITABLE, || {
                    splice(pipe.read.as_raw_fd(), to.as_raw_fd(), left)
                });
                match written {
                    Ok(m) if m > 0 => left -= m,
                    Ok(_) => {
                        discard(pipe);
                        return Err(io::ErrorKind::WriteZero.into());
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        // The receiver's buffer is full. Boxed: the wait's state would
                        // otherwise be laid out in every tunnel's future, idle ones too.
                        if let Err(e) = Box::pin(to.writable()).await {
                            discard(pipe);
                            return Err(e);
                        }
                    }
                    Err(e) => {
                        discard(pipe);
                        return Err(e);
                    }
                }
            }
            count.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
            moved += n;
        }
        give_back(pipe);
        bulk = moved >= SMALL;
    }
}

/// What one buffered read found.
#[derive(Debug, PartialEq)]
enum Burst {
    /// Less than the buffer, or nothing: the socket is empty for now.
    Drained,
    /// The sender finished; the half-close was passed on.
    Ended,
    /// The buffer filled: more is probably waiting.
    Full,
}

/// Reads once from `from` (at most [`SMALL`] bytes) and writes the bytes to `to`, waiting for
/// `to` to take them all.
async fn copy_once(from: &TcpStream, to: &TcpStream, count: &std::sync::atomic::AtomicU64) -> io::Result<Burst> {
    let (burst, n, left) = read_and_write(from, to)?;
    if let Some(left) = left {
        // Rare (the receiver's buffer is full): boxed, so that the wait's state is not laid
        // out in every tunnel's future.
        Box::pin(write_all(to, left)).await?;
    }
    count.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    if burst == Burst::Ended {
        let _ = socket2::SockRef::from(to).shutdown(Shutdown::Write);
    }
    Ok(burst)
}

/// Writes `left` to `to` as it takes it.
async fn write_all(to: &TcpStream, left: Vec<u8>) -> io::Result<()> {
    let mut done = 0;
    while done < left.len() {
        to.writable().await?;
        match to.try_write(&left[done..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(m) => done += m,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The synchronous part of [`copy_once`], so that its buffer lives on the thread's stack, not
/// in every tunnel's future. Returns what the read found, the bytes read, and those `to` could
/// not take yet.
fn read_and_write(from: &TcpStream, to: &TcpStream) -> io::Result<(Burst, usize, Option<Vec<u8>>)> {
    let mut buf = [0u8; SMALL];
    let mut short = 0;
    let read = from.try_io(Interest::READABLE, || {
        let socket = socket2::SockRef::from(from);
        let n = std::io::Read::read(&mut &*socket, &mut buf)?;
        if 0 < n && n < SMALL {
            // A short read shows the socket drained (as tokio's own `poll_read` assumes on
            // epoll): answering WouldBlock makes tokio clear the readiness, so the next wait
            // needs no read to find the socket empty. A FIN already seen stays ready.
            short = n;
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    let (burst, n) = match read {
        Ok(0) => return Ok((Burst::Ended, 0, None)),
        Ok(n) => (Burst::Full, n),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock && short > 0 => (Burst::Drained, short),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok((Burst::Drained, 0, None)),
        Err(e) => return Err(e),
    };
    let written = match to.try_write(&buf[..n]) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
        Err(e) => return Err(e),
    };
    let left = (written < n).then(|| buf[written..n].to_vec());
    Ok((burst, n, left))
}

/// Where a [`BodySplice`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    From,
    To,
    /// No pipe could be had (out of descriptors): nothing was moved; copy instead.
    Pipe,
}

/// Moves an HTTP body of known length from one socket to another through a pipe, for the
/// HTTP/1.1 codec (`crate::listener::h1`): the body never enters user space. The pipe is taken
/// on the first move and given back (drained, or emptied) when this is dropped.
pub struct BodySplice {
    pipe: Option<Pipe>,
    /// Bytes in the pipe, read from `from` but not yet written to `to`.
    in_pipe: usize,
    /// Where pipes come from (tests make it fail).
    take: fn() -> io::Result<Pipe>,
}

impl Default for BodySplice {
    fn default() -> Self {
        BodySplice {
            pipe: None,
            in_pipe: 0,
            take: take_pipe,
        }
    }
}

impl BodySplice {
    /// One that can get no pipe, as when the process is out of descriptors.
    #[cfg(test)]
    pub(crate) fn without_pipes() -> BodySplice {
        BodySplice {
            pipe: None,
            in_pipe: 0,
            take: || Err(io::Error::from_raw_os_error(libc::EMFILE)),
        }
    }

    /// Moves at most `max` bytes (`max` > 0) from `from` to `to`. `Ready(Ok(n))`: `n` bytes
    /// reached `to`; `Ready(Ok(0))`: `from` ended before sending anything.
    pub fn poll_move(
        &mut self,
        cx: &mut std::task::Context<'_>,
        from: &TcpStream,
        to: &TcpStream,
        max: u64,
    ) -> std::task::Poll<Result<usize, (Side, io::Error)>> {
        use std::task::{ready, Poll};
        if self.pipe.is_none() {
            self.pipe = Some((self.take)().map_err(|e| (Side::Pipe, e))?);
        }
        let pipe = self.pipe.as_ref().expect("taken above");
        loop {
            if self.in_pipe > 0 {
                ready!(to.poll_write_ready(cx)).map_err(|e| (Side::To, e))?;
                let left = self.in_pipe;
                match to.try_io(Interest::WRITABLE, || {
                    splice(pipe.read.as_raw_fd(), to.as_raw_fd(), left)
                }) {
                    Ok(0) => return Poll::Ready(Err((Side::To, io::ErrorKind::WriteZero.into()))),
                    // All of the pipe, or as much as `to` had room for: the rest next time.
                    Ok(n) => {
                        self.in_pipe -= n;
                        return Poll::Ready(Ok(n));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Poll::Ready(Err((Side::To, e))),
                }
            }
            ready!(from.poll_read_ready(cx)).map_err(|e| (Side::From, e))?;
            let want = usize::try_from(max).unwrap_or(CHUNK).min(CHUNK);
            match from.try_io(Interest::READABLE, || {
                splice(from.as_raw_fd(), pipe.write.as_raw_fd(), want)
            }) {
                Ok(0) => return Poll::Ready(Ok(0)),
                Ok(n) => self.in_pipe = n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err((Side::From, e))),
            }
        }
    }
}

impl Drop for BodySplice {
    fn drop(&mut self) {
        if let Some(pipe) = self.pipe.take() {
            if self.in_pipe == 0 {
                give_back(pipe);
            } else {
                discard(pipe);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    #[tokio::test]
    async fn splices_both_ways_with_half_close() {
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let back = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (front_addr, back_addr) = (front.local_addr().unwrap(), back.local_addr().unwrap());
        let proxy = tokio::spawn(async move {
            let (a, _) = front.accept().await.unwrap();
            let b = TcpStream::connect(back_addr).await.unwrap();
            let progress = Progress::default();
            bidirectional(&a, &b, &progress).await.unwrap();
            (progress.a_to_b.into_inner(), progress.b_to_a.into_inner())
        });
        let origin = tokio::spawn(async move {
            let (mut s, _) = back.accept().await.unwrap();
            // Small messages first, one each way at a time, like a handshake.
            for i in 0..20u8 {
                let mut m = [0u8; 100];
                s.read_exact(&mut m).await.unwrap();
                assert_eq!(m, [i; 100]);
                s.write_all(&[i; 200]).await.unwrap();
            }
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            // Answers after the client's half-close arrived.
            s.write_all(&vec![7u8; 300_000]).await.unwrap();
            got
        });
        let mut client = TcpStream::connect(front_addr).await.unwrap();
        for i in 0..20u8 {
            client.write_all(&[i; 100]).await.unwrap();
            let mut m = [0u8; 200];
            client.read_exact(&mut m).await.unwrap();
            assert_eq!(m, [i; 200]);
        }
        // Then bulk, whose bytes must arrive complete and in order.
        let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        client.write_all(&payload).await.unwrap();
        client.shutdown().await.unwrap();
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply.len(), 300_000);
        assert!(reply.iter().all(|b| *b == 7));
        assert!(origin.await.unwrap() == payload, "bytes lost or reordered");
        drop(client);
        assert_eq!(proxy.await.unwrap(), (2_000 + 1_000_000, 4_000 + 300_000));
    }

    /// Two loopback connections: `sender` → `from`, and `to` → `receiver`, for a pump between.
    async fn two_connections() -> (TcpStream, TcpStream, TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sender = TcpStream::connect(addr).await.unwrap();
        let (from, _) = listener.accept().await.unwrap();
        let to = TcpStream::connect(addr).await.unwrap();
        let (receiver, _) = listener.accept().await.unwrap();
        (sender, from, to, receiver)
    }

    /// A small message is read once: the short read shows the socket drained, so its readiness
    /// is cleared without the read that would find it empty; a FIN that came with the bytes is
    /// still seen.
    #[tokio::test]
    async fn a_short_read_clears_readiness_and_keeps_the_fin() {
        let (mut sender, from, to, mut receiver) = two_connections().await;
        let count = std::sync::atomic::AtomicU64::new(0);

        sender.write_all(&[1u8; 500]).await.unwrap();
        from.readable().await.unwrap();
        // The readiness is set until a read says otherwise; wait until the bytes are all there.
        while socket2::SockRef::from(&from)
            .peek(&mut [std::mem::MaybeUninit::uninit(); 600])
            .unwrap()
            < 500
        {
            tokio::task::yield_now().await;
        }
        assert_eq!(copy_once(&from, &to, &count).await.unwrap(), Burst::Drained);
        let mut asked = false;
        let again = from.try_io(Interest::READABLE, || {
            asked = true;
            Ok(())
        });
        assert!(!asked && again.is_err(), "the socket was read again to find it empty");
        let mut got = [0u8; 500];
        receiver.read_exact(&mut got).await.unwrap();
        assert_eq!(got, [1u8; 500]);

        // Bytes and the FIN together: the short read clears readable, not the end of stream.
        sender.write_all(&[2u8; 300]).await.unwrap();
        sender.shutdown().await.unwrap();
        let piped = tokio::time::timeout(Duration::from_secs(5), pump(&from, &to, &count, take_pipe));
        piped.await.expect("the FIN was missed").unwrap();
        let mut rest = Vec::new();
        receiver.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, vec![2u8; 300]);
        assert_eq!(count.into_inner(), 800);
    }

    /// Out of descriptors, no pipe can be had: the bytes go through user space instead, in
    /// order, counted, and the sender's half-close is passed on.
    #[tokio::test]
    async fn without_pipes_bytes_are_copied_instead() {
        let (mut sender, from, to, mut receiver) = two_connections().await;
        let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let writer = {
            let payload = payload.clone();
            tokio::spawn(async move {
                sender.write_all(&payload).await.unwrap();
                sender.shutdown().await.unwrap();
                sender
            })
        };
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            receiver.read_to_end(&mut got).await.unwrap();
            got
        });
        let count = std::sync::atomic::AtomicU64::new(0);
        let no_pipe = || Err(io::Error::from_raw_os_error(libc::EMFILE));
        pump(&from, &to, &count, no_pipe).await.unwrap();
        let _sender = writer.await.unwrap();
        assert!(reader.await.unwrap() == payload, "bytes lost or reordered");
        assert_eq!(count.into_inner(), 300_000);
    }
}
