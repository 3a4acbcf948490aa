//! Anthropic's Messages API (`anthropic:` models): system prompt as its own field, `max_tokens`
//! always sent, the SSE event types (`message_start`, `content_block_delta`, `message_delta`,
//! `message_stop`, `error`), usage from the start and delta events, and retries on 429 and 529
//! (overloaded) honouring `retry-after`.

mod batch;
mod stream;
pub mod wire;

use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;
use moa_core::{BoxChunkStream, ChatRequest, Completion, Provider, ProviderError};

use crate::http::{error_message, open_stream, Failure, HasTransport, Limits, Transport};
use crate::retry::RetryPolicy;
use wire::WireMessage;

/// Settings of one Messages API endpoint.
#[derive(Clone)]
pub struct AnthropicConfig {
    pub name: String,
    /// The base URL, e.g. `https://api.anthropic.com/v1`; `/messages` is appended.
    pub base_url: String,
    /// Sent as `x-api-key`.
    pub api_key: Option<String>,
    /// At most this many requests in flight (0: no limit).
    pub max_concurrency: usize,
    /// Calls started per minute at most (`None`: no quota).
    pub requests_per_minute: Option<f64>,
    pub retry: RetryPolicy,
    /// How much of an answer is read, and how long a silent one is waited for.
    pub limits: Limits,
    /// Extra headers (`anthropic-beta`, say).
    pub headers: Vec<(String, String)>,
}

/// Keys and header values are never printed (headers may carry tokens of their own).
impl std::fmt::Debug for AnthropicConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let header_names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("AnthropicConfig")
            .field("name", &self.name)
            .field("base_url", &self.base_url)
            .field("max_concurrency", &self.max_concurrency)
            .field("requests_per_minute", &self.requests_per_minute)
            .field("retry", &self.retry)
            .field("limits", &self.limits)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("headers", &header_names)
            .finish()
    }
}

impl AnthropicConfig {
    pub fn new(name: impl Into<String>, base_url: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            base_url: base_url.into(),
            api_key: None,
            max_concurrency: 0,
            requests_per_minute: None,
            retry: RetryPolicy::default(),
            limits: Limits::default(),
            headers: Vec::new(),
        }
    }
}

/// A client for one Messages API endpoint. Cheap to clone.
#[derive(Clone)]
pub struct Anthropic {
    inner: Arc<Inner>,
}

struct Inner {
    config: AnthropicConfig,
    endpoint: String,
    transport: Transport,
}

impl HasTransport for Inner {
    fn transport(&self) -> &Transport {
        &self.transport
    }
}

impl Anthropic {
    pub fn new(config: AnthropicConfig, http: reqwest::Client) -> Self {
        let endpoint = format!("{}/messages", config.base_url.trim_end_matches('/'));
        let transport = Transport::new(
            config.name.clone(),
            http,
            config.retry.clone(),
            config.limits.clone(),
            config.max_concurrency,
            config.requests_per_minute,
        );
        Self {
            inner: Arc::new(Inner {
                config,
                endpoint,
                transport,
            }),
        }
    }
}

impl Inner {
    async fn send(
        &self,
        body: Vec<u8>,
        id: &moa_core::Correlation,
    ) -> Result<reqwest::Response, Failure> {
        let mut request = self
            .transport
            .http
            .post(&self.endpoint)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("anthropic-version", wire::API_VERSION)
            .body(body);
        if let Some(key) = &self.config.api_key {
            request = request.header("x-api-key", key);
        }
        for (name, value) in &self.config.headers {
            request = request.header(name, value);
        }
        self.transport
            .send(crate::http::with_correlation(request, id))
            .await
    }

    async fn complete(self: Arc<Self>, request: ChatRequest) -> Result<Completion, ProviderError> {
        wire::check(&request, &self.config.name)?;
        let body = wire::request_body(&request, false);
        self.transport
            .complete(
                || self.send(body.clone(), &request.correlation),
                |bytes| self.parse_completion(bytes),
            )
            .await
    }

    fn parse_completion(&self, bytes: &[u8]) -> Result<Completion, ProviderError> {
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
            self.transport
                .malformed(format!("invalid JSON: {e}"), bytes)
        })?;
        if value["type"] == "error" {
            return Err(ProviderError::Upstream {
                provider: self.config.name.clone(),
                message: error_message(&value.to_string()),
            });
        }
        let message: WireMessage = serde_json::from_value(value).map_err(|e| {
            self.transport
                .malformed(format!("unexpected message: {e}"), bytes)
        })?;
        let text: String = message
            .content
            .iter()
            .filter(|b| b.kind == "text")
            .filter_map(|b| b.text.as_deref())
            .collect();
        let usage = message.usage.and_then(|u| {
            let output = u.output_tokens;
            (u.input().is_some() || output.is_some()).then(|| {
                let cached = u.cached().unwrap_or(0);
                wire::usage(u.input().unwrap_or(0), output.unwrap_or(0), cached)
            })
        });
        let tool_calls = message
            .content
            .iter()
            .filter(|b| b.kind == "tool_use")
            .map(|b| moa_core::ToolCall {
                id: b.id.clone().unwrap_or_default(),
                name: b.name.clone().unwrap_or_default(),
                arguments: b.input.as_ref().map_or("{}".into(), |i| i.to_string()),
            })
            .collect();
        Ok(Completion {
            text,
            finish_reason: message.stop_reason.as_deref().map(wire::finish_reason),
            usage,
            tool_calls,
            logprobs: None, // the API offers none
            attempts: 1,
        })
    }
}

impl Provider for Anthropic {
    fn name(&self) -> &str {
        &self.inner.config.name
    }

    fn batch(&self) -> Option<Arc<dyn moa_core::BatchApi>> {
        Some(Arc::new(batch::AnthropicBatch(self.inner.clone())))
    }

    fn stream(&self, request: ChatRequest) -> BoxChunkStream {
        if let Err(error) = wire::check(&request, self.name()) {
            return Box::pin(futures::stream::iter([Err(error)]));
        }
        let body = wire::request_body(&request, true);
        let id = request.correlation;
        open_stream::<_, stream::Decoder, _, _>(self.inner.clone(), move |inner: Arc<Inner>| {
            let (body, id) = (body.clone(), id.clone());
            async move { inner.send(body, &id).await }
        })
    }

    fn complete(
        &self,
        request: ChatRequest,
    ) -> BoxFuture<'static, Result<Completion, ProviderError>> {
        self.inner.clone().complete(request).boxed()
    }
}
