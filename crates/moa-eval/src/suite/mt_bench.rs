//! MT-Bench behind [`Benchmark`]: two-turn questions at their categories' temperatures,
//! FastChat's answer file, single-answer grading of each turn, scores and FastChat's judgment
//! file.

use std::collections::HashMap;
use std::path::Path;

use moa_core::Completion;

use super::{current, data_file, Benchmark, JudgeCall, Names, Prepared};
use crate::error::{EvalError, Result};
use crate::generate::Answer;
use crate::judge::{Judgment, Turn};
use crate::mt_bench::{self, Question};
use crate::pipeline::Metrics;
use crate::runner::Item;
use crate::{Bench, Task};

pub struct MtBench {
    questions: Vec<Question>,
    force_temperature: Option<f64>,
    prompts: HashMap<String, mt_bench::JudgePrompt>,
}

impl MtBench {
    /// The first `limit` questions; `force_temperature` replaces the categories' temperatures.
    pub fn open(data: &Path, limit: Option<usize>, force_temperature: Option<f64>) -> Result<Self> {
        let mut questions =
            mt_bench::load_questions(&data_file(data, mt_bench::QUESTIONS, Bench::MtBench)?)?;
        questions.truncate(limit.unwrap_or(usize::MAX));
        Ok(Self {
            questions,
            force_temperature,
            prompts: HashMap::new(),
        })
    }
}

impl Benchmark for MtBench {
    type Judged = Turn;

    fn tasks(&self) -> Vec<Task> {
        mt_bench::tasks(&self.questions, self.force_temperature)
    }

    fn write_outputs(
        &self,
        done: &HashMap<String, Answer>,
        name: &str,
        path: &Path,
    ) -> Result<usize> {
        let mut lines: Vec<mt_bench::AnswerLine> = self
            .questions
            .iter()
            .filter_map(|q| {
                let answer = done.get(&q.question_id.to_string()).filter(|a| a.ok)?;
                Some(mt_bench::AnswerLine {
                    question_id: q.question_id,
                    answer_id: answer.answer_id.clone(),
                    model_id: name.to_string(),
                    choices: vec![mt_bench::Choice {
                        index: 0,
                        turns: answer.turns.clone(),
                    }],
                    tstamp: answer.tstamp,
                })
            })
            .collect();
        mt_bench::write_answers(path, &mut lines)?;
        Ok(lines.len())
    }

    fn judge_items(&mut self, data: &Path, outputs: &Path) -> Result<Vec<Turn>> {
        let file = |relative| data_file(data, relative, Bench::MtBench);
        self.prompts = mt_bench::load_judge_prompts(&file(mt_bench::JUDGE_PROMPTS)?)?;
        let references = mt_bench::load_reference_answers(&file(mt_bench::REFERENCE_ANSWERS)?)?;
        let answers: HashMap<u64, Vec<String>> = mt_bench::load_answers(outputs)?
            .into_iter()
            .filter_map(|a| Some((a.question_id, a.choices.into_iter().next()?.turns)))
            .collect();
        let items: Vec<Turn> = self
            .questions
            .iter()
            .filter_map(|q| Some((q, answers.get(&q.question_id)?)))
            .flat_map(|(q, a)| {
                let references = &references;
                (1..=q.turns.len()).map(move |turn| Turn {
                    question: q.clone(),
                    answers: a.clone(),
                    turn,
                    reference: references.get(&q.question_id).cloned(),
                })
            })
            .collect();
        if items.is_empty() {
            return Err(EvalError::data(
                outputs,
                "no answer matches an MT-Bench question",
            ));
        }
        Ok(items)
    }

    fn prepare(&self, item: &Turn) -> Prepared {
        let judgment = Judgment::start(item.key(), item.hash());
        let (name, messages) = match mt_bench::judge_messages(
            &self.prompts,
            &item.question,
            &item.answers,
            item.turn,
            item.reference.as_deref(),
        ) {
            Ok(r) => r,
            Err(e) => return Prepared::Done(judgment.failed(e.to_string())),
        };
        let judgment = Judgment {
            user_prompt: Some(messages[1].content.clone()),
            prompt_name: Some(name),
            ..judgment
        };
        let call = JudgeCall {
            messages,
            temperature: Some(0.0),
            max_tokens: Some(2048),
            extra: Default::default(),
        };
        Prepared::Call(judgment, call)
    }

    fn verdict(&self, _: &Turn, judgment: Judgment, answer: Completion) -> Judgment {
        Judgment {
            ok: true,
            score: Some(mt_bench::parse_score(&answer.text)),
            text: answer.text,
            ..judgment
        }
    }

    fn finish(
        &self,
        items: &[Turn],
        done: &HashMap<String, Judgment>,
        names: &Names,
        out: &Path,
    ) -> Result<Metrics> {
        let judge_model = mt_bench::judge_model(names.judge);
        let mut triples = Vec::new();
        let mut lines = String::new();
        for item in items {
            let Some(j) = current(done, item) else {
                continue;
            };
            let score = j.score.unwrap_or(-1.0);
            triples.push((item.question.category.clone(), item.turn, score));
            let line = mt_bench::JudgmentLine {
                question_id: item.question.question_id,
                model: names.run.to_string(),
                judge: (
                    judge_model.clone(),
                    j.prompt_name.clone().unwrap_or_default(),
                ),
                user_prompt: j.user_prompt.clone().unwrap_or_default(),
                judgment: j.text.clone(),
                score,
                turn: item.turn,
                tstamp: j.tstamp,
            };
            lines.push_str(
                &serde_json::to_string(&line).map_err(|e| EvalError::Invalid(e.to_string()))?,
            );
            lines.push('\n');
        }
        // Where FastChat's show_result.py looks by default, run from the run folder.
        crate::write_file(
            &out.join(mt_bench::judgment_file(names.judge)),
            lines.as_bytes(),
        )?;
        Ok(Metrics::MtBench(mt_bench::scores(&triples)))
    }
}
