//! The CQRS pair in one test process: the topics and files of an `eip-orders` +
//! `eip-projector` pair, each started in process, and `eipctl` run as a child process.

use eip_schemas::Codec;

use crate::orders::{Script, WAIT, produce_script};
use crate::views::caught_up;
use crate::{
    ChildProcess, Endpoints, InProcess, Names, bin, config, create_topics, eventually,
    fresh_topics, unique,
};

/// `(name, value)` pairs as a child's environment.
pub fn env(pairs: &[(&str, String)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

/// The topics and files of one in-process orders + projector pair.
pub struct Stack {
    /// Commands topic (input), its DLQ and group.
    pub names: Names,
    /// The events topic.
    pub events: String,
    /// The outcomes topic.
    pub outcomes: String,
    /// The journal.
    pub orders_db: std::path::PathBuf,
    /// The views.
    pub views_db: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

/// Fresh topics (3 partitions each, DLQs too) and files.
pub async fn stack(ep: &Endpoints, prefix: &str) -> Stack {
    let names = fresh_topics(ep, prefix, 3).await;
    let events = format!("{}-events", names.input);
    let outcomes = format!("{}-outcomes", names.input);
    let dlqs = (format!("{events}.dlq"), format!("{outcomes}.dlq"));
    create_topics(ep, &[&events, &outcomes, &dlqs.0, &dlqs.1], 3).await;
    let dir = tempfile::tempdir().unwrap();
    Stack {
        orders_db: dir.path().join("orders.db"),
        views_db: dir.path().join("views.db"),
        names,
        events,
        outcomes,
        _dir: dir,
    }
}

impl Stack {
    /// The arguments of `eipctl projection rebuild VIEW` on this stack's file and topics.
    pub fn rebuild_args(&self, view: &str) -> Vec<String> {
        [
            "projection",
            "rebuild",
            view,
            "--db",
            &self.views_db.display().to_string(),
            "--events-topic",
            &self.events,
            "--outcomes-topic",
            &self.outcomes,
        ]
        .map(String::from)
        .to_vec()
    }
}

/// A running pair on a fresh stack, with a first script of `orders` orders in its views.
pub struct Pair {
    /// The topics and files.
    pub stack: Stack,
    /// `eip-orders`.
    pub orders: InProcess,
    /// `eip-projector`.
    pub projector: InProcess,
    /// The first script, in the views.
    pub first: Script,
}

/// Starts the pair on a fresh stack and waits until a first script of `orders` orders
/// (command ids prefixed `script`) is in the views.
pub async fn running_pair(
    ep: &Endpoints,
    codec: &Codec,
    prefix: &str,
    script: &str,
    orders: u64,
) -> Pair {
    let stack = stack(ep, prefix).await;
    let orders_p = start_orders(ep, &stack).await;
    let projector = start_projector(ep, &stack).await;
    let first = produce_script(ep, codec, &stack.names.input, script, orders, 0).await;
    eventually("the first script in the views", WAIT, || async {
        caught_up(&stack.views_db, &[&first]).then_some(())
    })
    .await;
    Pair {
        stack,
        orders: orders_p,
        projector,
        first,
    }
}

/// Runs `eipctl` with owned `args` to its end: (exit code, output).
pub async fn eipctl_run_owned(ep: &Endpoints, args: &[String]) -> (Option<i32>, String) {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    eipctl_run(ep, &refs).await
}

/// Starts `eip-orders` on `s` in process.
pub async fn start_orders(ep: &Endpoints, s: &Stack) -> InProcess {
    let cfg = config(
        ep,
        &s.names.input,
        &s.names.group,
        eip_orders::OrdersConfig {
            db: s.orders_db.clone(),
            events_topic: s.events.clone(),
            outcomes_topic: s.outcomes.clone(),
            ..Default::default()
        },
    );
    let orders = eip_orders::Orders::new(&cfg).unwrap();
    InProcess::start_stateful(cfg, orders).await
}

/// Starts `eip-projector` on `s` in process, in a group of its own.
pub async fn start_projector(ep: &Endpoints, s: &Stack) -> InProcess {
    start_projector_on(ep, s, vec![s.events.clone(), s.outcomes.clone()]).await
}

/// [`start_projector`] reading `inputs` (the saga's inventory topic too, say).
pub async fn start_projector_on(ep: &Endpoints, s: &Stack, inputs: Vec<String>) -> InProcess {
    let mut cfg = config(
        ep,
        &s.events,
        &unique("g-proj"),
        eip_projector::ProjectorConfig {
            db: s.views_db.clone(),
            ..Default::default()
        },
    );
    cfg.pipeline.inputs = inputs;
    let projector = eip_projector::Projector::new(&cfg).unwrap();
    InProcess::start_stateful(cfg, projector).await
}

/// Starts `eipctl` with `args` against `ep`.
pub fn eipctl(ep: &Endpoints, args: &[&str]) -> ChildProcess {
    ChildProcess::spawn(
        &bin("eipctl"),
        args,
        &env(&[
            ("EIP_KAFKA_BROKERS", ep.brokers.clone()),
            ("EIP_REGISTRY_URL", ep.registry.clone()),
        ]),
    )
}

/// Runs eipctl to its end: (exit code, output).
pub async fn eipctl_run(ep: &Endpoints, args: &[&str]) -> (Option<i32>, String) {
    let mut child = eipctl(ep, args);
    let status = child.wait(WAIT).await;
    (status.code(), child.log_text())
}
