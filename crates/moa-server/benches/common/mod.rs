//! What the server benches share: named runtimes, the fake upstream, the MoA engine they
//! serve, and a burst of streamed requests.
// Each bench uses a part of this module.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use moa_core::{AgentSpec, Moa, Preset, PromptStyle, RunOptions};
use moa_providers::{Endpoint, Registry, RetryPolicy};
use moa_server::{router, serve, FixedEngines, ServerConfig};
use moa_testkit::{FakeOpenAi, Reply};

/// A named multi-threaded runtime, so each part's CPU can be read per thread.
pub fn runtime(name: &'static str, workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name(name)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"))
}

/// The fake upstream on `runtime`: every model answers three sentences in 24-character
/// chunks after `latency`, with usage.
pub fn fake_upstream(runtime: &tokio::runtime::Runtime, latency: Duration) -> FakeOpenAi {
    let fake = runtime.block_on(FakeOpenAi::start());
    let answer = "Here is a considered answer with a handful of words in it. ".repeat(3);
    fake.respond_with(move |_| {
        Reply::text(answer.clone())
            .with_chunk_chars(24)
            .with_delay(latency)
            .with_usage(50, 30)
    });
    fake
}

/// The preset the benches serve: 4 proposers and an aggregator, all models of provider `up`.
pub fn bench_preset() -> Preset {
    Preset {
        name: "bench".into(),
        description: String::new(),
        layers: vec![(0..4).map(|i| AgentSpec::new(format!("up:p{i}"))).collect()],
        aggregator: AgentSpec::new("up:agg"),
        prompt_style: PromptStyle::Reference,
        policy: Default::default(),
    }
}

/// Serves preset `bench` ([`bench_preset`] on `fake`) with `config`, on `runtime`; returns its
/// chat completions URL.
pub fn serve_bench(
    runtime: &tokio::runtime::Runtime,
    fake: &FakeOpenAi,
    config: ServerConfig,
) -> String {
    serve_preset(runtime, fake, bench_preset(), config)
}

/// Serves `preset` (its models are provider `up`, the fake) with `config`, on `runtime`;
/// returns its chat completions URL.
pub fn serve_preset(
    runtime: &tokio::runtime::Runtime,
    fake: &FakeOpenAi,
    preset: Preset,
    config: ServerConfig,
) -> String {
    runtime.block_on(async {
        let mut registry = Registry::new(Arc::new(|_| None));
        let mut endpoint = Endpoint::custom("up", &fake.base_url());
        endpoint.max_concurrency = 0;
        endpoint.retry = RetryPolicy::none();
        registry.insert_endpoint(endpoint);
        let moa = Moa::new(
            registry.bind(&preset).unwrap_or_else(|e| panic!("{e}")),
            RunOptions {
                // The server never forwards proposer deltas: whole answers cost it less.
                stream_proposers: false,
                ..RunOptions::default()
            },
        );
        let app = router(
            FixedEngines(BTreeMap::from([(preset.name.clone(), moa)])),
            config,
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let base = format!(
            "http://{}/v1/chat/completions",
            listener.local_addr().unwrap_or_else(|e| panic!("{e}"))
        );
        tokio::spawn(serve(
            listener,
            app,
            std::future::pending(),
            Duration::from_secs(1),
        ));
        base
    })
}

/// An HTTP client keeping up to `connections` idle connections to the server.
pub fn client(connections: usize) -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The value after flag `name` on the command line, or `default`.
pub fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

/// Whether an SSE text holds a chunk with non-empty content (the opening chunk's is empty).
fn has_content(text: &str) -> bool {
    text.match_indices("\"delta\":{\"content\":\"")
        .any(|(i, m)| !text[i + m.len()..].starts_with('"'))
}

/// `requests` streamed requests to `url` at once, from `runtime`; each one's time to first
/// token, or why it failed.
pub fn burst(
    runtime: &tokio::runtime::Runtime,
    http: &reqwest::Client,
    url: &str,
    requests: usize,
) -> Vec<Result<Duration, String>> {
    let body = serde_json::json!({"model": "bench", "messages": [{"role": "user", "content": "Why is the sky blue?"}], "stream": true});
    runtime.block_on(async {
        let calls = (0..requests).map(|_| {
            let (http, url, body) = (http.clone(), url.to_string(), body.clone());
            tokio::spawn(async move {
                let sent = Instant::now();
                let response = http
                    .post(&url)
                    .json(&body)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                if !response.status().is_success() {
                    return Err(format!("status {}", response.status()));
                }
                let mut stream = response.bytes_stream();
                let (mut first_token, mut text) = (None, String::new());
                while let Some(chunk) = stream.next().await {
                    text.push_str(&String::from_utf8_lossy(&chunk.map_err(|e| e.to_string())?));
                    if first_token.is_none() && has_content(&text) {
                        first_token = Some(sent.elapsed());
                    }
                }
                if !text.ends_with("data: [DONE]\n\n") || text.contains("\"error\"") {
                    return Err("incomplete or failed stream".into());
                }
                first_token.ok_or_else(|| "no content".to_string())
            })
        });
        let mut out = Vec::new();
        for handle in futures::future::join_all(calls).await {
            out.push(handle.unwrap_or_else(|e| Err(e.to_string())));
        }
        out
    })
}
