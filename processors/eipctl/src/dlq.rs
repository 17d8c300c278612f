//! Dead-letter tooling: list, show and redrive the records of a DLQ topic.
//!
//! A dead letter is the original record (key, value, headers) plus the `eip.dlq.*` headers
//! written by [`eip_runtime::dlq::headers`] (and any further `eip.dlq.*` header a processor adds,
//! such as the router's `eip.dlq.target-topic`, which is shown generically).
//!
//! - [`list`] reads a DLQ and returns one [`Entry`] per record that passes a [`Filter`], with
//!   counts by error class.
//! - [`show`] reads one record and renders every header, the key and the payload (decoded
//!   through the registry when it is Confluent-framed Avro).
//! - [`redrive`] sends filtered records back to their source topic (or another one), without
//!   their `eip.dlq.*` headers and with `eip.redrive.*` headers; a loop guard refuses records
//!   redriven too often, and a ledger topic `<dlq>.redriven` makes it idempotent.
//!
//! The decisions behind redrive are written down in `docs/dlq.md`.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use apache_avro::types::Value;
use bytes::Bytes;
use eip_runtime::dlq as headers;
use eip_runtime::kafka;
use eip_schemas::{Codec, ErrorClass};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer};
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::{Endpoints, OpsError, ReadRecord, send};

pub use regex::Regex;

/// Every dead-letter header starts with this; redrive drops all of them.
pub const DLQ_HEADER_PREFIX: &str = "eip.dlq.";
/// Header the router adds: the topic it failed to produce to. Shown like any other
/// `eip.dlq.*` header; named here so operators can find it in the docs.
pub const TARGET_TOPIC: &str = eip_runtime::dlq::TARGET_TOPIC;
/// Header on a redriven record: how many times it has been redriven, decimal. The loop guard
/// reads it back when the record dead-letters again.
pub const REDRIVE_COUNT: &str = "eip.redrive.count";
/// Header on a redriven record: the dead letter it came from, `<dlq>/<partition>/<offset>`.
pub const REDRIVE_FROM: &str = "eip.redrive.from";
/// Header on a redriven record: when it was redriven, RFC 3339 UTC.
pub const REDRIVE_AT: &str = "eip.redrive.at";
/// The ledger of a DLQ is `<dlq><LEDGER_SUFFIX>`.
pub const LEDGER_SUFFIX: &str = ".redriven";
/// Default of `--max-redrives`: a record that failed again after three redrives needs a fix,
/// not a fourth try.
pub const DEFAULT_MAX_REDRIVES: u32 = 3;
/// How long reading a DLQ or its ledger may take before the tool gives up.
pub const READ_TIMEOUT: Duration = Duration::from_secs(120);
/// How long one redriven record may wait for its acknowledgement. The pipeline's producer
/// waits forever (`message.timeout.ms=0`); an operator's command should end with an error.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(120);
/// Bytes of a binary payload shown as hex.
pub const HEX_PREVIEW_BYTES: usize = 64;

/// The ledger topic of `dlq`.
pub fn ledger_topic(dlq: &str) -> String {
    format!("{dlq}{LEDGER_SUFFIX}")
}

/// The ledger key of the dead letter at `partition`/`offset`.
pub fn ledger_key(partition: i32, offset: i64) -> String {
    format!("{partition}/{offset}")
}

/// Parses a `--since`/`--until` argument: an RFC 3339 time, or a humantime duration meaning
/// that long before `now` (`2h`, `30m`, `1day 2h`).
pub fn parse_time(s: &str, now: OffsetDateTime) -> Result<OffsetDateTime, OpsError> {
    let s = s.trim();
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Ok(t);
    }
    let invalid = |why: String| OpsError::Invalid {
        what: "time".into(),
        reason: format!(
            "{s:?}: expected an RFC 3339 time (2026-03-01T12:00:00Z) or a duration ago (2h, 30m){why}"
        ),
    };
    let d = humantime::parse_duration(s).map_err(|_| invalid(String::new()))?;
    let d = time::Duration::try_from(d).map_err(|e| invalid(format!(": {e}")))?;
    now.checked_sub(d)
        .ok_or_else(|| invalid(": too far back".into()))
}

/// Parses an error class label (`poison`, `transient`, `fatal`).
pub fn parse_class(s: &str) -> Result<ErrorClass, OpsError> {
    [ErrorClass::Poison, ErrorClass::Transient, ErrorClass::Fatal]
        .into_iter()
        .find(|c| c.as_str() == s)
        .ok_or_else(|| OpsError::Invalid {
            what: "class".into(),
            reason: format!("{s:?}: expected poison, transient or fatal"),
        })
}

/// Which dead letters an operation applies to. Every criterion set must hold; an empty filter
/// selects everything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Matched (unanchored) against `eip.dlq.reason`; a record without one never matches.
    pub reason: Option<Regex>,
    /// Equal to `eip.dlq.source-topic`.
    pub source_topic: Option<String>,
    /// Equal to `eip.dlq.error-class`.
    pub class: Option<ErrorClass>,
    /// First failure at or after this time (see [`failed_at`]).
    pub since: Option<OffsetDateTime>,
    /// First failure at or before this time (see [`failed_at`]).
    pub until: Option<OffsetDateTime>,
}

impl Filter {
    /// Rejects a filter that can match nothing because `since` is after `until`.
    pub fn validate(&self) -> Result<(), OpsError> {
        match (self.since, self.until) {
            (Some(s), Some(u)) if s > u => Err(OpsError::Invalid {
                what: "--since/--until".into(),
                reason: format!("--since {} is after --until {}", rfc3339(s), rfc3339(u)),
            }),
            _ => Ok(()),
        }
    }

    /// Whether `r` passes every criterion.
    pub fn matches(&self, r: &ReadRecord) -> bool {
        if let Some(re) = &self.reason
            && !r.header(headers::REASON).is_some_and(|v| re.is_match(v))
        {
            return false;
        }
        if let Some(t) = &self.source_topic
            && r.header(headers::SOURCE_TOPIC) != Some(t.as_str())
        {
            return false;
        }
        if let Some(c) = self.class
            && r.header(headers::ERROR_CLASS) != Some(c.as_str())
        {
            return false;
        }
        if self.since.is_some() || self.until.is_some() {
            let Some(at) = failed_at(r) else {
                return false;
            };
            if self.since.is_some_and(|s| at < s) || self.until.is_some_and(|u| at > u) {
                return false;
            }
        }
        true
    }

    /// True when no criterion is set.
    pub fn is_empty(&self) -> bool {
        self.reason.is_none()
            && self.source_topic.is_none()
            && self.class.is_none()
            && self.since.is_none()
            && self.until.is_none()
    }
}

/// When the record first failed: `eip.dlq.first-failure`, or the record's timestamp when that
/// header is missing or not RFC 3339. The time filters use this.
pub fn failed_at(r: &ReadRecord) -> Option<OffsetDateTime> {
    r.header(headers::FIRST_FAILURE)
        .and_then(|v| OffsetDateTime::parse(v, &Rfc3339).ok())
        .or_else(|| {
            r.timestamp_ms.and_then(|ms| {
                OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
            })
        })
}

/// The record's `eip.redrive.count`: 0 when absent, `Err(raw value)` when unreadable.
pub fn redrive_count(r: &ReadRecord) -> Result<u32, String> {
    match r.headers.iter().rev().find(|(k, _)| k == REDRIVE_COUNT) {
        None => Ok(0),
        Some((_, v)) => {
            let raw = v
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            raw.trim().parse().map_err(|_| raw.into_owned())
        }
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// A position in the DLQ topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct DlqPosition {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

impl DlqPosition {
    /// The position of `r`.
    pub fn of(r: &ReadRecord) -> DlqPosition {
        DlqPosition {
            partition: r.partition,
            offset: r.offset,
        }
    }
}

impl std::fmt::Display for DlqPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.partition, self.offset)
    }
}

/// One dead letter as `list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// Partition in the DLQ.
    pub partition: i32,
    /// Offset in the DLQ.
    pub offset: i64,
    /// `eip.dlq.source-topic`.
    pub source_topic: Option<String>,
    /// `eip.dlq.source-partition`.
    pub source_partition: Option<i32>,
    /// `eip.dlq.source-offset`.
    pub source_offset: Option<i64>,
    /// `eip.dlq.error-class`.
    pub class: Option<String>,
    /// `eip.dlq.attempts`.
    pub attempts: Option<u32>,
    /// `eip.dlq.first-failure` as written, or the record timestamp (RFC 3339) without it.
    pub first_failure: Option<String>,
    /// `eip.redrive.count` (0 when absent); `None` when the header is unreadable.
    pub redrive_count: Option<u32>,
    /// `eip.dlq.reason`.
    pub reason: Option<String>,
    /// `eip.dlq.processor`.
    pub processor: Option<String>,
    /// Every other `eip.dlq.*` header, e.g. the router's `eip.dlq.target-topic`.
    pub other: BTreeMap<String, String>,
}

impl Entry {
    /// The entry of dead letter `r`.
    pub fn of(r: &ReadRecord) -> Entry {
        let h = |n: &str| r.header(n).map(str::to_string);
        let other = r
            .headers
            .iter()
            .filter(|(k, _)| {
                k.starts_with(DLQ_HEADER_PREFIX) && !headers::ALL.contains(&k.as_str())
            })
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_deref()
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                        .unwrap_or_default(),
                )
            })
            .collect();
        Entry {
            partition: r.partition,
            offset: r.offset,
            source_topic: h(headers::SOURCE_TOPIC),
            source_partition: r
                .header(headers::SOURCE_PARTITION)
                .and_then(|v| v.parse().ok()),
            source_offset: r
                .header(headers::SOURCE_OFFSET)
                .and_then(|v| v.parse().ok()),
            class: h(headers::ERROR_CLASS),
            attempts: r.header(headers::ATTEMPTS).and_then(|v| v.parse().ok()),
            first_failure: h(headers::FIRST_FAILURE).or_else(|| failed_at(r).map(rfc3339)),
            redrive_count: redrive_count(r).ok(),
            reason: h(headers::REASON),
            processor: h(headers::PROCESSOR),
            other,
        }
    }

    /// Its position in the DLQ.
    pub fn position(&self) -> DlqPosition {
        DlqPosition {
            partition: self.partition,
            offset: self.offset,
        }
    }

    /// The one-line human form `list` prints.
    pub fn line(&self) -> String {
        fn or_q<T: ToString>(v: &Option<T>) -> String {
            v.as_ref().map_or_else(|| "?".to_string(), T::to_string)
        }
        let mut s = format!(
            "{}@{}  {}[{}]@{}  {}  attempts={}  first-failure={}  redrives={}",
            self.partition,
            self.offset,
            or_q(&self.source_topic),
            or_q(&self.source_partition),
            or_q(&self.source_offset),
            or_q(&self.class),
            or_q(&self.attempts),
            or_q(&self.first_failure),
            or_q(&self.redrive_count),
        );
        for (k, v) in &self.other {
            s.push_str(&format!(
                "  {}={v}",
                k.strip_prefix(DLQ_HEADER_PREFIX).unwrap_or(k)
            ));
        }
        s.push_str("  ");
        s.push_str(self.reason.as_deref().unwrap_or("?"));
        s
    }
}

/// What `list` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Listing {
    /// The DLQ topic.
    pub topic: String,
    /// Records read.
    pub scanned: usize,
    /// Records that passed the filter, in (partition, offset) order.
    pub entries: Vec<Entry>,
    /// Matching records by `eip.dlq.error-class` (`unknown` without one).
    pub by_class: BTreeMap<String, usize>,
}

/// One line of `list --json`: a record, or the summary at the end.
#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ListLine<'a> {
    /// A matching dead letter.
    Record(&'a Entry),
    /// The summary.
    Summary {
        /// The DLQ topic.
        topic: &'a str,
        /// Records read.
        scanned: usize,
        /// Records that matched.
        matched: usize,
        /// Records printed (at most `--limit`).
        shown: usize,
        /// Matching records by error class.
        by_class: &'a BTreeMap<String, usize>,
    },
}

/// Selects the dead letters among `records` that pass `filter`.
pub fn summarize(topic: &str, records: &[ReadRecord], filter: &Filter) -> Listing {
    let entries: Vec<Entry> = records
        .iter()
        .filter(|r| filter.matches(r))
        .map(Entry::of)
        .collect();
    let mut by_class = BTreeMap::new();
    for e in &entries {
        *by_class
            .entry(e.class.clone().unwrap_or_else(|| "unknown".into()))
            .or_insert(0) += 1;
    }
    Listing {
        topic: topic.to_string(),
        scanned: records.len(),
        entries,
        by_class,
    }
}

/// Reads every record of the DLQ `topic` and lists those that pass `filter`.
pub async fn list(ep: &Endpoints, topic: &str, filter: &Filter) -> Result<Listing, OpsError> {
    filter.validate()?;
    let records = read(ep, topic).await?;
    Ok(summarize(topic, &records, filter))
}

async fn read(ep: &Endpoints, topic: &str) -> Result<Vec<ReadRecord>, OpsError> {
    let (ep, t) = (ep.clone(), topic.to_string());
    crate::blocking(move || crate::read_all(&ep, &t, READ_TIMEOUT)).await
}

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
        /// The value as JSON (see [`avro_to_json`]).
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Text when it is UTF-8 without control characters (other than line breaks and tabs), which
/// would garble a terminal or hide that the bytes are binary.
fn text_or_hex(bytes: &[u8], note: Option<String>) -> Shown {
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
            value: avro_to_json(&d.value),
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

/// An Avro value as plain JSON, for people: unions are their branch's value, enums their
/// symbol, bytes and fixed are hex strings, decimals their unscaled big-endian bytes in hex
/// (the scale is in the schema), big decimals their decimal string, logical types their
/// underlying number, non-finite floats a string.
pub fn avro_to_json(v: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    let float = |f: f64| {
        serde_json::Number::from_f64(f).map_or_else(|| J::String(f.to_string()), J::Number)
    };
    match v {
        Value::Null => J::Null,
        Value::Boolean(b) => J::Bool(*b),
        Value::Int(i) | Value::Date(i) | Value::TimeMillis(i) => J::from(*i),
        Value::Long(l)
        | Value::TimeMicros(l)
        | Value::TimestampMillis(l)
        | Value::TimestampMicros(l)
        | Value::TimestampNanos(l)
        | Value::LocalTimestampMillis(l)
        | Value::LocalTimestampMicros(l)
        | Value::LocalTimestampNanos(l) => J::from(*l),
        Value::Float(f) => float(f64::from(*f)),
        Value::Double(d) => float(*d),
        Value::Bytes(b) | Value::Fixed(_, b) => J::String(hex(b)),
        Value::String(s) | Value::Enum(_, s) => J::String(s.clone()),
        Value::Union(_, inner) => avro_to_json(inner),
        Value::Array(items) => J::Array(items.iter().map(avro_to_json).collect()),
        Value::Map(m) => J::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), avro_to_json(v)))
                .collect(),
        ),
        Value::Record(fields) => J::Object(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), avro_to_json(v)))
                .collect(),
        ),
        Value::Decimal(d) => <Vec<u8>>::try_from(d).map_or(J::Null, |b| J::String(hex(&b))),
        Value::BigDecimal(d) => J::String(d.to_string()),
        Value::Duration(d) => serde_json::json!({
            "months": u32::from(d.months()),
            "days": u32::from(d.days()),
            "millis": u32::from(d.millis()),
        }),
        Value::Uuid(u) => J::String(u.to_string()),
    }
}

/// How `redrive` runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedriveOptions {
    /// Send every selected record here instead of its `eip.dlq.source-topic`.
    pub to: Option<String>,
    /// Refuse records whose `eip.redrive.count` is already at least this.
    pub max_redrives: u32,
    /// Plan and report, but produce nothing and create nothing.
    pub dry_run: bool,
}

impl Default for RedriveOptions {
    fn default() -> RedriveOptions {
        RedriveOptions {
            to: None,
            max_redrives: DEFAULT_MAX_REDRIVES,
            dry_run: false,
        }
    }
}

/// A dead letter the loop guard refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refused {
    /// Partition in the DLQ.
    pub partition: i32,
    /// Offset in the DLQ.
    pub offset: i64,
    /// Its `eip.redrive.count`; `None` when unreadable (which counts as over the limit).
    pub redrive_count: Option<u32>,
}

/// A dead letter to move, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    /// The dead letter.
    pub record: ReadRecord,
    /// Where it goes.
    pub target: String,
    /// Its new `eip.redrive.count`.
    pub count: u32,
}

/// What redrive will do with each dead letter, decided before anything is produced.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Records read.
    pub scanned: usize,
    /// Records to move, in (partition, offset) order.
    pub moves: Vec<Move>,
    /// Records the ledger says were redriven already.
    pub already_redriven: Vec<DlqPosition>,
    /// Records refused by the loop guard.
    pub refused: Vec<Refused>,
    /// Records the filter left out.
    pub filtered_out: usize,
}

/// Decides what happens to each of `records`: filtered out, already in the ledger (`done`
/// holds ledger keys), refused by the loop guard, or moved to `--to` or its source topic.
///
/// A selected record with neither a source topic nor `--to` is an error for the whole run
/// (nothing is produced), so no record is silently skipped.
pub fn plan(
    records: &[ReadRecord],
    done: &HashSet<String>,
    filter: &Filter,
    opts: &RedriveOptions,
) -> Result<Plan, OpsError> {
    let mut plan = Plan {
        scanned: records.len(),
        ..Plan::default()
    };
    let mut unroutable = Vec::new();
    for r in records {
        if !filter.matches(r) {
            plan.filtered_out += 1;
            continue;
        }
        if done.contains(&ledger_key(r.partition, r.offset)) {
            plan.already_redriven.push(DlqPosition::of(r));
            continue;
        }
        let count = match redrive_count(r) {
            Ok(n) if n < opts.max_redrives => n,
            Ok(n) => {
                plan.refused.push(Refused {
                    partition: r.partition,
                    offset: r.offset,
                    redrive_count: Some(n),
                });
                continue;
            }
            Err(_) => {
                plan.refused.push(Refused {
                    partition: r.partition,
                    offset: r.offset,
                    redrive_count: None,
                });
                continue;
            }
        };
        // A dead letter from a router whose retries ran out holds the routed output: it goes to
        // the target it could not reach, not back through the rules. Others go to their source.
        let target = opts
            .to
            .as_deref()
            .or_else(|| r.header(TARGET_TOPIC).filter(|t| !t.is_empty()))
            .or_else(|| r.header(headers::SOURCE_TOPIC).filter(|t| !t.is_empty()));
        match target {
            Some(t) => plan.moves.push(Move {
                record: r.clone(),
                target: t.to_string(),
                count: count + 1,
            }),
            None => unroutable.push(DlqPosition::of(r).to_string()),
        }
    }
    if !unroutable.is_empty() {
        return Err(OpsError::Unroutable(format!(
            "{} selected record(s) have no {} header ({}); pass --to or narrow the filter",
            unroutable.len(),
            headers::SOURCE_TOPIC,
            unroutable.join(", ")
        )));
    }
    Ok(plan)
}

/// The headers of a redriven record: the dead letter's headers without any `eip.dlq.*` or
/// earlier `eip.redrive.*` header, then `eip.redrive.count`, `eip.redrive.from` and
/// `eip.redrive.at`.
pub fn redriven_headers(dlq: &str, m: &Move, at: OffsetDateTime) -> Vec<(String, Option<Bytes>)> {
    let mut out: Vec<(String, Option<Bytes>)> = m
        .record
        .headers
        .iter()
        .filter(|(k, _)| {
            !k.starts_with(DLQ_HEADER_PREFIX)
                && ![REDRIVE_COUNT, REDRIVE_FROM, REDRIVE_AT].contains(&k.as_str())
        })
        .cloned()
        .collect();
    out.push((REDRIVE_COUNT.into(), Some(Bytes::from(m.count.to_string()))));
    out.push((
        REDRIVE_FROM.into(),
        Some(Bytes::from(format!(
            "{dlq}/{}/{}",
            m.record.partition, m.record.offset
        ))),
    ));
    out.push((REDRIVE_AT.into(), Some(Bytes::from(rfc3339(at)))));
    out
}

/// One record moved (or, in a dry run, that would move).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Moved {
    /// Partition in the DLQ.
    pub partition: i32,
    /// Offset in the DLQ.
    pub offset: i64,
    /// Where it went.
    pub target: String,
    /// Its new `eip.redrive.count`.
    pub redrive_count: u32,
}

/// What `redrive` did, exactly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RedriveReport {
    /// The DLQ topic.
    pub topic: String,
    /// Its ledger topic.
    pub ledger: String,
    /// True when nothing was produced: `moved` is what would have moved.
    pub dry_run: bool,
    /// Records read from the DLQ.
    pub scanned: usize,
    /// Records moved, by target topic.
    pub moved: BTreeMap<String, usize>,
    /// Every record moved.
    pub moved_records: Vec<Moved>,
    /// Records skipped because the ledger says they were redriven already.
    pub already_redriven: Vec<DlqPosition>,
    /// Records refused by the loop guard.
    pub refused: Vec<Refused>,
    /// The loop guard's limit.
    pub max_redrives: u32,
    /// Records the filter left out.
    pub filtered_out: usize,
}

impl RedriveReport {
    /// Total records moved.
    pub fn moved_total(&self) -> usize {
        self.moved_records.len()
    }

    /// The report for people, one fact per line.
    pub fn lines(&self) -> Vec<String> {
        let verb = if self.dry_run {
            "dry run: would move"
        } else {
            "moved"
        };
        let mut out = vec![format!(
            "redrive from {} ({} records read, ledger {})",
            self.topic, self.scanned, self.ledger
        )];
        let per_topic: Vec<String> = self
            .moved
            .iter()
            .map(|(t, n)| format!("{n} to {t}"))
            .collect();
        out.push(if per_topic.is_empty() {
            format!("{verb} 0")
        } else {
            format!("{verb} {}: {}", self.moved_total(), per_topic.join(", "))
        });
        let positions = |ps: &mut dyn Iterator<Item = String>| ps.collect::<Vec<_>>().join(", ");
        out.push(if self.already_redriven.is_empty() {
            "already redriven 0".into()
        } else {
            format!(
                "already redriven {} (skipped): {}",
                self.already_redriven.len(),
                positions(&mut self.already_redriven.iter().map(|p| p.to_string()))
            )
        });
        out.push(if self.refused.is_empty() {
            format!(
                "refused by the loop guard (--max-redrives {}) 0",
                self.max_redrives
            )
        } else {
            format!(
                "refused by the loop guard (--max-redrives {}) {}: {}",
                self.max_redrives,
                self.refused.len(),
                positions(&mut self.refused.iter().map(|r| format!(
                    "{}@{} (eip.redrive.count {})",
                    r.partition,
                    r.offset,
                    r.redrive_count
                        .map_or_else(|| "unreadable".to_string(), |n| n.to_string())
                )))
            )
        });
        out.push(format!("filtered out {}", self.filtered_out));
        out
    }
}

fn report(topic: &str, plan: &Plan, opts: &RedriveOptions) -> RedriveReport {
    let mut moved = BTreeMap::new();
    for m in &plan.moves {
        *moved.entry(m.target.clone()).or_insert(0) += 1;
    }
    RedriveReport {
        topic: topic.to_string(),
        ledger: ledger_topic(topic),
        dry_run: opts.dry_run,
        scanned: plan.scanned,
        moved,
        moved_records: plan
            .moves
            .iter()
            .map(|m| Moved {
                partition: m.record.partition,
                offset: m.record.offset,
                target: m.target.clone(),
                redrive_count: m.count,
            })
            .collect(),
        already_redriven: plan.already_redriven.clone(),
        refused: plan.refused.clone(),
        max_redrives: opts.max_redrives,
        filtered_out: plan.filtered_out,
    }
}

/// One ledger entry: which dead letter went where, when.
#[derive(Debug, Serialize)]
struct LedgerEntry<'a> {
    dlq: &'a str,
    partition: i32,
    offset: i64,
    target: &'a str,
    redrive_count: u32,
    at: &'a str,
}

fn owned_headers(hs: &[(String, Option<Bytes>)]) -> OwnedHeaders {
    hs.iter()
        .fold(OwnedHeaders::new_with_capacity(hs.len()), |acc, (k, v)| {
            acc.insert(Header {
                key: k.as_str(),
                value: v.as_deref(),
            })
        })
}

async fn delivered(f: DeliveryFuture) -> Result<(), String> {
    match f.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err(e.to_string()),
        Err(_) => Err("delivery cancelled".into()),
    }
}

/// Redrives the dead letters of `topic` that pass `filter`.
///
/// Reads the DLQ and its ledger `<topic>.redriven` from the beginning with a fresh reader
/// (see [`crate::read_all`]), [`plan`]s, and unless `opts.dry_run`:
/// 1. produces every moved record with the idempotent producer and awaits every
///    acknowledgement;
/// 2. then writes one ledger entry per acknowledged record (key `<partition>/<offset>`) and
///    awaits those.
///
/// So a record is in the ledger only once it is safely in its target topic. A crash between
/// the two steps redrives those records once more on the next run (consumers dedupe by event
/// id); the other order could lose them. When some records fail to produce, the rest are still
/// recorded in the ledger and the error says how many failed, so a rerun retries only those.
pub async fn redrive(
    ep: &Endpoints,
    topic: &str,
    filter: &Filter,
    opts: &RedriveOptions,
) -> Result<RedriveReport, OpsError> {
    filter.validate()?;
    if opts.max_redrives == 0 {
        return Err(OpsError::Invalid {
            what: "--max-redrives".into(),
            reason: "must be at least 1 (0 would refuse every record)".into(),
        });
    }
    if opts.to.as_deref().is_some_and(|t| t.trim().is_empty()) {
        return Err(OpsError::Invalid {
            what: "--to".into(),
            reason: "empty topic name".into(),
        });
    }
    let ledger = ledger_topic(topic);
    let records = read(ep, topic).await?;
    let ledger_exists = kafka::missing_topics(
        &ep.kafka(),
        std::slice::from_ref(&ledger),
        Duration::from_secs(10),
    )?
    .is_empty();
    if !ledger_exists && !opts.dry_run {
        crate::create_topics(ep, std::slice::from_ref(&ledger), 1).await?;
    }
    let done: HashSet<String> = if ledger_exists {
        read(ep, &ledger)
            .await?
            .into_iter()
            .filter_map(|r| r.key.map(|k| String::from_utf8_lossy(&k).into_owned()))
            .collect()
    } else {
        HashSet::new()
    };
    let plan = plan(&records, &done, filter, opts)?;
    let report = report(topic, &plan, opts);
    if plan.moves.is_empty() {
        return Ok(report);
    }
    let targets: Vec<String> = report.moved.keys().cloned().collect();
    let missing = kafka::missing_topics(&ep.kafka(), &targets, Duration::from_secs(10))?;
    if !missing.is_empty() {
        return Err(OpsError::Unroutable(format!(
            "target topic(s) {} do not exist; create them or pass --to",
            missing.join(", ")
        )));
    }
    if opts.dry_run {
        return Ok(report);
    }

    let mut config = kafka::producer_config(&ep.kafka());
    config.set(
        "message.timeout.ms",
        DELIVERY_TIMEOUT.as_millis().to_string(),
    );
    let producer: FutureProducer = config.create()?;
    let at = OffsetDateTime::now_utc();
    let at_text = rfc3339(at);
    let mut pending = Vec::with_capacity(plan.moves.len());
    for m in &plan.moves {
        let hs = owned_headers(&redriven_headers(topic, m, at));
        pending.push(
            send(
                &producer,
                &m.target,
                m.record.key.as_deref(),
                m.record.payload.as_deref(),
                hs,
            )
            .await?,
        );
    }
    let mut acked = Vec::with_capacity(pending.len());
    let mut failed = Vec::new();
    for (m, f) in plan.moves.iter().zip(pending) {
        match delivered(f).await {
            Ok(()) => acked.push(m),
            Err(e) => failed.push((DlqPosition::of(&m.record), e)),
        }
    }

    let mut ledger_pending = Vec::with_capacity(acked.len());
    for m in &acked {
        let entry = LedgerEntry {
            dlq: topic,
            partition: m.record.partition,
            offset: m.record.offset,
            target: &m.target,
            redrive_count: m.count,
            at: &at_text,
        };
        let value = serde_json::to_vec(&entry).map_err(|e| OpsError::Task(e.to_string()))?;
        let key = ledger_key(m.record.partition, m.record.offset);
        ledger_pending.push(
            send(
                &producer,
                &ledger,
                Some(key.as_bytes()),
                Some(&value),
                OwnedHeaders::new(),
            )
            .await?,
        );
    }
    let mut ledger_failed = Vec::new();
    for (m, f) in acked.iter().zip(ledger_pending) {
        if let Err(e) = delivered(f).await {
            ledger_failed.push((DlqPosition::of(&m.record), e));
        }
    }
    if !failed.is_empty() || !ledger_failed.is_empty() {
        let mut parts = vec![format!(
            "produced {} of {} records",
            acked.len(),
            plan.moves.len()
        )];
        if let Some((p, e)) = failed.first() {
            parts.push(format!(
                "{} not produced (first: {p}: {e}); rerun to retry them",
                failed.len()
            ));
        }
        if let Some((p, e)) = ledger_failed.first() {
            parts.push(format!(
                "{} produced but not recorded in {ledger} (first: {p}: {e}); a rerun would redrive them again",
                ledger_failed.len()
            ));
        }
        return Err(OpsError::Incomplete(parts.join("; ")));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-03-01 12:00:00 UTC);

    fn dead(
        partition: i32,
        offset: i64,
        source: Option<&str>,
        class: &str,
        reason: &str,
        first_failure: Option<&str>,
        extra: &[(&str, &str)],
    ) -> ReadRecord {
        let mut h: Vec<(String, Option<Bytes>)> = vec![
            (
                "traceparent".into(),
                Some(Bytes::from_static(b"00-aa-bb-01")),
            ),
            ("correlation-id".into(), Some(Bytes::from_static(b"corr-1"))),
        ];
        for (k, v) in extra {
            h.push((k.to_string(), Some(Bytes::from(v.to_string()))));
        }
        h.push((
            headers::ERROR_CLASS.into(),
            Some(Bytes::from(class.to_string())),
        ));
        h.push((
            headers::REASON.into(),
            Some(Bytes::from(reason.to_string())),
        ));
        if let Some(s) = source {
            h.push((
                headers::SOURCE_TOPIC.into(),
                Some(Bytes::from(s.to_string())),
            ));
        }
        h.push((
            headers::SOURCE_PARTITION.into(),
            Some(Bytes::from_static(b"2")),
        ));
        h.push((
            headers::SOURCE_OFFSET.into(),
            Some(Bytes::from_static(b"41")),
        ));
        h.push((headers::ATTEMPTS.into(), Some(Bytes::from_static(b"1"))));
        if let Some(f) = first_failure {
            h.push((
                headers::FIRST_FAILURE.into(),
                Some(Bytes::from(f.to_string())),
            ));
        }
        h.push((
            headers::PROCESSOR.into(),
            Some(Bytes::from_static(b"router")),
        ));
        ReadRecord {
            partition,
            offset,
            key: Some(Bytes::from_static(b"order-1")),
            payload: Some(Bytes::from_static(b"{}")),
            headers: h,
            // 2026-03-01T06:00:00Z
            timestamp_ms: Some(1_772_344_800_000),
        }
    }

    fn sample() -> Vec<ReadRecord> {
        vec![
            dead(
                0,
                0,
                Some("orders"),
                "poison",
                "bad magic byte",
                Some("2026-03-01T11:30:00Z"),
                &[],
            ),
            dead(
                0,
                1,
                Some("payments"),
                "transient",
                "registry timed out",
                Some("2026-03-01T09:00:00Z"),
                &[],
            ),
            dead(
                1,
                0,
                Some("orders"),
                "fatal",
                "fenced",
                None,
                &[(TARGET_TOPIC, "orders-out")],
            ),
            dead(
                1,
                1,
                None,
                "poison",
                "bad magic byte",
                Some("2026-03-01T11:59:00Z"),
                &[(REDRIVE_COUNT, "2")],
            ),
        ]
    }

    fn positions(l: &Listing) -> Vec<(i32, i64)> {
        l.entries.iter().map(|e| (e.partition, e.offset)).collect()
    }

    #[test]
    fn times_are_rfc3339_or_a_duration_ago() {
        assert_eq!(
            parse_time("2h", NOW).unwrap(),
            datetime!(2026-03-01 10:00:00 UTC)
        );
        assert_eq!(
            parse_time("1day 30m", NOW).unwrap(),
            datetime!(2026-02-28 11:30:00 UTC)
        );
        assert_eq!(
            parse_time("2026-02-01T00:00:00+01:00", NOW).unwrap(),
            datetime!(2026-01-31 23:00:00 UTC)
        );
        let err = parse_time("yesterday", NOW).unwrap_err().to_string();
        assert!(
            err.contains("yesterday") && err.contains("RFC 3339"),
            "{err}"
        );
        assert!(parse_class("poison").is_ok());
        assert!(parse_class("Poison").is_err());
    }

    #[test]
    fn each_filter_selects_exactly_its_records() {
        let rs = sample();
        let by = |f: Filter| positions(&summarize("x.dlq", &rs, &f));
        assert_eq!(by(Filter::default()).len(), 4);
        assert_eq!(
            by(Filter {
                reason: Some(Regex::new("magic").unwrap()),
                ..Filter::default()
            }),
            vec![(0, 0), (1, 1)]
        );
        assert_eq!(
            by(Filter {
                source_topic: Some("orders".into()),
                ..Filter::default()
            }),
            vec![(0, 0), (1, 0)]
        );
        assert_eq!(
            by(Filter {
                class: Some(ErrorClass::Transient),
                ..Filter::default()
            }),
            vec![(0, 1)]
        );
        // (1,0) has no first-failure header: its timestamp (06:00) counts.
        let since = Filter {
            since: Some(parse_time("1h", NOW).unwrap()),
            ..Filter::default()
        };
        assert_eq!(by(since), vec![(0, 0), (1, 1)]);
        let until = Filter {
            until: Some(parse_time("4h", NOW).unwrap()),
            ..Filter::default()
        };
        assert_eq!(by(until), vec![(1, 0)]);
        let combined = Filter {
            reason: Some(Regex::new("magic").unwrap()),
            class: Some(ErrorClass::Poison),
            source_topic: Some("orders".into()),
            since: Some(parse_time("1h", NOW).unwrap()),
            until: Some(NOW),
        };
        assert_eq!(by(combined), vec![(0, 0)]);
        let backwards = Filter {
            since: Some(NOW),
            until: Some(parse_time("1h", NOW).unwrap()),
            ..Filter::default()
        };
        assert!(backwards.validate().is_err());
    }

    #[test]
    fn entries_carry_the_headers_and_count_by_class() {
        let l = summarize("x.dlq", &sample(), &Filter::default());
        assert_eq!(
            l.by_class,
            BTreeMap::from([
                ("fatal".into(), 1),
                ("poison".into(), 2),
                ("transient".into(), 1)
            ])
        );
        let fatal = &l.entries[2];
        assert_eq!(fatal.source_topic.as_deref(), Some("orders"));
        assert_eq!(
            (fatal.source_partition, fatal.source_offset),
            (Some(2), Some(41))
        );
        assert_eq!(fatal.first_failure.as_deref(), Some("2026-03-01T06:00:00Z"));
        assert_eq!(
            fatal.other.get(TARGET_TOPIC).map(String::as_str),
            Some("orders-out")
        );
        assert!(
            fatal.line().contains("target-topic=orders-out"),
            "{}",
            fatal.line()
        );
        assert_eq!(l.entries[3].redrive_count, Some(2));
        assert!(
            l.entries[3]
                .line()
                .starts_with("1@1  ?[2]@41  poison  attempts=1")
        );
    }

    #[test]
    fn plan_sorts_every_record_into_exactly_one_outcome() {
        let rs = sample();
        let done = HashSet::from([ledger_key(0, 1)]);
        let opts = RedriveOptions {
            max_redrives: 2,
            ..RedriveOptions::default()
        };
        // (1,1) has no source topic, so route everything with --to to look at the guard.
        let p = plan(
            &rs,
            &done,
            &Filter::default(),
            &RedriveOptions {
                to: Some("t".into()),
                ..opts.clone()
            },
        )
        .unwrap();
        assert_eq!(p.scanned, 4);
        assert_eq!(
            p.already_redriven,
            vec![DlqPosition {
                partition: 0,
                offset: 1
            }]
        );
        assert_eq!(
            p.refused,
            vec![Refused {
                partition: 1,
                offset: 1,
                redrive_count: Some(2)
            }]
        );
        assert_eq!(
            p.moves
                .iter()
                .map(|m| (m.record.offset, m.record.partition, m.count))
                .collect::<Vec<_>>(),
            vec![(0, 0, 1), (0, 1, 1)]
        );
        assert!(p.moves.iter().all(|m| m.target == "t"));
        // Without --to each goes to the target it could not reach, if it names one, else to its
        // source topic; a selected record with neither fails the run.
        let orders = Filter {
            source_topic: Some("orders".into()),
            ..Filter::default()
        };
        let p = plan(&rs, &done, &orders, &opts).unwrap();
        assert_eq!(p.filtered_out, 2);
        assert!(!p.moves.is_empty());
        assert!(
            p.moves
                .iter()
                .all(|m| m.target == m.record.header(TARGET_TOPIC).unwrap_or("orders"))
        );
        let all = RedriveOptions {
            max_redrives: 5,
            ..opts
        };
        let err = plan(&rs, &HashSet::new(), &Filter::default(), &all)
            .unwrap_err()
            .to_string();
        assert!(err.contains("1@1") && err.contains("--to"), "{err}");
    }

    #[test]
    fn unreadable_redrive_counts_are_refused() {
        let r = dead(
            0,
            7,
            Some("orders"),
            "poison",
            "x",
            None,
            &[(REDRIVE_COUNT, "lots")],
        );
        let p = plan(
            &[r],
            &HashSet::new(),
            &Filter::default(),
            &RedriveOptions::default(),
        )
        .unwrap();
        assert_eq!(
            p.refused,
            vec![Refused {
                partition: 0,
                offset: 7,
                redrive_count: None
            }]
        );
        assert!(p.moves.is_empty());
    }

    #[test]
    fn redriven_headers_drop_the_dlq_ones_and_count_up() {
        let r = dead(
            1,
            1,
            Some("orders"),
            "poison",
            "x",
            None,
            &[(REDRIVE_COUNT, "2"), (REDRIVE_FROM, "old/0/0")],
        );
        let m = Move {
            record: r,
            target: "orders".into(),
            count: 3,
        };
        let h = redriven_headers("orders.dlq", &m, NOW);
        let get = |n: &str| {
            let vs: Vec<_> = h.iter().filter(|(k, _)| k == n).collect();
            assert!(vs.len() <= 1, "{n} appears {} times", vs.len());
            vs.first().and_then(|(_, v)| v.clone())
        };
        assert!(
            h.iter().all(|(k, _)| !k.starts_with(DLQ_HEADER_PREFIX)),
            "{h:?}"
        );
        assert_eq!(get(REDRIVE_COUNT).as_deref(), Some(&b"3"[..]));
        assert_eq!(get(REDRIVE_FROM).as_deref(), Some(&b"orders.dlq/1/1"[..]));
        assert_eq!(
            get(REDRIVE_AT).as_deref(),
            Some(&b"2026-03-01T12:00:00Z"[..])
        );
        assert_eq!(get("traceparent").as_deref(), Some(&b"00-aa-bb-01"[..]));
        assert_eq!(h[0].0, "traceparent", "original headers keep their order");
    }

    #[test]
    fn avro_values_become_plain_json() {
        let v = Value::Record(vec![
            ("id".into(), Value::String("o-1".into())),
            (
                "note".into(),
                Value::Union(1, Box::new(Value::String("gift".into()))),
            ),
            ("none".into(), Value::Union(0, Box::new(Value::Null))),
            ("raw".into(), Value::Bytes(vec![0xde, 0xad])),
            ("kind".into(), Value::Enum(2, "EXPRESS".into())),
            (
                "lines".into(),
                Value::Array(vec![Value::Long(3), Value::Int(4)]),
            ),
            ("nan".into(), Value::Double(f64::NAN)),
            ("price".into(), Value::Float(1.5)),
        ]);
        assert_eq!(
            avro_to_json(&v),
            serde_json::json!({
                "id": "o-1", "note": "gift", "none": null, "raw": "dead",
                "kind": "EXPRESS", "lines": [3, 4], "nan": "NaN", "price": 1.5
            })
        );
    }

    #[test]
    fn payloads_render_as_text_or_hex() {
        assert_eq!(
            text_or_hex(b"{\"a\":1}", None),
            Shown::Text {
                text: "{\"a\":1}".into(),
                note: None
            }
        );
        // UTF-8, but a truncated frame: binary all the same.
        assert!(matches!(
            text_or_hex(&[0, 0, 1], None),
            Shown::Hex { length: 3, .. }
        ));
        assert!(matches!(
            text_or_hex(b"line one\n\tline two", None),
            Shown::Text { .. }
        ));
        let bin = vec![0xffu8; HEX_PREVIEW_BYTES + 1];
        match text_or_hex(&bin, None) {
            Shown::Hex {
                length,
                preview,
                truncated,
                ..
            } => {
                assert_eq!(length, HEX_PREVIEW_BYTES + 1);
                assert_eq!(preview.len(), HEX_PREVIEW_BYTES * 2);
                assert!(truncated);
            }
            other => panic!("{other:?}"),
        }
    }
}
