//! The write-ahead log of archives written by earlier versions, read once to recover.
//!
//! Before segments ([`crate::segment`]), the file archive wrote one object file per
//! request without a flush and made each batch durable by appending it to a log
//! segment (`.wal/<seq>.log`: length-prefixed, checksummed records) with one
//! `fdatasync`; a checkpoint flushed the file system and dropped the segment. A crash
//! could leave segments whose objects were never flushed. [`recover_legacy`] restores
//! them as single-request objects (still readable by their old keys), flushes, and
//! removes the log, so an upgrade after such a crash loses nothing.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

const MAGIC: u32 = 0x534c_4b31; // "SLK1"
const HEADER: usize = 12;
const TRAILER: usize = 8;
/// The folder under the archive root that held the legacy log (hidden from listings).
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

/// Appends one record to `buf` (as earlier versions did).
#[cfg(test)]
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

/// Restores every object the legacy log under `root` holds, makes them durable with
/// `flush`, and removes the log; how many objects it restored.
pub(crate) fn recover_legacy(root: &Path, flush: fn(&Path) -> io::Result<()>) -> io::Result<usize> {
    let dir = root.join(WAL_DIR);
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut segments: Vec<(u64, PathBuf)> = entries
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
            restore(root, &key, data)?;
            restored += 1;
        }
        if complete < bytes.len() {
            tracing::warn!(segment = %path.display(), dropped_bytes = bytes.len() - complete, "legacy archive log segment ends in an incomplete record; it was never acknowledged");
        }
    }
    if !segments.is_empty() {
        flush(root)?;
        for (_, path) in &segments {
            fs::remove_file(path)?;
        }
    }
    // The folder itself goes once empty (anything else in it is left alone).
    let _ = fs::remove_dir(&dir);
    Ok(restored)
}

/// Writes one legacy object under a temporary name and renames it into place.
fn restore(root: &Path, key: &str, data: &[u8]) -> io::Result<()> {
    if key.is_empty() || key.starts_with('/') || key.split('/').any(|p| p == ".." || p == ".") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("legacy log key {key:?} escapes the root"),
        ));
    }
    let path = root.join(key);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension("json.tmp");
    let mut file = File::create(&tmp)?;
    file.write_all(data)?;
    drop(file);
    fs::rename(&tmp, &path)
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

    #[test]
    fn an_earlier_versions_log_is_restored_once_and_removed() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join(WAL_DIR);
        fs::create_dir_all(&dir).unwrap();
        let mut first = Vec::new();
        encode_record(&mut first, "raw/2026/01/01/00/a.json", b"first");
        encode_record(&mut first, "raw/2026/01/01/00/b.json", b"second");
        first.extend_from_slice(b"torn");
        fs::write(dir.join(format!("{:020}.log", 1)), &first).unwrap();
        let mut second = Vec::new();
        encode_record(&mut second, "raw/2026/01/01/00/b.json", b"second, again");
        fs::write(dir.join(format!("{:020}.log", 2)), &second).unwrap();
        // A torn object file that the log holds whole.
        fs::create_dir_all(root.path().join("raw/2026/01/01/00")).unwrap();
        fs::write(root.path().join("raw/2026/01/01/00/a.json"), b"fir").unwrap();
        let restored = recover_legacy(root.path(), |_| Ok(())).unwrap();
        assert_eq!(restored, 3);
        let read = |k: &str| fs::read(root.path().join(k)).unwrap();
        assert_eq!(read("raw/2026/01/01/00/a.json"), b"first");
        assert_eq!(
            read("raw/2026/01/01/00/b.json"),
            b"second, again",
            "later segments win"
        );
        assert!(!dir.exists(), "the log is gone once restored");
        assert_eq!(recover_legacy(root.path(), |_| Ok(())).unwrap(), 0);
    }
}
