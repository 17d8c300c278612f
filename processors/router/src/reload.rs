//! Hot reload of the rules file: by file change, SIGHUP, or `POST /admin/reload`.
//!
//! A new rule set is parsed and validated completely before it replaces the old one with one
//! atomic pointer swap. Each record is routed by the rule set it started with (the router
//! takes a snapshot per record), so a reload under load loses and duplicates nothing: offsets
//! and deliveries don't depend on which rule set was active. An invalid file leaves the old
//! rule set running, is logged with its location, and counts in
//! `eip_router_rules_reloads_total{result="error"}`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::rules::{RuleSet, RulesError};

/// Metric: reload attempts by result (`ok`, `error`, `unchanged`).
pub const RELOADS: &str = "eip_router_rules_reloads_total";
/// Metric: 1 for the active rules version.
pub const VERSION_INFO: &str = "eip_router_rules_version_info";
/// Metric: number of rules in the active set.
pub const RULE_COUNT: &str = "eip_router_rules";

/// The active rule set and how to reload it.
#[derive(Debug)]
pub struct Rules {
    path: PathBuf,
    current: ArcSwap<RuleSet>,
    loaded_text: Mutex<String>,
    reloads: IntCounterVec,
    version: IntGaugeVec,
    count: IntGauge,
}

/// Why a reload did not change the active rules.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file could not be read.
    #[error("reading {path}: {reason}")]
    Read {
        /// The rules file.
        path: String,
        /// What failed.
        reason: String,
    },
    /// The file is invalid.
    #[error(transparent)]
    Invalid(#[from] RulesError),
}

fn read(path: &Path) -> Result<String, ReloadError> {
    std::fs::read_to_string(path).map_err(|e| ReloadError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

impl Rules {
    /// Loads `path`; an unreadable or invalid file is an error (a startup error).
    pub fn load(path: &Path) -> Result<Rules, ReloadError> {
        let text = read(path)?;
        let set = RuleSet::parse(&path.display().to_string(), &text)?;
        let rules = Rules {
            path: path.to_path_buf(),
            current: ArcSwap::from_pointee(set),
            loaded_text: Mutex::new(text),
            reloads: IntCounterVec::new(
                Opts::new(RELOADS, "Rules reload attempts by result."),
                &["result"],
            )
            .map_err(|e| ReloadError::Read {
                path: RELOADS.into(),
                reason: e.to_string(),
            })?,
            version: IntGaugeVec::new(
                Opts::new(VERSION_INFO, "1 for the active rules version."),
                &["version"],
            )
            .map_err(|e| ReloadError::Read {
                path: VERSION_INFO.into(),
                reason: e.to_string(),
            })?,
            count: IntGauge::new(RULE_COUNT, "Rules in the active rule set.").map_err(|e| {
                ReloadError::Read {
                    path: RULE_COUNT.into(),
                    reason: e.to_string(),
                }
            })?,
        };
        rules.publish(&rules.current());
        Ok(rules)
    }

    /// The active rule set (a snapshot: later reloads don't change it).
    pub fn current(&self) -> Arc<RuleSet> {
        self.current.load_full()
    }

    /// The rules file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Registers the reload metrics with `registry`.
    pub fn register(&self, registry: &prometheus::Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.reloads.clone()))?;
        registry.register(Box::new(self.version.clone()))?;
        registry.register(Box::new(self.count.clone()))
    }

    fn publish(&self, set: &RuleSet) {
        self.version.reset();
        self.version
            .with_label_values(&[set.version.as_ref()])
            .set(1);
        self.count.set(set.rules.len() as i64);
    }

    /// Reads and validates the file and swaps it in. `trigger` names the cause in logs. An
    /// unchanged file is not parsed again unless `force`.
    pub fn reload(&self, trigger: &str, force: bool) -> Result<Arc<RuleSet>, ReloadError> {
        let outcome = read(&self.path).and_then(|text| {
            let mut loaded = self
                .loaded_text
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if !force && *loaded == text {
                return Ok(None);
            }
            let set = Arc::new(RuleSet::parse(&self.path.display().to_string(), &text)?);
            // Swapped under the lock, so racing triggers can't leave an older set active.
            let old = self.current.swap(set.clone());
            self.publish(&set);
            *loaded = text;
            Ok(Some((old, set)))
        });
        match outcome {
            Ok(Some((old, set))) => {
                self.reloads.with_label_values(&["ok"]).inc();
                info!(trigger, from = %old.version, to = %set.version, rules = set.rules.len(), "rules reloaded");
                Ok(set)
            }
            Ok(None) => {
                self.reloads.with_label_values(&["unchanged"]).inc();
                Ok(self.current())
            }
            Err(e) => {
                self.reloads.with_label_values(&["error"]).inc();
                error!(trigger, error = %e, active = %self.current().version, "rules reload rejected: keeping the active rules");
                Err(e)
            }
        }
    }

    /// Polls the file every `interval` and reloads it when its contents change.
    pub async fn watch(self: Arc<Self>, interval: Duration, stop: CancellationToken) {
        let mut last_failed: Option<String> = None;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = stop.cancelled() => return,
            }
            let Ok(text) = std::fs::read_to_string(&self.path) else {
                continue;
            };
            let changed = {
                let loaded = self
                    .loaded_text
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                *loaded != text
            };
            // An invalid edit is reported once, not every poll.
            if changed && last_failed.as_deref() != Some(text.as_str()) {
                match self.reload("file change", false) {
                    Ok(_) => last_failed = None,
                    Err(_) => last_failed = Some(text),
                }
            }
        }
    }

    /// Reloads on every SIGHUP until `stop`.
    #[cfg(unix)]
    pub async fn on_sighup(self: Arc<Self>, stop: CancellationToken) {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            error!("could not install the SIGHUP handler: reload by file change or HTTP instead");
            return;
        };
        loop {
            tokio::select! {
                r = hup.recv() => if r.is_none() { return },
                _ = stop.cancelled() => return,
            }
            let _ = self.reload("SIGHUP", true);
        }
    }

    /// `POST /admin/reload` (reload now; 200 with the version, or 422 with the located error)
    /// and `GET /admin/rules` (the active version and rule names).
    pub fn routes(self: &Arc<Self>) -> axum::Router {
        axum::Router::new()
            .route("/admin/reload", post(reload_handler))
            .route("/admin/rules", get(rules_handler))
            .with_state(self.clone())
    }
}

fn summary(set: &RuleSet) -> serde_json::Value {
    serde_json::json!({
        "version": set.version.as_ref(),
        "mode": format!("{:?}", set.mode),
        "rules": set.rules.iter().map(|r| r.name.as_ref()).collect::<Vec<_>>(),
        "default": set.default.is_some(),
    })
}

async fn reload_handler(State(rules): State<Arc<Rules>>) -> (StatusCode, Json<serde_json::Value>) {
    match rules.reload("admin endpoint", true) {
        Ok(set) => (StatusCode::OK, Json(summary(&set))),
        Err(e) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(serde_json::json!({
                "error": e.to_string(),
                "active_version": rules.current().version.as_ref(),
            })),
        ),
    }
}

async fn rules_handler(State(rules): State<Arc<Rules>>) -> Json<serde_json::Value> {
    Json(summary(&rules.current()))
}
