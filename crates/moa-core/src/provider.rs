//! The one trait every model backend implements, and the errors a call can end with.

use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};

use crate::completion::{ChatRequest, Chunk, Completion};

/// A provider's stream of chunks. Dropping it cancels the underlying request.
pub type BoxChunkStream = BoxStream<'static, Result<Chunk, ProviderError>>;

/// A model backend: an HTTP dialect, a local model, or a test double.
///
/// MoA mixes providers chosen at run time, so the engine holds them as `Arc<dyn Provider>`.
/// Only [`Provider::stream`] is required; [`Provider::complete`] collects the stream unless a
/// backend has a cheaper non-streaming path.
pub trait Provider: Send + Sync + 'static {
    /// The provider's name as used in `provider:model` (for messages and usage keys).
    fn name(&self) -> &str;

    /// The context window of `model` (the id as this provider knows it), in tokens, when the
    /// provider knows it (a local model's file says); the engine otherwise looks in
    /// [`crate::context`]'s table.
    fn context_window(&self, _model: &str) -> Option<u64> {
        None
    }

    /// Streams the answer to `request`. The stream ends with exactly one [`Chunk::Finished`]
    /// on success. Retries, if any, happen before the first chunk is yielded.
    fn stream(&self, request: ChatRequest) -> BoxChunkStream;

    /// The provider's batch endpoint, if it has one (OpenAI's Batch API, Anthropic's Message
    /// Batches): many requests answered within a day at about half the price.
    fn batch(&self) -> Option<std::sync::Arc<dyn BatchApi>> {
        None
    }

    /// The whole answer to `request`.
    fn complete(
        &self,
        request: ChatRequest,
    ) -> BoxFuture<'static, Result<Completion, ProviderError>> {
        let provider = self.name().to_string();
        collect(provider, self.stream(request)).boxed()
    }
}

/// An asynchronous batch endpoint: submit many requests at once, poll, then read every answer.
/// A batch is known by its id alone, so a caller that stops may come back to it later.
pub trait BatchApi: Send + Sync {
    /// Submits `requests`, each with an id unique in the batch (letters, digits, `-`, `_`, at
    /// most 64 characters, as the strictest vendor takes); returns the batch's id.
    fn submit(
        &self,
        requests: Vec<(String, ChatRequest)>,
    ) -> BoxFuture<'static, Result<String, ProviderError>>;

    /// Where batch `id` stands.
    fn status(&self, id: &str) -> BoxFuture<'static, Result<BatchStatus, ProviderError>>;

    /// The outcome of each request of the ended batch `id`, by request id.
    fn results(&self, id: &str) -> BoxFuture<'static, Result<Vec<BatchResult>, ProviderError>>;
}

/// Where a batch stands.
#[derive(Clone, Debug, PartialEq)]
pub enum BatchStatus {
    /// Still working: requests finished so far, of all of them.
    Running { done: u64, total: u64 },
    /// Every request is answered, failed or expired: the results can be read.
    Ended,
    /// The batch as a whole failed (its input was refused, it was cancelled): why.
    Failed(String),
}

/// One request's outcome in a batch.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchResult {
    pub id: String,
    /// The answer, or why there is none.
    pub outcome: Result<Completion, String>,
}

/// Collects `provider`'s chunk stream into one completion. A stream that stops before its
/// [`Chunk::Finished`] is an error, not a shorter answer.
pub async fn collect(
    provider: String,
    mut stream: BoxChunkStream,
) -> Result<Completion, ProviderError> {
    let mut completion = Completion::default();
    let mut finished = false;
    while let Some(chunk) = stream.next().await {
        finished |= completion.push(chunk?);
    }
    if !finished {
        return Err(unfinished(provider));
    }
    Ok(completion)
}

/// The error of a stream that ended before its finish event.
pub fn unfinished(provider: String) -> ProviderError {
    ProviderError::Other {
        provider,
        message: "the answer stream ended before its finish event".into(),
    }
}

/// Why a call to a provider failed, with what a user needs to act on it.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ProviderError {
    /// The provider needs an API key and none is set.
    #[error("{provider}: no API key; set the environment variable {var}")]
    MissingApiKey { provider: String, var: String },
    /// The server answered with an error status (after retries, if it was retryable).
    #[error("{provider}: HTTP {status}: {message}{}", attempts_note(*attempts))]
    Status {
        provider: String,
        status: u16,
        /// The error message from the body, or the body itself.
        message: String,
        /// The raw response body.
        body: String,
        attempts: u32,
    },
    /// The server could not be reached or the connection broke.
    #[error("{provider}: connection failed: {message}{}", attempts_note(*attempts))]
    Connection {
        provider: String,
        message: String,
        attempts: u32,
    },
    /// No answer (or no progress) within the time allowed.
    #[error("{provider}: no answer within {}s", .after.as_secs_f64())]
    Timeout { provider: String, after: Duration },
    /// The server's answer could not be understood.
    #[error("{provider}: malformed response: {message}")]
    Malformed {
        provider: String,
        message: String,
        /// The part of the response that could not be decoded.
        raw: String,
    },
    /// The server reported an error inside an otherwise successful response.
    #[error("{provider}: upstream error: {message}")]
    Upstream { provider: String, message: String },
    /// The response outgrew a limit (a body, an event, the answer's text): refused whole,
    /// never truncated silently.
    #[error("{provider}: response refused: {message}")]
    TooLarge { provider: String, message: String },
    /// A response whose headers arrived stopped sending for longer than the read timeout.
    #[error("{provider}: the response stalled: no data for {}s", .after.as_secs_f64())]
    Stalled { provider: String, after: Duration },
    /// A stream that ended with no text and no finish reason: a failed attempt, not an empty
    /// answer (llama.cpp's server does this under load).
    #[error("{provider}: the stream ended without any text or finish reason{}", attempts_note(*attempts))]
    EmptyStream { provider: String, attempts: u32 },
    /// A request the provider refuses before sending it (a prompt over a local model's context,
    /// say): the caller's to fix, not worth a retry.
    #[error("{provider}: {message}")]
    InvalidRequest { provider: String, message: String },
    /// Anything else (a local model failing to load, say).
    #[error("{provider}: {message}")]
    Other { provider: String, message: String },
}

fn attempts_note(attempts: u32) -> String {
    if attempts > 1 {
        format!(" (after {attempts} attempts)")
    } else {
        String::new()
    }
}

impl ProviderError {
    /// What went wrong in terms safe to show a client of a server: the provider and the kind
    /// of failure, never what the upstream wrote (which may echo keys, URLs or file paths).
    pub fn summary(&self) -> String {
        match self {
            ProviderError::Status {
                provider, status, ..
            } => format!("{provider}: HTTP {status}"),
            ProviderError::Connection { provider, .. } => {
                format!("{provider}: could not be reached")
            }
            ProviderError::Malformed { provider, .. } => {
                format!("{provider}: malformed response")
            }
            ProviderError::Upstream { provider, .. } => {
                format!("{provider}: the provider reported an error")
            }
            ProviderError::Other { provider, .. } => format!("{provider}: failed"),
            ProviderError::MissingApiKey { provider, .. } => {
                format!("{provider}: not configured")
            }
            // moa's own words only.
            ProviderError::Timeout { .. }
            | ProviderError::TooLarge { .. }
            | ProviderError::Stalled { .. }
            | ProviderError::EmptyStream { .. }
            | ProviderError::InvalidRequest { .. } => self.to_string(),
        }
    }

    /// The kind of failure in one word, for metrics and traces' `error.type`: the HTTP status
    /// (`429`), or `connection`, `timeout`, `stalled`, `malformed`, `upstream`, `too_large`,
    /// `empty_stream`, `invalid_request`, `missing_api_key`, `other`.
    pub fn kind(&self) -> std::borrow::Cow<'static, str> {
        match self {
            ProviderError::Status { status, .. } => status.to_string().into(),
            ProviderError::MissingApiKey { .. } => "missing_api_key".into(),
            ProviderError::Connection { .. } => "connection".into(),
            ProviderError::Timeout { .. } => "timeout".into(),
            ProviderError::Malformed { .. } => "malformed".into(),
            ProviderError::Upstream { .. } => "upstream".into(),
            ProviderError::TooLarge { .. } => "too_large".into(),
            ProviderError::Stalled { .. } => "stalled".into(),
            ProviderError::EmptyStream { .. } => "empty_stream".into(),
            ProviderError::InvalidRequest { .. } => "invalid_request".into(),
            ProviderError::Other { .. } => "other".into(),
        }
    }

    /// The call ran out of time (in all, or waiting for the next bytes).
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            ProviderError::Timeout { .. } | ProviderError::Stalled { .. }
        )
    }

    /// The request itself was refused as it stands (the caller's to fix).
    pub fn is_invalid_request(&self) -> bool {
        matches!(self, ProviderError::InvalidRequest { .. })
    }

    /// The HTTP status, if the error came from one.
    pub fn status(&self) -> Option<u16> {
        match self {
            ProviderError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}
