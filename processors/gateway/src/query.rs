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

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use eip_runtime::StartupError;
use eip_store::view_any::AnyViews;
use eip_store::view_scylla::{ScyllaSettings, ScyllaViews};
use eip_store::view_store::{SqliteViews, StoreError, ViewStore};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::OnceCell;

use crate::config::GatewaySettings;
use crate::shared::{Problem, Shared, check_token, json_response, problem};

/// Where the views come from: opened at startup (SQLite), or connected on first use (CQL).
///
/// While a CQL cluster can't be reached, one request at a time tries to connect, and only
/// once the back-off since the last failure (1 s, doubling to 30 s) has passed; every other
/// request is answered 503 at once with the last failure's reason, never queued behind
/// connects of its own.
#[derive(Debug)]
pub(crate) struct ViewsSource {
    ready: OnceCell<Arc<AnyViews>>,
    cql: Option<ScyllaSettings>,
    /// Taken by the one request that connects.
    connecting: tokio::sync::Mutex<()>,
    /// The last failed connect: when, why, and the back-off before the next.
    down: std::sync::Mutex<Option<Down>>,
}

#[derive(Debug, Clone)]
struct Down {
    at: std::time::Instant,
    backoff: std::time::Duration,
    reason: String,
}

impl ViewsSource {
    /// The views `settings` name, if any.
    pub(crate) fn of(settings: &GatewaySettings) -> Result<Option<ViewsSource>, StartupError> {
        let source = |ready, cql| ViewsSource {
            ready,
            cql,
            connecting: tokio::sync::Mutex::new(()),
            down: std::sync::Mutex::new(None),
        };
        if let Some(path) = &settings.views_db {
            let views = SqliteViews::open(path, settings.query_connections)
                .map_err(|e| StartupError::new(format!("the views at {}", path.display()), e))?;
            return Ok(Some(source(
                OnceCell::new_with(Some(Arc::new(AnyViews::Sqlite(views)))),
                None,
            )));
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
        Ok(Some(source(OnceCell::new(), Some(cql))))
    }

    fn last_down(&self) -> Option<Down> {
        self.down
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The store, connecting to the CQL cluster the first time.
    async fn get(&self) -> Result<Arc<AnyViews>, Problem> {
        if let Some(views) = self.ready.get() {
            return Ok(views.clone());
        }
        let unavailable = |d: &Down| {
            problem(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the views could not be read: {}", d.reason),
            )
        };
        // Known down and still backing off, or another request is connecting: answer now.
        if let Some(d) = self.last_down()
            && d.at.elapsed() < d.backoff
        {
            return Err(unavailable(&d));
        }
        let Ok(_turn) = self.connecting.try_lock() else {
            return Err(match self.last_down() {
                Some(d) => unavailable(&d),
                None => problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the views' CQL cluster is being connected: try again shortly",
                ),
            });
        };
        if let Some(views) = self.ready.get() {
            return Ok(views.clone());
        }
        let settings = self
            .cql
            .as_ref()
            .ok_or_else(|| store_problem(StoreError::Permanent("no views store".into())))?;
        // The driver's own connect timeout covers one connection, not the whole session (a
        // host that takes connections and never answers held it for minutes): bound it all.
        let limit = settings.connect_timeout + std::time::Duration::from_secs(2);
        let connected = tokio::time::timeout(limit, ScyllaViews::connect(settings))
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::Transient(format!(
                    "no answer from the CQL cluster {:?} within {limit:?}",
                    settings.nodes
                )))
            });
        match connected {
            Ok(v) => {
                let views = Arc::new(AnyViews::Cql(Box::new(v)));
                let _ = self.ready.set(views.clone());
                *self
                    .down
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
                Ok(views)
            }
            Err(e) => {
                let mut down = self
                    .down
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let backoff = down
                    .as_ref()
                    .map_or(std::time::Duration::from_secs(1), |d| {
                        (d.backoff * 2).min(std::time::Duration::from_secs(30))
                    });
                let d = Down {
                    at: std::time::Instant::now(),
                    backoff,
                    reason: e.to_string(),
                };
                *down = Some(d.clone());
                Err(unavailable(&d))
            }
        }
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

/// `correlation_id`, `limit` and `cursor` of the commands query.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CorrelationQuery {
    correlation_id: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

/// A path parameter as text, or a 400 with the reason (bad percent-encoding, not UTF-8).
fn path(p: Result<Path<String>, PathRejection>) -> Result<String, Problem> {
    p.map(|Path(v)| v)
        .map_err(|e| problem(StatusCode::BAD_REQUEST, e.body_text()))
}

/// A 400 for an id no view could hold, by the one definition the write side checks too.
fn id(what: &str, value: &str) -> Result<(), Problem> {
    match eip_schemas::limits::id_problem(value) {
        None => Ok(()),
        Some(why) => Err(problem(
            StatusCode::BAD_REQUEST,
            format!("the {what} {why}: no view holds such an id"),
        )),
    }
}

/// The store to answer from, and the permit this query holds while it is answered.
async fn views(
    s: &Shared,
    headers: &HeaderMap,
) -> Result<(Arc<AnyViews>, tokio::sync::OwnedSemaphorePermit), Problem> {
    check_token(s, headers)?;
    let Ok(permit) = s.queries.clone().try_acquire_owned() else {
        return Err(problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many queries in flight (gateway.max_queries_in_flight): try again shortly",
        ));
    };
    match &s.views {
        Some(source) => Ok((source.get().await?, permit)),
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
        if p.status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        if let Some(challenge) = p.challenge {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static(challenge),
            );
        }
        response
    })
}

/// A lookup of one row by an id in the path: the token, the id's checks, the store, and a
/// 404 saying `missing(id)` when the view holds nothing under it.
async fn by_id<T, F, Fut>(
    s: &Shared,
    headers: &HeaderMap,
    param: Result<Path<String>, PathRejection>,
    what: &str,
    read: F,
    missing: impl FnOnce(&str) -> String,
) -> Response
where
    T: serde::Serialize,
    F: FnOnce(Arc<AnyViews>, String) -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, StoreError>>,
{
    result(
        async {
            check_token(s, headers)?;
            let id = path(param)?;
            self::id(what, &id)?;
            let (store, _permit) = views(s, headers).await?;
            match read(store, id.clone()).await.map_err(store_problem)? {
                Some(row) => Ok(json_response(StatusCode::OK, json!(row))),
                None => Err(problem(StatusCode::NOT_FOUND, missing(&id))),
            }
        }
        .await,
    )
}

/// `GET /v1/orders/{order_id}`.
pub(crate) async fn order(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    order_id: Result<Path<String>, PathRejection>,
) -> Response {
    by_id(
        &s,
        &headers,
        order_id,
        "order id",
        |store, id| async move { store.order(&id).await },
        |id| format!("no order {id:?} in the views"),
    )
    .await
}

/// `GET /v1/inventory/{sku}`: the SKU's stock as the inventory participant last left it.
pub(crate) async fn inventory(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    sku: Result<Path<String>, PathRejection>,
) -> Response {
    by_id(
        &s,
        &headers,
        sku,
        "SKU",
        |store, sku| async move { store.inventory(&sku).await },
        |sku| {
            format!(
                "no stock level for SKU {sku:?} yet: no order of it has been reserved or \
                 released, or not projected yet"
            )
        },
    )
    .await
}

/// `GET /v1/customers/{customer_id}/orders`.
pub(crate) async fn customer_orders(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    customer: Result<Path<String>, PathRejection>,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> Response {
    result(
        async {
            check_token(&s, &headers)?;
            let customer = path(customer)?;
            id("customer id", &customer)?;
            let page = query(q)?;
            let limit = limit(&page)?;
            let (store, _permit) = views(&s, &headers).await?;
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
    day: Result<Path<String>, PathRejection>,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> Response {
    result(
        async {
            check_token(&s, &headers)?;
            let day = path(day)?;
            if !is_day(&day) {
                return Err(problem(
                    StatusCode::BAD_REQUEST,
                    format!("{day:?} is not a day: give it as YYYY-MM-DD (UTC)"),
                ));
            }
            let page = query(q)?;
            let limit = limit(&page)?;
            let (store, _permit) = views(&s, &headers).await?;
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
    command_id: Result<Path<String>, PathRejection>,
) -> Response {
    by_id(
        &s,
        &headers,
        command_id,
        "command id",
        |store, id| async move { store.command(&id).await },
        |id| {
            format!(
                "no outcome for command {id:?} yet: it is unknown, or not decided and \
                 projected yet"
            )
        },
    )
    .await
}

/// `GET /v1/commands?correlation_id=`.
pub(crate) async fn commands(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    q: Result<Query<CorrelationQuery>, QueryRejection>,
) -> Response {
    result(
        async {
            check_token(&s, &headers)?;
            let q = query(q)?;
            let Some(correlation) = q.correlation_id.clone().filter(|c| !c.is_empty()) else {
                return Err(problem(
                    StatusCode::BAD_REQUEST,
                    "give correlation_id, or ask for one command at /v1/commands/{command_id}",
                ));
            };
            id("correlation id", &correlation)?;
            let limit = limit(&PageQuery {
                limit: q.limit,
                cursor: None,
            })?;
            let (store, _permit) = views(&s, &headers).await?;
            let page = store
                .commands_by_correlation(&correlation, q.cursor.as_deref(), limit)
                .await
                .map_err(store_problem)?
                .map_err(|e| problem(StatusCode::BAD_REQUEST, e.to_string()))?;
            Ok(json_response(
                StatusCode::OK,
                json!({
                    "correlation_id": correlation,
                    "items": page.items,
                    "next_cursor": page.next_cursor,
                }),
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
