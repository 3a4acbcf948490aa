//! OpenAI's Batch API, as OpenAI, Together and vLLM serve it: the requests go up as a JSONL
//! file (`POST /files`, multipart, `purpose=batch`), a batch is created over it (`POST
//! /batches`, endpoint `/v1/chat/completions`, window `24h`), polled (`GET /batches/{id}`), and
//! its output and error files read (`GET /files/{id}/content`).

use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;
use moa_core::{BatchApi, BatchResult, BatchStatus, ChatRequest, ProviderError};
use serde_json::{json, Value};

use super::{parse_completion, wire, Inner};
use crate::batch::{checked_id, json_lines, valid_request_id};
use crate::http::error_message;

pub(crate) struct OpenAiBatch(pub(crate) Arc<Inner>);

impl Inner {
    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.config.base_url.trim_end_matches('/'))
    }

    fn authorized(&self, mut request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        if let Some(key) = &self.config.api_key {
            request = request.bearer_auth(key);
        }
        for (name, value) in &self.config.headers {
            request = request.header(name, value);
        }
        request
    }

    async fn json(
        &self,
        make: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<Value, ProviderError> {
        let bytes = self.transport.fetch(|| self.authorized(make())).await?;
        serde_json::from_slice(&bytes).map_err(|e| {
            self.transport
                .malformed(format!("invalid JSON: {e}"), &bytes)
        })
    }

    fn id_in(&self, value: &Value, field: &str, what: &str) -> Result<String, ProviderError> {
        let id = value[field].as_str().ok_or_else(|| {
            self.transport.malformed(
                format!("no `{field}` in the answer"),
                value.to_string().as_bytes(),
            )
        })?;
        checked_id(&self.config.name, what, id)
    }

    async fn submit(
        self: Arc<Self>,
        requests: Vec<(String, ChatRequest)>,
    ) -> Result<String, ProviderError> {
        let mut file = Vec::new();
        for (id, request) in &requests {
            if !valid_request_id(id) {
                return Err(ProviderError::InvalidRequest {
                    provider: self.config.name.clone(),
                    message: format!("batch request id {id:?} is not 1-64 letters, digits, - or _"),
                });
            }
            let body: Value = serde_json::from_slice(&wire::request_body(request, false, false))
                .map_err(|e| ProviderError::InvalidRequest {
                    provider: self.config.name.clone(),
                    message: e.to_string(),
                })?;
            let line = json!({"custom_id": id, "method": "POST", "url": "/v1/chat/completions", "body": body});
            file.extend_from_slice(line.to_string().as_bytes());
            file.push(b'\n');
        }
        let (boundary, form) = multipart(&file);
        let uploaded = self
            .json(|| {
                self.transport
                    .http
                    .post(self.url("files"))
                    .header(
                        reqwest::header::CONTENT_TYPE,
                        format!("multipart/form-data; boundary={boundary}"),
                    )
                    .body(form.clone())
            })
            .await?;
        let file_id = self.id_in(&uploaded, "id", "file")?;
        let create = json!({"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"});
        let batch = self
            .json(|| self.transport.http.post(self.url("batches")).json(&create))
            .await?;
        self.id_in(&batch, "id", "batch")
    }

    async fn batch(&self, id: &str) -> Result<Value, ProviderError> {
        let id = checked_id(&self.config.name, "batch", id)?;
        self.json(|| self.transport.http.get(self.url(&format!("batches/{id}"))))
            .await
    }

    async fn status(self: Arc<Self>, id: String) -> Result<BatchStatus, ProviderError> {
        let batch = self.batch(&id).await?;
        let count = |k: &str| batch["request_counts"][k].as_u64().unwrap_or(0);
        Ok(match batch["status"].as_str().unwrap_or_default() {
            "completed" | "expired" => BatchStatus::Ended,
            "failed" => {
                let errors: Vec<&str> = batch["errors"]["data"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|e| e["message"].as_str())
                    .collect();
                BatchStatus::Failed(match errors.is_empty() {
                    true => "the batch failed".into(),
                    false => errors.join("; "),
                })
            }
            "cancelled" | "cancelling" => BatchStatus::Failed("the batch was cancelled".into()),
            _ => BatchStatus::Running {
                done: count("completed") + count("failed"),
                total: count("total"),
            },
        })
    }

    async fn results(self: Arc<Self>, id: String) -> Result<Vec<BatchResult>, ProviderError> {
        let batch = self.batch(&id).await?;
        let mut out = Vec::new();
        for field in ["output_file_id", "error_file_id"] {
            if batch[field].is_null() {
                continue;
            }
            let file = self.id_in(&batch, field, "file")?;
            let url = self.url(&format!("files/{file}/content"));
            let bytes = self
                .transport
                .fetch(|| self.authorized(self.transport.http.get(&url)))
                .await?;
            for line in json_lines(&bytes) {
                let Some(id) = line["custom_id"].as_str() else {
                    continue;
                };
                let response = &line["response"];
                let outcome = match response["status_code"].as_u64() {
                    Some(200) => {
                        parse_completion(&self.config.name, response["body"].to_string().as_bytes())
                            .map_err(|e| e.to_string())
                    }
                    Some(status) => Err(format!(
                        "status {status}: {}",
                        error_message(&response["body"].to_string())
                    )),
                    None => Err(error_message(&json!({"error": line["error"]}).to_string())),
                };
                out.push(BatchResult {
                    id: id.to_string(),
                    outcome,
                });
            }
        }
        Ok(out)
    }
}

/// A `multipart/form-data` body with `purpose=batch` and `file` (the JSONL), and its boundary
/// (one that does not occur in the file).
fn multipart(file: &[u8]) -> (String, Vec<u8>) {
    let mut n: u64 = 0x6d6f_6162_6174_6368;
    let boundary = loop {
        let candidate = format!("moa-batch-{n:016x}");
        if !file
            .windows(candidate.len())
            .any(|w| w == candidate.as_bytes())
        {
            break candidate;
        }
        n = n.wrapping_mul(6364136223846793005).wrapping_add(1);
    };
    let mut body = Vec::with_capacity(file.len() + 300);
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n\
             --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"moa-batch.jsonl\"\r\n\
             Content-Type: application/jsonl\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(file);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (boundary, body)
}

impl BatchApi for OpenAiBatch {
    fn submit(
        &self,
        requests: Vec<(String, ChatRequest)>,
    ) -> BoxFuture<'static, Result<String, ProviderError>> {
        self.0.clone().submit(requests).boxed()
    }

    fn status(&self, id: &str) -> BoxFuture<'static, Result<BatchStatus, ProviderError>> {
        self.0.clone().status(id.to_string()).boxed()
    }

    fn results(&self, id: &str) -> BoxFuture<'static, Result<Vec<BatchResult>, ProviderError>> {
        self.0.clone().results(id.to_string()).boxed()
    }
}
