//! Local model speed, beside llama.cpp in the same run: prefill at 128/512/1024 tokens,
//! generation at a short and a 2k context, three sequences batched, model load, and a whole
//! local MoA run (moa batching the proposers; llama.cpp doing the same calls one after another),
//! for every moa kernel this CPU runs. Engines are measured in turns, round after round, so drift
//! in the machine's speed falls on all alike; the best round counts.
//!
//! ```text
//! cargo bench -p moa-local --bench local [-- --rounds 3] [--model FILE.gguf] [--kernels all]
//! ```
//!
//! The peer is llama-cpp-python running scripts/llamacpp_peer.py, found as `MOA_BENCH_PYTHON`
//! or the workspace's `.venv/bin/python` (see docs/BENCHMARKS.md for the one install command);
//! without it only moa's columns are printed. The model is SmolLM2 from MOA_MODELS_DIR or the
//! user cache (fetched on first use) unless `--model` names a file.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use moa_core::{
    inject_references, Message, Moa, Plan, Preset, PresetError, PromptStyle, Provider, Reference,
    RunEvent, RunOptions,
};
use moa_local::batch::PREFILL_CHUNK;
use moa_local::kernels::{self, Kernel};
use moa_local::model::{Cache, Model};
use moa_local::sampler::argmax;
use moa_local::LocalProvider;
use serde_json::{json, Value};

mod common;

type Error = Box<dyn std::error::Error>;

const PREFILLS: [usize; 3] = [128, 512, 1024];
/// (context, tokens generated after it)
const DECODES: [(usize, usize); 2] = [(32, 128), (2048, 64)];
const BATCH: (usize, usize, usize) = (256, 3, 128);
/// Whole local MoA runs: (question, every answer generated to its max_tokens). Sampled answers
/// differ in length between engines; the fixed-length run (end-of-turn tokens banned on both
/// sides, 3 × 200 proposer tokens and 300 aggregator tokens) compares the same work.
const RUNS: [(&str, bool); 3] = [
    ("What is the capital of France?", false),
    ("Give me three tips for sleeping better.", false),
    ("Give me three tips for sleeping better.", true),
];

/// One engine's figures for one round (or the best over rounds).
#[derive(Clone, Default)]
struct Figures {
    load: f64,
    /// Seconds per prefill in PREFILLS.
    prefill: Vec<f64>,
    /// Seconds per decode in DECODES.
    decode: Vec<f64>,
    batch: f64,
    /// (wall seconds, first answer token seconds, tokens generated) per question.
    runs: Vec<(f64, f64, u64)>,
}

impl Figures {
    /// The faster of two rounds, measure by measure.
    fn best(self, other: Figures) -> Figures {
        if self.prefill.is_empty() {
            return other;
        }
        let min = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(a, b)| a.min(*b)).collect();
        Figures {
            load: self.load.min(other.load),
            prefill: min(&self.prefill, &other.prefill),
            decode: min(&self.decode, &other.decode),
            batch: self.batch.min(other.batch),
            runs: self
                .runs
                .iter()
                .zip(&other.runs)
                .map(|(a, b)| if a.0 <= b.0 { *a } else { *b })
                .collect(),
        }
    }
}

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    let full = args.iter().any(|a| a == "--bench");
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let path = match flag("--model") {
        Some(path) => PathBuf::from(path),
        None => match common::smollm2(full)? {
            Some(path) => path,
            None => return Ok(()),
        },
    };
    let rounds: usize = flag("--rounds").map_or(Ok(3), |r| r.parse())?;
    let started = Instant::now();
    let model = Model::load(&path)?;
    let load = started.elapsed().as_secs_f64();
    if !full {
        // A smoke run (`cargo test --benches`): every path once, on a few tokens.
        let prompt = text_tokens(&model, 16);
        let mut cache = model.new_cache();
        model.forward(&prompt, &mut cache)?;
        model.forward_batch(&[1, 2], &mut [&mut cache.clone(), &mut cache])?;
        println!("smoke run: {} loaded in {load:.2} s", path.display());
        return Ok(());
    }
    if let Some(what) = flag("--profile") {
        // One measure alone, long enough for a profiler: `--profile decode|prefill`.
        let prompt = text_tokens(&model, if what == "prefill" { 1024 } else { 32 });
        let started = Instant::now();
        let (mut cache, mut logits) = prefill(&model, &prompt)?;
        let mut tokens = prompt.len();
        if what == "decode" {
            let started = Instant::now();
            for _ in 0..512 {
                logits = model.forward(&[argmax(&logits)], &mut cache)?;
            }
            println!(
                "{} decode: {:.1} tok/s",
                kernels::kernel().name(),
                512.0 / started.elapsed().as_secs_f64()
            );
            tokens = 512;
        }
        println!(
            "{what}: {tokens} tokens in {:.2} s",
            started.elapsed().as_secs_f64()
        );
        return Ok(());
    }
    // Every kernel but the scalar fallback (minutes per round), or `--kernels all|NAME,NAME`.
    let chosen = flag("--kernels");
    let kernels: Vec<Kernel> = Kernel::ALL
        .into_iter()
        .filter(|k| match chosen.as_deref() {
            None => *k != Kernel::Scalar,
            Some("all") => true,
            Some(names) => names.split(',').any(|n| n == k.name()),
        })
        .filter(|k| k.available())
        .collect();
    let mut peer = match Peer::start(&path) {
        Ok(peer) => Some(peer),
        Err(e) => {
            eprintln!("llama.cpp is not measured: {e}");
            None
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let preset = local_preset(&path)?;
    let provider: Arc<dyn Provider> = Arc::new(LocalProvider::new(
        path.parent().ok_or("the model path has no folder")?,
    ));

    let mut moa = vec![Figures::default(); kernels.len()];
    let mut llama = Figures::default();
    for round in 1..=rounds {
        eprintln!("round {round} of {rounds}");
        for (kernel, best) in kernels.iter().zip(moa.iter_mut()) {
            kernels::use_kernel(*kernel)?;
            let mut figures = measure_moa(&model, &runtime, &provider, &preset)?;
            figures.load = load_time(&path)?;
            *best = std::mem::take(best).best(figures);
        }
        if let Some(p) = peer.as_mut() {
            match p.measure(&model, &preset) {
                Ok(figures) => llama = llama.best(figures),
                Err(e) => {
                    eprintln!("llama.cpp failed, measured no further: {e}");
                    peer = None;
                }
            }
        }
    }
    let peer_version = peer.as_ref().map(|p| p.version.clone());
    report(&path, &kernels, &moa, peer_version.map(|v| (v, llama)));
    // What 8-bit activations cost in accuracy, against the exact f32 product: the logits
    // after a prompt and after each of 32 greedy tokens, and how likely each finds a text.
    if Kernel::Avx2F32.available() {
        println!("\n| kernel | largest logit difference from avx2-f32 (256-token prompt, then 32 greedy tokens) | same most likely token | perplexity of a 200-token English text |");
        println!("|---|---|---|---|");
        let text = model.tokenizer.encode(ACCURACY_TEXT);
        for kernel in Kernel::ALL
            .into_iter()
            .filter(|k| k.available() && *k != Kernel::Scalar)
        {
            let (drift, agree, steps) = drift(&model, &text_tokens(&model, 256), 32, kernel)?;
            let perplexity = perplexity(&model, &text, kernel)?;
            println!(
                "| {} | {drift:.3} | {agree} of {steps} | {perplexity:.3} |",
                kernel.name()
            );
        }
    }
    kernels::use_kernel(Kernel::detect())?;
    Ok(())
}

/// Plain English prose written for this bench (not from any dataset), for the likelihood.
const ACCURACY_TEXT: &str = "The village sat at the bottom of a narrow valley, where the river slowed \
down before turning east toward the sea. Every spring the snow on the mountains melted, and for a \
few weeks the water rose high enough to cover the stones by the old mill. Children were told to stay \
away from the bank, but they rarely listened. The baker opened his shop before dawn, and by the time \
the church bell rang six the smell of bread had reached the square. Farmers came down from the hills \
on market days with cheese, apples and wool, and stayed until the afternoon to talk about the weather, \
the price of feed and the new road that the council had promised for many years. Nobody believed the \
road would ever be built, yet each winter the plans were read aloud again at the meeting in the hall, \
and each winter people nodded as if they were hearing them for the first time.";

/// exp of the mean negative log-likelihood of each token of `text` given the ones before it,
/// computed with `kernel` one token at a time.
fn perplexity(model: &Model, text: &[u32], kernel: Kernel) -> Result<f64, Error> {
    kernels::use_kernel(kernel)?;
    let mut cache = model.new_cache();
    let mut logits = model.forward(&text[..1], &mut cache)?;
    let mut total = 0.0f64;
    for token in &text[1..] {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = logits.iter().map(|l| f64::from(l - max).exp()).sum();
        total -= f64::from(logits[*token as usize] - max) - sum.ln();
        logits = model.forward(&[*token], &mut cache)?;
    }
    Ok((total / (text.len() - 1) as f64).exp())
}

/// Tokens of an ordinary English text, exactly `n` of them.
fn text_tokens(model: &Model, n: usize) -> Vec<u32> {
    let text = "The quick brown fox jumps over the lazy dog. ".repeat(n / 8 + 1);
    model
        .tokenizer
        .encode(&text)
        .into_iter()
        .cycle()
        .take(n)
        .collect()
}

/// Seconds to map and parse the file (a second copy, dropped again).
fn load_time(path: &Path) -> Result<f64, Error> {
    let started = Instant::now();
    let model = Model::load(path)?;
    let seconds = started.elapsed().as_secs_f64();
    drop(model);
    Ok(seconds)
}

/// The built-in `local` preset, its agents pointed at `path`.
/// `preset` with every agent generating to its max_tokens (`ignore_eos`).
fn fixed_length(preset: &Preset) -> Preset {
    let mut preset = preset.clone();
    for agent in preset.layers.iter_mut().flatten() {
        agent.extra.insert("ignore_eos".into(), true.into());
    }
    preset
        .aggregator
        .extra
        .insert("ignore_eos".into(), true.into());
    preset
}

fn local_preset(path: &Path) -> Result<Preset, Error> {
    let mut preset = moa_core::preset::builtin("local").ok_or("no local preset")?;
    let model = format!("local:{}", path.display());
    for agent in preset.layers.iter_mut().flatten() {
        agent.model = model.clone();
    }
    preset.aggregator.model = model;
    Ok(preset)
}

/// `prompt` into a new cache in the pieces the product prefills in.
fn prefill(model: &Model, prompt: &[u32]) -> Result<(Cache, Vec<f32>), Error> {
    let mut cache = model.new_cache();
    let mut logits = Vec::new();
    for piece in prompt.chunks(PREFILL_CHUNK) {
        logits = model.forward(piece, &mut cache)?;
    }
    Ok((cache, logits))
}

fn measure_moa(
    model: &Model,
    runtime: &tokio::runtime::Runtime,
    provider: &Arc<dyn Provider>,
    preset: &Preset,
) -> Result<Figures, Error> {
    let mut figures = Figures::default();
    for n in PREFILLS {
        let prompt = text_tokens(model, n);
        let started = Instant::now();
        prefill(model, &prompt)?;
        figures.prefill.push(started.elapsed().as_secs_f64());
    }
    for (context, generate) in DECODES {
        let (mut cache, mut logits) = prefill(model, &text_tokens(model, context))?;
        let started = Instant::now();
        for _ in 0..generate {
            logits = model.forward(&[argmax(&logits)], &mut cache)?;
        }
        figures.decode.push(started.elapsed().as_secs_f64());
    }
    // Three sequences after one shared prefill, one token each per step: a layer of proposers.
    let (context, sequences, generate) = BATCH;
    let (cache, logits) = prefill(model, &text_tokens(model, context))?;
    let mut caches = vec![cache; sequences];
    let mut tokens = vec![argmax(&logits); sequences];
    let started = Instant::now();
    for _ in 0..generate {
        let mut refs: Vec<&mut Cache> = caches.iter_mut().collect();
        let all = model.forward_batch(&tokens, &mut refs)?;
        tokens = all.iter().map(|l| argmax(l)).collect();
    }
    figures.batch = started.elapsed().as_secs_f64();
    // A whole run of the local preset, as `moa ask --preset local` does it.
    let bind = |preset: &Preset| {
        Plan::bind(preset, |_| Ok::<_, PresetError>(provider.clone()))
            .map(|plan| Moa::new(plan, RunOptions::default()))
    };
    let (sampled, fixed) = (bind(preset)?, bind(&fixed_length(preset))?);
    for (question, fixed_length) in RUNS {
        let moa = if fixed_length { &fixed } else { &sampled };
        let started = Instant::now();
        let (mut first, mut tokens) = (None, 0);
        runtime.block_on(async {
            let mut stream = moa.run(vec![Message::user(question)]);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(RunEvent::AggregatorDelta { .. }) => {
                        first.get_or_insert(started.elapsed());
                    }
                    Ok(RunEvent::Done(trace)) => tokens = trace.usage.completion_tokens,
                    Ok(_) => {}
                    Err(e) => eprintln!("run failed: {e}"),
                }
            }
        });
        figures.runs.push((
            started.elapsed().as_secs_f64(),
            first.unwrap_or_default().as_secs_f64(),
            tokens,
        ));
    }
    Ok(figures)
}

/// llama-cpp-python running scripts/llamacpp_peer.py on the same file.
struct Peer {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
    version: String,
}

impl Peer {
    fn start(model: &Path) -> Result<Peer, Error> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let python = std::env::var_os("MOA_BENCH_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join(".venv/bin/python"));
        if !python.exists() {
            return Err(format!(
                "{} not found (set MOA_BENCH_PYTHON to a python with llama-cpp-python)",
                python.display()
            )
            .into());
        }
        let mut child = Command::new(&python)
            .arg(root.join("scripts/llamacpp_peer.py"))
            .arg(model)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let input = child.stdin.take().ok_or("no stdin")?;
        let output = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        let mut peer = Peer {
            child,
            input,
            output,
            version: String::new(),
        };
        let ready = peer.read()?;
        peer.version = ready["ready"]
            .as_str()
            .ok_or_else(|| format!("the peer did not start: {ready}"))?
            .to_string();
        Ok(peer)
    }

    fn read(&mut self) -> Result<Value, Error> {
        let mut line = String::new();
        if self.output.read_line(&mut line)? == 0 {
            return Err("the peer exited (see its error above)".into());
        }
        let value: Value = serde_json::from_str(&line)?;
        match value.get("error") {
            Some(e) => Err(format!("llama.cpp: {e}").into()),
            None => Ok(value),
        }
    }

    fn call(&mut self, command: Value) -> Result<Value, Error> {
        writeln!(self.input, "{command}")?;
        self.input.flush()?;
        self.read()
    }

    fn seconds(&mut self, command: Value) -> Result<f64, Error> {
        self.call(command)?["seconds"]
            .as_f64()
            .ok_or_else(|| "no seconds in the peer's answer".into())
    }

    fn measure(&mut self, model: &Model, preset: &Preset) -> Result<Figures, Error> {
        let mut figures = Figures {
            load: self.seconds(json!({"op": "load"}))?,
            ..Figures::default()
        };
        for n in PREFILLS {
            let tokens = text_tokens(model, n);
            figures
                .prefill
                .push(self.seconds(json!({"op": "prefill", "tokens": tokens}))?);
        }
        for (context, generate) in DECODES {
            let tokens = text_tokens(model, context);
            figures.decode.push(
                self.seconds(json!({"op": "decode", "tokens": tokens, "generate": generate}))?,
            );
        }
        let (context, sequences, generate) = BATCH;
        figures.batch = self
            .seconds(json!({"op": "batch", "tokens": text_tokens(model, context),
            "sequences": sequences, "generate": generate}))?;
        for (question, fixed_length) in RUNS {
            let banned = if fixed_length {
                model.tokenizer.stop.clone()
            } else {
                Vec::new()
            };
            figures
                .runs
                .push(self.sequential_run(preset, question, &banned)?);
        }
        Ok(figures)
    }

    /// The preset's flow one call after another, as the reference's script runs it: each
    /// proposer, then the aggregator with their answers injected, streamed; `banned` tokens
    /// are never generated (a logit bias of -inf).
    fn sequential_run(
        &mut self,
        preset: &Preset,
        question: &str,
        banned: &[u32],
    ) -> Result<(f64, f64, u64), Error> {
        let started = Instant::now();
        let messages = vec![Message::user(question)];
        let mut references = Vec::new();
        let mut tokens = 0;
        let chat = |agent: &moa_core::AgentSpec, messages: &[Message]| {
            json!({
                "op": "chat",
                "messages": messages.iter().map(|m| json!({"role": m.role, "content": m.content})).collect::<Vec<_>>(),
                "temperature": agent.temperature,
                "top_p": agent.extra.get("top_p"),
                "max_tokens": agent.max_tokens,
                "seed": agent.extra.get("seed"),
                "banned": banned,
            })
        };
        for agent in preset.layers.iter().flatten() {
            let answer = self.call(chat(agent, &messages))?;
            tokens += answer["completion_tokens"].as_u64().unwrap_or(0);
            references.push(Reference {
                model: agent.model.clone(),
                text: answer["text"].as_str().unwrap_or_default().to_string(),
            });
        }
        let before = started.elapsed().as_secs_f64();
        let aggregated = inject_references(&messages, &references, PromptStyle::Reference);
        let answer = self.call(chat(&preset.aggregator, &aggregated))?;
        tokens += answer["completion_tokens"].as_u64().unwrap_or(0);
        let first = before + answer["first_token"].as_f64().unwrap_or(0.0);
        Ok((started.elapsed().as_secs_f64(), first, tokens))
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The CPU's model name and the instruction sets the kernels care about.
fn machine() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let name = info
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let flags: Vec<&str> = ["avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx_vnni"]
        .into_iter()
        .filter(|f| {
            info.lines()
                .find(|l| l.starts_with("flags"))
                .is_some_and(|l| l.split_whitespace().any(|w| w == *f))
        })
        .collect();
    format!(
        "{name}, {} threads, {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        flags.join(" ")
    )
}

fn report(path: &Path, kernels: &[Kernel], moa: &[Figures], llama: Option<(String, Figures)>) {
    println!("{}", machine());
    println!("model: {}\n", path.display());
    let mut header = String::from("| measure |");
    for k in kernels {
        let default = if *k == Kernel::detect() {
            " (default)"
        } else {
            ""
        };
        header.push_str(&format!(" moa {}{default} |", k.name()));
    }
    if let Some((version, _)) = &llama {
        header.push_str(&format!(
            " llama.cpp (llama-cpp-python {version}) | best moa ÷ llama.cpp |"
        ));
    }
    println!("{header}");
    println!("{}", "|---".repeat(header.matches('|').count() - 1) + "|");
    // Each row: label, the figure from an engine's Figures, and whether higher is better.
    type Pick = Box<dyn Fn(&Figures) -> f64>;
    let mut rows: Vec<(String, Pick, &str)> =
        vec![("model load".into(), Box::new(|f: &Figures| f.load), "s")];
    for (i, n) in PREFILLS.into_iter().enumerate() {
        rows.push((
            format!("prefill, {n} tokens"),
            Box::new(move |f: &Figures| n as f64 / f.prefill[i]),
            "tok/s",
        ));
    }
    for (i, (context, generate)) in DECODES.into_iter().enumerate() {
        rows.push((
            format!("generation, {generate} tokens after {context}"),
            Box::new(move |f: &Figures| generate as f64 / f.decode[i]),
            "tok/s",
        ));
    }
    let (context, sequences, generate) = BATCH;
    rows.push((
        format!("{sequences} sequences batched, {generate} tokens each after a shared {context}"),
        Box::new(move |f: &Figures| (sequences * generate) as f64 / f.batch),
        "tok/s",
    ));
    for (i, (question, fixed_length)) in RUNS.into_iter().enumerate() {
        let run = match fixed_length {
            true => format!("local MoA run, \"{question}\", every answer to max_tokens"),
            false => format!("local MoA run, \"{question}\""),
        };
        rows.push((
            format!("{run}: whole run"),
            Box::new(move |f: &Figures| f.runs[i].0),
            "s",
        ));
        rows.push((
            format!("{run}: first answer token"),
            Box::new(move |f: &Figures| f.runs[i].1),
            "s",
        ));
        // Sampled answers differ in length between engines: time per generated token compares.
        rows.push((
            format!("{run}: whole run per generated token"),
            Box::new(move |f: &Figures| f.runs[i].0 * 1000.0 / f.runs[i].2.max(1) as f64),
            "ms",
        ));
    }
    for (label, pick, unit) in rows {
        let mut line = format!("| {label} |");
        let values: Vec<f64> = moa.iter().map(&pick).collect();
        for v in &values {
            line.push_str(&format!(" {} |", shown(*v, unit)));
        }
        if let Some((_, peer)) = &llama {
            let theirs = pick(peer);
            let ratio = match unit {
                "s" | "ms" => {
                    let best = values.iter().copied().fold(f64::INFINITY, f64::min);
                    format!("{:.2}x the time", best / theirs)
                }
                _ => {
                    let best = values.iter().copied().fold(0.0, f64::max);
                    format!("{:.2}x the speed", best / theirs)
                }
            };
            line.push_str(&format!(" {} | {ratio} |", shown(theirs, unit)));
        }
        println!("{line}");
    }
    for (k, figures) in kernels.iter().zip(moa) {
        let tokens: Vec<String> = figures.runs.iter().map(|r| r.2.to_string()).collect();
        println!(
            "\nmoa {}: tokens generated per MoA run {}",
            k.name(),
            tokens.join(", ")
        );
    }
    if let Some((_, peer)) = &llama {
        let tokens: Vec<String> = peer.runs.iter().map(|r| r.2.to_string()).collect();
        println!(
            "llama.cpp: tokens generated per MoA run {}",
            tokens.join(", ")
        );
    }
}

fn shown(value: f64, unit: &str) -> String {
    match unit {
        "s" => format!("{value:.2} s"),
        "ms" => format!("{value:.1} ms"),
        _ => format!("{value:.0} {unit}"),
    }
}

/// The largest difference between `kernel`'s logits and the exact f32 kernel's, and how often
/// their most likely token agrees, over the prompt's next token and `steps` greedy tokens after
/// it (both fed the exact kernel's tokens).
fn drift(
    model: &Model,
    prompt: &[u32],
    steps: usize,
    kernel: Kernel,
) -> Result<(f32, usize, usize), Error> {
    let (mut exact_cache, mut q8_cache) = (model.new_cache(), model.new_cache());
    kernels::use_kernel(Kernel::Avx2F32)?;
    let mut exact = model.forward(prompt, &mut exact_cache)?;
    kernels::use_kernel(kernel)?;
    let mut q8 = model.forward(prompt, &mut q8_cache)?;
    let (mut largest, mut agree) = (0.0f32, 0);
    for step in 0..=steps {
        let diff = exact
            .iter()
            .zip(&q8)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        largest = largest.max(diff);
        let next = argmax(&exact);
        agree += usize::from(next == argmax(&q8));
        if step == steps {
            break;
        }
        kernels::use_kernel(Kernel::Avx2F32)?;
        exact = model.forward(&[next], &mut exact_cache)?;
        kernels::use_kernel(kernel)?;
        q8 = model.forward(&[next], &mut q8_cache)?;
    }
    kernels::use_kernel(Kernel::detect())?;
    Ok((largest, agree, steps + 1))
}
