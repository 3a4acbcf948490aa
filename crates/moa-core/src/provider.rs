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

    /// Streams the answer to `request`. The stream ends with exactly one [`Chunk::Finished`]
    /// on success. Retries, if any, happen before the first chunk is yielded.
    fn stream(&self, request: ChatRequest) -> BoxChunkStream;

    /// The whole answer to `request`.
    fn complete(
        &self,
        request: ChatRequest,
    ) -> BoxFuture<'static, Result<Completion, ProviderError>> {
        collect(self.stream(request)).boxed()
    }
}

/// Collects a chunk stream into one completion.
pub async fn collect(mut stream: BoxChunkStream) -> Result<Completion, ProviderError> {
    let mut completion = Completion::default();
    while let Some(chunk) = stream.next().await {
        match chunk? {
            Chunk::Delta(text) => completion.text.push_str(&text),
            Chunk::Finished {
                finish_reason,
                usage,
            } => {
                completion.finish_reason = finish_reason;
                completion.usage = usage;
            }
        }
    }
    Ok(completion)
}

/// Why a call to a provider failed, with what a user needs to act on it.
#[derive(Clone, Debug, thiserror::Error)]
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
    /// The HTTP status, if the error came from one.
    pub fn status(&self) -> Option<u16> {
        match self {
            ProviderError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}
