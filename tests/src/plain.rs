//! A plain librdkafka consume -> produce member, the baseline the runtime's rebalance figures
//! are compared with: it produces each polled batch, flushes the producer, commits the batch's
//! offsets synchronously, and drops records it polled for partitions it has since lost.
//! Whatever duplicates it shows through the same handovers are the broker's and the client
//! library's share, not the runtime's.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use eip_runtime::kafka;
use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::Endpoints;

struct PlainCtx {
    revoked: Mutex<Vec<(String, i32)>>,
}

impl ClientContext for PlainCtx {}

impl ConsumerContext for PlainCtx {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance
            && let Ok(mut revoked) = self.revoked.lock()
        {
            revoked.extend(
                tpl.elements()
                    .iter()
                    .map(|e| (e.topic().to_string(), e.partition())),
            );
        }
    }
}

/// A running plain member.
pub struct PlainMember {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl PlainMember {
    /// Joins `group` on `input`, forwarding to `output`, with `strategy` as the assignment
    /// strategy.
    pub fn start(
        ep: &Endpoints,
        input: &str,
        output: &str,
        group: &str,
        strategy: &str,
    ) -> PlainMember {
        let mut c = kafka::base_config(&ep.kafka());
        c.set("group.id", group)
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("partition.assignment.strategy", strategy)
            .set("session.timeout.ms", "10000");
        let consumer: BaseConsumer<PlainCtx> = c
            .create_with_context(PlainCtx {
                revoked: Mutex::new(Vec::new()),
            })
            .unwrap_or_else(|e| panic!("plain consumer: {e}"));
        consumer
            .subscribe(&[input])
            .unwrap_or_else(|e| panic!("subscribe: {e}"));
        let producer: BaseProducer = kafka::producer_config(&ep.kafka())
            .create()
            .unwrap_or_else(|e| panic!("plain producer: {e}"));
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let output = output.to_string();
        let thread = std::thread::spawn(move || run(consumer, producer, &output, &flag));
        PlainMember {
            stop,
            thread: Some(thread),
        }
    }

    /// Leaves the group (closing the consumer) and waits for the thread.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

type Polled = (String, i32, i64, Option<Vec<u8>>, Option<Vec<u8>>);

fn run(consumer: BaseConsumer<PlainCtx>, producer: BaseProducer, output: &str, stop: &AtomicBool) {
    while !stop.load(Ordering::Acquire) {
        let mut batch: Vec<Polled> = Vec::new();
        let mut next = consumer.poll(Duration::from_millis(100));
        loop {
            let lost: Vec<(String, i32)> = consumer
                .context()
                .revoked
                .lock()
                .map(|mut r| r.drain(..).collect())
                .unwrap_or_default();
            batch.retain(|(t, p, ..)| !lost.iter().any(|(lt, lp)| lt == t && lp == p));
            let Some(Ok(m)) = next else { break };
            batch.push((
                m.topic().to_string(),
                m.partition(),
                m.offset(),
                m.key().map(<[u8]>::to_vec),
                m.payload().map(<[u8]>::to_vec),
            ));
            if batch.len() >= 500 {
                break;
            }
            next = consumer.poll(Duration::ZERO);
        }
        if batch.is_empty() {
            continue;
        }
        for (_, _, _, key, payload) in &batch {
            let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(output);
            if let Some(k) = key {
                record = record.key(k.as_slice());
            }
            if let Some(p) = payload {
                record = record.payload(p.as_slice());
            }
            let mut record = record;
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((_, r)) => {
                        producer.poll(Duration::from_millis(10));
                        record = r;
                    }
                }
            }
        }
        let _ = producer.flush(Duration::from_secs(60));
        let mut tpl = TopicPartitionList::new();
        for (t, p, o, ..) in &batch {
            let _ = tpl.add_partition_offset(t, *p, Offset::Offset(o + 1));
        }
        let _ = consumer.commit(&tpl, CommitMode::Sync);
    }
    let _ = producer.flush(Duration::from_secs(60));
    consumer.unsubscribe();
    kafka::settle_before_close(&consumer);
}
