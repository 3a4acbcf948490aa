//! A local model behind `moa serve`'s API: prompts it cannot hold are the client's error (400,
//! saying why), not an upstream failure, and are refused before the model spends time on them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use moa_core::{AgentSpec, Moa, Plan, Preset, PresetError, PromptStyle, Provider, RunOptions};
use moa_local::LocalProvider;
use moa_server::{router, serve, FixedEngines, ServerConfig};
use serde_json::{json, Value};

use crate::tiny;

async fn start() -> String {
    let dir = tempfile::tempdir().unwrap();
    // Room for the aggregator's prompt, which the byte-level vocabulary makes long.
    let path = tiny::write_with_context(dir.path(), "llama", 2048);
    let provider: Arc<dyn Provider> = Arc::new(LocalProvider::new(dir.path()));
    let agent = AgentSpec::new(format!("local:{}", path.display()));
    // Proposals of at most 128 tokens: the random model rarely stops by itself, and two of 512
    // re-encoded as references can outgrow the aggregator's context.
    let proposer = AgentSpec {
        max_tokens: Some(128),
        ..agent.clone()
    };
    let preset = Preset {
        name: "tiny".into(),
        description: String::new(),
        layers: vec![vec![proposer.clone(), proposer]],
        aggregator: agent,
        prompt_style: PromptStyle::Reference,
        policy: Default::default(),
    };
    let plan = Plan::bind(&preset, |_| Ok::<_, PresetError>(provider.clone())).unwrap();
    let engines = FixedEngines(BTreeMap::from([(
        "tiny".to_string(),
        Moa::new(plan, RunOptions::default()),
    )]));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        // The model file lives as long as the server.
        let _dir = dir;
        serve(
            listener,
            router(engines, ServerConfig::default()),
            std::future::pending(),
            Duration::from_secs(1),
        )
        .await
    });
    base
}

async fn ask(base: &str, content: &str) -> (u16, Value) {
    ask_with(base, content, json!({})).await
}

/// A request for `content` with `fields` added to its body.
async fn ask_with(base: &str, content: &str, fields: Value) -> (u16, Value) {
    let mut body = json!({"model": "tiny", "messages": [{"role": "user", "content": content}],
                          "max_tokens": 8});
    for (k, v) in fields.as_object().unwrap() {
        body[k] = v.clone();
    }
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn what_the_local_model_cannot_do_is_a_400_naming_it() {
    let base = start().await;
    let tools = json!([{"type": "function", "function": {"name": "f", "parameters": {}}}]);
    for (fields, named) in [
        (json!({"tools": tools}), "does not support tools"),
        (json!({"stop": ["\n"]}), "does not support `stop`"),
        (json!({"logprobs": true}), "does not support `logprobs`"),
    ] {
        let (status, body) = ask_with(&base, "hello", fields.clone()).await;
        assert_eq!(status, 400, "{fields}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(named), "{fields}: {message}");
    }
    // What it honours runs.
    let (status, body) = ask_with(&base, "hello", json!({"seed": 3, "top_p": 0.5})).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_prompt_over_the_context_is_a_400_that_says_so() {
    let base = start().await;
    let (status, body) = ask(&base, "hello").await;
    assert_eq!(status, 200, "{body}");

    // More tokens than the model's context.
    let (status, body) = ask(&base, &"the cat sat. ".repeat(400)).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("has a context of 2048 tokens"),
        "{message}"
    );

    // Far more bytes than any 256-token prompt: refused without tokenizing.
    let (status, body) = ask(&base, &"a".repeat(1 << 20)).await;
    assert_eq!(status, 400, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("refused unread"), "{message}");
}
