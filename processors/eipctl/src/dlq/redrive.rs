//! `eipctl dlq redrive`: carries out a [`plan`](super::plan()), a chunk at a time: each
//! chunk's records and its ledger entries are written in one Kafka transaction, so a record is
//! in the ledger exactly when it is in its target topic.
//!
//! The transactional id is derived from the DLQ (`eipctl-redrive-<dlq>`), so two redrives of
//! one DLQ fence each other: the later one's `init_transactions` aborts the earlier one's open
//! chunk and makes every later write of it fail, and only then does the later one read the
//! ledger. Whatever the timing, each dead letter moves once.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use eip_runtime::kafka;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, Producer};
use serde::Serialize;
use time::OffsetDateTime;

use crate::{Endpoints, OpsError, Scan, send};

use super::*;

/// One ledger entry: which dead letter went where, when.
#[derive(Debug, Serialize)]
pub(super) struct LedgerEntry<'a> {
    dlq: &'a str,
    partition: i32,
    offset: i64,
    timestamp: Option<i64>,
    target: &'a str,
    redrive_count: u32,
    at: &'a str,
}

pub(super) fn owned_headers(hs: &[(String, Option<Bytes>)]) -> OwnedHeaders {
    hs.iter()
        .fold(OwnedHeaders::new_with_capacity(hs.len()), |acc, (k, v)| {
            acc.insert(Header {
                key: k.as_str(),
                value: v.as_deref(),
            })
        })
}

/// The transactional id of redrives of `dlq`: one per DLQ, so that they fence each other.
pub fn transactional_id(dlq: &str) -> String {
    format!("eipctl-redrive-{dlq}")
}

/// Redrives the dead letters of `topic` that pass `filter`.
///
/// Unless `opts.dry_run`, first takes the DLQ's transactional id (fencing any redrive of it
/// still running), then reads the ledger `<topic>.redriven` (committed entries only). Then
/// two passes over the DLQ, each [`RedriveOptions::chunk_records`] dead letters at a time:
/// 1. **check**: [`plan`] every chunk and check that every target topic exists, so an
///    unroutable record fails the run before anything is produced; a dry run stops here;
/// 2. **move**: plan each chunk again (the same records, up to the same ends) and, in one
///    transaction, produce its moved records and their ledger entries, then commit.
///
/// A chunk that fails is rolled back whole: nothing of it is in a target topic or the ledger,
/// and a rerun moves it. A run fenced by a later one stops with [`OpsError::Superseded`]; what
/// it committed is in the ledger, which the later run read after fencing it.
pub async fn redrive(
    ep: &Endpoints,
    topic: &str,
    filter: &Filter,
    opts: &RedriveOptions,
) -> Result<RedriveReport, OpsError> {
    filter.validate()?;
    if opts.max_redrives == 0 {
        return Err(OpsError::Invalid {
            what: "--max-redrives".into(),
            reason: "must be at least 1 (0 would refuse every record)".into(),
        });
    }
    if opts.chunk_records == 0 {
        return Err(OpsError::Invalid {
            what: "--chunk-records".into(),
            reason: "must be at least 1".into(),
        });
    }
    if opts.to.as_deref().is_some_and(|t| t.trim().is_empty()) {
        return Err(OpsError::Invalid {
            what: "--to".into(),
            reason: "empty topic name".into(),
        });
    }
    let ledger = ledger_topic(topic);
    let (e, t) = (ep.clone(), topic.to_string());
    let scan = crate::blocking(move || Scan::start(&e, &t, READ_TIMEOUT)).await?;
    let ends = scan.ends().to_vec();
    let ledger_exists = kafka::missing_topics(
        &ep.kafka(),
        std::slice::from_ref(&ledger),
        Duration::from_secs(10),
    )?
    .is_empty();
    let producer = if opts.dry_run {
        None
    } else {
        if !ledger_exists {
            crate::create_topics(
                ep,
                std::slice::from_ref(&ledger),
                1,
                Some(eip_runtime::topics::TopicRole::History),
            )
            .await?;
        }
        Some(claim(ep, topic).await?)
    };
    let done = if ledger_exists || producer.is_some() {
        read_ledger(ep, &ledger, &ends).await?
    } else {
        Ledger::default()
    };

    // Pass 1: plan every chunk; fail before producing anything if a record can't be routed.
    let mut check = RedriveReport::new(topic, opts);
    let mut targets = BTreeSet::new();
    let mut scan = scan;
    loop {
        let (s, chunk) = next_chunk(scan, opts.chunk_records).await?;
        scan = s;
        let Some(chunk) = chunk else { break };
        let p = plan(&chunk, &done, filter, opts)?;
        targets.extend(p.moves.iter().map(|m| m.target.clone()));
        check.add(&p);
    }
    drop(scan);
    let targets: Vec<String> = targets.into_iter().collect();
    if !targets.is_empty() {
        let missing = kafka::missing_topics(&ep.kafka(), &targets, Duration::from_secs(10))?;
        if !missing.is_empty() {
            return Err(OpsError::Unroutable(format!(
                "target topic(s) {} do not exist; create them or pass --to",
                missing.join(", ")
            )));
        }
    }
    let Some(producer) = producer.filter(|_| check.moved_total > 0) else {
        return Ok(check);
    };

    // Pass 2: the same records again, each chunk moved in one transaction.
    let mut report = RedriveReport::new(topic, opts);
    let at = OffsetDateTime::now_utc();
    let (e, t, en) = (ep.clone(), topic.to_string(), ends.clone());
    let mut scan = crate::blocking(move || Scan::until(&e, &t, &en, READ_TIMEOUT)).await?;
    loop {
        let (s, chunk) = next_chunk(scan, opts.chunk_records).await?;
        scan = s;
        let Some(chunk) = chunk else { break };
        let p = plan(&chunk, &done, filter, opts)?;
        if !p.moves.is_empty() {
            move_chunk(&producer, topic, &ledger, &p, at)
                .await
                .map_err(|e| {
                    // A fenced producer fails what it sends with librdkafka's generic fatal
                    // error; the producer's own fatal error says why.
                    let fatal = producer.client().fatal_error().map(|(code, _)| code);
                    stopped(topic, &report, e, fatal)
                })?;
            report.chunks += 1;
        }
        report.add(&p);
    }
    Ok(report)
}

/// Takes the transactional id of `dlq`'s redrives: any redrive of it still running is fenced,
/// and its open chunk aborted, before this returns.
async fn claim(ep: &Endpoints, dlq: &str) -> Result<FutureProducer, OpsError> {
    let mut config = kafka::producer_config(&ep.kafka());
    config
        .set("transactional.id", transactional_id(dlq))
        .set(
            "transaction.timeout.ms",
            TRANSACTION_TIMEOUT.as_millis().to_string(),
        )
        .set(
            "message.timeout.ms",
            DELIVERY_TIMEOUT.as_millis().to_string(),
        );
    let producer: FutureProducer = config.create()?;
    let p = producer.clone();
    crate::blocking(move || Ok(p.init_transactions(TRANSACTION_TIMEOUT)?)).await?;
    Ok(producer)
}

/// The committed entries of the ledger topic `ledger`, keeping those at or above the DLQ's
/// low watermarks (`ends`: partition, low, high).
async fn read_ledger(
    ep: &Endpoints,
    ledger: &str,
    ends: &[(i32, i64, i64)],
) -> Result<Ledger, OpsError> {
    let (e, t) = (ep.clone(), ledger.to_string());
    let mut scan = crate::blocking(move || Scan::start(&e, &t, READ_TIMEOUT)).await?;
    let mut done = Ledger::new(ends.iter().map(|(p, low, _)| (*p, *low)));
    loop {
        let (s, chunk) = next_chunk(scan, DEFAULT_CHUNK_RECORDS * 10).await?;
        scan = s;
        let Some(chunk) = chunk else { break };
        for r in &chunk {
            done.add(ledger, r)?;
        }
    }
    Ok(done)
}

/// Produces the moves of `plan` and their ledger entries in one transaction, and commits it.
/// On failure the transaction is aborted (unless the producer was fenced, when there is
/// nothing left to abort).
async fn move_chunk(
    producer: &FutureProducer,
    dlq: &str,
    ledger: &str,
    plan: &Plan,
    at: OffsetDateTime,
) -> Result<(), OpsError> {
    producer.begin_transaction()?;
    match send_chunk(producer, dlq, ledger, plan, at).await {
        Ok(()) => {
            let p = producer.clone();
            let committed =
                crate::blocking(move || Ok(p.commit_transaction(TRANSACTION_TIMEOUT)?)).await;
            if committed.is_err() {
                abort(producer).await;
            }
            committed
        }
        Err(e) => {
            abort(producer).await;
            Err(e)
        }
    }
}

async fn send_chunk(
    producer: &FutureProducer,
    dlq: &str,
    ledger: &str,
    plan: &Plan,
    at: OffsetDateTime,
) -> Result<(), OpsError> {
    let at_text = rfc3339(at);
    for m in &plan.moves {
        let hs = owned_headers(&redriven_headers(dlq, m, at));
        // The commit waits for every acknowledgement and fails if one failed.
        drop(
            send(
                producer,
                &m.target,
                m.record.key.as_deref(),
                m.record.payload.as_deref(),
                hs,
            )
            .await?,
        );
    }
    for m in &plan.moves {
        let entry = LedgerEntry {
            dlq,
            partition: m.record.partition,
            offset: m.record.offset,
            timestamp: m.record.timestamp_ms,
            target: &m.target,
            redrive_count: m.count,
            at: &at_text,
        };
        let value = serde_json::to_vec(&entry).map_err(|e| OpsError::Task(e.to_string()))?;
        let key = ledger_key_of(&m.record);
        drop(
            send(
                producer,
                ledger,
                Some(key.as_bytes()),
                Some(&value),
                OwnedHeaders::new(),
            )
            .await?,
        );
    }
    Ok(())
}

async fn abort(producer: &FutureProducer) {
    let p = producer.clone();
    // A fenced or otherwise dead producer can't abort; the broker aborts its transaction when
    // the next redrive takes the id, or after TRANSACTION_TIMEOUT.
    let _ = crate::blocking(move || Ok(p.abort_transaction(TRANSACTION_TIMEOUT)?)).await;
}

/// Whether `e`, or the producer's fatal error `fatal` behind it, says another producer took
/// this transactional id.
fn is_fenced(e: &OpsError, fatal: Option<RDKafkaErrorCode>) -> bool {
    let fenced = |c: RDKafkaErrorCode| {
        matches!(
            c,
            RDKafkaErrorCode::Fenced
                | RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
        )
    };
    matches!(e, OpsError::Kafka(k) if k.rdkafka_error_code().is_some_and(fenced))
        || fatal.is_some_and(fenced)
}

/// The error of a redrive that stopped at a chunk, saying what was done before it.
fn stopped(
    dlq: &str,
    report: &RedriveReport,
    e: OpsError,
    fatal: Option<RDKafkaErrorCode>,
) -> OpsError {
    let done = format!(
        "{} records were moved in {} chunks before it and are in the ledger",
        report.moved_total, report.chunks
    );
    if is_fenced(&e, fatal) {
        OpsError::Superseded(format!(
            "another redrive of {dlq} took over and fenced this one ({e}); {done}, and the other run skips them"
        ))
    } else {
        OpsError::Incomplete(format!(
            "a chunk failed and was rolled back: {e}; {done}; rerun to move the rest"
        ))
    }
}

#[cfg(test)]
mod fencing_tests {
    use super::*;
    use rdkafka::error::KafkaError;

    #[test]
    fn a_fenced_producer_is_told_apart_even_behind_the_generic_fatal_error() {
        let fatal = OpsError::Kafka(KafkaError::MessageProduction(RDKafkaErrorCode::Fatal));
        assert!(!is_fenced(&fatal, None));
        assert!(is_fenced(&fatal, Some(RDKafkaErrorCode::ProducerFenced)));
        assert!(!is_fenced(
            &fatal,
            Some(RDKafkaErrorCode::BrokerTransportFailure)
        ));
        let direct = OpsError::Kafka(KafkaError::MessageProduction(
            RDKafkaErrorCode::ProducerFenced,
        ));
        assert!(is_fenced(&direct, None));
        let report = RedriveReport::new("t.dlq", &Default::default());
        let e = stopped(
            "t.dlq",
            &report,
            fatal,
            Some(RDKafkaErrorCode::ProducerFenced),
        );
        assert!(e.to_string().contains("another redrive"), "{e}");
        let e = stopped(
            "t.dlq",
            &report,
            OpsError::Kafka(KafkaError::MessageProduction(RDKafkaErrorCode::Fatal)),
            None,
        );
        assert!(e.to_string().contains("rerun to move the rest"), "{e}");
    }
}
