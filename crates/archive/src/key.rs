//! Object keys that sort by receive time and name the event:
//! `raw/2026/11/24/22/20261124T223001.123456Z-Ev0123ABC-r1-5f0c9a2e41b7.json`.
//!
//! The hour folders keep listings of a time range cheap (replay lists only the hours
//! it needs); the full timestamp in the file name keeps a flat listing in time order;
//! the event id and retry number say which delivery it is; a random suffix makes
//! every key unique, so no delivery ever overwrites another (two requests with the
//! same event id in the same microsecond happen: concurrent Slack retries, replays,
//! test fixtures that share ids).

use chrono::{DateTime, Datelike, Duration, NaiveDateTime, Timelike, Utc};

/// The folder under which raw requests are stored.
pub const RAW_PREFIX: &str = "raw/";

const STAMP: &str = "%Y%m%dT%H%M%S%.6fZ";

/// The key for a request received at `received_at`. `event_id` (already checked to be
/// short and printable by the envelope inspection) names it; without one a random id
/// does. `retry_num` is Slack's `X-Slack-Retry-Num`, when present.
pub fn object_key(
    received_at: DateTime<Utc>,
    event_id: Option<&str>,
    retry_num: Option<&str>,
) -> String {
    let id = match event_id {
        Some(id) => sanitize(id),
        None => "noid".to_owned(),
    };
    let unique = uuid::Uuid::new_v4().simple().to_string();
    let unique = &unique[..12];
    let retry = match retry_num {
        Some(n) => format!("-r{}", sanitize(n)),
        None => String::new(),
    };
    format!(
        "{RAW_PREFIX}{:04}/{:02}/{:02}/{:02}/{}-{id}{retry}-{unique}.json",
        received_at.year(),
        received_at.month(),
        received_at.day(),
        received_at.hour(),
        received_at.format(STAMP),
    )
}

/// Keeps keys safe for every S3 implementation and file system.
fn sanitize(s: &str) -> String {
    s.chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The receive time encoded in a key made by [`object_key`].
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
    fn keys_sort_by_time_and_name_the_delivery() {
        let t = Utc.with_ymd_and_hms(2026, 11, 24, 22, 30, 1).unwrap()
            + Duration::microseconds(123_456);
        let key = object_key(t, Some("Ev0123"), Some("2"));
        assert!(
            key.starts_with("raw/2026/11/24/22/20261124T223001.123456Z-Ev0123-r2-"),
            "{key}"
        );
        assert!(
            key.ends_with(".json")
                && key.len()
                    == "raw/2026/11/24/22/20261124T223001.123456Z-Ev0123-r2-".len() + 12 + 5,
            "{key}"
        );
        assert_ne!(
            key,
            object_key(t, Some("Ev0123"), Some("2")),
            "same event, same microsecond: still two keys"
        );
        assert_eq!(key_time(&key), Some(t));
        let later = object_key(t + Duration::microseconds(1), Some("Ev0000"), None);
        assert!(
            later > key,
            "a later receive time sorts later whatever the id"
        );
        let odd = object_key(t, Some("../x y"), Some("1/"));
        assert!(odd.contains("-___x_y-r1_-"), "{odd}");
        let anonymous = object_key(t, None, None);
        assert!(anonymous.contains("-noid-"), "{anonymous}");
        assert_ne!(anonymous, object_key(t, None, None));
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
