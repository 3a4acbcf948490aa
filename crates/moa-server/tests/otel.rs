//! OpenTelemetry export (the `otel` feature) against an in-process OTLP/HTTP receiver that
//! decodes what arrives with OpenTelemetry's own protobuf types: a span per run, layer and
//! upstream call with the GenAI attributes, the client's trace continued, each call's
//! `traceparent` upstream naming its own span, and nothing an upstream wrote in any span.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::HeaderMap;
use moa_core::{AgentSpec, Moa, Preset, Price, PriceTable, PromptStyle, RunOptions};
use moa_providers::{Endpoint, Registry, RetryPolicy};
use moa_server::otel::Otlp;
use moa_server::{router, serve, FixedEngines, ServerConfig};
use moa_testkit::{FakeOpenAi, Reply};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode, Span};
use prost::Message as _;
use serde_json::json;

const PLANTED: &str = "upstream http://10.1.2.3:9000/v1 says key sk-planted-otel is bad";

/// What the receiver got: each export's headers and decoded body.
type Received = Arc<Mutex<Vec<(HeaderMap, ExportTraceServiceRequest)>>>;

async fn receiver() -> (String, Received) {
    let received: Received = Arc::default();
    let store = received.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let store = store.clone();
            async move {
                let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                store.lock().unwrap().push((headers, request));
                (
                    [("content-type", "application/x-protobuf")],
                    Vec::<u8>::new(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, received)
}

fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a Any> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

fn text(span: &Span, key: &str) -> String {
    match attr(span, key) {
        Some(Any::StringValue(s)) => s.clone(),
        other => panic!("{key}: {other:?} in {}", span.name),
    }
}

fn int(span: &Span, key: &str) -> i64 {
    match attr(span, key) {
        Some(Any::IntValue(n)) => *n,
        other => panic!("{key}: {other:?} in {}", span.name),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_layers_and_calls_are_exported_as_genai_spans_in_the_clients_trace() {
    let (collector, received) = receiver().await;
    let vars = BTreeMap::from([
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.clone()),
        (
            "OTEL_EXPORTER_OTLP_HEADERS",
            "authorization=Bearer%20collector-key".into(),
        ),
        ("OTEL_SERVICE_NAME", "moa-test".into()),
        (
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment=ci".into(),
        ),
    ]);
    let otlp = Arc::new(
        Otlp::from_vars(|name| vars.get(name).cloned())
            .unwrap()
            .unwrap(),
    );
    assert_eq!(otlp.endpoint, format!("{collector}/v1/traces"));

    let fake = FakeOpenAi::start().await;
    fake.respond_with(|r| match r.model.as_str() {
        "p2" => Reply::error(500, "server_error", PLANTED),
        "agg" => Reply::text("Paris.").with_usage(100, 4),
        _ => Reply::text("p1 says Paris").with_usage(10, 3),
    });
    let mut registry = Registry::new(Arc::new(|_| None));
    let mut endpoint = Endpoint::custom("up", &fake.base_url());
    endpoint.retry = RetryPolicy::none();
    registry.insert_endpoint(endpoint);
    let preset = Preset {
        name: "mix".into(),
        description: String::new(),
        layers: vec![vec![AgentSpec::new("up:p1"), AgentSpec::new("up:p2")]],
        aggregator: AgentSpec::new("up:agg"),
        prompt_style: PromptStyle::Reference,
        policy: Default::default(),
    };
    let mut prices = PriceTable::empty();
    prices.set("up:agg", Price::new(1.0, 2.0));
    prices.set("up:p1", Price::new(1.0, 2.0));
    let options = RunOptions {
        prices: Arc::new(prices),
        ..RunOptions::default()
    };
    let moa = Moa::new(registry.bind(&preset).unwrap(), options);
    let config = ServerConfig {
        spans: Some(otlp.clone()),
        ..ServerConfig::default()
    };
    let app = router(FixedEngines(BTreeMap::from([("mix".into(), moa)])), config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(serve(
        listener,
        app,
        std::future::pending(),
        Duration::from_secs(1),
    ));

    let client_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .header("traceparent", format!("00-{client_trace}-{client_span}-01"))
        .json(&json!({"model": "mix", "messages": [{"role": "user", "content": "Capital?"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let exporter = otlp.clone();
    tokio::task::spawn_blocking(move || exporter.flush())
        .await
        .unwrap()
        .unwrap();

    let received = received.lock().unwrap();
    assert!(!received.is_empty(), "nothing was exported");
    let (headers, _) = &received[0];
    assert_eq!(headers["authorization"], "Bearer collector-key");
    assert_eq!(headers["content-type"], "application/x-protobuf");
    let resource = received[0].1.resource_spans[0].resource.as_ref().unwrap();
    let resource: BTreeMap<&str, String> = resource
        .attributes
        .iter()
        .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
            Any::StringValue(s) => Some((kv.key.as_str(), s.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(resource["service.name"], "moa-test");
    assert_eq!(resource["deployment.environment"], "ci");
    let spans: Vec<Span> = received
        .iter()
        .flat_map(|(_, r)| &r.resource_spans)
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| s.spans.clone())
        .collect();
    // Nothing an upstream wrote about itself is in any span.
    let raw: Vec<u8> = received
        .iter()
        .flat_map(|(_, r)| r.encode_to_vec())
        .collect();
    let raw = String::from_utf8_lossy(&raw);
    assert!(
        !raw.contains("10.1.2.3") && !raw.contains("sk-planted"),
        "{raw}"
    );

    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(spans.len(), 5, "{names:?}");
    let named = |name: &str| {
        spans
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("{name} in {names:?}"))
    };
    let run = named("invoke_agent mix");
    let layer = named("moa.layer 1");
    let (p1, p2, agg) = (named("chat p1"), named("chat p2"), named("chat agg"));
    // One trace, the client's; the run is its span's child, the layer the run's, the
    // proposers the layer's, the aggregator the run's.
    for span in &spans {
        assert_eq!(hex(&span.trace_id), client_trace, "{}", span.name);
    }
    assert_eq!(hex(&run.parent_span_id), client_span);
    assert_eq!(layer.parent_span_id, run.span_id);
    assert_eq!(
        (&p1.parent_span_id, &p2.parent_span_id),
        (&layer.span_id, &layer.span_id)
    );
    assert_eq!(agg.parent_span_id, run.span_id);
    assert_eq!(run.kind, SpanKind::Server as i32);
    assert_eq!(p1.kind, SpanKind::Client as i32);
    // GenAI attributes: operation, provider, model, tokens; moa's cost and role.
    assert_eq!(text(run, "gen_ai.operation.name"), "invoke_agent");
    assert_eq!(text(run, "gen_ai.agent.name"), "mix");
    assert_eq!(int(run, "gen_ai.usage.input_tokens"), 110);
    assert!(
        matches!(attr(run, "moa.cost_usd"), Some(Any::DoubleValue(c)) if (c - 124e-6).abs() < 1e-12)
    );
    assert_eq!(text(agg, "gen_ai.operation.name"), "chat");
    assert_eq!(text(agg, "gen_ai.provider.name"), "up");
    assert_eq!(text(agg, "gen_ai.request.model"), "agg");
    assert_eq!(int(agg, "gen_ai.usage.input_tokens"), 100);
    assert_eq!(int(agg, "gen_ai.usage.output_tokens"), 4);
    assert_eq!(text(agg, "moa.role"), "aggregator");
    assert_eq!(text(p1, "moa.role"), "proposer");
    assert_eq!(int(p1, "moa.index"), 0);
    assert!(
        matches!(attr(p1, "moa.cost_usd"), Some(Any::DoubleValue(c)) if (c - 16e-6).abs() < 1e-12)
    );
    assert_eq!(int(layer, "moa.proposers.failed"), 1);
    // The failed call: an error status in moa's words, the kind in `error.type`.
    let status = p2.status.as_ref().unwrap();
    assert_eq!(status.code, StatusCode::Error as i32);
    assert_eq!(status.message, "up: HTTP 500");
    assert_eq!(text(p2, "error.type"), "500");
    // Times nest: every call within the run.
    for call in [p1, p2, agg] {
        assert!(
            call.start_time_unix_nano >= run.start_time_unix_nano,
            "{}",
            call.name
        );
        assert!(
            call.end_time_unix_nano <= run.end_time_unix_nano,
            "{}",
            call.name
        );
    }
    // Each upstream request's traceparent named its own call's span.
    for (model, span) in [("p1", p1), ("p2", p2), ("agg", agg)] {
        let sent = fake.requests_for(model)[0]
            .header("traceparent")
            .unwrap()
            .to_string();
        assert_eq!(
            sent,
            format!("00-{client_trace}-{}-01", hex(&span.span_id)),
            "{model}"
        );
    }
}
