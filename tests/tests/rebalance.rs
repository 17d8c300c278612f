//! Handovers under load, on the shared local stack: members join and leave (gracefully, as on
//! SIGTERM) while records flow into 6 partitions with a few hundred keys. Stateless members
//! must lose nothing, duplicate nothing and keep per-key order with `range`; with
//! `cooperative-sticky` they must duplicate no more than a plain librdkafka member put
//! through the same handovers in the same run; a stateful per-key counter must count exactly.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use eip_counter::{Counter, CounterConfig};
use eip_runtime::config::Config;
use eip_schemas::types::OrderPlaced;
use eip_tests::plain::PlainMember;
use eip_tests::*;

const WAIT: Duration = Duration::from_secs(240);
/// Distinct keys of the flowing records.
const KEYS: u64 = 300;
/// Records per second while members come and go.
const RATE: u64 = 3_000;
/// Time between membership changes.
const STEP: Duration = Duration::from_secs(2);

/// A membership change.
#[derive(Debug, Clone, Copy)]
enum Change {
    Join,
    /// The oldest member leaves.
    Leave,
}

/// Three joins and three leaves, one every [`STEP`], while records flow: A; +B; +C; -A; +D;
/// -B; -C; leaving D. Returns the last member (still running), how many records were
/// produced, and how many assignments the members that left had received.
async fn through_handovers<M, F, Fut>(
    ep: &Endpoints,
    input: &str,
    start: F,
    assigns: impl Fn(&M) -> f64,
    leave: impl AsyncFn(M),
) -> (M, u64, f64)
where
    F: Fn() -> Fut,
    Fut: Future<Output = M>,
{
    let stop_feed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let _stopped_on_panic = SetOnDrop(stop_feed.clone());
    let feeder = feed_steady(ep, input, RATE, KEYS, stop_feed.clone()).await;
    let mut members = std::collections::VecDeque::from([start().await]);
    let mut seen_assigns = 0.0;
    for change in [
        Change::Join,
        Change::Join,
        Change::Leave,
        Change::Join,
        Change::Leave,
        Change::Leave,
    ] {
        tokio::time::sleep(STEP).await;
        match change {
            Change::Join => members.push_back(start().await),
            Change::Leave => {
                let m = members.pop_front().unwrap();
                seen_assigns += assigns(&m);
                leave(m).await;
            }
        }
    }
    tokio::time::sleep(STEP).await;
    stop_feed.store(true, std::sync::atomic::Ordering::Release);
    let produced = feeder.await.unwrap();
    let last = members.pop_front().unwrap();
    assert!(members.is_empty());
    (last, produced, seen_assigns)
}

/// Assignments a member has received so far: every membership change hands partitions to at
/// least one member.
fn assigns(p: &InProcess) -> f64 {
    p.running
        .metrics
        .render()
        .lines()
        .filter(|l| l.starts_with("eip_rebalances_total") && l.contains("kind=\"assign\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>()
}

async fn key_seqs(ep: &Endpoints, topic: &str) -> Vec<(String, u64)> {
    let codec = codec(ep);
    decode_orders(&codec, &read_all(ep, topic).await)
        .await
        .iter()
        .map(|o: &OrderPlaced| (o.metadata.aggregate_id.clone(), seq_of(o)))
        .collect()
}

fn member_config(
    ep: &Endpoints,
    names: &Names,
    strategy: &str,
) -> Config<eip_passthrough::PassthroughConfig> {
    let mut cfg = passthrough_config(ep, names);
    cfg.kafka.partition_assignment_strategy = strategy.to_string();
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_handovers_under_load_lose_nothing_duplicate_nothing_and_keep_key_order() {
    let ep = endpoints();
    let names = fresh_topics(&ep, "handover-range", 6).await;
    let cfg = member_config(&ep, &names, "range");
    let start = || {
        let cfg = cfg.clone();
        async move {
            InProcess::start(
                cfg.clone(),
                eip_passthrough::Passthrough::new(&cfg.processor),
            )
            .await
        }
    };
    let (last, produced, seen) =
        through_handovers(&ep, &names.input, start, assigns, async |m: InProcess| {
            m.stop().await.unwrap();
        })
        .await;
    wait_for(&ep, &names.output, produced, WAIT).await;
    let last_assigns = assigns(&last);
    last.stop().await.unwrap();
    assert!(
        seen + last_assigns >= 7.0,
        "every member and every change got partitions: {seen} + {last_assigns} revokes"
    );

    let inputs = key_seqs(&ep, &names.input).await;
    let outputs = key_seqs(&ep, &names.output).await;
    assert_eq!(inputs.len() as u64, produced);
    let duplicates = assert_in_order_per_key(&inputs, &outputs);
    println!(
        "range: {produced} records, {duplicates} duplicates, {} revokes",
        seen + last_assigns
    );
    assert_eq!(duplicates, 0, "range handovers duplicate nothing");
    assert_eq!(outputs.len() as u64, produced);
}

/// Our member and a plain librdkafka member, each in its own group, going through the same
/// handovers on the same input.
struct Pair {
    ours: InProcess,
    plain: PlainMember,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cooperative_handovers_lose_nothing_duplicate_nothing_and_keep_key_order() {
    let ep = endpoints();
    let names = fresh_topics(&ep, "handover-coop", 6).await;
    let plain_out = unique("handover-coop-plain-out");
    create_topics(&ep, &[&plain_out], 6).await;
    let plain_group = unique("handover-coop-plain");
    let cfg = member_config(&ep, &names, "cooperative-sticky");
    let start = || {
        let cfg = cfg.clone();
        let (ep, input, out, group) = (
            ep.clone(),
            names.input.clone(),
            plain_out.clone(),
            plain_group.clone(),
        );
        async move {
            let plain = PlainMember::start(&ep, &input, &out, &group, "cooperative-sticky");
            let ours = InProcess::start(
                cfg.clone(),
                eip_passthrough::Passthrough::new(&cfg.processor),
            )
            .await;
            Pair { ours, plain }
        }
    };
    let (last, produced, seen) = through_handovers(
        &ep,
        &names.input,
        start,
        |p: &Pair| assigns(&p.ours),
        async |p: Pair| {
            let Pair { ours, plain } = p;
            let (stopped, _) = tokio::join!(
                ours.stop(),
                tokio::task::spawn_blocking(move || plain.stop())
            );
            stopped.unwrap();
        },
    )
    .await;
    wait_for(&ep, &names.output, produced, WAIT).await;
    wait_for(&ep, &plain_out, produced, WAIT).await;
    let Pair { ours, plain } = last;
    let last_assigns = assigns(&ours);
    ours.stop().await.unwrap();
    tokio::task::spawn_blocking(move || plain.stop())
        .await
        .unwrap();
    assert!(
        seen + last_assigns >= 7.0,
        "every member and every change got partitions: {seen} + {last_assigns}"
    );

    let inputs = key_seqs(&ep, &names.input).await;
    let ours = key_seqs(&ep, &names.output).await;
    let theirs = key_seqs(&ep, &plain_out).await;
    let our_duplicates = assert_in_order_per_key(&inputs, &ours);
    // The plain member is the comparison, not the subject: its figures are reported, and only
    // eip's are required. (It lost 25 of 60,780 records in one CI run; see
    // docs/consumer-groups.md.)
    let mut unique = theirs.clone();
    unique.sort();
    unique.dedup();
    let plain_duplicates = theirs.len() - unique.len();
    let plain_lost = produced.saturating_sub(unique.len() as u64);
    if plain_lost > 0 {
        let missing: Vec<&(String, u64)> = inputs
            .iter()
            .filter(|r| unique.binary_search(r).is_err())
            .take(10)
            .collect();
        println!("the plain member lost {plain_lost}, among them (key, seq): {missing:?}");
    }
    println!(
        "cooperative-sticky: {produced} records; eip {our_duplicates} duplicates, 0 lost; plain \
         librdkafka {plain_duplicates} duplicates, {plain_lost} lost"
    );
    // The plain member's duplicates are the figure eip is compared with in the docs; eip's
    // own handovers duplicate nothing: each revoke and each shutdown commits what was handled.
    assert_eq!(
        our_duplicates, 0,
        "eip duplicated {our_duplicates} (the plain member {plain_duplicates})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stateful_counter_counts_exactly_through_handovers() {
    let ep = endpoints();
    let names = fresh_topics(&ep, "handover-count", 6).await;
    let dir = tempfile::tempdir().unwrap();
    let settings = CounterConfig {
        db: dir.path().join("counts.db"),
        ..Default::default()
    };
    let mut cfg = config(&ep, &names.input, &names.group, settings);
    cfg.kafka.partition_assignment_strategy = "range".into();
    let start = || {
        let cfg = cfg.clone();
        async move {
            InProcess::start_stateful(cfg.clone(), Counter::new(&cfg.processor).unwrap()).await
        }
    };
    let (last, produced, seen) =
        through_handovers(&ep, &names.input, start, assigns, async |m: InProcess| {
            m.stop().await.unwrap();
        })
        .await;
    let store = Counter::new(&cfg.processor).unwrap();
    let want = expected_counts(&ep, &names.input).await;
    assert_eq!(want.values().sum::<u64>(), produced);
    eventually("every record counted", WAIT, || async {
        let got: u64 = store.store().counts().unwrap().values().sum();
        (got >= produced).then_some(())
    })
    .await;
    let last_assigns = assigns(&last);
    last.stop().await.unwrap();
    assert!(
        seen + last_assigns >= 7.0,
        "every member and every change got partitions: {seen} + {last_assigns}"
    );
    assert_eq!(
        store.store().counts().unwrap(),
        want,
        "counts equal the input exactly"
    );
}

/// Records per key of `topic`, as the counter keys them.
async fn expected_counts(ep: &Endpoints, topic: &str) -> HashMap<String, u64> {
    let mut want: HashMap<String, u64> = HashMap::new();
    for r in read_all(ep, topic).await {
        *want
            .entry(eip_counter::key_text(r.key.as_deref()))
            .or_default() += 1;
    }
    want
}
