//! The chat-completions wire format: the request body we send and the tolerant shapes we accept.

use moa_core::{ChatRequest, Message, ToolChoice, Tools, Usage};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// Fields the client owns; config `extra` may not set them.
pub const RESERVED_FIELDS: [&str; 4] = ["model", "messages", "stream", "stream_options"];

#[derive(Serialize)]
struct Body<'a> {
    model: &'a str,
    messages: &'a [Message],
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<Vec<Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parallel_tool_calls: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<Value>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

/// OpenAI's `tools` and `tool_choice` for `tools`.
fn tools_json(tools: &Tools) -> (Vec<Value>, Option<Value>) {
    let defs = tools
        .defs
        .iter()
        .map(|t| json!({"type": "function", "function": t}))
        .collect();
    let choice = tools.choice.as_ref().map(|c| match c {
        ToolChoice::Auto => json!("auto"),
        ToolChoice::None => json!("none"),
        ToolChoice::Required => json!("required"),
        ToolChoice::Function(name) => json!({"type": "function", "function": {"name": name}}),
    });
    (defs, choice)
}

/// Serializes `request` as a chat-completions body.
pub fn request_body(request: &ChatRequest, stream: bool, stream_usage: bool) -> Vec<u8> {
    let extra = crate::http::extra_fields(request, &RESERVED_FIELDS);
    let (tools, tool_choice) = match &request.tools {
        Some(tools) => {
            let (defs, choice) = tools_json(tools);
            (Some(defs), choice)
        }
        None => (None, None),
    };
    let body = Body {
        model: &request.model,
        messages: &request.messages,
        temperature: request.temperature.map(temperature_value),
        max_tokens: request.max_tokens,
        stream,
        stream_options: (stream && stream_usage)
            .then(|| serde_json::json!({"include_usage": true})),
        tools,
        tool_choice,
        parallel_tool_calls: request.tools.as_ref().and_then(|t| t.parallel),
        response_format: request.response_format.as_ref().map(|f| f.wire()),
        extra,
    };
    // Serializing plain data with string keys cannot fail.
    serde_json::to_vec(&body).unwrap_or_default()
}

/// The reference sends a temperature at or below 1e-4 as the integer `0`.
fn temperature_value(t: f64) -> Value {
    if t <= 1e-4 {
        Value::from(0)
    } else {
        serde_json::Number::from_f64(t).map_or(Value::from(0), Value::Number)
    }
}

/// Usage as servers send it: any field may be missing.
#[derive(Deserialize, Default)]
pub struct WireUsage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    total_tokens: Option<u64>,
    /// OpenAI's `prompt_tokens_details.cached_tokens` (prompt caching).
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetails>,
}

#[derive(Deserialize, Default)]
struct PromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

impl From<WireUsage> for Usage {
    fn from(u: WireUsage) -> Self {
        let prompt = u.prompt_tokens.unwrap_or(0);
        let completion = u.completion_tokens.unwrap_or(0);
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: u.total_tokens.unwrap_or(prompt + completion),
            cached_tokens: u
                .prompt_tokens_details
                .and_then(|d| d.cached_tokens)
                .unwrap_or(0)
                .min(prompt),
        }
    }
}

#[derive(Deserialize, Default)]
pub struct WireMessage {
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default)]
    pub tool_calls: Option<Vec<WireToolCall>>,
}

/// A tool call, whole or (streamed) a piece of one: every field may be missing from a piece.
#[derive(Deserialize, Default)]
pub struct WireToolCall {
    #[serde(default)]
    pub index: Option<usize>,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub function: Option<WireFunction>,
}

#[derive(Deserialize, Default)]
pub struct WireFunction {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub arguments: Option<String>,
}

/// `choices[].logprobs`: `content` is null when logprobs were not asked for.
#[derive(Deserialize, Default)]
pub struct WireLogprobs {
    #[serde(default)]
    pub content: Option<Vec<moa_core::TokenLogprob>>,
}

#[derive(Deserialize)]
pub struct WireChoice {
    #[serde(default)]
    pub logprobs: Option<WireLogprobs>,
    #[serde(default)]
    pub message: Option<WireMessage>,
    #[serde(default)]
    pub delta: Option<WireMessage>,
    #[serde(default)]
    pub finish_reason: Option<String>,
}

/// A whole response or one streamed chunk; both share this shape.
#[derive(Deserialize)]
pub struct WireResponse {
    #[serde(default)]
    pub choices: Vec<WireChoice>,
    #[serde(default)]
    pub usage: Option<WireUsage>,
    #[serde(default)]
    pub error: Option<Value>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{error_message, truncate};

    #[test]
    fn body_has_only_what_is_set() {
        let mut r = ChatRequest::new("m", vec![Message::user("hi")]);
        assert_eq!(
            String::from_utf8(request_body(&r, false, true)).unwrap(),
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#
        );
        r.temperature = Some(0.7);
        r.max_tokens = Some(512);
        r.extra.insert("top_p".into(), Value::from(0.9));
        r.extra.insert("model".into(), Value::from("sneaky"));
        r.extra.insert("temperature".into(), Value::from(2.0));
        assert_eq!(
            String::from_utf8(request_body(&r, true, true)).unwrap(),
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0.7,"max_tokens":512,"stream":true,"stream_options":{"include_usage":true},"top_p":0.9}"#
        );
    }

    #[test]
    fn tiny_temperatures_are_sent_as_integer_zero() {
        let mut r = ChatRequest::new("m", vec![]);
        r.temperature = Some(0.0);
        let body = String::from_utf8(request_body(&r, false, false)).unwrap();
        assert!(
            body.contains(r#""temperature":0,"#) || body.ends_with(r#""temperature":0}"#),
            "{body}"
        );
        r.temperature = Some(0.00005);
        assert!(String::from_utf8(request_body(&r, false, false))
            .unwrap()
            .contains(r#""temperature":0}"#));
    }

    #[test]
    fn error_messages_are_found_in_any_common_shape() {
        assert_eq!(
            error_message(r#"{"error":{"message":"bad key","type":"x"}}"#),
            "bad key"
        );
        assert_eq!(error_message(r#"{"error":"plain"}"#), "plain");
        assert_eq!(error_message("<html>oops</html>"), "<html>oops</html>");
        assert_eq!(error_message(""), "(empty body)");
        assert_eq!(truncate("ééé", 3), "é…");
    }
}
