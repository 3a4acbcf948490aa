//! The paper's evaluations: AlpacaEval 2.0, MT-Bench and FLASK.
//!
//! Data sets are read from a folder laid out as their public repositories are ([`sources`]
//! downloads them). [`generate`] answers a benchmark's items with any MoA engine (or with
//! pre-generated proposer outputs as references, as the reference does), [`judge`] grades answers
//! with any provider as judge, both through checkpoint [`journal`]s that make a killed run resume
//! where it stopped. Each benchmark's module holds its formats, prompts, parsing and metrics;
//! [`report`] compares runs as a table and an HTML page. No MoA logic lives here: the engine is
//! `moa-core`'s.

pub mod alpaca;
pub mod batch;
pub mod compare;
pub mod error;
pub mod flask;
pub mod generate;
pub mod journal;
pub mod judge;
pub mod lc;
pub mod mt_bench;
pub mod pipeline;
pub mod prompt_set;
pub mod pyrandom;
pub mod report;
pub mod runner;
pub mod sources;
pub mod suite;

use std::path::Path;

use serde::{Deserialize, Serialize};

pub use error::{EvalError, Result};

/// The three benchmarks of the paper.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Bench {
    AlpacaEval,
    MtBench,
    Flask,
}

impl Bench {
    pub const ALL: [Bench; 3] = [Bench::AlpacaEval, Bench::MtBench, Bench::Flask];

    pub fn name(self) -> &'static str {
        match self {
            Bench::AlpacaEval => "alpaca_eval",
            Bench::MtBench => "mt_bench",
            Bench::Flask => "flask",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.name() == name)
    }

    /// The judge model the official numbers were graded with.
    /// The length cap the reference's generator gives every agent: 2048 tokens for AlpacaEval
    /// and FLASK (the aggregator is called with generate_with_references' defaults), 1024 for
    /// MT-Bench.
    pub fn reference_max_tokens(self) -> u32 {
        match self {
            Bench::MtBench => mt_bench::MAX_TOKENS,
            _ => 2048,
        }
    }

    /// The temperature the reference's generator gives every agent: 0.7 for AlpacaEval and
    /// FLASK; none for MT-Bench, whose temperatures are per category.
    pub fn reference_temperature(self) -> Option<f64> {
        match self {
            Bench::MtBench => None,
            _ => Some(0.7),
        }
    }

    pub fn default_judge(self) -> &'static str {
        match self {
            Bench::AlpacaEval => alpaca::DEFAULT_JUDGE,
            Bench::MtBench => mt_bench::DEFAULT_JUDGE,
            Bench::Flask => flask::DEFAULT_JUDGE,
        }
    }
}

impl std::fmt::Display for Bench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One item to answer: a conversation of user turns, answered turn by turn.
#[derive(Clone, Debug, PartialEq)]
pub struct Task {
    /// Stable id within the benchmark (index or question id).
    pub key: String,
    pub turns: Vec<String>,
    /// Overrides every agent's temperature (MT-Bench's per-category temperatures).
    pub temperature: Option<f64>,
    /// Pre-generated proposer answers: when present (even empty: every proposer failed), only
    /// the aggregator is called.
    pub references: Option<Vec<String>>,
}

impl Task {
    /// A single-turn task.
    pub fn single(key: String, prompt: &str) -> Self {
        Self {
            key,
            turns: vec![prompt.to_string()],
            temperature: None,
            references: None,
        }
    }
}

impl runner::Item for Task {
    fn key(&self) -> String {
        self.key.clone()
    }

    /// Identifies the task's content, so a changed data set is not mistaken for done work.
    fn hash(&self) -> String {
        let mut text = String::new();
        for turn in &self.turns {
            text.push_str(turn);
            text.push('\u{1}');
        }
        for reference in self.references.iter().flatten() {
            text.push_str(reference);
            text.push('\u{2}');
        }
        if let Some(t) = self.temperature {
            text.push_str(&t.to_string());
        }
        fnv1a(&text)
    }
}

/// FNV-1a, 64 bits, as 16 hex digits: stable across runs and platforms.
pub fn fnv1a(text: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= byte as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a reader never sees half
/// a file and a kill never destroys the previous one.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| EvalError::io("create", dir, e))?;
    }
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, bytes).map_err(|e| EvalError::io("write", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| EvalError::io("write", path, e))
}

/// Seconds since the Unix epoch, as FastChat's `tstamp`.
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::runner::Item;

    #[test]
    fn hashes_are_stable_and_see_every_part_of_a_task() {
        assert_eq!(fnv1a(""), "cbf29ce484222325");
        assert_eq!(fnv1a("a"), "af63dc4c8601ec8c");
        let task = Task::single("0".into(), "q");
        let mut other = task.clone();
        other.temperature = Some(0.0);
        assert_ne!(task.hash(), other.hash());
        let mut other = task.clone();
        other.references = Some(vec!["r".into()]);
        assert_ne!(task.hash(), other.hash());
        assert_eq!(Bench::from_name("mt_bench"), Some(Bench::MtBench));
    }
}
