//! Avro schema resolution, by name: a value written with one schema, read as another.
//!
//! apache-avro can resolve a value against a reader schema, but it picks the branch of
//! a union of records by trying the reader's records in order and taking the first
//! that the value's fields fit (`Value::Record` carries no record name), and a record
//! resolution ignores unknown fields and fills defaults. With our `kind` union that
//! turns a `ReactionRemoved` into a `ReactionAdded` and a `Deleted` into a `Posted`.
//! The Avro specification matches named types by name, so this module does the
//! resolution itself, driven by both schemas: the writer's union branch index names
//! the record, and a reader union branch is chosen by that name (or an alias of it).
//!
//! Rules (the specification's "Schema Resolution"): records match by unqualified name
//! or reader alias; reader fields are taken from the writer's field of the same name
//! (or a reader field alias), else from the reader field's default, else it fails;
//! writer fields the reader lacks are skipped; enums match by symbol, falling back to
//! the reader enum's default symbol; int, long and float promote to wider numbers;
//! string and bytes interchange; a writer union picks its branch, a reader union takes
//! the first branch that matches the writer's type exactly, else by promotion.

use std::iter;

use apache_avro::schema::{NamesRef, Schema};
use apache_avro::types::Value;
use serde_json::Value as Json;

use crate::error::EventsError;
use crate::path::Path;

/// Resolves values written with one schema to another, with the named types of both.
pub(crate) struct Resolver<'a> {
    /// Named types of the writer schema (for `Schema::Ref`).
    pub(crate) writer_names: &'a NamesRef<'a>,
    /// Named types of the reader schema (for `Schema::Ref`).
    pub(crate) reader_names: &'a NamesRef<'a>,
}

/// The type of a schema as far as union branch matching is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape<'a> {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    Array,
    Map,
    Named(&'a str),
    Unsupported,
}

/// A number as decoded, with the width it was written with.
#[derive(Debug, Clone, Copy)]
enum Num {
    Int(i32),
    Long(i64),
    Float(f32),
    Double(f64),
}

fn fail(path: Path<'_>, problem: impl Into<String>) -> EventsError {
    EventsError::Resolution {
        path: path.to_string(),
        problem: problem.into(),
    }
}

fn deref<'a>(
    schema: &'a Schema,
    names: &NamesRef<'a>,
    path: Path<'_>,
) -> Result<&'a Schema, EventsError> {
    match schema {
        Schema::Ref { name } => names
            .get(name)
            .copied()
            .ok_or_else(|| fail(path, format!("unknown named type {}", name.name()))),
        other => Ok(other),
    }
}

fn shape(schema: &Schema) -> Shape<'_> {
    match schema {
        Schema::Null => Shape::Null,
        Schema::Boolean => Shape::Boolean,
        Schema::Int | Schema::Date | Schema::TimeMillis => Shape::Int,
        Schema::Long
        | Schema::TimeMicros
        | Schema::TimestampMillis
        | Schema::TimestampMicros
        | Schema::TimestampNanos
        | Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros
        | Schema::LocalTimestampNanos => Shape::Long,
        Schema::Float => Shape::Float,
        Schema::Double => Shape::Double,
        Schema::Bytes => Shape::Bytes,
        Schema::String => Shape::String,
        Schema::Array(_) => Shape::Array,
        Schema::Map(_) => Shape::Map,
        Schema::Record(_) | Schema::Enum(_) | Schema::Fixed(_) => match schema.name() {
            Some(name) => Shape::Named(name.name()),
            None => Shape::Unsupported,
        },
        Schema::Ref { name } => Shape::Named(name.name()),
        _ => Shape::Unsupported,
    }
}

/// Whether a reader named type accepts the writer's name: same unqualified name, or
/// the writer's name among the reader's aliases.
fn name_matches(writer_name: &str, reader: &Schema) -> bool {
    let Some(reader_name) = reader.name() else {
        return false;
    };
    reader_name.name() == writer_name
        || reader
            .aliases()
            .is_some_and(|aliases| aliases.iter().any(|alias| alias.name() == writer_name))
}

fn exact(writer: Shape<'_>, reader: &Schema) -> bool {
    match writer {
        Shape::Named(name) => name_matches(name, reader),
        Shape::Unsupported => false,
        other => other == shape(reader),
    }
}

fn promotable(writer: Shape<'_>, reader: Shape<'_>) -> bool {
    matches!(
        (writer, reader),
        (Shape::Int, Shape::Long | Shape::Float | Shape::Double)
            | (Shape::Long, Shape::Float | Shape::Double)
            | (Shape::Float, Shape::Double)
            | (Shape::String, Shape::Bytes)
            | (Shape::Bytes, Shape::String)
    )
}

fn number(value: &Value) -> Option<Num> {
    Some(match *value {
        Value::Int(i) | Value::Date(i) | Value::TimeMillis(i) => Num::Int(i),
        Value::Long(l)
        | Value::TimeMicros(l)
        | Value::TimestampMillis(l)
        | Value::TimestampMicros(l)
        | Value::TimestampNanos(l)
        | Value::LocalTimestampMillis(l)
        | Value::LocalTimestampMicros(l)
        | Value::LocalTimestampNanos(l) => Num::Long(l),
        Value::Float(f) => Num::Float(f),
        Value::Double(d) => Num::Double(d),
        _ => return None,
    })
}

/// A long-based value in the reader's (logical) type.
fn long_as(reader: &Schema, l: i64) -> Option<Value> {
    Some(match reader {
        Schema::Long => Value::Long(l),
        Schema::TimeMicros => Value::TimeMicros(l),
        Schema::TimestampMillis => Value::TimestampMillis(l),
        Schema::TimestampMicros => Value::TimestampMicros(l),
        Schema::TimestampNanos => Value::TimestampNanos(l),
        Schema::LocalTimestampMillis => Value::LocalTimestampMillis(l),
        Schema::LocalTimestampMicros => Value::LocalTimestampMicros(l),
        Schema::LocalTimestampNanos => Value::LocalTimestampNanos(l),
        _ => return None,
    })
}

/// A number in the reader's type, if the reader's type is the same width or wider.
#[allow(clippy::cast_precision_loss)] // the specification's promotions lose precision
fn number_as(num: Num, reader: &Schema) -> Option<Value> {
    match (num, shape(reader)) {
        (Num::Int(i), Shape::Int) => Some(match reader {
            Schema::Date => Value::Date(i),
            Schema::TimeMillis => Value::TimeMillis(i),
            _ => Value::Int(i),
        }),
        (Num::Int(i), Shape::Long) => long_as(reader, i64::from(i)),
        (Num::Long(l), Shape::Long) => long_as(reader, l),
        (Num::Int(i), Shape::Float) => Some(Value::Float(i as f32)),
        (Num::Int(i), Shape::Double) => Some(Value::Double(f64::from(i))),
        (Num::Long(l), Shape::Float) => Some(Value::Float(l as f32)),
        (Num::Long(l), Shape::Double) => Some(Value::Double(l as f64)),
        (Num::Float(f), Shape::Float) => Some(Value::Float(f)),
        (Num::Float(f), Shape::Double) => Some(Value::Double(f64::from(f))),
        (Num::Double(d), Shape::Double) => Some(Value::Double(d)),
        _ => None,
    }
}

impl<'a> Resolver<'a> {
    /// Resolves `value`, decoded with `writer`, to the shape of `reader`.
    pub(crate) fn resolve(
        &self,
        value: Value,
        writer: &'a Schema,
        reader: &'a Schema,
        path: Path<'_>,
    ) -> Result<Value, EventsError> {
        let writer = deref(writer, self.writer_names, path)?;
        let reader = deref(reader, self.reader_names, path)?;

        // A writer union: the value says which branch was written.
        if let Schema::Union(union) = writer {
            let Value::Union(index, inner) = value else {
                return Err(fail(path, "writer union without a branch"));
            };
            let branch = usize::try_from(index)
                .ok()
                .and_then(|i| union.variants().get(i))
                .ok_or_else(|| fail(path, format!("writer union has no branch {index}")))?;
            return self.resolve(*inner, branch, reader, path);
        }

        // A reader union: pick the first branch matching the writer's type.
        if let Schema::Union(union) = reader {
            let writer_shape = shape(writer);
            let variants = union.variants();
            let deref_reader = |s: &'a Schema| deref(s, self.reader_names, path);
            let mut chosen = None;
            for (i, variant) in variants.iter().enumerate() {
                if exact(writer_shape, deref_reader(variant)?) {
                    chosen = Some(i);
                    break;
                }
            }
            if chosen.is_none() {
                for (i, variant) in variants.iter().enumerate() {
                    if promotable(writer_shape, shape(deref_reader(variant)?)) {
                        chosen = Some(i);
                        break;
                    }
                }
            }
            let Some(i) = chosen else {
                return Err(fail(
                    path,
                    format!("no branch of the reader union accepts the writer's {writer_shape:?}"),
                ));
            };
            let resolved = self.resolve(value, writer, &variants[i], path)?;
            let index = u32::try_from(i).map_err(|_| fail(path, "union too large"))?;
            return Ok(Value::Union(index, Box::new(resolved)));
        }

        match (writer, reader) {
            (Schema::Null, Schema::Null) => match value {
                Value::Null => Ok(Value::Null),
                _ => Err(fail(path, "expected null")),
            },
            (Schema::Boolean, Schema::Boolean) => match value {
                Value::Boolean(b) => Ok(Value::Boolean(b)),
                _ => Err(fail(path, "expected a boolean")),
            },
            (Schema::String | Schema::Bytes, Schema::String) => match value {
                Value::String(s) => Ok(Value::String(s)),
                Value::Bytes(b) => String::from_utf8(b)
                    .map(Value::String)
                    .map_err(|_| fail(path, "bytes are not UTF-8")),
                _ => Err(fail(path, "expected a string")),
            },
            (Schema::String | Schema::Bytes, Schema::Bytes) => match value {
                Value::String(s) => Ok(Value::Bytes(s.into_bytes())),
                Value::Bytes(b) => Ok(Value::Bytes(b)),
                _ => Err(fail(path, "expected bytes")),
            },
            (Schema::Enum(w), Schema::Enum(r)) if name_matches(w.name.name(), reader) => {
                let symbol = match value {
                    Value::Enum(_, symbol) => symbol,
                    _ => return Err(fail(path, "expected an enum symbol")),
                };
                if let Some(i) = r.symbols.iter().position(|s| *s == symbol) {
                    return enum_value(i, symbol, path);
                }
                match &r.default {
                    Some(default) => match r.symbols.iter().position(|s| s == default) {
                        Some(i) => enum_value(i, default.clone(), path),
                        None => Err(fail(path, "reader enum default is not a symbol")),
                    },
                    None => Err(fail(
                        path,
                        format!("symbol {symbol} unknown to the reader, which has no default"),
                    )),
                }
            }
            (Schema::Fixed(w), Schema::Fixed(r))
                if name_matches(w.name.name(), reader) && w.size == r.size =>
            {
                match value {
                    Value::Fixed(size, bytes) => Ok(Value::Fixed(size, bytes)),
                    _ => Err(fail(path, "expected fixed bytes")),
                }
            }
            (Schema::Array(w), Schema::Array(r)) => match value {
                Value::Array(items) => items
                    .into_iter()
                    .enumerate()
                    .map(|(i, item)| self.resolve(item, &w.items, &r.items, path.index(i)))
                    .collect::<Result<_, _>>()
                    .map(Value::Array),
                _ => Err(fail(path, "expected an array")),
            },
            (Schema::Map(w), Schema::Map(r)) => match value {
                Value::Map(entries) => entries
                    .into_iter()
                    .map(|(key, item)| {
                        let item = self.resolve(item, &w.types, &r.types, path.field(&key))?;
                        Ok((key, item))
                    })
                    .collect::<Result<_, EventsError>>()
                    .map(Value::Map),
                _ => Err(fail(path, "expected a map")),
            },
            (Schema::Record(w), Schema::Record(r)) if name_matches(w.name.name(), reader) => {
                let Value::Record(written) = value else {
                    return Err(fail(path, "expected a record"));
                };
                // Decoded records hold the writer's fields in the writer's order.
                let mut written: Vec<Option<Value>> =
                    written.into_iter().map(|(_, v)| Some(v)).collect();
                let mut fields = Vec::with_capacity(r.fields.len());
                for field in &r.fields {
                    let field_path = path.field(&field.name);
                    let source = iter::once(&field.name)
                        .chain(field.aliases.iter())
                        .find_map(|name| w.fields.iter().position(|wf| wf.name == *name));
                    let value = match source {
                        Some(i) => {
                            let item = written
                                .get_mut(i)
                                .and_then(Option::take)
                                .ok_or_else(|| fail(field_path, "writer field read twice"))?;
                            self.resolve(item, &w.fields[i].schema, &field.schema, field_path)?
                        }
                        None => match &field.default {
                            Some(default) => default_value(
                                default,
                                &field.schema,
                                self.reader_names,
                                field_path,
                            )?,
                            None => {
                                return Err(fail(
                                    field_path,
                                    "the writer has no such field and the reader field has no default",
                                ));
                            }
                        },
                    };
                    fields.push((field.name.clone(), value));
                }
                Ok(Value::Record(fields))
            }
            _ => match number(&value) {
                Some(num) => number_as(num, reader).ok_or_else(|| {
                    fail(
                        path,
                        format!(
                            "writer {:?} cannot be read as {:?}",
                            shape(writer),
                            shape(reader)
                        ),
                    )
                }),
                None => Err(fail(
                    path,
                    format!(
                        "writer {:?} cannot be read as {:?}",
                        shape(writer),
                        shape(reader)
                    ),
                )),
            },
        }
    }
}

fn enum_value(index: usize, symbol: String, path: Path<'_>) -> Result<Value, EventsError> {
    let index = u32::try_from(index).map_err(|_| fail(path, "enum too large"))?;
    Ok(Value::Enum(index, symbol))
}

/// The value of a reader field's JSON `default`, in the field's type. A union's
/// default belongs to its first branch.
pub(crate) fn default_value<'a>(
    default: &Json,
    schema: &'a Schema,
    names: &NamesRef<'a>,
    path: Path<'_>,
) -> Result<Value, EventsError> {
    let schema = deref(schema, names, path)?;
    let bad = || {
        fail(
            path,
            format!("default {default} does not fit {:?}", shape(schema)),
        )
    };
    Ok(match schema {
        Schema::Union(union) => {
            let first = union.variants().first().ok_or_else(bad)?;
            Value::Union(0, Box::new(default_value(default, first, names, path)?))
        }
        Schema::Null if default.is_null() => Value::Null,
        Schema::Boolean => Value::Boolean(default.as_bool().ok_or_else(bad)?),
        Schema::String => Value::String(default.as_str().ok_or_else(bad)?.to_owned()),
        Schema::Bytes => Value::Bytes(
            // JSON defaults of bytes are strings of code points 0-255.
            default
                .as_str()
                .ok_or_else(bad)?
                .chars()
                .map(|c| u8::try_from(u32::from(c)).map_err(|_| bad()))
                .collect::<Result<_, _>>()?,
        ),
        #[allow(clippy::cast_possible_truncation)] // a float default written as JSON
        Schema::Float => Value::Float(default.as_f64().ok_or_else(bad)? as f32),
        Schema::Double => Value::Double(default.as_f64().ok_or_else(bad)?),
        Schema::Int | Schema::Date | Schema::TimeMillis => {
            let i = default
                .as_i64()
                .and_then(|i| i32::try_from(i).ok())
                .ok_or_else(bad)?;
            number_as(Num::Int(i), schema).ok_or_else(bad)?
        }
        Schema::Enum(e) => {
            let symbol = default.as_str().ok_or_else(bad)?;
            let i = e.symbols.iter().position(|s| s == symbol).ok_or_else(bad)?;
            enum_value(i, symbol.to_owned(), path)?
        }
        Schema::Array(a) => Value::Array(
            default
                .as_array()
                .ok_or_else(bad)?
                .iter()
                .enumerate()
                .map(|(i, item)| default_value(item, &a.items, names, path.index(i)))
                .collect::<Result<_, _>>()?,
        ),
        Schema::Map(m) => Value::Map(
            default
                .as_object()
                .ok_or_else(bad)?
                .iter()
                .map(|(k, v)| Ok((k.clone(), default_value(v, &m.types, names, path.field(k))?)))
                .collect::<Result<_, EventsError>>()?,
        ),
        Schema::Record(r) => {
            let object = default.as_object().ok_or_else(bad)?;
            let mut fields = Vec::with_capacity(r.fields.len());
            for field in &r.fields {
                let field_path = path.field(&field.name);
                let json = object
                    .get(&field.name)
                    .or(field.default.as_ref())
                    .ok_or_else(|| fail(field_path, "no value in the default and no default"))?;
                fields.push((
                    field.name.clone(),
                    default_value(json, &field.schema, names, field_path)?,
                ));
            }
            Value::Record(fields)
        }
        other if shape(other) == Shape::Long => {
            number_as(Num::Long(default.as_i64().ok_or_else(bad)?), other).ok_or_else(bad)?
        }
        _ => return Err(bad()),
    })
}
