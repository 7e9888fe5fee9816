//! Schema compatibility: every schema in `schemas/` reads data written with every
//! version of it in `schemas/history/<name>/`.
//!
//! For each pair the test (1) asks apache-avro's compatibility checker, which must say
//! `Full`, and (2) writes representative data with the old schema (one datum per union
//! branch and enum symbol, so every branch is exercised) and reads it with the current
//! schema through this crate's name-based resolution. For the message schema it also
//! decodes those records through [`decode_message`], the way consumers will.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path as FsPath, PathBuf};

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema::{NamesRef, ResolvedSchema, Schema};
use apache_avro::schema_compatibility::{Compatibility, SchemaCompatibility};
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;

use super::samples::{full_event, kinds};
use crate::model::Kind;
use crate::path::Path;
use crate::registry::{fingerprint, MAGIC, MESSAGES_HISTORY};
use crate::resolve::Resolver;
use crate::{decode_message, encode_message, EventsError, MESSAGES_SCHEMA_JSON};

fn schemas_dir() -> PathBuf {
    FsPath::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas")
}

fn parse(path: &FsPath) -> Schema {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Schema::parse_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Widest union or enum in a schema: how many data make every branch appear.
fn width(schema: &Schema) -> usize {
    match schema {
        Schema::Union(u) => u
            .variants()
            .iter()
            .map(width)
            .max()
            .unwrap_or(1)
            .max(u.variants().len()),
        Schema::Enum(e) => e.symbols.len(),
        Schema::Record(r) => r.fields.iter().map(|f| width(&f.schema)).max().unwrap_or(1),
        Schema::Array(a) => width(&a.items),
        Schema::Map(m) => width(&m.types),
        _ => 1,
    }
}

/// A datum of `schema`; `variant` picks the union branch and enum symbol (the last one
/// when there are fewer), so that variants `0..width` cover every branch and symbol.
fn sample(schema: &Schema, names: &NamesRef<'_>, variant: usize, depth: usize) -> Value {
    let pick = |n: usize| {
        if depth > 16 {
            0
        } else {
            variant.min(n.saturating_sub(1))
        }
    };
    match schema {
        Schema::Ref { name } => sample(names[name], names, variant, depth + 1),
        Schema::Null => Value::Null,
        Schema::Boolean => Value::Boolean(variant % 2 == 1),
        Schema::Int => Value::Int(7 + variant as i32),
        Schema::Long => Value::Long(-3 - variant as i64),
        Schema::Float => Value::Float(0.5),
        Schema::Double => Value::Double(0.25),
        Schema::Bytes => Value::Bytes(vec![0, 0xff, variant as u8]),
        Schema::String => Value::String(format!("v{variant} 😀\u{0} é")),
        Schema::Date => Value::Date(19_000),
        Schema::TimeMillis => Value::TimeMillis(1_000),
        Schema::TimeMicros => Value::TimeMicros(1_000_000),
        Schema::TimestampMillis => Value::TimestampMillis(1_700_000_000_000),
        Schema::TimestampMicros => Value::TimestampMicros(1_700_000_000_000_000),
        Schema::Enum(e) => {
            let i = pick(e.symbols.len());
            Value::Enum(i as u32, e.symbols[i].clone())
        }
        Schema::Fixed(f) => Value::Fixed(f.size, vec![variant as u8; f.size]),
        Schema::Array(a) => Value::Array(vec![
            sample(&a.items, names, variant, depth + 1),
            sample(&a.items, names, variant, depth + 1),
        ]),
        Schema::Map(m) => Value::Map(
            [("k".to_owned(), sample(&m.types, names, variant, depth + 1))]
                .into_iter()
                .collect(),
        ),
        Schema::Union(u) => {
            let i = pick(u.variants().len());
            Value::Union(
                i as u32,
                Box::new(sample(&u.variants()[i], names, variant, depth + 1)),
            )
        }
        Schema::Record(r) => Value::Record(
            r.fields
                .iter()
                .map(|f| (f.name.clone(), sample(&f.schema, names, variant, depth + 1)))
                .collect(),
        ),
        other => panic!("the compatibility test cannot make a datum of {other:?}"),
    }
}

/// Checks that `reader` reads everything `writer` can write; returns how many data were
/// written and read.
fn check_can_read(writer: &Schema, reader: &Schema) -> Result<Vec<Vec<u8>>, String> {
    match SchemaCompatibility::can_read(writer, reader) {
        Ok(Compatibility::Full) => {}
        Ok(Compatibility::Partial) => return Err("only partially compatible".to_owned()),
        Err(e) => return Err(format!("incompatible: {e}")),
    }
    let writer_names = ResolvedSchema::try_from(writer).map_err(|e| e.to_string())?;
    let reader_names = ResolvedSchema::try_from(reader).map_err(|e| e.to_string())?;
    let datum_writer = GenericDatumWriter::builder(writer)
        .build()
        .map_err(|e| e.to_string())?;
    let datum_reader = GenericDatumReader::builder(writer)
        .build()
        .map_err(|e| e.to_string())?;
    let resolver = Resolver {
        writer_names: writer_names.get_names(),
        reader_names: reader_names.get_names(),
    };
    let mut bodies = Vec::new();
    for variant in 0..width(writer) {
        let datum = sample(writer, writer_names.get_names(), variant, 0);
        let mut body = Vec::new();
        datum_writer
            .write_value_ref(&mut body, &datum)
            .map_err(|e| format!("datum {variant} does not fit the writer schema: {e}"))?;
        let decoded = datum_reader
            .read_value(&mut &body[..])
            .map_err(|e| e.to_string())?;
        resolver
            .resolve(decoded, writer, reader, Path::Root("datum"))
            .map_err(|e| format!("datum {variant}: {e}"))?;
        bodies.push(body);
    }
    Ok(bodies)
}

/// `schemas/*.avsc` with their history files, oldest first.
fn schemas_with_history() -> BTreeMap<String, (PathBuf, Vec<PathBuf>)> {
    let dir = schemas_dir();
    let mut out = BTreeMap::new();
    for entry in fs::read_dir(&dir).expect("schemas/ exists") {
        let path = entry.expect("readable").path();
        if path.extension().is_some_and(|e| e == "avsc") {
            let name = path
                .file_stem()
                .expect("stem")
                .to_string_lossy()
                .into_owned();
            let history_dir = dir.join("history").join(&name);
            let mut history: Vec<PathBuf> = fs::read_dir(&history_dir)
                .unwrap_or_else(|e| {
                    panic!(
                        "{}: {e} (every schema keeps its history)",
                        history_dir.display()
                    )
                })
                .map(|e| e.expect("readable").path())
                .filter(|p| p.extension().is_some_and(|e| e == "avsc"))
                .collect();
            history.sort();
            out.insert(name, (path, history));
        }
    }
    out
}

#[test]
fn every_schema_reads_data_written_with_every_historical_version() {
    let all = schemas_with_history();
    assert!(
        all.contains_key("slack.messages.v1"),
        "schemas: {:?}",
        all.keys()
    );
    for (name, (current_path, history)) in &all {
        let current = parse(current_path);
        assert!(
            !history.is_empty(),
            "{name} has no history: copy it to schemas/history/{name}/0001.avsc"
        );
        for (i, path) in history.iter().enumerate() {
            let file = path.file_name().expect("name").to_string_lossy();
            assert_eq!(
                file,
                format!("{:04}.avsc", i + 1),
                "{name}: history files are 0001.avsc, 0002.avsc, ..."
            );
            let old = parse(path);
            let bodies = check_can_read(&old, &current).unwrap_or_else(|e| {
                panic!("{name}: the current schema cannot read data written with {file}: {e}")
            });
            println!(
                "{name}: current schema reads {} data written with history {file} (fingerprint {}): ok",
                bodies.len(),
                crate::error::fingerprint_hex(&fingerprint(&old)),
            );
            if name == "slack.messages.v1" {
                let fp = fingerprint(&old);
                for body in &bodies {
                    let mut bytes = MAGIC.to_vec();
                    bytes.extend_from_slice(&fp);
                    bytes.extend_from_slice(body);
                    decode_message(&bytes).unwrap_or_else(|e| {
                        panic!("decode_message of data written with {file}: {e}")
                    });
                }
                println!(
                    "{name}: decode_message reads those {} records too",
                    bodies.len()
                );
            }
        }
        // Every committed version must be in history, so that the data it wrote stays
        // decodable after the next change.
        let latest = parse(history.last().expect("not empty"));
        assert_eq!(
            latest.canonical_form(),
            current.canonical_form(),
            "{name} changed: copy it to schemas/history/{name}/{:04}.avsc (and register it in the events crate)",
            history.len() + 1
        );
    }
}

#[test]
fn the_codec_knows_every_history_file() {
    let dir = schemas_dir().join("history/slack.messages.v1");
    let mut files: Vec<String> = fs::read_dir(&dir)
        .expect("history exists")
        .map(|e| {
            e.expect("readable")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| n.ends_with(".avsc"))
        .collect();
    files.sort();
    let known: Vec<&str> = MESSAGES_HISTORY.iter().map(|(f, _)| *f).collect();
    assert_eq!(
        known,
        files,
        "registry::MESSAGES_HISTORY must list every file of {}",
        dir.display()
    );
    for (file, text) in MESSAGES_HISTORY {
        assert_eq!(
            *text,
            fs::read_to_string(dir.join(file)).expect("readable"),
            "{file}"
        );
    }
    let current =
        fs::read_to_string(schemas_dir().join("slack.messages.v1.avsc")).expect("readable");
    assert_eq!(MESSAGES_SCHEMA_JSON, current);
}

/// The current message schema's JSON, changed by `edit`.
fn edited_schema(edit: impl FnOnce(&mut serde_json::Value)) -> Schema {
    let mut json: serde_json::Value = serde_json::from_str(MESSAGES_SCHEMA_JSON).expect("json");
    edit(&mut json);
    Schema::parse_str(&json.to_string()).expect("edited schema parses")
}

fn fields(json: &mut serde_json::Value) -> &mut Vec<serde_json::Value> {
    json["fields"].as_array_mut().expect("fields")
}

#[test]
fn the_check_rejects_a_new_field_without_default() {
    let current = Schema::parse_str(MESSAGES_SCHEMA_JSON).expect("parses");
    let incompatible = edited_schema(|json| {
        fields(json)
            .push(serde_json::json!({"name": "priority", "type": "string", "doc": "no default"}));
    });
    let err = check_can_read(&current, &incompatible)
        .expect_err("a new required field cannot read old data");
    println!("rejected as expected: {err}");

    // The resolution alone fails too, naming the field.
    let current_names = ResolvedSchema::try_from(&current).expect("names");
    let new_names = ResolvedSchema::try_from(&incompatible).expect("names");
    let body = encode_message(&full_event(kinds(true).remove(0))).expect("encodes");
    let value = GenericDatumReader::builder(&current)
        .build()
        .expect("reader")
        .read_value(&mut &body[10..])
        .expect("decodes");
    let resolved = Resolver {
        writer_names: current_names.get_names(),
        reader_names: new_names.get_names(),
    }
    .resolve(value, &current, &incompatible, Path::Root("MessageEvent"));
    match resolved {
        Err(EventsError::Resolution { path, .. }) => assert_eq!(path, "MessageEvent.priority"),
        other => panic!("expected a resolution error, got {other:?}"),
    }
}

#[test]
fn the_check_rejects_a_removed_kind_and_a_type_change() {
    let current = Schema::parse_str(MESSAGES_SCHEMA_JSON).expect("parses");
    let without_degraded = edited_schema(|json| {
        let kind = fields(json)
            .iter_mut()
            .find(|f| f["name"] == "kind")
            .expect("kind");
        kind["type"].as_array_mut().expect("union").pop();
    });
    assert!(check_can_read(&current, &without_degraded).is_err());
    let event_id_long = edited_schema(|json| {
        fields(json)[0]["type"] = "long".into();
    });
    assert!(check_can_read(&current, &event_id_long).is_err());
}

#[test]
fn compatible_evolution_passes_both_ways() {
    let current = Schema::parse_str(MESSAGES_SCHEMA_JSON).expect("parses");
    // A plausible v2: a new optional field, a new author kind, a new kind record at
    // the end of the union.
    let next = edited_schema(|json| {
        fields(json).push(serde_json::json!({
            "name": "priority", "type": ["null", "string"], "default": null, "doc": "new"
        }));
        let kind = fields(json)
            .iter_mut()
            .find(|f| f["name"] == "kind")
            .expect("kind");
        kind["type"]
            .as_array_mut()
            .expect("union")
            .push(serde_json::json!({
                "type": "record", "name": "Pinned", "doc": "new", "fields": []
            }));
        let author = fields(json)
            .iter_mut()
            .find(|f| f["name"] == "author")
            .expect("author");
        let symbols = author["type"][1]["fields"][2]["type"]["symbols"]
            .as_array_mut()
            .expect("symbols");
        symbols.insert(3, "GUEST".into());
    });
    // New readers read old data.
    let n = check_can_read(&current, &next).expect("v2 reads v1").len();
    println!("a v2 with a new optional field, enum symbol and kind reads all {n} v1 data");
    // Old readers read new data, except the new kind record (a union has no default).
    assert!(matches!(
        SchemaCompatibility::can_read(&next, &current),
        Ok(Compatibility::Partial) | Err(_)
    ));

    // An unknown enum symbol becomes the reader enum's default; a union branch is
    // chosen by name even where the fields would fit an earlier branch.
    let next_names = ResolvedSchema::try_from(&next).expect("names");
    let current_names = ResolvedSchema::try_from(&current).expect("names");
    let resolver = Resolver {
        writer_names: next_names.get_names(),
        reader_names: current_names.get_names(),
    };
    let mut value = super::codec::message_to_value(&full_event(kinds(true).remove(4)));
    let Value::Record(fields) = &mut value else {
        unreachable!()
    };
    fields.push((
        "priority".to_owned(),
        Value::Union(1, Box::new(Value::String("p1".into()))),
    ));
    if let Value::Union(_, author) = &mut fields[6].1 {
        if let Value::Record(author) = author.as_mut() {
            author[2].1 = Value::Enum(3, "GUEST".to_owned());
        }
    }
    let mut body = Vec::new();
    GenericDatumWriter::builder(&next)
        .build()
        .expect("writer")
        .write_value_ref(&mut body, &value)
        .expect("fits v2");
    let decoded = GenericDatumReader::builder(&next)
        .build()
        .expect("reader")
        .read_value(&mut &body[..])
        .expect("decodes");
    let resolved = resolver
        .resolve(decoded, &next, &current, Path::Root("MessageEvent"))
        .expect("resolves");
    let event = crate::decode::message_from_value(resolved).expect("fits the model");
    assert_eq!(
        event.author.expect("author").kind,
        crate::AuthorKind::Unknown
    );
    assert!(
        matches!(event.kind, Kind::ReactionRemoved(_)),
        "{:?}",
        event.kind
    );
}

#[test]
fn union_branches_resolve_by_name_not_by_shape() {
    // A reader that lists the kind records in another order: every record must land
    // in the branch of its own name, although several share their fields.
    let current = Schema::parse_str(MESSAGES_SCHEMA_JSON).expect("parses");
    let reordered = edited_schema(|json| {
        let kind = fields(json)
            .iter_mut()
            .find(|f| f["name"] == "kind")
            .expect("kind");
        kind["type"].as_array_mut().expect("union").reverse();
    });
    let current_names = ResolvedSchema::try_from(&current).expect("names");
    let reordered_names = ResolvedSchema::try_from(&reordered).expect("names");
    let resolver = Resolver {
        writer_names: current_names.get_names(),
        reader_names: reordered_names.get_names(),
    };
    let reader = GenericDatumReader::builder(&current)
        .build()
        .expect("reader");
    for kind in kinds(false) {
        let name = kind.name();
        let body = encode_message(&full_event(kind)).expect("encodes");
        let value = reader.read_value(&mut &body[10..]).expect("decodes");
        let resolved = resolver
            .resolve(value, &current, &reordered, Path::Root("MessageEvent"))
            .expect("resolves");
        let Value::Record(fields) = resolved else {
            unreachable!()
        };
        let Value::Union(i, _) = &fields.last().expect("kind").1 else {
            unreachable!()
        };
        let Schema::Record(r) = &reordered else {
            unreachable!()
        };
        let Schema::Union(u) = &r.fields.last().expect("kind").schema else {
            unreachable!()
        };
        let branch = u.variants()[*i as usize]
            .name()
            .expect("named")
            .name()
            .to_owned();
        let expected: String = name
            .split('_')
            .map(|w| {
                let mut c = w.chars();
                c.next()
                    .map(|f| f.to_uppercase().chain(c).collect::<String>())
                    .unwrap_or_default()
            })
            .collect();
        assert_eq!(branch, expected);
    }
}
