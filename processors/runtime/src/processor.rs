//! What domain code implements: the [`Processor`] trait and the types it sees.
//!
//! Nothing here mentions Kafka client types. A processor receives an [`Envelope`] (key,
//! headers, decoded value, position, trace context) and returns [`Output`]s; the runtime does
//! the consuming, encoding, producing and committing. That keeps domain logic testable
//! given/when/then, without I/O.

use std::future::Future;
use std::sync::Arc;

use apache_avro::types::Value;
use bytes::Bytes;
use eip_schemas::{
    AvroRecord, Cause, Classify, Codec, CodecError, CompiledSchema, Decoded, ErrorClass,
    SchemaError, WriterSchema,
};

use crate::trace::TraceContext;

/// A header's name: the names eip itself reads and writes are shared `'static` strings, so
/// copying a record's headers allocates nothing for them.
pub type HeaderName = std::borrow::Cow<'static, str>;

/// Record headers: an ordered list of name/value pairs (names may repeat, as in Kafka).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(HeaderName, Option<Bytes>)>);

/// The header names interned by [`intern`]: the trace context, the correlation id, and the
/// runtime's dead-letter headers.
const INTERNED: &[&str] = &[
    crate::trace::TRACEPARENT,
    crate::trace::CORRELATION_ID,
    "tracestate",
    crate::dlq::ERROR_CLASS,
    crate::dlq::REASON,
    crate::dlq::SOURCE_TOPIC,
    crate::dlq::SOURCE_PARTITION,
    crate::dlq::SOURCE_OFFSET,
    crate::dlq::ATTEMPTS,
    crate::dlq::FIRST_FAILURE,
    crate::dlq::PROCESSOR,
];

/// `name` as a shared `'static` string when it is one eip uses, else copied.
pub fn intern(name: &str) -> HeaderName {
    match INTERNED.iter().find(|known| **known == name) {
        Some(known) => HeaderName::Borrowed(known),
        None => HeaderName::Owned(name.to_string()),
    }
}

/// Copies borrowed name/value pairs, as a client library hands them out, in order.
impl<'a> FromIterator<(&'a str, Option<&'a [u8]>)> for Headers {
    fn from_iter<I: IntoIterator<Item = (&'a str, Option<&'a [u8]>)>>(pairs: I) -> Headers {
        Headers(
            pairs
                .into_iter()
                .map(|(k, v)| (intern(k), v.map(Bytes::copy_from_slice)))
                .collect(),
        )
    }
}

impl Headers {
    /// No headers.
    pub fn new() -> Headers {
        Headers(Vec::new())
    }

    /// Room for `n` headers.
    pub fn with_capacity(n: usize) -> Headers {
        Headers(Vec::with_capacity(n))
    }

    /// Appends a header whose value is already shared (a slice of a consumed batch, say).
    pub fn push_shared(&mut self, name: HeaderName, value: Option<Bytes>) {
        self.0.push((name, value));
    }

    /// The last value of `name`, if any.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref())
    }

    /// The last value of `name` as UTF-8, if any and valid.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Appends a header, keeping earlier values of the same name.
    pub fn push(&mut self, name: impl Into<HeaderName>, value: impl Into<Bytes>) {
        self.0.push((name.into(), Some(value.into())));
    }

    /// Appends a header with a null value.
    pub fn push_null(&mut self, name: impl Into<HeaderName>) {
        self.0.push((name.into(), None));
    }

    /// Sets `name` to `value`, removing earlier values of it.
    pub fn set(&mut self, name: &str, value: impl Into<Bytes>) {
        self.remove(name);
        self.0.push((intern(name), Some(value.into())));
    }

    /// Removes every value of `name`.
    pub fn remove(&mut self, name: &str) {
        self.0.retain(|(k, _)| k != name);
    }

    /// The headers whose names `drop` does not match, in order; the values are shared, not
    /// copied. Forwarding a record without its stale `eip.dlq.*` or `eip.retry.*` headers is
    /// this.
    pub fn without(&self, drop: impl Fn(&str) -> bool) -> Headers {
        Headers(self.0.iter().filter(|(k, _)| !drop(k)).cloned().collect())
    }

    /// Every header in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Option<&[u8]>)> {
        self.0.iter().map(|(k, v)| (k.as_ref(), v.as_deref()))
    }

    /// Number of headers.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Where a record came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// Source topic.
    pub topic: Arc<str>,
    /// Source partition.
    pub partition: i32,
    /// Offset in the partition.
    pub offset: i64,
    /// Record timestamp in milliseconds since the epoch, if the broker gave one.
    pub timestamp_ms: Option<i64>,
}

/// A consumed record as the runtime holds it: raw bytes and where it came from.
#[derive(Debug, Clone)]
pub struct Record {
    /// Where it came from.
    pub position: Position,
    /// Raw key.
    pub key: Option<Bytes>,
    /// Raw value. In the pipeline it is a slice of its poll batch's buffer: copy it
    /// (`Bytes::copy_from_slice`) to keep it past the record, or the whole buffer stays.
    pub payload: Option<Bytes>,
    /// Headers.
    pub headers: Headers,
}

/// What a processor receives: a decoded record with its context.
#[derive(Debug, Clone)]
pub struct Envelope<T> {
    /// The decoded value.
    pub value: T,
    /// Raw key (usually the aggregate id).
    pub key: Option<Bytes>,
    /// Headers of the record.
    pub headers: Headers,
    /// Where the record came from.
    pub position: Position,
    /// The trace context of the record (from its `traceparent`, or a new trace).
    pub trace: TraceContext,
    /// The correlation id (from the `correlation-id` header, or a new one).
    pub correlation_id: Arc<str>,
}

/// The payload of an output record.
pub enum Payload {
    /// Bytes produced as they are (already framed, or deliberately not Avro).
    Bytes(Bytes),
    /// A typed record; the runtime frames it with the registry id of its schema.
    Record(Box<dyn EncodeRecord>),
    /// A generic Avro value written with a known registry schema.
    Value {
        /// The writer schema (and its id).
        schema: Arc<WriterSchema>,
        /// The value, which must match the schema.
        value: Value,
    },
    /// No value: a tombstone, deleting the key in compacted topics.
    Tombstone,
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Payload::Bytes(b) => write!(f, "Bytes({} bytes)", b.len()),
            Payload::Record(r) => write!(f, "Record({})", r.full_name()),
            Payload::Value { schema, .. } => write!(f, "Value({})", schema.full_name),
            Payload::Tombstone => f.write_str("Tombstone"),
        }
    }
}

/// A typed record the runtime can frame once it knows the schema id. Implemented for every
/// [`AvroRecord`].
pub trait EncodeRecord: Send + Sync {
    /// The schema's full name.
    fn full_name(&self) -> &'static str;
    /// The compiled schema (for the registry id lookup).
    fn compiled(&self) -> Result<&'static CompiledSchema, SchemaError>;
    /// Encodes the record framed with `id`.
    fn encode(&self, id: u32) -> Result<Vec<u8>, CodecError>;
}

impl<T: AvroRecord> EncodeRecord for T {
    fn full_name(&self) -> &'static str {
        T::FULL_NAME
    }
    fn compiled(&self) -> Result<&'static CompiledSchema, SchemaError> {
        T::compiled()
    }
    fn encode(&self, id: u32) -> Result<Vec<u8>, CodecError> {
        eip_schemas::codec::encode_with_id(id, self)
    }
}

/// One record a processor wants produced.
#[derive(Debug)]
pub struct Output {
    /// Target topic.
    pub topic: Arc<str>,
    /// Key; records with the same key keep their order.
    pub key: Option<Bytes>,
    /// Value.
    pub payload: Payload,
    /// Extra headers. The runtime adds `traceparent` and `correlation-id` unless set here.
    pub headers: Headers,
}

impl Output {
    /// An output to `topic` with `key` and `payload` and no extra headers.
    pub fn new(topic: impl Into<Arc<str>>, key: Option<Bytes>, payload: Payload) -> Output {
        Output {
            topic: topic.into(),
            key,
            payload,
            headers: Headers::new(),
        }
    }

    /// A typed record output.
    pub fn record<T: AvroRecord>(
        topic: impl Into<Arc<str>>,
        key: Option<Bytes>,
        value: T,
    ) -> Output {
        Output::new(topic, key, Payload::Record(Box::new(value)))
    }
}

/// Why a processor could not handle a record. Classified, so the runtime knows what to do.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProcessError {
    /// Encoding or decoding failed; classified by the codec.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// A dependency is unavailable; retry the record in place.
    #[error("{reason}")]
    Transient {
        /// What failed, in the processor's words.
        reason: String,
        /// The error that caused it, if any.
        #[source]
        source: Option<Cause>,
    },
    /// The record can never be handled; dead-letter it.
    #[error("{reason}")]
    Poison {
        /// Why, in the processor's words (the DLQ reason header carries it with its causes).
        reason: String,
        /// The error that caused it, if any.
        #[source]
        source: Option<Cause>,
    },
    /// A newer owner has claimed the partition in the store: this member must stop working
    /// on it (its worker is dropped without committing). Returned by a stateful processor's
    /// `flush` when the store's epoch is no longer its own.
    #[error("fenced: {reason}")]
    Fenced {
        /// What the store said.
        reason: String,
    },
    /// The process must stop.
    #[error("{reason}")]
    Fatal {
        /// Why, in the processor's words.
        reason: String,
        /// The error that caused it, if any.
        #[source]
        source: Option<Cause>,
    },
}

impl ProcessError {
    /// A transient error with no underlying cause.
    pub fn transient(reason: impl Into<String>) -> ProcessError {
        ProcessError::Transient {
            reason: reason.into(),
            source: None,
        }
    }

    /// A poison error with no underlying cause.
    pub fn poison(reason: impl Into<String>) -> ProcessError {
        ProcessError::Poison {
            reason: reason.into(),
            source: None,
        }
    }

    /// A fatal error with no underlying cause.
    pub fn fatal(reason: impl Into<String>) -> ProcessError {
        ProcessError::Fatal {
            reason: reason.into(),
            source: None,
        }
    }

    /// A poison error caused by `source`: `reason` says what was being done.
    pub fn poison_from(
        reason: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> ProcessError {
        ProcessError::Poison {
            reason: reason.into(),
            source: Some(std::sync::Arc::new(source)),
        }
    }

    /// A fatal error caused by `source`: `reason` says what was being done.
    pub fn fatal_from(
        reason: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> ProcessError {
        ProcessError::Fatal {
            reason: reason.into(),
            source: Some(std::sync::Arc::new(source)),
        }
    }

    /// The message with every cause, as logs and dead letters show it.
    pub fn chain(&self) -> String {
        eip_schemas::chain(self)
    }
}

impl Classify for ProcessError {
    fn class(&self) -> ErrorClass {
        match self {
            ProcessError::Codec(e) => e.class(),
            ProcessError::Transient { .. } => ErrorClass::Transient,
            ProcessError::Poison { .. } => ErrorClass::Poison,
            ProcessError::Fatal { .. } | ProcessError::Fenced { .. } => ErrorClass::Fatal,
        }
    }
}

/// How a processor's input is decoded from the raw record.
pub trait Decode: Sized + Send + 'static {
    /// Decodes `payload`, resolving schemas through `codec`.
    fn decode(
        codec: &Codec,
        payload: Option<&[u8]>,
    ) -> impl Future<Output = Result<Self, CodecError>> + Send;
}

impl<T: AvroRecord> Decode for T {
    fn decode(
        codec: &Codec,
        payload: Option<&[u8]>,
    ) -> impl Future<Output = Result<Self, CodecError>> + Send {
        codec.decode::<T>(payload)
    }
}

/// Input for processors that want the value undecoded (routers, adapters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Raw(pub Option<Bytes>);

/// Input for processors that handle any Avro record generically.
#[derive(Debug, Clone)]
pub struct AnyRecord(pub Decoded);

impl Decode for AnyRecord {
    async fn decode(codec: &Codec, payload: Option<&[u8]>) -> Result<Self, CodecError> {
        codec.decode_value(payload).await.map(AnyRecord)
    }
}

/// A delivery of one of a processor's outputs that failed for a reason that may pass (a broker
/// restarting, a topic that does not exist yet), handed to [`Processor::on_delivery_failure`].
#[derive(Debug)]
pub struct DeliveryFailure<'a> {
    /// The consumed record whose output this is.
    pub source: &'a Record,
    /// The topic the output was for.
    pub topic: &'a str,
    /// The output's key.
    pub key: Option<&'a [u8]>,
    /// The output's encoded value.
    pub payload: Option<&'a [u8]>,
    /// The output's headers.
    pub headers: Headers,
    /// What the producer said.
    pub error: String,
    /// Failed attempts so far for this output (1 on the first failure).
    pub attempts: u32,
}

/// What to do about a failed delivery.
#[derive(Debug)]
pub enum Redirect {
    /// Send the same record again, in place, after a backoff (the default).
    Again,
    /// Produce this record instead (a retry topic, a dead-letter topic). Its own delivery
    /// failures come back to [`Processor::on_delivery_failure`] in turn.
    To(Output),
}

/// The domain logic of one processor.
///
/// `process` is called once per record, in offset order per partition, concurrently across
/// partitions. It should be a function of its input (and of state the processor keeps itself);
/// it may be called more than once for the same record after a crash or a transient error,
/// so its effects must be idempotent.
pub trait Processor: Send + Sync + 'static {
    /// The decoded input type.
    type Input: Send + 'static;

    /// Short name, used as the `processor` metric label and in DLQ headers.
    fn name(&self) -> &str;

    /// Topics this processor produces to, checked (or created) at startup so a missing one
    /// is a startup error rather than a failure on the first record.
    fn output_topics(&self) -> Vec<String> {
        Vec::new()
    }

    /// Partitions for `topic` when the runtime creates it (`pipeline.create_topics`); `None`
    /// for `pipeline.topic_partitions`. A router keeps its rarely used retry topics small:
    /// every assigned partition costs the broker a fetch.
    fn partitions_for(&self, topic: &str) -> Option<i32> {
        let _ = topic;
        None
    }

    /// What `topic` is for, which sets how long the broker keeps it when the runtime creates
    /// it. The default is [`History`](crate::topics::TopicRole::History), the safe choice:
    /// kept forever. A router's retry topics are streams.
    fn topic_role(&self, topic: &str) -> crate::topics::TopicRole {
        let _ = topic;
        crate::topics::TopicRole::History
    }

    /// Decodes a raw record into the input type. The default for typed inputs uses the codec.
    fn decode(
        &self,
        codec: &Codec,
        record: &Record,
    ) -> impl Future<Output = Result<Self::Input, ProcessError>> + Send;

    /// When the record may be handled, if not at once: the partition's worker waits until
    /// then, cancellably, instead of `process` sleeping (see
    /// [`crate::stateful::Stateful::not_before`]).
    fn not_before(&self, record: &Record) -> Option<std::time::SystemTime> {
        let _ = record;
        None
    }

    /// Handles one record and returns the records to produce.
    fn process(
        &self,
        input: Envelope<Self::Input>,
    ) -> impl Future<Output = Result<Vec<Output>, ProcessError>> + Send;

    /// Decides what happens when an output could not be delivered for a reason that may pass.
    /// The default sends it again in place with backoff, which keeps per-key order but holds
    /// the partition; a router diverts it to a retry topic instead. The source record is
    /// committed once the output, or what it was redirected to, is acknowledged.
    fn on_delivery_failure(&self, failure: &DeliveryFailure<'_>) -> Redirect {
        let _ = failure;
        Redirect::Again
    }
}

/// Decodes a record with the input type's [`Decode`] implementation; the usual body of
/// [`Processor::decode`].
pub async fn decode_with<T: Decode>(codec: &Codec, record: &Record) -> Result<T, ProcessError> {
    T::decode(codec, record.payload.as_deref())
        .await
        .map_err(ProcessError::from)
}

/// Decodes nothing: hands the raw payload on.
pub fn decode_raw(record: &Record) -> Raw {
    Raw(record.payload.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_keep_order_and_last_value_wins_on_get() {
        let mut h = Headers::new();
        h.push("a", "1");
        h.push("b", "2");
        h.push("a", "3");
        assert_eq!(h.get_str("a"), Some("3"));
        assert_eq!(h.len(), 3);
        h.set("a", "4");
        assert_eq!(h.iter().map(|(k, _)| k).collect::<Vec<_>>(), vec!["b", "a"]);
        assert_eq!(h.get_str("a"), Some("4"));
        h.push_null("n");
        assert_eq!(h.get("n"), None);
        h.remove("b");
        assert_eq!(h.get("b"), None);
    }

    #[test]
    fn errors_are_classified() {
        assert_eq!(ProcessError::transient("x").class(), ErrorClass::Transient);
        assert_eq!(ProcessError::poison("x").class(), ErrorClass::Poison);
        assert_eq!(ProcessError::fatal("x").class(), ErrorClass::Fatal);
        let codec = ProcessError::from(CodecError::RegistryUnavailable {
            reason: "down".into(),
        });
        assert_eq!(codec.class(), ErrorClass::Transient);
    }
}
