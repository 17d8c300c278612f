//! The schema registry client: writer schemas by id (cached), ids for our own schemas (cached),
//! and the bootstrap that registers every message schema.
//!
//! HTTP calls go through `schema_registry_converter`, which speaks the Confluent REST API.
//! Its errors are classified here, once: an unreachable registry or a 5xx answer is
//! [`CodecError::RegistryUnavailable`] (transient), an unknown id is
//! [`CodecError::UnknownSchemaId`] (poison).
//!
//! # Subject naming
//! Topics carry several record types (an order topic holds `OrderPlaced`, `OrderCancelled`,
//! ...), so subjects follow Confluent's `RecordNameStrategy`: the subject of a schema is its
//! full Avro name, e.g. `eip.orders.OrderPlaced`, whatever topic the record travels on.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use apache_avro::Schema;
use schema_registry_converter::async_impl::schema_registry::{
    SrSettings, get_all_subjects, get_schema_by_id, get_schema_by_subject, post_schema,
};
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{
    RawError, SchemaType, SubjectNameStrategy, SuppliedSchema,
};

use crate::catalog::{Catalog, CompiledSchema, fingerprint};
use crate::error::CodecError;

/// How long an unknown schema id is remembered as unknown, so a burst of garbage records
/// doesn't turn into a burst of registry calls.
const NEGATIVE_TTL: Duration = Duration::from_secs(30);

/// A writer schema fetched from the registry (or known locally), ready to decode with.
#[derive(Debug)]
pub struct WriterSchema {
    /// The registry id.
    pub id: u32,
    /// The parsed schema.
    pub schema: Schema,
    /// Full name of the top-level named type, or empty for an unnamed schema.
    pub full_name: String,
    /// Rabin fingerprint of the canonical form.
    pub fingerprint: u64,
}

/// Settings for [`Registry::new`].
#[derive(Debug, Clone)]
pub struct RegistrySettings {
    /// Base URL, e.g. `http://127.0.0.1:8081`.
    pub url: String,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Register our schemas when encoding if they are missing (dev), or only look them up (prod).
    pub auto_register: bool,
    /// Optional bearer token.
    pub bearer_token: Option<String>,
}

/// A registered subject and the id the registry gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// The subject (full Avro name).
    pub subject: String,
    /// The schema id.
    pub id: u32,
}

/// The cached schema registry client.
pub struct Registry {
    settings: SrSettings,
    /// For the calls the converter lacks or routes differently (config, compatibility).
    http: reqwest::Client,
    url: String,
    bearer_token: Option<String>,
    auto_register: bool,
    by_id: RwLock<HashMap<u32, Arc<WriterSchema>>>,
    unknown: RwLock<HashMap<u32, Instant>>,
    ids: RwLock<HashMap<String, u32>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("url", &self.url).finish()
    }
}

/// Turns a converter error into a classified codec error. `unknown_id` is the id being looked
/// up, when a 404 means "no such schema id".
fn classify(e: SRCError, unknown_id: Option<u32>, subject: Option<&str>) -> CodecError {
    let reason = match &e.cause {
        Some(cause) => format!("{}: {cause}", e.error),
        None => e.error.clone(),
    };
    if e.retriable {
        return CodecError::RegistryUnavailable { reason };
    }
    let raw = std::error::Error::source(&e).and_then(|s| s.downcast_ref::<RawError>());
    match raw.map(|r| r.error_code) {
        Some(40403) if unknown_id.is_some() => CodecError::UnknownSchemaId {
            id: unknown_id.unwrap_or_default(),
        },
        Some(40401) | Some(40402) if subject.is_some() => CodecError::NotRegistered {
            subject: subject.unwrap_or_default().to_string(),
        },
        // 5xxxx error codes are server-side trouble; 0 means the body was not registry JSON
        // (a proxy's error page, say). Neither says anything about the record: retry.
        Some(code) if code >= 50000 || code == 0 => CodecError::RegistryUnavailable { reason },
        _ => CodecError::RegistryRejected { reason },
    }
}

impl Registry {
    /// Builds a client. No network call is made until a schema is needed.
    pub fn new(settings: RegistrySettings) -> Result<Registry, CodecError> {
        let mut builder = SrSettings::new_builder(settings.url.trim_end_matches('/').to_string());
        builder.set_timeout(settings.timeout).no_proxy();
        if let Some(token) = &settings.bearer_token {
            builder.set_token_authorization(token);
        }
        let sr = builder.build().map_err(|e| CodecError::RegistryRejected {
            reason: e.to_string(),
        })?;
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .no_proxy()
            .build()
            .map_err(|e| CodecError::RegistryRejected {
                reason: e.to_string(),
            })?;
        Ok(Registry {
            settings: sr,
            http,
            url: settings.url.trim_end_matches('/').to_string(),
            bearer_token: settings.bearer_token,
            auto_register: settings.auto_register,
            by_id: RwLock::new(HashMap::new()),
            unknown: RwLock::new(HashMap::new()),
            ids: RwLock::new(HashMap::new()),
        })
    }

    /// The registry's base URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The writer schema for `id`, from the cache or the registry.
    pub async fn schema_by_id(&self, id: u32) -> Result<Arc<WriterSchema>, CodecError> {
        if let Some(found) = self.cached(id) {
            return Ok(found);
        }
        if let Ok(unknown) = self.unknown.read()
            && unknown
                .get(&id)
                .is_some_and(|at| at.elapsed() < NEGATIVE_TTL)
        {
            return Err(CodecError::UnknownSchemaId { id });
        }
        let registered = match get_schema_by_id(id, &self.settings).await {
            Ok(r) => r,
            Err(e) => {
                let err = classify(e, Some(id), None);
                if matches!(err, CodecError::UnknownSchemaId { .. })
                    && let Ok(mut unknown) = self.unknown.write()
                {
                    unknown.insert(id, Instant::now());
                }
                return Err(err);
            }
        };
        if registered.schema_type != SchemaType::Avro {
            return Err(CodecError::RegistryRejected {
                reason: format!("schema id {id} is {:?}, not Avro", registered.schema_type),
            });
        }
        if !registered.references.is_empty() {
            return Err(CodecError::RegistryRejected {
                reason: format!(
                    "schema id {id} uses schema references, which eip does not resolve; register self-contained schemas"
                ),
            });
        }
        let schema = Schema::parse_str(&registered.schema).map_err(|e| CodecError::Decode {
            id,
            reason: format!("writer schema does not parse: {e}"),
        })?;
        Ok(self.remember(id, schema))
    }

    fn cached(&self, id: u32) -> Option<Arc<WriterSchema>> {
        self.by_id.read().ok().and_then(|m| m.get(&id).cloned())
    }

    fn remember(&self, id: u32, schema: Schema) -> Arc<WriterSchema> {
        let writer = Arc::new(WriterSchema {
            id,
            full_name: schema.name().map(|n| n.fullname(None)).unwrap_or_default(),
            fingerprint: fingerprint(&schema),
            schema,
        });
        if let Ok(mut map) = self.by_id.write() {
            map.insert(id, writer.clone());
        }
        writer
    }

    /// The id under which `compiled` is registered, registering it first when
    /// `auto_register` is on. Cached after the first call.
    pub async fn id_for(&self, compiled: &CompiledSchema) -> Result<u32, CodecError> {
        if let Some(id) = self
            .ids
            .read()
            .ok()
            .and_then(|m| m.get(&compiled.full_name).copied())
        {
            return Ok(id);
        }
        let subject = compiled.full_name.clone();
        let id = if self.auto_register {
            let supplied = SuppliedSchema::new(
                Some(subject.clone()),
                SchemaType::Avro,
                compiled.json.clone(),
            );
            post_schema(&self.settings, subject.clone(), supplied)
                .await
                .map_err(|e| classify(e, None, Some(&subject)))?
                .id
        } else {
            let strategy = SubjectNameStrategy::RecordNameStrategy(subject.clone());
            let latest = get_schema_by_subject(&self.settings, &strategy)
                .await
                .map_err(|e| classify(e, None, Some(&subject)))?;
            let parsed =
                Schema::parse_str(&latest.schema).map_err(|e| CodecError::RegistryRejected {
                    reason: format!("latest {subject} does not parse: {e}"),
                })?;
            if fingerprint(&parsed) != compiled.fingerprint {
                return Err(CodecError::NotRegistered { subject });
            }
            latest.id
        };
        self.remember(id, compiled.schema.clone());
        if let Ok(mut ids) = self.ids.write() {
            ids.insert(compiled.full_name.clone(), id);
        }
        Ok(id)
    }

    /// Registers every message schema of the catalog under its record-name subject and returns
    /// the ids. Registering the same schema again returns the same id, so this is idempotent.
    pub async fn register_all(&self, catalog: &Catalog) -> Result<Vec<Registered>, CodecError> {
        let mut out = Vec::new();
        for compiled in catalog.messages() {
            let supplied = SuppliedSchema::new(
                Some(compiled.full_name.clone()),
                SchemaType::Avro,
                compiled.json.clone(),
            );
            let registered = post_schema(&self.settings, compiled.full_name.clone(), supplied)
                .await
                .map_err(|e| classify(e, None, Some(&compiled.full_name)))?;
            self.remember(registered.id, compiled.schema.clone());
            if let Ok(mut ids) = self.ids.write() {
                ids.insert(compiled.full_name.clone(), registered.id);
            }
            out.push(Registered {
                subject: compiled.full_name.clone(),
                id: registered.id,
            });
        }
        Ok(out)
    }

    /// Registers one schema (given as JSON) under `subject`; used by tests and tools that
    /// handle schemas outside the catalog.
    pub async fn register_json(&self, subject: &str, json: &str) -> Result<u32, CodecError> {
        let supplied = SuppliedSchema::new(None, SchemaType::Avro, json.to_string());
        post_schema(&self.settings, subject.to_string(), supplied)
            .await
            .map(|r| r.id)
            .map_err(|e| classify(e, None, Some(subject)))
    }

    /// Asks the registry whether `json` may be registered as the next version of `subject`
    /// under the subject's compatibility level (`POST /compatibility/subjects/{s}/versions/latest`).
    pub async fn is_compatible(&self, subject: &str, json: &str) -> Result<bool, CodecError> {
        #[derive(serde::Deserialize)]
        struct Answer {
            is_compatible: bool,
        }
        let url = format!(
            "{}/compatibility/subjects/{subject}/versions/latest",
            self.url
        );
        let body = serde_json::json!({ "schema": json }).to_string();
        let resp = self.send(self.http.post(&url).body(body)).await?;
        resp.json::<Answer>()
            .await
            .map(|a| a.is_compatible)
            .map_err(|e| CodecError::RegistryRejected {
                reason: format!("POST {url}: {e}"),
            })
    }

    /// Sends a request with the registry's content type and credentials; a non-2xx answer is
    /// classified like the converter's errors.
    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, CodecError> {
        let mut req = req.header("content-type", "application/vnd.schemaregistry.v1+json");
        if let Some(token) = &self.bearer_token {
            req = req.bearer_auth(token);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| CodecError::RegistryUnavailable {
                reason: e.to_string(),
            })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = resp.text().await.unwrap_or_default();
        let reason = format!("{status}: {}", body.trim());
        if status.is_server_error() {
            Err(CodecError::RegistryUnavailable { reason })
        } else {
            Err(CodecError::RegistryRejected { reason })
        }
    }

    /// Lists the registry's subjects; used as a cheap reachability probe for readiness.
    pub async fn subjects(&self) -> Result<Vec<String>, CodecError> {
        get_all_subjects(&self.settings)
            .await
            .map_err(|e| classify(e, None, None))
    }

    /// Sets the compatibility level (e.g. `BACKWARD`) of one subject, or registry-wide for `None`.
    pub async fn set_compatibility(
        &self,
        subject: Option<&str>,
        level: &str,
    ) -> Result<(), CodecError> {
        let url = match subject {
            Some(s) => format!("{}/config/{s}", self.url),
            None => format!("{}/config", self.url),
        };
        let body = serde_json::json!({ "compatibility": level }).to_string();
        self.send(self.http.put(&url).body(body)).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{Classify, ErrorClass};

    #[tokio::test]
    async fn an_unreachable_registry_is_transient() {
        // Bind a port and close it again, so nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let registry = Registry::new(RegistrySettings {
            url: format!("http://127.0.0.1:{port}"),
            timeout: Duration::from_secs(2),
            auto_register: true,
            bearer_token: None,
        })
        .unwrap();
        let err = registry.schema_by_id(1).await.unwrap_err();
        assert_eq!(err.class(), ErrorClass::Transient, "{err}");
        let compiled = Catalog::global()
            .unwrap()
            .get("eip.orders.OrderPlaced")
            .unwrap();
        let err = registry.id_for(compiled).await.unwrap_err();
        assert_eq!(err.class(), ErrorClass::Transient, "{err}");
    }
}
