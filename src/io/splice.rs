//! Zero-copy TCP forwarding with `splice(2)` through a pipe, for passthrough and plain TCP.
//!
//! `splice(2)`, `pipe2(2)` and the pipe's size go through rustix's safe wrappers. Why unsafe
//! remains: `SO_RCVLOWAT` (`setsockopt(2)`) has no safe wrapper in std, tokio, socket2 or
//! rustix. This is the only module allowed to use `unsafe`; that one call passes a descriptor
//! owned by a live `TcpStream` and checks the return value.
//! Bytes never enter user space, and long bulk streams are read in batches: that is what makes
//! bulk passthrough cheap (issue 6).
#![allow(unsafe_code)]

use std::io;
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use tokio::io::Interest;
use tokio::net::TcpStream;

/// Bytes moved per `splice(2)` call; the pipe is resized to hold this much.
const CHUNK: usize = 1 << 16;

/// Batched reads for long bulk streams. A direction that has moved this much in back-to-back
/// full bursts (a download, an upload, a backup) is read in batches: its socket reports readable
/// only once [`BATCH_BYTES`] have arrived (`SO_RCVLOWAT`), or [`BATCH_WAIT`] after the wait began,
/// whichever comes first. Without it, a proxy that keeps up with its sender is woken for every
/// TLS record (16 KiB). Measured on 100 MiB passthrough downloads (benches/load, `tls-bulk-100m`):
/// 0.6-0.8 s of CPU per GiB read as it comes, 0.2-0.3 s in batches of 1 MiB, 0.14-0.26 s in
/// batches of 2 MiB. The run is counted per direction, not per message: a direction that never
/// carries 4 MiB without a pause (handshakes, requests, responses under 4 MiB with a pause
/// between them) is never batched, so its latency is untouched. Raising the mark also lets
/// the kernel grow the socket's receive buffer (to hold a batch, about 4 MiB), and lowering it
/// does not shrink it again: a bulk tunnel keeps the kernel memory it needed.
const BATCH_AFTER: u64 = 4 << 20;
/// How much a batched read waits for (the kernel also reports readable when the receive window
/// is nearly closed, or at the end of the stream).
const BATCH_BYTES: usize = 2 << 20;
/// The most a run counts (see [`Batch::after_burst`]).
const RUN_MAX: u64 = BATCH_AFTER + 2 * BATCH_BYTES as u64;
/// The longest a batched stream's bytes wait in the kernel. tokio's timers round up to the next
/// millisecond, so the last bytes before a pause of a batched stream wait 2-3 ms.
const BATCH_WAIT: std::time::Duration = std::time::Duration::from_millis(2);

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
        let (read, write) =
            rustix::pipe::pipe_with(rustix::pipe::PipeFlags::NONBLOCK | rustix::pipe::PipeFlags::CLOEXEC)?;
        // A bigger pipe means fewer wakeups; failure to resize only costs speed.
        let _ = rustix::pipe::fcntl_setpipe_size(&write, CHUNK);
        Ok(Pipe { read, write })
    }
}

fn splice(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    // Null offsets: pipes and sockets have no position.
    let flags = rustix::pipe::SpliceFlags::MOVE | rustix::pipe::SpliceFlags::NONBLOCK;
    Ok(rustix::pipe::splice(from, None, to, None, len, flags)?)
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
        match rustix::io::read(&pipe.read, &mut scratch) {
            Ok(n) if n == scratch.len() => {}
            Ok(_) | Err(rustix::io::Errno::AGAIN) => break,
            Err(_) => return, // broken: drop it
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
    let mut batch = Batch::default();
    loop {
        if batch.on {
            // Boxed: only long bulk streams wait this way. When the timer ends the wait, the
            // socket is read anyway (what arrived is below the batch size, or nothing).
            if let Ok(ready) = Box::pin(tokio::time::timeout(BATCH_WAIT, from.readable())).await {
                ready?;
            }
        } else {
            from.readable().await?;
        }
        // A batched stream is always spliced: the copy reads only when tokio reports the socket
        // readable, which a wait ended by the timer does not.
        if !bulk && !batch.on {
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
                batch.stop(from);
                continue;
            }
        };
        // Move bytes while they are there; when the socket runs dry, give the pipe back and
        // wait again.
        let mut moved = 0;
        loop {
            let n = match read_into(from, &pipe, batch.on) {
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
                let written = to.try_io(Interest::WRITABLE, || splice(pipe.read.as_fd(), to.as_fd(), left));
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
        batch.after_burst(from, moved, bulk);
    }
}

/// Splices what `from` holds into the pipe. A batched wait may have ended by its timer, with
/// no readiness reported, so a batched stream's socket is read directly; once it is empty,
/// tokio's readiness for it is cleared. That erases no newer event because workers are
/// single-threaded runtimes (`crate::worker`): the driver cannot have turned between the read
/// and the clear (on a multi-threaded runtime another thread could have).
fn read_into(from: &TcpStream, pipe: &Pipe, batched: bool) -> io::Result<usize> {
    let read = || splice(from.as_fd(), pipe.write.as_fd(), CHUNK);
    if !batched {
        return from.try_io(Interest::READABLE, read);
    }
    let n = read();
    if matches!(&n, Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
        let _ = from.try_io(Interest::READABLE, || Err::<(), _>(io::ErrorKind::WouldBlock.into()));
    }
    n
}

/// Whether a direction's reads are batched ([`BATCH_AFTER`]), and how close it is.
#[derive(Default)]
struct Batch {
    on: bool,
    /// Bytes moved in back-to-back bulk bursts.
    run: u64,
}

impl Batch {
    /// After each burst: a bulk burst extends the run (up to [`RUN_MAX`]). A smaller one (a
    /// pause, a small message) ends the run of a stream that is not batched; a batched stream
    /// loses [`BATCH_BYTES`] of it instead, so that a sender stalled for a moment (descheduled,
    /// say) keeps the batching, a stream whose writes come further apart than the wait stops
    /// after a few, and a paused stream after at most three timer waits. The socket's
    /// low-water mark follows.
    fn after_burst(&mut self, from: &TcpStream, moved: usize, bulk: bool) {
        self.run = if bulk {
            self.run.saturating_add(moved as u64).min(RUN_MAX)
        } else if self.on {
            self.run.saturating_sub(BATCH_BYTES as u64)
        } else {
            0
        };
        self.set(from, self.run >= BATCH_AFTER);
    }

    /// Ends the batching and the run: the bytes are about to be copied, which reads only on
    /// tokio's readiness. (Should the mark fail to come down, the stream keeps the timer and
    /// the splice path, waiting for a pipe.)
    fn stop(&mut self, from: &TcpStream) {
        self.run = 0;
        self.set(from, false);
    }

    /// Follows only a low-water mark that was set: a stream whose mark could not be raised is
    /// read as it comes, and one whose mark could not be lowered keeps the timer. Lowering the
    /// mark loses nothing that arrived below it: the kernel then reports the socket readable
    /// if bytes are queued (`tcp_set_rcvlowat` calls `tcp_data_ready`), a new edge for epoll.
    fn set(&mut self, from: &TcpStream, on: bool) {
        if on != self.on && set_rcvlowat(from, if on { BATCH_BYTES } else { 1 }).is_ok() {
            self.on = on;
        }
    }
}

/// `SO_RCVLOWAT`: the socket reports readable once this many bytes are there (or at the end of
/// the stream, on an error, or when the receive window is nearly closed).
fn set_rcvlowat(socket: &TcpStream, bytes: usize) -> io::Result<()> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: the descriptor is open (borrowed from `socket`); `value` outlives the call and
    // the length given is its size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
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
    // Not zeroed first (16 KiB of memset per message otherwise): tokio reads into it as it is.
    let mut stack = [std::mem::MaybeUninit::<u8>::uninit(); SMALL];
    let mut buf = tokio::io::ReadBuf::uninit(&mut stack);
    let n = match from.try_read_buf(&mut buf) {
        Ok(0) => return Ok((Burst::Ended, 0, None)),
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok((Burst::Drained, 0, None)),
        Err(e) => return Err(e),
    };
    let burst = if n < SMALL {
        // A short read shows the socket drained (as tokio's own `poll_read` assumes on epoll):
        // clearing the readiness now means the next wait needs no read to find it empty. A FIN
        // already seen stays ready. Nothing newer can be erased: the driver has not turned
        // since the read (single-threaded workers, see `read_into`).
        let _ = from.try_io(Interest::READABLE, || Err::<(), _>(io::ErrorKind::WouldBlock.into()));
        Burst::Drained
    } else {
        Burst::Full
    };
    let buf = buf.filled();
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
/// HTTP/1.1 codec (`crate::http1`): the body never enters user space. The pipe is taken
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
                match to.try_io(Interest::WRITABLE, || splice(pipe.read.as_fd(), to.as_fd(), left)) {
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
            match from.try_io(Interest::READABLE, || splice(from.as_fd(), pipe.write.as_fd(), want)) {
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

    /// The socket's low-water mark (`SO_RCVLOWAT`).
    fn rcvlowat(socket: &TcpStream) -> usize {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: the descriptor is open (borrowed from `socket`); `value` and `len` outlive the
        // call and `len` is the size of `value`.
        let rc = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVLOWAT,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "getsockopt: {}", io::Error::last_os_error());
        value as usize
    }

    /// Waits (at most 5 s) until `what` holds, polling.
    async fn until(what: impl Fn() -> bool, why: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !what() {
            assert!(tokio::time::Instant::now() < deadline, "{why}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Writes 64 KiB pieces to `sender` a little slower than a pump reads them (each burst ends,
    /// and the next write comes well within the batch wait) until `from` is batched and at least
    /// `more` bytes have followed; at most 64 MiB. Returns the bytes written before `from` was
    /// first seen batched, and in all.
    async fn stream_until_batched(sender: &mut TcpStream, from: &TcpStream, more: u64) -> (u64, u64) {
        let piece = vec![3u8; 64 * 1024];
        let mut sent = 0u64;
        let mut first = None;
        loop {
            // Compared with 1, not BATCH_BYTES: the kernel caps the mark at half of tcp_rmem[2].
            if rcvlowat(from) > 1 {
                let first = *first.get_or_insert(sent);
                if sent >= first + more {
                    return (first, sent);
                }
            }
            assert!(
                sent < 64 << 20,
                "64 MiB sent back to back and the stream is not batched"
            );
            sender.write_all(&piece).await.unwrap();
            sent += piece.len() as u64;
            tokio::task::yield_now().await;
        }
    }

    /// A long bulk stream is read in batches (the source socket's low-water mark is raised);
    /// small messages after it arrive, batched or not; the bytes below a batch arrive (the
    /// wait's timer), a pause ends the batching, and a small message after it passes at once.
    #[tokio::test]
    async fn a_long_bulk_stream_is_read_in_batches_and_a_pause_ends_them() {
        let (mut sender, from, to, mut receiver) = two_connections().await;
        let received = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let reader = {
            let received = received.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 1 << 16];
                let mut sum = 0u64;
                loop {
                    let n = receiver.read(&mut buf).await.unwrap();
                    if n == 0 {
                        return sum;
                    }
                    sum += buf[..n].iter().map(|b| u64::from(*b)).sum::<u64>();
                    received.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                }
            })
        };
        let got = || received.load(std::sync::atomic::Ordering::Relaxed);
        let count = std::sync::atomic::AtomicU64::new(0);
        let pumping = pump(&from, &to, &count, take_pipe);
        let driving = async {
            assert_eq!(rcvlowat(&from), 1);
            // Batched, with the run at its most.
            let (first, mut sent) = stream_until_batched(&mut sender, &from, RUN_MAX - BATCH_AFTER).await;
            assert!(first >= BATCH_AFTER, "batched after {first} bytes");
            // Small messages a little apart, the first ones read by the timer (an earlier
            // version then never read the socket again): each must arrive.
            for i in 0..20u8 {
                sender.write_all(&[3u8; 1000]).await.unwrap();
                sent += 1000;
                let arrived = tokio::time::timeout(Duration::from_secs(2), until(|| got() == sent, "lost"));
                arrived
                    .await
                    .unwrap_or_else(|_| panic!("small message {i} after a batched run was held"));
            }
            // Batched again, then a pause: the bytes below a batch are brought by the timer.
            sent += stream_until_batched(&mut sender, &from, 0).await.1;
            until(|| got() == sent, "bytes below a batch were held").await;
            until(|| rcvlowat(&from) == 1, "a pause did not end the batching").await;
            sender.write_all(b"ping").await.unwrap();
            sent += 4;
            let quick = tokio::time::timeout(Duration::from_millis(500), until(|| got() == sent, "lost"));
            quick.await.expect("a small message after a pause waited");
            sender.shutdown().await.unwrap();
            sent
        };
        let both = tokio::time::timeout(Duration::from_secs(60), async { tokio::join!(pumping, driving) });
        let (pumped, sent) = both.await.expect("the pump or the sender hung");
        pumped.unwrap();
        assert_eq!(count.into_inner(), sent);
        let sum = reader.await.unwrap();
        assert_eq!(
            sum,
            (sent - 4) * 3 + b"ping".iter().map(|b| u64::from(*b)).sum::<u64>(),
            "bytes lost or changed"
        );
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
