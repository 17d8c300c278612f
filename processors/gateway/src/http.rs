//! The HTTP routes: `POST /v1/records/{type}`, the probes, `/metrics` and `/openapi.json`.

use std::sync::Arc;
use std::time::Instant;

use apache_avro::types::Value;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use eip_runtime::trace::{CORRELATION_ID, TRACEPARENT, TraceContext};
use eip_schemas::convert::{self, ConvertError};
use eip_schemas::{Catalog, CodecError, frame};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::OwnedSemaphorePermit;
use tracing::debug;

use crate::metrics::UNROUTED;
use crate::shared::{Problem, Shared, authorize, json_response};

/// The Kafka header naming the media type the record arrived in.
pub const CONTENT_TYPE_HEADER: &str = "eip.gateway.content-type";
/// The request and response header carrying the correlation id.
pub const X_CORRELATION_ID: &str = "x-correlation-id";
/// The media types `/v1/records/{type}` accepts.
pub const ACCEPTED: [&str; 5] = [
    "application/json",
    "application/xml",
    "text/xml",
    "application/vnd.apache.avro",
    "avro/binary",
];

/// The router with every endpoint.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/records/{type}", post(post_record))
        .route("/v1/orders/{order_id}", get(crate::query::order))
        .route(
            "/v1/customers/{customer_id}/orders",
            get(crate::query::customer_orders),
        )
        .route("/v1/sales/{day}", get(crate::query::sales))
        .route("/v1/commands/{command_id}", get(crate::query::command))
        .route("/v1/inventory/{sku}", get(crate::query::inventory))
        .route("/v1/commands", get(crate::query::commands))
        .route("/metrics", get(metrics_text))
        .route("/openapi.json", get(openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(shared.clone())
        .merge(eip_runtime::telemetry::probes(shared.health.clone()))
}

// ---------------------------------------------------------------------------------------------
// Answers

/// A request the gateway refuses, with everything its answer needs.
#[derive(Debug)]
struct Reject {
    status: StatusCode,
    error: String,
    /// Field-level reasons (400 only; empty for problems that are not about a field).
    fields: Option<Vec<ConvertError>>,
    retry_after: bool,
    www_authenticate: Option<&'static str>,
}

impl Reject {
    fn new(status: StatusCode, error: impl Into<String>) -> Reject {
        Reject {
            status,
            error: error.into(),
            fields: None,
            retry_after: false,
            www_authenticate: None,
        }
    }

    fn bad_request(error: impl Into<String>, fields: Vec<ConvertError>) -> Reject {
        Reject {
            fields: Some(fields),
            ..Reject::new(StatusCode::BAD_REQUEST, error)
        }
    }

    fn later(status: StatusCode, error: impl Into<String>) -> Reject {
        Reject {
            retry_after: true,
            ..Reject::new(status, error)
        }
    }

    fn invalid(type_name: &str, fields: Vec<ConvertError>) -> Reject {
        let error = match fields.as_slice() {
            [only] if only.field.is_empty() => only.reason.clone(),
            [only] => format!("the body does not match {type_name}: {only}"),
            [first, ..] => format!(
                "the body does not match {type_name}: {} problems, the first: {first}",
                fields.len()
            ),
            [] => format!("the body does not match {type_name}"),
        };
        Reject::bad_request(error, fields)
    }

    fn registry(e: CodecError) -> Reject {
        match e {
            CodecError::RegistryUnavailable { .. } => {
                Reject::later(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
            other => Reject::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the gateway cannot get the schema id: {other}"),
            ),
        }
    }
}

impl From<Problem> for Reject {
    fn from(p: Problem) -> Reject {
        Reject {
            www_authenticate: p.challenge,
            ..Reject::new(p.status, p.error)
        }
    }
}

struct Accepted {
    topic: String,
    partition: i32,
    offset: i64,
}

// ---------------------------------------------------------------------------------------------
// POST /v1/records/{type}

/// Optional query parameters of a record request.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RecordQuery {
    /// The Kafka key; defaults to the record's `metadata.aggregate_id`.
    key: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Media {
    Json,
    Xml,
    Avro,
}

fn media_type(headers: &HeaderMap) -> Result<(Media, &'static str), Reject> {
    let accepted = ACCEPTED.join(", ");
    let Some(raw) = headers.get(header::CONTENT_TYPE) else {
        return Err(Reject::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("no Content-Type; send one of {accepted}"),
        ));
    };
    let text = raw.to_str().unwrap_or("").to_ascii_lowercase();
    let mut parts = text.split(';');
    let essence = parts.next().unwrap_or("").trim();
    let Some(canonical) = ACCEPTED.iter().find(|m| **m == essence) else {
        return Err(Reject::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Type `{essence}` is not accepted; send one of {accepted}"),
        ));
    };
    for param in parts {
        if let Some((name, value)) = param.split_once('=')
            && name.trim() == "charset"
        {
            let charset = value.trim().trim_matches('"');
            if charset != "utf-8" && charset != "utf8" {
                return Err(Reject::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    format!("charset `{charset}` is not accepted; send UTF-8"),
                ));
            }
        }
    }
    let media = match *canonical {
        "application/json" => Media::Json,
        "application/xml" | "text/xml" => Media::Xml,
        _ => Media::Avro,
    };
    Ok((media, canonical))
}

/// The correlation id a request carries, or a new one.
fn correlation_id(headers: &HeaderMap) -> Result<String, Reject> {
    match headers.get(X_CORRELATION_ID) {
        None => Ok(uuid::Uuid::new_v4().to_string()),
        Some(v) => {
            let bytes = v.as_bytes();
            if bytes.is_empty() || bytes.len() > 256 || !bytes.iter().all(u8::is_ascii_graphic) {
                Err(Reject::bad_request(
                    "X-Correlation-Id must be 1 to 256 visible ASCII characters",
                    Vec::new(),
                ))
            } else {
                Ok(String::from_utf8_lossy(bytes).into_owned())
            }
        }
    }
}

async fn read_body(body: Body, headers: &HeaderMap, max: usize) -> Result<Bytes, Reject> {
    let too_large = || {
        Reject::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than gateway.max_body_bytes ({max} bytes)"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max as u64) {
        return Err(too_large());
    }
    match Limited::new(body, max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(too_large()),
        Err(e) => Err(Reject::bad_request(
            format!("could not read the request body: {e}"),
            Vec::new(),
        )),
    }
}

/// `metadata.aggregate_id`, when the record has one: the key that keeps one aggregate's
/// history in order in one partition.
fn aggregate_id(value: &Value) -> Option<&str> {
    fn unwrap(v: &Value) -> &Value {
        match v {
            Value::Union(_, inner) => unwrap(inner),
            other => other,
        }
    }
    fn get<'v>(v: &'v Value, name: &str) -> Option<&'v Value> {
        match unwrap(v) {
            Value::Record(fields) => fields.iter().find(|(n, _)| n == name).map(|(_, v)| v),
            _ => None,
        }
    }
    match unwrap(get(get(value, "metadata")?, "aggregate_id")?) {
        Value::String(s) => Some(s),
        _ => None,
    }
}

/// Holds one unit of the in-flight budget and keeps the gauge in step.
struct InFlight {
    _permit: OwnedSemaphorePermit,
    gauge: prometheus::IntGauge,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

struct RequestIds {
    correlation_id: String,
    trace: TraceContext,
}

async fn post_record(
    State(s): State<Arc<Shared>>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<RecordQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let type_name = match &path {
        Ok(Path(t)) => t.as_str(),
        Err(_) => "",
    };
    let label = if s.routes.contains_key(type_name) {
        type_name
    } else {
        UNROUTED
    };
    let trace = headers
        .get(TRACEPARENT)
        .and_then(|v| TraceContext::parse(v.as_bytes()))
        .map_or_else(TraceContext::new_root, |parent| parent.child());
    // Authentication comes first: an unauthenticated client gets a 401 whatever else it sent.
    let (correlation, result) = match authorize(&s.tokens, &headers)
        .map_err(Reject::from)
        .and_then(|()| correlation_id(&headers))
    {
        Ok(correlation_id) => {
            let ids = RequestIds {
                correlation_id,
                trace,
            };
            let outcome = handle(&s, label, &path, query, &headers, body, &ids).await;
            (Some(ids.correlation_id), outcome)
        }
        Err(reject) => (None, Err(reject)),
    };
    let mut response = match result {
        Ok(accepted) => json_response(
            StatusCode::ACCEPTED,
            json!({
                "correlation_id": correlation,
                "topic": accepted.topic,
                "partition": accepted.partition,
                "offset": accepted.offset,
            }),
        ),
        Err(reject) => {
            debug!(status = reject.status.as_u16(), error = %reject.error, r#type = label, "record refused");
            let mut body = json!({ "error": reject.error });
            if let Some(fields) = &reject.fields {
                body["fields"] = fields
                    .iter()
                    .map(|f| json!({"field": f.field, "reason": f.reason}))
                    .collect();
            }
            if let Some(c) = &correlation {
                body["correlation_id"] = json!(c);
            }
            let mut response = json_response(reject.status, body);
            if reject.retry_after {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, s.retry_after.clone());
            }
            if let Some(challenge) = reject.www_authenticate {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(challenge),
                );
            }
            response
        }
    };
    if let Some(c) = correlation.and_then(|c| HeaderValue::from_str(&c).ok()) {
        response
            .headers_mut()
            .insert(HeaderName::from_static(X_CORRELATION_ID), c);
    }
    if let Ok(tp) = HeaderValue::from_str(&trace.to_header()) {
        response
            .headers_mut()
            .insert(HeaderName::from_static(TRACEPARENT), tp);
    }
    let status = response.status();
    s.metrics
        .requests
        .with_label_values(&[label, status.as_str()])
        .inc();
    s.metrics
        .latency
        .with_label_values(&[label])
        .observe(started.elapsed().as_secs_f64());
    response
}

async fn handle(
    s: &Shared,
    label: &str,
    path: &Result<Path<String>, PathRejection>,
    query: Result<Query<RecordQuery>, QueryRejection>,
    headers: &HeaderMap,
    body: Body,
    ids: &RequestIds,
) -> Result<Accepted, Reject> {
    let type_name = match path {
        Ok(Path(t)) => t,
        Err(e) => {
            return Err(Reject::new(
                StatusCode::NOT_FOUND,
                format!("bad record type in the path: {e}"),
            ));
        }
    };
    let Some(route) = s.routes.get(type_name) else {
        let known = Catalog::global().is_ok_and(|c| c.get(type_name).is_ok());
        let mut routed: Vec<&str> = s.routes.keys().map(String::as_str).collect();
        routed.sort_unstable();
        let error = if known {
            format!(
                "record type `{type_name}` is not routed to a topic by this gateway (gateway.routes); routed: {}",
                routed.join(", ")
            )
        } else {
            format!(
                "`{type_name}` is not a record type of the schema catalog; routed: {}",
                routed.join(", ")
            )
        };
        return Err(Reject::new(StatusCode::NOT_FOUND, error));
    };
    let Query(query) = query.map_err(|e| {
        Reject::bad_request(
            format!(
                "bad query string: {} (only `key` is accepted)",
                e.body_text()
            ),
            Vec::new(),
        )
    })?;
    let (media, media_name) = media_type(headers)?;
    // The body is read before the request takes an in-flight permit, and within
    // gateway.body_timeout: a slow upload holds no permit and is cut off, so it can't starve
    // the requests behind it.
    let bytes = tokio::time::timeout(s.body_timeout, read_body(body, headers, s.max_body))
        .await
        .map_err(|_| {
            Reject::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within gateway.body_timeout ({}); send it again",
                    humantime::format_duration(s.body_timeout)
                ),
            )
        })??;
    let permit = s.permits.clone().try_acquire_owned().map_err(|_| {
        Reject::later(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "the gateway is at its in-flight budget of {} records (gateway.max_in_flight); retry later",
                s.max_in_flight
            ),
        )
    })?;
    s.metrics.in_flight.inc();
    let _in_flight = InFlight {
        _permit: permit,
        gauge: s.metrics.in_flight.clone(),
    };
    s.metrics
        .bytes
        .with_label_values(&[label])
        .inc_by(bytes.len() as u64);

    let schema = &route.compiled.schema;
    let value = match media {
        Media::Json => convert::from_json_bytes_all(schema, &bytes)
            .map_err(|errors| Reject::invalid(type_name, errors))?,
        Media::Xml => convert::from_xml_all(schema, &bytes)
            .map_err(|errors| Reject::invalid(type_name, errors))?,
        Media::Avro => {
            let mut rest: &[u8] = &bytes;
            match route.reader.read_value(&mut rest) {
                Ok(v) if rest.is_empty() => v,
                Ok(_) => {
                    return Err(Reject::invalid(
                        type_name,
                        vec![ConvertError::new(
                            "",
                            format!(
                                "the Avro body has {} bytes left over after a {type_name} record",
                                rest.len()
                            ),
                        )],
                    ));
                }
                Err(e) => {
                    return Err(Reject::invalid(
                        type_name,
                        vec![ConvertError::new(
                            "",
                            format!("the Avro body does not decode as {type_name}: {e}"),
                        )],
                    ));
                }
            }
        }
    };
    let key: Option<String> = query
        .key
        .or_else(|| aggregate_id(&value).map(str::to_string));
    let id = s
        .registry
        .id_for(route.compiled)
        .await
        .map_err(Reject::registry)?;
    let payload = match media {
        Media::Avro => frame::frame(id, &bytes),
        Media::Json | Media::Xml => {
            let mut out = frame::start(id, bytes.len());
            route
                .writer
                .write_value_ref(&mut out, &value)
                .map_err(|e| {
                    Reject::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("encoding the validated {type_name} failed: {e}"),
                    )
                })?;
            out
        }
    };
    let traceparent = ids.trace.to_header();
    let kafka_headers = OwnedHeaders::new_with_capacity(3)
        .insert(Header {
            key: CORRELATION_ID,
            value: Some(ids.correlation_id.as_bytes()),
        })
        .insert(Header {
            key: TRACEPARENT,
            value: Some(traceparent.as_bytes()),
        })
        .insert(Header {
            key: CONTENT_TYPE_HEADER,
            value: Some(media_name.as_bytes()),
        });
    let mut record = FutureRecord::to(&route.topic)
        .payload(&payload)
        .headers(kafka_headers);
    if let Some(k) = &key {
        record = record.key(k.as_bytes());
    }
    let delivery = s.producer.send_result(record).map_err(|(e, _)| match e {
        KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => Reject::later(
            StatusCode::TOO_MANY_REQUESTS,
            "the producer's local queue is full; retry later",
        ),
        KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge) => Reject::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the encoded record ({} bytes) is larger than the producer's message.max.bytes",
                payload.len()
            ),
        ),
        other => Reject::later(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the record could not be handed to the producer: {other}"),
        ),
    })?;
    match delivery.await {
        Ok(Ok(d)) => Ok(Accepted {
            topic: route.topic.clone(),
            partition: d.partition,
            offset: d.offset,
        }),
        Ok(Err((e, _))) => {
            debug!(topic = %route.topic, error = %e, "delivery failed");
            Err(Reject::later(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the broker did not acknowledge the record: {e}; it may have been written \
                     all the same, so send it again with the same event or command id"
                ),
            ))
        }
        Err(_) => Err(Reject::later(
            StatusCode::SERVICE_UNAVAILABLE,
            "the producer shut down before the record was acknowledged",
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Probes, metrics, the OpenAPI document, fallbacks

async fn metrics_text(State(s): State<Arc<Shared>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], crate::OPENAPI).into_response()
}

async fn not_found(request: Request) -> Response {
    json_response(
        StatusCode::NOT_FOUND,
        json!({"error": format!("no such endpoint: {} {} (see /openapi.json)", request.method(), request.uri().path())}),
    )
}

async fn method_not_allowed(request: Request) -> Response {
    json_response(
        StatusCode::METHOD_NOT_ALLOWED,
        json!({"error": format!("{} is not allowed on {} (see /openapi.json)", request.method(), request.uri().path())}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        crate::shared::test_headers(pairs)
    }

    #[test]
    fn given_accepted_media_types_then_each_maps_to_its_decoder() {
        let cases = [
            ("application/json", Media::Json),
            ("application/json; charset=UTF-8", Media::Json),
            ("Application/XML", Media::Xml),
            ("text/xml;charset=\"utf-8\"", Media::Xml),
            ("application/vnd.apache.avro", Media::Avro),
            ("avro/binary", Media::Avro),
        ];
        for (ct, media) in cases {
            let (got, _) = media_type(&headers(&[("content-type", ct)])).unwrap();
            assert_eq!(got, media, "{ct}");
        }
    }

    #[test]
    fn given_other_media_types_then_415_lists_the_accepted_ones() {
        for ct in [
            None,
            Some("text/plain"),
            Some("application/json; charset=latin1"),
        ] {
            let h = ct.map_or_else(HeaderMap::new, |ct| headers(&[("content-type", ct)]));
            let reject = media_type(&h).unwrap_err();
            assert_eq!(reject.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
            if ct != Some("application/json; charset=latin1") {
                assert!(reject.error.contains("avro/binary"), "{}", reject.error);
            }
        }
    }

    #[test]
    fn given_a_correlation_header_then_it_is_kept_or_refused_when_unusable() {
        assert_eq!(
            correlation_id(&headers(&[("x-correlation-id", "abc-1")])).unwrap(),
            "abc-1"
        );
        assert_eq!(correlation_id(&HeaderMap::new()).unwrap().len(), 36);
        let long = "x".repeat(257);
        assert!(correlation_id(&headers(&[("x-correlation-id", &long)])).is_err());
        assert!(correlation_id(&headers(&[("x-correlation-id", "a b")])).is_err());
    }

    #[test]
    fn given_a_record_with_metadata_then_the_key_is_its_aggregate_id() {
        let value = Value::Record(vec![(
            "metadata".into(),
            Value::Record(vec![(
                "aggregate_id".into(),
                Value::String("order-7".into()),
            )]),
        )]);
        assert_eq!(aggregate_id(&value), Some("order-7"));
        assert_eq!(aggregate_id(&Value::Record(vec![])), None);
        assert_eq!(aggregate_id(&Value::Null), None);
    }
}
