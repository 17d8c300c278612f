//! Each topic's role, and the broker settings that role needs: the one definition that
//! `eipctl topics create`, the runtime's `create_topics`, the local stack and the manifests
//! all use.
//!
//! - [`TopicRole::History`]: a topic that is a source of truth (commands, events, outcomes).
//!   It keeps every record forever (`retention.ms=-1`, `retention.bytes=-1`,
//!   `cleanup.policy=delete`), because a replay from offset 0 rebuilds aggregates and views
//!   from it. A processor that replays one refuses to start when it can no longer be replayed
//!   whole ([`check_history`]): finite retention, compaction, or a partition whose first
//!   records were deleted.
//! - [`TopicRole::DeadLetters`]: a DLQ. Its records wait for an operator to redrive them, so
//!   they are kept forever too; nothing else depends on its offset 0.
//! - [`TopicRole::Stream`]: anything else (a router's outputs, retry topics): the broker's
//!   defaults.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;

use crate::config::KafkaConfig;
use crate::kafka::{AdminError, base_config};

/// What a topic is for, which decides how long the broker keeps its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TopicRole {
    /// A source of truth, replayed from offset 0: kept forever, never compacted.
    History,
    /// A dead-letter topic: kept forever, until an operator redrives or purges it.
    DeadLetters,
    /// Anything else: the broker's retention.
    Stream,
}

/// The settings every history and dead-letter topic must have.
const FOREVER: &[(&str, &str)] = &[
    ("retention.ms", "-1"),
    ("retention.bytes", "-1"),
    ("cleanup.policy", "delete"),
];

impl TopicRole {
    /// The topic-level settings this role requires (set when the topic is created).
    pub fn configs(self) -> &'static [(&'static str, &'static str)] {
        match self {
            TopicRole::History | TopicRole::DeadLetters => FOREVER,
            TopicRole::Stream => &[],
        }
    }

    /// The role's name, as `eipctl topics create --role` takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            TopicRole::History => "history",
            TopicRole::DeadLetters => "dead-letters",
            TopicRole::Stream => "stream",
        }
    }

    /// The role named `name` (`history`, `dead-letters`, `stream`).
    pub fn parse(name: &str) -> Option<TopicRole> {
        [
            TopicRole::History,
            TopicRole::DeadLetters,
            TopicRole::Stream,
        ]
        .into_iter()
        .find(|r| r.as_str() == name)
    }

    /// The role a tool gives a topic it is not told about: a name ending in `dlq_suffix` holds
    /// dead letters; anything else is history, the safe choice (kept forever).
    pub fn by_name(name: &str, dlq_suffix: &str) -> TopicRole {
        if !dlq_suffix.is_empty() && name.ends_with(dlq_suffix) {
            TopicRole::DeadLetters
        } else {
            TopicRole::History
        }
    }
}

/// A topic to make sure of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// Name.
    pub name: String,
    /// Partitions when created.
    pub partitions: i32,
    /// What it is for: its settings when created.
    pub role: TopicRole,
}

/// Creates the topics that don't exist yet, each with its role's settings; topics that exist
/// are left alone (see [`conform`] to bring them to their role's settings).
pub async fn ensure_topics(
    kafka: &KafkaConfig,
    topics: &[TopicSpec],
    timeout: Duration,
) -> Result<(), AdminError> {
    let admin: AdminClient<DefaultClientContext> = base_config(kafka).create()?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| {
            t.role.configs().iter().fold(
                NewTopic::new(&t.name, t.partitions, TopicReplication::Fixed(1)),
                |n, (k, v)| n.set(k, v),
            )
        })
        .collect();
    let results = admin
        .create_topics(
            new.iter(),
            &AdminOptions::new().operation_timeout(Some(timeout)),
        )
        .await?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(AdminError::Create {
                    topic,
                    reason: code.to_string(),
                });
            }
        }
    }
    Ok(())
}

/// The current value of each of `keys` for every topic of `topics` (None: the broker did not
/// say).
async fn describe(
    admin: &AdminClient<DefaultClientContext>,
    topics: &[String],
    timeout: Duration,
) -> Result<HashMap<String, HashMap<String, (Option<String>, bool)>>, AdminError> {
    // Each topic once: the broker refuses a request that names a resource twice.
    let mut unique: Vec<&String> = topics.iter().collect();
    unique.sort();
    unique.dedup();
    let specs: Vec<ResourceSpecifier<'_>> = unique
        .iter()
        .map(|t| ResourceSpecifier::Topic(t.as_str()))
        .collect();
    let results = admin
        .describe_configs(
            specs.iter(),
            &AdminOptions::new().request_timeout(Some(timeout)),
        )
        .await?;
    let mut out = HashMap::new();
    for (topic, result) in unique.into_iter().zip(results) {
        let resource = result.map_err(|code| AdminError::Create {
            topic: topic.clone(),
            reason: format!("describing its configs: {code}"),
        })?;
        let entries = resource
            .entries
            .iter()
            .map(|e| {
                let dynamic = matches!(e.source, rdkafka::admin::ConfigSource::DynamicTopic);
                (e.name.clone(), (e.value.clone(), dynamic))
            })
            .collect();
        out.insert(topic.clone(), entries);
    }
    Ok(out)
}

/// The value of the topic-level setting `key` (e.g. `max.message.bytes`) of each of
/// `topics`, as the broker applies it (a default included); None where it did not say.
pub async fn topic_setting(
    kafka: &KafkaConfig,
    topics: &[String],
    key: &str,
    timeout: Duration,
) -> Result<HashMap<String, Option<String>>, AdminError> {
    let admin: AdminClient<DefaultClientContext> = base_config(kafka).create()?;
    Ok(describe(&admin, topics, timeout)
        .await?
        .into_iter()
        .map(|(topic, entries)| {
            let value = entries.get(key).and_then(|(v, _)| v.clone());
            (topic, value)
        })
        .collect())
}

/// Brings existing `topics` to their role's settings, keeping every other setting made on the
/// topic. Returns what was changed, as `topic: key a -> b` lines. Only operator tools call
/// this (`eipctl topics create`); processors never alter a topic, they refuse to start.
pub async fn conform(
    kafka: &KafkaConfig,
    topics: &[TopicSpec],
    timeout: Duration,
) -> Result<Vec<String>, AdminError> {
    let admin: AdminClient<DefaultClientContext> = base_config(kafka).create()?;
    let names: Vec<String> = topics.iter().map(|t| t.name.clone()).collect();
    let current = describe(&admin, &names, timeout).await?;
    let mut changes = Vec::new();
    for spec in topics {
        let Some(entries) = current.get(&spec.name) else {
            continue;
        };
        let wrong: Vec<(&str, &str)> = spec
            .role
            .configs()
            .iter()
            .filter(|(k, v)| entries.get(*k).and_then(|(value, _)| value.as_deref()) != Some(*v))
            .copied()
            .collect();
        if wrong.is_empty() {
            continue;
        }
        // AlterConfigs replaces the topic's whole dynamic config: carry over what was set.
        let mut alter = AlterConfig::new(ResourceSpecifier::Topic(&spec.name));
        for (k, (value, dynamic)) in entries {
            if *dynamic
                && !spec.role.configs().iter().any(|(key, _)| key == k)
                && let Some(value) = value
            {
                alter = alter.set(k, value);
            }
        }
        for (k, v) in spec.role.configs() {
            alter = alter.set(k, v);
        }
        for result in admin
            .alter_configs(
                std::iter::once(&alter),
                &AdminOptions::new().request_timeout(Some(timeout)),
            )
            .await?
        {
            result.map_err(|(_, code)| AdminError::Create {
                topic: spec.name.clone(),
                reason: format!("setting its configs: {code}"),
            })?;
        }
        for (k, v) in wrong {
            let was = entries
                .get(k)
                .and_then(|(value, _)| value.clone())
                .unwrap_or_else(|| "unset".into());
            changes.push(format!("{}: {k} {was} -> {v}", spec.name));
        }
    }
    Ok(changes)
}

/// Why a history topic can't be replayed whole from offset 0. Each string names the topic and
/// the setting or the partition, e.g. `order-events: retention.ms is 604800000 (must be -1)`.
pub async fn history_problems(
    kafka: &KafkaConfig,
    topics: &[String],
    timeout: Duration,
) -> Result<Vec<String>, AdminError> {
    if topics.is_empty() {
        return Ok(Vec::new());
    }
    let admin: AdminClient<DefaultClientContext> = base_config(kafka).create()?;
    let current = describe(&admin, topics, timeout).await?;
    let mut problems = Vec::new();
    for topic in topics {
        let entries = match current.get(topic) {
            Some(entries) if !entries.is_empty() => entries,
            _ => {
                problems.push(format!("{topic}: does not exist"));
                continue;
            }
        };
        for (k, v) in TopicRole::History.configs() {
            let value = entries.get(*k).and_then(|(value, _)| value.as_deref());
            if value != Some(*v) {
                problems.push(format!(
                    "{topic}: {k} is {} (must be {v})",
                    value.unwrap_or("unset")
                ));
            }
        }
    }
    let kafka = kafka.clone();
    let topics = topics.to_vec();
    let starts = tokio::task::spawn_blocking(move || low_watermarks(&kafka, &topics, timeout))
        .await
        .map_err(|e| AdminError::Create {
            topic: "(watermarks)".into(),
            reason: e.to_string(),
        })??;
    for (topic, partition, low) in starts {
        if low > 0 {
            problems.push(format!(
                "{topic}: partition {partition} starts at offset {low} (its first {low} records \
                 were deleted)"
            ));
        }
    }
    Ok(problems)
}

/// Every partition of `topics` with its low watermark (the first offset still held).
pub fn low_watermarks(
    kafka: &KafkaConfig,
    topics: &[String],
    timeout: Duration,
) -> Result<Vec<(String, i32, i64)>, AdminError> {
    let consumer: BaseConsumer = base_config(kafka).create()?;
    let mut out = Vec::new();
    for topic in topics {
        let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
        for t in metadata.topics() {
            for p in t.partitions() {
                let (low, _) = consumer.fetch_watermarks(topic, p.id(), timeout)?;
                out.push((topic.clone(), p.id(), low));
            }
        }
    }
    Ok(out)
}

/// The sentence a processor or a rebuild stops with when `problems` is not empty.
pub fn refusal(problems: &[String], accept_key: &str) -> String {
    format!(
        "history can't be replayed from offset 0: {}. Make the topics keep their history \
         (`eipctl topics create --role history NAME` sets retention.ms=-1, retention.bytes=-1 \
         and cleanup.policy=delete on an existing topic); or, if snapshots cover what is gone, \
         say so with {accept_key}",
        problems.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_and_dead_letters_are_kept_forever_and_streams_take_the_broker_defaults() {
        for role in [TopicRole::History, TopicRole::DeadLetters] {
            let configs: HashMap<_, _> = role.configs().iter().copied().collect();
            assert_eq!(configs.get("retention.ms"), Some(&"-1"));
            assert_eq!(configs.get("retention.bytes"), Some(&"-1"));
            assert_eq!(configs.get("cleanup.policy"), Some(&"delete"));
        }
        assert!(TopicRole::Stream.configs().is_empty());
    }

    #[test]
    fn a_role_round_trips_by_name_and_unknown_names_are_refused() {
        for role in [
            TopicRole::History,
            TopicRole::DeadLetters,
            TopicRole::Stream,
        ] {
            assert_eq!(TopicRole::parse(role.as_str()), Some(role));
        }
        assert_eq!(TopicRole::parse("forever"), None);
        assert_eq!(
            TopicRole::by_name("order-events.dlq", ".dlq"),
            TopicRole::DeadLetters
        );
        assert_eq!(
            TopicRole::by_name("order-events", ".dlq"),
            TopicRole::History
        );
    }
}
