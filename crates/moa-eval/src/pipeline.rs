//! The two steps a user runs, per benchmark: generate answers into the official format, and
//! judge answers into metrics. Both keep a journal in the run folder and resume from it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{EvalError, Result};
use crate::generate::{Answer, Generator};
use crate::journal::Journal;
use crate::judge::{self, Judge, Judgment};
use crate::runner::{self, Item, Tick};
use crate::{alpaca, flask, lc, mt_bench, Bench, Task};

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

fn data_file(data: &Path, relative: &str, bench: Bench) -> Result<PathBuf> {
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

/// Writes the official output file from the answers so far; returns how many it holds.
type WriteOutputs = Box<dyn Fn(&HashMap<String, Answer>, &Path) -> Result<usize>>;

/// What a benchmark's generation needs besides the engine.
struct Plan {
    tasks: Vec<Task>,
    write: WriteOutputs,
}

fn plan(opts: &GenerateOptions) -> Result<Plan> {
    let name = opts.name.clone();
    let limit = opts.limit.unwrap_or(usize::MAX);
    match opts.bench {
        Bench::AlpacaEval => {
            let mut rows =
                alpaca::load_outputs(&data_file(&opts.data, alpaca::BASELINE, opts.bench)?)?;
            rows.truncate(limit);
            let tasks = alpaca::tasks(&rows);
            let write = move |done: &HashMap<String, Answer>, path: &Path| {
                let outputs: Vec<alpaca::Output> = rows
                    .iter()
                    .enumerate()
                    .filter_map(|(i, row)| {
                        let answer = done.get(&i.to_string()).filter(|a| a.ok)?;
                        Some(alpaca::Output {
                            instruction: row.instruction.clone(),
                            dataset: row.dataset.clone(),
                            output: answer.turns.first().cloned(),
                            generator: Some(name.clone()),
                        })
                    })
                    .collect();
                alpaca::write_outputs(path, &outputs)?;
                Ok(outputs.len())
            };
            Ok(Plan {
                tasks,
                write: Box::new(write),
            })
        }
        Bench::MtBench => {
            if !opts.reference_paths.is_empty() {
                return Err(EvalError::Invalid(
                    "--reference-paths applies to single-turn benchmarks (alpaca_eval, flask); MT-Bench's second turn needs fresh proposals".into(),
                ));
            }
            let mut questions =
                mt_bench::load_questions(&data_file(&opts.data, mt_bench::QUESTIONS, opts.bench)?)?;
            questions.truncate(limit);
            let tasks = mt_bench::tasks(&questions, opts.force_temperature);
            let write = move |done: &HashMap<String, Answer>, path: &Path| {
                let mut lines: Vec<mt_bench::AnswerLine> = questions
                    .iter()
                    .filter_map(|q| {
                        let answer = done.get(&q.question_id.to_string()).filter(|a| a.ok)?;
                        Some(mt_bench::AnswerLine {
                            question_id: q.question_id,
                            answer_id: answer.answer_id.clone(),
                            model_id: name.clone(),
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
            };
            Ok(Plan {
                tasks,
                write: Box::new(write),
            })
        }
        Bench::Flask => {
            let mut instances =
                flask::load_instances(&data_file(&opts.data, flask::EVALUATION_SET, opts.bench)?)?;
            instances.truncate(limit);
            let tasks = flask::tasks(&instances);
            let write = move |done: &HashMap<String, Answer>, path: &Path| {
                let lines: Vec<flask::AnswerLine> = instances
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
            };
            Ok(Plan {
                tasks,
                write: Box::new(write),
            })
        }
    }
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
    let Plan { mut tasks, write } = plan(opts)?;
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
    let stopped = runner::run(
        &tasks,
        opts.parallel,
        opts.budget,
        &mut journal,
        &mut done,
        |task| generator.answer(task),
        tick,
    )
    .await?;
    let outputs = opts.out.join(&info.outputs);
    let answered = write(&done, &outputs)?;
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
    let journal_path = opts
        .out
        .join("judgments")
        .join(format!("{}.jsonl", safe_name(&judge.name)));
    let mut done = runner::latest(Journal::<Judgment>::load(&journal_path)?);
    let mut journal = Journal::open(&journal_path)?;
    let limit = opts.limit.unwrap_or(usize::MAX);
    let (metrics, total, remaining) = match bench {
        Bench::AlpacaEval => {
            let baseline = alpaca::load_outputs(&data_file(&opts.data, alpaca::BASELINE, bench)?)?;
            let model: HashMap<String, String> = alpaca::load_outputs(&outputs)?
                .into_iter()
                .filter_map(|o| Some((o.instruction, o.output?)))
                .collect();
            let items: Vec<judge::Comparison> = baseline
                .iter()
                .take(limit)
                .enumerate()
                .filter_map(|(index, row)| {
                    Some(judge::Comparison {
                        index,
                        instruction: row.instruction.clone(),
                        baseline: row.output.clone().unwrap_or_default(),
                        model: model.get(&row.instruction)?.clone(),
                    })
                })
                .collect();
            if items.is_empty() {
                return Err(EvalError::data(
                    &outputs,
                    "no output matches an AlpacaEval instruction",
                ));
            }
            let prompt =
                alpaca::JudgePrompt::load(&data_file(&opts.data, alpaca::JUDGE_PROMPT, bench)?)?;
            let prompt = &prompt;
            runner::run(
                &items,
                opts.parallel,
                runner::JobBudget::default(),
                &mut journal,
                &mut done,
                |c| judge::alpaca(judge, prompt, c),
                tick,
            )
            .await?;
            let lc_data = match &opts.lc_data {
                Some(path) => Some(lc::LcData::load(path)?),
                None => {
                    let default = opts.data.join(alpaca::LC_DATA);
                    default
                        .is_file()
                        .then(|| lc::LcData::load(&default))
                        .transpose()?
                }
            };
            let metrics = alpaca_metrics(
                &items,
                &done,
                &name,
                &judge.name,
                &opts.out,
                lc_data.as_ref(),
            )?;
            let remaining = runner::pending(&items, &done).len();
            (metrics, items.len(), remaining)
        }
        Bench::MtBench => {
            let questions =
                mt_bench::load_questions(&data_file(&opts.data, mt_bench::QUESTIONS, bench)?)?;
            let prompts = mt_bench::load_judge_prompts(&data_file(
                &opts.data,
                mt_bench::JUDGE_PROMPTS,
                bench,
            )?)?;
            let references = mt_bench::load_reference_answers(&data_file(
                &opts.data,
                mt_bench::REFERENCE_ANSWERS,
                bench,
            )?)?;
            let answers: HashMap<u64, Vec<String>> = mt_bench::load_answers(&outputs)?
                .into_iter()
                .filter_map(|a| Some((a.question_id, a.choices.into_iter().next()?.turns)))
                .collect();
            let items: Vec<judge::Turn> = questions
                .iter()
                .take(limit)
                .filter_map(|q| Some((q, answers.get(&q.question_id)?)))
                .flat_map(|(q, a)| {
                    let references = &references;
                    (1..=q.turns.len()).map(move |turn| judge::Turn {
                        question: q.clone(),
                        answers: a.clone(),
                        turn,
                        reference: references.get(&q.question_id).cloned(),
                    })
                })
                .collect();
            if items.is_empty() {
                return Err(EvalError::data(
                    &outputs,
                    "no answer matches an MT-Bench question",
                ));
            }
            let prompts = &prompts;
            runner::run(
                &items,
                opts.parallel,
                runner::JobBudget::default(),
                &mut journal,
                &mut done,
                |t| judge::mt_bench(judge, prompts, t),
                tick,
            )
            .await?;
            let metrics = mt_bench_metrics(&items, &done, &name, &judge.name, &opts.out)?;
            let remaining = runner::pending(&items, &done).len();
            (metrics, items.len(), remaining)
        }
        Bench::Flask => {
            let instances =
                flask::load_instances(&data_file(&opts.data, flask::EVALUATION_SET, bench)?)?;
            let reviewer = flask::Reviewer::load(
                &data_file(&opts.data, flask::PROMPTS, bench)?,
                &data_file(&opts.data, flask::SKILLS, bench)?,
            )?;
            let answers: HashMap<u64, String> = flask::load_answers(&outputs)?
                .into_iter()
                .map(|a| (a.question_id, a.text))
                .collect();
            let items: Vec<judge::Review> = instances
                .into_iter()
                .take(limit)
                .filter_map(|instance| {
                    let response = answers.get(&instance.idx)?.clone();
                    Some(judge::Review { instance, response })
                })
                .collect();
            if items.is_empty() {
                return Err(EvalError::data(
                    &outputs,
                    "no answer matches a FLASK instance",
                ));
            }
            let reviewer = &reviewer;
            runner::run(
                &items,
                opts.parallel,
                runner::JobBudget::default(),
                &mut journal,
                &mut done,
                |item| judge::flask(judge, reviewer, item),
                tick,
            )
            .await?;
            let reviews: Vec<_> = items
                .iter()
                .filter_map(|item| current(&done, item)?.scores.clone())
                .collect();
            let skills = flask::aggregate(&reviews);
            write_flask_files(&items, &done, &skills, &opts.out)?;
            let remaining = runner::pending(&items, &done).len();
            (Metrics::Flask { skills }, items.len(), remaining)
        }
    };
    let results = Results {
        name,
        judge: judge.name.clone(),
        judged: total - remaining,
        failed: remaining,
        judge_cost: done.values().filter_map(|j| j.cost).sum(),
        metrics,
    };
    let text =
        serde_json::to_string_pretty(&results).map_err(|e| EvalError::Invalid(e.to_string()))?;
    crate::write_file(&opts.out.join(RESULTS), text.as_bytes())?;
    Ok(results)
}

fn alpaca_metrics(
    items: &[judge::Comparison],
    done: &HashMap<String, Judgment>,
    name: &str,
    judge_name: &str,
    out: &Path,
    lc_data: Option<&lc::LcData>,
) -> Result<Metrics> {
    let mut preferences = Vec::new();
    let mut lengths = Vec::new();
    let mut comparisons = Vec::new();
    let mut annotations = Vec::new();
    for item in items {
        let Some(j) = current(done, item) else {
            continue;
        };
        let Some(preference) = j.preference else {
            continue;
        };
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
            generator_2: name.to_string(),
            annotator: alpaca::annotator(judge_name, j.weighted == Some(true)),
            preference: Some(preference),
            raw_completion: Some(j.text.clone()),
        });
    }
    let text = serde_json::to_string_pretty(&annotations)
        .map_err(|e| EvalError::Invalid(e.to_string()))?;
    crate::write_file(&out.join("annotations.json"), text.as_bytes())?;
    let mut win = alpaca::win_rate(&preferences, &lengths);
    win.length_controlled_winrate =
        lc_data.and_then(|d| lc::length_controlled_winrate(&comparisons, d));
    Ok(Metrics::AlpacaEval(win))
}

fn mt_bench_metrics(
    items: &[judge::Turn],
    done: &HashMap<String, Judgment>,
    name: &str,
    judge_name: &str,
    out: &Path,
) -> Result<Metrics> {
    let judge_model = mt_bench::judge_model(judge_name);
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
            model: name.to_string(),
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
        &out.join(mt_bench::judgment_file(judge_name)),
        lines.as_bytes(),
    )?;
    Ok(Metrics::MtBench(mt_bench::scores(&triples)))
}

/// The successful judgment of `item` as it is now (not of an earlier version of its content).
fn current<'a, T: Item>(done: &'a HashMap<String, Judgment>, item: &T) -> Option<&'a Judgment> {
    done.get(&item.key())
        .filter(|j| j.ok && j.hash == item.hash())
}

fn write_flask_files(
    items: &[judge::Review],
    done: &HashMap<String, Judgment>,
    skills: &[flask::SkillScore],
    out: &Path,
) -> Result<()> {
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
    for s in skills {
        csv.push_str(&format!("{},{},{},{}\n", s.skill, s.score, s.count, s.avg));
    }
    crate::write_file(&out.join("skill_scores.csv"), csv.as_bytes())
}
