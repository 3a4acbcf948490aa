//! What a chat request asks of a local model: its prompt tokens (chat template, then tokenizer),
//! its sampling settings and its output limit. The generation itself is [`crate::batch`]'s.

use moa_core::{ChatRequest, ProviderError};

use crate::failed;
use crate::model::Model;
use crate::sampler::Sampling;
use crate::tokenizer::EncodeStop;

/// Output limit when a request sets none.
pub const DEFAULT_MAX_TOKENS: u32 = 512;

/// Sampling settings from a request: temperature, and `top_p` / `seed` / `ignore_eos` from its
/// extra fields.
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
        ignore_eos: request
            .extra
            .get("ignore_eos")
            .and_then(|v| v.as_bool())
            .unwrap_or(false),
    }
}

/// Extra request fields the local model honours; any other is refused by name. `ignore_eos`
/// (as llama.cpp's server and vLLM name it) generates to `max_tokens` without ever picking an
/// end-of-turn token: answers of a fixed length, for benchmarks.
pub const SUPPORTED_FIELDS: [&str; 3] = ["top_p", "seed", "ignore_eos"];

/// Refuses what the local model cannot do rather than dropping it: tools, and any sampling
/// field but temperature, max_tokens, top_p, seed and ignore_eos (`stop`, penalties, `logit_bias`,
/// `logprobs`, ...).
pub fn check(request: &ChatRequest) -> Result<(), ProviderError> {
    let refuse = |what: String| ProviderError::InvalidRequest {
        provider: "local".into(),
        message: format!(
            "local model {} does not support {what}; leave it out, or choose a hosted model",
            request.model
        ),
    };
    if request.tools.as_ref().is_some_and(|t| !t.defs.is_empty()) {
        return Err(refuse("tools".into()));
    }
    match request
        .extra
        .keys()
        .find(|k| !SUPPORTED_FIELDS.contains(&k.as_str()))
    {
        Some(field) => Err(refuse(format!("`{field}`"))),
        None => Ok(()),
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

#[cfg(test)]
mod tests {
    use super::*;
    use moa_core::{Message, ToolDef, Tools};

    fn refusal(request: &ChatRequest) -> String {
        check(request).expect_err("refused").to_string()
    }

    #[test]
    fn what_the_local_model_cannot_do_is_refused_by_name() {
        let mut request = ChatRequest::new("smollm2", vec![Message::user("hi")]);
        request.temperature = Some(0.2);
        request.max_tokens = Some(8);
        request.extra.insert("top_p".into(), 0.9.into());
        request.extra.insert("seed".into(), 7.into());
        assert!(check(&request).is_ok(), "what it honours passes");
        for field in ["stop", "logprobs", "frequency_penalty", "logit_bias"] {
            let mut asked = request.clone();
            asked.extra.insert(field.into(), true.into());
            let shown = refusal(&asked);
            assert!(
                shown.contains(&format!("smollm2 does not support `{field}`")),
                "{shown}"
            );
        }
        let mut tools = request.clone();
        tools.tools = Some(Tools {
            defs: vec![ToolDef {
                name: "f".into(),
                description: None,
                parameters: serde_json::json!({}),
                strict: None,
            }],
            choice: None,
            parallel: None,
        });
        assert!(refusal(&tools).contains("does not support tools"));
    }
}
