//! What the run policy buys on a heavy-tailed upstream: time to the answer's first token (p50,
//! p90, p99), references kept, tokens and cost, for the reference's wait-for-all, quorum 3
//! of 4 with a short grace, early exit, and one model alone, over the same simulated upstream.
//!
//! `cargo bench -p moa-core --bench policy` (add `-- --runs N`; default 1000).
//!
//! The upstream is the testkit's scripted provider on tokio's paused clock: every call waits a
//! lognormal time before answering (median 1 s, sigma 0.8), and the fourth proposer is 10 s
//! later than that one call in ten. Simulated time costs nothing, so a thousand runs take well
//! under a second and every figure is exact for the model; it measures the engine's policy, not
//! a network. The same seed gives every configuration the same draws per run and call. An
//! answer arrives in one piece after its delay, so the aggregator's generation time is not
//! modelled: the figure is the time to its first token, which the policy decides.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use moa_core::{
    AgentSpec, CallStatus, Message, Moa, Plan, Preset, PresetError, PromptStyle, Provider,
    RunEvent, RunOptions, RunPolicy,
};
use moa_testkit::{Reply, ScriptedProvider};

const PROPOSERS: [&str; 4] = [
    "together:Qwen/Qwen2.5-72B-Instruct-Turbo",
    "together:meta-llama/Llama-3.3-70B-Instruct-Turbo",
    "together:mistralai/Mixtral-8x22B-Instruct-v0.1",
    "together:databricks/dbrx-instruct",
];
const AGGREGATOR: &str = "together:Qwen/Qwen2.5-72B-Instruct-Turbo";
/// Share of prompts whose proposers all give the same short answer (a number, a name): where
/// early exit can apply. An assumption of this model, not a measurement; real rates depend on
/// the prompt set.
const AGREEING_PROMPTS: f64 = 0.2;

/// A splitmix64 stream: deterministic draws without a dependency.
fn draw(seed: u64) -> f64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// Seconds a call waits: lognormal with median 1 s and sigma 0.8 (Box-Muller on two draws).
fn lognormal(seed: u64) -> f64 {
    let (u1, u2) = (draw(seed).max(1e-12), draw(seed ^ 0x5555));
    let normal = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
    (0.8 * normal).exp()
}

/// The same upstream for every configuration: the delay of call `slot` of run `run`.
fn delay(run: u64, slot: u64) -> Duration {
    let mut secs = lognormal(run * 16 + slot);
    if slot == 3 && draw(run * 16 + 99) < 0.1 {
        secs += 10.0;
    }
    Duration::from_secs_f64(secs)
}

fn provider(run: Arc<AtomicU64>) -> ScriptedProvider {
    let p = ScriptedProvider::new("together");
    p.respond_with(move |r| {
        let run = run.load(Ordering::Relaxed);
        let is_aggregator = r
            .messages()
            .first()
            .is_some_and(|(role, _)| role == "system");
        let slot = match is_aggregator {
            true => 4,
            false => PROPOSERS
                .iter()
                .position(|m| m.ends_with(&r.model))
                .unwrap_or(0) as u64,
        };
        let agree = draw(run * 16 + 77) < AGREEING_PROMPTS;
        let text = match (is_aggregator, agree) {
            (true, _) => "The synthesis.".to_string(),
            (false, true) => "391".to_string(),
            (false, false) => format!("Proposal from {}.", r.model),
        };
        Reply::text(text)
            .with_delay(delay(run, slot))
            .with_usage(400, 300)
    });
    p
}

fn preset(policy: RunPolicy, single: bool) -> Preset {
    let layers = match single {
        true => Vec::new(),
        false => vec![PROPOSERS.iter().map(|m| AgentSpec::new(*m)).collect()],
    };
    Preset {
        name: "together".into(),
        description: String::new(),
        layers,
        aggregator: AgentSpec::new(AGGREGATOR),
        prompt_style: PromptStyle::Reference,
        policy,
    }
}

struct Sample {
    ttft: f64,
    references: usize,
    tokens: u64,
    cost: f64,
}

async fn measure(name: &str, preset: Preset, runs: u64) -> Vec<Sample> {
    let run = Arc::new(AtomicU64::new(0));
    let scripted: Arc<dyn Provider> = Arc::new(provider(run.clone()));
    let plan = Plan::bind(&preset, |_| Ok::<_, PresetError>(scripted.clone()))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let options = RunOptions {
        timeout: None,
        ..RunOptions::default()
    };
    let moa = Moa::new(plan, options);
    let mut samples = Vec::new();
    for i in 0..runs {
        run.store(i, Ordering::Relaxed);
        let started = tokio::time::Instant::now();
        let mut ttft = None;
        let mut stream = moa.run(vec![Message::user("What is 17 * 23?")]);
        while let Some(event) = stream.next().await {
            match event.unwrap_or_else(|e| panic!("{name}: {e}")) {
                RunEvent::AggregatorDelta { .. } if ttft.is_none() => {
                    ttft = Some(started.elapsed().as_secs_f64());
                }
                RunEvent::Done(trace) => {
                    let references = trace.layers.first().map_or(0, |l| {
                        l.calls
                            .iter()
                            .filter(|c| c.status == CallStatus::Ok)
                            .count()
                    });
                    samples.push(Sample {
                        ttft: ttft.unwrap_or_default(),
                        references,
                        tokens: trace.usage.total_tokens,
                        cost: trace.cost.unwrap_or_default(),
                    });
                }
                _ => {}
            }
        }
    }
    samples
}

fn quantile(values: &mut [f64], q: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let i = ((values.len() - 1) as f64 * q).round() as usize;
    values[i]
}

fn report(name: &str, samples: &[Sample]) {
    let mut ttft: Vec<f64> = samples.iter().map(|s| s.ttft).collect();
    let mut refs: Vec<f64> = samples.iter().map(|s| s.references as f64).collect();
    let n = samples.len() as f64;
    let tokens = samples.iter().map(|s| s.tokens).sum::<u64>() as f64 / n;
    let cost = samples.iter().map(|s| s.cost).sum::<f64>() / n;
    let min_refs = refs.iter().copied().fold(f64::INFINITY, f64::min);
    println!(
        "| {name} | {:.2} / {:.2} / {:.2} | {:.0} (min {:.0}) | {tokens:.0} | ${:.5} |",
        quantile(&mut ttft, 0.5),
        quantile(&mut ttft, 0.9),
        quantile(&mut ttft, 0.99),
        quantile(&mut refs, 0.5),
        min_refs,
        cost
    );
}

fn main() {
    let runs = std::env::args()
        .skip_while(|a| a != "--runs")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000u64);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    let quorum = RunPolicy {
        quorum: Some(3),
        grace: Duration::from_millis(500),
        ..RunPolicy::default()
    };
    let configurations = [
        (
            "wait for all (reference)",
            preset(RunPolicy::default(), false),
        ),
        ("quorum 3 of 4, grace 0.5 s", preset(quorum.clone(), false)),
        (
            "quorum 3 of 4, grace 0.5 s, early exit",
            preset(
                RunPolicy {
                    early_exit: true,
                    ..quorum
                },
                false,
            ),
        ),
        ("one model alone", preset(RunPolicy::default(), true)),
    ];
    println!("{runs} runs; simulated upstream time, p50 / p90 / p99\n");
    println!("| configuration | time to first token, s | references (median) | tokens per run | cost per run |");
    println!("|---|---|---|---|---|");
    for (name, preset) in configurations {
        let samples = runtime.block_on(measure(name, preset, runs));
        report(name, &samples);
    }
}
