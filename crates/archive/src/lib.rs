//! The archive: every verified Slack request, byte for byte, before anything else
//! happens to it.
//!
//! The edge appends an [`ArchiveRecord`] (raw body, the headers that matter, receive
//! time) to the archive and puts the request's **locator** (its segment and byte
//! range, [`Locator`]) in the Kafka record's `archive-key` header. The archive is the
//! source of truth for replay (guarantee 6): any time range of it can be fed through
//! the pipeline again.
//!
//! Requests are stored in **segments** ([`segment`]): objects of many requests, one
//! JSON document per line, under keys that sort by time in hour folders
//! (`raw/2026/12/08/03/20261208T033012.123456Z-5f0c9a2e41b7.jsonl`). The key names
//! the request that opened it; its requests were received at most
//! [`SEGMENT_MAX_SPAN`] after and [`SEGMENT_KEY_SKEW`] before that time, so the keys
//! are the index: a time range is read
//! by listing its hour folders ([`Archive::segments_between`]) and reading those
//! segments ([`Archive::read_object`]), never by scanning the bucket.
//!
//! Writing is two steps ([`Archive::append`]): a request first gets its place (its
//! locator), then becomes durable ([`Appending::durable`]). The edge produces to Kafka
//! between the two, so the archive's flush and Kafka's acknowledgement overlap; it
//! answers 200 only when both succeeded.
//!
//! Two backends sit behind [`Archive`]: S3 through aws-sdk-s3 (`s3://bucket/prefix`),
//! one PUT per batch of requests, and a local directory (`file:///path`) whose segment
//! files are appended to and group-committed with one `fdatasync` per batch. Both put
//! a bounded queue in front of the writer: full, a write fails at once
//! ([`ArchiveError::Busy`]).

mod faults;
mod file;
mod key;
mod record;
mod s3;
pub mod segment;
mod wal;

use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use slackline_service::Env;
use tokio::sync::oneshot;

pub use faults::LogFaults;
pub use file::{FileArchive, SEGMENT_MAX_AGE, SEGMENT_MAX_BYTES};
pub use key::{key_time, RAW_PREFIX};
pub use record::{ArchiveRecord, RECORD_FORMAT};
pub use s3::{S3Archive, S3Settings};
pub use segment::{Entry, Locator};

/// How far after the time in a segment's key one of its requests can have been
/// received: the file archive's hard age limit (100 s) plus a margin, well above an S3
/// batch's linger. Listing a range looks this far back.
pub const SEGMENT_MAX_SPAN: Duration = Duration::from_secs(120);

/// How far *before* the time in a segment's key one of its requests can have been
/// received. A segment is named by the request that opened it, and a request received
/// a little earlier can be written after it (it waited for the archive's lock, or sat
/// in the S3 batch queue): at most the edge's deadline (`EDGE_DEADLINE_MS`, at most
/// 2.9 s) after it was received, since the edge drops the write when the deadline
/// passes. Listing a range looks this far ahead. (A wall clock stepped back by more
/// than this can still hide a request from a replay of the range that ends between
/// its time and its key's: the key keeps the step.)
pub const SEGMENT_KEY_SKEW: Duration = Duration::from_secs(10);

/// What can go wrong with the archive.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// `ARCHIVE_URL` is not `s3://bucket[/prefix]` or `file:///path`.
    #[error("invalid archive URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A local file operation failed.
    #[error("archive file {path}: {source}")]
    Io {
        /// The path involved.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The file archive's writer thread is gone (the process is shutting down).
    #[error("archive writer stopped")]
    WriterStopped,
    /// An S3 request failed.
    #[error("s3 {operation} {key}: {message}")]
    S3 {
        /// The S3 operation.
        operation: &'static str,
        /// The object key or bucket.
        key: String,
        /// The SDK's error, flattened with its causes.
        message: String,
    },
    /// The write-ahead log failed and could not be cut back to its last good record,
    /// and no fresh segment could be started yet: writes are refused (not
    /// acknowledged) until one can. Each refused write retries the rotation.
    #[error("archive write-ahead log unusable, write refused: {reason}")]
    LogUnavailable {
        /// What broke the log, and why it could not be repaired.
        reason: String,
    },
    /// The object does not exist, or holds no complete request at the locator.
    #[error("archive object {0} not found")]
    NotFound(String),
    /// The write queue is full: the request is refused at once (the edge answers 503
    /// and Slack retries), never left waiting for room.
    #[error("archive write queue full")]
    Busy,
    /// A locator that is not `key#offset+length` or a key.
    #[error("bad archive locator {0}")]
    BadLocator(String),
    /// An object is not an archive record.
    #[error("archive object is not a slackline record: {0}")]
    BadRecord(String),
}

/// Tuning of the archive's writers (`ARCHIVE_*` settings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveOptions {
    /// Requests waiting for the archive (file: for the writer thread; S3: queued,
    /// placed or being stored) before writes are refused with [`ArchiveError::Busy`]
    /// (`ARCHIVE_QUEUE_CAPACITY`, default 4096).
    pub queue_capacity: usize,
    /// How long an S3 batch waits for more requests after its first
    /// (`ARCHIVE_S3_LINGER_MS`, default 50): the PUTs per request at a given rate.
    pub s3_linger: Duration,
    /// PUTs in flight at once (`ARCHIVE_S3_MAX_PUTS`, default 8).
    pub s3_max_puts: usize,
}

impl Default for ArchiveOptions {
    fn default() -> Self {
        ArchiveOptions {
            queue_capacity: file::DEFAULT_QUEUE_CAPACITY,
            s3_linger: Duration::from_millis(50),
            s3_max_puts: 8,
        }
    }
}

impl ArchiveOptions {
    /// Reads the `ARCHIVE_*` settings (problems are reported through `env`).
    pub fn from_env(env: &mut Env) -> ArchiveOptions {
        let defaults = ArchiveOptions::default();
        let queue_capacity = env.parse_or("ARCHIVE_QUEUE_CAPACITY", defaults.queue_capacity);
        if queue_capacity == 0 {
            env.problem("ARCHIVE_QUEUE_CAPACITY", "must be at least 1");
        }
        let s3_max_puts = env.parse_or("ARCHIVE_S3_MAX_PUTS", defaults.s3_max_puts);
        if s3_max_puts == 0 {
            env.problem("ARCHIVE_S3_MAX_PUTS", "must be at least 1");
        }
        let linger_ms: u64 = env.parse_or("ARCHIVE_S3_LINGER_MS", 50);
        ArchiveOptions {
            queue_capacity,
            s3_linger: Duration::from_millis(linger_ms),
            s3_max_puts,
        }
    }
}

/// Hands `request` to a writer's bounded queue (full: [`ArchiveError::Busy`] at once)
/// and waits for its place; the file and S3 writers share this.
pub(crate) async fn enqueue<T>(
    writer: &tokio::sync::mpsc::Sender<T>,
    request: T,
    placed: oneshot::Receiver<Result<String, ArchiveError>>,
    durable: oneshot::Receiver<Result<(), ArchiveError>>,
) -> Result<Appending, ArchiveError> {
    use tokio::sync::mpsc::error::TrySendError;
    writer.try_send(request).map_err(|e| match e {
        TrySendError::Full(_) => ArchiveError::Busy,
        TrySendError::Closed(_) => ArchiveError::WriterStopped,
    })?;
    let locator = placed.await.map_err(|_| ArchiveError::WriterStopped)??;
    Ok(Appending::new(locator, durable))
}

/// A request that has its place in the archive and is on its way to being durable.
#[derive(Debug)]
pub struct Appending {
    locator: String,
    durable: oneshot::Receiver<Result<(), ArchiveError>>,
}

impl Appending {
    pub(crate) fn new(
        locator: String,
        durable: oneshot::Receiver<Result<(), ArchiveError>>,
    ) -> Appending {
        Appending { locator, durable }
    }

    /// Where the request will be ([`Locator`]'s text): valid once [`Appending::durable`]
    /// succeeded; if that fails, it names nothing (or a line that was never
    /// acknowledged).
    pub fn locator(&self) -> &str {
        &self.locator
    }

    /// Waits until the request is durable; its locator.
    pub async fn durable(self) -> Result<String, ArchiveError> {
        self.durable
            .await
            .map_err(|_| ArchiveError::WriterStopped)??;
        Ok(self.locator)
    }
}

/// The archive, whichever backend `ARCHIVE_URL` chose.
#[derive(Debug, Clone)]
pub enum Archive {
    /// A local directory (`file:///path`).
    File(FileArchive),
    /// An S3 bucket and prefix (`s3://bucket/prefix`).
    S3(S3Archive),
}

impl Archive {
    /// Opens the archive named by `url` with default [`ArchiveOptions`]; `s3` is used
    /// for `s3://` URLs.
    pub async fn open(url: &str, s3: &S3Settings) -> Result<Archive, ArchiveError> {
        Archive::open_with(url, s3, &ArchiveOptions::default()).await
    }

    /// Opens the archive named by `url`.
    pub async fn open_with(
        url: &str,
        s3: &S3Settings,
        options: &ArchiveOptions,
    ) -> Result<Archive, ArchiveError> {
        let invalid = |reason| ArchiveError::InvalidUrl {
            url: url.to_owned(),
            reason,
        };
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(invalid("no bucket name"));
            }
            Ok(Archive::S3(
                S3Archive::new(s3, bucket, prefix, options).await,
            ))
        } else if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(invalid("file URLs need an absolute path: file:///path"));
            }
            Ok(Archive::File(FileArchive::open_with(
                path,
                options.queue_capacity,
                LogFaults::default(),
            )?))
        } else {
            Err(invalid("expected s3://bucket/prefix or file:///path"))
        }
    }

    /// Queues `record` for the archive; resolves once it has its place (see
    /// [`Appending`]). Fails at once with [`ArchiveError::Busy`] when the queue is full.
    pub async fn append(&self, record: &ArchiveRecord) -> Result<Appending, ArchiveError> {
        match self {
            Archive::File(a) => a.append(record).await,
            Archive::S3(a) => a.append(record).await,
        }
    }

    /// Appends `record` and waits until it is durable; its locator.
    pub async fn write(&self, record: &ArchiveRecord) -> Result<String, ArchiveError> {
        self.append(record).await?.durable().await
    }

    /// Stores a whole object under `key` (tools and tests; requests are appended).
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<(), ArchiveError> {
        match self {
            Archive::File(a) => a.put(key, bytes).await,
            Archive::S3(a) => a.put(key, bytes).await,
        }
    }

    /// The bytes at `locator` (a [`Locator`]'s text): one request's JSON document, or a
    /// whole object for a plain key.
    pub async fn get(&self, locator: &str) -> Result<Bytes, ArchiveError> {
        let locator = Locator::parse(locator)?;
        match self {
            Archive::File(a) => a.get(&locator).await,
            Archive::S3(a) => a.get(&locator).await,
        }
    }

    /// The request at `locator`.
    pub async fn record(&self, locator: &str) -> Result<ArchiveRecord, ArchiveError> {
        ArchiveRecord::from_json(&self.get(locator).await?)
    }

    /// Every request an object holds (a segment's lines, or a single-request object),
    /// in the order written, each with its locator; lines that are not requests are
    /// returned as errors, not skipped.
    pub async fn read_object(&self, key: &str) -> Result<Vec<Entry>, ArchiveError> {
        let bytes = self.get(key).await?;
        Ok(segment::entries(key, &bytes))
    }

    /// Every key under `prefix` (relative to the archive's root), sorted.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, ArchiveError> {
        match self {
            Archive::File(a) => a.list(prefix).await,
            Archive::S3(a) => a.list(prefix).await,
        }
    }

    /// The objects that may hold requests received in `[from, to)`, sorted by key
    /// (time): the segments (and single-request objects of earlier versions) whose key
    /// time is in `[from - SEGMENT_MAX_SPAN, to + SEGMENT_KEY_SKEW)`. Only the hour
    /// folders of that window are listed. Their requests still need filtering by
    /// [`ArchiveRecord::received_at`].
    pub async fn segments_between(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<String>, ArchiveError> {
        let span = chrono::Duration::from_std(SEGMENT_MAX_SPAN).unwrap_or_default();
        let skew = chrono::Duration::from_std(SEGMENT_KEY_SKEW).unwrap_or_default();
        let (earliest, latest) = (from - span, to + skew);
        let mut keys = Vec::new();
        for prefix in key::hour_prefixes(earliest, latest) {
            keys.extend(
                self.list(&prefix)
                    .await?
                    .into_iter()
                    .filter(|k| key_time(k).is_some_and(|t| t >= earliest && t < latest)),
            );
        }
        keys.sort();
        Ok(keys)
    }
    /// Checks that the archive can be written (readiness).
    pub async fn check(&self) -> Result<(), ArchiveError> {
        match self {
            Archive::File(a) => a.check().await,
            Archive::S3(a) => a.check().await,
        }
    }

    /// The URL this archive was opened from, for logs.
    pub fn describe(&self) -> String {
        match self {
            Archive::File(a) => format!("file://{}", a.root().display()),
            Archive::S3(a) => a.describe(),
        }
    }
}
