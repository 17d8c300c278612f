//! The JSON reader: a JSON document to a value of the schema (conventions in the module docs
//! of [`crate::convert`]).

use std::collections::HashMap;

use apache_avro::Schema;
use apache_avro::types::Value;
use serde_json::Value as Json;

use super::conv::Conv;
use super::names::*;

impl<'s, 'x> Conv<'s, 'x> {
    // ----- JSON

    pub(super) fn json(
        &mut self,
        schema: &'s Schema,
        ns: Option<&'s str>,
        json: &Json,
    ) -> Option<Value> {
        let schema = self.resolve(schema, ns)?;
        let mismatch = |c: &mut Self| -> Option<Value> {
            c.fail(format!(
                "expected {}, found {}",
                type_name(schema),
                describe(json)
            ))
        };
        match schema {
            Schema::Null => match json {
                Json::Null => Some(Value::Null),
                _ => mismatch(self),
            },
            Schema::Boolean => match json {
                Json::Bool(b) => Some(Value::Boolean(*b)),
                _ => mismatch(self),
            },
            Schema::Int => match json {
                Json::Number(n) if n.is_i64() || n.is_u64() => {
                    match n.as_i64().and_then(|i| i32::try_from(i).ok()) {
                        Some(i) => Some(Value::Int(i)),
                        None => self.fail(format!("{n} is out of range for int")),
                    }
                }
                _ => mismatch(self),
            },
            Schema::Long => match json {
                Json::Number(n) if n.is_i64() => n.as_i64().map(Value::Long),
                Json::Number(n) if n.is_u64() => self.fail(format!("{n} is out of range for long")),
                _ => mismatch(self),
            },
            Schema::Float | Schema::Double => {
                let f = match json {
                    Json::Number(n) => n.as_f64(),
                    Json::String(s) => match s.as_str() {
                        "NaN" => Some(f64::NAN),
                        "Infinity" => Some(f64::INFINITY),
                        "-Infinity" => Some(f64::NEG_INFINITY),
                        _ => None,
                    },
                    _ => None,
                };
                match (f, schema) {
                    (None, _) => mismatch(self),
                    (Some(f), Schema::Float) if float_out_of_range(f) => {
                        self.fail(format!("{json} is out of range for float"))
                    }
                    (Some(f), Schema::Float) => Some(Value::Float(f as f32)),
                    (Some(f), _) => Some(Value::Double(f)),
                }
            }
            Schema::String => match json {
                Json::String(s) => Some(Value::String(s.clone())),
                _ => mismatch(self),
            },
            Schema::Bytes => match json {
                Json::String(s) => match from_latin1(s) {
                    Ok(b) => Some(Value::Bytes(b)),
                    Err(reason) => self.fail(reason),
                },
                _ => mismatch(self),
            },
            Schema::Fixed(f) => match json {
                Json::String(s) => match from_latin1(s) {
                    Ok(b) if b.len() == f.size => Some(Value::Fixed(f.size, b)),
                    Ok(b) => self.fail(format!(
                        "expected {} bytes for {}, found {}",
                        f.size,
                        type_name(schema),
                        b.len()
                    )),
                    Err(reason) => self.fail(reason),
                },
                _ => mismatch(self),
            },
            Schema::Enum(e) => match json {
                Json::String(s) => match e.symbols.iter().position(|x| x == s) {
                    Some(i) => Some(Value::Enum(i as u32, s.clone())),
                    None => self.fail(format!(
                        "expected one of the symbols {} of {}, found string {}",
                        e.symbols.join(", "),
                        type_name(schema),
                        quote(s)
                    )),
                },
                _ => mismatch(self),
            },
            Schema::Array(a) => match json {
                Json::Array(items) => {
                    let mut out = Vec::with_capacity(items.len());
                    let mut ok = true;
                    for (i, item) in items.iter().enumerate() {
                        let v = self.with(Seg::Index(i), |c| c.json(&a.items, ns, item));
                        ok &= self.keep(v, |v| out.push(v))?;
                    }
                    ok.then_some(Value::Array(out))
                }
                _ => mismatch(self),
            },
            Schema::Map(m) => match json {
                Json::Object(entries) => {
                    let mut out = HashMap::with_capacity(entries.len());
                    let mut ok = true;
                    for (k, v) in entries {
                        let v = self.with(Seg::Key(k.clone()), |c| c.json(&m.types, ns, v));
                        ok &= self.keep(v, |v| {
                            out.insert(k.clone(), v);
                        })?;
                    }
                    ok.then_some(Value::Map(out))
                }
                _ => mismatch(self),
            },
            Schema::Union(u) => {
                if json.is_null()
                    && let Some(i) = null_index(u)
                {
                    return Some(Value::Union(i, Box::new(Value::Null)));
                }
                let candidates = non_null_variants(u);
                if let [(i, only)] = candidates.as_slice() {
                    let i = *i;
                    return self
                        .json(only, ns, json)
                        .map(|v| Value::Union(i, Box::new(v)));
                }
                for (i, variant) in candidates {
                    if let Some(v) = self.attempt(|c| c.json(variant, ns, json)) {
                        return Some(Value::Union(i, Box::new(v)));
                    }
                }
                mismatch(self)
            }
            Schema::Record(r) => {
                let Json::Object(obj) = json else {
                    return self.fail(format!(
                        "expected {} (a JSON object), found {}",
                        type_name(schema),
                        describe(json)
                    ));
                };
                let inner_ns = r.name.namespace().or(ns);
                let mut ok = true;
                for key in obj.keys() {
                    if !r.lookup.contains_key(key) {
                        ok = false;
                        let reason = format!(
                            "unknown field; {} has {}",
                            r.name.fullname(None),
                            field_list(r)
                        );
                        self.with(Seg::Field(key.clone()), |c| c.fail::<()>(reason));
                    }
                }
                let mut out = Vec::with_capacity(r.fields.len());
                for f in &r.fields {
                    let v = self.with(Seg::Field(f.name.clone()), |c| match obj.get(&f.name) {
                        Some(j) => c.json(&f.schema, inner_ns, j),
                        None => c.absent(f, inner_ns),
                    });
                    ok &= self.keep(v, |v| out.push((f.name.clone(), v)))?;
                }
                ok.then_some(Value::Record(out))
            }
            other => self.fail(unsupported(other)),
        }
    }
}
