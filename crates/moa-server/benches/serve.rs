//! `moa serve` under load: many concurrent streamed MoA requests (4 proposers + aggregator)
//! against a fake upstream that takes 200 ms per call, all on this machine.
//!
//! `cargo bench -p moa-server --bench serve` (`-- --requests N` to change the 1,000).
//! Reports: successes, time to first token against the critical path (two layers of 200 ms),
//! requests/s, the server's CPU per request (its threads only), and the process's peak RSS.

use std::time::{Duration, Instant};

use moa_server::ServerConfig;
use moa_testkit::measure::{peak_rss_kib, thread_cpu_ns};

const UPSTREAM_LATENCY: Duration = Duration::from_millis(200);

mod common;
use common::{arg, burst, client, fake_upstream, runtime, serve_bench};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let full = args.iter().any(|a| a == "--bench");
    let requests: usize = arg(&args, "--requests", if full { 1000 } else { 20 });
    // `--no-metrics`: the same run with /metrics' counting off, to see what it costs.
    let metrics = !args.iter().any(|a| a == "--no-metrics");

    let upstream = runtime("fake-upstream", 1);
    let fake = fake_upstream(&upstream, UPSTREAM_LATENCY);
    let server = runtime("moa-server", 2);
    let base = serve_bench(
        &server,
        &fake,
        ServerConfig {
            metrics,
            ..ServerConfig::default()
        },
    );
    let clients = runtime("bench-client", 1);
    let http = client(requests);
    let burst = || burst(&clients, &http, &base, requests);
    // A first burst opens the connection pools, as a server that has been up a while has them.
    let warm = burst();
    let cpu_before = thread_cpu_ns("moa-server");
    let others_before = (
        thread_cpu_ns("fake-upstream"),
        thread_cpu_ns("bench-client"),
    );
    let started = Instant::now();
    let results: Vec<Result<Duration, String>> = burst();
    let wall = started.elapsed();
    let warm_failures = warm.iter().filter(|r| r.is_err()).count();
    let server_cpu = thread_cpu_ns("moa-server") - cpu_before;
    let upstream_cpu = thread_cpu_ns("fake-upstream") - others_before.0;
    let client_cpu = thread_cpu_ns("bench-client") - others_before.1;
    let mut ttft: Vec<Duration> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().copied())
        .collect();
    ttft.sort();
    let failures: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    let critical = UPSTREAM_LATENCY * 2;
    println!("| measure | value |");
    println!("|---|---|");
    println!("| concurrent streamed requests | {requests} |");
    println!("| metrics | {} |", if metrics { "on" } else { "off" });
    println!(
        "| succeeded | {} ({} failed{}) |",
        ttft.len(),
        failures.len(),
        failures
            .first()
            .map(|f| format!(", first: {f}"))
            .unwrap_or_default()
    );
    if !ttft.is_empty() {
        println!(
            "| critical path (2 layers x {} ms) | {} ms |",
            UPSTREAM_LATENCY.as_millis(),
            critical.as_millis()
        );
        for (name, p) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0)] {
            let t = percentile(&ttft, p);
            println!(
                "| time to first token {name} | {} ms ({:+.1}% over the critical path) |",
                t.as_millis(),
                (t.as_secs_f64() / critical.as_secs_f64() - 1.0) * 100.0
            );
        }
    }
    println!("| wall time, all requests | {:.2} s |", wall.as_secs_f64());
    println!(
        "| requests/s | {:.0} |",
        requests as f64 / wall.as_secs_f64()
    );
    println!(
        "| server CPU per request (5 upstream calls) | {:.0} µs |",
        server_cpu as f64 / requests as f64 / 1000.0
    );
    println!(
        "| CPU of the fake upstream / the client, whole burst | {} ms / {} ms |",
        upstream_cpu / 1_000_000,
        client_cpu / 1_000_000
    );
    println!(
        "| peak RSS, whole process (server + fake upstream + client) | {} MiB |",
        peak_rss_kib() / 1024
    );
    println!(
        "| upstream calls served (both bursts) | {} ({warm_failures} failures in the warm-up) |",
        fake.requests().len()
    );
    drop(fake);
}
