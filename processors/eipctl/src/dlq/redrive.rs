//! `eipctl dlq redrive`: carries out a [`plan`](super::plan()): sends the records, waits for
//! every acknowledgement, then writes the ledger entries that make a second run move nothing.

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use eip_runtime::kafka;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer};
use serde::Serialize;
use time::OffsetDateTime;

use crate::{Endpoints, OpsError, send};

use super::plan::report;
use super::*;

/// One ledger entry: which dead letter went where, when.
#[derive(Debug, Serialize)]
pub(super) struct LedgerEntry<'a> {
    dlq: &'a str,
    partition: i32,
    offset: i64,
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

pub(super) async fn delivered(f: DeliveryFuture) -> Result<(), String> {
    match f.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err(e.to_string()),
        Err(_) => Err("delivery cancelled".into()),
    }
}

/// Redrives the dead letters of `topic` that pass `filter`.
///
/// Reads the DLQ and its ledger `<topic>.redriven` from the beginning with a fresh reader
/// (see [`crate::read_all`]), [`plan`]s, and unless `opts.dry_run`:
/// 1. produces every moved record with the idempotent producer and awaits every
///    acknowledgement;
/// 2. then writes one ledger entry per acknowledged record (key `<partition>/<offset>`) and
///    awaits those.
///
/// So a record is in the ledger only once it is safely in its target topic. A crash between
/// the two steps redrives those records once more on the next run (consumers dedupe by event
/// id); the other order could lose them. When some records fail to produce, the rest are still
/// recorded in the ledger and the error says how many failed, so a rerun retries only those.
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
    if opts.to.as_deref().is_some_and(|t| t.trim().is_empty()) {
        return Err(OpsError::Invalid {
            what: "--to".into(),
            reason: "empty topic name".into(),
        });
    }
    let ledger = ledger_topic(topic);
    let records = read(ep, topic).await?;
    let ledger_exists = kafka::missing_topics(
        &ep.kafka(),
        std::slice::from_ref(&ledger),
        Duration::from_secs(10),
    )?
    .is_empty();
    if !ledger_exists && !opts.dry_run {
        crate::create_topics(
            ep,
            std::slice::from_ref(&ledger),
            1,
            Some(eip_runtime::topics::TopicRole::History),
        )
        .await?;
    }
    let done: HashSet<String> = if ledger_exists {
        read(ep, &ledger)
            .await?
            .into_iter()
            .filter_map(|r| r.key.map(|k| String::from_utf8_lossy(&k).into_owned()))
            .collect()
    } else {
        HashSet::new()
    };
    let plan = plan(&records, &done, filter, opts)?;
    let report = report(topic, &plan, opts);
    if plan.moves.is_empty() {
        return Ok(report);
    }
    let targets: Vec<String> = report.moved.keys().cloned().collect();
    let missing = kafka::missing_topics(&ep.kafka(), &targets, Duration::from_secs(10))?;
    if !missing.is_empty() {
        return Err(OpsError::Unroutable(format!(
            "target topic(s) {} do not exist; create them or pass --to",
            missing.join(", ")
        )));
    }
    if opts.dry_run {
        return Ok(report);
    }

    let mut config = kafka::producer_config(&ep.kafka());
    config.set(
        "message.timeout.ms",
        DELIVERY_TIMEOUT.as_millis().to_string(),
    );
    let producer: FutureProducer = config.create()?;
    let at = OffsetDateTime::now_utc();
    let at_text = rfc3339(at);
    let mut pending = Vec::with_capacity(plan.moves.len());
    for m in &plan.moves {
        let hs = owned_headers(&redriven_headers(topic, m, at));
        pending.push(
            send(
                &producer,
                &m.target,
                m.record.key.as_deref(),
                m.record.payload.as_deref(),
                hs,
            )
            .await?,
        );
    }
    let mut acked = Vec::with_capacity(pending.len());
    let mut failed = Vec::new();
    for (m, f) in plan.moves.iter().zip(pending) {
        match delivered(f).await {
            Ok(()) => acked.push(m),
            Err(e) => failed.push((DlqPosition::of(&m.record), e)),
        }
    }

    let mut ledger_pending = Vec::with_capacity(acked.len());
    for m in &acked {
        let entry = LedgerEntry {
            dlq: topic,
            partition: m.record.partition,
            offset: m.record.offset,
            target: &m.target,
            redrive_count: m.count,
            at: &at_text,
        };
        let value = serde_json::to_vec(&entry).map_err(|e| OpsError::Task(e.to_string()))?;
        let key = ledger_key(m.record.partition, m.record.offset);
        ledger_pending.push(
            send(
                &producer,
                &ledger,
                Some(key.as_bytes()),
                Some(&value),
                OwnedHeaders::new(),
            )
            .await?,
        );
    }
    let mut ledger_failed = Vec::new();
    for (m, f) in acked.iter().zip(ledger_pending) {
        if let Err(e) = delivered(f).await {
            ledger_failed.push((DlqPosition::of(&m.record), e));
        }
    }
    if !failed.is_empty() || !ledger_failed.is_empty() {
        let mut parts = vec![format!(
            "produced {} of {} records",
            acked.len(),
            plan.moves.len()
        )];
        if let Some((p, e)) = failed.first() {
            parts.push(format!(
                "{} not produced (first: {p}: {e}); rerun to retry them",
                failed.len()
            ));
        }
        if let Some((p, e)) = ledger_failed.first() {
            parts.push(format!(
                "{} produced but not recorded in {ledger} (first: {p}: {e}); a rerun would redrive them again",
                ledger_failed.len()
            ));
        }
        return Err(OpsError::Incomplete(parts.join("; ")));
    }
    Ok(report)
}
