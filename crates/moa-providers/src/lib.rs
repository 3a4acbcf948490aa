//! Model backends for moa, each behind [`moa_core::Provider`].
//!
//! - [`openai`]: the OpenAI-compatible chat-completions dialect, streamed and not.
//! - [`sse`]: a Server-Sent Events decoder tolerant of how servers split their output.
//! - [`retry`]: backoff with jitter and Retry-After.
//! - [`table`]: the known providers as data rows, and the [`Registry`] that serves them.
//!
//! Nothing here knows about the CLI or the server.

pub(crate) mod http;
pub mod openai;
pub mod retry;
pub mod sse;
pub mod table;

pub use openai::{OpenAiCompatible, OpenAiConfig};
pub use retry::RetryPolicy;
pub use table::{Endpoint, EnvLookup, KnownProvider, Registry, RegistryError, KNOWN_PROVIDERS};
