//! The access-log output: a bounded queue drained by one dedicated OS thread that formats and
//! writes. `AccessLogger::log` never blocks and never does I/O; when the queue is full the record
//! is dropped and counted. Owns the file/stdout handle; knows nothing about routing or stats.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{AccessLogRecord, Format};

/// Records queued before `log` starts dropping. Each slot of the queue holds one record inline
/// (about 424 bytes), so this costs about 1.7 MiB, allocated once.
pub const DEFAULT_CAPACITY: usize = 4096;

/// Envoy runs with `--file-flush-interval-msec 1000`: under sustained load a line waits at most
/// this long in the buffer. When the queue goes idle the writer flushes at once.
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// Large enough that a busy proxy makes one `write(2)` per many lines.
const WRITE_BUFFER: usize = 64 * 1024;

/// Where access-log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    /// The process's standard output (`/dev/stdout`, as Istio configures it).
    Stdout,
    /// A file opened for append (created if missing); reopened by path on
    /// [`AccessLogger::reopen`] (SIGUSR1), so logrotate can move it away.
    File(PathBuf),
    /// No access log: `log` discards records without queueing them.
    Off,
}

// Records travel inline (~424 bytes): the channel preallocates its slots, so boxing would only add
// an allocation per line on the request path to shrink a rare control message.
#[allow(clippy::large_enum_variant)]
enum Command {
    Record(AccessLogRecord),
    /// Write and flush everything queued before this, then acknowledge.
    Flush(SyncSender<()>),
    /// Flush, then open the file's path again (after logrotate moved it), then acknowledge.
    Reopen(SyncSender<()>),
}

#[derive(Default)]
struct Counters {
    written: AtomicU64,
    dropped: AtomicU64,
}

/// The access-log output shared by every listener (behind an `Arc`).
///
/// Records, not formatted lines, cross the queue: the request path only moves the finished struct
/// into a preallocated slot, and the writer thread formats into one reused buffer. Formatting thus
/// costs runtime workers no CPU, and the queue adds no allocation per line.
pub struct AccessLogger {
    tx: Option<SyncSender<Command>>,
    thread: Option<JoinHandle<()>>,
    counters: Arc<Counters>,
}

impl AccessLogger {
    /// Opens `target` and starts the writer thread. `capacity` is the number of records that may
    /// wait for the writer (at least 1). Fails only if the file cannot be opened or the thread
    /// cannot be spawned.
    pub fn new(target: LogTarget, format: Format, capacity: usize) -> io::Result<Self> {
        let (out, path): (Box<dyn Write + Send>, _) = match target {
            LogTarget::Off => return Ok(Self::off()),
            // A private handle on fd 1: `io::Stdout` is line-buffered and would cost one write(2)
            // per line; our own BufWriter batches instead.
            LogTarget::Stdout => (Box::new(File::from(io::stdout().as_fd().try_clone_to_owned()?)), None),
            LogTarget::File(path) => (Box::new(open_append(&path)?), Some(path)),
        };
        Self::spawn(out, format, capacity, path)
    }

    /// Writes everything queued, then opens the file's path again: Envoy's answer to SIGUSR1,
    /// for logrotate. A failed open keeps the old file (and says so once). No-op for stdout and
    /// `off`.
    pub fn reopen(&self) {
        if let Some(tx) = &self.tx {
            let (ack_tx, ack_rx) = mpsc::sync_channel(1);
            if tx.send(Command::Reopen(ack_tx)).is_ok() {
                let _ = ack_rx.recv();
            }
        }
    }

    /// Writes to any sink, e.g. an in-memory buffer in tests.
    pub fn to_writer<W: Write + Send + 'static>(writer: W, format: Format, capacity: usize) -> io::Result<Self> {
        Self::spawn(Box::new(writer), format, capacity, None)
    }

    /// A logger that discards everything (`LogTarget::Off`).
    pub fn off() -> Self {
        Self {
            tx: None,
            thread: None,
            counters: Arc::default(),
        }
    }

    fn spawn(out: Box<dyn Write + Send>, format: Format, capacity: usize, path: Option<PathBuf>) -> io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel(capacity.max(1));
        let counters = Arc::new(Counters::default());
        let writer = Writer {
            out: BufWriter::with_capacity(WRITE_BUFFER, out),
            format,
            counters: Arc::clone(&counters),
            line: Vec::with_capacity(1024),
            last_flush: Instant::now(),
            failing: false,
            path,
        };
        let thread = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer.run(rx))?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
            counters,
        })
    }

    /// False for `LogTarget::Off`: callers may skip building records.
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Queues one record. Never blocks: if the writer is behind and the queue is full, the record
    /// is dropped and counted in [`dropped`](Self::dropped).
    pub fn log(&self, record: AccessLogRecord) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(Command::Record(record)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Lines handed to the output so far.
    pub fn written(&self) -> u64 {
        self.counters.written.load(Ordering::Relaxed)
    }

    /// Records lost because the queue was full or the output failed.
    pub fn dropped(&self) -> u64 {
        self.counters.dropped.load(Ordering::Relaxed)
    }

    /// Blocks until every record queued before this call is written and flushed. For shutdown,
    /// tests and the admin endpoint; never call it on the request path.
    pub fn flush(&self) {
        let Some(tx) = &self.tx else { return };
        let (ack_tx, ack_rx) = mpsc::sync_channel(1);
        if tx.send(Command::Flush(ack_tx)).is_ok() {
            // An error means the writer thread is gone; there is nothing left to wait for.
            let _ = ack_rx.recv();
        }
    }

    /// Writes everything still queued, flushes and stops the writer thread (what `Drop` does).
    pub fn flush_and_close(mut self) {
        self.close();
    }

    fn close(&mut self) {
        // Dropping the only sender lets the writer drain the queue and exit.
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("access log writer thread panicked");
            }
        }
    }
}

impl Drop for AccessLogger {
    fn drop(&mut self) {
        self.close();
    }
}

impl std::fmt::Debug for AccessLogger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLogger")
            .field("enabled", &self.enabled())
            .field("written", &self.written())
            .field("dropped", &self.dropped())
            .finish()
    }
}

/// State owned by the writer thread.
struct Writer {
    out: BufWriter<Box<dyn Write + Send>>,
    format: Format,
    counters: Arc<Counters>,
    line: Vec<u8>,
    last_flush: Instant,
    /// Set after a write error so a broken disk produces one warning, not one per line.
    failing: bool,
    /// The file's path, for reopening it.
    path: Option<PathBuf>,
}

fn open_append(path: &std::path::Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("access log {}: {e}", path.display())))
}

impl Writer {
    fn run(mut self, rx: Receiver<Command>) {
        let mut unflushed = false;
        loop {
            let command = if unflushed {
                match rx.try_recv() {
                    Ok(command) => command,
                    Err(TryRecvError::Empty) => {
                        // The queue is momentarily empty: flush now so lines show up promptly.
                        self.flush();
                        unflushed = false;
                        continue;
                    }
                    Err(TryRecvError::Disconnected) => break,
                }
            } else {
                match rx.recv() {
                    Ok(command) => command,
                    Err(_) => break,
                }
            };
            match command {
                Command::Record(record) => {
                    self.write(&record);
                    drop(record);
                    unflushed = true;
                    if self.last_flush.elapsed() >= FLUSH_INTERVAL {
                        self.flush();
                        unflushed = false;
                    }
                }
                Command::Flush(ack) => {
                    self.flush();
                    unflushed = false;
                    let _ = ack.send(());
                }
                Command::Reopen(ack) => {
                    self.flush();
                    unflushed = false;
                    if let Some(path) = &self.path {
                        match open_append(path) {
                            Ok(file) => {
                                self.out = BufWriter::with_capacity(WRITE_BUFFER, Box::new(file));
                                tracing::info!(path = %path.display(), "access log reopened");
                            }
                            Err(error) => tracing::warn!(%error, "access log not reopened; writing to the old file"),
                        }
                    }
                    let _ = ack.send(());
                }
            }
        }
        self.flush();
    }

    fn write(&mut self, record: &AccessLogRecord) {
        self.line.clear();
        self.format.write(record, &mut self.line);
        match self.out.write_all(&self.line) {
            Ok(()) => {
                self.counters.written.fetch_add(1, Ordering::Relaxed);
                self.failing = false;
            }
            Err(error) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                self.report(&error);
            }
        }
    }

    fn flush(&mut self) {
        self.last_flush = Instant::now();
        if let Err(error) = self.out.flush() {
            self.report(&error);
        }
    }

    fn report(&mut self, error: &io::Error) {
        if !self.failing {
            tracing::warn!(%error, "access log write failed; dropping lines until it recovers");
            self.failing = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access_log::ResponseFlags;
    use std::sync::Mutex;
    use std::time::UNIX_EPOCH;

    fn record(bytes_sent: u64) -> AccessLogRecord {
        AccessLogRecord {
            bytes_sent,
            upstream_cluster: Some("outbound|443||edition.cnn.com".into()),
            ..AccessLogRecord::new(UNIX_EPOCH + Duration::from_millis(1_528_976_783_596))
        }
    }

    fn line(format: Format, record: &AccessLogRecord) -> Vec<u8> {
        let mut out = Vec::new();
        format.write(record, &mut out);
        out
    }

    /// An in-memory sink the test can read while the writer thread owns a clone.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().expect("not poisoned").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A sink whose first write blocks until the test releases it, to fill the queue.
    struct Stuck {
        entered: mpsc::SyncSender<()>,
        release: Receiver<()>,
        inner: Shared,
        blocked_once: bool,
    }

    impl Write for Stuck {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if !self.blocked_once {
                self.blocked_once = true;
                let _ = self.entered.send(());
                let _ = self.release.recv();
            }
            self.inner.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn flush_makes_every_queued_line_visible() {
        let sink = Shared::default();
        let logger = AccessLogger::to_writer(sink.clone(), Format::Text, 16).expect("spawn");
        let records: Vec<_> = (0..10).map(record).collect();
        for r in &records {
            logger.log(r.clone());
        }
        logger.flush();
        let expected: Vec<u8> = records.iter().flat_map(|r| line(Format::Text, r)).collect();
        assert_eq!(*sink.0.lock().expect("not poisoned"), expected);
        assert_eq!((logger.written(), logger.dropped()), (10, 0));
    }

    #[test]
    fn full_queue_drops_and_counts_instead_of_blocking() {
        let (entered_tx, entered_rx) = mpsc::sync_channel(1);
        let (release_tx, release_rx) = mpsc::sync_channel(1);
        let sink = Shared::default();
        let stuck = Stuck {
            entered: entered_tx,
            release: release_rx,
            inner: sink.clone(),
            blocked_once: false,
        };
        let logger = AccessLogger::to_writer(stuck, Format::Text, 1).expect("spawn");
        // The writer takes the first record, finds the queue empty, flushes and blocks in write.
        logger.log(record(1));
        entered_rx.recv().expect("writer reached the sink");
        logger.log(record(2)); // fills the one queue slot
        logger.log(record(3)); // dropped
        logger.log(record(4)); // dropped
        assert_eq!(logger.dropped(), 2);
        release_tx.send(()).expect("writer waiting");
        logger.flush_and_close();
        let written = sink.0.lock().expect("not poisoned").clone();
        let expected = [line(Format::Text, &record(1)), line(Format::Text, &record(2))].concat();
        assert_eq!(written, expected);
    }

    #[test]
    fn file_target_appends_and_close_flushes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("access.log");
        std::fs::write(&path, b"earlier line\n").expect("seed file");
        let logger = AccessLogger::new(LogTarget::File(path.clone()), Format::Json, 8).expect("open");
        let failed = AccessLogRecord {
            response_flags: ResponseFlags::UF | ResponseFlags::URX,
            ..record(98)
        };
        logger.log(record(2048));
        logger.log(failed.clone());
        assert!(logger.enabled());
        drop(logger); // Drop flushes and joins, like flush_and_close.
        let content = std::fs::read(&path).expect("read log");
        let expected = [
            b"earlier line\n".to_vec(),
            line(Format::Json, &record(2048)),
            line(Format::Json, &failed),
        ]
        .concat();
        assert_eq!(content, expected);
        let last = String::from_utf8(line(Format::Json, &failed)).expect("UTF-8");
        assert!(last.contains(r#""response_flags":"URX,UF""#));
    }

    /// logrotate moves the file away, then SIGUSR1 (`reopen`): lines written before go to the
    /// moved file, lines after to a new file at the path.
    #[test]
    fn reopen_starts_a_new_file_at_the_path() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("access.log");
        let logger = AccessLogger::new(LogTarget::File(path.clone()), Format::Json, 8).expect("open");
        logger.log(record(1));
        logger.flush();
        let rotated = dir.path().join("access.log.1");
        std::fs::rename(&path, &rotated).expect("rotate");
        logger.log(record(2));
        logger.reopen();
        logger.log(record(3));
        drop(logger);
        let before = [line(Format::Json, &record(1)), line(Format::Json, &record(2))].concat();
        assert_eq!(std::fs::read(&rotated).expect("rotated"), before);
        assert_eq!(std::fs::read(&path).expect("new file"), line(Format::Json, &record(3)));
    }

    #[test]
    fn unopenable_file_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("missing-dir").join("access.log");
        let error = AccessLogger::new(LogTarget::File(path), Format::Text, 8).expect_err("no dir");
        assert!(error.to_string().contains("missing-dir"), "{error}");
    }

    #[test]
    fn off_discards_without_counting() {
        let logger = AccessLogger::new(LogTarget::Off, Format::Text, 8).expect("off");
        assert!(!logger.enabled());
        logger.log(record(1));
        logger.flush();
        assert_eq!((logger.written(), logger.dropped()), (0, 0));
    }

    #[test]
    fn failing_output_counts_drops() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::other("disk full"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Err(io::Error::other("disk full"))
            }
        }
        let logger = AccessLogger::to_writer(Broken, Format::Text, 8).expect("spawn");
        // Lines larger than the write buffer go straight to the sink and fail at once.
        let big = AccessLogRecord {
            user_agent: Some("x".repeat(WRITE_BUFFER + 1).into()),
            ..record(1)
        };
        logger.log(big.clone());
        logger.log(big);
        logger.flush();
        assert_eq!((logger.written(), logger.dropped()), (0, 2));
    }
}
