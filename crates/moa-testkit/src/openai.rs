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
    let mut frames = vec![chunk(
        ctx,
        json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]),
    )];
    for piece in reply.pieces(text) {
        frames.push(chunk(
            ctx,
            json!([{"index": 0, "delta": {"content": piece}, "finish_reason": null}]),
        ));
    }
    if !complete {
        return frames;
    }
    if let Some(reason) = &reply.finish_reason {
        frames.push(chunk(
            ctx,
            json!([{"index": 0, "delta": {}, "finish_reason": reason}]),
        ));
    }
    if ctx.include_usage {
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
