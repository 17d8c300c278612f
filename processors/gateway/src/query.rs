//! The query API over the views the projector keeps (`gateway.views_db` for SQLite, or
//! `gateway.views_cql_nodes` for ScyllaDB):
//!
//! - `GET /v1/orders/{order_id}`: an order's summary and lines;
//! - `GET /v1/customers/{customer_id}/orders?limit=&cursor=`: a customer's orders, newest first;
//! - `GET /v1/sales/{day}?limit=&cursor=`: a day's units and revenue per SKU and currency;
//! - `GET /v1/commands/{command_id}`: a command's outcome;
//! - `GET /v1/commands?correlation_id=`: the outcomes of every command with that correlation id.
//!
//! A missing key is 404, a bad parameter or cursor 400, each with a reason. Pages end with
//! `next_cursor`, an opaque token for the next page (absent on the last one). A store that
//! can't be read is 503 with the reason. Both stores answer through
//! [`eip_store::view_store::ViewStore`]: SQLite on the blocking pool over a few read
//! connections, ScyllaDB connected on the first query.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use eip_runtime::StartupError;
use eip_store::view_scylla::{ScyllaSettings, ScyllaViews};
use eip_store::view_store::{AnyViews, SqliteViews, StoreError, ViewStore};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::OnceCell;

use crate::config::GatewaySettings;
use crate::http::{Shared, check_token, json_response};

/// Where the views come from: opened at startup (SQLite), or connected on first use (CQL).
#[derive(Debug)]
pub(crate) struct ViewsSource {
    ready: OnceCell<Arc<AnyViews>>,
    cql: Option<ScyllaSettings>,
}

impl ViewsSource {
    /// The views `settings` name, if any.
    pub(crate) fn of(settings: &GatewaySettings) -> Result<Option<ViewsSource>, StartupError> {
        if let Some(path) = &settings.views_db {
            let views = SqliteViews::open(path, settings.query_connections)
                .map_err(|e| StartupError::new(format!("the views at {}", path.display()), e))?;
            return Ok(Some(ViewsSource {
                ready: OnceCell::new_with(Some(Arc::new(AnyViews::Sqlite(views)))),
                cql: None,
            }));
        }
        if settings.views_cql_nodes.is_empty() {
            return Ok(None);
        }
        let cql = ScyllaSettings {
            nodes: settings.views_cql_nodes.clone(),
            keyspace: settings.views_keyspace.clone(),
            connect_timeout: std::time::Duration::from_secs(3),
            must_exist: true,
            ..ScyllaSettings::new(Vec::new())
        };
        Ok(Some(ViewsSource {
            ready: OnceCell::new(),
            cql: Some(cql),
        }))
    }

    /// The store, connecting to the CQL cluster the first time.
    async fn get(&self) -> Result<Arc<AnyViews>, Problem> {
        self.ready
            .get_or_try_init(|| async {
                let settings = self
                    .cql
                    .as_ref()
                    .ok_or_else(|| StoreError::Permanent("no views store is configured".into()))?;
                ScyllaViews::connect(settings)
                    .await
                    .map(|v| Arc::new(AnyViews::Cql(Box::new(v))))
            })
            .await
            .cloned()
            .map_err(store_problem)
    }
}

fn store_problem(e: StoreError) -> Problem {
    problem(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("the views could not be read: {e}"),
    )
}

/// The page size when `limit` is not given, and the largest one allowed.
pub const DEFAULT_LIMIT: u32 = 50;
/// The largest `limit`.
pub const MAX_LIMIT: u32 = 500;

/// `limit` and `cursor` of a paged query.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PageQuery {
    limit: Option<u32>,
    cursor: Option<String>,
}

/// `correlation_id` of the commands query.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CorrelationQuery {
    correlation_id: Option<String>,
}

/// A refused query: its status, its reason, and the authentication challenge of a 401.
#[derive(Debug)]
pub(crate) struct Problem {
    pub(crate) status: StatusCode,
    pub(crate) error: String,
    pub(crate) challenge: Option<&'static str>,
}

fn problem(status: StatusCode, error: impl Into<String>) -> Problem {
    Problem {
        status,
        error: error.into(),
        challenge: None,
    }
}

async fn views(s: &Shared, headers: &HeaderMap) -> Result<Arc<AnyViews>, Problem> {
    check_token(s, headers)?;
    match &s.views {
        Some(source) => source.get().await,
        None => Err(problem(
            StatusCode::NOT_FOUND,
            "this gateway serves no views: set gateway.views_db to the projector's file, or \
             gateway.views_cql_nodes to its CQL cluster",
        )),
    }
}

fn limit(page: &PageQuery) -> Result<u32, Problem> {
    match page.limit {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(n) => Err(problem(
            StatusCode::BAD_REQUEST,
            format!("limit {n} is out of range: give 1 to {MAX_LIMIT}"),
        )),
    }
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, Problem> {
    q.map(|Query(v)| v)
        .map_err(|e| problem(StatusCode::BAD_REQUEST, e.body_text()))
}

fn result(r: Result<Response, Problem>) -> Response {
    r.unwrap_or_else(|p| {
        let mut response = json_response(p.status, json!({ "error": p.error }));
        if let Some(challenge) = p.challenge {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static(challenge),
            );
        }
        response
    })
}

/// `GET /v1/orders/{order_id}`.
pub(crate) async fn order(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    result(
        async {
            let store = views(&s, &headers).await?;
            match store.order(&id).await.map_err(store_problem)? {
                Some(order) => Ok(json_response(StatusCode::OK, json!(order))),
                None => Err(problem(
                    StatusCode::NOT_FOUND,
                    format!("no order {id:?} in the views"),
                )),
            }
        }
        .await,
    )
}

/// `GET /v1/customers/{customer_id}/orders`.
pub(crate) async fn customer_orders(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(customer): Path<String>,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> Response {
    result(
        async {
            let store = views(&s, &headers).await?;
            let page = query(q)?;
            let limit = limit(&page)?;
            let page = store
                .customer_orders(&customer, page.cursor.as_deref(), limit)
                .await
                .map_err(store_problem)?
                .map_err(|e| problem(StatusCode::BAD_REQUEST, e.to_string()))?;
        Ok(json_response(
            StatusCode::OK,
            json!({ "customer_id": customer, "items": page.items, "next_cursor": page.next_cursor }),
            ))
        }
        .await,
    )
}

/// True for a `YYYY-MM-DD` calendar date.
fn is_day(day: &str) -> bool {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    day.len() == 10 && time::Date::parse(day, format).is_ok()
}

/// `GET /v1/sales/{day}`.
pub(crate) async fn sales(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(day): Path<String>,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> Response {
    result(
        async {
            let store = views(&s, &headers).await?;
            if !is_day(&day) {
                return Err(problem(
                    StatusCode::BAD_REQUEST,
                    format!("{day:?} is not a day: give it as YYYY-MM-DD (UTC)"),
                ));
            }
            let page = query(q)?;
            let limit = limit(&page)?;
            let page = store
                .product_sales(&day, page.cursor.as_deref(), limit)
                .await
                .map_err(store_problem)?
                .map_err(|e| problem(StatusCode::BAD_REQUEST, e.to_string()))?;
            Ok(json_response(
                StatusCode::OK,
                json!({ "day": day, "items": page.items, "next_cursor": page.next_cursor }),
            ))
        }
        .await,
    )
}

/// `GET /v1/commands/{command_id}`.
pub(crate) async fn command(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    result(
        async {
            let store = views(&s, &headers).await?;
            match store.command(&id).await.map_err(store_problem)? {
                Some(outcome) => Ok(json_response(StatusCode::OK, json!(outcome))),
                None => Err(problem(
                    StatusCode::NOT_FOUND,
                    format!(
                        "no outcome for command {id:?} yet: it is unknown, or not decided and \
                     projected yet"
                    ),
                )),
            }
        }
        .await,
    )
}

/// `GET /v1/commands?correlation_id=`.
pub(crate) async fn commands(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    q: Result<Query<CorrelationQuery>, QueryRejection>,
) -> Response {
    result(
        async {
            let store = views(&s, &headers).await?;
            let Some(correlation) = query(q)?.correlation_id.filter(|c| !c.is_empty()) else {
                return Err(problem(
                    StatusCode::BAD_REQUEST,
                    "give correlation_id, or ask for one command at /v1/commands/{command_id}",
                ));
            };
            let items = store
                .commands_by_correlation(&correlation)
                .await
                .map_err(store_problem)?;
            Ok(json_response(
                StatusCode::OK,
                json!({ "correlation_id": correlation, "items": items }),
            ))
        }
        .await,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_calendar_dates() {
        assert!(is_day("2026-11-30"));
        assert!(!is_day("2026-02-30"));
        assert!(!is_day("2026-1-3"));
        assert!(!is_day("yesterday"));
    }

    #[test]
    fn limits_are_bounded() {
        let page = |limit| PageQuery {
            limit,
            cursor: None,
        };
        assert_eq!(limit(&page(None)).unwrap(), DEFAULT_LIMIT);
        assert_eq!(limit(&page(Some(MAX_LIMIT))).unwrap(), MAX_LIMIT);
        assert!(limit(&page(Some(0))).is_err());
        assert!(limit(&page(Some(MAX_LIMIT + 1))).is_err());
    }
}
