//! The schemas this build knows: the current one and every committed version.
//!
//! Parsed once, on first use. A record's 8-byte fingerprint picks its writer schema;
//! data written with an older version is resolved to the current schema by name
//! ([`crate::resolve`]).

use std::io::{self, Read};
use std::sync::LazyLock;

use apache_avro::rabin::Rabin;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema::ResolvedSchema;
use apache_avro::types::Value;
use apache_avro::Schema;

use crate::error::EventsError;
use crate::path::Path;
use crate::resolve::Resolver;
use crate::MESSAGES_SCHEMA_JSON;

/// The Avro single-object marker.
pub(crate) const MAGIC: [u8; 2] = [0xC3, 0x01];

/// Marker plus fingerprint.
pub(crate) const HEADER_LEN: usize = 10;

/// Every committed version of `slack.messages.v1`, oldest first: the file name under
/// `schemas/history/slack.messages.v1/` and its text. A new version of the schema adds
/// a line here (a test checks that this list and the folder agree).
pub(crate) const MESSAGES_HISTORY: &[(&str, &str)] = &[(
    "0001.avsc",
    include_str!("../../../schemas/history/slack.messages.v1/0001.avsc"),
)];

/// One parsed schema.
pub(crate) struct Known {
    /// Where it came from, for messages: `slack.messages.v1.avsc` or
    /// `history/slack.messages.v1/0001.avsc`.
    pub(crate) label: String,
    /// CRC-64-AVRO of the canonical form, as written on the wire.
    pub(crate) fingerprint: [u8; 8],
    /// The schema.
    pub(crate) schema: Schema,
}

/// Every known schema of the message topic; index 0 is the current one. Versions
/// whose canonical form equals a later one's appear once.
pub(crate) static SCHEMAS: LazyLock<Vec<Known>> = LazyLock::new(|| {
    let mut known = vec![parse(
        "slack.messages.v1.avsc".to_owned(),
        MESSAGES_SCHEMA_JSON,
    )];
    for (file, text) in MESSAGES_HISTORY.iter().rev() {
        let entry = parse(format!("history/slack.messages.v1/{file}"), text);
        if known.iter().all(|k| k.fingerprint != entry.fingerprint) {
            known.push(entry);
        }
    }
    known
});

pub(crate) fn parse(label: String, text: &str) -> Known {
    // The texts are compiled in and parsed by the crate's tests: a failure here is a
    // broken build, not a runtime condition.
    #[allow(clippy::panic)]
    let schema = match Schema::parse_str(text) {
        Ok(schema) => schema,
        Err(e) => panic!("embedded Avro schema {label} does not parse: {e}"),
    };
    Known {
        label,
        fingerprint: fingerprint(&schema),
        schema,
    }
}

/// The CRC-64-AVRO (Rabin) fingerprint of a schema's canonical form, little-endian.
pub(crate) fn fingerprint(schema: &Schema) -> [u8; 8] {
    let bytes = schema.fingerprint::<Rabin>().bytes;
    let mut out = [0u8; 8];
    out.copy_from_slice(&bytes[..8]);
    out
}

/// A known writer schema, ready to decode.
pub(crate) struct Decoder {
    pub(crate) known: &'static Known,
    names: ResolvedSchema<'static>,
    reader: GenericDatumReader<'static>,
}

/// Decoders for [`SCHEMAS`], same order.
static DECODERS: LazyLock<Vec<Decoder>> =
    LazyLock::new(|| SCHEMAS.iter().map(Decoder::new).collect());

/// The current message schema's fingerprint.
pub(crate) fn current_fingerprint() -> [u8; 8] {
    SCHEMAS[0].fingerprint
}

/// Splits single-object bytes into their writer's decoder and the Avro body.
pub(crate) fn split(bytes: &[u8]) -> Result<(&'static Decoder, &[u8]), EventsError> {
    if bytes.len() < HEADER_LEN || bytes[..2] != MAGIC {
        return Err(EventsError::BadMagic);
    }
    split_among(&DECODERS, bytes)
}

/// Splits single-object bytes into their writer's decoder among `decoders` (of one
/// topic's schemas) and the Avro body.
pub(crate) fn split_among<'d, 'b>(
    decoders: &'d [Decoder],
    bytes: &'b [u8],
) -> Result<(&'d Decoder, &'b [u8]), EventsError> {
    if bytes.len() < HEADER_LEN || bytes[..2] != MAGIC {
        return Err(EventsError::BadMagic);
    }
    let mut fingerprint = [0u8; 8];
    fingerprint.copy_from_slice(&bytes[2..HEADER_LEN]);
    let decoder = decoders
        .iter()
        .find(|d| d.known.fingerprint == fingerprint)
        .ok_or(EventsError::UnknownFingerprint(fingerprint))?;
    Ok((decoder, &bytes[HEADER_LEN..]))
}

impl Decoder {
    /// The decoder of a known schema.
    pub(crate) fn new(known: &'static Known) -> Decoder {
        #[allow(clippy::panic)]
        let (names, reader) = match (
            ResolvedSchema::try_from(&known.schema),
            GenericDatumReader::builder(&known.schema).build(),
        ) {
            (Ok(names), Ok(reader)) => (names, reader),
            (Err(e), _) | (_, Err(e)) => {
                panic!("embedded Avro schema {} does not resolve: {e}", known.label)
            }
        };
        Decoder {
            known,
            names,
            reader,
        }
    }

    /// Decodes an Avro body written with this schema and resolves it to the current
    /// schema.
    pub(crate) fn read_current(&'static self, body: &[u8]) -> Result<Value, EventsError> {
        self.read_as(body, &DECODERS[0], "MessageEvent")
    }

    /// Decodes an Avro body written with this schema and resolves it to `current`'s
    /// schema (by name; `root` names the record in errors).
    pub(crate) fn read_as(
        &self,
        body: &[u8],
        current: &Decoder,
        root: &str,
    ) -> Result<Value, EventsError> {
        let value = self.read_own(body)?;
        if std::ptr::eq(self, current) || self.known.fingerprint == current.known.fingerprint {
            return Ok(value);
        }
        Resolver {
            writer_names: self.names.get_names(),
            reader_names: current.names.get_names(),
        }
        .resolve(
            value,
            &self.known.schema,
            &current.known.schema,
            Path::Root(root),
        )
    }

    /// Decodes an Avro body with this schema alone (no resolution).
    pub(crate) fn read_own(&self, body: &[u8]) -> Result<Value, EventsError> {
        let mut rest = Strict(body);
        let value = self.reader.read_value(&mut rest)?;
        if rest.0.is_empty() {
            Ok(value)
        } else {
            Err(EventsError::TrailingBytes(rest.0.len()))
        }
    }
}

/// A byte slice whose end is an error rather than an end of file.
///
/// apache-avro reads a union branch, a string or a boolean that meets the end of the
/// input as null (a leniency for old data), so a truncated record would decode, with
/// its last fields silently null. A datum must be complete: reading past its end is a
/// plain I/O error here, which the decoder reports.
pub(crate) struct Strict<'a>(pub(crate) &'a [u8]);

impl Read for Strict<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.0.is_empty() && !buf.is_empty() {
            return Err(io::Error::other(
                "the record ends before its Avro body does",
            ));
        }
        self.0.read(buf)
    }
}
