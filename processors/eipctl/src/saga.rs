//! `eipctl saga`: the saga monitor's state for operators, read from the monitor's HTTP API
//! (`--monitor`, the monitor's telemetry address):
//! - `saga list --status stuck` lists sagas of a status, stalest first, with how long each
//!   has made no progress;
//! - `saga show ID` prints one saga's expected path against what happened, and its timeline:
//!   every event with its time since the start, and the topic, partition and offset it was
//!   read at;
//! - `saga stats` prints the counts per status and the failures grouped by step and code.
//!
//! The rendering is pure ([`render_list`], [`render_show`], [`render_stats`]) and tested on
//! the API's JSON.

use anyhow::Context;
use eip_saga::api::{Detail, Page, Stats};

/// GETs `path` from the monitor at `base` and decodes the JSON answer; a 4xx or 5xx is an
/// error with the API's reason.
pub async fn get<T: serde::de::DeserializeOwned>(base: &str, path: &str) -> anyhow::Result<T> {
    let base = base.trim_end_matches('/');
    let base = if base.starts_with("http") {
        base.to_string()
    } else {
        format!("http://{base}")
    };
    get_url(&format!("{base}{path}")).await
}

/// GETs `url` from the monitor and decodes the JSON answer, as [`get`].
pub async fn get_url<T: serde::de::DeserializeOwned>(url: &str) -> anyhow::Result<T> {
    let base = url.split("/sagas").next().unwrap_or(url);
    let resp = reqwest::get(url)
        .await
        .with_context(|| format!("the saga monitor at {base} does not answer"))?;
    let status = resp.status();
    let body = resp.text().await?;
    if !status.is_success() {
        let reason = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or(body);
        anyhow::bail!("{url}: {status}: {reason}");
    }
    serde_json::from_str(&body).with_context(|| format!("{url}: not the saga API's answer"))
}

fn ago(now_ms: i64, at: i64) -> String {
    let secs = u64::try_from((now_ms - at).max(0) / 1000).unwrap_or(0);
    humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
}

fn time(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second].[subsecond digits:3]"
            ))
            .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

/// `saga list`: one line per saga, stalest first.
pub fn render_list(page: &Page, now_ms: i64) -> String {
    let mut out = format!(
        "{:<28} {:<13} {:<22} {:<32} {}\n",
        "SAGA", "STATUS", "STEP", "WAITS FOR", "NO PROGRESS FOR"
    );
    for s in &page.items {
        out.push_str(&format!(
            "{:<28} {:<13} {:<22} {:<32} {}\n",
            s.saga_id,
            s.status,
            s.step.as_deref().unwrap_or("-"),
            s.expect.as_deref().unwrap_or("-"),
            ago(now_ms, s.updated_at)
        ));
    }
    if page.items.is_empty() {
        out.push_str("(none)\n");
    }
    if let Some(next) = &page.next {
        out.push_str(&format!("more: --after {next}\n"));
    }
    out
}

/// `saga show`: the path, then the timeline.
pub fn render_show(d: &Detail) -> String {
    let s = &d.saga;
    let mut out = format!(
        "saga {} ({}): {}\ncorrelation id {}\n",
        s.saga_id, s.saga, s.status, s.correlation_id
    );
    if let Some(step) = &s.failed_step {
        out.push_str(&format!(
            "failed at {step}: {} ({})\n",
            s.failure_reason.as_deref().unwrap_or(""),
            s.failure_code.as_deref().unwrap_or("-")
        ));
    }
    if let Some(x) = &s.expect {
        out.push_str(&format!("waits for {x}"));
        if let Some(at) = s.deadline_at {
            out.push_str(&format!(", due {}", time(at)));
        }
        out.push('\n');
    }
    for flag in &s.flags {
        out.push_str(&format!("flag: {flag}\n"));
    }
    out.push_str("\npath:\n");
    if let Some(steps) = s.path.as_array() {
        for (i, p) in steps.iter().enumerate() {
            let state = p["state"].as_str().unwrap_or("?");
            let mark = match state {
                "completed" | "kept" => "✔",
                "compensated" => "↩",
                "failed" => "✘",
                "active" | "compensating" => "…",
                _ => " ",
            };
            out.push_str(&format!(
                "  {mark} {:>2}. {:<22} {state}\n",
                i + 1,
                p["step"].as_str().unwrap_or("?")
            ));
        }
    }
    out.push_str("\ntimeline:\n");
    let start = d.events.first().map_or(0, |e| e.occurred_at);
    for e in &d.events {
        let offset = if e.offset >= 0 {
            format!("{}[{}]@{}", e.topic, e.partition, e.offset)
        } else {
            "(the monitor)".into()
        };
        let mut line = format!(
            "  +{:>8.3}s  {:<44} {offset}",
            (e.occurred_at - start) as f64 / 1000.0,
            e.event_type
        );
        if let Some(step) = &e.step {
            line.push_str(&format!("  step={step}"));
        }
        if let Some(r) = &e.reason {
            line.push_str(&format!("  reason={r:?}"));
        }
        if let Some(a) = &e.actor {
            line.push_str(&format!("  by={a}"));
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// `saga stats`: counts, then failures by step and code.
pub fn render_stats(s: &Stats) -> String {
    let mut out = format!("saga {}\n", s.saga);
    for (status, n) in &s.counts {
        out.push_str(&format!("  {status:<13} {n}\n"));
    }
    out.push_str("failures by step and code:\n");
    for f in &s.failures {
        out.push_str(&format!("  {:<22} {:<20} {}\n", f.step, f.code, f.sagas));
    }
    if s.failures.is_empty() {
        out.push_str("  (none)\n");
    }
    out
}

/// `saga summary`: waits until the monitor reports the sagas `expect` says (or `wait` runs
/// out), then prints sagas by status against the expectation, failures and compensations per
/// step, the inventory levels from `inventory_db`, and where to look next. Fails when they
/// differ.
pub async fn summary(
    monitor: &str,
    expect: &crate::cqrs::SagaExpectation,
    wait: std::time::Duration,
    inventory_db: &std::path::Path,
    gateway: Option<&str>,
) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + wait;
    let stats = loop {
        let stats: Option<Stats> = get(monitor, "/sagas/stats").await.ok();
        if let Some(s) = &stats {
            let seen: std::collections::BTreeMap<String, u64> = s
                .counts
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(k, n)| (k.clone(), *n as u64))
                .collect();
            if seen == expect.statuses {
                break stats;
            }
        }
        if std::time::Instant::now() > deadline {
            break stats;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    };
    let stats = stats.context("the saga monitor never answered")?;
    let mut ok = true;
    println!("sagas by status (expected / seen):");
    let mut statuses: std::collections::BTreeSet<&String> = expect.statuses.keys().collect();
    statuses.extend(stats.counts.keys());
    for status in statuses {
        let want = expect.statuses.get(status).copied().unwrap_or(0);
        let got = stats.counts.get(status).copied().unwrap_or(0) as u64;
        let mark = if want == got { "" } else { "  <-- differs" };
        ok &= want == got;
        println!("  {status:<13} {want:>6} / {got:<6}{mark}");
    }
    println!("failed sagas by step (expected / seen), and compensations per step:");
    let mut failed: std::collections::BTreeMap<&str, u64> = std::collections::BTreeMap::new();
    for f in &stats.failures {
        *failed.entry(f.step.as_str()).or_default() += f.sagas as u64;
    }
    let mut steps: std::collections::BTreeSet<&str> =
        expect.failed_steps.keys().map(String::as_str).collect();
    steps.extend(failed.keys());
    steps.extend(stats.compensations.keys().map(String::as_str));
    for step in steps {
        let want = expect.failed_steps.get(step).copied().unwrap_or(0);
        let got = failed.get(step).copied().unwrap_or(0);
        ok &= want == got;
        let comp = stats.compensations.get(step).copied().unwrap_or(0);
        println!("  {step:<22} failed {want:>5} / {got:<5} compensated {comp}");
    }
    println!("inventory levels (the 5 SKUs with most held):");
    match rusqlite::Connection::open_with_flags(
        inventory_db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .and_then(|conn| {
        let mut stmt = conn.prepare(
            "SELECT sku, available, reserved FROM stock ORDER BY reserved DESC, sku LIMIT 5",
        )?;
        stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()
    }) {
        Ok(rows) => {
            // The inventory-levels view, served by the query API, against the participant's
            // own store: the same numbers once the projector has caught up.
            let view = match gateway {
                Some(g) => levels_in_view(g, &rows, deadline).await,
                None => Vec::new(),
            };
            for (i, (sku, available, reserved)) in rows.iter().enumerate() {
                let shown = match view.get(i) {
                    None => String::new(),
                    Some(Some(v)) if v == &(*available, *reserved) => {
                        "  (the view agrees)".to_string()
                    }
                    Some(v) => {
                        ok = false;
                        format!("  (the view: {v:?})")
                    }
                };
                println!(
                    "  {sku:<10} available {available:>9}  held for orders {reserved:>6}{shown}"
                );
            }
        }
        Err(e) => println!("  ({} can't be read: {e})", inventory_db.display()),
    }
    let base = monitor.trim_end_matches('/');
    println!("dashboard: http://{base}/dashboard (live; `make demo KEEP=1` keeps it up)");
    println!(
        "operator actions: eipctl saga act reemit|compensate|resolve ID (or --status stuck …) \
         --monitor {base} --token <processor.operator_tokens>"
    );
    println!("saga monitor API: http://{base}/sagas/stats, http://{base}/sagas?status=compensated");
    println!(
        "  eipctl saga list --status compensated --monitor {base}; eipctl saga show ID --monitor {base}"
    );
    anyhow::ensure!(ok, "the sagas differ from what was expected");
    Ok(())
}

/// The (available, reserved) the inventory-levels view at `gateway` shows for each of
/// `rows`' SKUs, once it shows what `rows` say or at `deadline`, whichever comes first.
async fn levels_in_view(
    gateway: &str,
    rows: &[(String, i64, i64)],
    deadline: std::time::Instant,
) -> Vec<Option<(i64, i64)>> {
    loop {
        let mut seen = Vec::new();
        let base = if gateway.starts_with("http") {
            gateway.to_string()
        } else {
            format!("http://{gateway}")
        };
        for (sku, _, _) in rows {
            let level = match reqwest::Url::parse(&base) {
                Ok(mut url) => {
                    if let Ok(mut path) = url.path_segments_mut() {
                        path.pop_if_empty().extend(["v1", "inventory", sku]);
                    }
                    match get_url::<eip_store::views::LevelView>(url.as_str()).await {
                        Ok(l) => Some(l),
                        Err(e) => {
                            if std::time::Instant::now() > deadline {
                                println!("  ({sku} in the view: {e})");
                            }
                            None
                        }
                    }
                }
                Err(_) => None,
            };
            seen.push(level.map(|l| (l.available, l.reserved)));
        }
        let agree = rows
            .iter()
            .zip(&seen)
            .all(|((_, a, r), v)| v == &Some((*a, *r)));
        if agree || std::time::Instant::now() > deadline {
            return seen;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use eip_saga::api::FailureGroup;
    use eip_store::saga_views::{SagaEventView, SagaView};

    fn saga() -> SagaView {
        SagaView {
            saga_id: "o-1".into(),
            saga: "order_fulfilment".into(),
            status: "stuck".into(),
            step: Some("points_redeemed".into()),
            expect: Some("compensation:points_redeemed".into()),
            remaining: Vec::new(),
            failed_step: Some("shipment_scheduled".into()),
            failure_reason: Some("deadline passed".into()),
            failure_code: Some("timeout".into()),
            correlation_id: "corr-1".into(),
            started_at: Some(1_000),
            updated_at: 61_000,
            deadline_at: Some(65_000),
            flags: vec!["late: shipment_scheduled completed after its timeout".into()],
            path: serde_json::json!([
                {"step": "customer_verified", "state": "kept"},
                {"step": "points_redeemed", "state": "compensating"},
                {"step": "shipment_scheduled", "state": "failed"}
            ]),
            monitor_partition: 0,
            version: 9,
        }
    }

    #[test]
    fn a_list_says_what_each_saga_waits_for_and_for_how_long() {
        let page = Page {
            items: vec![saga()],
            next: Some("61000:o-1".into()),
        };
        let text = render_list(&page, 181_000);
        assert!(text.contains("o-1"), "{text}");
        assert!(text.contains("compensation:points_redeemed"), "{text}");
        assert!(text.contains("2m"), "two minutes without progress: {text}");
        assert!(text.contains("more: --after 61000:o-1"), "{text}");
    }

    #[test]
    fn show_prints_the_path_and_the_timeline_with_positions() {
        let event = |at: i64, ty: &str, offset: i64| SagaEventView {
            saga_id: "o-1".into(),
            occurred_at: at,
            event_id: format!("e-{at}"),
            event_type: ty.into(),
            correlation_id: "corr-1".into(),
            causation_id: None,
            topic: "saga-shipping".into(),
            partition: 2,
            offset,
            reason: (offset < 0).then(|| "no progress".into()),
            reason_code: None,
            step: None,
            actor: None,
            folded_at: None,
        };
        let d = Detail {
            saga: saga(),
            events: vec![
                event(1_000, "eip.orders.OrderConfirmed", 5),
                event(2_500, "eip.shipping.ShipmentSchedulingFailed", 7),
                event(61_000, "eip.saga.monitor.Stuck", -1),
            ],
            steps: Vec::new(),
        };
        let text = render_show(&d);
        assert!(
            text.contains("saga o-1 (order_fulfilment): stuck"),
            "{text}"
        );
        assert!(text.contains("failed at shipment_scheduled: deadline passed (timeout)"));
        assert!(
            text.contains("waits for compensation:points_redeemed, due 1970-01-01 00:01:05.000"),
            "{text}"
        );
        assert!(text.contains("✘  3. shipment_scheduled"), "{text}");
        assert!(
            text.contains("+   1.500s  eip.shipping.ShipmentSchedulingFailed"),
            "{text}"
        );
        assert!(text.contains("saga-shipping[2]@7"), "{text}");
        assert!(text.contains("(the monitor)"), "{text}");
        assert!(text.contains("flag: late"), "{text}");
    }

    #[test]
    fn stats_group_failures() {
        let s = Stats {
            compensations: Default::default(),
            saga: "order_fulfilment".into(),
            counts: [("completed".to_string(), 8), ("stuck".to_string(), 0)].into(),
            failures: vec![FailureGroup {
                step: "payment_authorized".into(),
                code: "over_limit".into(),
                sagas: 2,
            }],
        };
        let text = render_stats(&s);
        assert!(text.contains("completed     8"), "{text}");
        assert!(
            text.contains("payment_authorized     over_limit           2"),
            "{text}"
        );
    }
}
