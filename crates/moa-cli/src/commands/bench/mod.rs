//! `moa bench`: runs a prompt set through presets and single models with bounded concurrency,
//! appends every result to `results.jsonl` as it lands (so a killed run resumes where it
//! stopped), and reports latency, time to first token, tokens and cost per target as a table,
//! JSON and an SVG chart of cost against latency.

mod chart;
mod prompts;
mod report;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt;
use moa_core::{Message, Moa, RunEvent};
use moa_eval::journal::Journal;
use moa_eval::runner::{Gate, Tick};
use serde::{Deserialize, Serialize};

use crate::cli::BenchArgs;
use crate::commands::engine;
use crate::commands::progress::Progress;
use crate::config::{self, Config, Flags, Settings};
use crate::exit::Interrupted;

use report::Report;

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

impl Record {
    /// Tokens the run used, prompt and answer (for the job's token budget).
    pub fn tokens(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }
}

/// FNV-1a of the prompt: stable across runs and platforms.
fn prompt_hash(prompt: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in prompt.bytes() {
        hash ^= byte as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// What is measured: a preset as configured, or one model called alone.
struct Target {
    name: String,
    moa: Moa,
}

const RESULTS: &str = "results.jsonl";

/// The records already in `dir`, latest per (target, index). A line cut short by a kill is
/// skipped.
pub fn load_records(dir: &Path) -> anyhow::Result<HashMap<(String, usize), Record>> {
    Ok(Journal::<Record>::load(&dir.join(RESULTS))?
        .into_iter()
        .map(|r| ((r.target.clone(), r.index), r))
        .collect())
}

/// Runs one prompt and measures it.
async fn measure(target: &Target, index: usize, prompt: &str) -> Record {
    let started = Instant::now();
    let mut run = target.moa.run(vec![Message::user(prompt)]);
    let mut ttft = None;
    let mut record = Record {
        target: target.name.clone(),
        index,
        prompt_hash: prompt_hash(prompt),
        ok: false,
        latency_ms: 0,
        ttft_ms: None,
        prompt_tokens: 0,
        completion_tokens: 0,
        cost: None,
        error: None,
        answer: String::new(),
    };
    while let Some(event) = run.next().await {
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

/// Measures every prompt of `target` not already done, `parallel` at a time.
async fn run_target(
    target: &Target,
    prompts: &[String],
    parallel: usize,
    gate: &Arc<Mutex<Gate>>,
    done: &mut HashMap<(String, usize), Record>,
    sink: &mut Journal<Record>,
) -> anyhow::Result<()> {
    let pending: Vec<usize> = (0..prompts.len())
        .filter(|&i| {
            !done
                .get(&(target.name.clone(), i))
                .is_some_and(|r| r.ok && r.prompt_hash == prompt_hash(&prompts[i]))
        })
        .collect();
    let total = prompts.len();
    let mut finished = total - pending.len();
    if finished > 0 {
        eprintln!(
            "{}: {finished} of {total} prompts already measured in {}; running the other {}",
            target.name,
            sink.path().display(),
            pending.len()
        );
    }
    let progress = Progress::new(target.name.clone());
    let started = Instant::now();
    let mut failed = 0;
    let mut fresh = 0;
    let mut cost: f64 = done
        .values()
        .filter(|r| r.target == target.name && r.ok)
        .filter_map(|r| r.cost)
        .sum();
    let starts = gate.clone();
    let mut results = futures::stream::iter(pending)
        .take_while(move |_| {
            let start = starts.lock().is_ok_and(|mut g| g.may_start());
            futures::future::ready(start)
        })
        .map(|i| measure(target, i, &prompts[i]))
        .buffer_unordered(parallel.max(1));
    let tick = |finished, fresh, failed, cost, failure| Tick {
        done: finished,
        total,
        fresh,
        failed,
        cost,
        elapsed_secs: started.elapsed().as_secs_f64(),
        failure,
    };
    progress.show(&tick(finished, fresh, failed, cost, None));
    loop {
        let record = tokio::select! {
            record = results.next() => match record {
                Some(record) => record,
                None => break,
            },
            _ = tokio::signal::ctrl_c() => {
                progress.end();
                eprintln!("moa: interrupted; rerun the same command to resume from {}", sink.path().display());
                return Err(Interrupted.into());
            }
        };
        if let Ok(mut g) = gate.lock() {
            g.finished(record.cost.unwrap_or(0.0), record.tokens());
        }
        sink.append(&record)?;
        finished += 1;
        fresh += 1;
        let mut failure = None;
        if record.ok {
            cost += record.cost.unwrap_or(0.0);
        } else {
            failed += 1;
            let error = record.error.as_deref().unwrap_or("unknown error");
            failure = Some((format!("prompt {}", record.index), error.to_string()));
        }
        done.insert((record.target.clone(), record.index), record);
        progress.show(&tick(finished, fresh, failed, cost, failure));
    }
    progress.end();
    Ok(())
}

/// The targets named on the command line, each checked and bound before anything runs.
fn targets(config: &Config, settings: &Settings, args: &BenchArgs) -> anyhow::Result<Vec<Target>> {
    if args.presets.is_empty() && args.models.is_empty() {
        anyhow::bail!("nothing to measure: name presets with --preset and/or models with --model");
    }
    let registry = config.registry()?;
    crate::local::register(&registry);
    let mut out = Vec::new();
    for name in &args.presets {
        let flags = Flags {
            policy: args.policy.flags(),
            ..Flags::default()
        };
        let preset = config::apply_flags(config.preset(name)?, &flags)?;
        out.push(Target {
            name: preset.name.clone(),
            moa: engine(&registry, &preset, &settings.options)?,
        });
    }
    for model in &args.models {
        let preset = super::single_model(model)?;
        out.push(Target {
            name: model.clone(),
            moa: engine(&registry, &preset, &settings.options)?,
        });
    }
    Ok(out)
}

pub async fn run(config_path: Option<&Path>, args: BenchArgs) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    let flags = Flags {
        timeout: args.timeout,
        ..Flags::default()
    };
    let settings = Settings::resolve(&config, &flags)?;
    let mut prompts = prompts::load(&args.prompts)?;
    if let Some(limit) = args.limit {
        prompts.truncate(limit);
    }
    let targets = targets(&config, &settings, &args)?;
    let mut done = load_records(&args.out)?;
    let mut sink = Journal::open(&args.out.join(RESULTS))?;
    // The job budget counts every measured run, earlier invocations included.
    let spent: f64 = done.values().filter(|r| r.ok).filter_map(|r| r.cost).sum();
    let tokens: u64 = done.values().map(Record::tokens).sum();
    let gate = Arc::new(Mutex::new(Gate::new(
        args.job_budget.budget(),
        spent,
        tokens,
    )));
    for target in &targets {
        run_target(target, &prompts, args.parallel, &gate, &mut done, &mut sink).await?;
    }
    let stopped = gate.lock().ok().and_then(|g| g.reached.clone());
    let names: Vec<String> = targets.iter().map(|t| t.name.clone()).collect();
    let report = Report::build(&names, prompts.len(), &done, &prompts);
    let report_path = args.out.join("report.json");
    std::fs::write(&report_path, serde_json::to_string_pretty(&report)?)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", report_path.display()))?;
    let chart_path = args.out.join("chart.svg");
    std::fs::write(&chart_path, chart::svg(&report))
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", chart_path.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
        eprintln!(
            "results: {} · report: {} · chart: {}",
            sink.path().display(),
            report_path.display(),
            chart_path.display()
        );
    }
    if let Some(limit) = stopped {
        let measured = done.values().filter(|r| r.ok).count();
        anyhow::bail!(
            "stopped at {limit}: {measured} of {} runs measured; rerun the same command with a \
             larger budget to go on from there",
            prompts.len() * targets.len()
        );
    }
    let failed: usize = report.targets.iter().map(|t| t.failed).sum();
    if failed > 0 {
        anyhow::bail!("{failed} prompt runs failed; rerun the same command to retry just those");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_hashes_are_stable_and_tell_prompts_apart() {
        assert_eq!(prompt_hash(""), "cbf29ce484222325");
        assert_eq!(prompt_hash("a"), "af63dc4c8601ec8c");
        assert_ne!(prompt_hash("ab"), prompt_hash("ba"));
    }
}
