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
        body["usage"] = json!(usage);
    }
    if let Some(top) = &reply.top_logprobs {
        let top: Vec<Value> = top
            .iter()
            .map(|(token, logprob)| json!({"token": token, "logprob": logprob, "bytes": token.as_bytes()}))
            .collect();
        let first = top
            .first()
            .cloned()
            .unwrap_or(json!({"token": text, "logprob": 0.0}));
        body["choices"][0]["logprobs"] = json!({"content": [{
            "token": first["token"], "logprob": first["logprob"], "bytes": first["bytes"],
            "top_logprobs": top,
        }], "refusal": null});
    }
    body
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
    for piece in reply.pieces(text) {
        frames.push(chunk(ctx, choice(json!({"content": piece}), None)));
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
                "usage": usage,
            });
            frames.push(Bytes::from(format!("data: {frame}\n\n")));
        }
    }
    frames
}
