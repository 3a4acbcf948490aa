//! Runs as spans: what the server hands a tracer when a run ends. The spans are built from the
//! run's trace afterwards (every call's start and latency are in it), so nothing is traced on
//! the hot path; only the calls' span ids are chosen up front, because their `traceparent`
//! goes upstream while they run.

use std::time::SystemTime;

use moa_core::{Trace, TraceContext};

/// A run's own span, before its layers and calls are added from its trace.
#[derive(Clone, Debug)]
pub struct RunSpan {
    /// The run's trace and its span id; its calls' spans are in the same trace.
    pub context: TraceContext,
    /// The client's span (from its `traceparent`), the run span's parent.
    pub parent: Option<u64>,
    pub preset: String,
    pub request_id: String,
    pub stream: bool,
    /// When the run began, by the wall clock; calls' `started_ms` count from here.
    pub started: SystemTime,
}

/// Where finished runs go as spans.
pub trait SpanSink: Send + Sync {
    /// One run ended: with its trace, or failed with an error in the client's terms.
    fn run(&self, span: &RunSpan, outcome: Result<&Trace, &str>);

    /// Sends what is still queued and stops (the server is shutting down).
    fn shutdown(&self) -> Result<(), String> {
        Ok(())
    }
}
