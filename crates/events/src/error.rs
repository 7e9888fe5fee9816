//! The one error type of this crate.

use std::fmt::Write as _;

/// Why bytes could not be turned into a [`MessageEvent`](crate::MessageEvent).
///
/// Every variant is a permanent failure for the bytes at hand: retrying the same bytes
/// gives the same error, so a consumer should send the record to its DLQ.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    /// The bytes do not start with the Avro single-object marker `C3 01` followed by
    /// an 8-byte fingerprint (too short, or another format such as JSON).
    #[error("not an Avro single-object encoded record (expected C3 01 and an 8-byte fingerprint)")]
    BadMagic,
    /// The record was written with a schema this build does not know. The fingerprint
    /// is the CRC-64-AVRO (Rabin) of the writer's canonical schema, as on the wire
    /// (little-endian).
    #[error("unknown writer schema fingerprint {} (not in schemas/history)", fingerprint_hex(.0))]
    UnknownFingerprint([u8; 8]),
    /// The Avro body could not be decoded with the writer's schema (truncated or
    /// corrupt), or could not be resolved against the current schema.
    #[error("avro: {0}")]
    Avro(#[from] apache_avro::Error),
    /// The body decoded but left bytes over: the record is corrupt.
    #[error("{0} bytes left over after the Avro body")]
    TrailingBytes(usize),
    /// Schema resolution of an older writer schema against the current one failed
    /// at the named field path.
    #[error("cannot resolve writer schema at {path}: {problem}")]
    Resolution {
        /// Where in the record, such as `MessageEvent.kind`.
        path: String,
        /// What did not fit.
        problem: String,
    },
    /// The decoded value does not match the Rust model at the named field path (a
    /// schema and model that drifted apart).
    #[error("record does not match the model at {path}: expected {expected}")]
    Model {
        /// Where in the record, such as `MessageEvent.author.kind`.
        path: String,
        /// What the model expected there.
        expected: &'static str,
    },
}

/// Lower-case hex of a fingerprint, in wire order.
pub(crate) fn fingerprint_hex(fingerprint: &[u8; 8]) -> String {
    let mut out = String::with_capacity(16);
    for byte in fingerprint {
        // Writing to a String cannot fail.
        let _ = write!(out, "{byte:02x}");
    }
    out
}
