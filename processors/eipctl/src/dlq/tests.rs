//! Given/when/then tests of the pure parts: filters, listing, rendering and redrive plans.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use apache_avro::types::Value;
use bytes::Bytes;
use eip_schemas::convert::to_json;

use super::show::text_or_hex;
use super::*;
use time::macros::datetime;

const NOW: OffsetDateTime = datetime!(2026-03-01 12:00:00 UTC);

fn dead(
    partition: i32,
    offset: i64,
    source: Option<&str>,
    class: &str,
    reason: &str,
    first_failure: Option<&str>,
    extra: &[(&str, &str)],
) -> ReadRecord {
    let mut h: Vec<(String, Option<Bytes>)> = vec![
        (
            "traceparent".into(),
            Some(Bytes::from_static(b"00-aa-bb-01")),
        ),
        ("correlation-id".into(), Some(Bytes::from_static(b"corr-1"))),
    ];
    for (k, v) in extra {
        h.push((k.to_string(), Some(Bytes::from(v.to_string()))));
    }
    h.push((
        headers::ERROR_CLASS.into(),
        Some(Bytes::from(class.to_string())),
    ));
    h.push((
        headers::REASON.into(),
        Some(Bytes::from(reason.to_string())),
    ));
    if let Some(s) = source {
        h.push((
            headers::SOURCE_TOPIC.into(),
            Some(Bytes::from(s.to_string())),
        ));
    }
    h.push((
        headers::SOURCE_PARTITION.into(),
        Some(Bytes::from_static(b"2")),
    ));
    h.push((
        headers::SOURCE_OFFSET.into(),
        Some(Bytes::from_static(b"41")),
    ));
    h.push((headers::ATTEMPTS.into(), Some(Bytes::from_static(b"1"))));
    if let Some(f) = first_failure {
        h.push((
            headers::FIRST_FAILURE.into(),
            Some(Bytes::from(f.to_string())),
        ));
    }
    h.push((
        headers::PROCESSOR.into(),
        Some(Bytes::from_static(b"router")),
    ));
    ReadRecord {
        partition,
        offset,
        key: Some(Bytes::from_static(b"order-1")),
        payload: Some(Bytes::from_static(b"{}")),
        headers: h,
        timestamp_ms: Some(TS),
    }
}

/// The timestamp of every [`dead`] letter: 2026-03-01T06:00:00Z.
const TS: i64 = 1_772_344_800_000;

/// A ledger of `entries` (key, value), as read from ledger offsets 0, 1, ...
fn ledger(entries: &[(&str, &str)]) -> Result<Ledger, OpsError> {
    let mut l = Ledger::default();
    for (i, (k, v)) in entries.iter().enumerate() {
        l.add(
            "x.dlq.redriven",
            &ReadRecord {
                partition: 0,
                offset: i as i64,
                key: Some(Bytes::from(k.to_string())),
                payload: Some(Bytes::from(v.to_string())),
                headers: Vec::new(),
                timestamp_ms: None,
            },
        )?;
    }
    Ok(l)
}

fn sample() -> Vec<ReadRecord> {
    vec![
        dead(
            0,
            0,
            Some("orders"),
            "poison",
            "bad magic byte",
            Some("2026-03-01T11:30:00Z"),
            &[],
        ),
        dead(
            0,
            1,
            Some("payments"),
            "transient",
            "registry timed out",
            Some("2026-03-01T09:00:00Z"),
            &[],
        ),
        dead(
            1,
            0,
            Some("orders"),
            "fatal",
            "fenced",
            None,
            &[(TARGET_TOPIC, "orders-out")],
        ),
        dead(
            1,
            1,
            None,
            "poison",
            "bad magic byte",
            Some("2026-03-01T11:59:00Z"),
            &[(REDRIVE_COUNT, "2")],
        ),
    ]
}

fn positions(l: &Listing) -> Vec<(i32, i64)> {
    l.entries.iter().map(|e| (e.partition, e.offset)).collect()
}

#[test]
fn times_are_rfc3339_or_a_duration_ago() {
    assert_eq!(
        parse_time("2h", NOW).unwrap(),
        datetime!(2026-03-01 10:00:00 UTC)
    );
    assert_eq!(
        parse_time("1day 30m", NOW).unwrap(),
        datetime!(2026-02-28 11:30:00 UTC)
    );
    assert_eq!(
        parse_time("2026-02-01T00:00:00+01:00", NOW).unwrap(),
        datetime!(2026-01-31 23:00:00 UTC)
    );
    let err = parse_time("yesterday", NOW).unwrap_err().to_string();
    assert!(
        err.contains("yesterday") && err.contains("RFC 3339"),
        "{err}"
    );
    assert!(parse_class("poison").is_ok());
    assert!(parse_class("Poison").is_err());
}

#[test]
fn each_filter_selects_exactly_its_records() {
    let rs = sample();
    let by = |f: Filter| positions(&summarize("x.dlq", &rs, &f));
    assert_eq!(by(Filter::default()).len(), 4);
    assert_eq!(
        by(Filter {
            reason: Some(Regex::new("magic").unwrap()),
            ..Filter::default()
        }),
        vec![(0, 0), (1, 1)]
    );
    assert_eq!(
        by(Filter {
            source_topic: Some("orders".into()),
            ..Filter::default()
        }),
        vec![(0, 0), (1, 0)]
    );
    assert_eq!(
        by(Filter {
            class: Some(ErrorClass::Transient),
            ..Filter::default()
        }),
        vec![(0, 1)]
    );
    // (1,0) has no first-failure header: its timestamp (06:00) counts.
    let since = Filter {
        since: Some(parse_time("1h", NOW).unwrap()),
        ..Filter::default()
    };
    assert_eq!(by(since), vec![(0, 0), (1, 1)]);
    let until = Filter {
        until: Some(parse_time("4h", NOW).unwrap()),
        ..Filter::default()
    };
    assert_eq!(by(until), vec![(1, 0)]);
    let combined = Filter {
        reason: Some(Regex::new("magic").unwrap()),
        class: Some(ErrorClass::Poison),
        source_topic: Some("orders".into()),
        since: Some(parse_time("1h", NOW).unwrap()),
        until: Some(NOW),
    };
    assert_eq!(by(combined), vec![(0, 0)]);
    let backwards = Filter {
        since: Some(NOW),
        until: Some(parse_time("1h", NOW).unwrap()),
        ..Filter::default()
    };
    assert!(backwards.validate().is_err());
}

#[test]
fn entries_carry_the_headers_and_count_by_class() {
    let l = summarize("x.dlq", &sample(), &Filter::default());
    assert_eq!(
        l.by_class,
        BTreeMap::from([
            ("fatal".into(), 1),
            ("poison".into(), 2),
            ("transient".into(), 1)
        ])
    );
    let fatal = &l.entries[2];
    assert_eq!(fatal.source_topic.as_deref(), Some("orders"));
    assert_eq!(
        (fatal.source_partition, fatal.source_offset),
        (Some(2), Some(41))
    );
    assert_eq!(fatal.first_failure.as_deref(), Some("2026-03-01T06:00:00Z"));
    assert_eq!(
        fatal.other.get(TARGET_TOPIC).map(String::as_str),
        Some("orders-out")
    );
    assert!(
        fatal.line().contains("target-topic=orders-out"),
        "{}",
        fatal.line()
    );
    assert_eq!(l.entries[3].redrive_count, Some(2));
    assert!(
        l.entries[3]
            .line()
            .starts_with("1@1  ?[2]@41  poison  attempts=1")
    );
}

#[test]
fn plan_sorts_every_record_into_exactly_one_outcome() {
    let rs = sample();
    let done = ledger(&[(&ledger_key(0, 1, Some(TS)), "{}")]).unwrap();
    let opts = RedriveOptions {
        max_redrives: 2,
        ..RedriveOptions::default()
    };
    // (1,1) has no source topic, so route everything with --to to look at the guard.
    let p = plan(
        &rs,
        &done,
        &Filter::default(),
        &RedriveOptions {
            to: Some("t".into()),
            ..opts.clone()
        },
    )
    .unwrap();
    assert_eq!(p.scanned, 4);
    assert_eq!(
        p.already_redriven,
        vec![DlqPosition {
            partition: 0,
            offset: 1
        }]
    );
    assert_eq!(
        p.refused,
        vec![Refused {
            partition: 1,
            offset: 1,
            redrive_count: Some(2)
        }]
    );
    assert_eq!(
        p.moves
            .iter()
            .map(|m| (m.record.offset, m.record.partition, m.count))
            .collect::<Vec<_>>(),
        vec![(0, 0, 1), (0, 1, 1)]
    );
    assert!(p.moves.iter().all(|m| m.target == "t"));
    // Without --to each goes to the target it could not reach, if it names one, else to its
    // source topic; a selected record with neither fails the run.
    let orders = Filter {
        source_topic: Some("orders".into()),
        ..Filter::default()
    };
    let p = plan(&rs, &done, &orders, &opts).unwrap();
    assert_eq!(p.filtered_out, 2);
    assert!(!p.moves.is_empty());
    assert!(
        p.moves
            .iter()
            .all(|m| m.target == m.record.header(TARGET_TOPIC).unwrap_or("orders"))
    );
    let all = RedriveOptions {
        max_redrives: 5,
        ..opts
    };
    let err = plan(&rs, &Ledger::default(), &Filter::default(), &all)
        .unwrap_err()
        .to_string();
    assert!(err.contains("1@1") && err.contains("--to"), "{err}");
}

#[test]
fn unreadable_redrive_counts_are_refused() {
    let r = dead(
        0,
        7,
        Some("orders"),
        "poison",
        "x",
        None,
        &[(REDRIVE_COUNT, "lots")],
    );
    let p = plan(
        &[r],
        &Ledger::default(),
        &Filter::default(),
        &RedriveOptions::default(),
    )
    .unwrap();
    assert_eq!(
        p.refused,
        vec![Refused {
            partition: 0,
            offset: 7,
            redrive_count: None
        }]
    );
    assert!(p.moves.is_empty());
}

#[test]
fn redriven_headers_drop_the_dlq_ones_and_count_up() {
    let r = dead(
        1,
        1,
        Some("orders"),
        "poison",
        "x",
        None,
        &[(REDRIVE_COUNT, "2"), (REDRIVE_FROM, "old/0/0")],
    );
    let m = Move {
        record: r,
        target: "orders".into(),
        count: 3,
    };
    let h = redriven_headers("orders.dlq", &m, NOW);
    let get = |n: &str| {
        let vs: Vec<_> = h.iter().filter(|(k, _)| k == n).collect();
        assert!(vs.len() <= 1, "{n} appears {} times", vs.len());
        vs.first().and_then(|(_, v)| v.clone())
    };
    assert!(
        h.iter().all(|(k, _)| !k.starts_with(DLQ_HEADER_PREFIX)),
        "{h:?}"
    );
    assert_eq!(get(REDRIVE_COUNT).as_deref(), Some(&b"3"[..]));
    assert_eq!(get(REDRIVE_FROM).as_deref(), Some(&b"orders.dlq/1/1"[..]));
    assert_eq!(
        get(REDRIVE_AT).as_deref(),
        Some(&b"2026-03-01T12:00:00Z"[..])
    );
    assert_eq!(get("traceparent").as_deref(), Some(&b"00-aa-bb-01"[..]));
    assert_eq!(h[0].0, "traceparent", "original headers keep their order");
}

#[test]
fn avro_values_become_plain_json() {
    let v = Value::Record(vec![
        ("id".into(), Value::String("o-1".into())),
        (
            "note".into(),
            Value::Union(1, Box::new(Value::String("gift".into()))),
        ),
        ("none".into(), Value::Union(0, Box::new(Value::Null))),
        ("raw".into(), Value::Bytes(vec![0xde, 0xad])),
        ("kind".into(), Value::Enum(2, "EXPRESS".into())),
        (
            "lines".into(),
            Value::Array(vec![Value::Long(3), Value::Int(4)]),
        ),
        ("nan".into(), Value::Double(f64::NAN)),
        ("price".into(), Value::Float(1.5)),
    ]);
    assert_eq!(
        to_json(&v),
        serde_json::json!({
            "id": "o-1", "note": "gift", "none": null, "raw": "\u{de}\u{ad}",
            "kind": "EXPRESS", "lines": [3, 4], "nan": "NaN", "price": 1.5
        })
    );
}

#[test]
fn payloads_render_as_text_or_hex() {
    assert_eq!(
        text_or_hex(b"{\"a\":1}", None),
        Shown::Text {
            text: "{\"a\":1}".into(),
            note: None
        }
    );
    // UTF-8, but a truncated frame: binary all the same.
    assert!(matches!(
        text_or_hex(&[0, 0, 1], None),
        Shown::Hex { length: 3, .. }
    ));
    assert!(matches!(
        text_or_hex(b"line one\n\tline two", None),
        Shown::Text { .. }
    ));
    let bin = vec![0xffu8; HEX_PREVIEW_BYTES + 1];
    match text_or_hex(&bin, None) {
        Shown::Hex {
            length,
            preview,
            truncated,
            ..
        } => {
            assert_eq!(length, HEX_PREVIEW_BYTES + 1);
            assert_eq!(preview.len(), HEX_PREVIEW_BYTES * 2);
            assert!(truncated);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_ledger_tells_a_recreated_dlq_from_the_old_one() {
    // Given the ledger entry of the dead letter at 0@1,
    let l = ledger(&[(&ledger_key(0, 1, Some(TS)), "{}")]).unwrap();
    let old = dead(0, 1, Some("orders"), "poison", "x", None, &[]);
    assert!(l.contains(&old));
    // when the DLQ was recreated and a new dead letter sits at 0@1 (a later timestamp),
    let new = ReadRecord {
        timestamp_ms: Some(TS + 1),
        ..old.clone()
    };
    // then it is not taken for the one redriven.
    assert!(!l.contains(&new));
    assert_eq!(ledger_key_of(&new), format!("0/1/{}", TS + 1));
    let untimed = ReadRecord {
        timestamp_ms: None,
        ..old
    };
    assert_eq!(ledger_key_of(&untimed), "0/1/-");
    assert!(!l.contains(&untimed));
    assert!(ledger(&[("0/1/-", "{}")]).unwrap().contains(&untimed));
}

#[test]
fn entries_written_before_issue_17_match_only_letters_older_than_their_redrive() {
    // Given an old entry `0/1`, redriven at 07:00, an hour after the letter's timestamp,
    let l = ledger(&[(
        "0/1",
        r#"{"dlq":"x.dlq","partition":0,"offset":1,"target":"orders","redrive_count":1,"at":"2026-03-01T07:00:00Z"}"#,
    )])
    .unwrap();
    let letter = dead(0, 1, Some("orders"), "poison", "x", None, &[]);
    // then that letter was redriven,
    assert!(l.contains(&letter));
    // but one written at 0@1 after the redrive (a recreated DLQ) was not,
    assert!(!l.contains(&ReadRecord {
        timestamp_ms: Some(TS + 2 * 3_600_000),
        ..letter.clone()
    }));
    // and neither was one at another position.
    assert!(!l.contains(&ReadRecord {
        offset: 2,
        ..letter
    }));
}

#[test]
fn a_ledger_entry_eipctl_never_writes_is_refused() {
    for (key, value) in [
        ("0/1", "{}"),
        ("0/1", "not json"),
        ("zero/1/5", "{}"),
        ("0/1/soon", "{}"),
        ("0/1/2/3", "{}"),
        ("", "{}"),
    ] {
        let err = ledger(&[(key, value)]).unwrap_err();
        assert!(
            matches!(err, OpsError::Ledger { offset: 0, .. }),
            "{key:?}: {err}"
        );
    }
}

#[test]
fn ledger_entries_below_the_dlq_low_watermark_are_dropped() {
    let mut l = Ledger::new([(0, 5)]);
    for (offset, key) in [(0, "0/1/7"), (1, "0/5/7"), (2, "1/1/7")] {
        l.add(
            "x",
            &ReadRecord {
                partition: 0,
                offset,
                key: Some(Bytes::from_static(key.as_bytes())),
                payload: None,
                headers: Vec::new(),
                timestamp_ms: None,
            },
        )
        .unwrap();
    }
    assert_eq!(l.len(), 2);
}

#[test]
fn reports_and_listings_of_many_chunks_count_everything_and_keep_the_first() {
    // Given 2,500 dead letters read in three chunks, out of order across chunks,
    let all: Vec<ReadRecord> = (0..2_500)
        .map(|i| {
            dead(
                i % 2,
                i64::from(i / 2),
                Some("orders"),
                "poison",
                "x",
                None,
                &[],
            )
        })
        .collect();
    let mut chunks: Vec<Vec<ReadRecord>> = all.chunks(1_000).map(<[_]>::to_vec).collect();
    chunks.reverse();
    let opts = RedriveOptions::default();
    let mut report = RedriveReport::new("x.dlq", &opts);
    let mut listing = Listing::new("x.dlq");
    for c in &chunks {
        report.add(&plan(c, &Ledger::default(), &Filter::default(), &opts).unwrap());
        listing.add(c, &Filter::default(), 3);
    }
    // then the counts are whole and the lists hold the first ones in (partition, offset) order.
    assert_eq!((report.scanned, report.moved_total()), (2_500, 2_500));
    assert_eq!(
        report.moved,
        BTreeMap::from([("orders".to_string(), 2_500)])
    );
    assert_eq!(report.moved_records.len(), REPORT_LIMIT);
    assert!(
        report
            .moved_records
            .iter()
            .all(|m| m.partition == 0 && m.offset < 1_000)
    );
    assert!(report.lines()[1].starts_with("moved 2500: 2500 to orders"));
    assert_eq!((listing.scanned, listing.matched), (2_500, 2_500));
    assert_eq!(positions(&listing), vec![(0, 0), (0, 1), (0, 2)]);
    assert_eq!(
        listing.by_class,
        BTreeMap::from([("poison".to_string(), 2_500)])
    );
}
