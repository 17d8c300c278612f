//! Avro glue: a command record decoded by its writer schema's name, an event decoded the same
//! way (the read-back), and an event as the output record that publishes it.

use bytes::Bytes;
use eip_runtime::{Output, ProcessError};
use eip_schemas::codec::{decode_with, encode_with_id};
use eip_schemas::frame;
use eip_schemas::types::{
    AddOrderLine, CancelOrder, CompleteOrder, ConfirmOrder, PlaceOrder, RemoveOrderLine,
};
use eip_schemas::{AvroRecord, Codec};

use crate::aggregate::{Command, Event};

/// Decodes a command: the writer schema's name picks the type. Any other record is poison.
pub async fn command(codec: &Codec, payload: Option<&[u8]>) -> Result<Command, ProcessError> {
    let (id, body) = frame::split(payload).map_err(|e| ProcessError::Codec(e.into()))?;
    let writer = codec.registry().schema_by_id(id).await?;
    Ok(match writer.full_name.as_str() {
        PlaceOrder::FULL_NAME => Command::Place(decode_with(&writer, body)?),
        AddOrderLine::FULL_NAME => Command::AddLine(decode_with(&writer, body)?),
        RemoveOrderLine::FULL_NAME => Command::RemoveLine(decode_with(&writer, body)?),
        ConfirmOrder::FULL_NAME => Command::Confirm(decode_with(&writer, body)?),
        CancelOrder::FULL_NAME => Command::Cancel(decode_with(&writer, body)?),
        CompleteOrder::FULL_NAME => Command::Complete(decode_with(&writer, body)?),
        other => {
            return Err(ProcessError::poison(format!(
                "{other} (schema id {id}) is not an order command"
            )));
        }
    })
}

/// Decodes an order event; None for a record of another type (see
/// `eip_schemas::order_events`).
pub async fn event(codec: &Codec, payload: Option<&[u8]>) -> Result<Option<Event>, ProcessError> {
    Ok(eip_schemas::order_events::decode_order_event(codec, payload).await?)
}

/// The output record that publishes `event` to `topic`, keyed by its aggregate id.
pub fn publish(topic: &std::sync::Arc<str>, event: &Event) -> Output {
    let key = Some(Bytes::from(event.metadata().aggregate_id.clone()));
    match event.clone() {
        Event::Placed(e) => Output::record(topic.clone(), key, e),
        Event::LineAdded(e) => Output::record(topic.clone(), key, e),
        Event::LineRemoved(e) => Output::record(topic.clone(), key, e),
        Event::Confirmed(e) => Output::record(topic.clone(), key, e),
        Event::Cancelled(e) => Output::record(topic.clone(), key, e),
        Event::Completed(e) => Output::record(topic.clone(), key, e),
    }
}

/// The size of `event` framed as Avro (the registry id does not change it), as the broker
/// will weigh it against the topic's `max.message.bytes`.
pub fn encoded_len(event: &Event) -> Result<usize, ProcessError> {
    let framed = match event {
        Event::Placed(e) => encode_with_id(0, e),
        Event::LineAdded(e) => encode_with_id(0, e),
        Event::LineRemoved(e) => encode_with_id(0, e),
        Event::Confirmed(e) => encode_with_id(0, e),
        Event::Cancelled(e) => encode_with_id(0, e),
        Event::Completed(e) => encode_with_id(0, e),
    };
    framed.map(|bytes| bytes.len()).map_err(ProcessError::Codec)
}
