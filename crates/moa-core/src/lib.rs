//! The Mixture-of-Agents engine, independent of any transport.
//!
//! This crate owns the domain types (messages, requests, completions, usage, events), the
//! [`Provider`] trait every model backend implements, the layered MoA engine with the reference's
//! prompt injection and failure policy, and the built-in presets. It never prints, reads files,
//! parses command lines or speaks HTTP: front ends translate their input into a [`Preset`] and
//! messages, bind providers into a [`Plan`], and consume the [`RunEvent`] stream.

pub mod completion;
pub mod context;
pub mod engine;
pub mod error;
pub mod event;
pub mod format;
pub mod message;
pub mod policy;
pub mod preset;
pub mod price;
pub mod prompt;
pub mod provider;
pub mod tracecontext;

pub use completion::{
    ChatRequest, Chunk, Completion, Correlation, TokenLogprob, ToolChoice, ToolDef, Tools,
    TopLogprob, Usage,
};
pub use engine::{
    BoundAgent, CallOverrides, Moa, Plan, RunOptions, RunRequest, RunStream, EMPTY_ANSWER,
};
pub use error::{MoaError, ProposalFailure};
pub use event::{CallStatus, CallTrace, Degraded, DegradedKind, LayerTrace, RunEvent, Trace};
pub use format::ResponseFormat;
pub use message::{Message, Part, Role, ToolCall};
pub use policy::{PolicyChanges, RunPolicy};
pub use preset::{AgentSpec, ModelRef, Preset, PresetChanges, PresetError};
pub use price::{Price, PriceTable, PRICES_AS_OF};
pub use prompt::{inject_references, text_view, PromptStyle, Reference, AGGREGATOR_SYSTEM_PROMPT};
pub use provider::{BatchApi, BatchResult, BatchStatus, BoxChunkStream, Provider, ProviderError};
pub use tracecontext::TraceContext;
