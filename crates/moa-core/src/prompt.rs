//! How one layer's answers reach the next: the reference's aggregator prompt and injection rule,
//! plus named alternative styles.

use serde::{Deserialize, Serialize};

use crate::message::{Message, Role};

/// The aggregate-and-synthesize system prompt of the reference implementation, byte for byte.
/// It is used both by proposers of layers 2.. and by the final aggregator.
pub const AGGREGATOR_SYSTEM_PROMPT: &str = "You have been provided with a set of responses from various open-source models to the latest user query. Your task is to synthesize these responses into a single, high-quality response. It is crucial to critically evaluate the information provided in these responses, recognizing that some of it may be biased or incorrect. Your response should not simply replicate the given answers but should offer a refined, accurate, and comprehensive reply to the instruction. Ensure your response is well-structured, coherent, and adheres to the highest standards of accuracy and reliability.

Responses from models:";

/// How previous answers are written into the system message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PromptStyle {
    /// Exactly as the reference: `PROMPT\n1. <answer>\n2. <answer>...`, answers raw.
    #[default]
    Reference,
    /// Each answer wrapped in a `<response>` tag that names its model, so the aggregator can tell
    /// where one answer ends and which model wrote it.
    Tagged,
    /// Cache-friendly: the system prompt and the conversation are sent unchanged, a byte-stable
    /// prefix that provider prompt caches hit across turns and across the `n` aggregations of a
    /// request; the references follow in one last user message, tagged as in `Tagged`.
    Appended,
}

impl PromptStyle {
    /// All styles with their names, for help texts and errors.
    pub const ALL: [(&'static str, PromptStyle); 3] = [
        ("reference", PromptStyle::Reference),
        ("tagged", PromptStyle::Tagged),
        ("appended", PromptStyle::Appended),
    ];

    /// Parses a style name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
    }

    /// Parses a style name, or says which names there are.
    pub fn parse(name: &str) -> Result<Self, String> {
        Self::from_name(name).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(|(n, _)| *n).collect();
            format!("`{name}` is not one of {}", names.join(", "))
        })
    }

    /// The style's name.
    pub fn name(self) -> &'static str {
        match self {
            PromptStyle::Reference => "reference",
            PromptStyle::Tagged => "tagged",
            PromptStyle::Appended => "appended",
        }
    }
}

/// One previous answer offered as a reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// The `provider:model` that wrote it.
    pub model: String,
    pub text: String,
}

/// Builds the references block (the system text) for `references` in `style`.
pub fn references_block(references: &[Reference], style: PromptStyle) -> String {
    let mut text = String::from(AGGREGATOR_SYSTEM_PROMPT);
    for (i, reference) in references.iter().enumerate() {
        match style {
            PromptStyle::Reference => {
                text.push('\n');
                text.push_str(&(i + 1).to_string());
                text.push_str(". ");
                text.push_str(&reference.text);
            }
            PromptStyle::Tagged | PromptStyle::Appended => {
                text.push_str(&format!(
                    "\n\n<response id=\"{}\" model=\"{}\">\n{}\n</response>",
                    i + 1,
                    reference.model.replace('"', "'"),
                    reference.text
                ));
            }
        }
    }
    text
}

/// Returns `messages` with `references` injected as the reference implementation does: the
/// block is appended to an existing leading system message after a blank line, or becomes a new
/// leading system message. In the `Appended` style it is a last user message instead, after
/// the unchanged conversation. With no references the messages are returned unchanged. The
/// caller's messages are never modified.
pub fn inject_references(
    messages: &[Message],
    references: &[Reference],
    style: PromptStyle,
) -> Vec<Message> {
    let mut out = messages.to_vec();
    if references.is_empty() {
        return out;
    }
    let block = references_block(references, style);
    if style == PromptStyle::Appended {
        out.push(Message::user(block));
        return out;
    }
    match out.first_mut() {
        Some(first) if first.role == Role::System => {
            first.content.push_str("\n\n");
            first.content.push_str(&block);
        }
        _ => out.insert(0, Message::system(block)),
    }
    out
}

/// The tools the aggregator is offered, described for proposers (which are offered none):
/// prepended to their system message.
pub fn tools_text(tools: &[crate::completion::ToolDef]) -> String {
    let mut text =
        String::from("The assistant that answers this conversation can call these tools:\n");
    for tool in tools {
        text.push_str(&format!("- {}", tool.name));
        if let Some(description) = &tool.description {
            text.push_str(&format!(": {description}"));
        }
        text.push_str(&format!(
            "\n  arguments (JSON Schema): {}\n",
            tool.parameters
        ));
    }
    text.push_str(
        "You cannot call them yourself. Answer in text: if a tool should be called next, say \
         which one, with which arguments, and why; if the conversation already holds what is \
         needed, answer the user.",
    );
    text
}

/// The conversation for a model that is given tools: as it is, but `developer` written as
/// `system`, which every dialect knows.
pub fn structured_view(messages: &[Message]) -> Vec<Message> {
    messages
        .iter()
        .map(|m| match m.role {
            Role::Developer => Message {
                role: Role::System,
                ..m.clone()
            },
            _ => m.clone(),
        })
        .collect()
}

/// How an assistant's tool call is written for an agent that sees the conversation as text:
/// one line per call, after the message's own text.
pub fn tool_call_text(id: &str, name: &str, arguments: &str) -> String {
    format!("[tool call {id}: {name}({arguments})]")
}

/// How a tool's result is written for an agent that sees the conversation as text: a user
/// message that names the call it answers.
pub fn tool_result_text(id: &str, name: &str, result: &str) -> String {
    format!("[tool result {id}: {name}]\n{result}")
}

/// The conversation as every agent of a run sees it: `developer` becomes `system`, an
/// assistant's tool calls are written as text after its own ([`tool_call_text`]), and a tool's
/// result becomes a user message ([`tool_result_text`]). Images stay, for the models that take
/// them. Nothing else changes; plain conversations come back as they were.
pub fn text_view(messages: &[Message]) -> Vec<Message> {
    let name_of = |id: &str| {
        messages
            .iter()
            .flat_map(|m| &m.tool_calls)
            .find(|c| c.id == id)
            .map_or("unknown tool", |c| c.name.as_str())
    };
    messages
        .iter()
        .map(|m| {
            let mut out = m.clone();
            match m.role {
                Role::Developer => out.role = Role::System,
                Role::Tool => {
                    let id = m.tool_call_id.as_deref().unwrap_or_default();
                    out.role = Role::User;
                    out.content = tool_result_text(id, name_of(id), &m.content);
                    out.tool_call_id = None;
                    out.name = None;
                    // Text parts are in `content`; images stay beside the result.
                    out.parts
                        .retain(|p| !matches!(p, crate::message::Part::Text(_)));
                    if !out.parts.is_empty() {
                        out.parts
                            .insert(0, crate::message::Part::Text(out.content.clone()));
                    }
                }
                _ => {}
            }
            if !m.tool_calls.is_empty() {
                let calls: Vec<String> = m
                    .tool_calls
                    .iter()
                    .map(|c| tool_call_text(&c.id, &c.name, &c.arguments))
                    .collect();
                let calls = calls.join("\n");
                out.content = match m.content.is_empty() {
                    true => calls,
                    false => format!("{}\n\n{calls}", m.content),
                };
                out.tool_calls.clear();
            }
            out
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_loop_reads_as_text() {
        let json = r#"[{"role":"developer","content":"Be terse."},{"role":"user","content":"Weather in Paris?"},{"role":"assistant","content":"Let me look.","tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}},{"id":"call_2","type":"function","function":{"name":"get_time","arguments":"{}"}}]},{"role":"tool","content":"18C, sunny","tool_call_id":"call_1"},{"role":"tool","content":"14:00","tool_call_id":"call_2"}]"#;
        let messages: Vec<Message> = serde_json::from_str(json).unwrap();
        let view = text_view(&messages);
        let roles: Vec<&str> = view.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["system", "user", "assistant", "user", "user"]);
        assert_eq!(
            view[2].content,
            "Let me look.\n\n[tool call call_1: get_weather({\"city\":\"Paris\"})]\n[tool call call_2: get_time({})]"
        );
        assert_eq!(
            view[3].content,
            "[tool result call_1: get_weather]\n18C, sunny"
        );
        assert_eq!(view[4].content, "[tool result call_2: get_time]\n14:00");
        assert!(view
            .iter()
            .all(|m| m.tool_calls.is_empty() && m.tool_call_id.is_none()));
        // A plain conversation is untouched.
        let plain = vec![Message::system("s"), Message::user("u")];
        assert_eq!(text_view(&plain), plain);
    }

    fn refs(texts: &[&str]) -> Vec<Reference> {
        texts
            .iter()
            .enumerate()
            .map(|(i, t)| Reference {
                model: format!("p:m{i}"),
                text: t.to_string(),
            })
            .collect()
    }

    #[test]
    fn prompt_has_blank_line_and_no_trailing_newline() {
        assert!(AGGREGATOR_SYSTEM_PROMPT
            .contains("highest standards of accuracy and reliability.\n\nResponses from models:"));
        assert!(AGGREGATOR_SYSTEM_PROMPT.ends_with("Responses from models:"));
        assert_eq!(AGGREGATOR_SYSTEM_PROMPT.len(), 606);
    }

    #[test]
    fn new_system_message_is_prepended_with_numbered_raw_references() {
        let messages = vec![Message::user("hi")];
        let out = inject_references(&messages, &refs(&["a", "b\nc"]), PromptStyle::Reference);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].role, Role::System);
        assert_eq!(
            out[0].content,
            format!("{AGGREGATOR_SYSTEM_PROMPT}\n1. a\n2. b\nc")
        );
        assert_eq!(out[1], Message::user("hi"));
        // The caller's messages are untouched.
        assert_eq!(messages, vec![Message::user("hi")]);
    }

    #[test]
    fn existing_system_message_gets_block_after_blank_line() {
        let messages = vec![Message::system("Be terse."), Message::user("hi")];
        let out = inject_references(&messages, &refs(&["x"]), PromptStyle::Reference);
        assert_eq!(out.len(), 2);
        assert_eq!(
            out[0].content,
            format!("Be terse.\n\n{AGGREGATOR_SYSTEM_PROMPT}\n1. x")
        );
    }

    #[test]
    fn a_system_message_that_is_not_first_does_not_count() {
        let messages = vec![Message::user("hi"), Message::system("late")];
        let out = inject_references(&messages, &refs(&["x"]), PromptStyle::Reference);
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].role, Role::System);
        assert_eq!(out[2].content, "late");
    }

    #[test]
    fn no_references_means_no_change() {
        let messages = vec![Message::user("hi")];
        assert_eq!(
            inject_references(&messages, &[], PromptStyle::Reference),
            messages
        );
    }

    #[test]
    fn tagged_style_names_models() {
        let out = inject_references(
            &[Message::user("q")],
            &refs(&["first"]),
            PromptStyle::Tagged,
        );
        assert_eq!(
            out[0].content,
            format!(
                "{AGGREGATOR_SYSTEM_PROMPT}\n\n<response id=\"1\" model=\"p:m0\">\nfirst\n</response>"
            )
        );
    }

    #[test]
    fn style_names_round_trip() {
        for (name, style) in PromptStyle::ALL {
            assert_eq!(PromptStyle::from_name(name), Some(style));
            assert_eq!(style.name(), name);
        }
        assert_eq!(PromptStyle::from_name("fancy"), None);
    }
}
