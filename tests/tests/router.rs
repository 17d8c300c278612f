//! The router against the real local stack: the `router` binary as operators run it, real
//! topics, the real registry, and `eipctl dlq` for redrives.
//!
//! One subject, the router end to end, kept in one file past ~800 lines: its tests share the
//! router process harness and the rules fixtures defined at the top.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use eip_router::processor::{RETRY_ATTEMPT, RETRY_TARGET, RULES_VERSION};
use eip_schemas::types::OrderPlaced;
use eip_schemas::types::samples::order_placed;
use eip_tests::*;
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

const WAIT: Duration = Duration::from_secs(120);

/// A `router` child process with its own rules file and config.
struct RouterProc {
    child: ChildProcess,
    rules: PathBuf,
    telemetry: String,
    _dir: tempfile::TempDir,
}

fn router_config(
    ep: &Endpoints,
    inputs: &[&str],
    group: &str,
    rules: &std::path::Path,
    delays: &[&str],
    port: u16,
) -> String {
    let inputs: Vec<String> = inputs.iter().map(|i| format!("\"{i}\"")).collect();
    let delays: Vec<String> = delays.iter().map(|d| format!("\"{d}\"")).collect();
    format!(
        r#"
[kafka]
brokers = "{brokers}"
group_id = "{group}"
client_id = "{group}"

[kafka.producer_properties]
"topic.metadata.propagation.max.ms" = "2000"
"topic.metadata.refresh.interval.ms" = "2000"
"message.timeout.ms" = "10000"
"allow.auto.create.topics" = "false"

[registry]
url = "{registry}"

[pipeline]
inputs = [{inputs}]
create_topics = true

[processor]
rules = "{rules}"
watch_interval = "200ms"
retry_delays = [{delays}]

[telemetry]
listen = "127.0.0.1:{port}"
readiness_interval = "500ms"
"#,
        brokers = ep.brokers,
        registry = ep.registry,
        inputs = inputs.join(", "),
        rules = rules.display(),
        delays = delays.join(", "),
    )
}

impl RouterProc {
    async fn start(
        ep: &Endpoints,
        inputs: &[&str],
        group: &str,
        rules: &str,
        delays: &[&str],
    ) -> RouterProc {
        RouterProc::start_watching(ep, inputs, group, rules, delays, "200ms").await
    }

    async fn start_watching(
        ep: &Endpoints,
        inputs: &[&str],
        group: &str,
        rules: &str,
        delays: &[&str],
        watch: &str,
    ) -> RouterProc {
        let dir = tempfile::tempdir().unwrap();
        let rules_path = dir.path().join("rules.toml");
        std::fs::write(&rules_path, rules).unwrap();
        let port = free_port();
        let config = dir.path().join("router.toml");
        std::fs::write(
            &config,
            router_config(ep, inputs, group, &rules_path, delays, port).replace(
                "watch_interval = \"200ms\"",
                &format!("watch_interval = \"{watch}\""),
            ),
        )
        .unwrap();
        let child =
            ChildProcess::spawn(&bin("router"), &["--config", config.to_str().unwrap()], &[]);
        let telemetry = format!("127.0.0.1:{port}");
        let mut proc = RouterProc {
            child,
            rules: rules_path,
            telemetry,
            _dir: dir,
        };
        let addr = proc.telemetry.clone();
        eventually("the router to be ready", WAIT, || {
            let addr = addr.clone();
            async move { matches!(http_get(&addr, "/readyz").await, Some((200, _))).then_some(()) }
        })
        .await;
        assert!(proc.child.exited().is_none(), "{}", proc.child.log_text());
        proc
    }

    async fn metrics(&self) -> String {
        http_get(&self.telemetry, "/metrics").await.unwrap().1
    }

    async fn metric(&self, name: &str) -> f64 {
        metric_sum(&self.metrics().await, name)
    }

    async fn active_version(&self) -> String {
        let (_, body) = http_get(&self.telemetry, "/admin/rules").await.unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["version"].as_str().unwrap().to_string()
    }

    async fn wait_for_version(&self, version: &str) {
        eventually(&format!("rules version {version}"), WAIT, || async {
            (self.active_version().await == version).then_some(())
        })
        .await;
    }

    async fn stop(mut self) {
        self.child.signal("TERM");
        let status = self.child.wait(WAIT).await;
        assert!(status.success(), "{}", self.child.log_text());
    }
}

fn producer(ep: &Endpoints) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", &ep.brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .unwrap()
}

/// Produces raw payloads (legacy JSON/XML producers), awaiting every acknowledgement.
async fn produce_raw(ep: &Endpoints, topic: &str, records: &[(String, Vec<u8>)]) {
    let p = producer(ep);
    let mut pending = Vec::new();
    for (key, payload) in records {
        let headers = OwnedHeaders::new().insert(Header {
            key: "correlation-id",
            value: Some(format!("corr-{key}").as_bytes()),
        });
        let f = p
            .send_result(
                FutureRecord::to(topic)
                    .key(key.as_bytes())
                    .payload(payload.as_slice())
                    .headers(headers),
            )
            .map_err(|(e, _)| e)
            .unwrap();
        pending.push(f);
    }
    for f in pending {
        f.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
}

fn json_of(order: &OrderPlaced) -> Vec<u8> {
    let v = apache_avro::to_value(order.clone()).unwrap();
    serde_json::to_vec(&eip_schemas::convert::to_json(&v)).unwrap()
}

fn header<'a>(r: &'a ReadRecord, name: &str) -> Option<&'a str> {
    r.header(name)
}

async fn event_ids(ep: &Endpoints, topic: &str) -> Vec<String> {
    let codec = codec(ep);
    let records = read_all(ep, topic).await;
    decode_orders(&codec, &records)
        .await
        .into_iter()
        .map(|o| o.metadata.event_id)
        .collect()
}

/// Every router test starts here: the shared stack with the schemas registered, a source topic
/// named from `prefix` with `partitions` partitions, and a consumer group of its own.
async fn stage(prefix: &str, partitions: i32) -> (Endpoints, String, String) {
    let ep = endpoints();
    register(&ep).await;
    let source = unique(&format!("{prefix}-src"));
    create_topics(&ep, &[&source], partitions).await;
    (ep, source, unique("g"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unavailable_target_is_reached_through_the_retry_topics() {
    let (ep, source, group) = stage("rt", 3).await;
    let target = unique("rt-late");
    let rules = format!("[[rules]]\nname = \"all\"\nthen.to = [\"{target}\"]\n");
    let router =
        RouterProc::start(&ep, &[&source], &group, &rules, &["2s", "4s", "8s", "60s"]).await;

    produce(&ep, &source, 300, 0, 0, 0).await;
    // The target does not exist: deliveries fail and go to the first retry level.
    wait_for(&ep, &format!("{source}.retry.1"), 300, WAIT).await;
    let retry1 = read_all(&ep, &format!("{source}.retry.1")).await;
    assert!(
        retry1
            .iter()
            .all(|r| header(r, RETRY_TARGET) == Some(target.as_str())
                && header(r, RETRY_ATTEMPT) == Some("1")
                && header(r, "eip.retry.reason").is_some_and(|x| x.contains("nknown topic"))
                && header(r, "eip.retry.source").is_some_and(|x| x.starts_with(&source)))
    );
    // The topic appears; the retry levels deliver everything, exactly once.
    create_topics(&ep, &[&target], 2).await;
    wait_for(&ep, &target, 300, WAIT).await;
    eventually("the retry metrics", WAIT, || async {
        (router.metric("eip_router_retry_scheduled_total").await >= 300.0).then_some(())
    })
    .await;
    // Give stragglers a moment to show up as duplicates if there were any.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ids = event_ids(&ep, &target).await;
    assert_eq!(ids.len(), 300, "every record exactly once");
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 300);
    let delivered = read_all(&ep, &target).await;
    assert!(delivered.iter().all(|r| header(r, RETRY_TARGET).is_none()
        && header(r, RULES_VERSION).is_some_and(|v| v.starts_with("sha-"))));
    assert_eq!(read_all(&ep, &format!("{source}.dlq")).await.len(), 0);
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_that_run_out_end_in_the_dlq_with_the_target_named() {
    let (ep, source, group) = stage("rx", 2).await;
    let target = unique("rx-never");
    let rules = format!("[[rules]]\nname = \"all\"\nthen.to = [\"{target}\"]\n");
    let router = RouterProc::start(&ep, &[&source], &group, &rules, &["500ms", "1s"]).await;
    produce(&ep, &source, 20, 0, 0, 0).await;
    let dlq = format!("{source}.dlq");
    wait_for(&ep, &dlq, 20, WAIT).await;
    let dead = read_all(&ep, &dlq).await;
    assert_eq!(dead.len(), 20);
    for r in &dead {
        assert_eq!(header(r, "eip.dlq.target-topic"), Some(target.as_str()));
        assert_eq!(header(r, "eip.dlq.error-class"), Some("transient"));
        assert_eq!(header(r, "eip.dlq.source-topic"), Some(source.as_str()));
        assert!(
            header(r, "eip.dlq.reason")
                .unwrap()
                .contains("after 2 retry levels")
        );
        assert!(header(r, "eip.dlq.first-failure").is_some());
        assert!(header(r, RETRY_TARGET).is_none());
    }
    let offsets: HashSet<(String, String)> = dead
        .iter()
        .map(|r| {
            (
                header(r, "eip.dlq.source-partition").unwrap().to_string(),
                header(r, "eip.dlq.source-offset").unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        offsets.len(),
        20,
        "each dead letter names its own source record"
    );
    router.stop().await;
}

/// Runs `eipctl` with `args` and returns its stdout, asserting success.
fn eipctl(ep: &Endpoints, args: &[&str]) -> String {
    let out = std::process::Command::new(bin("eipctl"))
        .args(["--brokers", &ep.brokers, "--registry", &ep.registry])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "eipctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `eipctl dlq redrive ARGS --json`, parsed.
fn redrive(ep: &Endpoints, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["dlq", "redrive"];
    all.extend_from_slice(args);
    all.push("--json");
    let out = eipctl(ep, &all);
    serde_json::from_str(out.trim().lines().last().unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_is_dead_lettered_then_redriven_after_the_rule_is_fixed_and_the_loop_guard_holds() {
    let (ep, source, group) = stage("rp", 2).await;
    let legacy = unique("rp-json");
    let confirmed = unique("rp-confirmed");
    create_topics(&ep, &[&legacy, &confirmed], 2).await;
    // v1 maps orders to OrderConfirmed but forgets to drop the fields it does not have: poison.
    let broken = format!(
        r#"version = "v1"
[[sources]]
topic = "{legacy}"
format = "json"
type = "eip.orders.OrderPlaced"

[[rules]]
name = "confirm"
match.types = ["eip.orders.OrderPlaced"]
then.to = ["{confirmed}"]
then.map_to = "eip.orders.OrderConfirmed"
then.transform = [ {{ drop = "customer_id" }} ]
"#
    );
    let router = RouterProc::start(&ep, &[&source, &legacy], &group, &broken, &["1s"]).await;
    produce(&ep, &source, 30, 0, 0, 0).await;
    // Legacy JSON: 10 good, 2 with a wrong field type.
    let mut legacy_records: Vec<(String, Vec<u8>)> = (100..110)
        .map(|i| (format!("order-{i:08}"), json_of(&order_placed(i))))
        .collect();
    let mut bad: serde_json::Value = serde_json::from_slice(&json_of(&order_placed(200))).unwrap();
    bad["lines"][0]["quantity"] = serde_json::json!("three");
    legacy_records.push(("order-bad-1".into(), serde_json::to_vec(&bad).unwrap()));
    legacy_records.push(("order-bad-2".into(), b"{\"not\": \"an order\"".to_vec()));
    produce_raw(&ep, &legacy, &legacy_records).await;

    let dlq = format!("{source}.dlq");
    wait_for(&ep, &dlq, 30, WAIT).await;
    let dead = read_all(&ep, &dlq).await;
    assert_eq!(dead.len(), 30);
    assert!(dead.iter().all(|r| {
        let reason = header(r, "eip.dlq.reason").unwrap();
        reason.contains("eip.orders.OrderConfirmed") && reason.contains("field `")
    }));
    let legacy_dlq = format!("{legacy}.dlq");
    wait_for(&ep, &legacy_dlq, 12, WAIT).await;
    let legacy_dead = read_all(&ep, &legacy_dlq).await;
    assert_eq!(legacy_dead.len(), 12);
    let reasons: Vec<&str> = legacy_dead
        .iter()
        .map(|r| header(r, "eip.dlq.reason").unwrap())
        .collect();
    assert!(
        reasons.iter().any(
            |r| r.contains("lines[0].quantity") && r.contains("json to eip.orders.OrderPlaced")
        ),
        "{reasons:?}"
    );
    assert_eq!(
        reasons
            .iter()
            .filter(|r| r.contains("lines[0].quantity"))
            .count(),
        1
    );
    assert_eq!(read_all(&ep, &confirmed).await.len(), 0);

    // Fix the rule: drop every field OrderConfirmed does not have. The router reloads the file.
    let fixed = broken.replace("version = \"v1\"", "version = \"v2\"").replace(
        "then.transform = [ { drop = \"customer_id\" } ]",
        "then.transform = [ { drop = \"customer_id\" }, { drop = \"lines\" }, { drop = \"total_cents\" }, { drop = \"currency\" }, { drop = \"shipping_address\" } ]",
    );
    std::fs::write(&router.rules, fixed).unwrap();
    router.wait_for_version("v2").await;

    // Redrive the Avro ones back to their source; they are confirmed now.
    let report = redrive(&ep, &["--topic", &dlq]);
    assert_eq!(report["moved"][&source], 30, "{report}");
    wait_for(&ep, &confirmed, 30, WAIT).await;
    let codec = codec(&ep);
    let out = read_all(&ep, &confirmed).await;
    assert_eq!(out.len(), 30);
    for r in &out {
        let decoded = codec.decode_value(r.payload.as_deref()).await.unwrap();
        assert_eq!(decoded.writer.full_name, "eip.orders.OrderConfirmed");
        assert_eq!(header(r, "eip.redrive.count"), Some("1"));
        assert_eq!(header(r, RULES_VERSION), Some("v2"));
    }
    // Idempotent: redriving again moves nothing.
    let again = redrive(&ep, &["--topic", &dlq]);
    assert_eq!(
        again["moved"].as_object().map_or(0, |m| m.len()),
        0,
        "{again}"
    );
    assert_eq!(again["already_redriven"].as_array().unwrap().len(), 30);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(read_all(&ep, &confirmed).await.len(), 30);

    // The loop guard: legacy records that are still poison come back to the DLQ with their
    // redrive count; past the limit they are refused.
    let redrive_legacy = || {
        let args = ["--topic", &legacy_dlq, "--reason", "quantity"];
        redrive(&ep, &[&args[..], &["--max-redrives", "1"]].concat())
    };
    let first = redrive_legacy();
    assert_eq!(first["moved"][&legacy], 1, "{first}");
    wait_for(&ep, &legacy_dlq, 13, WAIT).await;
    let back = read_all(&ep, &legacy_dlq).await;
    let returned: Vec<_> = back
        .iter()
        .filter(|r| header(r, "eip.redrive.count").is_some())
        .collect();
    assert_eq!(returned.len(), 1);
    assert_eq!(header(returned[0], "eip.redrive.count"), Some("1"));
    let guarded = redrive_legacy();
    assert_eq!(guarded["refused"].as_array().unwrap().len(), 1, "{guarded}");
    assert_eq!(guarded["already_redriven"].as_array().unwrap().len(), 1);
    assert_eq!(guarded["moved"].as_object().map_or(0, |m| m.len()), 0);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        read_all(&ep, &legacy_dlq).await.len(),
        13,
        "the refused record did not loop again"
    );
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_by_file_sighup_and_http_swap_valid_rules_and_keep_the_old_on_errors() {
    let (ep, source, group) = stage("rr", 2).await;
    let a = unique("rr-a");
    let b = unique("rr-b");
    create_topics(&ep, &[&a, &b], 2).await;
    let rules_to = |version: &str, topic: &str| {
        format!("version = \"{version}\"\n[[rules]]\nname = \"r\"\nthen.to = [\"{topic}\"]\n")
    };
    // File watching off: only HTTP and SIGHUP reload here (file changes: the other tests).
    let router =
        RouterProc::start_watching(&ep, &[&source], &group, &rules_to("one", &a), &["1s"], "0s")
            .await;
    assert!(
        router
            .metrics()
            .await
            .contains("eip_router_rules_version_info{version=\"one\"} 1")
    );
    let client = reqwest::Client::new();
    let reload = || async {
        let resp = client
            .post(format!("http://{}/admin/reload", router.telemetry))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body: serde_json::Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
        (status, body)
    };

    // An invalid file keeps the old rules, is answered with its location, logged and counted.
    std::fs::write(
        &router.rules,
        "[[rules]]\nname = \"r\"\nthen.to = [\"x\"]\nthen.nope = 1\n",
    )
    .unwrap();
    let (status, body) = reload().await;
    assert_eq!(status, 422);
    assert!(
        body["error"].as_str().unwrap().contains("rules.toml:4:6"),
        "{body}"
    );
    assert_eq!(body["active_version"], "one");
    assert_eq!(router.active_version().await, "one");
    assert!(
        router
            .metrics()
            .await
            .contains("eip_router_rules_reloads_total{result=\"error\"} 1")
    );
    eventually("the rejection in the log", WAIT, || async {
        let log = router.child.log_text();
        (log.contains("rules reload rejected") && log.contains("rules.toml:4:6")).then_some(())
    })
    .await;

    // A valid file is not picked up by itself (watching is off); the HTTP reload takes it.
    std::fs::write(&router.rules, rules_to("two", &b)).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(router.active_version().await, "one");
    let (status, body) = reload().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], "two");
    assert_eq!(router.active_version().await, "two");
    produce(&ep, &source, 10, 0, 0, 0).await;
    wait_for(&ep, &b, 10, WAIT).await;
    assert!(
        read_all(&ep, &b)
            .await
            .iter()
            .all(|r| header(r, RULES_VERSION) == Some("two"))
    );

    // SIGHUP reloads the file.
    std::fs::write(&router.rules, rules_to("three", &a)).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(router.active_version().await, "two");
    router.child.signal("HUP");
    router.wait_for_version("three").await;
    eventually("the SIGHUP reload in the log", WAIT, || async {
        router.child.log_text().contains("SIGHUP").then_some(())
    })
    .await;
    produce(&ep, &source, 10, 10, 0, 0).await;
    wait_for(&ep, &a, 10, WAIT).await;
    assert!(
        read_all(&ep, &a)
            .await
            .iter()
            .all(|r| header(r, RULES_VERSION) == Some("three"))
    );
    assert!(
        router
            .metrics()
            .await
            .contains("eip_router_rules_version_info{version=\"three\"} 1")
    );
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_rules_file_at_startup_is_one_line_naming_the_location_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    std::fs::write(&rules, "\n[[rules]]\nname = \"a\"\nmatch.when = { field = \"x\", regex = \"(\" }\nthen.to = [\"t\"]\n").unwrap();
    let out = std::process::Command::new(bin("router"))
        .env("EIP__PROCESSOR__RULES", &rules)
        .env("EIP__PIPELINE__INPUTS", "[\"in\"]")
        .arg("--check-config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("processor.rules") && err.contains("rules.toml:2:1") && err.contains("regex"),
        "{err}"
    );
}

/// One input of the mixed run and where it must land.
struct Sent {
    event_id: String,
    kind: &'static str,
    total_cents: i64,
    country: String,
    test: bool,
}

/// Which topics a record lands in under rules `version` (the rules of the mixed run, written
/// out by hand so the test does not use the router's own evaluator).
fn expected_topics(version: &str, s: &Sent, t: &BTreeMap<&str, String>) -> Vec<String> {
    if s.test {
        return Vec::new();
    }
    if s.kind == "payment" {
        return vec![t["payments"].clone()];
    }
    if s.total_cents >= 20_000 {
        return vec![t["large"].clone(), t["audit"].clone()];
    }
    if version == "v2" && s.country == "US" {
        return vec![t["us"].clone()];
    }
    vec![t["standard"].clone()]
}

fn mixed_rules(version: &str, json: &str, xml: &str, t: &BTreeMap<&str, String>) -> String {
    let us = if version == "v2" {
        format!(
            "[[rules]]\nname = \"us\"\nmatch.types = [\"eip.orders.OrderPlaced\"]\nmatch.when = {{ field = \"shipping_address.country\", eq = \"US\" }}\nthen.to = [\"{}\"]\n",
            t["us"]
        )
    } else {
        String::new()
    };
    format!(
        r#"version = "{version}"
mode = "first-match"
[[sources]]
topic = "{json}"
format = "json"
type = "eip.orders.OrderPlaced"
[[sources]]
topic = "{xml}"
format = "xml"
type = "eip.orders.OrderPlaced"
[[rules]]
name = "test-traffic"
match.headers = {{ test = "true" }}
then.drop = "test traffic"
[[rules]]
name = "payments"
match.types = ["eip.payments.PaymentAuthorized"]
then.to = ["{payments}"]
[[rules]]
name = "large"
match.types = ["eip.orders.OrderPlaced"]
match.when = {{ field = "total_cents", gte = 20000 }}
then.to = ["{large}", "{audit}"]
{us}
[default]
to = ["{standard}"]
"#,
        payments = t["payments"],
        large = t["large"],
        audit = t["audit"],
        standard = t["standard"],
    )
}

fn payment(i: u64) -> eip_schemas::types::PaymentAuthorized {
    let order = format!("order-{i:08}");
    let mut metadata = eip_schemas::types::samples::event_metadata(&order, 2, i);
    metadata.event_id = format!("pay-{i}");
    eip_schemas::types::PaymentAuthorized {
        metadata,
        order_id: order,
        amount_cents: 1_000 + i as i64,
        currency: "EUR".into(),
        authorization_code: format!("auth-{i}"),
        order: None,
    }
}

fn sent_order(o: &OrderPlaced, test: bool) -> Sent {
    Sent {
        event_id: o.metadata.event_id.clone(),
        kind: "order",
        total_cents: o.total_cents,
        country: o.shipping_address.country.clone(),
        test,
    }
}

fn field<'v>(v: &'v apache_avro::types::Value, name: &str) -> &'v apache_avro::types::Value {
    let apache_avro::types::Value::Record(fields) = v else {
        panic!("not a record: {v:?}")
    };
    &fields.iter().find(|(k, _)| k == name).unwrap().1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_mixed_records_through_gateway_and_router_land_exactly_with_a_reload_midway()
 {
    use apache_avro::types::Value;
    let ep = endpoints();
    register(&ep).await;
    let source = unique("mx-src");
    let json = unique("mx-json");
    let xml = unique("mx-xml");
    let mut t: BTreeMap<&str, String> = BTreeMap::new();
    for name in ["payments", "large", "audit", "us", "standard"] {
        t.insert(name, unique(&format!("mx-{name}")));
    }
    let mut topics: Vec<&str> = vec![&source, &json, &xml];
    topics.extend(t.values().map(String::as_str));
    create_topics(&ep, &topics, 3).await;
    let router = RouterProc::start(
        &ep,
        &[&source, &json, &xml],
        &unique("g"),
        &mixed_rules("v1", &json, &xml, &t),
        &["1s", "5s"],
    )
    .await;

    // The gateway, in process, routing both types to the Avro source topic.
    let mut gw = eip_gateway::GatewayConfig::default();
    gw.kafka.brokers = ep.brokers.clone();
    gw.registry.url = ep.registry.clone();
    gw.gateway.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    gw.gateway.max_in_flight = 256;
    for ty in ["eip.orders.OrderPlaced", "eip.payments.PaymentAuthorized"] {
        gw.gateway.routes.insert(ty.into(), source.clone());
    }
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (addr, gw_task) = eip_gateway::serve(gw, async {
        let _ = stop_rx.await;
    })
    .await
    .unwrap();

    let catalog = eip_schemas::Catalog::global().unwrap();
    let mut sent: Vec<Sent> = Vec::new();
    let mut bodies: Vec<(String, &'static str, Vec<u8>)> = Vec::new();
    for i in 0..16_000u64 {
        let (ty, value, s) = if i % 4 == 3 {
            let p = payment(i);
            let s = Sent {
                event_id: p.metadata.event_id.clone(),
                kind: "payment",
                total_cents: 0,
                country: String::new(),
                test: false,
            };
            (
                "eip.payments.PaymentAuthorized",
                apache_avro::to_value(p).unwrap(),
                s,
            )
        } else {
            let o = order_placed(i);
            let s = sent_order(&o, false);
            (
                "eip.orders.OrderPlaced",
                apache_avro::to_value(o).unwrap(),
                s,
            )
        };
        let schema = &catalog.get(ty).unwrap().schema;
        let value = value.resolve(schema).unwrap();
        let (ct, body) = match i % 3 {
            0 => (
                "application/json",
                serde_json::to_vec(&eip_schemas::convert::to_json(&value)).unwrap(),
            ),
            1 => (
                "application/xml",
                eip_schemas::convert::to_xml(ty.rsplit('.').next().unwrap(), &value).into_bytes(),
            ),
            _ => (
                "application/vnd.apache.avro",
                // The raw datum: a framed encoding without its 5-byte frame header.
                eip_schemas::codec::encode_value(0, schema, &value).unwrap()[5..].to_vec(),
            ),
        };
        bodies.push((format!("http://{addr}/v1/records/{ty}"), ct, body));
        sent.push(s);
    }
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let post_all = |batch: Vec<(String, &'static str, Vec<u8>)>| {
        let client = client.clone();
        async move {
            let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(32));
            let mut tasks = tokio::task::JoinSet::new();
            for (url, ct, body) in batch {
                let permit = limit.clone().acquire_owned().await.unwrap();
                let client = client.clone();
                tasks.spawn(async move {
                    let resp = client
                        .post(url)
                        .header("content-type", ct)
                        .body(body)
                        .send()
                        .await
                        .unwrap();
                    drop(permit);
                    let status = resp.status().as_u16();
                    (status, resp.text().await.unwrap_or_default())
                });
            }
            while let Some(r) = tasks.join_next().await {
                let (status, body) = r.unwrap();
                assert_eq!(status, 202, "{body}");
            }
        }
    };
    let second = bodies.split_off(8_000);
    post_all(bodies).await;

    // Legacy producers: 2,000 JSON and 2,000 XML orders, every tenth marked as test traffic.
    let mut legacy_json = Vec::new();
    let mut legacy_xml = Vec::new();
    let mut test_flags = Vec::new();
    for i in 0..2_000u64 {
        for (base, out) in [(100_000u64, &mut legacy_json), (200_000, &mut legacy_xml)] {
            let o = order_placed(base + i);
            let v = apache_avro::to_value(o.clone()).unwrap();
            let payload = if base == 100_000 {
                serde_json::to_vec(&eip_schemas::convert::to_json(&v)).unwrap()
            } else {
                eip_schemas::convert::to_xml("OrderPlaced", &v).into_bytes()
            };
            let test = i % 10 == 0;
            test_flags.push((o.metadata.aggregate_id.clone(), test));
            out.push((o.metadata.aggregate_id.clone(), payload));
            sent.push(sent_order(&o, test));
        }
    }
    let tests: HashSet<String> = test_flags
        .iter()
        .filter(|(_, t)| *t)
        .map(|(k, _)| k.clone())
        .collect();
    produce_legacy(&ep, &json, &legacy_json, &tests).await;

    // Reload to v2 while the second half and the XML records flow.
    let reload = async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        std::fs::write(&router.rules, mixed_rules("v2", &json, &xml, &t)).unwrap();
        router.wait_for_version("v2").await;
    };
    tokio::join!(
        post_all(second),
        produce_legacy(&ep, &xml, &legacy_xml, &tests),
        reload
    );
    assert_eq!(sent.len(), 20_000);

    // Wait until the router has consumed all 20,000 and holds nothing in flight.
    eventually("the router to route all 20,000", WAIT, || async {
        let m = router.metrics().await;
        (metric_sum(&m, "eip_records_consumed_total") >= 20_000.0
            && metric_sum(&m, "eip_records_in_flight") == 0.0)
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let codec = codec(&ep);
    let mut landed: HashMap<String, Vec<(String, String)>> = HashMap::new();
    let mut per_topic: BTreeMap<String, usize> = BTreeMap::new();
    for topic in t.values() {
        let records = read_all(&ep, topic).await;
        per_topic.insert(topic.clone(), records.len());
        for r in &records {
            let decoded = codec.decode_value(r.payload.as_deref()).await.unwrap();
            let Value::String(id) = field(field(&decoded.value, "metadata"), "event_id") else {
                panic!("no event id")
            };
            let version = header(r, RULES_VERSION).unwrap().to_string();
            assert!(header(r, "correlation-id").is_some());
            assert!(header(r, "traceparent").is_some());
            landed
                .entry(id.clone())
                .or_default()
                .push((topic.clone(), version));
        }
    }
    let mut expected_per_topic: BTreeMap<String, usize> =
        t.values().map(|topic| (topic.clone(), 0)).collect();
    let mut versions_seen = HashSet::new();
    for s in &sent {
        let outs = landed.remove(&s.event_id).unwrap_or_default();
        let version = outs.first().map_or("v1".to_string(), |(_, v)| v.clone());
        assert!(
            outs.iter().all(|(_, v)| *v == version),
            "{}: {outs:?}",
            s.event_id
        );
        versions_seen.insert(version.clone());
        let mut got: Vec<String> = outs.iter().map(|(topic, _)| topic.clone()).collect();
        got.sort();
        let mut want = expected_topics(&version, s, &t);
        want.sort();
        assert_eq!(got, want, "record {} under rules {version}", s.event_id);
        for topic in want {
            *expected_per_topic.get_mut(&topic).unwrap() += 1;
        }
    }
    assert!(
        landed.is_empty(),
        "records nobody sent: {:?}",
        landed.keys().take(5).collect::<Vec<_>>()
    );
    assert_eq!(per_topic, expected_per_topic, "counts per topic are exact");
    assert!(
        versions_seen.contains("v1") && versions_seen.contains("v2"),
        "the reload happened mid-run: {versions_seen:?}"
    );
    let m = router.metrics().await;
    assert_eq!(metric_sum(&m, "eip_router_dropped_total"), 400.0);
    for dlq in [&source, &json, &xml] {
        assert_eq!(read_all(&ep, &format!("{dlq}.dlq")).await.len(), 0);
    }
    let _ = stop_tx.send(());
    gw_task.await.unwrap().unwrap();
    router.stop().await;
}

/// Produces legacy records, marking those whose key is in `tests` with `test: true`.
async fn produce_legacy(
    ep: &Endpoints,
    topic: &str,
    records: &[(String, Vec<u8>)],
    tests: &HashSet<String>,
) {
    let p = producer(ep);
    let mut pending = Vec::new();
    for (key, payload) in records {
        let mut headers = OwnedHeaders::new().insert(Header {
            key: "correlation-id",
            value: Some(format!("corr-{key}").as_bytes()),
        });
        if tests.contains(key) {
            headers = headers.insert(Header {
                key: "test",
                value: Some("true".as_bytes()),
            });
        }
        pending.push(
            p.send_result(
                FutureRecord::to(topic)
                    .key(key.as_bytes())
                    .payload(payload.as_slice())
                    .headers(headers),
            )
            .map_err(|(e, _)| e)
            .unwrap(),
        );
    }
    for f in pending {
        f.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
}
