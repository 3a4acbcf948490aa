//! Test doubles for moa; a dev-dependency only, never part of the binary.
//!
//! - [`FakeOpenAi`]: an OpenAI-compatible chat-completions server on `127.0.0.1:0` that speaks the
//!   real wire format (JSON, SSE chunks, usage in the final chunk, OpenAI-shaped errors), follows a
//!   per-model script of [`Reply`]s, and records every request it receives and how it ended.
//! - [`ScriptedProvider`]: the same scripts served in-process through the provider trait, for
//!   engine tests and benchmarks that should not pay for HTTP.

pub mod measure;
mod openai;
mod reply;
mod script;
mod scripted;

pub use openai::FakeOpenAi;
pub use reply::{Reply, ReplyKind};
pub use script::{Ending, Recorded};
pub use scripted::ScriptedProvider;
