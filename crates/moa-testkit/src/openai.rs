//! A fake OpenAI-compatible chat-completions server on loopback.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use axum::Router;
use serde_json::{json, Value};
use tokio::task::JoinHandle;

use crate::reply::{Reply, ReplyKind};
use crate::script::{EndGuard, Ending, Recorded, Script};

/// A scripted OpenAI-compatible server on `127.0.0.1:0`. Stops when dropped.
pub struct FakeOpenAi {
    addr: SocketAddr,
    script: Arc<Script>,
    task: JoinHandle<()>,
}

impl FakeOpenAi {
    /// Starts a server on a free loopback port, on the current tokio runtime.
    pub async fn start() -> Self {
        let script = Script::new();
        let app = Router::new()
            .fallback(axum::routing::post(chat))
            .with_state(script.clone());
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
        Self { addr, script, task }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL to configure a client with (`http://127.0.0.1:PORT/v1`).
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
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

    /// How each ended response ended, in the order they ended.
    pub fn endings(&self) -> Vec<(usize, Ending)> {
        self.script.endings()
    }
}

impl Drop for FakeOpenAi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn chat(
    State(script): State<Arc<Script>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let recorded = Recorded {
        seq: 0,
        model: json["model"].as_str().unwrap_or_default().to_string(),
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
    let include_usage = recorded.json["stream_options"]["include_usage"].as_bool() == Some(true);
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
        seq,
        model,
        include_usage,
        prompt_bytes,
    };
    let mut response = match (&reply.kind, stream) {
        (ReplyKind::Status { status, body }, _) => {
            guard.finish();
            json_response(*status, body.clone())
        }
        (_, true) => sse_response(&reply, &ctx, guard),
        (ReplyKind::Text(text), false) => {
            guard.finish();
            let body = completion_json(&reply, &ctx, text);
            json_response(200, body.to_string())
        }
        (ReplyKind::Malformed(raw), false) => {
            guard.finish();
            json_response(200, raw.clone())
        }
        (ReplyKind::Stall(_), false) => {
            std::future::pending::<()>().await;
            unreachable!("pending never completes")
        }
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

struct Ctx {
    seq: usize,
    model: String,
    include_usage: bool,
    prompt_bytes: usize,
}

fn json_response(status: u16, body: String) -> Response {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap_or_default()
}

fn completion_json(reply: &Reply, ctx: &Ctx, text: &str) -> Value {
    let mut body = json!({
        "id": format!("chatcmpl-fake-{}", ctx.seq),
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": ctx.model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": reply.finish_reason,
        }],
    });
    if let Some(usage) = reply.usage_for(ctx.prompt_bytes, text) {
        body["usage"] = json!(usage);
    }
    body
}

fn chunk(ctx: &Ctx, choices: Value) -> Bytes {
    let chunk = json!({
        "id": format!("chatcmpl-fake-{}", ctx.seq),
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": ctx.model,
        "choices": choices,
    });
    Bytes::from(format!("data: {chunk}\n\n"))
}

fn delta_frames(reply: &Reply, ctx: &Ctx, text: &str) -> Vec<Bytes> {
    let mut frames = vec![chunk(
        ctx,
        json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]),
    )];
    for piece in reply.pieces(text) {
        frames.push(chunk(
            ctx,
            json!([{"index": 0, "delta": {"content": piece}, "finish_reason": null}]),
        ));
    }
    frames
}

fn sse_response(reply: &Reply, ctx: &Ctx, guard: EndGuard) -> Response {
    let (mut frames, tail) = match &reply.kind {
        ReplyKind::Text(text) => {
            let mut frames = delta_frames(reply, ctx, text);
            if let Some(reason) = &reply.finish_reason {
                frames.push(chunk(
                    ctx,
                    json!([{"index": 0, "delta": {}, "finish_reason": reason}]),
                ));
            }
            if ctx.include_usage {
                if let Some(usage) = reply.usage_for(ctx.prompt_bytes, text) {
                    let mut frame = json!({
                        "id": format!("chatcmpl-fake-{}", ctx.seq),
                        "object": "chat.completion.chunk",
                        "created": 1_700_000_000,
                        "model": ctx.model,
                        "choices": [],
                    });
                    frame["usage"] = json!(usage);
                    frames.push(Bytes::from(format!("data: {frame}\n\n")));
                }
            }
            (frames, Tail::Finish)
        }
        ReplyKind::Malformed(raw) => (vec![Bytes::from(format!("data: {raw}\n\n"))], Tail::Finish),
        ReplyKind::Stall(text) => (delta_frames(reply, ctx, text), Tail::Stall),
        ReplyKind::Disconnect(text) => (delta_frames(reply, ctx, text), Tail::Disconnect),
        ReplyKind::Status { .. } => (Vec::new(), Tail::Finish),
    };
    if matches!(tail, Tail::Finish) && !reply.no_done {
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
    body_response(
        200,
        "text/event-stream",
        frames,
        tail,
        reply.chunk_delay,
        guard,
    )
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
