use std::time::Duration;

use futures::StreamExt;
use moa_core::{ChatRequest, Chunk, Message, Provider, ProviderError};
use moa_providers::{OpenAiCompatible, OpenAiConfig};
use moa_testkit::{Ending, FakeOpenAi, Reply};

use crate::{collect_stream, quick_retries};

fn client(fake: &FakeOpenAi, max_retries: u32) -> OpenAiCompatible {
    let mut config = OpenAiConfig::new("fake", fake.base_url());
    config.api_key = Some("sk-secret".into());
    config.retry = quick_retries(max_retries);
    OpenAiCompatible::new(config, moa_providers::table::http_client())
}

fn request(model: &str) -> ChatRequest {
    let mut r = ChatRequest::new(model, vec![Message::user("Say hi")]);
    r.temperature = Some(0.7);
    r.max_tokens = Some(64);
    r
}

#[tokio::test]
async fn streams_text_and_final_usage_with_the_exact_body() {
    let fake = FakeOpenAi::start().await;
    fake.push("m", Reply::text("Hello there, friend.").with_usage(11, 4));
    let (text, chunks, err) = collect_stream(&client(&fake, 0), request("m")).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(text, "Hello there, friend.");
    assert_eq!(
        chunks.last(),
        Some(&Chunk::Finished {
            finish_reason: Some("stop".into()),
            usage: Some(moa_core::Usage {
                prompt_tokens: 11,
                completion_tokens: 4,
                total_tokens: 15,
                cached_tokens: 0,
            }),
        })
    );
    let r = &fake.requests()[0];
    assert_eq!(r.path, "/v1/chat/completions");
    assert_eq!(r.header("authorization"), Some("Bearer sk-secret"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.body_text(),
        r#"{"model":"m","messages":[{"role":"user","content":"Say hi"}],"temperature":0.7,"max_tokens":64,"stream":true,"stream_options":{"include_usage":true}}"#
    );
}

#[tokio::test]
async fn bytes_split_anywhere_even_inside_characters_decode_exactly() {
    let fake = FakeOpenAi::start().await;
    let text = "héllo wörld 😀 — ünïcödé ✓ done";
    for split in [1, 2, 3, 5, 7] {
        fake.push(
            "m",
            Reply::text(text)
                .with_split_bytes(split)
                .with_chunk_chars(3),
        );
    }
    let provider = client(&fake, 0);
    for _ in 0..5 {
        let (got, _, err) = collect_stream(&provider, request("m")).await;
        assert!(err.is_none(), "{err:?}");
        assert_eq!(got, text);
    }
}

#[tokio::test]
async fn tolerates_no_done_no_usage_and_no_finish_reason() {
    let fake = FakeOpenAi::start().await;
    fake.push(
        "m",
        Reply::text("plain")
            .without_done()
            .without_usage()
            .with_finish_reason(None),
    );
    let (text, chunks, err) = collect_stream(&client(&fake, 0), request("m")).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(text, "plain");
    assert_eq!(
        chunks.last(),
        Some(&Chunk::Finished {
            finish_reason: None,
            usage: None
        })
    );
}

#[tokio::test]
async fn complete_sends_no_stream_fields_and_reads_the_whole_answer() {
    let fake = FakeOpenAi::start().await;
    fake.push("m", Reply::text("whole answer").with_usage(5, 2));
    let completion = client(&fake, 0).complete(request("m")).await.unwrap();
    assert_eq!(completion.text, "whole answer");
    assert_eq!(completion.usage.unwrap().total_tokens, 7);
    assert_eq!(completion.finish_reason.as_deref(), Some("stop"));
    let body = fake.requests()[0].body_text().to_string();
    assert_eq!(
        body,
        r#"{"model":"m","messages":[{"role":"user","content":"Say hi"}],"temperature":0.7,"max_tokens":64}"#
    );
}

#[tokio::test]
async fn streamed_logprobs_arrive_with_their_text() {
    let fake = FakeOpenAi::start().await;
    fake.push("m", Reply::text("Hello there.").with_chunk_chars(6));
    let mut asked = request("m");
    asked.extra.insert("logprobs".into(), true.into());
    let (text, chunks, err) = collect_stream(&client(&fake, 0), asked).await;
    assert!(err.is_none(), "{err:?}");
    // Each piece of text is followed by its tokens' log probabilities.
    let pieces: Vec<(String, f64)> = chunks
        .iter()
        .filter_map(|c| match c {
            Chunk::Logprobs(tokens) => Some(tokens.iter().map(|t| (t.token.clone(), t.logprob))),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(
        pieces,
        [("Hello ".to_string(), -0.25), ("there.".to_string(), -0.5)]
    );
    assert_eq!(text, "Hello there.");
    assert!(matches!(chunks[1], Chunk::Logprobs(_)), "{chunks:?}");
}

#[tokio::test]
async fn first_token_logprobs_are_read_when_asked_for() {
    let fake = FakeOpenAi::start().await;
    fake.push(
        "judge",
        Reply::text("m").with_top_logprobs(&[("m", -0.25), ("M", -1.5)]),
    );
    fake.push("judge", Reply::text("plain"));
    let mut asked = request("judge");
    asked.extra.insert("logprobs".into(), true.into());
    asked.extra.insert("top_logprobs".into(), 5.into());
    let provider = client(&fake, 0);
    let completion = provider.complete(asked).await.unwrap();
    let first = &completion.logprobs.expect("logprobs")[0];
    assert_eq!(first.token, "m");
    assert_eq!(first.logprob, -0.25);
    let top: Vec<(&str, f64)> = first
        .top_logprobs
        .iter()
        .map(|t| (t.token.as_str(), t.logprob))
        .collect();
    assert_eq!(top, [("m", -0.25), ("M", -1.5)]);
    assert!(fake.requests()[0]
        .body_text()
        .ends_with(r#""logprobs":true,"top_logprobs":5}"#));
    let plain = provider.complete(request("judge")).await.unwrap();
    assert_eq!(plain.logprobs, None, "no logprobs when the answer has none");
}

#[tokio::test]
async fn honours_retry_after_on_429() {
    let fake = FakeOpenAi::start().await;
    fake.push("m", Reply::rate_limited(1));
    fake.push("m", Reply::text("after the wait"));
    let (text, chunks, err) = collect_stream(&client(&fake, 3), request("m")).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(text, "after the wait");
    // The stream says first that its answer is the second attempt's.
    assert_eq!(chunks[0], Chunk::Attempts(2));
    let requests = fake.requests();
    assert_eq!(requests.len(), 2);
    // The backoff alone would wait at most 20 ms; the server asked for a second.
    let gap = requests[1].received_at - requests[0].received_at;
    assert!(gap >= Duration::from_secs(1), "retried after {gap:?}");
}

#[tokio::test]
async fn retries_408_5xx_and_retry_after_ms() {
    let fake = FakeOpenAi::start().await;
    fake.push(
        "m",
        Reply::error(503, "overloaded", "busy").with_header("retry-after-ms", "50"),
    );
    fake.push("m", Reply::error(408, "timeout", "slow"));
    fake.push("m", Reply::text("third time"));
    let completion = client(&fake, 3).complete(request("m")).await.unwrap();
    assert_eq!(completion.text, "third time");
    assert_eq!(completion.attempts, 3);
    let requests = fake.requests();
    assert_eq!(requests.len(), 3);
    assert!(requests[1].received_at - requests[0].received_at >= Duration::from_millis(50));
}

#[tokio::test]
async fn other_4xx_are_not_retried_and_their_message_reaches_the_user() {
    let fake = FakeOpenAi::start().await;
    fake.push(
        "m",
        Reply::error(
            400,
            "invalid_request_error",
            "max_tokens is too large for this model",
        ),
    );
    let (_, _, err) = collect_stream(&client(&fake, 5), request("m")).await;
    let err = err.unwrap();
    assert_eq!(err.status(), Some(400));
    assert_eq!(
        err.to_string(),
        "fake: HTTP 400: max_tokens is too large for this model"
    );
    assert_eq!(fake.requests().len(), 1);
}

#[tokio::test]
async fn retries_run_out_with_the_attempt_count() {
    let fake = FakeOpenAi::start().await;
    fake.respond_with(|_| Reply::status(500, "<html>Internal Server Error</html>"));
    let err = client(&fake, 2).complete(request("m")).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "fake: HTTP 500: <html>Internal Server Error</html> (after 3 attempts)"
    );
    assert_eq!(fake.requests().len(), 3);
}

#[tokio::test]
async fn malformed_json_is_retried_when_whole_and_fatal_when_streamed() {
    let fake = FakeOpenAi::start().await;
    fake.push("m", Reply::malformed("{\"choices\": [oops"));
    fake.push("m", Reply::text("good"));
    assert_eq!(
        client(&fake, 2).complete(request("m")).await.unwrap().text,
        "good"
    );

    fake.push("s", Reply::malformed("{not json"));
    let (_, _, err) = collect_stream(&client(&fake, 2), request("s")).await;
    match err {
        Some(ProviderError::Malformed { raw, .. }) => assert_eq!(raw, "{not json"),
        other => panic!("expected a malformed error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_disconnect_mid_stream_is_an_error_after_the_partial_text() {
    let fake = FakeOpenAi::start().await;
    fake.push("m", Reply::disconnect_after("partial answ"));
    let (text, _, err) = collect_stream(&client(&fake, 2), request("m")).await;
    assert_eq!(text, "partial answ");
    assert!(
        matches!(err, Some(ProviderError::Connection { .. })),
        "{err:?}"
    );
    // Text had been delivered, so the call was not silently repeated.
    assert_eq!(fake.requests().len(), 1);
}

#[tokio::test]
async fn connection_refused_is_retried_then_reported() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let mut config = OpenAiConfig::new("gone", format!("http://{addr}/v1"));
    config.retry = quick_retries(1);
    let provider = OpenAiCompatible::new(config, moa_providers::table::http_client());
    let err = provider.complete(request("m")).await.unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, ProviderError::Connection { attempts: 2, .. }),
        "{text}"
    );
    assert!(text.starts_with("gone: connection failed"), "{text}");
}

#[tokio::test]
async fn dropping_the_stream_closes_the_upstream_connection() {
    let fake = FakeOpenAi::start().await;
    fake.push("m", Reply::stall_after("first words"));
    let provider = client(&fake, 0);
    let mut stream = provider.stream(request("m"));
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first, Chunk::Delta("firs".into()));
    assert!(fake.endings().is_empty());
    drop(stream);
    let ending = tokio::time::timeout(Duration::from_secs(10), fake.wait_ending(0)).await;
    assert_eq!(ending, Ok(Ending::ClientGone));
}

#[tokio::test]
async fn the_concurrency_limit_holds_requests_back() {
    let fake = FakeOpenAi::start().await;
    fake.respond_with(|_| Reply::text("ok").with_delay(Duration::from_millis(20)));
    let mut config = OpenAiConfig::new("fake", fake.base_url());
    config.max_concurrency = 2;
    let provider = OpenAiCompatible::new(config, moa_providers::table::http_client());
    let calls = (0..6).map(|_| provider.complete(request("m")));
    for result in futures::future::join_all(calls).await {
        assert_eq!(result.unwrap().text, "ok");
    }
    // Intervals [received, ended] as the server saw them: never more than 2 at once.
    let requests = fake.requests();
    for r in &requests {
        let overlapping = requests
            .iter()
            .filter(|o| {
                o.received_at <= r.received_at && fake.ended_at(o.seq).unwrap() > r.received_at
            })
            .count();
        assert!(
            overlapping <= 2,
            "request {} saw {overlapping} in flight",
            r.seq
        );
    }
}

/// Prompt tokens read from the provider's cache, as this dialect reports them, arrive as
/// `cached_tokens` (counted in `prompt_tokens`), streamed and whole.
#[tokio::test]
async fn cached_prompt_tokens_are_read() {
    let fake = FakeOpenAi::start().await;
    let provider = client(&fake, 0);
    for _ in 0..2 {
        fake.push("m", Reply::text("A").with_usage(1000, 10).with_cached(600));
    }
    crate::assert_reads_cached_tokens(&provider, request("m")).await;
}
