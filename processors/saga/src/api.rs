//! The monitor's HTTP JSON API, served on its telemetry port next to `/metrics` (see
//! docs/openapi.json):
//! - `GET /sagas?status=stuck&limit=50&after=<cursor>`: sagas of a status, stalest first;
//! - `GET /sagas/{id}`: one saga with its events in time order and its expected path;
//! - `GET /sagas/by-correlation/{correlation_id}`: the sagas of a correlation id;
//! - `GET /sagas/stats`: counts per status and failures grouped by step and code;
//! - `POST /sagas/{id}/actions`: an operator action ([`crate::operator`]), with a bearer token
//!   of `processor.operator_tokens`.
//!
//! Bad input gets a 400 with a JSON reason; an unknown saga a 404; an action the saga's state
//! does not allow a 409; a store or broker that can't be reached a 503 with `Retry-After`.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use eip_store::saga_store::SagaStore;
use eip_store::saga_views::{SagaEventView, SagaView};
use eip_store::view_store::StoreError;
use serde::{Deserialize, Serialize};

use crate::definition::Definition;
use crate::fold::{Saga, Status};
use crate::operate::{NotDone, Operator};
use crate::operator::{ActionDone, ActionRequest};

/// The largest page.
pub const MAX_LIMIT: u32 = 500;

/// Step latencies this monitor instance measured since it started: the last
/// [`Latencies::KEEP`] per step, for the dashboard's percentiles (Prometheus keeps the full
/// histograms, `eip_saga_step_seconds`).
#[derive(Debug, Default)]
pub struct Latencies(
    std::sync::Mutex<std::collections::BTreeMap<String, std::collections::VecDeque<i64>>>,
);

impl Latencies {
    /// How many latencies are kept per step.
    pub const KEEP: usize = 10_000;

    /// Records that `step` took `ms`.
    pub fn record(&self, step: &str, ms: i64) {
        if let Ok(mut all) = self.0.lock() {
            let q = all.entry(step.to_string()).or_default();
            if q.len() == Self::KEEP {
                q.pop_front();
            }
            q.push_back(ms);
        }
    }

    /// The `p`-th percentile (0 to 100) of `step`'s kept latencies, if any.
    pub fn percentile(&self, step: &str, p: f64) -> Option<i64> {
        let all = self.0.lock().ok()?;
        let mut v: Vec<i64> = all.get(step)?.iter().copied().collect();
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
        v.get(rank.clamp(1, v.len()) - 1).copied()
    }
}

/// What the API reads: the definition, the monitor's store, and its measured latencies.
#[derive(Debug, Clone)]
pub struct Api {
    def: Arc<Definition>,
    store: SagaStore,
    latencies: Arc<Latencies>,
    operator: Option<Arc<Operator>>,
    tokens: Arc<Vec<Vec<u8>>>,
}

impl Api {
    /// An API over `store`.
    pub fn new(def: Arc<Definition>, store: SagaStore) -> Api {
        Api::with_latencies(def, store, Arc::new(Latencies::default()))
    }

    /// An API over `store` that shows `latencies`.
    pub fn with_latencies(
        def: Arc<Definition>,
        store: SagaStore,
        latencies: Arc<Latencies>,
    ) -> Api {
        Api {
            def,
            store,
            latencies,
            operator: None,
            tokens: Arc::new(Vec::new()),
        }
    }

    /// The same API, carrying out operator actions with `operator` for holders of `tokens`.
    pub fn with_operator(self, operator: Arc<Operator>, tokens: &[String]) -> Api {
        Api {
            operator: Some(operator),
            tokens: Arc::new(tokens.iter().map(|t| t.as_bytes().to_vec()).collect()),
            ..self
        }
    }
}

/// A store that can't answer: 503, with the reason.
fn unreadable(e: StoreError) -> Problem {
    Problem::unavailable(format!("the saga store can't be read: {e}"))
}

/// An error answer: a status and a JSON reason.
#[derive(Debug)]
pub struct Problem {
    status: StatusCode,
    reason: String,
    challenge: Option<&'static str>,
}

impl Problem {
    fn new(status: StatusCode, reason: impl Into<String>) -> Problem {
        Problem {
            status,
            reason: reason.into(),
            challenge: None,
        }
    }

    fn bad(reason: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, reason)
    }

    fn unavailable(reason: String) -> Problem {
        Problem::new(StatusCode::SERVICE_UNAVAILABLE, reason)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut r = (
            self.status,
            Json(serde_json::json!({ "error": self.reason })),
        )
            .into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let Some(c) = self.challenge {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(c));
        }
        r
    }
}

/// `GET /sagas` parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// A status (default `stuck`).
    pub status: Option<String>,
    /// Page size, 1 to [`MAX_LIMIT`] (default 50).
    pub limit: Option<u32>,
    /// The `next` of the previous page.
    pub after: Option<String>,
}

/// A page of sagas.
#[derive(Debug, Serialize, Deserialize)]
pub struct Page {
    /// The sagas.
    pub items: Vec<SagaView>,
    /// The cursor of the next page, if there may be one.
    pub next: Option<String>,
}

/// One saga with its events.
#[derive(Debug, Serialize, Deserialize)]
pub struct Detail {
    /// The saga.
    pub saga: SagaView,
    /// Its events in time order.
    pub events: Vec<SagaEventView>,
    /// The steps of the definition, in order.
    pub steps: Vec<String>,
}

/// Counts and failures.
#[derive(Debug, Serialize, Deserialize)]
pub struct Stats {
    /// The definition's name.
    pub saga: String,
    /// Sagas per status (every status, 0 included).
    pub counts: std::collections::BTreeMap<String, i64>,
    /// Failures by step and code, most frequent first.
    pub failures: Vec<FailureGroup>,
    /// Compensations seen, by step.
    #[serde(default)]
    pub compensations: std::collections::BTreeMap<String, i64>,
}

/// Failures of one step with one code.
#[derive(Debug, Serialize, Deserialize)]
pub struct FailureGroup {
    /// The step.
    pub step: String,
    /// The code.
    pub code: String,
    /// How many sagas.
    pub sagas: i64,
}

/// A cursor: the last entry's updated_at and saga id.
fn cursor(updated_at: i64, id: &str) -> String {
    format!("{updated_at}:{id}")
}

fn parse_cursor(c: &str) -> Result<(i64, String), Problem> {
    let (at, id) = c
        .split_once(':')
        .ok_or_else(|| Problem::bad(format!("after={c:?} is not a cursor this API gave")))?;
    let at = at
        .parse()
        .map_err(|_| Problem::bad(format!("after={c:?} is not a cursor this API gave")))?;
    Ok((at, id.to_string()))
}

/// Checks a saga or correlation id from a path.
fn check_id(what: &str, id: &str) -> Result<(), Problem> {
    match eip_schemas::limits::id_problem(id) {
        Some(problem) => Err(Problem::bad(format!("the {what} {problem}"))),
        None => Ok(()),
    }
}

async fn list(
    State(api): State<Api>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Page>, Problem> {
    let Query(q) = query.map_err(|e| Problem::bad(e.body_text()))?;
    let status = q.status.unwrap_or_else(|| "stuck".into());
    if Status::parse(&status).is_none() {
        let all: Vec<&str> = Status::ALL.iter().map(|s| s.as_str()).collect();
        return Err(Problem::bad(format!(
            "status={status:?}: one of {}",
            all.join(", ")
        )));
    }
    let limit = q.limit.unwrap_or(50);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(Problem::bad(format!(
            "limit={limit}: from 1 to {MAX_LIMIT}"
        )));
    }
    let after = q.after.as_deref().map(parse_cursor).transpose()?;
    let (items, next) = api
        .store
        .list(&status, after, limit)
        .await
        .map_err(unreadable)?;
    let next = next.map(|(at, id)| cursor(at, &id));
    Ok(Json(Page { items, next }))
}

async fn one(
    State(api): State<Api>,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Json<Detail>, Problem> {
    let Path(id) = path.map_err(|e| Problem::bad(e.body_text()))?;
    check_id("saga id", &id)?;
    let (saga, events) = futures_util::try_join!(api.store.saga(&id), api.store.events(&id, None))
        .map_err(unreadable)?;
    let Some(saga) = saga else {
        return Err(Problem::new(StatusCode::NOT_FOUND, format!("no saga {id}")));
    };
    Ok(Json(Detail {
        saga,
        events,
        steps: api.def.steps.iter().map(|s| s.name.clone()).collect(),
    }))
}

async fn by_correlation(
    State(api): State<Api>,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Json<Page>, Problem> {
    let Path(id) = path.map_err(|e| Problem::bad(e.body_text()))?;
    check_id("correlation id", &id)?;
    let items = api.store.by_correlation(&id).await.map_err(unreadable)?;
    Ok(Json(Page { items, next: None }))
}

async fn stats(State(api): State<Api>) -> Result<Json<Stats>, Problem> {
    let stats = api.store.stats(&api.def.name).await.map_err(unreadable)?;
    let mut compensations = std::collections::BTreeMap::new();
    for (event_type, n) in &stats.events {
        if let Some(crate::definition::Role::Compensated(i)) = api.def.role_of(event_type) {
            compensations.insert(api.def.steps[i].name.clone(), *n);
        }
    }
    let (counts, failures) = (stats.counts(), stats.failure_groups());
    let mut all: std::collections::BTreeMap<String, i64> = Status::ALL
        .iter()
        .map(|s| (s.as_str().to_string(), 0))
        .collect();
    for (status, n) in counts {
        all.insert(status, n);
    }
    Ok(Json(Stats {
        saga: api.def.name.clone(),
        counts: all,
        failures: failures
            .into_iter()
            .map(|(step, code, sagas)| FailureGroup { step, code, sagas })
            .collect(),
        compensations,
    }))
}

/// One step's figures on the dashboard.
#[derive(Debug, Serialize, Deserialize)]
pub struct StepFigures {
    /// The step.
    pub step: String,
    /// Completions seen.
    pub completed: i64,
    /// Failures seen.
    pub failed: i64,
    /// failed / (completed + failed).
    pub failure_rate: f64,
    /// Compensations seen.
    pub compensated: i64,
    /// Median latency from trigger to completion (this monitor instance, since it started).
    pub p50_ms: Option<i64>,
    /// 99th percentile of the same.
    pub p99_ms: Option<i64>,
}

/// What the dashboard shows, in one answer (and in each live update).
#[derive(Debug, Serialize, Deserialize)]
pub struct DashboardState {
    /// The definition's name.
    pub saga: String,
    /// Sagas per status.
    pub counts: std::collections::BTreeMap<String, i64>,
    /// Each step's figures, in the definition's order.
    pub steps: Vec<StepFigures>,
    /// Failures by step and code.
    pub failures: Vec<FailureGroup>,
    /// The 20 stalest stuck sagas.
    pub stuck: Vec<SagaView>,
    /// The 20 stalest running sagas.
    pub running: Vec<SagaView>,
}

impl Api {
    async fn dashboard_state(&self) -> Result<DashboardState, Problem> {
        let (stats, (stuck, _), (running, _)) = futures_util::try_join!(
            self.store.stats(&self.def.name),
            self.store.list("stuck", None, 20),
            self.store.list("running", None, 20),
        )
        .map_err(unreadable)?;
        let (counts, failures) = (stats.counts(), stats.failure_groups());
        let types = stats.events;
        let n = |t: Option<&String>| t.and_then(|t| types.get(t)).copied().unwrap_or(0);
        let steps = self
            .def
            .steps
            .iter()
            .map(|s| {
                let (completed, failed) = (n(Some(&s.completed_by)), n(Some(&s.failed_by)));
                StepFigures {
                    step: s.name.clone(),
                    completed,
                    failed,
                    failure_rate: if completed + failed == 0 {
                        0.0
                    } else {
                        failed as f64 / (completed + failed) as f64
                    },
                    compensated: n(s.compensated_by.as_ref()),
                    p50_ms: self.latencies.percentile(&s.name, 50.0),
                    p99_ms: self.latencies.percentile(&s.name, 99.0),
                }
            })
            .collect();
        let mut all: std::collections::BTreeMap<String, i64> = Status::ALL
            .iter()
            .map(|s| (s.as_str().to_string(), 0))
            .collect();
        all.extend(counts);
        Ok(DashboardState {
            saga: self.def.name.clone(),
            counts: all,
            steps,
            failures: failures
                .into_iter()
                .map(|(step, code, sagas)| FailureGroup { step, code, sagas })
                .collect(),
            stuck,
            running,
        })
    }
}

async fn dashboard_state(State(api): State<Api>) -> Result<Json<DashboardState>, Problem> {
    Ok(Json(api.dashboard_state().await?))
}

/// The dashboard's live updates: the dashboard state as a server-sent event (`state`) every
/// second, for as long as the client listens.
async fn live(
    State(api): State<Api>,
) -> axum::response::sse::Sse<
    impl futures_util::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>,
> {
    let stream = futures_util::stream::unfold((api, true), |(api, first)| async move {
        if !first {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
        let event = match api.dashboard_state().await {
            Ok(state) => axum::response::sse::Event::default()
                .event("state")
                .json_data(&state)
                .unwrap_or_default(),
            Err(p) => axum::response::sse::Event::default()
                .event("unavailable")
                .data(p.reason.clone()),
        };
        Some((Ok(event), (api, false)))
    });
    axum::response::sse::Sse::new(stream).keep_alive(axum::response::sse::KeepAlive::default())
}

/// The dashboard page: one file, no build step.
pub const DASHBOARD: &str = include_str!("dashboard.html");

async fn dashboard() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        DASHBOARD,
    )
}

/// The operator's credentials: operator actions are off without tokens (403); a missing or
/// wrong bearer token is a 401 with its challenge.
fn authorize(api: &Api, headers: &HeaderMap) -> Result<(), Problem> {
    if api.tokens.is_empty() {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "operator actions are off on this monitor: set processor.operator_tokens",
        ));
    }
    eip_runtime::auth::check_bearer(&api.tokens, headers).map_err(|denied| Problem {
        challenge: Some(match denied.error_code() {
            None => "Bearer realm=\"eip-saga-monitor\"",
            Some("invalid_request") => {
                "Bearer realm=\"eip-saga-monitor\", error=\"invalid_request\""
            }
            Some(_) => "Bearer realm=\"eip-saga-monitor\", error=\"invalid_token\"",
        }),
        ..Problem::new(StatusCode::UNAUTHORIZED, denied.reason())
    })
}

/// `POST /sagas/{id}/actions`: 202 with what was done and where it is recorded.
async fn act(
    State(api): State<Api>,
    headers: HeaderMap,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    body: Result<Json<ActionRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<ActionDone>), Problem> {
    authorize(&api, &headers)?;
    let Path(id) = path.map_err(|e| Problem::bad(e.body_text()))?;
    check_id("saga id", &id)?;
    let Json(request) = body.map_err(|e| Problem::bad(e.body_text()))?;
    let kind = request.check().map_err(Problem::bad)?;
    let events = api.store.events(&id, None).await.map_err(unreadable)?;
    let mut saga = Saga::default();
    for e in events {
        saga.observe(crate::monitor_store::observation(e));
    }
    if !saga.anchored(&api.def) {
        return Err(Problem::new(StatusCode::NOT_FOUND, format!("no saga {id}")));
    }
    let Some(operator) = &api.operator else {
        return Err(Problem::unavailable(
            "this API has no Kafka connection for operator actions".into(),
        ));
    };
    let done = operator
        .act(&id, &saga, kind, &request)
        .await
        .map_err(|e| match e {
            NotDone::Refused(r) => Problem::new(StatusCode::CONFLICT, r.0),
            NotDone::Unavailable(reason) => Problem::unavailable(reason),
        })?;
    Ok((StatusCode::ACCEPTED, Json(done)))
}

/// The API's routes.
pub fn routes(api: Api) -> Router {
    Router::new()
        .route("/dashboard", get(dashboard))
        .route("/sagas", get(list))
        .route("/sagas/stats", get(stats))
        .route("/sagas/dashboard-state", get(dashboard_state))
        .route("/sagas/live", get(live))
        .route("/sagas/by-correlation/{id}", get(by_correlation))
        .route("/sagas/{id}", get(one))
        .route("/sagas/{id}/actions", post(act))
        .fallback(|| async {
            Problem::new(
                StatusCode::NOT_FOUND,
                "no such path: see docs/openapi.json (x-served-by: eip-saga-monitor)",
            )
        })
        .method_not_allowed_fallback(|| async {
            Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "the saga API answers GET, and POST on /sagas/{id}/actions",
            )
        })
        .with_state(api)
}
