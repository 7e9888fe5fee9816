//! The archived form of one Slack request: a small JSON document with the raw body
//! kept byte-identical (as a string when it is UTF-8, base64 otherwise).

use std::collections::BTreeMap;

use base64::Engine;
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::ArchiveError;

/// The `format` field of every record, so a reader can tell versions apart.
pub const RECORD_FORMAT: &str = "slackline.archive.v1";

/// One request as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveRecord {
    /// When the edge received it.
    pub received_at: DateTime<Utc>,
    /// The headers that matter (lower-case names): timestamp, signature, retry
    /// number and reason, content type.
    pub headers: BTreeMap<String, String>,
    /// The raw body, exactly as signed.
    pub body: Bytes,
}

/// The document as written: borrows everything from the record.
#[derive(Serialize)]
struct WireOut<'a> {
    format: &'a str,
    received_at: String,
    headers: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body_base64: Option<String>,
}

/// The document as read.
#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow)]
    format: std::borrow::Cow<'a, str>,
    received_at: String,
    headers: BTreeMap<String, String>,
    #[serde(default, borrow)]
    body: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    body_base64: Option<String>,
}

impl ArchiveRecord {
    /// Serialises the record to its JSON document (one line: serde_json escapes
    /// control characters inside strings).
    pub fn to_json(&self) -> Result<Vec<u8>, ArchiveError> {
        let (body, body_base64) = match std::str::from_utf8(&self.body) {
            Ok(text) => (Some(text), None),
            Err(_) => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(&self.body)),
            ),
        };
        let wire = WireOut {
            format: RECORD_FORMAT,
            received_at: self
                .received_at
                .to_rfc3339_opts(SecondsFormat::Micros, true),
            headers: &self.headers,
            body,
            body_base64,
        };
        // Sized once for the body (escaped JSON grows it a little) and the rest.
        let mut out = Vec::with_capacity(self.body.len() + self.body.len() / 8 + 512);
        serde_json::to_writer(&mut out, &wire)
            .map_err(|e| ArchiveError::BadRecord(format!("serialising: {e}")))?;
        Ok(out)
    }

    /// Parses a record written by [`ArchiveRecord::to_json`].
    pub fn from_json(bytes: &[u8]) -> Result<Self, ArchiveError> {
        let wire: Wire<'_> =
            serde_json::from_slice(bytes).map_err(|e| ArchiveError::BadRecord(e.to_string()))?;
        if wire.format != RECORD_FORMAT {
            return Err(ArchiveError::BadRecord(format!(
                "unknown format {:?}",
                wire.format
            )));
        }
        let received_at = DateTime::parse_from_rfc3339(&wire.received_at)
            .map_err(|e| ArchiveError::BadRecord(format!("received_at: {e}")))?
            .with_timezone(&Utc);
        let body = match (wire.body, wire.body_base64) {
            (Some(text), None) => Bytes::copy_from_slice(text.as_bytes()),
            (None, Some(b64)) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map(Bytes::from)
                .map_err(|e| ArchiveError::BadRecord(format!("body_base64: {e}")))?,
            _ => {
                return Err(ArchiveError::BadRecord(
                    "exactly one of body, body_base64".into(),
                ))
            }
        };
        Ok(ArchiveRecord {
            received_at,
            headers: wire.headers,
            body,
        })
    }

    /// The value of a header, by lower-case name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(body: &[u8]) {
        let record = ArchiveRecord {
            received_at: Utc::now(),
            headers: BTreeMap::from([("x-slack-retry-num".into(), "1".into())]),
            body: Bytes::copy_from_slice(body),
        };
        let json = record.to_json().unwrap();
        serde_json::from_slice::<serde_json::Value>(&json).expect("valid JSON");
        let back = ArchiveRecord::from_json(&json).unwrap();
        assert_eq!(back.body, record.body, "body must be byte-identical");
        assert_eq!(back.header("x-slack-retry-num"), Some("1"));
        assert_eq!(
            back.received_at.timestamp_micros(),
            record.received_at.timestamp_micros()
        );
    }

    #[test]
    fn bodies_survive_byte_for_byte() {
        roundtrip(br#"{"a":"\u0000 \ud800 ok","b":[1,2]}"#);
        roundtrip("emoji 😀 and \"quotes\"\n\ttabs \u{0}".as_bytes());
        roundtrip(b"\xff\xfe not utf-8 \x00");
        roundtrip(b"");
    }

    #[test]
    fn foreign_documents_are_refused() {
        assert!(ArchiveRecord::from_json(b"{}").is_err());
        assert!(
            ArchiveRecord::from_json(br#"{"format":"other","received_at":"x","headers":{}}"#)
                .is_err()
        );
        assert!(ArchiveRecord::from_json(b"not json").is_err());
    }
}
