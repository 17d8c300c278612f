//! Saga records on the wire: any saga event read generically (the fields every saga event
//! shares, by name), and the records a participant publishes, built by the type the definition
//! names. Event ids are deterministic (`{saga}:{step}:{what}`), so a record published again
//! after a crash is the same record, and every reader drops it as a duplicate.

use std::sync::Arc;

use apache_avro::types::Value;
use bytes::Bytes;
use eip_runtime::{Output, ProcessError};
use eip_schemas::codec::decode_value_with;
use eip_schemas::types::*;
use eip_schemas::{Codec, frame};

/// What every saga event carries, read by field name from any record (missing fields are
/// None).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fields {
    /// The envelope, if the record has one.
    pub metadata: Option<EventMetadata>,
    /// The order (the saga id) of a saga step event.
    pub order_id: Option<String>,
    /// The order as the saga carries it.
    pub order: Option<OrderSnapshot>,
    /// A failure's or compensation's reason.
    pub reason: Option<String>,
    /// A failure's stable code.
    pub reason_code: Option<String>,
    /// A timeout's step.
    pub step: Option<String>,
    /// A timeout's saga name.
    pub saga: Option<String>,
}

/// A saga event read generically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaRecord {
    /// The writer schema's full name.
    pub event_type: String,
    /// The shared fields.
    pub fields: Fields,
}

impl SagaRecord {
    /// The saga the record belongs to: its `order_id`, else its aggregate id; None when there
    /// is none, or it is not a valid id (empty, or past `eip_schemas::limits::MAX_ID_BYTES`).
    pub fn saga_id(&self) -> Option<&str> {
        self.fields
            .order_id
            .as_deref()
            .or(self
                .fields
                .metadata
                .as_ref()
                .map(|m| m.aggregate_id.as_str()))
            .filter(|id| eip_schemas::limits::id_problem(id).is_none())
    }

    /// The event id (empty when the record has no envelope).
    pub fn event_id(&self) -> &str {
        self.fields
            .metadata
            .as_ref()
            .map_or("", |m| m.event_id.as_str())
    }
}

/// The writer schema's full name of a framed payload, without decoding the body.
pub async fn type_of(codec: &Codec, payload: Option<&[u8]>) -> Result<String, ProcessError> {
    let (id, _) = frame::split(payload).map_err(|e| ProcessError::Codec(e.into()))?;
    Ok(codec.registry().schema_by_id(id).await?.full_name.clone())
}

/// The field `name` of a record value, unwrapping a union; None when the record has no such
/// field or it is null.
fn field<'a>(value: &'a Value, name: &str) -> Option<&'a Value> {
    let Value::Record(fields) = value else {
        return None;
    };
    let (_, v) = fields.iter().find(|(n, _)| n == name)?;
    match v {
        Value::Union(_, inner) => match inner.as_ref() {
            Value::Null => None,
            other => Some(other),
        },
        Value::Null => None,
        other => Some(other),
    }
}

fn text(value: &Value, name: &str) -> Option<String> {
    match field(value, name)? {
        Value::String(s) | Value::Enum(_, s) => Some(s.clone()),
        _ => None,
    }
}

/// The shared fields of a record value, by name.
pub fn fields_of(value: &Value) -> Result<Fields, apache_avro::Error> {
    Ok(Fields {
        metadata: field(value, "metadata")
            .map(apache_avro::from_value::<EventMetadata>)
            .transpose()?,
        order_id: text(value, "order_id"),
        order: field(value, "order")
            .map(apache_avro::from_value::<OrderSnapshot>)
            .transpose()?,
        reason: text(value, "reason"),
        reason_code: text(value, "reason_code"),
        step: text(value, "step"),
        saga: text(value, "saga"),
    })
}

/// Reads any framed record as a saga record.
pub async fn read(codec: &Codec, payload: Option<&[u8]>) -> Result<SagaRecord, ProcessError> {
    let (id, body) = frame::split(payload).map_err(|e| ProcessError::Codec(e.into()))?;
    let writer = codec.registry().schema_by_id(id).await?;
    let value = decode_value_with(&writer, body)?;
    let fields = fields_of(&value).map_err(|e| {
        ProcessError::poison(format!(
            "{} (schema id {id}) does not have a saga event's fields: {e}",
            writer.full_name
        ))
    })?;
    Ok(SagaRecord {
        event_type: writer.full_name.clone(),
        fields,
    })
}

/// Where a participant's record goes and what it says, before it is typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// The event's full Avro name (from the definition).
    pub event_type: String,
    /// The topic.
    pub topic: Arc<str>,
    /// The saga (order) id: the key.
    pub saga_id: String,
    /// The event id.
    pub event_id: String,
    /// The correlation id it carries on.
    pub correlation_id: String,
    /// The event that caused it.
    pub causation_id: Option<String>,
    /// When, in ms since the Unix epoch.
    pub occurred_at: i64,
    /// The step's position (1-based), as the envelope's version.
    pub version: i64,
    /// The order as the saga carries it.
    pub order: OrderSnapshot,
    /// A completion's reference.
    pub reference: String,
    /// Points or an amount, where the event has one.
    pub amount: i64,
    /// A failure's or compensation's reason.
    pub reason: String,
    /// A failure's code.
    pub reason_code: Option<String>,
}

/// The typed output for `p`, or a fatal error for a type this build can't publish (the
/// definition is checked against [`can_publish`] at startup, so this is a bug).
pub fn output(p: &Publish) -> Result<Output, ProcessError> {
    let metadata = EventMetadata {
        event_id: p.event_id.clone(),
        correlation_id: p.correlation_id.clone(),
        causation_id: p.causation_id.clone(),
        occurred_at: p.occurred_at,
        aggregate_id: p.saga_id.clone(),
        aggregate_version: p.version,
    };
    let key = Some(Bytes::from(p.saga_id.clone()));
    let topic = p.topic.clone();
    let order_id = p.saga_id.clone();
    let order = p.order.clone();
    let reference = p.reference.clone();
    let reason = p.reason.clone();
    let reason_code = p.reason_code.clone();
    macro_rules! done {
        ($ty:ident $(, $field:ident: $value:expr)*) => {
            Output::record(topic, key, $ty { metadata, order_id, order, reference $(, $field: $value)* })
        };
    }
    macro_rules! failed {
        ($ty:ident) => {
            Output::record(
                topic,
                key,
                $ty {
                    metadata,
                    order_id,
                    reason,
                    reason_code,
                },
            )
        };
    }
    macro_rules! undone {
        ($ty:ident) => {
            Output::record(
                topic,
                key,
                $ty {
                    metadata,
                    order_id,
                    reason,
                },
            )
        };
    }
    Ok(match p.event_type.as_str() {
        CustomerVerified::FULL_NAME => done!(CustomerVerified),
        FraudCheckPassed::FULL_NAME => done!(FraudCheckPassed),
        PointsRedeemed::FULL_NAME => done!(PointsRedeemed, points: p.amount),
        ShipmentScheduled::FULL_NAME => done!(ShipmentScheduled),
        InvoiceIssued::FULL_NAME => done!(InvoiceIssued),
        PaymentCaptured::FULL_NAME => done!(PaymentCaptured, amount_cents: p.amount),
        CustomerNotified::FULL_NAME => done!(CustomerNotified),
        InventoryReserved::FULL_NAME => Output::record(
            topic,
            key,
            InventoryReserved {
                metadata,
                order_id,
                lines: order.lines.clone(),
                order: Some(order),
            },
        ),
        PaymentAuthorized::FULL_NAME => Output::record(
            topic,
            key,
            PaymentAuthorized {
                metadata,
                order_id,
                amount_cents: p.amount,
                currency: order.currency.clone(),
                authorization_code: reference,
                order: Some(order),
            },
        ),
        CustomerVerificationFailed::FULL_NAME => failed!(CustomerVerificationFailed),
        FraudCheckFailed::FULL_NAME => failed!(FraudCheckFailed),
        InventoryReservationFailed::FULL_NAME => failed!(InventoryReservationFailed),
        PaymentDeclined::FULL_NAME => failed!(PaymentDeclined),
        PointsRedemptionFailed::FULL_NAME => failed!(PointsRedemptionFailed),
        ShipmentSchedulingFailed::FULL_NAME => failed!(ShipmentSchedulingFailed),
        InvoicingFailed::FULL_NAME => failed!(InvoicingFailed),
        PaymentCaptureFailed::FULL_NAME => failed!(PaymentCaptureFailed),
        CustomerNotificationFailed::FULL_NAME => failed!(CustomerNotificationFailed),
        OrderCompletionFailed::FULL_NAME => failed!(OrderCompletionFailed),
        InventoryReleased::FULL_NAME => undone!(InventoryReleased),
        PaymentVoided::FULL_NAME => undone!(PaymentVoided),
        PointsRestored::FULL_NAME => undone!(PointsRestored),
        ShipmentCancelled::FULL_NAME => undone!(ShipmentCancelled),
        InvoiceCredited::FULL_NAME => undone!(InvoiceCredited),
        PaymentRefunded::FULL_NAME => Output::record(
            topic,
            key,
            PaymentRefunded {
                metadata,
                order_id,
                amount_cents: p.amount,
                currency: order.currency,
            },
        ),
        other => {
            return Err(ProcessError::fatal(format!(
                "eip-saga can't publish {other}: not a saga event of this build"
            )));
        }
    })
}

/// True when [`output`] can build `event_type`.
pub fn can_publish(event_type: &str) -> bool {
    let probe = Publish {
        event_type: event_type.into(),
        topic: Arc::from("t"),
        saga_id: String::new(),
        event_id: String::new(),
        correlation_id: String::new(),
        causation_id: None,
        occurred_at: 0,
        version: 0,
        order: OrderSnapshot {
            customer_id: String::new(),
            lines: Vec::new(),
            total_cents: 0,
            currency: String::new(),
        },
        reference: String::new(),
        amount: 0,
        reason: String::new(),
        reason_code: None,
    };
    output(&probe).is_ok()
}

/// The command a saga sends to the orders aggregate, with a deterministic id (`{saga}:{what}`)
/// so a repeat is a duplicate eip-orders answers with its first outcome.
pub fn order_command(
    topic: Arc<str>,
    saga_id: &str,
    cancel_reason: Option<&str>,
    correlation_id: &str,
    causation_id: Option<&str>,
    issued_at: i64,
) -> Output {
    let what = if cancel_reason.is_some() {
        "cancel"
    } else {
        "complete"
    };
    let metadata = CommandMetadata {
        command_id: format!("{saga_id}:{what}"),
        correlation_id: correlation_id.into(),
        causation_id: causation_id.map(Into::into),
        issued_at,
        aggregate_id: saga_id.into(),
        expected_version: None,
    };
    let key = Some(Bytes::from(saga_id.to_string()));
    match cancel_reason {
        Some(reason) => Output::record(
            topic,
            key,
            CancelOrder {
                metadata,
                reason: reason.into(),
            },
        ),
        None => Output::record(topic, key, CompleteOrder { metadata }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use eip_schemas::types::{CustomerVerified, OrderConfirmed};

    fn value_of<T: AvroRecord>(record: &T) -> Value {
        let framed = eip_schemas::codec::encode_with_id(0, record).unwrap();
        let schema = T::compiled().unwrap();
        apache_avro::reader::datum::GenericDatumReader::builder(&schema.schema)
            .build()
            .unwrap()
            .read_value(&mut &framed[5..])
            .unwrap()
    }

    fn meta() -> EventMetadata {
        EventMetadata {
            event_id: "e-1".into(),
            correlation_id: "c-1".into(),
            causation_id: Some("x".into()),
            occurred_at: 7,
            aggregate_id: "o-1".into(),
            aggregate_version: 2,
        }
    }

    fn order() -> OrderSnapshot {
        OrderSnapshot {
            customer_id: "c".into(),
            lines: Vec::new(),
            total_cents: 5,
            currency: "EUR".into(),
        }
    }

    #[test]
    fn fields_are_read_by_name_whether_plain_or_in_a_union() {
        // `order` in a union (OrderConfirmed) and plain (CustomerVerified); no order_id in
        // the first, so the saga is the aggregate id.
        let confirmed = value_of(&OrderConfirmed {
            metadata: meta(),
            order: Some(order()),
        });
        let f = fields_of(&confirmed).unwrap();
        assert_eq!(
            (f.metadata, f.order, f.order_id),
            (Some(meta()), Some(order()), None)
        );
        let none = fields_of(&value_of(&OrderConfirmed {
            metadata: meta(),
            order: None,
        }))
        .unwrap();
        assert_eq!(none.order, None);
        let verified = value_of(&CustomerVerified {
            metadata: meta(),
            order_id: "o-1".into(),
            order: order(),
            reference: "r".into(),
        });
        let f = fields_of(&verified).unwrap();
        assert_eq!(
            (f.order_id.as_deref(), f.order),
            (Some("o-1"), Some(order()))
        );
        let r = SagaRecord {
            event_type: "x".into(),
            fields: fields_of(&confirmed).unwrap(),
        };
        assert_eq!(r.saga_id(), Some("o-1"));
    }

    #[test]
    fn every_event_of_the_shipped_saga_can_be_published() {
        let def = crate::definition::Definition::parse(
            include_str!("../../../deploy/sagas/order-fulfilment.toml"),
            "f",
        )
        .unwrap();
        for s in &def.steps {
            assert!(can_publish(&s.failed_by), "{}", s.failed_by);
            if let Some(c) = &s.compensated_by {
                assert!(can_publish(c), "{c}");
            }
        }
        assert!(!can_publish("eip.orders.OrderCompleted"));
    }
}
