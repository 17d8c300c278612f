//! Error classes and the errors of this crate.
//!
//! Every error that can stop a record is classified, so the runtime knows what to do with it
//! without parsing strings: retry in place, dead-letter it, or stop the process.

use std::fmt;

/// What the pipeline does with a record whose handling failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// Something outside the record is unavailable (broker, registry, store). Retry the same
    /// record in place with backoff; never dead-letter it and never commit past it.
    Transient,
    /// The record itself can never be handled (garbage bytes, unknown schema, failed rule).
    /// Dead-letter it with the reason, commit, and keep flowing.
    Poison,
    /// The process cannot go on safely (bad configuration found late, a fenced producer).
    /// Drain what is in flight and exit non-zero.
    Fatal,
}

impl ErrorClass {
    /// The lower-case label used in metrics and DLQ headers.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Transient => "transient",
            ErrorClass::Poison => "poison",
            ErrorClass::Fatal => "fatal",
        }
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error kept as the cause (`#[source]`) of a classified one; shared, so the classified
/// error stays `Clone`.
pub type Cause = std::sync::Arc<dyn std::error::Error + Send + Sync + 'static>;

/// `error` and each of its causes, joined with `: `, for a log line or a dead letter's reason
/// header. A cause whose text the message already carries is not repeated.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// Implemented by every error enum that crosses a crate boundary, so the runtime can route it.
pub trait Classify {
    /// The class of this error.
    fn class(&self) -> ErrorClass;
}

/// A problem with the schema files themselves: found at startup, before any network call.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// An `.avsc` file does not parse as an Avro schema.
    #[error("schema file {path}: {reason}")]
    Invalid {
        /// Path of the file, relative to `schemas/`.
        path: String,
        /// What the Avro parser said.
        reason: String,
    },
    /// A named type was asked for that no `.avsc` file defines.
    #[error("no schema named {0} in schemas/avro")]
    Unknown(String),
}

impl Classify for SchemaError {
    fn class(&self) -> ErrorClass {
        ErrorClass::Fatal
    }
}

/// Why a Confluent frame could not even be split into schema id and body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The record has no value at all (a tombstone) where a framed record was expected.
    #[error("record has no payload")]
    Missing,
    /// Fewer than the 5 bytes of magic byte and schema id.
    #[error("payload is {len} bytes, shorter than the 5-byte Confluent header")]
    Truncated {
        /// The payload's length.
        len: usize,
    },
    /// The first byte is not the Confluent magic byte 0.
    #[error("payload starts with byte {found:#04x}, not the Confluent magic byte 0x00")]
    BadMagic {
        /// The byte found instead.
        found: u8,
    },
}

/// Errors from encoding and decoding Confluent-framed Avro.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CodecError {
    /// The frame is malformed.
    #[error("bad frame: {0}")]
    Frame(#[from] FrameError),
    /// The registry does not know the schema id in the frame.
    #[error("schema id {id} is not in the registry")]
    UnknownSchemaId {
        /// The id from the frame.
        id: u32,
    },
    /// The registry could not be reached or answered with a server error.
    #[error("schema registry unavailable: {reason}")]
    RegistryUnavailable {
        /// What failed.
        reason: String,
    },
    /// The registry refused a request for a reason that retrying won't fix.
    #[error("schema registry refused the request: {reason}")]
    RegistryRejected {
        /// The registry's answer.
        reason: String,
    },
    /// The body does not decode with the writer schema, or does not resolve to the reader's.
    #[error("avro decode with schema id {id} failed: {reason}")]
    Decode {
        /// The writer schema id.
        id: u32,
        /// What the decoder said.
        reason: String,
    },
    /// The record is a valid Avro record of a different type than the one expected.
    #[error("expected a {expected} record, found {found} (schema id {id})")]
    WrongType {
        /// The full name the reader wanted.
        expected: String,
        /// The full name of the writer schema.
        found: String,
        /// The writer schema id.
        id: u32,
    },
    /// A value does not fit the schema it is to be written with.
    #[error("avro encode of {name} failed: {reason}")]
    Encode {
        /// The full name of the schema.
        name: String,
        /// What the encoder said.
        reason: String,
    },
    /// Our schema is not registered under its subject and auto-registration is off.
    #[error("schema {subject} is not registered and registry.auto_register is false")]
    NotRegistered {
        /// The subject that was looked up.
        subject: String,
    },
    /// The compiled-in schema files are broken.
    #[error("{0}")]
    Schema(String),
}

impl From<SchemaError> for CodecError {
    fn from(e: SchemaError) -> Self {
        CodecError::Schema(e.to_string())
    }
}

impl Classify for CodecError {
    fn class(&self) -> ErrorClass {
        match self {
            CodecError::RegistryUnavailable { .. } => ErrorClass::Transient,
            CodecError::Frame(_)
            | CodecError::UnknownSchemaId { .. }
            | CodecError::RegistryRejected { .. }
            | CodecError::Decode { .. }
            | CodecError::WrongType { .. }
            | CodecError::Encode { .. } => ErrorClass::Poison,
            CodecError::NotRegistered { .. } | CodecError::Schema(_) => ErrorClass::Fatal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_outage_is_transient_and_garbage_is_poison() {
        let outage = CodecError::RegistryUnavailable {
            reason: "connection refused".into(),
        };
        assert_eq!(outage.class(), ErrorClass::Transient);
        assert_eq!(
            CodecError::Frame(FrameError::BadMagic { found: 7 }).class(),
            ErrorClass::Poison
        );
        assert_eq!(
            CodecError::UnknownSchemaId { id: 9 }.class(),
            ErrorClass::Poison
        );
        assert_eq!(
            CodecError::NotRegistered {
                subject: "x".into()
            }
            .class(),
            ErrorClass::Fatal
        );
    }

    #[test]
    fn labels_are_lower_case() {
        assert_eq!(ErrorClass::Transient.to_string(), "transient");
        assert_eq!(ErrorClass::Poison.as_str(), "poison");
        assert_eq!(ErrorClass::Fatal.as_str(), "fatal");
    }
}
