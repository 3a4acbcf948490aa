//! One model call of a run: send, stream or collect, time it, and report it as events.

use std::time::Duration;

use tokio::time::Instant;

use futures::StreamExt;
use tokio::sync::mpsc::UnboundedSender;

use super::BoundAgent;
use crate::completion::{ChatRequest, Chunk, Completion};
use crate::event::{CallStatus, CallTrace, RunEvent};
use crate::provider::ProviderError;

/// Which slot of the run a call fills, so its deltas become the right events.
#[derive(Clone, Copy)]
pub(super) enum Slot {
    Proposer { layer: usize, index: usize },
    Aggregator,
}

/// What every call of one run shares.
pub(super) struct CallContext {
    pub events: UnboundedSender<RunEvent>,
    pub started: Instant,
    pub timeout: Option<Duration>,
}

impl CallContext {
    pub fn emit(&self, event: RunEvent) {
        // A closed receiver means the run stream is being dropped; nothing to tell.
        let _ = self.events.send(event);
    }

    pub fn since_start(&self, at: Instant) -> u64 {
        millis(at.duration_since(self.started))
    }
}

pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The outcome of one call, with its trace filled in.
pub(super) struct CallOutcome {
    pub trace: CallTrace,
    pub error: Option<ProviderError>,
}

/// Calls `agent` with `request`, streaming or not, within the run's per-call timeout.
pub(super) async fn call(
    ctx: &CallContext,
    agent: &BoundAgent,
    request: ChatRequest,
    slot: Slot,
    stream: bool,
) -> CallOutcome {
    let started = Instant::now();
    let mut first_token = None;
    let work = async {
        if !stream {
            return agent.provider.complete(request).await;
        }
        let mut chunks = agent.provider.stream(request);
        let mut completion = Completion::default();
        while let Some(chunk) = chunks.next().await {
            match chunk? {
                Chunk::Delta(text) => {
                    if text.is_empty() {
                        continue;
                    }
                    first_token.get_or_insert_with(Instant::now);
                    completion.text.push_str(&text);
                    ctx.emit(match slot {
                        Slot::Proposer { layer, index } => {
                            RunEvent::ProposerDelta { layer, index, text }
                        }
                        Slot::Aggregator => RunEvent::AggregatorDelta { text },
                    });
                }
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
    };
    let result = match ctx.timeout {
        Some(limit) => tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
            Err(ProviderError::Timeout {
                provider: agent.provider.name().to_string(),
                after: limit,
            })
        }),
        None => work.await,
    };
    let latency_ms = millis(started.elapsed());
    let mut trace = CallTrace {
        model: agent.spec.model.clone(),
        status: CallStatus::Ok,
        answer: None,
        error: None,
        finish_reason: None,
        usage: None,
        started_ms: ctx.since_start(started),
        first_token_ms: first_token.map(|t| millis(t.duration_since(started))),
        latency_ms,
    };
    match result {
        Ok(completion) => {
            trace.answer = Some(completion.text);
            trace.finish_reason = completion.finish_reason;
            trace.usage = completion.usage;
            CallOutcome { trace, error: None }
        }
        Err(error) => {
            trace.status = CallStatus::Failed;
            trace.error = Some(error.to_string());
            CallOutcome {
                trace,
                error: Some(error),
            }
        }
    }
}
