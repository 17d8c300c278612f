//! Field transforms (rename, drop, set, copy, compute) and conforming a transformed value to
//! the schema it is written with.

use std::collections::HashMap;

use apache_avro::Schema;
use apache_avro::schema::RecordSchema;
use apache_avro::types::Value;
use serde::Deserialize;

use eip_schemas::convert::{ConvertError, Names};

use crate::value::{Literal, Number, Path, PathError, Segment, check_path, number, text, unwrap};

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// One transform step as written in a rules file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStep {
    rename: Option<String>,
    to: Option<String>,
    drop: Option<String>,
    set: Option<String>,
    value: Option<toml::Value>,
    copy: Option<String>,
    compute: Option<String>,
    #[serde(rename = "fn")]
    func: Option<String>,
    from: Option<OneOrMany>,
    sep: Option<String>,
}

/// A function of `compute`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Func {
    /// Upper-case a string.
    Upper,
    /// Lower-case a string.
    Lower,
    /// Trim whitespace.
    Trim,
    /// Length of a string (characters) or an array.
    Len,
    /// Join strings and numbers with `sep`.
    Concat,
    /// Sum of numbers (`[*]` paths sum every element).
    Sum,
    /// Product of numbers.
    Product,
    /// Milliseconds since the epoch, now.
    NowMillis,
    /// A new random UUID.
    Uuid,
}

impl Func {
    fn parse(s: &str) -> Result<Func, String> {
        Ok(match s {
            "upper" => Func::Upper,
            "lower" => Func::Lower,
            "trim" => Func::Trim,
            "len" => Func::Len,
            "concat" => Func::Concat,
            "sum" => Func::Sum,
            "product" => Func::Product,
            "now_millis" => Func::NowMillis,
            "uuid" => Func::Uuid,
            other => {
                return Err(format!(
                    "unknown fn `{other}` (upper, lower, trim, len, concat, sum, product, now_millis, uuid)"
                ));
            }
        })
    }

    fn arity(self) -> (usize, usize) {
        match self {
            Func::Upper | Func::Lower | Func::Trim | Func::Len => (1, 1),
            Func::Concat | Func::Sum | Func::Product => (1, usize::MAX),
            Func::NowMillis | Func::Uuid => (0, 0),
        }
    }
}

/// A validated transform step.
#[derive(Debug, Clone)]
pub enum Step {
    /// Move a field to another name.
    Rename {
        /// The field moved.
        from: Path,
        /// Where it goes.
        to: Path,
    },
    /// Remove a field.
    Drop(Path),
    /// Set a field to a constant.
    Set(Path, Literal),
    /// Copy a field's value to another field.
    Copy {
        /// The field copied.
        from: Path,
        /// Where the copy goes.
        to: Path,
    },
    /// Set a field to a function of other fields.
    Compute {
        /// The field set.
        to: Path,
        /// The function.
        func: Func,
        /// Its arguments.
        from: Vec<Path>,
        /// Separator for `concat`.
        sep: String,
    },
}

fn target(s: &str, what: &str) -> Result<Path, String> {
    let p = Path::parse(s).map_err(|e| format!("{what}: {e}"))?;
    if p.segments().iter().any(|s| !matches!(s, Segment::Field(_))) {
        return Err(format!(
            "{what}: `{s}` must be field names only, no indexes"
        ));
    }
    Ok(p)
}

impl Step {
    /// Validates a step as written.
    pub fn compile(raw: &RawStep) -> Result<Step, String> {
        let kinds = [
            raw.rename.is_some(),
            raw.drop.is_some(),
            raw.set.is_some(),
            raw.copy.is_some(),
            raw.compute.is_some(),
        ];
        if kinds.iter().filter(|k| **k).count() != 1 {
            return Err(
                "a step is exactly one of `rename`, `drop`, `set`, `copy` or `compute`".into(),
            );
        }
        let extra = |allowed: &[&str]| -> Result<(), String> {
            let present = [
                ("to", raw.to.is_some()),
                ("value", raw.value.is_some()),
                ("fn", raw.func.is_some()),
                ("from", raw.from.is_some()),
                ("sep", raw.sep.is_some()),
            ];
            for (k, there) in present {
                if there && !allowed.contains(&k) {
                    return Err(format!("`{k}` does not belong in this step"));
                }
            }
            Ok(())
        };
        if let Some(from) = &raw.rename {
            extra(&["to"])?;
            let to = raw.to.as_deref().ok_or("rename needs `to`")?;
            return Ok(Step::Rename {
                from: target(from, "rename")?,
                to: target(to, "to")?,
            });
        }
        if let Some(field) = &raw.drop {
            extra(&[])?;
            return Ok(Step::Drop(target(field, "drop")?));
        }
        if let Some(field) = &raw.set {
            extra(&["value"])?;
            let v = raw.value.as_ref().ok_or("set needs `value`")?;
            return Ok(Step::Set(
                target(field, "set")?,
                Literal::from_toml(v).map_err(|e| format!("value: {e}"))?,
            ));
        }
        if let Some(from) = &raw.copy {
            extra(&["to"])?;
            let to = raw.to.as_deref().ok_or("copy needs `to`")?;
            return Ok(Step::Copy {
                from: Path::parse(from).map_err(|e| format!("copy: {e}"))?,
                to: target(to, "to")?,
            });
        }
        let field = raw.compute.as_deref().unwrap_or_default();
        extra(&["fn", "from", "sep"])?;
        let func = Func::parse(raw.func.as_deref().ok_or("compute needs `fn`")?)?;
        let from: Vec<Path> = match &raw.from {
            None => Vec::new(),
            Some(OneOrMany::One(s)) => vec![Path::parse(s).map_err(|e| format!("from: {e}"))?],
            Some(OneOrMany::Many(v)) => v
                .iter()
                .map(|s| Path::parse(s).map_err(|e| format!("from: {e}")))
                .collect::<Result<_, _>>()?,
        };
        let (min, max) = func.arity();
        if from.len() < min || from.len() > max {
            return Err(format!(
                "fn `{}` takes {} field(s) in `from`, got {}",
                raw.func.as_deref().unwrap_or_default(),
                if min == max {
                    min.to_string()
                } else {
                    format!("at least {min}")
                },
                from.len()
            ));
        }
        if raw.sep.is_some() && func != Func::Concat {
            return Err("`sep` only belongs with fn `concat`".into());
        }
        Ok(Step::Compute {
            to: target(field, "compute")?,
            func,
            from,
            sep: raw.sep.clone().unwrap_or_default(),
        })
    }

    /// Applies the step to `value` (a record).
    pub fn apply(&self, value: &mut Value) -> Result<(), ConvertError> {
        match self {
            Step::Rename { from, to } => {
                let v = take(value, from)
                    .ok_or_else(|| ConvertError::new(from.to_string(), "rename: no such field"))?;
                put(value, to, v)
            }
            Step::Drop(p) => {
                take(value, p);
                Ok(())
            }
            Step::Set(p, lit) => put(value, p, lit.to_value()),
            Step::Copy { from, to } => {
                let v = from
                    .first(value)
                    .cloned()
                    .ok_or_else(|| ConvertError::new(from.to_string(), "copy: no such field"))?;
                put(value, to, v)
            }
            Step::Compute {
                to,
                func,
                from,
                sep,
            } => {
                let v = compute(value, *func, from, sep)?;
                put(value, to, v)
            }
        }
    }
}

/// Checks a step's source fields against the record types a rule is limited to.
pub(crate) fn check_step(step: &Step, schemas: &[&Schema]) -> Result<(), PathError> {
    match step {
        Step::Rename { from, .. } | Step::Copy { from, .. } | Step::Drop(from) => {
            check_path(from, schemas)
        }
        Step::Compute { from, .. } => from.iter().try_for_each(|p| check_path(p, schemas)),
        Step::Set(..) => Ok(()),
    }
}

fn compute(value: &Value, func: Func, from: &[Path], sep: &str) -> Result<Value, ConvertError> {
    let one = |p: &Path| {
        p.first(value)
            .ok_or_else(|| ConvertError::new(p.to_string(), "no such field"))
    };
    let string_of = |p: &Path| -> Result<String, ConvertError> {
        let v = one(p)?;
        text(v)
            .map(str::to_string)
            .ok_or_else(|| ConvertError::new(p.to_string(), "expected a string"))
    };
    Ok(match func {
        Func::Upper => Value::String(string_of(&from[0])?.to_uppercase()),
        Func::Lower => Value::String(string_of(&from[0])?.to_lowercase()),
        Func::Trim => Value::String(string_of(&from[0])?.trim().to_string()),
        Func::Len => match unwrap(one(&from[0])?) {
            Value::String(s) => Value::Long(s.chars().count() as i64),
            Value::Array(a) => Value::Long(a.len() as i64),
            _ => {
                return Err(ConvertError::new(
                    from[0].to_string(),
                    "len needs a string or array",
                ));
            }
        },
        Func::Concat => {
            let mut parts = Vec::with_capacity(from.len());
            for p in from {
                let v = one(p)?;
                parts.push(match (text(v), number(v)) {
                    (Some(s), _) => s.to_string(),
                    (None, Some(Number::Int(i))) => i.to_string(),
                    (None, Some(Number::Float(x))) => x.to_string(),
                    _ => {
                        return Err(ConvertError::new(
                            p.to_string(),
                            "concat needs strings or numbers",
                        ));
                    }
                });
            }
            Value::String(parts.join(sep))
        }
        Func::Sum | Func::Product => {
            let mut ints: Option<i64> = Some(if func == Func::Sum { 0 } else { 1 });
            let mut float: f64 = if func == Func::Sum { 0.0 } else { 1.0 };
            for p in from {
                let mut bad = None;
                p.select(value, &mut |v| {
                    match number(v) {
                        Some(n) => {
                            ints = match (ints, n) {
                                (Some(acc), Number::Int(i)) if func == Func::Sum => {
                                    acc.checked_add(i)
                                }
                                (Some(acc), Number::Int(i)) => acc.checked_mul(i),
                                _ => None,
                            };
                            if func == Func::Sum {
                                float += n.as_f64();
                            } else {
                                float *= n.as_f64();
                            }
                        }
                        None => bad = Some(p.to_string()),
                    }
                    bad.is_some()
                });
                if let Some(field) = bad {
                    return Err(ConvertError::new(field, "expected a number"));
                }
            }
            match ints {
                Some(i) => Value::Long(i),
                None => Value::Double(float),
            }
        }
        Func::NowMillis => Value::Long(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
        ),
        Func::Uuid => Value::String(uuid::Uuid::new_v4().to_string()),
    })
}

/// The record holding the last segment of `path`, looking through unions.
fn parent_mut<'v>(
    value: &'v mut Value,
    path: &Path,
) -> Option<(&'v mut Vec<(String, Value)>, String)> {
    let segments = path.segments();
    let (last, parents) = segments.split_last()?;
    let Segment::Field(name) = last else {
        return None;
    };
    let mut cur = value;
    for seg in parents {
        let Segment::Field(n) = seg else { return None };
        cur = unwrap_mut(cur);
        let Value::Record(fields) = cur else {
            return None;
        };
        cur = &mut fields.iter_mut().find(|(k, _)| k == n)?.1;
    }
    match unwrap_mut(cur) {
        Value::Record(fields) => Some((fields, name.clone())),
        _ => None,
    }
}

fn unwrap_mut(v: &mut Value) -> &mut Value {
    match v {
        Value::Union(_, inner) => unwrap_mut(inner),
        other => other,
    }
}

fn take(value: &mut Value, path: &Path) -> Option<Value> {
    let (fields, name) = parent_mut(value, path)?;
    let i = fields.iter().position(|(k, _)| *k == name)?;
    Some(fields.remove(i).1)
}

fn put(value: &mut Value, path: &Path, v: Value) -> Result<(), ConvertError> {
    let (fields, name) = parent_mut(value, path)
        .ok_or_else(|| ConvertError::new(path.to_string(), "its parent is not a record"))?;
    match fields.iter_mut().find(|(k, _)| *k == name) {
        Some(slot) => slot.1 = v,
        None => fields.push((name, v)),
    }
    Ok(())
}

/// Rebuilds `value` to fit `schema`: fields in schema order, absent fields from their
/// defaults, numbers narrowed or widened, union branches chosen, enum symbols checked. Fields
/// the schema does not have are an error: a transform must produce exactly the target type.
pub fn conform(value: Value, schema: &Schema) -> Result<Value, ConvertError> {
    let names = LazyNames {
        root: schema,
        names: std::cell::OnceCell::new(),
    };
    conform_at(value, schema, &names, "")
}

/// The root schema's named types, collected only when a reference is met: a transform runs on
/// every record its rule matches, and most target schemas refer to no named type twice.
struct LazyNames<'s> {
    root: &'s Schema,
    names: std::cell::OnceCell<Names<'s>>,
}

impl<'s> LazyNames<'s> {
    fn resolve(&self, schema: &'s Schema) -> Result<&'s Schema, String> {
        self.names
            .get_or_init(|| Names::of(self.root))
            .resolve(schema, None)
    }
}

fn join(at: &str, name: &str) -> String {
    if at.is_empty() {
        name.to_string()
    } else {
        format!("{at}.{name}")
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Boolean(_) => "boolean",
        Value::Int(_) => "int",
        Value::Long(_) => "long",
        Value::Float(_) => "float",
        Value::Double(_) => "double",
        Value::String(_) => "string",
        Value::Bytes(_) => "bytes",
        Value::Record(_) => "record",
        Value::Array(_) => "array",
        Value::Map(_) => "map",
        Value::Enum(..) => "enum",
        Value::Union(..) => "union",
        _ => "value",
    }
}

/// Rebuilds a record's `fields` in the order and with the defaults of `r`.
fn conform_record<'s>(
    fields: Vec<(String, Value)>,
    r: &'s RecordSchema,
    names: &LazyNames<'s>,
    at: &str,
) -> Result<Value, ConvertError> {
    let mut by_name: HashMap<String, Value> = fields.into_iter().collect();
    let mut out = Vec::with_capacity(r.fields.len());
    for f in &r.fields {
        let path = join(at, &f.name);
        let v = match by_name.remove(&f.name) {
            Some(v) => conform_at(v, &f.schema, names, &path)?,
            None => match &f.default {
                Some(d) => default_value(d, &f.schema, names, &path)?,
                None => {
                    return Err(ConvertError::new(
                        path,
                        format!(
                            "missing, and {} has no default for it",
                            r.name.fullname(None)
                        ),
                    ));
                }
            },
        };
        out.push((f.name.clone(), v));
    }
    if let Some(extra) = by_name.keys().min() {
        return Err(ConvertError::new(
            join(at, extra),
            format!("not a field of {}", r.name.fullname(None)),
        ));
    }
    Ok(Value::Record(out))
}

fn default_value<'s>(
    d: &serde_json::Value,
    schema: &'s Schema,
    names: &LazyNames<'s>,
    at: &str,
) -> Result<Value, ConvertError> {
    let v: Value = match d {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Boolean(*b),
        serde_json::Value::String(s) => Value::String(s.clone()),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::Long(i),
            None => Value::Double(n.as_f64().unwrap_or_default()),
        },
        serde_json::Value::Array(items) if items.is_empty() => Value::Array(Vec::new()),
        serde_json::Value::Object(m) if m.is_empty() => Value::Map(HashMap::new()),
        _ => return Err(ConvertError::new(at, "complex defaults are not supported")),
    };
    // A union's default is for its first branch.
    if let Schema::Union(u) = schema
        && let Some(first) = u.variants().first()
    {
        let inner = conform_at(v, first, names, at)?;
        return Ok(Value::Union(0, Box::new(inner)));
    }
    conform_at(v, schema, names, at)
}

fn conform_at<'s>(
    value: Value,
    schema: &'s Schema,
    names: &LazyNames<'s>,
    at: &str,
) -> Result<Value, ConvertError> {
    let mismatch = |want: &str, v: &Value| {
        ConvertError::new(at, format!("expected {want}, found {}", kind_of(v)))
    };
    match schema {
        Schema::Ref { name } => {
            let resolved = names.resolve(schema).map_err(|e| {
                ConvertError::new(at, format!("unknown type {}: {e}", name.fullname(None)))
            })?;
            conform_at(value, resolved, names, at)
        }
        Schema::Union(u) => {
            let inner = match value {
                Value::Union(_, v) => *v,
                v => v,
            };
            if inner == Value::Null {
                return match u.variants().iter().position(|s| *s == Schema::Null) {
                    Some(i) => Ok(Value::Union(i as u32, Box::new(Value::Null))),
                    None => Err(ConvertError::new(at, "null is not allowed here")),
                };
            }
            let mut last = None;
            for (i, variant) in u.variants().iter().enumerate() {
                if *variant == Schema::Null {
                    continue;
                }
                match conform_at(inner.clone(), variant, names, at) {
                    Ok(v) => return Ok(Value::Union(i as u32, Box::new(v))),
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or_else(|| ConvertError::new(at, "no union branch fits")))
        }
        Schema::Record(r) => match value {
            Value::Record(fields) => conform_record(fields, r, names, at),
            other => Err(ConvertError::new(
                at,
                format!(
                    "expected a {} record, found {}",
                    r.name.fullname(None),
                    kind_of(&other)
                ),
            )),
        },
        Schema::Null => match value {
            Value::Null => Ok(Value::Null),
            v => Err(mismatch("null", &v)),
        },
        Schema::Boolean => match value {
            Value::Boolean(b) => Ok(Value::Boolean(b)),
            v => Err(mismatch("boolean", &v)),
        },
        Schema::Int => match value {
            Value::Int(i) => Ok(Value::Int(i)),
            Value::Long(i) => i32::try_from(i)
                .map(Value::Int)
                .map_err(|_| ConvertError::new(at, format!("{i} does not fit an int"))),
            v => Err(mismatch("int", &v)),
        },
        Schema::Long => match value {
            Value::Int(i) => Ok(Value::Long(i64::from(i))),
            Value::Long(i) => Ok(Value::Long(i)),
            v => Err(mismatch("long", &v)),
        },
        Schema::Float | Schema::Double => {
            let x = match value {
                Value::Int(i) => f64::from(i),
                Value::Long(i) => i as f64,
                Value::Float(x) => f64::from(x),
                Value::Double(x) => x,
                v => return Err(mismatch("a number", &v)),
            };
            Ok(if *schema == Schema::Float {
                Value::Float(x as f32)
            } else {
                Value::Double(x)
            })
        }
        Schema::String => match value {
            Value::String(s) => Ok(Value::String(s)),
            Value::Enum(_, s) => Ok(Value::String(s)),
            v => Err(mismatch("string", &v)),
        },
        Schema::Bytes => match value {
            Value::Bytes(b) => Ok(Value::Bytes(b)),
            Value::String(s) => Ok(Value::Bytes(s.into_bytes())),
            v => Err(mismatch("bytes", &v)),
        },
        Schema::Enum(e) => {
            let symbol = match value {
                Value::Enum(_, s) | Value::String(s) => s,
                v => return Err(mismatch("an enum symbol", &v)),
            };
            match e.symbols.iter().position(|s| *s == symbol) {
                Some(i) => Ok(Value::Enum(i as u32, symbol)),
                None => Err(ConvertError::new(
                    at,
                    format!("`{symbol}` is not one of {}", e.symbols.join(", ")),
                )),
            }
        }
        Schema::Array(a) => match value {
            Value::Array(items) => items
                .into_iter()
                .enumerate()
                .map(|(i, v)| conform_at(v, &a.items, names, &format!("{at}[{i}]")))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
            v => Err(mismatch("array", &v)),
        },
        Schema::Map(m) => match value {
            Value::Map(entries) => entries
                .into_iter()
                .map(|(k, v)| {
                    let p = join(at, &k);
                    conform_at(v, &m.types, names, &p).map(|v| (k, v))
                })
                .collect::<Result<HashMap<_, _>, _>>()
                .map(Value::Map),
            v => Err(mismatch("map", &v)),
        },
        other => Err(ConvertError::new(
            at,
            format!("unsupported schema type {other:?}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn step(toml_text: &str) -> Result<Step, String> {
        let raw: RawStep = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        Step::compile(&raw)
    }

    fn schema() -> Schema {
        Schema::parse_str(
            r#"{"type":"record","name":"T","namespace":"t","fields":[
                {"name":"id","type":"string"},
                {"name":"qty","type":"int"},
                {"name":"note","type":["null","string"],"default":null},
                {"name":"kind","type":{"type":"enum","name":"K","symbols":["A","B"]}},
                {"name":"inner","type":{"type":"record","name":"I","fields":[{"name":"x","type":"long"}]}}
            ]}"#,
        )
        .unwrap()
    }

    fn value() -> Value {
        Value::Record(vec![
            ("identifier".into(), Value::String("a-1".into())),
            ("qty".into(), Value::Long(3)),
            ("kind".into(), Value::String("B".into())),
            (
                "inner".into(),
                Value::Record(vec![("x".into(), Value::Int(7))]),
            ),
            ("legacy".into(), Value::Boolean(true)),
        ])
    }

    #[test]
    fn given_rename_and_drop_when_conformed_then_the_value_fits_the_schema() {
        let s = schema();
        let mut v = value();
        step("rename = \"identifier\"\nto = \"id\"")
            .unwrap()
            .apply(&mut v)
            .unwrap();
        step("drop = \"legacy\"").unwrap().apply(&mut v).unwrap();
        let out = conform(v, &s).unwrap();
        assert!(out.validate(&s), "{out:?}");
        let Value::Record(fields) = &out else {
            panic!("not a record")
        };
        assert_eq!(fields[0], ("id".into(), Value::String("a-1".into())));
        assert_eq!(fields[1], ("qty".into(), Value::Int(3)));
        assert_eq!(
            fields[2],
            ("note".into(), Value::Union(0, Box::new(Value::Null)))
        );
        assert_eq!(fields[3], ("kind".into(), Value::Enum(1, "B".into())));
    }

    #[test]
    fn given_an_extra_or_missing_field_when_conformed_then_the_error_names_it() {
        let s = schema();
        let err = conform(value(), &s).unwrap_err();
        assert_eq!(err.field, "id");
        assert!(err.reason.contains("missing"), "{err}");
        let mut v = value();
        step("rename = \"identifier\"\nto = \"id\"")
            .unwrap()
            .apply(&mut v)
            .unwrap();
        let err = conform(v, &s).unwrap_err();
        assert_eq!(err.field, "legacy");
        assert!(err.reason.contains("not a field"), "{err}");
    }

    #[test]
    fn given_set_copy_and_compute_when_applied_then_fields_get_the_results() {
        let mut v = value();
        step("set = \"note\"\nvalue = \"hello\"")
            .unwrap()
            .apply(&mut v)
            .unwrap();
        step("copy = \"inner.x\"\nto = \"copied\"")
            .unwrap()
            .apply(&mut v)
            .unwrap();
        step("compute = \"label\"\nfn = \"concat\"\nfrom = [\"identifier\", \"qty\"]\nsep = \"/\"")
            .unwrap()
            .apply(&mut v)
            .unwrap();
        step("compute = \"total\"\nfn = \"sum\"\nfrom = [\"qty\", \"inner.x\"]")
            .unwrap()
            .apply(&mut v)
            .unwrap();
        step("compute = \"up\"\nfn = \"upper\"\nfrom = \"identifier\"")
            .unwrap()
            .apply(&mut v)
            .unwrap();
        let get = |name: &str| Path::parse(name).unwrap().first(&v).cloned();
        assert_eq!(get("note"), Some(Value::String("hello".into())));
        assert_eq!(get("copied"), Some(Value::Int(7)));
        assert_eq!(get("label"), Some(Value::String("a-1/3".into())));
        assert_eq!(get("total"), Some(Value::Long(10)));
        assert_eq!(get("up"), Some(Value::String("A-1".into())));
    }

    #[test]
    fn given_bad_steps_when_compiled_then_each_says_what_is_wrong() {
        for (text, says) in [
            ("rename = \"a\"", "needs `to`"),
            ("drop = \"a\"\nset = \"b\"", "exactly one"),
            ("drop = \"a\"\nto = \"b\"", "does not belong"),
            ("compute = \"a\"\nfn = \"nope\"", "unknown fn"),
            ("compute = \"a\"\nfn = \"upper\"", "takes 1"),
            ("set = \"a[0]\"\nvalue = 1", "no indexes"),
        ] {
            let err = step(text).unwrap_err();
            assert!(err.contains(says), "{text}: {err}");
        }
        assert!(step("sett = \"a\"").is_err());
    }

    #[test]
    fn given_a_missing_source_field_when_applied_then_the_error_names_it() {
        let mut v = value();
        let err = step("rename = \"nope\"\nto = \"x\"")
            .unwrap()
            .apply(&mut v)
            .unwrap_err();
        assert_eq!(err.field, "nope");
        let err = step("compute = \"x\"\nfn = \"upper\"\nfrom = \"qty\"")
            .unwrap()
            .apply(&mut v)
            .unwrap_err();
        assert_eq!(err.field, "qty");
        assert!(err.reason.contains("string"));
    }

    #[test]
    fn given_out_of_range_numbers_and_bad_symbols_when_conformed_then_they_are_rejected() {
        let s = Schema::parse_str(
            r#"{"type":"record","name":"N","fields":[{"name":"i","type":"int"},{"name":"k","type":{"type":"enum","name":"E","symbols":["X"]}}]}"#,
        )
        .unwrap();
        let v = Value::Record(vec![
            ("i".into(), Value::Long(i64::from(i32::MAX) + 1)),
            ("k".into(), Value::String("X".into())),
        ]);
        assert!(conform(v, &s).unwrap_err().reason.contains("int"));
        let v = Value::Record(vec![
            ("i".into(), Value::Long(1)),
            ("k".into(), Value::String("Y".into())),
        ]);
        let e = conform(v, &s).unwrap_err();
        assert_eq!(e.field, "k");
    }

    #[test]
    fn given_a_type_used_twice_when_conformed_then_the_reference_is_followed() {
        let s = Schema::parse_str(
            r#"{"type":"record","name":"Order","namespace":"t","fields":[
                {"name":"ship","type":{"type":"record","name":"Addr","fields":[{"name":"zip","type":"long"}]}},
                {"name":"bill","type":"Addr"}]}"#,
        )
        .unwrap();
        let addr = |zip| Value::Record(vec![("zip".into(), Value::Int(zip))]);
        let v = Value::Record(vec![("ship".into(), addr(1)), ("bill".into(), addr(2))]);
        let out = conform(v, &s).unwrap();
        let widened = |zip| Value::Record(vec![("zip".into(), Value::Long(zip))]);
        assert_eq!(
            out,
            Value::Record(vec![
                ("ship".into(), widened(1)),
                ("bill".into(), widened(2))
            ])
        );
        let bad = Value::Record(vec![
            ("ship".into(), addr(1)),
            ("bill".into(), Value::String("x".into())),
        ]);
        assert_eq!(conform(bad, &s).unwrap_err().field, "bill");
    }
}
