//! Confluent-framed Avro encoding and decoding, typed and generic.
//!
//! Decoding reads the frame (length and magic checked first), resolves the writer schema by id
//! through the [`Registry`] cache, then:
//! - when the writer schema is the one compiled into this binary, deserializes straight into
//!   the Rust type (no intermediate `Value` tree);
//! - otherwise (an older or newer version of the type), decodes with the writer schema and
//!   resolves to the compiled reader schema by Avro's resolution rules.

use std::sync::Arc;

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;

use crate::catalog::fast_path;
use crate::error::CodecError;
use crate::frame;
use crate::registry::{Registry, WriterSchema};
use crate::types::AvroRecord;

/// A generically decoded record: its writer schema and its value.
#[derive(Debug, Clone)]
pub struct Decoded {
    /// The writer schema (id, full name, fingerprint).
    pub writer: Arc<WriterSchema>,
    /// The decoded value.
    pub value: Value,
}

/// Encoder/decoder for Confluent-framed Avro over a shared registry cache.
#[derive(Debug, Clone)]
pub struct Codec {
    registry: Arc<Registry>,
}

fn decode_err(id: u32, e: impl std::fmt::Display) -> CodecError {
    CodecError::Decode {
        id,
        reason: e.to_string(),
    }
}

fn expect_consumed(id: u32, rest: &[u8]) -> Result<(), CodecError> {
    if rest.is_empty() {
        Ok(())
    } else {
        Err(CodecError::Decode {
            id,
            reason: format!("{} bytes left over after the record", rest.len()),
        })
    }
}

impl Codec {
    /// A codec over `registry`.
    pub fn new(registry: Arc<Registry>) -> Codec {
        Codec { registry }
    }

    /// The registry this codec resolves schemas with.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Decodes a framed payload into `T`.
    pub async fn decode<T: AvroRecord>(&self, payload: Option<&[u8]>) -> Result<T, CodecError> {
        let (id, body) = frame::split(payload)?;
        let writer = self.registry.schema_by_id(id).await?;
        decode_with::<T>(&writer, body)
    }

    /// Decodes a framed payload into a generic Avro value with its writer schema.
    pub async fn decode_value(&self, payload: Option<&[u8]>) -> Result<Decoded, CodecError> {
        let (id, body) = frame::split(payload)?;
        let writer = self.registry.schema_by_id(id).await?;
        let value = decode_value_with(&writer, body)?;
        Ok(Decoded { writer, value })
    }

    /// Encodes `value` framed with the registry id of `T`'s schema.
    pub async fn encode<T: AvroRecord>(&self, value: &T) -> Result<Vec<u8>, CodecError> {
        let id = self.registry.id_for(T::compiled()?).await?;
        encode_with_id(id, value)
    }

    /// The registry id of `T`'s compiled schema (registered on first use when allowed).
    pub async fn id_of<T: AvroRecord>(&self) -> Result<u32, CodecError> {
        self.registry.id_for(T::compiled()?).await
    }
}

/// Decodes an Avro body written with `writer` into `T`.
pub fn decode_with<T: AvroRecord>(writer: &WriterSchema, body: &[u8]) -> Result<T, CodecError> {
    let compiled = T::compiled()?;
    if writer.full_name != T::FULL_NAME {
        return Err(CodecError::WrongType {
            expected: T::FULL_NAME.to_string(),
            found: if writer.full_name.is_empty() {
                "an unnamed schema".to_string()
            } else {
                writer.full_name.clone()
            },
            id: writer.id,
        });
    }
    let mut rest = body;
    let value = if writer.fingerprint == compiled.fingerprint {
        let fast = fast_path(T::FULL_NAME)?;
        fast.reader
            .read_deser::<T>(&mut rest)
            .map_err(|e| decode_err(writer.id, e))?
    } else {
        let reader = GenericDatumReader::builder(&writer.schema)
            .reader_schema(&compiled.schema)
            .build()
            .map_err(|e| decode_err(writer.id, e))?;
        let resolved = reader
            .read_value(&mut rest)
            .map_err(|e| decode_err(writer.id, e))?;
        apache_avro::from_value::<T>(&resolved).map_err(|e| decode_err(writer.id, e))?
    };
    expect_consumed(writer.id, rest)?;
    Ok(value)
}

/// Decodes an Avro body written with `writer` into a generic value.
pub fn decode_value_with(writer: &WriterSchema, body: &[u8]) -> Result<Value, CodecError> {
    let reader = GenericDatumReader::builder(&writer.schema)
        .build()
        .map_err(|e| decode_err(writer.id, e))?;
    let mut rest = body;
    let value = reader
        .read_value(&mut rest)
        .map_err(|e| decode_err(writer.id, e))?;
    expect_consumed(writer.id, rest)?;
    Ok(value)
}

/// Encodes `value` with `T`'s compiled schema, framed with `id`.
pub fn encode_with_id<T: AvroRecord>(id: u32, value: &T) -> Result<Vec<u8>, CodecError> {
    let fast = fast_path(T::FULL_NAME)?;
    let mut out = frame::start(id, 128);
    fast.writer
        .write_ser(&mut out, value)
        .map_err(|e| CodecError::Encode {
            name: T::FULL_NAME.to_string(),
            reason: e.to_string(),
        })?;
    Ok(out)
}

/// Encodes a generic value with `schema` (validated first), framed with `id`.
pub fn encode_value(id: u32, schema: &Schema, value: &Value) -> Result<Vec<u8>, CodecError> {
    let name = schema.name().map(|n| n.fullname(None)).unwrap_or_default();
    let writer = GenericDatumWriter::builder(schema)
        .build()
        .map_err(|e| CodecError::Encode {
            name: name.clone(),
            reason: e.to_string(),
        })?;
    let mut out = frame::start(id, 128);
    writer
        .write_value_ref(&mut out, value)
        .map_err(|e| CodecError::Encode {
            name,
            reason: e.to_string(),
        })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Catalog, fingerprint};
    use crate::error::{Classify, ErrorClass, FrameError};
    use crate::types::samples::order_placed;
    use crate::types::{OrderCancelled, OrderPlaced};
    use proptest::prelude::*;

    fn writer_for(id: u32, json: &str) -> WriterSchema {
        let schema = Schema::parse_str(json).unwrap();
        WriterSchema {
            id,
            full_name: schema.name().map(|n| n.fullname(None)).unwrap_or_default(),
            fingerprint: fingerprint(&schema),
            schema,
        }
    }

    fn compiled_writer(id: u32) -> WriterSchema {
        let compiled = Catalog::global()
            .unwrap()
            .get("eip.orders.OrderPlaced")
            .unwrap();
        writer_for(id, &compiled.json)
    }

    #[test]
    fn typed_round_trip_through_the_fast_path() {
        let order = order_placed(42);
        let framed = encode_with_id(7, &order).unwrap();
        let (id, body) = frame::split(Some(&framed)).unwrap();
        assert_eq!(id, 7);
        let back: OrderPlaced = decode_with(&compiled_writer(7), body).unwrap();
        assert_eq!(back, order);
        // The generic path reads the same bytes to the same record.
        let value = decode_value_with(&compiled_writer(7), body).unwrap();
        assert_eq!(
            apache_avro::from_value::<OrderPlaced>(&value).unwrap(),
            order
        );
        // And re-encoding the generic value gives the same bytes.
        let schema = &compiled_writer(7).schema;
        assert_eq!(encode_value(7, schema, &value).unwrap(), framed);
    }

    #[test]
    fn a_newer_writer_schema_resolves_to_the_compiled_type() {
        // A producer on a newer version added a field; this binary's type drops it.
        let compiled = Catalog::global()
            .unwrap()
            .get("eip.orders.OrderCancelled")
            .unwrap();
        let current = writer_for(10, &compiled.json);
        let mut json: serde_json::Value = serde_json::from_str(&compiled.json).unwrap();
        json["fields"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"name": "legacy_code", "type": "int", "default": 0}));
        let newer = writer_for(11, &json.to_string());
        assert_ne!(newer.fingerprint, current.fingerprint);

        let cancelled = OrderCancelled {
            metadata: crate::types::samples::event_metadata("order-1", 2, 0),
            reason: "declined".into(),
        };
        let mut value =
            decode_value_with(&current, &encode_with_id(10, &cancelled).unwrap()[5..]).unwrap();
        let Value::Record(fields) = &mut value else {
            panic!("a record decodes to a record")
        };
        fields.push(("legacy_code".into(), Value::Int(5)));
        let bytes = encode_value(11, &newer.schema, &value).unwrap();
        let back: OrderCancelled = decode_with(&newer, &bytes[5..]).unwrap();
        assert_eq!(back, cancelled);
    }

    #[test]
    fn wrong_type_truncated_and_trailing_bytes_are_poison() {
        let order = order_placed(1);
        let framed = encode_with_id(3, &order).unwrap();
        let body = &framed[5..];
        let err = decode_with::<OrderCancelled>(&compiled_writer(3), body).unwrap_err();
        assert!(matches!(err, CodecError::WrongType { .. }), "{err}");
        assert_eq!(err.class(), ErrorClass::Poison);
        let err =
            decode_with::<OrderPlaced>(&compiled_writer(3), &body[..body.len() / 2]).unwrap_err();
        assert_eq!(err.class(), ErrorClass::Poison, "{err}");
        let mut longer = body.to_vec();
        longer.push(0);
        let err = decode_with::<OrderPlaced>(&compiled_writer(3), &longer).unwrap_err();
        assert!(err.to_string().contains("left over"), "{err}");
        assert_eq!(
            CodecError::from(FrameError::Truncated { len: 2 }).class(),
            ErrorClass::Poison
        );
    }

    #[test]
    fn encoding_a_value_that_breaks_the_schema_is_an_error() {
        let schema = &compiled_writer(1).schema;
        let err = encode_value(1, schema, &Value::Long(5)).unwrap_err();
        assert!(matches!(err, CodecError::Encode { .. }), "{err}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn arbitrary_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            // Whatever the bytes, decoding returns a value or a poison error; never a panic.
            let writer = compiled_writer(1);
            if let Err(e) = decode_with::<OrderPlaced>(&writer, &body) {
                prop_assert_eq!(e.class(), ErrorClass::Poison);
            }
            if let Err(e) = decode_value_with(&writer, &body) {
                prop_assert_eq!(e.class(), ErrorClass::Poison);
            }
        }

        #[test]
        fn sample_orders_round_trip(seq in any::<u64>(), id in any::<u32>()) {
            let order = order_placed(seq % 1_000_000);
            let framed = encode_with_id(id, &order).unwrap();
            let (got_id, body) = frame::split(Some(&framed)).unwrap();
            prop_assert_eq!(got_id, id);
            prop_assert_eq!(decode_with::<OrderPlaced>(&compiled_writer(id), body).unwrap(), order);
        }

        #[test]
        fn arbitrary_orders_round_trip(
            customer in ".{0,40}",
            skus in proptest::collection::vec(("[A-Z0-9-]{0,12}", any::<i32>(), any::<i64>()), 0..6),
            causation in proptest::option::of(".{0,20}"),
            total in any::<i64>(),
        ) {
            let mut order = order_placed(1);
            order.customer_id = customer;
            order.metadata.causation_id = causation;
            order.total_cents = total;
            order.lines = skus.into_iter().map(|(sku, quantity, unit_price_cents)| crate::types::OrderLine { sku, quantity, unit_price_cents }).collect();
            let framed = encode_with_id(9, &order).unwrap();
            prop_assert_eq!(decode_with::<OrderPlaced>(&compiled_writer(9), &framed[5..]).unwrap(), order);
        }
    }
}
