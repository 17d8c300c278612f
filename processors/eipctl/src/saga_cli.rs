//! `eipctl saga …`: the command line of the saga operator commands (see `eipctl::saga`).

use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use eipctl::cqrs;

/// Where the saga monitor answers.
#[derive(Debug, clap::Args)]
pub struct Monitor {
    /// The saga monitor's address (its telemetry port, which serves the saga API).
    #[arg(long, env = "EIP_SAGA_MONITOR", default_value = "127.0.0.1:9470")]
    pub monitor: String,
}

#[derive(Debug, Subcommand)]
pub enum SagaCmd {
    /// Sagas of a status, stalest first.
    List {
        /// running, completed, compensating, compensated, stuck or resolved.
        #[arg(long, default_value = "stuck")]
        status: String,
        /// Page size.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=500))]
        limit: u32,
        /// `more: --after` of the previous page.
        #[arg(long)]
        after: Option<String>,
        #[command(flatten)]
        monitor: Monitor,
    },
    /// One saga: its path against the definition, and its timeline.
    Show {
        /// The saga id (the order id).
        id: String,
        #[command(flatten)]
        monitor: Monitor,
    },
    /// An operator action, recorded in each saga's history with who did it: `reemit` publishes
    /// again the record that triggers what the saga waits for, `compensate` fails the step in
    /// progress (its compensation follows), `resolve` marks the saga handled by hand. On one
    /// saga (ID), or on every saga `--status` and the other filters select, with a progress
    /// bar.
    Act {
        /// reemit, compensate or resolve.
        #[arg(value_parser = ["reemit", "compensate", "resolve"])]
        action: String,
        /// One saga (the order id).
        #[arg(required_unless_present = "status", conflicts_with = "status")]
        id: Option<String>,
        /// Every saga of this status (stuck, running, compensating).
        #[arg(long)]
        status: Option<String>,
        /// ... whose step in progress (or being undone) is this one.
        #[arg(long, requires = "status")]
        step: Option<String>,
        /// ... whose failed step is this one.
        #[arg(long, requires = "status")]
        failed_step: Option<String>,
        /// ... with no progress for at least this long (`10m`).
        #[arg(long, requires = "status", value_parser = humantime::parse_duration)]
        idle_for: Option<Duration>,
        /// ... at most this many, the stalest first.
        #[arg(long, requires = "status")]
        max: Option<usize>,
        /// List the sagas the filter selects, and do nothing.
        #[arg(long, requires = "status")]
        dry_run: bool,
        /// Who acts (default: the login name).
        #[arg(long, env = "EIP_OPERATOR")]
        actor: Option<String>,
        /// Why (recorded with the action).
        #[arg(long)]
        reason: Option<String>,
        /// A bearer token of the monitor's `processor.operator_tokens`.
        #[arg(long, env = "EIP_SAGA_TOKEN", hide_env_values = true)]
        token: Option<String>,
        #[command(flatten)]
        monitor: Monitor,
    },
    /// Counts per status, and failures by step and code.
    Stats {
        #[command(flatten)]
        monitor: Monitor,
    },
    /// Wait until the monitor reports the sagas `eipctl orders send --saga-definition`
    /// expects, then summarize them; fails if they differ.
    Summary {
        /// The expectation `eipctl orders send --report` wrote.
        #[arg(long)]
        expect: std::path::PathBuf,
        /// How long to wait for the sagas.
        #[arg(long, default_value = "300s", value_parser = humantime::parse_duration)]
        wait: Duration,
        /// The inventory participant's SQLite file, for the inventory levels.
        #[arg(long)]
        inventory_db: std::path::PathBuf,
        /// The gateway whose query API serves the inventory-levels view: the summary checks
        /// that the view shows the participant's levels.
        #[arg(long)]
        gateway: Option<String>,
        #[command(flatten)]
        monitor: Monitor,
    },
}

/// Runs a saga command.
pub async fn saga_cmd(cmd: SagaCmd) -> anyhow::Result<()> {
    use eipctl::saga;
    let text = match cmd {
        SagaCmd::List {
            status,
            limit,
            after,
            monitor,
        } => {
            let mut path = format!("/sagas?status={status}&limit={limit}");
            if let Some(a) = after {
                path.push_str(&format!("&after={a}"));
            }
            let page = saga::get(&monitor.monitor, &path).await?;
            saga::render_list(&page, eip_runtime::stateful::now_ms())
        }
        SagaCmd::Show { id, monitor } => {
            let detail = saga::get(&monitor.monitor, &format!("/sagas/{id}")).await?;
            saga::render_show(&detail)
        }
        SagaCmd::Act {
            action,
            id,
            status,
            step,
            failed_step,
            idle_for,
            max,
            dry_run,
            actor,
            reason,
            token,
            monitor,
        } => {
            use eipctl::saga_act::{Client, Filter, act_on_all, render_done, render_outcome};
            let request = eip_saga::operator::ActionRequest {
                action: action.clone(),
                actor: eipctl::saga_act::actor(actor)?,
                reason,
                if_status: None,
                if_expect: None,
            };
            let client = Client::new(&monitor.monitor, token);
            if let Some(id) = id {
                let done = client.act(&id, &request).await.map_err(|e| match e {
                    eipctl::saga_act::NotDone::Refused(r) => anyhow::anyhow!("refused: {r}"),
                    eipctl::saga_act::NotDone::Failed(r) => anyhow::anyhow!("{r}"),
                })?;
                render_done(&done)
            } else {
                let filter = Filter {
                    status: status.unwrap_or_default(),
                    step,
                    failed_step,
                    idle_for,
                    max,
                };
                let sagas = client
                    .select(&filter, eip_runtime::stateful::now_ms())
                    .await?;
                if dry_run {
                    let page = eip_saga::api::Page {
                        items: sagas,
                        next: None,
                    };
                    print!(
                        "{}",
                        saga::render_list(&page, eip_runtime::stateful::now_ms())
                    );
                    return Ok(());
                }
                let bar = eipctl::progress::bar(sagas.len() as u64);
                bar.set_prefix("sagas");
                bar.set_message(action.clone());
                let outcome = act_on_all(&client, &sagas, &request, &bar).await;
                print!("{}", render_outcome(&action, &outcome));
                anyhow::ensure!(
                    outcome.failed.is_empty(),
                    "{} of {} actions failed",
                    outcome.failed.len(),
                    sagas.len()
                );
                String::new()
            }
        }
        SagaCmd::Stats { monitor } => {
            let stats = saga::get(&monitor.monitor, "/sagas/stats").await?;
            saga::render_stats(&stats)
        }
        SagaCmd::Summary {
            expect,
            wait,
            inventory_db,
            gateway,
            monitor,
        } => {
            let text = std::fs::read_to_string(&expect)
                .with_context(|| format!("reading {}", expect.display()))?;
            let expect: cqrs::Expectation = serde_json::from_str(&text)?;
            let sagas = expect
                .sagas
                .context("the expectation has no sagas: send with --saga-definition")?;
            saga::summary(
                &monitor.monitor,
                &sagas,
                wait,
                &inventory_db,
                gateway.as_deref(),
            )
            .await?;
            String::new()
        }
    };
    print!("{text}");
    Ok(())
}

/// `eipctl trace` arguments.
#[derive(Debug, clap::Args)]
pub struct TraceArgs {
    /// The correlation id.
    correlation_id: String,
    /// The saga definition, for its topics.
    #[arg(long, default_value = "deploy/sagas/order-fulfilment.toml")]
    definition: std::path::PathBuf,
    /// The orders' commands topic.
    #[arg(long, default_value = "order-commands")]
    commands_topic: String,
    /// The orders' outcomes topic.
    #[arg(long, default_value = "order-outcomes")]
    outcomes_topic: String,
}

/// `eipctl trace`: the topics of the definition and the orders', scanned for the id.
pub async fn trace(ep: &eipctl::Endpoints, args: TraceArgs) -> anyhow::Result<()> {
    let TraceArgs {
        correlation_id,
        definition,
        commands_topic,
        outcomes_topic,
    } = args;
    let def = eip_saga::config::load_definition(&definition)?;
    let mut topics = def.topics();
    topics.extend([commands_topic, outcomes_topic]);
    topics.sort();
    topics.dedup();
    let codec = eip_schemas::Codec::new(ep.registry()?);
    let links = eipctl::trace::trace(ep, &codec, &topics, &correlation_id).await?;
    anyhow::ensure!(
        !links.is_empty(),
        "no record of {} carries correlation id {correlation_id}",
        topics.join(", ")
    );
    print!("{}", eipctl::trace::render(&correlation_id, &links));
    Ok(())
}

/// The expectation with the sagas of `definition`, at the injected rates of the participants'
/// configuration file.
pub fn with_sagas(
    expect: cqrs::Expectation,
    sent: &eipctl::orders::SendReport,
    definition: &std::path::Path,
    participants: &std::path::Path,
) -> anyhow::Result<cqrs::Expectation> {
    let def = eip_saga::config::load_definition(definition)?;
    let config = eip_runtime::Config::<eip_saga::config::ParticipantConfig>::load_with_role(
        Some(participants),
        eip_runtime::config::environment(),
        Some("expectation"),
    )?;
    let rates = config
        .processor
        .inject
        .iter()
        .map(|(role, i)| (role.clone(), i.fail_rate))
        .collect();
    Ok(expect.with_sagas(sent, &def, &rates))
}
