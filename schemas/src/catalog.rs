//! The compiled-in schema catalog: every `.avsc` file under `schemas/avro`, parsed once.
//!
//! Source files may refer to named types of other files (every event names
//! `eip.common.EventMetadata`). The catalog inlines those references, so every message schema
//! it hands out, and every schema it registers, is self-contained: a consumer in any language
//! can decode a record with nothing but the schema the registry returns for its id.

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;

use apache_avro::Schema;
use apache_avro::rabin::Rabin;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::writer::datum::GenericDatumWriter;

use crate::error::SchemaError;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/embedded_schemas.rs"));
}

/// Whether a named type is sent on its own or only used inside other records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaKind {
    /// A building block (`schemas/avro/common`): never registered on its own.
    Component,
    /// A command or event: registered under its own subject and sent as a Kafka record.
    Message,
}

/// One named type from the catalog, with everything the codec needs precomputed.
#[derive(Debug, Clone)]
pub struct CompiledSchema {
    /// Full Avro name, e.g. `eip.orders.OrderPlaced`. Also the registry subject.
    pub full_name: String,
    /// Component or message.
    pub kind: SchemaKind,
    /// The source file, relative to `schemas/`.
    pub path: String,
    /// The original file contents.
    pub source: String,
    /// The self-contained schema (references inlined).
    pub schema: Schema,
    /// The self-contained schema as JSON, with docs and defaults: what gets registered.
    pub json: String,
    /// The Parsing Canonical Form; equal forms mean identical binary encodings.
    pub canonical: String,
    /// The 64-bit Rabin fingerprint of the canonical form.
    pub fingerprint: u64,
}

/// The parsed set of every compiled-in schema, keyed by full name.
#[derive(Debug)]
pub struct Catalog {
    by_name: BTreeMap<String, CompiledSchema>,
}

/// The 64-bit Rabin fingerprint of a schema's Parsing Canonical Form.
pub fn fingerprint(schema: &Schema) -> u64 {
    let fp = schema.fingerprint::<Rabin>();
    let mut bytes = [0u8; 8];
    for (dst, src) in bytes.iter_mut().zip(fp.bytes.iter()) {
        *dst = *src;
    }
    u64::from_le_bytes(bytes)
}

impl Catalog {
    /// Parses a set of `(path, contents)` schema files into a catalog.
    pub fn parse<P: AsRef<str>, S: AsRef<str>>(files: &[(P, S)]) -> Result<Catalog, SchemaError> {
        for (path, source) in files {
            serde_json::from_str::<serde_json::Value>(source.as_ref()).map_err(|e| {
                SchemaError::Invalid {
                    path: path.as_ref().to_string(),
                    reason: e.to_string(),
                }
            })?;
        }
        let parsed = Schema::parse_list(files.iter().map(|(_, s)| s.as_ref())).map_err(|e| {
            SchemaError::Invalid {
                path: "avro/".to_string(),
                reason: e.to_string(),
            }
        })?;
        let mut by_name = BTreeMap::new();
        for ((path, source), schema) in files.iter().zip(parsed.iter()) {
            let (path, source) = (path.as_ref(), source.as_ref());
            let invalid = |reason: String| SchemaError::Invalid {
                path: path.to_string(),
                reason,
            };
            let name = schema
                .name()
                .ok_or_else(|| invalid("top-level schema must be a named type".into()))?
                .fullname(None);
            let mut full = schema.clone();
            full.denormalize(&parsed)
                .map_err(|e| invalid(e.to_string()))?;
            let json = serde_json::to_string(&full).map_err(|e| invalid(e.to_string()))?;
            let kind = if path.starts_with("avro/common/") {
                SchemaKind::Component
            } else {
                SchemaKind::Message
            };
            let compiled = CompiledSchema {
                full_name: name.clone(),
                kind,
                path: path.to_string(),
                source: source.to_string(),
                canonical: full.canonical_form(),
                fingerprint: fingerprint(&full),
                schema: full,
                json,
            };
            by_name.insert(name, compiled);
        }
        Ok(Catalog { by_name })
    }

    /// The catalog of the schema files compiled into this binary, parsed on first use.
    pub fn global() -> Result<&'static Catalog, SchemaError> {
        static GLOBAL: OnceLock<Result<Catalog, String>> = OnceLock::new();
        GLOBAL
            .get_or_init(|| Catalog::parse(embedded::EMBEDDED).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|reason| SchemaError::Invalid {
                path: "avro/".into(),
                reason: reason.clone(),
            })
    }

    /// The `(path, contents)` of every embedded schema file.
    pub fn embedded_files() -> &'static [(&'static str, &'static str)] {
        embedded::EMBEDDED
    }

    /// Looks a schema up by full name.
    pub fn get(&self, full_name: &str) -> Result<&CompiledSchema, SchemaError> {
        self.by_name
            .get(full_name)
            .ok_or_else(|| SchemaError::Unknown(full_name.to_string()))
    }

    /// Every schema, components included, ordered by full name.
    pub fn all(&self) -> impl Iterator<Item = &CompiledSchema> {
        self.by_name.values()
    }

    /// Every command and event schema, ordered by full name: what gets registered.
    pub fn messages(&self) -> impl Iterator<Item = &CompiledSchema> {
        self.all().filter(|s| s.kind == SchemaKind::Message)
    }
}

/// Precomputed readers and writers for the compiled-in message schemas.
///
/// When a record's writer schema is byte-for-byte the schema compiled into this binary (the
/// common case), decoding goes straight from bytes to the Rust struct and encoding straight
/// from the struct to bytes, without building an intermediate `Value` tree.
pub(crate) struct FastPath {
    pub(crate) reader: GenericDatumReader<'static>,
    pub(crate) writer: GenericDatumWriter<'static>,
}

/// The fast path for `full_name`, if it is a compiled-in message schema.
pub(crate) fn fast_path(full_name: &str) -> Result<&'static FastPath, SchemaError> {
    static FAST: OnceLock<Result<HashMap<&'static str, FastPath>, String>> = OnceLock::new();
    let map = FAST
        .get_or_init(|| {
            let catalog = Catalog::global().map_err(|e| e.to_string())?;
            let mut map = HashMap::new();
            for s in catalog.messages() {
                let reader = GenericDatumReader::builder(&s.schema)
                    .build()
                    .map_err(|e| format!("{}: {e}", s.full_name))?;
                let writer = GenericDatumWriter::builder(&s.schema)
                    .build()
                    .map_err(|e| format!("{}: {e}", s.full_name))?;
                map.insert(s.full_name.as_str(), FastPath { reader, writer });
            }
            Ok(map)
        })
        .as_ref()
        .map_err(|reason| SchemaError::Invalid {
            path: "avro/".into(),
            reason: reason.clone(),
        })?;
    map.get(full_name)
        .ok_or_else(|| SchemaError::Unknown(full_name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_parses_and_messages_are_self_contained() {
        let catalog = Catalog::global().unwrap();
        assert!(catalog.messages().count() >= 10);
        for s in catalog.messages() {
            // A message schema must parse on its own, without the rest of the catalog.
            let alone = Schema::parse_str(&s.json)
                .unwrap_or_else(|e| panic!("{} is not self-contained: {e}", s.full_name));
            assert_eq!(alone.canonical_form(), s.canonical, "{}", s.full_name);
            assert!(
                s.json.contains("\"doc\""),
                "docs survive inlining: {}",
                s.full_name
            );
        }
    }

    #[test]
    fn file_layout_matches_names() {
        // schemas/avro/<area>/<Name>.avsc declares a type named <Name>.
        for s in Catalog::global().unwrap().all() {
            let file_stem = s
                .path
                .rsplit('/')
                .next()
                .and_then(|f| f.strip_suffix(".avsc"))
                .unwrap();
            assert!(
                s.full_name.ends_with(&format!(".{file_stem}")),
                "{}",
                s.path
            );
        }
    }

    #[test]
    fn components_are_not_messages() {
        let catalog = Catalog::global().unwrap();
        let meta = catalog.get("eip.common.EventMetadata").unwrap();
        assert_eq!(meta.kind, SchemaKind::Component);
        assert!(
            catalog
                .messages()
                .all(|s| !s.full_name.starts_with("eip.common."))
        );
        assert!(matches!(
            catalog.get("eip.nope.Missing"),
            Err(SchemaError::Unknown(_))
        ));
    }

    #[test]
    fn an_unresolvable_reference_is_a_located_error() {
        let files: &[(&str, &str)] = &[(
            "avro/orders/Broken.avsc",
            r#"{"type":"record","name":"Broken","namespace":"eip.orders","fields":[{"name":"m","type":"eip.common.Nope"}]}"#,
        )];
        let err = Catalog::parse(files).unwrap_err().to_string();
        assert!(
            err.contains("eip.common.Nope") || err.contains("avro/"),
            "{err}"
        );
        let files: &[(&str, &str)] = &[("avro/orders/Json.avsc", "{not json")];
        let err = Catalog::parse(files).unwrap_err().to_string();
        assert!(
            err.starts_with("schema file avro/orders/Json.avsc"),
            "{err}"
        );
    }

    #[test]
    fn fingerprints_ignore_docs_but_not_fields() {
        let a = Schema::parse_str(
            r#"{"type":"record","name":"A","fields":[{"name":"x","type":"long","doc":"one"}]}"#,
        )
        .unwrap();
        let b = Schema::parse_str(
            r#"{"type":"record","name":"A","fields":[{"name":"x","type":"long","doc":"two"}]}"#,
        )
        .unwrap();
        let c = Schema::parse_str(
            r#"{"type":"record","name":"A","fields":[{"name":"x","type":"int"}]}"#,
        )
        .unwrap();
        assert_eq!(fingerprint(&a), fingerprint(&b));
        assert_ne!(fingerprint(&a), fingerprint(&c));
    }
}
