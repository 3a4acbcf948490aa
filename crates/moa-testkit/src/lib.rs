//! Test doubles for moa; a dev-dependency only, never part of the binary.
//!
//! - [`FakeServer`]: a model server on `127.0.0.1:0` that speaks one vendor's real wire format,
//!   follows a per-model script of [`Reply`]s, and records every request it receives and how it
//!   ended. [`FakeOpenAi`] (JSON, SSE chunks, usage in the final chunk, OpenAI-shaped errors) is
//!   the usual one; [`FakeServer::anthropic`] speaks the Messages API (SSE event types, 529
//!   overloaded) and [`FakeServer::bedrock`] Converse (binary event-stream frames with CRCs,
//!   ThrottlingException). Both the OpenAI and Anthropic fakes also speak their vendor's batch
//!   API (OpenAI's Files + Batch, Anthropic's Message Batches), answering each batched request
//!   with the same script.
//! - [`llamacpp::LlamaCppServer`]: the real llama.cpp server, started when it is installed, to
//!   check moa and the fakes against it.
//! - [`python::venv`]: a Python venv with pinned PyPI packages (the official openai SDK), to
//!   run real clients against moa.
//! - [`browser::Browser`]: headless Chromium over the DevTools protocol, for the playground
//!   page's tests.
//! - [`ScriptedProvider`]: the same scripts served in-process through the provider trait, for
//!   engine tests and benchmarks that should not pay for HTTP.

mod anthropic;
mod batches;
pub mod bedrock;
pub mod browser;
pub mod llamacpp;
pub mod measure;
mod openai;
pub mod python;
mod reply;
mod script;
mod scripted;
mod server;

pub use batches::FakeBatch;
pub use reply::{Reply, ReplyKind};
pub use script::{Ending, Recorded};
pub use scripted::ScriptedProvider;
pub use server::{Dialect, FakeOpenAi, FakeServer};
