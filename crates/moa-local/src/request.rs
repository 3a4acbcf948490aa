//! What a chat request asks of a local model: its prompt tokens (chat template, then tokenizer),
//! its sampling settings and its output limit. The generation itself is [`crate::batch`]'s.

use moa_core::{ChatRequest, ProviderError};

use crate::failed;
use crate::model::Model;
use crate::sampler::Sampling;
use crate::tokenizer::EncodeStop;

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

/// Bytes of rendered prompt a model with `context` tokens is given at most: far more than its
/// context can hold (tokens average about four bytes), so only prompts that could never fit
/// are refused before they are tokenized.
pub fn max_prompt_bytes(context: usize) -> usize {
    context.saturating_mul(64).max(64 << 10)
}

fn too_long(message: String) -> ProviderError {
    ProviderError::InvalidRequest {
        provider: "local".into(),
        message,
    }
}

/// The prompt's tokens: the messages through the model's chat template, then its tokenizer.
/// A prompt the model's context cannot hold is refused as soon as that is known, before the
/// template or the tokenizer spends time on the rest; `cancelled` stops the tokenizer early.
pub fn prompt_tokens(
    model: &Model,
    request: &ChatRequest,
    cancelled: &dyn Fn() -> bool,
) -> Result<Vec<u32>, ProviderError> {
    if let Some(i) = request
        .messages
        .iter()
        .position(|m| m.images().next().is_some())
    {
        return Err(ProviderError::InvalidRequest {
            provider: "local".into(),
            message: format!(
                "local model {} takes text only, and message {} holds an image_url part; send \
                 text, or choose a model that takes images",
                request.model,
                i + 1
            ),
        });
    }
    let context = model.config.context;
    let max_bytes = max_prompt_bytes(context);
    let given: usize = request.messages.iter().map(|m| m.content.len()).sum();
    let refuse = || {
        too_long(format!(
            "the prompt is longer than local model {} can take: its context is {context} tokens \
             (prompts over {max_bytes} bytes are refused unread)",
            request.model
        ))
    };
    if given > max_bytes {
        return Err(refuse());
    }
    let prompt = model
        .template
        .render_bounded(&request.messages, max_bytes)
        .map_err(|e| match e.kind() {
            minijinja::ErrorKind::WriteFailure => refuse(),
            _ => failed(format!("chat template: {e}")),
        })?;
    // One token of the context is left for the answer at least.
    let room = context.saturating_sub(1);
    model
        .tokenizer
        .encode_bounded(&prompt, room, cancelled)
        .map_err(|stop| match stop {
            EncodeStop::TooLong(_) => too_long(format!(
                "the prompt is more than {room} tokens, and local model {} has a context of \
                 {context} tokens: shorten the conversation",
                request.model
            )),
            EncodeStop::Cancelled => failed("the request was cancelled"),
        })
}

/// The output limit of `request`, capped at what the context leaves after `prompt_len`.
pub fn limit(request: &ChatRequest, prompt_len: usize, context: usize) -> usize {
    let asked = request.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS) as usize;
    asked.min(context.saturating_sub(prompt_len))
}
