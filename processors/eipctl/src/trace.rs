//! `eipctl trace <correlation-id>`: the whole causal chain of one business flow, read from the
//! log itself: the commands that started it (and the way each came in: the gateway over HTTP
//! with its body's format, or straight to Kafka), their outcomes, the order's events, every
//! saga step and compensation and the monitor's timeouts, each with its time, its topic,
//! partition and offset, and its type, in time order.
//!
//! It scans the topics it is given (the orders' commands, events and outcomes, and every
//! topic of the saga definition) chunk by chunk and keeps the records whose
//! `metadata.correlation_id` (or, for an outcome, `correlation_id`) is the one asked for. A
//! scan reads each topic whole: fine for a demo or an incident on a modest log; a production
//! log wants the monitor's views first (`eipctl saga show`), then a trace of one topic range.

use std::time::Duration;

use apache_avro::types::Value;
use eip_schemas::Codec;

use crate::{Endpoints, OpsError, Scan};

/// One record of the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// When (the record's own time: its metadata, else the broker's timestamp), ms.
    pub at: i64,
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The offset.
    pub offset: i64,
    /// The record's type (its writer schema's full name).
    pub event_type: String,
    /// Its key.
    pub key: String,
    /// What else it says: the way it came in, an outcome, a reason.
    pub detail: String,
}

fn field<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    let mut cur = value;
    for name in path {
        let Value::Record(fields) = cur else {
            return None;
        };
        cur = &fields.iter().find(|(n, _)| n == name)?.1;
        if let Value::Union(_, inner) = cur {
            cur = inner.as_ref();
        }
    }
    Some(cur)
}

fn text(value: &Value, path: &[&str]) -> Option<String> {
    match field(value, path)? {
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

fn long(value: &Value, path: &[&str]) -> Option<i64> {
    match field(value, path)? {
        Value::Long(n) => Some(*n),
        Value::Int(n) => Some(i64::from(*n)),
        _ => None,
    }
}

/// The correlation id a record carries, and its time: an event's or command's metadata, or
/// an outcome's own fields.
pub fn correlation_of(value: &Value) -> Option<(String, Option<i64>)> {
    if let Some(c) = text(value, &["metadata", "correlation_id"]) {
        let at = long(value, &["metadata", "occurred_at"])
            .or_else(|| long(value, &["metadata", "issued_at"]));
        return Some((c, at));
    }
    let c = text(value, &["correlation_id"])?;
    Some((c, long(value, &["decided_at"])))
}

/// What a record says besides its type, in a few words.
fn detail(value: &Value, headers: &[(String, Option<bytes::Bytes>)]) -> String {
    let mut parts = Vec::new();
    if let Some((_, Some(format))) = headers
        .iter()
        .find(|(k, _)| k == "eip.gateway.content-type")
    {
        parts.push(format!(
            "via the HTTP gateway ({})",
            String::from_utf8_lossy(format)
        ));
    }
    if let Some(Value::Boolean(accepted)) = field(value, &["accepted"]) {
        let command = text(value, &["command"]).unwrap_or_default();
        let id = text(value, &["command_id"]).unwrap_or_default();
        if *accepted {
            parts.push(format!("{command} {id} accepted"));
        } else {
            parts.push(format!(
                "{command} {id} rejected: {}",
                text(value, &["reason_code"]).unwrap_or_default()
            ));
        }
    }
    if let Some(id) = text(value, &["metadata", "command_id"]) {
        parts.push(format!("command {id}"));
    }
    if let Some(v) = long(value, &["metadata", "aggregate_version"]) {
        parts.push(format!("version {v}"));
    }
    if let Some(step) = text(value, &["step"]) {
        parts.push(format!("step {step}"));
    }
    if let Some(r) = text(value, &["reason"]) {
        parts.push(format!("reason {r:?}"));
    }
    parts.join(", ")
}

/// Every record of `topics` whose correlation id is `correlation`, in time order (then topic,
/// partition, offset).
pub async fn trace(
    ep: &Endpoints,
    codec: &Codec,
    topics: &[String],
    correlation: &str,
) -> Result<Vec<Link>, OpsError> {
    let mut links = Vec::new();
    for topic in topics {
        let mut scan = {
            let (ep, topic) = (ep.clone(), topic.clone());
            tokio::task::spawn_blocking(move || Scan::start(&ep, &topic, Duration::from_secs(30)))
                .await
                .map_err(|e| OpsError::Task(e.to_string()))??
        };
        loop {
            let (chunk, back) = tokio::task::spawn_blocking(move || {
                let chunk = scan.next_chunk(5_000, 16 << 20);
                (chunk, scan)
            })
            .await
            .map_err(|e| OpsError::Task(e.to_string()))?;
            scan = back;
            let Some(records) = chunk? else { break };
            for r in records {
                // Records that aren't Avro, or of a schema the registry lost, are not part of
                // any business flow's chain.
                let Ok(decoded) = codec.decode_value(r.payload.as_deref()).await else {
                    continue;
                };
                let Some((c, at)) = correlation_of(&decoded.value) else {
                    continue;
                };
                if c != correlation {
                    continue;
                }
                links.push(Link {
                    at: at.or(r.timestamp_ms).unwrap_or_default(),
                    topic: topic.clone(),
                    partition: r.partition,
                    offset: r.offset,
                    event_type: decoded.writer.full_name.clone(),
                    key: r
                        .key
                        .as_deref()
                        .map(|k| String::from_utf8_lossy(k).into_owned())
                        .unwrap_or_default(),
                    detail: detail(&decoded.value, &r.headers),
                });
            }
        }
    }
    links.sort_by(|a, b| {
        (a.at, &a.topic, a.partition, a.offset).cmp(&(b.at, &b.topic, b.partition, b.offset))
    });
    Ok(links)
}

/// The chain as lines: time since the first link, where, what, and what else it says.
pub fn render(correlation: &str, links: &[Link]) -> String {
    let mut out = format!("correlation id {correlation}: {} records\n", links.len());
    let start = links.first().map_or(0, |l| l.at);
    for l in links {
        out.push_str(&format!(
            "  +{:>9.3}s  {:<40} {:<44} key {}{}\n",
            (l.at - start) as f64 / 1000.0,
            format!("{}[{}]@{}", l.topic, l.partition, l.offset),
            l.event_type,
            l.key,
            if l.detail.is_empty() {
                String::new()
            } else {
                format!("  {}", l.detail)
            }
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(fields: Vec<(&str, Value)>) -> Value {
        Value::Record(
            fields
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        )
    }

    #[test]
    fn the_correlation_id_comes_from_the_metadata_or_an_outcome() {
        let event = rec(vec![(
            "metadata",
            rec(vec![
                ("correlation_id", Value::String("c-1".into())),
                ("occurred_at", Value::Long(7)),
            ]),
        )]);
        assert_eq!(correlation_of(&event), Some(("c-1".into(), Some(7))));
        let outcome = rec(vec![
            ("correlation_id", Value::String("c-2".into())),
            ("decided_at", Value::Long(9)),
            ("accepted", Value::Boolean(false)),
            ("command", Value::String("CompleteOrder".into())),
            ("command_id", Value::String("o:complete".into())),
            (
                "reason_code",
                Value::Union(1, Box::new(Value::String("already_cancelled".into()))),
            ),
        ]);
        assert_eq!(correlation_of(&outcome), Some(("c-2".into(), Some(9))));
        assert_eq!(
            detail(&outcome, &[]),
            "CompleteOrder o:complete rejected: already_cancelled"
        );
        let via = vec![(
            "eip.gateway.content-type".to_string(),
            Some(bytes::Bytes::from_static(b"application/xml")),
        )];
        assert_eq!(
            detail(&rec(vec![]), &via),
            "via the HTTP gateway (application/xml)"
        );
        assert_eq!(correlation_of(&rec(vec![])), None);
    }

    #[test]
    fn the_chain_is_printed_in_time_order_with_positions() {
        let link = |at, topic: &str, ty: &str| Link {
            at,
            topic: topic.into(),
            partition: 1,
            offset: at / 10,
            event_type: ty.into(),
            key: "o-1".into(),
            detail: String::new(),
        };
        let text = render(
            "c-1",
            &[
                link(1_000, "order-commands", "eip.orders.PlaceOrder"),
                link(2_500, "saga-inventory", "eip.inventory.InventoryReserved"),
            ],
        );
        assert!(text.contains("2 records"), "{text}");
        assert!(
            text.contains("+    1.500s  saga-inventory[1]@250"),
            "{text}"
        );
    }
}
