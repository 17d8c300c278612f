//! The XML reader (an XML tree to a value of the schema) and the XML writer (a value to a
//! document in the same convention).

use std::collections::HashMap;

use apache_avro::Schema;
use apache_avro::types::Value;

use super::base64::{base64_decode, base64_encode};
use super::conv::Conv;
use super::names::*;
use super::xml_tree::*;

impl<'s, 'x> Conv<'s, 'x> {
    // ----- XML

    pub(super) fn at(&self, el: &Element) -> String {
        match self.xml {
            Some(xml) => {
                let (line, col) = locate(xml, el.pos);
                format!(" (<{}> at line {line}, column {col})", el.name)
            }
            None => String::new(),
        }
    }

    pub(super) fn fail_at<T>(&mut self, el: &Element, reason: impl Into<String>) -> Option<T> {
        let reason = format!("{}{}", reason.into(), self.at(el));
        self.fail(reason)
    }

    /// Refuses attributes other than `allowed` (the `key` of a map entry).
    pub(super) fn no_attributes(&mut self, el: &Element, allowed: Option<&str>) -> bool {
        let mut ok = true;
        for a in &el.attrs {
            if Some(a.name.as_str()) != allowed {
                ok = false;
                self.fail_at::<()>(
                    el,
                    format!(
                        "unexpected attribute `{}` (fields are child elements)",
                        a.name
                    ),
                );
            }
        }
        ok
    }

    pub(super) fn no_text(&mut self, el: &Element) -> bool {
        let text = el.text.trim();
        if text.is_empty() {
            true
        } else {
            self.fail_at::<()>(
                el,
                format!(
                    "mixed content: text {} where only child elements are allowed",
                    quote(text)
                ),
            );
            false
        }
    }

    pub(super) fn xml(
        &mut self,
        schema: &'s Schema,
        ns: Option<&'s str>,
        el: &Element,
        allowed_attr: Option<&str>,
    ) -> Option<Value> {
        let schema = self.resolve(schema, ns)?;
        if let Some(nil) = &el.nil {
            match nil.trim() {
                "true" | "1" => {
                    return match schema {
                        Schema::Union(u) if null_index(u).is_some() => {
                            let i = null_index(u)?;
                            if !el.children.is_empty() || !el.text.trim().is_empty() {
                                return self.fail_at(el, "xsi:nil=\"true\" element has content");
                            }
                            Some(Value::Union(i, Box::new(Value::Null)))
                        }
                        Schema::Null => Some(Value::Null),
                        other => self.fail_at(
                            el,
                            format!(
                                "xsi:nil=\"true\" on a field that is not optional (type {})",
                                type_name(other)
                            ),
                        ),
                    };
                }
                "false" | "0" => {}
                other => {
                    return self.fail_at(
                        el,
                        format!("xsi:nil must be true or false, found {}", quote(other)),
                    );
                }
            }
        }
        match schema {
            Schema::Union(u) => {
                let candidates = non_null_variants(u);
                if let [(i, only)] = candidates.as_slice() {
                    let i = *i;
                    return self
                        .xml(only, ns, el, allowed_attr)
                        .map(|v| Value::Union(i, Box::new(v)));
                }
                for (i, variant) in candidates {
                    if let Some(v) = self.attempt(|c| c.xml(variant, ns, el, allowed_attr)) {
                        return Some(Value::Union(i, Box::new(v)));
                    }
                }
                self.fail_at(
                    el,
                    format!(
                        "expected {}, found {}",
                        type_name(schema),
                        describe_element(el)
                    ),
                )
            }
            Schema::Record(r) => {
                let attrs_ok = self.no_attributes(el, allowed_attr);
                let text_ok = self.no_text(el);
                let inner_ns = r.name.namespace().or(ns);
                let mut ok = attrs_ok && text_ok;
                let mut by_field: HashMap<&str, &Element> = HashMap::new();
                for child in &el.children {
                    if !r.lookup.contains_key(&child.name) {
                        ok = false;
                        let reason = format!(
                            "unknown element <{}>; {} has {}",
                            child.name,
                            r.name.fullname(None),
                            field_list(r)
                        );
                        self.with(Seg::Field(child.name.clone()), |c| {
                            c.fail_at::<()>(child, reason)
                        });
                    } else if by_field.insert(child.name.as_str(), child).is_some() {
                        ok = false;
                        self.with(Seg::Field(child.name.clone()), |c| {
                            c.fail_at::<()>(child, "the field's element appears more than once")
                        });
                    }
                }
                let mut out = Vec::with_capacity(r.fields.len());
                for f in &r.fields {
                    let v = self.with(Seg::Field(f.name.clone()), |c| {
                        match by_field.get(f.name.as_str()) {
                            Some(child) => c.xml(&f.schema, inner_ns, child, None),
                            None => {
                                let before = c.errors.len();
                                let v = c.absent(f, inner_ns);
                                // Locate the error at the record element that lacks the field.
                                let at = c.at(el);
                                for e in c.errors.iter_mut().skip(before) {
                                    e.reason.push_str(&at);
                                }
                                v
                            }
                        }
                    });
                    ok &= self.keep(v, |v| out.push((f.name.clone(), v)))?;
                }
                ok.then_some(Value::Record(out))
            }
            Schema::Array(a) => {
                let mut ok = self.no_attributes(el, allowed_attr) & self.no_text(el);
                let mut out = Vec::with_capacity(el.children.len());
                for (i, child) in el.children.iter().enumerate() {
                    let v = self.with(Seg::Index(i), |c| c.xml(&a.items, ns, child, None));
                    ok &= self.keep(v, |v| out.push(v))?;
                }
                ok.then_some(Value::Array(out))
            }
            Schema::Map(m) => {
                let mut ok = self.no_attributes(el, allowed_attr) & self.no_text(el);
                let mut out = HashMap::with_capacity(el.children.len());
                for child in &el.children {
                    if child.name != "entry" {
                        ok = false;
                        self.fail_at::<()>(
                            child,
                            "expected <entry key=\"...\"> elements inside a map field",
                        );
                        continue;
                    }
                    let Some(key) = child.attr("key") else {
                        ok = false;
                        self.fail_at::<()>(child, "map <entry> without a key attribute");
                        continue;
                    };
                    if out.contains_key(key) {
                        ok = false;
                        self.with(Seg::Key(key.to_string()), |c| {
                            c.fail_at::<()>(child, "duplicate map key")
                        });
                        continue;
                    }
                    let v = self.with(Seg::Key(key.to_string()), |c| {
                        c.xml(&m.types, ns, child, Some("key"))
                    });
                    ok &= self.keep(v, |v| {
                        out.insert(key.to_string(), v);
                    })?;
                }
                ok.then_some(Value::Map(out))
            }
            scalar => {
                let attrs_ok = self.no_attributes(el, allowed_attr);
                if let Some(child) = el.children.first() {
                    return self.fail_at(
                        el,
                        format!(
                            "expected {} as text, found element <{}>",
                            type_name(scalar),
                            child.name
                        ),
                    );
                }
                let value = match xml_scalar(scalar, &el.text) {
                    Ok(v) => v,
                    Err(reason) => return self.fail_at(el, reason),
                };
                attrs_ok.then_some(value)
            }
        }
    }
}

pub(super) fn describe_element(el: &Element) -> String {
    if !el.children.is_empty() {
        format!("element <{}> with child elements", el.name)
    } else {
        format!("text {}", quote(&el.text))
    }
}

/// Parses the text of a scalar element by its Avro type.
pub(super) fn xml_scalar(schema: &Schema, text: &str) -> Result<Value, String> {
    let t = text.trim();
    let mismatch = || format!("expected {}, found text {}", type_name(schema), quote(text));
    let integer = |max: i128, min: i128, name: &str| -> Result<i128, String> {
        match t.parse::<i128>() {
            Ok(i) if i >= min && i <= max => Ok(i),
            Ok(i) => Err(format!("{i} is out of range for {name}")),
            Err(_) => {
                let digits = t.strip_prefix(['-', '+']).unwrap_or(t);
                if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
                    Err(format!("{t} is out of range for {name}"))
                } else {
                    Err(mismatch())
                }
            }
        }
    };
    let float = || -> Result<f64, String> {
        match t {
            "NaN" => Ok(f64::NAN),
            "INF" | "+INF" | "Infinity" => Ok(f64::INFINITY),
            "-INF" | "-Infinity" => Ok(f64::NEG_INFINITY),
            _ if t.is_empty()
                || t.chars()
                    .any(|c| c.is_ascii_alphabetic() && !"eE".contains(c)) =>
            {
                Err(mismatch())
            }
            _ => t.parse::<f64>().map_err(|_| mismatch()),
        }
    };
    match schema {
        Schema::Null => {
            if t.is_empty() {
                Ok(Value::Null)
            } else {
                Err(mismatch())
            }
        }
        Schema::Boolean => match t {
            "true" | "1" => Ok(Value::Boolean(true)),
            "false" | "0" => Ok(Value::Boolean(false)),
            _ => Err(mismatch()),
        },
        Schema::Int => {
            integer(i128::from(i32::MAX), i128::from(i32::MIN), "int").map(|i| Value::Int(i as i32))
        }
        Schema::Long => integer(i128::from(i64::MAX), i128::from(i64::MIN), "long")
            .map(|i| Value::Long(i as i64)),
        Schema::Float => {
            let f = float()?;
            if float_out_of_range(f) {
                Err(format!("{t} is out of range for float"))
            } else {
                Ok(Value::Float(f as f32))
            }
        }
        Schema::Double => float().map(Value::Double),
        Schema::String => Ok(Value::String(text.to_string())),
        Schema::Bytes => base64_decode(text).map(Value::Bytes),
        Schema::Fixed(f) => {
            let b = base64_decode(text)?;
            if b.len() == f.size {
                Ok(Value::Fixed(f.size, b))
            } else {
                Err(format!(
                    "expected {} bytes for {}, found {}",
                    f.size,
                    type_name(schema),
                    b.len()
                ))
            }
        }
        Schema::Enum(e) => match e.symbols.iter().position(|s| s == t) {
            Some(i) => Ok(Value::Enum(i as u32, t.to_string())),
            None => Err(format!(
                "expected one of the symbols {} of {}, found text {}",
                e.symbols.join(", "),
                type_name(schema),
                quote(text)
            )),
        },
        other => Err(unsupported(other)),
    }
}

// ---------------------------------------------------------------------------------------------
// Writing XML

pub(super) fn is_xml_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_alphabetic() || c == '_')
        && chars.all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !name.contains(':')
}

pub(super) fn unwrap_union(value: &Value) -> &Value {
    match value {
        Value::Union(_, inner) => unwrap_union(inner),
        other => other,
    }
}

/// Whether writing `value` needs `xsi:nil` (a null that can't be left out).
pub(super) fn needs_nil(value: &Value, position_required: bool) -> bool {
    match unwrap_union(value) {
        Value::Null => position_required,
        Value::Record(fields) => fields.iter().any(|(_, v)| needs_nil(v, false)),
        Value::Array(items) => items.iter().any(|v| needs_nil(v, true)),
        Value::Map(entries) => entries.values().any(|v| needs_nil(v, true)),
        _ => false,
    }
}

pub(super) fn escape_into(out: &mut String, text: &str, attribute: bool) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' if attribute => out.push_str("&quot;"),
            '\r' => out.push_str("&#13;"),
            '\n' | '\t' if attribute => out.push_str(&format!("&#{};", u32::from(c))),
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\t') => {
                out.push_str(&format!("&#{};", u32::from(c)))
            }
            c => out.push(c),
        }
    }
}

pub(super) fn format_float(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f > 0.0 { "INF" } else { "-INF" }.into()
    } else {
        format!("{f}")
    }
}

pub(super) fn scalar_text(value: &Value) -> String {
    match value {
        Value::Boolean(b) => b.to_string(),
        Value::Float(f) => {
            // The shortest text that reads back as the same f32.
            if f.is_finite() {
                format!("{f}")
            } else {
                format_float(f64::from(*f))
            }
        }
        Value::Double(f) => format_float(*f),
        Value::Bytes(b) | Value::Fixed(_, b) => base64_encode(b),
        Value::String(s) | Value::Enum(_, s) => s.clone(),
        Value::Decimal(d) => Vec::<u8>::try_from(d)
            .map(|b| base64_encode(&b))
            .unwrap_or_default(),
        Value::BigDecimal(d) => d.to_string(),
        Value::Uuid(u) => u.to_string(),
        Value::Duration(d) => {
            let bytes: [u8; 12] = d.into();
            base64_encode(&bytes)
        }
        Value::Null | Value::Union(..) | Value::Array(_) | Value::Map(_) | Value::Record(_) => {
            String::new()
        }
        // What is left are the integer-like values.
        integral => integer(integral).map(|i| i.to_string()).unwrap_or_default(),
    }
}

pub(super) fn write_element(out: &mut String, name: &str, value: &Value, attrs: &str) {
    match unwrap_union(value) {
        Value::Null => {
            out.push_str(&format!("<{name}{attrs} xsi:nil=\"true\"/>"));
        }
        Value::Record(fields) => {
            out.push_str(&format!("<{name}{attrs}>"));
            for (field, v) in fields {
                if !matches!(unwrap_union(v), Value::Null) {
                    write_element(out, field, v, "");
                }
            }
            out.push_str(&format!("</{name}>"));
        }
        Value::Array(items) => {
            out.push_str(&format!("<{name}{attrs}>"));
            for item in items {
                write_element(out, "item", item, "");
            }
            out.push_str(&format!("</{name}>"));
        }
        Value::Map(entries) => {
            out.push_str(&format!("<{name}{attrs}>"));
            let mut keys: Vec<&String> = entries.keys().collect();
            keys.sort();
            for key in keys {
                let mut attr = String::from(" key=\"");
                escape_into(&mut attr, key, true);
                attr.push('"');
                if let Some(v) = entries.get(key) {
                    write_element(out, "entry", v, &attr);
                }
            }
            out.push_str(&format!("</{name}>"));
        }
        scalar => {
            out.push_str(&format!("<{name}{attrs}>"));
            escape_into(out, &scalar_text(scalar), false);
            out.push_str(&format!("</{name}>"));
        }
    }
}
