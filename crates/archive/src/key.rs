//! Object keys sort by receive time: `raw/YYYY/MM/DD/HH/<timestamp>-...`.
//!
//! The hour folders keep listings of a time range cheap (replay lists only the hours
//! it needs); the full timestamp at the start of the file name keeps a flat listing in
//! time order. Segments are named by their first request
//! (`raw/2026/12/08/03/20261208T033012.123456Z-5f0c9a2e41b7.jsonl`, see
//! [`crate::segment`]); archives written before segments hold one request per object,
//! named by its receive time, event id, retry number and a random suffix
//! (`raw/2026/11/24/22/20261124T223001.123456Z-Ev0123ABC-r1-5f0c9a2e41b7.json`): both
//! read the same way.

use chrono::{DateTime, Datelike, Duration, NaiveDateTime, Timelike, Utc};

/// The folder under which raw requests are stored.
pub const RAW_PREFIX: &str = "raw/";

pub(crate) const STAMP: &str = "%Y%m%dT%H%M%S%.6fZ";

/// The receive time encoded in an archive key: a segment's first request
/// ([`crate::segment::segment_key`]) or the request of a single-request object.
pub fn key_time(key: &str) -> Option<DateTime<Utc>> {
    let file = key.rsplit('/').next()?;
    let stamp = file.get(..file.find('Z')? + 1)?;
    NaiveDateTime::parse_from_str(stamp, STAMP)
        .ok()
        .map(|t| t.and_utc())
}

/// The hour folders (`raw/YYYY/MM/DD/HH/`) that overlap `[from, to)`.
pub(crate) fn hour_prefixes(from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<String> {
    let mut out = Vec::new();
    let Some(mut hour) = from
        .with_minute(0)
        .and_then(|t| t.with_second(0))
        .and_then(|t| t.with_nanosecond(0))
    else {
        return out;
    };
    while hour < to {
        out.push(format!(
            "{RAW_PREFIX}{:04}/{:02}/{:02}/{:02}/",
            hour.year(),
            hour.month(),
            hour.day(),
            hour.hour()
        ));
        hour += Duration::hours(1);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn key_times_read_segments_and_single_request_objects() {
        let t = Utc.with_ymd_and_hms(2026, 11, 24, 22, 30, 1).unwrap()
            + Duration::microseconds(123_456);
        assert_eq!(
            key_time("raw/2026/11/24/22/20261124T223001.123456Z-Ev0123-r2-5f0c9a2e41b7.json"),
            Some(t)
        );
        assert_eq!(
            key_time("raw/2026/11/24/22/20261124T223001.123456Z-5f0c9a2e41b7.jsonl"),
            Some(t)
        );
        assert_eq!(key_time("raw/2026/11/24/22/notes.txt"), None);
    }

    #[test]
    fn hour_prefixes_cover_the_range() {
        let from = Utc.with_ymd_and_hms(2026, 11, 24, 22, 59, 0).unwrap();
        let to = Utc.with_ymd_and_hms(2026, 11, 25, 0, 0, 1).unwrap();
        assert_eq!(
            hour_prefixes(from, to),
            vec![
                "raw/2026/11/24/22/",
                "raw/2026/11/24/23/",
                "raw/2026/11/25/00/"
            ]
        );
        assert!(hour_prefixes(to, from).is_empty());
    }
}
