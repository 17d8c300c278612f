//! What the record routes ([`crate::http`]) and the query routes ([`crate::query`]) both stand
//! on: the state the handlers share, the bearer-token check, and the JSON answer. Both route
//! modules import this one and never each other's internals.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::writer::datum::GenericDatumWriter;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use eip_runtime::StartupError;
use eip_runtime::health::Health;
use eip_schemas::{Catalog, CompiledSchema, Registry};
use rdkafka::producer::FutureProducer;
use tokio::sync::Semaphore;

use crate::config::GatewayConfig;
use crate::metrics::GatewayMetrics;
use crate::query::ViewsSource;

/// One routed record type, with its schema and prebuilt Avro reader and writer.
pub(crate) struct Route {
    pub(crate) topic: String,
    pub(crate) compiled: &'static CompiledSchema,
    pub(crate) reader: GenericDatumReader<'static>,
    pub(crate) writer: GenericDatumWriter<'static>,
}

/// Everything the handlers share.
pub(crate) struct Shared {
    pub(crate) routes: HashMap<String, Route>,
    pub(crate) registry: Arc<Registry>,
    pub(crate) producer: FutureProducer,
    pub(crate) permits: Arc<Semaphore>,
    pub(crate) max_in_flight: usize,
    pub(crate) max_body: usize,
    pub(crate) body_timeout: Duration,
    pub(crate) retry_after: HeaderValue,
    pub(crate) tokens: Vec<Vec<u8>>,
    pub(crate) metrics: GatewayMetrics,
    /// Liveness and readiness, in the runtime's shape: the checks are [`GATEWAY_CHECKS`].
    pub(crate) health: Arc<Health>,
    /// The views the query API serves (`gateway.views_db` or `gateway.views_cql_nodes`), if
    /// any.
    pub(crate) views: Option<ViewsSource>,
    /// One permit per query answered at once (`gateway.max_queries_in_flight`).
    pub(crate) queries: Arc<Semaphore>,
}

/// The gateway's readiness checks: the broker answers metadata for the routed topics, the
/// registry answers, every routed topic exists, and the gateway is not shutting down.
pub(crate) const GATEWAY_CHECKS: &[&str] = &["broker", "registry", "topics", "serving"];

impl Shared {
    pub(crate) fn new(
        config: &GatewayConfig,
        registry: Arc<Registry>,
        producer: FutureProducer,
        metrics: GatewayMetrics,
    ) -> Result<Shared, StartupError> {
        let catalog = Catalog::global().map_err(|e| StartupError::new("the schema catalog", e))?;
        let mut routes = HashMap::new();
        for (type_name, topic) in &config.gateway.routes {
            let compiled = catalog
                .get(type_name)
                .map_err(|e| StartupError::new(format!("route for {type_name}"), e))?;
            let reader = GenericDatumReader::builder(&compiled.schema)
                .build()
                .map_err(|e| StartupError::new(format!("reader for {type_name}"), e))?;
            let writer = GenericDatumWriter::builder(&compiled.schema)
                .build()
                .map_err(|e| StartupError::new(format!("writer for {type_name}"), e))?;
            routes.insert(
                type_name.clone(),
                Route {
                    topic: topic.clone(),
                    compiled,
                    reader,
                    writer,
                },
            );
        }
        Ok(Shared {
            routes,
            registry,
            producer,
            permits: Arc::new(Semaphore::new(config.gateway.max_in_flight)),
            max_in_flight: config.gateway.max_in_flight,
            max_body: config.gateway.max_body_bytes,
            body_timeout: config.gateway.body_timeout,
            retry_after: HeaderValue::from(config.retry_after_secs()),
            tokens: config
                .gateway
                .auth_tokens
                .iter()
                .map(|t| t.as_bytes().to_vec())
                .collect(),
            metrics,
            views: ViewsSource::of(&config.gateway)?,
            queries: Arc::new(Semaphore::new(config.gateway.max_queries_in_flight)),
            health: {
                let health = Health::new(GATEWAY_CHECKS);
                health.pass("serving");
                Arc::new(health)
            },
        })
    }

    /// From now on readiness is false: a load balancer stops sending before the server stops.
    pub(crate) fn set_stopping(&self) {
        self.health.fail("serving", "shutting down");
        self.metrics.ready.set(0);
    }
}

/// A refused request: its status, its reason, and the authentication challenge of a 401.
#[derive(Debug)]
pub(crate) struct Problem {
    /// The status.
    pub(crate) status: StatusCode,
    /// Why, for the JSON body's `error`.
    pub(crate) error: String,
    /// `WWW-Authenticate` of a 401.
    pub(crate) challenge: Option<&'static str>,
}

/// A [`Problem`] with no challenge.
pub(crate) fn problem(status: StatusCode, error: impl Into<String>) -> Problem {
    Problem {
        status,
        error: error.into(),
        challenge: None,
    }
}

/// A JSON answer.
pub(crate) fn json_response(status: StatusCode, body: serde_json::Value) -> Response {
    (status, axum::Json(body)).into_response()
}

/// Checks the bearer token when `tokens` is not empty: a 401 with its challenge otherwise.
pub(crate) fn authorize(tokens: &[Vec<u8>], headers: &HeaderMap) -> Result<(), Problem> {
    if tokens.is_empty() {
        return Ok(());
    }
    eip_runtime::auth::check_bearer(tokens, headers).map_err(|denied| Problem {
        challenge: Some(match denied.error_code() {
            None => "Bearer realm=\"eip-gateway\"",
            Some("invalid_request") => "Bearer realm=\"eip-gateway\", error=\"invalid_request\"",
            Some(_) => "Bearer realm=\"eip-gateway\", error=\"invalid_token\"",
        }),
        ..problem(StatusCode::UNAUTHORIZED, denied.reason())
    })
}

/// The bearer-token check every route makes: a 401 with its challenge.
pub(crate) fn check_token(s: &Shared, headers: &HeaderMap) -> Result<(), Problem> {
    authorize(&s.tokens, headers)
}

/// Headers from `(name, value)` pairs, for tests.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) fn test_headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(*k, HeaderValue::from_str(v).unwrap());
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        test_headers(pairs)
    }

    #[test]
    fn given_tokens_then_only_a_matching_bearer_passes() {
        let tokens = vec![b"alpha".to_vec(), b"beta-2".to_vec()];
        assert!(authorize(&[], &HeaderMap::new()).is_ok());
        assert!(authorize(&tokens, &headers(&[("authorization", "Bearer beta-2")])).is_ok());
        assert!(authorize(&tokens, &headers(&[("authorization", "bearer alpha")])).is_ok());
        for bad in [
            None,
            Some("Bearer alph"),
            Some("Bearer alphaa"),
            Some("Basic YWxwaGE="),
        ] {
            let h = bad.map_or_else(HeaderMap::new, |v| headers(&[("authorization", v)]));
            let refused = authorize(&tokens, &h).unwrap_err();
            assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{bad:?}");
            assert!(refused.challenge.unwrap().starts_with("Bearer"));
        }
    }
}
