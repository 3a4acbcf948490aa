//! What a chat request asks of a local model: its prompt tokens (chat template, then tokenizer),
//! its sampling settings and its output limit. The generation itself is [`crate::batch`]'s.

use moa_core::{ChatRequest, ProviderError};

use crate::failed;
use crate::model::Model;
use crate::sampler::Sampling;

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
