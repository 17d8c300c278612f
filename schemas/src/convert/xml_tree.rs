//! A small XML tree, built with quick-xml, refusing what the convention does not allow:
//! DOCTYPEs and entities, mixed content, excessive depth, encodings other than UTF-8.

use std::fmt;

use quick_xml::events::{BytesStart, Event};

use super::names::*;
use super::*;

// ---------------------------------------------------------------------------------------------
// A small XML tree, built with quick-xml, refusing what the convention does not allow

pub(super) struct Attr {
    pub(super) name: String,
    pub(super) value: String,
}

pub(super) struct Element {
    /// Local name (prefix dropped).
    pub(super) name: String,
    /// Attributes other than namespace declarations and `xsi:*`.
    pub(super) attrs: Vec<Attr>,
    /// The raw value of `xsi:nil`, when present.
    pub(super) nil: Option<String>,
    pub(super) children: Vec<Element>,
    /// The element's own text, concatenated.
    pub(super) text: String,
    /// Byte offset of the start tag.
    pub(super) pos: usize,
}

impl Element {
    pub(super) fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|a| a.name == name)
            .map(|a| a.value.as_str())
    }
}

/// 1-based line and column of byte offset `pos`.
pub(super) fn locate(xml: &[u8], pos: usize) -> (usize, usize) {
    let before = &xml[..pos.min(xml.len())];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |i| i + 1);
    let col = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count()
        + 1;
    (line, col)
}

pub(super) fn xml_error(xml: &[u8], pos: u64, reason: impl fmt::Display) -> ConvertError {
    let (line, col) = locate(xml, usize::try_from(pos).unwrap_or(usize::MAX));
    ConvertError::new(
        "",
        format!("malformed XML at line {line}, column {col}: {reason}"),
    )
}

pub(super) fn utf8<'a>(bytes: &'a [u8], what: &str) -> Result<&'a str, String> {
    std::str::from_utf8(bytes).map_err(|_| format!("{what} is not valid UTF-8"))
}

/// One level of namespace declarations: (prefix, uri); prefix "" is the default namespace.
pub(super) type Scope = Vec<(String, String)>;

pub(super) fn resolve_prefix<'a>(scopes: &'a [Scope], prefix: &str) -> Option<&'a str> {
    scopes
        .iter()
        .rev()
        .flat_map(|s| s.iter().rev())
        .find(|(p, _)| p == prefix)
        .map(|(_, uri)| uri.as_str())
}

pub(super) fn open(
    start: &BytesStart<'_>,
    pos: usize,
    scopes: &mut Vec<Scope>,
) -> Result<Element, String> {
    let qname = start.name();
    let name = utf8(qname.local_name().as_ref(), "an element name")?.to_string();
    let mut scope = Scope::new();
    let mut raw = Vec::new();
    for attr in start.attributes() {
        let attr = attr.map_err(|e| e.to_string())?;
        let key = utf8(attr.key.as_ref(), "an attribute name")?.to_string();
        let value = attr
            .unescape_value()
            .map_err(|e| format!("attribute `{key}`: {e}"))?
            .into_owned();
        if key == "xmlns" {
            scope.push((String::new(), value));
        } else if let Some(prefix) = key.strip_prefix("xmlns:") {
            scope.push((prefix.to_string(), value));
        } else {
            raw.push((key, value));
        }
    }
    scopes.push(scope);
    let mut el = Element {
        name,
        attrs: Vec::new(),
        nil: None,
        children: Vec::new(),
        text: String::new(),
        pos,
    };
    for (key, value) in raw {
        let (prefix, local) = match key.split_once(':') {
            Some((p, l)) => (Some(p), l),
            None => (None, key.as_str()),
        };
        let is_xsi = prefix.is_some_and(|p| match resolve_prefix(scopes, p) {
            Some(uri) => uri == XSI_NAMESPACE,
            None => p == "xsi",
        });
        if is_xsi {
            if local == "nil" {
                el.nil = Some(value);
            }
            // Other xsi attributes (schemaLocation, type) carry no data: ignored.
        } else {
            el.attrs.push(Attr {
                name: key.clone(),
                value,
            });
        }
    }
    Ok(el)
}

pub(super) fn predefined_entity(name: &str) -> Option<char> {
    match name {
        "lt" => Some('<'),
        "gt" => Some('>'),
        "amp" => Some('&'),
        "apos" => Some('\''),
        "quot" => Some('"'),
        _ => None,
    }
}

pub(super) fn parse_xml(xml: &[u8]) -> Result<Element, ConvertError> {
    let mut reader = quick_xml::Reader::from_reader(xml);
    reader.config_mut().check_end_names = true;
    let mut stack: Vec<Element> = Vec::new();
    let mut scopes: Vec<Scope> = Vec::new();
    let mut root: Option<Element> = None;
    loop {
        let pos = usize::try_from(reader.buffer_position()).unwrap_or(usize::MAX);
        let event = reader
            .read_event()
            .map_err(|e| xml_error(xml, reader.error_position(), e))?;
        let err = |reason: &dyn fmt::Display| xml_error(xml, pos as u64, reason);
        // Text outside the root element may only be whitespace.
        let push_text = |stack: &mut Vec<Element>, text: &str| -> Result<(), ConvertError> {
            match stack.last_mut() {
                Some(top) => {
                    top.text.push_str(text);
                    Ok(())
                }
                None if text.trim().is_empty() => Ok(()),
                None => Err(err(&format!(
                    "text {} outside the root element",
                    quote(text.trim())
                ))),
            }
        };
        match event {
            Event::Decl(decl) => {
                if let Some(Ok(enc)) = decl.encoding()
                    && !enc.eq_ignore_ascii_case(b"utf-8")
                {
                    return Err(err(&format!(
                        "encoding {} is not supported; send UTF-8",
                        String::from_utf8_lossy(&enc)
                    )));
                }
            }
            Event::DocType(_) => {
                return Err(err(
                    &"DOCTYPE declarations are not allowed (no DTDs, no entity definitions)",
                ));
            }
            Event::PI(_) | Event::Comment(_) => {}
            Event::Start(_) | Event::Empty(_) if root.is_some() && stack.is_empty() => {
                return Err(err(&"more than one root element"));
            }
            Event::Start(start) => {
                if stack.len() >= MAX_XML_DEPTH {
                    return Err(err(&format!(
                        "elements are nested deeper than {MAX_XML_DEPTH} levels"
                    )));
                }
                let el = open(&start, pos, &mut scopes).map_err(|r| err(&r))?;
                stack.push(el);
            }
            Event::Empty(start) => {
                let el = open(&start, pos, &mut scopes).map_err(|r| err(&r))?;
                scopes.pop();
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => root = Some(el),
                }
            }
            Event::End(_) => {
                scopes.pop();
                let Some(el) = stack.pop() else {
                    return Err(err(&"end tag without a start tag"));
                };
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => root = Some(el),
                }
            }
            Event::Text(text) => {
                let text = text.xml10_content().map_err(|e| err(&e))?;
                push_text(&mut stack, &text)?;
            }
            Event::CData(data) => {
                let text = data.decode().map_err(|e| err(&e))?;
                push_text(&mut stack, &text)?;
            }
            Event::GeneralRef(reference) => {
                let c = if reference.is_char_ref() {
                    reference
                        .resolve_char_ref()
                        .map_err(|e| err(&e))?
                        .ok_or_else(|| err(&"bad character reference"))?
                } else {
                    let name = reference.decode().map_err(|e| err(&e))?;
                    predefined_entity(&name).ok_or_else(|| {
                        err(&format!(
                            "undefined entity &{name}; (only &lt; &gt; &amp; &apos; &quot; and character references are allowed)"
                        ))
                    })?
                };
                let mut buf = [0u8; 4];
                push_text(&mut stack, c.encode_utf8(&mut buf))?;
            }
            Event::Eof => break,
        }
    }
    if let Some(open) = stack.last() {
        return Err(xml_error(
            xml,
            xml.len() as u64,
            format!("the document ends inside <{}>", open.name),
        ));
    }
    root.ok_or_else(|| xml_error(xml, 0, "no root element"))
}
