//! OpenAI's chat-completions shapes: the whole response and the SSE chunks.

use axum::body::Bytes;
use serde_json::{json, Value};

use crate::reply::Reply;
use crate::server::Ctx;

pub(crate) fn completion(reply: &Reply, ctx: &Ctx, text: &str) -> Value {
    let mut body = json!({
        "id": format!("chatcmpl-fake-{}", ctx.seq),
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": ctx.model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": reply.finish_reason,
        }],
    });
    if !reply.tool_calls.is_empty() {
        let calls: Vec<Value> = reply
            .tool_calls
            .iter()
            .map(|(id, name, args)| {
                json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}})
            })
            .collect();
        body["choices"][0]["message"]["tool_calls"] = json!(calls);
        if text.is_empty() {
            body["choices"][0]["message"]["content"] = Value::Null;
        }
    }
    if let Some(usage) = reply.usage_for(ctx.prompt_bytes, text) {
        body["usage"] = usage_json(&usage);
    }
    if ctx.logprobs {
        body["choices"][0]["logprobs"] = logprobs(reply, &reply.pieces(text), 0);
    }
    body
}

/// `choices[].logprobs` for `pieces` of the answer, the first of them piece number `first`, as
/// llama.cpp's server (llama-cpp-python 0.3.36, run beside these tests) writes them: one entry
/// per token (here: per piece), each with its alternatives, `bytes` null. Piece `i` has log
/// probability `-0.25 (i + 1)` and itself as its only alternative, except that the answer's
/// first token is [`Reply::top_logprobs`]' first when the reply has them.
pub(crate) fn logprobs(reply: &Reply, pieces: &[&str], first: usize) -> Value {
    let entry =
        |token: &str, logprob: f64| json!({"token": token, "logprob": logprob, "bytes": null});
    let content: Vec<Value> = pieces
        .iter()
        .enumerate()
        .map(|(i, piece)| {
            let position = first + i;
            let top: Vec<Value> = match (&reply.top_logprobs, position) {
                (Some(top), 0) if !top.is_empty() => {
                    top.iter().map(|(t, l)| entry(t, *l)).collect()
                }
                _ => vec![entry(piece, -0.25 * (position + 1) as f64)],
            };
            let mut e = top[0].clone();
            e["top_logprobs"] = json!(top);
            e
        })
        .collect();
    json!({"content": content, "refusal": null})
}

/// OpenAI's usage object: cached prompt tokens under `prompt_tokens_details`.
fn usage_json(usage: &moa_core::Usage) -> Value {
    let mut json = json!({"prompt_tokens": usage.prompt_tokens,
                          "completion_tokens": usage.completion_tokens,
                          "total_tokens": usage.total_tokens});
    if usage.cached_tokens > 0 {
        json["prompt_tokens_details"] = json!({"cached_tokens": usage.cached_tokens});
    }
    json
}

fn chunk(ctx: &Ctx, choices: Value) -> Bytes {
    let chunk = json!({
        "id": format!("chatcmpl-fake-{}", ctx.seq),
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": ctx.model,
        "choices": choices,
    });
    Bytes::from(format!("data: {chunk}\n\n"))
}

pub(crate) fn frames(reply: &Reply, ctx: &Ctx, text: &str, complete: bool) -> Vec<Bytes> {
    // One choice; llama.cpp adds `"logprobs": null` to each.
    let choice = |delta: Value, finish_reason: Option<&str>| {
        let mut choice = json!({"index": 0, "delta": delta, "finish_reason": finish_reason});
        if reply.llamacpp {
            choice["logprobs"] = Value::Null;
        }
        json!([choice])
    };
    // OpenAI opens with an empty content; llama.cpp with the role alone.
    let opening = match reply.llamacpp {
        true => json!({"role": "assistant"}),
        false => json!({"role": "assistant", "content": ""}),
    };
    let mut frames = vec![chunk(ctx, choice(opening, None))];
    for (i, piece) in reply.pieces(text).into_iter().enumerate() {
        let mut choices = choice(json!({"content": piece}), None);
        if ctx.logprobs {
            choices[0]["logprobs"] = logprobs(reply, &[piece], i);
        }
        frames.push(chunk(ctx, choices));
    }
    for (index, (id, name, args)) in reply.tool_calls.iter().enumerate() {
        let first = json!({"index": index, "id": id, "type": "function",
                           "function": {"name": name, "arguments": ""}});
        frames.push(chunk(ctx, choice(json!({"tool_calls": [first]}), None)));
        for piece in reply.pieces(args) {
            let more = json!({"index": index, "function": {"arguments": piece}});
            frames.push(chunk(ctx, choice(json!({"tool_calls": [more]}), None)));
        }
    }
    if !complete {
        return frames;
    }
    if let Some(reason) = &reply.finish_reason {
        frames.push(chunk(ctx, choice(json!({}), Some(reason))));
    }
    if ctx.include_usage && !reply.llamacpp {
        if let Some(usage) = reply.usage_for(ctx.prompt_bytes, text) {
            let frame = json!({
                "id": format!("chatcmpl-fake-{}", ctx.seq),
                "object": "chat.completion.chunk",
                "created": 1_700_000_000,
                "model": ctx.model,
                "choices": [],
                "usage": usage_json(&usage),
            });
            frames.push(Bytes::from(format!("data: {frame}\n\n")));
        }
    }
    frames
}
