//! BACKWARD compatibility between two versions of the schema catalog.
//!
//! BACKWARD means: consumers built with the new schemas can read every record written with the
//! old ones. That is the registry's default level and the one eip keeps, because consumers
//! are upgraded before producers. Two checks exist:
//! - [`check_local`]: Avro's schema-resolution rules via `apache_avro`, no I/O;
//! - [`check_with_registry`]: the real registry's compatibility endpoint, so the rules are the
//!   ones production enforces.
//!
//! A message type that disappears is reported too: records of it may still sit in topics.

use crate::catalog::{Catalog, CompiledSchema};
use crate::error::CodecError;
use crate::registry::Registry;
use apache_avro::schema_compatibility::SchemaCompatibility;

/// One schema whose new version cannot read data written with its old version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incompatibility {
    /// Full name of the message type.
    pub name: String,
    /// Why it is incompatible.
    pub reason: String,
}

impl std::fmt::Display for Incompatibility {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.name, self.reason)
    }
}

/// Message types of `old` that `new` no longer has.
fn removed(old: &Catalog, new: &Catalog) -> Vec<Incompatibility> {
    old.messages()
        .filter(|o| new.get(&o.full_name).is_err())
        .map(|o| Incompatibility {
            name: o.full_name.clone(),
            reason: format!("message type removed (was in {})", o.path),
        })
        .collect()
}

/// Message types whose schema differs between `old` and `new`, as (old, new) pairs.
fn changed<'c>(
    old: &'c Catalog,
    new: &'c Catalog,
) -> impl Iterator<Item = (&'c CompiledSchema, &'c CompiledSchema)> {
    old.messages().filter_map(move |o| {
        let n = new.get(&o.full_name).ok()?;
        (o.canonical != n.canonical).then_some((o, n))
    })
}

/// Checks every message type of `old` against its version in `new` with Avro's resolution rules.
pub fn check_local(old: &Catalog, new: &Catalog) -> Vec<Incompatibility> {
    let mut problems = removed(old, new);
    for (o, n) in changed(old, new) {
        if let Err(e) = SchemaCompatibility::can_read(&o.schema, &n.schema) {
            problems.push(Incompatibility {
                name: o.full_name.clone(),
                reason: format!("new version cannot read old data: {e}"),
            });
        }
    }
    problems
}

/// Checks every changed message type with the registry: the old version is registered under a
/// scratch subject `<scratch_prefix><full name>` set to BACKWARD, then the registry is asked
/// whether the new version may follow it.
pub async fn check_with_registry(
    registry: &Registry,
    old: &Catalog,
    new: &Catalog,
    scratch_prefix: &str,
) -> Result<Vec<Incompatibility>, CodecError> {
    let mut problems = removed(old, new);
    for (o, n) in changed(old, new) {
        let subject = format!("{scratch_prefix}{}", o.full_name);
        registry.register_json(&subject, &o.json).await?;
        registry
            .set_compatibility(Some(&subject), "BACKWARD")
            .await?;
        if !registry.is_compatible(&subject, &n.json).await? {
            problems.push(Incompatibility {
                name: o.full_name.clone(),
                reason: "the registry rejects the new version as not BACKWARD compatible".into(),
            });
        }
    }
    Ok(problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    const META: (&str, &str) = (
        "avro/common/Meta.avsc",
        r#"{"type":"record","name":"Meta","namespace":"t.common","fields":[{"name":"id","type":"string"}]}"#,
    );

    fn catalog(order: &str) -> Catalog {
        Catalog::parse(&[META, ("avro/orders/Order.avsc", order)]).unwrap()
    }

    const V1: &str = r#"{"type":"record","name":"Order","namespace":"t.orders","fields":[{"name":"meta","type":"t.common.Meta"},{"name":"total","type":"long"}]}"#;

    #[test]
    fn adding_a_field_with_a_default_is_compatible() {
        let v2 = r#"{"type":"record","name":"Order","namespace":"t.orders","fields":[{"name":"meta","type":"t.common.Meta"},{"name":"total","type":"long"},{"name":"note","type":["null","string"],"default":null}]}"#;
        assert_eq!(check_local(&catalog(V1), &catalog(v2)), vec![]);
    }

    #[test]
    fn adding_a_field_without_a_default_is_not() {
        let v2 = r#"{"type":"record","name":"Order","namespace":"t.orders","fields":[{"name":"meta","type":"t.common.Meta"},{"name":"total","type":"long"},{"name":"note","type":"string"}]}"#;
        let problems = check_local(&catalog(V1), &catalog(v2));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].name, "t.orders.Order");
    }

    #[test]
    fn a_breaking_change_in_a_component_is_caught_through_its_users() {
        let old = catalog(V1);
        let meta2 = (
            "avro/common/Meta.avsc",
            r#"{"type":"record","name":"Meta","namespace":"t.common","fields":[{"name":"id","type":"int"}]}"#,
        );
        let new = Catalog::parse(&[meta2, ("avro/orders/Order.avsc", V1)]).unwrap();
        assert_eq!(check_local(&old, &new).len(), 1);
    }

    #[test]
    fn removing_a_message_type_is_reported() {
        let new = Catalog::parse(&[META]).unwrap();
        let problems = check_local(&catalog(V1), &new);
        assert_eq!(problems.len(), 1);
        assert!(problems[0].reason.contains("removed"));
    }
}
