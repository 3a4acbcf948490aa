//! Upstreams that misbehave on purpose: endless bodies, giant lines, stalls, redirects, absurd
//! Retry-After values, and llama.cpp's empty streams. Every one must end in a clear error
//! within bounded memory and time, and never in a crash or a silent truncation.

use std::time::Duration;

use moa_core::{ChatRequest, Message, Provider, ProviderError};
use moa_providers::{Anthropic, AnthropicConfig, Limits, OpenAiCompatible, OpenAiConfig};
use moa_testkit::{Ending, FakeOpenAi, FakeServer, Reply};

use crate::{collect_stream, quick_retries};

/// Small limits so that each probe finishes in milliseconds.
fn limits() -> Limits {
    Limits {
        max_response_bytes: 1 << 20,
        max_answer_bytes: 64 << 10,
        read_timeout: Some(Duration::from_millis(300)),
    }
}

fn client(fake: &FakeOpenAi, max_retries: u32) -> OpenAiCompatible {
    let mut config = OpenAiConfig::new("fake", fake.base_url());
    config.api_key = Some("sk-secret".into());
    config.retry = quick_retries(max_retries);
    config.limits = limits();
    OpenAiCompatible::new(config, moa_providers::table::http_client())
}

fn request() -> ChatRequest {
    ChatRequest::new("m", vec![Message::user("hi")])
}

#[tokio::test]
async fn an_endless_error_body_is_read_only_in_part() {
    let fake = FakeOpenAi::start().await;
    fake.push(
        "m",
        Reply::endless(500, "application/json", b"{\"error\":", &[b'x'; 8192]),
    );
    let err = client(&fake, 0).complete(request()).await.unwrap_err();
    match &err {
        ProviderError::Status { status, body, .. } => {
            assert_eq!(*status, 500);
            assert!(
                body.len() <= moa_providers::MAX_ERROR_BODY,
                "{}",
                body.len()
            );
        }
        other => panic!("{other}"),
    }
    // moa stopped reading and closed the connection instead of draining 4 GiB.
    assert_eq!(fake.wait_ending(0).await, Ending::ClientGone);
}

#[tokio::test]
async fn an_endless_stream_is_refused_at_the_response_limit() {
    let fake = FakeOpenAi::start().await;
    fake.push(
        "m",
        Reply::endless(200, "text/event-stream", b"", b": keep-alive\n\n"),
    );
    let (_, _, err) = collect_stream(&client(&fake, 0), request()).await;
    let err = err.expect("an error");
    assert!(
        matches!(&err, ProviderError::TooLarge { message, .. } if message.contains("1048576 bytes")),
        "{err}"
    );
    assert_eq!(fake.wait_ending(0).await, Ending::ClientGone);
}

#[tokio::test]
async fn a_giant_sse_line_is_refused_without_being_buffered() {
    let fake = FakeOpenAi::start().await;
    // One `data:` line that never ends, far past the 4 MiB event limit.
    fake.push(
        "m",
        Reply::endless(200, "text/event-stream", b"data: ", &[b'x'; 65536]),
    );
    let mut config = OpenAiConfig::new("fake", fake.base_url());
    config.limits = Limits {
        max_response_bytes: 64 << 20,
        ..limits()
    };
    let provider = OpenAiCompatible::new(config, moa_providers::table::http_client());
    let (_, _, err) = collect_stream(&provider, request()).await;
    let err = err.expect("an error");
    assert!(
        matches!(&err, ProviderError::TooLarge { message, .. } if message.contains("SSE event")),
        "{err}"
    );
}

#[tokio::test]
async fn an_answer_longer_than_its_limit_is_refused_not_cut() {
    let fake = FakeOpenAi::start().await;
    fake.push(
        "m",
        Reply::text("word ".repeat(20_000)).with_chunk_chars(50),
    );
    let (text, _, err) = collect_stream(&client(&fake, 0), request()).await;
    assert!(
        matches!(&err, Some(ProviderError::TooLarge { message, .. }) if message.contains("answer is longer")),
        "{err:?}"
    );
    assert!(text.len() <= 64 << 10);
    // A whole (non-streamed) body over the response limit is refused too.
    fake.push("m", Reply::text("y".repeat(2 << 20)));
    let err = client(&fake, 0).complete(request()).await.unwrap_err();
    assert!(matches!(err, ProviderError::TooLarge { .. }), "{err}");
}

#[tokio::test]
async fn a_stream_that_stalls_after_its_headers_times_out() {
    let fake = FakeOpenAi::start().await;
    fake.push("m", Reply::stall_after("partial "));
    let (text, _, err) = collect_stream(&client(&fake, 0), request()).await;
    assert_eq!(text, "partial ");
    assert!(
        matches!(err, Some(ProviderError::Stalled { after, .. }) if after == Duration::from_millis(300)),
        "{err:?}"
    );
    // A whole answer that stalls is retried, then fails the same way.
    fake.push("m", Reply::stall_after("x"));
    fake.push("m", Reply::stall_after("x"));
    let err = client(&fake, 1).complete(request()).await.unwrap_err();
    assert!(matches!(err, ProviderError::Stalled { .. }), "{err}");
}

#[tokio::test]
async fn redirects_are_not_followed_so_keys_stay_with_their_host() {
    let elsewhere = FakeOpenAi::start().await;
    let fake = FakeServer::anthropic().await;
    let target = format!("{}/messages", elsewhere.base_url());
    fake.push("m", Reply::status(307, "").with_header("location", &target));
    let mut config = AnthropicConfig::new("anthropic", fake.base_url());
    config.api_key = Some("sk-ant-secret".into());
    config.headers = vec![("x-custom-token".into(), "hdr-secret".into())];
    config.retry = quick_retries(0);
    let provider = Anthropic::new(config, moa_providers::table::http_client());
    let err = provider.complete(request()).await.unwrap_err();
    assert_eq!(err.status(), Some(307), "{err}");
    assert!(
        elsewhere.requests().is_empty(),
        "the key never reached the other host"
    );

    let openai = FakeOpenAi::start().await;
    openai.push(
        "m",
        Reply::status(302, "").with_header(
            "location",
            &format!("{}/chat/completions", elsewhere.base_url()),
        ),
    );
    let err = client(&openai, 0).complete(request()).await.unwrap_err();
    assert_eq!(err.status(), Some(302));
    assert!(elsewhere.requests().is_empty());
}

#[tokio::test]
async fn absurd_retry_after_values_fail_at_once_without_panicking() {
    for (name, value) in [
        ("retry-after", "1e30"),
        ("retry-after-ms", "1e300"),
        ("retry-after", "18446744073709551616"),
    ] {
        let fake = FakeOpenAi::start().await;
        fake.push(
            "m",
            Reply::error(429, "rate_limit_exceeded", "slow down").with_header(name, value),
        );
        fake.push("m", Reply::text("never asked for"));
        let err = client(&fake, 3).complete(request()).await.unwrap_err();
        assert_eq!(err.status(), Some(429), "{name}: {value}: {err}");
        assert_eq!(
            fake.requests().len(),
            1,
            "a wait that long is not waited for"
        );
    }
}

#[tokio::test]
async fn llamacpp_empty_streams_are_failed_attempts_and_are_retried() {
    let fake = FakeOpenAi::start().await;
    fake.push("m", Reply::llamacpp_empty_stream());
    fake.push("m", Reply::llamacpp_empty_stream());
    fake.push("m", Reply::text("a real answer").without_usage());
    let (text, _, err) = collect_stream(&client(&fake, 3), request()).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(text, "a real answer");
    assert_eq!(fake.requests().len(), 3);

    // Always empty: failed after the retries, saying why.
    let fake = FakeOpenAi::start().await;
    fake.respond_with(|_| Reply::llamacpp_empty_stream());
    let (_, _, err) = collect_stream(&client(&fake, 2), request()).await;
    match err {
        Some(ProviderError::EmptyStream { attempts, .. }) => assert_eq!(attempts, 3),
        other => panic!("{other:?}"),
    }
    assert_eq!(fake.requests().len(), 3);
    // A stream with no text but a finish reason is an honest empty answer, not a failure.
    let fake = FakeOpenAi::start().await;
    fake.push("m", Reply::text(""));
    let (text, _, err) = collect_stream(&client(&fake, 2), request()).await;
    assert!(err.is_none() && text.is_empty(), "{err:?}");
    assert_eq!(fake.requests().len(), 1);
}
