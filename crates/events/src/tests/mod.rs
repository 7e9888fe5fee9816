//! The crate's tests: the codec (roundtrips, golden bytes, typed errors, agreement with
//! apache-avro) and the schema compatibility check over `schemas/history`.

mod codec;
mod compat;
mod samples;
