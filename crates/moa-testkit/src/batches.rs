//! The vendors' batch APIs on the fake server: OpenAI's Files and Batch API (upload a JSONL
//! file with `purpose=batch` as multipart, create a batch naming it, poll it, download the
//! output and error files) and Anthropic's Message Batches (create with the requests inline,
//! poll, read the JSONL results). Each request of a batch is recorded and answered by the same
//! script as a live call (its `path` says which batch carried it); a batch stays in progress
//! while the server holds batches, so a test can stop its client mid-batch.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Multipart, Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::{json, Value};

use crate::reply::ReplyKind;
use crate::script::Recorded;
use crate::server::{json_response, AppState, Ctx, Dialect};
use crate::{anthropic, openai};

/// One request's answer inside a batch: the status and body a live call would have had.
#[derive(Clone, Debug)]
struct Answered {
    custom_id: String,
    status: u16,
    body: Value,
}

/// A batch the fake holds.
#[derive(Clone, Debug)]
pub struct FakeBatch {
    pub id: String,
    /// The requests' custom ids, in the order submitted.
    pub custom_ids: Vec<String>,
    answers: Vec<Answered>,
}

#[derive(Default)]
pub(crate) struct Batches {
    inner: Mutex<Inner>,
    created: tokio::sync::watch::Sender<usize>,
    /// Status polls of all batches so far.
    polled: tokio::sync::watch::Sender<usize>,
}

#[derive(Default)]
struct Inner {
    files: HashMap<String, Bytes>,
    batches: Vec<FakeBatch>,
    /// While true, every batch reports itself in progress.
    held: bool,
    /// Status polls received, per batch id.
    polls: HashMap<String, usize>,
    /// Where Anthropic's `results_url` points (default: this server).
    results_base: Option<String>,
}

impl Batches {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn hold(&self, held: bool) {
        self.lock().held = held;
    }

    pub fn set_results_base(&self, base: &str) {
        self.lock().results_base = Some(base.to_string());
    }

    pub fn list(&self) -> Vec<FakeBatch> {
        self.lock().batches.clone()
    }

    pub fn polls(&self, id: &str) -> usize {
        self.lock().polls.get(id).copied().unwrap_or(0)
    }

    pub async fn wait_for_polls(&self, count: usize) {
        let mut rx = self.polled.subscribe();
        let _ = rx.wait_for(|n| *n >= count).await;
    }

    pub async fn wait_for(&self, count: usize) {
        let mut rx = self.created.subscribe();
        let _ = rx.wait_for(|n| *n >= count).await;
    }

    /// Answers every request of a new batch with the script and keeps the answers.
    fn create(&self, state: &AppState, id: String, requests: Vec<(String, Value)>) -> FakeBatch {
        let mut answers = Vec::new();
        for (custom_id, body) in &requests {
            let status_and_body = answer(state, &id, body);
            answers.push(Answered {
                custom_id: custom_id.clone(),
                status: status_and_body.0,
                body: status_and_body.1,
            });
        }
        let batch = FakeBatch {
            id,
            custom_ids: requests.into_iter().map(|(c, _)| c).collect(),
            answers,
        };
        let count = {
            let mut inner = self.lock();
            inner.batches.push(batch.clone());
            inner.batches.len()
        };
        self.created.send_replace(count);
        batch
    }

    /// The batch `id` as a client sees it now: `None` if unknown; whether it has ended. A
    /// status poll is counted.
    fn poll(&self, id: &str, counted: bool) -> Option<(FakeBatch, bool)> {
        let mut inner = self.lock();
        if counted {
            *inner.polls.entry(id.to_string()).or_default() += 1;
            self.polled.send_modify(|n| *n += 1);
        }
        let held = inner.held;
        let batch = inner.batches.iter().find(|b| b.id == id)?.clone();
        Some((batch, !held))
    }
}

/// The status and body a live, non-streamed call with `body` would have been answered with.
fn answer(state: &AppState, batch: &str, body: &Value) -> (u16, Value) {
    let model = body["model"].as_str().unwrap_or_default().to_string();
    let raw = Bytes::from(body.to_string());
    let recorded = Recorded {
        seq: 0,
        model: model.clone(),
        path: format!("batch:{batch}"),
        headers: Vec::new(),
        body: raw,
        json: body.clone(),
        received_at: Instant::now(),
    };
    let prompt_bytes: usize = recorded.messages().iter().map(|(_, c)| c.len()).sum();
    let (seq, reply) = state.script.record(recorded);
    let ctx = Ctx {
        dialect: state.dialect,
        seq,
        model,
        include_usage: true,
        prompt_bytes,
        logprobs: state.dialect == Dialect::OpenAi && body["logprobs"].as_bool() == Some(true),
    };
    match &reply.kind {
        ReplyKind::Text(text) => match state.dialect {
            Dialect::Anthropic => (200, anthropic::message(&reply, &ctx, text)),
            _ => (200, openai::completion(&reply, &ctx, text)),
        },
        ReplyKind::Status { status, body } => (
            *status,
            serde_json::from_str(body).unwrap_or_else(|_| json!(body)),
        ),
        _ => (
            500,
            json!({"error": {"type": "server_error", "message": "the fake cannot batch this reply"}}),
        ),
    }
}

fn openai_error(status: u16, message: &str) -> Response {
    let body = json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": null}});
    json_response(status, body.to_string())
}

/// `POST /v1/files`: a multipart upload of the input file, `purpose` = `batch`.
pub(crate) async fn upload(State(state): State<AppState>, mut form: Multipart) -> Response {
    let (mut purpose, mut file) = (None, None);
    while let Ok(Some(field)) = form.next_field().await {
        match field.name() {
            Some("purpose") => purpose = field.text().await.ok(),
            Some("file") => file = field.bytes().await.ok(),
            _ => {}
        }
    }
    let Some(file) = file else {
        return openai_error(400, "'file' is a required property");
    };
    if purpose.as_deref() != Some("batch") {
        return openai_error(400, "'purpose' must be 'batch' for a batch input file");
    }
    let bytes = file.len();
    let id = {
        let mut inner = state.batches.lock();
        let id = format!("file-fake{}", inner.files.len());
        inner.files.insert(id.clone(), file);
        id
    };
    let body = json!({"id": id, "object": "file", "bytes": bytes, "created_at": 1_700_000_000,
                      "filename": "batch.jsonl", "purpose": "batch"});
    json_response(200, body.to_string())
}

/// `POST /v1/batches`: a batch over an uploaded file.
pub(crate) async fn create_openai(State(state): State<AppState>, body: Bytes) -> Response {
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if request["endpoint"] != "/v1/chat/completions" || request["completion_window"] != "24h" {
        return openai_error(
            400,
            "endpoint must be /v1/chat/completions and completion_window 24h",
        );
    }
    let file_id = request["input_file_id"].as_str().unwrap_or_default();
    let Some(file) = state.batches.lock().files.get(file_id).cloned() else {
        return openai_error(404, &format!("No such File object: {file_id}"));
    };
    let mut requests = Vec::new();
    for (n, line) in file.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let Ok(line) = serde_json::from_slice::<Value>(line) else {
            return openai_error(400, &format!("line {}: invalid JSON", n + 1));
        };
        if line["method"] != "POST" || line["url"] != "/v1/chat/completions" {
            return openai_error(400, &format!("line {}: method or url", n + 1));
        }
        let custom_id = line["custom_id"].as_str().unwrap_or_default().to_string();
        requests.push((custom_id, line["body"].clone()));
    }
    let id = format!("batch_fake{}", state.batches.list().len());
    let batch = state.batches.create(&state, id, requests);
    json_response(200, openai_batch(&batch, false, file_id).to_string())
}

fn openai_batch(batch: &FakeBatch, ended: bool, input: &str) -> Value {
    let total = batch.answers.len();
    let failed = batch.answers.iter().filter(|a| a.status != 200).count();
    let (status, completed, failed, output, errors) = match ended {
        true => (
            "completed",
            total - failed,
            failed,
            json!(format!("file-out-{}", batch.id)),
            match failed {
                0 => Value::Null,
                _ => json!(format!("file-err-{}", batch.id)),
            },
        ),
        false => ("in_progress", 0, 0, Value::Null, Value::Null),
    };
    json!({
        "id": batch.id, "object": "batch", "endpoint": "/v1/chat/completions", "errors": null,
        "input_file_id": input, "completion_window": "24h", "status": status,
        "output_file_id": output, "error_file_id": errors, "created_at": 1_700_000_000,
        "request_counts": {"total": total, "completed": completed, "failed": failed},
        "metadata": null,
    })
}

/// `GET /v1/batches/{id}`.
pub(crate) async fn get_openai(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match state.batches.poll(&id, true) {
        Some((batch, ended)) => json_response(200, openai_batch(&batch, ended, "").to_string()),
        None => openai_error(404, &format!("No batch found with id '{id}'.")),
    }
}

/// `GET /v1/files/{id}/content`: a batch's output file (answers with status 200) or error file
/// (the others), one JSON line per request.
pub(crate) async fn file_content(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Response {
    let (want_ok, batch_id) = match (id.strip_prefix("file-out-"), id.strip_prefix("file-err-")) {
        (Some(b), _) => (true, b.to_string()),
        (_, Some(b)) => (false, b.to_string()),
        _ => return openai_error(404, &format!("No such File object: {id}")),
    };
    let Some((batch, true)) = state.batches.poll(&batch_id, false) else {
        return openai_error(404, &format!("No such File object: {id}"));
    };
    let mut text = String::new();
    for (n, a) in batch.answers.iter().enumerate() {
        if (a.status == 200) != want_ok {
            continue;
        }
        let line = json!({
            "id": format!("batch_req_{n}"), "custom_id": a.custom_id,
            "response": {"status_code": a.status, "request_id": format!("req_{n}"), "body": a.body},
            "error": null,
        });
        text.push_str(&line.to_string());
        text.push('\n');
    }
    Response::builder()
        .header("content-type", "application/octet-stream")
        .body(axum::body::Body::from(text))
        .unwrap_or_default()
}

fn anthropic_error(status: u16, kind: &str, message: &str) -> Response {
    let body = json!({"type": "error", "error": {"type": kind, "message": message}});
    json_response(status, body.to_string())
}

/// `POST /v1/messages/batches`: the requests inline, each `{custom_id, params}`.
pub(crate) async fn create_anthropic(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if headers.get("anthropic-version").is_none() {
        return anthropic_error(
            400,
            "invalid_request_error",
            "anthropic-version: header is required",
        );
    }
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let Some(items) = request["requests"].as_array() else {
        return anthropic_error(400, "invalid_request_error", "requests: Field required");
    };
    let mut requests = Vec::new();
    for item in items {
        let custom_id = item["custom_id"].as_str().unwrap_or_default();
        let valid = !custom_id.is_empty()
            && custom_id.len() <= 64
            && custom_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid {
            return anthropic_error(
                400,
                "invalid_request_error",
                &format!("requests.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$' ({custom_id:?})"),
            );
        }
        requests.push((custom_id.to_string(), item["params"].clone()));
    }
    let id = format!("msgbatch_fake{}", state.batches.list().len());
    let batch = state.batches.create(&state, id, requests);
    json_response(200, anthropic_batch(&batch, false, "").to_string())
}

fn anthropic_batch(batch: &FakeBatch, ended: bool, base: &str) -> Value {
    let total = batch.answers.len();
    let errored = batch.answers.iter().filter(|a| a.status != 200).count();
    let (status, processing, succeeded, errored, results) = match ended {
        true => (
            "ended",
            0,
            total - errored,
            errored,
            json!(format!("{base}/v1/messages/batches/{}/results", batch.id)),
        ),
        false => ("in_progress", total, 0, 0, Value::Null),
    };
    json!({
        "id": batch.id, "type": "message_batch", "processing_status": status,
        "request_counts": {"processing": processing, "succeeded": succeeded, "errored": errored,
                           "canceled": 0, "expired": 0},
        "ended_at": null, "created_at": "2024-09-24T18:37:24.100435Z",
        "expires_at": "2024-09-25T18:37:24.100435Z", "cancel_initiated_at": null,
        "results_url": results,
    })
}

/// `GET /v1/messages/batches/{id}`.
pub(crate) async fn get_anthropic(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    let base = state
        .batches
        .lock()
        .results_base
        .clone()
        .unwrap_or_else(|| format!("http://{host}"));
    match state.batches.poll(&id, true) {
        Some((batch, ended)) => {
            json_response(200, anthropic_batch(&batch, ended, &base).to_string())
        }
        None => anthropic_error(404, "not_found_error", &format!("No batch with id {id}")),
    }
}

/// `GET /v1/messages/batches/{id}/results`: one JSON line per request.
pub(crate) async fn results_anthropic(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Response {
    let Some((batch, true)) = state.batches.poll(&id, false) else {
        return anthropic_error(
            404,
            "not_found_error",
            &format!("No results for batch {id}"),
        );
    };
    let mut text = String::new();
    for a in &batch.answers {
        let result = match a.status {
            200 => json!({"type": "succeeded", "message": a.body}),
            _ => json!({"type": "errored", "error": a.body}),
        };
        text.push_str(&json!({"custom_id": a.custom_id, "result": result}).to_string());
        text.push('\n');
    }
    Response::builder()
        .header("content-type", "application/binary")
        .body(axum::body::Body::from(text))
        .unwrap_or_default()
}
