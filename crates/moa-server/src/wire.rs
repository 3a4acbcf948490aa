//! The chat-completions request as clients send it, and the response and chunk shapes they expect.

use moa_core::{Message, Trace, Usage};
use serde::Deserialize;
use serde_json::{json, Value};

/// `POST /v1/chat/completions`, tolerant of fields moa does not use (tools, n=1, user, ...).
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<Message>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub max_completion_tokens: Option<u32>,
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// moa's extension: `{"moa": {"include_proposals": true}}` adds the proposers' answers.
    #[serde(default)]
    pub moa: Option<Extension>,
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

#[derive(Debug, Default, Deserialize)]
pub struct Extension {
    #[serde(default)]
    pub include_proposals: bool,
}

impl ChatRequest {
    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage)
    }

    pub fn include_proposals(&self) -> bool {
        self.moa.as_ref().is_some_and(|m| m.include_proposals)
    }
}

/// What identifies one response across its chunks.
pub struct Envelope {
    pub id: String,
    pub created: u64,
    pub model: String,
}

fn usage_json(usage: &Usage) -> Value {
    json!({
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    })
}

/// The extension's block: every proposer's answer and usage per model.
pub fn proposals(trace: &Trace) -> Value {
    json!({
        "preset": trace.preset,
        "layers": trace.layers,
        "usage_by_model": trace.usage_by_model,
    })
}

/// A whole `chat.completion`.
pub fn completion(env: &Envelope, trace: &Trace, with_proposals: bool) -> Value {
    let mut body = json!({
        "id": env.id,
        "object": "chat.completion",
        "created": env.created,
        "model": env.model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": trace.answer},
            "logprobs": null,
            "finish_reason": trace.aggregator.finish_reason.clone().unwrap_or_else(|| "stop".into()),
        }],
        "usage": usage_json(&trace.usage),
    });
    if with_proposals {
        body["moa"] = proposals(trace);
    }
    body
}

/// One `chat.completion.chunk` as an SSE frame.
pub fn chunk(env: &Envelope, choices: Value, extra: Option<(&str, Value)>) -> bytes::Bytes {
    let mut body = json!({
        "id": env.id,
        "object": "chat.completion.chunk",
        "created": env.created,
        "model": env.model,
        "choices": choices,
    });
    if let Some((key, value)) = extra {
        body[key] = value;
    }
    bytes::Bytes::from(format!("data: {body}\n\n"))
}

/// A content delta.
pub fn delta(env: &Envelope, delta: Value) -> bytes::Bytes {
    chunk(
        env,
        json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": null}]),
        None,
    )
}

/// The chunk that closes the choice.
pub fn finish(env: &Envelope, reason: &str) -> bytes::Bytes {
    chunk(
        env,
        json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": reason}]),
        None,
    )
}

/// The usage chunk (`choices` empty), as OpenAI sends it with include_usage.
pub fn usage_chunk(env: &Envelope, usage: &Usage) -> bytes::Bytes {
    chunk(env, json!([]), Some(("usage", usage_json(usage))))
}
