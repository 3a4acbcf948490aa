//! Anthropic's Message Batches: the requests inline (`POST /messages/batches`, each
//! `{custom_id, params}`), polled (`GET /messages/batches/{id}`), results as JSON Lines from
//! `GET /messages/batches/{id}/results`. The `results_url` the API returns is not followed: the
//! URL is built from the configured base, so the key is never sent to a host named by an
//! answer.

use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;
use moa_core::{BatchApi, BatchResult, BatchStatus, ChatRequest, ProviderError};
use serde_json::{json, Value};

use super::{wire, Inner};
use crate::batch::{checked_id, json_lines, valid_request_id};
use crate::http::error_message;

pub(crate) struct AnthropicBatch(pub(crate) Arc<Inner>);

impl Inner {
    fn batches_url(&self, rest: &str) -> String {
        format!("{}/batches{rest}", self.endpoint)
    }

    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        let mut request = request.header("anthropic-version", wire::API_VERSION);
        if let Some(key) = &self.config.api_key {
            request = request.header("x-api-key", key);
        }
        for (name, value) in &self.config.headers {
            request = request.header(name, value);
        }
        request
    }

    async fn fetch(
        &self,
        make: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<bytes::Bytes, ProviderError> {
        self.transport.fetch(|| self.authorized(make())).await
    }

    async fn json(
        &self,
        make: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<Value, ProviderError> {
        let bytes = self.fetch(make).await?;
        serde_json::from_slice(&bytes).map_err(|e| {
            self.transport
                .malformed(format!("invalid JSON: {e}"), &bytes)
        })
    }

    async fn submit_batch(
        self: Arc<Self>,
        requests: Vec<(String, ChatRequest)>,
    ) -> Result<String, ProviderError> {
        let mut items = Vec::with_capacity(requests.len());
        for (id, request) in &requests {
            if !valid_request_id(id) {
                return Err(ProviderError::InvalidRequest {
                    provider: self.config.name.clone(),
                    message: format!("batch request id {id:?} is not 1-64 letters, digits, - or _"),
                });
            }
            wire::check(request, &self.config.name)?;
            let params: Value = serde_json::from_slice(&wire::request_body(request, false))
                .map_err(|e| ProviderError::InvalidRequest {
                    provider: self.config.name.clone(),
                    message: e.to_string(),
                })?;
            items.push(json!({"custom_id": id, "params": params}));
        }
        let body = json!({ "requests": items });
        let batch = self
            .json(|| self.transport.http.post(self.batches_url("")).json(&body))
            .await?;
        let id = batch["id"].as_str().unwrap_or_default();
        checked_id(&self.config.name, "batch", id)
    }

    async fn batch_status(self: Arc<Self>, id: String) -> Result<BatchStatus, ProviderError> {
        let id = checked_id(&self.config.name, "batch", &id)?;
        let batch = self
            .json(|| self.transport.http.get(self.batches_url(&format!("/{id}"))))
            .await?;
        let counts = &batch["request_counts"];
        let count = |k: &str| counts[k].as_u64().unwrap_or(0);
        let done = count("succeeded") + count("errored") + count("canceled") + count("expired");
        Ok(
            match batch["processing_status"].as_str().unwrap_or_default() {
                "ended" => BatchStatus::Ended,
                _ => BatchStatus::Running {
                    done,
                    total: done + count("processing"),
                },
            },
        )
    }

    async fn batch_results(self: Arc<Self>, id: String) -> Result<Vec<BatchResult>, ProviderError> {
        let id = checked_id(&self.config.name, "batch", &id)?;
        let url = self.batches_url(&format!("/{id}/results"));
        let bytes = self.fetch(|| self.transport.http.get(&url)).await?;
        let mut out = Vec::new();
        for line in json_lines(&bytes) {
            let Some(id) = line["custom_id"].as_str() else {
                continue;
            };
            let result = &line["result"];
            let outcome = match result["type"].as_str().unwrap_or_default() {
                "succeeded" => self
                    .parse_completion(result["message"].to_string().as_bytes())
                    .map_err(|e| e.to_string()),
                "errored" => Err(error_message(&result["error"].to_string())),
                other => Err(format!("the request was {other}")),
            };
            out.push(BatchResult {
                id: id.to_string(),
                outcome,
            });
        }
        Ok(out)
    }
}

impl BatchApi for AnthropicBatch {
    fn submit(
        &self,
        requests: Vec<(String, ChatRequest)>,
    ) -> BoxFuture<'static, Result<String, ProviderError>> {
        self.0.clone().submit_batch(requests).boxed()
    }

    fn status(&self, id: &str) -> BoxFuture<'static, Result<BatchStatus, ProviderError>> {
        self.0.clone().batch_status(id.to_string()).boxed()
    }

    fn results(&self, id: &str) -> BoxFuture<'static, Result<Vec<BatchResult>, ProviderError>> {
        self.0.clone().batch_results(id.to_string()).boxed()
    }
}
