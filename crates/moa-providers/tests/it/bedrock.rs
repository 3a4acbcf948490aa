//! The Bedrock provider against a fake speaking Converse and ConverseStream.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use moa_core::{ChatRequest, Chunk, Message, Provider, ProviderError, Usage};
use moa_providers::bedrock::sigv4::{sign_request, AwsCredentials, Unsigned};
use moa_providers::{Bedrock, BedrockAuth, BedrockConfig};
use moa_testkit::{FakeServer, Recorded, Reply};

use crate::{collect_stream, quick_retries};

const HAIKU: &str = "anthropic.claude-3-haiku-20240307-v1:0";

fn credentials() -> AwsCredentials {
    AwsCredentials {
        access_key_id: "AKIDEXAMPLE".into(),
        secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
        session_token: Some("session-token".into()),
    }
}

fn client(fake: &FakeServer, auth: BedrockAuth, max_retries: u32) -> Bedrock {
    Bedrock::new(
        BedrockConfig {
            name: "bedrock".into(),
            region: "us-west-2".into(),
            base_url: Some(fake.base_url()),
            auth,
            max_concurrency: 0,
            requests_per_minute: None,
            retry: quick_retries(max_retries),
            limits: Default::default(),
        },
        moa_providers::table::http_client(),
    )
}

fn sigv4(fake: &FakeServer, max_retries: u32) -> Bedrock {
    client(fake, BedrockAuth::SigV4(credentials()), max_retries)
}

fn request() -> ChatRequest {
    let mut r = ChatRequest::new(
        HAIKU,
        vec![Message::system("References here."), Message::user("Say hi")],
    );
    r.temperature = Some(0.0);
    r.max_tokens = Some(512);
    r
}

/// `20251121T101010Z` as a time.
fn amz_time(stamp: &str) -> SystemTime {
    let n = |a: usize, b: usize| stamp[a..b].parse::<i64>().unwrap();
    let (y, m, d) = (n(0, 4), n(4, 6), n(6, 8));
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + n(9, 11) * 3600 + n(11, 13) * 60 + n(13, 15);
    UNIX_EPOCH + Duration::from_secs(secs as u64)
}

/// Signs what the fake received again and checks it matches the Authorization it carried:
/// the host, path, headers and body sent are the ones that were signed.
fn assert_signature_covers(sent: &Recorded, fake: &FakeServer) {
    let auth = sent.header("authorization").unwrap();
    assert!(
        auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
            && auth.contains("/us-west-2/bedrock/aws4_request"),
        "{auth}"
    );
    let url = format!("{}{}", fake.base_url(), sent.path);
    let host = sent.header("host").unwrap().to_string();
    let signed_names: Vec<&str> = auth
        .split("SignedHeaders=")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .split(';')
        .collect();
    assert!(signed_names.contains(&"host") && signed_names.contains(&"x-amz-security-token"));
    let headers: Vec<(&str, &str)> = signed_names
        .iter()
        .filter(|n| !["x-amz-date", "x-amz-security-token"].contains(n))
        .map(|n| {
            let value = if *n == "host" {
                host.as_str()
            } else {
                sent.header(n).unwrap()
            };
            (*n, value)
        })
        .collect();
    let again = sign_request(
        &credentials(),
        "us-west-2",
        "bedrock",
        &Unsigned {
            method: "POST",
            url: &url,
            headers: &headers,
            body: &sent.body,
        },
        amz_time(sent.header("x-amz-date").unwrap()),
    )
    .unwrap();
    let expected = &again.iter().find(|(n, _)| n == "authorization").unwrap().1;
    assert_eq!(auth, expected);
    assert_eq!(sent.header("x-amz-security-token"), Some("session-token"));
}

#[tokio::test]
async fn converse_stream_decodes_frames_and_the_request_is_signed_as_sent() {
    let fake = FakeServer::bedrock().await;
    fake.push(HAIKU, Reply::text("Hello from Bedrock.").with_usage(20, 6));
    let (text, chunks, err) = collect_stream(&sigv4(&fake, 0), request()).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(text, "Hello from Bedrock.");
    assert_eq!(
        chunks.last(),
        Some(&Chunk::Finished {
            finish_reason: Some("stop".into()),
            usage: Some(Usage {
                prompt_tokens: 20,
                completion_tokens: 6,
                total_tokens: 26,
                cached_tokens: 0,
            }),
        })
    );
    let sent = &fake.requests()[0];
    assert_eq!(
        sent.path,
        "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse-stream"
    );
    assert_eq!(sent.model, HAIKU);
    assert_eq!(
        sent.body_text(),
        r#"{"messages":[{"role":"user","content":[{"text":"Say hi"}]}],"system":[{"text":"References here."}],"inferenceConfig":{"maxTokens":512,"temperature":0.0}}"#
    );
    assert_signature_covers(sent, &fake);
}

#[tokio::test]
async fn frames_split_anywhere_decode_the_same() {
    let fake = FakeServer::bedrock().await;
    let text = "Ünïcode split across frames and reads ✓.";
    for split in [1, 3, 7, 64] {
        fake.push(HAIKU, Reply::text(text).with_split_bytes(split));
        let (got, _, err) = collect_stream(&sigv4(&fake, 0), request()).await;
        assert!(err.is_none(), "split {split}: {err:?}");
        assert_eq!(got, text, "split {split}");
    }
}

#[tokio::test]
async fn openai_fields_converse_cannot_take_are_refused_before_sending() {
    let fake = FakeServer::bedrock().await;
    let bedrock = sigv4(&fake, 0);
    for field in ["seed", "logprobs", "logit_bias"] {
        let mut asked = request();
        asked.extra.insert(field.into(), serde_json::json!(1));
        let (_, _, err) = collect_stream(&bedrock, asked.clone()).await;
        let shown = err.expect("refused").to_string();
        assert!(
            shown.contains(&format!("`{field}` is not supported by Bedrock")),
            "{shown}"
        );
        let err = bedrock.complete(asked).await.unwrap_err();
        assert!(
            matches!(err, ProviderError::InvalidRequest { .. }),
            "{err:?}"
        );
    }
    assert!(fake.requests().is_empty(), "nothing reached AWS");
    // Fields Converse has no place for but a model may take still go through.
    fake.push(HAIKU, Reply::text("ok"));
    let mut top_k = request();
    top_k.extra.insert("top_k".into(), serde_json::json!(40));
    let (text, _, err) = collect_stream(&bedrock, top_k).await;
    assert_eq!((text.as_str(), err.is_none()), ("ok", true));
    assert_eq!(
        fake.requests()[0].json["additionalModelRequestFields"]["top_k"],
        40
    );
}

#[tokio::test]
async fn converse_returns_whole_answers_and_bearer_keys_replace_signing() {
    let fake = FakeServer::bedrock().await;
    fake.push(HAIKU, Reply::text("All at once.").with_usage(9, 3));
    let bedrock = client(&fake, BedrockAuth::ApiKey("bedrock-api-key".into()), 0);
    let completion = bedrock.complete(request()).await.unwrap();
    assert_eq!(completion.text, "All at once.");
    assert_eq!(completion.usage.unwrap().total_tokens, 12);
    assert_eq!(completion.finish_reason.as_deref(), Some("stop"));
    let sent = &fake.requests()[0];
    assert!(sent.path.ends_with("/converse"));
    assert_eq!(sent.header("authorization"), Some("Bearer bedrock-api-key"));
    assert_eq!(sent.header("x-amz-date"), None);
}

#[tokio::test]
async fn throttling_is_retried_as_a_status_and_as_a_stream_event() {
    let fake = FakeServer::bedrock().await;
    fake.push(HAIKU, Reply::throttled());
    fake.push(
        HAIKU,
        Reply::stream_error("throttlingException", "Too many tokens"),
    );
    fake.push(HAIKU, Reply::text("third time"));
    let (text, _, err) = collect_stream(&sigv4(&fake, 3), request()).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(text, "third time");
    let requests = fake.requests();
    assert_eq!(requests.len(), 3);
    // Each attempt is signed afresh.
    for sent in &requests {
        assert_signature_covers(sent, &fake);
    }
}

#[tokio::test]
async fn throttling_that_never_ends_and_validation_errors_say_what_aws_said() {
    let fake = FakeServer::bedrock().await;
    for _ in 0..3 {
        fake.push(HAIKU, Reply::throttled());
    }
    let (_, _, err) = collect_stream(&sigv4(&fake, 2), request()).await;
    let err = err.unwrap();
    assert!(
        matches!(
            err,
            ProviderError::Status {
                status: 429,
                attempts: 3,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("ThrottlingException"), "{err}");
    fake.push(
        HAIKU,
        Reply::aws_error(
            400,
            "ValidationException",
            "The model returned the following errors: bad",
        ),
    );
    let (_, _, err) = collect_stream(&sigv4(&fake, 2), request()).await;
    let err = err.unwrap();
    assert!(matches!(
        err,
        ProviderError::Status {
            status: 400,
            attempts: 1,
            ..
        }
    ));
    assert!(
        err.to_string()
            .contains("ValidationException: The model returned"),
        "{err}"
    );
}

#[tokio::test]
async fn bytes_that_are_not_event_stream_frames_are_reported_not_believed() {
    let fake = FakeServer::bedrock().await;
    fake.push(
        HAIKU,
        Reply::malformed("<html>this is not an event stream</html>"),
    );
    let (text, _, err) = collect_stream(&sigv4(&fake, 0), request()).await;
    assert_eq!(text, "");
    let err = err.unwrap();
    assert!(matches!(err, ProviderError::Malformed { .. }), "{err:?}");
    assert!(err.to_string().contains("prelude CRC mismatch"), "{err}");
}

/// An agent loop's second turn, with tools: the history as toolUse / toolResult blocks, the
/// tools as toolConfig, and the model's tool call back in OpenAI's terms, whole and streamed.
#[tokio::test]
async fn tool_use_goes_both_ways() {
    let fake = FakeServer::bedrock().await;
    let history: Vec<Message> = serde_json::from_str(
        r#"[{"role":"user","content":"Weather in Oslo?"},
            {"role":"assistant","content":null,"tool_calls":[
              {"id":"t1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Oslo\"}"}}]},
            {"role":"tool","tool_call_id":"t1","content":"-3C"}]"#,
    )
    .unwrap();
    let mut r = ChatRequest::new(HAIKU, history);
    let tools = moa_core::Tools {
        defs: vec![moa_core::ToolDef {
            name: "get_weather".into(),
            description: None,
            parameters: serde_json::json!({"type": "object"}),
            strict: None,
        }],
        choice: Some(moa_core::ToolChoice::Function("get_weather".into())),
        parallel: None,
    };
    r.tools = Some(tools.clone());
    for stream in [false, true] {
        fake.push(
            HAIKU,
            Reply::tool_calls(&[("t2", "get_weather", r#"{"city":"Bergen"}"#)]).with_chunk_chars(3),
        );
        let c = crate::answer(&sigv4(&fake, 0), r.clone(), stream).await;
        let (text, calls, reason) = (c.text, c.tool_calls, c.finish_reason);
        assert_eq!(text, "", "stream: {stream}");
        assert_eq!(reason.as_deref(), Some("tool_calls"));
        assert_eq!(
            calls,
            vec![moa_core::ToolCall {
                id: "t2".into(),
                name: "get_weather".into(),
                arguments: r#"{"city":"Bergen"}"#.into()
            }],
            "stream: {stream}"
        );
    }
    let sent = &fake.requests()[0].json;
    assert_eq!(
        sent["messages"],
        serde_json::json!([
            {"role": "user", "content": [{"text": "Weather in Oslo?"}]},
            {"role": "assistant", "content": [
                {"toolUse": {"toolUseId": "t1", "name": "get_weather", "input": {"city": "Oslo"}}}]},
            {"role": "user", "content": [
                {"toolResult": {"toolUseId": "t1", "content": [{"text": "-3C"}]}}]}
        ])
    );
    assert_eq!(
        sent["toolConfig"],
        serde_json::json!({"tools": [{"toolSpec": {"name": "get_weather",
            "inputSchema": {"json": {"type": "object"}}}}],
            "toolChoice": {"tool": {"name": "get_weather"}}})
    );
    // Converse has no way to say "none": refused, not ignored.
    r.tools = Some(moa_core::Tools {
        choice: Some(moa_core::ToolChoice::None),
        ..tools
    });
    let err = sigv4(&fake, 0).complete(r).await.unwrap_err();
    assert!(err.to_string().contains("tool_choice \"none\""), "{err}");
}

/// Prompt tokens read from the provider's cache, as this dialect reports them, arrive as
/// `cached_tokens` (counted in `prompt_tokens`), streamed and whole.
#[tokio::test]
async fn cached_prompt_tokens_are_read() {
    let fake = FakeServer::bedrock().await;
    let provider = sigv4(&fake, 0);
    for _ in 0..2 {
        fake.push(
            HAIKU,
            Reply::text("A").with_usage(1000, 10).with_cached(600),
        );
    }
    crate::assert_reads_cached_tokens(&provider, request()).await;
}
