//! The OpenAI-compatible chat-completions client: one implementation for every vendor that
//! speaks the dialect (Together, OpenAI, Groq, vLLM, Ollama, ...), configured by a table row.

mod stream;
pub mod wire;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use moa_core::{BoxChunkStream, ChatRequest, Completion, Provider, ProviderError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::retry::{retry_after, retryable_status, RetryPolicy};
use wire::{error_message, truncate, WireResponse};

/// Settings of one OpenAI-compatible endpoint.
#[derive(Clone, Debug)]
pub struct OpenAiConfig {
    /// The provider's name (`together`, `openai`, ...).
    pub name: String,
    /// The base URL, e.g. `https://api.together.xyz/v1`; `/chat/completions` is appended.
    pub base_url: String,
    /// The bearer token, if the endpoint needs one.
    pub api_key: Option<String>,
    /// At most this many requests in flight to this endpoint (0: no limit).
    pub max_concurrency: usize,
    pub retry: RetryPolicy,
    /// Ask for usage in the final streamed chunk (`stream_options.include_usage`).
    pub stream_usage: bool,
    /// Extra headers sent with every request (OpenRouter's `HTTP-Referer`, say).
    pub headers: Vec<(String, String)>,
}

impl OpenAiConfig {
    /// A config for `base_url` with defaults for the rest.
    pub fn new(name: impl Into<String>, base_url: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            base_url: base_url.into(),
            api_key: None,
            max_concurrency: 0,
            retry: RetryPolicy::default(),
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
    http: reqwest::Client,
    limit: Option<Arc<Semaphore>>,
}

/// A failed attempt, and whether another may succeed.
struct Failure {
    error: ProviderError,
    retry: bool,
    retry_after: Option<Duration>,
}

impl OpenAiCompatible {
    /// A client for `config`, sending through `http` (share one client between providers).
    pub fn new(config: OpenAiConfig, http: reqwest::Client) -> Self {
        let endpoint = format!("{}/chat/completions", config.base_url.trim_end_matches('/'));
        let limit =
            (config.max_concurrency > 0).then(|| Arc::new(Semaphore::new(config.max_concurrency)));
        Self {
            inner: Arc::new(Inner {
                config,
                endpoint,
                http,
                limit,
            }),
        }
    }

    /// The endpoint's settings.
    pub fn config(&self) -> &OpenAiConfig {
        &self.inner.config
    }
}

impl Inner {
    fn name(&self) -> String {
        self.config.name.clone()
    }

    async fn permit(&self) -> Option<OwnedSemaphorePermit> {
        match &self.limit {
            // The semaphore is never closed, so acquiring only fails if it were.
            Some(limit) => limit.clone().acquire_owned().await.ok(),
            None => None,
        }
    }

    /// A broken or refused connection: always worth another try.
    fn connection_failure(&self, error: &reqwest::Error) -> Failure {
        Failure {
            error: ProviderError::Connection {
                provider: self.name(),
                message: describe(error),
                attempts: 1,
            },
            retry: true,
            retry_after: None,
        }
    }

    /// Sends `body` once and returns the response if its status is a success.
    async fn send(&self, body: Vec<u8>) -> Result<reqwest::Response, Failure> {
        let mut request = self
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
        let response = request
            .send()
            .await
            .map_err(|e| self.connection_failure(&e))?;
        let status = response.status().as_u16();
        if response.status().is_success() {
            return Ok(response);
        }
        let wait = retry_after(response.headers());
        let body = response.text().await.unwrap_or_default();
        Err(Failure {
            error: ProviderError::Status {
                provider: self.name(),
                status,
                message: error_message(&body),
                body,
                attempts: 1,
            },
            retry: retryable_status(status),
            retry_after: wait,
        })
    }

    /// Runs `attempt` until it succeeds, fails for good, or retries run out.
    async fn with_retries<T, F, Fut>(&self, mut attempt: F) -> Result<T, ProviderError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let policy = &self.config.retry;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let failure = match attempt().await {
                Ok(value) => return Ok(value),
                Err(failure) => failure,
            };
            let too_long = failure
                .retry_after
                .is_some_and(|w| w > policy.max_retry_after);
            if !failure.retry || attempts > policy.max_retries || too_long {
                return Err(with_attempts(failure.error, attempts));
            }
            tokio::time::sleep(policy.delay(attempts, failure.retry_after)).await;
        }
    }

    async fn complete(self: Arc<Self>, request: ChatRequest) -> Result<Completion, ProviderError> {
        let body = wire::request_body(&request, false, false);
        let _permit = self.permit().await;
        self.with_retries(|| async {
            let response = self.send(body.clone()).await?;
            let bytes = response
                .bytes()
                .await
                .map_err(|e| self.connection_failure(&e))?;
            // Like the reference, an unreadable answer is worth another try.
            parse_completion(&self.config.name, &bytes).map_err(|error| Failure {
                retry: matches!(error, ProviderError::Malformed { .. }),
                error,
                retry_after: None,
            })
        })
        .await
    }
}

fn parse_completion(provider: &str, bytes: &[u8]) -> Result<Completion, ProviderError> {
    let malformed = |message: String| ProviderError::Malformed {
        provider: provider.to_string(),
        message,
        raw: truncate(&String::from_utf8_lossy(bytes), 2000),
    };
    let response: WireResponse =
        serde_json::from_slice(bytes).map_err(|e| malformed(format!("invalid JSON: {e}")))?;
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
        .ok_or_else(|| malformed("no choices in the response".into()))?;
    Ok(Completion {
        text: choice.message.and_then(|m| m.content).unwrap_or_default(),
        finish_reason: choice.finish_reason.filter(|r| !r.is_empty()),
        usage: response.usage.map(Into::into),
    })
}

fn with_attempts(error: ProviderError, count: u32) -> ProviderError {
    match error {
        ProviderError::Status {
            provider,
            status,
            message,
            body,
            ..
        } => ProviderError::Status {
            provider,
            status,
            message,
            body,
            attempts: count,
        },
        ProviderError::Connection {
            provider, message, ..
        } => ProviderError::Connection {
            provider,
            message,
            attempts: count,
        },
        other => other,
    }
}

/// A reqwest error with its causes, which hold the useful part ("connection refused").
fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl Provider for OpenAiCompatible {
    fn name(&self) -> &str {
        &self.inner.config.name
    }

    fn stream(&self, request: ChatRequest) -> BoxChunkStream {
        let inner = self.inner.clone();
        futures::stream::once(async move {
            let body = wire::request_body(&request, true, inner.config.stream_usage);
            let permit = inner.permit().await;
            let response = inner.with_retries(|| inner.send(body.clone())).await?;
            Ok(stream::ChunkStream::new(inner.name(), response, permit))
        })
        .flat_map(
            |opened: Result<stream::ChunkStream, ProviderError>| match opened {
                Ok(chunks) => chunks.boxed(),
                Err(e) => futures::stream::iter([Err(e)]).boxed(),
            },
        )
        .boxed()
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
