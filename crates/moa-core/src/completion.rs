//! What is sent to one model and what comes back: requests, streamed chunks, completions, usage.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::message::{Message, ToolCall};

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
    /// Tools the model may call; `None` offers none.
    pub tools: Option<Tools>,
    /// The format the answer must have (sent as OpenAI's `response_format` where the dialect
    /// has it; every agent is also told in text).
    pub response_format: Option<crate::format::ResponseFormat>,
    /// The first this many messages are a prefix that stays the same across calls (the
    /// `appended` prompt style): dialects with explicit prompt caching mark its end.
    pub cache_prefix: Option<usize>,
    /// Which request and trace this call serves, sent upstream as headers.
    pub correlation: Correlation,
}

/// What ties a call to the request it serves, sent upstream as headers so that logs and
/// traces on both sides join.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Correlation {
    /// The request's id (a server's `X-Request-Id`), sent as `X-Request-Id`.
    pub request_id: Option<String>,
    /// The W3C `traceparent` of this call (see [`crate::TraceContext`]).
    pub traceparent: Option<String>,
}

/// A function the model may call: OpenAI's function tool.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolDef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The arguments' JSON Schema.
    #[serde(default = "empty_object")]
    pub parameters: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

impl ToolDef {
    /// OpenAI's `tools` array (function tools only); `Err` says what is wrong, naming `tools`.
    pub fn parse_openai(value: Value) -> Result<Vec<ToolDef>, String> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Tool {
            #[serde(rename = "type")]
            kind: String,
            function: ToolDef,
        }
        let tools: Vec<Tool> =
            serde_json::from_value(value).map_err(|e| format!("`tools`: {e}"))?;
        tools
            .into_iter()
            .map(|t| match t.kind.as_str() {
                "function" => Ok(t.function),
                other => Err(format!(
                    "`tools`: tools of type `{other}` are not supported (function is)"
                )),
            })
            .collect()
    }
}

fn empty_object() -> Value {
    Value::Object(Map::new())
}

/// Whether and which tool the model must call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToolChoice {
    Auto,
    None,
    Required,
    Function(String),
}

/// The tools of a request and how they may be used.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tools {
    pub defs: Vec<ToolDef>,
    pub choice: Option<ToolChoice>,
    /// Whether the model may make several calls in one answer (OpenAI's parallel_tool_calls).
    pub parallel: Option<bool>,
}

impl ChatRequest {
    /// Refuses a request that sets one of `fields`, which `api` does not take: sent, such a
    /// field would be dropped silently or fail upstream with a 400 a client only sees as a 502;
    /// refused first, it names itself.
    pub fn refuse_fields(
        &self,
        fields: &[&str],
        provider: &str,
        api: &str,
    ) -> Result<(), crate::ProviderError> {
        match fields.iter().find(|f| self.extra.contains_key(**f)) {
            Some(field) => Err(crate::ProviderError::InvalidRequest {
                provider: provider.to_string(),
                message: format!(
                    "`{field}` is not supported by {api}; leave it out for this model"
                ),
            }),
            None => Ok(()),
        }
    }

    /// A request for `model` with `messages` and provider defaults for everything else.
    pub fn new(model: impl Into<String>, messages: Vec<Message>) -> Self {
        Self {
            model: model.into(),
            messages,
            temperature: None,
            max_tokens: None,
            extra: Map::new(),
            cache_prefix: None,
            correlation: Correlation::default(),
            tools: None,
            response_format: None,
        }
    }
}

/// Token counts reported by a provider.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    /// Of `prompt_tokens`, those read from the provider's prompt cache (priced at the cached
    /// rate where the price table has one).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cached_tokens: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Usage {
    /// Adds another call's counts to these.
    pub fn add(&mut self, other: &Usage) {
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.total_tokens += other.total_tokens;
        self.cached_tokens += other.cached_tokens;
    }
}

/// One item of a provider's stream.
#[derive(Clone, Debug, PartialEq)]
pub enum Chunk {
    /// Newly generated text.
    Delta(String),
    /// A piece of a tool call: the call at `index` of this answer. Its first piece carries the
    /// call's id and function name; the arguments (a JSON text) may come in several pieces.
    ToolCall {
        index: usize,
        id: Option<String>,
        name: Option<String>,
        arguments: String,
    },
    /// Log probabilities of the tokens just sent (OpenAI's `choices[].logprobs.content` of a
    /// chunk), when the request asked for them.
    Logprobs(Vec<TokenLogprob>),
    /// The answer comes from attempt `n` (n > 1) after earlier attempts failed and were
    /// retried: sent first, and only then.
    Attempts(u32),
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
    /// The tools the model called, in order.
    pub tool_calls: Vec<ToolCall>,
    /// Which attempt answered (1, or 0 when not told); more than 1 means the earlier ones
    /// failed and were retried.
    pub attempts: u32,
}

impl Completion {
    /// Adds one chunk of a stream to the answer; true for the stream's end.
    pub fn push(&mut self, chunk: Chunk) -> bool {
        match chunk {
            Chunk::Delta(text) => self.text.push_str(&text),
            Chunk::ToolCall {
                index,
                id,
                name,
                arguments,
            } => self.push_tool_call(index, id, name, &arguments),
            Chunk::Logprobs(tokens) => self.logprobs.get_or_insert_with(Vec::new).extend(tokens),
            Chunk::Attempts(n) => self.attempts = n,
            Chunk::Finished {
                finish_reason,
                usage,
            } => {
                self.finish_reason = finish_reason;
                self.usage = usage;
                return true;
            }
        }
        false
    }

    /// Adds a piece of tool call `index` (see [`Chunk::ToolCall`]).
    pub fn push_tool_call(
        &mut self,
        index: usize,
        id: Option<String>,
        name: Option<String>,
        arguments: &str,
    ) {
        // Calls arrive in index order. An index far past the last is a hostile or broken
        // stream; it is ignored rather than allocated for.
        if index > self.tool_calls.len() + 64 {
            return;
        }
        while self.tool_calls.len() <= index {
            self.tool_calls.push(ToolCall {
                id: String::new(),
                name: String::new(),
                arguments: String::new(),
            });
        }
        let call = &mut self.tool_calls[index];
        if let Some(id) = id {
            call.id = id;
        }
        if let Some(name) = name {
            call.name.push_str(&name);
        }
        call.arguments.push_str(arguments);
    }
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
