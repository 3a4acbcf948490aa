//! 1 GiB at `moa serve`, both ways, with the process's memory watched: a client uploading a
//! 1 GiB request body, and upstream aggregators streaming answers without end until 1 GiB has
//! reached the clients. The server must stay under a stated memory bound throughout and give
//! the memory back afterwards.
//!
//! `cargo bench -p moa-server --bench flood` (`-- --gib N` for another volume, `--concurrent C`
//! for more streams at once).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use moa_core::{AgentSpec, Preset, PromptStyle};
use moa_server::ServerConfig;
use moa_testkit::measure::{peak_rss_kib, rss_kib, trim_heap};
use moa_testkit::{FakeOpenAi, Reply};

const MIB: u64 = 1 << 20;

mod common;
use common::{arg, runtime, serve_preset};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let full = args.iter().any(|a| a == "--bench");
    let volume = (arg(&args, "--gib", if full { 1.0 } else { 1.0 / 64.0 }) * 1024.0) as u64 * MIB;
    let concurrent = arg(&args, "--concurrent", 8.0) as usize;

    let upstream = runtime("fake-upstream", 1);
    let fake = upstream.block_on(FakeOpenAi::start());
    // Every aggregator answers forever, 4 KiB of text per SSE chunk.
    let text = "x".repeat(4096);
    let piece = format!(
        "data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"agg\",\
         \"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{text}\"}},\"finish_reason\":null}}]}}\n\n"
    );
    fake.respond_with(move |r| match r.model.as_str() {
        "agg" => Reply::endless(200, "text/event-stream", b"", piece.as_bytes()),
        _ => Reply::text("A short proposal.").with_usage(10, 4),
    });

    let server = runtime("moa-server", 2);
    let config = ServerConfig::default();
    let max_body = config.max_body_bytes;
    let preset = Preset {
        name: "flood".into(),
        description: String::new(),
        layers: vec![vec![AgentSpec::new("up:p1"), AgentSpec::new("up:p2")]],
        aggregator: AgentSpec::new("up:agg"),
        prompt_style: PromptStyle::Reference,
        policy: Default::default(),
    };
    let base = serve_preset(&server, &fake, preset, config);
    let client = runtime("bench-client", 1);
    let http = reqwest::Client::new();
    let baseline = rss_kib();

    // 1. A request body of `volume` bytes, sent as fast as the server takes it.
    let offered = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let upload = client.block_on({
        let (http, base, offered) = (http.clone(), base.clone(), offered.clone());
        async move {
            let block = Bytes::from(vec![b' '; 64 << 10]);
            let body = futures::stream::unfold(0u64, move |sent| {
                let block = block.clone();
                let offered = offered.clone();
                async move {
                    (sent < volume).then(|| {
                        offered.fetch_add(block.len() as u64, Ordering::Relaxed);
                        (Ok::<_, std::io::Error>(block), sent + (64 << 10))
                    })
                }
            });
            match http
                .post(&base)
                .header("content-type", "application/json")
                .body(reqwest::Body::wrap_stream(body))
                .send()
                .await
            {
                Ok(response) => format!("status {}", response.status().as_u16()),
                Err(e) => format!("connection ended by the server ({e})"),
            }
        }
    });
    let upload_time = started.elapsed();
    let after_upload = (peak_rss_kib(), rss_kib());

    // 2. Endless aggregator answers streamed to `concurrent` clients at a time, request after
    // request, until `volume` bytes have reached them.
    let received = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let endings = client.block_on({
        let received = received.clone();
        async move {
            let body = serde_json::json!({"model": "flood", "stream": true,
                "messages": [{"role": "user", "content": "Say everything."}]});
            let lanes = (0..concurrent).map(|_| {
                let (http, base, body, received) =
                    (http.clone(), base.clone(), body.clone(), received.clone());
                tokio::spawn(async move {
                    let mut endings = BTreeMap::<String, usize>::new();
                    while received.load(Ordering::Relaxed) < volume {
                        let ending = match http.post(&base).json(&body).send().await {
                            Err(e) => format!("request failed: {e}"),
                            Ok(response) => {
                                let mut stream = response.bytes_stream();
                                let mut tail = Vec::new();
                                let mut failed = None;
                                while let Some(chunk) = stream.next().await {
                                    match chunk {
                                        Ok(chunk) => {
                                            received
                                                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                                            tail.extend_from_slice(&chunk);
                                            let keep = tail.len().saturating_sub(2048);
                                            tail.drain(..keep);
                                        }
                                        Err(e) => failed = Some(format!("stream broke: {e}")),
                                    }
                                }
                                failed.unwrap_or_else(|| {
                                    let tail = String::from_utf8_lossy(&tail);
                                    match tail.rfind("\"message\":\"") {
                                        Some(at) => tail[at + 11..]
                                            .split('"')
                                            .next()
                                            .unwrap_or_default()
                                            .chars()
                                            .take(120)
                                            .collect(),
                                        None => "ended without an error event".into(),
                                    }
                                })
                            }
                        };
                        *endings.entry(ending).or_default() += 1;
                    }
                    endings
                })
            });
            let mut all = BTreeMap::<String, usize>::new();
            for lane in futures::future::join_all(lanes).await {
                for (ending, n) in lane.unwrap_or_default() {
                    *all.entry(ending).or_default() += n;
                }
            }
            all
        }
    });
    let stream_time = started.elapsed();
    // Let the server and the upstream notice the last disconnects.
    std::thread::sleep(Duration::from_millis(500));
    let peak = peak_rss_kib();
    let after = rss_kib();
    trim_heap();
    let trimmed = rss_kib();

    // The bound: what the server holds per stream (the answer so far, capped at 8 MiB by the
    // provider's max_answer_bytes, plus its SSE buffers, 4 MiB at most) for each stream at
    // once, over what the process used before the flood, with 64 MiB for allocator slack.
    let bound = baseline / 1024 + concurrent as u64 * 12 + 64;
    let mib = |kib: u64| kib / 1024;
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| resident before (server, fake upstream, client: one process) | {} MiB |",
        mib(baseline)
    );
    println!(
        "| upload: {} MiB offered against a {} MiB body limit | {upload}; {} MiB taken from the client in {:.2} s |",
        volume / MIB,
        max_body as u64 / MIB,
        offered.load(Ordering::Relaxed) / MIB,
        upload_time.as_secs_f64()
    );
    println!(
        "| peak / resident after the upload | {} / {} MiB |",
        mib(after_upload.0),
        mib(after_upload.1)
    );
    let got = received.load(Ordering::Relaxed);
    println!(
        "| streamed to clients | {} MiB in {:.1} s ({:.0} MiB/s), {concurrent} streams at once |",
        got / MIB,
        stream_time.as_secs_f64(),
        got as f64 / MIB as f64 / stream_time.as_secs_f64()
    );
    for (ending, n) in &endings {
        println!("| streams that ended: {ending} | {n} |");
    }
    println!("| peak resident, whole run | {} MiB |", mib(peak));
    println!(
        "| resident after the flood / after returning the allocator's free pages | {} / {} MiB |",
        mib(after),
        mib(trimmed)
    );
    println!(
        "| stated bound (before + {concurrent} x 12 MiB + 64 MiB) | {bound} MiB: {} |",
        if mib(peak) <= bound {
            "held"
        } else {
            "EXCEEDED"
        }
    );
    drop(fake);
}
