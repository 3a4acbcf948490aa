//! What is sent to one model and what comes back: requests, streamed chunks, completions, usage.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::message::Message;

/// One chat-completion call, in the terms every provider understands.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatRequest {
    /// The model id as the provider knows it (without the `provider:` prefix).
    pub model: String,
    pub messages: Vec<Message>,
    /// `None` leaves the provider's default in place (the reference aggregator sends none).
    pub temperature: Option<f64>,
    /// `None` leaves the provider's default in place.
    pub max_tokens: Option<u32>,
    /// Further request fields passed through unchanged (top_p, stop, seed, ...).
    pub extra: Map<String, Value>,
}

impl ChatRequest {
    /// A request for `model` with `messages` and provider defaults for everything else.
    pub fn new(model: impl Into<String>, messages: Vec<Message>) -> Self {
        Self {
            model: model.into(),
            messages,
            temperature: None,
            max_tokens: None,
            extra: Map::new(),
        }
    }
}

/// Token counts reported by a provider.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

impl Usage {
    /// Adds another call's counts to these.
    pub fn add(&mut self, other: &Usage) {
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.total_tokens += other.total_tokens;
    }
}

/// One item of a provider's stream.
#[derive(Clone, Debug, PartialEq)]
pub enum Chunk {
    /// Newly generated text.
    Delta(String),
    /// The end of the answer: sent once, last.
    Finished {
        finish_reason: Option<String>,
        usage: Option<Usage>,
    },
}

/// A whole answer.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Completion {
    pub text: String,
    pub finish_reason: Option<String>,
    pub usage: Option<Usage>,
    /// Per generated token, its log probability and the most likely alternatives, when the
    /// request asked for them (OpenAI's `logprobs: true, top_logprobs: n`) and the provider
    /// returns them. Judges read the first token's alternatives.
    pub logprobs: Option<Vec<TokenLogprob>>,
}

/// One generated token with its log probability and the top alternatives at its position.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f64,
    /// The most likely tokens at this position (the generated one among them), best first.
    #[serde(default)]
    pub top_logprobs: Vec<TopLogprob>,
}

/// An alternative token at one position.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f64,
}
