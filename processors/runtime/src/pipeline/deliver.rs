//! Deliveries: handing outputs to the idempotent producer, sending refused ones again or
//! redirecting them, and the acker that awaits each record's deliveries in offset order
//! before storing its offset.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use bytes::Bytes;
use eip_schemas::{Codec, ErrorClass};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureRecord, Producer};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::dlq;
use crate::processor::{DeliveryFailure, Headers, Output, Payload, ProcessError, Record, Redirect};
use crate::stateful::Stateful;

use super::dead_letter::*;
use super::*;

pub(super) enum SendError {
    Abandoned,
    Permanent(String),
    /// The producer refused the record for now (its topic is not known to exist).
    Refused(String),
    Fatal(String),
}

/// Hands one output to the producer. When the producer refuses it for now (its topic does not
/// exist), the processor decides: try again after a backoff, or produce something else instead.
pub(super) async fn send_output<S: Stateful>(
    core: &Core<S>,
    source: &Record,
    out: Encoded,
    redirectable: bool,
    cancel: &CancellationToken,
) -> Result<(Arc<str>, DeliveryFuture), (Arc<str>, SendError)> {
    let mut out = out;
    let mut attempts: u32 = 0;
    loop {
        let sent = send(
            core,
            &out.topic,
            out.key.as_deref(),
            out.payload.as_deref(),
            &out.headers,
            cancel,
        )
        .await;
        let error = match sent {
            Ok(f) => return Ok((out.topic, f)),
            Err(SendError::Refused(e)) => e,
            Err(other) => return Err((out.topic, other)),
        };
        attempts += 1;
        core.metrics
            .retried
            .with_label_values(&[core.name.as_str(), &source.position.topic])
            .inc();
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

/// Hands a record to the producer, waiting while its queue is full (backpressure).
pub(super) async fn send<S: Stateful>(
    core: &Core<S>,
    topic: &str,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    headers: &Headers,
    cancel: &CancellationToken,
) -> Result<DeliveryFuture, SendError> {
    let mut owned = OwnedHeaders::new_with_capacity(headers.len());
    for (k, v) in headers.iter() {
        owned = owned.insert(Header { key: k, value: v });
    }
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).headers(owned);
    if let Some(k) = key {
        record = record.key(k);
    }
    if let Some(p) = payload {
        record = record.payload(p);
    }
    send_record(core, record, cancel).await
}

/// Hands a prepared record to the producer, waiting while its queue is full (backpressure).
pub(super) async fn send_record<S: Stateful>(
    core: &Core<S>,
    mut record: FutureRecord<'_, [u8], [u8]>,
    cancel: &CancellationToken,
) -> Result<DeliveryFuture, SendError> {
    loop {
        match core.producer.send_result(record) {
            Ok(f) => return Ok(f),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                if !wait_or_stop(Duration::from_millis(2), cancel, Some(&core.stop.halt)).await {
                    return Err(SendError::Abandoned);
                }
            }
            Err((KafkaError::MessageProduction(code), _)) if record_is_unproducible(code) => {
                return Err(SendError::Permanent(code.to_string()));
            }
            Err((KafkaError::MessageProduction(code), _))
                if matches!(
                    code,
                    RDKafkaErrorCode::UnknownTopic
                        | RDKafkaErrorCode::UnknownPartition
                        | RDKafkaErrorCode::UnknownTopicOrPartition
                ) =>
            {
                return Err(SendError::Refused(code.to_string()));
            }
            Err((e, _)) => return Err(SendError::Fatal(e.to_string())),
        }
    }
}

/// How a delivery ended.
pub(super) enum Settled {
    /// Acknowledged by the broker, by the topic named (a redirect's, if there was one).
    Delivered(Arc<str>),
    /// Refused for good: this record can never be produced.
    Unproducible(KafkaError),
    /// The partition is abandoned or the process is stopping on a fatal error.
    Stop,
}

/// Awaits a delivery. A delivery that failed for a reason that may pass (the broker restarting,
/// a leader moving) is sent again with backoff, in place, until it is acknowledged, unless the
/// processor redirects it (`redirectable`, for outputs; never for dead letters): transient
/// errors never dead-letter good data.
pub(super) async fn settle<S: Stateful>(
    core: &Core<S>,
    source: &Record,
    topic: Arc<str>,
    first: DeliveryFuture,
    redirectable: bool,
    cancel: &CancellationToken,
) -> Settled {
    let mut topic = topic;
    let mut fut = first;
    let mut attempt: u32 = 0;
    loop {
        let result = tokio::select! {
            r = fut => r,
            _ = cancel.cancelled() => return Settled::Stop,
        };
        let (e, msg) = match result {
            Ok(Ok(_)) => return Settled::Delivered(topic),
            Ok(Err(failure)) => failure,
            Err(_) => {
                core.stop
                    .fatal("producer shut down with deliveries pending".into());
                return Settled::Stop;
            }
        };
        if e.rdkafka_error_code().is_some_and(record_is_unproducible) {
            return Settled::Unproducible(e);
        }
        if let Some((code, reason)) = core.producer.client().fatal_error() {
            core.stop
                .fatal(format!("producer fatal error {code:?}: {reason}"));
            return Settled::Stop;
        }
        attempt += 1;
        core.metrics
            .retried
            .with_label_values(&[core.name.as_str(), &source.position.topic])
            .inc();
        let headers = crate::kafka::headers_of(&msg);
        let redirect = if redirectable {
            core.processor.on_delivery_failure(&DeliveryFailure {
                source,
                topic: msg.topic(),
                key: msg.key(),
                payload: msg.payload(),
                headers: headers.clone(),
                error: e.to_string(),
                attempts: attempt,
            })
        } else {
            Redirect::Again
        };
        let next = match redirect {
            Redirect::Again => {
                let delay = backoff(&core.pipeline.retry, attempt);
                warn!(error = %e, topic = msg.topic(), attempt, retry_in_ms = delay.as_millis() as u64, "delivery failed: sending again");
                // Only abandonment stops this wait: after a fatal error, what was already
                // produced is still seen through.
                if !wait_or_stop(delay, cancel, None).await {
                    return Settled::Stop;
                }
                Encoded {
                    // The failed message's own topic: a dead letter goes back to the DLQ.
                    topic: msg.topic().into(),
                    key: msg.key().map(Bytes::copy_from_slice),
                    payload: msg.payload().map(Bytes::copy_from_slice),
                    headers,
                }
            }
            Redirect::To(redirect) => {
                info!(error = %e, from = msg.topic(), to = %redirect.topic, "delivery failed: redirected");
                attempt = 0;
                let from: Arc<str> = msg.topic().into();
                match encode_redirect(&core.codec, &from, redirect).await {
                    Ok(encoded) => encoded,
                    Err((_, SendError::Fatal(reason))) => {
                        core.stop.fatal(reason);
                        return Settled::Stop;
                    }
                    Err(_) => return Settled::Stop,
                }
            }
        };
        fut = match send_output(core, source, next, redirectable, cancel).await {
            Ok((sent_to, f)) => {
                topic = sent_to;
                f
            }
            Err((_, SendError::Abandoned)) => return Settled::Stop,
            Err((to, SendError::Permanent(reason)))
            | Err((to, SendError::Fatal(reason)))
            | Err((to, SendError::Refused(reason))) => {
                core.stop.fatal(format!("sending to {to} again: {reason}"));
                return Settled::Stop;
            }
        };
    }
}

/// A partition's acker: awaits each record's deliveries in the order the worker handed them
/// over, dead-letters an input whose output the broker refused for good, reports the last
/// settled sequence number (group commits wait for it), and stores offsets: after the
/// acknowledgement for a stateless processor, after the group commit for a stateful one.
/// It ends when the worker is gone and everything it sent is settled, or when the partition is
/// abandoned; `done` then tells the poll thread.
#[allow(clippy::too_many_arguments)]
pub(super) async fn acker<S: Stateful>(
    core: Arc<Core<S>>,
    key: PartitionKey,
    consumer: Arc<BaseConsumer<ConsumerCtx>>,
    mut rx: mpsc::UnboundedReceiver<AckItem>,
    acked: tokio::sync::watch::Sender<u64>,
    in_flight: Arc<AtomicUsize>,
    cancel: CancellationToken,
    done: std::sync::mpsc::Sender<()>,
) {
    let mut produced: HashMap<Arc<str>, prometheus::IntCounter> = HashMap::new();
    let mut to_store: Option<i64> = None;
    let mut since_store = 0usize;
    // The highest offset stored: a stored offset never goes back (a record the state already
    // held, acknowledged before a group commit stored a later one, must not undo it).
    let mut stored = -1i64;
    'acks: while let Some(item) = rx.recv().await {
        let ack = match item {
            AckItem::Handled(ack) => ack,
            AckItem::Durable(offset) => {
                if cancel.is_cancelled() {
                    break 'acks;
                }
                store_offset(&consumer, &key, offset);
                stored = stored.max(offset);
                continue;
            }
        };
        let offset = ack.record.position.offset;
        let mut failed: Option<(Arc<str>, KafkaError)> = None;
        for (what, fut) in ack.deliveries {
            let (topic, redirectable) = match &what {
                Delivery::Output(topic) => (topic.clone(), true),
                Delivery::DeadLetter(_) => (key.0.clone(), false),
            };
            match settle(&core, &ack.record, topic, fut, redirectable, &cancel).await {
                Settled::Delivered(delivered_to) => match what {
                    Delivery::Output(_) => produced
                        .entry(delivered_to.clone())
                        .or_insert_with(|| {
                            core.metrics
                                .produced
                                .with_label_values(&[core.name.as_str(), &delivered_to])
                        })
                        .inc(),
                    Delivery::DeadLetter(info) => count_dead_letter(&core, &key.0, info.class),
                },
                Settled::Unproducible(e) => match what {
                    Delivery::Output(topic) => {
                        failed.get_or_insert((topic, e));
                    }
                    Delivery::DeadLetter(mut info) if !info.reduced => {
                        info.reduced = true;
                        let dlq_topic = format!("{}{}", key.0, core.pipeline.dlq_suffix);
                        let sent = send_reduced(
                            &core,
                            &dlq_topic,
                            &ack.record,
                            &info,
                            &e.to_string(),
                            &cancel,
                        )
                        .await;
                        let settled = match sent {
                            Ok(f) => {
                                settle(&core, &ack.record, key.0.clone(), f, false, &cancel).await
                            }
                            Err(SendError::Abandoned) => Settled::Stop,
                            Err(
                                SendError::Permanent(r)
                                | SendError::Fatal(r)
                                | SendError::Refused(r),
                            ) => {
                                core.stop
                                    .fatal(format!("dead-lettering to {dlq_topic}: {r}"));
                                Settled::Stop
                            }
                        };
                        match settled {
                            Settled::Delivered(_) => count_dead_letter(&core, &key.0, info.class),
                            Settled::Unproducible(e) => {
                                refused_dead_letter(&core, &key, &e);
                                break 'acks;
                            }
                            Settled::Stop => break 'acks,
                        }
                    }
                    Delivery::DeadLetter(_) => {
                        refused_dead_letter(&core, &key, &e);
                        break 'acks;
                    }
                },
                Settled::Stop => break 'acks,
            }
        }
        if let Some((topic, e)) = failed {
            if core.processor.stages_writes() {
                // A stateful processor already changed its state for this record (and may
                // have decided later records on top of it): dead-lettering the input would
                // keep a state change whose output never exists. Stop instead; nothing of
                // this batch is made durable (the group commit waits for this record's
                // acknowledgement, which never comes), and the record is decided again after
                // the restart. A processor refuses what it can't publish before it changes
                // its state (eip-orders: `too_large`), so this is for the unforeseen.
                core.stop.fatal(format!(
                    "an output of {}[{}] offset {offset} to {topic} was refused for good \
                     ({e}); its state change is not kept. If the record is too large, raise \
                     {topic}'s max.message.bytes (and keep the producer's batch.size at or \
                     below it)",
                    key.0, key.1
                ));
                break 'acks;
            }
            // The broker refused this output for good (too large, invalid): the input is poison.
            let reason = format!("delivery to {topic} failed: {e}");
            let Some(dl) = dead_letter(
                &core,
                ack.record,
                ErrorClass::Poison,
                &reason,
                1,
                None,
                &cancel,
            )
            .await
            else {
                break 'acks;
            };
            for (_, fut) in dl.deliveries {
                match settle(&core, &dl.record, key.0.clone(), fut, false, &cancel).await {
                    Settled::Delivered(_) => count_dead_letter(&core, &key.0, ErrorClass::Poison),
                    Settled::Unproducible(e) => {
                        refused_dead_letter(&core, &key, &e);
                        break 'acks;
                    }
                    Settled::Stop => break 'acks,
                }
            }
        }
        // Only a group commit waits for this; publishing it is a lock, so a stateless
        // processor skips it, and a stateful one publishes when it has caught up (a waiting
        // worker sends nothing more, so the acker always catches up).
        if core.processor.stages_writes() && (rx.is_empty() || ack.seq % 256 == 0) {
            acked.send_replace(ack.seq);
        }
        if ack.commit == Commit::Never {
            continue;
        }
        // After a drain timeout the poll thread already took this partition's records off
        // the global count: only what is still counted here comes off.
        core.in_flight.sub(take(&in_flight, 1));
        if ack.commit == Commit::OnAck {
            to_store = Some(offset);
            since_store += 1;
            if since_store >= 256 || rx.is_empty() {
                if offset > stored {
                    store_offset(&consumer, &key, offset);
                    stored = offset;
                }
                to_store = None;
                since_store = 0;
            }
        }
    }
    if let Some(offset) = to_store
        && !cancel.is_cancelled()
        && offset > stored
    {
        store_offset(&consumer, &key, offset);
    }
    drop(done);
}

/// Marks everything up to and including `offset` as done; librdkafka commits `offset + 1`.
pub(super) fn store_offset(consumer: &BaseConsumer<ConsumerCtx>, key: &PartitionKey, offset: i64) {
    if let Err(e) = consumer.store_offset(&key.0, key.1, offset) {
        // The partition was revoked meanwhile; its new owner re-reads from the last commit.
        debug!(topic = %key.0, partition = key.1, offset, error = %e, "offset not stored");
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

/// Sends a dead letter again without its payload and original headers, after the broker
/// refused it whole (too large for the DLQ topic, say): a record is never stuck, and never
/// crash-loops the processor, because its dead letter does not fit.
pub(super) async fn send_reduced<S: Stateful>(
    core: &Core<S>,
    topic: &str,
    record: &Record,
    info: &DeadLetterInfo,
    refused: &str,
    cancel: &CancellationToken,
) -> Result<DeliveryFuture, SendError> {
    warn!(
        topic = %record.position.topic,
        partition = record.position.partition,
        offset = record.position.offset,
        refused,
        dlq = %topic,
        "dead letter refused: sending it again without its payload and original headers"
    );
    let headers = dlq::reduced_headers(record, &info.failure(&core.name), refused);
    send(core, topic, record.key.as_deref(), None, &headers, cancel).await
}

pub(super) async fn dead_letter<S: Stateful>(
    core: &Arc<Core<S>>,
    record: Record,
    class: ErrorClass,
    reason: &str,
    attempts: u32,
    first_failure: Option<time::OffsetDateTime>,
    cancel: &CancellationToken,
) -> Option<Ack> {
    let topic = format!("{}{}", record.position.topic, core.pipeline.dlq_suffix);
    let mut info = DeadLetterInfo {
        class,
        reason: reason.to_string(),
        attempts,
        first_failure: first_failure.unwrap_or_else(time::OffsetDateTime::now_utc),
        reduced: false,
    };
    let headers = dlq::headers(&record, &info.failure(&core.name));
    warn!(
        topic = %record.position.topic,
        partition = record.position.partition,
        offset = record.position.offset,
        class = class.as_str(),
        reason,
        dlq = %topic,
        "record dead-lettered"
    );
    let sent = match send(
        core,
        &topic,
        record.key.as_deref(),
        record.payload.as_deref(),
        &headers,
        cancel,
    )
    .await
    {
        Err(SendError::Permanent(refused)) => {
            info.reduced = true;
            send_reduced(core, &topic, &record, &info, &refused, cancel).await
        }
        other => other,
    };
    match sent {
        Ok(f) => Some(Ack {
            commit: Commit::of(core.processor.stages_writes(), record.position.offset),
            record,
            deliveries: vec![(Delivery::DeadLetter(Box::new(info)), f)],
            seq: 0,
        }),
        Err(SendError::Abandoned) => None,
        Err(SendError::Permanent(r)) | Err(SendError::Fatal(r)) | Err(SendError::Refused(r)) => {
            core.stop.fatal(format!("dead-lettering to {topic}: {r}"));
            None
        }
    }
}
