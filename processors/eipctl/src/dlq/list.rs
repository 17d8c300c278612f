//! `eipctl dlq list`: one entry per dead letter that passes a filter, with counts by class.

use std::collections::BTreeMap;

use eip_runtime::dlq as headers;
use serde::Serialize;

use crate::{Endpoints, OpsError, ReadRecord, Scan};

use super::*;

/// One dead letter as `list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// Partition in the DLQ.
    pub partition: i32,
    /// Offset in the DLQ.
    pub offset: i64,
    /// `eip.dlq.source-topic`.
    pub source_topic: Option<String>,
    /// `eip.dlq.source-partition`.
    pub source_partition: Option<i32>,
    /// `eip.dlq.source-offset`.
    pub source_offset: Option<i64>,
    /// `eip.dlq.error-class`.
    pub class: Option<String>,
    /// `eip.dlq.attempts`.
    pub attempts: Option<u32>,
    /// `eip.dlq.first-failure` as written, or the record timestamp (RFC 3339) without it.
    pub first_failure: Option<String>,
    /// `eip.redrive.count` (0 when absent); `None` when the header is unreadable.
    pub redrive_count: Option<u32>,
    /// `eip.dlq.reason`.
    pub reason: Option<String>,
    /// `eip.dlq.processor`.
    pub processor: Option<String>,
    /// Every other `eip.dlq.*` header, e.g. the router's `eip.dlq.target-topic`.
    pub other: BTreeMap<String, String>,
}

impl Entry {
    /// The entry of dead letter `r`.
    pub fn of(r: &ReadRecord) -> Entry {
        let h = |n: &str| r.header(n).map(str::to_string);
        let other = r
            .headers
            .iter()
            .filter(|(k, _)| {
                k.starts_with(DLQ_HEADER_PREFIX) && !headers::ALL.contains(&k.as_str())
            })
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_deref()
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                        .unwrap_or_default(),
                )
            })
            .collect();
        Entry {
            partition: r.partition,
            offset: r.offset,
            source_topic: h(headers::SOURCE_TOPIC),
            source_partition: r
                .header(headers::SOURCE_PARTITION)
                .and_then(|v| v.parse().ok()),
            source_offset: r
                .header(headers::SOURCE_OFFSET)
                .and_then(|v| v.parse().ok()),
            class: h(headers::ERROR_CLASS),
            attempts: r.header(headers::ATTEMPTS).and_then(|v| v.parse().ok()),
            first_failure: h(headers::FIRST_FAILURE).or_else(|| failed_at(r).map(rfc3339)),
            redrive_count: redrive_count(r).ok(),
            reason: h(headers::REASON),
            processor: h(headers::PROCESSOR),
            other,
        }
    }

    /// Its position in the DLQ.
    pub fn position(&self) -> DlqPosition {
        DlqPosition {
            partition: self.partition,
            offset: self.offset,
        }
    }

    /// The one-line human form `list` prints.
    pub fn line(&self) -> String {
        fn or_q<T: ToString>(v: &Option<T>) -> String {
            v.as_ref().map_or_else(|| "?".to_string(), T::to_string)
        }
        let mut s = format!(
            "{}@{}  {}[{}]@{}  {}  attempts={}  first-failure={}  redrives={}",
            self.partition,
            self.offset,
            or_q(&self.source_topic),
            or_q(&self.source_partition),
            or_q(&self.source_offset),
            or_q(&self.class),
            or_q(&self.attempts),
            or_q(&self.first_failure),
            or_q(&self.redrive_count),
        );
        for (k, v) in &self.other {
            s.push_str(&format!(
                "  {}={v}",
                k.strip_prefix(DLQ_HEADER_PREFIX).unwrap_or(k)
            ));
        }
        s.push_str("  ");
        s.push_str(self.reason.as_deref().unwrap_or("?"));
        s
    }
}

/// What `list` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Listing {
    /// The DLQ topic.
    pub topic: String,
    /// Records read.
    pub scanned: usize,
    /// Records that passed the filter.
    pub matched: usize,
    /// The first matching records in (partition, offset) order, at most the limit asked for.
    pub entries: Vec<Entry>,
    /// Matching records by `eip.dlq.error-class` (`unknown` without one).
    pub by_class: BTreeMap<String, usize>,
}

impl Listing {
    /// An empty listing of `topic`.
    pub fn new(topic: &str) -> Listing {
        Listing {
            topic: topic.to_string(),
            scanned: 0,
            matched: 0,
            entries: Vec::new(),
            by_class: BTreeMap::new(),
        }
    }

    /// Adds one chunk of `records`: counts every match, and keeps the first `limit` entries.
    pub fn add(&mut self, records: &[ReadRecord], filter: &Filter, limit: usize) {
        self.scanned += records.len();
        for r in records.iter().filter(|r| filter.matches(r)) {
            self.matched += 1;
            *self
                .by_class
                .entry(
                    r.header(headers::ERROR_CLASS)
                        .unwrap_or("unknown")
                        .to_string(),
                )
                .or_insert(0) += 1;
            if limit > 0 {
                self.entries.push(Entry::of(r));
            }
        }
        self.entries.sort_by_key(|e| (e.partition, e.offset));
        self.entries.truncate(limit);
    }
}

/// One line of `list --json`: a record, or the summary at the end.
#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ListLine<'a> {
    /// A matching dead letter.
    Record(&'a Entry),
    /// The summary.
    Summary {
        /// The DLQ topic.
        topic: &'a str,
        /// Records read.
        scanned: usize,
        /// Records that matched.
        matched: usize,
        /// Records printed (at most `--limit`).
        shown: usize,
        /// Matching records by error class.
        by_class: &'a BTreeMap<String, usize>,
    },
}

/// Selects the dead letters among `records` that pass `filter`, all of them.
pub fn summarize(topic: &str, records: &[ReadRecord], filter: &Filter) -> Listing {
    let mut l = Listing::new(topic);
    l.add(records, filter, usize::MAX);
    l
}

/// Reads the DLQ `topic` a chunk at a time and lists the records that pass `filter`: every
/// match is counted, and the first `limit` are kept, so memory stays bounded whatever the
/// size of the DLQ.
pub async fn list(
    ep: &Endpoints,
    topic: &str,
    filter: &Filter,
    limit: usize,
) -> Result<Listing, OpsError> {
    filter.validate()?;
    let (e, t) = (ep.clone(), topic.to_string());
    let mut scan = crate::blocking(move || Scan::start(&e, &t, READ_TIMEOUT)).await?;
    let mut listing = Listing::new(topic);
    loop {
        let (s, chunk) = next_chunk(scan, DEFAULT_CHUNK_RECORDS).await?;
        scan = s;
        let Some(chunk) = chunk else { break };
        listing.add(&chunk, filter, limit);
    }
    Ok(listing)
}
