//! The HTTP gateway against the real local stack: records in JSON, XML and Avro land on their
//! topics Confluent-framed with the right key and headers; every bad input gets its documented
//! status and reason; the OpenAPI document is checked against the running server; the binary
//! refuses bad configuration and drains on SIGTERM.
//!
//! Every answer any test here sees goes through [`Contract::check`]: its status must be
//! documented in docs/openapi.json for that operation, with the documented content type,
//! headers and body schema.
//!
//! One subject, the gateway's HTTP contract, kept in one file past ~800 lines: every test
//! checks its answers against the same [`Contract`], read once from docs/openapi.json.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use apache_avro::types::Value;
use eip_gateway::GatewayConfig;
use eip_runtime::config::LogFormat;
use eip_runtime::trace::TraceContext;
use eip_schemas::codec::{decode_value_with, encode_with_id};
use eip_schemas::convert::{to_json, to_xml};
use eip_schemas::registry::WriterSchema;
use eip_schemas::types::samples::order_placed;
use eip_schemas::types::{Address, CommandMetadata, OrderPlaced, PlaceOrder};
use eip_schemas::{AvroRecord, Catalog};
use eip_tests::*;
use serde_json::{Value as Json, json};

const PLACE_ORDER: &str = "eip.orders.PlaceOrder";
const ORDER_PLACED: &str = "eip.orders.OrderPlaced";
const RECORDS: &str = "/v1/records/{type}";

// ---------------------------------------------------------------------------------------------
// The OpenAPI contract

use eip_tests::contract::{Contract, Observed};

/// docs/openapi.json, which the gateway also embeds and serves.
fn contract() -> &'static Contract {
    let c = eip_tests::contract::contract();
    // The server serves the same document it is checked against.
    assert_eq!(
        serde_json::from_str::<Json>(eip_gateway::OPENAPI).unwrap(),
        c.doc,
        "the binary embeds a stale docs/openapi.json"
    );
    c
}

// ---------------------------------------------------------------------------------------------
// An embedded gateway and a client that checks every answer against the contract

const ORDER: &str = "/v1/orders/{order_id}";
const CUSTOMER: &str = "/v1/customers/{customer_id}/orders";
const SALES: &str = "/v1/sales/{day}";
const COMMAND: &str = "/v1/commands/{command_id}";
const COMMANDS: &str = "/v1/commands";
const INVENTORY: &str = "/v1/inventory/{sku}";

/// Writes two orders of customer c-1 (o-2 the newer, confirmed on 2026-11-30) and a rejected
/// command, through the store's own definitions, as the projector does.
fn write_sample_views(path: &std::path::Path) {
    use eip_store::view_sqlite::{execute, migrate, versions};
    use eip_store::views::{
        LevelView, LineView, OrderView, OutcomeView, diff, level_rows, order_rows, outcome_rows,
    };
    let mut conn = eip_store::sqlite::connect(path).unwrap();
    migrate(&conn).unwrap();
    let v = versions(&conn).unwrap();
    let tx = conn.transaction().unwrap();
    for (id, at, status) in [("o-1", 10, "open"), ("o-2", 20, "confirmed")] {
        let order = OrderView {
            order_id: id.into(),
            customer_id: "c-1".into(),
            status: status.into(),
            currency: "EUR".into(),
            total_cents: 500,
            units: 2,
            version: 2,
            placed_at: at,
            updated_at: at,
            confirmed_day: (status == "confirmed").then(|| "2026-11-30".into()),
            lines: vec![LineView {
                sku: "A".into(),
                quantity: 2,
                unit_price_cents: 250,
                version: 1,
            }],
        };
        execute(&tx, &v, &diff(&[], &order_rows(&order), 2)).unwrap();
    }
    let outcome = OutcomeView {
        command_id: "cmd-1".into(),
        correlation_id: "corr-1".into(),
        aggregate_id: "o-9".into(),
        command: "PlaceOrder".into(),
        accepted: false,
        version: 0,
        reason_code: Some("empty_order".into()),
        reason: Some("an order needs at least one line".into()),
        decided_at: 1,
    };
    execute(&tx, &v, &diff(&[], &outcome_rows(&outcome), 0)).unwrap();
    let level = LevelView {
        sku: "A".into(),
        available: 96,
        reserved: 4,
        version: 3,
        updated_at: 20,
    };
    execute(&tx, &v, &diff(&[], &level_rows(&level), 3)).unwrap();
    tx.commit().unwrap();
}

struct Gw {
    addr: SocketAddr,
    client: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), eip_gateway::GatewayError>>>,
}

/// A gateway routing PlaceOrder to `topic` over a registry of its own that holds no schema,
/// with auto-registration off: a misconfigured deployment. The registry lives as long as the
/// second value.
async fn gateway_over_an_empty_registry(ep: &Endpoints, topic: &str) -> (Gw, PrivateRegistry) {
    let empty = PrivateRegistry::start().await;
    let mut cfg = gw_config(
        &Endpoints {
            brokers: ep.brokers.clone(),
            registry: empty.url(),
        },
        &[(PLACE_ORDER, topic)],
    );
    cfg.registry.auto_register = false;
    (Gw::start(cfg).await, empty)
}

fn gw_config(ep: &Endpoints, routes: &[(&str, &str)]) -> GatewayConfig {
    let mut c = GatewayConfig::default();
    c.kafka.brokers = ep.brokers.clone();
    c.registry.url = ep.registry.clone();
    c.telemetry.log_format = LogFormat::Text;
    c.telemetry.readiness_interval = Duration::from_millis(200);
    c.gateway.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    c.gateway.body_timeout = Duration::from_secs(1);
    c.gateway.routes = routes
        .iter()
        .map(|(t, topic)| (t.to_string(), topic.to_string()))
        .collect();
    c
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .no_proxy()
        .build()
        .unwrap()
}

impl Gw {
    async fn start(config: GatewayConfig) -> Gw {
        init_logs();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (addr, task) = eip_gateway::serve(config, async {
            let _ = rx.await;
        })
        .await
        .unwrap();
        Gw {
            addr,
            client: http_client(),
            stop: Some(tx),
            task: Some(task),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Starts a POST of `type_name` whose body stalls after its first 10 of 400 announced
    /// bytes, as a slow or stuck client does, and returns its answer (checked against the
    /// contract) once the gateway gives up on it.
    async fn stalled_upload(&self, type_name: &str, token: Option<&str>) -> Observed {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let head = format!(
            "POST /v1/records/{type_name} HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: 400\r\n{}\r\n{{\"metadata\"",
            token.map_or(String::new(), |t| format!("authorization: Bearer {t}\r\n"))
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(60), tcp.read_to_end(&mut raw)).await;
        let text = String::from_utf8_lossy(&raw).to_string();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let mut lines = head.lines();
        let status: u16 = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status line in {text:?}"));
        let mut headers = reqwest::header::HeaderMap::new();
        for line in lines {
            if let Some((k, v)) = line.split_once(':')
                && let (Ok(k), Ok(v)) = (
                    reqwest::header::HeaderName::from_bytes(k.trim().as_bytes()),
                    reqwest::header::HeaderValue::from_str(v.trim()),
                )
            {
                headers.insert(k, v);
            }
        }
        let obs = Observed {
            status,
            content_type: headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string(),
            headers,
            body: body.to_string(),
        };
        contract().check("post", RECORDS, &obs);
        obs
    }

    /// Sends `req` (built against this gateway) and checks the answer against the contract.
    async fn send(&self, method: &str, template: &str, req: reqwest::RequestBuilder) -> Observed {
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let content_type = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = resp.text().await.unwrap();
        let obs = Observed {
            status,
            content_type,
            headers,
            body,
        };
        contract().check(method, template, &obs);
        obs
    }

    async fn post(
        &self,
        type_name: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> Observed {
        self.post_with(type_name, content_type, body, |r| r).await
    }

    /// POSTs to `/v1/records/{target}`; `target` is a type name, optionally with a query.
    async fn post_with(
        &self,
        target: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
        extra: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Observed {
        let req = self
            .client
            .post(self.url(&format!("/v1/records/{target}")))
            .header("content-type", content_type)
            .body(body);
        self.send("post", RECORDS, extra(req)).await
    }

    /// GETs `path`, checked against the contract's `template`.
    async fn get_as(&self, template: &str, path: &str) -> Observed {
        self.send("get", template, self.client.get(self.url(path)))
            .await
    }

    async fn get(&self, path: &str) -> Observed {
        self.send("get", path, self.client.get(self.url(path)))
            .await
    }

    async fn wait_ready(&self) {
        eventually("gateway ready", Duration::from_secs(30), || async {
            (self.get("/readyz").await.status == 200).then_some(())
        })
        .await;
    }

    async fn metric(&self, name: &str) -> f64 {
        metric_sum(&self.get("/metrics").await.body, name)
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Samples

fn place_order(n: u32) -> PlaceOrder {
    let order = order_placed(u64::from(n));
    PlaceOrder {
        metadata: CommandMetadata {
            command_id: format!("cmd-{n}"),
            correlation_id: format!("corr-{n}"),
            causation_id: None,
            issued_at: 1_767_225_600_000 + i64::from(n),
            aggregate_id: format!("order-{n:05}"),
            expected_version: n.is_multiple_of(2).then_some(i64::from(n)),
        },
        customer_id: order.customer_id,
        lines: order.lines,
        currency: "EUR".into(),
        shipping_address: Address {
            street: "1 Canal Street <&>".into(),
            ..order.shipping_address
        },
    }
}

/// The typed record as (Avro datum bytes, generic value), read back through the codec.
fn datum_and_value<T: AvroRecord>(record: &T) -> (Vec<u8>, Value) {
    let compiled = T::compiled().unwrap();
    let framed = encode_with_id(0, record).unwrap();
    let writer = WriterSchema {
        id: 0,
        schema: compiled.schema.clone(),
        full_name: compiled.full_name.clone(),
        fingerprint: compiled.fingerprint,
    };
    let value = decode_value_with(&writer, &framed[5..]).unwrap();
    (framed[5..].to_vec(), value)
}

fn place_order_json(n: u32) -> Json {
    to_json(&datum_and_value(&place_order(n)).1)
}

async fn fresh_topic(ep: &Endpoints, prefix: &str) -> String {
    register(ep).await;
    let topic = unique(prefix);
    create_topics(ep, &[&topic], 3).await;
    topic
}

fn dead_address() -> String {
    format!("127.0.0.1:{}", free_port())
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_in_json_xml_and_avro_land_framed_with_their_key_and_headers() {
    let ep = endpoints();
    let orders = fresh_topic(&ep, "gw-commands").await;
    let events = fresh_topic(&ep, "gw-events").await;
    let gw = Gw::start(gw_config(
        &ep,
        &[(PLACE_ORDER, &orders), (ORDER_PLACED, &events)],
    ))
    .await;
    gw.wait_ready().await;

    struct Sent {
        type_name: &'static str,
        media: &'static str,
        expected: Value,
        key: String,
        correlation: String,
        parent: Option<TraceContext>,
        topic: String,
        partition: i64,
        offset: i64,
    }
    let mut sent: Vec<Sent> = Vec::new();
    let parent = TraceContext::new_root();
    for (i, media) in [
        "application/json",
        "text/xml",
        "application/xml",
        "application/vnd.apache.avro",
        "avro/binary",
    ]
    .into_iter()
    .enumerate()
    {
        let n = i as u32;
        let command = place_order(n);
        let event = OrderPlaced {
            metadata: eip_schemas::types::samples::event_metadata(
                &format!("order-{n}"),
                2,
                u64::from(n),
            ),
            ..order_placed(u64::from(n))
        };
        let (cmd_datum, cmd_value) = datum_and_value(&command);
        let (evt_datum, evt_value) = datum_and_value(&event);
        let cases: [(&'static str, Vec<u8>, Value, String); 2] = [
            (
                PLACE_ORDER,
                match media {
                    "application/json" => to_json(&cmd_value).to_string().into_bytes(),
                    "text/xml" | "application/xml" => to_xml("PlaceOrder", &cmd_value).into_bytes(),
                    _ => cmd_datum,
                },
                cmd_value,
                command.metadata.aggregate_id.clone(),
            ),
            (
                ORDER_PLACED,
                match media {
                    "application/json" => serde_json::to_vec_pretty(&to_json(&evt_value)).unwrap(),
                    "text/xml" | "application/xml" => {
                        to_xml("OrderPlaced", &evt_value).into_bytes()
                    }
                    _ => evt_datum,
                },
                evt_value,
                event.metadata.aggregate_id.clone(),
            ),
        ];
        for (j, (type_name, body, expected, aggregate)) in cases.into_iter().enumerate() {
            // Vary what the client sends: its own correlation id, a trace parent, a key.
            let correlation = (j == 0).then(|| format!("corr-gw-{i}"));
            let with_parent = i % 2 == 0;
            let explicit_key = (i == 3 && j == 1).then(|| "explicit-key".to_string());
            let target = match &explicit_key {
                Some(k) => format!("{type_name}?key={k}"),
                None => type_name.to_string(),
            };
            let obs = gw
                .post_with(&target, media, body, |mut r| {
                    if let Some(c) = &correlation {
                        r = r.header("x-correlation-id", c);
                    }
                    if with_parent {
                        r = r.header("traceparent", parent.to_header());
                    }
                    r
                })
                .await;
            assert_eq!(obs.status, 202, "{type_name} as {media}: {}", obs.body);
            let body = obs.json();
            let returned = body["correlation_id"].as_str().unwrap().to_string();
            if let Some(c) = &correlation {
                assert_eq!(&returned, c);
            }
            assert_eq!(obs.header("x-correlation-id"), Some(returned.as_str()));
            sent.push(Sent {
                type_name,
                media,
                expected,
                key: explicit_key.unwrap_or(aggregate),
                correlation: returned,
                parent: with_parent.then_some(parent),
                topic: body["topic"].as_str().unwrap().to_string(),
                partition: body["partition"].as_i64().unwrap(),
                offset: body["offset"].as_i64().unwrap(),
            });
        }
    }
    assert_eq!(gw.metric("eip_gateway_requests_total").await, 10.0);
    assert!(gw.metric("eip_gateway_request_bytes_total").await > 0.0);

    let codec = codec(&ep);
    let catalog = Catalog::global().unwrap();
    for topic in [&orders, &events] {
        let records = read_all(&ep, topic).await;
        let mine: Vec<&Sent> = sent.iter().filter(|s| &s.topic == topic).collect();
        assert_eq!(
            records.len(),
            mine.len(),
            "{topic}: one record per 202, no more"
        );
        for s in mine {
            let r = records
                .iter()
                .find(|r| i64::from(r.partition) == s.partition && r.offset == s.offset)
                .unwrap_or_else(|| panic!("no record at {}:{}", s.partition, s.offset));
            let payload = r.payload.as_deref().unwrap();
            let id = codec
                .registry()
                .id_for(catalog.get(s.type_name).unwrap())
                .await
                .unwrap();
            assert_eq!(payload[0], 0, "Confluent magic byte");
            assert_eq!(u32::from_be_bytes(payload[1..5].try_into().unwrap()), id);
            let decoded = codec.decode_value(Some(payload)).await.unwrap();
            assert_eq!(decoded.writer.full_name, s.type_name);
            assert_eq!(decoded.value, s.expected, "{} as {}", s.type_name, s.media);
            assert_eq!(
                r.key.as_deref(),
                Some(s.key.as_bytes()),
                "{} as {}",
                s.type_name,
                s.media
            );
            assert_eq!(r.header("correlation-id"), Some(s.correlation.as_str()));
            assert_eq!(r.header("eip.gateway.content-type"), Some(s.media));
            let tp = TraceContext::parse(r.header("traceparent").unwrap().as_bytes()).unwrap();
            if let Some(parent) = s.parent {
                assert_eq!(tp.trace_id, parent.trace_id, "child of the request's trace");
                assert_ne!(tp.span_id, parent.span_id);
            }
        }
        // The typed decoder agrees for the command topic.
        if topic == &orders {
            for r in &records {
                let typed: PlaceOrder = codec.decode(r.payload.as_deref()).await.unwrap();
                assert!(typed.metadata.aggregate_id.starts_with("order-"));
            }
        }
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_documented_status_and_reason_and_nothing_is_produced() {
    let ep = endpoints();
    let topic = fresh_topic(&ep, "gw-bad").await;
    let mut cfg = gw_config(&ep, &[(PLACE_ORDER, &topic)]);
    cfg.gateway.max_body_bytes = 4096;
    let gw = Gw::start(cfg).await;
    gw.wait_ready().await;
    let good = place_order_json(1);

    // Malformed JSON: the parser's message with line and column.
    let obs = gw
        .post(PLACE_ORDER, "application/json", "{\"metadata\": ")
        .await;
    assert_eq!(obs.status, 400);
    assert!(
        obs.error().starts_with("malformed JSON: "),
        "{}",
        obs.error()
    );
    assert!(obs.error().contains("line 1 column"), "{}", obs.error());
    assert_eq!(obs.fields()[0].0, "");

    // A missing field, a wrong type and an unknown field: each named by its path.
    let mut doc = good.clone();
    doc.as_object_mut().unwrap().remove("currency");
    doc["lines"][0]["quantity"] = json!("two");
    doc["metadata"]["colour"] = json!("red");
    let obs = gw
        .post(PLACE_ORDER, "application/json", doc.to_string())
        .await;
    assert_eq!(obs.status, 400);
    let fields = obs.fields();
    assert!(
        fields.contains(&(
            "currency".into(),
            "missing required field of type string".into()
        )),
        "{fields:?}"
    );
    assert!(
        fields.contains(&(
            "lines[0].quantity".into(),
            "expected int, found string \"two\"".into()
        )),
        "{fields:?}"
    );
    assert!(
        fields
            .iter()
            .any(|(f, r)| f == "metadata.colour" && r.starts_with("unknown field")),
        "{fields:?}"
    );
    assert!(obs.error().contains("3 problems"), "{}", obs.error());

    // An int out of range.
    let mut doc = good.clone();
    doc["lines"][0]["quantity"] = json!(4_294_967_296_i64);
    let obs = gw
        .post(PLACE_ORDER, "application/json", doc.to_string())
        .await;
    assert_eq!(obs.status, 400);
    assert_eq!(
        obs.fields(),
        vec![(
            "lines[0].quantity".to_string(),
            "4294967296 is out of range for int".to_string()
        )]
    );

    // XML: an unknown element, and a DOCTYPE (no XXE).
    let value = datum_and_value(&place_order(1)).1;
    let xml = to_xml("PlaceOrder", &value).replace("<currency>", "<planet>Mars</planet><currency>");
    let obs = gw.post(PLACE_ORDER, "application/xml", xml).await;
    assert_eq!(obs.status, 400);
    let fields = obs.fields();
    assert_eq!(fields[0].0, "planet");
    assert!(
        fields[0].1.starts_with("unknown element <planet>"),
        "{fields:?}"
    );
    assert!(fields[0].1.contains("line "), "located: {fields:?}");
    let xxe = "<?xml version=\"1.0\"?><!DOCTYPE x [<!ENTITY e SYSTEM \"file:///etc/passwd\">]><PlaceOrder><currency>&e;</currency></PlaceOrder>";
    let obs = gw.post(PLACE_ORDER, "text/xml", xxe).await;
    assert_eq!(obs.status, 400);
    assert!(
        obs.error().contains("DOCTYPE declarations are not allowed"),
        "{}",
        obs.error()
    );

    // Avro: truncated, and with bytes left over.
    let (datum, _) = datum_and_value(&place_order(1));
    let obs = gw
        .post(
            PLACE_ORDER,
            "avro/binary",
            datum[..datum.len() / 2].to_vec(),
        )
        .await;
    assert_eq!(obs.status, 400);
    assert!(
        obs.error()
            .contains("does not decode as eip.orders.PlaceOrder"),
        "{}",
        obs.error()
    );
    let mut longer = datum.clone();
    longer.extend_from_slice(&[0, 0]);
    let obs = gw
        .post(PLACE_ORDER, "application/vnd.apache.avro", longer)
        .await;
    assert_eq!(obs.status, 400);
    assert!(obs.error().contains("2 bytes left over"), "{}", obs.error());

    // Types that are not routed, or not types at all.
    let obs = gw
        .post("eip.orders.CancelOrder", "application/json", "{}")
        .await;
    assert_eq!(obs.status, 404);
    assert!(obs.error().contains("is not routed"), "{}", obs.error());
    let obs = gw.post("eip.nope.Thing", "application/json", "{}").await;
    assert_eq!(obs.status, 404);
    assert!(
        obs.error()
            .contains("is not a record type of the schema catalog"),
        "{}",
        obs.error()
    );

    // Content types.
    let obs = gw.post(PLACE_ORDER, "text/plain", good.to_string()).await;
    assert_eq!(obs.status, 415);
    assert!(
        obs.error().contains(
            "application/json, application/xml, text/xml, application/vnd.apache.avro, avro/binary"
        ),
        "{}",
        obs.error()
    );
    let obs = gw
        .post(
            PLACE_ORDER,
            "application/json; charset=iso-8859-1",
            good.to_string(),
        )
        .await;
    assert_eq!(obs.status, 415);
    let obs = gw
        .send(
            "post",
            RECORDS,
            gw.client
                .post(gw.url(&format!("/v1/records/{PLACE_ORDER}")))
                .body(good.to_string()),
        )
        .await;
    assert_eq!(obs.status, 415, "no content type");

    // Over the body limit.
    let big = format!("{{\"customer_id\": \"{}\"}}", "x".repeat(5000));
    let obs = gw.post(PLACE_ORDER, "application/json", big).await;
    assert_eq!(obs.status, 413);
    assert!(
        obs.error().contains("gateway.max_body_bytes (4096 bytes)"),
        "{}",
        obs.error()
    );

    // Unknown query parameters and an unusable correlation id.
    let obs = gw
        .post_with(
            &format!("{PLACE_ORDER}?partition=1"),
            "application/json",
            good.to_string(),
            |r| r,
        )
        .await;
    assert_eq!(obs.status, 400);
    assert!(obs.error().contains("bad query string"), "{}", obs.error());
    let obs = gw
        .post_with(PLACE_ORDER, "application/json", good.to_string(), |r| {
            r.header("x-correlation-id", "x".repeat(300))
        })
        .await;
    assert_eq!(obs.status, 400);
    assert!(obs.error().contains("X-Correlation-Id"), "{}", obs.error());

    // Nothing of that reached the topic; a good record still does.
    let obs = gw
        .post(PLACE_ORDER, "application/json", good.to_string())
        .await;
    assert_eq!(obs.status, 202, "{}", obs.body);
    let records = read_all(&ep, &topic).await;
    assert_eq!(records.len(), 1, "only the good record is produced");
    assert_eq!(gw.metric("eip_gateway_in_flight").await, 0.0);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_tokens_are_required_and_compared() {
    let ep = endpoints();
    let topic = fresh_topic(&ep, "gw-auth").await;
    let mut cfg = gw_config(&ep, &[(PLACE_ORDER, &topic)]);
    cfg.gateway.auth_tokens = vec!["t0ken-one".into(), "t0ken-two".into()];
    let gw = Gw::start(cfg).await;
    gw.wait_ready().await;
    let body = place_order_json(2).to_string();

    let obs = gw.post(PLACE_ORDER, "application/json", body.clone()).await;
    assert_eq!(obs.status, 401);
    assert_eq!(
        obs.header("www-authenticate"),
        Some("Bearer realm=\"eip-gateway\"")
    );
    assert!(
        obs.error().contains("authentication required"),
        "{}",
        obs.error()
    );
    for wrong in ["Bearer t0ken-on", "Bearer t0ken-onee", "Basic dDBrZW4tb25l"] {
        let obs = gw
            .post_with(PLACE_ORDER, "application/json", body.clone(), |r| {
                r.header("authorization", wrong)
            })
            .await;
        assert_eq!(obs.status, 401, "{wrong}");
        assert!(
            obs.header("www-authenticate")
                .unwrap()
                .starts_with("Bearer realm=\"eip-gateway\", error=")
        );
    }
    // Authentication comes before anything else: an unauthenticated client learns nothing.
    let obs = gw.post("eip.nope.Thing", "text/plain", "x").await;
    assert_eq!(obs.status, 401);
    let obs = gw
        .post_with(PLACE_ORDER, "application/json", "{}", |r| {
            r.header("x-correlation-id", "bad id")
        })
        .await;
    assert_eq!(
        obs.status, 401,
        "401 before the correlation id is looked at"
    );
    let obs = gw
        .post_with(PLACE_ORDER, "application/json", body, |r| {
            r.bearer_auth("t0ken-two")
        })
        .await;
    assert_eq!(obs.status, 202, "{}", obs.body);
    // Probes stay open.
    assert_eq!(gw.get("/healthz").await.status, 200);
    gw.stop().await;
}

/// A gateway whose broker never answers (`Retry-After: 2`, deliveries time out after 3 s),
/// configured further by `tune`, with one request posted in the background and already
/// counted in flight. Returns the gateway, that request, and a body to post again.
async fn silent_broker_with_one_request_in_flight(
    tune: impl FnOnce(&mut GatewayConfig),
) -> (
    std::sync::Arc<Gw>,
    tokio::task::JoinHandle<Observed>,
    String,
) {
    let ep = endpoints();
    register(&ep).await;
    let dead = Endpoints {
        brokers: dead_address(),
        registry: ep.registry.clone(),
    };
    let mut cfg = gw_config(&dead, &[(PLACE_ORDER, "gw-nowhere")]);
    cfg.gateway.delivery_timeout = Duration::from_secs(3);
    cfg.gateway.retry_after = Duration::from_secs(2);
    tune(&mut cfg);
    let gw = std::sync::Arc::new(Gw::start(cfg).await);
    let body = place_order_json(3).to_string();
    let first = {
        let gw = gw.clone();
        let body = body.clone();
        tokio::spawn(async move { gw.post(PLACE_ORDER, "application/json", body).await })
    };
    eventually(
        "the first request to be in flight",
        Duration::from_secs(10),
        || async { (gw.metric("eip_gateway_in_flight").await == 1.0).then_some(()) },
    )
    .await;
    (gw, first, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_budget_is_429_and_a_silent_broker_is_503_both_with_retry_after() {
    // The first request holds the only unit of the budget while librdkafka waits for a broker.
    let (gw, first, body) =
        silent_broker_with_one_request_in_flight(|c| c.gateway.max_in_flight = 1).await;
    let obs = gw.post(PLACE_ORDER, "application/json", body).await;
    assert_eq!(obs.status, 429, "{}", obs.body);
    assert_eq!(obs.header("retry-after"), Some("2"));
    assert!(
        obs.error().contains("in-flight budget of 1"),
        "{}",
        obs.error()
    );

    let obs = first.await.unwrap();
    assert_eq!(obs.status, 503, "{}", obs.body);
    assert_eq!(obs.header("retry-after"), Some("2"));
    assert!(
        obs.error()
            .contains("the broker did not acknowledge the record"),
        "{}",
        obs.error()
    );

    let ready = gw.get("/readyz").await;
    assert_eq!(ready.status, 503);
    assert!(ready.error().starts_with("not ready"), "{}", ready.error());
    assert_eq!(ready.json()["checks"]["broker"], json!(false));
    std::sync::Arc::into_inner(gw).unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_producer_queue_is_429_with_retry_after() {
    // Room in the budget, but librdkafka's local queue holds one record, and a queued record
    // stays queued: there is no broker to send it to.
    let (gw, first, body) = silent_broker_with_one_request_in_flight(|c| {
        c.gateway.max_in_flight = 8;
        // The queued record must still be queued when the second request arrives.
        c.gateway.delivery_timeout = Duration::from_secs(10);
        c.kafka
            .producer_properties
            .insert("queue.buffering.max.messages".into(), "1".into());
    })
    .await;
    let second = gw.post(PLACE_ORDER, "application/json", body).await;
    // Whichever of the two reached the queue first holds it until its delivery times out (503:
    // nothing is accepted that the broker did not take); the other finds it full.
    let mut both = [first.await.unwrap(), second];
    both.sort_by_key(|o| o.status);
    let [full, timed_out] = both;
    assert_eq!(full.status, 429, "{}", full.body);
    assert_eq!(full.header("retry-after"), Some("2"));
    assert!(
        full.error().contains("local queue is full"),
        "{}",
        full.error()
    );
    assert_eq!(timed_out.status, 503, "{}", timed_out.body);
    std::sync::Arc::into_inner(gw).unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_registry_is_503_and_an_unregistered_schema_is_500() {
    let ep = endpoints();
    let topic = fresh_topic(&ep, "gw-registry").await;
    let nowhere = Endpoints {
        brokers: ep.brokers.clone(),
        registry: format!("http://{}", dead_address()),
    };
    let gw = Gw::start(gw_config(&nowhere, &[(PLACE_ORDER, &topic)])).await;
    let body = place_order_json(4).to_string();
    let obs = gw.post(PLACE_ORDER, "application/json", body.clone()).await;
    assert_eq!(obs.status, 503, "{}", obs.body);
    assert_eq!(obs.header("retry-after"), Some("1"));
    assert!(
        obs.error().starts_with("schema registry unavailable"),
        "{}",
        obs.error()
    );
    gw.stop().await;

    // An empty registry and auto_register = false: the gateway is misconfigured.
    let (gw, _empty) = gateway_over_an_empty_registry(&ep, &topic).await;
    let obs = gw.post(PLACE_ORDER, "application/json", body).await;
    assert_eq!(obs.status, 500, "{}", obs.body);
    assert!(obs.error().contains("is not registered"), "{}", obs.error());
    gw.stop().await;
    assert_eq!(read_all(&ep, &topic).await.len(), 0);
}

/// A producer that hit a fatal error (here: the broker reports a sequence gap for the
/// head-of-line batch, which an idempotent producer can't recover from) makes liveness fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_producer_error_fails_liveness() {
    let ep = endpoints();
    register(&ep).await;
    let (mock, obs, health) = fatal_gateway(&ep).await;
    assert_eq!(obs.status, 503, "{}", obs.body);
    assert_eq!(health.status, 503, "{}", health.body);
    assert!(health.error().contains("fatal error"), "{}", health.error());
    drop(mock);
}

/// Starts a gateway on librdkafka's mock cluster, makes its producer fail fatally, and returns
/// the record request's and the liveness probe's answers.
async fn fatal_gateway(
    ep: &Endpoints,
) -> (
    rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    Observed,
    Observed,
) {
    let mock = rdkafka::mocking::MockCluster::new(1).unwrap();
    mock.create_topic("gw-mock", 1, 1).unwrap();
    let cfg = gw_config(
        &Endpoints {
            brokers: mock.bootstrap_servers(),
            registry: ep.registry.clone(),
        },
        &[(PLACE_ORDER, "gw-mock")],
    );
    let gw = Gw::start(cfg).await;
    assert_eq!(gw.get("/healthz").await.status, 200);
    mock.request_errors(
        rdkafka::types::RDKafkaApiKey::Produce,
        &[rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER],
    );
    let obs = gw
        .post(
            PLACE_ORDER,
            "application/json",
            place_order_json(5).to_string(),
        )
        .await;
    let health = eventually("liveness to fail", Duration::from_secs(10), || async {
        let h = gw.get("/healthz").await;
        (h.status == 503).then_some(h)
    })
    .await;
    gw.stop().await;
    (mock, obs, health)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_matches_the_running_server() {
    let ep = endpoints();
    let topic = fresh_topic(&ep, "gw-contract").await;
    let c = contract();
    let mut observed: BTreeSet<(String, String, u16)> = BTreeSet::new();
    let mut note = |path: &str, method: &str, obs: &Observed| {
        observed.insert((path.to_string(), method.to_string(), obs.status));
    };

    // A healthy gateway with a small body limit and authentication.
    let mut cfg = gw_config(&ep, &[(PLACE_ORDER, &topic)]);
    cfg.gateway.max_body_bytes = 2048;
    cfg.gateway.auth_tokens = vec!["contract-token".into()];
    let gw = Gw::start(cfg).await;
    gw.wait_ready().await;
    let good = place_order_json(6).to_string();
    let auth = |r: reqwest::RequestBuilder| r.bearer_auth("contract-token");
    for obs in [
        gw.post_with(PLACE_ORDER, "application/json", good.clone(), auth)
            .await,
        gw.post_with(PLACE_ORDER, "application/json", "[", auth)
            .await,
        gw.post(PLACE_ORDER, "application/json", good.clone()).await,
        gw.post_with(
            "eip.orders.CancelOrder",
            "application/json",
            good.clone(),
            auth,
        )
        .await,
        gw.post_with(PLACE_ORDER, "application/json", "x".repeat(3000), auth)
            .await,
        gw.post_with(PLACE_ORDER, "application/octet-stream", good.clone(), auth)
            .await,
    ] {
        note(RECORDS, "post", &obs);
    }
    let stalled = gw.stalled_upload(PLACE_ORDER, Some("contract-token")).await;
    assert_eq!(stalled.status, 408, "{}", stalled.body);
    note(RECORDS, "post", &stalled);
    for path in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        let obs = gw.get(path).await;
        assert_eq!(obs.status, 200, "{path}");
        note(path, "get", &obs);
    }
    assert_eq!(gw.get("/openapi.json").await.json(), c.doc);
    gw.stop().await;

    // A gateway whose broker never answers: 429 for the second request, 503 for the first,
    // and not ready.
    let mut cfg = gw_config(
        &Endpoints {
            brokers: dead_address(),
            registry: ep.registry.clone(),
        },
        &[(PLACE_ORDER, &topic)],
    );
    cfg.gateway.max_in_flight = 1;
    cfg.gateway.delivery_timeout = Duration::from_secs(2);
    let gw = std::sync::Arc::new(Gw::start(cfg).await);
    let first = {
        let (gw, good) = (gw.clone(), good.clone());
        tokio::spawn(async move { gw.post(PLACE_ORDER, "application/json", good).await })
    };
    eventually("the budget to be held", Duration::from_secs(10), || async {
        (gw.metric("eip_gateway_in_flight").await == 1.0).then_some(())
    })
    .await;
    note(
        RECORDS,
        "post",
        &gw.post(PLACE_ORDER, "application/json", good.clone()).await,
    );
    note(RECORDS, "post", &first.await.unwrap());
    let not_ready = eventually(
        "a failed readiness check",
        Duration::from_secs(10),
        || async {
            let r = gw.get("/readyz").await;
            (r.status == 503 && r.json()["checks"]["broker"] == json!(false)).then_some(r)
        },
    )
    .await;
    note("/readyz", "get", &not_ready);
    std::sync::Arc::into_inner(gw).unwrap().stop().await;

    // The query API over a views file the projector's own store code wrote, with tokens.
    let views = tempfile::tempdir().unwrap();
    let views_db = views.path().join("views.db");
    write_sample_views(&views_db);
    let mut cfg = gw_config(&ep, &[(PLACE_ORDER, &topic)]);
    cfg.gateway.views_db = Some(views_db);
    cfg.gateway.auth_tokens = vec!["contract-token".into()];
    let gw = Gw::start(cfg).await;
    let get = |path: String| {
        let req = gw.client.get(gw.url(&path)).bearer_auth("contract-token");
        (path, req)
    };
    let cases: Vec<(&str, String, u16)> = vec![
        (ORDER, "/v1/orders/o-1".into(), 200),
        (ORDER, "/v1/orders/o-404".into(), 404),
        (CUSTOMER, "/v1/customers/c-1/orders?limit=1".into(), 200),
        (CUSTOMER, "/v1/customers/c-1/orders?cursor=nope".into(), 400),
        (CUSTOMER, "/v1/customers/c-1/orders?limit=0".into(), 400),
        (SALES, "/v1/sales/2026-11-30".into(), 200),
        (SALES, "/v1/sales/30-11-2026".into(), 400),
        (COMMAND, "/v1/commands/cmd-1".into(), 200),
        (COMMAND, "/v1/commands/cmd-404".into(), 404),
        (INVENTORY, "/v1/inventory/A".into(), 200),
        (INVENTORY, "/v1/inventory/SKU-404".into(), 404),
        (
            INVENTORY,
            format!("/v1/inventory/{}", "s".repeat(2_000)),
            400,
        ),
        (COMMANDS, "/v1/commands?correlation_id=corr-1".into(), 200),
        (COMMANDS, "/v1/commands".into(), 400),
        // Ids no view could hold, and a path that is not UTF-8: 400 with a JSON reason on
        // either store (they were 404 on SQLite, 503 on CQL, and plain text).
        (ORDER, format!("/v1/orders/{}", "x".repeat(2_000)), 400),
        (ORDER, "/v1/orders/%FF%FE%FD".into(), 400),
        (COMMAND, format!("/v1/commands/{}", "k".repeat(2_000)), 400),
        (
            CUSTOMER,
            format!("/v1/customers/{}/orders", "c".repeat(2_000)),
            400,
        ),
        (
            COMMANDS,
            format!("/v1/commands?correlation_id={}", "r".repeat(2_000)),
            400,
        ),
        (
            COMMANDS,
            "/v1/commands?correlation_id=corr-1&limit=0".into(),
            400,
        ),
        (
            COMMANDS,
            "/v1/commands?correlation_id=corr-1&cursor=nope".into(),
            400,
        ),
        // A cursor far longer than any this API gives out.
        (
            CUSTOMER,
            format!("/v1/customers/c-1/orders?cursor={}", "a".repeat(5_000)),
            400,
        ),
    ];
    for (template, path, status) in cases {
        let (path, req) = get(path);
        let obs = gw.send("get", template, req).await;
        assert_eq!(obs.status, status, "{path}: {}", obs.body);
        assert!(
            status == 200 || !obs.error().is_empty(),
            "{path}: a JSON reason: {}",
            obs.body
        );
        note(template, "get", &obs);
    }
    // A cursor is good only for the query it was given out for: c-1's page 2 cursor is
    // refused for another customer, and the correlation pages chain like the customer's.
    let (_, req) = get("/v1/customers/c-1/orders?limit=1".into());
    let c1 = gw.send("get", CUSTOMER, req).await.json();
    let (_, req) = get(format!(
        "/v1/customers/c-2/orders?cursor={}",
        c1["next_cursor"].as_str().unwrap()
    ));
    let other = gw.send("get", CUSTOMER, req).await;
    assert_eq!(other.status, 400, "{}", other.body);
    assert!(
        other.error().contains("not one this API gave out"),
        "{}",
        other.body
    );
    let (_, req) = get("/v1/commands?correlation_id=corr-1&limit=1".into());
    let page = gw.send("get", COMMANDS, req).await.json();
    assert_eq!(page["items"][0]["command_id"], json!("cmd-1"));
    let (_, req) = get(format!(
        "/v1/commands?correlation_id=corr-1&limit=1&cursor={}",
        page["next_cursor"].as_str().unwrap()
    ));
    let rest = gw.send("get", COMMANDS, req).await.json();
    assert_eq!(rest["items"], json!([]));
    assert!(rest["next_cursor"].is_null());
    // Paging: the first page's cursor leads to the second, and the last page has none.
    let (_, req) = get("/v1/customers/c-1/orders?limit=1".into());
    let first = gw.send("get", CUSTOMER, req).await.json();
    assert_eq!(first["items"][0]["order_id"], json!("o-2"), "newest first");
    let cursor = first["next_cursor"].as_str().unwrap().to_string();
    let (_, req) = get(format!("/v1/customers/c-1/orders?limit=1&cursor={cursor}"));
    let second = gw.send("get", CUSTOMER, req).await.json();
    assert_eq!(second["items"][0]["order_id"], json!("o-1"));
    let (_, req) = get(format!(
        "/v1/customers/c-1/orders?limit=1&cursor={}",
        second["next_cursor"].as_str().unwrap()
    ));
    let last = gw.send("get", CUSTOMER, req).await.json();
    assert_eq!(last["items"], json!([]));
    assert!(last["next_cursor"].is_null());
    let (_, req) = get("/v1/commands/cmd-1".into());
    let outcome = gw.send("get", COMMAND, req).await.json();
    assert_eq!(outcome["reason_code"], json!("empty_order"));
    let (_, req) = get("/v1/inventory/A".into());
    let level = gw.send("get", INVENTORY, req).await.json();
    assert_eq!(
        level,
        json!({"sku": "A", "available": 96, "reserved": 4, "version": 3, "updated_at": 20})
    );
    // Without the token: 401 with its challenge.
    for (template, path) in [
        (ORDER, "/v1/orders/o-1"),
        (CUSTOMER, "/v1/customers/c-1/orders"),
        (SALES, "/v1/sales/2026-11-30"),
        (COMMAND, "/v1/commands/cmd-1"),
        (COMMANDS, "/v1/commands?correlation_id=corr-1"),
        (INVENTORY, "/v1/inventory/A"),
    ] {
        let obs = gw.get_as(template, path).await;
        assert_eq!(obs.status, 401, "{path}");
        assert!(obs.header("www-authenticate").is_some());
        note(template, "get", &obs);
    }
    gw.stop().await;
    // A gateway whose CQL views cluster does not answer: 503 with the reason, at once while
    // it is known down. Forty queries at a time end within a few seconds: they do not queue
    // behind connects of their own (a 3 s connect timeout each, one after another, was 2
    // minutes).
    // The cluster's address takes TCP connections (the kernel's backlog) and never answers
    // one, as a host behind a dropped route does: each connect waits out its timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut cfg = gw_config(&ep, &[(PLACE_ORDER, &topic)]);
    cfg.gateway.views_cql_nodes = vec![silent.local_addr().unwrap().to_string()];
    let gw = std::sync::Arc::new(Gw::start(cfg).await);
    let started = std::time::Instant::now();
    let burst: Vec<_> = (0..40)
        .map(|i| {
            let gw = gw.clone();
            tokio::spawn(async move { gw.get_as(ORDER, &format!("/v1/orders/o-{i}")).await })
        })
        .collect();
    for answer in burst {
        let obs = answer.await.unwrap();
        assert_eq!(obs.status, 503, "{}", obs.body);
        assert!(obs.header("retry-after").is_some());
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "40 queries to a dead CQL cluster took {:?}",
        started.elapsed()
    );
    // A request the gateway can refuse on its own is answered so, store down or not.
    let bad = gw.get_as(ORDER, "/v1/orders/%FF%FE%FD").await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    let gw = std::sync::Arc::into_inner(gw).unwrap();
    for (template, path) in [
        (ORDER, "/v1/orders/o-1"),
        (CUSTOMER, "/v1/customers/c-1/orders"),
        (SALES, "/v1/sales/2026-11-30"),
        (COMMAND, "/v1/commands/cmd-1"),
        (COMMANDS, "/v1/commands?correlation_id=corr-1"),
        (INVENTORY, "/v1/inventory/A"),
    ] {
        let obs = gw.get_as(template, path).await;
        assert_eq!(obs.status, 503, "{path}: {}", obs.body);
        assert!(
            obs.error().contains("the views could not be read"),
            "{}",
            obs.body
        );
        note(template, "get", &obs);
    }
    gw.stop().await;
    // A gateway without views: 404 with the setting named.
    let gw = Gw::start(gw_config(&ep, &[(PLACE_ORDER, &topic)])).await;
    for (template, path) in [
        (CUSTOMER, "/v1/customers/c-1/orders"),
        (SALES, "/v1/sales/2026-11-30"),
        (COMMANDS, "/v1/commands?correlation_id=corr-1"),
    ] {
        let obs = gw.get_as(template, path).await;
        assert_eq!(obs.status, 404, "{path}");
        assert!(
            obs.error().contains("gateway.views_cql_nodes"),
            "{}",
            obs.body
        );
        assert!(obs.error().contains("gateway.views_db"), "{}", obs.body);
        note(template, "get", &obs);
    }
    gw.stop().await;

    // A registry without our schema and no auto-registration: 500.
    let (gw, _empty) = gateway_over_an_empty_registry(&ep, &topic).await;
    note(
        RECORDS,
        "post",
        &gw.post(PLACE_ORDER, "application/json", good.clone()).await,
    );
    gw.stop().await;

    // A producer with a fatal error: liveness 503.
    let (_mock, _, health) = fatal_gateway(&ep).await;
    note("/healthz", "get", &health);

    let documented = c.operations("eip-gateway");
    let missing: Vec<_> = documented.difference(&observed).collect();
    assert!(
        missing.is_empty(),
        "documented but never triggered: {missing:?}"
    );
    let undocumented: Vec<_> = observed.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "observed but not documented: {undocumented:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_refuses_a_bad_value_with_one_line_naming_the_key() {
    let routes = (
        "EIP__GATEWAY__ROUTES".to_string(),
        format!("{{\"{PLACE_ORDER}\"=\"orders\"}}"),
    );
    type Env = Vec<(String, String)>;
    let cases: Vec<(Env, Vec<String>, &str)> = vec![
        (
            vec![
                routes.clone(),
                ("EIP__GATEWAY__MAX_BODY_BYTES".into(), "lots".into()),
            ],
            vec![],
            "invalid configuration: gateway.max_body_bytes: ",
        ),
        (
            vec![],
            vec![],
            "invalid configuration: gateway.routes: must route at least one",
        ),
        (
            vec![(
                "EIP__GATEWAY__ROUTES".into(),
                "{\"eip.orders.Nope\"=\"x\"}".into(),
            )],
            vec![],
            "invalid configuration: gateway.routes: `eip.orders.Nope` is not a record type",
        ),
        (
            vec![
                routes.clone(),
                ("EIP__GATEWAY__DELIVERY_TIMEOUT".into(), "soon".into()),
            ],
            vec![],
            "invalid configuration: gateway.delivery_timeout: ",
        ),
        (
            vec![routes.clone()],
            vec!["--config".into(), "/nonexistent/gw.toml".into()],
            "invalid configuration: file /nonexistent/gw.toml does not exist",
        ),
    ];
    for (env, args, want) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut child = ChildProcess::spawn(&bin("gateway"), &args, &env);
        let status = child.wait(Duration::from_secs(20)).await;
        let log = child.log_text();
        assert_eq!(status.code(), Some(2), "{env:?}: {log}");
        assert_eq!(log.lines().count(), 1, "one line: {log}");
        assert!(log.starts_with(want), "{env:?}: wanted {want:?}, got {log}");
    }
    // A bad key in the file names the file.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gw.toml");
    std::fs::write(
        &file,
        format!(
            "[gateway]\nmax_in_flight = -1\n[gateway.routes]\n\"{PLACE_ORDER}\" = \"orders\"\n"
        ),
    )
    .unwrap();
    let mut child =
        ChildProcess::spawn(&bin("gateway"), &["--config", file.to_str().unwrap()], &[]);
    assert_eq!(child.wait(Duration::from_secs(20)).await.code(), Some(2));
    let log = child.log_text();
    assert!(
        log.starts_with("invalid configuration: gateway.max_in_flight: "),
        "{log}"
    );
    assert!(log.contains(file.to_str().unwrap()), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_then_drains_and_exits_0_on_sigterm() {
    let ep = endpoints();
    let topic = fresh_topic(&ep, "gw-binary").await;
    let port = free_port();
    let env: Vec<(String, String)> = [
        ("EIP__KAFKA__BROKERS", ep.brokers.clone()),
        ("EIP__REGISTRY__URL", ep.registry.clone()),
        ("EIP__GATEWAY__LISTEN", format!("127.0.0.1:{port}")),
        (
            "EIP__GATEWAY__ROUTES",
            format!("{{\"{PLACE_ORDER}\"=\"{topic}\"}}"),
        ),
        ("EIP__TELEMETRY__READINESS_INTERVAL", "200ms".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let mut child = ChildProcess::spawn(&bin("gateway"), &[], &env);
    let addr = format!("127.0.0.1:{port}");
    eventually(
        "the binary to be ready",
        Duration::from_secs(30),
        || async { http_get(&addr, "/readyz").await.filter(|(s, _)| *s == 200) },
    )
    .await;
    let gw = Gw {
        addr: addr.parse().unwrap(),
        client: http_client(),
        stop: None,
        task: None,
    };
    let obs = gw
        .post(
            PLACE_ORDER,
            "application/json",
            place_order_json(7).to_string(),
        )
        .await;
    assert_eq!(obs.status, 202, "{}", obs.body);
    child.signal("TERM");
    let status = child.wait(Duration::from_secs(30)).await;
    let log = child.log_text();
    assert_eq!(status.code(), Some(0), "{log}");
    // JSON logs: every line is an object with a level and a message.
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: Json =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{line}");
    }
    assert!(log.contains("gateway stopped cleanly"), "{log}");
    assert_eq!(read_all(&ep, &topic).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upload_holds_no_permit_and_is_answered_408() {
    let ep = endpoints();
    let topic = fresh_topic(&ep, "gw-slow").await;
    let mut cfg = gw_config(&ep, &[(PLACE_ORDER, &topic)]);
    // One permit: a stalled upload that held it would starve every other request.
    cfg.gateway.max_in_flight = 1;
    cfg.gateway.body_timeout = Duration::from_secs(3);
    let gw = std::sync::Arc::new(Gw::start(cfg).await);
    gw.wait_ready().await;
    let stalled = {
        let gw = gw.clone();
        tokio::spawn(async move {
            let asked = std::time::Instant::now();
            (gw.stalled_upload(PLACE_ORDER, None).await, asked.elapsed())
        })
    };
    // While the upload stalls, other requests go through.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for n in 0..3 {
        let obs = gw
            .post(
                PLACE_ORDER,
                "application/json",
                place_order_json(n).to_string(),
            )
            .await;
        assert_eq!(obs.status, 202, "{}", obs.body);
    }
    let (obs, took) = stalled.await.unwrap();
    assert_eq!(obs.status, 408, "{}", obs.body);
    assert!(
        obs.error().contains("gateway.body_timeout (3s)"),
        "{}",
        obs.error()
    );
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(20),
        "{took:?}"
    );
    std::sync::Arc::into_inner(gw).unwrap().stop().await;
    assert_eq!(read_all(&ep, &topic).await.len(), 3);
}
