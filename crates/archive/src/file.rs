//! The local-directory archive (`file:///path`), for `slackline dev` and single-node
//! installs.
//!
//! Requests are appended to segment files ([`crate::segment`]); no file is created
//! per request. Threads share the work:
//!
//! * the **writer** takes every request that is waiting (a batch), gives each its
//!   place (its locator, handed back at once so that the edge produces to Kafka
//!   meanwhile) and appends the batch's lines to the open segment with one `write`;
//! * the **syncers** (a few threads) take every appended batch that is waiting and
//!   make them durable with one `fdatasync` per segment before telling any of their
//!   writers "durable" (group commit); a batch appended while a flush is in progress
//!   starts its own flush at once.
//!
//! No runtime thread ever waits on the disk: a `write` to a page under writeback
//! waits for it (stable pages), and creating a segment flushes folders, both on the
//! writer thread. (Writing in the request's own task measured half the throughput in
//! the edge benchmark: the runtime's threads stalled behind the flushes.)
//!
//! A segment is closed and a new one started after [`SEGMENT_MAX_BYTES`], after
//! [`SEGMENT_MAX_AGE`], when the hour of the requests changes (a segment never spans
//! two hour folders), and after any failed append or flush. A failed append (a short
//! or failed write) or flush (`fdatasync`) is cut back to the segment's last durable
//! line and the segment is abandoned, never appended to again: the failed requests' locators
//! may already be in Kafka records (their requests were answered 503), and must not
//! come to name other requests' lines. If the next segment cannot be created, writes
//! are refused ([`ArchiveError::LogUnavailable`]) until one can; each batch tries.
//!
//! The writer's queue is bounded ([`FileArchive::open_with`]'s capacity): when it is
//! full a write fails at once with [`ArchiveError::Busy`] (the edge answers 503), never
//! an unbounded wait.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot};

use crate::segment::{same_hour, segment_key, Locator};
use crate::{enqueue, faults, wal, Appending, ArchiveError, ArchiveRecord, LogFaults};

/// A segment this large is closed.
pub const SEGMENT_MAX_BYTES: u64 = 64 << 20;
/// A segment this old is closed (it also bounds how far after its first request a
/// segment's last one can be: replay relies on it, see
/// [`crate::segment::SEGMENT_MAX_SPAN`]).
pub const SEGMENT_MAX_AGE: Duration = Duration::from_secs(60);
/// A segment this old is closed even if no new one can be created (writes are then
/// refused): it keeps every segment within [`crate::SEGMENT_MAX_SPAN`].
const SEGMENT_HARD_AGE: Duration = Duration::from_secs(100);
fn key_skew() -> chrono::Duration {
    chrono::Duration::from_std(crate::SEGMENT_KEY_SKEW).unwrap_or_default()
}

/// After a rotation that could be skipped failed, the next one is tried this much later.
const ROTATION_RETRY: Duration = Duration::from_secs(1);
/// Flushes that may run at once.
const SYNCERS: usize = 3;
/// Requests waiting for the writer, unless the caller says otherwise.
pub const DEFAULT_QUEUE_CAPACITY: usize = 4096;

/// A directory of segment files.
#[derive(Debug, Clone)]
pub struct FileArchive {
    root: Arc<PathBuf>,
    writer: mpsc::Sender<WriteRequest>,
}

/// A request on its way to the writer thread.
struct WriteRequest {
    received_at: DateTime<Utc>,
    /// Its document and a newline.
    line: Vec<u8>,
    placed: oneshot::Sender<Result<String, ArchiveError>>,
    durable: oneshot::Sender<Result<(), ArchiveError>>,
}

impl std::fmt::Debug for Appender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Appender")
            .field("segment", &self.segment.as_ref().map(|s| &s.key))
            .finish()
    }
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl FileArchive {
    /// Opens (creating it if needed) the directory and starts its writer and syncer
    /// threads, which end when the last clone of the archive is dropped.
    pub fn open(root: impl Into<PathBuf>) -> Result<FileArchive, ArchiveError> {
        FileArchive::open_with(root, DEFAULT_QUEUE_CAPACITY, LogFaults::default())
    }

    /// Test seam: [`FileArchive::open`] with failures injected into segment writes as
    /// `faults` is armed (see [`LogFaults`]). The services never call this.
    pub fn open_with_faults(
        root: impl Into<PathBuf>,
        faults: LogFaults,
    ) -> Result<FileArchive, ArchiveError> {
        FileArchive::open_with(root, DEFAULT_QUEUE_CAPACITY, faults)
    }

    /// [`FileArchive::open`] with at most `capacity` requests waiting for the writer.
    pub fn open_with(
        root: impl Into<PathBuf>,
        capacity: usize,
        faults: LogFaults,
    ) -> Result<FileArchive, ArchiveError> {
        let root: PathBuf = root.into();
        fs::create_dir_all(&root).map_err(io_error(&root))?;
        // Archives written by earlier versions kept a write-ahead log of single-request
        // objects: restore what a crash left in it before writing anything new.
        let restored = wal::recover_legacy(&root, flush).map_err(io_error(&root))?;
        if restored > 0 {
            tracing::warn!(restored, root = %root.display(), "archive restored objects from an earlier version's write-ahead log");
        }
        let (syncer, jobs) = std::sync::mpsc::channel();
        let jobs = Arc::new(Mutex::new(jobs));
        for i in 0..SYNCERS {
            let jobs = jobs.clone();
            let sync_faults = faults.clone();
            std::thread::Builder::new()
                .name(format!("archive-sync-{i}"))
                .spawn(move || sync_loop(i, &jobs, &sync_faults))
                .map_err(io_error(&root))?;
        }
        let (writer, requests) = mpsc::channel(capacity.max(1));
        let appender = Appender {
            faults,
            segment: None,
            refused: 0,
            retry_rotation_at: None,
            last_first: None,
        };
        let thread_root = root.clone();
        std::thread::Builder::new()
            .name("archive-writer".into())
            .spawn(move || writer_loop(appender, &thread_root, requests, &syncer))
            .map_err(io_error(&root))?;
        Ok(FileArchive {
            root: Arc::new(root),
            writer,
        })
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path_of(&self, key: &str) -> Result<PathBuf, ArchiveError> {
        // Keys are made by the archive; refuse anything that could leave the root.
        if key.is_empty() || key.starts_with('/') || key.split('/').any(|p| p == ".." || p == ".") {
            return Err(ArchiveError::Io {
                path: key.to_owned(),
                source: io::Error::new(io::ErrorKind::InvalidInput, "key escapes the archive root"),
            });
        }
        Ok(self.root.join(key))
    }

    /// Queues `record` for the writer thread; resolves once it has its place in a
    /// segment. Fails at once with [`ArchiveError::Busy`] when `capacity` requests are
    /// already waiting for the writer.
    pub async fn append(&self, record: &ArchiveRecord) -> Result<Appending, ArchiveError> {
        let mut line = record.to_json()?;
        line.push(b'\n');
        let (placed, placed_rx) = oneshot::channel();
        let (durable, durable_rx) = oneshot::channel();
        let request = WriteRequest {
            received_at: record.received_at,
            line,
            placed,
            durable,
        };
        enqueue(&self.writer, request, placed_rx, durable_rx).await
    }

    /// Stores a whole object under `key` (for tools and tests: the edge appends to
    /// segments), durably: written under a temporary name, flushed, renamed, and the
    /// directory flushed.
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<(), ArchiveError> {
        let path = self.path_of(key)?;
        tokio::task::spawn_blocking(move || {
            let dir = path.parent().unwrap_or(Path::new("/")).to_path_buf();
            fs::create_dir_all(&dir).map_err(io_error(&dir))?;
            let tmp = path.with_extension("tmp");
            let mut file = File::create(&tmp).map_err(io_error(&tmp))?;
            file.write_all(&bytes).map_err(io_error(&tmp))?;
            file.sync_data().map_err(io_error(&tmp))?;
            fs::rename(&tmp, &path).map_err(io_error(&path))?;
            File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(io_error(&dir))
        })
        .await
        .map_err(|_| ArchiveError::WriterStopped)?
    }

    /// The bytes at `locator`: one request's line, or a whole single-request object.
    pub async fn get(&self, locator: &Locator) -> Result<Bytes, ArchiveError> {
        let path = self.path_of(&locator.key)?;
        let shown = locator.to_string();
        let range = locator.range;
        tokio::task::spawn_blocking(move || {
            let not_found = |e: io::Error| {
                if e.kind() == io::ErrorKind::NotFound {
                    ArchiveError::NotFound(shown.clone())
                } else {
                    io_error(&path)(e)
                }
            };
            let Some((offset, len)) = range else {
                return fs::read(&path).map(Bytes::from).map_err(not_found);
            };
            let mut file = File::open(&path).map_err(not_found)?;
            let want =
                usize::try_from(len + 1).map_err(|_| ArchiveError::NotFound(shown.clone()))?;
            let mut buf = Vec::with_capacity(want);
            file.seek(SeekFrom::Start(offset))
                .map_err(io_error(&path))?;
            file.take(len + 1)
                .read_to_end(&mut buf)
                .map_err(io_error(&path))?;
            // A line is a request only with its newline (see `segment`).
            if buf.len() != want || buf.last() != Some(&b'\n') {
                return Err(ArchiveError::NotFound(shown));
            }
            buf.pop();
            Ok(Bytes::from(buf))
        })
        .await
        .map_err(|_| ArchiveError::WriterStopped)?
    }

    /// Every key under `prefix`, sorted (temporary and hidden files are not keys).
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, ArchiveError> {
        let root = self.root.clone();
        let prefix = prefix.to_owned();
        tokio::task::spawn_blocking(move || {
            // Walk only the deepest directory the prefix names fully.
            let dir_part = prefix.rfind('/').map_or("", |i| &prefix[..=i]);
            let mut keys = Vec::new();
            walk(&root, &root.join(dir_part), &mut keys)?;
            keys.retain(|k| k.starts_with(&prefix));
            keys.sort();
            Ok(keys)
        })
        .await
        .map_err(|_| ArchiveError::WriterStopped)?
    }

    /// Checks that the directory is writable by writing and removing a probe file.
    pub async fn check(&self) -> Result<(), ArchiveError> {
        let probe = self
            .root
            .join(format!(".probe-{}", uuid::Uuid::new_v4().simple()));
        tokio::fs::write(&probe, b"ok")
            .await
            .map_err(io_error(&probe))?;
        tokio::fs::remove_file(&probe)
            .await
            .map_err(io_error(&probe))
    }
}

fn walk(root: &Path, dir: &Path, keys: &mut Vec<String>) -> Result<(), ArchiveError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_error(dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_error(dir))?;
        let path = entry.path();
        let file_type = entry.file_type().map_err(io_error(&path))?;
        if is_temporary(&path) {
            continue;
        }
        if file_type.is_dir() {
            walk(root, &path, keys)?;
        } else if let Ok(rel) = path.strip_prefix(root) {
            keys.push(rel.to_string_lossy().into_owned());
        }
    }
    Ok(())
}

fn is_temporary(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.') || n.ends_with(".tmp"))
}

/// The open segment.
struct Segment {
    key: String,
    path: Arc<str>,
    /// The handle lines are appended through.
    file: Arc<File>,
    /// One handle per syncer, opened with the file (see [`sync_loop`]).
    flush_handles: Arc<Vec<File>>,
    /// Bytes written to it (durable or on their way).
    written: u64,
    /// What the appender and the syncers share.
    state: Arc<Mutex<SegmentState>>,
    /// The receive time of its first request (the hour it belongs to).
    first: DateTime<Utc>,
    opened: Instant,
}

/// A segment's state shared by the appender and the syncers, under a lock that each
/// holds while it changes the file's length (an append, a cut-back), so that a cut
/// back never moves an append to another offset than the one its locator names.
struct SegmentState {
    /// The length of its durable lines: where a failed append or flush is cut back to.
    durable: u64,
    /// Why it takes no more appends (a failed append or flush), if it does not.
    broken: Option<String>,
}

/// A line written to a segment, waiting for a flush.
struct SyncJob {
    file: Arc<File>,
    flush_handles: Arc<Vec<File>>,
    state: Arc<Mutex<SegmentState>>,
    path: Arc<str>,
    /// The segment's length once this line is in it.
    end: u64,
    /// The requests whose lines these are.
    durable: Vec<oneshot::Sender<Result<(), ArchiveError>>>,
}

impl SyncJob {
    fn answer(mut self, result: &Result<(), ArchiveError>) {
        for durable in self.durable.drain(..) {
            // The requester may have given up (deadline): the write still stands.
            let _ = durable.send(match result {
                Ok(()) => Ok(()),
                Err(e) => Err(copy_error(e)),
            });
        }
    }
}

impl Drop for SyncJob {
    /// A job dropped unanswered (its syncer is gone) answers "stopped".
    fn drop(&mut self) {
        for durable in self.durable.drain(..) {
            let _ = durable.send(Err(ArchiveError::WriterStopped));
        }
    }
}

/// The same error again, for each request of a batch.
fn copy_error(e: &ArchiveError) -> ArchiveError {
    match e {
        ArchiveError::Io { path, source } => ArchiveError::Io {
            path: path.clone(),
            source: io::Error::new(source.kind(), source.to_string()),
        },
        ArchiveError::LogUnavailable { reason } => ArchiveError::LogUnavailable {
            reason: reason.clone(),
        },
        other => ArchiveError::LogUnavailable {
            reason: other.to_string(),
        },
    }
}

fn lock<T>(state: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves a state that is still coherent (every
    // field is set in one assignment).
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Cuts the segment back to its durable lines (best effort: a line that stays behind
/// is complete or has no newline, and the segment takes no more appends either way).
fn cut_back(file: &File, state: &mut SegmentState, path: &str, faults: &LogFaults) {
    let cut = faults
        .truncate()
        .and_then(|()| file.set_len(state.durable))
        .and_then(|()| faults.sync())
        .and_then(|()| file.sync_all());
    match cut {
        Ok(()) => faults.record_cut_back(path, state.durable),
        Err(e) => {
            tracing::error!(error = %e, segment = path, "archive segment could not be cut back after a failed write");
        }
    }
}

/// The writer thread's state: it places requests and appends their lines (one
/// `write` per batch); the syncers flush them. Creating a segment (file and folder
/// flushes) blocks only this thread.
struct Appender {
    faults: LogFaults,
    segment: Option<Segment>,
    /// Writes refused since the last segment could not be created.
    refused: u64,
    /// No rotation that could be skipped is tried before this (one failed).
    retry_rotation_at: Option<Instant>,
    /// The key time of the last segment created, kept after it is dropped.
    last_first: Option<DateTime<Utc>>,
}

impl Appender {
    /// Whether a request received at `received_at` needs a new segment first: it must
    /// when there is none, when the current one broke, when the request's hour is
    /// later than the segment's (a segment's requests are of its hour, or a little
    /// earlier: see [`crate::SEGMENT_KEY_SKEW`]), or before the segment is older than
    /// replay's listing window; it should at the size or age limit, unless a rotation
    /// failed a moment ago (then the current one takes more).
    fn needs_segment(&self, received_at: DateTime<Utc>) -> (bool, bool) {
        let Some(s) = self.segment.as_ref() else {
            return (true, true);
        };
        let must = (received_at > s.first && !same_hour(s.first, received_at))
            || received_at < s.first - key_skew()
            || s.opened.elapsed() >= SEGMENT_HARD_AGE
            || lock(&s.state).broken.is_some();
        let should = (s.written >= SEGMENT_MAX_BYTES
            || s.opened.elapsed() >= SEGMENT_MAX_AGE
            || (self.faults.rotate_every_batch() && s.written > 0))
            && self.retry_rotation_at.is_none_or(|at| Instant::now() >= at);
        (must, must || should)
    }

    /// Writes the lines placed in `buf` (for the requests of `run`) to the segment they
    /// were placed in, and hands them to the syncers; or fails them all.
    fn write_run(
        &mut self,
        buf: &mut Vec<u8>,
        run: &mut Vec<oneshot::Sender<Result<(), ArchiveError>>>,
        syncer: &std::sync::mpsc::Sender<SyncJob>,
    ) {
        if run.is_empty() {
            buf.clear();
            return;
        }
        let fail = |run: &mut Vec<oneshot::Sender<Result<(), ArchiveError>>>, e: &ArchiveError| {
            for durable in run.drain(..) {
                let _ = durable.send(Err(copy_error(e)));
            }
        };
        let Some(segment) = self.segment.as_mut() else {
            fail(
                run,
                &ArchiveError::LogUnavailable {
                    reason: "no segment".into(),
                },
            );
            buf.clear();
            return;
        };
        let mut state = lock(&segment.state);
        // A syncer may have broken it since the lines were placed: never write behind
        // a cut-back (the placed locators then name nothing).
        if let Some(reason) = state.broken.clone() {
            drop(state);
            self.segment = None;
            fail(run, &ArchiveError::LogUnavailable { reason });
            buf.clear();
            return;
        }
        match write_lines(&segment.file, buf, &self.faults) {
            Ok(()) => {
                segment.written += buf.len() as u64;
                drop(state);
                let job = SyncJob {
                    file: segment.file.clone(),
                    flush_handles: segment.flush_handles.clone(),
                    state: segment.state.clone(),
                    path: segment.path.clone(),
                    end: segment.written,
                    durable: std::mem::take(run),
                };
                if let Err(std::sync::mpsc::SendError(job)) = syncer.send(job) {
                    job.answer(&Err(ArchiveError::WriterStopped));
                }
            }
            Err(e) => {
                let path = segment.path.clone();
                tracing::error!(error = %e, segment = &*path, "archive append failed; the segment is closed and the next batch starts a new one");
                state.broken = Some(e.to_string());
                cut_back(&segment.file, &mut state, &path, &self.faults);
                drop(state);
                self.segment = None;
                fail(
                    run,
                    &ArchiveError::Io {
                        path: path.to_string(),
                        source: e,
                    },
                );
            }
        }
        buf.clear();
    }

    /// Takes a new segment, or the failure to create one.
    fn install(&mut self, created: io::Result<Segment>, root: &Path) -> Result<(), ArchiveError> {
        match created {
            Ok(segment) => {
                if self.refused > 0 {
                    tracing::warn!(refused = self.refused, root = %root.display(), "archive segment created again; writes are accepted again");
                    self.refused = 0;
                }
                self.retry_rotation_at = None;
                self.last_first = Some(segment.first);
                self.segment = Some(segment);
                Ok(())
            }
            Err(e) if self.segment.is_some() && !self.needs_segment_now() => {
                tracing::warn!(error = %e, root = %root.display(), "archive segment rotation failed; the current segment takes more");
                self.retry_rotation_at = Some(Instant::now() + ROTATION_RETRY);
                Ok(())
            }
            Err(e) => {
                if self.refused == 0 {
                    tracing::error!(error = %e, root = %root.display(), "archive segment could not be created; writes are refused until one can");
                }
                self.refused += 1;
                self.segment = None;
                Err(ArchiveError::LogUnavailable {
                    reason: e.to_string(),
                })
            }
        }
    }

    /// The key time of a segment opened for a request received at `received_at`: its
    /// own, unless it is a straggler (received before the last segment's key, within
    /// [`crate::SEGMENT_KEY_SKEW`]): then the last key's, so that keys keep the order
    /// the lines were written in.
    fn key_time_for(&self, received_at: DateTime<Utc>) -> DateTime<Utc> {
        match self.last_first {
            Some(last) if received_at < last && received_at >= last - key_skew() => last,
            _ => received_at,
        }
    }

    /// Whether the current segment must be replaced whatever the request.
    fn needs_segment_now(&self) -> bool {
        self.segment.as_ref().is_none_or(|s| {
            s.opened.elapsed() >= SEGMENT_HARD_AGE || lock(&s.state).broken.is_some()
        })
    }
}

/// Creates the segment for requests received from `first` on, with its directory
/// entry (and any folder created for it) durable before anything is acknowledged in
/// it. Blocking: runs on the writer thread.
fn create_segment(
    root: &Path,
    faults: &LogFaults,
    known_dirs: &mut HashSet<PathBuf>,
    first: DateTime<Utc>,
) -> io::Result<Segment> {
    faults.rotate()?;
    let key = segment_key(first);
    let path = root.join(&key);
    let dir = path.parent().unwrap_or(root).to_path_buf();
    if !known_dirs.contains(&dir) {
        // Flush every folder that may be new, from the deepest up to the root.
        fs::create_dir_all(&dir)?;
        let mut at = dir.as_path();
        while let Some(parent) = at.parent() {
            File::open(at)?.sync_all()?;
            if at == root {
                break;
            }
            at = parent;
        }
        // A folder per hour: keep the set small.
        if known_dirs.len() > 48 {
            known_dirs.clear();
        }
        known_dirs.insert(dir.clone());
    }
    let file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)?;
    // Each syncer flushes through a handle of its own, opened before anything is
    // written: a failed writeback is reported once per open file description, so
    // with one shared handle a concurrent flush could see success for bytes whose
    // writeback failed. With its own, every flush covering them sees the error.
    let flush_handles = (0..SYNCERS)
        .map(|_| OpenOptions::new().append(true).open(&path))
        .collect::<io::Result<Vec<_>>>()?;
    File::open(&dir)?.sync_all()?;
    Ok(Segment {
        key,
        path: Arc::from(path.display().to_string()),
        file: Arc::new(file),
        flush_handles: Arc::new(flush_handles),
        written: 0,
        state: Arc::new(Mutex::new(SegmentState {
            durable: 0,
            broken: None,
        })),
        first,
        opened: Instant::now(),
    })
}

/// Most requests taken together.
const MAX_BATCH: usize = 1024;
/// Most bytes taken together.
const MAX_BATCH_BYTES: usize = 8 << 20;

/// The writer thread: takes every request waiting (a batch), places each (answering
/// its locator at once, so the edge produces to Kafka meanwhile), writes the batch's
/// lines with one `write` and hands them to the syncers; a request that needs a new
/// segment first writes what was placed before it. Ends when every handle to the
/// archive is gone.
fn writer_loop(
    mut appender: Appender,
    root: &Path,
    mut requests: mpsc::Receiver<WriteRequest>,
    syncer: &std::sync::mpsc::Sender<SyncJob>,
) {
    let mut known_dirs = HashSet::new();
    let mut batch: Vec<WriteRequest> = Vec::with_capacity(MAX_BATCH);
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
    let mut run = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = requests.blocking_recv() {
        let mut bytes = first.line.len();
        batch.push(first);
        while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            match requests.try_recv() {
                Ok(next) => {
                    bytes += next.line.len();
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        for w in batch.drain(..) {
            if appender.needs_segment(w.received_at).1 {
                appender.write_run(&mut buf, &mut run, syncer);
                let first = appender.key_time_for(w.received_at);
                let created = create_segment(root, &appender.faults, &mut known_dirs, first);
                if let Err(e) = appender.install(created, root) {
                    let _ = w.placed.send(Err(e));
                    continue;
                }
            }
            let Some(segment) = appender.segment.as_ref() else {
                let _ = w.placed.send(Err(ArchiveError::LogUnavailable {
                    reason: "no segment".into(),
                }));
                continue;
            };
            let offset = segment.written + buf.len() as u64;
            let len = w.line.len().saturating_sub(1) as u64;
            buf.extend_from_slice(&w.line);
            // The requester may have given up (deadline): the write still stands.
            let _ = w
                .placed
                .send(Ok(Locator::line(&segment.key, offset, len).to_string()));
            run.push(w.durable);
        }
        appender.write_run(&mut buf, &mut run, syncer);
    }
}

/// Appends `lines` to the segment (the caller holds its lock).
fn write_lines(mut file: &File, lines: &[u8], faults: &LogFaults) -> io::Result<()> {
    if let Some(budget) = faults.take_append_budget() {
        let torn = usize::try_from(budget)
            .unwrap_or(usize::MAX)
            .min(lines.len());
        file.write_all(&lines[..torn])?;
        return Err(faults::injected("append"));
    }
    file.write_all(lines)
}

/// A syncer thread (there are [`SYNCERS`], number `index`): takes every job waiting,
/// flushes each segment they wrote to once (`fdatasync`, through the segment's handle
/// for this syncer), and answers them. Several flushes run at once, so a line written
/// while one is in progress starts its own at once rather than waiting for it (the
/// file system joins concurrent flushes into one journal commit where it can). A job
/// is answered by a flush that started after its line was written (it was queued
/// only then).
///
/// A failed flush leaves the bytes of unknown state on disk: the segment is marked
/// broken (the next write starts a new one) and cut back to its durable lines, and
/// every job of it answered after that fails, even one whose own flush succeeded
/// meanwhile (the check and the acknowledgement happen under the segment's lock, as
/// does the cut-back). A flush that succeeded and took the lock first is sound: its
/// own handle would have reported a writeback error of any byte it covers.
fn sync_loop(index: usize, jobs: &Mutex<std::sync::mpsc::Receiver<SyncJob>>, faults: &LogFaults) {
    let mut waiting: Vec<SyncJob> = Vec::new();
    loop {
        {
            let jobs = lock(jobs);
            match jobs.recv() {
                Ok(first) => waiting.push(first),
                Err(_) => return,
            }
            waiting.extend(jobs.try_iter());
        }
        while !waiting.is_empty() {
            // The leading jobs of one segment, flushed together.
            let state = waiting[0].state.clone();
            let same = waiting
                .iter()
                .position(|j| !Arc::ptr_eq(&j.state, &state))
                .unwrap_or(waiting.len());
            let rest = waiting.split_off(same);
            let group = std::mem::replace(&mut waiting, rest);
            let Some(last) = group.last() else { continue };
            let (file, handles, path) = (
                last.file.clone(),
                last.flush_handles.clone(),
                last.path.clone(),
            );
            let end = group.iter().map(|j| j.end).max().unwrap_or(0);
            let flushed = match (lock(&state).broken.clone(), handles.get(index)) {
                (Some(reason), _) => Err(io::Error::other(format!(
                    "segment broken before its flush: {reason}"
                ))),
                (None, None) => Err(io::Error::other("no flush handle for this syncer")),
                (None, Some(handle)) => {
                    // What this flush covers: everything written when it starts (the
                    // crash images of the fault tests are cut there).
                    let covered = faults
                        .is_armed()
                        .then(|| handle.metadata().map(|m| m.len()));
                    faults.sync().and_then(|()| handle.sync_data()).map(|()| {
                        if let Some(Ok(len)) = covered {
                            faults.record_synced(&path, len);
                        }
                    })
                }
            };
            let result = {
                let mut s = lock(&state);
                match (flushed, s.broken.clone()) {
                    (Ok(()), None) => {
                        s.durable = s.durable.max(end);
                        Ok(())
                    }
                    (Ok(()), Some(reason)) => Err(io::Error::other(format!(
                        "segment broken during its flush: {reason}"
                    ))),
                    (Err(e), broken) => {
                        if broken.is_none() {
                            tracing::error!(error = %e, segment = &*path, "archive flush failed; the segment is closed and the next write starts a new one");
                            s.broken = Some(e.to_string());
                            cut_back(&file, &mut s, &path, faults);
                        }
                        Err(e)
                    }
                }
            };
            let result = result.map_err(|e| ArchiveError::Io {
                path: path.to_string(),
                source: e,
            });
            for job in group {
                job.answer(&result);
            }
        }
    }
}

/// Makes everything written under `root` durable (the legacy log's recovery).
#[cfg(target_os = "linux")]
fn flush(root: &Path) -> io::Result<()> {
    let dir = File::open(root)?;
    rustix::fs::syncfs(&dir).map_err(io::Error::from)
}

/// Makes everything written under `root` durable (portable fallback: a full sync of
/// the directory; files were closed, so this relies on the OS flushing them in
/// order, which is weaker than Linux's `syncfs`).
#[cfg(not(target_os = "linux"))]
fn flush(root: &Path) -> io::Result<()> {
    File::open(root)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn record(at: DateTime<Utc>, body: &str) -> ArchiveRecord {
        ArchiveRecord {
            received_at: at,
            headers: BTreeMap::from([("x-slack-retry-num".to_owned(), "1".to_owned())]),
            body: Bytes::copy_from_slice(body.as_bytes()),
        }
    }

    #[tokio::test]
    async fn appends_share_segments_and_read_back_by_locator() {
        let dir = tempfile::tempdir().unwrap();
        let archive = FileArchive::open(dir.path()).unwrap();
        let now = Utc::now();
        let writes = (0..200).map(|i| {
            let archive = archive.clone();
            async move {
                let appending = archive.append(&record(now, &format!("body {i}"))).await?;
                appending.durable().await
            }
        });
        let locators: Vec<String> = futures::future::join_all(writes)
            .await
            .into_iter()
            .collect::<Result<_, _>>()
            .unwrap();
        for (i, locator) in locators.iter().enumerate() {
            let bytes = archive
                .get(&Locator::parse(locator).unwrap())
                .await
                .unwrap();
            let back = ArchiveRecord::from_json(&bytes).unwrap();
            assert_eq!(back.body, Bytes::from(format!("body {i}")), "{locator}");
        }
        let keys = archive.list("raw/").await.unwrap();
        assert!(
            !keys.is_empty() && keys.len() < 200 && keys.iter().all(|k| k.ends_with(".jsonl")),
            "one file per batch at most, not per request: {keys:?}"
        );
        assert!(matches!(
            archive.get(&Locator::line(&keys[0], 1 << 30, 10)).await,
            Err(ArchiveError::NotFound(_))
        ));
        assert!(matches!(
            archive.get(&Locator::parse("raw/nope.json").unwrap()).await,
            Err(ArchiveError::NotFound(_))
        ));
        assert!(archive
            .get(&Locator::parse("../escape.json").unwrap())
            .await
            .is_err());
        archive.check().await.unwrap();
        assert!(archive
            .list("")
            .await
            .unwrap()
            .iter()
            .all(|k| !k.contains("probe")));
    }

    #[tokio::test]
    async fn a_later_hour_starts_a_segment_and_a_straggler_joins_the_current_one() {
        let dir = tempfile::tempdir().unwrap();
        let archive = FileArchive::open(dir.path()).unwrap();
        let late = "2026-12-08T03:59:59.999Z".parse::<DateTime<Utc>>().unwrap();
        let early = "2026-12-08T04:00:00.001Z".parse::<DateTime<Utc>>().unwrap();
        let mut locators = Vec::new();
        for at in [late, early, late, early] {
            locators.push(
                archive
                    .append(&record(at, "x"))
                    .await
                    .unwrap()
                    .durable()
                    .await
                    .unwrap(),
            );
        }
        let segment = |l: &str| Locator::parse(l).unwrap().key;
        assert!(
            locators[0].starts_with("raw/2026/12/08/03/"),
            "{locators:?}"
        );
        assert!(
            locators[1].starts_with("raw/2026/12/08/04/"),
            "{locators:?}"
        );
        // A request of the hour before (it waited for the lock) joins the current
        // segment rather than opening one more: replay finds it there (its key is at
        // most SEGMENT_KEY_SKEW after the request).
        assert_eq!(segment(&locators[2]), segment(&locators[1]), "{locators:?}");
        assert_eq!(segment(&locators[3]), segment(&locators[1]), "{locators:?}");
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let faults = LogFaults::new();
        let archive = FileArchive::open_with(dir.path(), 1, faults).unwrap();
        // Write faster than the syncers flush: some are refused with
        // Busy, none waits for room.
        let many = (0..2000).map(|i| {
            let archive = archive.clone();
            async move {
                archive
                    .append(&record(Utc::now(), &format!("{i}")))
                    .await
                    .map(|_| ())
            }
        });
        let results = futures::future::join_all(many).await;
        assert!(
            results.iter().any(|r| matches!(r, Err(ArchiveError::Busy))),
            "a queue of one cannot take 2000 requests at once"
        );
        assert!(results
            .iter()
            .all(|r| matches!(r, Ok(()) | Err(ArchiveError::Busy))));
    }
}
