//! FLASK behind [`Benchmark`]: single-turn instances, FLASK's answer file, a review of each
//! answer on its three skills against the rubric, per-skill averages and FLASK's review files.

use std::collections::HashMap;
use std::path::Path;

use moa_core::Completion;

use super::{current, data_file, Benchmark, JudgeCall, Names, Prepared};
use crate::error::{EvalError, Result};
use crate::flask::{self, Instance};
use crate::generate::Answer;
use crate::judge::{Judgment, Review};
use crate::pipeline::Metrics;
use crate::runner::Item;
use crate::{Bench, Task};

pub struct Flask {
    instances: Vec<Instance>,
    reviewer: Option<flask::Reviewer>,
}

impl Flask {
    /// The first `limit` instances of the evaluation set.
    pub fn open(data: &Path, limit: Option<usize>) -> Result<Self> {
        let mut instances =
            flask::load_instances(&data_file(data, flask::EVALUATION_SET, Bench::Flask)?)?;
        instances.truncate(limit.unwrap_or(usize::MAX));
        Ok(Self {
            instances,
            reviewer: None,
        })
    }
}

impl Benchmark for Flask {
    type Judged = Review;

    fn tasks(&self) -> Vec<Task> {
        flask::tasks(&self.instances)
    }

    fn write_outputs(
        &self,
        done: &HashMap<String, Answer>,
        _name: &str,
        path: &Path,
    ) -> Result<usize> {
        let lines: Vec<flask::AnswerLine> = self
            .instances
            .iter()
            .filter_map(|i| {
                let answer = done.get(&i.idx.to_string()).filter(|a| a.ok)?;
                Some(flask::AnswerLine {
                    question_id: i.idx,
                    text: answer.turns.first().cloned().unwrap_or_default(),
                })
            })
            .collect();
        flask::write_answers(path, &lines)?;
        Ok(lines.len())
    }

    fn judge_items(&mut self, data: &Path, outputs: &Path) -> Result<Vec<Review>> {
        self.reviewer = Some(flask::Reviewer::load(
            &data_file(data, flask::PROMPTS, Bench::Flask)?,
            &data_file(data, flask::SKILLS, Bench::Flask)?,
        )?);
        let answers: HashMap<u64, String> = flask::load_answers(outputs)?
            .into_iter()
            .map(|a| (a.question_id, a.text))
            .collect();
        let items: Vec<Review> = self
            .instances
            .iter()
            .filter_map(|instance| {
                let response = answers.get(&instance.idx)?.clone();
                Some(Review {
                    instance: instance.clone(),
                    response,
                })
            })
            .collect();
        if items.is_empty() {
            return Err(EvalError::data(
                outputs,
                "no answer matches a FLASK instance",
            ));
        }
        Ok(items)
    }

    fn prepare(&self, item: &Review) -> Prepared {
        let judgment = Judgment::start(item.key(), item.hash());
        let Some(reviewer) = &self.reviewer else {
            return Prepared::Done(judgment.failed("the review prompt is not loaded".into()));
        };
        match reviewer.messages(&item.instance, &item.response) {
            // The reference writes temperature and max_tokens into its request records but does
            // not send them: the API's defaults apply.
            Ok(messages) => Prepared::Call(
                judgment,
                JudgeCall {
                    messages,
                    temperature: None,
                    max_tokens: None,
                    extra: Default::default(),
                },
            ),
            Err(e) => Prepared::Done(judgment.failed(e.to_string())),
        }
    }

    fn verdict(&self, _: &Review, judgment: Judgment, answer: Completion) -> Judgment {
        Judgment {
            ok: true,
            scores: flask::parse_review(&answer.text),
            text: answer.text,
            ..judgment
        }
    }

    fn finish(
        &self,
        items: &[Review],
        done: &HashMap<String, Judgment>,
        _names: &Names,
        out: &Path,
    ) -> Result<Metrics> {
        let reviews: Vec<_> = items
            .iter()
            .filter_map(|item| current(done, item)?.scores.clone())
            .collect();
        let skills = flask::aggregate(&reviews);
        let mut lines = String::new();
        for item in items {
            let Some(j) = current(done, item) else {
                continue;
            };
            // FLASK writes an unrated skill as the string "N/A".
            let scores = j.scores.as_ref().map(|scores| {
                scores
                    .iter()
                    .map(|(skill, score)| {
                        (
                            skill.clone(),
                            score.map_or(serde_json::json!("N/A"), Into::into),
                        )
                    })
                    .collect::<serde_json::Map<_, _>>()
            });
            let line = serde_json::json!({
                "question_id": item.instance.idx,
                "text": item.response,
                "review": j.text,
                "score": scores,
            });
            lines.push_str(&line.to_string());
            lines.push('\n');
        }
        crate::write_file(&out.join("review.jsonl"), lines.as_bytes())?;
        let mut csv = String::from("skill,score,count,avg\n");
        for s in &skills {
            csv.push_str(&format!("{},{},{},{}\n", s.skill, s.score, s.count, s.avg));
        }
        crate::write_file(&out.join("skill_scores.csv"), csv.as_bytes())?;
        Ok(Metrics::Flask { skills })
    }
}
