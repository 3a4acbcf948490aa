//! Chat messages as every chat-completions dialect understands them, and as OpenAI's wire
//! format writes them: `content` as a string, an array of parts, or `null` beside `tool_calls`.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// Who said a message. Unknown roles from compatible servers are kept verbatim.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    /// OpenAI's newer name for instructions from the developer; sent as `system` to dialects
    /// that do not know it.
    Developer,
    User,
    Assistant,
    /// The result of a tool call, answering the assistant message that made it.
    Tool,
    #[serde(untagged)]
    Other(String),
}

impl Role {
    /// The role's name on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            Role::System => "system",
            Role::Developer => "developer",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
            Role::Other(name) => name,
        }
    }
}

/// One part of a message's content that is not plain text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Part {
    Text(String),
    /// An image by URL: `https://…` or a `data:image/png;base64,…` URL, as OpenAI takes them.
    Image {
        url: String,
        detail: Option<String>,
    },
}

/// A tool call an assistant made: OpenAI's `{"id", "type": "function", "function": {"name",
/// "arguments"}}`, its arguments a JSON text as the model wrote it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

impl ToolCall {
    /// The arguments as a JSON object, for dialects that send a call's input as one (Anthropic,
    /// Bedrock); arguments the model wrote that are not an object go as `{"arguments": text}`.
    pub fn input_object(&self) -> Value {
        serde_json::from_str::<Value>(&self.arguments)
            .ok()
            .filter(Value::is_object)
            .unwrap_or_else(|| serde_json::json!({ "arguments": self.arguments }))
    }
}

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub role: Role,
    /// The text: the content string, or the text parts joined by newlines.
    pub content: String,
    /// The parts, in order, when the content was an array holding more than text (images);
    /// empty otherwise, and then `content` is all there is.
    pub parts: Vec<Part>,
    /// The participant's name, for dialects that have one.
    pub name: Option<String>,
    /// The tools an assistant message called.
    pub tool_calls: Vec<ToolCall>,
    /// The call a `tool` message answers.
    pub tool_call_id: Option<String>,
}

impl Message {
    /// A message with the given role and text.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
            parts: Vec::new(),
            name: None,
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }

    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new(Role::System, content)
    }

    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new(Role::User, content)
    }

    /// An assistant message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new(Role::Assistant, content)
    }

    /// The images among the parts.
    pub fn images(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        self.parts.iter().filter_map(|p| match p {
            Part::Image { url, detail } => Some((url.as_str(), detail.as_deref())),
            Part::Text(_) => None,
        })
    }
}

/// The OpenAI wire shapes of parts and tool calls, fields in the order OpenAI writes them.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum PartOut<'a> {
    Text { text: &'a str },
    ImageUrl { image_url: ImageOut<'a> },
}

#[derive(Serialize)]
struct ImageOut<'a> {
    url: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
}

#[derive(Serialize)]
struct ToolCallOut<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: FunctionOut<'a>,
}

#[derive(Serialize)]
struct FunctionOut<'a> {
    name: &'a str,
    arguments: &'a str,
}

fn part_out(part: &Part) -> PartOut<'_> {
    match part {
        Part::Text(text) => PartOut::Text { text },
        Part::Image { url, detail } => PartOut::ImageUrl {
            image_url: ImageOut {
                url,
                detail: detail.as_deref(),
            },
        },
    }
}

impl Serialize for Message {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut out = serializer.serialize_map(None)?;
        out.serialize_entry("role", self.role.as_str())?;
        if !self.parts.is_empty() {
            let parts: Vec<PartOut> = self.parts.iter().map(part_out).collect();
            out.serialize_entry("content", &parts)?;
        } else if self.content.is_empty() && !self.tool_calls.is_empty() {
            out.serialize_entry("content", &Value::Null)?;
        } else {
            out.serialize_entry("content", &self.content)?;
        }
        if let Some(name) = &self.name {
            out.serialize_entry("name", name)?;
        }
        if !self.tool_calls.is_empty() {
            let calls: Vec<ToolCallOut> = self
                .tool_calls
                .iter()
                .map(|c| ToolCallOut {
                    id: &c.id,
                    kind: "function",
                    function: FunctionOut {
                        name: &c.name,
                        arguments: &c.arguments,
                    },
                })
                .collect();
            out.serialize_entry("tool_calls", &calls)?;
        }
        if let Some(id) = &self.tool_call_id {
            out.serialize_entry("tool_call_id", id)?;
        }
        out.end()
    }
}

/// A message as OpenAI's wire format has it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireMessage {
    role: Role,
    #[serde(default)]
    content: Option<WireContent>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<WireToolCall>>,
    #[serde(default)]
    tool_call_id: Option<String>,
    /// What an assistant refused to say (OpenAI's structured refusals): kept as its text.
    #[serde(default)]
    refusal: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum WireContent {
    Text(String),
    Parts(Vec<Value>),
}

#[derive(Deserialize)]
struct WireToolCall {
    id: String,
    #[serde(rename = "type", default)]
    kind: Option<String>,
    function: WireFunction,
}

#[derive(Deserialize)]
struct WireFunction {
    name: String,
    #[serde(default)]
    arguments: String,
}

/// One content part; refuses kinds moa cannot pass on, naming them.
fn parse_part(value: Value) -> Result<Part, String> {
    let kind = value.get("type").and_then(Value::as_str).unwrap_or("");
    match kind {
        "text" | "input_text" => value
            .get("text")
            .and_then(Value::as_str)
            .map(|t| Part::Text(t.to_string()))
            .ok_or_else(|| "a text part has no `text` string".to_string()),
        "image_url" => {
            let image = value.get("image_url");
            // Both {"image_url": {"url": …}} and the older {"image_url": "…"}.
            let url = image
                .and_then(|i| i.get("url").and_then(Value::as_str).or(i.as_str()))
                .ok_or("an image_url part has no `url`")?;
            let detail = image
                .and_then(|i| i.get("detail"))
                .and_then(Value::as_str)
                .map(str::to_string);
            Ok(Part::Image {
                url: url.to_string(),
                detail,
            })
        }
        "refusal" => value
            .get("refusal")
            .and_then(Value::as_str)
            .map(|t| Part::Text(t.to_string()))
            .ok_or_else(|| "a refusal part has no `refusal` string".to_string()),
        "" => Err("a content part has no `type`".into()),
        other => Err(format!(
            "content parts of type `{other}` are not supported (text and image_url are)"
        )),
    }
}

impl<'de> Deserialize<'de> for Message {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = WireMessage::deserialize(deserializer)?;
        let mut message = Message::new(wire.role, String::new());
        match wire.content {
            Some(WireContent::Text(text)) => message.content = text,
            Some(WireContent::Parts(values)) => {
                let parts = values
                    .into_iter()
                    .map(parse_part)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(D::Error::custom)?;
                let texts: Vec<&str> = parts
                    .iter()
                    .filter_map(|p| match p {
                        Part::Text(t) => Some(t.as_str()),
                        Part::Image { .. } => None,
                    })
                    .collect();
                message.content = texts.join("\n");
                if parts.iter().any(|p| matches!(p, Part::Image { .. })) {
                    message.parts = parts;
                }
            }
            None => {}
        }
        if message.content.is_empty() {
            if let Some(refusal) = wire.refusal {
                message.content = refusal;
            }
        }
        message.name = wire.name;
        message.tool_call_id = wire.tool_call_id;
        for call in wire.tool_calls.unwrap_or_default() {
            if call.kind.as_deref().is_some_and(|k| k != "function") {
                return Err(D::Error::custom(format!(
                    "tool calls of type `{}` are not supported (function is)",
                    call.kind.unwrap_or_default()
                )));
            }
            message.tool_calls.push(ToolCall {
                id: call.id,
                name: call.function.name,
                arguments: call.function.arguments,
            });
        }
        if message.role == Role::Tool && message.tool_call_id.is_none() {
            return Err(D::Error::custom(
                "a `tool` message needs its `tool_call_id`",
            ));
        }
        Ok(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip_and_unknown_roles_are_kept() {
        let json = r#"[{"role":"system","content":"s"},{"role":"critic","content":"t"}]"#;
        let messages: Vec<Message> = serde_json::from_str(json).unwrap();
        assert_eq!(messages[0].role, Role::System);
        assert_eq!(messages[1].role, Role::Other("critic".into()));
        assert_eq!(serde_json::to_string(&messages).unwrap(), json);
    }

    #[test]
    fn content_may_be_parts_and_text_parts_are_joined() {
        let json = r#"{"role":"user","content":[{"type":"text","text":"one"},{"type":"text","text":"two"}]}"#;
        let m: Message = serde_json::from_str(json).unwrap();
        assert_eq!(m.content, "one\ntwo");
        assert!(m.parts.is_empty(), "text alone needs no parts");
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"role":"user","content":"one\ntwo"}"#
        );
    }

    #[test]
    fn images_are_kept_in_order_and_written_back_as_sent() {
        let json = r#"{"role":"user","content":[{"type":"text","text":"What is this?"},{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA","detail":"low"}}]}"#;
        let m: Message = serde_json::from_str(json).unwrap();
        assert_eq!(m.content, "What is this?");
        assert_eq!(
            m.images().collect::<Vec<_>>(),
            vec![("data:image/png;base64,AAAA", Some("low"))]
        );
        assert_eq!(serde_json::to_string(&m).unwrap(), json);
    }

    #[test]
    fn an_agent_loops_history_reads_and_writes_back() {
        let json = r#"[{"role":"developer","content":"Be terse.","name":"ops"},{"role":"user","content":"Weather in Paris?"},{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]},{"role":"tool","content":"18C, sunny","tool_call_id":"call_1"}]"#;
        let messages: Vec<Message> = serde_json::from_str(json).unwrap();
        assert_eq!(messages[0].role, Role::Developer);
        assert_eq!(messages[0].name.as_deref(), Some("ops"));
        assert_eq!(messages[2].content, "");
        assert_eq!(
            messages[2].tool_calls,
            vec![ToolCall {
                id: "call_1".into(),
                name: "get_weather".into(),
                arguments: r#"{"city":"Paris"}"#.into()
            }]
        );
        assert_eq!(messages[3].role, Role::Tool);
        assert_eq!(messages[3].tool_call_id.as_deref(), Some("call_1"));
        assert_eq!(serde_json::to_string(&messages).unwrap(), json);
    }

    #[test]
    fn what_cannot_be_passed_on_is_refused_by_name() {
        let err = |json: &str| {
            serde_json::from_str::<Message>(json)
                .unwrap_err()
                .to_string()
        };
        assert!(
            err(r#"{"role":"user","content":[{"type":"input_audio","input_audio":{}}]}"#)
                .contains("content parts of type `input_audio` are not supported")
        );
        assert!(err(r#"{"role":"tool","content":"x"}"#).contains("needs its `tool_call_id`"));
        assert!(
            err(r#"{"role":"user","content":"x","audio":{}}"#).contains("unknown field `audio`")
        );
    }
}
