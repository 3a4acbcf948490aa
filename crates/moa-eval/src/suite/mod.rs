//! Each benchmark as one type behind [`Benchmark`]: the tasks it asks, the output file it writes,
//! the items its judge grades, the call each item needs and how the judge's answer is read, and
//! the metrics and files it leaves. The pipeline runs any of them the same way, live or through
//! a provider's batch API.

mod alpaca;
mod flask;
mod mt_bench;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use moa_core::{Completion, Message};

pub use alpaca::AlpacaEval;
pub use flask::Flask;
pub use mt_bench::MtBench;

use crate::error::{EvalError, Result};
use crate::generate::Answer;
use crate::judge::Judgment;
use crate::pipeline::Metrics;
use crate::runner::Item;
use crate::Task;

/// One call to the judge: what [`crate::judge::Judge`] sends, live or in a batch.
#[derive(Clone, Debug, PartialEq)]
pub struct JudgeCall {
    pub messages: Vec<Message>,
    pub temperature: Option<f64>,
    pub max_tokens: Option<u32>,
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// What grading an item takes.
#[derive(Clone, Debug, PartialEq)]
pub enum Prepared {
    /// This call; the judgment is filled in with what is known before it (the prompt, the order).
    Call(Judgment, JudgeCall),
    /// Nothing more: the judgment is already decided (or failed before any call).
    Done(Judgment),
}

/// What a judged run is called, and by whom.
pub struct Names<'a> {
    /// The run's name (its generator).
    pub run: &'a str,
    /// The judge, `provider:model`.
    pub judge: &'a str,
}

/// A benchmark as the pipeline sees it.
pub trait Benchmark: Send + Sync {
    /// An item the judge grades.
    type Judged: Item + Send + Sync + 'static;

    /// The tasks to answer, in the benchmark's order.
    fn tasks(&self) -> Vec<Task>;

    /// Writes the official output file from the answers so far; returns how many it holds.
    fn write_outputs(
        &self,
        done: &HashMap<String, Answer>,
        name: &str,
        path: &Path,
    ) -> Result<usize>;

    /// Loads what the judge needs from the data folder, and the items of the output file
    /// `outputs` to judge.
    fn judge_items(&mut self, data: &Path, outputs: &Path) -> Result<Vec<Self::Judged>>;

    /// The judge call `item` needs.
    fn prepare(&self, item: &Self::Judged) -> Prepared;

    /// Reads the judge's answer into `judgment` (its cost is already set).
    fn verdict(&self, item: &Self::Judged, judgment: Judgment, answer: Completion) -> Judgment;

    /// The metrics over the current judgments, writing the benchmark's own files into `out`.
    fn finish(
        &self,
        items: &[Self::Judged],
        done: &HashMap<String, Judgment>,
        names: &Names,
        out: &Path,
    ) -> Result<Metrics>;
}

/// `data/relative`, or an error saying how to get it.
pub(crate) fn data_file(data: &Path, relative: &str, bench: crate::Bench) -> Result<PathBuf> {
    let path = data.join(relative);
    if path.is_file() {
        Ok(path)
    } else {
        Err(EvalError::Invalid(format!(
            "{} is missing: point --data at a folder holding the {bench} files, or fetch them with `moa eval download --bench {bench} --data {}`",
            path.display(),
            data.display()
        )))
    }
}

/// The successful judgment of `item` as it is now (not of an earlier version of its content).
pub(crate) fn current<'a, T: Item>(
    done: &'a HashMap<String, Judgment>,
    item: &T,
) -> Option<&'a Judgment> {
    done.get(&item.key())
        .filter(|j| j.ok && j.hash == item.hash())
}
