//! `eipctl dlq` against the shared local stack: list with every filter, show with the payload
//! decoded through the registry, redrive (dry run, idempotence through the ledger, `--to`, the
//! loop guard), and the real binary with `--json` and bad arguments.
//!
//! Dead letters are built with `eip_runtime::dlq::headers` (the headers the runtime writes) and
//! produced with rdkafka to a fresh `<prefix>.dlq` topic.
//!
//! One subject, `eipctl dlq`, kept in one file past ~800 lines: the tests share the
//! dead-letter builders and the CLI runner defined here.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use eip_runtime::dlq;
use eip_runtime::processor::{Headers, Position, Record};
use eip_runtime::trace::{CORRELATION_ID, TRACEPARENT, TraceContext};
use eip_schemas::ErrorClass;
use eip_schemas::types::OrderPlaced;
use eip_schemas::types::samples::order_placed;
use eip_tests::*;
use eipctl::dlq::{
    DlqPosition, Filter, REDRIVE_AT, REDRIVE_COUNT, REDRIVE_FROM, RedriveOptions, RedriveReport,
    Refused, Regex, Shown, TARGET_TOPIC,
};
use eipctl::{OpsError, PoisonKind};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// What a payload of a dead letter is.
#[derive(Debug, Clone, Copy)]
enum Body {
    /// A valid Confluent-framed `OrderPlaced` (sample `seq`).
    Order(u64),
    /// JSON text where Avro belongs.
    Json,
    /// Bytes that are neither framed nor UTF-8.
    Binary,
    /// A frame naming a schema id the registry doesn't have.
    UnknownSchema,
}

/// One dead letter of the fixture.
struct Spec {
    source: Source,
    class: ErrorClass,
    reason: &'static str,
    /// Minutes before now of `eip.dlq.first-failure`; `None` removes the header and sets the
    /// record timestamp to `timestamp_ago` instead.
    failed_ago_min: Option<i64>,
    timestamp_ago_min: Option<i64>,
    body: Body,
    extra: &'static [(&'static str, &'static str)],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Orders,
    Payments,
}

fn specs() -> Vec<Spec> {
    vec![
        // 0
        Spec {
            source: Source::Orders,
            class: ErrorClass::Poison,
            reason: "avro decode with schema id 9: unexpected end of input",
            failed_ago_min: Some(180),
            timestamp_ago_min: None,
            body: Body::Order(1),
            extra: &[],
        },
        // 1
        Spec {
            source: Source::Orders,
            class: ErrorClass::Poison,
            reason: "payload starts with byte 0x7b: not the Confluent magic byte",
            failed_ago_min: Some(30),
            timestamp_ago_min: None,
            body: Body::Json,
            extra: &[],
        },
        // 2
        Spec {
            source: Source::Payments,
            class: ErrorClass::Transient,
            reason: "registry unreachable: timed out after 5s",
            failed_ago_min: Some(10),
            timestamp_ago_min: None,
            body: Body::Order(2),
            extra: &[],
        },
        // 3
        Spec {
            source: Source::Payments,
            class: ErrorClass::Poison,
            reason: "payload starts with byte 0xff: not the Confluent magic byte",
            failed_ago_min: Some(300),
            timestamp_ago_min: None,
            body: Body::Binary,
            extra: &[],
        },
        // 4: the router's extra header
        Spec {
            source: Source::Orders,
            class: ErrorClass::Fatal,
            reason: "producer fenced",
            failed_ago_min: Some(1),
            timestamp_ago_min: None,
            body: Body::Order(4),
            extra: &[(TARGET_TOPIC, "orders-routed")],
        },
        // 5: already redriven three times
        Spec {
            source: Source::Orders,
            class: ErrorClass::Poison,
            reason: "rule failed: total_cents must be positive",
            failed_ago_min: Some(120),
            timestamp_ago_min: None,
            body: Body::Order(5),
            extra: &[(REDRIVE_COUNT, "3")],
        },
        // 6: no first-failure header; its record timestamp counts
        Spec {
            source: Source::Payments,
            class: ErrorClass::Poison,
            reason: "rule failed: currency XXX is not ISO 4217",
            failed_ago_min: None,
            timestamp_ago_min: Some(360),
            body: Body::UnknownSchema,
            extra: &[],
        },
    ]
}

/// A dead letter as produced.
#[derive(Debug, Clone)]
struct Letter {
    pos: DlqPosition,
    source: String,
    key: Bytes,
    payload: Bytes,
    traceparent: String,
    correlation_id: String,
}

struct Fixture {
    ep: Endpoints,
    dlq: String,
    orders: String,
    payments: String,
    elsewhere: String,
    letters: Vec<Letter>,
    now: OffsetDateTime,
}

impl Fixture {
    fn pos(&self, i: usize) -> DlqPosition {
        self.letters[i].pos
    }

    fn positions(&self, idx: &[usize]) -> BTreeSet<DlqPosition> {
        idx.iter().map(|i| self.pos(*i)).collect()
    }

    /// The letter at `pos`, by index.
    fn index_of(&self, pos: DlqPosition) -> usize {
        self.letters.iter().position(|l| l.pos == pos).unwrap()
    }

    fn redrive_from(&self, i: usize) -> String {
        let p = self.pos(i);
        format!("{}/{}/{}", self.dlq, p.partition, p.offset)
    }
}

fn to_kafka(h: &Headers) -> OwnedHeaders {
    h.iter().fold(OwnedHeaders::new(), |acc, (k, v)| {
        acc.insert(Header { key: k, value: v })
    })
}

/// Registers the schemas, creates fresh topics and produces the dead letters of [`specs`], the
/// i-th to DLQ partition i % 2.
async fn fixture(prefix: &str) -> Fixture {
    let ep = endpoints();
    register(&ep).await;
    let base = unique(prefix);
    let f = Fixture {
        dlq: format!("{base}.dlq"),
        orders: format!("{base}-orders"),
        payments: format!("{base}-payments"),
        elsewhere: format!("{base}-elsewhere"),
        letters: Vec::new(),
        now: OffsetDateTime::now_utc(),
        ep,
    };
    create_topics(&f.ep, &[&f.dlq], 2).await;
    create_topics(&f.ep, &[&f.orders, &f.payments], 3).await;
    create_topics(&f.ep, &[&f.elsewhere], 1).await;
    let letters = produce_letters(&f, f.now).await;
    Fixture { letters, ..f }
}

/// Produces the dead letters of [`specs`] to `f.dlq` as failed `now`, the i-th to DLQ
/// partition i % 2.
async fn produce_letters(f: &Fixture, now: OffsetDateTime) -> Vec<Letter> {
    let codec = codec(&f.ep);
    let producer: FutureProducer = eip_runtime::kafka::producer_config(&f.ep.kafka())
        .create()
        .unwrap();
    let mut letters = Vec::new();
    for (i, s) in specs().into_iter().enumerate() {
        let order = order_placed(i as u64);
        let key = Bytes::from(order.metadata.aggregate_id.clone());
        let good = codec.encode(&order).await.unwrap();
        let payload = Bytes::from(match s.body {
            Body::Order(seq) => codec.encode(&order_placed(seq)).await.unwrap(),
            Body::Json => PoisonKind::NotFramed.payload(&good),
            Body::Binary => vec![0xff, 0xfe, 0x00, 0x01, 0x80, 0x7f],
            Body::UnknownSchema => PoisonKind::UnknownSchema.payload(&good),
        });
        let source = match s.source {
            Source::Orders => f.orders.clone(),
            Source::Payments => f.payments.clone(),
        };
        let traceparent = TraceContext::new_root().to_header();
        let correlation_id = format!("corr-{i}");
        let mut original = Headers::new();
        original.push(TRACEPARENT, traceparent.clone());
        original.push(CORRELATION_ID, correlation_id.clone());
        for (k, v) in s.extra.iter().filter(|(k, _)| !k.starts_with("eip.dlq.")) {
            original.push(*k, *v);
        }
        let record = Record {
            position: Position {
                topic: Arc::from(source.as_str()),
                partition: (i % 3) as i32,
                offset: 100 + i as i64,
                timestamp_ms: None,
            },
            key: Some(key.clone()),
            payload: Some(payload.clone()),
            headers: original,
        };
        let first = now - time::Duration::minutes(s.failed_ago_min.unwrap_or(0));
        let mut h = dlq::headers(
            &record,
            &dlq::Failure {
                class: s.class,
                reason: s.reason,
                processor: "router",
                attempts: if s.class == ErrorClass::Transient {
                    5
                } else {
                    1
                },
                first_failure: first,
            },
        );
        if s.failed_ago_min.is_none() {
            h.remove(dlq::FIRST_FAILURE);
        }
        for (k, v) in s.extra.iter().filter(|(k, _)| k.starts_with("eip.dlq.")) {
            h.push(*k, *v);
        }
        let mut out = FutureRecord::to(&f.dlq)
            .partition((i % 2) as i32)
            .key(key.as_ref())
            .payload(payload.as_ref())
            .headers(to_kafka(&h));
        if let Some(ago) = s.timestamp_ago_min {
            let ts = now - time::Duration::minutes(ago);
            out = out.timestamp((ts.unix_timestamp_nanos() / 1_000_000) as i64);
        }
        let delivered = producer
            .send(out, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| e)
            .unwrap();
        letters.push(Letter {
            pos: DlqPosition {
                partition: delivered.partition,
                offset: delivered.offset,
            },
            source,
            key,
            payload,
            traceparent,
            correlation_id,
        });
    }
    letters
}

fn at(f: &Fixture, t: &str) -> OffsetDateTime {
    eipctl::dlq::parse_time(t, f.now).unwrap()
}

async fn listed(f: &Fixture, filter: Filter) -> BTreeSet<DlqPosition> {
    let l = eipctl::dlq::list(&f.ep, &f.dlq, &filter, usize::MAX)
        .await
        .unwrap();
    assert_eq!(l.scanned, f.letters.len());
    l.entries.iter().map(|e| e.position()).collect()
}

fn header<'a>(r: &'a ReadRecord, name: &str) -> Vec<&'a str> {
    r.headers
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| std::str::from_utf8(v.as_deref().unwrap()).unwrap())
        .collect()
}

/// Checks that `out` is letter `i` redriven for the `count`-th time.
fn assert_redriven(f: &Fixture, out: &ReadRecord, i: usize, count: u32) {
    let l = &f.letters[i];
    assert_eq!(out.key.as_ref(), Some(&l.key), "letter {i}: key");
    assert_eq!(
        out.payload.as_ref(),
        Some(&l.payload),
        "letter {i}: payload"
    );
    assert_eq!(header(out, REDRIVE_COUNT), vec![count.to_string()]);
    assert_eq!(header(out, REDRIVE_FROM), vec![f.redrive_from(i)]);
    let when = header(out, REDRIVE_AT);
    assert_eq!(when.len(), 1);
    let when = OffsetDateTime::parse(when[0], &Rfc3339).unwrap();
    assert!(when >= f.now && when <= OffsetDateTime::now_utc(), "{when}");
    assert!(
        out.headers.iter().all(|(k, _)| !k.starts_with("eip.dlq.")),
        "letter {i} keeps no dead-letter header: {:?}",
        out.headers
    );
    assert_eq!(out.header(TRACEPARENT), Some(l.traceparent.as_str()));
    assert_eq!(out.header(CORRELATION_ID), Some(l.correlation_id.as_str()));
}

/// Letters in `topic`, by the DLQ index their `eip.redrive.from` names.
async fn arrived(f: &Fixture, topic: &str) -> BTreeMap<usize, ReadRecord> {
    let mut out = BTreeMap::new();
    for r in read_all(&f.ep, topic).await {
        let from = header(&r, REDRIVE_FROM)[0].to_string();
        let (_, pos) = from.split_at(f.dlq.len() + 1);
        let (p, o) = pos.split_once('/').unwrap();
        let i = f.index_of(DlqPosition {
            partition: p.parse().unwrap(),
            offset: o.parse().unwrap(),
        });
        assert!(
            out.insert(i, r).is_none(),
            "letter {i} arrived twice in {topic}"
        );
    }
    out
}

fn moved(report: &RedriveReport) -> BTreeSet<DlqPosition> {
    report
        .moved_records
        .iter()
        .map(|m| DlqPosition {
            partition: m.partition,
            offset: m.offset,
        })
        .collect()
}

fn keys<K: Ord + Clone>(m: &BTreeMap<K, ReadRecord>) -> Vec<K> {
    m.keys().cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_filters_select_exactly_the_matching_records() {
    let f = fixture("dlqlist").await;

    let all = eipctl::dlq::list(&f.ep, &f.dlq, &Filter::default(), usize::MAX)
        .await
        .unwrap();
    assert_eq!(
        all.entries
            .iter()
            .map(|e| e.position())
            .collect::<BTreeSet<_>>(),
        f.positions(&[0, 1, 2, 3, 4, 5, 6])
    );
    assert_eq!(
        all.by_class,
        BTreeMap::from([
            ("fatal".to_string(), 1),
            ("poison".to_string(), 5),
            ("transient".to_string(), 1)
        ])
    );
    // The entry carries what the runtime wrote.
    let by_pos: HashMap<DlqPosition, &eipctl::dlq::Entry> =
        all.entries.iter().map(|e| (e.position(), e)).collect();
    let e0 = by_pos[&f.pos(0)];
    assert_eq!(e0.source_topic.as_deref(), Some(f.orders.as_str()));
    assert_eq!(
        (e0.source_partition, e0.source_offset),
        (Some(0), Some(100))
    );
    assert_eq!(e0.class.as_deref(), Some("poison"));
    assert_eq!(e0.attempts, Some(1));
    assert_eq!(e0.redrive_count, Some(0));
    assert_eq!(e0.processor.as_deref(), Some("router"));
    assert_eq!(e0.reason.as_deref(), Some(specs()[0].reason));
    let failed = OffsetDateTime::parse(e0.first_failure.as_deref().unwrap(), &Rfc3339).unwrap();
    assert_eq!(failed, f.now - time::Duration::minutes(180));
    assert_eq!(by_pos[&f.pos(2)].attempts, Some(5));
    assert_eq!(by_pos[&f.pos(5)].redrive_count, Some(3));
    // Headers the runtime doesn't name are shown generically.
    assert_eq!(
        by_pos[&f.pos(4)].other,
        BTreeMap::from([(TARGET_TOPIC.to_string(), "orders-routed".to_string())])
    );
    assert!(
        by_pos[&f.pos(4)]
            .line()
            .contains("target-topic=orders-routed")
    );
    assert!(by_pos[&f.pos(0)].other.is_empty());

    let re = |s: &str| Some(Regex::new(s).unwrap());
    let cases: Vec<(&str, Filter, Vec<usize>)> = vec![
        (
            "reason magic byte",
            Filter {
                reason: re("magic byte"),
                ..Filter::default()
            },
            vec![1, 3],
        ),
        (
            "reason ^rule failed",
            Filter {
                reason: re("^rule failed"),
                ..Filter::default()
            },
            vec![5, 6],
        ),
        (
            "source payments",
            Filter {
                source_topic: Some(f.payments.clone()),
                ..Filter::default()
            },
            vec![2, 3, 6],
        ),
        (
            "class poison",
            Filter {
                class: Some(ErrorClass::Poison),
                ..Filter::default()
            },
            vec![0, 1, 3, 5, 6],
        ),
        (
            "class transient",
            Filter {
                class: Some(ErrorClass::Transient),
                ..Filter::default()
            },
            vec![2],
        ),
        (
            "class fatal",
            Filter {
                class: Some(ErrorClass::Fatal),
                ..Filter::default()
            },
            vec![4],
        ),
        (
            "since 1h",
            Filter {
                since: Some(at(&f, "1h")),
                ..Filter::default()
            },
            vec![1, 2, 4],
        ),
        (
            // 6 has no first-failure header: its record timestamp, 6 h ago, counts.
            "until 1h",
            Filter {
                until: Some(at(&f, "1h")),
                ..Filter::default()
            },
            vec![0, 3, 5, 6],
        ),
        (
            "since RFC 3339 4h ago, until 20m",
            Filter {
                since: Some(at(
                    &f,
                    &(f.now - time::Duration::hours(4)).format(&Rfc3339).unwrap(),
                )),
                until: Some(at(&f, "20m")),
                ..Filter::default()
            },
            vec![0, 1, 5],
        ),
        (
            "orders, poison, magic|decode, since 4h",
            Filter {
                reason: re("magic|decode"),
                source_topic: Some(f.orders.clone()),
                class: Some(ErrorClass::Poison),
                since: Some(at(&f, "4h")),
                until: None,
            },
            vec![0, 1],
        ),
        (
            "nothing",
            Filter {
                source_topic: Some("no-such-source".into()),
                ..Filter::default()
            },
            vec![],
        ),
    ];
    for (name, filter, want) in cases {
        assert_eq!(
            listed(&f, filter).await,
            f.positions(&want),
            "filter {name}"
        );
    }

    let backwards = Filter {
        since: Some(at(&f, "1h")),
        until: Some(at(&f, "2h")),
        ..Filter::default()
    };
    let err = eipctl::dlq::list(&f.ep, &f.dlq, &backwards, usize::MAX)
        .await
        .unwrap_err();
    assert!(matches!(err, OpsError::Invalid { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_returns_every_header_and_the_decoded_payload() {
    let f = fixture("dlqshow").await;

    let r = eipctl::dlq::show(&f.ep, &f.dlq, f.pos(0).partition, f.pos(0).offset)
        .await
        .unwrap();
    assert_eq!(
        (r.partition, r.offset),
        (f.pos(0).partition, f.pos(0).offset)
    );
    let hs: HashMap<&str, &str> = r
        .headers
        .iter()
        .map(|h| (h.name.as_str(), h.value.as_deref().unwrap()))
        .collect();
    assert_eq!(hs[dlq::ERROR_CLASS], "poison");
    assert_eq!(hs[dlq::REASON], specs()[0].reason);
    assert_eq!(hs[dlq::SOURCE_TOPIC], f.orders);
    assert_eq!(hs[dlq::SOURCE_PARTITION], "0");
    assert_eq!(hs[dlq::SOURCE_OFFSET], "100");
    assert_eq!(hs[dlq::ATTEMPTS], "1");
    assert_eq!(hs[dlq::PROCESSOR], "router");
    assert_eq!(
        OffsetDateTime::parse(hs[dlq::FIRST_FAILURE], &Rfc3339).unwrap(),
        f.now - time::Duration::minutes(180)
    );
    assert_eq!(hs[TRACEPARENT], f.letters[0].traceparent);
    assert_eq!(hs[CORRELATION_ID], "corr-0");
    assert_eq!(r.headers.len(), 10, "{:?}", r.headers);
    assert_eq!(
        r.key,
        Some(Shown::Text {
            text: order_placed(0).metadata.aggregate_id,
            note: None
        })
    );
    let want: OrderPlaced = order_placed(1);
    match &r.payload {
        Some(Shown::Avro { schema, value, .. }) => {
            assert_eq!(schema, "eip.orders.OrderPlaced");
            assert_eq!(value["customer_id"], want.customer_id);
            assert_eq!(value["total_cents"], want.total_cents);
            assert_eq!(value["currency"], "EUR");
            assert_eq!(value["metadata"]["event_id"], want.metadata.event_id);
            assert_eq!(value["shipping_address"]["city"], "Amsterdam");
            assert_eq!(value["lines"].as_array().unwrap().len(), want.lines.len());
            assert_eq!(value["lines"][0]["sku"], want.lines[0].sku);
        }
        other => panic!("expected an Avro payload, got {other:?}"),
    }

    // JSON text, binary, a frame whose schema id the registry doesn't know, and the router's
    // extra header.
    let r1 = eipctl::dlq::show(&f.ep, &f.dlq, f.pos(1).partition, f.pos(1).offset)
        .await
        .unwrap();
    assert_eq!(
        r1.payload,
        Some(Shown::Text {
            text: String::from_utf8(f.letters[1].payload.to_vec()).unwrap(),
            note: None
        })
    );
    let r3 = eipctl::dlq::show(&f.ep, &f.dlq, f.pos(3).partition, f.pos(3).offset)
        .await
        .unwrap();
    assert_eq!(
        r3.payload,
        Some(Shown::Hex {
            length: 6,
            preview: "fffe0001807f".into(),
            truncated: false,
            note: None
        })
    );
    let r6 = eipctl::dlq::show(&f.ep, &f.dlq, f.pos(6).partition, f.pos(6).offset)
        .await
        .unwrap();
    match &r6.payload {
        Some(Shown::Hex { note: Some(n), .. }) => {
            assert!(n.contains("framed but not decodable"), "{n}")
        }
        other => panic!("expected hex with a note, got {other:?}"),
    }
    assert!(r6.headers.iter().all(|h| h.name != dlq::FIRST_FAILURE));
    let r4 = eipctl::dlq::show(&f.ep, &f.dlq, f.pos(4).partition, f.pos(4).offset)
        .await
        .unwrap();
    assert!(
        r4.headers
            .iter()
            .any(|h| h.name == TARGET_TOPIC && h.value.as_deref() == Some("orders-routed"))
    );

    let missing = eipctl::dlq::show(&f.ep, &f.dlq, 0, 1_000)
        .await
        .unwrap_err();
    assert!(
        matches!(missing, OpsError::NoSuchRecord { .. }),
        "{missing}"
    );
    let bad_partition = eipctl::dlq::show(&f.ep, &f.dlq, 7, 0).await.unwrap_err();
    assert!(
        matches!(bad_partition, OpsError::Invalid { .. }),
        "{bad_partition}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_moves_exactly_the_filtered_records_once() {
    let f = fixture("dlqredrive").await;
    let ledger = eipctl::dlq::ledger_topic(&f.dlq);
    let filter = Filter {
        class: Some(ErrorClass::Poison),
        reason: Some(Regex::new("magic byte|avro decode").unwrap()),
        ..Filter::default()
    };
    let selected = f.positions(&[0, 1, 3]);

    // Dry run: the plan, and nothing produced or created.
    let dry = eipctl::dlq::redrive(
        &f.ep,
        &f.dlq,
        &filter,
        &RedriveOptions {
            dry_run: true,
            ..RedriveOptions::default()
        },
    )
    .await
    .unwrap();
    assert!(dry.dry_run);
    assert_eq!(moved(&dry), selected);
    assert_eq!(
        dry.moved,
        BTreeMap::from([(f.orders.clone(), 2), (f.payments.clone(), 1)])
    );
    assert_eq!(dry.filtered_out, 4);
    assert_eq!(dry.scanned, 7);
    assert!(dry.already_redriven.is_empty() && dry.refused.is_empty());
    assert!(
        dry.lines()[1].starts_with("dry run: would move 3"),
        "{:?}",
        dry.lines()
    );
    assert!(read_all(&f.ep, &f.orders).await.is_empty());
    assert!(read_all(&f.ep, &f.payments).await.is_empty());
    assert_eq!(
        eipctl::watermarks(&f.ep, &ledger).unwrap_err().to_string(),
        format!("topic {ledger} does not exist")
    );

    // The real thing.
    let report = eipctl::dlq::redrive(&f.ep, &f.dlq, &filter, &RedriveOptions::default())
        .await
        .unwrap();
    assert!(!report.dry_run);
    assert_eq!(moved(&report), selected);
    assert_eq!(report.moved, dry.moved);
    assert_eq!(report.filtered_out, 4);
    assert!(report.moved_records.iter().all(|m| m.redrive_count == 1));
    let orders = arrived(&f, &f.orders).await;
    let payments = arrived(&f, &f.payments).await;
    assert_eq!(keys(&orders), vec![0, 1]);
    assert_eq!(keys(&payments), vec![3]);
    for (i, r) in orders.iter().chain(payments.iter()) {
        assert_redriven(&f, r, *i, 1);
        assert_eq!(
            &f.letters[*i].source,
            if *i == 3 { &f.payments } else { &f.orders }
        );
    }
    let entries: BTreeSet<String> = read_all(&f.ep, &ledger)
        .await
        .iter()
        .map(|r| String::from_utf8(r.key.as_ref().unwrap().to_vec()).unwrap())
        .collect();
    // Keyed by position and the dead letter's timestamp: `<partition>/<offset>/<ms>`.
    let expected: BTreeSet<String> = read_all(&f.ep, &f.dlq)
        .await
        .iter()
        .filter(|r| selected.contains(&DlqPosition::of(r)))
        .map(eipctl::dlq::ledger_key_of)
        .collect();
    assert_eq!(expected.len(), 3);
    assert_eq!(entries, expected);

    // Again: nothing moves; the same records are reported as already redriven.
    let again = eipctl::dlq::redrive(&f.ep, &f.dlq, &filter, &RedriveOptions::default())
        .await
        .unwrap();
    assert_eq!(again.moved_total(), 0);
    assert!(again.moved.is_empty());
    assert_eq!(
        again
            .already_redriven
            .iter()
            .copied()
            .collect::<BTreeSet<_>>(),
        selected
    );
    assert_eq!(again.filtered_out, 4);
    assert_eq!(read_all(&f.ep, &f.orders).await.len(), 2);
    assert_eq!(read_all(&f.ep, &f.payments).await.len(), 1);
    assert_eq!(read_all(&f.ep, &ledger).await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_to_sends_to_the_chosen_topic() {
    let f = fixture("dlqto").await;
    let filter = Filter {
        source_topic: Some(f.payments.clone()),
        ..Filter::default()
    };
    let report = eipctl::dlq::redrive(
        &f.ep,
        &f.dlq,
        &filter,
        &RedriveOptions {
            to: Some(f.elsewhere.clone()),
            ..RedriveOptions::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(report.moved, BTreeMap::from([(f.elsewhere.clone(), 3)]));
    assert_eq!(moved(&report), f.positions(&[2, 3, 6]));
    let there = arrived(&f, &f.elsewhere).await;
    assert_eq!(keys(&there), vec![2, 3, 6]);
    for (i, r) in &there {
        assert_redriven(&f, r, *i, 1);
    }
    assert!(read_all(&f.ep, &f.payments).await.is_empty());
    assert!(read_all(&f.ep, &f.orders).await.is_empty());

    // A target that doesn't exist is an error before anything is produced.
    let err = eipctl::dlq::redrive(
        &f.ep,
        &f.dlq,
        &Filter::default(),
        &RedriveOptions {
            to: Some(unique("no-such-topic")),
            ..RedriveOptions::default()
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(err, OpsError::Unroutable(_)), "{err}");
    assert_eq!(read_all(&f.ep, &f.elsewhere).await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loop_guard_refuses_records_at_the_limit() {
    let f = fixture("dlqloop").await;
    let filter = Filter {
        reason: Some(Regex::new("^rule failed").unwrap()),
        ..Filter::default()
    };
    // Letter 5 was redriven 3 times already; letter 6 never.
    let report = eipctl::dlq::redrive(&f.ep, &f.dlq, &filter, &RedriveOptions::default())
        .await
        .unwrap();
    assert_eq!(
        report.refused,
        vec![Refused {
            partition: f.pos(5).partition,
            offset: f.pos(5).offset,
            redrive_count: Some(3),
        }]
    );
    assert_eq!(moved(&report), f.positions(&[6]));
    let line = &report.lines()[3];
    assert!(
        line.contains(&format!(
            "{}@{} (eip.redrive.count 3)",
            f.pos(5).partition,
            f.pos(5).offset
        )),
        "{line}"
    );
    assert!(
        read_all(&f.ep, &f.orders).await.is_empty(),
        "refused means not moved"
    );
    assert_eq!(keys(&arrived(&f, &f.payments).await), vec![6]);

    // A higher limit lets it through with its count carried on.
    let report = eipctl::dlq::redrive(
        &f.ep,
        &f.dlq,
        &filter,
        &RedriveOptions {
            max_redrives: 4,
            ..RedriveOptions::default()
        },
    )
    .await
    .unwrap();
    assert!(report.refused.is_empty());
    assert_eq!(moved(&report), f.positions(&[5]));
    assert_eq!(report.already_redriven, vec![f.pos(6)]);
    let orders = arrived(&f, &f.orders).await;
    assert_eq!(keys(&orders), vec![5]);
    assert_redriven(&f, &orders[&5], 5, 4);
}

async fn eipctl_cli(f: &Fixture, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(bin("eipctl"))
        .args([
            "--brokers",
            f.ep.brokers.as_str(),
            "--registry",
            f.ep.registry.as_str(),
        ])
        .args(args)
        .env_remove("EIP_KAFKA_BROKERS")
        .env_remove("EIP_REGISTRY_URL")
        .output()
        .await
        .unwrap()
}

fn json_lines(out: &std::process::Output) -> Vec<serde_json::Value> {
    assert!(
        out.status.success(),
        "eipctl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn json_positions(items: &[serde_json::Value]) -> BTreeSet<DlqPosition> {
    items
        .iter()
        .map(|v| DlqPosition {
            partition: v["partition"].as_i64().unwrap() as i32,
            offset: v["offset"].as_i64().unwrap(),
        })
        .collect()
}

/// A failed run: non-zero exit, nothing on stdout, one line on stderr.
fn one_line_error(out: &std::process::Output) -> String {
    assert!(!out.status.success(), "expected a failure");
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8(out.stderr.clone()).unwrap();
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
    assert!(err.starts_with("eipctl: "), "{err}");
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_lists_shows_and_redrives_as_json() {
    let f = fixture("dlqcli").await;

    let lines = json_lines(
        &eipctl_cli(
            &f,
            &[
                "dlq", "list", "--topic", &f.dlq, "--class", "poison", "--json",
            ],
        )
        .await,
    );
    let (records, summary) = lines.split_at(lines.len() - 1);
    assert!(records.iter().all(|r| r["kind"] == "record"));
    assert_eq!(json_positions(records), f.positions(&[0, 1, 3, 5, 6]));
    assert_eq!(summary[0]["kind"], "summary");
    assert_eq!(summary[0]["matched"], 5);
    assert_eq!(summary[0]["scanned"], 7);
    assert_eq!(summary[0]["by_class"], serde_json::json!({"poison": 5}));
    let r0 = records
        .iter()
        .find(|r| json_positions(std::slice::from_ref(r)) == f.positions(&[0]))
        .unwrap();
    assert_eq!(r0["source_topic"], f.orders.as_str());
    assert_eq!(r0["reason"], specs()[0].reason);

    let limited = json_lines(
        &eipctl_cli(
            &f,
            &[
                "dlq", "list", "--topic", &f.dlq, "--since", "1h", "--limit", "2", "--json",
            ],
        )
        .await,
    );
    assert_eq!(limited.len(), 3);
    assert_eq!(limited[2]["matched"], 3);
    assert_eq!(limited[2]["shown"], 2);

    let p = f.pos(0);
    let shown = json_lines(
        &eipctl_cli(
            &f,
            &[
                "dlq",
                "show",
                "--topic",
                &f.dlq,
                "--partition",
                &p.partition.to_string(),
                "--offset",
                &p.offset.to_string(),
                "--json",
            ],
        )
        .await,
    );
    assert_eq!(shown.len(), 1);
    assert_eq!(shown[0]["payload"]["encoding"], "avro");
    assert_eq!(shown[0]["payload"]["schema"], "eip.orders.OrderPlaced");
    assert_eq!(
        shown[0]["payload"]["value"]["customer_id"],
        order_placed(1).customer_id
    );
    assert!(
        shown[0]["headers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["name"] == dlq::SOURCE_TOPIC && h["value"] == f.orders.as_str())
    );

    let redrive = |dry: bool| {
        let mut args: Vec<&str> = vec![
            "dlq",
            "redrive",
            "--topic",
            &f.dlq,
            "--source-topic",
            &f.payments,
            "--json",
        ];
        if dry {
            args.push("--dry-run");
        }
        let f = &f;
        async move { json_lines(&eipctl_cli(f, &args).await) }
    };
    let dry = redrive(true).await;
    assert_eq!(dry[0]["dry_run"], true);
    assert_eq!(
        dry[0]["moved"],
        serde_json::json!({ f.payments.as_str(): 3 })
    );
    assert!(read_all(&f.ep, &f.payments).await.is_empty());
    let done = redrive(false).await;
    assert_eq!(done[0]["dry_run"], false);
    assert_eq!(
        done[0]["moved"],
        serde_json::json!({ f.payments.as_str(): 3 })
    );
    assert_eq!(
        json_positions(done[0]["moved_records"].as_array().unwrap()),
        f.positions(&[2, 3, 6])
    );
    assert_eq!(done[0]["filtered_out"], 4);
    assert_eq!(keys(&arrived(&f, &f.payments).await), vec![2, 3, 6]);
    let again = redrive(false).await;
    assert_eq!(again[0]["moved"], serde_json::json!({}));
    assert_eq!(
        json_positions(again[0]["already_redriven"].as_array().unwrap()),
        f.positions(&[2, 3, 6])
    );

    // The text report says the same.
    let text = eipctl_cli(
        &f,
        &[
            "dlq",
            "redrive",
            "--topic",
            &f.dlq,
            "--reason",
            "^rule failed",
        ],
    )
    .await;
    assert!(text.status.success());
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.contains("moved 0\n"), "{text}");
    assert!(text.contains("already redriven 1 (skipped)"), "{text}");
    assert!(
        text.contains(&format!(
            "refused by the loop guard (--max-redrives 3) 1: {}@{} (eip.redrive.count 3)",
            f.pos(5).partition,
            f.pos(5).offset
        )),
        "{text}"
    );
    assert!(text.contains("filtered out 5"), "{text}");

    // Bad arguments and bad targets: one line, non-zero, nothing done.
    let err = one_line_error(
        &eipctl_cli(
            &f,
            &["dlq", "list", "--topic", &f.dlq, "--since", "yesterday"],
        )
        .await,
    );
    assert!(
        err.contains("--since") && err.contains("yesterday"),
        "{err}"
    );
    let err = one_line_error(
        &eipctl_cli(&f, &["dlq", "list", "--topic", &f.dlq, "--class", "sad"]).await,
    );
    assert!(err.contains("--class"), "{err}");
    let err = one_line_error(
        &eipctl_cli(
            &f,
            &["dlq", "redrive", "--topic", &f.dlq, "--max-redrives", "0"],
        )
        .await,
    );
    assert!(err.contains("--max-redrives"), "{err}");
    let ghost = unique("no-such-dlq");
    let err = one_line_error(
        &eipctl_cli(
            &f,
            &[
                "dlq",
                "show",
                "--topic",
                &ghost,
                "--partition",
                "0",
                "--offset",
                "0",
            ],
        )
        .await,
    );
    assert!(
        err.contains(&format!("topic {ghost} does not exist")),
        "{err}"
    );
    assert_eq!(read_all(&f.ep, &f.orders).await.len(), 0);
}

/// Deletes `topic` and waits until the broker no longer lists it.
async fn delete_topic(ep: &Endpoints, topic: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = eip_runtime::kafka::base_config(&ep.kafka())
        .create()
        .unwrap();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for r in admin.delete_topics(&[topic], &opts).await.unwrap() {
        r.unwrap();
    }
    let names = vec![topic.to_string()];
    eventually("the topic is gone", Duration::from_secs(60), || {
        let (ep, names) = (ep.clone(), names.clone());
        async move {
            let missing =
                eip_runtime::kafka::missing_topics(&ep.kafka(), &names, Duration::from_secs(10))
                    .ok()?;
            (!missing.is_empty()).then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_dlq_is_not_mistaken_for_its_old_ledger() {
    let f = fixture("dlqrecreate").await;
    let filter = Filter {
        source_topic: Some(f.payments.clone()),
        ..Filter::default()
    };
    let first = eipctl::dlq::redrive(&f.ep, &f.dlq, &filter, &RedriveOptions::default())
        .await
        .unwrap();
    assert_eq!(moved(&first), f.positions(&[2, 3, 6]));

    // The DLQ is deleted and created again, and new dead letters land at the old positions.
    delete_topic(&f.ep, &f.dlq).await;
    create_topics(&f.ep, &[&f.dlq], 2).await;
    let letters = produce_letters(&f, f.now + time::Duration::minutes(1)).await;
    let positions = |ls: &[Letter]| ls.iter().map(|l| l.pos).collect::<Vec<_>>();
    assert_eq!(
        positions(&letters),
        positions(&f.letters),
        "the same positions"
    );

    // They are new dead letters: the ledger of the old ones doesn't hide them.
    let again = eipctl::dlq::redrive(&f.ep, &f.dlq, &filter, &RedriveOptions::default())
        .await
        .unwrap();
    assert!(again.already_redriven.is_empty(), "{:?}", again.lines());
    assert_eq!(moved(&again), f.positions(&[2, 3, 6]));
    assert_eq!(read_all(&f.ep, &f.payments).await.len(), 6);

    // And they are redriven once.
    let third = eipctl::dlq::redrive(&f.ep, &f.dlq, &filter, &RedriveOptions::default())
        .await
        .unwrap();
    assert_eq!(third.moved_total(), 0, "{:?}", third.lines());
    assert_eq!(
        third
            .already_redriven
            .iter()
            .copied()
            .collect::<BTreeSet<_>>(),
        f.positions(&[2, 3, 6])
    );
    assert_eq!(read_all(&f.ep, &f.payments).await.len(), 6);
}

/// Produces `n` dead letters of `source` to `dlq` (keys `key-<i>`, payloads `payload-<i>`),
/// and waits for every acknowledgement.
async fn produce_many(ep: &Endpoints, dlq_topic: &str, source: &str, n: usize) {
    let producer: FutureProducer = eip_runtime::kafka::producer_config(&ep.kafka())
        .create()
        .unwrap();
    let mut pending = Vec::new();
    for i in 0..n {
        let key = Bytes::from(format!("key-{i}"));
        let payload = Bytes::from(format!("payload-{i}"));
        let record = Record {
            position: Position {
                topic: Arc::from(source),
                partition: 0,
                offset: i as i64,
                timestamp_ms: None,
            },
            key: Some(key.clone()),
            payload: Some(payload.clone()),
            headers: Headers::new(),
        };
        let h = dlq::headers(
            &record,
            &dlq::Failure {
                class: ErrorClass::Poison,
                reason: "rule failed: bulk",
                processor: "router",
                attempts: 1,
                first_failure: OffsetDateTime::now_utc(),
            },
        );
        let out = FutureRecord::to(dlq_topic)
            .key(key.as_ref())
            .payload(payload.as_ref())
            .headers(to_kafka(&h));
        pending.push(producer.send_result(out).map_err(|(e, _)| e).unwrap());
        if pending.len() >= 5_000 {
            for d in pending.drain(..) {
                d.await.unwrap().map_err(|(e, _)| e).unwrap();
            }
        }
    }
    for d in pending {
        d.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
}

/// The DLQ position each record of `topic` was redriven from (`eip.redrive.from`), with how
/// many records name it.
async fn redriven_from(ep: &Endpoints, topic: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for r in read_all(ep, topic).await {
        *out.entry(header(&r, REDRIVE_FROM)[0].to_string())
            .or_insert(0) += 1;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_redrives_move_each_record_once() {
    let ep = endpoints();
    let base = unique("dlqrace");
    let (dlq_topic, source) = (format!("{base}.dlq"), format!("{base}-orders"));
    create_topics(&ep, &[&dlq_topic, &source], 3).await;
    let n = 3_000;
    produce_many(&ep, &dlq_topic, &source, n).await;

    // Two operators start a redrive of the same DLQ at the same moment.
    let run = || {
        tokio::process::Command::new(bin("eipctl"))
            .args(["--brokers", ep.brokers.as_str()])
            .args(["--registry", ep.registry.as_str()])
            .args(["dlq", "redrive", "--topic", dlq_topic.as_str(), "--json"])
            .args(["--chunk-records", "250"])
            .env_remove("EIP_KAFKA_BROKERS")
            .env_remove("EIP_REGISTRY_URL")
            .output()
    };
    let (a, b) = tokio::join!(run(), run());
    let (a, b) = (a.unwrap(), b.unwrap());
    let outcome = |o: &std::process::Output| {
        format!(
            "{}: {}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout)
                .chars()
                .take(300)
                .collect::<String>(),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    let (a_text, b_text) = (outcome(&a), outcome(&b));
    assert!(
        a.status.success() || b.status.success(),
        "one run finishes: {a_text} / {b_text}"
    );
    for (o, text) in [(&a, &a_text), (&b, &b_text)] {
        if !o.status.success() {
            assert!(text.contains("another redrive"), "{text}");
        }
    }

    // Each dead letter arrived exactly once, and the ledger holds each exactly once.
    let from = redriven_from(&ep, &source).await;
    assert_eq!(from.len(), n, "{a_text} / {b_text}");
    let twice: Vec<_> = from.iter().filter(|(_, c)| **c != 1).collect();
    assert!(
        twice.is_empty(),
        "moved more than once: {:?}",
        &twice[..twice.len().min(5)]
    );
    let ledger = read_all(&ep, &eipctl::dlq::ledger_topic(&dlq_topic)).await;
    let keys: BTreeSet<Bytes> = ledger.iter().map(|r| r.key.clone().unwrap()).collect();
    assert_eq!((ledger.len(), keys.len()), (n, n));

    // A third run finds every record in the ledger.
    let third = eipctl::dlq::redrive(
        &ep,
        &dlq_topic,
        &Filter::default(),
        &RedriveOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(third.moved_total(), 0);
    assert_eq!(third.already_redriven_total, n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_dlq_is_listed_and_redriven_a_chunk_at_a_time() {
    let ep = endpoints();
    let base = unique("dlqlarge");
    let (dlq_topic, source) = (format!("{base}.dlq"), format!("{base}-orders"));
    create_topics(&ep, &[&dlq_topic, &source], 2).await;
    let n = 20_000;
    produce_many(&ep, &dlq_topic, &source, n).await;

    // list counts every record and keeps only the first --limit.
    let listing = eipctl::dlq::list(&ep, &dlq_topic, &Filter::default(), 5)
        .await
        .unwrap();
    assert_eq!((listing.scanned, listing.matched), (n, n));
    assert_eq!(
        listing
            .entries
            .iter()
            .map(|e| e.position())
            .collect::<Vec<_>>(),
        (0..5)
            .map(|offset| DlqPosition {
                partition: 0,
                offset
            })
            .collect::<Vec<_>>()
    );

    // redrive moves 1,500 records per transaction.
    let opts = RedriveOptions {
        chunk_records: 1_500,
        ..RedriveOptions::default()
    };
    let report = eipctl::dlq::redrive(&ep, &dlq_topic, &Filter::default(), &opts)
        .await
        .unwrap();
    assert_eq!((report.scanned, report.moved_total()), (n, n));
    assert_eq!(report.chunks, n.div_ceil(1_500));
    assert_eq!(report.moved_records.len(), eipctl::dlq::REPORT_LIMIT);
    let from = redriven_from(&ep, &source).await;
    assert_eq!(from.len(), n);
    assert!(from.values().all(|c| *c == 1));
    let ledger = read_all(&ep, &eipctl::dlq::ledger_topic(&dlq_topic)).await;
    let keys: BTreeSet<Bytes> = ledger.iter().map(|r| r.key.clone().unwrap()).collect();
    assert_eq!((ledger.len(), keys.len()), (n, n));

    let again = eipctl::dlq::redrive(&ep, &dlq_topic, &Filter::default(), &opts)
        .await
        .unwrap();
    assert_eq!(again.moved_total(), 0);
    assert_eq!((again.already_redriven_total, again.chunks), (n, 0));
    assert_eq!(again.already_redriven.len(), eipctl::dlq::REPORT_LIMIT);
    assert_eq!(read_all(&ep, &source).await.len(), n);
}
