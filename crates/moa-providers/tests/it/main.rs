//! The OpenAI-compatible provider and whole MoA runs against a fake server on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod anthropic;
mod batches;
#[cfg(feature = "bedrock")]
mod bedrock;
mod hostile;
mod moa_http;
mod openai;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use moa_core::{Chunk, Provider, ProviderError};
use moa_providers::{Endpoint, Registry, RetryPolicy};
use moa_testkit::FakeOpenAi;

/// Retries that wait only milliseconds, so tests that retry stay fast.
pub fn quick_retries(max_retries: u32) -> RetryPolicy {
    RetryPolicy {
        max_retries,
        base_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(20),
        max_retry_after: Duration::from_secs(5),
    }
}

/// A registry whose `together` and `test` providers point at `fake`, with key `sk-test`.
pub fn registry_for(fake: &FakeOpenAi) -> Registry {
    let mut registry = Registry::new(Arc::new(|var| {
        (var == "TOGETHER_API_KEY").then(|| "sk-test".to_string())
    }));
    let together = registry.endpoint_mut("together").unwrap();
    together.base_url = fake.base_url();
    together.retry = quick_retries(2);
    let mut test = Endpoint::custom("test", &fake.base_url());
    test.retry = quick_retries(2);
    registry.insert_endpoint(test);
    registry
}

/// Everything a provider streams for `request`: the text, every chunk, and the error it ended
/// with, if any.
/// Checks that `provider` reads 600 cached of 1,000 prompt tokens, streamed and whole, from a
/// fake whose next two answers (both queued by the caller) report them in its dialect's words.
pub async fn assert_reads_cached_tokens(provider: &dyn Provider, request: moa_core::ChatRequest) {
    let (_, chunks, err) = collect_stream(provider, request.clone()).await;
    assert!(err.is_none(), "{err:?}");
    let Some(Chunk::Finished {
        usage: Some(usage), ..
    }) = chunks.last()
    else {
        panic!("{chunks:?}")
    };
    assert_eq!((usage.prompt_tokens, usage.cached_tokens), (1000, 600));
    let whole = provider.complete(request).await.unwrap().usage.unwrap();
    assert_eq!((whole.prompt_tokens, whole.cached_tokens), (1000, 600));
}

/// The whole answer to `request`, from `complete` or (`stream`) from the chunks gathered as
/// the engine gathers them.
pub async fn answer(
    provider: &dyn Provider,
    request: moa_core::ChatRequest,
    stream: bool,
) -> moa_core::Completion {
    match stream {
        true => moa_core::provider::collect("p".into(), provider.stream(request)).await,
        false => provider.complete(request).await,
    }
    .unwrap()
}

pub async fn collect_stream(
    provider: &dyn Provider,
    request: moa_core::ChatRequest,
) -> (String, Vec<Chunk>, Option<ProviderError>) {
    let mut text = String::new();
    let mut chunks = Vec::new();
    let mut stream = provider.stream(request);
    while let Some(item) = stream.next().await {
        match item {
            Ok(chunk) => {
                if let Chunk::Delta(t) = &chunk {
                    text.push_str(t);
                }
                chunks.push(chunk);
            }
            Err(e) => return (text, chunks, Some(e)),
        }
    }
    (text, chunks, None)
}
