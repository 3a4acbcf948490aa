//! Decodes ConverseStream's event-stream messages: `contentBlockDelta` text, `messageStop`'s
//! stop reason, `metadata`'s usage; exception messages (`throttlingException`, ...) as failures.

use moa_core::ProviderError;
use serde_json::Value;

use super::eventstream::{self, Message};
use super::wire::{self, StreamPayload};
use crate::http::{Decode, Events};

#[derive(Default)]
pub(super) struct Decoder {
    frames: eventstream::Decoder,
    /// Content block index → tool call index, for the blocks that are tool calls.
    tool_blocks: Vec<(usize, usize)>,
}

/// Exceptions another attempt may not meet.
const TRANSIENT: [&str; 4] = [
    "throttlingException",
    "serviceUnavailableException",
    "internalServerException",
    "modelStreamErrorException",
];

impl Decoder {
    fn handle(&mut self, message: Message, out: &mut Events) {
        if out.ended() {
            return;
        }
        let payload: StreamPayload = match serde_json::from_slice(&message.payload) {
            Ok(p) => p,
            Err(e) => {
                let raw = String::from_utf8_lossy(&message.payload).into_owned();
                return out.malformed(format!("invalid JSON in event: {e}"), &raw);
            }
        };
        match message.header(":message-type") {
            Some("exception") => {
                let kind = message.header(":exception-type").unwrap_or("exception");
                let error = ProviderError::Upstream {
                    provider: out.provider.clone(),
                    message: format!("{kind}: {}", payload.message.unwrap_or_default()),
                };
                if TRANSIENT.contains(&kind) {
                    out.fail_retryable(error);
                } else {
                    out.fail(error);
                }
            }
            Some("error") => {
                let code = message.header(":error-code").unwrap_or("error");
                let text = message.header(":error-message").unwrap_or_default();
                out.upstream(format!("{code}: {text}"));
            }
            _ => match message.header(":event-type") {
                Some("contentBlockStart") => {
                    let start = payload.start.and_then(|s| s.tool_use);
                    if let (Some(tool), Some(index)) = (start, payload.index) {
                        let call = self.tool_blocks.len();
                        self.tool_blocks.push((index, call));
                        out.tool_call(call, tool.id, tool.name, String::new());
                    }
                }
                Some("contentBlockDelta") => {
                    let Some(delta) = payload.delta else { return };
                    if let Some(text) = delta.text {
                        out.delta(text);
                    }
                    // A tool call's input arrives as pieces of a JSON text.
                    let piece = delta.tool_use.and_then(|t| t.input);
                    let call = self
                        .tool_blocks
                        .iter()
                        .find(|(block, _)| Some(*block) == payload.index)
                        .map(|(_, call)| *call);
                    if let (Some(Value::String(piece)), Some(call)) = (piece, call) {
                        out.tool_call(call, None, None, piece);
                    }
                }
                Some("messageStop") => {
                    if let Some(reason) = payload.stop_reason {
                        out.finish_reason = Some(wire::finish_reason(&reason));
                    }
                }
                Some("metadata") => {
                    if let Some(usage) = payload.usage {
                        out.usage = Some(usage.into());
                    }
                }
                // messageStart, contentBlockStart/Stop, and event types added later.
                _ => {}
            },
        }
    }
}

impl Decode for Decoder {
    fn feed(&mut self, bytes: &[u8], out: &mut Events) {
        match self.frames.feed(bytes) {
            Ok(messages) => {
                for message in messages {
                    self.handle(message, out);
                }
            }
            Err(e) => out.malformed(e.to_string(), ""),
        }
    }

    fn end(&mut self, out: &mut Events) {
        if let Err(e) = self.frames.finish() {
            out.malformed(e.to_string(), "");
        }
    }
}
