//! Processor configuration: defaults, then a TOML file, then `EIP__*` environment variables.
//!
//! Every section denies unknown fields, durations are humantime strings (`"250ms"`, `"5s"`),
//! and the whole configuration is validated before any network call. A bad value is reported
//! as one line that names the key and where the value came from, e.g.
//! `invalid configuration: pipeline.max_in_flight: must be at least 1 (from EIP__PIPELINE__MAX_IN_FLIGHT)`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Environment variables with this prefix override file values; `__` separates nesting levels,
/// e.g. `EIP__KAFKA__BROKERS=broker:9092` sets `kafka.brokers`.
pub const ENV_PREFIX: &str = "EIP__";

/// A configuration problem, reported before the processor touches the network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A value is missing, of the wrong type, or out of range.
    #[error("invalid configuration: {key}: {reason}{}", origin.as_ref().map(|s| format!(" (from {s})")).unwrap_or_default())]
    Invalid {
        /// The dotted key, e.g. `kafka.brokers`.
        key: String,
        /// What is wrong with it.
        reason: String,
        /// Where the value came from (a file or an environment variable), when known.
        origin: Option<String>,
    },
    /// The configuration file named on the command line does not exist.
    #[error("invalid configuration: file {0} does not exist")]
    MissingFile(String),
}

impl ConfigError {
    /// An invalid-value error for `key`.
    pub fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key: key.into(),
            reason: reason.into(),
            origin: None,
        }
    }
}

/// A processor-specific configuration section (`[processor]`), validated with the rest.
pub trait Section: Default + Serialize + DeserializeOwned + Send + Sync + 'static {
    /// Checks what types alone can't. Keys in errors are relative to `[processor]`.
    fn validate(&self) -> Result<(), ConfigError> {
        Ok(())
    }
}

/// The `[processor]` section of processors that have no settings of their own.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoSettings {}

impl Section for NoSettings {}

/// Where a consumer group with no committed offset starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OffsetReset {
    /// From the oldest record still in the topic.
    Earliest,
    /// Only records produced after the group first joined.
    Latest,
}

/// `[kafka]`: how to reach the brokers and behave in the consumer group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port...]`.
    pub brokers: String,
    /// Consumer group id; every replica of one processor shares it.
    pub group_id: String,
    /// Client id, shown in broker logs and quotas.
    pub client_id: String,
    /// Static group membership (KIP-345): a stable id per replica, such as the StatefulSet pod
    /// name. A replica that restarts takes its partitions back at once, without waiting for
    /// the session timeout and without a rebalance of the other members. `None` for dynamic
    /// membership. See docs/consumer-groups.md.
    pub group_instance_id: Option<String>,
    /// Where a new consumer group starts reading.
    pub auto_offset_reset: OffsetReset,
    /// How often stored offsets are committed to the group coordinator.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// Session timeout: how long the group waits for a silent member before rebalancing.
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// The longest the member may go without polling before the group counts it as failed
    /// (`max.poll.interval.ms`). The poll loop polls continuously, even under backpressure;
    /// what can hold it is a revoke that waits for partitions to drain, up to
    /// `pipeline.drain_timeout` plus 5 s for abandoned work, so this must be at least that plus
    /// 5 s, and at least `session_timeout`.
    #[serde(with = "humantime_serde")]
    pub max_poll_interval: Duration,
    /// `range`, `roundrobin` or `cooperative-sticky` (incremental rebalances, the default).
    pub partition_assignment_strategy: String,
    /// How long the producer waits to fill a batch.
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// How often librdkafka reports statistics (consumer lag metrics come from them).
    #[serde(with = "humantime_serde")]
    pub statistics_interval: Duration,
    /// Extra librdkafka properties for both clients (e.g. `security.protocol`). Properties
    /// that would break eip's guarantees are refused at startup with their name:
    /// `enable.auto.offset.store` other than false, `enable.auto.commit` other than true,
    /// `enable.idempotence` other than true, `acks` other than all.
    pub properties: BTreeMap<String, String>,
    /// Extra librdkafka properties for the consumer only (the same guards apply).
    pub consumer_properties: BTreeMap<String, String>,
    /// Extra librdkafka properties for the producer only (the same guards apply).
    pub producer_properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:19092".into(),
            group_id: "eip".into(),
            client_id: "eip".into(),
            group_instance_id: None,
            auto_offset_reset: OffsetReset::Earliest,
            commit_interval: Duration::from_secs(1),
            session_timeout: Duration::from_secs(10),
            max_poll_interval: Duration::from_secs(60),
            partition_assignment_strategy: "cooperative-sticky".into(),
            linger: Duration::from_millis(5),
            statistics_interval: Duration::from_secs(5),
            properties: BTreeMap::new(),
            consumer_properties: BTreeMap::new(),
            producer_properties: BTreeMap::new(),
        }
    }
}

/// `[registry]`: the Confluent-compatible schema registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Base URL, e.g. `http://127.0.0.1:18081`.
    pub url: String,
    /// Per-request timeout; a registry slower than this counts as unavailable (transient).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Register our own schemas on first use (convenient locally); in production, register
    /// them in the deploy pipeline and set this to false so processors only look them up.
    pub auto_register: bool,
    /// Bearer token for registries that require one.
    pub bearer_token: Option<String>,
}

impl RegistryConfig {
    /// The registry client's settings, from this section: the one place they are built, so
    /// every processor, the gateway and eipctl talk to the registry alike.
    pub fn settings(&self) -> eip_schemas::RegistrySettings {
        eip_schemas::RegistrySettings {
            url: self.url.clone(),
            timeout: self.timeout,
            auto_register: self.auto_register,
            bearer_token: self.bearer_token.clone(),
        }
    }
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            url: "http://127.0.0.1:18081".into(),
            timeout: Duration::from_secs(5),
            auto_register: true,
            bearer_token: None,
        }
    }
}

/// `[pipeline.retry]`: backoff for transient errors, retried in place.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// First backoff.
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Backoff ceiling; retries go on at this interval until the error clears.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Growth factor between attempts (at least 1).
    pub multiplier: f64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            multiplier: 2.0,
        }
    }
}

/// `[pipeline]`: what to consume and how much to hold in flight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Topics to consume.
    pub inputs: Vec<String>,
    /// Each input topic `T` dead-letters into `T` + this suffix.
    pub dlq_suffix: String,
    /// Records held between consume and commit. When they fill this budget the consumer takes
    /// nothing more for a moment; if it stays full, the partitions holding their share of it
    /// (this divided by the partitions assigned: slow or stuck ones) are held back (paused) so
    /// the others go on, and no partition ever holds more than four times its share. A slow
    /// downstream becomes backpressure, not memory growth: with a slow processor or one stuck
    /// partition, memory stays under about twice this × the average record size, and never
    /// passes four times it, plus librdkafka's prefetch queue, bounded at 16 MiB
    /// (`kafka::PREFETCH_KBYTES`).
    pub max_in_flight: usize,
    /// Records taken from the consumer per dispatch round.
    pub max_batch: usize,
    /// Create missing input and DLQ topics at startup (local use); otherwise a missing topic
    /// stops startup with a message naming it.
    pub create_topics: bool,
    /// Partitions for topics created by `create_topics`.
    pub topic_partitions: i32,
    /// How long a partition being revoked, or the whole process on SIGTERM, may take to finish
    /// its in-flight records before they are abandoned (uncommitted, so redelivered).
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// On shutdown, how long closing the consumer (leaving the group, finishing its commits)
    /// may take after the drain. A broker that stopped answering would hold the close
    /// forever; past this the process exits with an error, and whatever was not committed
    /// is redelivered.
    #[serde(with = "humantime_serde")]
    pub close_timeout: Duration,
    /// A stateful processor's group commit: flush after this many records...
    pub flush_records: usize,
    /// ...or when the oldest unflushed change is this old, whichever comes first. Offsets of
    /// stateful processors are committed only after their flush, so this bounds how much is
    /// redone after a crash (the store skips what it already holds).
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// Backoff for transient errors.
    pub retry: RetryConfig,
    /// History topics (see the processor's `history_topics`) that the operator accepts can't
    /// be replayed whole from offset 0, because snapshots cover what is gone. Without this, a
    /// processor refuses to start when such a topic has finite retention, is compacted, or
    /// has lost its first records.
    pub accept_truncated_history: Vec<String>,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            inputs: Vec::new(),
            dlq_suffix: ".dlq".into(),
            max_in_flight: 20_000,
            max_batch: 500,
            create_topics: false,
            topic_partitions: 4,
            drain_timeout: Duration::from_secs(20),
            close_timeout: Duration::from_secs(15),
            flush_records: 5_000,
            flush_interval: Duration::from_millis(100),
            retry: RetryConfig::default(),
            accept_truncated_history: Vec::new(),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line (production).
    Json,
    /// Human-readable lines (local runs).
    Text,
}

/// `[telemetry]`: metrics, probes and logs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Address of the HTTP server for `/metrics`, `/healthz` and `/readyz`.
    pub listen: SocketAddr,
    /// Log format.
    pub log_format: LogFormat,
    /// `tracing` filter directive, e.g. `info` or `eip_runtime=debug,info`.
    pub log_filter: String,
    /// How often readiness re-checks the broker and the registry.
    #[serde(with = "humantime_serde")]
    pub readiness_interval: Duration,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            log_format: LogFormat::Json,
            log_filter: "info".into(),
            readiness_interval: Duration::from_secs(5),
        }
    }
}

/// Loads defaults, then `file` (if given; it must exist), then the `env` provider, into `T`:
/// the one layered loader every eip binary's configuration goes through (a processor's
/// [`Config`], the gateway's). Validation is the caller's, right after.
pub fn load_layered<T>(file: Option<&Path>, env: Env) -> Result<T, ConfigError>
where
    T: Default + Serialize + DeserializeOwned,
{
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    if let Some(path) = file {
        if !path.exists() {
            return Err(ConfigError::MissingFile(path.display().to_string()));
        }
        figment = figment.merge(Toml::file_exact(path));
    }
    figment.merge(env).extract().map_err(from_figment)
}

/// The `EIP__*` variables of the process environment, `__` separating nesting levels.
pub fn environment() -> Env {
    Env::prefixed(ENV_PREFIX).split("__")
}

impl KafkaConfig {
    /// Checks what every client needs: brokers as `host:port` and a client id. Consumers check
    /// their group settings on top of this.
    pub fn validate_client(&self) -> Result<(), ConfigError> {
        if self.brokers.split(',').any(|b| {
            let b = b.trim();
            b.is_empty() || !b.contains(':')
        }) {
            return Err(ConfigError::invalid(
                "kafka.brokers",
                format!(
                    "`{}` is not a comma-separated list of host:port",
                    self.brokers
                ),
            ));
        }
        if self.client_id.trim().is_empty() {
            return Err(ConfigError::invalid("kafka.client_id", "must not be empty"));
        }
        self.validate_guarantees()
    }

    /// Refuses user librdkafka properties that would silently break what eip promises:
    /// offsets stored only after outputs are acknowledged, committed by librdkafka, and
    /// idempotent `acks=all` produce. Setting one to the value eip uses anyway is allowed.
    pub fn validate_guarantees(&self) -> Result<(), ConfigError> {
        /// (property, the values eip requires, what it protects)
        const CONSUMER: &[(&str, &[&str], &str)] = &[
            (
                "enable.auto.offset.store",
                &["false"],
                "eip stores an offset only after the record's outputs are acknowledged",
            ),
            (
                "enable.auto.commit",
                &["true"],
                "librdkafka commits the offsets eip stores; without it nothing is committed",
            ),
        ];
        const PRODUCER: &[(&str, &[&str], &str)] = &[
            (
                "enable.idempotence",
                &["true"],
                "a re-sent record must not be written twice or out of order",
            ),
            (
                "acks",
                &["all", "-1"],
                "an output counts as delivered only once every in-sync replica has it",
            ),
        ];
        let sections = [
            (
                "kafka.properties",
                &self.properties,
                [CONSUMER, PRODUCER].concat(),
            ),
            (
                "kafka.consumer_properties",
                &self.consumer_properties,
                CONSUMER.to_vec(),
            ),
            (
                "kafka.producer_properties",
                &self.producer_properties,
                PRODUCER.to_vec(),
            ),
        ];
        for (section, props, guarded) in sections {
            for (key, allowed, why) in guarded {
                if let Some(value) = props.get(key)
                    && !allowed.contains(&value.trim().to_ascii_lowercase().as_str())
                {
                    return Err(ConfigError::invalid(
                        format!("{section}.\"{key}\""),
                        format!(
                            "eip requires {key}={} ({why}); remove the setting",
                            allowed[0]
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl RegistryConfig {
    /// Checks the URL scheme and the timeout.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(ConfigError::invalid(
                "registry.url",
                format!("`{}` is not an http:// or https:// URL", self.url),
            ));
        }
        if self.timeout.is_zero() {
            return Err(ConfigError::invalid(
                "registry.timeout",
                "must be more than 0",
            ));
        }
        Ok(())
    }
}

/// Checks a `tracing` filter directive and a readiness interval, as `[telemetry]` holds them
/// in every binary.
pub fn validate_logs_and_readiness(
    log_filter: &str,
    readiness_interval: Duration,
) -> Result<(), ConfigError> {
    tracing_subscriber::EnvFilter::try_new(log_filter).map_err(|e| {
        ConfigError::invalid("telemetry.log_filter", e.to_string().replace('\n', " "))
    })?;
    if readiness_interval.is_zero() {
        return Err(ConfigError::invalid(
            "telemetry.readiness_interval",
            "must be more than 0",
        ));
    }
    Ok(())
}

/// A processor's whole configuration: the shared sections plus its own `[processor]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default, bound = "A: Section")]
pub struct Config<A: Section> {
    /// Brokers and consumer group.
    pub kafka: KafkaConfig,
    /// Schema registry.
    pub registry: RegistryConfig,
    /// Inputs, DLQ, in-flight bounds and retries.
    pub pipeline: PipelineConfig,
    /// Metrics, probes and logs.
    pub telemetry: TelemetryConfig,
    /// Settings of the processor itself.
    pub processor: A,
}

impl<A: Section> Default for Config<A> {
    fn default() -> Self {
        Config {
            kafka: KafkaConfig::default(),
            registry: RegistryConfig::default(),
            pipeline: PipelineConfig::default(),
            telemetry: TelemetryConfig::default(),
            processor: A::default(),
        }
    }
}

/// A figment error as one line naming the key and where the value came from (the file, or the
/// `EIP__*` variable). Shared with binaries that load their own configuration (the gateway).
pub fn from_figment(e: figment::Error) -> ConfigError {
    let key = if e.path.is_empty() {
        "(top level)".to_string()
    } else {
        e.path.join(".")
    };
    let origin = e.metadata.as_ref().map(|md| match &md.source {
        Some(figment::Source::File(path)) => path.display().to_string(),
        _ if md.name.contains("environment") => format!(
            "{ENV_PREFIX}{}",
            e.path
                .iter()
                .map(|p| p.to_uppercase())
                .collect::<Vec<_>>()
                .join("__")
        ),
        _ => md.name.to_string(),
    });
    let reason = match &e.kind {
        figment::error::Kind::UnknownField(field, _) => format!("unknown key `{field}`"),
        kind => kind.to_string(),
    };
    ConfigError::Invalid {
        key,
        reason: reason.replace('\n', " "),
        origin,
    }
}

impl<A: Section> Config<A> {
    /// Loads defaults, then `file` (if given; it must exist), then `EIP__*` variables from the
    /// process environment, and validates the result.
    pub fn load(file: Option<&Path>) -> Result<Config<A>, ConfigError> {
        Self::load_from(file, environment())
    }

    /// Like [`Config::load`] with an explicit environment provider (tests pass their own).
    pub fn load_from(file: Option<&Path>, env: Env) -> Result<Config<A>, ConfigError> {
        let config = Self::load_with_role(file, env, None)?;
        config.validate()?;
        Ok(config)
    }

    /// Like [`Config::load_from`], with `processor.role` set to `role` over every layer (the
    /// `--role` flag), and not checked yet: the caller validates.
    pub fn load_with_role(
        file: Option<&Path>,
        env: Env,
        role: Option<&str>,
    ) -> Result<Config<A>, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::<A>::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::MissingFile(path.display().to_string()));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        figment = figment.merge(env);
        if let Some(role) = role {
            figment = figment.merge(Serialized::default("processor.role", role));
        }
        figment.extract().map_err(from_figment)
    }

    /// Checks ranges and cross-field rules. Runs before any network call.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_with(true)
    }

    /// [`Config::validate`] but for `pipeline.inputs`, for a processor that reads its inputs
    /// from a file of its own (the saga binaries read the saga definition) and fills them in
    /// before the whole configuration is checked again.
    pub fn validate_but_inputs(&self) -> Result<(), ConfigError> {
        self.validate_with(false)
    }

    fn validate_with(&self, inputs: bool) -> Result<(), ConfigError> {
        let k = &self.kafka;
        k.validate_client()?;
        if k.group_id.trim().is_empty() {
            return Err(ConfigError::invalid("kafka.group_id", "must not be empty"));
        }
        if k.group_instance_id
            .as_ref()
            .is_some_and(|id| id.trim().is_empty())
        {
            return Err(ConfigError::invalid(
                "kafka.group_instance_id",
                "must not be empty when set (leave it out for dynamic membership)",
            ));
        }
        if !["range", "roundrobin", "cooperative-sticky"]
            .contains(&k.partition_assignment_strategy.as_str())
        {
            return Err(ConfigError::invalid(
                "kafka.partition_assignment_strategy",
                "must be range, roundrobin or cooperative-sticky",
            ));
        }
        if k.session_timeout < Duration::from_secs(1) {
            return Err(ConfigError::invalid(
                "kafka.session_timeout",
                "must be at least 1s",
            ));
        }
        if k.commit_interval.is_zero() {
            return Err(ConfigError::invalid(
                "kafka.commit_interval",
                "must be more than 0",
            ));
        }
        self.registry.validate()?;
        let p = &self.pipeline;
        if (inputs && p.inputs.is_empty()) || p.inputs.iter().any(|t| t.trim().is_empty()) {
            return Err(ConfigError::invalid(
                "pipeline.inputs",
                "must name at least one topic, and no empty names",
            ));
        }
        if p.dlq_suffix.is_empty() {
            return Err(ConfigError::invalid(
                "pipeline.dlq_suffix",
                "must not be empty (a DLQ equal to its source topic would loop)",
            ));
        }
        if p.max_in_flight == 0 {
            return Err(ConfigError::invalid(
                "pipeline.max_in_flight",
                "must be at least 1",
            ));
        }
        for (key, value) in [
            ("pipeline.drain_timeout", p.drain_timeout),
            ("pipeline.close_timeout", p.close_timeout),
        ] {
            if value.is_zero() || value > Duration::from_secs(3600) {
                return Err(ConfigError::invalid(
                    key,
                    "must be more than 0 and at most 1h",
                ));
            }
        }
        if p.flush_records == 0 {
            return Err(ConfigError::invalid(
                "pipeline.flush_records",
                "must be at least 1",
            ));
        }
        if p.flush_interval.is_zero() || p.flush_interval > Duration::from_secs(60) {
            return Err(ConfigError::invalid(
                "pipeline.flush_interval",
                "must be more than 0 and at most 1m",
            ));
        }
        let floor = (p.drain_timeout + Duration::from_secs(10)).max(self.kafka.session_timeout);
        if self.kafka.max_poll_interval < floor
            || self.kafka.max_poll_interval > Duration::from_secs(86_400)
        {
            return Err(ConfigError::invalid(
                "kafka.max_poll_interval",
                format!(
                    "must be at least pipeline.drain_timeout + 10s and kafka.session_timeout \
                     ({floor:?}), and at most 24h"
                ),
            ));
        }
        if p.max_batch == 0 {
            return Err(ConfigError::invalid(
                "pipeline.max_batch",
                "must be at least 1",
            ));
        }
        if p.topic_partitions < 1 {
            return Err(ConfigError::invalid(
                "pipeline.topic_partitions",
                "must be at least 1",
            ));
        }
        if p.retry.initial_backoff.is_zero() || p.retry.max_backoff < p.retry.initial_backoff {
            return Err(ConfigError::invalid(
                "pipeline.retry",
                "initial_backoff must be more than 0 and no more than max_backoff",
            ));
        }
        if !(p.retry.multiplier.is_finite() && p.retry.multiplier >= 1.0) {
            return Err(ConfigError::invalid(
                "pipeline.retry.multiplier",
                "must be at least 1",
            ));
        }
        validate_logs_and_readiness(
            &self.telemetry.log_filter,
            self.telemetry.readiness_interval,
        )?;
        self.processor.validate().map_err(|e| match e {
            ConfigError::Invalid {
                key,
                reason,
                origin,
            } => ConfigError::Invalid {
                key: format!("processor.{key}"),
                reason,
                origin,
            },
            other => other,
        })
    }
}

#[cfg(test)]
mod tests;
