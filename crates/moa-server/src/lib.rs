//! `moa serve`: MoA presets behind an OpenAI-compatible API, so any OpenAI client can use a preset
//! as if it were a model. Streaming forwards the aggregator's tokens as they arrive.
//!
//! Routes: `POST /v1/chat/completions`, `GET /v1/models`, `GET /health`, `GET /metrics`, and
//! the playground page at `/` (see `ui.rs`). The server holds no
//! conversation state: every request carries its messages, so replicas scale out behind any load
//! balancer. It holds no MoA logic either: requests become engine runs, events become chunks.

mod error;
mod guard;
pub mod metrics;
#[cfg(feature = "otel")]
pub mod otel;
mod spans;
mod ui;
mod wire;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use moa_core::{Moa, RunEvent};
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use error::ApiError;
pub use guard::Hosts;
pub use spans::{RunSpan, SpanSink};
use wire::Envelope;

/// The engines served, by preset name. A request's changes to a run (the client's sampling
/// fields) travel in its [`moa_core::RunRequest`], not in the engine.
pub trait Engines: Send + Sync + 'static {
    /// The preset names served, in listing order.
    fn names(&self) -> Vec<String>;
    /// The engine for `preset`; `None` if it is not served.
    fn engine(&self, preset: &str) -> Option<Moa>;

    /// An engine for `changed`, a request's changes to served preset `name`. By default the
    /// changed preset may use the providers `name` already uses; a server with a provider
    /// registry can offer more.
    fn bind(&self, name: &str, changed: &moa_core::Preset) -> Result<Moa, String> {
        let base = self
            .engine(name)
            .ok_or_else(|| format!("the model `{name}` does not exist here"))?;
        let plan = base.plan().rebind(changed)?;
        Ok(Moa::new(plan, base.options().clone()))
    }
}

/// Fixed engines by preset name: for tests and simple embeddings.
pub struct FixedEngines(pub BTreeMap<String, Moa>);

impl Engines for FixedEngines {
    fn names(&self) -> Vec<String> {
        self.0.keys().cloned().collect()
    }

    fn engine(&self, preset: &str) -> Option<Moa> {
        self.0.get(preset).cloned()
    }
}

/// Limits and credentials.
#[derive(Clone)]
pub struct ServerConfig {
    /// Clients must send `Authorization: Bearer <key>` when set.
    pub api_key: Option<String>,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// MoA runs at once; more are refused with 429.
    pub max_concurrent_runs: usize,
    /// The longest one request may take, start to last byte.
    pub request_timeout: Duration,
    /// The longest a client may take to send a request's body once its headers are in.
    pub body_timeout: Duration,
    /// The `Host` names and browser origins served.
    pub hosts: Hosts,
    /// How long a streamed response waits for the first thing the client will see before it
    /// begins anyway: a run that fails within it gets its HTTP status.
    pub stream_hold: Duration,
    /// A comment line this often keeps a silent stream open through proxies.
    pub keep_alive: Duration,
    /// Count requests and runs for `/metrics` (off: no counting, and `/metrics` is 404).
    pub metrics: bool,
    /// Serve the playground page at `/` (off: `/` is 404).
    pub ui: bool,
    /// Where each finished run goes as spans (the `otel` feature's OTLP exporter). With it,
    /// every upstream call is a span of its own and its `traceparent` names that span;
    /// without, a client's `traceparent` is passed upstream as it came.
    pub spans: Option<Arc<dyn SpanSink>>,
    /// Log each request's last message (its first 2,000 characters) in a `moa::prompt` line.
    /// Off by default: prompts are the users' data.
    pub log_prompts: bool,
    /// Refuse requests that change their preset (`moa.proposers`, `moa.layers`, ...): clients
    /// then run only the operator's presets, at their cost.
    pub fixed_presets: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            api_key: None,
            max_body_bytes: 4 << 20,
            max_concurrent_runs: 1024,
            request_timeout: Duration::from_secs(900),
            body_timeout: Duration::from_secs(30),
            hosts: Hosts::default(),
            stream_hold: Duration::from_secs(20),
            keep_alive: Duration::from_secs(15),
            fixed_presets: false,
            metrics: true,
            ui: true,
            spans: None,
            log_prompts: false,
        }
    }
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_concurrent_runs", &self.max_concurrent_runs)
            .field("request_timeout", &self.request_timeout)
            .field("body_timeout", &self.body_timeout)
            .field("hosts", &self.hosts)
            .field("stream_hold", &self.stream_hold)
            .field("keep_alive", &self.keep_alive)
            .field("fixed_presets", &self.fixed_presets)
            .field("metrics", &self.metrics)
            .field("ui", &self.ui)
            .field("spans", &self.spans.is_some())
            .field("log_prompts", &self.log_prompts)
            .finish()
    }
}

struct AppState {
    engines: Box<dyn Engines>,
    config: ServerConfig,
    runs: Arc<Semaphore>,
    counter: AtomicU64,
    metrics: Arc<metrics::Metrics>,
}

/// The API's routes.
pub fn router(engines: impl Engines, config: ServerConfig) -> Router {
    let state = Arc::new(AppState {
        engines: Box::new(engines),
        runs: Arc::new(Semaphore::new(config.max_concurrent_runs)),
        counter: AtomicU64::new(0),
        metrics: Arc::new(metrics::Metrics::new(config.metrics)),
        config,
    });
    let page = match state.config.ui {
        true => ui::routes(),
        false => Router::new(),
    };
    Router::new()
        .merge(page)
        .route("/v1/chat/completions", post(chat))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/metrics", get(scrape))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "not_found",
                "no such route; try POST /v1/chat/completions",
            )
        })
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            check_hosts,
        ))
        .with_state(state)
}

/// Every route: the `Host` and `Origin` a request names must be served here.
async fn check_hosts(
    State(state): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    state.config.hosts.check(request.headers())?;
    let id = guard::request_id(request.headers()).unwrap_or_else(moa_core::tracecontext::new_uuid);
    // An allowed browser origin (the check above passed) gets CORS headers; its preflight is
    // answered here, before any key is asked for, as browsers send none with it.
    let origin = request.headers().get(header::ORIGIN).cloned();
    if request.method() == axum::http::Method::OPTIONS {
        let mut response = StatusCode::NO_CONTENT.into_response();
        if let Some(origin) = origin {
            guard::cors(response.headers_mut(), origin, true);
        }
        return Ok(response);
    }
    request.extensions_mut().insert(RequestId(id.clone()));
    let client_trace = request
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(moa_core::TraceContext::parse);
    request.extensions_mut().insert(ClientTrace(client_trace));
    let (method, path) = (request.method().clone(), request.uri().path().to_string());
    let started = std::time::Instant::now();
    let mut response = next.run(request).await;
    // One access line per request. Never a key or a prompt: the path, not the query.
    let run = response.extensions().get::<RunInfo>();
    tracing::info!(
        target: "moa::access",
        request_id = %id,
        method = %method,
        path = %path,
        status = response.status().as_u16(),
        latency_ms = started.elapsed().as_millis() as u64,
        preset = run.map(|r| r.preset.as_str()),
        stream = run.map(|r| r.stream),
        tokens = run.and_then(|r| r.tokens),
        cost = run.and_then(|r| r.cost),
    );
    if let Some(origin) = origin {
        guard::cors(response.headers_mut(), origin, false);
    }
    if let Ok(value) = header::HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    Ok(response)
}

/// The request's id (`X-Request-Id`, taken from the client or made here): returned and logged.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// The trace context a client sent (`traceparent`), if it was well formed.
#[derive(Clone, Copy, Debug)]
struct ClientTrace(Option<moa_core::TraceContext>);

/// What the access log says about a chat request's run (a stream's tokens and cost come in its
/// `moa::run` line when it ends).
#[derive(Clone, Debug)]
struct RunInfo {
    preset: String,
    stream: bool,
    tokens: Option<u64>,
    cost: Option<f64>,
}

fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    guard::authorize(state.config.api_key.as_deref(), headers)
}

/// Reads a request's body after its headers passed the checks: within the body timeout and
/// the size limit.
async fn read_body(state: &AppState, body: Body) -> Result<Bytes, ApiError> {
    let limit = state.config.max_body_bytes;
    let read = tokio::time::timeout(state.config.body_timeout, axum::body::to_bytes(body, limit));
    match read.await {
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request_error",
            "body_timeout",
            "the request body did not arrive in time",
        )),
        Ok(Err(e)) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            Err(match too_large {
                true => ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "invalid_request_error",
                    "body_too_large",
                    format!("the request body is larger than {limit} bytes"),
                ),
                false => ApiError::bad_request(format!("cannot read the request body: {e}")),
            })
        }
        Ok(Ok(bytes)) => Ok(bytes),
    }
}

async fn models(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let data: Vec<_> = state
        .engines
        .names()
        .into_iter()
        .filter_map(|id| state.engines.engine(&id).map(|moa| model_json(&id, &moa)))
        .collect();
    Ok(Json(json!({"object": "list", "data": data})).into_response())
}

/// A preset as OpenAI describes a model, with its layers in a `moa` field.
fn model_json(id: &str, moa: &Moa) -> serde_json::Value {
    let plan = moa.plan();
    let layers: Vec<Vec<&str>> = plan
        .layers
        .iter()
        .map(|layer| layer.iter().map(|a| a.spec.model.as_str()).collect())
        .collect();
    let mut described = json!({"layers": layers, "aggregator": plan.aggregator.spec.model,
                               "prompt_style": plan.prompt_style.name()});
    // The run policy's settings, when they are not the reference's.
    if let Ok(serde_json::Value::Object(policy)) = serde_json::to_value(&plan.policy) {
        for (key, value) in policy {
            described[key] = value;
        }
    }
    json!({"id": id, "object": "model", "created": 0, "owned_by": "moa", "moa": described})
}

/// `GET /v1/models/{id}`: one preset, or 404.
async fn model(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(id): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    match state.engines.engine(&id) {
        Some(moa) => Ok(Json(model_json(&id, &moa)).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "model_not_found",
            format!(
                "the model `{id}` does not exist here; GET /v1/models lists the presets served"
            ),
        )),
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `GET /metrics`: Prometheus' text format; behind the API key when one is set.
async fn scrape(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response())
}

/// `POST /v1/chat/completions`, counted in the metrics by preset and status.
async fn chat(State(state): State<Arc<AppState>>, request: Request) -> Result<Response, ApiError> {
    let mut preset = None;
    let result = chat_run(&state, request, &mut preset).await;
    let status = match &result {
        Ok(response) => response.status(),
        Err(error) => error.status,
    };
    // Only served presets name a series: a client's made-up model names do not.
    let label = preset.as_deref().unwrap_or("unknown");
    state.metrics.request(label, status.as_u16());
    result
}

async fn chat_run(
    state: &AppState,
    request: Request,
    served: &mut Option<String>,
) -> Result<Response, ApiError> {
    // Everything that can be refused from the headers is refused before the body is read.
    let (parts, body) = request.into_parts();
    let request_id = parts
        .extensions
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default();
    let client_trace = parts.extensions.get::<ClientTrace>().and_then(|t| t.0);
    authorize(state, &parts.headers)?;
    guard::json_body(&parts.headers)?;
    let body = read_body(state, body).await?;
    let request = wire::ChatRequest::parse(&body).map_err(ApiError::bad_request)?;
    if request.run.messages.is_empty() {
        return Err(ApiError::bad_request("`messages` is empty"));
    }
    let Some(mut moa) = state.engines.engine(&request.model) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "model_not_found",
            format!(
                "the model `{}` does not exist here; GET /v1/models lists the presets served",
                request.model
            ),
        ));
    };
    *served = Some(request.model.clone());
    if state.config.log_prompts {
        let last = request.run.messages.last().map(|m| m.content.as_str());
        let prompt: String = last.unwrap_or_default().chars().take(2000).collect();
        tracing::info!(target: "moa::prompt", request_id = %request_id, prompt = %prompt);
    }
    // The request's changes to the preset, checked like the config's.
    let changed = !request.changes.is_empty();
    if changed && state.config.fixed_presets {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "permission_error",
            "preset_changes_not_allowed",
            "this server runs its presets as they are (moa serve --fixed-presets): leave out \
             `moa.proposers`, `aggregator`, `layers`, `proposer_temperature`, \
             `proposer_max_tokens` and `prompt_style`, or choose another preset",
        ));
    }
    if changed {
        let preset = request
            .changes
            .apply(moa.plan().preset())
            .map_err(|e| ApiError::bad_request(format!("`moa`: {e}")))?;
        moa = state
            .engines
            .bind(&request.model, &preset)
            .map_err(|e| ApiError::bad_request(format!("`moa`: {e}")))?;
    }
    if request.min_proposals.is_some() || request.timeout.is_some() {
        let mut options = moa.options().clone();
        if let Some(n) = request.min_proposals {
            options.min_proposals = n;
        }
        if let Some(timeout) = request.timeout {
            options.timeout = timeout;
        }
        moa = Moa::new(moa.plan().clone(), options);
    }
    // The response's `moa` block says which plan ran when the request changed it or asked.
    let plan_json = (changed || request.include_proposals)
        .then(|| model_json(&request.model, &moa)["moa"].clone());
    let permit = state.runs.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "server_busy",
            "the server is running as many MoA requests as it allows; retry shortly",
        )
    })?;
    let env = Envelope::new(
        format!(
            "chatcmpl-moa-{:x}-{}",
            now(),
            state.counter.fetch_add(1, Ordering::Relaxed)
        ),
        now(),
        request.model.clone(),
    );
    let timeout = state.config.request_timeout;
    // Every upstream call carries the request's id and its place in the client's trace; with
    // a span sink, the run is a span of its own and each call one under it.
    // (The providers send the id upstream only if it is a UUID, as ours always are.)
    let mut request = request;
    request.run.request_id = Some(request_id.clone());
    let span = state.config.spans.clone().map(|sink| {
        let run = client_trace.map_or_else(|| moa_core::TraceContext::root(true), |c| c.child());
        request.run.call_spans = true;
        let span = RunSpan {
            context: run,
            parent: client_trace.map(|c| c.span_id),
            preset: request.model.clone(),
            request_id: request_id.clone(),
            stream: request.stream,
            started: std::time::SystemTime::now(),
        };
        (sink, span)
    });
    request.run.trace = span.as_ref().map(|(_, s)| s.context).or(client_trace);
    let recorder = Recorder {
        metrics: state.metrics.clone(),
        preset: request.model.clone(),
        request_id,
        started: std::time::Instant::now(),
        span,
        recorded: std::cell::Cell::new(false),
        _in_flight: state.metrics.run_started(),
        _permit: permit,
    };
    if request.stream {
        let info = RunInfo {
            preset: request.model.clone(),
            stream: true,
            tokens: None,
            cost: None,
        };
        let mut response = stream(moa, request, env, recorder, &state.config, plan_json).await?;
        response.extensions_mut().insert(info);
        return Ok(response);
    }
    let include_proposals = request.include_proposals;
    let trace = tokio::time::timeout(timeout, moa.run_request_to_end(request.run))
        .await
        .map_err(|_| run_timeout())
        .and_then(|run| run.map_err(|e| ApiError::from_run(&e)))
        .inspect_err(|e| recorder.failed(&e.message))?;
    recorder.done(&trace);
    drop(recorder);
    let moa = wire::moa_block(&trace, include_proposals, plan_json.as_ref());
    let mut response = Json(wire::completion(&env, &trace, moa)).into_response();
    response.extensions_mut().insert(RunInfo {
        preset: request.model.clone(),
        stream: false,
        tokens: Some(trace.usage.total_tokens),
        cost: trace.cost,
    });
    Ok(response)
}

/// A run from its start to its end: it holds the run's place among those the server allows,
/// counts it in flight, and records it in the metrics (and as spans) when it is done.
struct Recorder {
    metrics: Arc<metrics::Metrics>,
    preset: String,
    request_id: String,
    started: std::time::Instant,
    span: Option<(Arc<dyn SpanSink>, RunSpan)>,
    /// Its end was recorded (done or failed); if not when dropped, the run was cut short.
    recorded: std::cell::Cell<bool>,
    _in_flight: metrics::InFlight,
    _permit: OwnedSemaphorePermit,
}

impl Recorder {
    /// The run finished with `trace`; returns its seconds.
    fn done(&self, trace: &moa_core::Trace) -> f64 {
        let seconds = self.started.elapsed().as_secs_f64();
        self.metrics.run(&self.preset, seconds, trace);
        if let Some((sink, span)) = &self.span {
            sink.run(span, Ok(trace));
        }
        self.recorded.set(true);
        seconds
    }

    /// The run failed with `error` (in the client's terms).
    fn failed(&self, error: &str) {
        if let Some((sink, span)) = &self.span {
            sink.run(span, Err(error));
        }
        self.recorded.set(true);
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if !self.recorded.get() {
            self.failed("the run did not finish: it failed, timed out or its client went away");
        }
    }
}

/// A stream after its response began: the run, what is queued for the client, and the clocks.
struct Live {
    run: moa_core::RunStream,
    env: Envelope,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
    keep_alive: tokio::time::Interval,
    pending: std::collections::VecDeque<Bytes>,
    ended: bool,
    /// Holds the run's recorder (and so its place and in-flight count) until the stream ends.
    streamed: Streamed,
}

/// A failure after a stream began: an error frame, then the end.
fn error_frame(error: &ApiError) -> Bytes {
    Bytes::from(format!("data: {}\n\ndata: [DONE]\n\n", error.body()))
}

/// What the client gets for one run event while streaming: frames, and whether the stream ends.
struct Streamed {
    recorder: Recorder,
    include_usage: bool,
    include_proposals: bool,
    stream_proposals: bool,
    plan_json: Option<serde_json::Value>,
}

impl Streamed {
    fn frames(
        &self,
        env: &Envelope,
        event: Result<RunEvent, moa_core::MoaError>,
    ) -> (Option<Bytes>, bool) {
        match event {
            Ok(RunEvent::AggregatorDelta { choice, text }) => {
                (Some(wire::delta(env, choice, &text)), false)
            }
            Ok(RunEvent::AggregatorToolCall {
                choice,
                index,
                id,
                name,
                arguments,
            }) => {
                let frame = wire::tool_call_delta(
                    env,
                    choice,
                    index,
                    id.as_deref(),
                    name.as_deref(),
                    &arguments,
                );
                (Some(frame), false)
            }
            Ok(RunEvent::AggregatorLogprobs { choice, tokens }) => {
                (Some(wire::logprobs_delta(env, choice, &tokens)), false)
            }
            Ok(RunEvent::Done(trace)) => {
                let r = &self.recorder;
                let seconds = r.done(&trace);
                tracing::info!(
                    target: "moa::run",
                    request_id = %r.request_id,
                    preset = %r.preset,
                    elapsed_ms = (seconds * 1000.0) as u64,
                    tokens = trace.usage.total_tokens,
                    cost = trace.cost,
                    degraded = trace.degraded.len(),
                    "stream finished"
                );
                let mut frames = wire::finish(env, &trace);
                if let Some(moa) =
                    wire::moa_block(&trace, self.include_proposals, self.plan_json.as_ref())
                {
                    frames.extend_from_slice(&wire::chunk(env, json!([]), Some(("moa", moa))));
                }
                if self.include_usage {
                    frames.extend_from_slice(&wire::usage_chunk(env, &trace.usage));
                }
                frames.extend_from_slice(b"data: [DONE]\n\n");
                (Some(Bytes::from(frames)), true)
            }
            Ok(event) => {
                let frame = self
                    .stream_proposals
                    .then(|| wire::progress(env, &event))
                    .flatten();
                (frame, false)
            }
            Err(error) => {
                let error = ApiError::from_run(&error);
                self.recorder.failed(&error.message);
                (Some(error_frame(&error)), true)
            }
        }
    }

    /// Whether the client sees something of `event` (so the response must have begun).
    fn shows(&self, event: &RunEvent) -> bool {
        match event {
            RunEvent::AggregatorDelta { .. }
            | RunEvent::AggregatorToolCall { .. }
            | RunEvent::AggregatorLogprobs { .. }
            | RunEvent::Done(_) => true,
            _ => self.stream_proposals,
        }
    }
}

fn run_timeout() -> ApiError {
    ApiError::new(
        StatusCode::GATEWAY_TIMEOUT,
        "upstream_error",
        "timeout",
        "the MoA run took longer than the server allows",
    )
}

/// Streams the run as chat.completion.chunk events. The response begins with the first thing
/// the client will see (or after `hold`): a run that fails before that answers with its proper
/// status and error body; after it, with an error frame and `[DONE]`. While the stream is open,
/// a comment line every `keep_alive` keeps proxies from cutting a silent stream. Dropping the
/// body (the client went away) drops the run, which cancels every upstream request.
async fn stream(
    moa: Moa,
    request: wire::ChatRequest,
    env: Envelope,
    recorder: Recorder,
    config: &ServerConfig,
    plan_json: Option<serde_json::Value>,
) -> Result<Response, ApiError> {
    let streamed = Streamed {
        recorder,
        include_usage: request.include_usage,
        include_proposals: request.include_proposals,
        stream_proposals: request.stream_proposals,
        plan_json,
    };
    let choices = request.run.n.max(1);
    let mut run = moa.run_request(request.run);
    let mut deadline = Box::pin(tokio::time::sleep(config.request_timeout));
    // Hold the response until the client would see something, so that an early failure gets
    // its status; not past `stream_hold`, when a silent stream is better than none.
    let hold = tokio::time::sleep(config.stream_hold);
    tokio::pin!(hold);
    let first = loop {
        let event = tokio::select! {
            event = run.next() => event,
            () = &mut deadline => return Err(run_timeout()),
            () = &mut hold => break None,
        };
        match event {
            Some(Ok(event)) if streamed.shows(&event) => break Some(Ok(event)),
            Some(Ok(_)) => continue,
            Some(Err(error)) => {
                let error = ApiError::from_run(&error);
                streamed.recorder.failed(&error.message);
                return Err(error);
            }
            None => break None,
        }
    };
    let mut pending = std::collections::VecDeque::from([wire::opening(&env, choices)]);
    let mut ended = false;
    if let Some(event) = first {
        let (frame, end) = streamed.frames(&env, event);
        pending.extend(frame);
        ended = end;
    }
    // A day at most, so the first tick's instant cannot overflow.
    let period = config
        .keep_alive
        .clamp(Duration::from_millis(1), Duration::from_secs(86_400));
    let keep_alive = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let live = Live {
        run,
        env,
        deadline,
        keep_alive,
        pending,
        ended,
        streamed,
    };
    let frames = futures::stream::unfold(live, |mut st| async move {
        let Live {
            run,
            env,
            deadline,
            keep_alive,
            pending,
            ended,
            streamed,
        } = &mut st;
        if let Some(frame) = pending.pop_front() {
            return Some((Ok::<_, std::convert::Infallible>(frame), st));
        }
        if *ended {
            return None;
        }
        loop {
            let event = tokio::select! {
                event = run.next() => event,
                () = &mut *deadline => {
                    *ended = true;
                    return Some((Ok(error_frame(&run_timeout())), st));
                }
                _ = keep_alive.tick() => {
                    return Some((Ok(Bytes::from_static(b": keep-alive\n\n")), st));
                }
            };
            let event = event?;
            let (frame, end) = streamed.frames(env, event);
            *ended = end;
            if let Some(frame) = frame {
                keep_alive.reset();
                return Some((Ok(frame), st));
            }
        }
    });
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(frames))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()))
}

/// How connections are accepted and kept.
#[derive(Clone, Debug)]
pub struct Connections {
    /// Connections open at once; more wait in the listen queue until one closes. Keep it below
    /// the process's file limit, with room for upstream connections.
    pub max: usize,
    /// The longest a client may take to send a request's headers, and the longest an idle
    /// keep-alive connection is kept open (slowloris and idle connections are closed).
    pub header_timeout: Duration,
}

impl Default for Connections {
    fn default() -> Self {
        Self {
            max: 4096,
            header_timeout: Duration::from_secs(30),
        }
    }
}

/// Serves `router` on `listener` until `shutdown` completes, then lets in-flight requests finish
/// for at most `grace`; connections as [`Connections::default`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> std::io::Result<()> {
    serve_with(listener, router, shutdown, grace, Connections::default()).await
}

/// [`serve`] with connection limits of the caller's choosing.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    grace: Duration,
    connections: Connections,
) -> std::io::Result<()> {
    let max = connections.max.clamp(1, u32::MAX as usize >> 3);
    let slots = Arc::new(Semaphore::new(max));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot,
            _ = &mut shutdown => break,
        };
        // The semaphore is never closed.
        let Ok(slot) = slot else { break };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = &mut shutdown => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            // Out of file descriptors, or a connection reset before it was taken: try again
            // shortly rather than spin.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(
            stream,
            router.clone(),
            connections.header_timeout,
            stop_rx.clone(),
            slot,
        ));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Every connection holds a slot until it closes: all slots back means all are done.
    let _ = tokio::time::timeout(grace, slots.acquire_many(max as u32)).await;
    Ok(())
}

/// Serves one connection (HTTP/1.1 with keep-alive) until it closes, or until shutdown has
/// been signalled and its request in flight is done.
async fn connection(
    stream: tokio::net::TcpStream,
    router: Router,
    header_timeout: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
    _slot: OwnedSemaphorePermit,
) {
    let service = hyper_util::service::TowerToHyperService::new(router);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    tokio::pin!(conn);
    let stopping = async move {
        // The guard `wait_for` returns is dropped here, before anything else is awaited.
        let _ = stop.wait_for(|stopping| *stopping).await.map(|_| ());
    };
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stopping => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
