//! The router as an eip-runtime [`Processor`]: decode, evaluate the rules, transform, convert,
//! route; divert failed deliveries through retry topics to the DLQ.
//!
//! Retry topics: when a delivery to a target fails (the topic does not exist, the broker
//! can't take it) and `in_place_attempts` sends did not help, the output goes to
//! `<source>.retry.1` with headers that say where it was going and when to try again. The
//! router consumes its retry topics too: it waits until the record is due, then produces it
//! to its target. Failing again moves it to `.retry.2`, and so on; after the last level it is
//! dead-lettered to `<source><dlq_suffix>` with the usual DLQ headers plus
//! `eip.dlq.target-topic`. The source partition is never blocked by a failing target, at the
//! cost of per-key order for the records that needed a retry (documented in docs/router.md).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use apache_avro::types::Value;
use bytes::Bytes;
use eip_runtime::config::ConfigError;
use eip_runtime::dlq;
use eip_runtime::trace::TRACEPARENT;
use eip_runtime::{
    DeliveryFailure, Envelope, Headers, Output, Payload, ProcessError, Processor, Record, Redirect,
    Section,
};
use eip_schemas::{Codec, CompiledSchema, ErrorClass, Registry, RegistrySettings, WriterSchema};
use prometheus::{IntCounterVec, Opts};
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use tracing::debug;

use crate::reload::Rules;
use crate::rules::{Action, Decision, Format, RuleSet, Subject};
use crate::transform::conform;

/// Header: the rules version that routed the record.
pub const RULES_VERSION: &str = "eip.router.rules-version";
/// Header on retry records: the topic the record is for.
pub const RETRY_TARGET: &str = "eip.retry.target";
/// Header on retry records: the retry level (1-based).
pub const RETRY_ATTEMPT: &str = "eip.retry.attempt";
/// Header on retry records: when to try again, milliseconds since the epoch.
pub const RETRY_DUE: &str = "eip.retry.due-ms";
/// Header on retry records: why the last delivery failed.
pub const RETRY_REASON: &str = "eip.retry.reason";
/// Header on retry records: when the first delivery failed (RFC 3339).
pub const RETRY_FIRST_FAILURE: &str = "eip.retry.first-failure";
/// Header on retry records: the original source topic, partition and offset.
pub const RETRY_SOURCE: &str = "eip.retry.source";
/// Header on dead letters from exhausted retries: the target that could not be reached.
pub const DLQ_TARGET: &str = dlq::TARGET_TOPIC;

/// `[processor]` settings of the router.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouterConfig {
    /// The rules file.
    pub rules: String,
    /// How often the rules file is checked for changes; `0s` turns watching off.
    #[serde(with = "humantime_serde")]
    pub watch_interval: Duration,
    /// Delays of the retry levels: `<source>.retry.1` waits the first, and so on.
    pub retry_delays: Vec<String>,
    /// Failed sends of a record to a target before it goes to a retry topic: 1 sends it to
    /// the first retry level at the first failure, 3 tries twice more in place (with backoff).
    pub in_place_attempts: u32,
    /// Partitions of each retry topic when the router creates it. Retries are rare, and
    /// every assigned partition costs the broker a fetch, so they are small by default.
    pub retry_partitions: i32,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            rules: "rules.toml".into(),
            watch_interval: Duration::from_secs(1),
            retry_delays: vec!["1s".into(), "5s".into(), "30s".into()],
            in_place_attempts: 1,
            retry_partitions: 1,
        }
    }
}

impl RouterConfig {
    /// The parsed retry delays.
    pub fn delays(&self) -> Result<Vec<Duration>, ConfigError> {
        self.retry_delays
            .iter()
            .enumerate()
            .map(|(i, d)| {
                humantime::parse_duration(d).map_err(|e| {
                    ConfigError::invalid(format!("retry_delays[{i}]"), format!("`{d}`: {e}"))
                })
            })
            .collect()
    }
}

impl Section for RouterConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.rules.trim().is_empty() {
            return Err(ConfigError::invalid("rules", "must name the rules file"));
        }
        let delays = self.delays()?;
        if delays.is_empty() || delays.len() > 16 {
            return Err(ConfigError::invalid(
                "retry_delays",
                "must list between 1 and 16 delays",
            ));
        }
        if !(1..=1024).contains(&self.retry_partitions) {
            return Err(ConfigError::invalid(
                "retry_partitions",
                "must be between 1 and 1024",
            ));
        }
        if self.in_place_attempts == 0 {
            return Err(ConfigError::invalid(
                "in_place_attempts",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

/// The name of retry level `level` of `source`.
pub fn retry_topic(source: &str, level: usize) -> String {
    format!("{source}.retry.{level}")
}

/// Router metrics (registered with the runtime's registry at start).
#[derive(Debug, Clone)]
pub struct RouterMetrics {
    /// Records routed, by rule (`default` for the default route).
    pub routed: IntCounterVec,
    /// Records dropped, by reason.
    pub dropped: IntCounterVec,
    /// Records sent to a retry level, by level, or to the DLQ after the last (`dlq`).
    pub retried: IntCounterVec,
}

impl RouterMetrics {
    fn new() -> prometheus::Result<RouterMetrics> {
        Ok(RouterMetrics {
            routed: IntCounterVec::new(
                Opts::new("eip_router_routed_total", "Records routed, by rule."),
                &["rule"],
            )?,
            dropped: IntCounterVec::new(
                Opts::new("eip_router_dropped_total", "Records dropped, by reason."),
                &["reason"],
            )?,
            retried: IntCounterVec::new(
                Opts::new(
                    "eip_router_retry_scheduled_total",
                    "Failed deliveries sent to a retry level (or `dlq` after the last).",
                ),
                &["level"],
            )?,
        })
    }

    /// Registers every router metric with `registry`.
    pub fn register(&self, registry: &prometheus::Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.routed.clone()))?;
        registry.register(Box::new(self.dropped.clone()))?;
        registry.register(Box::new(self.retried.clone()))
    }
}

/// A schema outputs are written with: its registry id and its named types.
struct Target {
    writer: Arc<WriterSchema>,
}

/// What the router hands from decode to process.
#[derive(Debug)]
pub enum RouterInput {
    /// A record of a source topic.
    Record {
        /// The rules that route it (a snapshot taken when it was decoded).
        rules: Arc<RuleSet>,
        /// Its Avro type.
        type_name: String,
        /// Its value.
        value: Value,
        /// The registry schema it was written with (Avro sources), or none (JSON/XML sources).
        writer: Option<Arc<WriterSchema>>,
        /// The original payload.
        raw: Option<Bytes>,
    },
    /// A record of a retry topic.
    Retry {
        /// The level it is at.
        level: usize,
        /// The source topic it came from.
        source: String,
        /// The payload to deliver, as it was produced.
        payload: Option<Bytes>,
    },
}

/// The router processor.
pub struct Router {
    rules: Arc<Rules>,
    sources: Vec<String>,
    delays: Vec<Duration>,
    in_place_attempts: u32,
    retry_partitions: i32,
    dlq_suffix: String,
    codec: Codec,
    targets: Mutex<HashMap<(String, u32), Arc<Target>>>,
    metrics: RouterMetrics,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("sources", &self.sources)
            .field("rules", &self.rules.current().version)
            .finish_non_exhaustive()
    }
}

impl Router {
    /// A router for `sources` (the configured input topics, without retry topics).
    pub fn new(
        rules: Arc<Rules>,
        config: &RouterConfig,
        sources: Vec<String>,
        dlq_suffix: &str,
        registry: RegistrySettings,
    ) -> Result<Router, ConfigError> {
        Ok(Router {
            rules,
            sources,
            delays: config.delays()?,
            in_place_attempts: config.in_place_attempts,
            retry_partitions: config.retry_partitions,
            dlq_suffix: dlq_suffix.to_string(),
            codec: Codec::new(Arc::new(
                Registry::new(registry)
                    .map_err(|e| ConfigError::invalid("registry", e.to_string()))?,
            )),
            targets: Mutex::new(HashMap::new()),
            metrics: RouterMetrics::new()
                .map_err(|e| ConfigError::invalid("metrics", e.to_string()))?,
        })
    }

    /// The router's metrics.
    pub fn metrics(&self) -> &RouterMetrics {
        &self.metrics
    }

    /// Every retry topic of every source, level by level.
    pub fn retry_topics(&self) -> Vec<String> {
        self.sources
            .iter()
            .flat_map(|s| (1..=self.delays.len()).map(move |l| retry_topic(s, l)))
            .collect()
    }

    /// `(source, level)` when `topic` is one of our retry topics.
    fn retry_level(&self, topic: &str) -> Option<(String, usize)> {
        self.sources.iter().find_map(|s| {
            let rest = topic.strip_prefix(s.as_str())?.strip_prefix(".retry.")?;
            let level: usize = rest.parse().ok()?;
            (1..=self.delays.len())
                .contains(&level)
                .then(|| (s.clone(), level))
        })
    }

    async fn target_for_writer(&self, writer: &Arc<WriterSchema>) -> Arc<Target> {
        let key = (writer.full_name.clone(), writer.id);
        if let Some(t) = self.lock_targets().get(&key) {
            return t.clone();
        }
        let t = Arc::new(Target {
            writer: writer.clone(),
        });
        self.lock_targets().insert(key, t.clone());
        t
    }

    async fn target_for(&self, compiled: &CompiledSchema) -> Result<Arc<Target>, ProcessError> {
        let key = (compiled.full_name.clone(), 0);
        if let Some(t) = self.lock_targets().get(&key) {
            return Ok(t.clone());
        }
        let id = self.codec.registry().id_for(compiled).await?;
        let t = Arc::new(Target {
            writer: Arc::new(WriterSchema {
                id,
                schema: compiled.schema.clone(),
                full_name: compiled.full_name.clone(),
                fingerprint: compiled.fingerprint,
            }),
        });
        self.lock_targets().insert(key, t.clone());
        Ok(t)
    }

    fn lock_targets(&self) -> std::sync::MutexGuard<'_, HashMap<(String, u32), Arc<Target>>> {
        self.targets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The payload and extra headers of one routed output.
    async fn payload(
        &self,
        action: &Action,
        rules: &RuleSet,
        type_name: &str,
        value: &Value,
        writer: Option<&Arc<WriterSchema>>,
        raw: Option<&Bytes>,
    ) -> Result<(Payload, Option<&'static str>), ProcessError> {
        if action.forwards_bytes()
            && let (Some(_), Some(raw)) = (writer, raw)
        {
            return Ok((Payload::Bytes(raw.clone()), None));
        }
        let mut v = value.clone();
        for step in &action.transform {
            step.apply(&mut v)
                .map_err(|e| ProcessError::poison_from("transform", e))?;
        }
        let target = match (action.map_to, writer) {
            (Some(compiled), _) => self.target_for(compiled).await?,
            (None, Some(w)) => self.target_for_writer(w).await,
            (None, None) => {
                let compiled = eip_schemas::Catalog::global()
                    .and_then(|c| c.get(type_name))
                    .map_err(|e| ProcessError::fatal_from("the schema catalog", e))?;
                self.target_for(compiled).await?
            }
        };
        let what = if action.map_to.is_some() {
            "map_to"
        } else {
            "transform"
        };
        let v = conform(v, &target.writer.schema).map_err(|e| {
            ProcessError::poison_from(
                format!(
                    "{what} to {} (rules {})",
                    target.writer.full_name, rules.version
                ),
                e,
            )
        })?;
        Ok(match action.format {
            Format::Avro => (
                Payload::Value {
                    schema: target.writer.clone(),
                    value: v,
                },
                None,
            ),
            Format::Json => (
                Payload::Bytes(Bytes::from(
                    serde_json::to_vec(&eip_schemas::convert::to_json(&v))
                        .map_err(|e| ProcessError::poison_from("to json", e))?,
                )),
                Some("application/json"),
            ),
            Format::Xml => {
                let root = target
                    .writer
                    .full_name
                    .rsplit('.')
                    .next()
                    .unwrap_or("record")
                    .to_string();
                (
                    Payload::Bytes(Bytes::from(eip_schemas::convert::to_xml(&root, &v))),
                    Some("application/xml"),
                )
            }
        })
    }

    fn retry_output(&self, failure: &DeliveryFailure<'_>) -> Redirect {
        let src = failure.source;
        let (source, level) = match self.retry_level(&src.position.topic) {
            Some((s, l)) => (s, l),
            None => (src.position.topic.to_string(), 0),
        };
        let mut headers = failure.headers.without(|k| k.starts_with("eip.retry."));
        let now = time::OffsetDateTime::now_utc();
        let first_failure = src
            .headers
            .get_str(RETRY_FIRST_FAILURE)
            .map(str::to_string)
            .unwrap_or_else(|| now.format(&Rfc3339).unwrap_or_default());
        let origin = src.headers.get_str(RETRY_SOURCE).map_or_else(
            || {
                format!(
                    "{}/{}/{}",
                    src.position.topic, src.position.partition, src.position.offset
                )
            },
            str::to_string,
        );
        let next = level + 1;
        if next <= self.delays.len() {
            let due = SystemTime::now() + self.delays[next - 1];
            let due_ms = due
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            headers.push(RETRY_TARGET, failure.topic.to_string());
            headers.push(RETRY_ATTEMPT, next.to_string());
            headers.push(RETRY_DUE, due_ms.to_string());
            headers.push(RETRY_REASON, failure.error.clone());
            headers.push(RETRY_FIRST_FAILURE, first_failure);
            headers.push(RETRY_SOURCE, origin);
            self.metrics
                .retried
                .with_label_values(&[next.to_string().as_str()])
                .inc();
            let mut out = Output::new(
                retry_topic(&source, next),
                failure.key.map(Bytes::copy_from_slice),
                payload_of(failure.payload),
            );
            out.headers = headers;
            return Redirect::To(out);
        }
        // Out of retry levels: dead-letter to the source's DLQ, with where it came from.
        let mut parts = origin.rsplitn(3, '/');
        let offset = parts.next().and_then(|o| o.parse().ok()).unwrap_or(-1);
        let partition = parts.next().and_then(|p| p.parse().ok()).unwrap_or(-1);
        let topic = parts.next().unwrap_or(&source).to_string();
        let first = time::OffsetDateTime::parse(&first_failure, &Rfc3339).unwrap_or(now);
        let record = Record {
            position: eip_runtime::Position {
                topic: topic.as_str().into(),
                partition,
                offset,
                timestamp_ms: None,
            },
            key: failure.key.map(Bytes::copy_from_slice),
            payload: failure.payload.map(Bytes::copy_from_slice),
            headers,
        };
        let reason = format!(
            "delivery to {} failed after {} retry levels: {}",
            failure.topic,
            self.delays.len(),
            failure.error
        );
        let mut dl_headers = dlq::headers(
            &record,
            &dlq::Failure {
                class: ErrorClass::Transient,
                reason: &reason,
                processor: "router",
                attempts: (self.delays.len() as u32 + 1) * self.in_place_attempts,
                first_failure: first,
            },
        );
        dl_headers.push(DLQ_TARGET, failure.topic.to_string());
        self.metrics.retried.with_label_values(&["dlq"]).inc();
        let mut out = Output::new(
            format!("{source}{}", self.dlq_suffix),
            record.key,
            payload_of(failure.payload),
        );
        out.headers = dl_headers;
        Redirect::To(out)
    }

    fn is_ours(&self, topic: &str) -> bool {
        topic.ends_with(self.dlq_suffix.as_str()) || self.retry_level(topic).is_some()
    }
}

fn payload_of(p: Option<&[u8]>) -> Payload {
    match p {
        Some(b) => Payload::Bytes(Bytes::copy_from_slice(b)),
        None => Payload::Tombstone,
    }
}

impl Processor for Router {
    type Input = RouterInput;

    fn name(&self) -> &str {
        "router"
    }

    fn output_topics(&self) -> Vec<String> {
        self.retry_topics()
    }

    fn partitions_for(&self, topic: &str) -> Option<i32> {
        let retry = topic
            .strip_suffix(self.dlq_suffix.as_str())
            .unwrap_or(topic);
        self.retry_level(retry).map(|_| self.retry_partitions)
    }

    /// Retry topics hold records only until they are due: the broker's retention. Every other
    /// topic keeps the runtime's default, history.
    fn topic_role(&self, topic: &str) -> eip_runtime::topics::TopicRole {
        if self.retry_level(topic).is_some() {
            eip_runtime::topics::TopicRole::Stream
        } else {
            eip_runtime::topics::TopicRole::History
        }
    }

    /// A retry record waits until it is due: the runtime parks the partition's worker until
    /// then (cancellably, while polling goes on), instead of `process` sleeping. Never longer
    /// than the level's delay, whatever the header says.
    fn not_before(&self, record: &Record) -> Option<SystemTime> {
        let (_, level) = self.retry_level(&record.position.topic)?;
        let due: u64 = record.headers.get_str(RETRY_DUE)?.parse().ok()?;
        let due = UNIX_EPOCH + Duration::from_millis(due);
        let latest = SystemTime::now() + self.delays.get(level - 1).copied().unwrap_or_default();
        Some(due.min(latest))
    }

    async fn decode(&self, codec: &Codec, record: &Record) -> Result<RouterInput, ProcessError> {
        if let Some((source, level)) = self.retry_level(&record.position.topic) {
            return Ok(RouterInput::Retry {
                level,
                source,
                payload: record.payload.clone(),
            });
        }
        let rules = self.rules.current();
        if let Some(src) = rules.source(&record.position.topic)
            && src.format != Format::Avro
        {
            let bytes = record.payload.as_deref().ok_or_else(|| {
                ProcessError::poison(format!("{} record without a value", src.format.as_str()))
            })?;
            let value = match src.format {
                Format::Json => eip_schemas::convert::from_json_bytes(&src.schema.schema, bytes),
                _ => eip_schemas::convert::from_xml(&src.schema.schema, bytes),
            }
            .map_err(|e| {
                ProcessError::poison_from(
                    format!("{} to {}", src.format.as_str(), src.schema.full_name),
                    e,
                )
            })?;
            return Ok(RouterInput::Record {
                type_name: src.schema.full_name.clone(),
                rules: rules.clone(),
                value,
                writer: None,
                raw: record.payload.clone(),
            });
        }
        let decoded = codec
            .decode_value(record.payload.as_deref())
            .await
            .map_err(ProcessError::Codec)?;
        Ok(RouterInput::Record {
            rules,
            type_name: decoded.writer.full_name.clone(),
            value: decoded.value,
            writer: Some(decoded.writer),
            raw: record.payload.clone(),
        })
    }

    async fn process(&self, input: Envelope<RouterInput>) -> Result<Vec<Output>, ProcessError> {
        let carried = |headers: &Headers| {
            headers.without(|k| k == TRACEPARENT || k.starts_with("eip.retry."))
        };
        match input.value {
            RouterInput::Retry {
                level,
                source,
                payload,
            } => {
                let target = input
                    .headers
                    .get_str(RETRY_TARGET)
                    .ok_or_else(|| {
                        ProcessError::poison(format!("retry record without {RETRY_TARGET}"))
                    })?
                    .to_string();
                // The runtime waited until it was due (`not_before`); a record without a valid
                // due time can't have been written by us.
                let _due: u64 = input
                    .headers
                    .get_str(RETRY_DUE)
                    .and_then(|d| d.parse().ok())
                    .ok_or_else(|| {
                        ProcessError::poison(format!("retry record without a valid {RETRY_DUE}"))
                    })?;
                debug!(%source, level, %target, "retrying delivery");
                let mut out = Output::new(target, input.key, payload_of(payload.as_deref()));
                out.headers = carried(&input.headers);
                Ok(vec![out])
            }
            RouterInput::Record {
                rules,
                type_name,
                value,
                writer,
                raw,
            } => {
                let subject = Subject {
                    topic: &input.position.topic,
                    type_name: &type_name,
                    headers: &input.headers,
                    value: &value,
                };
                let decision = rules.evaluate(&subject);
                let actions: Vec<(&str, &Action)> = match &decision {
                    Decision::Matched(rs) => {
                        rs.iter().map(|r| (r.name.as_ref(), &r.action)).collect()
                    }
                    Decision::Default(a) => vec![("default", *a)],
                    Decision::Unmatched => {
                        self.metrics.dropped.with_label_values(&["unmatched"]).inc();
                        return Ok(Vec::new());
                    }
                };
                let base = carried(&input.headers);
                let mut outputs: Vec<Output> = Vec::new();
                for (rule, action) in actions {
                    if let Some(reason) = &action.drop {
                        self.metrics.dropped.with_label_values(&[reason]).inc();
                        continue;
                    }
                    self.metrics.routed.with_label_values(&[rule]).inc();
                    let (payload, content_type) = self
                        .payload(
                            action,
                            &rules,
                            &type_name,
                            &value,
                            writer.as_ref(),
                            raw.as_ref(),
                        )
                        .await?;
                    let mut headers = base.clone();
                    for (k, v) in &action.headers {
                        headers.set(k, v.clone());
                    }
                    if let Some(ct) = content_type {
                        headers.set("content-type", ct);
                    }
                    headers.set(RULES_VERSION, rules.version.to_string());
                    for topic in &action.to {
                        // All-match: a topic already routed to by an earlier rule gets one copy.
                        if outputs.iter().any(|o| o.topic == *topic) {
                            continue;
                        }
                        let mut out =
                            Output::new(topic.clone(), input.key.clone(), clone_payload(&payload)?);
                        out.headers = headers.clone();
                        outputs.push(out);
                    }
                }
                Ok(outputs)
            }
        }
    }

    fn on_delivery_failure(&self, failure: &DeliveryFailure<'_>) -> Redirect {
        if self.is_ours(failure.topic) || failure.attempts < self.in_place_attempts {
            return Redirect::Again;
        }
        self.retry_output(failure)
    }
}

/// Copies a routed payload for one more target (the router only makes bytes and values).
fn clone_payload(p: &Payload) -> Result<Payload, ProcessError> {
    Ok(match p {
        Payload::Bytes(b) => Payload::Bytes(b.clone()),
        Payload::Value { schema, value } => Payload::Value {
            schema: schema.clone(),
            value: value.clone(),
        },
        Payload::Tombstone => Payload::Tombstone,
        Payload::Record(r) => {
            return Err(ProcessError::fatal(format!(
                "router payload of type {} can't be copied",
                r.full_name()
            )));
        }
    })
}
