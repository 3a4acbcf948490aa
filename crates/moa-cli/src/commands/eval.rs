//! `moa eval`: download benchmark data, generate answers with a preset or model, judge them,
//! and report. The work itself is `moa-eval`'s; this module resolves flags, config and
//! providers, draws progress, and turns Ctrl-C into a clean stop (every finished item is
//! already in the run's journal).

use std::path::{Path, PathBuf};

use moa_eval::generate::Generator;
use moa_eval::judge::Judge;
use moa_eval::pipeline::{self, GenerateOptions, JudgeOptions, NullReferences, Results};
use moa_eval::report::{self, Entry};
use moa_eval::sources::{self, Fetched};
use moa_eval::Bench;

use crate::cli::{
    EvalCommand, EvalCompareArgs, EvalData, EvalDownloadArgs, EvalGenerateArgs, EvalJudgeArgs,
    EvalReportArgs, NullReferencesArg,
};
use crate::commands::engine;
use crate::commands::progress::{until_interrupted, Progress};
use crate::config::{self, Config, Flags, Settings};

pub async fn run(config: Option<&Path>, command: EvalCommand) -> anyhow::Result<()> {
    match command {
        EvalCommand::Download(args) => download(args).await,
        EvalCommand::Generate(args) => generate(config, args).await,
        EvalCommand::Judge(args) => judge(config, args).await,
        EvalCommand::Report(args) => report(args),
        EvalCommand::Compare(args) => compare(args),
    }
}

fn compare(args: EvalCompareArgs) -> anyhow::Result<()> {
    let load = |dir: &Path| {
        moa_eval::compare::Items::load(dir)
            .map_err(|e| anyhow::anyhow!("{e}\n(compare two folders judged by `moa eval judge`)"))
    };
    let (a, b) = (load(&args.a)?, load(&args.b)?);
    let c = moa_eval::compare::compare(&a, &b, args.resamples.max(1), args.seed)?;
    match args.json {
        true => println!("{}", serde_json::to_string_pretty(&c)?),
        false => print!("{}", moa_eval::compare::describe(&c)),
    }
    Ok(())
}

fn bench(name: &str) -> anyhow::Result<Bench> {
    Bench::from_name(name).ok_or_else(|| {
        anyhow::anyhow!("unknown benchmark `{name}`; one of: alpaca_eval, mt_bench, flask")
    })
}

fn data_dir(data: &EvalData) -> anyhow::Result<PathBuf> {
    if let Some(dir) = &data.data {
        return Ok(dir.clone());
    }
    if let Some(dir) = crate::env::lookup(crate::env::MOA_EVAL_DATA) {
        return Ok(PathBuf::from(dir));
    }
    directories::ProjectDirs::from("", "", "moa")
        .map(|d| d.cache_dir().join("eval-data"))
        .ok_or_else(|| anyhow::anyhow!("no user cache dir; pass --data DIR"))
}

async fn download(args: EvalDownloadArgs) -> anyhow::Result<()> {
    let data = data_dir(&args.data)?;
    let benches = if args.bench.is_empty() {
        Bench::ALL.to_vec()
    } else {
        args.bench
            .iter()
            .map(|b| bench(b))
            .collect::<anyhow::Result<_>>()?
    };
    for b in benches {
        sources::download(b, &data, args.mirror.as_deref(), |source, fetched| {
            let path = data.join(source.path);
            match fetched {
                Fetched::Present => crate::ui::note!("{b}: {} is already here", path.display()),
                Fetched::Downloaded { bytes } => {
                    crate::ui::note!("{b}: {} ({bytes} bytes)", path.display())
                }
                Fetched::Skipped { reason } => crate::ui::note!(
                    "{b}: skipped optional {} ({reason}); without it there is no LC win rate",
                    source.path
                ),
            }
        })
        .await?;
    }
    println!("{}", data.display());
    Ok(())
}

async fn generate(config_path: Option<&Path>, args: EvalGenerateArgs) -> anyhow::Result<()> {
    let bench = bench(&args.bench)?;
    let config = Config::load(config_path)?;
    let flags = Flags {
        timeout: args.timeout,
        policy: args.policy.flags(),
        ..Flags::default()
    };
    let settings = Settings::resolve(&config, &flags)?;
    let preset = match (&args.preset, &args.model) {
        (_, Some(model)) => super::single_model(model)?,
        (Some(name), None) => config::apply_flags(config.preset(name)?, &flags)?,
        (None, None) => config::apply_flags(config.preset(&settings.preset)?, &flags)?,
    };
    let registry = config.registry()?;
    crate::local::register(&registry);
    let moa = engine(&registry, &preset, &settings.options)?;
    let timed = [
        ("quorum", preset.policy.quorum.is_some()),
        ("deadline", preset.policy.deadline.is_some()),
    ];
    if let Some((key, _)) = timed.iter().find(|(_, set)| args.batch.batch && *set) {
        eprintln!(
            "moa: note: --batch waits for every call of a layer; preset {}'s `{key}` does not apply",
            preset.name
        );
    }
    // The reference's generator settings unless --preset-sampling (a --temperature for
    // MT-Bench is refused by the pipeline: its temperatures are per category).
    let (max_tokens, temperature) = match args.preset_sampling {
        true => (args.max_tokens, None),
        false => (
            Some(args.max_tokens.unwrap_or(bench.reference_max_tokens())),
            args.temperature.or(bench.reference_temperature()),
        ),
    };
    let generator = Generator::new(moa).with_max_tokens(max_tokens);
    let name = args.name.clone().unwrap_or_else(|| match bench {
        Bench::AlpacaEval => moa_eval::alpaca::generator_name(&preset.aggregator.model),
        _ => preset.name.clone(),
    });
    let options = GenerateOptions {
        bench,
        data: data_dir(&args.data)?,
        out: args.out.clone(),
        name: name.clone(),
        reference_paths: args.reference_paths.clone(),
        limit: args.limit,
        parallel: args.parallel,
        force_temperature: args.force_temperature,
        temperature,
        null_references: match args.null_references {
            NullReferencesArg::None => NullReferences::AsNone,
            NullReferencesArg::Skip => NullReferences::Skip,
        },
        budget: args.job_budget.budget(),
        batch: args.batch.poll(),
    };
    let progress = Progress::new(format!("{bench} · {name}"));
    let generated = until_interrupted(
        pipeline::generate(&options, &generator, |tick| progress.show(tick)),
        &progress,
        &args.out,
    )
    .await?;
    eprintln!(
        "{} of {} answered · outputs: {}",
        generated.answered,
        generated.total,
        generated.outputs.display()
    );
    println!("{}", generated.outputs.display());
    if let Some(limit) = &generated.stopped {
        anyhow::bail!(
            "stopped at {limit}: {} of {} items answered; rerun the same command with a larger \
             budget to go on from there",
            generated.answered,
            generated.total
        );
    }
    if !generated.failed.is_empty() {
        let (key, error) = &generated.failed[0];
        anyhow::bail!(
            "{} items have no answer (item {key}: {error}); rerun the same command to retry just those",
            generated.failed.len()
        );
    }
    Ok(())
}

async fn judge(config_path: Option<&Path>, args: EvalJudgeArgs) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    let flags = Flags {
        timeout: args.timeout,
        ..Flags::default()
    };
    let settings = Settings::resolve(&config, &flags)?;
    let outputs = match (&args.outputs, &args.bench) {
        (Some(path), Some(b)) => {
            let name = args.name.clone().unwrap_or_else(|| {
                path.parent()
                    .and_then(|p| p.file_name())
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "model".into())
            });
            Some((bench(b)?, path.clone(), name))
        }
        _ => None,
    };
    let bench_of_run = match &outputs {
        Some((b, _, _)) => *b,
        None => pipeline::RunInfo::load(&args.out)
            .map_err(|e| {
                anyhow::anyhow!(
                    "{e}\n(judge a folder made by `moa eval generate`, or name a file with --outputs and --bench)"
                )
            })?
            .bench,
    };
    let judge_name = args
        .judge
        .clone()
        .unwrap_or_else(|| bench_of_run.default_judge().to_string());
    let model = moa_core::ModelRef::parse(&judge_name)
        .map_err(|e| anyhow::anyhow!("--judge {judge_name}: {e}"))?;
    let registry = config.registry()?;
    crate::local::register(&registry);
    // Checks the judge's API key and fetches a local judge, as for any run.
    engine(
        &registry,
        &super::single_model(&judge_name)?,
        &settings.options,
    )?;
    let provider = registry.provider(&model.provider)?;
    let judge = Judge::new(
        judge_name.clone(),
        provider,
        model.model,
        settings.options.prices.clone(),
        settings.options.timeout,
    );
    let options = JudgeOptions {
        data: data_dir(&args.data)?,
        out: args.out.clone(),
        outputs,
        limit: args.limit,
        parallel: args.parallel,
        lc_data: args.lc_data.clone(),
        budget: args.job_budget.budget(),
        batch: args.batch.poll(),
        both_orders: args.both_orders,
    };
    let progress = Progress::new(format!("{bench_of_run} · judge {judge_name}"));
    let results = until_interrupted(
        pipeline::judge(&options, &judge, |tick| progress.show(tick)),
        &progress,
        &args.out,
    )
    .await?;
    print!(
        "{}",
        report::table(&[Entry {
            label: results.name.clone(),
            results: results.clone(),
        }])
    );
    eprintln!(
        "judge cost ${:.4} · results: {}",
        results.judge_cost,
        args.out.join(pipeline::RESULTS).display()
    );
    if let Some(limit) = &results.stopped {
        anyhow::bail!(
            "stopped at {limit}: {} of {} items judged (the numbers above cover those); rerun \
             the same command with a larger budget to go on from there",
            results.judged,
            results.judged + results.failed
        );
    }
    if results.failed > 0 {
        anyhow::bail!(
            "{} items could not be judged; rerun the same command to retry just those",
            results.failed
        );
    }
    Ok(())
}

fn report(args: EvalReportArgs) -> anyhow::Result<()> {
    let mut entries = Vec::new();
    for run in &args.runs {
        let results = Results::load(run)?;
        entries.push(Entry {
            label: results.name.clone(),
            results,
        });
    }
    // Runs whose per-item files are there get intervals and the paired comparisons.
    let items: Vec<moa_eval::compare::Items> = args
        .runs
        .iter()
        .filter(|run| run.is_dir())
        .map(|run| moa_eval::compare::Items::load(run))
        .collect::<Result<_, _>>()?;
    let analysis = moa_eval::compare::Analysis::build(&items, args.resamples.max(1), args.seed)?;
    if let Some(csv) = &args.leaderboard {
        entries.extend(report::leaderboard(csv, &args.leaderboard_models)?);
    }
    if args.json {
        let results: Vec<&Results> = entries.iter().map(|e| &e.results).collect();
        let report = serde_json::json!({
            "runs": results,
            "intervals": analysis.intervals,
            "paired": analysis.paired,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report::table(&entries));
        print!("{}", analysis.text());
    }
    if let Some(path) = &args.html {
        std::fs::write(path, report::html(&entries, &analysis.text()))
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
        crate::ui::note!("report: {}", path.display());
    }
    Ok(())
}
