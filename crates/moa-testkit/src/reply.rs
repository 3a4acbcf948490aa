//! What a fake answers to one request.

use std::time::Duration;

use moa_core::Usage;

/// The shape of a scripted answer.
#[derive(Clone, Debug)]
pub enum ReplyKind {
    /// A successful answer with this text.
    Text(String),
    /// An error status with this body (OpenAI's error JSON unless built otherwise).
    Status { status: u16, body: String },
    /// HTTP 200 whose body (or, streamed, whose first event's data) is this raw text.
    Malformed(String),
    /// Sends this text (streamed: as deltas; whole: the start of the JSON body), then neither
    /// finishes nor closes.
    Stall(String),
    /// Sends this text, then breaks the connection without finishing the response.
    Disconnect(String),
    /// A 200 stream whose first event is an error of this kind (Anthropic's `error` event,
    /// Bedrock's exception message, an OpenAI `{"error":...}` chunk).
    StreamError { kind: String, message: String },
    /// A hostile body: `head`, then `piece` again and again until the client goes away (or,
    /// so that no test runs away, `max_bytes` have been sent).
    Endless {
        status: u16,
        content_type: String,
        head: Vec<u8>,
        piece: Vec<u8>,
        max_bytes: u64,
    },
}

/// A scripted answer and how to deliver it.
#[derive(Clone, Debug)]
pub struct Reply {
    pub kind: ReplyKind,
    /// Wait this long before answering.
    pub delay: Duration,
    /// Wait this long between streamed chunks.
    pub chunk_delay: Duration,
    /// Answer only once the fake has received this many requests in all.
    pub after_requests: Option<usize>,
    /// Split streamed text into deltas of this many characters.
    pub chunk_chars: usize,
    /// Re-split the whole streamed body into writes of this many bytes (HTTP only), cutting
    /// through events and UTF-8 characters alike.
    pub split_bytes: Option<usize>,
    /// Usage to report; `None` computes one from the request and the text.
    pub usage: Option<Usage>,
    /// Report no usage at all.
    pub no_usage: bool,
    /// End a stream at EOF without `data: [DONE]`.
    pub no_done: bool,
    /// The finish_reason to report (`None`: omit it, as some servers do).
    pub finish_reason: Option<String>,
    /// Extra response headers.
    pub headers: Vec<(String, String)>,
    /// Stream as llama.cpp's server (llama-cpp-python 0.3.36, run beside these tests) does: a
    /// role chunk without `content`, `"logprobs": null` in every choice, and no usage chunk
    /// even when `stream_options.include_usage` asks for one.
    pub llamacpp: bool,
    /// Tool calls `(id, name, arguments)` the answer makes (OpenAI dialect), after its text.
    pub tool_calls: Vec<(String, String, String)>,
    /// The first token's top alternatives `(token, logprob)`; the first is the generated token.
    /// Sent only to requests that ask for log probabilities (see `openai::logprobs`).
    pub top_logprobs: Option<Vec<(String, f64)>>,
}

impl Reply {
    fn new(kind: ReplyKind) -> Self {
        Self {
            kind,
            delay: Duration::ZERO,
            chunk_delay: Duration::ZERO,
            after_requests: None,
            chunk_chars: 4,
            split_bytes: None,
            usage: None,
            no_usage: false,
            no_done: false,
            finish_reason: Some("stop".into()),
            headers: Vec::new(),
            llamacpp: false,
            tool_calls: Vec::new(),
            top_logprobs: None,
        }
    }

    /// A successful answer.
    pub fn text(text: impl Into<String>) -> Self {
        Self::new(ReplyKind::Text(text.into()))
    }

    /// An answer that calls tools `(id, name, arguments)` and says nothing, finishing with
    /// `tool_calls` as OpenAI does. Streamed, each call's arguments come in pieces.
    pub fn tool_calls(calls: &[(&str, &str, &str)]) -> Self {
        let mut reply = Self::text("").with_finish_reason(Some("tool_calls"));
        reply.tool_calls = calls
            .iter()
            .map(|(id, name, args)| (id.to_string(), name.to_string(), args.to_string()))
            .collect();
        reply
    }

    /// An error status with OpenAI's error JSON: `{"error":{"message","type","code"}}`.
    pub fn error(status: u16, kind: &str, message: &str) -> Self {
        let body = serde_json::json!({
            "error": {"message": message, "type": kind, "param": null, "code": null}
        });
        Self::new(ReplyKind::Status {
            status,
            body: body.to_string(),
        })
    }

    /// An error status with Anthropic's error JSON: `{"type":"error","error":{"type","message"}}`.
    pub fn anthropic_error(status: u16, kind: &str, message: &str) -> Self {
        let body =
            serde_json::json!({"type": "error", "error": {"type": kind, "message": message}});
        Self::new(ReplyKind::Status {
            status,
            body: body.to_string(),
        })
    }

    /// Anthropic's 529 `overloaded_error`.
    pub fn overloaded() -> Self {
        Self::anthropic_error(529, "overloaded_error", "Overloaded")
    }

    /// An AWS error: the status, `x-amzn-ErrorType` naming the exception, `{"message":...}`.
    pub fn aws_error(status: u16, exception: &str, message: &str) -> Self {
        let body = serde_json::json!({ "message": message });
        Self::new(ReplyKind::Status {
            status,
            body: body.to_string(),
        })
        .with_header(
            "x-amzn-errortype",
            &format!("{exception}:http://internal.amazon.com/coral/com.amazon.bedrock/"),
        )
    }

    /// Bedrock's 429 `ThrottlingException`.
    pub fn throttled() -> Self {
        Self::aws_error(
            429,
            "ThrottlingException",
            "Too many requests, please wait before trying again.",
        )
    }

    /// A 200 stream that opens with an error event of `kind`.
    pub fn stream_error(kind: &str, message: &str) -> Self {
        Self::new(ReplyKind::StreamError {
            kind: kind.to_string(),
            message: message.to_string(),
        })
    }

    /// A body that does not end: `head`, then `piece` repeated until the client stops
    /// reading (at most 4 GiB).
    pub fn endless(status: u16, content_type: &str, head: &[u8], piece: &[u8]) -> Self {
        Self::new(ReplyKind::Endless {
            status,
            content_type: content_type.to_string(),
            head: head.to_vec(),
            piece: piece.to_vec(),
            max_bytes: 4 << 30,
        })
    }

    /// What llama.cpp's server (llama-cpp-python 0.3) streams when it has nothing to say under
    /// load: a role chunk and `[DONE]`, with no content, no finish reason and no usage.
    pub fn llamacpp_empty_stream() -> Self {
        Self::text("").with_finish_reason(None).as_llamacpp()
    }

    /// Streams in llama.cpp's shape (see [`Reply::llamacpp`]).
    pub fn as_llamacpp(mut self) -> Self {
        self.llamacpp = true;
        self
    }

    /// A 429 with `Retry-After: seconds`.
    pub fn rate_limited(seconds: u64) -> Self {
        Self::error(429, "rate_limit_exceeded", "Rate limit reached, slow down")
            .with_header("retry-after", &seconds.to_string())
    }

    /// An error status with a raw body.
    pub fn status(status: u16, body: impl Into<String>) -> Self {
        Self::new(ReplyKind::Status {
            status,
            body: body.into(),
        })
    }

    /// A 200 whose body is not what the protocol promises.
    pub fn malformed(raw: impl Into<String>) -> Self {
        Self::new(ReplyKind::Malformed(raw.into()))
    }

    /// Sends `partial`, then hangs.
    pub fn stall_after(partial: impl Into<String>) -> Self {
        Self::new(ReplyKind::Stall(partial.into()))
    }

    /// Sends `partial`, then breaks the connection.
    pub fn disconnect_after(partial: impl Into<String>) -> Self {
        Self::new(ReplyKind::Disconnect(partial.into()))
    }

    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    pub fn with_chunk_delay(mut self, delay: Duration) -> Self {
        self.chunk_delay = delay;
        self
    }

    pub fn after_requests(mut self, count: usize) -> Self {
        self.after_requests = Some(count);
        self
    }

    pub fn with_chunk_chars(mut self, chars: usize) -> Self {
        self.chunk_chars = chars.max(1);
        self
    }

    pub fn with_split_bytes(mut self, bytes: usize) -> Self {
        self.split_bytes = Some(bytes.max(1));
        self
    }

    pub fn with_usage(mut self, prompt: u64, completion: u64) -> Self {
        self.usage = Some(Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
            cached_tokens: 0,
        });
        self
    }

    /// Reports `cached` of the prompt tokens (see `with_usage`) as read from the prompt cache,
    /// in each dialect's own words.
    pub fn with_cached(mut self, cached: u64) -> Self {
        if let Some(usage) = self.usage.as_mut() {
            usage.cached_tokens = cached.min(usage.prompt_tokens);
        }
        self
    }

    pub fn without_usage(mut self) -> Self {
        self.no_usage = true;
        self
    }

    pub fn without_done(mut self) -> Self {
        self.no_done = true;
        self
    }

    pub fn with_finish_reason(mut self, reason: Option<&str>) -> Self {
        self.finish_reason = reason.map(str::to_string);
        self
    }

    /// Answers with these first-token alternatives; the first is the generated token.
    pub fn with_top_logprobs(mut self, top: &[(&str, f64)]) -> Self {
        self.top_logprobs = Some(top.iter().map(|(t, l)| (t.to_string(), *l)).collect());
        self
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// The text pieces a stream of `text` is cut into (whole characters).
    pub(crate) fn pieces<'a>(&self, text: &'a str) -> Vec<&'a str> {
        let mut pieces = Vec::new();
        let mut start = 0;
        let mut count = 0;
        for (i, _) in text.char_indices() {
            if count == self.chunk_chars {
                pieces.push(&text[start..i]);
                start = i;
                count = 0;
            }
            count += 1;
        }
        if start < text.len() {
            pieces.push(&text[start..]);
        }
        pieces
    }

    /// The usage to report for a request whose messages hold `prompt_bytes` bytes.
    pub(crate) fn usage_for(&self, prompt_bytes: usize, text: &str) -> Option<Usage> {
        if self.no_usage {
            return None;
        }
        Some(self.usage.unwrap_or_else(|| {
            let prompt = (prompt_bytes as u64).div_ceil(4);
            let completion = text.split_whitespace().count() as u64;
            Usage {
                prompt_tokens: prompt,
                completion_tokens: completion,
                total_tokens: prompt + completion,
                cached_tokens: 0,
            }
        }))
    }
}
