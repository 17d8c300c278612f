//! docs/openapi.json as a contract: what one HTTP exchange answered ([`Observed`]), and the
//! checks of answers against the document ([`Contract`]). The gateway's and the saga
//! monitor's tests both check their servers against it; a path item's `x-served-by` says
//! which binary serves it (the gateway when absent).

use std::collections::BTreeSet;
use std::sync::OnceLock;

use serde_json::{Value as Json, json};

use crate::repo_root;

/// What one HTTP exchange answered.
#[derive(Debug)]
pub struct Observed {
    /// The status code.
    pub status: u16,
    /// The content type.
    pub content_type: String,
    /// The headers.
    pub headers: reqwest::header::HeaderMap,
    /// The body.
    pub body: String,
}

impl Observed {
    /// The body as JSON (panics when it is not).
    pub fn json(&self) -> Json {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }

    /// The `error` of a JSON error body.
    pub fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The `fields` of a JSON validation error: (field, reason).
    pub fn fields(&self) -> Vec<(String, String)> {
        self.json()["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                (
                    f["field"].as_str().unwrap().to_string(),
                    f["reason"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// docs/openapi.json, and checks of answers against it.
pub struct Contract {
    /// The document.
    pub doc: Json,
}

/// docs/openapi.json, read once.
pub fn contract() -> &'static Contract {
    static DOC: OnceLock<Contract> = OnceLock::new();
    DOC.get_or_init(|| {
        let text = std::fs::read_to_string(repo_root().join("docs/openapi.json")).unwrap();
        let doc: Json = serde_json::from_str(&text).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.0"));
        Contract { doc }
    })
}

impl Contract {
    /// `v`, or what its `$ref` points to.
    pub fn resolve<'a>(&'a self, v: &'a Json) -> &'a Json {
        match v.get("$ref").and_then(Json::as_str) {
            Some(r) => {
                let mut cur = &self.doc;
                for part in r.trim_start_matches("#/").split('/') {
                    cur = &cur[part];
                }
                assert!(!cur.is_null(), "dangling $ref {r}");
                self.resolve(cur)
            }
            None => v,
        }
    }

    /// Every documented (path, method, status) that `served_by` serves (`eip-gateway`,
    /// `eip-saga-monitor`).
    pub fn operations(&self, served_by: &str) -> BTreeSet<(String, String, u16)> {
        let mut out = BTreeSet::new();
        for (path, item) in self.doc["paths"].as_object().unwrap() {
            let by = item["x-served-by"].as_str().unwrap_or("eip-gateway");
            if by != served_by {
                continue;
            }
            for (method, op) in item.as_object().unwrap() {
                if !["get", "post", "put", "delete", "patch", "head"].contains(&method.as_str()) {
                    continue;
                }
                for status in op["responses"].as_object().unwrap().keys() {
                    out.insert((path.clone(), method.clone(), status.parse().unwrap()));
                }
            }
        }
        out
    }

    /// Asserts that `obs` is a documented answer of `method path`.
    pub fn check(&self, method: &str, path: &str, obs: &Observed) {
        let op = &self.doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path} is not documented");
        let resp = op["responses"]
            .get(obs.status.to_string())
            .map(|r| self.resolve(r))
            .unwrap_or_else(|| {
                panic!(
                    "status {} of {method} {path} is not documented; body: {}",
                    obs.status, obs.body
                )
            });
        let content = resp["content"].as_object().unwrap();
        let essence = obs
            .content_type
            .split(';')
            .next()
            .unwrap()
            .trim()
            .to_string();
        let media = content.get(&essence).unwrap_or_else(|| {
            panic!(
                "{method} {path} {}: content type `{}` is not documented ({:?})",
                obs.status,
                obs.content_type,
                content.keys().collect::<Vec<_>>()
            )
        });
        let schema = self.resolve(&media["schema"]);
        let body: Json = if essence == "application/json" {
            obs.json()
        } else {
            Json::String(obs.body.clone())
        };
        let mut problems = Vec::new();
        self.validate(schema, &body, "body", &mut problems);
        assert!(
            problems.is_empty(),
            "{method} {path} {}: {problems:?}\n{}",
            obs.status,
            obs.body
        );
        if let Some(headers) = resp.get("headers").and_then(Json::as_object) {
            for (name, h) in headers {
                let h = self.resolve(h);
                let value = obs.header(name);
                if h["required"] == json!(true) {
                    assert!(
                        value.is_some(),
                        "{method} {path} {}: documented header {name} missing",
                        obs.status
                    );
                }
                if let Some(v) = value {
                    let mut problems = Vec::new();
                    let as_json = match h["schema"]["type"].as_str() {
                        Some("integer") => v
                            .parse::<i64>()
                            .map(Json::from)
                            .unwrap_or(Json::String(v.into())),
                        _ => Json::String(v.into()),
                    };
                    self.validate(&h["schema"], &as_json, name, &mut problems);
                    assert!(problems.is_empty(), "{method} {path}: {problems:?}");
                }
            }
        }
    }

    /// A JSON-schema subset: type, nullable, required, properties, items, enum, minimum,
    /// maxItems.
    fn validate(&self, schema: &Json, v: &Json, at: &str, problems: &mut Vec<String>) {
        let schema = self.resolve(schema);
        if v.is_null() && schema["nullable"] == json!(true) {
            return;
        }
        if let Some(ty) = schema["type"].as_str() {
            let ok = match ty {
                "object" => v.is_object(),
                "array" => v.is_array(),
                "string" => v.is_string(),
                "integer" => v.is_i64() || v.is_u64(),
                "number" => v.is_number(),
                "boolean" => v.is_boolean(),
                other => panic!("schema type {other} not handled"),
            };
            if !ok {
                problems.push(format!("{at}: expected {ty}, found {v}"));
                return;
            }
        }
        if let Some(options) = schema["enum"].as_array()
            && !options.contains(v)
        {
            problems.push(format!("{at}: {v} is not one of {options:?}"));
        }
        if let (Some(min), Some(n)) = (schema["minimum"].as_i64(), v.as_i64())
            && n < min
        {
            problems.push(format!("{at}: {n} < minimum {min}"));
        }
        if let Some(obj) = v.as_object() {
            for req in schema["required"].as_array().into_iter().flatten() {
                if !obj.contains_key(req.as_str().unwrap()) {
                    problems.push(format!("{at}: required property {req} missing"));
                }
            }
            if let Some(props) = schema["properties"].as_object() {
                for (name, sub) in props {
                    if let Some(value) = obj.get(name) {
                        self.validate(sub, value, &format!("{at}.{name}"), problems);
                    }
                }
            }
        }
        if let Some(items) = v.as_array() {
            if let Some(max) = schema["maxItems"].as_u64()
                && items.len() as u64 > max
            {
                problems.push(format!("{at}: more than {max} items"));
            }
            if schema.get("items").is_some() {
                for (i, item) in items.iter().enumerate() {
                    self.validate(&schema["items"], item, &format!("{at}[{i}]"), problems);
                }
            }
        }
    }
}

/// GETs `http://addr{path}` and returns the answer as observed.
pub async fn get(addr: &str, path: &str) -> Observed {
    let call = reqwest::Client::new().get(format!("http://{addr}{path}"));
    observe(call).await
}

/// POSTs `body` as JSON to `http://addr{path}`, with a bearer `token` if given, and returns
/// the answer as observed.
pub async fn post(addr: &str, path: &str, body: &Json, token: Option<&str>) -> Observed {
    let mut call = reqwest::Client::new()
        .post(format!("http://{addr}{path}"))
        .json(body);
    if let Some(t) = token {
        call = call.bearer_auth(t);
    }
    observe(call).await
}

async fn observe(call: reqwest::RequestBuilder) -> Observed {
    let resp = call
        .timeout(std::time::Duration::from_secs(30))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = resp.text().await.unwrap();
    Observed {
        status,
        content_type,
        headers,
        body,
    }
}
