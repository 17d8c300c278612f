//! Test harness for the end-to-end and fault-injection tests.
//!
//! Everything here talks to real servers: the shared local stack started by `make test`
//! (`EIP_KAFKA_BROKERS`, `EIP_REGISTRY_URL`), or private brokers and registries a test starts
//! for itself when it needs to stop them. Names are unique per test; waits poll with deadlines.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: fail loudly

pub mod bench;
pub mod contract;
pub mod cqrs;
pub mod orders;
pub mod plain;
pub mod saga;
pub mod views;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use eip_passthrough::{Passthrough, PassthroughConfig};
use eip_runtime::config::{Config, LogFormat};
use eip_runtime::{Processor, Running, Section, Stateful, Stateless};
use eip_schemas::types::OrderPlaced;
use eip_schemas::{Codec, Registry};
pub use eipctl::{Endpoints, ProduceSpec, ReadRecord};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Endpoints of the shared local stack.
pub fn endpoints() -> Endpoints {
    Endpoints {
        brokers: std::env::var("EIP_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:19092".into()),
        registry: std::env::var("EIP_REGISTRY_URL")
            .unwrap_or_else(|_| "http://127.0.0.1:18081".into()),
    }
}

/// `prefix` plus a random suffix: topic and group names no other test (or run) uses.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

/// Installs a test log subscriber once (WARN and up, or `RUST_LOG`).
pub fn init_logs() {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_test_writer()
        .try_init();
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A free port below the kernel's ephemeral range (32768 and up), for servers a test stops
/// and restarts on the same port. While such a server is down, its clients keep reconnecting;
/// with a port in the ephemeral range, a reconnect can take the port as its own source port
/// (a TCP self-connect), and the restarted server can no longer bind it.
pub fn free_listen_port() -> u16 {
    loop {
        let port = 20_000 + (rand_u16() % 12_000);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn rand_u16() -> u16 {
    let bytes = uuid::Uuid::new_v4().into_bytes();
    u16::from_le_bytes([bytes[0], bytes[1]])
}

/// Polls `check` every 100 ms until it returns `Some`, or panics after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates topics on `ep` with `partitions` each, and waits until the broker's metadata
/// shows them all (creation is acknowledged by the controller a moment before the broker
/// serves the new topics' metadata, and a processor started at once would find them
/// missing).
pub async fn create_topics(ep: &Endpoints, names: &[&str], partitions: i32) {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    eipctl::create_topics(ep, &names, partitions, None)
        .await
        .unwrap();
    let kafka = ep.kafka();
    eventually(
        "the new topics in the metadata",
        Duration::from_secs(30),
        || {
            let (kafka, names) = (kafka.clone(), names.clone());
            async move {
                let missing = tokio::task::spawn_blocking(move || {
                    eip_runtime::kafka::missing_topics(&kafka, &names, Duration::from_secs(5))
                })
                .await
                .ok()?
                .ok()?;
                missing.is_empty().then_some(())
            }
        },
    )
    .await;
}

/// Registers every schema with the registry of `ep`.
pub async fn register(ep: &Endpoints) {
    eipctl::register_schemas(ep).await.unwrap();
}

/// Produces sample orders (see [`eipctl::produce_orders`]).
pub async fn produce(ep: &Endpoints, topic: &str, count: u64, start: u64, poison: u64, keys: u64) {
    let report = eipctl::produce_orders(
        ep,
        &ProduceSpec {
            topic: topic.to_string(),
            count,
            start,
            poison,
            keys,
        },
    )
    .await
    .unwrap();
    assert_eq!(report.valid, count);
    assert_eq!(report.poison, poison);
}

/// Writes one record to each of `partitions` partitions of `topic` in a transaction and
/// aborts it: the partitions' ends move past records no `read_committed` reader ever sees
/// (the data, then the abort marker).
pub async fn abort_a_transaction(ep: &Endpoints, topic: &str, partitions: i32) {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let mut config = eip_runtime::kafka::base_config(&ep.kafka());
    config.set("transactional.id", unique("aborted"));
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let producer: BaseProducer = config.create().unwrap();
        let wait = Duration::from_secs(30);
        producer.init_transactions(wait).unwrap();
        producer.begin_transaction().unwrap();
        for p in 0..partitions {
            producer
                .send(
                    BaseRecord::<str, [u8]>::to(&topic)
                        .partition(p)
                        .key("aborted")
                        .payload(b"never seen"),
                )
                .map_err(|(e, _)| e)
                .unwrap();
        }
        producer.flush(wait).unwrap();
        producer.abort_transaction(wait).unwrap();
    })
    .await
    .unwrap();
}

/// Reads every record of `topic`.
pub async fn read_all(ep: &Endpoints, topic: &str) -> Vec<ReadRecord> {
    let ep = ep.clone();
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        eipctl::read_all(&ep, &topic, Duration::from_secs(180)).unwrap()
    })
    .await
    .unwrap()
}

/// Waits until `topic` holds at least `n` records.
pub async fn wait_for(ep: &Endpoints, topic: &str, n: u64, timeout: Duration) {
    eipctl::wait_for_count(ep, topic, n, timeout).await.unwrap();
}

/// A codec over the registry of `ep`.
pub fn codec(ep: &Endpoints) -> Codec {
    Codec::new(std::sync::Arc::new(
        Registry::new(
            eip_runtime::config::RegistryConfig {
                url: ep.registry.clone(),
                auto_register: false,
                ..Default::default()
            }
            .settings(),
        )
        .unwrap(),
    ))
}

/// Decodes every record of `records` as an `OrderPlaced`.
pub async fn decode_orders(codec: &Codec, records: &[ReadRecord]) -> Vec<OrderPlaced> {
    let mut out = Vec::with_capacity(records.len());
    for r in records {
        out.push(
            codec
                .decode::<OrderPlaced>(r.payload.as_deref())
                .await
                .unwrap(),
        );
    }
    out
}

/// Sequence number of a sample order (from its event id `evt-<key>-<version>-<seq>`).
pub fn seq_of(order: &OrderPlaced) -> u64 {
    order
        .metadata
        .event_id
        .rsplit('-')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Checks the at-least-once-in-order contract: for every key, the output's first occurrences
/// of each sequence number, in output order, equal that key's input sequence. Returns
/// the number of duplicates (redeliveries).
pub fn assert_in_order_per_key(inputs: &[(String, u64)], outputs: &[(String, u64)]) -> usize {
    let mut want: HashMap<&str, Vec<u64>> = HashMap::new();
    for (k, s) in inputs {
        want.entry(k.as_str()).or_default().push(*s);
    }
    let mut got: HashMap<&str, Vec<u64>> = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    let mut duplicates = 0;
    for (k, s) in outputs {
        if seen.insert((k.as_str(), *s)) {
            got.entry(k.as_str()).or_default().push(*s);
        } else {
            duplicates += 1;
        }
    }
    assert_eq!(
        want.len(),
        got.len(),
        "keys in output differ from keys in input"
    );
    for (k, seqs) in &want {
        let g = got
            .get(k)
            .unwrap_or_else(|| panic!("key {k} missing from output"));
        assert_eq!(
            g, seqs,
            "key {k}: first occurrences out of order or missing"
        );
    }
    duplicates
}

/// A test configuration for a processor reading `input` on `ep`, telemetry on a free port.
pub fn config<A: Section>(ep: &Endpoints, input: &str, group: &str, processor: A) -> Config<A> {
    let mut c: Config<A> = Config::default();
    c.kafka.brokers = ep.brokers.clone();
    c.kafka.group_id = group.to_string();
    c.kafka.client_id = group.to_string();
    c.kafka.statistics_interval = Duration::from_secs(1);
    c.registry.url = ep.registry.clone();
    c.pipeline.inputs = vec![input.to_string()];
    c.telemetry.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    c.telemetry.log_format = LogFormat::Text;
    c.telemetry.readiness_interval = Duration::from_millis(500);
    c.processor = processor;
    c
}

/// A processor running inside the test process.
pub struct InProcess {
    /// Telemetry, metrics and health of the running pipeline.
    pub running: Running,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), eip_runtime::RuntimeError>>,
}

impl InProcess {
    /// Starts `processor` with `config` and waits until it is subscribed.
    pub async fn start<P: Processor, A: Section>(config: Config<A>, processor: P) -> InProcess {
        InProcess::start_stateful(config, Stateless(processor)).await
    }

    /// [`InProcess::start`] for a stateful processor.
    pub async fn start_stateful<S: Stateful, A: Section>(
        config: Config<A>,
        processor: S,
    ) -> InProcess {
        match InProcess::try_start_stateful(config, processor).await {
            Ok(p) => p,
            Err(e) => panic!("processor failed to start: {e}"),
        }
    }

    /// [`InProcess::start_stateful`], returning the error a processor that refuses to start
    /// stops with.
    pub async fn try_start_stateful<S: Stateful, A: Section>(
        config: Config<A>,
        processor: S,
    ) -> Result<InProcess, eip_runtime::RuntimeError> {
        init_logs();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            eip_runtime::run_stateful_until(
                &config,
                processor,
                Default::default(),
                async {
                    let _ = stop_rx.await;
                },
                move |running| {
                    let _ = started_tx.send(running);
                },
            )
            .await
        });
        let running = match started_rx.await {
            Ok(r) => r,
            Err(_) => {
                return Err(match task.await {
                    Ok(Err(e)) => e,
                    other => panic!("processor ended before it started: {other:?}"),
                });
            }
        };
        Ok(InProcess {
            running,
            stop: Some(stop_tx),
            task,
        })
    }

    /// Sum of every sample of metric `name` (e.g. `eip_records_produced_total`).
    pub fn metric(&self, name: &str) -> f64 {
        metric_sum(&self.running.metrics.render(), name)
    }

    /// Waits for the pipeline to end by itself (a fatal error) and returns how it ended.
    pub async fn join(mut self) -> Result<(), eip_runtime::RuntimeError> {
        let _keep_running = self.stop.take();
        (&mut self.task).await.unwrap()
    }

    /// Requests a graceful stop and returns how the pipeline ended.
    pub async fn stop(mut self) -> Result<(), eip_runtime::RuntimeError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task.await.unwrap()
    }
}

/// Starts the pass-through in-process from `input` to `output`.
pub async fn passthrough(ep: &Endpoints, input: &str, output: &str, group: &str) -> InProcess {
    let cfg = config(
        ep,
        input,
        group,
        PassthroughConfig {
            output: output.to_string(),
        },
    );
    InProcess::start(cfg.clone(), Passthrough::new(&cfg.processor)).await
}

/// Sum of every sample of `name` in a Prometheus text exposition.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Path of a workspace binary built by `cargo build --bins` (the Makefile builds them first).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --bins` first (make test does)",
        path.display()
    );
    path
}

/// A child process with its output in a log file.
pub struct ChildProcess {
    child: std::process::Child,
    /// Where stdout and stderr go.
    pub log: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl ChildProcess {
    /// Spawns `program` with `args` and `env`, logging to a temp file.
    pub fn spawn(program: &Path, args: &[&str], env: &[(String, String)]) -> ChildProcess {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("out.log");
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        ChildProcess {
            child,
            log,
            _dir: Some(dir),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`TERM`, `KILL`, `STOP`, `CONT`).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits up to `timeout` for the process to exit.
    pub async fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "process {} did not exit within {timeout:?}; log:\n{}",
                self.pid(),
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Environment for an `eip-passthrough` child reading `input` into `output` on `ep`.
pub fn passthrough_env(
    ep: &Endpoints,
    input: &str,
    output: &str,
    group: &str,
    telemetry_port: u16,
) -> Vec<(String, String)> {
    [
        ("EIP__KAFKA__BROKERS", ep.brokers.clone()),
        ("EIP__KAFKA__GROUP_ID", group.to_string()),
        ("EIP__KAFKA__CLIENT_ID", group.to_string()),
        ("EIP__REGISTRY__URL", ep.registry.clone()),
        ("EIP__PIPELINE__INPUTS", format!("[\"{input}\"]")),
        ("EIP__PROCESSOR__OUTPUT", output.to_string()),
        (
            "EIP__TELEMETRY__LISTEN",
            format!("127.0.0.1:{telemetry_port}"),
        ),
        ("EIP__TELEMETRY__READINESS_INTERVAL", "500ms".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// GETs `http://addr/path`; returns status and body, or `None` when nothing answers.
pub async fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .no_proxy()
        .build()
        .unwrap();
    let resp = client
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.text().await.ok()?))
}

/// A Kafka broker of this test's own (one KRaft node with its own data directory), started,
/// stopped and restarted through the same `deploy/local/stack.sh` users run.
pub struct PrivateBroker {
    dir: tempfile::TempDir,
    /// Its client port on 127.0.0.1.
    pub port: u16,
    /// Its KRaft controller port on 127.0.0.1.
    pub controller_port: u16,
}

impl PrivateBroker {
    fn stack(&self, cmd: &str) {
        let out = self.stack_command(cmd).output().unwrap();
        assert!(
            out.status.success(),
            "stack.sh {cmd} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn stack_command(&self, cmd: &str) -> Command {
        let mut c = Command::new("bash");
        c.arg(repo_root().join("deploy/local/stack.sh"))
            .arg(cmd)
            .env("EIP_STATE_DIR", self.dir.path())
            .env("EIP_KAFKA_PORT", self.port.to_string())
            .env(
                "EIP_KAFKA_CONTROLLER_PORT",
                self.controller_port.to_string(),
            )
            // Several private brokers may run at once beside the shared one.
            .env("EIP_KAFKA_HEAP", "512m");
        c
    }

    /// Starts a new broker on free ports (outside the ephemeral range: it may be restarted).
    pub fn start() -> PrivateBroker {
        let port = free_listen_port();
        let controller_port = loop {
            let p = free_listen_port();
            if p != port {
                break p;
            }
        };
        let b = PrivateBroker {
            dir: tempfile::tempdir().unwrap(),
            port,
            controller_port,
        };
        b.stack("start-broker");
        b
    }

    /// `host:port`.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// This broker with the shared registry of [`endpoints`].
    pub fn endpoints(&self) -> Endpoints {
        Endpoints {
            brokers: self.brokers(),
            registry: endpoints().registry,
        }
    }

    /// Stops it the way an operator does: SIGTERM, and a controlled shutdown.
    pub fn stop(&self) {
        self.stack("stop-broker");
    }

    /// Starts it again on the same ports and data.
    pub fn restart(&self) {
        self.stack("start-broker");
    }

    /// Freezes it (SIGSTOP): connections stay open, nothing is answered.
    pub fn freeze(&self) {
        self.signal("STOP");
    }

    /// Unfreezes it.
    pub fn thaw(&self) {
        self.signal("CONT");
    }

    fn signal(&self, name: &str) {
        let pid = std::fs::read_to_string(self.dir.path().join("kafka.pid")).unwrap();
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.trim())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} {pid} failed");
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        // A failing test keeps the broker's story: its log goes with the panic.
        if std::thread::panicking() {
            let log =
                std::fs::read_to_string(self.dir.path().join("logs/kafka.log")).unwrap_or_default();
            // The whole log outlives the temp dir, for the first error rather than the last.
            let kept = std::env::temp_dir().join(format!("eip-private-broker-{}.log", self.port));
            let _ = std::fs::write(&kept, &log);
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!(
                "private broker log (last 40 lines; all of it in {}):\n{}",
                kept.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        // A frozen broker would sit out the stop's grace period: wake it first.
        let _ = Command::new("kill")
            .arg("-CONT")
            .arg(
                std::fs::read_to_string(self.dir.path().join("kafka.pid"))
                    .unwrap_or_default()
                    .trim(),
            )
            .output();
        let _ = self.stack_command("stop-broker").output();
    }
}

/// A schema registry of this test's own, which it can pause (SIGSTOP) and resume.
pub struct PrivateRegistry {
    child: ChildProcess,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl PrivateRegistry {
    /// Starts rivven-schema on a free port and waits until it answers.
    pub async fn start() -> PrivateRegistry {
        let port = free_port();
        let tools = std::env::var("EIP_TOOLS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| {
                PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/eip-tools")
            });
        let child = ChildProcess::spawn(
            &tools.join("bin/rivven-schema"),
            &["serve", "--host", "127.0.0.1", "--port", &port.to_string()],
            &[],
        );
        let addr = format!("127.0.0.1:{port}");
        eventually(
            "private registry to answer",
            Duration::from_secs(30),
            || {
                let addr = addr.clone();
                async move {
                    http_get(&addr, "/subjects")
                        .await
                        .filter(|(s, _)| *s == 200)
                }
            },
        )
        .await;
        PrivateRegistry { child, port }
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Freezes it: connections are accepted but never answered.
    pub fn pause(&self) {
        self.child.signal("STOP");
    }

    /// Unfreezes it.
    pub fn resume(&self) {
        self.child.signal("CONT");
    }
}

impl Drop for PrivateRegistry {
    fn drop(&mut self) {
        self.child.signal("CONT");
    }
}

/// Runs git in the repository and returns stdout; panics with stderr on failure.
pub fn git(args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo_root())
        .args(args)
        .output()
        .expect("git must be installed: the schema compatibility tests read history with it");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The `.avsc` files under `schemas/avro` at revision `rev`, as (path relative to `schemas/`,
/// contents).
pub fn schema_files_at(rev: &str) -> Vec<(String, String)> {
    git(&["ls-tree", "-r", "--name-only", rev, "--", "schemas/avro"])
        .lines()
        .filter(|p| p.ends_with(".avsc"))
        .map(|p| {
            let contents = git(&["show", &format!("{rev}:{p}")]);
            (p.trim_start_matches("schemas/").to_string(), contents)
        })
        .collect()
}

/// Every commit that changed `schemas/avro`, oldest first.
pub fn schema_history() -> Vec<String> {
    let mut revs: Vec<String> = git(&["log", "--format=%H", "--", "schemas/avro"])
        .lines()
        .map(str::to_string)
        .collect();
    revs.reverse();
    revs
}

/// Topic and group names of one test, all unique.
#[derive(Debug, Clone)]
pub struct Names {
    /// Input topic.
    pub input: String,
    /// Its dead-letter topic.
    pub dlq: String,
    /// Output topic.
    pub output: String,
    /// Consumer group.
    pub group: String,
}

impl Names {
    /// (input, output, group): what most tests use.
    pub fn io(self) -> (String, String, String) {
        (self.input, self.output, self.group)
    }
}

/// Registers the schemas on `ep` and creates a fresh input, DLQ and output topic.
pub async fn fresh_topics(ep: &Endpoints, prefix: &str, partitions: i32) -> Names {
    register(ep).await;
    let input = unique(prefix);
    let names = Names {
        dlq: format!("{input}.dlq"),
        output: format!("{input}-out"),
        group: unique("g"),
        input,
    };
    create_topics(ep, &[&names.input, &names.dlq, &names.output], partitions).await;
    names
}

/// The pass-through's test configuration for `names`.
pub fn passthrough_config(ep: &Endpoints, names: &Names) -> Config<PassthroughConfig> {
    config(
        ep,
        &names.input,
        &names.group,
        PassthroughConfig {
            output: names.output.clone(),
        },
    )
}

/// What a [`Hooked`] processor does before forwarding a record: wait, fail, take notes.
pub trait Hook: Send + Sync + 'static {
    /// Runs before `input` is forwarded; an error is the record's outcome instead.
    fn before(
        &self,
        input: &eip_runtime::Envelope<OrderPlaced>,
    ) -> impl Future<Output = Result<(), eip_runtime::ProcessError>> + Send;
}

/// A pass-through of `OrderPlaced` records with a [`Hook`]: the test processors' shared shape.
pub struct Hooked<H> {
    /// Metric label.
    pub name: &'static str,
    /// Where records go.
    pub output: std::sync::Arc<str>,
    /// What happens first.
    pub hook: H,
}

impl<H: Hook> Processor for Hooked<H> {
    type Input = OrderPlaced;

    fn name(&self) -> &str {
        self.name
    }

    fn output_topics(&self) -> Vec<String> {
        vec![self.output.to_string()]
    }

    async fn decode(
        &self,
        codec: &Codec,
        record: &eip_runtime::Record,
    ) -> Result<OrderPlaced, eip_runtime::ProcessError> {
        eip_runtime::processor::decode_with(codec, record).await
    }

    async fn process(
        &self,
        input: eip_runtime::Envelope<OrderPlaced>,
    ) -> Result<Vec<eip_runtime::Output>, eip_runtime::ProcessError> {
        self.hook.before(&input).await?;
        Ok(vec![eip_runtime::Output::record(
            self.output.clone(),
            input.key,
            input.value,
        )])
    }
}

/// Sets its flag when dropped, so a test that panics still stops what it started: a
/// [`feed_steady`] left running would keep the test's runtime from shutting down, and the
/// failure would hang instead of failing.
pub struct SetOnDrop(pub std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }
}

/// Produces sample orders (the same records as [`produce`], `keys` distinct keys) at
/// `per_second`, from one idempotent producer, until `stop` is set (hold a [`SetOnDrop`] on
/// it); returns how many were
/// produced, all acknowledged. For tests that need records flowing while something happens.
pub async fn feed_steady(
    ep: &Endpoints,
    topic: &str,
    per_second: u64,
    keys: u64,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<u64> {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let id = codec(ep).id_of::<OrderPlaced>().await.unwrap();
    let producer: BaseProducer = eip_runtime::kafka::producer_config(&ep.kafka())
        .create()
        .unwrap();
    let spec = ProduceSpec {
        topic: topic.to_string(),
        count: 0,
        start: 0,
        poison: 0,
        keys,
    };
    tokio::task::spawn_blocking(move || {
        let tick = Duration::from_millis(10);
        let per_tick = (per_second / 100).max(1);
        let started = Instant::now();
        let mut seq = 0u64;
        while !stop.load(std::sync::atomic::Ordering::Acquire) {
            for _ in 0..per_tick {
                let mut order = eip_schemas::types::samples::order_placed(seq);
                let key = eipctl::sample_key(&spec, seq);
                order.metadata.aggregate_id = key.clone();
                let bytes = eip_schemas::codec::encode_with_id(id, &order).unwrap();
                let mut record = BaseRecord::to(&spec.topic).key(&key).payload(&bytes);
                loop {
                    match producer.send(record) {
                        Ok(()) => break,
                        Err((_, r)) => {
                            producer.poll(Duration::from_millis(5));
                            record = r;
                        }
                    }
                }
                seq += 1;
            }
            producer.poll(Duration::ZERO);
            let due = tick * u32::try_from(seq / per_tick).unwrap_or(u32::MAX);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        producer.flush(Duration::from_secs(60)).unwrap();
        seq
    })
}

/// What a test does around the counter's `process` (see [`HookedCounter`]).
pub trait CounterHook: Send + Sync + 'static {
    /// Runs before the record is counted (a delay, a timestamp).
    fn before(
        &self,
        input: &eip_runtime::Envelope<eip_runtime::Raw>,
    ) -> impl Future<Output = ()> + Send;

    /// Runs after the record was staged in the state (a panic, to leave it half-changed).
    fn after(&self, key: Option<&[u8]>) {
        let _ = key;
    }
}

/// The reference counter (`eip-counter`) with a [`CounterHook`] around `process`: the
/// stateful test and benchmark processors' shared shape.
pub struct HookedCounter<H> {
    /// Metric label.
    pub name: &'static str,
    /// The counter.
    pub inner: eip_counter::Counter,
    /// What happens around each record.
    pub hook: H,
}

impl<H: CounterHook> Stateful for HookedCounter<H> {
    type Input = eip_runtime::Raw;
    type State = eip_counter::Partition;

    fn name(&self) -> &str {
        self.name
    }

    async fn decode(
        &self,
        codec: &Codec,
        record: &eip_runtime::Record,
    ) -> Result<eip_runtime::Raw, eip_runtime::ProcessError> {
        self.inner.decode(codec, record).await
    }

    async fn open(
        &self,
        partition: &eip_runtime::PartitionId,
    ) -> Result<eip_runtime::Opened<eip_counter::Partition>, eip_runtime::ProcessError> {
        self.inner.open(partition).await
    }

    async fn process(
        &self,
        state: &mut eip_counter::Partition,
        input: eip_runtime::Envelope<eip_runtime::Raw>,
        effects: &mut eip_runtime::Effects,
    ) -> Result<(), eip_runtime::ProcessError> {
        self.hook.before(&input).await;
        let key = input.key.clone();
        self.inner.process(state, input, effects).await?;
        self.hook.after(key.as_deref());
        Ok(())
    }

    async fn flush(
        &self,
        state: &mut eip_counter::Partition,
        flush: eip_runtime::Flush<'_>,
    ) -> Result<(), eip_runtime::ProcessError> {
        self.inner.flush(state, flush).await
    }
}
