//! The converter shared by the JSON and XML readers: the schema's named types, the path
//! being converted, and the errors collected so far (at most [`MAX_ERRORS`]).

use apache_avro::Schema;
use apache_avro::schema::RecordField;
use apache_avro::types::Value;
use serde_json::Value as Json;

use super::names::*;
use super::*;

// ---------------------------------------------------------------------------------------------
// The converter: shared by JSON and XML, collecting errors with their paths

pub(super) struct Conv<'s, 'x> {
    pub(super) names: Names<'s>,
    pub(super) errors: Vec<ConvertError>,
    pub(super) path: Vec<Seg>,
    /// The XML source, for line and column numbers in errors.
    pub(super) xml: Option<&'x [u8]>,
}

impl<'s, 'x> Conv<'s, 'x> {
    pub(super) fn new(schema: &'s Schema, xml: Option<&'x [u8]>) -> Self {
        Conv {
            names: Names::of(schema),
            errors: Vec::new(),
            path: Vec::new(),
            xml,
        }
    }

    pub(super) fn finish(self, value: Option<Value>) -> Result<Value, Vec<ConvertError>> {
        match value {
            Some(v) if self.errors.is_empty() => Ok(v),
            _ if self.errors.is_empty() => Err(vec![ConvertError::new("", "conversion failed")]),
            _ => Err(self.errors),
        }
    }

    pub(super) fn fail<T>(&mut self, reason: impl Into<String>) -> Option<T> {
        if self.errors.len() < MAX_ERRORS {
            self.errors.push(ConvertError {
                field: render(&self.path),
                reason: reason.into(),
            });
        }
        None
    }

    pub(super) fn full(&self) -> bool {
        self.errors.len() >= MAX_ERRORS
    }

    /// Runs `f` and reports whether it succeeded, dropping the errors it recorded (trying
    /// union branches).
    pub(super) fn attempt<T>(&mut self, f: impl FnOnce(&mut Self) -> Option<T>) -> Option<T> {
        let saved = std::mem::take(&mut self.errors);
        let out = f(self);
        let failed = !self.errors.is_empty();
        self.errors = saved;
        if failed { None } else { out }
    }

    pub(super) fn resolve(
        &mut self,
        schema: &'s Schema,
        ns: Option<&'s str>,
    ) -> Option<&'s Schema> {
        match self.names.resolve(schema, ns) {
            Ok(s) => Some(s),
            Err(reason) => self.fail(reason),
        }
    }

    /// Keeps one converted part of a record, array or map (`put` stores it): `Some(true)`
    /// when it converted, `Some(false)` when it failed (its error is collected), `None` when
    /// the error budget is full and the whole conversion should stop.
    pub(super) fn keep(&self, converted: Option<Value>, put: impl FnOnce(Value)) -> Option<bool> {
        let ok = converted.map(put).is_some();
        (!self.full()).then_some(ok)
    }

    pub(super) fn with<T>(
        &mut self,
        seg: Seg,
        f: impl FnOnce(&mut Self) -> Option<T>,
    ) -> Option<T> {
        self.path.push(seg);
        let out = f(self);
        self.path.pop();
        out
    }

    /// The value of a record field that the document leaves out.
    pub(super) fn absent(&mut self, field: &'s RecordField, ns: Option<&'s str>) -> Option<Value> {
        if let Some(default) = &field.default {
            return self.default(&field.schema, ns, default);
        }
        let schema = self.resolve(&field.schema, ns)?;
        match schema {
            Schema::Union(u) => {
                if let Some(i) = null_index(u) {
                    return Some(Value::Union(i, Box::new(Value::Null)));
                }
            }
            Schema::Null => return Some(Value::Null),
            _ => {}
        }
        self.fail(format!(
            "missing required field of type {}",
            type_name(schema)
        ))
    }

    /// A field's Avro default (JSON; for a union, of its first branch) as a value.
    pub(super) fn default(
        &mut self,
        schema: &'s Schema,
        ns: Option<&'s str>,
        json: &Json,
    ) -> Option<Value> {
        let resolved = self.resolve(schema, ns)?;
        let out = match resolved {
            Schema::Union(u) => {
                let first = u.variants().first()?;
                self.attempt(|c| c.json(first, ns, json))
                    .map(|v| Value::Union(0, Box::new(v)))
            }
            other => self.attempt(|c| c.json(other, ns, json)),
        };
        match out {
            Some(v) => Some(v),
            None => self.fail(format!(
                "the schema's default {json} does not fit the field's type {}",
                type_name(resolved)
            )),
        }
    }
}
