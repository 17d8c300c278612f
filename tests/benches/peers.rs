//! eip side by side with Kafka Streams 4.4, on the same broker, input and work.
//!
//! ```text
//! make bench    # builds the peer (tests/benches/peers/kafka-streams) and runs this
//! EIP_PEER_CLASSPATH=<classes>:<lib>/* cargo bench -p eip-tests --bench peers -- --records N --rounds R
//! ```
//!
//! Every processor runs as its own process, as deployed, and is measured from outside the
//! same way: the benchmark watches the output topic's end offsets and the process's CPU time
//! and peak resident memory in /proc. Per configuration and round it reports:
//! - launch to done: from starting the process until all `N` outputs are on the broker
//!   (startup, group join and, for the JVM, warm-up included);
//! - warm records/s and client CPU µs/record over the warm window: from the moment 20% of
//!   the outputs are on the broker to the last;
//! - peak resident memory (`VmHWM`).
//!
//! The configurations, each reading the same `N` framed `OrderPlaced` records from the start:
//! 1. raw rdkafka consume → produce (in this process: the floor of client work);
//! 2. `eip-passthrough` (as shipped, with mimalloc, and built with the system allocator when
//!    `EIP_PEER_SYSTEM_ALLOC` names that binary) and the Kafka Streams pass-through: decode the framed Avro, validate
//!    it is an `OrderPlaced`, re-encode, produce (at-least-once, idempotent, `acks=all`);
//!    Kafka Streams at its defaults, and again with eip's producer batching;
//! 3. eip's `router` and the Kafka Streams router with the same 10-rule table.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::time::{Duration, Instant};

use eip_runtime::kafka;
use eip_tests::bench::*;
use eip_tests::*;
use rdkafka::consumer::{BaseConsumer, Consumer};

/// What one run of a processor measured.
#[derive(Debug, Clone, Copy)]
struct Run {
    launch_to_done: Duration,
    warm_rate: f64,
    cpu_us: f64,
    rss_mb: f64,
}

/// The peak resident memory of `pid` in MB, from /proc.
fn peak_rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Watches process `pid` put `n` records on `topic`; see the module docs.
fn watch(
    ep: &Endpoints,
    pid: u32,
    topic: &str,
    partitions: i32,
    n: usize,
    launched: Instant,
) -> Run {
    let consumer: BaseConsumer = kafka::base_config(&ep.kafka()).create().unwrap();
    let count = || -> usize {
        (0..partitions)
            .map(|p| {
                consumer
                    .fetch_watermarks(topic, p, Duration::from_secs(5))
                    .map_or(0, |(_, high)| high)
            })
            .sum::<i64>() as usize
    };
    let cpu = || cpu_time(&pid.to_string()).unwrap_or_default();
    let mut warm: Option<(Instant, usize, Duration)> = None;
    let deadline = launched + Duration::from_secs(600);
    loop {
        let c = count();
        let now = Instant::now();
        if warm.is_none() && c >= n / 5 {
            warm = Some((now, c, cpu()));
        }
        if c >= n {
            let (t0, c0, cpu0) = warm.unwrap();
            let records = (c - c0).max(1) as f64;
            return Run {
                launch_to_done: now - launched,
                warm_rate: records / (now - t0).as_secs_f64().max(1e-9),
                cpu_us: (cpu() - cpu0).as_secs_f64() * 1e6 / records,
                rss_mb: peak_rss_mb(pid),
            };
        }
        assert!(
            now < deadline,
            "{pid} put only {c} of {n} records on {topic} in 10 minutes"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `program` until it has put `n` records on `output`, then stops it.
async fn measure(
    ep: &Endpoints,
    program: &std::path::Path,
    args: &[&str],
    env: &[(String, String)],
    output: &str,
    partitions: i32,
    n: usize,
) -> Run {
    let launched = Instant::now();
    let mut child = ChildProcess::spawn(program, args, env);
    let pid = child.pid();
    let (ep2, out) = (ep.clone(), output.to_string());
    let run = tokio::task::spawn_blocking(move || watch(&ep2, pid, &out, partitions, n, launched))
        .await
        .unwrap_or_else(|e| panic!("{e}; log:\n{}", child.log_text()));
    child.signal("TERM");
    child.wait(Duration::from_secs(60)).await;
    run
}

fn print(round: usize, name: &str, r: &Run) {
    println!(
        "round {round}: {name:<46} launch to done {:>6.1} s; warm {:>9.0} records/s; client CPU {:>5.1} µs/record; peak RSS {:>5.0} MB",
        r.launch_to_done.as_secs_f64(),
        r.warm_rate,
        r.cpu_us,
        r.rss_mb
    );
}

/// The Kafka Streams peer's command line, or `None` without `EIP_PEER_CLASSPATH`.
fn streams(
    ep: &Endpoints,
    mode: &str,
    input: &str,
    output: &str,
    rules: usize,
    batching: bool,
) -> Option<Vec<String>> {
    let classpath = std::env::var("EIP_PEER_CLASSPATH").ok()?;
    let mut args = vec![
        "-cp".to_string(),
        classpath,
        "eip.peer.StreamsPeer".to_string(),
        mode.to_string(),
        ep.brokers.clone(),
        ep.registry.clone(),
        input.to_string(),
        output.to_string(),
        unique("bench-ks"),
        rules.to_string(),
    ];
    if batching {
        // eip's producer: librdkafka's batch.size (1,000,000 bytes) and linger.ms 5.
        args.push("producer.batch.size=1000000".into());
        args.push("producer.linger.ms=5".into());
    }
    Some(args)
}

fn java() -> std::path::PathBuf {
    std::env::var("EIP_JAVA").map_or_else(|_| "java".into(), Into::into)
}

/// One processor to measure: how to start it and where its outputs go.
struct Config {
    name: &'static str,
    program: std::path::PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    output: String,
}

/// This round's processors, each with fresh output topics and group: eip's pass-through, the
/// Kafka Streams pass-through at its defaults and with eip's batching, the Kafka Streams router
/// and eip's router (10 rules, the last matching everything; its rules file lives in `dir`).
fn configs(ep: &Endpoints, input: &str, dir: &tempfile::TempDir) -> Vec<Config> {
    let mut configs = Vec::new();
    let output = unique("bench-peer-eip");
    configs.push(Config {
        name: "eip pass-through",
        program: bin("eip-passthrough"),
        args: Vec::new(),
        env: passthrough_env(ep, input, &output, &unique("bench-peer-eip"), free_port()),
        output,
    });
    if let Ok(program) = std::env::var("EIP_PEER_SYSTEM_ALLOC") {
        // The same pass-through built with `--no-default-features`: the system allocator
        // instead of mimalloc, so the allocator is measured in the same run.
        let output = unique("bench-peer-eip-sys");
        configs.push(Config {
            name: "eip pass-through (system allocator)",
            program: program.into(),
            args: Vec::new(),
            env: passthrough_env(
                ep,
                input,
                &output,
                &unique("bench-peer-eip-sys"),
                free_port(),
            ),
            output,
        });
    }
    for (name, mode, batching) in [
        (
            "Kafka Streams pass-through (defaults)",
            "passthrough",
            false,
        ),
        (
            "Kafka Streams pass-through (eip batching)",
            "passthrough",
            true,
        ),
        ("Kafka Streams router, 10 rules (defaults)", "router", false),
        (
            "Kafka Streams router, 10 rules (eip batching)",
            "router",
            true,
        ),
    ] {
        let output = unique("bench-peer-ks");
        if let Some(args) = streams(ep, mode, input, &output, 10, batching) {
            configs.push(Config {
                name,
                program: java(),
                args,
                env: Vec::new(),
                output,
            });
        }
    }
    let output = unique("bench-peer-router");
    let rules = dir.path().join("rules.toml");
    std::fs::write(&rules, router_rules(10, &output)).unwrap();
    let mut env = passthrough_env(
        ep,
        input,
        &output,
        &unique("bench-peer-router"),
        free_port(),
    );
    env.retain(|(k, _)| k != "EIP__PROCESSOR__OUTPUT");
    env.push(("EIP__PROCESSOR__RULES".into(), rules.display().to_string()));
    env.push(("EIP__PIPELINE__CREATE_TOPICS".into(), "true".into()));
    configs.push(Config {
        name: "eip router, 10 rules",
        program: bin("router"),
        args: Vec::new(),
        env,
        output,
    });
    configs
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let a = BenchArgs::parse();
    let Opening { ep, input, cpu } = opening("peers", "bench-peer", &a).await;
    let (n, parts) = (a.records, a.partitions);
    if std::env::var("EIP_PEER_CLASSPATH").is_err() {
        println!(
            "EIP_PEER_CLASSPATH is not set: the Kafka Streams peer is skipped (make bench sets it)"
        );
    }
    let mut runs: std::collections::BTreeMap<&str, Vec<Run>> = Default::default();
    let mut raws = Vec::new();
    for round in 1..=a.rounds {
        let out = unique("bench-peer-raw");
        create_topics(&ep, &[&out], parts).await;
        let (ep2, i2, o2) = (ep.clone(), input.clone(), out.clone());
        let before = cpu.sample();
        let raw = tokio::task::spawn_blocking(move || raw_passthrough(&ep2, &i2, &o2, n))
            .await
            .unwrap();
        println!(
            "round {round}: raw rdkafka consume → produce {raw:>9.0} records/s (first record to last); {}",
            cpu.per_record(before, n)
        );
        raws.push(raw);

        let rules_dir = tempfile::tempdir().unwrap();
        let configs = configs(&ep, &input, &rules_dir);
        let outputs: Vec<&str> = configs.iter().map(|c| c.output.as_str()).collect();
        create_topics(&ep, &outputs, parts).await;
        for c in configs {
            let args: Vec<&str> = c.args.iter().map(String::as_str).collect();
            let run = measure(&ep, &c.program, &args, &c.env, &c.output, parts, n).await;
            print(round, c.name, &run);
            runs.entry(c.name).or_default().push(run);
        }
    }
    let med = |f: fn(&Run) -> f64, v: &[Run]| median(v.iter().map(f).collect());
    println!(
        "median raw rdkafka consume → produce: {:.0} records/s",
        median(raws.clone())
    );
    for (name, v) in &runs {
        println!(
            "median {name:<46} launch to done {:>6.1} s; warm {:>9.0} records/s; client CPU {:>5.1} µs/record; peak RSS {:>5.0} MB",
            med(|r| r.launch_to_done.as_secs_f64(), v),
            med(|r| r.warm_rate, v),
            med(|r| r.cpu_us, v),
            med(|r| r.rss_mb, v)
        );
    }
    let ratio = |a: &str, b: &str, f: fn(&Run) -> f64| -> Option<f64> {
        Some(med(f, runs.get(a)?) / med(f, runs.get(b)?))
    };
    for (eip, peer) in [
        ("eip pass-through", "eip pass-through (system allocator)"),
        ("eip pass-through", "Kafka Streams pass-through (defaults)"),
        (
            "eip pass-through",
            "Kafka Streams pass-through (eip batching)",
        ),
        (
            "eip router, 10 rules",
            "Kafka Streams router, 10 rules (defaults)",
        ),
        (
            "eip router, 10 rules",
            "Kafka Streams router, 10 rules (eip batching)",
        ),
    ] {
        if let (Some(rate), Some(cpu), Some(rss)) = (
            ratio(eip, peer, |r| r.warm_rate),
            ratio(eip, peer, |r| r.cpu_us),
            ratio(eip, peer, |r| r.rss_mb),
        ) {
            println!(
                "{eip} / {peer}: warm records/s {rate:.2}x, CPU per record {cpu:.2}x, peak RSS {rss:.2}x"
            );
        }
    }
}
