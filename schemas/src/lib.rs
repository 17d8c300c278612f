//! # eip-schemas
//!
//! The `.avsc` files under `schemas/avro` are the source of truth for every record eip sends.
//! This crate turns them into:
//! - [`catalog`]: the parsed, self-contained schemas, embedded at build time;
//! - [`types`]: a Rust struct per command and event, checked against its schema by tests;
//! - [`frame`]: the Confluent wire format (magic byte 0 + 4-byte schema id), checked before use;
//! - [`registry`]: the cached registry client and the bootstrap that registers every schema
//!   under its record-name subject;
//! - [`codec`]: typed and generic encode/decode;
//! - [`compat`]: the BACKWARD-compatibility check between schema versions;
//! - [`convert`]: schema-driven JSON and XML to Avro values and back (the HTTP gateway's bodies).
//!
//! Every error is classified ([`ErrorClass`]) so the runtime can retry, dead-letter or stop.

pub mod catalog;
pub mod codec;
pub mod compat;
pub mod convert;
pub mod error;
pub mod frame;
pub mod limits;
pub mod order_events;
pub mod registry;
pub mod saga_types;
pub mod types;

pub use catalog::{Catalog, CompiledSchema, SchemaKind};
pub use codec::{Codec, Decoded};
pub use error::{Cause, Classify, CodecError, ErrorClass, FrameError, SchemaError, chain};
pub use registry::{Registered, Registry, RegistrySettings, WriterSchema};
pub use types::AvroRecord;
