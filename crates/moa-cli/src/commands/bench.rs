//! `moa bench`: resolves the targets (presets and single models) and the prompt set, then runs
//! `moa-eval`'s prompt-set benchmark on the evaluation runner and writes its report and chart.
//! Every record lands in `results.jsonl` as it finishes, so a killed run resumes where it
//! stopped.

use std::path::Path;

use moa_eval::journal::Journal;
use moa_eval::prompt_set::{self, chart, prompts, Report, Target};

use crate::cli::BenchArgs;
use crate::commands::engine;
use crate::commands::progress::{until_interrupted, Progress};
use crate::config::{self, Config, Flags, Settings};

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
    let mut done = prompt_set::load_records(&args.out)?;
    let mut journal = Journal::open(&args.out.join(prompt_set::RESULTS))?;
    let mut stopped = None;
    for which in 0..targets.len() {
        let name = &targets[which].name;
        let measured = (0..prompts.len())
            .filter(|&i| {
                done.get(&prompt_set::key(name, i))
                    .is_some_and(|r| r.ok && r.prompt_hash == moa_eval::fnv1a(&prompts[i]))
            })
            .count();
        if measured > 0 {
            eprintln!(
                "{name}: {measured} of {} prompts already measured in {}; running the other {}",
                prompts.len(),
                journal.path().display(),
                prompts.len() - measured
            );
        }
        let progress = Progress::new(name.clone());
        let journal_path = journal.path().to_path_buf();
        stopped = until_interrupted(
            prompt_set::run_target(
                &targets,
                which,
                &prompts,
                args.parallel,
                args.job_budget.budget(),
                &mut journal,
                &mut done,
                |tick| progress.show(tick),
            ),
            &progress,
            &journal_path,
        )
        .await?;
        if stopped.is_some() {
            break;
        }
    }
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
            journal.path().display(),
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
