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
    /// `data: {"id":…,"object":"chat.completion.chunk","created":…,"model":…,"choices":[{"index":0,"delta":{"content":`
    /// built once, so each content delta costs one allocation and one string escape.
    delta_prefix: String,
}

impl Envelope {
    pub fn new(id: String, created: u64, model: String) -> Self {
        let head = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model});
        let mut delta_prefix = format!("data: {head}");
        delta_prefix.pop(); // the closing brace: choices follow
        delta_prefix.push_str(r#","choices":[{"index":0,"delta":{"content":"#);
        Self {
            id,
            created,
            model,
            delta_prefix,
        }
    }
}

const DELTA_SUFFIX: &str = "},\"logprobs\":null,\"finish_reason\":null}]}\n\n";

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
        "cost_by_model": trace.cost_by_model,
        "cost": trace.cost,
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

/// The first chunk: the assistant role and empty content.
pub fn opening(env: &Envelope) -> bytes::Bytes {
    chunk(
        env,
        json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]),
        None,
    )
}

/// A content delta: the envelope's prefix, the text as a JSON string, the fixed suffix.
pub fn delta(env: &Envelope, text: &str) -> bytes::Bytes {
    let mut frame =
        Vec::with_capacity(env.delta_prefix.len() + text.len() + 2 + DELTA_SUFFIX.len() + 8);
    frame.extend_from_slice(env.delta_prefix.as_bytes());
    // Writing a str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut frame, text);
    frame.extend_from_slice(DELTA_SUFFIX.as_bytes());
    bytes::Bytes::from(frame)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delta_frame_is_the_chunk_json_with_the_text_escaped() {
        let env = Envelope::new("chatcmpl-1".into(), 7, "m\"x".into());
        for text in [
            "plain",
            "quote \" backslash \\ newline \n tab \t",
            "é ✓ 🦀",
            "\u{1}",
        ] {
            let frame = delta(&env, text);
            let frame = std::str::from_utf8(&frame).unwrap();
            let body = frame
                .strip_prefix("data: ")
                .and_then(|f| f.strip_suffix("\n\n"))
                .unwrap();
            let parsed: Value = serde_json::from_str(body).unwrap();
            assert_eq!(
                parsed,
                json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": "m\"x",
                    "choices": [{"index": 0, "delta": {"content": text}, "logprobs": null, "finish_reason": null}]})
            );
        }
    }
}
