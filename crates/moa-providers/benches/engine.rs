//! The engine's own cost: CPU per 5-call MoA run (4 proposers + aggregator) and runs per second,
//! against an in-process zero-latency provider and against the fake OpenAI server on loopback.
//!
//! `cargo bench -p moa-providers --bench engine` (add `-- --quick` for a short run).
//! CPU time comes from /proc/self/task/*/schedstat, split by thread name, so the fake
//! upstream's work is reported apart from moa's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use moa_core::{
    AgentSpec, BoxChunkStream, ChatRequest, Chunk, Message, Moa, Plan, Preset, PresetError,
    PromptStyle, Provider, RunEvent, RunOptions, Usage,
};
use moa_providers::{Endpoint, Registry};
use moa_testkit::{FakeOpenAi, Reply};

const CLIENT: &str = "moa-client";
const UPSTREAM: &str = "fake-upstream";

use moa_testkit::measure::thread_cpu_ns as cpu_ns;

/// Answers at once with a fixed text in a few deltas: only the engine's cost remains.
struct InstantProvider;

impl Provider for InstantProvider {
    fn name(&self) -> &str {
        "instant"
    }

    fn stream(&self, _request: ChatRequest) -> BoxChunkStream {
        let mut chunks: Vec<Result<Chunk, moa_core::ProviderError>> =
            ["A proposal ", "with a few ", "words in it."]
                .iter()
                .map(|t| Ok(Chunk::Delta(t.to_string())))
                .collect();
        chunks.push(Ok(Chunk::Finished {
            finish_reason: Some("stop".into()),
            usage: Some(Usage {
                prompt_tokens: 20,
                completion_tokens: 8,
                total_tokens: 28,
                cached_tokens: 0,
            }),
        }));
        futures::stream::iter(chunks).boxed()
    }
}

fn preset(provider: &str) -> Preset {
    Preset {
        name: "bench".into(),
        description: String::new(),
        layers: vec![(0..4)
            .map(|i| {
                AgentSpec::new(format!("{provider}:proposer-{i}"))
                    .with_temperature(0.7)
                    .with_max_tokens(512)
            })
            .collect()],
        aggregator: AgentSpec::new(format!("{provider}:aggregator")),
        prompt_style: PromptStyle::Reference,
        policy: Default::default(),
    }
}

async fn one_run(moa: &Moa) -> usize {
    let messages = vec![Message::user("What are 3 fun things to do in SF?")];
    let events: Vec<RunEvent> = moa.run(messages).try_collect().await.unwrap_or_default();
    assert!(
        matches!(events.last(), Some(RunEvent::Done(_))),
        "a run failed"
    );
    events.len()
}

fn runtime(name: &'static str, workers: usize) -> tokio::runtime::Runtime {
    let builder = &mut if workers == 0 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    builder
        .thread_name(name)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"))
}

struct Measure {
    runs: usize,
    wall: Duration,
    client_ns: u64,
    upstream_ns: u64,
}

impl Measure {
    fn row(&self, what: &str, concurrency: usize) -> String {
        let per_run_us = |ns: u64| ns as f64 / self.runs as f64 / 1000.0;
        format!(
            "| {what} | {concurrency} | {} | {:.0} | {:.1} | {} |",
            self.runs,
            self.runs as f64 / self.wall.as_secs_f64(),
            per_run_us(self.client_ns),
            if self.upstream_ns > 0 {
                format!("{:.1}", per_run_us(self.upstream_ns))
            } else {
                "-".into()
            },
        )
    }
}

/// Runs `runs` MoA runs, `concurrency` at a time, on the client runtime.
fn drive(client: &tokio::runtime::Runtime, moa: &Moa, runs: usize, concurrency: usize) -> Measure {
    let (c0, u0, t0) = (cpu_ns(CLIENT), cpu_ns(UPSTREAM), Instant::now());
    client.block_on(async {
        let handles: Vec<_> = (0..concurrency)
            .map(|w| {
                let moa = moa.clone();
                let share = runs / concurrency + usize::from(w < runs % concurrency);
                tokio::spawn(async move {
                    for _ in 0..share {
                        one_run(&moa).await;
                    }
                })
            })
            .collect();
        for h in handles {
            h.await.unwrap_or_else(|e| panic!("worker: {e}"));
        }
    });
    Measure {
        runs,
        wall: t0.elapsed(),
        client_ns: cpu_ns(CLIENT) - c0,
        upstream_ns: cpu_ns(UPSTREAM) - u0,
    }
}

fn in_process(size: &Sizes) -> Vec<String> {
    let provider: Arc<dyn Provider> = Arc::new(InstantProvider);
    let plan = Plan::bind(&preset("instant"), |_| {
        Ok::<_, PresetError>(provider.clone())
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let moa = Moa::new(plan, RunOptions::default());
    let mut rows = Vec::new();
    // One thread, one run at a time: the pure CPU cost of a run. A current-thread runtime runs
    // on its caller, so the caller gets the client's name.
    let single = moa.clone();
    let sizes = *size;
    let row = std::thread::Builder::new()
        .name(CLIENT.into())
        .spawn(move || {
            let rt = runtime(CLIENT, 0);
            drive(&rt, &single, sizes.warmup, 1);
            drive(&rt, &single, sizes.in_process_single, 1).row("in-process, 1 thread", 1)
        })
        .and_then(|t| {
            t.join()
                .map_err(|_| std::io::Error::other("bench thread panicked"))
        })
        .unwrap_or_else(|e| panic!("{e}"));
    rows.push(row);
    let multi = runtime(CLIENT, 2);
    drive(&multi, &moa, size.warmup, 64);
    rows.push(drive(&multi, &moa, size.in_process_multi, 256).row("in-process, 2 threads", 256));
    rows
}

fn loopback(size: &Sizes) -> Vec<String> {
    let upstream = runtime(UPSTREAM, 1);
    let fake = upstream.block_on(FakeOpenAi::start());
    let answer: String = "Here is one idea among several worth considering. ".repeat(8);
    fake.respond_with(move |_| {
        Reply::text(answer.clone())
            .with_chunk_chars(24)
            .with_usage(30, 80)
    });
    let mut registry = Registry::new(Arc::new(|_| None));
    let mut endpoint = Endpoint::custom("fake", &fake.base_url());
    endpoint.max_concurrency = 0;
    registry.insert_endpoint(endpoint);
    let moa = Moa::new(
        registry
            .bind(&preset("fake"))
            .unwrap_or_else(|e| panic!("{e}")),
        RunOptions::default(),
    );
    let client = runtime(CLIENT, 1);
    let mut rows = Vec::new();
    drive(&client, &moa, size.warmup, 16); // connections, allocator
    rows.push(drive(&client, &moa, size.loopback_single, 1).row("loopback fake, sequential", 1));
    rows.push(drive(&client, &moa, size.loopback_multi, 64).row("loopback fake, concurrent", 64));
    let requests = fake.requests().len();
    drop(fake);
    drop(client);
    drop(upstream);
    eprintln!("(the fake served {requests} requests)");
    rows
}

/// How many runs each measurement makes.
#[derive(Clone, Copy)]
struct Sizes {
    warmup: usize,
    in_process_single: usize,
    in_process_multi: usize,
    loopback_single: usize,
    loopback_multi: usize,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo bench` passes --bench; `cargo test --all-targets` does not: then a smoke run.
    let full = args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--quick");
    let size = if full {
        Sizes {
            warmup: 1000,
            in_process_single: 20_000,
            in_process_multi: 50_000,
            loopback_single: 500,
            loopback_multi: 5000,
        }
    } else {
        Sizes {
            warmup: 10,
            in_process_single: 100,
            in_process_multi: 256,
            loopback_single: 10,
            loopback_multi: 64,
        }
    };
    println!("| setup | concurrent runs | runs | runs/s | moa CPU µs/run | upstream CPU µs/run |");
    println!("|---|---|---|---|---|---|");
    let mut rows = in_process(&size);
    rows.extend(loopback(&size));
    for row in rows {
        println!("{row}");
    }
}
