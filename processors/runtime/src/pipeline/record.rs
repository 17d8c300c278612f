//! One record's (or timer's) handling, step by step, as a partition's worker runs it inside a
//! batch: its trace context and correlation id, decode and process (transient errors retried
//! in place), encode (retried alone), its outputs handed to the producer under the batch's
//! tag, or its dead letter.

use std::sync::Arc;

use bytes::Bytes;
use eip_schemas::{Classify, ErrorClass};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, warn};

use crate::processor::{Envelope, Output, ProcessError, Record};
use crate::stateful::{Effects, Stateful, TimerChange, now_ms};
use crate::trace::{CORRELATION_ID, TRACEPARENT, TraceContext};

use super::ack::Tally;
use super::batch::Outgoing;
use super::deliver::*;
use super::worker::{Work, contained};
use super::*;

/// One record's (or timer's) handling, as the steps below share it.
pub(super) struct Step<'a, S: Stateful> {
    pub(super) core: &'a Arc<Core<S>>,
    pub(super) record: &'a Record,
    /// Its index in the batch, which its deliveries' tags carry.
    pub(super) index: usize,
    pub(super) outgoing: &'a Outgoing,
    pub(super) cancel: &'a CancellationToken,
}

impl<S: Stateful> Clone for Step<'_, S> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<S: Stateful> Copy for Step<'_, S> {}

/// Why a step did not finish.
enum Failure {
    /// The partition must stop (abandoned, or a fatal error recorded).
    Stop,
    /// The record failed for good: dead-letter it (or stop, if the class is fatal).
    Failed(ErrorClass, ProcessError),
}

/// Handles one record or timer, step by step: its context, decode and process (retrying
/// transient errors in place), encode (retried alone), then its outputs handed to the
/// producer, or its dead letter. Returns its timer changes, or `None` when the partition must
/// stop (the record is left uncommitted).
pub(super) async fn handle<S: Stateful>(
    step: Step<'_, S>,
    state: &mut S::State,
    work: &Work,
    tally: &mut Tally,
) -> Option<Vec<TimerChange>> {
    let (trace, correlation_id) = context_of(step.record);
    // A span per record only at `debug`: at `info`, the batch's span is the one.
    let span = tracing::debug_span!(
        "record",
        offset = step.record.position.offset,
        trace_id = %trace.trace_id_hex(),
        span_id = %trace.span_id_hex(),
        correlation_id = %correlation_id,
    );
    let mut tries = Tries::default();
    let processed = process(step, state, work, trace, &correlation_id, &mut tries)
        .instrument(span.clone())
        .await;
    let mut effects = match processed {
        Ok(effects) => effects,
        Err(failure) => {
            let context = (&trace, &*correlation_id);
            return give_up(step, context, work, failure, &tries, tally)
                .await
                .map(|()| Vec::new());
        }
    };
    // Once `process` succeeded its state change stands, whatever happens to the outputs: its
    // timer changes stand with it, even if the record ends in the DLQ.
    let timers = std::mem::take(&mut effects.timers);
    let sent = async {
        let payloads = encode(step, &trace, &effects.outputs, &mut tries).await?;
        let outputs = std::mem::take(&mut effects.outputs);
        send_outputs(step, outputs, payloads, trace, &correlation_id, tally).await
    }
    .instrument(span)
    .await;
    match sent {
        Ok(()) => Some(timers),
        Err(failure) => {
            let context = (&trace, &*correlation_id);
            give_up(step, context, work, failure, &tries, tally)
                .await
                .map(|()| timers)
        }
    }
}

/// A record's trace context (from its `traceparent`, or a new trace) and correlation id (from
/// its header, or a new one).
fn context_of(record: &Record) -> (TraceContext, Arc<str>) {
    let trace = record
        .headers
        .get(TRACEPARENT)
        .and_then(TraceContext::parse)
        .unwrap_or_else(TraceContext::new_root);
    let correlation_id: Arc<str> = match record.headers.get_str(CORRELATION_ID) {
        Some(c) if !c.is_empty() => c.into(),
        _ => uuid::Uuid::new_v4().to_string().into(),
    };
    (trace, correlation_id)
}

/// Attempts at a record so far, and when the first failed.
#[derive(Debug, Default)]
pub(super) struct Tries {
    pub(super) count: u32,
    pub(super) first_failure: Option<time::OffsetDateTime>,
}

impl Tries {
    fn failed(&mut self) {
        self.first_failure
            .get_or_insert_with(time::OffsetDateTime::now_utc);
    }
}

/// Waits out the backoff before retrying a transient failure in place; `Err(Stop)` if the
/// partition is abandoned or the process halts meanwhile.
async fn retry_after<S: Stateful>(
    step: Step<'_, S>,
    trace: &TraceContext,
    tries: &Tries,
    e: &ProcessError,
) -> Result<(), Failure> {
    let core = step.core;
    let position = &step.record.position;
    core.metrics
        .retried
        .with_label_values(&[core.name.as_str(), &position.topic])
        .inc();
    let delay = backoff(&core.pipeline.retry, tries.count);
    warn!(
        topic = %position.topic,
        partition = position.partition,
        offset = position.offset,
        trace_id = %trace.trace_id_hex(),
        error = %e.chain(),
        attempt = tries.count,
        retry_in_ms = delay.as_millis() as u64,
        "transient error: retrying in place"
    );
    if wait_or_stop(delay, step.cancel, Some(&core.stop.halt)).await {
        Ok(())
    } else {
        Err(Failure::Stop)
    }
}

/// Decodes and processes a record (or runs a timer's handler), retried as a whole on a
/// transient error: the processor left its state as it was.
async fn process<S: Stateful>(
    step: Step<'_, S>,
    state: &mut S::State,
    work: &Work,
    trace: TraceContext,
    correlation_id: &Arc<str>,
    tries: &mut Tries,
) -> Result<Effects, Failure> {
    let (core, record) = (step.core, step.record);
    loop {
        tries.count += 1;
        let mut effects = Effects::at(now_ms());
        let result = match work {
            Work::Record => {
                async {
                    let input =
                        contained(core, "decode", core.processor.decode(&core.codec, record))
                            .await?;
                    let envelope = Envelope {
                        value: input,
                        key: record.key.clone(),
                        headers: record.headers.clone(),
                        position: record.position.clone(),
                        trace,
                        correlation_id: correlation_id.clone(),
                    };
                    contained(
                        core,
                        "process",
                        core.processor.process(state, envelope, &mut effects),
                    )
                    .await
                }
                .await
            }
            Work::Timer(timer) => {
                contained(
                    core,
                    "timer",
                    core.processor.on_timer(state, timer.clone(), &mut effects),
                )
                .await
            }
        };
        match result {
            Ok(()) => return Ok(effects),
            Err(e) => {
                tries.failed();
                match e.class() {
                    ErrorClass::Transient => retry_after(step, &trace, tries, &e).await?,
                    class => return Err(Failure::Failed(class, e)),
                }
            }
        }
    }
}

/// Encodes the outputs, retried alone: a registry that is down must not run `process` (and
/// its effects) again.
async fn encode<S: Stateful>(
    step: Step<'_, S>,
    trace: &TraceContext,
    outputs: &[Output],
    tries: &mut Tries,
) -> Result<Vec<Option<Bytes>>, Failure> {
    if outputs.is_empty() {
        return Ok(Vec::new());
    }
    loop {
        match encode_payloads(&step.core.codec, outputs).await {
            Ok(payloads) => return Ok(payloads),
            Err(e) => {
                tries.failed();
                match e.class() {
                    ErrorClass::Transient => {
                        tries.count += 1;
                        retry_after(step, trace, tries, &e).await?;
                    }
                    class => return Err(Failure::Failed(class, e)),
                }
            }
        }
    }
}

/// Hands a record's outputs to the producer, each with the trace context of a child span and
/// the record's correlation id unless it set its own.
async fn send_outputs<S: Stateful>(
    step: Step<'_, S>,
    outputs: Vec<Output>,
    payloads: Vec<Option<Bytes>>,
    trace: TraceContext,
    correlation_id: &str,
    tally: &mut Tally,
) -> Result<(), Failure> {
    if outputs.is_empty() {
        return Ok(());
    }
    let child = Bytes::copy_from_slice(&trace.child().header_bytes());
    let correlation = Bytes::copy_from_slice(correlation_id.as_bytes());
    let tag = step.outgoing.tag(step.index, false);
    for mut out in encoded(outputs, payloads) {
        if out.headers.get(TRACEPARENT).is_none() {
            out.headers.push(TRACEPARENT, child.clone());
        }
        if out.headers.get(CORRELATION_ID).is_none() {
            out.headers.push(CORRELATION_ID, correlation.clone());
        }
        let sent = send_output(
            step.core,
            step.record,
            out,
            true,
            step.outgoing,
            tag,
            step.cancel,
        )
        .await;
        match sent {
            Ok(topic) => tally.output(topic),
            Err((_, SendError::Abandoned)) => return Err(Failure::Stop),
            Err((topic, SendError::Permanent(code))) => {
                let reason = code.to_string();
                // The output can't ever be produced (too large, say): the input is poison.
                let reason = format!("producing to {topic} failed: {reason}");
                return Err(Failure::Failed(
                    ErrorClass::Poison,
                    ProcessError::poison(reason),
                ));
            }
            Err((topic, SendError::Fatal(reason) | SendError::Refused(reason))) => {
                step.core
                    .stop
                    .fatal(format!("producing to {topic}: {reason}"));
                return Err(Failure::Stop);
            }
        }
    }
    Ok(())
}

/// A record that failed for good: a fatal error stops the processor; anything else is
/// dead-lettered. `None` when the partition must stop.
async fn give_up<S: Stateful>(
    step: Step<'_, S>,
    context: (&TraceContext, &str),
    work: &Work,
    failure: Failure,
    tries: &Tries,
    tally: &mut Tally,
) -> Option<()> {
    let (class, e) = match failure {
        Failure::Stop => return None,
        Failure::Failed(class, e) => (class, e),
    };
    let (core, record) = (step.core, step.record);
    if class == ErrorClass::Fatal {
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
    if let Work::Timer(timer) = work {
        info!(key = ?timer.key, "a timer's handler failed for good: dead-lettering a record of the timer");
    }
    let tag = step.outgoing.tag(step.index, true);
    let info = dead_letter(
        core,
        record,
        context,
        class,
        &e.chain(),
        tries,
        step.outgoing,
        tag,
        step.cancel,
    )
    .await?;
    tally.dead_letters.push((step.index, info));
    Some(())
}
