//! `eipctl saga act`: operator actions through the monitor's API
//! (`POST /sagas/{id}/actions`), on one saga or on every saga a filter selects, with a
//! progress bar. A bulk action first takes the list of matching sagas (paging through
//! `GET /sagas`, stalest first), then acts on each. A saga whose state no longer allows the
//! action (it moved on meanwhile) is reported as refused, not as an error; a monitor or broker
//! that fails makes the command fail after the others were tried.

use std::time::Duration;

use anyhow::Context;
use eip_saga::api::Page;
use eip_saga::operator::{ActionDone, ActionRequest};
use eip_store::saga_views::SagaView;

/// Which sagas a bulk action takes.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Their status.
    pub status: String,
    /// Only those whose step in progress (or being undone) is this one.
    pub step: Option<String>,
    /// Only those whose failed step is this one.
    pub failed_step: Option<String>,
    /// Only those with no progress for at least this long.
    pub idle_for: Option<Duration>,
    /// At most this many (the stalest).
    pub max: Option<usize>,
}

impl Filter {
    /// True when `saga` is one this filter takes, at `now_ms`.
    pub fn matches(&self, saga: &SagaView, now_ms: i64) -> bool {
        let idle_ms = self
            .idle_for
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        saga.status == self.status
            && self
                .step
                .as_ref()
                .is_none_or(|s| saga.step.as_ref() == Some(s))
            && self
                .failed_step
                .as_ref()
                .is_none_or(|s| saga.failed_step.as_ref() == Some(s))
            && now_ms.saturating_sub(saga.updated_at) >= idle_ms
    }
}

/// A client of one monitor's API.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

/// Why an action on one saga was not done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotDone {
    /// The saga's state does not allow it (409): it moved on, or never needed it.
    Refused(String),
    /// Anything else: the monitor, the broker, the credentials.
    Failed(String),
}

impl Client {
    /// A client of the monitor at `base` (`host:port` or a URL), with a bearer `token`.
    pub fn new(base: &str, token: Option<String>) -> Client {
        let base = base.trim_end_matches('/');
        Client {
            base: if base.starts_with("http") {
                base.to_string()
            } else {
                format!("http://{base}")
            },
            token,
            http: reqwest::Client::new(),
        }
    }

    /// Every saga `filter` takes, stalest first.
    pub async fn select(&self, filter: &Filter, now_ms: i64) -> anyhow::Result<Vec<SagaView>> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut url = self.url(&["sagas"])?;
            url.query_pairs_mut()
                .append_pair("status", &filter.status)
                .append_pair("limit", "500");
            if let Some(a) = &after {
                url.query_pairs_mut().append_pair("after", a);
            }
            let page: Page = crate::saga::get_url(url.as_str()).await?;
            out.extend(page.items.into_iter().filter(|s| filter.matches(s, now_ms)));
            if filter.max.is_some_and(|m| out.len() >= m) {
                out.truncate(filter.max.unwrap_or(usize::MAX));
                return Ok(out);
            }
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(out),
            }
        }
    }

    /// `base` with `segments` as its path, each percent-encoded.
    fn url(&self, segments: &[&str]) -> anyhow::Result<reqwest::Url> {
        let mut url = reqwest::Url::parse(&self.base)
            .with_context(|| format!("{} is not the monitor's address", self.base))?;
        url.path_segments_mut()
            .map_err(|()| anyhow::anyhow!("{} is not the monitor's address", self.base))?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    /// Carries out `request` on saga `id`.
    pub async fn act(&self, id: &str, request: &ActionRequest) -> Result<ActionDone, NotDone> {
        let url = self
            .url(&["sagas", id, "actions"])
            .map_err(|e| NotDone::Failed(e.to_string()))?;
        let mut call = self.http.post(url.clone()).json(request);
        if let Some(t) = &self.token {
            call = call.bearer_auth(t);
        }
        let resp = call.send().await.map_err(|e| {
            NotDone::Failed(format!(
                "the saga monitor at {} does not answer: {e}",
                self.base
            ))
        })?;
        let status = resp.status();
        let body = resp
            .text()
            .await
            .map_err(|e| NotDone::Failed(format!("{url}: {e}")))?;
        if status.is_success() {
            return serde_json::from_str(&body)
                .map_err(|e| NotDone::Failed(format!("{url}: not the saga API's answer: {e}")));
        }
        let reason = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or(body);
        Err(if status == reqwest::StatusCode::CONFLICT {
            NotDone::Refused(reason)
        } else {
            NotDone::Failed(format!("{status}: {reason}"))
        })
    }
}

/// What a bulk action did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Done, by saga.
    pub done: Vec<ActionDone>,
    /// Refused, by saga, with the reason.
    pub refused: Vec<(String, String)>,
    /// Failed, by saga, with the reason.
    pub failed: Vec<(String, String)>,
}

/// Acts on each of `sagas` in turn, advancing `bar`. Each request carries the status and
/// the expectation the saga was listed with, so a saga that moved on since is refused.
pub async fn act_on_all(
    client: &Client,
    sagas: &[SagaView],
    request: &ActionRequest,
    bar: &indicatif::ProgressBar,
) -> Outcome {
    let mut out = Outcome::default();
    for saga in sagas {
        let id = &saga.saga_id;
        let request = ActionRequest {
            if_status: Some(saga.status.clone()),
            if_expect: saga.expect.clone(),
            ..request.clone()
        };
        match client.act(id, &request).await {
            Ok(done) => out.done.push(done),
            Err(NotDone::Refused(r)) => out.refused.push((id.clone(), r)),
            Err(NotDone::Failed(r)) => out.failed.push((id.clone(), r)),
        }
        bar.inc(1);
    }
    bar.finish();
    out
}

/// One action's answer, for people.
pub fn render_done(d: &ActionDone) -> String {
    let mut line = format!("{} {}", d.action, d.saga_id);
    if let Some(step) = &d.step {
        line.push_str(&format!(" ({step})"));
    }
    for p in &d.published {
        line.push_str(&format!(
            ": published {} to {}[{}]@{}",
            p.event_type, p.topic, p.partition, p.offset
        ));
    }
    line.push_str(&format!(
        "; recorded as {} at {}[{}]@{}\n",
        d.event_id, d.recorded.topic, d.recorded.partition, d.recorded.offset
    ));
    line
}

/// A bulk action's outcome: counts, then the refusals grouped by reason and each failure.
pub fn render_outcome(action: &str, o: &Outcome) -> String {
    let mut out = format!(
        "{action}: {} done, {} refused, {} failed\n",
        o.done.len(),
        o.refused.len(),
        o.failed.len()
    );
    let mut reasons: std::collections::BTreeMap<&str, usize> = Default::default();
    for (_, r) in &o.refused {
        *reasons.entry(r.as_str()).or_default() += 1;
    }
    for (r, n) in reasons {
        out.push_str(&format!("  refused {n}: {r}\n"));
    }
    for (id, r) in &o.failed {
        out.push_str(&format!("  failed {id}: {r}\n"));
    }
    out
}

/// Who acts: `--actor`, else `$EIP_OPERATOR` (clap reads it), else the login name.
pub fn actor(given: Option<String>) -> anyhow::Result<String> {
    given
        .or_else(|| std::env::var("USER").ok())
        .or_else(|| std::env::var("LOGNAME").ok())
        .filter(|a| !a.trim().is_empty())
        .context("who is acting? pass --actor NAME (or set EIP_OPERATOR)")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use eip_saga::operator::Published;

    fn view(id: &str, status: &str, step: &str, failed: Option<&str>, at: i64) -> SagaView {
        SagaView {
            saga_id: id.into(),
            saga: "order_fulfilment".into(),
            status: status.into(),
            step: Some(step.into()),
            expect: None,
            remaining: Vec::new(),
            failed_step: failed.map(str::to_string),
            failure_reason: None,
            failure_code: None,
            correlation_id: "c".into(),
            started_at: None,
            updated_at: at,
            deadline_at: None,
            flags: Vec::new(),
            path: serde_json::Value::Null,
            monitor_partition: 0,
            version: 1,
        }
    }

    #[test]
    fn a_filter_takes_the_status_step_failure_and_idleness_it_names() {
        let f = Filter {
            status: "stuck".into(),
            step: Some("points_redeemed".into()),
            failed_step: Some("shipment_scheduled".into()),
            idle_for: Some(Duration::from_secs(60)),
            max: None,
        };
        let now = 1_000_000;
        let ok = view(
            "a",
            "stuck",
            "points_redeemed",
            Some("shipment_scheduled"),
            now - 60_000,
        );
        assert!(f.matches(&ok, now));
        for bad in [
            view(
                "b",
                "running",
                "points_redeemed",
                Some("shipment_scheduled"),
                0,
            ),
            view(
                "c",
                "stuck",
                "payment_authorized",
                Some("shipment_scheduled"),
                0,
            ),
            view("d", "stuck", "points_redeemed", Some("invoice_issued"), 0),
            view("e", "stuck", "points_redeemed", None, 0),
            view(
                "f",
                "stuck",
                "points_redeemed",
                Some("shipment_scheduled"),
                now - 59_999,
            ),
        ] {
            assert!(!f.matches(&bad, now), "{}", bad.saga_id);
        }
        let any = Filter {
            status: "stuck".into(),
            ..Filter::default()
        };
        assert!(any.matches(&view("g", "stuck", "x", None, now), now));
    }

    #[test]
    fn the_outcome_counts_and_groups_refusals_by_reason() {
        let done = ActionDone {
            saga_id: "o-1".into(),
            action: "reemit".into(),
            step: Some("payment_authorized".into()),
            event_id: "o-1:operator:1".into(),
            published: vec![Published {
                event_type: "eip.inventory.InventoryReserved".into(),
                topic: "saga-inventory".into(),
                partition: 2,
                offset: 41,
            }],
            recorded: Published {
                event_type: "eip.saga.operator.TriggerReemitted".into(),
                topic: "saga-observations".into(),
                partition: 0,
                offset: 9,
            },
        };
        assert_eq!(
            render_done(&done),
            "reemit o-1 (payment_authorized): published eip.inventory.InventoryReserved to \
             saga-inventory[2]@41; recorded as o-1:operator:1 at saga-observations[0]@9\n"
        );
        let o = Outcome {
            done: vec![done],
            refused: vec![
                ("o-2".into(), "the saga is completed".into()),
                ("o-3".into(), "the saga is completed".into()),
            ],
            failed: vec![("o-4".into(), "503: broker down".into())],
        };
        assert_eq!(
            render_outcome("reemit", &o),
            "reemit: 1 done, 2 refused, 1 failed\n  refused 2: the saga is completed\n  \
             failed o-4: 503: broker down\n"
        );
    }

    #[test]
    fn the_actor_is_required() {
        assert_eq!(actor(Some("ops".into())).unwrap(), "ops");
        assert!(actor(Some("  ".into())).is_err());
    }
}
