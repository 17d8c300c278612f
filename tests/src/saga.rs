//! The saga pipeline on the real stack: `eip-orders` in process, every participant of the
//! shipped order-fulfilment definition and the monitor as child processes (so a test can
//! kill -9 any of them), on fresh topics named after the test.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use eip_schemas::Codec;
use eip_schemas::types::{Address, CommandMetadata, ConfirmOrder, OrderLine, PlaceOrder};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::cqrs::{Stack, env, stack, start_orders};
use crate::{ChildProcess, Endpoints, InProcess, bin, create_topics, free_listen_port, http_get};

/// The shipped definition.
pub const SHIPPED: &str = include_str!("../../deploy/sagas/order-fulfilment.toml");

/// What is injected into one role.
#[derive(Debug, Clone)]
pub struct Inject {
    /// The role.
    pub role: &'static str,
    /// Its failure rate.
    pub fail_rate: f64,
    /// Its latency.
    pub latency: Duration,
}

/// The bearer token the rig's monitor takes for operator actions.
pub const OPERATOR_TOKEN: &str = "test-operator-token";

/// A running saga pipeline.
pub struct SagaRig {
    /// The orders topics and files.
    pub stack: Stack,
    /// `eip-orders`.
    pub orders: InProcess,
    /// The test's definition file.
    pub definition: PathBuf,
    /// Its topics (besides the orders').
    pub saga_topics: Vec<String>,
    /// The monitor's observations topic.
    pub observations: String,
    /// Where the inventory participant publishes stock levels.
    pub levels: String,
    /// Where the participants' and the monitor's files are.
    pub dir: tempfile::TempDir,
    /// Running participants, by role.
    pub participants: BTreeMap<String, ChildProcess>,
    /// The running monitor.
    pub monitor: Option<ChildProcess>,
    /// The monitor's telemetry (and API) address.
    pub monitor_addr: String,
    /// Each participant's telemetry address, by role.
    pub telemetry: BTreeMap<String, String>,
    /// Settings the monitor starts with on top of the rig's (a later one wins): its store,
    /// another state directory.
    pub monitor_env: Vec<(String, String)>,
    prefix: String,
    inject: Vec<Inject>,
    ep: Endpoints,
}

/// Every participant role of the shipped definition.
pub const ROLES: [&str; 9] = [
    "customers",
    "fraud",
    "inventory",
    "payments",
    "loyalty",
    "shipping",
    "invoicing",
    "notifications",
    "orders",
];

impl SagaRig {
    /// Fresh topics (3 partitions) and files, the definition with this test's topics and
    /// `timeout` / `compensation_timeout` for every step, and `eip-orders` running.
    pub async fn new(
        ep: &Endpoints,
        prefix: &str,
        timeout: &str,
        compensation_timeout: &str,
        inject: Vec<Inject>,
    ) -> SagaRig {
        let stack = stack(ep, prefix).await;
        let prefix = stack.names.input.clone();
        let dir = tempfile::tempdir().unwrap();
        let text = SHIPPED
            .replace("\"saga-", &format!("\"{prefix}-saga-"))
            .replace("\"order-events\"", &format!("\"{}\"", stack.events))
            .replace("timeout = \"30s\"", &format!("timeout = \"{timeout}\""))
            .replace(
                "compensation_timeout = \"60s\"",
                &format!("compensation_timeout = \"{compensation_timeout}\""),
            );
        let definition = dir.path().join("saga.toml");
        std::fs::write(&definition, &text).unwrap();
        let def = eip_saga::definition::Definition::parse(&text, "saga.toml").unwrap();
        let saga_topics: Vec<String> = def
            .topics()
            .into_iter()
            .filter(|t| *t != stack.events)
            .collect();
        let observations = format!("{prefix}-saga-observations");
        let levels = format!("{prefix}-inventory-levels");
        let mut all: Vec<String> = saga_topics.clone();
        all.push(observations.clone());
        all.push(levels.clone());
        let dlqs: Vec<String> = all.iter().map(|t| format!("{t}.dlq")).collect();
        all.extend(dlqs);
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        create_topics(ep, &refs, 3).await;
        let orders = start_orders(ep, &stack).await;
        SagaRig {
            stack,
            orders,
            definition,
            saga_topics,
            observations,
            levels,
            dir,
            participants: BTreeMap::new(),
            monitor: None,
            monitor_addr: String::new(),
            telemetry: BTreeMap::new(),
            monitor_env: Vec::new(),
            prefix,
            inject,
            ep: ep.clone(),
        }
    }

    /// The SQLite file of `role`.
    pub fn db(&self, role: &str) -> PathBuf {
        self.dir.path().join(format!("{role}.db"))
    }

    fn common_env(&self, group: &str) -> Vec<(String, String)> {
        let mut e = env(&[
            ("EIP__KAFKA__BROKERS", self.ep.brokers.clone()),
            ("EIP__KAFKA__GROUP_ID", group.to_string()),
            ("EIP__KAFKA__CLIENT_ID", group.to_string()),
            // Static membership: a restarted instance takes its partitions back at once.
            ("EIP__KAFKA__GROUP_INSTANCE_ID", group.to_string()),
            ("EIP__REGISTRY__URL", self.ep.registry.clone()),
            (
                "EIP__PROCESSOR__DEFINITION",
                self.definition.display().to_string(),
            ),
            ("EIP__TELEMETRY__READINESS_INTERVAL", "500ms".into()),
            ("EIP__PIPELINE__FLUSH_INTERVAL", "200ms".into()),
        ]);
        e.push(("RUST_LOG".into(), "info".into()));
        e
    }

    /// Starts (or restarts) the participant `role`.
    pub fn start_participant(&mut self, role: &str) {
        let mut e = self.common_env(&format!("{}-{role}", self.prefix));
        e.extend(env(&[
            ("EIP__PROCESSOR__DB", self.db(role).display().to_string()),
            (
                "EIP__PROCESSOR__COMMANDS_TOPIC",
                self.stack.names.input.clone(),
            ),
            (
                "EIP__PROCESSOR__OUTCOMES_TOPIC",
                self.stack.outcomes.clone(),
            ),
            ("EIP__PROCESSOR__LEVELS_TOPIC", self.levels.clone()),
            ("EIP__PROCESSOR__INITIAL_STOCK", "100000".into()),
            ("EIP__PROCESSOR__INITIAL_POINTS", "100000".into()),
        ]));
        let addr = format!("127.0.0.1:{}", free_listen_port());
        e.push(("EIP__TELEMETRY__LISTEN".into(), addr.clone()));
        self.telemetry.insert(role.to_string(), addr);
        for i in &self.inject {
            let key = i.role.to_uppercase();
            e.push((
                format!("EIP__PROCESSOR__INJECT__{key}__FAIL_RATE"),
                i.fail_rate.to_string(),
            ));
            e.push((
                format!("EIP__PROCESSOR__INJECT__{key}__LATENCY"),
                format!("{}ms", i.latency.as_millis()),
            ));
        }
        let child = ChildProcess::spawn(&bin("eip-saga"), &["--role", role], &e);
        self.participants.insert(role.to_string(), child);
    }

    /// Starts every participant.
    pub fn start_participants(&mut self) {
        for role in ROLES {
            self.start_participant(role);
        }
    }

    /// Starts (or restarts) the monitor.
    pub fn start_monitor(&mut self) {
        let port = if self.monitor_addr.is_empty() {
            free_listen_port()
        } else {
            self.monitor_addr
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(free_listen_port)
        };
        self.monitor_addr = format!("127.0.0.1:{port}");
        let mut e = self.common_env(&format!("{}-monitor", self.prefix));
        e.extend(env(&[
            (
                "EIP__PROCESSOR__DB",
                self.db("monitor").display().to_string(),
            ),
            (
                "EIP__PROCESSOR__OBSERVATIONS_TOPIC",
                self.observations.clone(),
            ),
            ("EIP__TELEMETRY__LISTEN", self.monitor_addr.clone()),
            (
                "EIP__PROCESSOR__OPERATOR_TOKENS",
                format!("[\"{OPERATOR_TOKEN}\"]"),
            ),
        ]));
        e.extend(self.monitor_env.iter().cloned());
        self.monitor = Some(ChildProcess::spawn(&bin("eip-saga-monitor"), &[], &e));
    }

    /// The monitor's answer to `GET path` as JSON, if it answers 200.
    pub async fn api(&self, path: &str) -> Option<serde_json::Value> {
        match http_get(&self.monitor_addr, path).await {
            Some((200, body)) => serde_json::from_str(&body).ok(),
            _ => None,
        }
    }

    /// POSTs an operator action on saga `id` with `token`: the status and the JSON answer.
    pub async fn act(
        &self,
        id: &str,
        body: serde_json::Value,
        token: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .no_proxy()
            .build()
            .unwrap();
        let mut call = client
            .post(format!("http://{}/sagas/{id}/actions", self.monitor_addr))
            .json(&body);
        if let Some(t) = token {
            call = call.bearer_auth(t);
        }
        let resp = call.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}")),
        )
    }

    /// Sagas per status, from the monitor's API.
    pub async fn counts(&self) -> Option<BTreeMap<String, i64>> {
        let stats = self.api("/sagas/stats").await?;
        serde_json::from_value(stats["counts"].clone()).ok()
    }

    /// Every saga of `status` (all pages); empty while the monitor does not answer yet.
    pub async fn sagas(&self, status: &str) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let path = match &after {
                Some(a) => format!("/sagas?status={status}&limit=500&after={a}"),
                None => format!("/sagas?status={status}&limit=500"),
            };
            let Some(page) = self.api(&path).await else {
                return Vec::new();
            };
            let items = page["items"].as_array().cloned().unwrap_or_default();
            out.extend(items);
            match page["next"].as_str() {
                Some(n) => after = Some(n.to_string()),
                None => return out,
            }
        }
    }

    /// The offset the participant `role`'s group has committed on `topic`'s `partition`
    /// (-1 for none): every record before it was handled and its outputs acknowledged.
    pub fn committed(&self, role: &str, topic: &str, partition: i32) -> i64 {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &self.ep.brokers)
            .set("group.id", format!("{}-{role}", self.prefix))
            .create()
            .unwrap();
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition(topic, partition);
        let committed = consumer
            .committed_offsets(tpl, Duration::from_secs(10))
            .unwrap();
        match committed
            .find_partition(topic, partition)
            .map(|p| p.offset())
        {
            Some(rdkafka::Offset::Offset(o)) => o,
            _ => -1,
        }
    }

    /// Kills `who` (a role, or `monitor`) with SIGKILL and waits for it to be gone.
    pub async fn kill(&mut self, who: &str) {
        let child = if who == "monitor" {
            self.monitor.as_mut()
        } else {
            self.participants.get_mut(who)
        };
        if let Some(c) = child {
            c.signal("KILL");
            c.wait(Duration::from_secs(10)).await;
        }
    }

    /// Restarts `who` (a role, or `monitor`).
    pub fn restart(&mut self, who: &str) {
        if who == "monitor" {
            self.start_monitor();
        } else {
            self.start_participant(who);
        }
    }

    /// Logs of every child, for a failed assertion.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (role, c) in &self.participants {
            let log = c.log_text();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            out.push_str(&format!(
                "--- {role}\n{}\n",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ));
        }
        if let Some(m) = &self.monitor {
            let log = m.log_text();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            out.push_str(&format!(
                "--- monitor\n{}\n",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ));
        }
        out
    }
}

/// One order the test places and confirms.
#[derive(Debug, Clone)]
pub struct TestOrder {
    /// Its id (the saga id).
    pub id: String,
    /// Its customer.
    pub customer: String,
    /// Its lines (SKU, quantity, unit price).
    pub lines: Vec<(String, i32, i64)>,
}

impl TestOrder {
    /// Its total in minor units.
    pub fn total(&self) -> i64 {
        self.lines.iter().map(|(_, q, p)| i64::from(*q) * p).sum()
    }
}

/// `n` orders of a few customers and SKUs, ids prefixed `prefix`.
pub fn orders(prefix: &str, n: usize) -> Vec<TestOrder> {
    (0..n)
        .map(|i| TestOrder {
            id: format!("{prefix}-o{i:05}"),
            customer: format!("c-{}", i % 7),
            lines: (0..1 + i % 3)
                .map(|l| {
                    (
                        format!("SKU-{}", (i + l * 5) % 11),
                        1 + ((i + l) % 4) as i32,
                        1_000 + ((i * 37 + l * 11) % 5_000) as i64,
                    )
                })
                .collect(),
        })
        .collect()
}

/// Places and confirms each order (PlaceOrder then ConfirmOrder, keyed by order id).
pub async fn place_and_confirm(ep: &Endpoints, codec: &Codec, topic: &str, orders: &[TestOrder]) {
    place_then(ep, codec, topic, orders, false).await;
}

/// Places each order and cancels it before it is confirmed: no saga starts.
pub async fn place_and_cancel(ep: &Endpoints, codec: &Codec, topic: &str, orders: &[TestOrder]) {
    place_then(ep, codec, topic, orders, true).await;
}

async fn place_then(
    ep: &Endpoints,
    codec: &Codec,
    topic: &str,
    orders: &[TestOrder],
    cancel: bool,
) {
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &ep.brokers)
        .set("enable.idempotence", "true")
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let mut sends = Vec::new();
    for o in orders {
        let meta = |what: &str| CommandMetadata {
            command_id: format!("{}:{what}", o.id),
            correlation_id: format!("corr-{}", o.id),
            causation_id: None,
            issued_at: 1,
            aggregate_id: o.id.clone(),
            expected_version: None,
        };
        let place = codec
            .encode(&PlaceOrder {
                metadata: meta("place"),
                customer_id: o.customer.clone(),
                lines: o
                    .lines
                    .iter()
                    .map(|(sku, quantity, price)| OrderLine {
                        sku: sku.clone(),
                        quantity: *quantity,
                        unit_price_cents: *price,
                    })
                    .collect(),
                currency: "EUR".into(),
                shipping_address: Address {
                    street: "1 Main St".into(),
                    city: "Town".into(),
                    postal_code: "1000".into(),
                    country: "BE".into(),
                },
            })
            .await
            .unwrap();
        let confirm = if cancel {
            codec
                .encode(&eip_schemas::types::CancelOrder {
                    metadata: meta("cancel"),
                    reason: "changed my mind".into(),
                })
                .await
                .unwrap()
        } else {
            codec
                .encode(&ConfirmOrder {
                    metadata: meta("confirm"),
                })
                .await
                .unwrap()
        };
        // Enqueued in order (the idempotent producer keeps it): placed, then confirmed.
        for payload in [place, confirm] {
            let record = FutureRecord::to(topic)
                .key(o.id.as_bytes())
                .payload(&payload);
            sends.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
        }
    }
    for send in sends {
        send.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
}

/// The final event type of each order on the events topic (the last one per order).
pub async fn final_order_events(
    ep: &Endpoints,
    codec: &Codec,
    events: &str,
) -> HashMap<String, String> {
    let mut last = HashMap::new();
    for r in crate::read_all(ep, events).await {
        if let Some(e) = eip_schemas::order_events::decode_order_event(codec, r.payload.as_deref())
            .await
            .unwrap()
        {
            let kind = match e {
                eip_schemas::order_events::OrderEvent::Completed(_) => "completed",
                eip_schemas::order_events::OrderEvent::Cancelled(_) => "cancelled",
                eip_schemas::order_events::OrderEvent::Confirmed(_) => "confirmed",
                _ => "open",
            };
            last.insert(e.metadata().aggregate_id.clone(), kind.to_string());
        }
    }
    last
}

/// Opens `url` in headless Chromium (Debian's `chromium`, which `make test` installs) over
/// the DevTools protocol (`tests/browser/page.mjs`, run by Node), waits until the JavaScript
/// `condition` holds on the page, saves a screenshot to `shot`, and returns the rendered DOM.
pub async fn browse(url: &str, shot: &std::path::Path, condition: &str) -> String {
    let script = crate::repo_root().join("tests/browser/page.mjs");
    let out = tokio::time::timeout(
        Duration::from_secs(90),
        tokio::process::Command::new("node")
            .arg("--experimental-websocket")
            .arg(&script)
            .args([url, &shot.display().to_string(), condition, "60000"])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the browser did not finish within 90 s")
    .expect("node runs");
    assert!(
        out.status.success(),
        "the page did not get there: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
