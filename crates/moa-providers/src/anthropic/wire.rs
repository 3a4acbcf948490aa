//! Anthropic's Messages API: the request body, the whole response and the streamed events.

use moa_core::{ChatRequest, Part, Role, ToolChoice, Tools, Usage};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// The API version moa speaks (sent as `anthropic-version`).
pub const API_VERSION: &str = "2023-06-01";

/// Anthropic requires `max_tokens`; this is sent when neither the request nor config sets one.
pub const DEFAULT_MAX_TOKENS: u32 = 4096;

/// Fields the client owns; config `extra` may not set them.
pub const RESERVED_FIELDS: [&str; 4] = ["model", "messages", "system", "stream"];

#[derive(Serialize)]
struct Message<'a> {
    role: &'a str,
    content: Value,
}

/// A message's content: its text, or content blocks when it holds images (base64 from a data
/// URL, otherwise by URL) or tool calls (`tool_use` blocks after the text).
fn content(message: &moa_core::Message) -> Value {
    if !message.tool_calls.is_empty() {
        let mut blocks = Vec::new();
        if !message.content.is_empty() {
            blocks.push(json!({"type": "text", "text": message.content}));
        }
        for call in &message.tool_calls {
            let input = call.input_object();
            blocks.push(
                json!({"type": "tool_use", "id": call.id, "name": call.name, "input": input}),
            );
        }
        return Value::Array(blocks);
    }
    if message.parts.is_empty() {
        return Value::String(message.content.clone());
    }
    let blocks = message
        .parts
        .iter()
        .map(|part| match part {
            Part::Text(text) => json!({"type": "text", "text": text}),
            Part::Image { url, .. } => match crate::image::data_url(url) {
                Some((media_type, data)) => json!({"type": "image", "source":
                    {"type": "base64", "media_type": media_type, "data": data}}),
                None => json!({"type": "image", "source": {"type": "url", "url": url}}),
            },
        })
        .collect();
    Value::Array(blocks)
}

/// Puts Anthropic's prompt-cache marker (the prefix up to the block that carries it is cached) on the last block of `content` (a text becomes a text block).
fn mark_cached(content: &mut Value) {
    if let Value::String(text) = content {
        *content = json!([{"type": "text", "text": text}]);
    }
    if let Some(last) = content.as_array_mut().and_then(|b| b.last_mut()) {
        last["cache_control"] = json!({"type": "ephemeral"});
    }
}

#[derive(Serialize)]
struct Body<'a> {
    model: &'a str,
    max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<Value>,
    messages: Vec<Message<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<Vec<Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<Value>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

/// Serializes `request` as a Messages API body: system messages become the `system` field
/// (joined by a blank line when there are several), the rest keep their order.
pub fn request_body(request: &ChatRequest, stream: bool) -> Vec<u8> {
    let mut system: Vec<&str> = Vec::new();
    let mut messages: Vec<Message> = Vec::new();
    // Where the stable prefix ends (see `ChatRequest::cache_prefix`): after this many of the
    // API's messages.
    let mut prefix_end = None;
    for (i, message) in request.messages.iter().enumerate() {
        if request.cache_prefix == Some(i) {
            prefix_end = Some(messages.len());
        }
        match &message.role {
            Role::System | Role::Developer => system.push(message.content.as_str()),
            // A tool's result is a `tool_result` block from the user; results of one turn
            // share one user message, as the API requires.
            Role::Tool => {
                let block = json!({"type": "tool_result",
                    "tool_use_id": message.tool_call_id.as_deref().unwrap_or_default(),
                    "content": message.content});
                match messages.last_mut() {
                    Some(last) if last.role == "user" && last.content.is_array() => {
                        if let Value::Array(blocks) = &mut last.content {
                            blocks.push(block);
                        }
                    }
                    _ => messages.push(Message {
                        role: "user",
                        content: Value::Array(vec![block]),
                    }),
                }
            }
            role => messages.push(Message {
                role: role.as_str(),
                content: content(message),
            }),
        }
    }
    if request.cache_prefix == Some(request.messages.len()) {
        prefix_end = Some(messages.len());
    }
    let mut system = (!system.is_empty()).then(|| Value::String(system.join("\n\n")));
    match prefix_end {
        // The prefix's last block carries the marker: a message's, or the system prompt's.
        Some(0) => {
            if let Some(text) = system.take() {
                let mut blocks = json!([{"type": "text", "text": text}]);
                mark_cached(&mut blocks);
                system = Some(blocks);
            }
        }
        Some(end) => mark_cached(&mut messages[end - 1].content),
        None => {}
    }
    let mut extra = crate::http::extra_fields(request, &RESERVED_FIELDS);
    // OpenAI's `stop` (a string or a list) is Anthropic's `stop_sequences` (a list).
    if let Some(stop) = extra.remove("stop") {
        let list = match stop {
            Value::String(s) => json!([s]),
            other => other,
        };
        extra.insert("stop_sequences".into(), list);
    }
    let max_tokens = match extra.remove("max_tokens").and_then(|v| v.as_u64()) {
        Some(n) => u32::try_from(n).unwrap_or(u32::MAX),
        None => request.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
    };
    let (tools, tool_choice) = match &request.tools {
        Some(tools) => tools_json(tools),
        None => (None, None),
    };
    let body = Body {
        model: &request.model,
        max_tokens,
        system,
        messages,
        temperature: request.temperature,
        tools,
        tool_choice,
        stream,
        extra,
    };
    // Serializing plain data with string keys cannot fail.
    serde_json::to_vec(&body).unwrap_or_default()
}

/// OpenAI's tools and tool choice in Anthropic's words: `input_schema`, and `auto` / `any` /
/// `tool` / `none` with `disable_parallel_tool_use` for `parallel_tool_calls: false`.
fn tools_json(tools: &Tools) -> (Option<Vec<Value>>, Option<Value>) {
    let defs = tools
        .defs
        .iter()
        .map(|t| {
            let mut tool = json!({"name": t.name, "input_schema": t.parameters});
            if let Some(description) = &t.description {
                tool["description"] = json!(description);
            }
            tool
        })
        .collect();
    let mut choice = match &tools.choice {
        None | Some(ToolChoice::Auto) => json!({"type": "auto"}),
        Some(ToolChoice::None) => json!({"type": "none"}),
        Some(ToolChoice::Required) => json!({"type": "any"}),
        Some(ToolChoice::Function(name)) => json!({"type": "tool", "name": name}),
    };
    if tools.parallel == Some(false) && choice["type"] != "none" {
        choice["disable_parallel_tool_use"] = json!(true);
    }
    let choice = (tools.choice.is_some() || tools.parallel.is_some()).then_some(choice);
    (Some(defs), choice)
}

/// OpenAI sampling fields the Messages API does not take: refused by name (see
/// [`ChatRequest::refuse_fields`]).
pub const UNSUPPORTED_FIELDS: [&str; 8] = crate::http::OPENAI_ONLY_FIELDS;

/// Refuses a request that sets a field the Messages API does not take.
pub fn check(request: &ChatRequest, provider: &str) -> Result<(), moa_core::ProviderError> {
    request.refuse_fields(&UNSUPPORTED_FIELDS, provider, "Anthropic's Messages API")
}

/// Anthropic's stop reasons in OpenAI's words, which the rest of moa uses.
pub fn finish_reason(stop_reason: &str) -> String {
    match stop_reason {
        "end_turn" | "stop_sequence" | "pause_turn" => "stop",
        "max_tokens" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        other => other,
    }
    .to_string()
}

/// Usage as Anthropic reports it; cached input counts as input.
#[derive(Deserialize, Default, Clone, Copy)]
pub struct WireUsage {
    #[serde(default)]
    pub input_tokens: Option<u64>,
    #[serde(default)]
    pub output_tokens: Option<u64>,
    #[serde(default)]
    pub cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    pub cache_read_input_tokens: Option<u64>,
}

impl WireUsage {
    /// Prompt tokens read from the cache.
    pub fn cached(&self) -> Option<u64> {
        self.cache_read_input_tokens
    }

    pub fn input(&self) -> Option<u64> {
        let parts = [
            self.input_tokens,
            self.cache_creation_input_tokens,
            self.cache_read_input_tokens,
        ];
        parts
            .iter()
            .any(Option::is_some)
            .then(|| parts.iter().flatten().sum())
    }
}

/// Usage in moa's terms: `input` counts every prompt token, cached or not; `cached` those read
/// from the prompt cache.
pub fn usage(input: u64, output: u64, cached: u64) -> Usage {
    Usage {
        prompt_tokens: input,
        completion_tokens: output,
        total_tokens: input + output,
        cached_tokens: cached,
    }
}

#[derive(Deserialize)]
pub struct ContentBlock {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
    /// A `tool_use` block's call.
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub input: Option<Value>,
}

/// A whole (non-streamed) response.
#[derive(Deserialize)]
pub struct WireMessage {
    #[serde(default)]
    pub content: Vec<ContentBlock>,
    #[serde(default)]
    pub stop_reason: Option<String>,
    #[serde(default)]
    pub usage: Option<WireUsage>,
}

#[derive(Deserialize, Default)]
pub struct Delta {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
    /// An `input_json_delta`'s piece of a tool call's arguments.
    #[serde(default)]
    pub partial_json: Option<String>,
    #[serde(default)]
    pub stop_reason: Option<String>,
}

/// One streamed event's data; `type` says which fields are present.
#[derive(Deserialize)]
pub struct WireEvent {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub message: Option<WireMessage>,
    #[serde(default)]
    pub delta: Option<Delta>,
    #[serde(default)]
    pub usage: Option<WireUsage>,
    #[serde(default)]
    pub error: Option<Value>,
    /// `content_block_start`/`_delta`: which block, and (at its start) the block itself.
    #[serde(default)]
    pub index: Option<usize>,
    #[serde(default)]
    pub content_block: Option<ContentBlock>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use moa_core::Message as M;

    fn body(request: &ChatRequest) -> Value {
        serde_json::from_slice(&request_body(request, false)).unwrap()
    }

    #[test]
    fn the_stable_prefix_ends_with_a_cache_marker() {
        let refs = "You have been provided with ...\n1. A";
        let mut r = ChatRequest::new(
            "claude-3-5-haiku-20241022",
            vec![
                M::system("be brief"),
                M::user("Q1"),
                M::assistant("A1"),
                M::user("Q2"),
                M::user(refs),
            ],
        );
        r.cache_prefix = Some(4);
        let sent = body(&r);
        assert_eq!(
            sent["messages"][2]["content"],
            json!([{"type": "text", "text": "Q2", "cache_control": {"type": "ephemeral"}}])
        );
        assert_eq!(
            sent["messages"][3]["content"], refs,
            "the references follow, unmarked"
        );
        assert_eq!(sent["system"], "be brief");
        // A prefix of the system prompt alone marks the system prompt.
        r.messages.truncate(1);
        r.messages.push(M::user(refs));
        r.cache_prefix = Some(1);
        let sent = body(&r);
        assert_eq!(
            sent["system"],
            json!([{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}])
        );
        // Without a prefix, nothing is marked.
        r.cache_prefix = None;
        assert!(!String::from_utf8(request_body(&r, false))
            .unwrap()
            .contains("cache_control"));
    }

    #[test]
    fn system_messages_become_the_system_field_and_max_tokens_is_always_sent() {
        let mut r = ChatRequest::new(
            "claude-3-haiku-20240307",
            vec![
                M::system("be brief"),
                M::user("hi"),
                M::assistant("hello"),
                M::user("again"),
            ],
        );
        assert_eq!(
            String::from_utf8(request_body(&r, true)).unwrap(),
            r#"{"model":"claude-3-haiku-20240307","max_tokens":4096,"system":"be brief","messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"hello"},{"role":"user","content":"again"}],"stream":true}"#
        );
        r.messages = vec![M::user("q")];
        r.temperature = Some(0.0);
        r.max_tokens = Some(512);
        r.extra.insert("top_k".into(), Value::from(5));
        r.extra.insert("system".into(), Value::from("sneaky"));
        assert_eq!(
            String::from_utf8(request_body(&r, false)).unwrap(),
            r#"{"model":"claude-3-haiku-20240307","max_tokens":512,"messages":[{"role":"user","content":"q"}],"temperature":0.0,"top_k":5}"#
        );
    }

    #[test]
    fn stop_reasons_are_translated() {
        assert_eq!(finish_reason("end_turn"), "stop");
        assert_eq!(finish_reason("max_tokens"), "length");
        assert_eq!(finish_reason("something_new"), "something_new");
    }

    #[test]
    fn cached_input_counts_as_input() {
        let u: WireUsage = serde_json::from_str(
            r#"{"input_tokens":10,"cache_read_input_tokens":90,"output_tokens":1}"#,
        )
        .unwrap();
        assert_eq!(u.input(), Some(100));
        assert_eq!(WireUsage::default().input(), None);
    }

    #[test]
    fn images_become_image_blocks_and_tool_roles_become_user() {
        let m: moa_core::Message = serde_json::from_str(
            r#"{"role":"user","content":[{"type":"text","text":"Compare"},{"type":"image_url","image_url":{"url":"data:image/png;base64,iVBO"}},{"type":"image_url","image_url":{"url":"https://example.com/b.jpg"}}]}"#,
        )
        .unwrap();
        let developer = moa_core::Message::new(Role::Developer, "Be terse.");
        let r = ChatRequest::new("claude", vec![developer, m]);
        let body: Value = serde_json::from_slice(&request_body(&r, false)).unwrap();
        assert_eq!(body["system"], "Be terse.");
        assert_eq!(
            body["messages"],
            json!([{"role": "user", "content": [
                {"type": "text", "text": "Compare"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/b.jpg"}}
            ]}])
        );
    }

    #[test]
    fn openai_stop_becomes_stop_sequences_and_unsupported_fields_are_refused() {
        let mut r = ChatRequest::new("claude", vec![M::user("hi")]);
        r.extra.insert("stop".into(), json!("END"));
        let body: Value = serde_json::from_slice(&request_body(&r, false)).unwrap();
        assert_eq!(body["stop_sequences"], json!(["END"]));
        assert!(body.get("stop").is_none());
        assert!(check(&r, "anthropic").is_ok());
        r.extra.insert("logit_bias".into(), json!({"1": 5}));
        let err = check(&r, "anthropic").unwrap_err().to_string();
        assert!(err.contains("`logit_bias` is not supported"), "{err}");
    }
}
