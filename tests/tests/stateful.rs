//! Stateful processors and revokes on the shared local stack, with the reference counter
//! (`eip-counter`, SQLite): a former owner frozen in the middle of a group commit is fenced, a
//! slow `process` at revoke time is abandoned without its effects landing, a kill -9 in the
//! middle of a group commit loses and doubles nothing, timers survive it, a transient encode
//! failure does not run `process` again, and a panic in a stateful processor is fatal.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use eip_counter::{Counter, CounterConfig};
use eip_runtime::config::Config;
use eip_runtime::{Envelope, ProcessError, Raw};
use eip_schemas::types::OrderPlaced;
use eip_tests::*;

const WAIT: Duration = Duration::from_secs(240);

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

fn counter_config(ep: &Endpoints, names: &Names, db: &std::path::Path) -> Config<CounterConfig> {
    let mut cfg = config(
        ep,
        &names.input,
        &names.group,
        CounterConfig {
            db: db.to_path_buf(),
            ..Default::default()
        },
    );
    cfg.kafka.partition_assignment_strategy = "range".into();
    cfg.pipeline.drain_timeout = Duration::from_secs(2);
    cfg.kafka.max_poll_interval = Duration::from_secs(12);
    cfg
}

async fn counted(store: &Counter) -> u64 {
    store.store().counts().unwrap().values().sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_former_owner_frozen_in_a_group_commit_is_fenced_and_the_counts_stay_exact() {
    let ep = endpoints();
    let names = fresh_topics(&ep, "fence", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = counter_config(&ep, &names, &dir.path().join("counts.db"));
    produce(&ep, &names.input, 2_000, 0, 0, 50).await;
    let former = Counter::new(&cfg.processor).unwrap();
    let a = InProcess::start_stateful(cfg.clone(), former.clone()).await;
    eventually("the first records counted", WAIT, || async {
        (counted(&former).await == 2_000).then_some(())
    })
    .await;
    // Freeze the owner's next group commits (a GC pause), with records staged.
    former.store().gate().freeze();
    produce(&ep, &names.input, 1_000, 2_000, 0, 50).await;
    eventually("a group commit held", WAIT, || async {
        (former.store().gate().waiting() >= 1).then_some(())
    })
    .await;
    // A second member joins: the frozen owner's drain times out, its work is abandoned, and
    // the new owners claim the partitions (a new epoch) and count the records again.
    let newer = Counter::new(&cfg.processor).unwrap();
    let b = InProcess::start_stateful(cfg.clone(), newer.clone()).await;
    eventually("B owns a partition", WAIT, || async {
        (b.metric("eip_assigned_partitions") >= 1.0).then_some(())
    })
    .await;
    eventually("B's partition counted", WAIT, || async {
        (b.metric("eip_group_commits_total") >= 1.0).then_some(())
    })
    .await;
    // The former owner wakes up: its held commits run now, against newer epochs.
    former.store().gate().thaw();
    eventually("every record counted", WAIT, || async {
        (counted(&former).await >= 3_000).then_some(())
    })
    .await;
    eventually("the late commits refused", WAIT, || async {
        (former.store().fenced() >= 1).then_some(())
    })
    .await;
    a.stop().await.unwrap();
    b.stop().await.unwrap();
    assert_eq!(
        former.store().counts().unwrap(),
        expected_counts(&ep, &names.input).await,
        "nothing counted twice: the late commits were fenced"
    );
}

/// One slow `process`: the first record of `slow_key` takes `delay`.
struct SlowOnce {
    slow_key: &'static str,
    delay: Duration,
    slowed: AtomicBool,
}

impl CounterHook for SlowOnce {
    async fn before(&self, input: &Envelope<Raw>) {
        if input.key.as_deref() == Some(self.slow_key.as_bytes())
            && !self.slowed.swap(true, Ordering::AcqRel)
        {
            // Cancellable, as async work is: the runtime drops this future when it abandons
            // the partition.
            tokio::time::sleep(self.delay).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_process_at_revoke_is_abandoned_counts_once_and_the_member_keeps_polling() {
    let ep = endpoints();
    let names = fresh_topics(&ep, "slowrevoke", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = counter_config(&ep, &names, &dir.path().join("counts.db"));
    produce(&ep, &names.input, 2_000, 0, 0, 40).await;
    let counter = Counter::new(&cfg.processor).unwrap();
    let slow = HookedCounter {
        name: "slow-once",
        inner: counter.clone(),
        hook: SlowOnce {
            slow_key: "order-00000007",
            delay: Duration::from_secs(30),
            slowed: AtomicBool::new(false),
        },
    };
    let a = InProcess::start_stateful(cfg.clone(), slow).await;
    eventually("the other partition counted", WAIT, || async {
        (counted(&counter).await >= 500).then_some(())
    })
    .await;
    // Member B joins while A is inside the slow process, far past the 2 s drain timeout.
    let b = InProcess::start_stateful(cfg.clone(), Counter::new(&cfg.processor).unwrap()).await;
    eventually("A has handed a partition over", WAIT, || async {
        (b.metric("eip_assigned_partitions") >= 1.0).then_some(())
    })
    .await;
    // A keeps polling and working: more records are counted by whoever owns them.
    let consumed_by_a = a.metric("eip_records_consumed_total");
    produce(&ep, &names.input, 2_000, 2_000, 0, 40).await;
    eventually("every record counted", WAIT, || async {
        (counted(&counter).await >= 4_000).then_some(())
    })
    .await;
    assert!(
        a.metric("eip_records_consumed_total") > consumed_by_a,
        "A kept polling its partition after the handover"
    );
    assert!(
        a.metric("eip_assigned_partitions") >= 1.0,
        "A is still in the group"
    );
    a.stop().await.unwrap();
    b.stop().await.unwrap();
    // The abandoned record's effect (its staged count, and every record after it on that
    // partition) was dropped with A's worker, never flushed: no double count, and nothing
    // had to be fenced.
    assert_eq!(
        counter.store().counts().unwrap(),
        expected_counts(&ep, &names.input).await
    );
    assert_eq!(
        counter.store().fenced(),
        0,
        "no late write was even attempted"
    );
}

fn counter_env(
    ep: &Endpoints,
    names: &Names,
    db: &std::path::Path,
    reports: &str,
    port: u16,
) -> Vec<(String, String)> {
    let mut env = passthrough_env(ep, &names.input, &names.output, &names.group, port);
    env.retain(|(k, _)| k != "EIP__PROCESSOR__OUTPUT");
    env.extend(
        [
            ("EIP__PROCESSOR__DB", db.display().to_string()),
            ("EIP__PROCESSOR__REPORT_TOPIC", reports.to_string()),
            ("EIP__PROCESSOR__REPORT_AFTER", "4s".to_string()),
            // Hold every transaction open 300 ms: a kill lands inside one.
            ("EIP__PROCESSOR__HOLD_COMMIT_OPEN", "300ms".to_string()),
            ("EIP__PIPELINE__FLUSH_INTERVAL", "50ms".to_string()),
            (
                "EIP__KAFKA__GROUP_INSTANCE_ID",
                format!("{}-0", names.group),
            ),
        ]
        .map(|(k, v)| (k.to_string(), v)),
    );
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_in_the_middle_of_group_commits_then_restart_counts_exactly_and_timers_fire() {
    let ep = endpoints();
    let names = fresh_topics(&ep, "killcommit", 4).await;
    let reports = names.output.clone();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("counts.db");
    produce(&ep, &names.input, 20_000, 0, 0, 200).await;
    let env = counter_env(&ep, &names, &db, &reports, free_port());
    let marker = "group commit holding its transaction open";
    for round in 0..3 {
        let mut member = ChildProcess::spawn(&bin("eip-counter"), &[], &env);
        // Kill it right after it opens a transaction, before that transaction commits.
        let seen = |text: &str| text.matches(marker).count();
        eventually("a group commit in progress", WAIT, || async {
            (seen(&member.log_text()) >= 2).then_some(())
        })
        .await;
        member.signal("KILL");
        assert!(
            !member.wait(Duration::from_secs(30)).await.success(),
            "round {round}: killed"
        );
    }
    let mut last = ChildProcess::spawn(&bin("eip-counter"), &[], &env);
    let store = Counter::new(&CounterConfig {
        db: db.clone(),
        ..Default::default()
    })
    .unwrap();
    let want = expected_counts(&ep, &names.input).await;
    eventually("every record counted", WAIT, || async {
        (counted(&store).await >= 20_000).then_some(())
    })
    .await;
    // Report timers were set for every key; those not fired before a kill were found again
    // after the restart.
    eventually("a report for every key", WAIT, || async {
        let keys: std::collections::HashSet<_> = read_all(&ep, &reports)
            .await
            .into_iter()
            .filter_map(|r| r.key)
            .collect();
        (keys.len() == want.len()).then_some(())
    })
    .await;
    last.signal("TERM");
    assert!(
        last.wait(Duration::from_secs(60)).await.success(),
        "{}",
        last.log_text()
    );
    assert_eq!(
        store.store().counts().unwrap(),
        want,
        "the store equals a replay of the input"
    );
}

/// Counts `process` calls per record; freezes the registry on the first one, so the output's
/// encoding (its schema id lookup) fails for a while.
struct FreezeRegistryOnce {
    registry: Arc<PrivateRegistry>,
    calls: Arc<std::sync::Mutex<HashMap<(i32, i64), u64>>>,
    froze: AtomicBool,
}

impl Hook for FreezeRegistryOnce {
    async fn before(&self, input: &Envelope<OrderPlaced>) -> Result<(), ProcessError> {
        *self
            .calls
            .lock()
            .unwrap()
            .entry((input.position.partition, input.position.offset))
            .or_default() += 1;
        if !self.froze.swap(true, Ordering::AcqRel) {
            self.registry.pause();
            let registry = self.registry.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(3)).await;
                registry.resume();
            });
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_encode_failure_retries_the_encoding_not_process() {
    let registry = Arc::new(PrivateRegistry::start().await);
    let shared = endpoints();
    let ep = Endpoints {
        brokers: shared.brokers.clone(),
        registry: registry.url(),
    };
    let names = fresh_topics(&ep, "encode", 1).await;
    produce(&ep, &names.input, 200, 0, 0, 0).await;
    let mut cfg = passthrough_config(&ep, &names);
    cfg.registry.timeout = Duration::from_millis(300);
    cfg.pipeline.retry.initial_backoff = Duration::from_millis(50);
    cfg.pipeline.retry.max_backoff = Duration::from_millis(300);
    let calls = Arc::new(std::sync::Mutex::new(HashMap::new()));
    let p = InProcess::start(
        cfg,
        Hooked {
            name: "encode",
            output: names.output.as_str().into(),
            hook: FreezeRegistryOnce {
                registry: registry.clone(),
                calls: calls.clone(),
                froze: AtomicBool::new(false),
            },
        },
    )
    .await;
    wait_for(&ep, &names.output, 200, WAIT).await;
    let retried = p.metric("eip_records_retried_total");
    p.stop().await.unwrap();
    assert!(retried >= 2.0, "the encoding was retried: {retried}");
    let calls = calls.lock().unwrap();
    assert_eq!(calls.len(), 200);
    assert!(
        calls.values().all(|n| *n == 1),
        "process ran once per record: {:?}",
        calls.iter().filter(|(_, n)| **n > 1).collect::<Vec<_>>()
    );
}

/// Panics on one key, after the record was staged in the state.
struct PanicsOn(&'static str);

impl CounterHook for PanicsOn {
    async fn before(&self, _: &Envelope<Raw>) {}

    fn after(&self, key: Option<&[u8]>) {
        if key == Some(self.0.as_bytes()) {
            panic!("state half-changed on purpose");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_a_stateful_process_is_fatal_counted_and_leaves_no_half_change() {
    let ep = endpoints();
    let names = fresh_topics(&ep, "statepanic", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = counter_config(&ep, &names, &dir.path().join("counts.db"));
    produce(&ep, &names.input, 100, 0, 0, 10).await;
    let counter = Counter::new(&cfg.processor).unwrap();
    let p = InProcess::start_stateful(
        cfg,
        HookedCounter {
            name: "panics",
            inner: counter.clone(),
            hook: PanicsOn("order-00000005"),
        },
    )
    .await;
    let health = p.running.health.clone();
    let metrics = p.running.metrics.clone();
    let ended = p.join().await;
    let reason = ended.unwrap_err().to_string();
    assert!(
        reason.contains("process panicked: state half-changed on purpose"),
        "{reason}"
    );
    assert!(metric_sum(&metrics.render(), "eip_panics_total") == 1.0);
    assert_eq!(health.panics(), 1, "/healthz counts it");
    // The half-changed state was never flushed: at most the records before it were counted.
    let counts = counter.store().counts().unwrap();
    assert!(counts.values().sum::<u64>() < 100, "{counts:?}");
    assert!(
        counts.get("order-00000005").copied().unwrap_or(0) == 0,
        "{counts:?}"
    );
}
