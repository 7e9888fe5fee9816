//! The archive: every verified Slack request, byte for byte, before anything else
//! happens to it.
//!
//! The edge writes an [`ArchiveRecord`] (raw body, the headers that matter, receive
//! time) under a key that sorts by time ([`object_key`]) and only then produces the
//! event to Kafka, so a Kafka record always points at an archive object that exists.
//! The archive is the source of truth for replay (guarantee 6): any time range of it
//! can be fed through the pipeline again.
//!
//! Two backends sit behind [`Archive`]: S3 through aws-sdk-s3 (`s3://bucket/prefix`)
//! and a local directory (`file:///path`) whose writes are group-committed: one
//! `fdatasync` of a write-ahead log makes a whole batch durable before any of its
//! writers is told "done".

mod faults;
mod file;
mod key;
mod record;
mod s3;
mod wal;

use bytes::Bytes;
use chrono::{DateTime, Utc};

pub use faults::LogFaults;
pub use file::FileArchive;
pub use key::{key_time, object_key, RAW_PREFIX};
pub use record::{ArchiveRecord, RECORD_FORMAT};
pub use s3::{S3Archive, S3Settings};

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
    /// The object does not exist.
    #[error("archive object {0} not found")]
    NotFound(String),
    /// An object is not an archive record.
    #[error("archive object is not a slackline record: {0}")]
    BadRecord(String),
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
    /// Opens the archive named by `url`; `s3` is used for `s3://` URLs.
    pub async fn open(url: &str, s3: &S3Settings) -> Result<Archive, ArchiveError> {
        let invalid = |reason| ArchiveError::InvalidUrl {
            url: url.to_owned(),
            reason,
        };
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(invalid("no bucket name"));
            }
            Ok(Archive::S3(S3Archive::new(s3, bucket, prefix).await))
        } else if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(invalid("file URLs need an absolute path: file:///path"));
            }
            Ok(Archive::File(FileArchive::open(path)?))
        } else {
            Err(invalid("expected s3://bucket/prefix or file:///path"))
        }
    }

    /// Stores `bytes` under `key`; returns once the object is durable.
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<(), ArchiveError> {
        match self {
            Archive::File(a) => a.put(key, bytes).await,
            Archive::S3(a) => a.put(key, bytes).await,
        }
    }

    /// Reads the object under `key`.
    pub async fn get(&self, key: &str) -> Result<Bytes, ArchiveError> {
        match self {
            Archive::File(a) => a.get(key).await,
            Archive::S3(a) => a.get(key).await,
        }
    }

    /// Every key under `prefix` (relative to the archive's root), sorted.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, ArchiveError> {
        match self {
            Archive::File(a) => a.list(prefix).await,
            Archive::S3(a) => a.list(prefix).await,
        }
    }

    /// Keys of records received in `[from, to)`, sorted by receive time. Only the hour
    /// folders that overlap the range are listed.
    pub async fn list_between(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<String>, ArchiveError> {
        let mut keys = Vec::new();
        for prefix in key::hour_prefixes(from, to) {
            keys.extend(
                self.list(&prefix)
                    .await?
                    .into_iter()
                    .filter(|k| key_time(k).is_some_and(|t| t >= from && t < to)),
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
