//! Amazon Bedrock's Converse and ConverseStream APIs (`bedrock:` models). Requests are signed
//! with SigV4 from the standard AWS variables, or carry a Bedrock API key as a bearer token;
//! the streamed answer arrives in AWS's binary event-stream framing, decoded with its CRCs
//! checked. Throttling (HTTP 429 `ThrottlingException`, or a `throttlingException` event before
//! any text) is retried.

pub mod eventstream;
pub mod sigv4;
mod stream;
pub mod wire;

use std::sync::Arc;
use std::time::SystemTime;

use futures::future::BoxFuture;
use futures::FutureExt;
use moa_core::{BoxChunkStream, ChatRequest, Completion, Provider, ProviderError};

use crate::http::{open_stream, Failure, HasTransport, Limits, Transport};
use crate::retry::RetryPolicy;
pub use sigv4::AwsCredentials;
use wire::ConverseResponse;

/// How requests prove who sends them.
#[derive(Clone)]
pub enum BedrockAuth {
    /// A Bedrock API key (`AWS_BEARER_TOKEN_BEDROCK`), sent as `Authorization: Bearer`.
    ApiKey(String),
    /// SigV4 with these credentials.
    SigV4(AwsCredentials),
}

impl std::fmt::Debug for BedrockAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BedrockAuth::ApiKey(_) => f.write_str("ApiKey(<redacted>)"),
            BedrockAuth::SigV4(credentials) => f.debug_tuple("SigV4").field(credentials).finish(),
        }
    }
}

/// Settings of one Bedrock runtime endpoint.
#[derive(Clone, Debug)]
pub struct BedrockConfig {
    pub name: String,
    pub region: String,
    /// `https://bedrock-runtime.{region}.amazonaws.com` unless set (a VPC endpoint, a test fake).
    pub base_url: Option<String>,
    pub auth: BedrockAuth,
    /// At most this many requests in flight (0: no limit).
    pub max_concurrency: usize,
    /// Calls started per minute at most (`None`: no quota).
    pub requests_per_minute: Option<f64>,
    pub retry: RetryPolicy,
    /// How much of an answer is read, and how long a silent one is waited for.
    pub limits: Limits,
}

impl BedrockConfig {
    /// The runtime endpoint of `region`.
    pub fn default_base_url(region: &str) -> String {
        crate::table::bedrock_runtime_url(region)
    }
}

/// A client for one Bedrock runtime endpoint. Cheap to clone.
#[derive(Clone)]
pub struct Bedrock {
    inner: Arc<Inner>,
}

struct Inner {
    config: BedrockConfig,
    base_url: String,
    transport: Transport,
}

impl HasTransport for Inner {
    fn transport(&self) -> &Transport {
        &self.transport
    }
}

/// A model id as one URL path segment (`anthropic.claude-3-haiku-20240307-v1:0` has a colon;
/// ARNs have slashes).
fn encode_segment(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for byte in id.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

impl Bedrock {
    pub fn new(config: BedrockConfig, http: reqwest::Client) -> Self {
        let base_url = config
            .base_url
            .clone()
            .unwrap_or_else(|| BedrockConfig::default_base_url(&config.region))
            .trim_end_matches('/')
            .to_string();
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
                base_url,
                transport,
            }),
        }
    }
}

impl Inner {
    /// A request Converse cannot take: the client's error, never retried.
    fn invalid(&self, message: String) -> ProviderError {
        ProviderError::InvalidRequest {
            provider: self.config.name.clone(),
            message,
        }
    }

    /// Sends one signed request to `/model/{model}/{operation}`.
    async fn send(
        &self,
        model: &str,
        operation: &str,
        body: Vec<u8>,
        id: &moa_core::Correlation,
    ) -> Result<reqwest::Response, Failure> {
        let url = format!(
            "{}/model/{}/{operation}",
            self.base_url,
            encode_segment(model)
        );
        let accept = if operation == "converse-stream" {
            "application/vnd.amazon.eventstream"
        } else {
            "application/json"
        };
        let mut request = self
            .transport
            .http
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::ACCEPT, accept);
        match &self.config.auth {
            BedrockAuth::ApiKey(key) => request = request.bearer_auth(key),
            BedrockAuth::SigV4(credentials) => {
                let headers = sigv4::sign_request(
                    credentials,
                    &self.config.region,
                    "bedrock",
                    &sigv4::Unsigned {
                        method: "POST",
                        url: &url,
                        headers: &[("content-type", "application/json"), ("accept", accept)],
                        body: &body,
                    },
                    SystemTime::now(),
                )
                .map_err(|message| Failure {
                    error: ProviderError::Other {
                        provider: self.config.name.clone(),
                        message,
                    },
                    retry: false,
                    retry_after: None,
                })?;
                for (name, value) in headers {
                    request = request.header(name, value);
                }
            }
        }
        // Unsigned, which SigV4 allows: only the signed headers must match.
        let request = crate::http::with_correlation(request, id);
        self.transport.send(request.body(body)).await
    }

    async fn complete(self: Arc<Self>, request: ChatRequest) -> Result<Completion, ProviderError> {
        request.refuse_fields(&wire::UNSUPPORTED_FIELDS, &self.config.name, wire::API)?;
        let body = wire::request_body(&request).map_err(|m| self.invalid(m))?;
        self.transport
            .complete(
                || {
                    let id = &request.correlation;
                    self.send(&request.model, "converse", body.clone(), id)
                },
                |bytes| self.parse_completion(bytes),
            )
            .await
    }

    fn parse_completion(&self, bytes: &[u8]) -> Result<Completion, ProviderError> {
        let response: ConverseResponse = serde_json::from_slice(bytes).map_err(|e| {
            self.transport
                .malformed(format!("unexpected response: {e}"), bytes)
        })?;
        let blocks = response
            .output
            .message
            .map(|m| m.content)
            .unwrap_or_default();
        let mut text = String::new();
        let mut tool_calls = Vec::new();
        for block in blocks {
            if let Some(piece) = block.text {
                text.push_str(&piece);
            }
            if let Some(tool) = block.tool_use {
                tool_calls.push(moa_core::ToolCall {
                    id: tool.id.unwrap_or_default(),
                    name: tool.name.unwrap_or_default(),
                    arguments: tool.input.map_or("{}".into(), |i| i.to_string()),
                });
            }
        }
        Ok(Completion {
            text,
            finish_reason: response.stop_reason.as_deref().map(wire::finish_reason),
            usage: response.usage.map(Into::into),
            tool_calls,
            logprobs: None, // the API offers none
            attempts: 1,
        })
    }
}

impl Provider for Bedrock {
    fn name(&self) -> &str {
        &self.inner.config.name
    }

    fn stream(&self, request: ChatRequest) -> BoxChunkStream {
        let checked = request
            .refuse_fields(&wire::UNSUPPORTED_FIELDS, self.name(), wire::API)
            .and_then(|()| wire::request_body(&request).map_err(|m| self.inner.invalid(m)));
        let body = match checked {
            Ok(body) => body,
            Err(error) => return Box::pin(futures::stream::iter([Err(error)])),
        };
        let (model, id) = (request.model, request.correlation);
        open_stream::<_, stream::Decoder, _, _>(self.inner.clone(), move |inner: Arc<Inner>| {
            let (body, model, id) = (body.clone(), model.clone(), id.clone());
            async move { inner.send(&model, "converse-stream", body, &id).await }
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
    fn model_ids_are_one_path_segment() {
        assert_eq!(
            encode_segment("anthropic.claude-3-haiku-20240307-v1:0"),
            "anthropic.claude-3-haiku-20240307-v1%3A0"
        );
        assert_eq!(
            encode_segment("arn:aws:bedrock:us-east-1::foundation-model/x"),
            "arn%3Aaws%3Abedrock%3Aus-east-1%3A%3Afoundation-model%2Fx"
        );
    }
}
