//! The Anthropic provider against a fake speaking the Messages API.

use moa_core::{ChatRequest, Chunk, Message, Provider, ProviderError, Usage};
use moa_providers::{Anthropic, AnthropicConfig};
use moa_testkit::{FakeServer, Reply};

use crate::{collect_stream, quick_retries};

fn client(fake: &FakeServer, max_retries: u32) -> Anthropic {
    let mut config = AnthropicConfig::new("anthropic", fake.base_url());
    config.api_key = Some("sk-ant-secret".into());
    config.retry = quick_retries(max_retries);
    Anthropic::new(config, moa_providers::table::http_client())
}

fn request() -> ChatRequest {
    let mut r = ChatRequest::new(
        "claude-3-haiku-20240307",
        vec![Message::system("Be brief."), Message::user("Say hi")],
    );
    r.temperature = Some(0.7);
    r.max_tokens = Some(64);
    r
}

#[tokio::test]
async fn streams_text_usage_and_stop_reason_with_the_exact_body_and_headers() {
    let fake = FakeServer::anthropic().await;
    fake.push(
        "claude-3-haiku-20240307",
        Reply::text("Hello there, friend.")
            .with_usage(12, 5)
            .with_finish_reason(Some("length")),
    );
    let (text, chunks, err) = collect_stream(&client(&fake, 0), request()).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(text, "Hello there, friend.");
    assert_eq!(
        chunks.last(),
        Some(&Chunk::Finished {
            finish_reason: Some("length".into()),
            usage: Some(Usage {
                prompt_tokens: 12,
                completion_tokens: 5,
                total_tokens: 17,
                cached_tokens: 0,
            }),
        })
    );
    let sent = &fake.requests()[0];
    assert_eq!(sent.path, "/v1/messages");
    assert_eq!(sent.header("x-api-key"), Some("sk-ant-secret"));
    assert_eq!(sent.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(sent.header("authorization"), None);
    assert_eq!(
        sent.body_text(),
        r#"{"model":"claude-3-haiku-20240307","max_tokens":64,"system":"Be brief.","messages":[{"role":"user","content":"Say hi"}],"temperature":0.7,"stream":true}"#
    );
}

#[tokio::test]
async fn whole_answers_are_read_from_the_message() {
    let fake = FakeServer::anthropic().await;
    fake.push(
        "claude-3-haiku-20240307",
        Reply::text("Whole.").with_usage(3, 2),
    );
    let completion = client(&fake, 0).complete(request()).await.unwrap();
    assert_eq!(completion.text, "Whole.");
    assert_eq!(completion.finish_reason.as_deref(), Some("stop"));
    assert_eq!(completion.usage.unwrap().total_tokens, 5);
    assert!(!fake.requests()[0].body_text().contains("\"stream\""));
}

#[tokio::test]
async fn overloaded_529_and_rate_limits_are_retried() {
    let fake = FakeServer::anthropic().await;
    let model = "claude-3-haiku-20240307";
    fake.push(model, Reply::overloaded());
    fake.push(
        model,
        Reply::anthropic_error(429, "rate_limit_error", "slow down")
            .with_header("retry-after", "0"),
    );
    fake.push(model, Reply::text("made it"));
    let (text, _, err) = collect_stream(&client(&fake, 3), request()).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(text, "made it");
    assert_eq!(fake.requests().len(), 3);
}

#[tokio::test]
async fn an_overloaded_event_before_any_text_is_retried() {
    let fake = FakeServer::anthropic().await;
    let model = "claude-3-haiku-20240307";
    fake.push(model, Reply::stream_error("overloaded_error", "Overloaded"));
    fake.push(model, Reply::text("second try"));
    let (text, _, err) = collect_stream(&client(&fake, 2), request()).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(text, "second try");
    assert_eq!(fake.requests().len(), 2);
}

#[tokio::test]
async fn a_retry_after_beyond_the_limit_fails_at_once_and_bad_requests_are_not_retried() {
    let fake = FakeServer::anthropic().await;
    let model = "claude-3-haiku-20240307";
    fake.push(
        model,
        Reply::anthropic_error(429, "rate_limit_error", "wait a long time")
            .with_header("retry-after", "600"),
    );
    let (_, _, err) = collect_stream(&client(&fake, 3), request()).await;
    assert!(
        matches!(
            &err,
            Some(ProviderError::Status {
                status: 429,
                attempts: 1,
                ..
            })
        ),
        "{err:?}"
    );
    fake.push(
        model,
        Reply::anthropic_error(400, "invalid_request_error", "max_tokens: too large"),
    );
    let (_, _, err) = collect_stream(&client(&fake, 3), request()).await;
    let err = err.unwrap();
    assert!(matches!(
        err,
        ProviderError::Status {
            status: 400,
            attempts: 1,
            ..
        }
    ));
    assert!(err.to_string().contains("max_tokens: too large"), "{err}");
    assert_eq!(fake.requests().len(), 2);
}

#[tokio::test]
async fn an_error_event_that_is_not_transient_fails_the_stream() {
    let fake = FakeServer::anthropic().await;
    fake.push(
        "claude-3-haiku-20240307",
        Reply::stream_error("invalid_request_error", "prompt is too long"),
    );
    let (_, _, err) = collect_stream(&client(&fake, 3), request()).await;
    let err = err.unwrap();
    assert!(err.to_string().contains("prompt is too long"), "{err}");
    assert_eq!(fake.requests().len(), 1);
}

/// An agent loop's second turn, with tools: the history in Anthropic's blocks, the tools in its
/// words, and the model's tool call back in OpenAI's terms, whole and streamed.
#[tokio::test]
async fn tool_use_goes_both_ways() {
    let fake = FakeServer::anthropic().await;
    let history: Vec<Message> = serde_json::from_str(
        r#"[{"role":"user","content":"Weather in Oslo and Bergen?"},
            {"role":"assistant","content":"Checking.","tool_calls":[
              {"id":"toolu_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Oslo\"}"}},
              {"id":"toolu_2","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Bergen\"}"}}]},
            {"role":"tool","tool_call_id":"toolu_1","content":"-3C"},
            {"role":"tool","tool_call_id":"toolu_2","content":"4C"}]"#,
    )
    .unwrap();
    let mut r = ChatRequest::new("claude-3-haiku-20240307", history);
    r.tools = Some(moa_core::Tools {
        defs: vec![moa_core::ToolDef {
            name: "get_weather".into(),
            description: Some("The weather now.".into()),
            parameters: serde_json::json!({"type": "object", "properties": {"city": {"type": "string"}}}),
            strict: None,
        }],
        choice: Some(moa_core::ToolChoice::Required),
        parallel: Some(false),
    });
    for stream in [false, true] {
        fake.push(
            "claude-3-haiku-20240307",
            Reply::tool_calls(&[("toolu_3", "get_weather", r#"{"city":"Tromsø"}"#)])
                .with_chunk_chars(4),
        );
        let c = crate::answer(&client(&fake, 0), r.clone(), stream).await;
        let (text, calls, reason) = (c.text, c.tool_calls, c.finish_reason);
        assert_eq!(text, "", "stream: {stream}");
        assert_eq!(reason.as_deref(), Some("tool_calls"));
        assert_eq!(
            calls,
            vec![moa_core::ToolCall {
                id: "toolu_3".into(),
                name: "get_weather".into(),
                arguments: r#"{"city":"Tromsø"}"#.into()
            }],
            "stream: {stream}"
        );
    }
    let sent = &fake.requests()[0].json;
    assert_eq!(
        sent["messages"],
        serde_json::json!([
            {"role": "user", "content": "Weather in Oslo and Bergen?"},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}},
                {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Bergen"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "-3C"},
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": "4C"}]}
        ])
    );
    assert_eq!(
        sent["tools"],
        serde_json::json!([{"name": "get_weather", "description": "The weather now.",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}])
    );
    assert_eq!(
        sent["tool_choice"],
        serde_json::json!({"type": "any", "disable_parallel_tool_use": true})
    );
}

/// Prompt tokens read from the provider's cache, as this dialect reports them, arrive as
/// `cached_tokens` (counted in `prompt_tokens`), streamed and whole.
#[tokio::test]
async fn cached_prompt_tokens_are_read() {
    let fake = FakeServer::anthropic().await;
    let provider = client(&fake, 0);
    for _ in 0..2 {
        fake.push(
            "claude-3-haiku-20240307",
            Reply::text("A").with_usage(1000, 10).with_cached(600),
        );
    }
    crate::assert_reads_cached_tokens(&provider, request()).await;
}
