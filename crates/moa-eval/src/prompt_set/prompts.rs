//! Prompt sets: a JSON array or JSON Lines of objects with `instruction` (AlpacaEval) or
//! `prompt`, or plain text with one prompt per line.

use std::path::Path;

use serde_json::Value;

use crate::error::{EvalError, Result};

fn prompt_of(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => ["instruction", "prompt", "question", "turns"]
            .iter()
            .find_map(|k| match o.get(*k) {
                Some(Value::String(s)) => Some(s.clone()),
                // MT-Bench's `turns`: the first turn.
                Some(Value::Array(a)) => a.first().and_then(|t| t.as_str()).map(str::to_string),
                _ => None,
            }),
        _ => None,
    }
}

/// Reads the prompts of `path`.
pub fn load(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| EvalError::io("read the prompts file", path, e))?;
    let missing = |what: &str| {
        EvalError::data(
            path,
            format!("{what} has no `instruction` or `prompt` string"),
        )
    };
    let trimmed = text.trim_start();
    let prompts = if trimmed.starts_with('[') {
        let items: Vec<Value> = serde_json::from_str(&text)
            .map_err(|e| EvalError::data(path, format!("not a JSON array: {e}")))?;
        items
            .iter()
            .enumerate()
            .map(|(i, v)| prompt_of(v).ok_or_else(|| missing(&format!("item {}", i + 1))))
            .collect::<Result<Vec<_>>>()?
    } else if trimmed.starts_with('{') {
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, line)| {
                let value: Value = serde_json::from_str(line)
                    .map_err(|e| EvalError::data(path, format!("line {}: not JSON: {e}", i + 1)))?;
                prompt_of(&value).ok_or_else(|| missing(&format!("line {}", i + 1)))
            })
            .collect::<Result<Vec<_>>>()?
    } else {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    };
    if prompts.is_empty() {
        return Err(EvalError::data(path, "holds no prompts"));
    }
    Ok(prompts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(name: &str, text: &str) -> Result<Vec<String>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        load(&path)
    }

    #[test]
    fn every_format_is_read() {
        assert_eq!(
            load_text(
                "a.json",
                r#"[{"instruction":"one","output":"x"},{"prompt":"two"}]"#
            )
            .unwrap(),
            ["one", "two"]
        );
        assert_eq!(
            load_text(
                "a.jsonl",
                "{\"instruction\":\"one\"}\n\n{\"turns\":[\"two\",\"2b\"]}\n"
            )
            .unwrap(),
            ["one", "two"]
        );
        assert_eq!(
            load_text("a.txt", "one\n\n  two \n").unwrap(),
            ["one", "two"]
        );
    }

    #[test]
    fn bad_files_say_where() {
        let err = load_text("a.jsonl", "{\"instruction\":\"one\"}\n{\"x\":1}\n").unwrap_err();
        assert!(
            err.to_string()
                .ends_with("line 2 has no `instruction` or `prompt` string"),
            "{err}"
        );
        let err = load_text("a.txt", "\n\n").unwrap_err();
        assert!(err.to_string().contains("holds no prompts"), "{err}");
    }

    #[test]
    fn alpaca_eval_outputs_are_a_prompt_set() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/data/alpaca_eval/results/gpt4_1106_preview/model_outputs.json");
        if let Ok(prompts) = load(&path) {
            assert_eq!(prompts.len(), 805);
        }
    }
}
