//! The prompt-set benchmark behind `moa bench`: a list of prompts run through each target (a
//! preset as configured, or one model alone), measuring latency, time to first token, tokens
//! and cost per prompt. It runs on the evaluation [`runner`](crate::runner) with its journal
//! (`results.jsonl`), so a killed run resumes where it stopped and a job budget stops it
//! cleanly; [`report`] turns the records into percentiles per target and [`chart`] into an
//! SVG of cost against latency.

pub mod chart;
pub mod prompts;
pub mod report;

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use futures::StreamExt;
use moa_core::{Message, Moa, RunEvent};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::journal::Journal;
use crate::runner::{self, Item, JobBudget, Tick};

pub use report::Report;

/// The journal in the output folder.
pub const RESULTS: &str = "results.jsonl";

/// One prompt's outcome for one target: a line of `results.jsonl`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub target: String,
    pub index: usize,
    /// Identifies the prompt text, so a changed prompt file is not mistaken for done work.
    pub prompt_hash: String,
    pub ok: bool,
    pub latency_ms: u64,
    pub ttft_ms: Option<u64>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// US dollars; `None` when a model of the run has no known price.
    pub cost: Option<f64>,
    pub error: Option<String>,
    pub answer: String,
}

/// The journal key of prompt `index` for `target`.
pub fn key(target: &str, index: usize) -> String {
    format!("{target}#{index}")
}

impl runner::Record for Record {
    fn key(&self) -> String {
        key(&self.target, self.index)
    }
    fn hash(&self) -> &str {
        &self.prompt_hash
    }
    fn ok(&self) -> bool {
        self.ok
    }
    fn cost(&self) -> Option<f64> {
        self.cost
    }
    fn tokens(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }
    fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }
}

/// What is measured: a preset as configured, or one model called alone.
pub struct Target {
    pub name: String,
    pub moa: Moa,
}

/// One prompt for one target.
#[derive(Clone, Debug)]
struct Run {
    target: usize,
    target_name: String,
    index: usize,
    prompt: String,
}

impl Item for Run {
    fn key(&self) -> String {
        key(&self.target_name, self.index)
    }
    fn hash(&self) -> String {
        crate::fnv1a(&self.prompt)
    }
}

/// The records already in `dir`, latest per target and prompt.
pub fn load_records(dir: &Path) -> Result<HashMap<String, Record>> {
    Ok(runner::latest(Journal::<Record>::load(&dir.join(RESULTS))?))
}

/// Runs one prompt and measures it.
async fn measure(target: &Target, run: Run) -> Record {
    let started = Instant::now();
    let mut stream = target.moa.run(vec![Message::user(run.prompt.clone())]);
    let mut ttft = None;
    let mut record = Record {
        target: target.name.clone(),
        index: run.index,
        prompt_hash: run.hash(),
        ok: false,
        latency_ms: 0,
        ttft_ms: None,
        prompt_tokens: 0,
        completion_tokens: 0,
        cost: None,
        error: None,
        answer: String::new(),
    };
    while let Some(event) = stream.next().await {
        match event {
            Ok(RunEvent::AggregatorDelta { .. }) if ttft.is_none() => {
                ttft = Some(started.elapsed().as_millis() as u64);
            }
            Ok(RunEvent::Done(trace)) => {
                record.ok = true;
                record.prompt_tokens = trace.usage.prompt_tokens;
                record.completion_tokens = trace.usage.completion_tokens;
                record.cost = trace.cost;
                record.answer = trace.answer;
            }
            Ok(_) => {}
            Err(e) => record.error = Some(e.to_string()),
        }
    }
    record.latency_ms = started.elapsed().as_millis() as u64;
    record.ttft_ms = ttft;
    record
}

/// Measures every prompt of `targets[which]` not already in `done`, `parallel` at a time,
/// appending each record to `journal`. The budget counts every record of the job, other
/// targets' and earlier runs' included. Returns the limit that stopped it, if one did.
#[allow(clippy::too_many_arguments)]
pub async fn run_target(
    targets: &[Target],
    which: usize,
    prompts: &[String],
    parallel: usize,
    budget: JobBudget,
    journal: &mut Journal<Record>,
    done: &mut HashMap<String, Record>,
    tick: impl FnMut(&Tick),
) -> Result<Option<String>> {
    let target = &targets[which];
    let runs: Vec<Run> = prompts
        .iter()
        .enumerate()
        .map(|(index, prompt)| Run {
            target: which,
            target_name: target.name.clone(),
            index,
            prompt: prompt.clone(),
        })
        .collect();
    runner::run(
        &runs,
        parallel,
        budget,
        journal,
        done,
        |run| measure(&targets[run.target], run),
        tick,
    )
    .await
}
