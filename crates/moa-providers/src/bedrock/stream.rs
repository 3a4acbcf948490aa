//! Decodes ConverseStream's event-stream messages: `contentBlockDelta` text, `messageStop`'s
//! stop reason, `metadata`'s usage; exception messages (`throttlingException`, ...) as failures.

use moa_core::ProviderError;

use super::eventstream::{self, Message};
use super::wire::{self, StreamPayload};
use crate::http::{Decode, Events};

#[derive(Default)]
pub(super) struct Decoder {
    frames: eventstream::Decoder,
}

/// Exceptions another attempt may not meet.
const TRANSIENT: [&str; 4] = [
    "throttlingException",
    "serviceUnavailableException",
    "internalServerException",
    "modelStreamErrorException",
];

impl Decoder {
    fn handle(message: Message, out: &mut Events) {
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
                Some("contentBlockDelta") => {
                    if let Some(text) = payload.delta.and_then(|d| d.text) {
                        out.delta(text);
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
                    Self::handle(message, out);
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
