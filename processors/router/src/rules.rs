//! The rules file: parsing, validation with located errors, and evaluation.
//!
//! A rules file is TOML (see docs/router.md for the full reference). It is parsed and
//! validated completely into a [`RuleSet`] before it is used, so a bad file is rejected as a
//! whole with an error that names its line and column and the rule it is in.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use apache_avro::Schema;
use apache_avro::types::Value;
use eip_runtime::Headers;
use eip_schemas::{Catalog, CompiledSchema};
use regex::Regex;
use serde::Deserialize;
use toml::Spanned;

use crate::transform::{Step, check_step};
use crate::value::{Literal, Number, Path, check_path, number, text};

/// A rules file that can't be used, with where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}:{line}:{column}: {context}{reason}")]
pub struct RulesError {
    /// The file (or other origin) the rules came from.
    pub origin: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// The rule or section the error is in, e.g. ``rules[2] `eu-orders`: ``.
    pub context: String,
    /// What is wrong.
    pub reason: String,
}

/// Whether the first matching rule wins, or every matching rule applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// The first rule (in file order) whose match holds is applied; the rest are skipped.
    #[default]
    FirstMatch,
    /// Every rule whose match holds is applied (fan-out across rules).
    AllMatch,
}

/// The wire format of a source topic's records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Confluent-framed Avro (the default).
    #[default]
    Avro,
    /// JSON text, converted to the source's Avro type.
    Json,
    /// XML text, converted to the source's Avro type.
    Xml,
}

impl Format {
    /// The format's name as written in rules files.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Avro => "avro",
            Format::Json => "json",
            Format::Xml => "xml",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The file as written.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    version: Option<String>,
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    sources: Vec<Spanned<RawSource>>,
    #[serde(default)]
    rules: Vec<Spanned<RawRule>>,
    default: Option<Spanned<RawAction>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    topic: String,
    format: Format,
    #[serde(rename = "type")]
    type_name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    #[serde(rename = "match", default)]
    matcher: RawMatch,
    then: RawAction,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatch {
    #[serde(default)]
    topics: Vec<String>,
    #[serde(default)]
    types: Vec<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    when: Option<RawPred>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPred {
    all: Option<Vec<RawPred>>,
    any: Option<Vec<RawPred>>,
    not: Option<Box<RawPred>>,
    field: Option<String>,
    eq: Option<toml::Value>,
    ne: Option<toml::Value>,
    #[serde(rename = "in")]
    one_of: Option<Vec<toml::Value>>,
    gt: Option<toml::Value>,
    gte: Option<toml::Value>,
    lt: Option<toml::Value>,
    lte: Option<toml::Value>,
    regex: Option<String>,
    exists: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAction {
    #[serde(default)]
    to: Vec<String>,
    drop: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    transform: Vec<crate::transform::RawStep>,
    map_to: Option<String>,
    format: Option<Format>,
}

// ---------------------------------------------------------------------------------------------
// The validated form.

/// A source topic whose records are JSON or XML, normalised into an Avro type.
#[derive(Debug, Clone)]
pub struct Source {
    /// The wire format.
    pub format: Format,
    /// The Avro type its records are converted to.
    pub schema: &'static CompiledSchema,
}

/// A test on one field.
#[derive(Debug, Clone)]
pub enum Test {
    /// Equal to the literal.
    Eq(Literal),
    /// Not equal to the literal (also true when the field is absent).
    Ne(Literal),
    /// Equal to one of the literals.
    In(Vec<Literal>),
    /// Compared numerically with the bound.
    Cmp(std::cmp::Ordering, bool, Number),
    /// A string matching the regular expression.
    Regex(Regex),
    /// Present and not null (`true`), or absent or null (`false`).
    Exists(bool),
}

/// A predicate over a record's fields.
#[derive(Debug, Clone)]
pub enum Pred {
    /// Every field test holds (for some selected value, with `[*]` paths).
    Field(Path, Vec<Test>),
    /// Every predicate holds.
    All(Vec<Pred>),
    /// At least one predicate holds.
    Any(Vec<Pred>),
    /// The predicate does not hold.
    Not(Box<Pred>),
}

/// What to do with a matched record.
#[derive(Debug, Clone)]
pub struct Action {
    /// Target topics (fan-out), in order.
    pub to: Vec<Arc<str>>,
    /// Drop the record, counted under this reason.
    pub drop: Option<Arc<str>>,
    /// Headers to set on every output.
    pub headers: Vec<(String, String)>,
    /// Field transforms, applied in order.
    pub transform: Vec<Step>,
    /// The registered type to map the (transformed) record to.
    pub map_to: Option<&'static CompiledSchema>,
    /// The output wire format.
    pub format: Format,
}

impl Action {
    /// True when the record's bytes can be forwarded unchanged.
    pub fn forwards_bytes(&self) -> bool {
        self.transform.is_empty() && self.map_to.is_none() && self.format == Format::Avro
    }
}

/// One rule: a match and an action.
#[derive(Debug, Clone)]
pub struct Rule {
    /// The rule's name (metric label, `eip.router.rule` header).
    pub name: Arc<str>,
    topics: Vec<String>,
    types: Vec<String>,
    headers: Vec<(String, String)>,
    when: Option<Pred>,
    /// What the rule does.
    pub action: Action,
}

/// A parsed and validated rules file.
#[derive(Debug, Clone)]
pub struct RuleSet {
    /// The version stamped on routed records: the file's `version`, or a content hash.
    pub version: Arc<str>,
    /// First-match or all-match.
    pub mode: Mode,
    /// Rules in file order.
    pub rules: Vec<Rule>,
    /// What happens to records no rule matches (`None`: dropped as `unmatched`).
    pub default: Option<Action>,
    sources: HashMap<String, Source>,
}

/// What a record looks like to the rules.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// The topic it was consumed from.
    pub topic: &'a str,
    /// Its Avro full name.
    pub type_name: &'a str,
    /// Its headers.
    pub headers: &'a Headers,
    /// Its decoded value.
    pub value: &'a Value,
}

/// The outcome of evaluating the rules for one record.
#[derive(Debug)]
pub enum Decision<'r> {
    /// These rules matched (one in first-match mode), in file order.
    Matched(Vec<&'r Rule>),
    /// No rule matched; the default action applies.
    Default(&'r Action),
    /// No rule matched and there is no default.
    Unmatched,
}

// ---------------------------------------------------------------------------------------------
// Parsing.

struct Locator<'a> {
    origin: &'a str,
    text: &'a str,
}

impl Locator<'_> {
    fn at(&self, offset: usize, context: String, reason: impl Into<String>) -> RulesError {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let column = before.rfind('\n').map_or(before.chars().count(), |nl| {
            before[nl + 1..].chars().count()
        }) + 1;
        // One line: multi-line messages (regex errors draw a caret) are joined.
        let reason: String = reason.into();
        let reason = reason
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && *l != "^")
            .collect::<Vec<_>>()
            .join(" ");
        RulesError {
            origin: self.origin.to_string(),
            line,
            column,
            context,
            reason,
        }
    }
}

/// A 64-bit FNV-1a hash: stable across runs and platforms, for content versions.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl RuleSet {
    /// Parses and validates a rules file. `origin` names it in errors (usually its path).
    pub fn parse(origin: &str, text: &str) -> Result<RuleSet, RulesError> {
        let loc = Locator { origin, text };
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            loc.at(offset, String::new(), e.message().trim().to_string())
        })?;
        let catalog = Catalog::global().map_err(|e| loc.at(0, String::new(), e.to_string()))?;

        let mut sources = HashMap::new();
        for (i, s) in raw.sources.iter().enumerate() {
            let ctx = format!("sources[{i}]: ");
            let at = |reason: String| loc.at(s.span().start, ctx.clone(), reason);
            let schema = message_schema(catalog, &s.get_ref().type_name).map_err(at)?;
            if s.get_ref().topic.trim().is_empty() {
                return Err(at("topic must not be empty".into()));
            }
            if sources
                .insert(
                    s.get_ref().topic.clone(),
                    Source {
                        format: s.get_ref().format,
                        schema,
                    },
                )
                .is_some()
            {
                return Err(at(format!(
                    "topic `{}` is declared twice",
                    s.get_ref().topic
                )));
            }
        }

        let mut rules = Vec::with_capacity(raw.rules.len());
        let mut names: HashMap<String, usize> = HashMap::new();
        for (i, spanned) in raw.rules.iter().enumerate() {
            let r = spanned.get_ref();
            let ctx = format!("rules[{i}] `{}`: ", r.name);
            let at = |reason: String| loc.at(spanned.span().start, ctx.clone(), reason);
            if r.name.trim().is_empty() {
                return Err(at("name must not be empty".into()));
            }
            if let Some(first) = names.insert(r.name.clone(), i) {
                return Err(at(format!("name already used by rules[{first}]")));
            }
            let mut types = Vec::new();
            for t in &r.matcher.types {
                message_schema(catalog, t).map_err(|e| at(format!("match.types: {e}")))?;
                types.push(t.clone());
            }
            let schemas: Vec<&Schema> = types
                .iter()
                .filter_map(|t| catalog.get(t).ok().map(|c| &c.schema))
                .collect();
            let when = match &r.matcher.when {
                Some(p) => Some(compile_pred(p, "match.when", &schemas).map_err(at)?),
                None => None,
            };
            let action = compile_action(&r.then, &schemas, catalog).map_err(at)?;
            rules.push(Rule {
                name: r.name.as_str().into(),
                topics: r.matcher.topics.clone(),
                types,
                headers: r
                    .matcher
                    .headers
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                when,
                action,
            });
        }
        let default = match &raw.default {
            Some(d) => Some(
                compile_action(d.get_ref(), &[], catalog)
                    .map_err(|e| loc.at(d.span().start, "default: ".into(), e))?,
            ),
            None => None,
        };
        let version = match raw.version {
            Some(v) if !v.trim().is_empty() => v,
            _ => format!("sha-{:016x}", fnv1a(text.as_bytes())),
        };
        Ok(RuleSet {
            version: version.into(),
            mode: raw.mode,
            rules,
            default,
            sources,
        })
    }

    /// The JSON/XML source declared for `topic`, if any.
    pub fn source(&self, topic: &str) -> Option<&Source> {
        self.sources.get(topic)
    }

    /// Every target topic any action may route to (for topic checks and docs).
    pub fn targets(&self) -> Vec<String> {
        let mut t: Vec<String> = self
            .rules
            .iter()
            .map(|r| &r.action)
            .chain(self.default.iter())
            .flat_map(|a| a.to.iter().map(|s| s.to_string()))
            .collect();
        t.sort();
        t.dedup();
        t
    }

    /// Evaluates the rules for one record.
    pub fn evaluate(&self, subject: &Subject<'_>) -> Decision<'_> {
        let mut matched = Vec::new();
        for rule in &self.rules {
            if rule.matches(subject) {
                matched.push(rule);
                if self.mode == Mode::FirstMatch {
                    break;
                }
            }
        }
        if !matched.is_empty() {
            Decision::Matched(matched)
        } else if let Some(d) = &self.default {
            Decision::Default(d)
        } else {
            Decision::Unmatched
        }
    }
}

fn message_schema(
    catalog: &'static Catalog,
    name: &str,
) -> Result<&'static CompiledSchema, String> {
    let found = catalog
        .get(name)
        .map_err(|_| format!("unknown type `{name}` (not in the schema catalog)"))?;
    if found.kind != eip_schemas::SchemaKind::Message {
        return Err(format!(
            "type `{name}` is a component, not a command or event"
        ));
    }
    Ok(found)
}

impl Rule {
    /// Whether the rule's match holds for `subject`.
    pub fn matches(&self, s: &Subject<'_>) -> bool {
        (self.topics.is_empty() || self.topics.iter().any(|t| t == s.topic))
            && (self.types.is_empty() || self.types.iter().any(|t| t == s.type_name))
            && self
                .headers
                .iter()
                .all(|(k, v)| s.headers.get_str(k) == Some(v.as_str()))
            && self.when.as_ref().is_none_or(|p| p.holds(s.value))
    }
}

impl Pred {
    /// Evaluates the predicate on `value`.
    pub fn holds(&self, value: &Value) -> bool {
        match self {
            Pred::All(ps) => ps.iter().all(|p| p.holds(value)),
            Pred::Any(ps) => ps.iter().any(|p| p.holds(value)),
            Pred::Not(p) => !p.holds(value),
            Pred::Field(path, tests) => field_holds(path, tests, value),
        }
    }
}

fn field_holds(path: &Path, tests: &[Test], value: &Value) -> bool {
    // Absence-sensitive tests are decided on whether anything was selected.
    let mut any = false;
    let hit = path.select(value, &mut |v| {
        any = true;
        tests.iter().all(|t| test_value(t, v))
    });
    if hit {
        return true;
    }
    !any && tests
        .iter()
        .all(|t| matches!(t, Test::Exists(false) | Test::Ne(_)))
}

fn test_value(t: &Test, v: &Value) -> bool {
    match t {
        Test::Eq(l) => l.matches(v),
        Test::Ne(l) => !l.matches(v),
        Test::In(ls) => ls.iter().any(|l| l.matches(v)),
        Test::Cmp(ord, or_equal, bound) => number(v)
            .and_then(|n| n.cmp_with(*bound))
            .is_some_and(|o| o == *ord || (*or_equal && o == std::cmp::Ordering::Equal)),
        Test::Regex(re) => text(v).is_some_and(|s| re.is_match(s)),
        Test::Exists(want) => *want,
    }
}

fn literal(v: &toml::Value, what: &str) -> Result<Literal, String> {
    Literal::from_toml(v).map_err(|e| format!("{what}: {e}"))
}

fn bound(v: &toml::Value, what: &str) -> Result<Number, String> {
    literal(v, what)?
        .number()
        .ok_or_else(|| format!("{what}: expected a number"))
}

fn compile_pred(p: &RawPred, at: &str, schemas: &[&Schema]) -> Result<Pred, String> {
    let combinators = [p.all.is_some(), p.any.is_some(), p.not.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    let has_tests = p.eq.is_some()
        || p.ne.is_some()
        || p.one_of.is_some()
        || p.gt.is_some()
        || p.gte.is_some()
        || p.lt.is_some()
        || p.lte.is_some()
        || p.regex.is_some()
        || p.exists.is_some();
    if combinators + usize::from(p.field.is_some()) != 1 {
        return Err(format!(
            "{at}: a predicate is exactly one of `all`, `any`, `not` or `field` with tests"
        ));
    }
    if let Some(list) = p.all.as_ref().or(p.any.as_ref()) {
        let kind = if p.all.is_some() { "all" } else { "any" };
        if list.is_empty() {
            return Err(format!("{at}.{kind}: must list at least one predicate"));
        }
        let compiled = list
            .iter()
            .enumerate()
            .map(|(i, q)| compile_pred(q, &format!("{at}.{kind}[{i}]"), schemas))
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(if p.all.is_some() {
            Pred::All(compiled)
        } else {
            Pred::Any(compiled)
        });
    }
    if let Some(inner) = &p.not {
        return Ok(Pred::Not(Box::new(compile_pred(
            inner,
            &format!("{at}.not"),
            schemas,
        )?)));
    }
    let field = p.field.as_deref().unwrap_or_default();
    let path = Path::parse(field).map_err(|e| format!("{at}.field: {e}"))?;
    check_path(&path, schemas).map_err(|e| format!("{at}.field: {e}"))?;
    if !has_tests {
        return Err(format!(
            "{at}: field `{field}` needs a test (eq, ne, in, gt, gte, lt, lte, regex, exists)"
        ));
    }
    let mut tests = Vec::new();
    if let Some(v) = &p.eq {
        tests.push(Test::Eq(literal(v, &format!("{at}.eq"))?));
    }
    if let Some(v) = &p.ne {
        tests.push(Test::Ne(literal(v, &format!("{at}.ne"))?));
    }
    if let Some(vs) = &p.one_of {
        if vs.is_empty() {
            return Err(format!("{at}.in: must list at least one value"));
        }
        tests.push(Test::In(
            vs.iter()
                .map(|v| literal(v, &format!("{at}.in")))
                .collect::<Result<_, _>>()?,
        ));
    }
    use std::cmp::Ordering::{Greater, Less};
    for (v, ord, eq, name) in [
        (&p.gt, Greater, false, "gt"),
        (&p.gte, Greater, true, "gte"),
        (&p.lt, Less, false, "lt"),
        (&p.lte, Less, true, "lte"),
    ] {
        if let Some(v) = v {
            tests.push(Test::Cmp(ord, eq, bound(v, &format!("{at}.{name}"))?));
        }
    }
    if let Some(re) = &p.regex {
        tests.push(Test::Regex(
            Regex::new(re).map_err(|e| format!("{at}.regex: {e}"))?,
        ));
    }
    if let Some(b) = p.exists {
        tests.push(Test::Exists(b));
    }
    Ok(Pred::Field(path, tests))
}

fn compile_action(
    a: &RawAction,
    schemas: &[&Schema],
    catalog: &'static Catalog,
) -> Result<Action, String> {
    if a.drop.is_some() && (!a.to.is_empty() || !a.transform.is_empty() || a.map_to.is_some()) {
        return Err("then: `drop` can't be combined with `to`, `transform` or `map_to`".into());
    }
    if a.drop.is_none() && a.to.is_empty() {
        return Err("then: needs `to` (one or more topics) or `drop` (a reason)".into());
    }
    if let Some(reason) = &a.drop
        && reason.trim().is_empty()
    {
        return Err("then.drop: the reason must not be empty".into());
    }
    for t in &a.to {
        if t.trim().is_empty() || t.contains(char::is_whitespace) {
            return Err(format!("then.to: `{t}` is not a topic name"));
        }
    }
    let mut seen = std::collections::HashSet::new();
    for t in &a.to {
        if !seen.insert(t) {
            return Err(format!("then.to: `{t}` is listed twice"));
        }
    }
    for k in a.headers.keys() {
        if k.trim().is_empty() {
            return Err("then.headers: a header name must not be empty".into());
        }
    }
    let transform = a
        .transform
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let step = Step::compile(s).map_err(|e| format!("then.transform[{i}]: {e}"))?;
            check_step(&step, schemas).map_err(|e| format!("then.transform[{i}]: {e}"))?;
            Ok(step)
        })
        .collect::<Result<Vec<_>, String>>()?;
    let map_to = match &a.map_to {
        Some(t) => Some(message_schema(catalog, t).map_err(|e| format!("then.map_to: {e}"))?),
        None => None,
    };
    Ok(Action {
        to: a.to.iter().map(|t| Arc::from(t.as_str())).collect(),
        drop: a.drop.as_deref().map(Arc::from),
        headers: a
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        transform,
        map_to,
        format: a.format.unwrap_or_default(),
    })
}

impl fmt::Display for Decision<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Matched(rules) => write!(
                f,
                "matched {}",
                rules
                    .iter()
                    .map(|r| r.name.as_ref())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Decision::Default(_) => f.write_str("default"),
            Decision::Unmatched => f.write_str("unmatched"),
        }
    }
}
