//! The order events as one type, and their decoding by writer schema. They are messages, so
//! they live here: the write side publishes them, the projector, the saga participants and
//! the saga monitor read them, and none of those depends on the write side's crate for it.
//!
//! The JSON form (`{"type": "Placed", …}`) is what eip-orders' journal stores: renaming a
//! variant would make old journals unreadable.

use serde::{Deserialize, Serialize};

use crate::codec::decode_with;
use crate::frame;
use crate::types::{
    EventMetadata, OrderCancelled, OrderCompleted, OrderConfirmed, OrderLineAdded,
    OrderLineRemoved, OrderPlaced,
};
use crate::{AvroRecord, Codec, CodecError};

/// An event in an order's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum OrderEvent {
    /// The order was created.
    Placed(OrderPlaced),
    /// A line was added.
    LineAdded(OrderLineAdded),
    /// A line was removed.
    LineRemoved(OrderLineRemoved),
    /// The order was confirmed.
    Confirmed(OrderConfirmed),
    /// The order was cancelled.
    Cancelled(OrderCancelled),
    /// The order was fulfilled.
    Completed(OrderCompleted),
}

impl OrderEvent {
    /// The event's envelope.
    pub fn metadata(&self) -> &EventMetadata {
        match self {
            OrderEvent::Placed(e) => &e.metadata,
            OrderEvent::LineAdded(e) => &e.metadata,
            OrderEvent::LineRemoved(e) => &e.metadata,
            OrderEvent::Confirmed(e) => &e.metadata,
            OrderEvent::Cancelled(e) => &e.metadata,
            OrderEvent::Completed(e) => &e.metadata,
        }
    }

    /// The aggregate version this event brings its order to.
    pub fn version(&self) -> i64 {
        self.metadata().aggregate_version
    }

    /// The id of the command that caused it.
    pub fn command_id(&self) -> Option<&str> {
        self.metadata().causation_id.as_deref()
    }
}

/// Decodes an order event from a Confluent-framed payload, by its writer schema's name; None
/// for a record of another type.
pub async fn decode_order_event(
    codec: &Codec,
    payload: Option<&[u8]>,
) -> Result<Option<OrderEvent>, CodecError> {
    let (id, body) = frame::split(payload)?;
    let writer = codec.registry().schema_by_id(id).await?;
    Ok(Some(match writer.full_name.as_str() {
        OrderPlaced::FULL_NAME => OrderEvent::Placed(decode_with(&writer, body)?),
        OrderLineAdded::FULL_NAME => OrderEvent::LineAdded(decode_with(&writer, body)?),
        OrderLineRemoved::FULL_NAME => OrderEvent::LineRemoved(decode_with(&writer, body)?),
        OrderConfirmed::FULL_NAME => OrderEvent::Confirmed(decode_with(&writer, body)?),
        OrderCancelled::FULL_NAME => OrderEvent::Cancelled(decode_with(&writer, body)?),
        OrderCompleted::FULL_NAME => OrderEvent::Completed(decode_with(&writer, body)?),
        _ => return Ok(None),
    }))
}
