//! The local-directory archive (`file:///path`), for `slackline dev` and single-node
//! installs.
//!
//! Durability without paying one `fsync` per request: a writer thread takes every
//! write that is waiting, writes each object to a temporary name and renames it into
//! place, appends the whole batch to a write-ahead log and makes it durable with one
//! `fdatasync` before answering any of its writers (group commit; see [`crate::wal`]).
//! Under load a batch holds many requests, so the cost of the flush is shared; an
//! idle archive still flushes each write at once.

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::wal::{self, Wal};
use crate::{ArchiveError, LogFaults};

/// Most writes flushed together.
const MAX_BATCH: usize = 512;

struct WriteRequest {
    key: String,
    bytes: Bytes,
    done: oneshot::Sender<Result<(), ArchiveError>>,
}

/// A directory of archive objects, one file per key.
#[derive(Debug, Clone)]
pub struct FileArchive {
    root: Arc<PathBuf>,
    writer: mpsc::UnboundedSender<WriteRequest>,
}

impl std::fmt::Debug for WriteRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteRequest")
            .field("key", &self.key)
            .finish()
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl FileArchive {
    /// Opens (creating it if needed) the directory and starts its writer thread, which
    /// ends when the last clone of the archive is dropped.
    pub fn open(root: impl Into<PathBuf>) -> Result<FileArchive, ArchiveError> {
        FileArchive::open_with_faults(root, LogFaults::default())
    }

    /// Test seam: [`FileArchive::open`] with failures injected into the write-ahead
    /// log as `faults` is armed (see [`LogFaults`]). The services never call this.
    pub fn open_with_faults(
        root: impl Into<PathBuf>,
        faults: LogFaults,
    ) -> Result<FileArchive, ArchiveError> {
        let root: PathBuf = root.into();
        fs::create_dir_all(&root).map_err(io_error(&root))?;
        let mut known_dirs = HashSet::new();
        let mut restore = |key: &str, data: &[u8]| {
            write_one(&root, key, data, &mut known_dirs)
                .map_err(|e| std::io::Error::other(e.to_string()))
        };
        let (wal, restored) = Wal::open(&root, &mut restore, flush, faults.clone())
            .map_err(io_error(&root.join(wal::WAL_DIR)))?;
        if restored > 0 {
            tracing::warn!(restored, root = %root.display(), "archive recovered objects from its write-ahead log");
        }
        let (writer, requests) = mpsc::unbounded_channel();
        let (retire_tx, retired) = std::sync::mpsc::channel::<PathBuf>();
        let thread_root = root.clone();
        let checkpoint_faults = faults;
        // Checkpoints flush the whole file system, which can take long on a busy
        // machine: they run beside the writer so that writes never wait for them.
        std::thread::Builder::new()
            .name("archive-checkpoint".into())
            .spawn(move || {
                for segment in retired {
                    if let Err(e) = wal::retire(&thread_root, &segment, flush, &checkpoint_faults) {
                        tracing::warn!(error = %e, segment = %segment.display(), "archive checkpoint failed; the segment is kept for recovery");
                    }
                }
            })
            .map_err(io_error(&root))?;
        let thread_root = root.clone();
        std::thread::Builder::new()
            .name("archive-writer".into())
            .spawn(move || write_loop(&thread_root, wal, requests, retire_tx))
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
        // Keys are made by `object_key`; refuse anything that could leave the root.
        if key.is_empty() || key.starts_with('/') || key.split('/').any(|p| p == ".." || p == ".") {
            return Err(ArchiveError::Io {
                path: key.to_owned(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "key escapes the archive root",
                ),
            });
        }
        Ok(self.root.join(key))
    }

    /// Writes `bytes` under `key`; resolves once the batch holding it is on disk.
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<(), ArchiveError> {
        self.path_of(key)?;
        let (done, result) = oneshot::channel();
        self.writer
            .send(WriteRequest {
                key: key.to_owned(),
                bytes,
                done,
            })
            .map_err(|_| ArchiveError::WriterStopped)?;
        result.await.map_err(|_| ArchiveError::WriterStopped)?
    }

    /// Reads the object under `key`.
    pub async fn get(&self, key: &str) -> Result<Bytes, ArchiveError> {
        let path = self.path_of(key)?;
        match tokio::fs::read(&path).await {
            Ok(bytes) => Ok(Bytes::from(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(ArchiveError::NotFound(key.to_owned()))
            }
            Err(e) => Err(io_error(&path)(e)),
        }
    }

    /// Every key under `prefix`, sorted (temporary files are not keys).
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
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
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

/// The writer thread: batch, write, rename, one log append and `fdatasync`, answer;
/// checkpoint the log now and then. Ends (with a checkpoint) when every handle to
/// the archive is gone.
///
/// A failed append answers its batch with an error and leaves the log cut back to
/// its last durable record ([`Wal::append`]). If the log could not be cut back, no
/// write is acknowledged (nor even written) until a rotation to a fresh segment
/// succeeds: each batch tries one first, and is refused with
/// [`ArchiveError::LogUnavailable`] if it fails.
fn write_loop(
    root: &Path,
    mut wal: Wal,
    mut requests: mpsc::UnboundedReceiver<WriteRequest>,
    retire: std::sync::mpsc::Sender<PathBuf>,
) {
    let mut known_dirs: HashSet<PathBuf> = HashSet::new();
    let mut batch: Vec<WriteRequest> = Vec::with_capacity(MAX_BATCH);
    let mut results: Vec<Result<(), ArchiveError>> = Vec::with_capacity(MAX_BATCH);
    let mut log: Vec<u8> = Vec::with_capacity(1 << 20);
    let mut refused: u64 = 0;
    while let Some(first) = requests.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match requests.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        if wal.broken().is_some() {
            if rotate(root, &mut wal, &retire) {
                tracing::warn!(refused, root = %root.display(), "archive log replaced by a fresh segment; writes are accepted again");
                refused = 0;
            } else if let Some(reason) = wal.broken() {
                refused += batch.len() as u64;
                for w in batch.drain(..) {
                    let _ = w.done.send(Err(ArchiveError::LogUnavailable {
                        reason: reason.to_owned(),
                    }));
                }
                continue;
            }
        }
        results.extend(
            batch
                .iter()
                .map(|w| write_one(root, &w.key, &w.bytes, &mut known_dirs)),
        );
        // One durable log append covers every object of the batch written so far. If
        // it fails, nothing in the batch may be acknowledged.
        log.clear();
        for (w, _) in batch.iter().zip(&results).filter(|(_, r)| r.is_ok()) {
            wal::encode_record(&mut log, &w.key, &w.bytes);
        }
        if !log.is_empty() {
            if let Err(e) = wal.append(&log) {
                match wal.broken() {
                    None => {
                        tracing::error!(error = %e, "archive log append failed; the log was cut back to its last good record")
                    }
                    Some(reason) => {
                        tracing::error!(error = %e, reason, "archive log append failed and the log could not be cut back; writes are refused until a fresh segment starts")
                    }
                }
                known_dirs.clear();
                for r in results.iter_mut().filter(|r| r.is_ok()) {
                    *r = Err(ArchiveError::Io {
                        path: root.join(wal::WAL_DIR).display().to_string(),
                        source: std::io::Error::new(e.kind(), e.to_string()),
                    });
                }
            }
        }
        for (w, r) in batch.drain(..).zip(results.drain(..)) {
            // The requester may have given up (deadline); the write still stands.
            let _ = w.done.send(r);
        }
        if wal.due() {
            rotate(root, &mut wal, &retire);
        }
    }
    rotate(root, &mut wal, &retire);
}

/// Starts a fresh segment and hands the old one to the checkpoint thread; whether it
/// did. A failed rotation loses nothing: the current segment keeps every object
/// (and if it is broken, writes stay refused until a rotation succeeds).
fn rotate(root: &Path, wal: &mut Wal, retire: &std::sync::mpsc::Sender<PathBuf>) -> bool {
    match wal.rotate() {
        Ok(old) => {
            let _ = retire.send(old);
            true
        }
        // Retried by every batch while the log is broken: kept quiet (each refused
        // write fails its request, which is logged there).
        Err(e) if wal.broken().is_some() => {
            tracing::debug!(error = %e, root = %root.display(), "archive log rotation failed; writes stay refused");
            false
        }
        Err(e) => {
            tracing::warn!(error = %e, root = %root.display(), "archive log rotation failed; the segment keeps growing");
            false
        }
    }
}

fn write_one(
    root: &Path,
    key: &str,
    bytes: &[u8],
    known_dirs: &mut HashSet<PathBuf>,
) -> Result<(), ArchiveError> {
    let path = root.join(key);
    if let Some(dir) = path.parent() {
        if !known_dirs.contains(dir) {
            fs::create_dir_all(dir).map_err(io_error(dir))?;
            known_dirs.insert(dir.to_path_buf());
        }
    }
    // Written under a temporary name and renamed, so a key never names a torn file.
    let tmp = path.with_extension("json.tmp");
    let mut file = fs::File::create(&tmp).map_err(io_error(&tmp))?;
    file.write_all(bytes).map_err(io_error(&tmp))?;
    drop(file);
    fs::rename(&tmp, &path).map_err(io_error(&path))
}

/// Makes everything written under `root` durable.
#[cfg(target_os = "linux")]
fn flush(root: &Path) -> std::io::Result<()> {
    let dir = fs::File::open(root)?;
    rustix::fs::syncfs(&dir).map_err(std::io::Error::from)
}

/// Makes everything written under `root` durable (portable fallback: a full sync of
/// the directory; files were closed, so this relies on the OS flushing them in
/// order, which is weaker than Linux's `syncfs`).
#[cfg(not(target_os = "linux"))]
fn flush(root: &Path) -> std::io::Result<()> {
    fs::File::open(root)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_are_readable_listable_and_refuse_escapes() {
        let dir = tempfile::tempdir().unwrap();
        let archive = FileArchive::open(dir.path()).unwrap();
        let puts = (0..50).map(|i| {
            let archive = archive.clone();
            async move {
                archive
                    .put(
                        &format!("raw/2026/01/01/00/k{i:03}.json"),
                        Bytes::from(format!("body {i}")),
                    )
                    .await
            }
        });
        for r in futures::future::join_all(puts).await {
            r.unwrap();
        }
        assert_eq!(
            archive.get("raw/2026/01/01/00/k007.json").await.unwrap(),
            Bytes::from("body 7")
        );
        let keys = archive.list("raw/2026/01/01/").await.unwrap();
        assert_eq!(keys.len(), 50);
        assert_eq!(keys[0], "raw/2026/01/01/00/k000.json");
        assert!(archive.list("raw/2027/").await.unwrap().is_empty());
        assert!(matches!(
            archive.get("raw/nope.json").await,
            Err(ArchiveError::NotFound(_))
        ));
        assert!(archive.put("../escape.json", Bytes::new()).await.is_err());
        assert!(archive.put("/abs.json", Bytes::new()).await.is_err());
        archive.check().await.unwrap();
        let leftovers: Vec<_> = archive
            .list("")
            .await
            .unwrap()
            .into_iter()
            .filter(|k| k.contains("probe"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[tokio::test]
    async fn acknowledged_objects_lost_in_a_crash_are_restored_from_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let archive = FileArchive::open(dir.path()).unwrap();
        for i in 0..20 {
            archive
                .put(
                    &format!("raw/2026/01/01/00/k{i:02}.json"),
                    Bytes::from(format!("body {i}")),
                )
                .await
                .unwrap();
        }
        // Simulate a crash: the writer stops without its final checkpoint...
        let wal_dir = dir.path().join(crate::wal::WAL_DIR);
        let segment = std::fs::read_dir(&wal_dir)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let saved = std::fs::read(&segment).unwrap();
        drop(archive);
        // (the writer's final checkpoint removes the segment; wait for it, then put the
        // segment back as a crash would have left it)
        // (a file-system flush can take seconds on a busy machine)
        for _ in 0..3000 {
            if !segment.exists() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(
            !segment.exists(),
            "a clean shutdown checkpoints the log away"
        );
        // ...and the objects that were never flushed are gone or torn.
        std::fs::write(&segment, &saved).unwrap();
        std::fs::remove_file(dir.path().join("raw/2026/01/01/00/k03.json")).unwrap();
        std::fs::write(dir.path().join("raw/2026/01/01/00/k07.json"), b"bo").unwrap();

        let reopened = FileArchive::open(dir.path()).unwrap();
        assert_eq!(
            reopened.get("raw/2026/01/01/00/k03.json").await.unwrap(),
            Bytes::from("body 3")
        );
        assert_eq!(
            reopened.get("raw/2026/01/01/00/k07.json").await.unwrap(),
            Bytes::from("body 7")
        );
        assert_eq!(
            reopened.list("raw/").await.unwrap().len(),
            20,
            "the log is not listed as an object"
        );
        let segments = std::fs::read_dir(&wal_dir).unwrap().count();
        assert_eq!(
            segments, 1,
            "recovered segments are checkpointed away; one fresh segment remains"
        );
        assert!(!segment.exists());
    }

    #[tokio::test]
    async fn a_failing_write_is_reported_and_others_in_the_batch_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let archive = FileArchive::open(dir.path()).unwrap();
        // A file where a directory should be makes that one write fail.
        std::fs::write(dir.path().join("blocked"), b"x").unwrap();
        let bad = archive.put("blocked/k.json", Bytes::from("x"));
        let good = archive.put("fine/k.json", Bytes::from("y"));
        let (bad, good) = tokio::join!(bad, good);
        assert!(matches!(bad, Err(ArchiveError::Io { .. })), "{bad:?}");
        good.unwrap();
    }
}
