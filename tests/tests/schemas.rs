//! Schema evolution and registry bootstrap against the real registry.
//!
//! Every change to `schemas/avro` must be BACKWARD compatible with the version before it, so
//! consumers on the new schemas can still read every record already in the topics. These
//! tests check each committed change in git history, and the working tree against HEAD, with
//! both Avro's resolution rules and the registry's own compatibility endpoint.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use eip_schemas::Catalog;
use eip_schemas::compat::{check_local, check_with_registry};
use eip_tests::*;

#[tokio::test]
async fn every_schema_change_is_backward_compatible_with_the_previous_version() {
    let ep = endpoints();
    let registry = ep.registry().unwrap();
    let mut versions: Vec<(String, Catalog)> = schema_history()
        .into_iter()
        .map(|rev| {
            let files = schema_files_at(&rev);
            let catalog =
                Catalog::parse(&files).unwrap_or_else(|e| panic!("schemas at {rev}: {e}"));
            (rev, catalog)
        })
        .collect();
    let working = Catalog::parse(Catalog::embedded_files()).unwrap();
    versions.push(("working tree".into(), working));
    assert!(!versions.is_empty());
    let mut checked = 0;
    for pair in versions.windows(2) {
        let ((old_rev, old), (new_rev, new)) = (&pair[0], &pair[1]);
        let local = check_local(old, new);
        assert!(local.is_empty(), "{old_rev} -> {new_rev}: {local:?}");
        let prefix = format!("{}.", unique("compat"));
        let remote = check_with_registry(&registry, old, new, &prefix)
            .await
            .unwrap();
        assert!(
            remote.is_empty(),
            "{old_rev} -> {new_rev} (registry): {remote:?}"
        );
        checked += 1;
    }
    eprintln!("checked {checked} schema changes");
}

/// Swaps the `OrderPlaced` file of the embedded schemas for `json`.
fn with_order_placed(json: &str) -> Catalog {
    let files: Vec<(String, String)> = Catalog::embedded_files()
        .iter()
        .map(|(p, s)| {
            let contents = if p.ends_with("orders/OrderPlaced.avsc") {
                json.to_string()
            } else {
                s.to_string()
            };
            (p.to_string(), contents)
        })
        .collect();
    Catalog::parse(&files).unwrap()
}

fn order_placed_json() -> serde_json::Value {
    let (_, src) = Catalog::embedded_files()
        .iter()
        .find(|(p, _)| p.ends_with("orders/OrderPlaced.avsc"))
        .unwrap();
    serde_json::from_str(src).unwrap()
}

#[tokio::test]
async fn an_incompatible_change_fails_both_checks() {
    let ep = endpoints();
    let registry = ep.registry().unwrap();
    let current = Catalog::parse(Catalog::embedded_files()).unwrap();
    // A new field without a default: new readers can't read old records.
    let mut added = order_placed_json();
    added["fields"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"name": "channel", "type": "string"}));
    // A field whose type changes incompatibly.
    let mut retyped = order_placed_json();
    for f in retyped["fields"].as_array_mut().unwrap() {
        if f["name"] == "total_cents" {
            f["type"] = serde_json::json!("string");
        }
    }
    for broken in [added, retyped] {
        let new = with_order_placed(&broken.to_string());
        let local = check_local(&current, &new);
        assert_eq!(local.len(), 1, "{local:?}");
        assert_eq!(local[0].name, "eip.orders.OrderPlaced");
        let prefix = format!("{}.", unique("incompat"));
        let remote = check_with_registry(&registry, &current, &new, &prefix)
            .await
            .unwrap();
        assert_eq!(remote.len(), 1, "the registry rejects it too: {remote:?}");
    }
    // And a compatible change passes both.
    let mut optional = order_placed_json();
    optional["fields"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"name": "channel", "type": ["null", "string"], "default": null}));
    let new = with_order_placed(&optional.to_string());
    assert!(check_local(&current, &new).is_empty());
    let prefix = format!("{}.", unique("compat-ok"));
    assert!(
        check_with_registry(&registry, &current, &new, &prefix)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn the_bootstrap_is_idempotent_and_every_id_resolves_to_its_schema() {
    let ep = endpoints();
    let first = eipctl::register_schemas(&ep).await.unwrap();
    let second = eipctl::register_schemas(&ep).await.unwrap();
    assert_eq!(first, second, "same schema, same id");
    let catalog = Catalog::global().unwrap();
    assert_eq!(first.len(), catalog.messages().count());
    // A fresh client resolves every id to exactly the compiled schema.
    let fresh = codec(&ep);
    for r in &first {
        let writer = fresh.registry().schema_by_id(r.id).await.unwrap();
        let compiled = catalog.get(&r.subject).unwrap();
        assert_eq!(writer.full_name, r.subject, "record-name subject strategy");
        assert_eq!(writer.fingerprint, compiled.fingerprint, "{}", r.subject);
    }
    let subjects = fresh.registry().subjects().await.unwrap();
    for r in &first {
        assert!(subjects.contains(&r.subject));
    }
}
