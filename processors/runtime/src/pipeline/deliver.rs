//! Deliveries: handing outputs and dead letters to the idempotent producer under a batch's
//! [`Tag`], and the slow path that sends a failed delivery again, redirects it or
//! dead-letters its input, one delivery at a time.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use eip_schemas::{Codec, ErrorClass};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::dlq;
use crate::processor::{DeliveryFailure, Output, Payload, ProcessError, Record, Redirect};
use crate::stateful::Stateful;
use crate::trace::{CORRELATION_ID, TRACEPARENT, TraceContext};

use super::batch::{Failed, Outgoing, Tag};
use super::dead_letter::*;
use super::record::Tries;
use super::*;

pub(super) enum SendError {
    Abandoned,
    /// The producer refused the record for good (too large, say).
    Permanent(RDKafkaErrorCode),
    /// The producer refused the record for now (its topic is not known to exist).
    Refused(String),
    Fatal(String),
}

/// Hands one output to the producer under `tag`. When the producer refuses it for now (its
/// topic does not exist), the processor decides: try again after a backoff, or produce
/// something else instead. Returns the topic it went to.
pub(super) async fn send_output<S: Stateful>(
    core: &Core<S>,
    source: &Record,
    out: Encoded,
    redirectable: bool,
    batch: &Outgoing,
    tag: Tag,
    cancel: &CancellationToken,
) -> Result<Arc<str>, (Arc<str>, SendError)> {
    let mut out = out;
    let mut attempts: u32 = 0;
    loop {
        let sent = send(core, batch, tag, &out, cancel).await;
        let error = match sent {
            Ok(()) => return Ok(out.topic),
            Err(SendError::Refused(e)) => e,
            Err(other) => return Err((out.topic, other)),
        };
        attempts += 1;
        count_retry(core, source);
        let failure = DeliveryFailure {
            source,
            topic: &out.topic,
            key: out.key.as_deref(),
            payload: out.payload.as_deref(),
            headers: out.headers.clone(),
            error: error.clone(),
            attempts,
        };
        let decision = if redirectable {
            core.processor.on_delivery_failure(&failure)
        } else {
            Redirect::Again
        };
        match decision {
            Redirect::Again => {
                let delay = backoff(&core.pipeline.retry, attempts);
                warn!(error = %error, topic = %out.topic, attempt = attempts, retry_in_ms = delay.as_millis() as u64, "producer refused the record: sending again");
                if !wait_or_stop(delay, cancel, Some(&core.stop.halt)).await {
                    return Err((out.topic, SendError::Abandoned));
                }
            }
            Redirect::To(redirect) => {
                info!(error = %error, from = %out.topic, to = %redirect.topic, "producer refused the record: redirected");
                out = encode_redirect(&core.codec, &out.topic, redirect).await?;
                attempts = 0;
            }
        }
    }
}

fn count_retry<S: Stateful>(core: &Core<S>, source: &Record) {
    core.metrics
        .retried
        .with_label_values(&[core.name.as_str(), &source.position.topic])
        .inc();
}

/// Encodes a redirect; a redirect that can't be encoded is a processor bug, so fatal.
pub(super) async fn encode_redirect(
    codec: &Codec,
    from: &Arc<str>,
    redirect: Output,
) -> Result<Encoded, (Arc<str>, SendError)> {
    let to = redirect.topic.clone();
    let redirect = vec![redirect];
    let payloads = encode_payloads(codec, &redirect).await.map_err(|e| {
        (
            from.clone(),
            SendError::Fatal(format!("redirect to {to} could not be encoded: {e}")),
        )
    })?;
    encoded(redirect, payloads).pop().ok_or_else(|| {
        (
            from.clone(),
            SendError::Fatal(format!("redirect to {to} produced nothing")),
        )
    })
}

/// Delivery errors that say "this record can never be produced", as opposed to the broker or
/// the producer being in trouble.
pub(super) fn record_is_unproducible(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidRecord
            | RDKafkaErrorCode::InvalidMessage
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::MessageBatchTooLarge
    )
}

fn unproducible(e: &KafkaError) -> bool {
    e.rdkafka_error_code().is_some_and(record_is_unproducible)
}

/// Hands a record to the producer under `tag`, counted in `batch`, waiting while the
/// producer's queue is full (backpressure). On an error no delivery report will come, so the
/// count is taken back.
pub(super) async fn send<S: Stateful>(
    core: &Core<S>,
    batch: &Outgoing,
    tag: Tag,
    out: &Encoded,
    cancel: &CancellationToken,
) -> Result<(), SendError> {
    let mut headers = OwnedHeaders::new_with_capacity(out.headers.len());
    for (k, v) in out.headers.iter() {
        headers = headers.insert(Header { key: k, value: v });
    }
    let mut record: BaseRecord<'_, [u8], [u8], usize> =
        BaseRecord::with_opaque_to(&out.topic, tag.into_opaque()).headers(headers);
    if let Some(k) = &out.key {
        record = record.key(k);
    }
    if let Some(p) = &out.payload {
        record = record.payload(p);
    }
    // Taken back unless the producer took the record: on an error, or if this future is
    // dropped while it waits for room (an abandoned partition), no report will come.
    let expected = Expected::new(batch);
    let sent = loop {
        match core.producer.send(record) {
            Ok(()) => break Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                if !wait_or_stop(Duration::from_millis(2), cancel, Some(&core.stop.halt)).await {
                    break Err(SendError::Abandoned);
                }
            }
            Err((KafkaError::MessageProduction(code), _)) if record_is_unproducible(code) => {
                break Err(SendError::Permanent(code));
            }
            Err((KafkaError::MessageProduction(code), _))
                if matches!(
                    code,
                    RDKafkaErrorCode::UnknownTopic
                        | RDKafkaErrorCode::UnknownPartition
                        | RDKafkaErrorCode::UnknownTopicOrPartition
                ) =>
            {
                break Err(SendError::Refused(code.to_string()));
            }
            Err((e, _)) => break Err(SendError::Fatal(e.to_string())),
        }
    };
    if sent.is_ok() {
        expected.delivered();
    }
    sent
}

/// One delivery counted in a batch, taken back when dropped unless the producer took it.
struct Expected<'a> {
    batch: &'a Outgoing,
    taken: bool,
}

impl<'a> Expected<'a> {
    fn new(batch: &'a Outgoing) -> Expected<'a> {
        batch.expect();
        Expected {
            batch,
            taken: false,
        }
    }

    /// The producer has it: its delivery report settles the count.
    fn delivered(mut self) {
        self.taken = true;
    }
}

impl Drop for Expected<'_> {
    fn drop(&mut self) {
        if !self.taken {
            self.batch.unexpect();
        }
    }
}

/// How a delivery taken through the slow path ended.
pub(super) enum Settled {
    /// Acknowledged by the broker, by the topic named (a redirect's, if there was one).
    Delivered(Arc<str>),
    /// Refused for good by the topic named: this record can never be produced there.
    Unproducible(Arc<str>, KafkaError),
    /// The partition is abandoned or the process is stopping on a fatal error.
    Stop,
}

/// Sends one record as a batch of its own and waits for its report: `Ok` with the topic it
/// went to, `Err(Some)` with the failure, `Err(None)` when the partition must stop.
async fn deliver_once<S: Stateful>(
    core: &Core<S>,
    source: &Record,
    out: Encoded,
    redirectable: bool,
    cancel: &CancellationToken,
) -> Result<Arc<str>, Option<Failed>> {
    let batch = core.batches.open();
    let tag = batch.tag(0, !redirectable);
    let topic = match send_output(core, source, out, redirectable, &batch, tag, cancel).await {
        Ok(topic) => topic,
        Err((_, SendError::Abandoned)) => return Err(None),
        Err((topic, SendError::Permanent(code))) => {
            // Refused for good before it was sent: the same as a delivery refused for good.
            return Err(Some(Failed {
                tag,
                error: KafkaError::MessageProduction(code),
                topic,
                key: None,
                payload: None,
                headers: Default::default(),
            }));
        }
        Err((to, SendError::Fatal(r) | SendError::Refused(r))) => {
            core.stop.fatal(format!("sending to {to} again: {r}"));
            return Err(None);
        }
    };
    let batch = batch.seal();
    tokio::select! {
        _ = batch.finished() => {}
        _ = cancel.cancelled() => return Err(None),
    }
    match batch.take_failed().pop() {
        None => Ok(topic),
        Some(failed) => Err(Some(failed)),
    }
}

/// Takes a failed delivery through the slow path. A delivery that failed for a reason that
/// may pass (the broker restarting, a leader moving) is sent again with backoff, in place,
/// until it is acknowledged, unless the processor redirects it (`redirectable`, for outputs;
/// never for dead letters): transient errors never dead-letter good data.
pub(super) async fn settle_failed<S: Stateful>(
    core: &Core<S>,
    source: &Record,
    failed: Failed,
    redirectable: bool,
    cancel: &CancellationToken,
) -> Settled {
    let mut failed = failed;
    let mut attempt: u32 = 0;
    loop {
        if unproducible(&failed.error) {
            return Settled::Unproducible(failed.topic, failed.error);
        }
        if let Some((code, reason)) = core.producer.client().fatal_error() {
            core.stop
                .fatal(format!("producer fatal error {code:?}: {reason}"));
            return Settled::Stop;
        }
        attempt += 1;
        count_retry(core, source);
        let redirect = if redirectable {
            core.processor.on_delivery_failure(&DeliveryFailure {
                source,
                topic: &failed.topic,
                key: failed.key.as_deref(),
                payload: failed.payload.as_deref(),
                headers: failed.headers.clone(),
                error: failed.error.to_string(),
                attempts: attempt,
            })
        } else {
            Redirect::Again
        };
        let next = match redirect {
            Redirect::Again => {
                let delay = backoff(&core.pipeline.retry, attempt);
                warn!(error = %failed.error, topic = %failed.topic, attempt, retry_in_ms = delay.as_millis() as u64, "delivery failed: sending again");
                // Only abandonment stops this wait: after a fatal error, what was already
                // produced is still seen through.
                if !wait_or_stop(delay, cancel, None).await {
                    return Settled::Stop;
                }
                Encoded {
                    // The failed message's own topic: a dead letter goes back to the DLQ.
                    topic: failed.topic,
                    key: failed.key,
                    payload: failed.payload,
                    headers: failed.headers,
                }
            }
            Redirect::To(redirect) => {
                info!(error = %failed.error, from = %failed.topic, to = %redirect.topic, "delivery failed: redirected");
                attempt = 0;
                match encode_redirect(&core.codec, &failed.topic, redirect).await {
                    Ok(encoded) => encoded,
                    Err((_, SendError::Fatal(reason))) => {
                        core.stop.fatal(reason);
                        return Settled::Stop;
                    }
                    Err(_) => return Settled::Stop,
                }
            }
        };
        match deliver_once(core, source, next, redirectable, cancel).await {
            Ok(topic) => return Settled::Delivered(topic),
            Err(Some(again)) => failed = again,
            Err(None) => return Settled::Stop,
        }
    }
}

/// Encodes the outputs' payloads without consuming the outputs, so a transient failure (the
/// registry down) can be retried without running `process` again.
pub(super) async fn encode_payloads(
    codec: &Codec,
    outputs: &[Output],
) -> Result<Vec<Option<Bytes>>, ProcessError> {
    let mut payloads = Vec::with_capacity(outputs.len());
    for out in outputs {
        payloads.push(match &out.payload {
            Payload::Bytes(b) => Some(b.clone()),
            Payload::Tombstone => None,
            Payload::Record(r) => {
                let compiled = r.compiled().map_err(eip_schemas::CodecError::from)?;
                let id = codec.registry().id_for(compiled).await?;
                Some(Bytes::from(r.encode(id)?))
            }
            Payload::Value { schema, value } => Some(Bytes::from(
                eip_schemas::codec::encode_value(schema.id, &schema.schema, value)?,
            )),
        });
    }
    Ok(payloads)
}

/// The outputs with their encoded payloads, ready for the producer.
pub(super) fn encoded(outputs: Vec<Output>, payloads: Vec<Option<Bytes>>) -> Vec<Encoded> {
    outputs
        .into_iter()
        .zip(payloads)
        .map(|(out, payload)| Encoded {
            topic: out.topic,
            key: out.key,
            payload,
            headers: out.headers,
        })
        .collect()
}

/// The DLQ topic of a record's input topic.
fn dlq_topic<S: Stateful>(core: &Core<S>, record: &Record) -> Arc<str> {
    format!("{}{}", record.position.topic, core.pipeline.dlq_suffix).into()
}

/// A dead letter without its payload and original headers, for when the broker refused it
/// whole (too large for the DLQ topic, say): a record is never stuck, and never crash-loops
/// the processor, because its dead letter does not fit.
fn reduced<S: Stateful>(
    core: &Core<S>,
    record: &Record,
    info: &DeadLetterInfo,
    refused: &str,
) -> Encoded {
    let topic = dlq_topic(core, record);
    warn!(
        topic = %record.position.topic,
        partition = record.position.partition,
        offset = record.position.offset,
        refused,
        dlq = %topic,
        "dead letter refused: sending it again without its payload and original headers"
    );
    Encoded {
        headers: dlq::reduced_headers(record, &info.failure(&core.name), refused),
        topic,
        key: record.key.clone(),
        payload: None,
    }
}

/// Hands a record's dead letter to the producer under `tag`, in `batch`: the original record
/// with its reason headers, to `<topic><dlq_suffix>`. Returns what it says, for the acker,
/// or `None` when the partition must stop.
#[allow(clippy::too_many_arguments)]
pub(super) async fn dead_letter<S: Stateful>(
    core: &Core<S>,
    record: &Record,
    context: (&TraceContext, &str),
    class: ErrorClass,
    reason: &str,
    tries: &Tries,
    batch: &Outgoing,
    tag: Tag,
    cancel: &CancellationToken,
) -> Option<DeadLetterInfo> {
    let mut info = DeadLetterInfo {
        class,
        reason: reason.to_string(),
        attempts: tries.count,
        first_failure: tries
            .first_failure
            .unwrap_or_else(time::OffsetDateTime::now_utc),
        reduced: false,
    };
    let whole = Encoded {
        topic: dlq_topic(core, record),
        key: record.key.clone(),
        payload: record.payload.clone(),
        headers: dlq::headers(record, &info.failure(&core.name)),
    };
    warn!(
        topic = %record.position.topic,
        partition = record.position.partition,
        offset = record.position.offset,
        trace_id = %context.0.trace_id_hex(),
        correlation_id = context.1,
        class = class.as_str(),
        reason,
        dlq = %whole.topic,
        "record dead-lettered"
    );
    let sent = match send(core, batch, tag, &whole, cancel).await {
        Err(SendError::Permanent(refused)) => {
            info.reduced = true;
            let reduced = reduced(core, record, &info, &refused.to_string());
            send(core, batch, tag, &reduced, cancel).await
        }
        other => other,
    };
    match sent {
        Ok(()) => Some(info),
        Err(SendError::Abandoned) => None,
        Err(SendError::Permanent(code)) => {
            core.stop
                .fatal(format!("dead-lettering to {}: {code}", whole.topic));
            None
        }
        Err(SendError::Fatal(r)) | Err(SendError::Refused(r)) => {
            core.stop
                .fatal(format!("dead-lettering to {}: {r}", whole.topic));
            None
        }
    }
}

/// Sees a failed dead letter through: sent again while the failure may pass, then without
/// its payload if the broker refused it whole. A dead letter the broker refuses even so can't
/// be kept anywhere: the processor stops rather than lose it. False when the partition must
/// stop.
pub(super) async fn settle_dead_letter<S: Stateful>(
    core: &Core<S>,
    key: &PartitionKey,
    record: &Record,
    mut info: DeadLetterInfo,
    failed: Failed,
    cancel: &CancellationToken,
) -> bool {
    let mut failed = failed;
    loop {
        match settle_failed(core, record, failed, false, cancel).await {
            Settled::Delivered(_) => {
                count_dead_letter(core, &key.0, info.class);
                return true;
            }
            Settled::Stop => return false,
            Settled::Unproducible(_, e) if !info.reduced => {
                info.reduced = true;
                let reduced = reduced(core, record, &info, &e.to_string());
                match deliver_once(core, record, reduced, false, cancel).await {
                    Ok(_) => {
                        count_dead_letter(core, &key.0, info.class);
                        return true;
                    }
                    Err(Some(again)) => failed = again,
                    Err(None) => return false,
                }
            }
            Settled::Unproducible(_, e) => {
                refused_dead_letter(core, key, &e);
                return false;
            }
        }
    }
}

/// Dead-letters `record` from the slow path and waits for it (an input whose output the
/// broker refused for good). False when the partition must stop.
pub(super) async fn dead_letter_now<S: Stateful>(
    core: &Core<S>,
    key: &PartitionKey,
    record: &Record,
    reason: &str,
    cancel: &CancellationToken,
) -> bool {
    let info = DeadLetterInfo {
        class: ErrorClass::Poison,
        reason: reason.to_string(),
        attempts: 1,
        first_failure: time::OffsetDateTime::now_utc(),
        reduced: false,
    };
    let trace = record
        .headers
        .get(TRACEPARENT)
        .and_then(TraceContext::parse);
    warn!(
        topic = %record.position.topic,
        partition = record.position.partition,
        offset = record.position.offset,
        trace_id = trace.map(|t| t.trace_id_hex()),
        correlation_id = record.headers.get_str(CORRELATION_ID),
        class = info.class.as_str(),
        reason,
        "record dead-lettered"
    );
    let whole = Encoded {
        topic: dlq_topic(core, record),
        key: record.key.clone(),
        payload: record.payload.clone(),
        headers: dlq::headers(record, &info.failure(&core.name)),
    };
    match deliver_once(core, record, whole, false, cancel).await {
        Ok(_) => {
            count_dead_letter(core, &key.0, info.class);
            true
        }
        Err(Some(failed)) => settle_dead_letter(core, key, record, info, failed, cancel).await,
        Err(None) => false,
    }
}
