//! Decodes a streamed chat-completions response (SSE, `data: [DONE]` at the end) into chunks.

use super::wire::WireResponse;
use crate::http::{error_message, Decode, Events};
use crate::sse::{SseDecoder, SseEvent};

#[derive(Default)]
pub(super) struct Decoder {
    sse: SseDecoder,
}

impl Decoder {
    fn handle(event: SseEvent, out: &mut Events) {
        if out.ended() {
            return;
        }
        let data = event.data.trim();
        if data == "[DONE]" {
            return out.finish();
        }
        if data.is_empty() {
            return;
        }
        let chunk: WireResponse = match serde_json::from_str(data) {
            Ok(chunk) => chunk,
            Err(e) => return out.malformed(format!("invalid JSON in stream: {e}"), data),
        };
        if let Some(error) = chunk.error {
            return out.upstream(error_message(
                &serde_json::json!({ "error": error }).to_string(),
            ));
        }
        if let Some(usage) = chunk.usage {
            out.usage = Some(usage.into());
        }
        for choice in chunk.choices {
            let Some(delta) = choice.delta.or(choice.message) else {
                if let Some(reason) = choice.finish_reason.filter(|r| !r.is_empty()) {
                    out.finish_reason = Some(reason);
                }
                continue;
            };
            if let Some(text) = delta.content {
                out.delta(text);
            }
            if let Some(tokens) = choice.logprobs.and_then(|l| l.content) {
                out.logprobs(tokens);
            }
            for (position, call) in delta.tool_calls.unwrap_or_default().into_iter().enumerate() {
                let function = call.function.unwrap_or_default();
                out.tool_call(
                    call.index.unwrap_or(position),
                    call.id,
                    function.name,
                    function.arguments.unwrap_or_default(),
                );
            }
            if let Some(reason) = choice.finish_reason.filter(|r| !r.is_empty()) {
                out.finish_reason = Some(reason);
            }
        }
    }
}

impl Decode for Decoder {
    fn feed(&mut self, bytes: &[u8], out: &mut Events) {
        for event in out.sse(self.sse.feed(bytes)) {
            Self::handle(event, out);
        }
    }

    fn end(&mut self, out: &mut Events) {
        for event in out.sse(self.sse.finish()) {
            Self::handle(event, out);
        }
    }
}
