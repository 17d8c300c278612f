//! `eipctl`: the operator CLI. Run `eipctl --help`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

mod saga_cli;
use eip_schemas::ErrorClass;
use eipctl::dlq::ListLine;
use eipctl::{Endpoints, ProduceSpec, cqrs};
use saga_cli::{SagaCmd, saga_cmd};

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
    /// The projector's views: rebuild one with no downtime, cancel, drop old versions.
    #[command(subcommand)]
    Projection(ProjectionCmd),
    /// Ask the views what the gateway's query API answers, as JSON.
    #[command(subcommand)]
    Query(QueryCmd),
    /// An order's history and its state at any version, from the orders journal.
    #[command(subcommand)]
    Aggregate(AggregateCmd),
    /// Order commands with known outcomes, for demos and checks.
    #[command(subcommand)]
    Orders(OrdersCmd),
    /// Sagas, from the saga monitor's API: list, show one, stats.
    #[command(subcommand)]
    Saga(SagaCmd),
    /// The whole causal chain of one correlation id, read from the log: the commands (and how
    /// each came in), their outcomes, the order's events, every saga step, compensation and
    /// timeout, with the topic, partition and offset of each, in time order.
    Trace(saga_cli::TraceArgs),
}

#[derive(Debug, Subcommand)]
enum OrdersCmd {
    /// Send the command stories of ORDERS orders through every way in (Avro to the commands
    /// topic, JSON and XML over the gateway, XML to the router's legacy topic), with poison
    /// records and malformed requests among them; write what the views must then hold.
    Send {
        /// Orders (each 2 to 4 commands).
        #[arg(long, default_value_t = 1_000)]
        orders: u64,
        /// Poison records to the commands topic.
        #[arg(long, default_value_t = 3)]
        poison: u64,
        /// Order id prefix.
        #[arg(long, default_value = "order")]
        prefix: String,
        /// The gateway's base URL.
        #[arg(long, default_value = "http://127.0.0.1:8088")]
        gateway: String,
        /// The commands topic.
        #[arg(long, default_value = "order-commands")]
        commands_topic: String,
        /// The legacy XML topic the router converts.
        #[arg(long, default_value = "legacy.orders.place.xml")]
        legacy_topic: String,
        /// Where to write the expectation (JSON) for `eipctl query summary`.
        #[arg(long)]
        report: std::path::PathBuf,
        /// The saga definition, when the sagas run: the expectation then includes them.
        #[arg(long, requires = "saga_participants")]
        saga_definition: Option<std::path::PathBuf>,
        /// The participants' configuration file, for their injected failure rates.
        #[arg(long, requires = "saga_definition")]
        saga_participants: Option<std::path::PathBuf>,
    },
}

/// The views file, for `projection` and `query`.
#[derive(Debug, clap::Args)]
struct ViewsDb {
    /// The projector's SQLite file.
    #[arg(long, env = "EIP_VIEWS_DB", default_value = "eip-views.db")]
    db: std::path::PathBuf,
}

/// Where `query` reads the views: the SQLite file, or a CQL cluster.
#[derive(Debug, clap::Args)]
struct ViewsFrom {
    /// The projector's SQLite file (unless --cql-nodes is given).
    #[arg(long, env = "EIP_VIEWS_DB", default_value = "eip-views.db")]
    db: std::path::PathBuf,
    /// Read the views from this CQL cluster instead (ScyllaDB in production): contact
    /// points, host:port, comma-separated.
    #[arg(long, env = "EIP_VIEWS_CQL_NODES", value_delimiter = ',')]
    cql_nodes: Vec<String>,
    /// The views' keyspace on the CQL cluster (it must exist).
    #[arg(long, env = "EIP_VIEWS_KEYSPACE", default_value = "eip")]
    keyspace: String,
}

impl ViewsFrom {
    fn views(self) -> cqrs::Views {
        if self.cql_nodes.is_empty() {
            cqrs::Views::Sqlite(self.db)
        } else {
            cqrs::Views::Cql {
                nodes: self.cql_nodes,
                keyspace: self.keyspace,
            }
        }
    }
}

#[derive(Debug, Subcommand)]
enum ProjectionCmd {
    /// Build a new version of VIEW from offset 0 while the live one serves, then switch
    /// readers to it atomically. Ctrl-C cancels; the old version is kept until dropped.
    Rebuild {
        /// order_summary, orders_by_customer, product_sales, command_status or
        /// inventory_levels.
        view: String,
        #[command(flatten)]
        views: ViewsDb,
        /// The events topic the projector reads.
        #[arg(long, default_value = "order-events")]
        events_topic: String,
        /// The outcomes topic the projector reads.
        #[arg(long, default_value = "order-outcomes")]
        outcomes_topic: String,
        /// The stock levels topic the projector reads (inventory_levels is built from it
        /// alone).
        #[arg(long, default_value = "inventory-levels")]
        levels_topic: String,
        /// Go on when the topics can't be replayed whole (finite retention, deleted records).
        /// The rebuild still never switches past an order whose versions are missing.
        #[arg(long)]
        accept_truncated_history: bool,
        /// Fault injection only (tests): wait this long after claiming the new version.
        #[arg(long, hide = true, value_parser = humantime::parse_duration)]
        hold_after_begin: Option<std::time::Duration>,
    },
    /// Discard a rebuild that was interrupted (its tables are dropped).
    Cancel {
        /// The view.
        view: String,
        #[command(flatten)]
        views: ViewsDb,
    },
    /// Drop an old version of a view (never the live one).
    Drop {
        /// The view.
        view: String,
        /// The version to drop.
        #[arg(long)]
        version: i64,
        #[command(flatten)]
        views: ViewsDb,
    },
    /// Each view's live version, the one being built, and the versions stored.
    Status {
        #[command(flatten)]
        views: ViewsDb,
    },
}

#[derive(Debug, Subcommand)]
enum QueryCmd {
    /// An order's summary and lines.
    Order {
        /// The order id.
        id: String,
        #[command(flatten)]
        views: ViewsFrom,
    },
    /// A customer's orders, newest first.
    Customer {
        /// The customer id.
        id: String,
        /// Page size.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=500))]
        limit: u32,
        /// `next_cursor` of the previous page.
        #[arg(long)]
        cursor: Option<String>,
        #[command(flatten)]
        views: ViewsFrom,
    },
    /// A day's units and revenue per SKU and currency.
    Sales {
        /// The UTC day, YYYY-MM-DD.
        day: String,
        /// Page size.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=500))]
        limit: u32,
        /// `next_cursor` of the previous page.
        #[arg(long)]
        cursor: Option<String>,
        #[command(flatten)]
        views: ViewsFrom,
    },
    /// A command's outcome.
    Command {
        /// The command id.
        id: String,
        #[command(flatten)]
        views: ViewsFrom,
    },
    /// A SKU's stock level (the inventory-levels view).
    Inventory {
        /// The SKU.
        sku: String,
        #[command(flatten)]
        views: ViewsFrom,
    },
    /// The outcomes of the commands with a correlation id, a page at a time.
    Correlation {
        /// The correlation id.
        id: String,
        /// Page size.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=500))]
        limit: u32,
        /// `next_cursor` of the previous page.
        #[arg(long)]
        cursor: Option<String>,
        #[command(flatten)]
        views: ViewsFrom,
    },
    /// Wait until the views hold what `eipctl orders send` expects, then summarize them with
    /// samples of each view; fails if they differ.
    Summary {
        /// The expectation `eipctl orders send --report` wrote.
        #[arg(long)]
        expect: std::path::PathBuf,
        /// How long to wait for the views.
        #[arg(long, default_value = "300s", value_parser = humantime::parse_duration)]
        wait: Duration,
        /// The gateway's base URL, for the query URLs to try.
        #[arg(long, default_value = "http://127.0.0.1:8088")]
        gateway: String,
        #[command(flatten)]
        views: ViewsDb,
    },
}

#[derive(Debug, Subcommand)]
enum AggregateCmd {
    /// An order's events, oldest first, one JSON line each.
    History {
        /// The order id.
        id: String,
        /// The orders processor's journal.
        #[arg(long, env = "EIP_ORDERS_DB", default_value = "eip-orders.db")]
        db: std::path::PathBuf,
    },
    /// An order's state after a version (the latest by default).
    State {
        /// The order id.
        id: String,
        /// The version.
        #[arg(long)]
        at_version: Option<i64>,
        /// The orders processor's journal.
        #[arg(long, env = "EIP_ORDERS_DB", default_value = "eip-orders.db")]
        db: std::path::PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum SchemasCmd {
    /// Register every message schema under its record-name subject.
    Register,
}

#[derive(Debug, Subcommand)]
enum TopicsCmd {
    /// Create topics that don't exist yet, with their role's settings; existing topics are
    /// brought to their role's settings (other settings made on them are kept).
    Create {
        /// Topic names.
        #[arg(required = true)]
        names: Vec<String>,
        /// Partitions per topic.
        #[arg(long, default_value_t = 4)]
        partitions: i32,
        /// What the topics are for: `history` (kept forever: retention.ms=-1,
        /// retention.bytes=-1, cleanup.policy=delete), `dead-letters` (kept forever too) or
        /// `stream` (the broker's defaults). Without it, a name ending in `.dlq` holds dead
        /// letters and any other is history.
        #[arg(long, value_parser = parse_role)]
        role: Option<eip_runtime::topics::TopicRole>,
    },
    /// Check that history topics can be replayed whole from offset 0 (kept forever, never
    /// compacted, no record deleted); exits 1 naming each problem.
    Check {
        /// Topic names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Show a topic's partitions with their low and high watermarks.
    Describe {
        /// Topic name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum DlqCmd {
    /// List the records of a dead-letter topic: position, source, class, attempts, first
    /// failure, redrive count and reason, then counts by error class.
    List {
        /// The DLQ topic, e.g. orders.dlq.
        #[arg(long)]
        topic: String,
        #[command(flatten)]
        filter: FilterArgs,
        /// Print at most this many records (the summary counts every match).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print JSON lines: one {"kind":"record"} per record, then {"kind":"summary"}.
        #[arg(long)]
        json: bool,
    },
    /// Show one dead letter in full: every header, the key, and the payload (decoded
    /// through the registry when it is Confluent-framed Avro).
    Show {
        /// The DLQ topic.
        #[arg(long)]
        topic: String,
        /// Partition of the record in the DLQ.
        #[arg(long)]
        partition: i32,
        /// Offset of the record in the DLQ.
        #[arg(long)]
        offset: i64,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Send dead letters back to their source topic (or --to), without their eip.dlq.*
    /// headers; records are recorded in the ledger <topic>.redriven and never redriven twice.
    Redrive {
        /// The DLQ topic.
        #[arg(long)]
        topic: String,
        #[command(flatten)]
        filter: FilterArgs,
        /// Send every selected record to this topic instead of its eip.dlq.source-topic.
        #[arg(long)]
        to: Option<String>,
        /// Refuse records whose eip.redrive.count is already at least this (the loop guard).
        #[arg(long, default_value_t = eipctl::dlq::DEFAULT_MAX_REDRIVES,
              value_parser = clap::value_parser!(u32).range(1..))]
        max_redrives: u32,
        /// Say what would move; produce nothing and create nothing.
        #[arg(long)]
        dry_run: bool,
        /// Dead letters read, planned and moved (in one Kafka transaction) at a time.
        #[arg(long, default_value_t = eipctl::dlq::DEFAULT_CHUNK_RECORDS,
              value_parser = parse_chunk)]
        chunk_records: usize,
        /// Print the report as one JSON object.
        #[arg(long)]
        json: bool,
    },
}

/// Which dead letters: every given criterion must hold.
#[derive(Debug, clap::Args)]
struct FilterArgs {
    /// Regular expression matched against eip.dlq.reason.
    #[arg(long, value_parser = parse_regex)]
    reason: Option<eipctl::dlq::Regex>,
    /// Only records whose eip.dlq.source-topic is this.
    #[arg(long)]
    source_topic: Option<String>,
    /// Only records of this error class.
    #[arg(long, value_enum)]
    class: Option<ClassArg>,
    /// First failed at or after T: RFC 3339, or a duration ago such as 2h.
    #[arg(long, value_name = "T", value_parser = parse_when)]
    since: Option<time::OffsetDateTime>,
    /// First failed at or before T: RFC 3339, or a duration ago such as 30m.
    #[arg(long, value_name = "T", value_parser = parse_when)]
    until: Option<time::OffsetDateTime>,
}

impl FilterArgs {
    fn into_filter(self) -> eipctl::dlq::Filter {
        eipctl::dlq::Filter {
            reason: self.reason,
            source_topic: self.source_topic,
            class: self.class.map(|c| match c {
                ClassArg::Poison => ErrorClass::Poison,
                ClassArg::Transient => ErrorClass::Transient,
                ClassArg::Fatal => ErrorClass::Fatal,
            }),
            since: self.since,
            until: self.until,
        }
    }
}

/// Error classes, as written in eip.dlq.error-class.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ClassArg {
    Poison,
    Transient,
    Fatal,
}

fn parse_when(s: &str) -> Result<time::OffsetDateTime, String> {
    eipctl::dlq::parse_time(s, time::OffsetDateTime::now_utc()).map_err(|e| match e {
        eipctl::OpsError::Invalid { reason, .. } => reason,
        other => other.to_string(),
    })
}

fn parse_chunk(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!(
            "{s:?}: expected a whole number of records, at least 1"
        )),
    }
}

fn parse_regex(s: &str) -> Result<eipctl::dlq::Regex, String> {
    eipctl::dlq::Regex::new(s).map_err(|e| {
        // The regex crate explains syntax errors over several lines; keep the last one.
        let msg = e.to_string();
        let last = msg
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty())
            .unwrap_or("invalid")
            .trim_start_matches("error: ")
            .to_string();
        format!("not a valid regular expression: {last}")
    })
}

async fn dlq(ep: Endpoints, cmd: DlqCmd) -> anyhow::Result<()> {
    match cmd {
        DlqCmd::List {
            topic,
            filter,
            limit,
            json,
        } => {
            let listing = eipctl::dlq::list(&ep, &topic, &filter.into_filter(), limit).await?;
            let shown = listing.entries.len();
            for e in &listing.entries {
                if json {
                    println!("{}", serde_json::to_string(&ListLine::Record(e))?);
                } else {
                    println!("{}", e.line());
                }
            }
            if json {
                let summary = ListLine::Summary {
                    topic: &listing.topic,
                    scanned: listing.scanned,
                    matched: listing.matched,
                    shown,
                    by_class: &listing.by_class,
                };
                println!("{}", serde_json::to_string(&summary)?);
            } else {
                let classes: Vec<String> = listing
                    .by_class
                    .iter()
                    .map(|(c, n)| format!("{c} {n}"))
                    .collect();
                println!(
                    "{} of {} records in {topic} match{}; by class: {}",
                    listing.matched,
                    listing.scanned,
                    if shown < listing.matched {
                        format!(" (showing the first {shown}; raise --limit for more)")
                    } else {
                        String::new()
                    },
                    if classes.is_empty() {
                        "none".to_string()
                    } else {
                        classes.join(", ")
                    }
                );
            }
        }
        DlqCmd::Show {
            topic,
            partition,
            offset,
            json,
        } => {
            let r = eipctl::dlq::show(&ep, &topic, partition, offset).await?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                print_shown(&r)?;
            }
        }
        DlqCmd::Redrive {
            topic,
            filter,
            to,
            max_redrives,
            dry_run,
            chunk_records,
            json,
        } => {
            let opts = eipctl::dlq::RedriveOptions {
                to,
                max_redrives,
                dry_run,
                chunk_records,
            };
            let report = eipctl::dlq::redrive(&ep, &topic, &filter.into_filter(), &opts).await?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                for line in report.lines() {
                    println!("{line}");
                }
            }
        }
    }
    Ok(())
}

fn print_shown(r: &eipctl::dlq::ShownRecord) -> anyhow::Result<()> {
    use eipctl::dlq::Shown;
    println!(
        "{} partition {} offset {} (timestamp {})",
        r.topic,
        r.partition,
        r.offset,
        r.timestamp.as_deref().unwrap_or("none")
    );
    println!("headers:");
    for h in &r.headers {
        let v = match (&h.value, h.hex) {
            (None, _) => "(null)".to_string(),
            (Some(v), true) => format!("0x{v}"),
            (Some(v), false) => v.clone(),
        };
        println!("  {}: {v}", h.name);
    }
    let describe = |label: &str, s: &Option<Shown>| -> anyhow::Result<()> {
        match s {
            None => println!("{label}: (null)"),
            Some(Shown::Avro {
                schema_id,
                schema,
                value,
            }) => {
                println!("{label}: Avro {schema} (schema id {schema_id})");
                println!("{}", serde_json::to_string_pretty(value)?);
            }
            Some(Shown::Text { text, note }) => {
                if let Some(n) = note {
                    println!("{label} note: {n}");
                }
                println!("{label}: text ({} bytes)", text.len());
                println!("{text}");
            }
            Some(Shown::Hex {
                length,
                preview,
                truncated,
                note,
            }) => {
                if let Some(n) = note {
                    println!("{label} note: {n}");
                }
                println!(
                    "{label}: binary ({length} bytes), hex{}: {preview}",
                    if *truncated { " (first bytes)" } else { "" }
                );
            }
        }
        Ok(())
    };
    describe("key", &r.key)?;
    describe("payload", &r.payload)
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
        Command::Topics(TopicsCmd::Create {
            names,
            partitions,
            role,
        }) => {
            for change in eipctl::create_topics(&ep, &names, partitions, role).await? {
                println!("changed {change}");
            }
            println!("topics ready: {}", names.join(", "));
        }
        Command::Topics(TopicsCmd::Check { names }) => {
            let problems = eip_runtime::topics::history_problems(
                &ep.kafka(),
                &names,
                std::time::Duration::from_secs(15),
            )
            .await?;
            if !problems.is_empty() {
                for p in &problems {
                    println!("{p}");
                }
                anyhow::bail!(
                    "{} problem(s): these topics can't be replayed whole from offset 0",
                    problems.len()
                );
            }
            println!("history kept whole: {}", names.join(", "));
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
        Command::Dlq(cmd) => dlq(ep, cmd).await?,
        Command::Projection(cmd) => match cmd {
            ProjectionCmd::Rebuild {
                view,
                views,
                events_topic,
                outcomes_topic,
                levels_topic,
                accept_truncated_history,
                hold_after_begin,
            } => {
                // Each view from the topics its rows come from.
                let topics = if view == eip_store::views::INVENTORY_LEVELS.name {
                    vec![levels_topic]
                } else {
                    vec![events_topic, outcomes_topic]
                };
                cqrs::rebuild_view(
                    &ep,
                    &views.db,
                    &view,
                    topics,
                    accept_truncated_history,
                    hold_after_begin,
                )
                .await?
            }
            ProjectionCmd::Cancel { view, views } => cqrs::cancel_view(&views.db, &view)?,
            ProjectionCmd::Drop {
                view,
                version,
                views,
            } => cqrs::drop_view_version(&views.db, &view, version)?,
            ProjectionCmd::Status { views } => cqrs::status(&views.db)?,
        },
        Command::Query(QueryCmd::Summary {
            expect,
            wait,
            gateway,
            views,
        }) => {
            let text = std::fs::read_to_string(&expect)
                .with_context(|| format!("reading {}", expect.display()))?;
            let expect: cqrs::Expectation = serde_json::from_str(&text)?;
            cqrs::summary(&views.db, &expect, wait, &gateway).await?
        }
        Command::Orders(OrdersCmd::Send {
            orders,
            poison,
            prefix,
            gateway,
            commands_topic,
            legacy_topic,
            report,
            saga_definition,
            saga_participants,
        }) => {
            let codec = eip_schemas::Codec::new(ep.registry()?);
            let targets = eipctl::orders::Targets {
                gateway,
                commands: commands_topic,
                legacy_xml: legacy_topic,
            };
            let sent = eipctl::orders::send(&ep, &codec, &targets, &prefix, orders, poison).await?;
            let mut expect = cqrs::Expectation::of(&sent);
            if let (Some(def), Some(participants)) = (saga_definition, saga_participants) {
                expect = saga_cli::with_sagas(expect, &sent, &def, &participants)?;
            }
            std::fs::write(&report, serde_json::to_string_pretty(&expect)?)
                .with_context(|| format!("writing {}", report.display()))?;
            println!(
                "sent {} records for {orders} orders ({} commands, {} poison); {} malformed \
                 requests refused",
                sent.script.records,
                expect.commands,
                sent.script.poison,
                sent.refused.len()
            );
        }
        Command::Query(cmd) => {
            let (views, q) = match cmd {
                QueryCmd::Order { id, views } => (views, cqrs::Query::Order(id)),
                QueryCmd::Customer {
                    id,
                    limit,
                    cursor,
                    views,
                } => (views, cqrs::Query::Customer { id, limit, cursor }),
                QueryCmd::Sales {
                    day,
                    limit,
                    cursor,
                    views,
                } => (views, cqrs::Query::Sales { day, limit, cursor }),
                QueryCmd::Command { id, views } => (views, cqrs::Query::Command(id)),
                QueryCmd::Inventory { sku, views } => (views, cqrs::Query::Inventory(sku)),
                QueryCmd::Correlation {
                    id,
                    limit,
                    cursor,
                    views,
                } => (views, cqrs::Query::Correlation { id, limit, cursor }),
                QueryCmd::Summary { .. } => unreachable!("answered above"),
            };
            cqrs::query(&views.views(), q).await?
        }
        Command::Saga(cmd) => saga_cmd(cmd).await?,
        Command::Trace(args) => saga_cli::trace(&ep, args).await?,
        Command::Aggregate(AggregateCmd::History { id, db }) => cqrs::aggregate_history(&db, &id)?,
        Command::Aggregate(AggregateCmd::State { id, at_version, db }) => {
            cqrs::aggregate_state(&db, &id, at_version)?
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            // `eipctl` or `eipctl dlq` alone: the help is the useful answer.
            let _ = e.print();
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("eipctl: {}", one_line(&e.to_string()));
            return ExitCode::from(2);
        }
    };
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

/// A clap error on one line: its message without the usage block and the `--help` hint.
fn one_line(rendered: &str) -> String {
    let text: Vec<&str> = rendered
        .lines()
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let joined = text.join(" ");
    format!(
        "{} (see --help)",
        joined.strip_prefix("error: ").unwrap_or(&joined)
    )
}

/// A topic role named on the command line.
fn parse_role(name: &str) -> Result<eip_runtime::topics::TopicRole, String> {
    eip_runtime::topics::TopicRole::parse(name)
        .ok_or_else(|| format!("{name:?} is not a role: history, dead-letters or stream"))
}
