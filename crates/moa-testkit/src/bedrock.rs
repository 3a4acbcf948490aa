//! Bedrock's Converse shapes: the whole response, and ConverseStream's events in AWS's binary
//! event-stream framing (encoded here independently of moa's decoder).

use axum::body::Bytes;
use serde_json::{json, Value};

use crate::reply::Reply;
use crate::server::Ctx;

fn stop_reason(reply: &Reply) -> Option<&str> {
    reply.finish_reason.as_deref().map(|r| match r {
        "stop" => "end_turn",
        "length" => "max_tokens",
        "tool_calls" => "tool_use",
        other => other,
    })
}

fn usage_json(reply: &Reply, ctx: &Ctx, text: &str) -> Option<Value> {
    reply.usage_for(ctx.prompt_bytes, text).map(|u| {
        // Converse counts cache reads apart from `inputTokens`.
        json!({"inputTokens": u.prompt_tokens - u.cached_tokens, "cacheReadInputTokens": u.cached_tokens,
               "outputTokens": u.completion_tokens, "totalTokens": u.total_tokens})
    })
}

pub(crate) fn converse(reply: &Reply, ctx: &Ctx, text: &str) -> Value {
    let mut body = json!({
        "output": {"message": {"role": "assistant", "content": [{"text": text}]}},
        "stopReason": stop_reason(reply),
        "metrics": {"latencyMs": 1},
    });
    for (id, name, args) in &reply.tool_calls {
        let input: Value = serde_json::from_str(args).unwrap_or_else(|_| json!({}));
        if let Some(content) = body["output"]["message"]["content"].as_array_mut() {
            content.push(json!({"toolUse": {"toolUseId": id, "name": name, "input": input}}));
        }
    }
    if let Some(usage) = usage_json(reply, ctx, text) {
        body["usage"] = usage;
    }
    body
}

/// One event-stream message with string headers.
pub fn frame(headers: &[(&str, &str)], payload: &[u8]) -> Bytes {
    let mut block = Vec::new();
    for (name, value) in headers {
        block.push(name.len() as u8);
        block.extend_from_slice(name.as_bytes());
        block.push(7); // string
        block.extend_from_slice(&(value.len() as u16).to_be_bytes());
        block.extend_from_slice(value.as_bytes());
    }
    let total = (12 + block.len() + payload.len() + 4) as u32;
    let mut out = Vec::with_capacity(total as usize);
    out.extend_from_slice(&total.to_be_bytes());
    out.extend_from_slice(&(block.len() as u32).to_be_bytes());
    let prelude_crc = crc32(&out);
    out.extend_from_slice(&prelude_crc.to_be_bytes());
    out.extend_from_slice(&block);
    out.extend_from_slice(payload);
    let message_crc = crc32(&out);
    out.extend_from_slice(&message_crc.to_be_bytes());
    Bytes::from(out)
}

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320), bit by bit: slow and obviously right.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= byte as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// An event of `kind` with a JSON payload.
pub(crate) fn event(kind: &str, payload: &[u8]) -> Bytes {
    frame(
        &[
            (":event-type", kind),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        payload,
    )
}

/// An exception message (`throttlingException`, ...), as ConverseStream sends mid-stream.
pub(crate) fn exception(kind: &str, message: &str) -> Bytes {
    frame(
        &[
            (":exception-type", kind),
            (":content-type", "application/json"),
            (":message-type", "exception"),
        ],
        json!({"message": message}).to_string().as_bytes(),
    )
}

pub(crate) fn frames(reply: &Reply, ctx: &Ctx, text: &str, complete: bool) -> Vec<Bytes> {
    let p = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0";
    let mut frames = vec![event(
        "messageStart",
        json!({"role": "assistant", "p": p}).to_string().as_bytes(),
    )];
    for piece in reply.pieces(text) {
        let payload = json!({"contentBlockIndex": 0, "delta": {"text": piece}, "p": p});
        frames.push(event("contentBlockDelta", payload.to_string().as_bytes()));
    }
    if !complete {
        return frames;
    }
    frames.push(event(
        "contentBlockStop",
        json!({"contentBlockIndex": 0, "p": p})
            .to_string()
            .as_bytes(),
    ));
    // Tool calls as ConverseStream sends them: a block each, its input in JSON pieces.
    for (i, (id, name, args)) in reply.tool_calls.iter().enumerate() {
        let index = i + 1;
        let start = json!({"contentBlockIndex": index,
                           "start": {"toolUse": {"toolUseId": id, "name": name}}, "p": p});
        frames.push(event("contentBlockStart", start.to_string().as_bytes()));
        for piece in reply.pieces(args) {
            let delta = json!({"contentBlockIndex": index,
                               "delta": {"toolUse": {"input": piece}}, "p": p});
            frames.push(event("contentBlockDelta", delta.to_string().as_bytes()));
        }
        let stop = json!({"contentBlockIndex": index, "p": p});
        frames.push(event("contentBlockStop", stop.to_string().as_bytes()));
    }
    frames.push(event(
        "messageStop",
        json!({"stopReason": stop_reason(reply), "p": p})
            .to_string()
            .as_bytes(),
    ));
    let mut metadata = json!({"metrics": {"latencyMs": 1}, "p": p});
    if let Some(usage) = usage_json(reply, ctx, text) {
        metadata["usage"] = usage;
    }
    frames.push(event("metadata", metadata.to_string().as_bytes()));
    frames
}

#[cfg(test)]
mod tests {
    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(super::crc32(b"123456789"), 0xCBF4_3926);
    }
}
