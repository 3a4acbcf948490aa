//! Structured output: the answer formats a request may ask for (OpenAI's `response_format`),
//! what agents are told about them, and the check of the aggregator's answer.

use std::sync::Arc;

use serde_json::{json, Value};

/// A schema compiled once, when the format is made, and shared by every check of the run.
#[derive(Clone)]
pub struct Compiled(Arc<jsonschema::Validator>);

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Compiled")
    }
}

/// The schema it was compiled from is what is compared.
impl PartialEq for Compiled {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// The format the final answer must have.
#[derive(Clone, Debug, PartialEq)]
pub enum ResponseFormat {
    /// One JSON object.
    JsonObject,
    /// One JSON value that validates against `schema`. `strict`: an answer that still does not
    /// after one repair is an error, not a warning.
    JsonSchema {
        name: String,
        schema: Value,
        strict: bool,
        validator: Compiled,
    },
}

impl ResponseFormat {
    /// A `json_schema` format; `Err` says why the schema cannot be used.
    pub fn json_schema(name: String, schema: Value, strict: bool) -> Result<Self, String> {
        let validator = jsonschema::validator_for(&schema)
            .map_err(|e| format!("the JSON Schema is invalid: {e}"))?;
        Ok(Self::JsonSchema {
            name,
            schema,
            strict,
            validator: Compiled(Arc::new(validator)),
        })
    }

    /// Whether a failed check is an error (else a warning).
    pub fn strict(&self) -> bool {
        matches!(self, Self::JsonSchema { strict: true, .. })
    }

    /// OpenAI's `response_format` for this format.
    pub fn wire(&self) -> Value {
        match self {
            Self::JsonObject => json!({"type": "json_object"}),
            Self::JsonSchema {
                name,
                schema,
                strict,
                ..
            } => json!({"type": "json_schema",
                        "json_schema": {"name": name, "schema": schema, "strict": strict}}),
        }
    }

    /// What every agent is told, at the start of its system message.
    pub fn instruction(&self) -> String {
        match self {
            Self::JsonObject => "The answer to this conversation must be a single JSON object and \
                                 nothing else: no prose before or after it, no code fences."
                .to_string(),
            Self::JsonSchema { name, schema, .. } => format!(
                "The answer to this conversation must be a single JSON value that validates \
                 against the JSON Schema `{name}` below, and nothing else: no prose before or \
                 after it, no code fences.\n{schema}"
            ),
        }
    }

    /// Checks `answer`; `Err` says what is wrong, in words a model can act on.
    pub fn check(&self, answer: &str) -> Result<(), String> {
        let value: Value = serde_json::from_str(answer.trim())
            .map_err(|e| format!("the answer is not valid JSON: {e}"))?;
        match self {
            Self::JsonObject if !value.is_object() => {
                Err("the answer is JSON but not an object".into())
            }
            Self::JsonObject => Ok(()),
            Self::JsonSchema { validator, .. } => {
                let errors: Vec<String> = validator
                    .0
                    .iter_errors(&value)
                    .take(5)
                    .map(|e| format!("at `{}`: {e}", e.instance_path()))
                    .collect();
                match errors.is_empty() {
                    true => Ok(()),
                    false => Err(format!(
                        "the answer does not validate against the schema: {}",
                        errors.join("; ")
                    )),
                }
            }
        }
    }

    /// The message that asks the aggregator to repair an answer that failed [`Self::check`].
    pub fn repair_prompt(&self, problem: &str) -> String {
        format!(
            "Your answer cannot be used: {problem}. Reply with the corrected answer only, in \
             the required format."
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person() -> ResponseFormat {
        ResponseFormat::json_schema(
            "person".into(),
            json!({"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
                   "required": ["name", "age"], "additionalProperties": false}),
            true,
        )
        .unwrap()
    }

    #[test]
    fn answers_are_checked_against_the_format() {
        assert_eq!(ResponseFormat::JsonObject.check(r#" {"a": 1} "#), Ok(()));
        assert!(ResponseFormat::JsonObject
            .check("[1]")
            .unwrap_err()
            .contains("not an object"));
        assert!(ResponseFormat::JsonObject
            .check("Sure! {\"a\": 1}")
            .unwrap_err()
            .contains("not valid JSON"));
        assert_eq!(person().check(r#"{"name": "Ada", "age": 36}"#), Ok(()));
        let err = person()
            .check(r#"{"name": "Ada", "age": "36"}"#)
            .unwrap_err();
        assert!(err.contains("at `/age`"), "{err}");
        assert!(person().strict());
    }

    #[test]
    fn a_schema_that_cannot_be_used_is_refused() {
        let err = ResponseFormat::json_schema("x".into(), json!({"type": 12}), false).unwrap_err();
        assert!(err.contains("the JSON Schema is invalid"), "{err}");
    }
}
