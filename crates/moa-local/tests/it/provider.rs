use std::path::Path;

use futures::StreamExt;
use moa_core::{ChatRequest, Chunk, Message, Provider};
use moa_local::model::{Arch, Model};
use moa_local::LocalProvider;

use crate::tiny;

fn request(path: &Path, temperature: f64, seed: u64, max_tokens: u32) -> ChatRequest {
    let mut r = ChatRequest::new(path.display().to_string(), vec![Message::user("hi there")]);
    r.temperature = Some(temperature);
    r.max_tokens = Some(max_tokens);
    r.extra.insert("seed".into(), seed.into());
    r
}

async fn answer(provider: &LocalProvider, request: ChatRequest) -> (String, Vec<Chunk>) {
    let mut text = String::new();
    let mut chunks = Vec::new();
    let mut stream = provider.stream(request);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        if let Chunk::Delta(t) = &chunk {
            text.push_str(t);
        }
        chunks.push(chunk);
    }
    (text, chunks)
}

#[test]
fn loads_shape_tokenizer_and_template_from_the_gguf() {
    let dir = tempfile::tempdir().unwrap();
    for (arch, expected) in [("llama", Arch::Llama), ("qwen2", Arch::Qwen2)] {
        let model = Model::load(&tiny::write(dir.path(), arch)).unwrap();
        let c = &model.config;
        assert_eq!(c.arch, expected);
        assert_eq!(
            (c.layers, c.hidden, c.heads, c.kv_heads, c.head_dim),
            (tiny::LAYERS, tiny::HIDDEN, tiny::HEADS, tiny::KV_HEADS, 16)
        );
        assert_eq!(c.name, "tiny test model");
        let prompt = model.template.render(&[Message::user("hi")]).unwrap();
        assert_eq!(
            prompt,
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
        let ids = model.tokenizer.encode(&prompt);
        assert_eq!(ids[0], 1);
        assert_eq!(model.tokenizer.decode(&ids), prompt);
    }
}

#[test]
fn the_kv_cache_gives_the_same_logits_as_one_prefill() {
    let dir = tempfile::tempdir().unwrap();
    for arch in ["llama", "qwen2"] {
        let model = Model::load(&tiny::write(dir.path(), arch)).unwrap();
        let ids = model
            .tokenizer
            .encode("<|im_start|>user\nthe cat sat<|im_end|>");
        let whole = model.forward(&ids, &mut model.new_cache()).unwrap();
        let mut cache = model.new_cache();
        let mut stepwise = Vec::new();
        let (head, tail) = ids.split_at(ids.len() / 2);
        model.forward(head, &mut cache).unwrap();
        for id in tail {
            stepwise = model.forward(&[*id], &mut cache).unwrap();
        }
        assert_eq!(cache.len, ids.len());
        assert_eq!(whole.len(), model.tokenizer.vocab_size());
        let diff = whole
            .iter()
            .zip(&stepwise)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(diff < 1e-3, "{arch}: logits differ by {diff}");
    }
}

#[test]
fn unsupported_files_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let not_gguf = dir.path().join("x.gguf");
    std::fs::write(&not_gguf, b"definitely not a gguf file").unwrap();
    let err = Model::load(&not_gguf).err().unwrap().to_string();
    assert!(err.contains("is not a readable GGUF file"), "{err}");
    let err = Model::load(&tiny::write(dir.path(), "gemma"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.ends_with("unsupported architecture `gemma` (supported: llama, qwen2)"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn streams_seeded_answers_with_usage_and_respects_max_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny::write(dir.path(), "llama");
    let provider = LocalProvider::new(dir.path());
    let (a, chunks) = answer(&provider, request(&path, 1.0, 7, 12)).await;
    let (b, _) = answer(&provider, request(&path, 1.0, 7, 12)).await;
    let (c, _) = answer(&provider, request(&path, 1.0, 8, 12)).await;
    assert_eq!(a, b, "the same seed gives the same answer");
    assert_ne!(a, c, "another seed gives another answer");
    match chunks.last().unwrap() {
        Chunk::Finished {
            usage: Some(usage),
            finish_reason,
        } => {
            assert!(usage.completion_tokens <= 12);
            assert!(usage.prompt_tokens > 5);
            if usage.completion_tokens < 12 {
                assert_eq!(finish_reason.as_deref(), Some("stop"));
            } else {
                assert_eq!(finish_reason.as_deref(), Some("length"));
            }
        }
        other => panic!("no usage at the end: {other:?}"),
    }
    assert!(chunks.len() > 2, "the answer came in pieces");
}

#[tokio::test(flavor = "multi_thread")]
async fn ignore_eos_generates_to_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny::write(dir.path(), "llama");
    let provider = LocalProvider::new(dir.path());
    let usage = |chunks: &[Chunk]| match chunks.last() {
        Some(Chunk::Finished {
            usage: Some(usage),
            finish_reason: Some(reason),
        }) => (usage.completion_tokens, reason.clone()),
        other => panic!("no usage at the end: {other:?}"),
    };
    // A seed whose answer ends at an end-of-turn token well before the limit.
    let mut stopped = None;
    for seed in 0..200 {
        let (_, chunks) = answer(&provider, request(&path, 1.5, seed, 40)).await;
        if usage(&chunks).1 == "stop" {
            stopped = Some(seed);
            break;
        }
    }
    let seed = stopped.expect("the tiny model ends some answer early at this temperature");
    let mut asked = request(&path, 1.5, seed, 40);
    asked.extra.insert("ignore_eos".into(), true.into());
    let (_, chunks) = answer(&provider, asked).await;
    assert_eq!(usage(&chunks), (40, "length".to_string()));
}

#[tokio::test(flavor = "multi_thread")]
async fn greedy_answers_do_not_depend_on_the_seed() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny::write(dir.path(), "qwen2");
    let provider = LocalProvider::new(dir.path());
    let (a, _) = answer(&provider, request(&path, 0.0, 1, 8)).await;
    let (b, _) = answer(&provider, request(&path, 0.0, 2, 8)).await;
    assert_eq!(a, b);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_requests_share_one_loaded_model() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny::write(dir.path(), "llama");
    let provider = LocalProvider::new(dir.path());
    let id = path.display().to_string();
    let runs = (0..4).map(|i| answer(&provider, request(&path, 0.8, i, 6)));
    let answers = futures::future::join_all(runs).await;
    assert!(answers
        .iter()
        .all(|(_, chunks)| matches!(chunks.last(), Some(Chunk::Finished { .. }))));
    let first = provider.model(&id).unwrap();
    let again = provider.model(&id).unwrap();
    assert!(std::sync::Arc::ptr_eq(&first, &again));
}

#[tokio::test]
async fn a_missing_known_model_says_how_to_get_it() {
    let dir = tempfile::tempdir().unwrap();
    let provider = LocalProvider::new(dir.path());
    let mut stream = provider.stream(ChatRequest::new("smollm2", vec![Message::user("x")]));
    let err = stream.next().await.unwrap().unwrap_err().to_string();
    assert!(
        err.contains("model smollm2 is not ready") && err.contains("run `moa models pull smollm2`"),
        "{err}"
    );
    let mut stream = provider.stream(ChatRequest::new("nonesuch", vec![Message::user("x")]));
    let err = stream.next().await.unwrap().unwrap_err().to_string();
    assert!(
        err.contains("unknown local model `nonesuch`: use one of smollm2"),
        "{err}"
    );
}

#[test]
fn a_batched_step_equals_each_sequence_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    for arch in ["llama", "qwen2"] {
        let model = Model::load(&tiny::write(dir.path(), arch)).unwrap();
        // Three sequences at different positions.
        let prompts = ["<|im_start|>user\nhi", "the cat sat on the mat", "is"];
        let mut caches: Vec<_> = prompts.iter().map(|_| model.new_cache()).collect();
        let mut alone: Vec<_> = prompts.iter().map(|_| model.new_cache()).collect();
        for ((p, c), a) in prompts.iter().zip(&mut caches).zip(&mut alone) {
            let ids = model.tokenizer.encode(p);
            model.forward(&ids, c).unwrap();
            model.forward(&ids, a).unwrap();
        }
        let next = [5u32, 77, 200];
        for step in 0..3 {
            let tokens: Vec<u32> = next.iter().map(|t| t + step).collect();
            let mut refs: Vec<&mut moa_local::model::Cache> = caches.iter_mut().collect();
            let batched = model.forward_batch(&tokens, &mut refs).unwrap();
            for (i, cache) in alone.iter_mut().enumerate() {
                let single = model.forward(&[tokens[i]], cache).unwrap();
                let diff = single
                    .iter()
                    .zip(&batched[i])
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f32::max);
                assert!(
                    diff < 1e-4,
                    "{arch} step {step} sequence {i}: differs by {diff}"
                );
                assert_eq!(caches[i].len, cache.len);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn batched_requests_answer_exactly_as_they_would_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny::write(dir.path(), "llama");
    let provider = LocalProvider::new(dir.path());
    // Together: the same prompt (one shared prefill), different seeds, different limits.
    let together = futures::future::join_all(
        (0..4).map(|i| answer(&provider, request(&path, 0.9, i, 10 + i as u32))),
    )
    .await;
    for (i, (text, chunks)) in together.iter().enumerate() {
        let (alone, _) = answer(&provider, request(&path, 0.9, i as u64, 10 + i as u32)).await;
        assert_eq!(*text, alone, "request {i}");
        assert!(matches!(chunks.last(), Some(Chunk::Finished { .. })));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_request_leaves_the_others_running() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny::write(dir.path(), "llama");
    let provider = LocalProvider::new(dir.path());
    let mut dropped = provider.stream(request(&path, 0.9, 1, 200));
    let first = dropped.next().await.unwrap().unwrap();
    assert!(matches!(first, Chunk::Delta(_)));
    let kept = answer(&provider, request(&path, 0.9, 2, 30));
    drop(dropped);
    let (_, chunks) = kept.await;
    assert!(matches!(chunks.last(), Some(Chunk::Finished { .. })));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sequence_that_fills_the_context_ends_alone_with_length() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny::write(dir.path(), "llama");
    let provider = LocalProvider::new(dir.path());
    let model = provider.model(&path.display().to_string()).unwrap();
    let context = model.config.context;
    // A prompt that leaves four tokens of the context, asking for far more than that.
    let mut long = request(&path, 0.0, 1, 1000);
    let filler = "x".repeat(context);
    let mut words = String::new();
    for c in filler.chars() {
        let prompt_len = model
            .tokenizer
            .encode(&model.template.render(&[Message::user(&words)]).unwrap())
            .len();
        if prompt_len + 4 >= context {
            break;
        }
        words.push(c);
    }
    long.messages = vec![Message::user(&words)];
    let short = request(&path, 0.0, 2, 20);
    let ((_, long_chunks), (short_text, short_chunks)) =
        futures::join!(answer(&provider, long), answer(&provider, short.clone()));

    match long_chunks.last().unwrap() {
        Chunk::Finished {
            usage: Some(usage),
            finish_reason,
        } => {
            assert_eq!(finish_reason.as_deref(), Some("length"));
            assert_eq!(usage.total_tokens as usize, context, "{usage:?}");
        }
        other => panic!("the long request did not finish: {other:?}"),
    }
    // Its neighbour in the batch answered in full, exactly as it does alone.
    assert!(matches!(
        short_chunks.last(),
        Some(Chunk::Finished { usage: Some(u), .. }) if u.completion_tokens > 4
    ));
    let (alone, _) = answer(&provider, short).await;
    assert_eq!(short_text, alone);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_context_window_is_the_files_once_the_model_is_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny::write_with_context(dir.path(), "llama", 640);
    let provider = LocalProvider::new(dir.path());
    let id = path.display().to_string();
    // Not loaded yet: unknown, rather than loading on the caller's thread.
    assert_eq!(provider.context_window(&id), None);
    answer(&provider, request(&path, 0.0, 1, 2)).await;
    assert_eq!(provider.context_window(&id), Some(640));
}
