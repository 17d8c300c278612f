//! # eip-router
//!
//! The content-based router of eip's service bus: it consumes source topics, matches each
//! record against a declarative rules file ([`rules`]), transforms it ([`transform`]),
//! converts formats, and routes it to one or more topics. Failed deliveries go through retry
//! topics with growing delays and end in the DLQ ([`processor`]); the rules reload without a
//! restart ([`reload`]).

pub mod processor;
pub mod reload;
pub mod rules;
pub mod transform;
pub mod value;

use std::path::Path;
use std::sync::Arc;

use eip_runtime::config::{Config, ConfigError};
use eip_runtime::{Extras, Running};

use processor::{Router, RouterConfig, retry_topic};
use reload::Rules;

/// Builds the router from its configuration: loads and validates the rules file (a bad one is
/// a configuration error naming `processor.rules` and the location in the file), adds the
/// retry topics of every input to the inputs, and returns the admin routes and a start hook
/// that registers the router's metrics and starts the file watcher and the SIGHUP handler.
pub fn build(config: &mut Config<RouterConfig>) -> Result<(Router, Extras), ConfigError> {
    let settings = &config.processor;
    let rules = Rules::load(Path::new(&settings.rules))
        .map_err(|e| ConfigError::invalid("processor.rules", e.to_string()))?;
    let rules = Arc::new(rules);
    let sources = config.pipeline.inputs.clone();
    let levels = settings.delays()?.len();
    for source in &sources {
        for level in 1..=levels {
            let topic = retry_topic(source, level);
            if !config.pipeline.inputs.contains(&topic) {
                config.pipeline.inputs.push(topic);
            }
        }
    }
    let router = Router::new(
        rules.clone(),
        settings,
        sources,
        &config.pipeline.dlq_suffix,
        config.registry.settings(),
    )?;
    let metrics = router.metrics().clone();
    let watch = settings.watch_interval;
    let routes = rules.routes();
    let on_start = Box::new(move |running: Running| {
        let registry = running.metrics.registry();
        if let Err(e) = rules
            .register(registry)
            .and_then(|()| metrics.register(registry))
        {
            tracing::error!(error = %e, "router metrics not registered");
        }
        // The watchers end when the pipeline starts to stop.
        let stop = running.stopping.clone();
        if !watch.is_zero() {
            tokio::spawn(rules.clone().watch(watch, stop.clone()));
        }
        #[cfg(unix)]
        tokio::spawn(rules.clone().on_sighup(stop));
    });
    Ok((
        router,
        Extras {
            routes,
            on_start: Some(on_start),
        },
    ))
}
