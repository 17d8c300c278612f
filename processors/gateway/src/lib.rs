//! # eip-gateway
//!
//! The HTTP protocol adapter: producers that can't speak Kafka and Avro `POST` a record as
//! JSON, XML or Avro binary to `/v1/records/{type}`; the gateway validates it against the
//! catalog schema of that type, encodes it Confluent-framed with the type's registry id,
//! produces it idempotently to the topic `gateway.routes` names, and answers **only after the
//! broker acknowledged it** (202 with topic, partition and offset). A client that got a 202
//! knows the record is durable; a client that got anything else knows it was not accepted
//! and the error body says why.
//!
//! - Bad input is a 4xx with field-level reasons ([`eip_schemas::convert`]); the pipeline
//!   behind never sees it.
//! - Backpressure is a 429 with `Retry-After`: the in-flight budget (`gateway.max_in_flight`)
//!   or librdkafka's local queue is full. Nothing waits unboundedly in memory.
//! - An unavailable broker or registry is a 503 with `Retry-After`: the request may succeed
//!   later, unchanged.
//! - `/healthz`, `/readyz`, `/metrics` and `/openapi.json` are served on the same port.
//!
//! [`serve`] runs the server inside an existing tokio runtime (tests and benchmarks embed it);
//! [`main_entry`] is the whole `gateway` binary. See docs/gateway.md.

pub mod config;
mod http;
pub mod metrics;
mod query;
mod readiness;
mod shared;

use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use eip_runtime::{RuntimeError, StartupError};
use eip_schemas::Registry;
use rdkafka::producer::{FutureProducer, Producer};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

pub use config::{GatewayConfig, GatewaySettings, TelemetrySettings};
pub use metrics::GatewayMetrics;

/// The OpenAPI 3.0 document of the gateway (`docs/openapi.json`), served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("../../../docs/openapi.json");

/// The exit codes every eip binary uses: 2 for configuration, 1 for startup or server errors.
pub use eip_runtime::{EXIT_CONFIG, EXIT_FATAL};

/// Why the gateway could not start, or stopped with an error: the runtime's error, as every
/// eip binary reports it (configuration, startup, or a server that failed while running).
pub type GatewayError = RuntimeError;

/// A running gateway, as returned by [`serve`].
pub type Serving = (SocketAddr, JoinHandle<Result<(), GatewayError>>);

/// Starts the gateway inside the current tokio runtime and returns the bound address (useful
/// with port 0) and the server task. When `shutdown` completes the gateway stops accepting
/// connections, reports not ready, lets in-flight requests finish (up to
/// `gateway.drain_timeout`), flushes the producer, and the task ends with `Ok(())`.
///
/// The configuration is validated first; no network call happens before that. The broker and
/// the registry need not be reachable at startup: until they are, `/readyz` says not ready
/// and records are answered 503.
pub async fn serve(
    config: GatewayConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Serving, GatewayError> {
    config.validate()?;
    let metrics = GatewayMetrics::new().map_err(|e| StartupError::new("metrics", e))?;
    let registry =
        Registry::new(config.registry.settings()).map_err(|e| StartupError::new("registry", e))?;
    let mut producer_config = eip_runtime::kafka::producer_config(&config.kafka);
    if !config
        .kafka
        .producer_properties
        .contains_key("message.timeout.ms")
    {
        // The runtime waits forever for a broker; an HTTP client can't, so a record gets
        // `gateway.delivery_timeout` to be acknowledged, then the request is answered 503.
        producer_config.set(
            "message.timeout.ms",
            config.gateway.delivery_timeout.as_millis().to_string(),
        );
    }
    let producer: FutureProducer = producer_config
        .create()
        .map_err(|e| StartupError::new("kafka producer", e))?;
    let shared = Arc::new(shared::Shared::new(
        &config,
        Arc::new(registry),
        producer.clone(),
        metrics,
    )?);
    let listen = config.gateway.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| StartupError::new(format!("gateway.listen {listen}"), e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| StartupError::new(format!("gateway.listen {listen}"), e))?;

    let stop = CancellationToken::new();
    tokio::spawn(readiness::readiness_loop(
        shared.clone(),
        config.telemetry.readiness_interval,
        stop.clone(),
    ));
    let app = http::router(shared.clone());
    let drain_timeout = config.gateway.drain_timeout;
    let signal_stop = stop.clone();
    let signal_shared = shared.clone();
    let task = tokio::spawn(async move {
        let server = axum::serve(listener, app).with_graceful_shutdown(async move {
            shutdown.await;
            info!("shutdown requested: draining in-flight requests");
            signal_shared.set_stopping();
            signal_stop.cancel();
        });
        let server = std::future::IntoFuture::into_future(server);
        let mut server = std::pin::pin!(server);
        let drained = async {
            stop.cancelled().await;
            tokio::time::sleep(drain_timeout).await;
        };
        let outcome = tokio::select! {
            served = &mut server => served.map_err(|e| RuntimeError::server("serving HTTP", e)),
            () = drained => {
                warn!(timeout = ?drain_timeout, "drain timeout: stopping with requests in flight");
                Ok(())
            }
        };
        stop.cancel();
        let flushed =
            tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(10))).await;
        match flushed {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "producer flush incomplete"),
            Err(e) => warn!(error = %e, "producer flush task failed"),
        }
        match &outcome {
            Ok(()) => info!("gateway stopped cleanly"),
            Err(e) => error!(error = %e, "gateway stopped"),
        }
        outcome
    });
    info!(listen = %addr, routes = ?config.gateway.routes, "gateway started");
    Ok((addr, task))
}

/// The whole `gateway` binary: parse `--config FILE` / `--check-config`, load and validate
/// the configuration (a bad one prints one line naming the key and exits 2 before any
/// network call), set up JSON logs, serve until SIGTERM or SIGINT, drain, exit 0.
pub fn main_entry() -> ExitCode {
    let args = match eip_runtime::cli::args("gateway", "docs/gateway.md") {
        Ok(a) => a,
        Err(code) => return code,
    };
    let config = match eip_runtime::cli::config_or_exit(GatewayConfig::load(args.config.as_deref()))
    {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Some(code) = eip_runtime::cli::check_only_exit(&args) {
        return code;
    }
    eip_runtime::telemetry::init_logging(&config.telemetry.logging());
    let runtime = match eip_runtime::cli::runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    let outcome = runtime.block_on(async {
        let (_, task) = serve(config, eip_runtime::shutdown_signal()).await?;
        task.await
            .map_err(|e| RuntimeError::server("server task", e))?
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(GatewayError::Config(e)) => {
            eprintln!("{e}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(e) => {
            let e = eip_schemas::chain(&e);
            error!(error = %e, "gateway failed");
            eprintln!("{e}");
            ExitCode::from(EXIT_FATAL)
        }
    }
}
