//! # eip-runtime
//!
//! The one message loop every eip processor runs. Domain code implements [`Processor`]
//! (see [`processor`]); this crate does everything else:
//! - consume with explicit offset storage, per-partition order, concurrency across partitions
//!   ([`pipeline`]);
//! - decode Confluent-framed Avro through the registry cache, encode outputs the same way;
//! - produce idempotently and store an offset only after every output is acknowledged;
//! - transient errors retry in place with backoff; poison goes to the DLQ ([`dlq`]); fatal
//!   errors drain and exit non-zero;
//! - bounded in-flight records per partition (pause/resume), clean drain on SIGTERM and on
//!   rebalance;
//! - layered, validated configuration ([`config`]);
//! - Prometheus metrics ([`metrics`]), `/healthz`, `/readyz` ([`health`], [`telemetry`]),
//!   JSON logs and W3C trace context in headers ([`trace`]).

pub mod auth;
pub mod cli;
pub mod config;
pub mod dlq;
pub mod health;
pub mod kafka;
pub mod metrics;
mod pipeline;
pub mod processor;
pub mod stateful;
pub mod telemetry;
pub mod testkit;
pub mod topics;
pub mod trace;

use std::future::Future;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use eip_schemas::{Codec, Registry};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{Producer, ThreadedProducer};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

pub use config::{Config, ConfigError, NoSettings, Section};
pub use health::Health;
pub use metrics::Metrics;
pub use processor::{
    AnyRecord, Decode, DeliveryFailure, Envelope, Headers, Output, Payload, Position, ProcessError,
    Processor, Raw, Record, Redirect,
};
pub use stateful::{Effects, Flush, Opened, PartitionId, Stateful, Stateless, Timer, TimerChange};

/// mimalloc as the global allocator, with the `mimalloc` feature: its thread-local heaps free
/// a block allocated on another thread without a lock, which glibc's arenas can't.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use pipeline::{Batches, ConsumerCtx, Core, InFlight, PollState, ProducerContext, Stop};

/// A startup failure (a port in use, a missing topic, a client that could not be created):
/// what could not be set up, and the error that stopped it. Every binary's error enum holds
/// one.
#[derive(Debug, Clone, thiserror::Error)]
#[error("startup: {what}")]
pub struct StartupError {
    /// What could not be set up.
    pub what: String,
    /// The error that stopped it, if any.
    #[source]
    pub source: Option<eip_schemas::Cause>,
}

impl StartupError {
    /// Setting up `what` failed because of `source`.
    pub fn new(
        what: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> StartupError {
        StartupError {
            what: what.into(),
            source: Some(Arc::new(source)),
        }
    }

    /// Setting up `what` failed, with no underlying error (`what` says why).
    pub fn plain(what: impl Into<String>) -> StartupError {
        StartupError {
            what: what.into(),
            source: None,
        }
    }
}

/// Why a processor stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Startup failed.
    #[error(transparent)]
    Startup(#[from] StartupError),
    /// A fatal error stopped the pipeline after draining.
    #[error("fatal: {0}")]
    Fatal(String),
    /// A server of the process (the gateway's HTTP server) failed while running.
    #[error("server: {what}")]
    Server {
        /// What failed.
        what: String,
        /// The error behind it.
        #[source]
        source: eip_schemas::Cause,
    },
}

impl RuntimeError {
    /// A server failure caused by `source`: `what` names the server or task.
    pub fn server(
        what: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> RuntimeError {
        RuntimeError::Server {
            what: what.into(),
            source: Arc::new(source),
        }
    }
}

impl From<rdkafka::error::KafkaError> for RuntimeError {
    fn from(e: rdkafka::error::KafkaError) -> Self {
        StartupError::new("kafka client", e).into()
    }
}

/// Handles on a running pipeline, for embedding (tests, benchmarks).
#[derive(Debug, Clone)]
pub struct Running {
    /// The telemetry server's bound address.
    pub telemetry: std::net::SocketAddr,
    /// The processor's metrics.
    pub metrics: Metrics,
    /// The processor's health flags.
    pub health: Arc<Health>,
    /// Cancelled when the pipeline starts to stop (drain or fatal): background tasks that a
    /// processor spawns in `on_start` end with it.
    pub stopping: CancellationToken,
}

/// Runs `processor` until `shutdown` completes (graceful drain) or a fatal error occurs, with
/// `routes` (a processor's admin endpoints; `Default::default()` for none) served next to
/// `/metrics`, `/healthz` and `/readyz` on the telemetry port. `on_start` is called once the
/// telemetry server is listening and the consumer subscribed.
pub async fn run_until<P, A>(
    config: &Config<A>,
    processor: P,
    routes: axum::Router,
    shutdown: impl Future<Output = ()> + Send,
    on_start: impl FnOnce(Running) + Send,
) -> Result<(), RuntimeError>
where
    P: Processor,
    A: Section,
{
    run_stateful_until(config, Stateless(processor), routes, shutdown, on_start).await
}

/// [`run_until`] for a [`Stateful`] processor: per-partition state opened on assignment,
/// group commits before offsets, timers, fencing (see [`stateful`]).
pub async fn run_stateful_until<S, A>(
    config: &Config<A>,
    processor: S,
    routes: axum::Router,
    shutdown: impl Future<Output = ()> + Send,
    on_start: impl FnOnce(Running) + Send,
) -> Result<(), RuntimeError>
where
    S: Stateful,
    A: Section,
{
    config.validate()?;
    let name = processor.name().to_string();
    let metrics = Metrics::new(&name).map_err(|e| StartupError::new("metrics", e))?;
    let health = Arc::new(Health::new(health::PROCESSOR_CHECKS));
    let stop = Arc::new(Stop::default());
    let telemetry_stop = CancellationToken::new();
    let (telemetry_addr, telemetry_task) = telemetry::serve(
        config.telemetry.listen,
        metrics.clone(),
        health.clone(),
        routes,
        telemetry_stop.clone(),
    )
    .await
    .map_err(|e| StartupError::new(format!("telemetry.listen {}", config.telemetry.listen), e))?;

    let registry =
        Registry::new(config.registry.settings()).map_err(|e| StartupError::new("registry", e))?;
    let codec = Codec::new(Arc::new(registry));

    check_topics(config, &processor).await?;

    let mut producer_config = kafka::producer_config(&config.kafka);
    if processor.stages_writes() {
        // An output refused for good must not be followed by later outputs of the same
        // partition: with a gap, a later record's output would be published on top of a
        // state change that is never kept (see `pipeline::deliver::acker`). librdkafka then
        // fails the producer instead, which stops the processor.
        producer_config.set("enable.gapless.guarantee", "true");
    }
    let batches = Arc::new(Batches::default());
    let producer: ThreadedProducer<ProducerContext> =
        producer_config.create_with_context(ProducerContext {
            stop: stop.clone(),
            batches: batches.clone(),
        })?;
    let in_flight = InFlight::new(metrics.in_flight.with_label_values(&[name.as_str()]));
    let state = PollState::new(
        metrics.clone(),
        name.clone(),
        stop.clone(),
        health.clone(),
        config.pipeline.drain_timeout,
        in_flight.clone(),
    );
    let consumer: BaseConsumer<ConsumerCtx> =
        kafka::consumer_config(&config.kafka).create_with_context(state.context())?;
    let inputs: Vec<&str> = config.pipeline.inputs.iter().map(String::as_str).collect();
    consumer.subscribe(&inputs)?;
    let consumer = Arc::new(consumer);
    let core = Arc::new(Core {
        processor,
        name: name.clone(),
        codec: codec.clone(),
        producer,
        batches,
        metrics: metrics.clone(),
        stop: stop.clone(),
        pipeline: config.pipeline.clone(),
        in_flight,
        health: health.clone(),
    });

    tokio::spawn(readiness(
        Arc::downgrade(&consumer),
        state.clone(),
        config.pipeline.inputs[0].clone(),
        codec.registry().clone(),
        health.clone(),
        config.telemetry.readiness_interval,
        stop.stopping.clone(),
    ));

    let runtime = tokio::runtime::Handle::current();
    let poll_core = core.clone();
    // The poll thread says when it is done and the consumer closed, and whether it panicked.
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<bool>();
    std::thread::Builder::new()
        .name("eip-poll".into())
        .spawn(move || {
            let _ = closed_tx.send(pipeline::poll_thread(consumer, state, poll_core, runtime));
        })
        .map_err(|e| StartupError::new("poll thread", e))?;
    info!(processor = %name, telemetry = %telemetry_addr, inputs = ?config.pipeline.inputs, "started");
    on_start(Running {
        telemetry: telemetry_addr,
        metrics: metrics.clone(),
        health: health.clone(),
        stopping: stop.stopping.child_token(),
    });

    tokio::select! {
        _ = shutdown => {
            info!("shutdown requested: draining");
            stop.request();
        }
        _ = stop.stopping.cancelled() => {}
    }
    if let Some(reason) = stop.fatal_reason() {
        // Liveness turns false while draining: the orchestrator sees the failure at once.
        health.set_fatal(reason);
    }
    // The poll thread drains partitions within drain_timeout; past that, abandon the rest.
    let hard = stop.abandon.clone();
    let drain = config.pipeline.drain_timeout + Duration::from_secs(5);
    let watchdog = tokio::spawn(async move {
        tokio::time::sleep(drain).await;
        hard.cancel();
    });
    // Closing the consumer (the last handle drops as the poll thread ends) waits for the
    // broker, without a limit of librdkafka's: bound it, and leave a stuck thread behind.
    let close = config.pipeline.close_timeout;
    let closed = tokio::time::timeout(drain + close, closed_rx).await;
    watchdog.abort();
    match closed {
        Ok(Ok(true)) => {}
        Ok(Ok(false) | Err(_)) => stop.fatal("poll thread panicked".into()),
        Err(_) => {
            let reason = format!(
                "the consumer did not close within pipeline.close_timeout ({close:?}) after the \
                 drain: the broker is not answering; records whose commit did not complete \
                 will be redelivered"
            );
            // Logged even when an earlier fatal error is the one reported.
            error!(%reason, "consumer close timed out");
            stop.fatal(reason);
        }
    }
    let flush_core = core.clone();
    let _ = tokio::task::spawn_blocking(move || flush_core.producer.flush(Duration::from_secs(10)))
        .await;
    telemetry_stop.cancel();
    let _ = telemetry_task.await;
    match stop.fatal_reason() {
        Some(reason) => {
            health.set_fatal(reason.clone());
            Err(RuntimeError::Fatal(reason))
        }
        None => {
            info!(processor = %name, "stopped cleanly");
            Ok(())
        }
    }
}

/// Makes sure input, DLQ and output topics exist (creating them when configured to).
async fn check_topics<S: Stateful, A: Section>(
    config: &Config<A>,
    processor: &S,
) -> Result<(), RuntimeError> {
    let mut topics: Vec<String> = Vec::new();
    for input in &config.pipeline.inputs {
        topics.push(input.clone());
        topics.push(format!("{input}{}", config.pipeline.dlq_suffix));
    }
    topics.extend(processor.output_topics());
    topics.sort();
    topics.dedup();
    let kafka = config.kafka.clone();
    if config.pipeline.create_topics {
        let dlq_suffix = config.pipeline.dlq_suffix.as_str();
        let dlqs: Vec<String> = config
            .pipeline
            .inputs
            .iter()
            .map(|i| format!("{i}{dlq_suffix}"))
            .collect();
        let specs: Vec<topics::TopicSpec> = topics
            .iter()
            .map(|t| topics::TopicSpec {
                name: t.clone(),
                partitions: processor
                    .partitions_for(t)
                    .unwrap_or(config.pipeline.topic_partitions),
                role: if dlqs.contains(t) {
                    topics::TopicRole::DeadLetters
                } else {
                    processor.topic_role(t)
                },
            })
            .collect();
        topics::ensure_topics(&kafka, &specs, Duration::from_secs(10))
            .await
            .map_err(|e| StartupError::new("creating topics", e))?;
    }
    let missing = tokio::task::spawn_blocking(move || {
        kafka::missing_topics(&kafka, &topics, Duration::from_secs(10))
    })
    .await
    .map_err(|e| StartupError::new("checking topics", e))?
    .map_err(|e| StartupError::new(format!("broker {}", config.kafka.brokers), e))?;
    if !missing.is_empty() {
        return Err(StartupError::plain(format!(
            "missing topics: {} (create them, or set pipeline.create_topics = true)",
            missing.join(", ")
        ))
        .into());
    }
    let history: Vec<String> = processor
        .history_topics()
        .into_iter()
        .filter(|t| !config.pipeline.accept_truncated_history.contains(t))
        .collect();
    let problems = topics::history_problems(&config.kafka, &history, Duration::from_secs(10))
        .await
        .map_err(|e| StartupError::new("checking the history topics", e))?;
    if problems.is_empty() {
        Ok(())
    } else {
        Err(StartupError::plain(topics::refusal(
            &problems,
            "pipeline.accept_truncated_history = [\"TOPIC\"]",
        ))
        .into())
    }
}

/// Probes the broker and the registry every `interval` until `stop`, and measures the lag of
/// paused partitions (librdkafka's statistics don't). It holds the consumer only while probing, so the poll thread closes it (see `pipeline::poll_thread`).
async fn readiness(
    consumer: std::sync::Weak<BaseConsumer<ConsumerCtx>>,
    state: Arc<PollState>,
    topic: String,
    registry: Arc<Registry>,
    health: Arc<Health>,
    interval: Duration,
    stop: CancellationToken,
) {
    loop {
        if stop.is_cancelled() {
            return;
        }
        let Some(c) = consumer.upgrade() else {
            return;
        };
        let t = topic.clone();
        // Metadata of one input topic: cheap even on a cluster with many topics.
        let lags = state.clone();
        let broker = tokio::task::spawn_blocking(move || {
            let up = c.fetch_metadata(Some(&t), Duration::from_secs(3)).is_ok();
            if up {
                lags.paused_lag(&c);
            }
            up
        })
        .await
        .unwrap_or(false);
        health.report("broker", broker, "does not answer metadata requests");
        let registry_ok = registry.subjects().await.is_ok();
        health.report("registry", registry_ok, "does not answer");
        let r = health.readiness();
        state.metrics.ready.set(i64::from(r.ready));
        if !broker || !registry_ok {
            warn!(broker, registry = registry_ok, "not ready");
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// Exit code for a configuration error.
pub const EXIT_CONFIG: u8 = 2;
/// Exit code for a startup or fatal error.
pub const EXIT_FATAL: u8 = 1;

/// The whole `main` of a processor binary: parse `--config`, load and validate the
/// configuration (a bad one prints one line and exits 2 before any network call), set up logs,
/// build the processor, run until SIGTERM/SIGINT, and map the outcome to an exit code.
pub fn main_with<A, P>(build: impl FnOnce(&Config<A>) -> Result<P, ConfigError>) -> ExitCode
where
    A: Section,
    P: Processor,
{
    main_with_extras(|config: &mut Config<A>| build(config).map(|p| (p, Extras::default())))
}

/// What a processor binary serves and starts besides its processor.
#[derive(Default)]
pub struct Extras {
    /// Routes served on the telemetry port next to `/metrics` (admin endpoints).
    pub routes: axum::Router,
    /// Called inside the async runtime once the pipeline has started (spawn watchers here).
    pub on_start: Option<Box<dyn FnOnce(Running) + Send>>,
}

impl std::fmt::Debug for Extras {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Extras")
            .field("on_start", &self.on_start.is_some())
            .finish_non_exhaustive()
    }
}

/// [`main_with`] for processors that adjust their configuration (add inputs, say), serve admin
/// routes or start background tasks: `build` may change the loaded configuration, which is
/// validated again afterwards.
pub fn main_with_extras<A, P>(
    build: impl FnOnce(&mut Config<A>) -> Result<(P, Extras), ConfigError>,
) -> ExitCode
where
    A: Section,
    P: Processor,
{
    main_core(
        |config: &mut Config<A>| build(config).map(|(p, extras)| (Stateless(p), extras)),
        false,
    )
}

/// [`main_with`] for a [`Stateful`] processor.
pub fn main_stateful<A, S>(build: impl FnOnce(&Config<A>) -> Result<S, ConfigError>) -> ExitCode
where
    A: Section,
    S: Stateful,
{
    main_core(
        |config: &mut Config<A>| build(config).map(|s| (s, Extras::default())),
        false,
    )
}

/// [`main_stateful`] for processors that adjust their configuration (their inputs, say), serve
/// admin routes or start background tasks, as [`main_with_extras`] does for stateless ones.
/// `pipeline.inputs` may be left empty for `build` to fill; the whole configuration is checked
/// again after it.
pub fn main_stateful_with<A, S>(
    build: impl FnOnce(&mut Config<A>) -> Result<(S, Extras), ConfigError>,
) -> ExitCode
where
    A: Section,
    S: Stateful,
{
    main_core(build, true)
}

fn main_core<A, S>(
    build: impl FnOnce(&mut Config<A>) -> Result<(S, Extras), ConfigError>,
    inputs_from_build: bool,
) -> ExitCode
where
    A: Section,
    S: Stateful,
{
    let args = match cli::args(&program_name(), "the docs/ folder") {
        Ok(a) => a,
        Err(code) => return code,
    };
    let loaded = Config::<A>::load_with_role(
        args.config.as_deref(),
        config::environment(),
        args.role.as_deref(),
    )
    .and_then(|c| {
        if inputs_from_build {
            c.validate_but_inputs()?;
        } else {
            c.validate()?;
        }
        Ok(c)
    });
    let mut config = match cli::config_or_exit(loaded) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let built = build(&mut config).and_then(|built| {
        config.validate()?;
        Ok(built)
    });
    let (processor, extras) = match cli::config_or_exit(built) {
        Ok(p) => p,
        Err(code) => return code,
    };
    if let Some(code) = cli::check_only_exit(&args) {
        return code;
    }
    telemetry::init_logging(&config.telemetry);
    let runtime = match cli::runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    let Extras { routes, on_start } = extras;
    let started = move |running: Running| {
        if let Some(f) = on_start {
            f(running);
        }
    };
    match runtime.block_on(run_stateful_until(
        &config,
        processor,
        routes,
        shutdown_signal(),
        started,
    )) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let e = eip_schemas::chain(&e);
            error!(error = %e, "processor stopped");
            eprintln!("{e}");
            ExitCode::from(EXIT_FATAL)
        }
    }
}

/// This binary's file name, for its usage line.
fn program_name() -> String {
    std::env::args()
        .next()
        .as_deref()
        .map(std::path::Path::new)
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "eip".into())
}
