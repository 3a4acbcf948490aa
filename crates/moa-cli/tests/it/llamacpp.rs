//! moa against a real llama.cpp server (llama-cpp-python's), three proposers at once, when it
//! is installed (`pip install 'llama-cpp-python[server]'`; `MOA_TEST_PYTHON` names the Python
//! that has it). Without it the test says so and passes: CI runs the faithful fake of the
//! same behaviour (`Reply::llamacpp_empty_stream`) in the provider tests.

use std::path::PathBuf;

use moa_testkit::llamacpp::LlamaCppServer;

use crate::moa;

fn models_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("models")
}

#[tokio::test(flavor = "multi_thread")]
async fn three_proposers_on_a_real_llama_cpp_server() {
    let dir = tempfile::tempdir().unwrap();
    let models = models_dir();
    let models_env = [("MOA_MODELS_DIR", models.to_str().unwrap())];
    let model = models.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    if !model.is_file() {
        // moa fetches it as a user would; one process per download, so tests may race.
        let out = moa(
            dir.path(),
            &["models", "pull", "smollm2"],
            &models_env,
            None,
        )
        .await;
        assert_eq!(out.code, 0, "{}", out.stderr);
    }
    let server = match LlamaCppServer::start(&model).await {
        Ok(Some(server)) => server,
        Ok(None) => {
            eprintln!(
                "skipped: llama-cpp-python is not installed \
                 (pip install 'llama-cpp-python[server]', or set MOA_TEST_PYTHON)"
            );
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let config = dir.path().join("moa.toml");
    std::fs::write(
        &config,
        format!(
            "[providers.llamacpp]\nbase_url = \"{}\"\nmax_retries = 2\n",
            server.base_url()
        ),
    )
    .unwrap();
    let out = moa(
        dir.path(),
        &[
            "ask",
            "--json",
            "--proposers",
            "llamacpp:smollm2,llamacpp:smollm2,llamacpp:smollm2",
            "--aggregator",
            "llamacpp:smollm2",
            "--max-tokens",
            "48",
            "What is the capital of France?",
        ],
        &[],
        None,
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let trace: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let calls = trace["layers"][0]["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 3);
    let mut answered = 0;
    for call in calls {
        match call["status"].as_str() {
            // An answer is never empty, and its tokens are counted even though llama.cpp
            // streams no usage.
            Some("ok") => {
                answered += 1;
                assert!(
                    !call["answer"].as_str().unwrap().trim().is_empty(),
                    "{call}"
                );
                assert!(
                    call["usage"]["total_tokens"].as_u64().unwrap() > 0,
                    "{call}"
                );
            }
            // An empty stream, retried and still empty, fails with its reason.
            _ => assert!(call["error"].as_str().unwrap().contains("empty"), "{call}"),
        }
    }
    assert!(answered > 0, "{}", out.stdout);
    assert!(trace["usage"]["total_tokens"].as_u64().unwrap() > 0);
    assert!(!trace["answer"].as_str().unwrap().trim().is_empty());
}

/// A JSON value's shape: its keys and the kinds of its leaves, values forgotten.
fn shape(value: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (k.clone(), shape(v))).collect())
        }
        Value::Array(items) => Value::Array(items.iter().take(1).map(shape).collect()),
        Value::String(_) => "string".into(),
        Value::Number(_) => "number".into(),
        Value::Bool(_) => "bool".into(),
        Value::Null => Value::Null,
    }
}

/// The shapes of a stream's opening chunk, a content chunk and its last chunk, and its events.
async fn stream_shapes(base_url: &str) -> (Vec<serde_json::Value>, Vec<String>) {
    let body = serde_json::json!({
        "model": "smollm2",
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 4,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    let text = reqwest::Client::new()
        .post(format!("{base_url}/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!text.contains('\r'), "lines end in \\n alone");
    let events: Vec<String> = text
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").unwrap().to_string())
        .collect();
    let chunks: Vec<serde_json::Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let shapes = vec![
        shape(&chunks[0]),
        shape(&chunks[1]),
        shape(chunks.last().unwrap()),
    ];
    (shapes, events)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_fake_streams_as_the_real_llama_cpp_server_does() {
    let model = models_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    let server = match model.is_file() {
        true => LlamaCppServer::start(&model).await.unwrap(),
        false => None,
    };
    let Some(server) = server else {
        eprintln!("skipped: llama-cpp-python or the model is not here");
        return;
    };
    let fake = moa_testkit::FakeOpenAi::start().await;
    fake.respond_with(|_| {
        moa_testkit::Reply::text("Hello there, you")
            .with_chunk_chars(6)
            .with_finish_reason(Some("length"))
            .as_llamacpp()
    });
    let (real, real_events) = stream_shapes(server.base_url()).await;
    let (faked, fake_events) = stream_shapes(&fake.base_url()).await;
    assert_eq!(real, faked);
    // Neither sends usage in a stream, asked or not; both end with [DONE].
    for events in [&real_events, &fake_events] {
        assert!(
            events.iter().all(|e| !e.contains("\"usage\"")),
            "{events:?}"
        );
        assert_eq!(events.last().unwrap(), "[DONE]");
    }
    // The opening chunk carries the role alone.
    assert_eq!(
        real[0]["choices"][0]["delta"],
        serde_json::json!({"role": "string"})
    );
}
