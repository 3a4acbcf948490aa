//! The server end to end: an HTTP client against it on 127.0.0.1:0, the fake OpenAI server as
//! upstream.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use moa_core::{AgentSpec, Moa, Preset, PromptStyle, RunOptions, AGGREGATOR_SYSTEM_PROMPT};
use moa_providers::{Endpoint, Registry, RetryPolicy};
use moa_server::{router, serve_with, Connections, FixedEngines, ServerConfig};
use moa_testkit::{Ending, FakeOpenAi, Reply};
use serde_json::{json, Value};

struct Setup {
    fake: FakeOpenAi,
    base: String,
    http: reqwest::Client,
}

fn preset() -> Preset {
    Preset {
        name: "mini".into(),
        description: String::new(),
        layers: vec![vec![AgentSpec::new("up:p1"), AgentSpec::new("up:p2")]],
        aggregator: AgentSpec::new("up:agg"),
        prompt_style: PromptStyle::Reference,
        policy: Default::default(),
    }
}

async fn start(config: ServerConfig) -> Setup {
    start_with(config, Connections::default()).await
}

async fn start_with(config: ServerConfig, connections: Connections) -> Setup {
    let fake = FakeOpenAi::start().await;
    start_full(config, connections, RetryPolicy::none(), fake).await
}

async fn start_full(
    config: ServerConfig,
    connections: Connections,
    retry: RetryPolicy,
    fake: FakeOpenAi,
) -> Setup {
    fake.respond_with(|r| {
        if r.model == "agg" {
            Reply::text("The final answer.").with_usage(100, 4)
        } else {
            Reply::text(format!("{} thinks so", r.model)).with_usage(10, 3)
        }
    });
    let mut registry = Registry::new(Arc::new(|_| None));
    let mut endpoint = Endpoint::custom("up", &fake.base_url());
    endpoint.retry = retry;
    registry.insert_endpoint(endpoint);
    let moa = Moa::new(registry.bind(&preset()).unwrap(), RunOptions::default());
    let engines = FixedEngines(BTreeMap::from([("mini".to_string(), moa)]));
    let app = router(engines, config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(serve_with(
        listener,
        app,
        std::future::pending(),
        Duration::from_secs(1),
        connections,
    ));
    Setup {
        fake,
        base,
        http: reqwest::Client::new(),
    }
}

fn body(stream: bool) -> Value {
    json!({"model": "mini", "messages": [{"role": "user", "content": "Why?"}], "stream": stream})
}

impl Setup {
    async fn post(&self, body: &Value) -> reqwest::Response {
        self.http
            .post(format!("{}/v1/chat/completions", self.base))
            .json(body)
            .send()
            .await
            .unwrap()
    }
}

mod browser;
mod contract;
mod sdk;
mod sockets;

/// The text of choice 0 in an SSE body of chat.completion chunks, pieces joined.
pub(crate) fn streamed_content(text: &str) -> String {
    events(text)
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect()
}

/// The `data:` payloads of an SSE body.
pub(crate) fn events(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn a_whole_completion_in_openais_shape_with_total_usage() {
    let s = start(ServerConfig::default()).await;
    let response = s.post(&body(false)).await;
    assert_eq!(response.status(), 200);
    let json: Value = response.json().await.unwrap();
    assert_eq!(json["object"], "chat.completion");
    assert!(json["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(json["model"], "mini");
    assert_eq!(json["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        json["choices"][0]["message"]["content"],
        "The final answer."
    );
    assert_eq!(json["choices"][0]["finish_reason"], "stop");
    // Every upstream call counts: two proposers (10 + 3 each) and the aggregator (100 + 4).
    assert_eq!(
        json["usage"],
        json!({"prompt_tokens": 120, "completion_tokens": 10, "total_tokens": 130})
    );
    assert!(json.get("moa").is_none(), "the extension is opt-in");
    let agg = s.fake.requests_for("agg").remove(0);
    assert_eq!(
        agg.messages()[0].1,
        format!("{AGGREGATOR_SYSTEM_PROMPT}\n1. p1 thinks so\n2. p2 thinks so")
    );
}

#[tokio::test]
async fn streaming_forwards_the_aggregators_tokens_then_usage_and_done() {
    let s = start(ServerConfig::default()).await;
    let mut request = body(true);
    request["stream_options"] = json!({"include_usage": true});
    let response = s.post(&request).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let events = events(&response.text().await.unwrap());
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk" && c["id"] == chunks[0]["id"]));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "The final answer.");
    assert!(chunks.len() > 4, "the answer came in several chunks");
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["total_tokens"], 130);

    // Without include_usage there is no usage chunk.
    let events_plain = events_of(&s, body(true)).await;
    assert!(events_plain.iter().all(|e| !e.contains("\"usage\"")));
}

async fn events_of(s: &Setup, body: Value) -> Vec<String> {
    events(&s.post(&body).await.text().await.unwrap())
}

#[tokio::test]
async fn multi_turn_messages_reach_the_proposers_as_sent() {
    let s = start(ServerConfig::default()).await;
    let messages = json!([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Why?"}
    ]);
    let response = s
        .post(&json!({"model": "mini", "messages": messages}))
        .await;
    assert_eq!(response.status(), 200);
    let p1 = s.fake.requests_for("p1").remove(0);
    assert_eq!(p1.json["messages"], messages);
}

#[tokio::test]
async fn the_extension_returns_every_proposal_and_usage_per_model() {
    let s = start(ServerConfig::default()).await;
    let mut request = body(false);
    request["moa"] = json!({"include_proposals": true});
    let json: Value = s.post(&request).await.json().await.unwrap();
    let calls = json["moa"]["layers"][0]["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0]["answer"], "p1 thinks so");
    assert_eq!(json["moa"]["usage_by_model"]["up:agg"]["total_tokens"], 104);
    // Streamed, it arrives as one extra chunk with no choices.
    request["stream"] = json!(true);
    let events = events_of(&s, request).await;
    assert!(events
        .iter()
        .any(|e| e.contains("\"moa\"") && e.contains("\"choices\":[]")));
}

#[tokio::test]
async fn errors_come_in_openais_shape_with_the_right_status() {
    let s = start(ServerConfig::default()).await;
    let bad = s
        .http
        .post(format!("{}/v1/chat/completions", s.base))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let json: Value = bad.json().await.unwrap();
    assert_eq!(json["error"]["type"], "invalid_request_error");
    assert!(json["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not a valid chat completion request"));

    let unknown = s
        .post(&json!({"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]}))
        .await;
    assert_eq!(unknown.status(), 404);
    let json: Value = unknown.json().await.unwrap();
    assert_eq!(json["error"]["code"], "model_not_found");

    let empty = s.post(&json!({"model": "mini", "messages": []})).await;
    assert_eq!(empty.status(), 400);
}

#[tokio::test]
async fn upstream_failures_are_502() {
    let s = start(ServerConfig::default()).await;
    s.fake
        .respond_with(|_| Reply::error(500, "server_error", "upstream broke"));
    let response = s.post(&body(false)).await;
    assert_eq!(response.status(), 502);
    let json: Value = response.json().await.unwrap();
    assert_eq!(json["error"]["type"], "upstream_error");
    assert!(json["error"]["message"]
        .as_str()
        .unwrap()
        .contains("only 0 of 2 proposers answered"));
}

#[tokio::test]
async fn an_api_key_is_required_when_set() {
    let s = start(ServerConfig {
        api_key: Some("sk-server".into()),
        ..ServerConfig::default()
    })
    .await;
    let none = s.post(&body(false)).await;
    assert_eq!(none.status(), 401);
    assert_eq!(
        none.json::<Value>().await.unwrap()["error"]["code"],
        "invalid_api_key"
    );
    let url = format!("{}/v1/chat/completions", s.base);
    let wrong = s
        .http
        .post(&url)
        .bearer_auth("sk-wrong")
        .json(&body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let right = s
        .http
        .post(&url)
        .bearer_auth("sk-server")
        .json(&body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 200);
    let models = s
        .http
        .get(format!("{}/v1/models", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(models.status(), 401);
    // Health checks need no key.
    assert_eq!(
        s.http
            .get(format!("{}/health", s.base))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn models_lists_the_presets_and_bodies_are_limited() {
    let s = start(ServerConfig {
        max_body_bytes: 1024,
        ..ServerConfig::default()
    })
    .await;
    let json: Value = s
        .http
        .get(format!("{}/v1/models", s.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(json["object"], "list");
    assert_eq!(json["data"][0]["id"], "mini");
    let big = json!({"model": "mini", "messages": [{"role": "user", "content": "x".repeat(4096)}]});
    let response = s.post(&big).await;
    assert_eq!(response.status(), 413);
    assert_eq!(
        response.json::<Value>().await.unwrap()["error"]["type"],
        "invalid_request_error"
    );
}

#[tokio::test]
async fn a_client_that_disconnects_cancels_the_upstream_requests() {
    let s = start(ServerConfig::default()).await;
    s.fake.push("agg", Reply::stall_after("The answer starts"));
    let response = s.post(&body(true)).await;
    let mut bytes = response.bytes_stream();
    let mut seen = String::new();
    while !seen.contains("The ") {
        seen.push_str(&String::from_utf8_lossy(
            &bytes.next().await.unwrap().unwrap(),
        ));
    }
    drop(bytes);
    let agg = s
        .fake
        .requests()
        .iter()
        .find(|r| r.model == "agg")
        .unwrap()
        .seq;
    let ending = tokio::time::timeout(Duration::from_secs(10), s.fake.wait_ending(agg)).await;
    assert_eq!(ending, Ok(Ending::ClientGone));
}

#[tokio::test]
async fn a_saturated_server_answers_429() {
    let s = start(ServerConfig {
        max_concurrent_runs: 1,
        ..ServerConfig::default()
    })
    .await;
    s.fake
        .push("agg", Reply::stall_after("Holding the only slot"));
    let first = s.post(&body(true)).await;
    let mut held = first.bytes_stream();
    held.next().await.unwrap().unwrap();
    let second = s.post(&body(false)).await;
    assert_eq!(second.status(), 429);
    assert_eq!(
        second.json::<Value>().await.unwrap()["error"]["code"],
        "server_busy"
    );
    drop(held);
}

/// async-openai's types, as an independent check that ordinary OpenAI clients read our answers.
#[tokio::test]
async fn responses_deserialize_with_async_openais_types() {
    use async_openai::types::chat::{
        CreateChatCompletionResponse, CreateChatCompletionStreamResponse,
    };
    let s = start(ServerConfig::default()).await;
    let mut request = body(false);
    request["moa"] = json!({"include_proposals": true});
    let text = s.post(&request).await.text().await.unwrap();
    let whole: CreateChatCompletionResponse = serde_json::from_str(&text).unwrap();
    assert_eq!(
        whole.choices[0].message.content.as_deref(),
        Some("The final answer.")
    );
    assert_eq!(whole.usage.unwrap().total_tokens, 130);

    request["stream"] = json!(true);
    request["stream_options"] = json!({"include_usage": true});
    let events = events_of(&s, request).await;
    let chunks: Vec<CreateChatCompletionStreamResponse> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap_or_else(|err| panic!("{err}: {e}")))
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c.choices.first().and_then(|ch| ch.delta.content.clone()))
        .collect();
    assert_eq!(text, "The final answer.");
    assert_eq!(
        chunks.last().unwrap().usage.as_ref().unwrap().total_tokens,
        130
    );
}

/// A streamed run that fails before the client sees anything answers with the proper status
/// and an OpenAI error body; one that fails after its first content ends with an error frame
/// and `[DONE]` on the 200 already sent.
#[tokio::test]
async fn a_streamed_run_fails_with_a_status_before_content_and_a_frame_after() {
    let s = start(ServerConfig::default()).await;
    s.fake.respond_with(|r| match r.model.as_str() {
        "agg" => Reply::status(500, r#"{"error":{"message":"boom at http://10.1.2.3"}}"#),
        model => Reply::text(format!("{model} thinks so")),
    });
    let response = s.post(&body(true)).await;
    assert_eq!(response.status(), 502);
    assert!(response
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let json: Value = response.json().await.unwrap();
    assert_eq!(json["error"]["code"], "upstream_error");
    assert!(!json.to_string().contains("10.1.2.3"), "{json}");

    s.fake.respond_with(|r| match r.model.as_str() {
        "agg" => Reply::disconnect_after("The final"),
        model => Reply::text(format!("{model} thinks so")),
    });
    let response = s.post(&body(true)).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let events = events(&text);
    let content: String = events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(
        content, "The final",
        "what streamed before the failure: {text}"
    );
    assert_eq!(events.last().unwrap(), "[DONE]");
    let error: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(error["error"]["type"], "upstream_error", "{text}");
}

/// While a stream is silent (the proposers are still writing), comment lines keep it open.
#[tokio::test]
async fn a_silent_stream_gets_keep_alive_comments() {
    let s = start(ServerConfig {
        stream_hold: Duration::ZERO,
        keep_alive: Duration::from_millis(20),
        ..ServerConfig::default()
    })
    .await;
    s.fake.respond_with(|r| match r.model.as_str() {
        "agg" => Reply::text("The final answer."),
        model => Reply::text(format!("{model} thinks so")).with_delay(Duration::from_millis(400)),
    });
    let text = s.post(&body(true)).await.text().await.unwrap();
    assert!(text.contains(": keep-alive\n\n"), "{text}");
    // Standard clients skip comments: the content is whole.
    let content = streamed_content(&text);
    assert_eq!(content, "The final answer.");
}

#[tokio::test]
async fn the_playground_is_served_with_a_strict_policy_and_off_with_no_ui() {
    let s = start(ServerConfig {
        api_key: Some("sk-server".into()),
        ..ServerConfig::default()
    })
    .await;
    // The page is static and asks for the key itself: it loads without one.
    let page = s.http.get(format!("{}/", s.base)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let h = page.headers();
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    let policy = h["content-security-policy"].to_str().unwrap();
    assert!(policy.contains("script-src 'self'") && policy.contains("connect-src 'self'"));
    assert_eq!(h["x-content-type-options"], "nosniff");
    let html = page.text().await.unwrap();
    assert!(html.contains(r#"<script src="/ui/app.js""#), "{html}");
    for (path, kind) in [
        ("/ui/app.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
    ] {
        let asset = s
            .http
            .get(format!("{}{path}", s.base))
            .send()
            .await
            .unwrap();
        assert_eq!(asset.status(), 200, "{path}");
        assert!(asset.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with(kind));
    }
    // Another Host (DNS rebinding) gets no page either.
    let rebound = s
        .http
        .get(format!("{}/", s.base))
        .header("host", "attacker.example")
        .send()
        .await
        .unwrap();
    assert_eq!(rebound.status(), 403);

    let off = start(ServerConfig {
        ui: false,
        ..ServerConfig::default()
    })
    .await;
    for path in ["/", "/ui/app.js"] {
        let response = off
            .http
            .get(format!("{}{path}", off.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{path}");
    }
    let models = off
        .http
        .get(format!("{}/v1/models", off.base))
        .send()
        .await
        .unwrap();
    assert_eq!(models.status(), 200, "the API stays");
}

#[tokio::test]
async fn browsers_get_cors_and_every_response_an_id() {
    let s = start(ServerConfig {
        api_key: Some("sk-server".into()),
        hosts: moa_server::Hosts {
            allowed_origins: vec!["https://app.example.com".into()],
            ..moa_server::Hosts::default()
        },
        ..ServerConfig::default()
    })
    .await;
    let url = format!("{}/v1/chat/completions", s.base);
    // The preflight carries no key and is answered.
    let preflight = s
        .http
        .request(reqwest::Method::OPTIONS, &url)
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 204);
    let h = preflight.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
    assert!(h["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .contains("authorization"));
    assert!(h["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("POST"));
    // A foreign origin's preflight is refused like its requests.
    let foreign = s
        .http
        .request(reqwest::Method::OPTIONS, &url)
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), 403);

    // The real request: CORS headers, and the client's id echoed.
    let uuid = "0f8fad5b-d9cb-469f-a165-70867728950e";
    let response = s
        .http
        .post(&url)
        .header("origin", "https://app.example.com")
        .header("authorization", "Bearer sk-server")
        .header("x-request-id", uuid)
        .json(&body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_eq!(response.headers()["x-request-id"], uuid);
    // ... and sent upstream with every model call of the run.
    for call in s.fake.requests() {
        assert_eq!(call.header("x-request-id"), Some(uuid), "{}", call.model);
    }
    // An id that cannot be passed on is replaced; errors get one too.
    let response = s
        .http
        .get(format!("{}/v1/models", s.base))
        .header("x-request-id", "bad id with spaces")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let id = response.headers()["x-request-id"].to_str().unwrap();
    assert!(moa_core::tracecontext::is_uuid(id), "{id}");
}

/// llama-cpp-python's server refuses an `X-Request-Id` that is not a UUID (400, empty body):
/// a client's own id of another shape is echoed and logged but not sent upstream, and the
/// ids the server makes are UUIDs, so runs through `moa serve` reach it either way.
#[tokio::test]
async fn request_ids_upstream_are_uuids_so_llamacpp_takes_them() {
    let fake = FakeOpenAi::llamacpp().await;
    let s = start_full(
        ServerConfig::default(),
        Connections::default(),
        RetryPolicy::none(),
        fake,
    )
    .await;
    for id in [Some("trace-42.a"), None] {
        let mut request = s
            .http
            .post(format!("{}/v1/chat/completions", s.base))
            .json(&body(false));
        if let Some(id) = id {
            request = request.header("x-request-id", id);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200, "{id:?}");
        let echoed = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_string();
        assert_eq!(id.is_some(), echoed == "trace-42.a", "{echoed}");
    }
    let sent: Vec<Option<String>> = s
        .fake
        .requests()
        .iter()
        .map(|r| r.header("x-request-id").map(str::to_string))
        .collect();
    assert_eq!(sent.len(), 6);
    assert!(sent[..3].iter().all(Option::is_none), "{sent:?}");
    assert!(
        sent[3..]
            .iter()
            .all(|id| id.as_deref().is_some_and(moa_core::tracecontext::is_uuid)),
        "{sent:?}"
    );
}

/// Without a tracer, a client's `traceparent` reaches every upstream call as it came (so the
/// upstream's spans join the client's trace); a malformed one, or none, sends none.
#[tokio::test]
async fn a_clients_traceparent_is_passed_upstream() {
    let s = start(ServerConfig::default()).await;
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    for (sent, expected) in [
        (Some(traceparent), Some(traceparent)),
        (
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331"),
            None,
        ),
        (None, None),
    ] {
        let before = s.fake.requests().len();
        let mut request = s
            .http
            .post(format!("{}/v1/chat/completions", s.base))
            .json(&body(false));
        if let Some(sent) = sent {
            request = request.header("traceparent", sent);
        }
        assert_eq!(request.send().await.unwrap().status(), 200);
        let calls = s.fake.requests();
        assert_eq!(calls.len(), before + 3);
        for call in &calls[before..] {
            assert_eq!(
                call.header("traceparent"),
                expected,
                "{sent:?} {}",
                call.model
            );
        }
    }
}

/// `/metrics` read by a Prometheus text-format parser, after a whole, a streamed and a refused
/// request.
#[tokio::test]
async fn metrics_count_requests_calls_tokens_and_latency() {
    use prometheus_parse::{Scrape, Value as Sample};
    let s = start(ServerConfig {
        api_key: Some("sk-server".into()),
        ..ServerConfig::default()
    })
    .await;
    let post = |body: Value| {
        s.http
            .post(format!("{}/v1/chat/completions", s.base))
            .header("authorization", "Bearer sk-server")
            .json(&body)
            .send()
    };
    assert_eq!(post(body(false)).await.unwrap().status(), 200);
    let streamed = post(body(true)).await.unwrap().text().await.unwrap();
    assert!(streamed.ends_with("data: [DONE]\n\n"));
    let unknown = json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]});
    assert_eq!(post(unknown).await.unwrap().status(), 404);

    // Behind the key, like the API.
    let url = format!("{}/metrics", s.base);
    assert_eq!(s.http.get(&url).send().await.unwrap().status(), 401);
    let response = s
        .http
        .get(&url)
        .header("authorization", "Bearer sk-server")
        .send()
        .await
        .unwrap();
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = response.text().await.unwrap();
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match &s.value {
                Sample::Counter(v) | Sample::Gauge(v) | Sample::Untyped(v) => *v,
                Sample::Histogram(h) => h.iter().map(|b| b.count).fold(0.0, f64::max),
                Sample::Summary(_) => f64::NAN,
            })
            .unwrap_or_else(|| panic!("{name} {labels:?} missing from:\n{text}"))
    };
    assert_eq!(
        value(
            "moa_requests_total",
            &[("preset", "mini"), ("status", "200")]
        ),
        2.0
    );
    assert_eq!(
        value(
            "moa_requests_total",
            &[("preset", "unknown"), ("status", "404")]
        ),
        1.0
    );
    for model in ["p1", "p2", "agg"] {
        let labels = [("provider", "up"), ("model", model), ("outcome", "ok")];
        assert_eq!(value("moa_upstream_calls_total", &labels), 2.0, "{model}");
    }
    // Two runs of (10 + 3) x 2 proposers and 100 + 4 for the aggregator.
    assert_eq!(
        value(
            "moa_tokens_total",
            &[("preset", "mini"), ("kind", "prompt")]
        ),
        240.0
    );
    assert_eq!(
        value(
            "moa_tokens_total",
            &[("preset", "mini"), ("kind", "completion")]
        ),
        20.0
    );
    assert_eq!(
        value("moa_request_duration_seconds", &[("preset", "mini")]),
        2.0
    );
    assert_eq!(value("moa_runs_in_flight", &[]), 0.0);

    // A call that succeeded after a retry counts as `retried`, not `ok`.
    let retrying = RetryPolicy {
        max_retries: 1,
        base_delay: Duration::ZERO,
        ..RetryPolicy::default()
    };
    let fake = FakeOpenAi::start().await;
    let r = start_full(
        ServerConfig::default(),
        Connections::default(),
        retrying,
        fake,
    )
    .await;
    r.fake.push("p1", Reply::rate_limited(0));
    assert_eq!(r.post(&body(false)).await.status(), 200);
    assert_eq!(r.post(&body(true)).await.status(), 200);
    let text = r
        .http
        .get(format!("{}/metrics", r.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = |outcome: &str| {
        format!("moa_upstream_calls_total{{provider=\"up\",model=\"p1\",outcome=\"{outcome}\"}} 1")
    };
    assert!(text.contains(&line("retried")), "{text}");
    assert!(text.contains(&line("ok")), "{text}");
}

/// A shared buffer the test's log lines are written into.
#[derive(Clone, Default)]
struct LogBuffer(Arc<std::sync::Mutex<Vec<u8>>>);

thread_local! {
    /// The buffer this thread's log lines go to, while a test captures them.
    static CAPTURING: std::cell::RefCell<Option<LogBuffer>> = const { std::cell::RefCell::new(None) };
}

/// Stops a capture when dropped.
struct Capture;

impl Drop for Capture {
    fn drop(&mut self) {
        CAPTURING.with(|c| c.borrow_mut().take());
    }
}

impl LogBuffer {
    /// JSON log lines of this thread into a buffer, while the guard lives. A test on tokio's
    /// default (one-thread) runtime captures the server's tasks too. One global subscriber
    /// serves every test and writes each line to its thread's buffer, if any: a subscriber per
    /// test (`set_default`) loses lines when another test's threads meet a log call site
    /// first, because tracing caches whether a call site is wanted.
    fn capture() -> (Self, Capture) {
        static GLOBAL: std::sync::Once = std::sync::Once::new();
        GLOBAL.call_once(|| {
            let subscriber = tracing_subscriber::fmt()
                .json()
                .with_writer(|| ThreadBuffer)
                .finish();
            tracing::subscriber::set_global_default(subscriber).unwrap();
        });
        let buffer = Self::default();
        CAPTURING.with(|c| *c.borrow_mut() = Some(buffer.clone()));
        (buffer, Capture)
    }

    fn lines(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

/// Writes to the calling thread's capture buffer; lines of threads not capturing are dropped.
struct ThreadBuffer;

impl std::io::Write for ThreadBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        CAPTURING.with(|c| {
            if let Some(buffer) = c.borrow().as_ref() {
                buffer.0.lock().unwrap().extend_from_slice(bytes);
            }
        });
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One access line per request with its id, status, latency, preset, tokens and cost; a
/// stream's tokens in its own line when it ends; never the key or the prompt.
#[tokio::test]
async fn every_request_gets_an_access_line_without_secrets() {
    let (buffer, _log) = LogBuffer::capture();
    let s = start(ServerConfig {
        api_key: Some("sk-server-secret".into()),
        ..ServerConfig::default()
    })
    .await;
    for stream in [false, true] {
        let response = s
            .http
            .post(format!("{}/v1/chat/completions", s.base))
            .header("authorization", "Bearer sk-server-secret")
            .header("x-request-id", format!("log-test-{stream}"))
            .json(&body(stream))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.text().await.unwrap();
    }
    let text = buffer.lines();
    assert!(!text.contains("sk-server-secret"), "{text}");
    assert!(!text.contains("Why?"), "no prompt in the log: {text}");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let access: Vec<&Value> = lines
        .iter()
        .filter(|l| l["target"] == "moa::access")
        .collect();
    assert_eq!(access.len(), 2, "{text}");
    let whole = &access[0]["fields"];
    assert_eq!(whole["request_id"], "log-test-false");
    assert_eq!(whole["method"], "POST");
    assert_eq!(whole["path"], "/v1/chat/completions");
    assert_eq!(whole["status"], 200);
    assert_eq!(whole["preset"], "mini");
    assert_eq!(whole["tokens"], 130);
    assert!(whole["latency_ms"].is_u64());
    assert_eq!(access[1]["fields"]["stream"], true);
    let finished = lines
        .iter()
        .find(|l| l["target"] == "moa::run" && l["fields"]["request_id"] == "log-test-true")
        .unwrap_or_else(|| panic!("{text}"));
    assert_eq!(finished["fields"]["tokens"], 130);
    assert!(!lines.iter().any(|l| l["target"] == "moa::prompt"));
}

/// With `log_prompts`, the last message is logged, under its own target.
#[tokio::test]
async fn prompts_are_logged_only_when_asked() {
    let (buffer, _log) = LogBuffer::capture();
    let s = start(ServerConfig {
        log_prompts: true,
        ..ServerConfig::default()
    })
    .await;
    assert_eq!(s.post(&body(false)).await.status(), 200);
    let text = buffer.lines();
    let prompt = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|l| l["target"] == "moa::prompt")
        .unwrap_or_else(|| panic!("{text}"));
    assert_eq!(prompt["fields"]["prompt"], "Why?");
}
