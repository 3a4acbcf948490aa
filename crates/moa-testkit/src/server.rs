//! A fake model server on loopback that speaks one vendor's dialect: OpenAI's chat
//! completions, Anthropic's Messages API or Bedrock's Converse. The script, recording and
//! delivery (delays, stalls, disconnects, byte splits) are shared; only the shapes differ.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use tokio::task::JoinHandle;

use crate::batches::{self, Batches, FakeBatch};
use crate::reply::{Reply, ReplyKind};
use crate::script::{EndGuard, Ending, Recorded, Script};
use crate::{anthropic, bedrock, openai};

/// Which vendor's wire format a fake speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    OpenAi,
    Anthropic,
    Bedrock,
}

/// A scripted model server on `127.0.0.1:0`. Stops when dropped.
pub struct FakeServer {
    addr: SocketAddr,
    dialect: Dialect,
    script: Arc<Script>,
    batches: Arc<Batches>,
    task: JoinHandle<()>,
}

/// The OpenAI-compatible fake most tests use.
pub type FakeOpenAi = FakeServer;

#[derive(Clone)]
pub(crate) struct AppState {
    pub script: Arc<Script>,
    pub dialect: Dialect,
    /// Refuse an `X-Request-Id` that is not a UUID, as llama-cpp-python's server does.
    uuid_request_ids: bool,
    pub batches: Arc<Batches>,
}

impl FakeServer {
    /// Starts an OpenAI-compatible server on a free loopback port, on the current runtime.
    pub async fn start() -> Self {
        Self::start_dialect(Dialect::OpenAi).await
    }

    /// Starts a server speaking Anthropic's Messages API (`POST /v1/messages`).
    pub async fn anthropic() -> Self {
        Self::start_dialect(Dialect::Anthropic).await
    }

    /// Starts a server speaking Bedrock's Converse API (`POST /model/{id}/converse[-stream]`).
    pub async fn bedrock() -> Self {
        Self::start_dialect(Dialect::Bedrock).await
    }

    /// Starts an OpenAI-compatible server with llama-cpp-python's front door (0.3.36, checked
    /// against it): a request whose `X-Request-Id` is not a UUID gets 400 with an empty body
    /// before any model sees it (its starlette-context request-id plugin).
    pub async fn llamacpp() -> Self {
        Self::start_with(Dialect::OpenAi, true).await
    }

    pub async fn start_dialect(dialect: Dialect) -> Self {
        Self::start_with(dialect, false).await
    }

    async fn start_with(dialect: Dialect, uuid_request_ids: bool) -> Self {
        let script = Script::new();
        let batches = Arc::new(Batches::default());
        let app = match dialect {
            Dialect::OpenAi => Router::new()
                .route("/v1/files", post(batches::upload))
                .route("/v1/files/{id}/content", get(batches::file_content))
                .route("/v1/batches", post(batches::create_openai))
                .route("/v1/batches/{id}", get(batches::get_openai)),
            Dialect::Anthropic => Router::new()
                .route("/v1/messages/batches", post(batches::create_anthropic))
                .route("/v1/messages/batches/{id}", get(batches::get_anthropic))
                .route(
                    "/v1/messages/batches/{id}/results",
                    get(batches::results_anthropic),
                ),
            Dialect::Bedrock => Router::new(),
        };
        let app = app.fallback(post(chat)).with_state(AppState {
            script: script.clone(),
            dialect,
            uuid_request_ids,
            batches: batches.clone(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("binding 127.0.0.1:0 failed: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("no local address: {e}"));
        // Without TCP_NODELAY small SSE writes wait on delayed ACKs (about 40 ms each).
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            addr,
            dialect,
            script,
            batches,
            task,
        }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL to configure a client with: `http://127.0.0.1:PORT/v1` (OpenAI, Anthropic),
    /// `http://127.0.0.1:PORT` (Bedrock).
    pub fn base_url(&self) -> String {
        match self.dialect {
            Dialect::Bedrock => format!("http://{}", self.addr),
            _ => format!("http://{}/v1", self.addr),
        }
    }

    /// Queues `reply` for the next request naming `model`.
    pub fn push(&self, model: &str, reply: Reply) {
        self.script.push(model, reply);
    }

    /// Answers requests with no queued reply by calling `responder`.
    pub fn respond_with(&self, responder: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) {
        self.script.respond_with(responder);
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.script.requests()
    }

    /// The requests naming `model`, in arrival order.
    pub fn requests_for(&self, model: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.model == model)
            .collect()
    }

    /// Waits until `count` requests have arrived.
    pub async fn wait_for_requests(&self, count: usize) {
        self.script.wait_for_requests(count).await;
    }

    /// Waits until the response to request `seq` has ended, and says how.
    pub async fn wait_ending(&self, seq: usize) -> Ending {
        self.script.wait_ending(seq).await
    }

    /// When the response to request `seq` ended, if it has.
    pub fn ended_at(&self, seq: usize) -> Option<Instant> {
        self.script.ended_at(seq)
    }

    /// Keeps every batch in progress (`true`) until released (`false`); released batches end
    /// at their next poll.
    pub fn hold_batches(&self, held: bool) {
        self.batches.hold(held);
    }

    /// The batches created so far, in order.
    pub fn batches(&self) -> Vec<FakeBatch> {
        self.batches.list()
    }

    /// Waits until `count` batches have been created.
    pub async fn wait_for_batches(&self, count: usize) {
        self.batches.wait_for(count).await;
    }

    /// Waits until batches have been polled `count` times in all.
    pub async fn wait_for_batch_polls(&self, count: usize) {
        self.batches.wait_for_polls(count).await;
    }

    /// Status polls of batch `id` so far.
    pub fn batch_polls(&self, id: &str) -> usize {
        self.batches.polls(id)
    }

    /// Makes Anthropic's `results_url` point at `base` (another host, say) instead of here.
    pub fn set_batch_results_base(&self, base: &str) {
        self.batches.set_results_base(base);
    }

    /// How each ended response ended, in the order they ended.
    pub fn endings(&self) -> Vec<(usize, Ending)> {
        self.script.endings()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Bedrock names the model in the path: `/model/{percent-encoded id}/converse[-stream]`.
fn model_from_path(path: &str) -> Option<String> {
    let rest = path.strip_prefix("/model/")?;
    let encoded = rest.split('/').next()?;
    let bytes = encoded.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Whether Python's `uuid.UUID(text)` takes `text`: an optional `urn:` / `uuid:` prefix and
/// braces, hyphens anywhere, then 32 hex digits.
fn python_uuid(text: &str) -> bool {
    let text = text.trim();
    let text = text.strip_prefix("urn:").unwrap_or(text);
    let text = text.strip_prefix("uuid:").unwrap_or(text);
    let text = text.trim_matches(|c| c == '{' || c == '}');
    let digits: Vec<char> = text.chars().filter(|c| *c != '-').collect();
    digits.len() == 32 && digits.iter().all(char::is_ascii_hexdigit)
}

async fn chat(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let AppState {
        script,
        dialect,
        uuid_request_ids,
        ..
    } = state;
    if uuid_request_ids {
        let id = headers
            .get("x-request-id")
            .map(|v| v.to_str().unwrap_or(""));
        if id.is_some_and(|id| !python_uuid(id)) {
            let mut refused = Response::new(Body::empty());
            *refused.status_mut() = StatusCode::BAD_REQUEST;
            return refused;
        }
    }
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let model = match dialect {
        Dialect::Bedrock => model_from_path(uri.path()).unwrap_or_default(),
        _ => json["model"].as_str().unwrap_or_default().to_string(),
    };
    let recorded = Recorded {
        seq: 0,
        model,
        path: uri.path().to_string(),
        headers: headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    v.to_str().unwrap_or_default().to_string(),
                )
            })
            .collect(),
        body: body.clone(),
        json,
        received_at: Instant::now(),
    };
    let stream = recorded.is_stream();
    let include_usage = match dialect {
        Dialect::OpenAi => recorded.json["stream_options"]["include_usage"].as_bool() == Some(true),
        // Anthropic and Bedrock always report usage.
        _ => true,
    };
    // As OpenAI and llama.cpp: log probabilities only when asked for.
    let logprobs = dialect == Dialect::OpenAi && recorded.json["logprobs"].as_bool() == Some(true);
    let prompt_bytes: usize = recorded.messages().iter().map(|(_, c)| c.len()).sum();
    let model = recorded.model.clone();
    let (seq, reply) = script.record(recorded);
    let mut guard = EndGuard {
        script: script.clone(),
        seq,
        completed: false,
    };
    script.gate(&reply).await;
    let ctx = Ctx {
        dialect,
        seq,
        model,
        include_usage,
        prompt_bytes,
        logprobs,
    };
    let mut response = match (&reply.kind, stream) {
        (
            ReplyKind::Endless {
                status,
                content_type,
                head,
                piece,
                max_bytes,
            },
            _,
        ) => endless_response(*status, content_type, head, piece, *max_bytes, guard),
        (ReplyKind::Status { status, body }, _) => {
            guard.finish();
            json_response(*status, body.clone())
        }
        (_, true) => stream_response(&reply, &ctx, guard),
        (ReplyKind::Text(text), false) => {
            guard.finish();
            let body = match dialect {
                Dialect::OpenAi => openai::completion(&reply, &ctx, text),
                Dialect::Anthropic => anthropic::message(&reply, &ctx, text),
                Dialect::Bedrock => bedrock::converse(&reply, &ctx, text),
            };
            json_response(200, body.to_string())
        }
        (ReplyKind::Malformed(raw), false) => {
            guard.finish();
            json_response(200, raw.clone())
        }
        (ReplyKind::StreamError { kind, message }, false) => {
            guard.finish();
            let body = json!({"error": {"type": kind, "message": message}});
            json_response(500, body.to_string())
        }
        // Headers and the start of the body, then silence: a read stall, not a slow start.
        (ReplyKind::Stall(partial), false) => body_response(
            200,
            "application/json",
            VecDeque::from([Bytes::from(format!(
                "{{\"id\":\"x\",\"choices\":[{{\"message\":{{\"content\":\"{partial}"
            ))]),
            Tail::Stall,
            Duration::ZERO,
            guard,
        ),
        (ReplyKind::Disconnect(partial), false) => {
            let frames = VecDeque::from([Bytes::from(format!(
                "{{\"id\":\"x\",\"choices\":[{{\"message\":{{\"content\":\"{partial}"
            ))]);
            body_response(
                200,
                "application/json",
                frames,
                Tail::Disconnect,
                Duration::ZERO,
                guard,
            )
        }
    };
    for (name, value) in &reply.headers {
        if let (Ok(n), Ok(v)) = (
            axum::http::HeaderName::try_from(name.as_str()),
            axum::http::HeaderValue::try_from(value.as_str()),
        ) {
            response.headers_mut().append(n, v);
        }
    }
    response
}

/// What a renderer needs to know about the request it answers.
pub(crate) struct Ctx {
    pub dialect: Dialect,
    pub seq: usize,
    pub model: String,
    pub include_usage: bool,
    pub prompt_bytes: usize,
    /// The request asked for log probabilities (`"logprobs": true`).
    pub logprobs: bool,
}

pub(crate) fn json_response(status: u16, body: String) -> Response {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap_or_default()
}

fn stream_response(reply: &Reply, ctx: &Ctx, guard: EndGuard) -> Response {
    let (mut frames, tail) = match &reply.kind {
        ReplyKind::Text(text) => (frames(reply, ctx, text, true), Tail::Finish),
        ReplyKind::Malformed(raw) => (vec![malformed(ctx, raw)], Tail::Finish),
        ReplyKind::StreamError { kind, message } => {
            (vec![stream_error(ctx, kind, message)], Tail::Finish)
        }
        ReplyKind::Stall(text) => (frames(reply, ctx, text, false), Tail::Stall),
        ReplyKind::Disconnect(text) => (frames(reply, ctx, text, false), Tail::Disconnect),
        ReplyKind::Status { .. } | ReplyKind::Endless { .. } => (Vec::new(), Tail::Finish),
    };
    if ctx.dialect == Dialect::OpenAi && matches!(tail, Tail::Finish) && !reply.no_done {
        frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
    }
    let frames: VecDeque<Bytes> = match reply.split_bytes {
        Some(n) => frames
            .concat()
            .chunks(n)
            .map(Bytes::copy_from_slice)
            .collect(),
        None => frames.into(),
    };
    let content_type = match ctx.dialect {
        Dialect::Bedrock => "application/vnd.amazon.eventstream",
        _ => "text/event-stream",
    };
    body_response(200, content_type, frames, tail, reply.chunk_delay, guard)
}

/// The frames of a streamed answer: its opening, one per piece of `text`, and (when
/// `complete`) the closing frames with finish reason and usage.
fn frames(reply: &Reply, ctx: &Ctx, text: &str, complete: bool) -> Vec<Bytes> {
    match ctx.dialect {
        Dialect::OpenAi => openai::frames(reply, ctx, text, complete),
        Dialect::Anthropic => anthropic::frames(reply, ctx, text, complete),
        Dialect::Bedrock => bedrock::frames(reply, ctx, text, complete),
    }
}

/// A stream whose first event is not what the protocol promises.
fn malformed(ctx: &Ctx, raw: &str) -> Bytes {
    match ctx.dialect {
        Dialect::Anthropic => Bytes::from(format!("event: message_start\ndata: {raw}\n\n")),
        // Raw bytes where event-stream frames belong.
        Dialect::Bedrock => Bytes::from(raw.to_string()),
        Dialect::OpenAi => Bytes::from(format!("data: {raw}\n\n")),
    }
}

/// An error reported inside a 200 stream, in the dialect's way.
fn stream_error(ctx: &Ctx, kind: &str, message: &str) -> Bytes {
    match ctx.dialect {
        Dialect::OpenAi => {
            let body = json!({"error": {"type": kind, "message": message}});
            Bytes::from(format!("data: {body}\n\n"))
        }
        Dialect::Anthropic => {
            let body = json!({"type": "error", "error": {"type": kind, "message": message}});
            Bytes::from(format!("event: error\ndata: {body}\n\n"))
        }
        Dialect::Bedrock => bedrock::exception(kind, message),
    }
}

#[derive(Clone, Copy)]
enum Tail {
    Finish,
    Stall,
    Disconnect,
    Done,
}

struct BodyState {
    frames: VecDeque<Bytes>,
    tail: Tail,
    delay: Duration,
    started: bool,
    guard: EndGuard,
}

/// `head`, then `piece` forever (up to `max_bytes`): ends as `ClientGone` when the client
/// stops reading and drops the connection.
fn endless_response(
    status: u16,
    content_type: &str,
    head: &[u8],
    piece: &[u8],
    max_bytes: u64,
    guard: EndGuard,
) -> Response {
    let piece = Bytes::copy_from_slice(piece);
    let state = (Some(Bytes::copy_from_slice(head)), 0u64, guard);
    let stream = futures::stream::unfold(state, move |(head, sent, mut guard)| {
        let piece = piece.clone();
        async move {
            if sent >= max_bytes {
                guard.finish();
                return None;
            }
            let frame = head.filter(|h| !h.is_empty()).unwrap_or(piece);
            let sent = sent + frame.len() as u64;
            Some((Ok::<_, std::io::Error>(frame), (None, sent, guard)))
        }
    });
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::OK))
        .header("content-type", content_type)
        .body(Body::from_stream(stream))
        .unwrap_or_default()
}

fn body_response(
    status: u16,
    content_type: &str,
    frames: VecDeque<Bytes>,
    tail: Tail,
    delay: Duration,
    guard: EndGuard,
) -> Response {
    let state = BodyState {
        frames,
        tail,
        delay,
        started: false,
        guard,
    };
    let stream = futures::stream::unfold(state, |mut st| async move {
        if let Some(frame) = st.frames.pop_front() {
            if st.started && !st.delay.is_zero() {
                tokio::time::sleep(st.delay).await;
            }
            st.started = true;
            return Some((Ok(frame), st));
        }
        match st.tail {
            Tail::Finish | Tail::Done => {
                st.guard.finish();
                None
            }
            Tail::Stall => {
                std::future::pending::<()>().await;
                None
            }
            Tail::Disconnect => {
                // Returning Pending once makes hyper flush what was written, so the client
                // really receives the partial answer before the connection breaks.
                tokio::task::yield_now().await;
                st.guard.finish();
                st.tail = Tail::Done;
                Some((Err(std::io::Error::other("scripted disconnect")), st))
            }
        }
    });
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::OK))
        .header("content-type", content_type)
        .header("cache-control", "no-cache")
        .body(Body::from_stream(stream))
        .unwrap_or_default()
}
