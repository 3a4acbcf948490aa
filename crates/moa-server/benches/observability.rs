//! What observability costs `moa serve`: the server's CPU per streamed MoA request with
//! `/metrics` counting and JSON access logging on, against both off. One process serves both
//! settings on two ports and the bursts alternate (on, off, off, on, ...), so drift in the
//! machine's speed falls on both alike; the difference is read per pair of bursts.
//!
//! A second part times the observability work alone, which the whole-server figure can only
//! bound: per request, the metrics' updates for a real run's trace (4 proposers and an
//! aggregator) and the two log lines a streamed request writes (access and run), in a loop on
//! one thread.
//!
//! `cargo bench -p moa-server --bench observability` (`-- --requests N --rounds R`; defaults
//! 200 and 10). The log lines go to /dev/null through the same JSON formatter `moa serve
//! --log-format json` uses, so formatting and the write are both counted.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moa_core::{Moa, Plan, PresetError, RunOptions, RunRequest};
use moa_server::metrics::Metrics;
use moa_server::ServerConfig;
use moa_testkit::measure::thread_cpu_ns;
use moa_testkit::{Reply, ScriptedProvider};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::Layer as _;

mod common;
use common::{arg, bench_preset, burst, client, fake_upstream, runtime, serve_bench};

/// Whether log lines are written (on for the "on" bursts only).
static LOGGING: AtomicBool = AtomicBool::new(false);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let full = args.iter().any(|a| a == "--bench");
    let requests = arg(&args, "--requests", if full { 200 } else { 10 });
    let rounds = arg(&args, "--rounds", if full { 10 } else { 2 }).max(2);

    let sink = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .unwrap_or_else(|e| panic!("/dev/null: {e}"));
    let logs = tracing_subscriber::fmt::layer()
        .json()
        .with_writer(std::sync::Mutex::new(sink))
        // Dynamic: asked at every event (a plain `filter_fn` is asked once per call site and
        // its answer kept, so the switch would not take).
        // `info` and above, as `moa serve` logs by default (RUST_LOG unset): the dependencies'
        // debug and trace events are not formatted.
        .with_filter(tracing_subscriber::filter::dynamic_filter_fn(|meta, _| {
            LOGGING.load(Ordering::Relaxed) && *meta.level() <= tracing::Level::INFO
        }));
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(logs))
        .unwrap_or_else(|e| panic!("{e}"));

    let upstream = runtime("fake-upstream", 1);
    let fake = fake_upstream(&upstream, Duration::from_millis(50));
    let server = runtime("moa-server", 2);
    let on = serve_bench(&server, &fake, ServerConfig::default());
    let off = serve_bench(
        &server,
        &fake,
        ServerConfig {
            metrics: false,
            ..ServerConfig::default()
        },
    );
    let clients = runtime("bench-client", 1);
    let http = client(requests);
    // Warm both: connection pools open, allocator settled.
    for url in [&on, &off] {
        burst(&clients, &http, url, requests);
    }
    let measure = |url: &str, logging: bool| {
        LOGGING.store(logging, Ordering::Relaxed);
        let before = thread_cpu_ns("moa-server");
        let results = burst(&clients, &http, url, requests);
        let cpu = thread_cpu_ns("moa-server") - before;
        let failed = results.iter().filter(|r| r.is_err()).count();
        assert_eq!(failed, 0, "{failed} requests failed");
        cpu as f64 / requests as f64 / 1000.0
    };
    println!("| round | on: µs per request | off: µs per request | on - off |");
    println!("|---|---|---|---|");
    let mut pairs = Vec::new();
    for round in 0..rounds {
        let (a, b) = match round % 2 {
            0 => (measure(&on, true), measure(&off, false)),
            _ => {
                let b = measure(&off, false);
                (measure(&on, true), b)
            }
        };
        println!("| {} | {a:.0} | {b:.0} | {:+.0} |", round + 1, a - b);
        pairs.push((a, b));
    }
    let n = pairs.len() as f64;
    let mean = |f: &dyn Fn(&(f64, f64)) -> f64| pairs.iter().map(f).sum::<f64>() / n;
    let (on_mean, off_mean) = (mean(&|p| p.0), mean(&|p| p.1));
    let diff = mean(&|p| p.0 - p.1);
    let sd = (pairs
        .iter()
        .map(|p| (p.0 - p.1 - diff).powi(2))
        .sum::<f64>()
        / (n - 1.0))
        .sqrt();
    // Student's t for a 95% interval with n - 1 degrees of freedom (n up to 30; 2.0 beyond).
    let t = [
        12.71, 4.30, 3.18, 2.78, 2.57, 2.45, 2.36, 2.31, 2.26, 2.23, 2.20, 2.18, 2.16, 2.14, 2.13,
    ]
    .get(pairs.len() - 2)
    .copied()
    .unwrap_or(2.05);
    let half = t * sd / n.sqrt();
    println!();
    println!("| measure | value |");
    println!("|---|---|");
    println!("| requests per burst, rounds | {requests}, {rounds} |");
    println!("| server CPU per request, metrics + JSON logs on (mean) | {on_mean:.0} µs |");
    println!("| server CPU per request, both off (mean) | {off_mean:.0} µs |");
    println!(
        "| difference, 95% interval | {diff:+.0} µs ({:+.1}%), [{:+.0}, {:+.0}] µs |",
        diff / off_mean * 100.0,
        diff - half,
        diff + half
    );
    drop(fake);
    alone(if full { 50_000 } else { 100 });
}

/// The metrics and log lines of `n` requests, on one thread: on against off.
fn alone(n: u32) {
    let scripted = Arc::new(ScriptedProvider::new("up"));
    scripted.respond_with(|_| Reply::text("An answer of a few words.").with_usage(50, 30));
    let plan = Plan::bind(&bench_preset(), |_| Ok::<_, PresetError>(scripted.clone()))
        .unwrap_or_else(|e| panic!("{e}"));
    let moa = Moa::new(plan, RunOptions::default());
    let trace = runtime("bench-run", 1)
        .block_on(moa.run_request_to_end(RunRequest::new(vec![moa_core::Message::user("Why?")])))
        .unwrap_or_else(|e| panic!("{e}"));
    let per_request = |on: bool| {
        LOGGING.store(on, Ordering::Relaxed);
        let metrics = Metrics::new(on);
        let started = Instant::now();
        for i in 0..n {
            metrics.request("bench", 200);
            metrics.run("bench", 0.4, &trace);
            // The fields of the server's access line and of its line for a finished stream.
            tracing::info!(target: "moa::access", request_id = %"0f8fad5b-d9cb-469f-a165-70867728950e",
                method = %"POST", path = %"/v1/chat/completions", status = 200u16,
                latency_ms = u64::from(i), preset = Some("bench"), stream = Some(true),
                tokens = Some(trace.usage.total_tokens), cost = trace.cost);
            tracing::info!(target: "moa::run", request_id = %"0f8fad5b-d9cb-469f-a165-70867728950e",
                preset = %"bench", elapsed_ms = u64::from(i), tokens = trace.usage.total_tokens,
                cost = trace.cost, degraded = trace.degraded.len(), "stream finished");
        }
        started.elapsed().as_secs_f64() * 1e6 / f64::from(n)
    };
    // Alternating, the fastest of five each: what the work costs without the machine's noise.
    let (mut on, mut off) = (f64::MAX, f64::MAX);
    for _ in 0..5 {
        on = on.min(per_request(true));
        off = off.min(per_request(false));
    }
    println!();
    println!("| the observability work alone, one thread, {n} requests | µs per request |");
    println!("|---|---|");
    println!("| metrics (request + run of 5 calls) and 2 JSON log lines | {on:.2} |");
    println!("| both off | {off:.2} |");
}
