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
            if let Some(text) = choice.delta.or(choice.message).and_then(|d| d.content) {
                out.delta(text);
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
