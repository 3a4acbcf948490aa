//! The fake's scripts served in-process, through the provider trait.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::StreamExt;
use moa_core::{BoxChunkStream, ChatRequest, Chunk, Provider, ProviderError};
use serde_json::{json, Value};

use crate::reply::{Reply, ReplyKind};
use crate::script::{EndGuard, Ending, Recorded, Script};

/// A provider that answers from a script without any I/O, recording each request as the JSON
/// body an OpenAI-compatible client would send.
#[derive(Clone)]
pub struct ScriptedProvider {
    name: String,
    script: Arc<Script>,
    context: Option<u64>,
}

impl ScriptedProvider {
    /// A provider called `name` (the `provider` in `provider:model`).
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            script: Script::new(),
            context: None,
        }
    }

    /// Says every model has a context window of `tokens` (see `Provider::context_window`).
    pub fn with_context_window(mut self, tokens: u64) -> Self {
        self.context = Some(tokens);
        self
    }

    /// Queues `reply` for the next request naming `model` (the id without the provider prefix).
    pub fn push(&self, model: &str, reply: Reply) {
        self.script.push(model, reply);
    }

    /// Answers requests with no queued reply by calling `responder`.
    pub fn respond_with(&self, responder: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) {
        self.script.respond_with(responder);
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.script.requests()
    }

    /// Waits until `count` requests have arrived.
    pub async fn wait_for_requests(&self, count: usize) {
        self.script.wait_for_requests(count).await;
    }

    /// Waits until the answer to request `seq` has ended, and says how.
    pub async fn wait_ending(&self, seq: usize) -> Ending {
        self.script.wait_ending(seq).await
    }

    /// How each ended answer ended.
    pub fn endings(&self) -> Vec<(usize, Ending)> {
        self.script.endings()
    }
}

fn request_json(request: &ChatRequest) -> Value {
    let mut body = json!({"model": request.model, "messages": request.messages});
    if let Some(t) = request.temperature {
        body["temperature"] = json!(t);
    }
    if let Some(m) = request.max_tokens {
        body["max_tokens"] = json!(m);
    }
    for (k, v) in &request.extra {
        body[k] = v.clone();
    }
    body
}

impl Provider for ScriptedProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn context_window(&self, _model: &str) -> Option<u64> {
        self.context
    }

    fn stream(&self, request: ChatRequest) -> BoxChunkStream {
        let json = request_json(&request);
        let prompt_bytes: usize = request.messages.iter().map(|m| m.content.len()).sum();
        let recorded = Recorded {
            seq: 0,
            model: request.model.clone(),
            path: "in-process".into(),
            headers: Vec::new(),
            body: Bytes::from(json.to_string()),
            json,
            received_at: Instant::now(),
        };
        let (seq, reply) = self.script.record(recorded);
        let guard = EndGuard {
            script: self.script.clone(),
            seq,
            completed: false,
        };
        let script = self.script.clone();
        let provider = self.name.clone();
        futures::stream::once(async move {
            script.gate(&reply).await;
            answer(reply, provider, prompt_bytes, guard)
        })
        .flatten()
        .boxed()
    }
}

fn answer(
    reply: Reply,
    provider: String,
    prompt_bytes: usize,
    mut guard: EndGuard,
) -> BoxChunkStream {
    let text = match &reply.kind {
        ReplyKind::Text(t) | ReplyKind::Stall(t) | ReplyKind::Disconnect(t) => t.clone(),
        ReplyKind::Status { status, body } => {
            guard.finish();
            let message = serde_json::from_str::<Value>(body)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                .unwrap_or_else(|| body.clone());
            let error = ProviderError::Status {
                provider,
                status: *status,
                message,
                body: body.clone(),
                attempts: 1,
            };
            return futures::stream::iter([Err(error)]).boxed();
        }
        ReplyKind::StreamError { kind, message } => {
            guard.finish();
            let error = ProviderError::Upstream {
                provider,
                message: format!("{kind}: {message}"),
            };
            return futures::stream::iter([Err(error)]).boxed();
        }
        ReplyKind::Endless { .. } => {
            guard.finish();
            let error = ProviderError::TooLarge {
                provider,
                message: "scripted endless answer".into(),
            };
            return futures::stream::iter([Err(error)]).boxed();
        }
        ReplyKind::Malformed(raw) => {
            guard.finish();
            let error = ProviderError::Malformed {
                provider,
                message: "scripted malformed answer".into(),
                raw: raw.clone(),
            };
            return futures::stream::iter([Err(error)]).boxed();
        }
    };
    let deltas: Vec<Result<Chunk, ProviderError>> = reply
        .pieces(&text)
        .into_iter()
        .map(|p| Ok(Chunk::Delta(p.to_string())))
        .collect();
    let delay = reply.chunk_delay;
    let deltas = futures::stream::iter(deltas).then(move |chunk| async move {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        chunk
    });
    let usage = reply.usage_for(prompt_bytes, &text);
    let tail = futures::stream::once(async move {
        let result = match reply.kind {
            ReplyKind::Stall(_) => {
                std::future::pending::<()>().await;
                unreachable!("pending never completes")
            }
            ReplyKind::Disconnect(_) => Err(ProviderError::Connection {
                provider,
                message: "scripted disconnect".into(),
                attempts: 1,
            }),
            _ => Ok(Chunk::Finished {
                finish_reason: reply.finish_reason.clone(),
                usage,
            }),
        };
        guard.finish();
        drop(guard);
        result
    });
    deltas.chain(tail).boxed()
}
