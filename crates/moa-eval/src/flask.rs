//! FLASK: 1,740 instructions each tagged with three of twelve skills; answers as FLASK's JSON
//! Lines; GPT-4 reviews scoring each tagged skill 1–5 against its rubric and a ground-truth
//! answer; scores aggregated per skill.

use std::collections::BTreeMap;
use std::path::Path;

use moa_core::Message;
use serde::{Deserialize, Serialize};

use crate::error::{EvalError, Result};
use crate::mt_bench::read_jsonl;
use crate::Task;

pub const EVALUATION_SET: &str = "flask/evaluation_set/flask_evaluation.jsonl";
pub const PROMPTS: &str = "flask/gpt_review/src/prompt.jsonl";
pub const SKILLS: &str = "flask/metadata_annotation/skillset/src/skillset_description.json";
pub const DEFAULT_JUDGE: &str = "openai:gpt-4-0613";
/// The order FLASK's `aggregate_skill.py` reports skills in.
pub const SKILL_ORDER: [&str; 12] = [
    "robustness",
    "correctness",
    "efficiency",
    "factuality",
    "commonsense",
    "comprehension",
    "insightfulness",
    "completeness",
    "metacognition",
    "readability",
    "conciseness",
    "harmlessness",
];

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    pub idx: u64,
    pub instruction: String,
    #[serde(default)]
    pub answer: String,
    #[serde(default)]
    pub skill: Vec<String>,
}

pub fn load_instances(path: &Path) -> Result<Vec<Instance>> {
    read_jsonl(path)
}

pub fn tasks(instances: &[Instance]) -> Vec<Task> {
    instances
        .iter()
        .map(|i| Task::single(i.idx.to_string(), &i.instruction))
        .collect()
}

/// One line of the answer file the FLASK reviewer reads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnswerLine {
    pub question_id: u64,
    pub text: String,
}

pub fn write_answers(path: &Path, answers: &[AnswerLine]) -> Result<()> {
    let mut text = String::new();
    for a in answers {
        text.push_str(
            &serde_json::to_string(a)
                .map_err(|e| EvalError::Invalid(format!("cannot encode an answer: {e}")))?,
        );
        text.push('\n');
    }
    crate::write_file(path, text.as_bytes())
}

pub fn load_answers(path: &Path) -> Result<Vec<AnswerLine>> {
    read_jsonl(path)
}

/// FLASK's review prompt with a ground-truth answer (prompt 2, the one the reference uses).
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct ReviewPrompt {
    pub prompt_id: u32,
    pub system_prompt: String,
    pub prompt_template: String,
    pub defaults: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Skill {
    #[serde(rename = "Skill")]
    pub skill: String,
    #[serde(rename = "Criteria")]
    pub criteria: String,
    #[serde(rename = "Scoring")]
    pub scoring: BTreeMap<String, String>,
}

/// The prompt and rubric the reviewer needs.
#[derive(Clone, Debug)]
pub struct Reviewer {
    pub prompt: ReviewPrompt,
    pub skills: Vec<Skill>,
}

impl Reviewer {
    pub fn load(prompts: &Path, skills: &Path) -> Result<Self> {
        let all: Vec<ReviewPrompt> = read_jsonl(prompts)?;
        let prompt = all
            .into_iter()
            .find(|p| p.prompt_id == 2)
            .ok_or_else(|| EvalError::data(prompts, "no prompt with prompt_id 2"))?;
        let text = std::fs::read_to_string(skills).map_err(|e| EvalError::io("read", skills, e))?;
        let skills = serde_json::from_str(&text)
            .map_err(|e| EvalError::data(skills, format!("not FLASK's skill list: {e}")))?;
        Ok(Self { prompt, skills })
    }

    /// The review request for `response` to `instance`.
    pub fn messages(&self, instance: &Instance, response: &str) -> Result<Vec<Message>> {
        let mut rubric = String::new();
        for name in &instance.skill {
            let skill = self
                .skills
                .iter()
                .find(|s| &s.skill == name)
                .ok_or_else(|| {
                    EvalError::Invalid(format!(
                        "instance {} names skill {name:?}, which the rubric does not define",
                        instance.idx
                    ))
                })?;
            rubric.push_str(&format!("\n{}: {}\n", skill.skill, skill.criteria));
            for score in 1..=5 {
                let key = score.to_string();
                let text = skill.scoring.get(&key).map(String::as_str).unwrap_or("");
                rubric.push_str(&format!("Score {score}: {text}\n"));
            }
            rubric.push('\n');
        }
        let default = |k: &str| self.prompt.defaults.get(k).cloned().unwrap_or_default();
        let user = self
            .prompt
            .prompt_template
            .replace("{prompt1}", &default("prompt1"))
            .replace("{prompt2}", &default("prompt2"))
            .replacen("{skills}", &rubric, 1)
            .replacen("{question}", &instance.instruction, 1)
            .replacen("{sample_answer}", &instance.answer, 1)
            .replacen("{response}", response, 1);
        Ok(vec![
            Message::system(self.prompt.system_prompt.clone()),
            Message::user(user),
        ])
    }
}

/// The scores in a review: its last `{...}`, newlines removed, `_` → space, lower-cased, read
/// as a Python dict of skill → score; "n/a" and alike become `None`.
pub fn parse_review(review: &str) -> Option<BTreeMap<String, Option<f64>>> {
    let start = review.rfind('{')?;
    let end = start + review[start..].find('}')?;
    let text = review[start..=end]
        .replace('\n', "")
        .replace('_', " ")
        .to_lowercase();
    parse_dict(&text)
}

fn parse_dict(text: &str) -> Option<BTreeMap<String, Option<f64>>> {
    let inner = text.trim().strip_prefix('{')?.strip_suffix('}')?;
    let mut out = BTreeMap::new();
    let mut rest = inner.trim();
    while !rest.is_empty() {
        let (key, after) = quoted(rest)?;
        let after = after.trim_start().strip_prefix(':')?.trim_start();
        let (value, after) = match after.chars().next()? {
            '\'' | '"' => {
                let (v, a) = quoted(after)?;
                (v, a)
            }
            _ => {
                let end = after.find(',').unwrap_or(after.len());
                (after[..end].trim().to_string(), &after[end..])
            }
        };
        let score = match value.trim() {
            "na" | "n/a" | "not applicable" | "none" => None,
            v => Some(v.parse::<f64>().ok()?),
        };
        out.insert(key, score);
        rest = after.trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
    }
    Some(out)
}

/// A quoted string at the start of `text` and what follows it.
fn quoted(text: &str) -> Option<(String, &str)> {
    let quote = text.chars().next().filter(|c| *c == '\'' || *c == '"')?;
    let body = &text[1..];
    let end = body.find(quote)?;
    Some((body[..end].to_string(), &body[end + 1..]))
}

/// The skill a review key counts for: its first word, or the second for "logical …" keys.
pub fn skill_of(key: &str) -> String {
    let mut words = key.split_whitespace();
    let first = words.next().unwrap_or("");
    if first == "logical" {
        words.next().unwrap_or(first).to_string()
    } else {
        first.to_string()
    }
}

/// One skill's aggregate, as FLASK's `aggregate_skill.py` writes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SkillScore {
    pub skill: String,
    pub score: f64,
    pub count: usize,
    pub avg: f64,
}

/// Sums, counts and means per skill over reviews (N/A left out), in FLASK's order.
pub fn aggregate(reviews: &[BTreeMap<String, Option<f64>>]) -> Vec<SkillScore> {
    let mut sums: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    for review in reviews {
        for (key, score) in review {
            if let Some(score) = score {
                let e = sums.entry(skill_of(key)).or_default();
                e.0 += score;
                e.1 += 1;
            }
        }
    }
    SKILL_ORDER
        .iter()
        .filter_map(|skill| {
            let (score, count) = sums.get(*skill)?;
            Some(SkillScore {
                skill: skill.to_string(),
                score: *score,
                count: *count,
                avg: score / *count as f64,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_dict_of_a_review_is_read_like_flask() {
        let review = "Readability: fine. {'not': 'this'}\nScores:\n{'Readability': 4,\n 'Logical_Correctness': 3, \"Conciseness\": 'N/A'}";
        let scores = parse_review(review).unwrap();
        assert_eq!(scores["readability"], Some(4.0));
        assert_eq!(scores["logical correctness"], Some(3.0));
        assert_eq!(scores["conciseness"], None);
        assert_eq!(parse_review("no dict here"), None);
        assert_eq!(parse_review("{'a': 'great'}"), None);
    }

    #[test]
    fn skills_are_aggregated_by_their_key_word() {
        let r = |pairs: &[(&str, Option<f64>)]| -> BTreeMap<String, Option<f64>> {
            pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
        };
        let out = aggregate(&[
            r(&[
                ("logical correctness", Some(4.0)),
                ("readability", Some(5.0)),
            ]),
            r(&[("logical correctness", Some(2.0)), ("readability", None)]),
            r(&[("commonsense understanding", Some(3.0))]),
        ]);
        let names: Vec<&str> = out.iter().map(|s| s.skill.as_str()).collect();
        assert_eq!(names, ["correctness", "commonsense", "readability"]);
        assert_eq!(
            out[0],
            SkillScore {
                skill: "correctness".into(),
                score: 6.0,
                count: 2,
                avg: 3.0
            }
        );
        assert_eq!((out[2].count, out[2].avg), (1, 5.0));
    }
}
