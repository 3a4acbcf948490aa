//! Decodes the Messages API's SSE stream: text from `content_block_delta` events, input tokens
//! from `message_start`, output tokens and the stop reason from `message_delta`, the end at
//! `message_stop`, and `error` events (such as `overloaded_error` mid-stream) as failures.

use super::wire::{self, WireEvent};
use moa_core::ProviderError;

use crate::http::{error_message, Decode, Events};
use crate::sse::{SseDecoder, SseEvent};

#[derive(Default)]
pub(super) struct Decoder {
    sse: SseDecoder,
    input_tokens: Option<u64>,
    cached_tokens: Option<u64>,
    output_tokens: Option<u64>,
    /// Content block index → tool call index, for the blocks that are `tool_use`.
    tool_blocks: Vec<(usize, usize)>,
}

impl Decoder {
    fn handle(&mut self, event: SseEvent, out: &mut Events) {
        if out.ended() {
            return;
        }
        let data = event.data.trim();
        if data.is_empty() {
            return;
        }
        let parsed: WireEvent = match serde_json::from_str(data) {
            Ok(parsed) => parsed,
            Err(e) => return out.malformed(format!("invalid JSON in stream: {e}"), data),
        };
        match parsed.kind.as_str() {
            "message_start" => {
                if let Some(usage) = parsed.message.and_then(|m| m.usage) {
                    self.input_tokens = usage.input().or(self.input_tokens);
                    self.cached_tokens = usage.cached().or(self.cached_tokens);
                    self.output_tokens = usage.output_tokens.or(self.output_tokens);
                }
            }
            "content_block_start" => {
                let block = parsed.content_block.filter(|b| b.kind == "tool_use");
                if let (Some(block), Some(index)) = (block, parsed.index) {
                    let call = self.tool_blocks.len();
                    self.tool_blocks.push((index, call));
                    out.tool_call(call, block.id, block.name, String::new());
                }
            }
            "content_block_delta" => match parsed.delta {
                Some(delta) if delta.kind == "text_delta" => {
                    out.delta(delta.text.unwrap_or_default())
                }
                Some(delta) if delta.kind == "input_json_delta" => {
                    let call = self
                        .tool_blocks
                        .iter()
                        .find(|(block, _)| Some(*block) == parsed.index)
                        .map(|(_, call)| *call);
                    if let Some(call) = call {
                        out.tool_call(call, None, None, delta.partial_json.unwrap_or_default());
                    }
                }
                _ => {}
            },
            "message_delta" => {
                if let Some(reason) = parsed.delta.and_then(|d| d.stop_reason) {
                    out.finish_reason = Some(wire::finish_reason(&reason));
                }
                if let Some(usage) = parsed.usage {
                    // Output tokens here are cumulative; input may be restated.
                    self.output_tokens = usage.output_tokens.or(self.output_tokens);
                    self.input_tokens = usage.input().or(self.input_tokens);
                    self.cached_tokens = usage.cached().or(self.cached_tokens);
                }
            }
            "message_stop" => {
                self.record_usage(out);
                out.finish();
            }
            "error" => {
                let message = error_message(data);
                let error = ProviderError::Upstream {
                    provider: out.provider.clone(),
                    message,
                };
                // Overload and rate limits mid-stream are transient; a bad request is not.
                match parsed.error.as_ref().and_then(|e| e["type"].as_str()) {
                    Some("overloaded_error" | "rate_limit_error" | "api_error") => {
                        out.fail_retryable(error)
                    }
                    _ => out.fail(error),
                }
            }
            // ping, content_block_start/stop, and event types added later.
            _ => {}
        }
    }

    fn record_usage(&self, out: &mut Events) {
        if self.input_tokens.is_some() || self.output_tokens.is_some() {
            out.usage = Some(wire::usage(
                self.input_tokens.unwrap_or(0),
                self.output_tokens.unwrap_or(0),
                self.cached_tokens.unwrap_or(0),
            ));
        }
    }
}

impl Decode for Decoder {
    fn feed(&mut self, bytes: &[u8], out: &mut Events) {
        for event in out.sse(self.sse.feed(bytes)) {
            self.handle(event, out);
        }
    }

    fn end(&mut self, out: &mut Events) {
        for event in out.sse(self.sse.finish()) {
            self.handle(event, out);
        }
        self.record_usage(out);
    }
}
