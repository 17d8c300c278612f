//! `eipctl dlq show`: one dead letter with every header, its key and its payload, decoded
//! through the registry when it is Confluent-framed Avro.

use eip_schemas::Codec;
use eip_schemas::convert::to_json;
use serde::Serialize;
use time::OffsetDateTime;

use crate::{Endpoints, OpsError, ReadRecord};

use super::*;

/// A header as `show` renders it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShownHeader {
    /// Name.
    pub name: String,
    /// Value as text, or as hex when it is not UTF-8 (then `hex` is true); `None` for a null
    /// value.
    pub value: Option<String>,
    /// Whether `value` is hex.
    pub hex: bool,
}

/// Bytes (a key or a payload) as `show` renders them.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "encoding", rename_all = "snake_case")]
pub enum Shown {
    /// Confluent-framed Avro, decoded with its writer schema from the registry.
    Avro {
        /// Registry id from the frame.
        schema_id: u32,
        /// Full name of the writer schema.
        schema: String,
        /// The value as JSON, as the gateway reads it back ([`to_json`]).
        value: serde_json::Value,
    },
    /// UTF-8 text.
    Text {
        /// The text.
        text: String,
        /// Why it is not shown as Avro, when it looked framed.
        #[serde(skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    },
    /// Anything else: the length and a hex preview.
    Hex {
        /// Length in bytes.
        length: usize,
        /// The first [`HEX_PREVIEW_BYTES`] bytes as hex.
        preview: String,
        /// Whether the preview is cut short.
        truncated: bool,
        /// Why it is not shown as Avro, when it looked framed.
        #[serde(skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    },
}

/// One dead letter in full, as `show` renders it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShownRecord {
    /// The DLQ topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Record timestamp, RFC 3339.
    pub timestamp: Option<String>,
    /// Every header, in order.
    pub headers: Vec<ShownHeader>,
    /// The key; `None` for a null key.
    pub key: Option<Shown>,
    /// The payload; `None` for a null payload (a tombstone).
    pub payload: Option<Shown>,
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Text when it is UTF-8 without control characters (other than line breaks and tabs), which
/// would garble a terminal or hide that the bytes are binary.
pub(super) fn text_or_hex(bytes: &[u8], note: Option<String>) -> Shown {
    match std::str::from_utf8(bytes).ok().filter(|t| {
        t.chars()
            .all(|c| !c.is_control() || matches!(c, '\n' | '\r' | '\t'))
    }) {
        Some(text) => Shown::Text {
            text: text.to_string(),
            note,
        },
        None => Shown::Hex {
            length: bytes.len(),
            preview: hex(&bytes[..bytes.len().min(HEX_PREVIEW_BYTES)]),
            truncated: bytes.len() > HEX_PREVIEW_BYTES,
            note,
        },
    }
}

/// Renders a payload: decoded Avro when it is Confluent-framed (magic byte 0, 4-byte schema
/// id) and decodes, else UTF-8 text, else a hex preview. A framed payload that doesn't decode
/// (unknown id, bad body, registry down) says why in `note`.
pub async fn render_payload(codec: &Codec, payload: &[u8]) -> Shown {
    if payload.len() < 5 || payload[0] != 0 {
        return text_or_hex(payload, None);
    }
    match codec.decode_value(Some(payload)).await {
        Ok(d) => Shown::Avro {
            schema_id: d.writer.id,
            schema: d.writer.full_name.clone(),
            value: to_json(&d.value),
        },
        Err(e) => text_or_hex(payload, Some(format!("framed but not decodable: {e}"))),
    }
}

/// Renders dead letter `r` of `topic` in full.
pub async fn render(codec: &Codec, topic: &str, r: &ReadRecord) -> ShownRecord {
    let payload = match r.payload.as_deref() {
        Some(p) => Some(render_payload(codec, p).await),
        None => None,
    };
    ShownRecord {
        topic: topic.to_string(),
        partition: r.partition,
        offset: r.offset,
        timestamp: r
            .timestamp_ms
            .and_then(|ms| {
                OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
            })
            .map(rfc3339),
        headers: r
            .headers
            .iter()
            .map(|(k, v)| {
                let (value, hex) = match v.as_deref().map(std::str::from_utf8) {
                    None => (None, false),
                    Some(Ok(s)) => (Some(s.to_string()), false),
                    Some(Err(_)) => (v.as_deref().map(hex), true),
                };
                ShownHeader {
                    name: k.clone(),
                    value,
                    hex,
                }
            })
            .collect(),
        key: r.key.as_deref().map(|k| text_or_hex(k, None)),
        payload,
    }
}

/// Reads the dead letter at `partition`/`offset` of `topic` and renders it.
pub async fn show(
    ep: &Endpoints,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Result<ShownRecord, OpsError> {
    let (ep2, t) = (ep.clone(), topic.to_string());
    let record =
        crate::blocking(move || crate::read_one(&ep2, &t, partition, offset, READ_TIMEOUT)).await?;
    let codec = Codec::new(ep.registry()?);
    Ok(render(&codec, topic, &record).await)
}
