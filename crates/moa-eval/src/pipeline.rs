//! The two steps a user runs, per benchmark: generate answers into the official format, and
//! judge answers into metrics. Both keep a journal in the run folder and resume from it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{EvalError, Result};
use crate::generate::{Answer, Generator};
use crate::journal::Journal;
use crate::judge::{Judge, Judgment};
use crate::runner::{self, Tick};
use crate::suite::{AlpacaEval, Benchmark, Flask, MtBench, Names};
use crate::{alpaca, batch, flask, mt_bench, Bench};

/// `run.json`: what a run folder holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    pub bench: Bench,
    pub name: String,
    /// The answers in the benchmark's official format, relative to the run folder.
    pub outputs: PathBuf,
}

const RUN_INFO: &str = "run.json";
const GENERATION_JOURNAL: &str = "generation.jsonl";
/// The batches of a generation through batch APIs, and their calls' outcomes.
const GENERATION_BATCHES: &str = "generation.batches.jsonl";
pub const RESULTS: &str = "results.json";

impl RunInfo {
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(RUN_INFO);
        let text = std::fs::read_to_string(&path).map_err(|e| EvalError::io("read", &path, e))?;
        serde_json::from_str(&text).map_err(|e| EvalError::data(&path, e.to_string()))
    }

    fn save(&self, dir: &Path) -> Result<()> {
        let text =
            serde_json::to_string_pretty(self).map_err(|e| EvalError::Invalid(e.to_string()))?;
        crate::write_file(&dir.join(RUN_INFO), text.as_bytes())
    }
}

/// The official output file of a run named `name`.
pub fn outputs_path(bench: Bench, name: &str) -> PathBuf {
    let file = safe_name(name);
    match bench {
        Bench::AlpacaEval => PathBuf::from("model_outputs.json"),
        Bench::MtBench => PathBuf::from(format!("model_answer/{file}.jsonl")),
        Bench::Flask => PathBuf::from(format!("model_output/{file}.jsonl")),
    }
}

/// A name usable as a file name.
pub fn safe_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

pub struct GenerateOptions {
    pub bench: Bench,
    pub data: PathBuf,
    pub out: PathBuf,
    pub name: String,
    pub reference_paths: Vec<PathBuf>,
    pub limit: Option<usize>,
    pub parallel: usize,
    pub force_temperature: Option<f64>,
    /// AlpacaEval and FLASK: every agent's temperature (the reference's generators use 0.7 for
    /// proposers and aggregator alike); `None` keeps each agent's own.
    pub temperature: Option<f64>,
    /// What a null output in `reference_paths` becomes.
    pub null_references: NullReferences,
    /// The whole job's limits; generation stops starting items once reached.
    pub budget: runner::JobBudget,
    /// Generate through the providers' batch APIs, checking on each batch this often.
    pub batch: Option<std::time::Duration>,
}

/// What a null output (a proposer that failed) in a `--reference-paths` file becomes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NullReferences {
    /// The text `None`, as the reference's generators send it (Python's `str(None)`).
    #[default]
    AsNone,
    /// Left out: the aggregator sees only the proposers that answered.
    Skip,
}

/// What a generation left.
#[derive(Debug)]
pub struct Generated {
    pub outputs: PathBuf,
    pub total: usize,
    pub answered: usize,
    /// Keys still without an answer, with their last error.
    pub failed: Vec<(String, String)>,
    /// The job budget that stopped generation early, if one did.
    pub stopped: Option<String>,
}

/// Proposer outputs from earlier runs, per item position: AlpacaEval's JSON array (`output`)
/// or JSON Lines (`text` or `output`).
fn load_references(
    paths: &[PathBuf],
    count: usize,
    nulls: NullReferences,
) -> Result<Vec<Vec<String>>> {
    let mut out = vec![Vec::new(); count];
    for path in paths {
        let text = std::fs::read_to_string(path).map_err(|e| EvalError::io("read", path, e))?;
        let rows: Vec<serde_json::Value> = match serde_json::from_str(&text) {
            Ok(serde_json::Value::Array(rows)) => rows,
            _ => text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(serde_json::from_str)
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| {
                    EvalError::data(path, format!("neither a JSON array nor JSON Lines: {e}"))
                })?,
        };
        if rows.len() < count {
            return Err(EvalError::data(
                path,
                format!(
                    "has {} outputs; the benchmark has {count} items",
                    rows.len()
                ),
            ));
        }
        for (i, (slot, row)) in out.iter_mut().zip(&rows).enumerate() {
            let value = row.get("output").or_else(|| row.get("text"));
            match (value, nulls) {
                (Some(serde_json::Value::String(text)), _) => slot.push(text.clone()),
                (Some(serde_json::Value::Null), NullReferences::AsNone) => slot.push("None".into()),
                (Some(serde_json::Value::Null), NullReferences::Skip) => {}
                _ => {
                    return Err(EvalError::data(
                        path,
                        format!("record {i} has no `output` (or `text`) string"),
                    ))
                }
            }
        }
    }
    Ok(out)
}

/// Answers every item of the benchmark not already answered in `opts.out`, then writes the
/// official output file from everything answered so far.
pub async fn generate(
    opts: &GenerateOptions,
    generator: &Generator,
    tick: impl FnMut(&Tick),
) -> Result<Generated> {
    if opts.force_temperature.is_some() && opts.bench != Bench::MtBench {
        return Err(EvalError::Invalid(
            "--force-temperature applies to mt_bench; use --temperature for the other benchmarks"
                .into(),
        ));
    }
    if opts.temperature.is_some() && opts.bench == Bench::MtBench {
        return Err(EvalError::Invalid(
            "mt_bench takes each category's temperature; use --force-temperature for one temperature".into(),
        ));
    }
    if opts.bench == Bench::MtBench && !opts.reference_paths.is_empty() {
        return Err(EvalError::Invalid(
            "--reference-paths applies to single-turn benchmarks (alpaca_eval, flask); MT-Bench's second turn needs fresh proposals".into(),
        ));
    }
    match opts.bench {
        Bench::AlpacaEval => {
            let bench = AlpacaEval::open(&opts.data, opts.limit)?;
            generate_with(&bench, opts, generator, tick).await
        }
        Bench::MtBench => {
            let bench = MtBench::open(&opts.data, opts.limit, opts.force_temperature)?;
            generate_with(&bench, opts, generator, tick).await
        }
        Bench::Flask => {
            let bench = Flask::open(&opts.data, opts.limit)?;
            generate_with(&bench, opts, generator, tick).await
        }
    }
}

async fn generate_with<B: Benchmark>(
    bench: &B,
    opts: &GenerateOptions,
    generator: &Generator,
    tick: impl FnMut(&Tick),
) -> Result<Generated> {
    let mut tasks = bench.tasks();
    if let Some(t) = opts.temperature {
        for task in &mut tasks {
            task.temperature = Some(t);
        }
    }
    if !opts.reference_paths.is_empty() {
        let references = load_references(&opts.reference_paths, tasks.len(), opts.null_references)?;
        for (task, refs) in tasks.iter_mut().zip(references) {
            task.references = Some(refs);
        }
    }
    let info = RunInfo {
        bench: opts.bench,
        name: opts.name.clone(),
        outputs: outputs_path(opts.bench, &opts.name),
    };
    if let Ok(existing) = RunInfo::load(&opts.out) {
        if existing.bench != info.bench || existing.name != info.name {
            return Err(EvalError::Invalid(format!(
                "{} holds the {} run {:?}; choose another --out for {} {:?}",
                opts.out.display(),
                existing.bench,
                existing.name,
                info.bench,
                info.name
            )));
        }
    }
    info.save(&opts.out)?;
    let journal_path = opts.out.join(GENERATION_JOURNAL);
    let mut done = runner::latest(Journal::<Answer>::load(&journal_path)?);
    let mut journal = Journal::open(&journal_path)?;
    let stopped = match opts.batch {
        Some(poll) => {
            let log = opts.out.join(GENERATION_BATCHES);
            batch::generate(
                &tasks,
                generator,
                &mut journal,
                &mut done,
                &log,
                poll,
                opts.budget,
                tick,
            )
            .await?
        }
        None => {
            runner::run(
                &tasks,
                opts.parallel,
                opts.budget,
                &mut journal,
                &mut done,
                |task| generator.answer(task),
                tick,
            )
            .await?
        }
    };
    let outputs = opts.out.join(&info.outputs);
    let answered = bench.write_outputs(&done, &opts.name, &outputs)?;
    let failed = runner::pending(&tasks, &done)
        .iter()
        .map(|t| {
            let error = done
                .get(&t.key)
                .and_then(|a| a.error.clone())
                .unwrap_or_else(|| "not run".into());
            (t.key.clone(), error)
        })
        .collect();
    Ok(Generated {
        outputs,
        total: tasks.len(),
        answered,
        failed,
        stopped,
    })
}

/// A benchmark's numbers for one run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "bench", rename_all = "snake_case")]
pub enum Metrics {
    AlpacaEval(alpaca::WinRate),
    MtBench(mt_bench::Scores),
    Flask { skills: Vec<flask::SkillScore> },
}

/// `results.json`: one run judged.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Results {
    pub name: String,
    pub judge: String,
    /// Items judged successfully, and items still failing (rerun to retry them).
    pub judged: usize,
    pub failed: usize,
    /// US dollars spent on judging, over every run of the judge on this folder.
    pub judge_cost: f64,
    pub metrics: Metrics,
    /// The job budget that stopped judging early, if one did (the metrics cover `judged`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
}

impl Results {
    pub fn load(dir: &Path) -> Result<Self> {
        let path = if dir.is_file() {
            dir.to_path_buf()
        } else {
            dir.join(RESULTS)
        };
        let text = std::fs::read_to_string(&path).map_err(|e| EvalError::io("read", &path, e))?;
        serde_json::from_str(&text).map_err(|e| EvalError::data(&path, e.to_string()))
    }
}

pub struct JudgeOptions {
    pub data: PathBuf,
    /// The run folder: reads `run.json` unless `outputs` is given; receives the judgments.
    pub out: PathBuf,
    /// Judge this output file instead of a generated run (e.g. published outputs).
    pub outputs: Option<(Bench, PathBuf, String)>,
    pub limit: Option<usize>,
    pub parallel: usize,
    /// AlpacaEval's `df_gamed.csv` for the LC win rate (default: `<data>/alpaca_eval/df_gamed.csv`
    /// when present).
    pub lc_data: Option<PathBuf>,
    /// The judging job's limits; it stops starting items once reached.
    pub budget: runner::JobBudget,
    /// Judge through the provider's batch API, checking on the batch this often.
    pub batch: Option<std::time::Duration>,
    /// AlpacaEval: judge each comparison in both orders (position bias).
    pub both_orders: bool,
}

/// Judges a run's answers (those not already judged by this judge), writes the judge's files in
/// the benchmark's format and `results.json`.
pub async fn judge(opts: &JudgeOptions, judge: &Judge, tick: impl FnMut(&Tick)) -> Result<Results> {
    let (bench, outputs, name) = match &opts.outputs {
        Some((bench, path, name)) => (*bench, path.clone(), name.clone()),
        None => {
            let info = RunInfo::load(&opts.out).map_err(|e| {
                EvalError::Invalid(format!(
                    "{e}\n(judge a generated run folder, or name an output file with --outputs and --bench)"
                ))
            })?;
            (info.bench, opts.out.join(&info.outputs), info.name)
        }
    };
    if opts.both_orders && bench != Bench::AlpacaEval {
        return Err(EvalError::Invalid(format!(
            "--both-orders applies to alpaca_eval's pairwise judge; {bench} grades one answer at a time"
        )));
    }
    match bench {
        Bench::AlpacaEval => {
            let mut bench = AlpacaEval::open(&opts.data, opts.limit)?
                .with_lc_data(opts.lc_data.clone())
                .with_both_orders(opts.both_orders);
            judge_with(&mut bench, opts, judge, &outputs, &name, tick).await
        }
        Bench::MtBench => {
            let mut bench = MtBench::open(&opts.data, opts.limit, None)?;
            judge_with(&mut bench, opts, judge, &outputs, &name, tick).await
        }
        Bench::Flask => {
            let mut bench = Flask::open(&opts.data, opts.limit)?;
            judge_with(&mut bench, opts, judge, &outputs, &name, tick).await
        }
    }
}

async fn judge_with<B: Benchmark>(
    bench: &mut B,
    opts: &JudgeOptions,
    judge: &Judge,
    outputs: &Path,
    name: &str,
    tick: impl FnMut(&Tick),
) -> Result<Results> {
    let items = bench.judge_items(&opts.data, outputs)?;
    let journal_path = opts
        .out
        .join("judgments")
        .join(format!("{}.jsonl", safe_name(&judge.name)));
    let mut done = runner::latest(Journal::<Judgment>::load(&journal_path)?);
    let mut journal = Journal::open(&journal_path)?;
    let bench = &*bench;
    let stopped = match opts.batch {
        Some(poll) => {
            let log = journal_path.with_extension("batches.jsonl");
            batch::judge(
                bench,
                &items,
                judge,
                &mut journal,
                &mut done,
                &log,
                poll,
                opts.budget,
                tick,
            )
            .await?
        }
        None => {
            runner::run(
                &items,
                opts.parallel,
                opts.budget,
                &mut journal,
                &mut done,
                |item| judge.grade(bench, item),
                tick,
            )
            .await?
        }
    };
    let names = Names {
        run: name,
        judge: &judge.name,
    };
    let metrics = bench.finish(&items, &done, &names, &opts.out)?;
    let remaining = runner::pending(&items, &done).len();
    let total = items.len();
    let results = Results {
        name: name.to_string(),
        judge: judge.name.clone(),
        judged: total - remaining,
        failed: remaining,
        // Folded from +0.0: an empty f64 sum is −0.0, printed "$-0.0000".
        judge_cost: done.values().filter_map(|j| j.cost).fold(0.0, |a, c| a + c),
        metrics,
        stopped,
    };
    let text =
        serde_json::to_string_pretty(&results).map_err(|e| EvalError::Invalid(e.to_string()))?;
    crate::write_file(&opts.out.join(RESULTS), text.as_bytes())?;
    Ok(results)
}
