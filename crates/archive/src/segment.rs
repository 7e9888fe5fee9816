//! Segments: one archive object holds many requests, one [`ArchiveRecord`] JSON document
//! per line (JSON Lines), in the order they were written.
//!
//! A request is found again by its **locator**, `<segment key>#<offset>+<length>`: the
//! byte range of its line (without the newline) in the segment. The edge carries the
//! locator in the Kafka record's `archive-key` header; replay reads whole segments. An
//! object written before segments existed (one request per `.json` object) is its
//! own locator: a key without `#` names the whole object.
//!
//! Lines are complete or absent: a segment is only ever appended to, and a line is
//! acknowledged once it and its newline are durable. A reader can still meet the end
//! of a line being written (a segment that is growing) or torn by a crash before it
//! was acknowledged: bytes after the last newline are not a record (see
//! [`split_lines`]).

use std::fmt;

use chrono::{DateTime, Datelike, Timelike, Utc};

use crate::key::{RAW_PREFIX, STAMP};
use crate::{ArchiveError, ArchiveRecord};

/// The file extension of segments.
pub const SEGMENT_EXTENSION: &str = "jsonl";

/// The key of a new segment whose first request was received at `first`:
/// `raw/2026/12/08/03/20261208T033012.123456Z-5f0c9a2e41b7.jsonl`. Every request in it
/// was received in the same hour (the writers start a new segment when the hour
/// changes), so the hour folders partition the archive by receive time.
pub fn segment_key(first: DateTime<Utc>) -> String {
    let unique = uuid::Uuid::new_v4().simple().to_string();
    format!(
        "{RAW_PREFIX}{}{}-{}.{SEGMENT_EXTENSION}",
        hour_folder(first),
        first.format(STAMP),
        &unique[..12],
    )
}

/// `YYYY/MM/DD/HH/`: the hour folder of `t` (below [`RAW_PREFIX`]).
pub(crate) fn hour_folder(t: DateTime<Utc>) -> String {
    format!(
        "{:04}/{:02}/{:02}/{:02}/",
        t.year(),
        t.month(),
        t.day(),
        t.hour()
    )
}

/// Whether two instants fall in the same hour folder.
pub(crate) fn same_hour(a: DateTime<Utc>, b: DateTime<Utc>) -> bool {
    a.date_naive() == b.date_naive() && a.hour() == b.hour()
}

/// Where one request is: a segment and the byte range of its line, or (for objects
/// written before segments) a whole object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locator {
    /// The object key.
    pub key: String,
    /// The line's byte range in the object; `None` for a whole single-request object.
    pub range: Option<(u64, u64)>,
}

impl Locator {
    /// A line of a segment.
    pub fn line(key: &str, offset: u64, len: u64) -> Locator {
        Locator {
            key: key.to_owned(),
            range: Some((offset, len)),
        }
    }

    /// Parses `key#offset+len` or a plain key.
    pub fn parse(text: &str) -> Result<Locator, ArchiveError> {
        let bad = |why: &str| ArchiveError::BadLocator(format!("{text:?}: {why}"));
        let Some((key, range)) = text.rsplit_once('#') else {
            if text.is_empty() {
                return Err(bad("empty"));
            }
            return Ok(Locator {
                key: text.to_owned(),
                range: None,
            });
        };
        let (offset, len) = range
            .split_once('+')
            .ok_or_else(|| bad("expected #offset+length"))?;
        let offset = offset.parse().map_err(|_| bad("offset is not a number"))?;
        let len = len.parse().map_err(|_| bad("length is not a number"))?;
        if key.is_empty() {
            return Err(bad("no object key"));
        }
        Ok(Locator::line(key, offset, len))
    }
}

impl fmt::Display for Locator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.range {
            Some((offset, len)) => write!(f, "{}#{offset}+{len}", self.key),
            None => f.write_str(&self.key),
        }
    }
}

/// Appends `record`'s line to `buf`; returns the byte range of the line in `buf`
/// (without the newline). (The writers build their batches the same way.)
#[cfg(test)]
pub(crate) fn encode_line(
    buf: &mut Vec<u8>,
    record: &ArchiveRecord,
) -> Result<(usize, usize), ArchiveError> {
    let start = buf.len();
    let json = record.to_json()?;
    // serde_json escapes control characters inside strings: a document is one line.
    debug_assert!(!json.contains(&b'\n'));
    buf.extend_from_slice(&json);
    buf.push(b'\n');
    Ok((start, json.len()))
}

/// One line of an object read back.
#[derive(Debug)]
pub struct Entry {
    /// Where it is (what the edge put in the Kafka header).
    pub locator: Locator,
    /// The request, or why the line is not one (a foreign or damaged object).
    pub record: Result<ArchiveRecord, ArchiveError>,
}

/// The complete lines of `bytes` as `(offset, length)`, and whether bytes follow the
/// last newline (a line still being written, or torn by a crash: never acknowledged,
/// so not a record).
pub fn split_lines(bytes: &[u8]) -> (Vec<(usize, usize)>, bool) {
    let mut lines = Vec::new();
    let mut start = 0;
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'\n' {
            if i > start {
                lines.push((start, i - start));
            }
            start = i + 1;
        }
    }
    (lines, start < bytes.len())
}

/// Reads the requests of the object `key` whose bytes are `bytes`: every line of a
/// segment, or the single record of a pre-segment `.json` object.
pub fn entries(key: &str, bytes: &[u8]) -> Vec<Entry> {
    if !is_segment(key) {
        return vec![Entry {
            locator: Locator {
                key: key.to_owned(),
                range: None,
            },
            record: ArchiveRecord::from_json(bytes),
        }];
    }
    let (lines, torn) = split_lines(bytes);
    if torn {
        tracing::debug!(
            key,
            "archive segment ends in an incomplete line (being written, or never acknowledged)"
        );
    }
    lines
        .into_iter()
        .map(|(offset, len)| Entry {
            locator: Locator::line(key, offset as u64, len as u64),
            record: ArchiveRecord::from_json(&bytes[offset..offset + len]),
        })
        .collect()
}

/// The request at `locator` in the whole object `object` (read from its key): the
/// line without its newline, or the whole object for a single-request locator; `None`
/// when the range holds no complete line.
pub fn slice<'a>(object: &'a [u8], locator: &Locator) -> Option<&'a [u8]> {
    let Some((offset, len)) = locator.range else {
        return Some(object);
    };
    let start = usize::try_from(offset).ok()?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    (object.get(end) == Some(&b'\n')).then(|| object.get(start..end))?
}

/// Whether `key` names a segment (several requests) rather than a single request.
pub fn is_segment(key: &str) -> bool {
    key.ends_with(&format!(".{SEGMENT_EXTENSION}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use chrono::TimeZone;
    use std::collections::BTreeMap;

    fn record(body: &str) -> ArchiveRecord {
        ArchiveRecord {
            received_at: Utc.with_ymd_and_hms(2026, 12, 8, 3, 30, 12).unwrap(),
            headers: BTreeMap::new(),
            body: Bytes::copy_from_slice(body.as_bytes()),
        }
    }

    #[test]
    fn locators_roundtrip_and_bad_ones_are_refused() {
        let l = Locator::line("raw/2026/12/08/03/x.jsonl", 81920, 1642);
        assert_eq!(l.to_string(), "raw/2026/12/08/03/x.jsonl#81920+1642");
        assert_eq!(Locator::parse(&l.to_string()).unwrap(), l);
        let old = Locator::parse("raw/2026/11/24/22/20261124T223001.123456Z-Ev1-abc.json").unwrap();
        assert_eq!(old.range, None);
        for bad in ["", "#1+2", "k#1", "k#x+1", "k#1+y", "k#-1+2"] {
            assert!(Locator::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn lines_hold_records_byte_for_byte_and_a_torn_tail_is_not_one() {
        let mut buf = Vec::new();
        let bodies = [
            "first\nwith a newline",
            "{\"json\":true}",
            "",
            "😀 \u{0} end",
        ];
        let ranges: Vec<_> = bodies
            .iter()
            .map(|b| encode_line(&mut buf, &record(b)).unwrap())
            .collect();
        let key = segment_key(Utc::now());
        assert!(is_segment(&key));
        let read = entries(&key, &buf);
        assert_eq!(read.len(), bodies.len());
        for ((entry, body), (offset, len)) in read.iter().zip(bodies).zip(&ranges) {
            assert_eq!(entry.locator.range, Some((*offset as u64, *len as u64)));
            let got = entry.record.as_ref().expect("a record");
            assert_eq!(&got.body[..], body.as_bytes());
        }
        let (offset, len) = ranges[1];
        let l = Locator::line(&key, offset as u64, len as u64);
        assert_eq!(slice(&buf, &l), Some(&buf[offset..offset + len]));
        assert_eq!(
            slice(&buf[..offset + len], &l),
            None,
            "no newline: not a line"
        );
        assert_eq!(slice(&buf, &Locator::line(&key, 1 << 40, 3)), None);
        // Every cut of the last line leaves the others whole and drops the cut one.
        let last_start = ranges[3].0;
        for cut in last_start..buf.len() {
            let (lines, torn) = split_lines(&buf[..cut]);
            assert_eq!(lines.len(), 3, "cut at {cut}");
            assert_eq!(torn, cut > last_start, "cut at {cut}");
        }
        // A foreign line is reported, not skipped, and the rest still reads.
        let mut mixed = b"not json\n".to_vec();
        encode_line(&mut mixed, &record("ok")).unwrap();
        let read = entries(&key, &mixed);
        assert!(read[0].record.is_err());
        assert_eq!(&read[1].record.as_ref().unwrap().body[..], b"ok");
    }

    #[test]
    fn segment_keys_sort_by_time_and_sit_in_their_hour() {
        let t = Utc.with_ymd_and_hms(2026, 12, 8, 3, 59, 59).unwrap();
        let key = segment_key(t);
        assert!(
            key.starts_with("raw/2026/12/08/03/20261208T035959.000000Z-"),
            "{key}"
        );
        assert_eq!(crate::key_time(&key), Some(t));
        assert!(segment_key(t + chrono::Duration::microseconds(1)) > key);
        assert!(same_hour(t, t - chrono::Duration::minutes(59)));
        assert!(!same_hour(t, t + chrono::Duration::seconds(1)));
    }
}
