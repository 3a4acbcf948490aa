//! The batch APIs (OpenAI's Files + Batch, Anthropic's Message Batches) against fakes speaking
//! them: what is uploaded, how a batch in progress and an ended one read, answers and failures
//! per request, and ids from upstream that never become a path or a host.

use moa_core::{BatchApi, BatchStatus, ChatRequest, Message, Provider, Usage};
use moa_providers::{Anthropic, AnthropicConfig, OpenAiCompatible, OpenAiConfig};
use moa_testkit::{FakeServer, Reply};
use serde_json::Value;

fn usage(prompt: u64, completion: u64) -> Usage {
    Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: prompt + completion,
        cached_tokens: 0,
    }
}

fn request(model: &str, prompt: &str) -> ChatRequest {
    let mut r = ChatRequest::new(model, vec![Message::user(prompt)]);
    r.temperature = Some(0.0);
    r.max_tokens = Some(32);
    r
}

fn requests(model: &str) -> Vec<(String, ChatRequest)> {
    ["first", "second", "third"]
        .iter()
        .enumerate()
        .map(|(i, p)| (format!("r{i}"), request(model, p)))
        .collect()
}

/// Batch `id` of [`requests`] (the second scripted to fail) while `fake` holds it, then once
/// released: in progress, ended, the first and third answered; returns the second's error.
async fn held_batch_answers(fake: &FakeServer, batch: &dyn BatchApi, id: &str) -> String {
    assert_eq!(
        batch.status(id).await.unwrap(),
        BatchStatus::Running { done: 0, total: 3 }
    );
    fake.hold_batches(false);
    assert_eq!(batch.status(id).await.unwrap(), BatchStatus::Ended);
    let mut results = batch.results(id).await.unwrap();
    results.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(results.len(), 3);
    let first = results[0].outcome.as_ref().unwrap();
    assert_eq!(first.text, "answer to first");
    assert_eq!(first.usage, Some(usage(10, 3)));
    assert_eq!(results[2].outcome.as_ref().unwrap().text, "answer to third");
    results[1].outcome.clone().unwrap_err()
}

#[tokio::test]
async fn openai_batches_upload_a_file_poll_and_read_answers_and_failures() {
    let fake = FakeServer::start().await;
    fake.respond_with(|r| match r.messages()[0].1.as_str() {
        "second" => Reply::error(400, "invalid_request_error", "context too long"),
        p => Reply::text(format!("answer to {p}")).with_usage(10, 3),
    });
    fake.hold_batches(true);
    let mut config = OpenAiConfig::new("openai", fake.base_url());
    config.api_key = Some("sk-secret".into());
    let client = OpenAiCompatible::new(config, moa_providers::table::http_client());
    let batch = client.batch().unwrap();
    let id = batch.submit(requests("gpt-4o")).await.unwrap();
    assert_eq!(id, "batch_fake0");
    // Each request of the file, as the fake's script saw it: the body a live call would send.
    let seen = fake.requests();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0].path, "batch:batch_fake0");
    let body: Value = serde_json::from_slice(&seen[0].body).unwrap();
    // The same request made live: the same body.
    client.complete(request("gpt-4o", "first")).await.unwrap();
    let live: Value = serde_json::from_slice(&fake.requests()[3].body).unwrap();
    assert_eq!(body, live);
    assert_eq!(body["max_tokens"], 32);
    let error = held_batch_answers(&fake, batch.as_ref(), &id).await;
    assert!(
        error.contains("400") && error.contains("context too long"),
        "{error}"
    );
    // An id the submitter cannot name as the strictest vendor wants is refused before sending.
    let bad = vec![("81/2".to_string(), request("gpt-4o", "x"))];
    assert!(batch.submit(bad).await.is_err());
    assert_eq!(fake.batches().len(), 1);
    // An id that is not a plain name never reaches a URL.
    let err = batch.status("../files/x").await.unwrap_err().to_string();
    assert!(err.contains("not a plain name"), "{err}");
}

#[tokio::test]
async fn anthropic_batches_send_requests_inline_and_never_follow_results_url() {
    let fake = FakeServer::anthropic().await;
    fake.respond_with(|r| match r.messages().last().unwrap().1.as_str() {
        "second" => Reply::anthropic_error(400, "invalid_request_error", "prompt is too long"),
        p => Reply::text(format!("answer to {p}")).with_usage(10, 3),
    });
    fake.hold_batches(true);
    // A results_url naming another host: the client must not send its key there.
    fake.set_batch_results_base("http://127.0.0.1:9");
    let mut config = AnthropicConfig::new("anthropic", fake.base_url());
    config.api_key = Some("sk-ant-secret".into());
    let client = Anthropic::new(config, moa_providers::table::http_client());
    let batch = client.batch().unwrap();
    let id = batch
        .submit(requests("claude-3-haiku-20240307"))
        .await
        .unwrap();
    assert_eq!(id, "msgbatch_fake0");
    let body: Value = serde_json::from_slice(&fake.requests()[0].body).unwrap();
    assert_eq!(body["max_tokens"], 32);
    assert_eq!(body["model"], "claude-3-haiku-20240307");
    assert!(body.get("stream").is_none());
    let error = held_batch_answers(&fake, batch.as_ref(), &id).await;
    assert!(error.contains("prompt is too long"), "{error}");
}
