//! `eipctl`: the operator CLI. Run `eipctl --help`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use eipctl::{Endpoints, ProduceSpec};

/// Operate an eip deployment: schemas, topics, sample data, dead letters.
#[derive(Debug, Parser)]
#[command(name = "eipctl", version)]
struct Cli {
    /// Kafka bootstrap servers.
    #[arg(
        long,
        env = "EIP_KAFKA_BROKERS",
        default_value = "127.0.0.1:19092",
        global = true
    )]
    brokers: String,
    /// Schema registry URL.
    #[arg(
        long,
        env = "EIP_REGISTRY_URL",
        default_value = "http://127.0.0.1:18081",
        global = true
    )]
    registry: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Schema registry operations.
    #[command(subcommand)]
    Schemas(SchemasCmd),
    /// Topic administration.
    #[command(subcommand)]
    Topics(TopicsCmd),
    /// Produce sample OrderPlaced events (and optional poison records).
    Produce {
        /// Target topic.
        #[arg(long)]
        topic: String,
        /// Valid records to produce.
        #[arg(long, default_value_t = 1000)]
        count: u64,
        /// Poison records spread among them.
        #[arg(long, default_value_t = 0)]
        poison: u64,
        /// Sequence number of the first record.
        #[arg(long, default_value_t = 0)]
        start: u64,
        /// Distinct keys to cycle through (0: one per record).
        #[arg(long, default_value_t = 0)]
        keys: u64,
    },
    /// Print how many records a topic holds.
    Count {
        /// Topic.
        #[arg(long)]
        topic: String,
    },
    /// Wait until a topic holds at least COUNT records.
    Wait {
        /// Topic.
        #[arg(long)]
        topic: String,
        /// Records to wait for.
        #[arg(long)]
        count: u64,
        /// Give up after this long (e.g. 90s).
        #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Dead-letter topics.
    #[command(subcommand)]
    Dlq(DlqCmd),
}

#[derive(Debug, Subcommand)]
enum SchemasCmd {
    /// Register every message schema under its record-name subject.
    Register,
}

#[derive(Debug, Subcommand)]
enum TopicsCmd {
    /// Create topics that don't exist yet.
    Create {
        /// Topic names.
        #[arg(required = true)]
        names: Vec<String>,
        /// Partitions per topic.
        #[arg(long, default_value_t = 4)]
        partitions: i32,
    },
    /// Show a topic's partitions with their low and high watermarks.
    Describe {
        /// Topic name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum DlqCmd {
    /// List the records of a dead-letter topic with their reasons.
    List {
        /// The DLQ topic, e.g. orders.dlq.
        #[arg(long)]
        topic: String,
        /// At most this many records.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let ep = Endpoints {
        brokers: cli.brokers,
        registry: cli.registry,
    };
    match cli.command {
        Command::Schemas(SchemasCmd::Register) => {
            for r in eipctl::register_schemas(&ep).await? {
                println!("{:<45} id {}", r.subject, r.id);
            }
        }
        Command::Topics(TopicsCmd::Create { names, partitions }) => {
            eipctl::create_topics(&ep, &names, partitions).await?;
            println!("topics ready: {}", names.join(", "));
        }
        Command::Topics(TopicsCmd::Describe { name }) => {
            let t = name.clone();
            let marks = tokio::task::spawn_blocking(move || eipctl::watermarks(&ep, &t)).await??;
            println!("{name}: {} partitions", marks.len());
            for (p, low, high) in marks {
                println!("  partition {p}: low watermark {low}, high watermark {high}");
            }
        }
        Command::Produce {
            topic,
            count,
            poison,
            start,
            keys,
        } => {
            let report = eipctl::produce_orders(
                &ep,
                &ProduceSpec {
                    topic: topic.clone(),
                    count,
                    start,
                    poison,
                    keys,
                },
            )
            .await
            .with_context(|| format!("producing to {topic}"))?;
            let secs = report.elapsed.as_secs_f64().max(1e-9);
            println!(
                "produced {} {} and {} poison records to {topic} in {:.2}s ({:.0} records/s)",
                report.valid,
                eipctl::sample_type(),
                report.poison,
                secs,
                (report.valid + report.poison) as f64 / secs
            );
        }
        Command::Count { topic } => {
            let n = tokio::task::spawn_blocking(move || eipctl::count(&ep, &topic)).await??;
            println!("{n}");
        }
        Command::Wait {
            topic,
            count,
            timeout,
        } => {
            let n = eipctl::wait_for_count(&ep, &topic, count, timeout).await?;
            println!("{topic} holds {n} records");
        }
        Command::Dlq(DlqCmd::List { topic, limit }) => {
            let t = topic.clone();
            let ep2 = ep.clone();
            let records = tokio::task::spawn_blocking(move || {
                eipctl::read_all(&ep2, &t, Duration::from_secs(30))
            })
            .await??;
            println!("{} records in {topic}", records.len());
            for r in records.iter().take(limit) {
                println!(
                    "  {}[{}]@{} <- {}[{}]@{} class={} attempts={} first-failure={}\n    reason: {}",
                    topic,
                    r.partition,
                    r.offset,
                    r.header(eip_runtime::dlq::SOURCE_TOPIC).unwrap_or("?"),
                    r.header(eip_runtime::dlq::SOURCE_PARTITION).unwrap_or("?"),
                    r.header(eip_runtime::dlq::SOURCE_OFFSET).unwrap_or("?"),
                    r.header(eip_runtime::dlq::ERROR_CLASS).unwrap_or("?"),
                    r.header(eip_runtime::dlq::ATTEMPTS).unwrap_or("?"),
                    r.header(eip_runtime::dlq::FIRST_FAILURE).unwrap_or("?"),
                    r.header(eip_runtime::dlq::REASON).unwrap_or("?"),
                );
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("eipctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("eipctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}
