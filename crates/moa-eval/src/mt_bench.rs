//! MT-Bench: 80 two-turn questions, FastChat's answer format, and single-answer grading 1–10
//! with FastChat's judge prompts (reference answers for math, reasoning and coding).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use moa_core::Message;
use serde::{Deserialize, Serialize};

use crate::error::{EvalError, Result};
use crate::Task;

pub const QUESTIONS: &str = "mt_bench/question.jsonl";
pub const JUDGE_PROMPTS: &str = "mt_bench/judge_prompts.jsonl";
pub const REFERENCE_ANSWERS: &str = "mt_bench/reference_answer/gpt-4.jsonl";
pub const DEFAULT_JUDGE: &str = "openai:gpt-4";
/// The reference generator's `--max-tokens` default.
pub const MAX_TOKENS: u32 = 1024;
/// Categories graded against a reference answer.
const NEEDS_REFERENCE: [&str; 4] = ["math", "reasoning", "coding", "arena-hard-200"];

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Question {
    pub question_id: u64,
    pub category: String,
    pub turns: Vec<String>,
    #[serde(default)]
    pub required_temperature: Option<f64>,
}

/// The temperature the reference uses for a question: its own `required_temperature`, else its
/// category's, else 0.7.
pub fn temperature(question: &Question) -> f64 {
    if let Some(t) = question.required_temperature {
        return t;
    }
    match question.category.as_str() {
        "writing" | "roleplay" => 0.7,
        "extraction" | "math" | "coding" | "reasoning" | "arena-hard-200" => 0.0,
        "stem" | "humanities" => 0.1,
        _ => 0.7,
    }
}

pub(crate) fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let text = std::fs::read_to_string(path).map_err(|e| EvalError::io("read", path, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, line)| {
            serde_json::from_str(line)
                .map_err(|e| EvalError::data(path, format!("line {}: {e}", n + 1)))
        })
        .collect()
}

pub fn load_questions(path: &Path) -> Result<Vec<Question>> {
    read_jsonl(path)
}

/// One generation task per question: both turns, at the question's temperature (or `force`).
pub fn tasks(questions: &[Question], force_temperature: Option<f64>) -> Vec<Task> {
    questions
        .iter()
        .map(|q| Task {
            key: q.question_id.to_string(),
            turns: q.turns.clone(),
            temperature: Some(force_temperature.unwrap_or_else(|| temperature(q))),
            references: None,
        })
        .collect()
}

/// One line of FastChat's `model_answer/<model>.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnswerLine {
    pub question_id: u64,
    pub answer_id: String,
    pub model_id: String,
    pub choices: Vec<Choice>,
    pub tstamp: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    pub index: usize,
    pub turns: Vec<String>,
}

/// Writes answers sorted by question id, one JSON object per line, as FastChat does.
pub fn write_answers(path: &Path, answers: &mut [AnswerLine]) -> Result<()> {
    answers.sort_by_key(|a| a.question_id);
    let mut text = String::new();
    for answer in answers.iter() {
        let line = serde_json::to_string(answer)
            .map_err(|e| EvalError::Invalid(format!("cannot encode an answer: {e}")))?;
        text.push_str(&line);
        text.push('\n');
    }
    crate::write_file(path, text.as_bytes())
}

pub fn load_answers(path: &Path) -> Result<Vec<AnswerLine>> {
    read_jsonl(path)
}

/// A FastChat answer id: 22 characters of shortuuid's alphabet.
pub fn answer_id() -> String {
    const ALPHABET: &[u8] = b"23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
    (0..22)
        .map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char)
        .collect()
}

/// One of FastChat's judge prompts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JudgePrompt {
    pub name: String,
    pub system_prompt: String,
    pub prompt_template: String,
}

/// The judge prompts by name.
pub fn load_judge_prompts(path: &Path) -> Result<HashMap<String, JudgePrompt>> {
    let prompts: Vec<JudgePrompt> = read_jsonl(path)?;
    let prompts: HashMap<String, JudgePrompt> =
        prompts.into_iter().map(|p| (p.name.clone(), p)).collect();
    for name in [
        "single-v1",
        "single-math-v1",
        "single-v1-multi-turn",
        "single-math-v1-multi-turn",
    ] {
        if !prompts.contains_key(name) {
            return Err(EvalError::data(
                path,
                format!("no judge prompt named {name}"),
            ));
        }
    }
    Ok(prompts)
}

/// Reference answers (both turns) by question id.
pub fn load_reference_answers(path: &Path) -> Result<HashMap<u64, Vec<String>>> {
    Ok(load_answers(path)?
        .into_iter()
        .filter_map(|a| {
            let turns = a.choices.into_iter().next()?.turns;
            Some((a.question_id, turns))
        })
        .collect())
}

/// Fills `{name}` placeholders in one pass (Python's `str.format` with named fields).
fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        match after.find('}').and_then(|end| {
            let name = &after[..end];
            values
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (end, *v))
        }) {
            Some((end, value)) => {
                out.push_str(value);
                rest = &after[end + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The judge prompt's name and messages for `turn` (1 or 2) of `question` answered `answers`.
pub fn judge_messages(
    prompts: &HashMap<String, JudgePrompt>,
    question: &Question,
    answers: &[String],
    turn: usize,
    reference: Option<&[String]>,
) -> Result<(String, Vec<Message>)> {
    let with_reference = NEEDS_REFERENCE.contains(&question.category.as_str());
    let reference = match (with_reference, reference) {
        (true, Some(r)) => Some(r),
        (true, None) => {
            return Err(EvalError::Invalid(format!(
                "question {} ({}) is graded against a reference answer, and there is none",
                question.question_id, question.category
            )))
        }
        (false, _) => None,
    };
    let name = match (reference.is_some(), turn) {
        (false, 1) => "single-v1",
        (true, 1) => "single-math-v1",
        (false, _) => "single-v1-multi-turn",
        (true, _) => "single-math-v1-multi-turn",
    };
    let prompt = &prompts[name];
    let get = |v: &[String], i: usize| v.get(i).cloned().unwrap_or_default();
    let (q1, q2) = (get(&question.turns, 0), get(&question.turns, 1));
    let (a1, a2) = (get(answers, 0), get(answers, 1));
    let (r1, r2) = reference
        .map(|r| (get(r, 0), get(r, 1)))
        .unwrap_or_default();
    let user = if turn == 1 {
        fill(
            &prompt.prompt_template,
            &[("question", &q1), ("answer", &a1), ("ref_answer_1", &r1)],
        )
    } else {
        fill(
            &prompt.prompt_template,
            &[
                ("question_1", &q1),
                ("question_2", &q2),
                ("answer_1", &a1),
                ("answer_2", &a2),
                ("ref_answer_1", &r1),
                ("ref_answer_2", &r2),
            ],
        )
    };
    Ok((
        name.to_string(),
        vec![
            Message::system(prompt.system_prompt.clone()),
            Message::user(user),
        ],
    ))
}

/// The first `[[x]]` rating in a judgment (falling back to `[x]`), or −1 as FastChat records
/// an unparseable one.
pub fn parse_score(judgment: &str) -> f64 {
    first_bracketed(judgment, "[[", "]]")
        .or_else(|| first_bracketed(judgment, "[", "]"))
        .unwrap_or(-1.0)
}

/// The first `open` number `close` where the number is digits with an optional fraction.
fn first_bracketed(text: &str, open: &str, close: &str) -> Option<f64> {
    let mut from = 0;
    while let Some(at) = text[from..].find(open) {
        let start = from + at + open.len();
        let rest = &text[start..];
        let digits = rest.bytes().take_while(|b| b.is_ascii_digit()).count();
        if digits > 0 {
            let mut end = digits;
            if rest[end..].starts_with('.') {
                end += 1 + rest[end + 1..]
                    .bytes()
                    .take_while(|b| b.is_ascii_digit())
                    .count();
            }
            if rest[end..].starts_with(close) {
                return rest[..end].parse().ok();
            }
        }
        from = from + at + 1;
    }
    None
}

/// Where FastChat's `show_result.py` reads single-answer judgments by default (relative to
/// the folder it runs in): `data/mt_bench/model_judgment/gpt-4_single.jsonl` for GPT-4.
pub const JUDGMENT_DIR: &str = "data/mt_bench/model_judgment";

/// FastChat's name for a judge (`openai:gpt-4` → `gpt-4`): the model alone, in the judgment
/// lines and the file name.
pub fn judge_model(judge: &str) -> String {
    moa_core::ModelRef::parse(judge).map_or(judge.to_string(), |r| r.model)
}

/// The single-answer judgment file of `judge`, relative to the run folder.
pub fn judgment_file(judge: &str) -> String {
    format!(
        "{JUDGMENT_DIR}/{}_single.jsonl",
        crate::pipeline::safe_name(&judge_model(judge))
    )
}

/// One line of FastChat's `model_judgment/<judge>_single.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JudgmentLine {
    pub question_id: u64,
    pub model: String,
    pub judge: (String, String),
    pub user_prompt: String,
    pub judgment: String,
    pub score: f64,
    pub turn: usize,
    pub tstamp: f64,
}

/// Mean scores per turn, per category and overall, excluding unparseable (−1) ones.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    pub overall: f64,
    pub turn_1: f64,
    pub turn_2: f64,
    pub by_category: BTreeMap<String, f64>,
    /// Judgments counted, and those left out because no score could be read.
    pub judged: usize,
    pub unparsed: usize,
}

/// `(category, turn, score)` triples to means.
pub fn scores(judged: &[(String, usize, f64)]) -> Scores {
    let mean = |it: &mut dyn Iterator<Item = f64>| {
        let (sum, n) = it.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
        if n == 0 {
            0.0
        } else {
            sum / n as f64
        }
    };
    let valid: Vec<&(String, usize, f64)> = judged.iter().filter(|j| j.2 >= 0.0).collect();
    let mut by_category = BTreeMap::new();
    for (category, _, _) in &valid {
        by_category
            .entry(category.clone())
            .or_insert_with(|| mean(&mut valid.iter().filter(|j| &j.0 == category).map(|j| j.2)));
    }
    Scores {
        overall: mean(&mut valid.iter().map(|j| j.2)),
        turn_1: mean(&mut valid.iter().filter(|j| j.1 == 1).map(|j| j.2)),
        turn_2: mean(&mut valid.iter().filter(|j| j.1 == 2).map(|j| j.2)),
        by_category,
        judged: valid.len(),
        unparsed: judged.len() - valid.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_are_read_like_fastchat() {
        assert_eq!(parse_score("Good answer. Rating: [[8]]"), 8.0);
        assert_eq!(parse_score("[[7.5]] and later [[2]]"), 7.5);
        assert_eq!(parse_score("Rating: [6]"), 6.0);
        assert_eq!(parse_score("[[x]] then [[9]]"), 9.0);
        assert_eq!(parse_score("I rate it 7/10"), -1.0);
    }

    #[test]
    fn temperatures_follow_the_reference_table() {
        let q = |category: &str| Question {
            question_id: 1,
            category: category.into(),
            turns: vec![],
            required_temperature: None,
        };
        assert_eq!(temperature(&q("writing")), 0.7);
        assert_eq!(temperature(&q("math")), 0.0);
        assert_eq!(temperature(&q("stem")), 0.1);
        assert_eq!(temperature(&q("other")), 0.7);
        let mut forced = q("math");
        forced.required_temperature = Some(0.3);
        assert_eq!(temperature(&forced), 0.3);
        assert_eq!(tasks(&[q("math")], Some(0.9))[0].temperature, Some(0.9));
    }

    #[test]
    fn means_leave_out_unparsed_scores() {
        let s = scores(&[
            ("writing".into(), 1, 8.0),
            ("writing".into(), 2, 6.0),
            ("math".into(), 1, 3.0),
            ("math".into(), 2, -1.0),
        ]);
        assert!((s.overall - 17.0 / 3.0).abs() < 1e-12);
        assert_eq!((s.turn_1, s.turn_2), (5.5, 6.0));
        assert_eq!(s.by_category["writing"], 7.0);
        assert_eq!(s.by_category["math"], 3.0);
        assert_eq!((s.judged, s.unparsed), (3, 1));
    }

    #[test]
    fn placeholders_fill_in_one_pass() {
        assert_eq!(
            fill(
                "Q {question} A {answer} {other}",
                &[("question", "{answer}"), ("answer", "x")]
            ),
            "Q {answer} A x {other}"
        );
    }
}
