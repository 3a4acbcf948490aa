//! Turns a streamed chat-completions response (SSE) into chunks.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use moa_core::{Chunk, ProviderError, Usage};
use tokio::sync::OwnedSemaphorePermit;

use super::describe;
use super::wire::{error_message, truncate, WireResponse};
use crate::sse::{SseDecoder, SseEvent};

/// The chunks of one streamed response. Holds the concurrency permit until dropped; dropping it
/// drops the response body, which closes the connection.
pub(super) struct ChunkStream {
    provider: String,
    body: BoxStream<'static, reqwest::Result<Bytes>>,
    decoder: SseDecoder,
    pending: VecDeque<Result<Chunk, ProviderError>>,
    finish_reason: Option<String>,
    usage: Option<Usage>,
    /// `Finished` (or an error) has been queued; nothing more is yielded after `pending`.
    ended: bool,
    /// The body has ended.
    eof: bool,
    _permit: Option<OwnedSemaphorePermit>,
}

impl ChunkStream {
    pub fn new(
        provider: String,
        response: reqwest::Response,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Self {
        Self {
            provider,
            body: response.bytes_stream().boxed(),
            decoder: SseDecoder::new(),
            pending: VecDeque::new(),
            finish_reason: None,
            usage: None,
            ended: false,
            eof: false,
            _permit: permit,
        }
    }

    fn finish(&mut self) {
        if !self.ended {
            self.ended = true;
            self.pending.push_back(Ok(Chunk::Finished {
                finish_reason: self.finish_reason.take(),
                usage: self.usage.take(),
            }));
        }
    }

    fn fail(&mut self, error: ProviderError) {
        if !self.ended {
            self.ended = true;
            self.pending.push_back(Err(error));
        }
    }

    fn handle(&mut self, event: SseEvent) {
        if self.ended {
            return;
        }
        let data = event.data.trim();
        if data == "[DONE]" {
            self.finish();
            return;
        }
        if data.is_empty() {
            return;
        }
        let chunk: WireResponse = match serde_json::from_str(data) {
            Ok(chunk) => chunk,
            Err(e) => {
                let error = ProviderError::Malformed {
                    provider: self.provider.clone(),
                    message: format!("invalid JSON in stream: {e}"),
                    raw: truncate(data, 2000),
                };
                return self.fail(error);
            }
        };
        if let Some(error) = chunk.error {
            let message = error_message(&serde_json::json!({ "error": error }).to_string());
            let provider = self.provider.clone();
            return self.fail(ProviderError::Upstream { provider, message });
        }
        if let Some(usage) = chunk.usage {
            self.usage = Some(usage.into());
        }
        for choice in chunk.choices {
            if let Some(text) = choice.delta.or(choice.message).and_then(|d| d.content) {
                if !text.is_empty() {
                    self.pending.push_back(Ok(Chunk::Delta(text)));
                }
            }
            if let Some(reason) = choice.finish_reason.filter(|r| !r.is_empty()) {
                self.finish_reason = Some(reason);
            }
        }
    }
}

impl Stream for ChunkStream {
    type Item = Result<Chunk, ProviderError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Poll::Ready(Some(item));
            }
            if self.eof {
                return Poll::Ready(None);
            }
            match self.body.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(bytes))) => {
                    for event in self.decoder.feed(&bytes) {
                        self.handle(event);
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    self.eof = true;
                    let error = ProviderError::Connection {
                        provider: self.provider.clone(),
                        message: format!("the stream broke off: {}", describe(&e)),
                        attempts: 1,
                    };
                    self.fail(error);
                }
                Poll::Ready(None) => {
                    self.eof = true;
                    for event in self.decoder.finish() {
                        self.handle(event);
                    }
                    // A clean end of body without `[DONE]` is accepted, as some servers do.
                    self.finish();
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
