//! One answer from a loaded model: prompt, prefill, then token by token until a stop token or
//! the limit, each piece of text sent as it is decoded. Runs on a blocking thread.

use moa_core::{ChatRequest, Chunk, ProviderError, Usage};
use tokio::sync::mpsc::UnboundedSender;

use crate::model::Model;
use crate::sampler::{sample, Rng, Sampling};
use crate::tokenizer::Utf8Stream;

/// Output limit when a request sets none.
pub const DEFAULT_MAX_TOKENS: u32 = 512;

/// Sampling settings from a request: temperature, and `top_p` / `seed` from its extra fields.
pub fn sampling(request: &ChatRequest) -> Sampling {
    let number = |k: &str| request.extra.get(k).and_then(|v| v.as_f64());
    let seed = request
        .extra
        .get("seed")
        .and_then(|v| v.as_u64())
        .unwrap_or_else(|| {
            // No seed asked for: a different one each call, as hosted APIs behave.
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
    Sampling {
        temperature: request.temperature.unwrap_or(0.7),
        top_p: number("top_p").unwrap_or(1.0),
        seed,
    }
}

fn failed(message: String) -> ProviderError {
    ProviderError::Other {
        provider: "local".into(),
        message,
    }
}

/// Generates the answer to `request` alone (no batching), sending chunks to `out`. Stops early, quietly, when the
/// receiver is gone (the caller dropped the stream).
pub fn generate(
    model: &Model,
    request: &ChatRequest,
    out: &UnboundedSender<Result<Chunk, ProviderError>>,
) {
    if let Err(e) = run(model, request, out) {
        let _ = out.send(Err(e));
    }
}

/// The prompt's tokens: the messages through the model's chat template, then its tokenizer.
pub fn prompt_tokens(model: &Model, request: &ChatRequest) -> Result<Vec<u32>, ProviderError> {
    let prompt = model
        .template
        .render(&request.messages)
        .map_err(|e| failed(format!("chat template: {e}")))?;
    Ok(model.tokenizer.encode(&prompt))
}

/// The output limit of `request`.
pub fn limit(request: &ChatRequest) -> usize {
    request.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS) as usize
}

fn run(
    model: &Model,
    request: &ChatRequest,
    out: &UnboundedSender<Result<Chunk, ProviderError>>,
) -> Result<(), ProviderError> {
    let tokens = prompt_tokens(model, request)?;
    let sampling = sampling(request);
    let mut rng = Rng::new(sampling.seed);
    let limit = limit(request);
    let mut cache = model.new_cache();
    let mut text = Utf8Stream::default();
    let mut logits = model
        .forward(&tokens, &mut cache)
        .map_err(|e| failed(e.to_string()))?;
    let mut generated = 0;
    let mut finish = "length";
    while generated < limit {
        let token = sample(&logits, &sampling, &mut rng);
        if model.tokenizer.stop.contains(&token) {
            finish = "stop";
            break;
        }
        generated += 1;
        let piece = text.push(&model.tokenizer.token_bytes(token));
        if !piece.is_empty() && out.send(Ok(Chunk::Delta(piece))).is_err() {
            return Ok(());
        }
        if out.is_closed() {
            return Ok(());
        }
        logits = model
            .forward(&[token], &mut cache)
            .map_err(|e| failed(e.to_string()))?;
    }
    let usage = Usage {
        prompt_tokens: tokens.len() as u64,
        completion_tokens: generated as u64,
        total_tokens: (tokens.len() + generated) as u64,
    };
    let _ = out.send(Ok(Chunk::Finished {
        finish_reason: Some(finish.into()),
        usage: Some(usage),
    }));
    Ok(())
}
