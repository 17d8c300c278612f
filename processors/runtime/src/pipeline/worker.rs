//! A partition's worker: decode, process and encode each record in offset order, retry
//! transient errors in place, and hand outputs to the producer for the acker.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Instant;

use bytes::Bytes;
use eip_schemas::{Classify, ErrorClass};
use futures_util::FutureExt as _;
use rdkafka::consumer::BaseConsumer;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, warn};

use crate::processor::{Envelope, ProcessError, Processor, Record};
use crate::trace::{CORRELATION_ID, TRACEPARENT, TraceContext};

use super::deliver::*;
use super::*;

pub(super) fn spawn_partition<P: Processor>(
    key: PartitionKey,
    consumer: Arc<BaseConsumer<ConsumerCtx>>,
    core: Arc<Core<P>>,
    runtime: &tokio::runtime::Handle,
) -> PartitionHandle {
    let (tx, rx) = mpsc::unbounded_channel();
    let (ack_tx, ack_rx) = mpsc::unbounded_channel();
    let (done_tx, done) = std::sync::mpsc::channel();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let cancel = core.stop.abandon.child_token();
    runtime.spawn(worker(core.clone(), rx, ack_tx, cancel.clone()));
    runtime.spawn(acker(
        core,
        key,
        consumer,
        ack_rx,
        in_flight.clone(),
        cancel.clone(),
        done_tx,
    ));
    PartitionHandle {
        tx,
        in_flight,
        done,
        cancel,
        paused: false,
        stash: Vec::new(),
    }
}

pub(super) async fn worker<P: Processor>(
    core: Arc<Core<P>>,
    mut rx: mpsc::UnboundedReceiver<Vec<Record>>,
    acks: mpsc::UnboundedSender<Ack>,
    cancel: CancellationToken,
) {
    let mut consumed_topic: Option<(Arc<str>, prometheus::IntCounter, prometheus::Histogram)> =
        None;
    let halt = core.stop.halt.clone();
    while let Some(batch) = rx.recv().await {
        for record in batch {
            if cancel.is_cancelled() || halt.is_cancelled() {
                return;
            }
            let (consumed, latency) = match &consumed_topic {
                Some((t, c, h)) if *t == record.position.topic => (c.clone(), h.clone()),
                _ => {
                    let t = record.position.topic.clone();
                    let c = core
                        .metrics
                        .consumed
                        .with_label_values(&[core.name.as_str(), &t]);
                    let h = core
                        .metrics
                        .processing
                        .with_label_values(&[core.name.as_str(), &t]);
                    consumed_topic = Some((t, c.clone(), h.clone()));
                    (c, h)
                }
            };
            consumed.inc();
            let started = Instant::now();
            let Some(ack) = handle(&core, record, &cancel).await else {
                return;
            };
            latency.observe(started.elapsed().as_secs_f64());
            if acks.send(ack).is_err() {
                return;
            }
        }
    }
}

/// Decodes, processes and hands one record's outputs to the producer. Returns `None` when the
/// partition must stop (fatal error or abandoned); the record is then left uncommitted.
/// Runs one stage of a record (`decode` or `process`) and contains a panic in it: the record
/// becomes poison (dead-lettered with the panic's message), the panic is counted in
/// `eip_panics_total` and in `/healthz`, and the partition goes on with its next record.
/// A stateless processor has nothing a panic could leave half-changed, so going on is safe.
async fn contained<P: Processor, T>(
    core: &Core<P>,
    stage: &'static str,
    run: impl Future<Output = Result<T, ProcessError>>,
) -> Result<T, ProcessError> {
    match std::panic::AssertUnwindSafe(run).catch_unwind().await {
        Ok(result) => result,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a non-text panic payload".into());
            core.metrics
                .panics
                .with_label_values(&[core.name.as_str(), stage])
                .inc();
            core.health.record_panic();
            error!(stage, panic = %message, "the processor panicked: dead-lettering the record");
            Err(ProcessError::poison(format!("{stage} panicked: {message}")))
        }
    }
}

pub(super) async fn handle<P: Processor>(
    core: &Arc<Core<P>>,
    record: Record,
    cancel: &CancellationToken,
) -> Option<Ack> {
    let trace = record
        .headers
        .get(TRACEPARENT)
        .and_then(TraceContext::parse)
        .unwrap_or_else(TraceContext::new_root);
    let correlation_id: Arc<str> = match record.headers.get_str(CORRELATION_ID) {
        Some(c) if !c.is_empty() => c.into(),
        _ => uuid::Uuid::new_v4().to_string().into(),
    };
    let span = tracing::info_span!(
        "process",
        topic = %record.position.topic,
        partition = record.position.partition,
        offset = record.position.offset,
        trace_id = %trace.trace_id_hex(),
        span_id = %trace.span_id_hex(),
        correlation_id = %correlation_id,
    );
    let mut attempts: u32 = 0;
    let mut first_failure: Option<time::OffsetDateTime> = None;
    let outcome = loop {
        attempts += 1;
        let attempt = async {
            let input =
                contained(core, "decode", core.processor.decode(&core.codec, &record)).await?;
            let envelope = Envelope {
                value: input,
                key: record.key.clone(),
                headers: record.headers.clone(),
                position: record.position.clone(),
                trace,
                correlation_id: correlation_id.clone(),
            };
            let outputs = contained(core, "process", core.processor.process(envelope)).await?;
            encode_outputs(&core.codec, outputs).await
        }
        .instrument(span.clone())
        .await;
        match attempt {
            Ok(encoded) => break Ok(encoded),
            Err(e) => {
                first_failure.get_or_insert_with(time::OffsetDateTime::now_utc);
                match e.class() {
                    ErrorClass::Transient => {
                        core.metrics
                            .retried
                            .with_label_values(&[core.name.as_str(), &record.position.topic])
                            .inc();
                        let delay = backoff(&core.pipeline.retry, attempts);
                        warn!(
                            parent: &span,
                            error = %e.chain(),
                            attempt = attempts,
                            retry_in_ms = delay.as_millis() as u64,
                            "transient error: retrying in place"
                        );
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => continue,
                            _ = cancel.cancelled() => return None,
                            _ = core.stop.halt.cancelled() => return None,
                        }
                    }
                    class => break Err((class, e)),
                }
            }
        }
    };
    let mut deliveries = Vec::new();
    match outcome {
        Ok(encoded) => {
            let child = trace.child().to_header();
            for out in encoded {
                let mut out = out;
                if out.headers.get(TRACEPARENT).is_none() {
                    out.headers.push(TRACEPARENT, child.clone());
                }
                if out.headers.get(CORRELATION_ID).is_none() {
                    out.headers.push(
                        CORRELATION_ID,
                        Bytes::copy_from_slice(correlation_id.as_bytes()),
                    );
                }
                match send_output(core, &record, out, true, cancel).await {
                    Ok((topic, f)) => deliveries.push((Delivery::Output(topic), f)),
                    Err((topic, SendError::Abandoned)) => {
                        let _ = topic;
                        return None;
                    }
                    Err((topic, SendError::Permanent(reason))) => {
                        // The output can't ever be produced (too large, say): the input is poison.
                        deliveries.clear();
                        let reason = format!("producing to {topic} failed: {reason}");
                        return dead_letter(
                            core,
                            record,
                            ErrorClass::Poison,
                            &reason,
                            attempts,
                            first_failure,
                            cancel,
                        )
                        .instrument(span)
                        .await;
                    }
                    Err((topic, SendError::Fatal(reason) | SendError::Refused(reason))) => {
                        core.stop.fatal(format!("producing to {topic}: {reason}"));
                        return None;
                    }
                }
            }
        }
        Err((ErrorClass::Fatal, e)) => {
            core.stop.fatal(format!(
                "{} at {}[{}]@{}: {}",
                core.name,
                record.position.topic,
                record.position.partition,
                record.position.offset,
                e.chain()
            ));
            return None;
        }
        Err((class, e)) => {
            return dead_letter(
                core,
                record,
                class,
                &e.chain(),
                attempts,
                first_failure,
                cancel,
            )
            .instrument(span)
            .await;
        }
    }
    Some(Ack { record, deliveries })
}
