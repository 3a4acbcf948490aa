//! AlpacaEval 2.0 behind [`Benchmark`]: instructions in the baseline's order, `model_outputs.json`,
//! the weighted judge comparing each output with the baseline's, win rates and `annotations.json`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use moa_core::Completion;

use super::{current, data_file, Benchmark, JudgeCall, Names, Prepared};
use crate::alpaca::{self, Output};
use crate::error::{EvalError, Result};
use crate::generate::Answer;
use crate::judge::{Comparison, Judgment};
use crate::pipeline::Metrics;
use crate::runner::Item;
use crate::{lc, Bench, Task};

pub struct AlpacaEval {
    /// The baseline's outputs: the instructions, in order.
    rows: Vec<Output>,
    /// `df_gamed.csv` for the LC win rate (default: in the data folder, when there).
    lc_data: Option<PathBuf>,
    prompt: Option<alpaca::JudgePrompt>,
    lc: Option<lc::LcData>,
    /// Judge every comparison a second time with the outputs' places traded.
    both_orders: bool,
}

impl AlpacaEval {
    /// The first `limit` instructions of the data folder's AlpacaEval set.
    pub fn open(data: &Path, limit: Option<usize>) -> Result<Self> {
        let mut rows =
            alpaca::load_outputs(&data_file(data, alpaca::BASELINE, Bench::AlpacaEval)?)?;
        rows.truncate(limit.unwrap_or(usize::MAX));
        Ok(Self {
            rows,
            lc_data: None,
            prompt: None,
            lc: None,
            both_orders: false,
        })
    }

    /// Judges each comparison in both orders, to measure the judge's position bias.
    pub fn with_both_orders(mut self, both: bool) -> Self {
        self.both_orders = both;
        self
    }

    /// Fits the LC win rate on this `df_gamed.csv` instead of the data folder's.
    pub fn with_lc_data(mut self, path: Option<PathBuf>) -> Self {
        self.lc_data = path;
        self
    }
}

impl Benchmark for AlpacaEval {
    type Judged = Comparison;

    fn tasks(&self) -> Vec<Task> {
        alpaca::tasks(&self.rows)
    }

    fn write_outputs(
        &self,
        done: &HashMap<String, Answer>,
        name: &str,
        path: &Path,
    ) -> Result<usize> {
        let outputs: Vec<Output> = self
            .rows
            .iter()
            .enumerate()
            .filter_map(|(i, row)| {
                let answer = done.get(&i.to_string()).filter(|a| a.ok)?;
                Some(Output {
                    instruction: row.instruction.clone(),
                    dataset: row.dataset.clone(),
                    output: answer.turns.first().cloned(),
                    generator: Some(name.to_string()),
                })
            })
            .collect();
        alpaca::write_outputs(path, &outputs)?;
        Ok(outputs.len())
    }

    fn judge_items(&mut self, data: &Path, outputs: &Path) -> Result<Vec<Comparison>> {
        let model: HashMap<String, String> = alpaca::load_outputs(outputs)?
            .into_iter()
            .filter_map(|o| Some((o.instruction, o.output?)))
            .collect();
        let items: Vec<Comparison> = self
            .rows
            .iter()
            .enumerate()
            .filter_map(|(index, row)| {
                Some(Comparison {
                    index,
                    instruction: row.instruction.clone(),
                    baseline: row.output.clone().unwrap_or_default(),
                    model: model.get(&row.instruction)?.clone(),
                    flipped: false,
                })
            })
            .flat_map(|c| {
                let flipped = self.both_orders.then(|| Comparison {
                    flipped: true,
                    ..c.clone()
                });
                std::iter::once(c).chain(flipped)
            })
            .collect();
        if items.is_empty() {
            return Err(EvalError::data(
                outputs,
                "no output matches an AlpacaEval instruction",
            ));
        }
        let prompt = data_file(data, alpaca::JUDGE_PROMPT, Bench::AlpacaEval)?;
        self.prompt = Some(alpaca::JudgePrompt::load(&prompt)?);
        let lc_path = self
            .lc_data
            .clone()
            .or_else(|| Some(data.join(alpaca::LC_DATA)).filter(|p| p.is_file()));
        self.lc = lc_path.map(|p| lc::LcData::load(&p)).transpose()?;
        Ok(items)
    }

    fn prepare(&self, item: &Comparison) -> Prepared {
        let mut judgment = Judgment::start(item.key(), item.hash());
        if item.baseline == item.model {
            judgment.ok = true;
            judgment.preference = Some(1.5);
            judgment.swapped = Some(false);
            judgment.cost = Some(0.0);
            return Prepared::Done(judgment);
        }
        let Some(prompt) = &self.prompt else {
            return Prepared::Done(judgment.failed("the judge prompt is not loaded".into()));
        };
        let swapped = alpaca::is_swapped(&item.instruction) != item.flipped;
        let (first, second) = match swapped {
            true => (&item.model, &item.baseline),
            false => (&item.baseline, &item.model),
        };
        judgment.swapped = Some(swapped);
        let call = JudgeCall {
            messages: prompt.messages(&item.instruction, first, second),
            temperature: Some(1.0),
            max_tokens: Some(1),
            extra: alpaca::judge_request_fields(),
        };
        Prepared::Call(judgment, call)
    }

    fn verdict(&self, _: &Comparison, mut judgment: Judgment, answer: Completion) -> Judgment {
        judgment.text = answer.text.clone();
        let weighted = answer
            .logprobs
            .as_ref()
            .and_then(|l| l.first())
            .and_then(|first| alpaca::preference_from_logprobs(&first.top_logprobs));
        let (preference, is_weighted) = match weighted {
            Some(p) => (Some(p), true),
            None => (alpaca::preference_from_text(&answer.text), false),
        };
        match preference {
            Some(p) => {
                judgment.ok = true;
                judgment.preference = Some(alpaca::unswap(p, judgment.swapped == Some(true)));
                judgment.weighted = Some(is_weighted);
                judgment
            }
            None => {
                let text = answer.text;
                judgment.failed(format!("the judge answered {text:?}, neither m nor M"))
            }
        }
    }

    fn finish(
        &self,
        items: &[Comparison],
        done: &HashMap<String, Judgment>,
        names: &Names,
        out: &Path,
    ) -> Result<Metrics> {
        let mut preferences = Vec::new();
        let mut lengths = Vec::new();
        let mut comparisons = Vec::new();
        let mut annotations = Vec::new();
        let mut traded = HashMap::new();
        for item in items.iter().filter(|i| i.flipped) {
            if let Some(p) = current(done, item).and_then(|j| j.preference) {
                traded.insert(item.index, p);
            }
        }
        let mut pairs = Vec::new();
        for item in items.iter().filter(|i| !i.flipped) {
            let Some(j) = current(done, item) else {
                continue;
            };
            let Some(preference) = j.preference else {
                continue;
            };
            if let Some(other) = traded.get(&item.index) {
                pairs.push((preference, *other));
            }
            preferences.push(preference);
            let model_len = item.model.chars().count();
            lengths.push(model_len);
            comparisons.push(lc::Comparison {
                index: item.index,
                preference,
                baseline_len: item.baseline.chars().count(),
                model_len,
            });
            annotations.push(alpaca::Annotation {
                instruction: item.instruction.clone(),
                output_1: item.baseline.clone(),
                generator_1: "gpt4_1106_preview".into(),
                output_2: item.model.clone(),
                generator_2: names.run.to_string(),
                annotator: alpaca::annotator(names.judge, j.weighted == Some(true)),
                preference: Some(preference),
                raw_completion: Some(j.text.clone()),
            });
        }
        let text = serde_json::to_string_pretty(&annotations)
            .map_err(|e| EvalError::Invalid(e.to_string()))?;
        crate::write_file(&out.join("annotations.json"), text.as_bytes())?;
        let mut win = alpaca::win_rate(&preferences, &lengths);
        win.length_controlled_winrate = self
            .lc
            .as_ref()
            .and_then(|d| lc::length_controlled_winrate(&comparisons, d));
        win.position_bias = alpaca::position_bias(&pairs);
        Ok(Metrics::AlpacaEval(win))
    }
}
