//! The file archive's write-ahead log: what makes a batch of archive writes durable
//! with one `fdatasync` of one file, instead of a flush of every new file.
//!
//! Each batch is appended to the current segment (`.wal/<seq>.log`) as length-prefixed,
//! checksummed records and `fdatasync`ed; only then are its writers answered. The
//! object files themselves are written without a flush. A checkpoint (every
//! [`CHECKPOINT_BYTES`] or [`CHECKPOINT_AGE`]) flushes the file system once and drops
//! the segment. After a crash, [`Wal::open`] restores every object a surviving segment
//! holds, so nothing that was acknowledged can be missing or torn, then checkpoints.
//!
//! Recovery reads a segment up to its first torn or corrupt record, so nothing may
//! ever be appended behind one: an append that fails in any way (a short or failed
//! write, a failed `fdatasync`) is cut back to the segment's last durable record
//! (`ftruncate`, `fsync`) before anything else is appended. If that fails too, the
//! segment is marked broken and takes no more appends; the writer refuses writes
//! until a rotation to a fresh segment succeeds (see [`Wal::append`]).
//!
//! Why: on a busy machine, flushing the whole file system (`syncfs`) per batch costs
//! several times more than one `fdatasync` of an append-only file (measured on the
//! development machine; see the edge benchmark notes).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::faults::{self, LogFaults};

/// A segment this large is checkpointed and replaced.
pub(crate) const CHECKPOINT_BYTES: u64 = 64 * 1024 * 1024;
/// A segment this old is checkpointed and replaced.
pub(crate) const CHECKPOINT_AGE: Duration = Duration::from_secs(30);

const MAGIC: u32 = 0x534c_4b31; // "SLK1"
const HEADER: usize = 12;
const TRAILER: usize = 8;
/// The folder under the archive root holding the segments (hidden from listings).
pub(crate) const WAL_DIR: &str = ".wal";

/// FNV-1a over the key and the data: enough to tell a torn tail from a record.
fn checksum(key: &[u8], data: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.iter().chain(data) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// Appends one record to `buf`.
pub(crate) fn encode_record(buf: &mut Vec<u8>, key: &str, data: &[u8]) {
    buf.extend_from_slice(&MAGIC.to_le_bytes());
    buf.extend_from_slice(&(key.len() as u32).to_le_bytes());
    buf.extend_from_slice(&(data.len() as u32).to_le_bytes());
    buf.extend_from_slice(key.as_bytes());
    buf.extend_from_slice(data);
    buf.extend_from_slice(&checksum(key.as_bytes(), data).to_le_bytes());
}

/// The complete records at the start of `bytes`, and the length they span; parsing
/// stops at the first torn or corrupt one (a write that was never acknowledged).
pub(crate) fn decode_records(bytes: &[u8]) -> (Vec<(String, &[u8])>, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    let u32_at = |i: usize| -> Option<u32> {
        Some(u32::from_le_bytes(bytes.get(i..i + 4)?.try_into().ok()?))
    };
    while let (Some(magic), Some(key_len), Some(data_len)) =
        (u32_at(at), u32_at(at + 4), u32_at(at + 8))
    {
        if magic != MAGIC {
            break;
        }
        let key_start = at + HEADER;
        let data_start = key_start + key_len as usize;
        let end = data_start + data_len as usize;
        let (Some(key), Some(data), Some(sum)) = (
            bytes.get(key_start..data_start),
            bytes.get(data_start..end),
            bytes.get(end..end + TRAILER),
        ) else {
            break;
        };
        let Ok(sum) = <[u8; 8]>::try_from(sum) else {
            break;
        };
        if u64::from_le_bytes(sum) != checksum(key, data) {
            break;
        }
        let Ok(key) = std::str::from_utf8(key) else {
            break;
        };
        out.push((key.to_owned(), data));
        at = end + TRAILER;
    }
    (out, at)
}

/// The current segment.
pub(crate) struct Wal {
    dir: PathBuf,
    file: File,
    path: PathBuf,
    seq: u64,
    /// The length of the segment's complete, durable records: where the next append
    /// starts, and where a failed append is cut back to.
    size: u64,
    started: Instant,
    /// Why the segment may end in bytes that are not complete, durable records (a
    /// failed append that could not be cut back). Nothing is appended to it any more;
    /// only [`Wal::rotate`] to a fresh segment clears this.
    broken: Option<String>,
    faults: LogFaults,
}

impl Wal {
    /// Recovers what earlier segments hold (restoring their objects under `root` with
    /// `restore`), makes it durable with `flush`, and starts a fresh segment.
    pub(crate) fn open(
        root: &Path,
        restore: &mut dyn FnMut(&str, &[u8]) -> io::Result<()>,
        flush: fn(&Path) -> io::Result<()>,
        faults: LogFaults,
    ) -> io::Result<(Wal, usize)> {
        let dir = root.join(WAL_DIR);
        fs::create_dir_all(&dir)?;
        let mut segments: Vec<(u64, PathBuf)> = fs::read_dir(&dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let path = e.path();
                let seq = path.file_stem()?.to_str()?.parse::<u64>().ok()?;
                (path.extension()? == "log").then_some((seq, path))
            })
            .collect();
        segments.sort();
        let mut restored = 0;
        for (_, path) in &segments {
            let mut bytes = Vec::new();
            File::open(path)?.read_to_end(&mut bytes)?;
            let (records, complete) = decode_records(&bytes);
            for (key, data) in records {
                restore(&key, data)?;
                restored += 1;
            }
            if complete < bytes.len() {
                // Only a write that was never acknowledged ends like this: an append
                // torn by the crash, or a failed one that could not be cut back
                // (nothing was appended to that segment afterwards).
                tracing::warn!(segment = %path.display(), dropped_bytes = bytes.len() - complete, "archive log segment ends in an incomplete record; it was never acknowledged");
            }
        }
        if !segments.is_empty() {
            flush(root)?;
            for (_, path) in &segments {
                fs::remove_file(path)?;
            }
        }
        let seq = segments.last().map_or(1, |(seq, _)| seq + 1);
        let (file, path) = Self::create_segment(&dir, seq)?;
        Ok((
            Wal {
                dir,
                file,
                path,
                seq,
                size: 0,
                started: Instant::now(),
                broken: None,
                faults,
            },
            restored,
        ))
    }

    fn create_segment(dir: &Path, seq: u64) -> io::Result<(File, PathBuf)> {
        let path = dir.join(format!("{seq:020}.log"));
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        // A file of this number can only be left by an earlier attempt at this
        // rotation that failed after creating it: it holds nothing.
        file.set_len(0)?;
        // The new segment's directory entry must survive a crash too.
        File::open(dir)?.sync_all()?;
        Ok((file, path))
    }

    /// Why the segment takes no more appends, if it does not (see [`Wal::rotate`]).
    pub(crate) fn broken(&self) -> Option<&str> {
        self.broken.as_deref()
    }

    /// Appends a batch (already encoded) and makes it durable.
    ///
    /// If any part fails (a short or failed write, a failed `fdatasync`) the batch is
    /// not durable, and the segment may end in a torn record, behind which recovery
    /// would find nothing: the segment is cut back to its last durable record, so
    /// the next batch starts there. If even that fails the segment is marked broken
    /// and refuses appends until [`Wal::rotate`] replaces it.
    pub(crate) fn append(&mut self, batch: &[u8]) -> io::Result<()> {
        if let Some(reason) = &self.broken {
            return Err(io::Error::other(format!(
                "segment takes no appends: {reason}"
            )));
        }
        let appended = self.write_and_sync(batch);
        if let Err(e) = &appended {
            if let Err(cut) = self.cut_back() {
                self.broken = Some(format!(
                    "append failed ({e}), and cutting the segment back to its last good record failed ({cut})"
                ));
            }
        }
        appended
    }

    fn write_and_sync(&mut self, batch: &[u8]) -> io::Result<()> {
        if let Some(budget) = self.faults.take_append_budget() {
            let torn = usize::try_from(budget)
                .unwrap_or(usize::MAX)
                .min(batch.len());
            self.file.write_all(&batch[..torn])?;
            return Err(faults::injected("append"));
        }
        self.file.write_all(batch)?;
        self.faults.sync()?;
        self.file.sync_data()?;
        self.size += batch.len() as u64;
        Ok(())
    }

    /// Truncates the segment to its durable records and makes that durable.
    fn cut_back(&mut self) -> io::Result<()> {
        self.faults.truncate()?;
        self.file.set_len(self.size)?;
        self.faults.sync()?;
        self.file.sync_all()
    }

    /// Whether the segment should be checkpointed.
    pub(crate) fn due(&self) -> bool {
        (self.faults.rotate_every_batch() && self.size > 0)
            || self.size >= CHECKPOINT_BYTES
            || (self.size > 0 && self.started.elapsed() >= CHECKPOINT_AGE)
    }

    /// Starts a new segment and returns the old one's path. The old segment may be
    /// deleted once every object written so far has been flushed (see
    /// [`retire`]); until then it still guards them (its records up to any torn
    /// tail: a broken segment got no appends after the failure). On failure nothing
    /// changes: the current segment stays, broken or not.
    pub(crate) fn rotate(&mut self) -> io::Result<PathBuf> {
        self.faults.rotate()?;
        let (file, path) = Self::create_segment(&self.dir, self.seq + 1)?;
        let old = std::mem::replace(&mut self.path, path);
        self.file = file;
        self.seq += 1;
        self.size = 0;
        self.started = Instant::now();
        self.broken = None;
        Ok(old)
    }
}

/// Flushes every object under `root`, then deletes the retired segment. On failure the
/// segment stays, and the next [`Wal::open`] restores its objects again.
pub(crate) fn retire(
    root: &Path,
    segment: &Path,
    flush: fn(&Path) -> io::Result<()>,
    faults: &LogFaults,
) -> io::Result<()> {
    faults.checkpoint()?;
    flush(root)?;
    fs::remove_file(segment)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_roundtrip_and_a_torn_tail_is_dropped() {
        let mut buf = Vec::new();
        encode_record(&mut buf, "raw/a.json", b"first");
        encode_record(&mut buf, "raw/b.json", b"");
        encode_record(&mut buf, "raw/c.json", b"third");
        let (all, complete) = decode_records(&buf);
        assert_eq!(complete, buf.len());
        assert_eq!(all.len(), 3);
        assert_eq!((all[0].0.as_str(), all[0].1), ("raw/a.json", &b"first"[..]));
        let ends: Vec<usize> = {
            let mut one = Vec::new();
            encode_record(&mut one, "raw/a.json", b"first");
            let first = one.len();
            encode_record(&mut one, "raw/b.json", b"");
            vec![first, one.len(), buf.len()]
        };
        for cut in 0..=buf.len() {
            let complete = ends.iter().filter(|end| **end <= cut).count();
            let (records, len) = decode_records(&buf[..cut]);
            assert_eq!(records.len(), complete, "cut at {cut}");
            assert_eq!(
                len,
                [0, ends[0], ends[1], ends[2]][complete],
                "cut at {cut}"
            );
        }
        assert_eq!(
            decode_records(&buf[..buf.len() - 1]).0.len(),
            2,
            "torn last record"
        );
        let mut corrupt = buf.clone();
        let last = corrupt.len() - 10;
        corrupt[last] ^= 0xff;
        assert_eq!(
            decode_records(&corrupt).0.len(),
            2,
            "checksum catches a flipped byte"
        );
    }
}
