//! The OpenAI-compatible chat-completions client: one implementation for every vendor that
//! speaks the dialect (Together, OpenAI, Groq, vLLM, Ollama, ...), configured by a table row.

mod batch;
mod stream;
pub mod wire;

use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;
use moa_core::{BoxChunkStream, ChatRequest, Completion, Provider, ProviderError};

use crate::http::{
    error_message, malformed, open_stream, Failure, HasTransport, Limits, Transport,
};
use crate::retry::RetryPolicy;
use wire::WireResponse;

/// Settings of one OpenAI-compatible endpoint.
#[derive(Clone)]
pub struct OpenAiConfig {
    /// The provider's name (`together`, `openai`, ...).
    pub name: String,
    /// The base URL, e.g. `https://api.together.xyz/v1`; `/chat/completions` is appended.
    pub base_url: String,
    /// The bearer token, if the endpoint needs one.
    pub api_key: Option<String>,
    /// At most this many requests in flight to this endpoint (0: no limit).
    pub max_concurrency: usize,
    /// Calls started per minute at most (`None`: no quota).
    pub requests_per_minute: Option<f64>,
    pub retry: RetryPolicy,
    /// How much of an answer is read, and how long a silent one is waited for.
    pub limits: Limits,
    /// Ask for usage in the final streamed chunk (`stream_options.include_usage`).
    pub stream_usage: bool,
    /// Extra headers sent with every request (OpenRouter's `HTTP-Referer`, say).
    pub headers: Vec<(String, String)>,
}

/// Keys and header values are never printed (headers may carry tokens of their own).
impl std::fmt::Debug for OpenAiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let header_names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("OpenAiConfig")
            .field("name", &self.name)
            .field("base_url", &self.base_url)
            .field("max_concurrency", &self.max_concurrency)
            .field("requests_per_minute", &self.requests_per_minute)
            .field("retry", &self.retry)
            .field("limits", &self.limits)
            .field("stream_usage", &self.stream_usage)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("headers", &header_names)
            .finish()
    }
}

impl OpenAiConfig {
    /// A config for `base_url` with defaults for the rest.
    pub fn new(name: impl Into<String>, base_url: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            base_url: base_url.into(),
            api_key: None,
            max_concurrency: 0,
            requests_per_minute: None,
            retry: RetryPolicy::default(),
            limits: Limits::default(),
            stream_usage: true,
            headers: Vec::new(),
        }
    }
}

/// A client for one OpenAI-compatible endpoint. Cheap to clone.
#[derive(Clone)]
pub struct OpenAiCompatible {
    inner: Arc<Inner>,
}

struct Inner {
    config: OpenAiConfig,
    endpoint: String,
    transport: Transport,
}

impl HasTransport for Inner {
    fn transport(&self) -> &Transport {
        &self.transport
    }
}

impl OpenAiCompatible {
    /// A client for `config`, sending through `http` (share one client between providers).
    pub fn new(config: OpenAiConfig, http: reqwest::Client) -> Self {
        let endpoint = format!("{}/chat/completions", config.base_url.trim_end_matches('/'));
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

    /// The endpoint's settings.
    pub fn config(&self) -> &OpenAiConfig {
        &self.inner.config
    }
}

impl Inner {
    /// Sends `body` once.
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
            .body(body);
        if let Some(key) = &self.config.api_key {
            request = request.bearer_auth(key);
        }
        for (name, value) in &self.config.headers {
            request = request.header(name, value);
        }
        self.transport
            .send(crate::http::with_correlation(request, id))
            .await
    }

    async fn complete(self: Arc<Self>, request: ChatRequest) -> Result<Completion, ProviderError> {
        let body = wire::request_body(&request, false, false);
        self.transport
            .complete(
                || self.send(body.clone(), &request.correlation),
                |bytes| parse_completion(&self.config.name, bytes),
            )
            .await
    }
}

fn parse_completion(provider: &str, bytes: &[u8]) -> Result<Completion, ProviderError> {
    let bad = |message: String| malformed(provider, message, &String::from_utf8_lossy(bytes));
    let response: WireResponse =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    if let Some(error) = response.error {
        return Err(ProviderError::Upstream {
            provider: provider.to_string(),
            message: error_message(&serde_json::json!({ "error": error }).to_string()),
        });
    }
    let choice = response
        .choices
        .into_iter()
        .next()
        .ok_or_else(|| bad("no choices in the response".into()))?;
    let message = choice.message.unwrap_or_default();
    let tool_calls = message
        .tool_calls
        .unwrap_or_default()
        .into_iter()
        .map(|call| {
            let function = call.function.unwrap_or_default();
            moa_core::ToolCall {
                id: call.id.unwrap_or_default(),
                name: function.name.unwrap_or_default(),
                arguments: function.arguments.unwrap_or_default(),
            }
        })
        .collect();
    Ok(Completion {
        logprobs: choice.logprobs.and_then(|l| l.content),
        text: message.content.unwrap_or_default(),
        finish_reason: choice.finish_reason.filter(|r| !r.is_empty()),
        usage: response.usage.map(Into::into),
        tool_calls,
        attempts: 1,
    })
}

impl Provider for OpenAiCompatible {
    fn name(&self) -> &str {
        &self.inner.config.name
    }

    fn batch(&self) -> Option<Arc<dyn moa_core::BatchApi>> {
        Some(Arc::new(batch::OpenAiBatch(self.inner.clone())))
    }

    fn stream(&self, request: ChatRequest) -> BoxChunkStream {
        let body = wire::request_body(&request, true, self.inner.config.stream_usage);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_keys_or_header_values() {
        let mut config = OpenAiConfig::new("together", "https://api.together.xyz/v1");
        config.api_key = Some("sk-very-secret".into());
        config.headers = vec![("X-Token".into(), "hdr-secret".into())];
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("sk-very-secret") && !shown.contains("hdr-secret"),
            "{shown}"
        );
        assert!(
            shown.contains("<redacted>") && shown.contains("X-Token"),
            "{shown}"
        );
        let mut config = crate::AnthropicConfig::new("anthropic", "https://api.anthropic.com/v1");
        config.api_key = Some("sk-ant-secret".into());
        assert!(!format!("{config:?}").contains("sk-ant-secret"));
    }

    #[cfg(feature = "bedrock")]
    #[test]
    fn bedrock_debug_output_never_shows_keys() {
        let auth = crate::BedrockAuth::ApiKey("bedrock-secret".into());
        assert!(!format!("{auth:?}").contains("bedrock-secret"));
        let auth = crate::BedrockAuth::SigV4(crate::bedrock::AwsCredentials {
            access_key_id: "AKID".into(),
            secret_access_key: "aws-secret".into(),
            session_token: Some("aws-token".into()),
        });
        let shown = format!("{auth:?}");
        assert!(
            !shown.contains("aws-secret") && !shown.contains("aws-token"),
            "{shown}"
        );
    }

    #[test]
    fn completions_tolerate_missing_fields() {
        let c = parse_completion("p", br#"{"choices":[{"message":{"content":"hi"}}]}"#).unwrap();
        assert_eq!(c.text, "hi");
        assert_eq!(c.usage, None);
        let c = parse_completion(
            "p",
            br#"{"choices":[{"message":{"content":null},"finish_reason":""}],"usage":{"prompt_tokens":3}}"#,
        )
        .unwrap();
        assert_eq!(c.text, "");
        assert_eq!(c.finish_reason, None);
        assert_eq!(c.usage.unwrap().total_tokens, 3);
        assert!(matches!(
            parse_completion("p", b"{}"),
            Err(ProviderError::Malformed { .. })
        ));
        assert!(matches!(
            parse_completion("p", b"<html>"),
            Err(ProviderError::Malformed { .. })
        ));
        assert!(matches!(
            parse_completion("p", br#"{"error":{"message":"too long"}}"#),
            Err(ProviderError::Upstream { message, .. }) if message == "too long"
        ));
    }
}
