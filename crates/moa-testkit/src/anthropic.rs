//! Anthropic's Messages API shapes: the whole message and the SSE events of a stream.

use axum::body::Bytes;
use serde_json::{json, Value};

use crate::reply::Reply;
use crate::server::Ctx;

/// OpenAI's finish reasons (what scripts say) in Anthropic's words.
fn stop_reason(reply: &Reply) -> Option<&str> {
    reply.finish_reason.as_deref().map(|r| match r {
        "stop" => "end_turn",
        "length" => "max_tokens",
        "tool_calls" => "tool_use",
        other => other,
    })
}

pub(crate) fn message(reply: &Reply, ctx: &Ctx, text: &str) -> Value {
    let mut body = json!({
        "id": format!("msg_fake_{}", ctx.seq),
        "type": "message",
        "role": "assistant",
        "model": ctx.model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": stop_reason(reply),
        "stop_sequence": null,
    });
    for (id, name, args) in &reply.tool_calls {
        let input: Value = serde_json::from_str(args).unwrap_or_else(|_| json!({}));
        if let Some(content) = body["content"].as_array_mut() {
            content.push(json!({"type": "tool_use", "id": id, "name": name, "input": input}));
        }
    }
    if let Some(usage) = reply.usage_for(ctx.prompt_bytes, text) {
        body["usage"] = json!({"input_tokens": usage.prompt_tokens - usage.cached_tokens,
                               "cache_read_input_tokens": usage.cached_tokens,
                               "output_tokens": usage.completion_tokens});
    }
    body
}

fn event(name: &str, data: Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

pub(crate) fn frames(reply: &Reply, ctx: &Ctx, text: &str, complete: bool) -> Vec<Bytes> {
    let usage = reply.usage_for(ctx.prompt_bytes, text);
    let mut start = json!({
        "type": "message_start",
        "message": {
            "id": format!("msg_fake_{}", ctx.seq), "type": "message", "role": "assistant",
            "model": ctx.model, "content": [], "stop_reason": null, "stop_sequence": null,
        },
    });
    if let Some(u) = usage {
        // As the API does: input counted at the start, output so far (1) until the end.
        // Anthropic counts cache reads apart from `input_tokens`.
        start["message"]["usage"] = json!({"input_tokens": u.prompt_tokens - u.cached_tokens,
                                           "cache_read_input_tokens": u.cached_tokens,
                                           "output_tokens": 1});
    }
    let mut frames = vec![
        event("message_start", start),
        event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        event("ping", json!({"type": "ping"})),
    ];
    for piece in reply.pieces(text) {
        frames.push(event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}),
        ));
    }
    if !complete {
        return frames;
    }
    frames.push(event(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    // Tool calls as the API streams them: one block each, its input in JSON pieces.
    for (i, (id, name, args)) in reply.tool_calls.iter().enumerate() {
        let index = i + 1;
        frames.push(event(
            "content_block_start",
            json!({"type": "content_block_start", "index": index,
                   "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}}),
        ));
        for piece in reply.pieces(args) {
            frames.push(event(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": index,
                       "delta": {"type": "input_json_delta", "partial_json": piece}}),
            ));
        }
        frames.push(event(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": index}),
        ));
    }
    let mut delta = json!({
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason(reply), "stop_sequence": null},
    });
    if let Some(u) = usage {
        delta["usage"] = json!({"output_tokens": u.completion_tokens});
    }
    frames.push(event("message_delta", delta));
    frames.push(event("message_stop", json!({"type": "message_stop"})));
    frames
}
