//! The command line: every flag of every subcommand.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use moa_core::PromptStyle;

use crate::config::Flags;

#[derive(Debug, Parser)]
#[command(
    name = "moa",
    version,
    about = "Mixture-of-Agents: several LLMs propose, later layers refine, one aggregator answers",
    after_help = "Exit codes: 0 success, 1 the run failed upstream, 2 bad usage or config, \
                  3 missing API key, 130 interrupted.\n\
                  Environment: MOA_CONFIG, MOA_PRESET, MOA_TIMEOUT, MOA_MIN_PROPOSALS, MOA_MODELS_DIR, MOA_EVAL_DATA, MOA_SERVER_API_KEY, \
                  MOA_LOG, OPENAI_BASE_URL, OLLAMA_HOST, NO_COLOR, and each provider's API key \
                  variable (see `moa providers`)."
)]
pub struct Cli {
    /// Config file to use (default: ./moa.toml, then the user config dir).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Only answers and errors: no notes or progress on stderr.
    #[arg(long, short = 'q', global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// More on stderr: -v each retry and why, -vv every HTTP request too (method, URL,
    /// status, time; never a body, a header or a key).
    #[arg(long, short = 'v', global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Answer one prompt with MoA, streaming the final answer to stdout.
    Ask(Box<AskArgs>),
    /// Chat with MoA, turn after turn (multi-turn as the reference's bot.py).
    Chat(Box<ChatArgs>),
    /// Serve the presets as models behind an OpenAI-compatible API.
    Serve(ServeArgs),
    /// Measure presets and single models over a prompt set: latency, first token, tokens, cost.
    Bench(BenchArgs),
    /// Reproduce the paper's evaluations: AlpacaEval 2.0, MT-Bench and FLASK.
    Eval {
        #[command(subcommand)]
        command: EvalCommand,
    },
    /// List the presets (built-in and from the config) with their layers and models.
    Presets(PresetsArgs),
    /// List the providers, their endpoints and API key variables.
    Providers {
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Past runs of `ask` and `chat` (kept unless --no-log or `log = false`): list them, show one.
    Logs {
        #[command(subcommand)]
        command: Option<LogsCommand>,
    },
    /// Print a shell completion script: `moa completions bash > ~/.local/share/bash-completion/completions/moa`.
    Completions {
        /// bash, zsh, fish, powershell or elvish.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `moa man > ~/.local/share/man/man1/moa.1`; or `--dir` for
    /// one page per subcommand too.
    Man {
        /// Write moa.1, moa-ask.1, ... into this directory instead.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Local models: list them, or fetch one.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// Config files: which one is read, the settings in effect, a commented example, trust.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Where moa looks for its config, in order, and which file it reads.
    Path,
    /// The settings in effect: the file read over the built-in defaults, secrets redacted.
    Show,
    /// Write a commented example config to the user config file (or PATH).
    Init {
        /// Where to write it (default: the user config file; see `moa config path`).
        path: Option<PathBuf>,
        /// Replace a file that is already there.
        #[arg(long)]
        force: bool,
    },
    /// Open the config file in $VISUAL or $EDITOR (writing the example first if there is none).
    Edit,
    /// Trust a moa.toml found in a working directory, as it is now, to set provider endpoints,
    /// key variables and headers (a changed file is untrusted again).
    Trust {
        /// The file (default: ./moa.toml).
        path: Option<PathBuf>,
    },
    /// Take that trust back.
    Untrust {
        /// The file (default: ./moa.toml).
        path: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum LogsCommand {
    /// The most recent runs, newest first (the default).
    List {
        /// How many.
        #[arg(long, short = 'n', default_value_t = 20)]
        limit: usize,
        /// One JSON object per run, a line each.
        #[arg(long)]
        json: bool,
    },
    /// One run: its turns, or with --json every turn's trace.
    Show {
        /// The run's id (as `moa logs` lists it; a unique prefix will do), or `last`.
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Where the logs are kept.
    Path,
}

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Show the known local models and whether each is downloaded.
    List {
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Download a known model (checked against its sha256) into the models directory.
    Pull {
        /// The model's name, e.g. smollm2.
        name: String,
    },
}

/// How a run is shaped; shared by every command that runs MoA.
#[derive(Debug, Args, Clone)]
pub struct RunArgs {
    /// Preset to run (see `moa presets`).
    #[arg(long, short = 'p')]
    pub preset: Option<String>,
    /// Proposer models for every proposer layer, provider:model, comma-separated or repeated.
    /// `--reference-models` is the reference's spelling.
    #[arg(
        long,
        visible_alias = "reference-models",
        value_delimiter = ',',
        value_name = "MODELS"
    )]
    pub proposers: Option<Vec<String>>,
    /// Aggregator model (provider:model); with --layers 1, the one model that answers.
    #[arg(long, value_name = "MODEL")]
    pub aggregator: Option<String>,
    /// One model answers alone (provider:model), as `--aggregator M --layers 1`; with
    /// --proposers, --layers or --rounds it is the aggregator (the reference's `--model`).
    #[arg(long, short = 'm', value_name = "MODEL", conflicts_with = "aggregator")]
    pub model: Option<String>,
    /// MoA layers counting the aggregator's (2 = one proposer layer, the reference's rounds=1).
    #[arg(long, value_name = "N")]
    pub layers: Option<usize>,
    /// Proposer layers, as the reference counts them (= layers - 1).
    #[arg(long, value_name = "N", conflicts_with = "layers")]
    pub rounds: Option<usize>,
    /// Sampling temperature for every agent.
    #[arg(long, short = 't', value_parser = non_negative)]
    pub temperature: Option<f64>,
    /// Output token limit for every agent.
    #[arg(long)]
    pub max_tokens: Option<u32>,
    /// Fail a layer when fewer proposers than this answer [default: 1].
    #[arg(long, value_name = "N")]
    pub min_proposals: Option<usize>,
    /// Seconds one model call may take, retries included; 0 for no limit [default: 600].
    #[arg(long, value_name = "SECS", value_parser = non_negative)]
    pub timeout: Option<f64>,
    /// How references are written for the next layer: reference (exactly as the original MoA) or tagged.
    #[arg(long, value_parser = prompt_style)]
    pub prompt_style: Option<PromptStyle>,
    #[command(flatten)]
    pub policy: PolicyArgs,
}

/// How a run trades completeness for latency and spend (see the README's "Fast and cheap
/// runs").
#[derive(Clone, Debug, Default, Args)]
pub struct PolicyArgs {
    /// A proposer layer completes once N proposers have answered (and --grace has passed);
    /// the rest are cancelled [default: all].
    #[arg(long, value_name = "N")]
    pub quorum: Option<usize>,
    /// Seconds late proposers may still finish once the quorum is in [default: 0].
    #[arg(long, value_name = "SECS", value_parser = non_negative, requires = "quorum")]
    pub grace: Option<f64>,
    /// When every answer of a layer is the same (white space and case aside), answer with it
    /// and skip the aggregator.
    #[arg(long)]
    pub early_exit: bool,
    /// When the aggregator fails, answer with the first proposal of the last layer instead.
    #[arg(long)]
    pub fallback: bool,
    /// US dollars a run may cost at most: every call's max_tokens keeps it within.
    #[arg(long, value_name = "USD", value_parser = non_negative)]
    pub max_cost: Option<f64>,
    /// Tokens, prompt and answer, a run's calls may use together.
    #[arg(long, value_name = "N")]
    pub max_tokens_total: Option<u64>,
    /// Seconds a run may take: layers and aggregator share it evenly.
    #[arg(long, value_name = "SECS", value_parser = positive)]
    pub deadline: Option<f64>,
    /// The most tokens a proposer may write (its answer is a reference).
    #[arg(long, value_name = "N")]
    pub reference_max_tokens: Option<u32>,
    /// Self-MoA-Seq: the aggregator reads references W at a time, carrying its synthesis on.
    #[arg(long, value_name = "W")]
    pub aggregate_window: Option<usize>,
}

/// A whole job's limits (`eval generate`, `eval judge`, `bench`): over every item, earlier runs
/// included.
#[derive(Clone, Debug, Default, Args)]
pub struct JobBudgetArgs {
    /// Stop starting items once the job has cost about this many US dollars (items in flight
    /// finish); rerun with a larger budget to go on.
    #[arg(long, value_name = "USD", value_parser = non_negative)]
    pub job_max_cost: Option<f64>,
    /// Stop starting items once the job has used about this many tokens.
    #[arg(long, value_name = "N")]
    pub job_max_tokens: Option<u64>,
}

/// `--batch` and `--batch-poll` (`eval generate`, `eval judge`).
#[derive(Clone, Debug, Default, Args)]
pub struct BatchArgs {
    /// Go through the providers' batch APIs (OpenAI, Anthropic; half the price, answers within
    /// 24 hours). Judging: one batch of every pending item. Generating: one batch per provider
    /// for each proposer layer of every pending item, then one for the aggregators. Stopping
    /// and rerunning picks the same batches up again.
    #[arg(long)]
    pub batch: bool,
    /// Seconds between checks on a batch.
    #[arg(long, value_name = "SECS", default_value_t = 30.0, value_parser = non_negative)]
    pub batch_poll: f64,
}

impl BatchArgs {
    /// How often to check on a batch, when going through batches.
    pub fn poll(&self) -> Option<std::time::Duration> {
        self.batch
            .then(|| std::time::Duration::from_secs_f64(self.batch_poll))
    }
}

impl JobBudgetArgs {
    pub fn budget(&self) -> moa_eval::runner::JobBudget {
        moa_eval::runner::JobBudget {
            max_cost: self.job_max_cost,
            max_tokens: self.job_max_tokens,
        }
    }
}

impl PolicyArgs {
    pub fn flags(&self) -> moa_core::PolicyChanges {
        let secs = |s: f64| Duration::try_from_secs_f64(s).unwrap_or(Duration::MAX);
        moa_core::PolicyChanges {
            quorum: self.quorum,
            grace: self.grace.map(secs),
            early_exit: self.early_exit.then_some(true),
            fallback: self.fallback.then_some(true),
            max_cost: self.max_cost,
            max_tokens_total: self.max_tokens_total,
            deadline: self.deadline.map(secs),
            reference_max_tokens: self.reference_max_tokens,
            aggregate_window: self.aggregate_window,
        }
    }
}

/// The layer count the shape flags ask for: `--model` alone is one model answering alone;
/// `--rounds` counts proposer layers, as the reference does.
fn layers(
    model: bool,
    proposers: &Option<Vec<String>>,
    layers: Option<usize>,
    rounds: Option<usize>,
) -> Option<usize> {
    let layers = layers.or(rounds.map(|r| r + 1));
    if model && proposers.is_none() && layers.is_none() {
        return Some(1);
    }
    layers
}

impl RunArgs {
    /// The flags as a settings layer.
    pub fn flags(&self) -> Flags {
        Flags {
            preset: self.preset.clone(),
            proposers: self.proposers.clone(),
            aggregator: self.model.clone().or_else(|| self.aggregator.clone()),
            layers: layers(
                self.model.is_some(),
                &self.proposers,
                self.layers,
                self.rounds,
            ),
            temperature: self.temperature,
            max_tokens: self.max_tokens,
            min_proposals: self.min_proposals,
            timeout: self.timeout,
            prompt_style: self.prompt_style,
            policy: self.policy.flags(),
        }
    }
}

#[derive(Debug, Args)]
pub struct AskArgs {
    /// The prompt (quoting optional: the words are joined). Piped input is read too: alone it is
    /// the prompt, after a prompt it is appended as context. `-` reads only stdin.
    #[arg(num_args = 0.., value_name = "PROMPT")]
    pub prompt: Vec<String>,
    #[command(flatten)]
    pub run: RunArgs,
    /// Print each proposer's answer to stderr as it finishes, with model and latency.
    #[arg(long)]
    pub show_proposals: bool,
    /// Print the whole trace as one JSON object instead of streaming the answer.
    #[arg(long)]
    pub json: bool,
    /// A system message to put before the prompt.
    #[arg(long, value_name = "TEXT")]
    pub system: Option<String>,
    /// The answer's format: `json` asks for one JSON object, checked and repaired once.
    #[arg(long, value_name = "FORMAT", value_parser = ["text", "json"])]
    pub response_format: Option<String>,
    /// A JSON Schema file the answer must validate against (checked, repaired once, an error
    /// if it still does not).
    #[arg(long, value_name = "FILE", conflicts_with = "response_format")]
    pub response_schema: Option<std::path::PathBuf>,
    /// A JSON file of tools in OpenAI's `tools` shape the aggregator may call; its calls are
    /// printed as JSON lines (and are in the `--json` trace).
    #[arg(long, value_name = "FILE")]
    pub tools: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub log: LogArgs,
}

/// Whether a run is kept for `moa logs` and `chat --continue`.
#[derive(Clone, Debug, Default, Args)]
pub struct LogArgs {
    /// Keep no record of this run (see `moa logs`; `log = false` in the config for always).
    #[arg(long)]
    pub no_log: bool,
}

#[derive(Debug, Args)]
pub struct ChatArgs {
    /// The same shape and policy flags as `ask`.
    #[command(flatten)]
    pub run: RunArgs,
    /// A system message before the conversation.
    #[arg(long, value_name = "TEXT")]
    pub system: Option<String>,
    /// Print each turn's whole trace as one JSON line instead of the answer (piped chats).
    #[arg(long)]
    pub json: bool,
    /// Go on with the most recent chat (its turns are the history the models see).
    #[arg(long = "continue", short = 'c', conflicts_with = "resume")]
    pub continue_last: bool,
    /// Go on with the chat of this id (see `moa logs`; a unique prefix will do).
    #[arg(long, value_name = "ID")]
    pub resume: Option<String>,
    #[command(flatten)]
    pub log: LogArgs,
    /// Proposers see the conversation so far (the default).
    #[arg(long, overrides_with = "no_multi_turn")]
    pub multi_turn: bool,
    /// Every turn stands alone.
    #[arg(long, overrides_with = "multi_turn")]
    pub no_multi_turn: bool,
    /// Print each proposer's answer as it finishes (stderr).
    #[arg(long)]
    pub show_proposals: bool,
}

/// How `moa serve` writes its log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on; the default only accepts this machine.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 8787)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` from clients. Prefer MOA_SERVER_API_KEY or
    /// --api-key-file: a key on the command line is visible to every user of the machine.
    #[arg(long, value_name = "KEY")]
    pub api_key: Option<String>,
    /// Read the key clients must send from this file (its first line).
    #[arg(long, value_name = "PATH", conflicts_with = "api_key")]
    pub api_key_file: Option<std::path::PathBuf>,
    /// Serve a non-loopback address without a key (anyone who can reach it spends your keys).
    #[arg(long)]
    pub insecure_no_auth: bool,
    /// Host names clients may use to reach the server, besides localhost and the bound
    /// address (comma-separated; `*` for any).
    #[arg(long, value_delimiter = ',', value_name = "HOSTS")]
    pub allowed_hosts: Vec<String>,
    /// Web page origins allowed to call the API from a browser (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "ORIGINS")]
    pub allowed_origins: Vec<String>,
    /// Connections open at once; more wait until one closes.
    #[arg(long, default_value_t = 4096, value_name = "N")]
    pub max_connections: usize,
    /// Seconds a client may take to send a request's headers (and its body), and an idle
    /// connection is kept.
    #[arg(long, default_value_t = 30.0, value_name = "SECS", value_parser = non_negative)]
    pub header_timeout: f64,
    /// Count nothing for /metrics (which then answers 404).
    #[arg(long)]
    pub no_metrics: bool,
    /// Serve no playground page at / (which then answers 404); the API is unchanged.
    #[arg(long)]
    pub no_ui: bool,
    /// Log each request's last message (first 2,000 characters); prompts are never logged
    /// otherwise.
    #[arg(long)]
    pub log_prompts: bool,
    /// Log lines on stderr as text (`human`) or one JSON object each (`json`); levels from
    /// RUST_LOG (default `info`: one access line per request, one line per finished stream).
    #[arg(long, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    /// Refuse requests that change their preset (`moa.proposers`, `moa.layers`, ...; 403):
    /// clients then run only these presets, with their models and at their cost.
    #[arg(long)]
    pub fixed_presets: bool,
    /// Serve only these presets (comma-separated); default: every preset whose keys are set.
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    pub presets: Vec<String>,
    /// MoA runs at once; more get 429.
    #[arg(long, default_value_t = 1024, value_name = "N")]
    pub max_concurrent: usize,
    /// Largest request body, in KiB.
    #[arg(long, default_value_t = 4096, value_name = "KIB")]
    pub max_body_kb: usize,
    /// Seconds one request may take, start to last byte (504 or an error frame after).
    #[arg(long, default_value_t = 900.0, value_name = "SECS", value_parser = positive)]
    pub request_timeout: f64,
    /// Seconds a silent stream waits between keep-alive comments (proxies cut idle streams).
    #[arg(long, default_value_t = 15.0, value_name = "SECS", value_parser = positive)]
    pub keep_alive: f64,
    /// Seconds in-flight requests get to finish after SIGTERM or Ctrl-C.
    #[arg(long, default_value_t = 30.0, value_name = "SECS", value_parser = non_negative)]
    pub grace: f64,
}

impl std::fmt::Debug for ServeArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeArgs")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("api_key_file", &self.api_key_file)
            .field("presets", &self.presets)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The prompts: a .json array or .jsonl of objects with `instruction` or `prompt` (AlpacaEval's
    /// files work as they are), or a text file with one prompt per line.
    #[arg(long, value_name = "FILE")]
    pub prompts: std::path::PathBuf,
    /// Presets to measure (comma-separated or repeated).
    #[arg(long = "preset", value_delimiter = ',', value_name = "NAMES")]
    pub presets: Vec<String>,
    /// Single models to measure, as `provider:model` (comma-separated or repeated).
    #[arg(long = "model", value_delimiter = ',', value_name = "MODELS")]
    pub models: Vec<String>,
    /// Only the first N prompts.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Prompts in flight at once, per target.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub parallel: usize,
    /// Where results, report.json and chart.svg go; rerunning with the same directory resumes.
    #[arg(long, default_value = "moa-bench", value_name = "DIR")]
    pub out: std::path::PathBuf,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Seconds one model call may take, retries included (0: no limit).
    #[arg(long, value_name = "SECS", value_parser = non_negative)]
    pub timeout: Option<f64>,
    /// The run policy of every preset measured (single models have no layers to apply it to).
    #[command(flatten)]
    pub policy: PolicyArgs,
    #[command(flatten)]
    pub job_budget: JobBudgetArgs,
}

#[derive(Debug, Args)]
pub struct PresetsArgs {
    /// Print the presets as JSON.
    #[arg(long)]
    pub json: bool,
}

fn non_negative(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(n) if n.is_finite() && n >= 0.0 => Ok(n),
        _ => Err(format!("`{text}` is not a number that is 0 or more")),
    }
}

fn positive(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(n) if n.is_finite() && n > 0.0 => Ok(n),
        _ => Err(format!("`{text}` is not a number more than 0")),
    }
}

fn prompt_style(text: &str) -> Result<PromptStyle, String> {
    PromptStyle::parse(text)
}

#[derive(Debug, Subcommand)]
pub enum EvalCommand {
    /// Fetch benchmark data (pinned to the commits of the published numbers, checksummed).
    Download(EvalDownloadArgs),
    /// Answer a benchmark with a preset or one model, into the benchmark's official format.
    Generate(EvalGenerateArgs),
    /// Grade a run's answers (or any output file) with a judge model; writes results.json.
    Judge(EvalJudgeArgs),
    /// Compare judged runs: a table, and an HTML page with charts.
    Report(EvalReportArgs),
    /// Is run A better than run B? Paired per item: the difference with a 95% bootstrap
    /// interval and a sign test.
    Compare(EvalCompareArgs),
}

#[derive(Debug, Args)]
pub struct EvalCompareArgs {
    /// A judged run folder (e.g. the MoA run).
    pub a: std::path::PathBuf,
    /// Another judged run of the same benchmark (e.g. its best single proposer).
    pub b: std::path::PathBuf,
    /// Bootstrap resamples.
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    pub resamples: usize,
    /// Seed of the resampling (the same seed gives the same interval).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub seed: u64,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The data folder option shared by the eval commands.
#[derive(Debug, Args)]
pub struct EvalData {
    /// Folder with the benchmark files, laid out as `alpaca_eval/…`, `mt_bench/…`, `flask/…`
    /// [default: $MOA_EVAL_DATA, else the user cache dir]
    #[arg(long, value_name = "DIR")]
    pub data: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct EvalDownloadArgs {
    /// Benchmarks to fetch (comma-separated): alpaca_eval, mt_bench, flask [default: all]
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    pub bench: Vec<String>,
    #[command(flatten)]
    pub data: EvalData,
    /// Fetch from this base URL instead (files at `<URL>/<path in the data folder>`).
    #[arg(long, value_name = "URL")]
    pub mirror: Option<String>,
}

#[derive(Debug, Args)]
pub struct EvalGenerateArgs {
    /// alpaca_eval, mt_bench or flask.
    #[arg(long, value_name = "NAME")]
    pub bench: String,
    /// The preset to answer with.
    #[arg(long, short = 'p', conflicts_with = "model")]
    pub preset: Option<String>,
    /// Answer with one model alone, as `provider:model`.
    #[arg(long, value_name = "MODEL")]
    pub model: Option<String>,
    /// The name recorded in the outputs (AlpacaEval's generator, FastChat's model_id)
    /// [default: for alpaca_eval `<aggregator model>-<provider>` as the reference writes it
    /// (`Qwen/Qwen1.5-72B-Chat-together`); else the preset or model]
    #[arg(long)]
    pub name: Option<String>,
    /// The run folder: answers, checkpoint and outputs; rerunning resumes.
    #[arg(long, value_name = "DIR")]
    pub out: std::path::PathBuf,
    #[command(flatten)]
    pub data: EvalData,
    /// Items answered at once.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub parallel: usize,
    /// Only the first N items.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Pre-generated proposer outputs (comma-separated files, one per proposer, in item order):
    /// only the aggregator is called, with these as its references.
    #[arg(long, value_delimiter = ',', value_name = "FILES")]
    pub reference_paths: Vec<std::path::PathBuf>,
    /// A null output in --reference-paths: `none` sends the text "None" as the reference's
    /// generators do; `skip` leaves that reference out.
    #[arg(long, value_enum, default_value = "none", value_name = "HOW")]
    pub null_references: NullReferencesArg,
    /// Cap every agent's answer [default: 2048 for alpaca_eval and flask, 1024 for mt_bench,
    /// as the reference's generators]
    #[arg(long, value_name = "N")]
    pub max_tokens: Option<u32>,
    /// alpaca_eval and flask: every agent's temperature [default: 0.7, the reference's]
    #[arg(long, value_name = "T", value_parser = non_negative, conflicts_with = "preset_sampling")]
    pub temperature: Option<f64>,
    /// Keep each agent's own temperature and max_tokens from the preset instead of the
    /// reference generators' settings (mt_bench keeps its per-category temperatures).
    #[arg(long)]
    pub preset_sampling: bool,
    /// MT-Bench: one temperature for every question instead of the per-category ones.
    #[arg(long, value_name = "T", value_parser = non_negative)]
    pub force_temperature: Option<f64>,
    /// Seconds one model call may take, retries included (0: no limit).
    #[arg(long, value_name = "SECS", value_parser = non_negative)]
    pub timeout: Option<f64>,
    #[command(flatten)]
    pub policy: PolicyArgs,
    #[command(flatten)]
    pub job_budget: JobBudgetArgs,
    #[command(flatten)]
    pub batch: BatchArgs,
}

/// `--null-references`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum NullReferencesArg {
    None,
    Skip,
}

#[derive(Debug, Args)]
pub struct EvalJudgeArgs {
    /// The run folder to judge (from `moa eval generate`), or where to put the judgments of
    /// --outputs.
    #[arg(long, value_name = "DIR")]
    pub out: std::path::PathBuf,
    /// The judge, as `provider:model` [default: the benchmark's official judge]
    #[arg(long, value_name = "MODEL")]
    pub judge: Option<String>,
    /// Judge this output file (e.g. published outputs) instead of a generated run.
    #[arg(long, value_name = "FILE", requires = "bench")]
    pub outputs: Option<std::path::PathBuf>,
    /// The benchmark of --outputs.
    #[arg(long, value_name = "NAME")]
    pub bench: Option<String>,
    /// The name of the --outputs model in reports [default: the file's folder name]
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub data: EvalData,
    /// Judge calls at once.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub parallel: usize,
    /// Only the first N items.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// AlpacaEval's df_gamed.csv (instruction difficulty) for the length-controlled win rate
    /// [default: alpaca_eval/df_gamed.csv in the data folder, when present]
    #[arg(long, value_name = "FILE")]
    pub lc_data: Option<std::path::PathBuf>,
    /// Seconds one judge call may take, retries included (0: no limit).
    #[arg(long, value_name = "SECS", value_parser = non_negative)]
    pub timeout: Option<f64>,
    #[command(flatten)]
    pub job_budget: JobBudgetArgs,
    #[command(flatten)]
    pub batch: BatchArgs,
    /// AlpacaEval: judge every comparison twice, the second time with the outputs' places
    /// traded, and report how often the verdict held (the judge's position bias). Doubles the
    /// judging cost; the headline numbers stay those of AlpacaEval's order.
    #[arg(long)]
    pub both_orders: bool,
}

#[derive(Debug, Args)]
pub struct EvalReportArgs {
    /// Judged run folders (or their results.json files). The first run of each benchmark is
    /// compared item by item with each later one: put the MoA run first, then the single
    /// proposers judged on the same items.
    #[arg(required_unless_present = "leaderboard")]
    pub runs: Vec<std::path::PathBuf>,
    /// Also write the comparison as an HTML page with charts.
    #[arg(long, value_name = "FILE")]
    pub html: Option<std::path::PathBuf>,
    /// Print JSON instead of the table.
    #[arg(long)]
    pub json: bool,
    /// AlpacaEval leaderboard CSV to take published numbers from.
    #[arg(long, value_name = "CSV", requires = "leaderboard_models")]
    pub leaderboard: Option<std::path::PathBuf>,
    /// The leaderboard's models to include (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    pub leaderboard_models: Vec<String>,
    /// Bootstrap resamples for the intervals and paired comparisons.
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    pub resamples: usize,
    /// Seed of the resampling.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub seed: u64,
}
