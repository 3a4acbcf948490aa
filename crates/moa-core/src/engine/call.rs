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
    Proposer {
        layer: usize,
        index: usize,
    },
    /// The aggregator's call for choice `choice` (0 unless a request asks for several).
    /// `quiet`: its text is not sent on as it arrives (it is checked first).
    Aggregator {
        choice: usize,
        quiet: bool,
    },
}

/// What every call of one run shares.
pub(super) struct CallContext {
    pub events: UnboundedSender<RunEvent>,
    pub started: Instant,
    pub timeout: Option<Duration>,
    /// When the run's deadline passes: no call runs past it.
    pub deadline: Option<Instant>,
    /// The run's request id, put on every call.
    pub request_id: Option<String>,
    /// The run's trace; with `call_spans`, each call is a new span in it.
    pub trace: Option<crate::TraceContext>,
    pub call_spans: bool,
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

/// Calls `agent` with `request`, streaming or not, within the run's per-call timeout.
pub(super) async fn call(
    ctx: &CallContext,
    agent: &BoundAgent,
    request: ChatRequest,
    slot: Slot,
    stream: bool,
) -> CallTrace {
    let mut request = request;
    request.correlation.request_id.clone_from(&ctx.request_id);
    let span = ctx.trace.map(|t| match ctx.call_spans {
        true => t.child(),
        false => t,
    });
    request.correlation.traceparent = span.map(|s| s.header());
    let started = Instant::now();
    let mut first_token = None;
    // Counted before the request moves; used only if the provider reports no usage.
    let estimate_prompt = estimate_prompt_tokens(&request.messages);
    let work = async {
        if !stream {
            return agent.provider.complete(request).await;
        }
        let mut chunks = agent.provider.stream(request);
        let mut completion = Completion::default();
        let mut finished = false;
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            let (answer, event) = event_of(&chunk, slot);
            if answer {
                first_token.get_or_insert_with(Instant::now);
            }
            if let Some(event) = event {
                ctx.emit(event);
            }
            finished |= completion.push(chunk);
        }
        if !finished {
            // A stream that stops without its end is not a complete answer, whatever it held.
            return Err(crate::provider::unfinished(
                agent.provider.name().to_string(),
            ));
        }
        Ok(completion)
    };
    // The call's own timeout, or the run's deadline if that comes first.
    let limit = match (ctx.timeout, ctx.deadline) {
        (Some(t), Some(d)) => Some(t.min(d.saturating_duration_since(started))),
        (t, d) => t.or(d.map(|d| d.saturating_duration_since(started))),
    };
    let result = match limit {
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
        started_ms: ctx.since_start(started),
        first_token_ms: first_token.map(|t| millis(t.duration_since(started))),
        latency_ms,
        span_id: span.filter(|_| ctx.call_spans).map(|s| s.span_id),
        ..CallTrace::new(agent.spec.model.clone())
    };
    match result {
        Ok(completion) => {
            if completion.usage.is_none() {
                // Servers that send no usage (llama.cpp's streams) still cost tokens.
                trace.usage = Some(estimate_usage(estimate_prompt, &completion.text));
                trace.usage_estimated = true;
            } else {
                trace.usage = completion.usage;
            }
            trace.answer = Some(completion.text);
            trace.tool_calls = completion.tool_calls;
            trace.finish_reason = completion.finish_reason;
            trace.logprobs = completion.logprobs;
            trace.attempts = completion.attempts.max(1);
            trace
        }
        Err(error) => {
            trace.status = CallStatus::Failed;
            trace.error = Some(error.to_string());
            trace.failure = Some(error);
            trace
        }
    }
}

/// What a chunk of `slot`'s stream is: whether it is answer (text or a tool call; it starts the
/// first-token clock), and the event the run's listeners get for it. A quiet aggregator's
/// chunks are told to nobody; only a loud aggregator's log probabilities are.
fn event_of(chunk: &Chunk, slot: Slot) -> (bool, Option<RunEvent>) {
    let loud = match slot {
        Slot::Aggregator {
            choice,
            quiet: false,
        } => Some(choice),
        _ => None,
    };
    match chunk {
        Chunk::Delta(text) if text.is_empty() => (false, None),
        Chunk::Delta(text) => {
            let event = match slot {
                Slot::Proposer { layer, index } => Some(RunEvent::ProposerDelta {
                    layer,
                    index,
                    text: text.clone(),
                }),
                Slot::Aggregator { .. } => loud.map(|choice| RunEvent::AggregatorDelta {
                    choice,
                    text: text.clone(),
                }),
            };
            (true, event)
        }
        Chunk::ToolCall {
            index,
            id,
            name,
            arguments,
        } => {
            let event = loud.map(|choice| RunEvent::AggregatorToolCall {
                choice,
                index: *index,
                id: id.clone(),
                name: name.clone(),
                arguments: arguments.clone(),
            });
            (true, event)
        }
        Chunk::Logprobs(tokens) => {
            let event = loud.map(|choice| RunEvent::AggregatorLogprobs {
                choice,
                tokens: tokens.clone(),
            });
            (false, event)
        }
        Chunk::Finished { .. } | Chunk::Attempts(_) => (false, None),
    }
}

/// Tokens of `text` by the documented estimate: one token per four characters, rounded up
/// (OpenAI's rule of thumb for English; it errs high for code, low for CJK).
pub(crate) fn estimate_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

/// A prompt's tokens by the same estimate, plus four per message and three for the reply's
/// start, as chat templates add (OpenAI's cookbook counts the same overhead).
pub(crate) fn estimate_prompt_tokens(messages: &[crate::message::Message]) -> u64 {
    messages
        .iter()
        .map(|m| estimate_tokens(&m.content) + 4)
        .sum::<u64>()
        + 3
}

fn estimate_usage(prompt_tokens: u64, answer: &str) -> crate::completion::Usage {
    let completion_tokens = estimate_tokens(answer);
    crate::completion::Usage {
        prompt_tokens,
        completion_tokens,
        total_tokens: prompt_tokens + completion_tokens,
        cached_tokens: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;

    #[test]
    fn estimates_follow_the_documented_rule() {
        assert_eq!(estimate_tokens(""), 0);
        assert_eq!(estimate_tokens("abcd"), 1);
        assert_eq!(estimate_tokens("abcde"), 2);
        assert_eq!(estimate_tokens("éééé"), 1, "characters, not bytes");
        let prompt = [Message::system("abcdefgh"), Message::user("abc")];
        assert_eq!(estimate_prompt_tokens(&prompt), (2 + 4) + (1 + 4) + 3);
        let usage = estimate_usage(14, "hello world");
        assert_eq!(
            (
                usage.prompt_tokens,
                usage.completion_tokens,
                usage.total_tokens
            ),
            (14, 3, 17)
        );
    }
}
