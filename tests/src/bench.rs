//! Building blocks of the benchmarks (`tests/benches`): the raw rdkafka baselines they
//! compare against, CPU accounting, and small statistics.

use std::time::{Duration, Instant};

use eip_runtime::kafka;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use eip_passthrough::{Passthrough, PassthroughConfig};

use crate::{Endpoints, InProcess, codec, config, create_topics, register, unique};

/// Kafka settings for the benchmark's clients: the defaults, plus producer properties from
/// `EIP_BENCH_PRODUCER` (`key=value,key=value`) for experiments.
pub fn bench_kafka(ep: &Endpoints) -> eip_runtime::config::KafkaConfig {
    let mut k = ep.kafka();
    if let Ok(props) = std::env::var("EIP_BENCH_PRODUCER") {
        for kv in props.split(',').filter(|s| !s.is_empty()) {
            let (key, value) = kv.split_once('=').expect("key=value");
            k.producer_properties
                .insert(key.to_string(), value.to_string());
        }
    }
    k
}

/// CPU time (user + system) consumed so far by process `pid` ("self" for this one), from
/// /proc; `None` when unavailable.
pub fn cpu_time(pid: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the comm.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// The pid of the broker listening on `brokers`' port, found by its command line.
pub fn broker_pid(brokers: &str) -> Option<String> {
    let port = brokers.rsplit(':').next()?;
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        // stack.sh marks the broker's JVM with -Deip.listener=127.0.0.1:PORT.
        let marked = cmdline.contains(&format!("-Deip.listener=127.0.0.1:{port} "));
        (marked && cmdline.contains("kafka.Kafka"))
            .then(|| e.file_name().to_string_lossy().to_string())
    })
}

/// CPU spent by this process and by the broker while `f` runs, in µs per record.
pub struct Cpu {
    /// The broker pid, when found.
    pub broker: Option<String>,
}

impl Cpu {
    /// CPU time of this process and the broker so far.
    pub fn sample(&self) -> (Option<Duration>, Option<Duration>) {
        (cpu_time("self"), self.broker.as_deref().and_then(cpu_time))
    }

    /// CPU µs per record since `before`, for this process and the broker.
    pub fn per_record(&self, before: (Option<Duration>, Option<Duration>), n: usize) -> String {
        let after = self.sample();
        let us = |a: Option<Duration>, b: Option<Duration>| match (a, b) {
            (Some(a), Some(b)) => format!(
                "{:.1}",
                (a.saturating_sub(b)).as_secs_f64() * 1e6 / n as f64
            ),
            _ => "n/a".into(),
        };
        format!(
            "CPU µs/record: client {}, broker {}",
            us(after.0, before.0),
            us(after.1, before.1)
        )
    }
}

/// Records per second.
pub fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

/// The median (upper median for even counts).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Sends with a `BaseProducer`, serving delivery reports while its queue is full.
pub fn send_blocking(producer: &BaseProducer, mut record: BaseRecord<'_, [u8], [u8]>) {
    loop {
        match producer.send(record) {
            Ok(()) => break,
            Err((_, r)) => {
                record = r;
                producer.poll(Duration::from_millis(1));
            }
        }
    }
    producer.poll(Duration::ZERO);
}

/// Raw idempotent produce of `n` framed sample records; returns records/s.
/// With `distinct` keys, record `i` has key `i % distinct`; with 0, every record its own key.
pub fn raw_produce(ep: &Endpoints, topic: &str, n: usize, payload: &[u8], distinct: usize) -> f64 {
    let producer: BaseProducer = kafka::producer_config(&bench_kafka(ep)).create().unwrap();
    let keys: Vec<String> = (0..n)
        .map(|i| format!("order-{:08}", if distinct == 0 { i } else { i % distinct }))
        .collect();
    let started = Instant::now();
    for key in &keys {
        // The headers a real producer (eipctl, the gateway) sends: both pass-throughs then
        // write the same two headers per record.
        let trace = eip_runtime::trace::TraceContext::new_root().to_header();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "correlation-id",
                value: Some(key.as_str()),
            })
            .insert(Header {
                key: "traceparent",
                value: Some(trace.as_str()),
            });
        let record = BaseRecord::to(topic)
            .key(key.as_bytes())
            .payload(payload)
            .headers(headers);
        send_blocking(&producer, record);
    }
    producer.flush(Duration::from_secs(300)).unwrap();
    rate(n, started.elapsed())
}

/// Raw consume of `n` records from the beginning of every partition; returns records/s.
pub fn raw_consume(ep: &Endpoints, topic: &str, partitions: i32, n: usize) -> f64 {
    let mut c = kafka::base_config(&ep.kafka());
    c.set("group.id", unique("bench-read"))
        .set("enable.auto.commit", "false");
    let consumer: BaseConsumer = c.create().unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut seen = 0;
    let mut started = None;
    while seen < n {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            m.unwrap();
            started.get_or_insert_with(Instant::now);
            seen += 1;
        }
    }
    rate(n, started.unwrap().elapsed())
}

/// Raw rdkafka consume -> produce with the same producer settings the runtime uses.
pub fn raw_passthrough(ep: &Endpoints, input: &str, output: &str, n: usize) -> f64 {
    raw_passthrough_with(ep, input, output, n, &[])
}

/// [`raw_passthrough`], adding `extra` headers to every record (to compare with a processor
/// that stamps headers of its own).
pub fn raw_passthrough_with(
    ep: &Endpoints,
    input: &str,
    output: &str,
    n: usize,
    extra: &[(&str, &str)],
) -> f64 {
    let mut c = kafka::base_config(&ep.kafka());
    c.set("group.id", unique("bench-raw"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "true");
    let consumer: BaseConsumer = c.create().unwrap();
    consumer.subscribe(&[input]).unwrap();
    let producer: BaseProducer = kafka::producer_config(&bench_kafka(ep)).create().unwrap();
    let mut seen = 0;
    let mut started = None;
    while seen < n {
        let Some(m) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = m.unwrap();
        started.get_or_insert_with(Instant::now);
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(output);
        if let Some(k) = m.key() {
            record = record.key(k);
        }
        if let Some(p) = m.payload() {
            record = record.payload(p);
        }
        if let Some(h) = m.headers() {
            let mut owned = h.detach();
            for (key, value) in extra {
                owned = owned.insert(Header {
                    key,
                    value: Some(*value),
                });
            }
            record = record.headers(owned);
        }
        send_blocking(&producer, record);
        seen += 1;
    }
    producer.flush(Duration::from_secs(300)).unwrap();
    rate(n, started.unwrap().elapsed())
}

/// A rules file of `n` rules, the last routing everything to `out`: `n - 1` rules of the
/// shapes a real table has (type + field predicates, ranges, regex, header
/// matches, nested fields), that match none of the sample orders.
pub fn router_rules(n: usize, out: &str) -> String {
    let mut text = String::from("version = \"bench\"\n");
    for i in 0..n - 1 {
        let when = match i % 5 {
            0 => format!(
                "{{ all = [ {{ field = \"currency\", eq = \"X{i:02}\" }}, {{ field = \"total_cents\", gte = 100 }} ] }}"
            ),
            1 => format!(
                "{{ field = \"shipping_address.country\", in = [\"Q{i}\", \"R{i}\", \"S{i}\"] }}"
            ),
            2 => format!("{{ field = \"customer_id\", regex = \"^vip-{i}-\" }}"),
            3 => format!(
                "{{ any = [ {{ field = \"total_cents\", lt = -{i} }}, {{ not = {{ field = \"metadata.aggregate_id\", exists = true }} }} ] }}"
            ),
            _ => format!("{{ field = \"lines[*].sku\", eq = \"NONE-{i}\" }}"),
        };
        text.push_str(&format!(
            "[[rules]]\nname = \"r{i}\"\nmatch.types = [\"eip.orders.OrderPlaced\"]\nmatch.when = {when}\nthen.to = [\"t{i}\"]\n"
        ));
    }
    text.push_str(&format!(
        "[[rules]]\nname = \"last\"\nthen.to = [\"{out}\"]\n"
    ));
    text
}

/// Registers the schemas, creates a fresh input topic named after `prefix` (with its DLQ) of
/// `partitions` partitions, and returns it with the framed `OrderPlaced` every benchmark sends.
pub async fn bench_input(ep: &Endpoints, prefix: &str, partitions: i32) -> (String, Vec<u8>) {
    register(ep).await;
    let input = unique(prefix);
    create_topics(ep, &[&input, &format!("{input}.dlq")], partitions).await;
    let id = codec(ep)
        .id_of::<eip_schemas::types::OrderPlaced>()
        .await
        .unwrap();
    let payload =
        eip_schemas::codec::encode_with_id(id, &eip_schemas::types::samples::order_placed(42))
            .unwrap();
    (input, payload)
}

/// A throughput benchmark's command line: `--records N` (default 100,000), `--rounds N`
/// (default 3), `--partitions N` (default 4), `--max-in-flight N`, and flags such as
/// `--runtime-only`. Anything else (cargo passes `--bench`) is ignored.
pub struct BenchArgs {
    /// Records per configuration.
    pub records: usize,
    /// Alternating rounds; figures are medians.
    pub rounds: usize,
    /// Partitions of the input and output topics.
    pub partitions: i32,
    /// `--max-in-flight`, when given.
    pub max_in_flight: Option<usize>,
    /// `--keys N`: distinct keys of the input records (0, the default: one per record).
    pub keys: usize,
    /// The flags given, e.g. `--raw-only`.
    pub flags: Vec<String>,
}

impl BenchArgs {
    /// This process's arguments.
    pub fn parse() -> BenchArgs {
        let mut a = BenchArgs {
            records: 100_000,
            rounds: 3,
            partitions: 4,
            max_in_flight: None,
            keys: 0,
            flags: Vec::new(),
        };
        let mut it = std::env::args().skip(1);
        while let Some(arg) = it.next() {
            let mut value = || {
                it.next()
                    .and_then(|v| v.parse::<usize>().ok())
                    .expect("a number")
            };
            match arg.as_str() {
                "--records" => a.records = value(),
                "--rounds" => a.rounds = value(),
                "--partitions" => a.partitions = value() as i32,
                "--max-in-flight" => a.max_in_flight = Some(value()),
                "--keys" => a.keys = value(),
                flag => a.flags.push(flag.to_string()),
            }
        }
        a
    }

    /// Whether `flag` was given.
    pub fn has(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    /// The number after `name` (e.g. `--orders 5000`), or `default`.
    pub fn usize(&self, name: &str, default: usize) -> usize {
        self.flags
            .iter()
            .position(|f| f == name)
            .and_then(|i| self.flags.get(i + 1))
            .map_or(default, |v| {
                v.parse()
                    .unwrap_or_else(|_| panic!("{name} takes a number, not {v:?}"))
            })
    }
}

/// What a throughput benchmark starts from: the broker, its input topic, and the CPU
/// accounting.
pub struct Opening {
    /// The broker and registry.
    pub ep: Endpoints,
    /// The input topic, filled with `records` framed `OrderPlaced` records.
    pub input: String,
    /// CPU accounting of this process and the broker.
    pub cpu: Cpu,
}

/// The opening every throughput benchmark shares: a header line naming `what` and the
/// workload, an input topic filled by raw rdkafka produce, and that produce printed as the
/// broker's produce ceiling with its CPU per record.
pub async fn opening(what: &str, prefix: &str, a: &BenchArgs) -> Opening {
    let (records, partitions, rounds, keys) = (a.records, a.partitions, a.rounds, a.keys);
    let ep = crate::endpoints();
    let (input, payload) = bench_input(&ep, prefix, partitions).await;
    let level = default_logging();
    println!(
        "{what} benchmark: {records} records of {} bytes, {}, {partitions} partitions, {rounds} rounds, log level {level}, broker {}",
        payload.len(),
        if keys == 0 {
            "one key each".to_string()
        } else {
            format!("{keys} keys")
        },
        ep.brokers
    );
    let cpu = Cpu {
        broker: broker_pid(&ep.brokers),
    };
    let (ep2, t2, p2) = (ep.clone(), input.clone(), payload.clone());
    let before = cpu.sample();
    let produce = tokio::task::spawn_blocking(move || raw_produce(&ep2, &t2, records, &p2, keys))
        .await
        .unwrap_or(f64::NAN);
    println!(
        "broker ceiling: raw produce {produce:>9.0} records/s; {}",
        cpu.per_record(before, records)
    );
    Opening { ep, input, cpu }
}

/// Benchmark settings for a processor under test: probes and statistics every 5 s. The log
/// level stays the default (`info`): a benchmark measures what a deployed processor pays.
pub fn quiet<A: eip_runtime::Section>(cfg: &mut eip_runtime::config::Config<A>) {
    cfg.telemetry.readiness_interval = std::time::Duration::from_secs(5);
    cfg.kafka.statistics_interval = std::time::Duration::from_secs(5);
}

/// Installs the logging a processor's binary installs, at the default settings (JSON to
/// stderr at `info`), so the processors a benchmark runs in-process pay for their spans and
/// logs as a deployed one does; returns the level, which every benchmark prints.
pub fn default_logging() -> String {
    let telemetry = eip_runtime::config::TelemetryConfig::default();
    eip_runtime::telemetry::init_logging(&telemetry);
    telemetry.log_filter
}

/// The stateless pass-through: records/s until all `n` outputs are acknowledged.
pub async fn stateless_passthrough(ep: &Endpoints, input: &str, output: &str, n: usize) -> f64 {
    let group = unique("bench-rt");
    let mut cfg = config(
        ep,
        input,
        &group,
        PassthroughConfig {
            output: output.to_string(),
        },
    );
    cfg.kafka = eip_runtime::config::KafkaConfig {
        group_id: group.clone(),
        ..bench_kafka(ep)
    };
    quiet(&mut cfg);
    let p = InProcess::start(cfg.clone(), Passthrough::new(&cfg.processor)).await;
    time_to_outputs(p, "passthrough", input, output, n).await
}

/// Records/s of the running `processor` `p`, from its first record consumed from `input`
/// until `n` outputs to `output` are acknowledged; then stops it.
pub async fn time_to_outputs(
    p: InProcess,
    processor: &str,
    input: &str,
    output: &str,
    n: usize,
) -> f64 {
    let consumed = p
        .running
        .metrics
        .consumed
        .with_label_values(&[processor, input]);
    let produced = p
        .running
        .metrics
        .produced
        .with_label_values(&[processor, output]);
    let mut first = None;
    while (produced.get() as usize) < n {
        if first.is_none() && consumed.get() > 0 {
            first = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = first.unwrap_or_else(Instant::now).elapsed();
    p.stop().await.unwrap();
    rate(n, elapsed)
}
