//! Model backends for moa, each behind [`moa_core::Provider`].
//!
//! - [`openai`]: the OpenAI-compatible chat-completions dialect, streamed and not.
//! - [`anthropic`]: Anthropic's Messages API.
//! - `bedrock` (feature `bedrock`, on by default): Amazon Bedrock's Converse and ConverseStream, signed with SigV4 or a Bedrock API key.
//! - [`sse`]: a Server-Sent Events decoder tolerant of how servers split their output.
//! - [`retry`]: backoff with jitter and Retry-After.
//! - [`table`]: the known providers as data rows, and the [`Registry`] that serves them.
//!
//! Nothing here knows about the CLI or the server.

pub mod anthropic;
mod batch;
#[cfg(feature = "bedrock")]
pub mod bedrock;
pub(crate) mod http;
mod image;
pub mod openai;
pub mod retry;
pub mod sse;
pub mod table;

pub use anthropic::{Anthropic, AnthropicConfig};
#[cfg(feature = "bedrock")]
pub use bedrock::{Bedrock, BedrockAuth, BedrockConfig};
pub use http::{Limits, MAX_ERROR_BODY};
pub use openai::{OpenAiCompatible, OpenAiConfig};
pub use retry::RetryPolicy;
pub use table::{
    Dialect, Endpoint, EnvLookup, KnownProvider, Registry, RegistryError, KNOWN_PROVIDERS,
};
