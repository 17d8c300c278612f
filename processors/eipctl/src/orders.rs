//! Order command scripts whose outcomes are known by construction, not by running the
//! aggregate: each order follows one of six stories, and the story says what each command's
//! outcome, the order's final version and its final state must be. The demo sends them
//! (`eipctl orders send`) and the tests check the pipeline against them.
//!
//! A script can go out through every way in: Avro straight to the commands topic, JSON or XML
//! over the gateway's HTTP API, or XML to a legacy topic the router converts and forwards.
//! Each order's commands take one way, in order.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use apache_avro::types::Value;
use eip_schemas::codec::{decode_value_with, encode_with_id};
use eip_schemas::convert::{to_json, to_xml};
use eip_schemas::limits::MAX_ID_BYTES;
use eip_schemas::registry::WriterSchema;
use eip_schemas::types::{
    AddOrderLine, CancelOrder, CommandMetadata, ConfirmOrder, OrderLine, PlaceOrder,
    RemoveOrderLine, samples,
};
use eip_schemas::{AvroRecord, Codec, CodecError};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::{Endpoints, OpsError};

/// What a command must come to: accepted, or rejected with this code.
pub type Expected = Result<(), &'static str>;

/// The price of every line of the scripts, in cents.
pub const UNIT_PRICE: i64 = 250;

/// An order's final state as its story says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Final {
    /// The customer.
    pub customer: String,
    /// `open`, `confirmed` or `cancelled`.
    pub status: &'static str,
    /// Units per SKU.
    pub lines: BTreeMap<String, i64>,
}

/// A command of a script, typed.
#[derive(Debug, Clone)]
pub enum CommandRecord {
    /// Place.
    Place(PlaceOrder),
    /// Add a line.
    AddLine(AddOrderLine),
    /// Remove a line.
    RemoveLine(RemoveOrderLine),
    /// Confirm.
    Confirm(ConfirmOrder),
    /// Cancel.
    Cancel(CancelOrder),
}

fn datum_value<T: AvroRecord>(record: &T) -> Result<Value, CodecError> {
    let compiled = T::compiled().map_err(|e| CodecError::Schema(e.to_string()))?;
    let framed = encode_with_id(0, record)?;
    let writer = WriterSchema {
        id: 0,
        schema: compiled.schema.clone(),
        full_name: compiled.full_name.clone(),
        fingerprint: compiled.fingerprint,
    };
    decode_value_with(&writer, &framed[5..])
}

impl CommandRecord {
    /// The full Avro name: the gateway's `{type}`.
    pub fn type_name(&self) -> &'static str {
        match self {
            CommandRecord::Place(_) => PlaceOrder::FULL_NAME,
            CommandRecord::AddLine(_) => AddOrderLine::FULL_NAME,
            CommandRecord::RemoveLine(_) => RemoveOrderLine::FULL_NAME,
            CommandRecord::Confirm(_) => ConfirmOrder::FULL_NAME,
            CommandRecord::Cancel(_) => CancelOrder::FULL_NAME,
        }
    }

    /// The record's short name, the XML root.
    pub fn short_name(&self) -> &'static str {
        self.type_name().rsplit('.').next().unwrap_or("record")
    }

    /// Confluent-framed Avro, with the registry's id for the type.
    pub async fn avro(&self, codec: &Codec) -> Result<Vec<u8>, CodecError> {
        match self {
            CommandRecord::Place(c) => codec.encode(c).await,
            CommandRecord::AddLine(c) => codec.encode(c).await,
            CommandRecord::RemoveLine(c) => codec.encode(c).await,
            CommandRecord::Confirm(c) => codec.encode(c).await,
            CommandRecord::Cancel(c) => codec.encode(c).await,
        }
    }

    fn value(&self) -> Result<Value, CodecError> {
        match self {
            CommandRecord::Place(c) => datum_value(c),
            CommandRecord::AddLine(c) => datum_value(c),
            CommandRecord::RemoveLine(c) => datum_value(c),
            CommandRecord::Confirm(c) => datum_value(c),
            CommandRecord::Cancel(c) => datum_value(c),
        }
    }

    /// The JSON the gateway accepts for it.
    pub fn json(&self) -> Result<String, CodecError> {
        Ok(to_json(&self.value()?).to_string())
    }

    /// The XML the gateway and the router accept for it.
    pub fn xml(&self) -> Result<String, CodecError> {
        Ok(to_xml(self.short_name(), &self.value()?))
    }
}

/// One command of a story, with its expected outcome.
#[derive(Debug, Clone)]
pub struct Step {
    /// The command id.
    pub command_id: String,
    /// What it must come to.
    pub expected: Expected,
    /// The command.
    pub record: CommandRecord,
}

fn meta(order: &str, n: u32, expected: Option<i64>) -> CommandMetadata {
    CommandMetadata {
        command_id: format!("{order}/c{n}"),
        correlation_id: format!("corr-{order}"),
        causation_id: None,
        issued_at: 1_767_225_600_000,
        aggregate_id: order.to_string(),
        expected_version: expected,
    }
}

fn line(sku: &str, quantity: i32) -> OrderLine {
    OrderLine {
        sku: sku.to_string(),
        quantity,
        unit_price_cents: UNIT_PRICE,
    }
}

fn priced(sku: &str, unit_price_cents: i64) -> OrderLine {
    OrderLine {
        sku: sku.to_string(),
        quantity: 1,
        unit_price_cents,
    }
}

/// The story of order `i` (its id is `{prefix}-{i:06}`): its commands, its final version, and
/// its final state (None for an order never placed).
pub fn story(prefix: &str, i: u64) -> (String, Vec<Step>, i64, Option<Final>) {
    let id = format!("{prefix}-{i:06}");
    let sample = samples::order_placed(i);
    let place = |n: u32, lines: Vec<OrderLine>| {
        CommandRecord::Place(PlaceOrder {
            metadata: meta(&id, n, None),
            customer_id: sample.customer_id.clone(),
            lines,
            currency: "EUR".into(),
            shipping_address: sample.shipping_address.clone(),
        })
    };
    let add = |n: u32, l: OrderLine| {
        CommandRecord::AddLine(AddOrderLine {
            metadata: meta(&id, n, None),
            line: l,
        })
    };
    let remove = |n: u32, sku: &str| {
        CommandRecord::RemoveLine(RemoveOrderLine {
            metadata: meta(&id, n, None),
            sku: sku.into(),
        })
    };
    let confirm = |n: u32, expected: Option<i64>| {
        CommandRecord::Confirm(ConfirmOrder {
            metadata: meta(&id, n, expected),
        })
    };
    let cancel = |n: u32, reason: &str| {
        CommandRecord::Cancel(CancelOrder {
            metadata: meta(&id, n, None),
            reason: reason.into(),
        })
    };
    let step = |n: u32, expected: Expected, record: CommandRecord| Step {
        command_id: format!("{id}/c{n}"),
        expected,
        record,
    };
    let (steps, version, status, lines): (Vec<Step>, i64, &'static str, &[(&str, i64)]) =
        match i % 6 {
            0 => (
                vec![
                    step(1, Ok(()), place(1, vec![line("A", 2), line("B", 1)])),
                    step(2, Ok(()), add(2, line("C", 3))),
                    step(3, Ok(()), remove(3, "A")),
                    step(4, Ok(()), confirm(4, None)),
                ],
                4,
                "confirmed",
                &[("B", 1), ("C", 3)],
            ),
            1 => (
                vec![
                    step(1, Ok(()), place(1, vec![line("A", 1)])),
                    step(2, Ok(()), cancel(2, "changed my mind")),
                    step(3, Err("not_open"), confirm(3, None)),
                ],
                2,
                "cancelled",
                &[("A", 1)],
            ),
            2 => (
                vec![
                    step(1, Err("empty_order"), place(1, vec![])),
                    step(2, Err("unknown_order"), add(2, line("A", 1))),
                    // Two lines of 2^62 minor units: each fits in 64 bits, the total does not.
                    step(
                        3,
                        Err("amount_too_large"),
                        place(3, vec![priced("A", 1 << 62), priced("B", 1 << 62)]),
                    ),
                    // Ids the views could not hold are refused before anything is accepted.
                    step(4, Err("bad_sku"), place(4, vec![line("", 1)])),
                    step(
                        5,
                        Err("bad_customer"),
                        CommandRecord::Place(PlaceOrder {
                            metadata: meta(&id, 5, None),
                            customer_id: "c".repeat(MAX_ID_BYTES + 1),
                            lines: vec![line("A", 1)],
                            currency: "EUR".into(),
                            shipping_address: sample.shipping_address.clone(),
                        }),
                    ),
                ],
                0,
                "",
                &[],
            ),
            3 => (
                vec![
                    step(1, Ok(()), place(1, vec![line("A", 1)])),
                    step(2, Err("bad_quantity"), add(2, line("B", 0))),
                    step(3, Err("version_conflict"), confirm(3, Some(5))),
                    // A line that would take the total past i64::MAX, and an oversized SKU.
                    step(4, Err("amount_too_large"), add(4, priced("C", i64::MAX))),
                    step(
                        5,
                        Err("bad_sku"),
                        add(5, line(&"s".repeat(MAX_ID_BYTES + 1), 1)),
                    ),
                    step(6, Ok(()), confirm(6, Some(1))),
                ],
                2,
                "confirmed",
                &[("A", 1)],
            ),
            4 => (
                vec![
                    step(1, Ok(()), place(1, vec![line("A", 1)])),
                    step(2, Err("last_line"), remove(2, "A")),
                    step(3, Ok(()), add(3, line("B", 2))),
                    // The same command again: a duplicate, applied once.
                    step(3, Ok(()), add(3, line("B", 2))),
                ],
                2,
                "open",
                &[("A", 1), ("B", 2)],
            ),
            _ => (
                vec![
                    step(1, Ok(()), place(1, vec![line("A", 1)])),
                    step(2, Err("already_exists"), place(2, vec![line("A", 1)])),
                    step(3, Err("missing_reason"), cancel(3, " ")),
                    step(4, Ok(()), cancel(4, "out of stock")),
                ],
                2,
                "cancelled",
                &[("A", 1)],
            ),
        };
    let fin = (version > 0).then(|| Final {
        customer: sample.customer_id.clone(),
        status,
        lines: lines.iter().map(|(s, q)| (s.to_string(), *q)).collect(),
    });
    (id, steps, version, fin)
}

/// The story of an order a legacy partner places as XML through the router: only the
/// placement, accepted; the order stays open at version 1.
pub fn legacy_story(prefix: &str, i: u64) -> (String, Vec<Step>, i64, Option<Final>) {
    let id = format!("{prefix}-{i:06}");
    let sample = samples::order_placed(i);
    let lines = vec![line("A", 1), line("D", 2)];
    let place = CommandRecord::Place(PlaceOrder {
        metadata: meta(&id, 1, None),
        customer_id: sample.customer_id.clone(),
        lines,
        currency: "EUR".into(),
        shipping_address: sample.shipping_address.clone(),
    });
    let steps = vec![Step {
        command_id: format!("{id}/c1"),
        expected: Ok(()),
        record: place,
    }];
    let fin = Final {
        customer: sample.customer_id,
        status: "open",
        lines: [("A".to_string(), 1), ("D".to_string(), 2)].into(),
    };
    (id, steps, 1, Some(fin))
}

/// A produced script: the commands' expected outcomes by command id, each order's final
/// version (0: never placed) and state.
#[derive(Debug, Default)]
pub struct Script {
    /// Expected outcome of every command id.
    pub outcomes: HashMap<String, Expected>,
    /// Command ids sent twice.
    pub duplicates: Vec<String>,
    /// Each order's final version.
    pub versions: BTreeMap<String, i64>,
    /// Each placed order's final state.
    pub finals: BTreeMap<String, Final>,
    /// Records produced (commands, duplicates and poison).
    pub records: u64,
    /// Poison records among them.
    pub poison: u64,
}

impl Script {
    fn add(&mut self, id: &str, steps: &[Step], version: i64, fin: Option<Final>) {
        self.versions.insert(id.to_string(), version);
        if let Some(f) = fin {
            self.finals.insert(id.to_string(), f);
        }
        for s in steps {
            if self
                .outcomes
                .insert(s.command_id.clone(), s.expected)
                .is_some()
            {
                self.duplicates.push(s.command_id.clone());
            }
        }
    }

    /// Adds `other`, a script of orders with another prefix.
    pub fn absorb(&mut self, other: Script) {
        self.outcomes.extend(other.outcomes);
        self.duplicates.extend(other.duplicates);
        self.versions.extend(other.versions);
        self.finals.extend(other.finals);
        self.records += other.records;
        self.poison += other.poison;
    }

    /// Commands expected accepted, and rejected by reason code.
    pub fn expected_tally(&self) -> (u64, BTreeMap<&'static str, u64>) {
        let mut accepted = 0;
        let mut rejected: BTreeMap<&'static str, u64> = BTreeMap::new();
        for e in self.outcomes.values() {
            match e {
                Ok(()) => accepted += 1,
                Err(code) => *rejected.entry(code).or_default() += 1,
            }
        }
        (accepted, rejected)
    }
}

/// Records produced and not yet acknowledged, awaited 5,000 at a time, and the poison records
/// spread among a script's orders.
struct Sends {
    producer: FutureProducer,
    pending: Vec<rdkafka::producer::DeliveryFuture>,
    poison: u64,
    orders: u64,
}

impl Sends {
    fn new(ep: &Endpoints, orders: u64, poison: u64) -> Result<Sends, OpsError> {
        Ok(Sends {
            producer: eip_runtime::kafka::producer_config(&ep.kafka()).create()?,
            pending: Vec::new(),
            poison,
            orders,
        })
    }

    /// Produces `payload` to `topic` keyed `key`.
    async fn send(&mut self, topic: &str, key: &str, payload: &[u8]) -> Result<(), OpsError> {
        let record = FutureRecord::to(topic).key(key.as_bytes()).payload(payload);
        let sent = self.producer.send_result(record).map_err(|(e, _)| e)?;
        self.pending.push(sent);
        if self.pending.len() >= 5_000 {
            self.settle().await?;
        }
        Ok(())
    }

    /// After order `i`, a poison record to `topic` when one is due (spread evenly, `poison`
    /// in all); counted in `script`.
    async fn poison_after(
        &mut self,
        i: u64,
        topic: &str,
        key: &str,
        script: &mut Script,
    ) -> Result<(), OpsError> {
        if self.poison > 0
            && i.is_multiple_of((self.orders / self.poison).max(1))
            && script.poison < self.poison
        {
            self.send(topic, key, b"not avro at all").await?;
            script.records += 1;
            script.poison += 1;
        }
        Ok(())
    }

    /// Waits for every acknowledgement.
    async fn settle(&mut self) -> Result<(), OpsError> {
        for f in self.pending.drain(..) {
            f.await
                .map_err(|_| OpsError::Task("a send was cancelled".into()))?
                .map_err(|(e, _)| e)?;
        }
        Ok(())
    }
}

/// Produces the stories of `orders` orders to `topic` as Avro, keyed by order id, each
/// order's commands in order, with `poison` undecodable records among them.
pub async fn produce_script(
    ep: &Endpoints,
    codec: &Codec,
    topic: &str,
    prefix: &str,
    orders: u64,
    poison: u64,
) -> Result<Script, OpsError> {
    let mut sends = Sends::new(ep, orders, poison)?;
    let mut script = Script::default();
    for i in 0..orders {
        let (id, steps, version, fin) = story(prefix, i);
        script.add(&id, &steps, version, fin);
        for s in &steps {
            sends.send(topic, &id, &s.record.avro(codec).await?).await?;
            script.records += 1;
        }
        sends.poison_after(i, topic, &id, &mut script).await?;
    }
    sends.settle().await?;
    Ok(script)
}

/// One way into the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Channel {
    /// Avro straight to the commands topic.
    Avro,
    /// JSON over the gateway.
    Json,
    /// XML over the gateway.
    Xml,
    /// XML placements to the legacy topic, converted and forwarded by the router (legacy
    /// partners only place orders).
    LegacyXml,
}

impl Channel {
    /// How the summary names it.
    pub fn label(self) -> &'static str {
        match self {
            Channel::Avro => "Avro producer -> commands topic",
            Channel::Json => "JSON over HTTP (gateway)",
            Channel::Xml => "XML over HTTP (gateway)",
            Channel::LegacyXml => "XML to the legacy topic (router)",
        }
    }
}

/// Where `send` sends.
#[derive(Debug, Clone)]
pub struct Targets {
    /// The gateway's base URL.
    pub gateway: String,
    /// The commands topic (Avro, and poison).
    pub commands: String,
    /// The legacy topic of XML `PlaceOrder`s the router reads.
    pub legacy_xml: String,
}

/// What `send` did.
#[derive(Debug, Default)]
pub struct SendReport {
    /// The script sent.
    pub script: Script,
    /// Commands sent per way in.
    pub per_channel: BTreeMap<Channel, u64>,
    /// Requests the gateway refused on purpose (bad input), with status and reason.
    pub refused: Vec<(u16, String)>,
}

/// Sends the stories of `orders` orders, spreading orders over the four ways in (order `i`
/// takes way `i % 4`; the legacy way carries [`legacy_story`]), plus `poison` undecodable records to the commands topic and a few
/// malformed requests the gateway must refuse with a reason.
pub async fn send(
    ep: &Endpoints,
    codec: &Codec,
    to: &Targets,
    prefix: &str,
    orders: u64,
    poison: u64,
) -> Result<SendReport, OpsError> {
    let mut sends = Sends::new(ep, orders, poison)?;
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .map_err(|e| OpsError::Http(e.to_string()))?;
    let mut report = SendReport::default();
    let limit = Arc::new(tokio::sync::Semaphore::new(32));
    let mut http_orders = tokio::task::JoinSet::new();
    for i in 0..orders {
        let channel = [
            Channel::Avro,
            Channel::Json,
            Channel::Xml,
            Channel::LegacyXml,
        ][(i % 4) as usize];
        let (id, steps, version, fin) = if channel == Channel::LegacyXml {
            legacy_story(prefix, i)
        } else {
            story(prefix, i)
        };
        report.script.add(&id, &steps, version, fin);
        report.script.records += steps.len() as u64;
        *report.per_channel.entry(channel).or_default() += steps.len() as u64;
        match channel {
            Channel::Avro | Channel::LegacyXml => {
                for s in &steps {
                    let (topic, payload) = if channel == Channel::Avro {
                        (&to.commands, s.record.avro(codec).await?)
                    } else {
                        (&to.legacy_xml, s.record.xml()?.into_bytes())
                    };
                    sends.send(topic, &id, &payload).await?;
                }
            }
            Channel::Json | Channel::Xml => {
                let mut bodies = Vec::new();
                for s in &steps {
                    let (media, body) = if channel == Channel::Json {
                        ("application/json", s.record.json()?)
                    } else {
                        ("application/xml", s.record.xml()?)
                    };
                    bodies.push((s.record.type_name(), media, body));
                }
                let (http, url, permit) = (
                    http.clone(),
                    to.gateway.clone(),
                    limit
                        .clone()
                        .acquire_owned()
                        .await
                        .map_err(|_| OpsError::Task("a send was cancelled".into()))?,
                );
                // One order's commands go one after another; orders go in parallel.
                http_orders.spawn(async move {
                    let _permit = permit;
                    for (type_name, media, body) in bodies {
                        post(&http, &url, type_name, media, body, 202).await?;
                    }
                    Ok::<(), OpsError>(())
                });
            }
        }
        sends
            .poison_after(i, &to.commands, &id, &mut report.script)
            .await?;
    }
    sends.settle().await?;
    while let Some(done) = http_orders.join_next().await {
        done.map_err(|e| OpsError::Http(e.to_string()))??;
    }
    // Bad input at the edge: refused with a reason, never forwarded.
    let bad = [
        (
            PlaceOrder::FULL_NAME,
            "application/json",
            "{\"metadata\": 1".to_string(),
        ),
        (
            PlaceOrder::FULL_NAME,
            "application/json",
            "{\"customer_id\": \"c-1\"}".to_string(),
        ),
        (
            ConfirmOrder::FULL_NAME,
            "application/xml",
            "<ConfirmOrder><metadata>".to_string(),
        ),
        ("eip.orders.ShipOrder", "application/json", "{}".to_string()),
    ];
    for (type_name, media, body) in bad {
        let (status, text) = post_raw(&http, &to.gateway, type_name, media, body).await?;
        if (200..300).contains(&status) {
            return Err(OpsError::Http(format!(
                "the gateway accepted a malformed {type_name} ({status})"
            )));
        }
        let reason = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["error"].as_str().map(String::from))
            .unwrap_or(text);
        report.refused.push((status, reason));
    }
    Ok(report)
}

async fn post_raw(
    http: &reqwest::Client,
    base: &str,
    type_name: &str,
    media: &str,
    body: String,
) -> Result<(u16, String), OpsError> {
    let url = format!("{base}/v1/records/{type_name}");
    for attempt in 0..20 {
        let sent = http
            .post(&url)
            .header("content-type", media)
            .body(body.clone())
            .send()
            .await;
        match sent {
            Ok(r) if r.status().as_u16() == 429 || r.status().as_u16() == 503 => {
                // Backpressure: wait and send again.
                tokio::time::sleep(std::time::Duration::from_millis(100 * (attempt + 1))).await;
            }
            Ok(r) => {
                let status = r.status().as_u16();
                let text = r.text().await.unwrap_or_default();
                return Ok((status, text));
            }
            Err(e) => return Err(OpsError::Http(format!("POST {url}: {e}"))),
        }
    }
    Err(OpsError::Http(format!(
        "POST {url}: still refused after 20 tries"
    )))
}

async fn post(
    http: &reqwest::Client,
    base: &str,
    type_name: &str,
    media: &str,
    body: String,
    want: u16,
) -> Result<(), OpsError> {
    let (status, text) = post_raw(http, base, type_name, media, body).await?;
    if status == want {
        Ok(())
    } else {
        Err(OpsError::Http(format!(
            "POST {type_name} ({media}) answered {status}: {text}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stories_know_their_outcomes_and_finals() {
        let mut script = Script::default();
        for i in 0..6 {
            let (id, steps, version, fin) = story("t", i);
            assert_eq!(fin.is_some(), version > 0, "{id}");
            script.add(&id, &steps, version, fin);
        }
        let (accepted, rejected) = script.expected_tally();
        // The duplicate command id of story 4 counts once.
        assert_eq!(accepted, 4 + 2 + 2 + 2 + 2);
        assert_eq!(rejected.values().sum::<u64>(), 1 + 5 + 4 + 1 + 2);
        assert_eq!(script.duplicates, vec!["t-000004/c3".to_string()]);
        assert_eq!(script.finals["t-000000"].lines.len(), 2);
    }

    #[test]
    fn commands_convert_to_the_gateways_json_and_xml() {
        let (_, steps, _, _) = story("t", 3);
        let json: serde_json::Value =
            serde_json::from_str(&steps[0].record.json().unwrap()).unwrap();
        assert_eq!(json["metadata"]["aggregate_id"], "t-000003");
        let xml = steps[2].record.xml().unwrap();
        assert!(
            xml.contains("<ConfirmOrder><metadata>") && xml.contains("t-000003"),
            "{xml}"
        );
        assert_eq!(steps[2].record.type_name(), "eip.orders.ConfirmOrder");
    }
}
