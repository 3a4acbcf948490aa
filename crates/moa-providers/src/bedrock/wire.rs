//! Bedrock's Converse API: the request body and the response and stream event shapes.

use moa_core::{ChatRequest, Part, Role, ToolChoice, Tools, Usage};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

#[derive(Serialize)]
struct Text<'a> {
    text: &'a str,
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'a str,
    content: Vec<Value>,
}

/// A message's content blocks: its text, its images as bytes (Converse takes no URLs), its
/// tool calls as `toolUse`, a tool's result as `toolResult`.
fn blocks(message: &moa_core::Message) -> Result<Vec<Value>, String> {
    if message.role == Role::Tool {
        let id = message.tool_call_id.as_deref().unwrap_or_default();
        return Ok(vec![json!({"toolResult": {"toolUseId": id,
                                              "content": [{"text": message.content}]}})]);
    }
    if !message.tool_calls.is_empty() {
        let mut blocks = Vec::new();
        if !message.content.is_empty() {
            blocks.push(json!({"text": message.content}));
        }
        for call in &message.tool_calls {
            let input = call.input_object();
            blocks.push(
                json!({"toolUse": {"toolUseId": call.id, "name": call.name, "input": input}}),
            );
        }
        return Ok(blocks);
    }
    if message.parts.is_empty() {
        return Ok(vec![json!({"text": message.content})]);
    }
    message
        .parts
        .iter()
        .map(|part| match part {
            Part::Text(text) => Ok(json!({"text": text})),
            Part::Image { url, .. } => {
                let (media_type, data) = crate::image::data_url(url).ok_or_else(|| {
                    "Bedrock takes images as data (data:image/png;base64,...), not by URL"
                        .to_string()
                })?;
                let format = match media_type {
                    "image/png" => "png",
                    "image/jpeg" | "image/jpg" => "jpeg",
                    "image/gif" => "gif",
                    "image/webp" => "webp",
                    other => return Err(format!("Bedrock does not take {other} images")),
                };
                Ok(json!({"image": {"format": format, "source": {"bytes": data}}}))
            }
        })
        .collect()
}

#[derive(Serialize)]
struct Body<'a> {
    messages: Vec<Message<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    system: Vec<Text<'a>>,
    #[serde(rename = "inferenceConfig", skip_serializing_if = "Map::is_empty")]
    inference_config: Map<String, Value>,
    #[serde(
        rename = "additionalModelRequestFields",
        skip_serializing_if = "Map::is_empty"
    )]
    additional: Map<String, Value>,
    #[serde(rename = "toolConfig", skip_serializing_if = "Option::is_none")]
    tool_config: Option<Value>,
}

/// OpenAI's tools in Converse's words: `toolSpec` with `inputSchema.json`, and `toolChoice`
/// `auto` / `any` / `tool`. Converse has no `none`: it is refused rather than ignored.
fn tool_config(tools: &Tools) -> Result<Value, String> {
    let specs: Vec<Value> = tools
        .defs
        .iter()
        .map(|t| {
            let mut spec = json!({"name": t.name, "inputSchema": {"json": t.parameters}});
            if let Some(description) = &t.description {
                spec["description"] = json!(description);
            }
            json!({"toolSpec": spec})
        })
        .collect();
    let mut config = json!({"tools": specs});
    match &tools.choice {
        None => {}
        Some(ToolChoice::Auto) => config["toolChoice"] = json!({"auto": {}}),
        Some(ToolChoice::Required) => config["toolChoice"] = json!({"any": {}}),
        Some(ToolChoice::Function(name)) => config["toolChoice"] = json!({"tool": {"name": name}}),
        Some(ToolChoice::None) => {
            return Err("Bedrock cannot be told not to use the tools it is given \
                        (tool_choice \"none\"); leave the tools out instead"
                .into())
        }
    }
    Ok(config)
}

/// OpenAI fields Converse has no place for. Any other extra field goes to
/// `additionalModelRequestFields` for the model to take (top_k, say); these are refused by name
/// instead (see [`ChatRequest::refuse_fields`]), since no Bedrock model reads OpenAI's spelling.
pub const UNSUPPORTED_FIELDS: [&str; 8] = crate::http::OPENAI_ONLY_FIELDS;

/// The API's name in refusals.
pub const API: &str = "Bedrock's Converse API";

/// Whether Converse takes prompt-cache points for `model` (Bedrock's prompt caching covers
/// Claude 3.5 Haiku, 3.7 Sonnet and later, and Amazon Nova; cross-region ids have a prefix).
pub fn takes_cache_points(model: &str) -> bool {
    [
        "anthropic.claude-3-5-haiku",
        "anthropic.claude-3-7-sonnet",
        "anthropic.claude-sonnet-4",
        "anthropic.claude-opus-4",
        "anthropic.claude-haiku-4",
        "amazon.nova-",
    ]
    .iter()
    .any(|family| model.contains(family))
}

/// Serializes `request` as a Converse body. System messages go to `system`; consecutive
/// messages of one role are merged into one message of several text blocks, since Converse
/// wants the roles to alternate. temperature, max_tokens, top_p and stop go to
/// `inferenceConfig`; any other extra field to `additionalModelRequestFields` (top_k, say).
/// An image Converse cannot take is an error that says why.
pub fn request_body(request: &ChatRequest) -> Result<Vec<u8>, String> {
    let mut system = Vec::new();
    let mut messages: Vec<Message> = Vec::new();
    // Where the stable prefix ends (see `ChatRequest::cache_prefix`): the API's message and
    // block after which the rest follows (merged messages can share one API message).
    let mut prefix_end = None;
    let end_here = |messages: &[Message]| {
        messages
            .last()
            .map(|m| (messages.len() - 1, m.content.len()))
    };
    for (i, message) in request.messages.iter().enumerate() {
        if request.cache_prefix == Some(i) {
            prefix_end = end_here(&messages);
        }
        let role = match &message.role {
            Role::System | Role::Developer => {
                system.push(Text {
                    text: &message.content,
                });
                continue;
            }
            // A tool's result is a `toolResult` block from the user.
            Role::Tool => "user",
            role => role.as_str(),
        };
        let content = blocks(message)?;
        match messages.last_mut() {
            Some(last) if last.role == role => last.content.extend(content),
            _ => messages.push(Message { role, content }),
        }
    }
    if request.cache_prefix == Some(request.messages.len()) {
        prefix_end = end_here(&messages);
    }
    // A cache point after the prefix, for the models whose Converse takes one (others refuse
    // the block); a prefix of the system prompt alone is not marked.
    if let Some((message, block)) = prefix_end.filter(|_| takes_cache_points(&request.model)) {
        messages[message]
            .content
            .insert(block, json!({"cachePoint": {"type": "default"}}));
    }
    let mut inference_config = Map::new();
    let mut additional = Map::new();
    if let Some(n) = request.max_tokens {
        inference_config.insert("maxTokens".into(), json!(n));
    }
    if let Some(t) = request.temperature {
        inference_config.insert("temperature".into(), json!(t));
    }
    for (key, value) in &request.extra {
        match key.as_str() {
            "max_tokens" if request.max_tokens.is_none() => {
                inference_config.insert("maxTokens".into(), value.clone());
            }
            "temperature" if request.temperature.is_none() => {
                inference_config.insert("temperature".into(), value.clone());
            }
            "max_tokens" | "temperature" => {}
            "top_p" => {
                inference_config.insert("topP".into(), value.clone());
            }
            "stop" => {
                let stops = match value {
                    Value::String(s) => json!([s]),
                    other => other.clone(),
                };
                inference_config.insert("stopSequences".into(), stops);
            }
            _ => {
                additional.insert(key.clone(), value.clone());
            }
        }
    }
    let tool_config = request.tools.as_ref().map(tool_config).transpose()?;
    let body = Body {
        messages,
        system,
        inference_config,
        additional,
        tool_config,
    };
    // Serializing plain data with string keys cannot fail.
    Ok(serde_json::to_vec(&body).unwrap_or_default())
}

/// Bedrock's stop reasons in OpenAI's words.
pub fn finish_reason(stop_reason: &str) -> String {
    match stop_reason {
        "end_turn" | "stop_sequence" => "stop",
        "max_tokens" => "length",
        "tool_use" => "tool_calls",
        "guardrail_intervened" | "content_filtered" => "content_filter",
        other => other,
    }
    .to_string()
}

#[derive(Deserialize, Clone, Copy)]
pub struct WireUsage {
    #[serde(rename = "inputTokens", default)]
    pub input_tokens: u64,
    #[serde(rename = "outputTokens", default)]
    pub output_tokens: u64,
    #[serde(rename = "totalTokens", default)]
    pub total_tokens: Option<u64>,
    /// Prompt caching: tokens read from and written to the cache, which Converse counts apart
    /// from `inputTokens`.
    #[serde(rename = "cacheReadInputTokens", default)]
    pub cache_read: u64,
    #[serde(rename = "cacheWriteInputTokens", default)]
    pub cache_write: u64,
}

impl From<WireUsage> for Usage {
    fn from(u: WireUsage) -> Self {
        let prompt = u.input_tokens + u.cache_read + u.cache_write;
        Usage {
            prompt_tokens: prompt,
            completion_tokens: u.output_tokens,
            total_tokens: prompt + u.output_tokens,
            cached_tokens: u.cache_read,
        }
    }
}

#[derive(Deserialize, Default)]
pub struct Block {
    #[serde(default)]
    pub text: Option<String>,
    /// A tool call: whole in a response (`input` an object), in a stream's deltas a piece of
    /// its input as a JSON text.
    #[serde(rename = "toolUse", default)]
    pub tool_use: Option<ToolUse>,
}

#[derive(Deserialize, Default)]
pub struct ToolUse {
    #[serde(rename = "toolUseId", default)]
    pub id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub input: Option<Value>,
}

/// `contentBlockStart`'s `start`: a tool call's id and name.
#[derive(Deserialize, Default)]
pub struct BlockStart {
    #[serde(rename = "toolUse", default)]
    pub tool_use: Option<ToolUse>,
}

#[derive(Deserialize, Default)]
pub struct OutputMessage {
    #[serde(default)]
    pub content: Vec<Block>,
}

#[derive(Deserialize, Default)]
pub struct Output {
    #[serde(default)]
    pub message: Option<OutputMessage>,
}

/// A whole Converse response.
#[derive(Deserialize)]
pub struct ConverseResponse {
    pub output: Output,
    #[serde(rename = "stopReason", default)]
    pub stop_reason: Option<String>,
    #[serde(default)]
    pub usage: Option<WireUsage>,
}

/// The payload of a stream event; which fields are set depends on `:event-type`.
#[derive(Deserialize, Default)]
pub struct StreamPayload {
    #[serde(default)]
    pub delta: Option<Block>,
    #[serde(default)]
    pub start: Option<BlockStart>,
    #[serde(rename = "contentBlockIndex", default)]
    pub index: Option<usize>,
    #[serde(rename = "stopReason", default)]
    pub stop_reason: Option<String>,
    #[serde(default)]
    pub usage: Option<WireUsage>,
    #[serde(default)]
    pub message: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use moa_core::Message as M;

    #[test]
    fn a_cache_point_follows_the_stable_prefix_for_models_that_take_one() {
        let refs = "You have been provided with ...\n1. A";
        let mut r = ChatRequest::new(
            "us.anthropic.claude-3-5-haiku-20241022-v1:0",
            vec![
                M::user("Q1"),
                M::assistant("A1"),
                M::user("Q2"),
                M::user(refs),
            ],
        );
        r.cache_prefix = Some(3);
        let sent: Value = serde_json::from_slice(&request_body(&r).unwrap()).unwrap();
        // Q2 and the references share one user message (Converse alternates roles); the cache
        // point sits between them.
        assert_eq!(
            sent["messages"][2]["content"],
            json!([{"text": "Q2"}, {"cachePoint": {"type": "default"}}, {"text": refs}])
        );
        r.model = "anthropic.claude-3-haiku-20240307-v1:0".into();
        let sent = String::from_utf8(request_body(&r).unwrap()).unwrap();
        assert!(
            !sent.contains("cachePoint"),
            "Claude 3 Haiku on Bedrock takes none: {sent}"
        );
    }

    #[test]
    fn converse_bodies_put_everything_where_bedrock_wants_it() {
        let mut r = ChatRequest::new(
            "anthropic.claude-3-haiku-20240307-v1:0",
            vec![
                M::system("refs"),
                M::user("a"),
                M::user("b"),
                M::assistant("c"),
            ],
        );
        r.temperature = Some(0.0);
        r.max_tokens = Some(512);
        r.extra.insert("top_p".into(), json!(0.9));
        r.extra.insert("stop".into(), json!("END"));
        r.extra.insert("top_k".into(), json!(40));
        assert_eq!(
            String::from_utf8(request_body(&r).unwrap()).unwrap(),
            r#"{"messages":[{"role":"user","content":[{"text":"a"},{"text":"b"}]},{"role":"assistant","content":[{"text":"c"}]}],"system":[{"text":"refs"}],"inferenceConfig":{"maxTokens":512,"stopSequences":["END"],"temperature":0.0,"topP":0.9},"additionalModelRequestFields":{"top_k":40}}"#
        );
        let plain = ChatRequest::new("m", vec![M::user("q")]);
        assert_eq!(
            String::from_utf8(request_body(&plain).unwrap()).unwrap(),
            r#"{"messages":[{"role":"user","content":[{"text":"q"}]}]}"#
        );
    }

    #[test]
    fn images_are_sent_as_bytes_and_urls_are_refused() {
        let image = |url: &str| -> moa_core::Message {
            serde_json::from_str(&format!(
                r#"{{"role":"user","content":[{{"type":"text","text":"What is it?"}},{{"type":"image_url","image_url":{{"url":"{url}"}}}}]}}"#
            ))
            .unwrap()
        };
        let r = ChatRequest::new("m", vec![image("data:image/jpeg;base64,/9j/")]);
        assert_eq!(
            String::from_utf8(request_body(&r).unwrap()).unwrap(),
            r#"{"messages":[{"role":"user","content":[{"text":"What is it?"},{"image":{"format":"jpeg","source":{"bytes":"/9j/"}}}]}]}"#
        );
        let r = ChatRequest::new("m", vec![image("https://example.com/cat.png")]);
        assert!(request_body(&r).unwrap_err().contains("not by URL"));
        let r = ChatRequest::new("m", vec![image("data:image/tiff;base64,AAAA")]);
        assert!(request_body(&r).unwrap_err().contains("image/tiff"));
    }
}
