//! The official openai Python SDK (pinned, installed from PyPI into a venv under the target
//! directory on first run) against `moa serve`, with the fake upstream behind it.

use std::path::PathBuf;

use moa_testkit::Reply;
use serde_json::{json, Value};

use super::{start, ServerConfig};

/// The SDK version the tests run; raise it deliberately.
const OPENAI_SDK: &str = "openai==3.57.0";

#[tokio::test(flavor = "multi_thread")]
async fn the_official_openai_sdk_works_against_moa_serve() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("py-openai");
    let python =
        tokio::task::spawn_blocking(move || moa_testkit::python::venv(&dir, &[OPENAI_SDK]))
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("cannot install the openai SDK from PyPI: {e}"));
    let s = start(ServerConfig::default()).await;
    // The aggregator calls get_weather when offered tools and the user spoke last, answers in
    // text after the tool's result; other calls answer as the usual fake does.
    s.fake.respond_with(|r| {
        let messages = r.json["messages"].as_array().unwrap();
        let last = messages.last().unwrap()["role"]
            .as_str()
            .unwrap_or_default();
        let last_text = messages.last().unwrap()["content"]
            .as_str()
            .unwrap_or_default();
        if r.model == "agg" && r.json.get("response_format").is_some() {
            return match last_text.starts_with("Your answer cannot be used") {
                true => Reply::text(r#"{"city": "Oslo", "celsius": -3}"#),
                false => Reply::text("```json\n{\"city\": \"Oslo\"}\n```"),
            };
        }
        match (r.model.as_str(), r.json.get("tools").is_some(), last) {
            ("agg", true, "user") => {
                Reply::tool_calls(&[("call_7", "get_weather", r#"{"city":"Oslo"}"#)])
                    .with_chunk_chars(4)
            }
            ("agg", true, _) => Reply::text("It is -3C and snowing in Oslo."),
            ("agg", false, _) => Reply::text("The final answer.").with_usage(100, 4),
            (model, _, _) => Reply::text(format!("{model} thinks so")).with_usage(10, 3),
        }
    });
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/py/openai_sdk.py");
    let out = tokio::process::Command::new(python)
        .arg(script)
        .env("MOA_BASE_URL", format!("{}/v1", s.base))
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();

    // The tool loop, whole and streamed: the call came back, the result led to the answer.
    for mode in ["whole", "stream"] {
        assert_eq!(
            seen["tool_loop"][mode],
            json!({"calls": [{"id": "call_7", "name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}],
                   "finish_reason": "tool_calls", "answer": "It is -3C and snowing in Oslo."}),
            "{mode}"
        );
    }

    assert_eq!(
        seen["whole"],
        json!({"content": "The final answer.", "finish_reason": "stop", "total_tokens": 130, "proposals": 2})
    );
    assert_eq!(
        seen["stream"],
        json!({"content": "The final answer.", "total_tokens": 130})
    );
    assert_eq!(seen["after_tool"], "The final answer.");
    for field in ["n", "tool_choice", "response_format"] {
        let message = seen["refusals"][field].as_str().unwrap();
        assert!(message.contains(&format!("`{field}")), "{field}: {message}");
    }
    assert_eq!(seen["not_found"], "model_not_found");
    assert_eq!(seen["n2"], json!([0, 1]));
    // Structured output, repaired once: the SDK's parse() reads it into the schema's shape.
    assert_eq!(seen["structured"], json!({"city": "Oslo", "celsius": -3}));
    assert_eq!(seen["json_object"], json!({"city": "Oslo", "celsius": -3}));
    assert_eq!(seen["models"], json!(["mini"]));
    assert_eq!(
        seen["logprobs"],
        json!({"whole": "The final answer.", "first_top": [["The ", -0.25]],
               "stream": "The final answer.", "stream_text": "The final answer."})
    );

    // What the SDK sent reached the aggregator, and only the aggregator.
    let agg = &s.fake.requests_for("agg")[0].json;
    assert_eq!(agg["temperature"], 0.2);
    assert_eq!(agg["top_p"], 0.9);
    assert_eq!(agg["stop"], json!(["\n\n"]));
    assert_eq!(agg["seed"], 7);
    assert_eq!(agg["max_tokens"], 50);
    let p1 = &s.fake.requests_for("p1")[0].json;
    assert!(p1.get("seed").is_none() && p1.get("stop").is_none());
    assert_eq!(
        p1["messages"],
        json!([{"role": "system", "content": "Answer briefly."},
               {"role": "user", "content": "Why is the sky blue?"}])
    );
    // The agent loop's history reached the proposers as text.
    let loop_request = s
        .fake
        .requests_for("p1")
        .into_iter()
        .find(|r| r.body_text().contains("call_1"))
        .unwrap();
    assert_eq!(
        loop_request.json["messages"][2]["content"],
        "[tool result call_1: weather]\n-3C, snow"
    );
}
