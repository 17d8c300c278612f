//! Gateway configuration: defaults, then a TOML file, then `EIP__*` environment variables.
//!
//! The `[kafka]` and `[registry]` sections are the runtime's own types, so a gateway and the
//! processors behind it are configured the same way. `[telemetry]` holds only what the gateway
//! uses (its probes and metrics are served on `gateway.listen`, not on a second port), and
//! `[gateway]` the HTTP side. Every section denies unknown keys; the whole configuration is
//! validated before any network call, and a bad value is one line naming the key:
//! `invalid configuration: gateway.max_body_bytes: invalid type: found string "lots", expected usize (from EIP__GATEWAY__MAX_BODY_BYTES)`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use eip_runtime::config::{
    ConfigError, KafkaConfig, LogFormat, RegistryConfig, environment, load_layered,
    validate_logs_and_readiness,
};
use eip_schemas::{Catalog, SchemaKind};
use figment::providers::Env;
use serde::{Deserialize, Serialize};

/// `[telemetry]`: logs and readiness (probes and `/metrics` are on `gateway.listen`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetrySettings {
    /// Log format: `json` (production) or `text` (local runs).
    pub log_format: LogFormat,
    /// `tracing` filter directive, e.g. `info` or `eip_gateway=debug,info`.
    pub log_filter: String,
    /// How often readiness re-checks the broker (metadata of the routed topics) and the registry.
    #[serde(with = "humantime_serde")]
    pub readiness_interval: Duration,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        TelemetrySettings {
            log_format: LogFormat::Json,
            log_filter: "info".into(),
            readiness_interval: Duration::from_secs(5),
        }
    }
}

impl TelemetrySettings {
    /// The runtime's telemetry config for `init_logging` (its `listen` is not used).
    pub fn logging(&self) -> eip_runtime::config::TelemetryConfig {
        eip_runtime::config::TelemetryConfig {
            log_format: self.log_format,
            log_filter: self.log_filter.clone(),
            readiness_interval: self.readiness_interval,
            ..eip_runtime::config::TelemetryConfig::default()
        }
    }
}

/// `[gateway]`: the HTTP side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewaySettings {
    /// Address the HTTP server binds (records, probes, metrics and the OpenAPI document).
    pub listen: SocketAddr,
    /// Which topic each record type goes to: full Avro name → topic. A type that is not here
    /// is answered 404. In TOML: `[gateway.routes]` then `"eip.orders.PlaceOrder" = "orders"`.
    pub routes: BTreeMap<String, String>,
    /// Largest request body accepted; larger ones are answered 413 without being read.
    pub max_body_bytes: usize,
    /// Records accepted but not yet acknowledged by the broker, across all requests. At the
    /// budget new records are answered 429 with `Retry-After`: memory stays bounded and the
    /// client backs off.
    pub max_in_flight: usize,
    /// How long a record may wait for the broker's acknowledgement (librdkafka's
    /// `message.timeout.ms`) before the request is answered 503.
    #[serde(with = "humantime_serde")]
    pub delivery_timeout: Duration,
    /// The `Retry-After` given with 429 and 503 answers (whole seconds, rounded up).
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,
    /// Bearer tokens accepted on `/v1/records`; empty means no authentication. Probes,
    /// metrics and the OpenAPI document are always open.
    pub auth_tokens: Vec<String>,
    /// On SIGTERM, how long in-flight requests may take to finish before the server stops
    /// anyway (the producer is flushed after).
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// How long a request body may take to arrive; a slower upload is answered 408. Bodies are
    /// read before a request takes its in-flight permit, so a slow upload never holds one.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// The projector's views file (SQLite). When set, the query API serves it under
    /// `/v1/orders`, `/v1/customers`, `/v1/sales` and `/v1/commands`, behind the same bearer
    /// tokens as `/v1/records`.
    pub views_db: Option<std::path::PathBuf>,
    /// Read connections to `views_db`, used in turn.
    pub query_connections: usize,
    /// Query requests answered at once at most; past this a query is 503 with Retry-After at
    /// once, so a slow or unreachable store can't pile requests up.
    pub max_queries_in_flight: usize,
    /// Instead of `views_db`: the CQL contact points (`host:port`) of the cluster the
    /// projector writes with `store = "cql"` (ScyllaDB in production). Connected on first
    /// query; until it answers, queries are 503.
    pub views_cql_nodes: Vec<String>,
    /// The views' keyspace, with `views_cql_nodes`. It must exist (the projector creates it);
    /// the gateway never creates one, and answers 503 until it exists.
    pub views_keyspace: String,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        GatewaySettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 8088)),
            routes: BTreeMap::new(),
            max_body_bytes: 1024 * 1024,
            max_in_flight: 1024,
            delivery_timeout: Duration::from_secs(10),
            retry_after: Duration::from_secs(1),
            auth_tokens: Vec::new(),
            drain_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(10),
            views_db: None,
            query_connections: 4,
            max_queries_in_flight: 256,
            views_cql_nodes: Vec::new(),
            views_keyspace: "eip".into(),
        }
    }
}

/// The gateway's whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Brokers and producer settings (the consumer settings are not used).
    pub kafka: KafkaConfig,
    /// Schema registry.
    pub registry: RegistryConfig,
    /// Logs and readiness.
    pub telemetry: TelemetrySettings,
    /// The HTTP side.
    pub gateway: GatewaySettings,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            kafka: KafkaConfig {
                client_id: "eip-gateway".into(),
                ..KafkaConfig::default()
            },
            registry: RegistryConfig::default(),
            telemetry: TelemetrySettings::default(),
            gateway: GatewaySettings::default(),
        }
    }
}

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::invalid(key, reason)
}

/// Kafka's rule for topic names.
fn valid_topic(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl GatewayConfig {
    /// Loads defaults, then `file` (if given; it must exist), then `EIP__*` variables from the
    /// process environment, and validates the result. No network call is made.
    pub fn load(file: Option<&Path>) -> Result<GatewayConfig, ConfigError> {
        Self::load_from(file, environment())
    }

    /// Like [`GatewayConfig::load`] with an explicit environment provider (tests pass their own).
    pub fn load_from(file: Option<&Path>, env: Env) -> Result<GatewayConfig, ConfigError> {
        let config: GatewayConfig = load_layered(file, env)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks ranges and cross-field rules. Runs before any network call.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let k = &self.kafka;
        k.validate_client()?;
        self.registry.validate()?;
        validate_logs_and_readiness(
            &self.telemetry.log_filter,
            self.telemetry.readiness_interval,
        )?;
        let g = &self.gateway;
        if !(1..=64).contains(&g.query_connections) {
            return Err(invalid("gateway.query_connections", "must be 1 to 64"));
        }
        if g.max_queries_in_flight == 0 {
            return Err(invalid(
                "gateway.max_queries_in_flight",
                "must be at least 1",
            ));
        }
        if g.views_db.is_some() && !g.views_cql_nodes.is_empty() {
            return Err(invalid(
                "gateway.views_cql_nodes",
                "set either views_db (SQLite) or views_cql_nodes (CQL), not both",
            ));
        }
        let keyspace_ok = !g.views_keyspace.is_empty()
            && g.views_keyspace.len() <= 48
            && g.views_keyspace
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !keyspace_ok {
            return Err(invalid(
                "gateway.views_keyspace",
                "must be 1 to 48 letters, digits or underscores",
            ));
        }
        if g.routes.is_empty() {
            return Err(invalid(
                "gateway.routes",
                "must route at least one record type to a topic, e.g. \"eip.orders.PlaceOrder\" = \"orders\"",
            ));
        }
        let catalog = Catalog::global()
            .map_err(|e| invalid("gateway.routes", format!("schema catalog: {e}")))?;
        for (type_name, topic) in &g.routes {
            match catalog.get(type_name) {
                Ok(s) if s.kind == SchemaKind::Message => {}
                Ok(_) => {
                    return Err(invalid(
                        "gateway.routes",
                        format!("`{type_name}` is a component, not a command or event"),
                    ));
                }
                Err(_) => {
                    let known: Vec<&str> =
                        catalog.messages().map(|s| s.full_name.as_str()).collect();
                    return Err(invalid(
                        "gateway.routes",
                        format!(
                            "`{type_name}` is not a record type of the schema catalog (known: {})",
                            known.join(", ")
                        ),
                    ));
                }
            }
            if !valid_topic(topic) {
                return Err(invalid(
                    "gateway.routes",
                    format!(
                        "`{topic}` (for {type_name}) is not a valid topic name (1-249 of a-z A-Z 0-9 . _ -)"
                    ),
                ));
            }
        }
        if g.max_body_bytes == 0 {
            return Err(invalid("gateway.max_body_bytes", "must be at least 1"));
        }
        if g.max_in_flight == 0 {
            return Err(invalid("gateway.max_in_flight", "must be at least 1"));
        }
        if g.delivery_timeout < Duration::from_millis(1) || g.delivery_timeout <= k.linger {
            return Err(invalid(
                "gateway.delivery_timeout",
                format!(
                    "must be at least 1ms and longer than kafka.linger ({})",
                    humantime::format_duration(k.linger)
                ),
            ));
        }
        if g.delivery_timeout > Duration::from_millis(i32::MAX as u64) {
            return Err(invalid(
                "gateway.delivery_timeout",
                "must be at most 24 days",
            ));
        }
        if g.retry_after < Duration::from_secs(1) {
            return Err(invalid("gateway.retry_after", "must be at least 1s"));
        }
        if g.body_timeout.is_zero() || g.body_timeout > Duration::from_secs(3600) {
            return Err(invalid(
                "gateway.body_timeout",
                "must be more than 0 and at most 1h",
            ));
        }
        if g.drain_timeout.is_zero() {
            return Err(invalid("gateway.drain_timeout", "must be more than 0"));
        }
        if g.auth_tokens
            .iter()
            .any(|t| t.is_empty() || t.bytes().any(|b| !b.is_ascii_graphic()))
        {
            return Err(invalid(
                "gateway.auth_tokens",
                "every token must be non-empty visible ASCII without spaces",
            ));
        }
        Ok(())
    }

    /// Whole seconds for `Retry-After`, rounded up.
    pub fn retry_after_secs(&self) -> u64 {
        let d = self.gateway.retry_after;
        d.as_secs() + u64::from(d.subsec_nanos() > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(contents: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        f.write_all(contents.as_bytes()).unwrap();
        f
    }

    const ROUTED: &str = "[gateway.routes]\n\"eip.orders.PlaceOrder\" = \"orders\"\n";

    fn load(toml: &str) -> Result<GatewayConfig, ConfigError> {
        let f = file(toml);
        GatewayConfig::load_from(Some(f.path()), Env::prefixed("EIP_TEST_NONE__"))
    }

    #[test]
    fn given_both_view_stores_or_a_bad_keyspace_then_the_key_is_named() {
        let both = format!(
            "{ROUTED}[gateway]\nviews_db = \"v.db\"\nviews_cql_nodes = [\"127.0.0.1:9042\"]\n"
        );
        let err = load(&both).unwrap_err().to_string();
        assert!(err.contains("gateway.views_cql_nodes"), "{err}");
        let keyspace = format!(
            "{ROUTED}[gateway]\nviews_cql_nodes = [\"127.0.0.1:9042\"]\nviews_keyspace = \"a-b\"\n"
        );
        let err = load(&keyspace).unwrap_err().to_string();
        assert!(err.contains("gateway.views_keyspace"), "{err}");
    }

    #[test]
    fn given_a_file_with_routes_then_defaults_fill_the_rest() {
        let cfg = load(ROUTED).unwrap();
        assert_eq!(
            cfg.gateway
                .routes
                .get("eip.orders.PlaceOrder")
                .map(String::as_str),
            Some("orders")
        );
        assert_eq!(cfg.gateway.listen, SocketAddr::from(([127, 0, 0, 1], 8088)));
        assert_eq!(cfg.gateway.max_body_bytes, 1024 * 1024);
        assert_eq!(cfg.kafka.client_id, "eip-gateway");
        assert_eq!(cfg.retry_after_secs(), 1);
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail fixes the closure type
    fn given_environment_variables_then_they_override_the_file_and_bad_ones_are_named() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("gw.toml", ROUTED)?;
            jail.set_env("EIP__GATEWAY__MAX_IN_FLIGHT", "7");
            jail.set_env(
                "EIP__GATEWAY__ROUTES",
                "{\"eip.orders.CancelOrder\"=\"cancels\"}",
            );
            jail.set_env("EIP__GATEWAY__AUTH_TOKENS", "[\"s3cret\"]");
            let cfg = GatewayConfig::load(Some(Path::new("gw.toml"))).unwrap();
            assert_eq!(cfg.gateway.max_in_flight, 7);
            assert_eq!(
                cfg.gateway
                    .routes
                    .get("eip.orders.CancelOrder")
                    .map(String::as_str),
                Some("cancels")
            );
            assert_eq!(cfg.gateway.auth_tokens, vec!["s3cret".to_string()]);

            jail.set_env("EIP__GATEWAY__MAX_BODY_BYTES", "lots");
            let msg = GatewayConfig::load(Some(Path::new("gw.toml")))
                .unwrap_err()
                .to_string();
            assert!(
                msg.starts_with("invalid configuration: gateway.max_body_bytes:"),
                "{msg}"
            );
            assert!(msg.contains("EIP__GATEWAY__MAX_BODY_BYTES"), "{msg}");
            assert!(!msg.contains('\n'));
            Ok(())
        });
    }

    #[test]
    fn given_bad_values_then_the_error_names_the_key_on_one_line() {
        let cases = [
            ("", "gateway.routes"),
            (
                "[gateway.routes]\n\"eip.orders.Nope\" = \"x\"\n",
                "gateway.routes",
            ),
            (
                "[gateway.routes]\n\"eip.common.Address\" = \"x\"\n",
                "gateway.routes",
            ),
            (
                "[gateway.routes]\n\"eip.orders.PlaceOrder\" = \"bad topic\"\n",
                "gateway.routes",
            ),
            (
                &format!("{ROUTED}[gateway]\nmax_body_bytes = 0\n"),
                "gateway.max_body_bytes",
            ),
            (
                &format!("{ROUTED}[gateway]\nmax_in_flight = 0\n"),
                "gateway.max_in_flight",
            ),
            (
                &format!("{ROUTED}[gateway]\nbody_timeout = \"0s\"\n"),
                "gateway.body_timeout",
            ),
            (
                &format!("{ROUTED}[gateway]\nbody_timeout = \"2h\"\n"),
                "gateway.body_timeout",
            ),
            (
                &format!("{ROUTED}[gateway]\ndelivery_timeout = \"1ms\"\n"),
                "gateway.delivery_timeout",
            ),
            (
                &format!("{ROUTED}[gateway]\ndelivery_timeout = \"soon\"\n"),
                "gateway.delivery_timeout",
            ),
            (
                &format!("{ROUTED}[gateway]\nretry_after = \"10ms\"\n"),
                "gateway.retry_after",
            ),
            (
                &format!("{ROUTED}[gateway]\nauth_tokens = [\"a b\"]\n"),
                "gateway.auth_tokens",
            ),
            (
                &format!("{ROUTED}[gateway]\nlisten = \"nowhere\"\n"),
                "gateway.listen",
            ),
            (
                &format!("{ROUTED}[gateway]\nlisen = \"127.0.0.1:1\"\n"),
                "gateway.lisen",
            ),
            (
                &format!("{ROUTED}[kafka]\nbrokers = \"nohostport\"\n"),
                "kafka.brokers",
            ),
            (
                &format!("{ROUTED}[registry]\nurl = \"ftp://x\"\n"),
                "registry.url",
            ),
            (
                &format!("{ROUTED}[telemetry]\nlisten = \"127.0.0.1:1\"\n"),
                "telemetry.listen",
            ),
            (
                &format!("{ROUTED}[telemetry]\nlog_filter = \"=[\"\n"),
                "telemetry.log_filter",
            ),
        ];
        for (toml, key) in cases {
            let msg = load(toml).unwrap_err().to_string();
            assert!(
                msg.starts_with(&format!("invalid configuration: {key}:")),
                "{toml:?} gave {msg}"
            );
            assert!(!msg.contains('\n'), "one line: {msg}");
        }
    }

    #[test]
    fn given_a_missing_file_then_it_is_an_error() {
        let err = GatewayConfig::load_from(
            Some(Path::new("/nonexistent/gw.toml")),
            Env::prefixed("EIP_TEST_NONE__"),
        )
        .unwrap_err();
        assert_eq!(err, ConfigError::MissingFile("/nonexistent/gw.toml".into()));
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let mut cfg = load(ROUTED).unwrap();
        cfg.gateway.retry_after = Duration::from_millis(1500);
        assert_eq!(cfg.retry_after_secs(), 2);
    }
}
