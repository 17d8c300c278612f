//! The counter given/when/then with the runtime's test kit, on a real SQLite file.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use eip_runtime::testkit::TestKit;
use eip_runtime::{ProcessError, Raw};

use super::*;

fn counter(dir: &tempfile::TempDir, report: bool) -> Counter {
    Counter::new(&CounterConfig {
        db: dir.path().join("counts.db"),
        report_topic: report.then(|| "reports".to_string()),
        report_after: Duration::from_secs(5),
        hold_commit_open: Duration::ZERO,
    })
    .unwrap()
}

async fn feed(kit: &mut TestKit<Counter>, keys: &[&str]) {
    for k in keys {
        kit.record(Some(k), Raw(None)).await.unwrap();
    }
}

#[tokio::test]
async fn given_records_when_flushed_then_the_counts_are_durable_and_a_replay_after_a_crash_skips_them()
 {
    let dir = tempfile::tempdir().unwrap();
    let mut kit = TestKit::new(counter(&dir, false), "in", 0);
    kit.assign().await.unwrap();
    feed(&mut kit, &["a", "b", "a"]).await;
    assert!(
        kit.processor().store().counts().unwrap().is_empty(),
        "staged, not yet durable"
    );
    kit.flush().await.unwrap();
    feed(&mut kit, &["a"]).await;
    // Crash before the offsets of 0..=2 were committed and before offset 3 was flushed: the
    // next owner is redelivered everything from 0.
    kit.crash();
    kit.seek(0);
    kit.assign().await.unwrap();
    feed(&mut kit, &["a", "b", "a", "a"]).await;
    kit.revoke().await.unwrap();
    let counts = kit.processor().store().counts().unwrap();
    assert_eq!(
        counts.get("a"),
        Some(&3),
        "offsets 0..=2 skipped as applied, 3 counted once"
    );
    assert_eq!(counts.get("b"), Some(&1));
}

#[tokio::test]
async fn given_a_newer_owner_when_the_former_one_flushes_late_then_it_is_fenced_and_counts_nothing()
{
    let dir = tempfile::tempdir().unwrap();
    let mut former = TestKit::new(counter(&dir, false), "in", 0);
    former.assign().await.unwrap();
    feed(&mut former, &["a", "a"]).await;
    // The partition moves while the former owner is frozen; the new owner redoes the records.
    let mut newer = TestKit::new(counter(&dir, false), "in", 0);
    newer.assign().await.unwrap();
    feed(&mut newer, &["a", "a"]).await;
    newer.flush().await.unwrap();
    // The former owner wakes up and tries to commit what it had.
    let late = former.flush().await;
    assert!(
        matches!(late, Err(ProcessError::Fenced { .. })),
        "refused: {late:?}"
    );
    assert_eq!(former.processor().store().fenced(), 1);
    assert_eq!(
        newer.processor().store().counts().unwrap().get("a"),
        Some(&2)
    );
}

#[tokio::test]
async fn given_report_timers_when_the_owner_crashes_after_a_flush_then_the_next_owner_fires_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = TestKit::new(counter(&dir, true), "in", 0);
    first.set_clock(1_000);
    first.assign().await.unwrap();
    feed(&mut first, &["a", "b", "a"]).await;
    assert_eq!(first.timers().len(), 2, "one report timer per key");
    first.flush().await.unwrap();
    first.crash();

    let mut next = TestKit::new(counter(&dir, true), "in", 0);
    next.set_clock(2_000);
    next.assign().await.unwrap();
    assert_eq!(next.timers().len(), 2, "the timers survived the crash");
    next.seek(3);
    feed(&mut next, &["b"]).await;
    assert_eq!(next.timers().len(), 2, "b already has a timer");
    let fired = next.advance_to(6_000).await.unwrap();
    let mut reports: Vec<(String, String)> = fired
        .into_iter()
        .map(|(t, outs)| {
            assert_eq!(outs.len(), 1);
            let Payload::Bytes(b) = &outs[0].payload else {
                panic!("a text report")
            };
            (
                key_text(Some(&t.key)),
                String::from_utf8_lossy(b).into_owned(),
            )
        })
        .collect();
    reports.sort();
    assert_eq!(
        reports,
        vec![("a".into(), "2".into()), ("b".into(), "2".into())],
        "durable plus staged counts"
    );
    next.flush().await.unwrap();
    next.crash();
    let mut last = TestKit::new(counter(&dir, true), "in", 0);
    last.assign().await.unwrap();
    assert!(
        last.timers().is_empty(),
        "fired timers were removed durably"
    );
}
