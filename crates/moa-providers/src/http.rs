//! What every HTTP dialect shares: a concurrency limit, sending with retries, reading error
//! bodies, and turning a streamed body into [`Chunk`]s through a dialect's decoder.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use moa_core::{BoxChunkStream, Chunk, Completion, ProviderError, Usage};
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::retry::{retry_after, retryable_status, RetryPolicy};

/// How much of an upstream's answer is read, and how long a silent one is waited for. Every
/// byte from an upstream is bounded: exceeding a limit is a [`ProviderError::TooLarge`] or
/// [`ProviderError::Stalled`], never a crash and never a silent truncation of an answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    /// Bytes of a whole (non-streamed) body, and of a streamed body in all.
    pub max_response_bytes: usize,
    /// Bytes of the answer's text.
    pub max_answer_bytes: usize,
    /// The longest silence between two reads of a body once its headers are in (`None`: no
    /// limit; the call's own timeout still applies).
    pub read_timeout: Option<Duration>,
}

/// Bytes of an error response's body that are read for its message; the rest is dropped unread.
pub const MAX_ERROR_BODY: usize = 64 << 10;

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_response_bytes: 64 << 20,
            max_answer_bytes: 8 << 20,
            read_timeout: Some(Duration::from_secs(120)),
        }
    }
}

/// One provider's way to the network: its name, client, retry policy and concurrency limit.
pub(crate) struct Transport {
    pub name: String,
    pub http: reqwest::Client,
    pub retry: RetryPolicy,
    pub limits: Limits,
    limit: Option<Arc<Semaphore>>,
    pace: Option<Pacer>,
}

/// Spaces the starts of calls evenly to stay under a requests-per-minute quota: each call
/// reserves the next free start time and waits for it.
pub(crate) struct Pacer {
    interval: Duration,
    next: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Pacer {
    /// `None` for no quota (0 or less).
    pub fn new(per_minute: f64) -> Option<Self> {
        (per_minute > 0.0 && per_minute.is_finite()).then(|| Self {
            // A quota of nearly nothing is one call a day, not a panic.
            interval: Duration::try_from_secs_f64(60.0 / per_minute)
                .map_or(Duration::from_secs(86_400), |d| {
                    d.min(Duration::from_secs(86_400))
                }),
            next: std::sync::Mutex::new(None),
        })
    }

    /// The start time reserved for a call asking at `now`.
    pub fn reserve(&self, now: std::time::Instant) -> std::time::Instant {
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        let at = next.map_or(now, |n| n.max(now));
        *next = Some(at + self.interval);
        at
    }
}

/// A failed attempt, and whether another may succeed.
pub(crate) struct Failure {
    pub error: ProviderError,
    pub retry: bool,
    pub retry_after: Option<Duration>,
}

impl Transport {
    pub fn new(
        name: String,
        http: reqwest::Client,
        retry: RetryPolicy,
        limits: Limits,
        max_concurrency: usize,
        requests_per_minute: Option<f64>,
    ) -> Self {
        let limit = (max_concurrency > 0).then(|| Arc::new(Semaphore::new(max_concurrency)));
        Self {
            name,
            http,
            retry,
            limits,
            limit,
            pace: requests_per_minute.and_then(Pacer::new),
        }
    }

    /// A slot under the concurrency limit, held for the whole call, taken once the call's turn
    /// under the requests-per-minute quota has come.
    pub async fn permit(&self) -> Option<OwnedSemaphorePermit> {
        if let Some(pace) = &self.pace {
            let at = pace.reserve(std::time::Instant::now());
            tokio::time::sleep_until(at.into()).await;
        }
        match &self.limit {
            // The semaphore is never closed, so acquiring only fails if it were.
            Some(limit) => limit.clone().acquire_owned().await.ok(),
            None => None,
        }
    }

    /// A broken or refused connection: always worth another try.
    pub fn connection_failure(&self, error: &reqwest::Error) -> Failure {
        Failure {
            error: ProviderError::Connection {
                provider: self.name.clone(),
                message: describe(error),
                attempts: 1,
            },
            retry: true,
            retry_after: None,
        }
    }

    /// An answer that does not follow the protocol.
    pub fn malformed(&self, message: String, raw: &[u8]) -> ProviderError {
        malformed(&self.name, message, &String::from_utf8_lossy(raw))
    }

    /// Sends `request` once and returns the response if its status is a success. An error
    /// status is read into [`ProviderError::Status`] with the vendor's message.
    pub async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, Failure> {
        let (client, request) = request.build_split();
        let request = request.map_err(|e| self.connection_failure(&e))?;
        // `-vv` shows every request: where it went and how it ended, never a body, a header or
        // the query (where some servers take keys).
        // (Only copied when someone is listening: this is every request's path.)
        let shown = tracing::enabled!(tracing::Level::DEBUG).then(|| {
            let mut url = request.url().clone();
            url.set_query(None);
            (request.method().clone(), url, std::time::Instant::now())
        });
        let response = client.execute(request).await.map_err(|e| {
            if let Some((method, url, _)) = &shown {
                tracing::debug!(provider = %self.name, %method, %url, error = %describe(&e), "request failed");
            }
            self.connection_failure(&e)
        })?;
        let status = response.status().as_u16();
        if let Some((method, url, started)) = &shown {
            tracing::debug!(
                provider = %self.name,
                %method,
                %url,
                status,
                ms = started.elapsed().as_millis() as u64,
                "request"
            );
        }
        if response.status().is_success() {
            return Ok(response);
        }
        let wait = retry_after(response.headers());
        // AWS names the error in a header (`ThrottlingException:http://...`).
        let kind = response
            .headers()
            .get("x-amzn-errortype")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(':').next())
            .map(str::to_string);
        // Only the start of an error body is read: an endless one must not fill memory.
        let body = match read_limited(response, MAX_ERROR_BODY, self.limits.read_timeout).await {
            Ok(Read::Whole(bytes) | Read::Cut(bytes)) => {
                String::from_utf8_lossy(&bytes).into_owned()
            }
            Err(_) => String::new(),
        };
        let mut message = error_message(&body);
        if let Some(kind) = kind.filter(|k| !message.contains(k.as_str())) {
            message = format!("{kind}: {message}");
        }
        Err(Failure {
            error: ProviderError::Status {
                provider: self.name.clone(),
                status,
                message,
                body,
                attempts: 1,
            },
            retry: retryable_status(status),
            retry_after: wait,
        })
    }

    /// Runs `attempt` until it succeeds (with the number of the attempt that did), fails for
    /// good, or retries run out.
    pub async fn with_retries<T, F, Fut>(&self, mut attempt: F) -> Result<(T, u32), ProviderError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let policy = &self.retry;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let failure = match attempt().await {
                Ok(value) => return Ok((value, attempts)),
                Err(failure) => failure,
            };
            let too_long = failure
                .retry_after
                .is_some_and(|w| w > policy.max_retry_after);
            if !failure.retry || attempts > policy.max_retries || too_long {
                return Err(with_attempts(failure.error, attempts));
            }
            let delay = policy.delay(attempts, failure.retry_after);
            tracing::info!(
                provider = %self.name,
                attempt = attempts,
                wait_ms = delay.as_millis() as u64,
                "retrying: {}",
                failure.error
            );
            tokio::time::sleep(delay).await;
        }
    }

    /// A whole (non-streamed) answer: holds a permit, sends with retries, reads the body and
    /// parses it; like the reference, an unreadable answer is worth another try.
    pub async fn complete<S, Fut>(
        &self,
        send: S,
        parse: impl Fn(&[u8]) -> Result<Completion, ProviderError>,
    ) -> Result<Completion, ProviderError>
    where
        S: Fn() -> Fut,
        Fut: Future<Output = Result<reqwest::Response, Failure>>,
    {
        let _permit = self.permit().await;
        let (mut completion, attempts) = self
            .with_retries(|| async {
                let bytes = self.read_body(send().await?).await?;
                parse(&bytes).map_err(|error| Failure {
                    retry: matches!(error, ProviderError::Malformed { .. }),
                    error,
                    retry_after: None,
                })
            })
            .await?;
        completion.attempts = attempts;
        Ok(completion)
    }

    /// Sends the request `make` builds (afresh for each attempt) with retries and reads its
    /// whole body: the batch APIs' uploads, creations, polls and result files.
    pub async fn fetch(
        &self,
        make: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<Bytes, ProviderError> {
        let _permit = self.permit().await;
        self.with_retries(|| async { self.read_body(self.send(make()).await?).await })
            .await
            .map(|(bytes, _)| bytes)
    }

    /// Reads a whole successful response body, up to the response limit; a body that breaks
    /// off or stalls is a failure worth another try, one over the limit is not.
    pub async fn read_body(&self, response: reqwest::Response) -> Result<Bytes, Failure> {
        let limit = self.limits.max_response_bytes;
        match read_limited(response, limit, self.limits.read_timeout).await {
            Ok(Read::Whole(bytes)) => Ok(bytes),
            Ok(Read::Cut(_)) => Err(Failure {
                error: self.too_large(format!("the response body is over {limit} bytes")),
                retry: false,
                retry_after: None,
            }),
            Err(ReadError::Http(e)) => Err(self.connection_failure(&e)),
            Err(ReadError::Stalled(after)) => Err(Failure {
                error: ProviderError::Stalled {
                    provider: self.name.clone(),
                    after,
                },
                retry: true,
                retry_after: None,
            }),
        }
    }

    fn too_large(&self, message: String) -> ProviderError {
        ProviderError::TooLarge {
            provider: self.name.clone(),
            message,
        }
    }
}

/// A body read up to a limit: all of it, or the first `limit` bytes of a longer one.
enum Read {
    Whole(Bytes),
    Cut(Bytes),
}

enum ReadError {
    Http(reqwest::Error),
    Stalled(Duration),
}

/// Reads `response`'s body, stopping at `limit` bytes (the rest is never read: dropping the
/// response closes the connection) and failing if no bytes come for `stall`.
async fn read_limited(
    mut response: reqwest::Response,
    limit: usize,
    stall: Option<Duration>,
) -> Result<Read, ReadError> {
    let declared = response
        .content_length()
        .and_then(|n| usize::try_from(n).ok());
    if declared.is_some_and(|n| n > limit) {
        // Read the start only, for an error message.
        let mut out = Vec::new();
        while out.len() < limit.min(MAX_ERROR_BODY) {
            match next_chunk(&mut response, stall).await? {
                Some(chunk) => out.extend_from_slice(&chunk),
                None => break,
            }
        }
        out.truncate(limit);
        return Ok(Read::Cut(out.into()));
    }
    let mut out = Vec::with_capacity(declared.unwrap_or(0));
    while let Some(chunk) = next_chunk(&mut response, stall).await? {
        if out.len() + chunk.len() > limit {
            let room = limit - out.len();
            out.extend_from_slice(&chunk[..room]);
            return Ok(Read::Cut(out.into()));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(Read::Whole(out.into()))
}

async fn next_chunk(
    response: &mut reqwest::Response,
    stall: Option<Duration>,
) -> Result<Option<Bytes>, ReadError> {
    let chunk = match stall {
        Some(after) => tokio::time::timeout(after, response.chunk())
            .await
            .map_err(|_| ReadError::Stalled(after))?,
        None => response.chunk().await,
    };
    chunk.map_err(ReadError::Http)
}

/// A provider whose requests go through a [`Transport`].
pub(crate) trait HasTransport: Send + Sync + 'static {
    fn transport(&self) -> &Transport;
}

/// Opens a stream with retries (`open` sends one attempt), then decodes its body with a fresh
/// `D`. A stream whose first event is a retryable failure (a throttling or overload event sent
/// after a 200, before any text) is opened again under the same retry policy. The concurrency
/// permit is held until the stream is dropped.
pub(crate) fn open_stream<I, D, F, Fut>(inner: Arc<I>, open: F) -> BoxChunkStream
where
    I: HasTransport,
    D: Decode + Default + Unpin,
    F: Fn(Arc<I>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<reqwest::Response, Failure>> + Send,
{
    futures::stream::once(async move {
        let transport = inner.transport();
        let permit = transport.permit().await;
        let mut retries = 0;
        loop {
            let (response, attempts) = transport.with_retries(|| open(inner.clone())).await?;
            let mut chunks = ChunkStream::new(
                transport.name.clone(),
                response,
                D::default(),
                &transport.limits,
            );
            let first = chunks.next().await;
            if let (Some(Err(error)), true) = (&first, chunks.events.retryable) {
                if retries < transport.retry.max_retries {
                    retries += 1;
                    tokio::time::sleep(transport.retry.delay(retries, None)).await;
                    continue;
                }
                return Err(with_attempts(error.clone(), retries + 1));
            }
            chunks._permit = permit;
            // Told first, so the call's trace says it was retried.
            let attempts = attempts + retries;
            let told = (attempts > 1).then_some(Ok(Chunk::Attempts(attempts)));
            let head = futures::stream::iter(told.into_iter().chain(first));
            return Ok::<_, ProviderError>(head.chain(chunks));
        }
    })
    .flat_map(|opened| match opened {
        Ok(chunks) => chunks.boxed(),
        Err(e) => futures::stream::iter([Err(e)]).boxed(),
    })
    .boxed()
}

fn with_attempts(error: ProviderError, count: u32) -> ProviderError {
    match error {
        ProviderError::Status {
            provider,
            status,
            message,
            body,
            ..
        } => ProviderError::Status {
            provider,
            status,
            message,
            body,
            attempts: count,
        },
        ProviderError::Connection {
            provider, message, ..
        } => ProviderError::Connection {
            provider,
            message,
            attempts: count,
        },
        ProviderError::EmptyStream { provider, .. } => ProviderError::EmptyStream {
            provider,
            attempts: count,
        },
        other => other,
    }
}

/// A reqwest error with its causes, which hold the useful part ("connection refused").
pub(crate) fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A request's extra fields minus those the client owns (`reserved`) and those the request
/// already sets (temperature, max_tokens): config may add fields, never override these.
pub(crate) fn extra_fields(
    request: &moa_core::ChatRequest,
    reserved: &[&str],
) -> serde_json::Map<String, Value> {
    let mut extra = request.extra.clone();
    extra.retain(|k, _| match k.as_str() {
        "temperature" => request.temperature.is_none(),
        "max_tokens" => request.max_tokens.is_none(),
        other => !reserved.contains(&other),
    });
    extra
}

/// The message of an error body in any common vendor shape: OpenAI's and Anthropic's
/// `{"error":{"message":...}}`, `{"error":"..."}`, AWS's `{"message":...}`; else the body.
pub fn error_message(body: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let message = parsed.as_ref().and_then(|v| match &v["error"] {
        Value::String(s) => Some(s.clone()),
        e => e["message"]
            .as_str()
            .or_else(|| v["message"].as_str())
            .or_else(|| v["Message"].as_str())
            .map(str::to_string),
    });
    match message {
        Some(m) => m,
        None if body.trim().is_empty() => "(empty body)".to_string(),
        None => truncate(body.trim(), 500),
    }
}

/// An answer that does not follow the protocol; `raw` is kept (cut to 2,000 bytes) for the error.
pub(crate) fn malformed(provider: &str, message: String, raw: &str) -> ProviderError {
    ProviderError::Malformed {
        provider: provider.to_string(),
        message,
        raw: truncate(raw, 2000),
    }
}

/// At most `max` bytes of `text`, cut at a character boundary.
pub fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// A dialect's streaming decoder: bytes in, chunk events out through [`Events`].
pub(crate) trait Decode: Send + 'static {
    /// Takes the next bytes of the body (cut anywhere).
    fn feed(&mut self, bytes: &[u8], out: &mut Events);
    /// The body ended cleanly; flush what is buffered.
    fn end(&mut self, out: &mut Events);
}

/// What a decoder reports: deltas, usage, the finish reason, the end, or a failure.
pub(crate) struct Events {
    pub provider: String,
    pending: VecDeque<Result<Chunk, ProviderError>>,
    pub finish_reason: Option<String>,
    pub usage: Option<Usage>,
    /// `Finished` (or an error) has been queued; nothing more is reported.
    ended: bool,
    /// The failure reported is one another attempt may not meet (throttling, overload).
    retryable: bool,
    /// Bytes of answer text reported so far, and the most allowed.
    text_bytes: usize,
    max_text_bytes: usize,
}

impl Events {
    fn new(provider: String, max_text_bytes: usize) -> Self {
        Self {
            provider,
            pending: VecDeque::new(),
            finish_reason: None,
            usage: None,
            ended: false,
            retryable: false,
            text_bytes: 0,
            max_text_bytes,
        }
    }

    fn too_large(&mut self, message: String) {
        let provider = self.provider.clone();
        self.fail(ProviderError::TooLarge { provider, message });
    }

    pub fn ended(&self) -> bool {
        self.ended
    }

    pub fn delta(&mut self, text: String) {
        if self.ended || text.is_empty() {
            return;
        }
        if self.count(text.len()) {
            self.pending.push_back(Ok(Chunk::Delta(text)));
        }
    }

    /// Counts `bytes` more of answer; false (and the stream failed) past the limit.
    fn count(&mut self, bytes: usize) -> bool {
        self.text_bytes += bytes;
        if self.text_bytes > self.max_text_bytes {
            let limit = self.max_text_bytes;
            self.too_large(format!("the answer is longer than {limit} bytes"));
            return false;
        }
        true
    }

    /// Log probabilities of the last tokens; their token bytes count toward the answer's limit
    /// (each carries its alternatives, so a hostile stream could otherwise grow them unbounded).
    pub fn logprobs(&mut self, tokens: Vec<moa_core::TokenLogprob>) {
        if self.ended || tokens.is_empty() {
            return;
        }
        let size = tokens
            .iter()
            .map(|t| {
                16 + t.token.len()
                    + t.top_logprobs
                        .iter()
                        .map(|a| 16 + a.token.len())
                        .sum::<usize>()
            })
            .sum();
        if self.count(size) {
            self.pending.push_back(Ok(Chunk::Logprobs(tokens)));
        }
    }

    /// A piece of a tool call; its bytes count toward the answer's limit.
    pub fn tool_call(
        &mut self,
        index: usize,
        id: Option<String>,
        name: Option<String>,
        arguments: String,
    ) {
        if self.ended {
            return;
        }
        // A call counts even with empty arguments, so a call alone is not an empty answer.
        let size = arguments.len() + name.as_ref().map_or(0, String::len) + 1;
        if !self.count(size) {
            return;
        }
        self.pending.push_back(Ok(Chunk::ToolCall {
            index,
            id,
            name,
            arguments,
        }));
    }

    /// An SSE decoder's verdict on the bytes it was fed: its events, or a failure.
    pub fn sse(
        &mut self,
        decoded: Result<Vec<crate::sse::SseEvent>, crate::sse::EventTooLarge>,
    ) -> Vec<crate::sse::SseEvent> {
        decoded.unwrap_or_else(|e| {
            self.too_large(e.to_string());
            Vec::new()
        })
    }

    /// The answer is complete. A stream that delivered no text and gave no finish reason did
    /// not answer: that is a failed attempt, worth another one (nothing reached the caller).
    pub fn finish(&mut self) {
        if !self.ended && self.text_bytes == 0 && self.finish_reason.is_none() {
            let provider = self.provider.clone();
            return self.fail_retryable(ProviderError::EmptyStream {
                provider,
                attempts: 1,
            });
        }
        if !self.ended {
            self.ended = true;
            self.pending.push_back(Ok(Chunk::Finished {
                finish_reason: self.finish_reason.take(),
                usage: self.usage.take(),
            }));
        }
    }

    pub fn fail(&mut self, error: ProviderError) {
        if !self.ended {
            self.ended = true;
            self.pending.push_back(Err(error));
        }
    }

    /// A failure worth another attempt if nothing was delivered yet.
    pub fn fail_retryable(&mut self, error: ProviderError) {
        if !self.ended {
            self.retryable = true;
            self.fail(error);
        }
    }

    /// Data that does not parse.
    pub fn malformed(&mut self, message: String, raw: &str) {
        let provider = self.provider.clone();
        self.fail(malformed(&provider, message, raw));
    }

    /// An error the upstream reported inside the stream.
    pub fn upstream(&mut self, message: String) {
        let provider = self.provider.clone();
        self.fail(ProviderError::Upstream { provider, message });
    }
}

/// The chunks of one streamed response. Holds the concurrency permit until dropped; dropping it
/// drops the response body, which closes the connection.
pub(crate) struct ChunkStream<D> {
    body: BoxStream<'static, reqwest::Result<Bytes>>,
    decoder: D,
    events: Events,
    /// The body has ended.
    eof: bool,
    /// Body bytes read so far, and the most allowed.
    received: usize,
    max_received: usize,
    /// Fires when the body has been silent for `read_timeout`; reset by every read.
    stall: Option<(Duration, Pin<Box<tokio::time::Sleep>>)>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl<D: Decode> ChunkStream<D> {
    pub fn new(provider: String, response: reqwest::Response, decoder: D, limits: &Limits) -> Self {
        Self {
            body: response.bytes_stream().boxed(),
            decoder,
            events: Events::new(provider, limits.max_answer_bytes),
            eof: false,
            received: 0,
            max_received: limits.max_response_bytes,
            stall: limits
                .read_timeout
                .map(|after| (after, Box::pin(tokio::time::sleep(after)))),
            _permit: None,
        }
    }
}

impl<D: Decode + Unpin> Stream for ChunkStream<D> {
    type Item = Result<Chunk, ProviderError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(item) = this.events.pending.pop_front() {
                return Poll::Ready(Some(item));
            }
            if this.eof {
                return Poll::Ready(None);
            }
            let polled = this.body.poll_next_unpin(cx);
            // After the end marker, what the body already holds is read (so that the connection
            // can go back to the pool) but nothing is waited for, and little more is read.
            if this.events.ended() && (polled.is_pending() || this.received > this.max_received) {
                this.eof = true;
                continue;
            }
            if let (Poll::Pending, Some((after, timer))) = (&polled, this.stall.as_mut()) {
                if timer.as_mut().poll(cx).is_ready() {
                    this.eof = true;
                    let provider = this.events.provider.clone();
                    let after = *after;
                    this.events.fail(ProviderError::Stalled { provider, after });
                    continue;
                }
            }
            if let (Poll::Ready(_), Some((after, timer))) = (&polled, this.stall.as_mut()) {
                timer.as_mut().reset(tokio::time::Instant::now() + *after);
            }
            match polled {
                Poll::Ready(Some(Ok(bytes))) => {
                    this.received += bytes.len();
                    if this.events.ended() {
                        continue;
                    }
                    if this.received > this.max_received {
                        this.eof = true;
                        let limit = this.max_received;
                        this.events
                            .too_large(format!("the streamed response is over {limit} bytes"));
                        continue;
                    }
                    this.decoder.feed(&bytes, &mut this.events)
                }
                Poll::Ready(Some(Err(e))) => {
                    this.eof = true;
                    let error = ProviderError::Connection {
                        provider: this.events.provider.clone(),
                        message: format!("the stream broke off: {}", describe(&e)),
                        attempts: 1,
                    };
                    this.events.fail(error);
                }
                Poll::Ready(None) => {
                    this.eof = true;
                    this.decoder.end(&mut this.events);
                    // A clean end of body without an end marker is accepted, as some servers do.
                    this.events.finish();
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Sampling fields of OpenAI's API that the Anthropic and Bedrock dialects have no place for
/// (and that their models do not read in OpenAI's spelling): refused by name there.
pub const OPENAI_ONLY_FIELDS: [&str; 8] = [
    "logit_bias",
    "frequency_penalty",
    "presence_penalty",
    "seed",
    "logprobs",
    "top_logprobs",
    "reasoning_effort",
    "verbosity",
];

/// `request` with what ties it to the run: its request id as `X-Request-Id` when it is a UUID
/// (llama-cpp-python's server refuses any other `X-Request-Id` with a 400), and its trace
/// context as `traceparent`.
pub fn with_correlation(
    mut request: reqwest::RequestBuilder,
    correlation: &moa_core::Correlation,
) -> reqwest::RequestBuilder {
    let id = correlation.request_id.as_deref();
    if let Some(id) = id.filter(|id| moa_core::tracecontext::is_uuid(id)) {
        request = request.header("x-request-id", id);
    }
    if let Some(traceparent) = &correlation.traceparent {
        request = request.header("traceparent", traceparent);
    }
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pacer_spaces_call_starts_by_the_quota() {
        let pacer = Pacer::new(120.0).unwrap(); // one start every 0.5 s
        let t0 = std::time::Instant::now();
        assert_eq!(pacer.reserve(t0), t0);
        assert_eq!(pacer.reserve(t0), t0 + Duration::from_millis(500));
        assert_eq!(pacer.reserve(t0), t0 + Duration::from_millis(1000));
        // After a quiet spell a call starts at once.
        let later = t0 + Duration::from_secs(10);
        assert_eq!(pacer.reserve(later), later);
        assert!(Pacer::new(0.0).is_none());
    }
}
