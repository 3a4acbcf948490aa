//! `moa bench` through the binary: a preset spanning all three dialects and a single model,
//! measured against fakes; and a run killed with SIGKILL that resumes where it stopped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[cfg(feature = "bedrock")]
use moa_testkit::FakeServer;
use moa_testkit::{FakeOpenAi, Reply};

use crate::{moa, spawn_moa, Sandbox, KEY};

#[cfg(feature = "bedrock")]
const HAIKU: &str = "anthropic.claude-3-haiku-20240307-v1:0";

fn write_prompts(sandbox: &Sandbox, prompts: &[&str]) {
    std::fs::write(sandbox.path().join("prompts.txt"), prompts.join("\n")).unwrap();
}

#[cfg(feature = "bedrock")]
#[tokio::test(flavor = "multi_thread")]
async fn a_three_dialect_preset_and_a_single_model_are_measured_and_priced() {
    let openai = FakeOpenAi::start().await;
    let anthropic = FakeServer::anthropic().await;
    let bedrock = FakeServer::bedrock().await;
    openai.respond_with(|_| Reply::text("proposal from together").with_usage(100, 20));
    anthropic.respond_with(|_| Reply::text("proposal from anthropic").with_usage(100, 20));
    bedrock.respond_with(|_| Reply::text("the aggregated answer").with_usage(100, 20));
    let extra = format!(
        r#"[providers.anthropic]
base_url = "{}"
max_retries = 0

[providers.bedrock]
base_url = "{}"
region = "us-west-2"
max_retries = 0

[presets.mixed]
proposers = ["together:p/a", "anthropic:claude-x", "bedrock:{HAIKU}"]
aggregator = "bedrock:{HAIKU}"

[prices."together:p/a"]
input = 1.0
output = 2.0

[prices."anthropic:claude-x"]
input = 3.0
output = 15.0

[prices."together:solo"]
input = 0.5
output = 0.5
"#,
        anthropic.base_url(),
        bedrock.base_url()
    );
    let sandbox = Sandbox::new(&openai, &extra);
    write_prompts(&sandbox, &["one", "two", "three", "four"]);
    let out = moa(
        sandbox.path(),
        &[
            "bench",
            "--prompts",
            "prompts.txt",
            "--preset",
            "mixed",
            "--model",
            "together:solo",
            "--parallel",
            "2",
            "--out",
            "run",
            "--json",
        ],
        &[
            KEY,
            ("ANTHROPIC_API_KEY", "sk-ant"),
            ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
            ("AWS_SECRET_ACCESS_KEY", "secret"),
        ],
        None,
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let report: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let mixed = &report["targets"][0];
    let solo = &report["targets"][1];
    assert_eq!(mixed["target"], "mixed");
    assert_eq!(solo["target"], "together:solo");
    for t in [mixed, solo] {
        assert_eq!(t["succeeded"], 4);
        assert_eq!(t["failed"], 0);
        assert!(t["latency_ms"]["p50"].as_u64().is_some());
        assert!(t["ttft_ms"]["p99"].as_u64().unwrap() <= t["latency_ms"]["p99"].as_u64().unwrap());
    }
    // Per prompt: 4 calls of 100 in / 20 out. Together $1/$2, Anthropic $3/$15, Haiku twice at
    // $0.25/$1.25 (built-in), all per million tokens.
    let per_prompt =
        (100.0 * 1.0 + 20.0 * 2.0 + 100.0 * 3.0 + 20.0 * 15.0 + 2.0 * (100.0 * 0.25 + 20.0 * 1.25))
            / 1e6;
    let cost = mixed["cost_total"].as_f64().unwrap();
    assert!(
        (cost - 4.0 * per_prompt).abs() < 1e-12,
        "{cost} vs {}",
        4.0 * per_prompt
    );
    assert_eq!(mixed["tokens_in"], 1600);
    assert_eq!(mixed["tokens_out"], 320);
    let solo_cost = solo["cost_per_prompt"].as_f64().unwrap();
    assert!((solo_cost - 120.0 * 0.5 / 1e6).abs() < 1e-15);
    // The aggregator on Bedrock got the reference's prompt with the three proposals.
    let aggregations = bedrock
        .requests()
        .into_iter()
        .filter(|r| r.json["system"].is_array())
        .count();
    assert_eq!(aggregations, 4);
    let agg = bedrock
        .requests()
        .into_iter()
        .find(|r| r.json["system"].is_array())
        .unwrap();
    let system = agg.json["system"][0]["text"].as_str().unwrap();
    assert!(
        system.starts_with(moa_core::AGGREGATOR_SYSTEM_PROMPT),
        "{system}"
    );
    assert!(
        system.contains("proposal from anthropic") && system.contains("proposal from together")
    );
    assert!(agg
        .header("authorization")
        .unwrap()
        .starts_with("AWS4-HMAC-SHA256 "));
    // Files: one result line per (target, prompt), the report and the chart.
    let run = sandbox.path().join("run");
    let lines = std::fs::read_to_string(run.join("results.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 8);
    let chart = std::fs::read_to_string(run.join("chart.svg")).unwrap();
    assert!(
        chart.starts_with("<svg")
            && chart.contains(">mixed</text>")
            && chart.contains(">together:solo</text>")
    );
    assert!(run.join("report.json").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_killed_midway_resumes_without_repeating_or_losing_answers() {
    let fake = FakeOpenAi::start().await;
    let stall = Arc::new(AtomicBool::new(true));
    let gate = stall.clone();
    fake.respond_with(move |r| {
        let prompt = r
            .messages()
            .last()
            .map(|(_, c)| c.clone())
            .unwrap_or_default();
        if prompt == "three" && gate.load(Ordering::SeqCst) {
            Reply::stall_after("")
        } else {
            Reply::text(format!("answer to {prompt}")).with_usage(10, 2)
        }
    });
    let sandbox = Sandbox::new(&fake, "");
    write_prompts(&sandbox, &["one", "two", "three", "four"]);
    let args = [
        "bench",
        "--prompts",
        "prompts.txt",
        "--model",
        "together:solo",
        "--parallel",
        "1",
        "--out",
        "run",
    ];
    let mut child = spawn_moa(sandbox.path(), &args);
    // One prompt at a time: when the third request arrives, two results were written.
    fake.wait_for_requests(3).await;
    child.start_kill().unwrap(); // SIGKILL
    child.wait().await.unwrap();
    let results = sandbox.path().join("run/results.jsonl");
    assert_eq!(
        std::fs::read_to_string(&results).unwrap().lines().count(),
        2
    );
    // A line cut short by a kill mid-write is tolerated.
    let mut text = std::fs::read_to_string(&results).unwrap();
    text.push_str(r#"{"target":"together:solo","index":3,"ok":tr"#);
    std::fs::write(&results, text).unwrap();

    stall.store(false, Ordering::SeqCst);
    let out = moa(sandbox.path(), &args, &[KEY], None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("2 of 4 prompts already measured"),
        "{}",
        out.stderr
    );
    let prompts_sent: Vec<String> = fake
        .requests()
        .iter()
        .map(|r| r.messages().last().unwrap().1.clone())
        .collect();
    assert_eq!(prompts_sent, ["one", "two", "three", "three", "four"]);
    let records: Vec<serde_json::Value> = std::fs::read_to_string(&results)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let mut answers: Vec<&str> = records
        .iter()
        .map(|r| r["answer"].as_str().unwrap())
        .collect();
    answers.sort();
    assert_eq!(
        answers,
        [
            "answer to four",
            "answer to one",
            "answer to three",
            "answer to two"
        ]
    );
    assert!(out.stdout.starts_with("target"), "{}", out.stdout);
    assert!(out.stdout.contains("4/4"), "{}", out.stdout);
}

/// A job budget stops `moa bench` starting runs once reached, says how far it got, and a rerun
/// with a larger budget goes on without repeating a run.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_budget_stops_the_bench_and_a_larger_one_resumes_it() {
    let openai = FakeOpenAi::start().await;
    // 1,000,000 prompt tokens at $0.5 per million: $0.50 a run.
    openai.respond_with(|_| Reply::text("answer").with_usage(1_000_000, 0));
    let extra = "[prices.\"together:solo\"]\ninput = 0.5\noutput = 0.5\n";
    let sandbox = Sandbox::new(&openai, extra);
    write_prompts(&sandbox, &["one", "two", "three", "four", "five", "six"]);
    let bench = |budget: &'static str| {
        let dir = sandbox.path().to_path_buf();
        async move {
            moa(
                &dir,
                &[
                    "bench",
                    "--prompts",
                    "prompts.txt",
                    "--model",
                    "together:solo",
                    "--parallel",
                    "1",
                    "--out",
                    "run",
                    "--job-max-cost",
                    budget,
                ],
                &[KEY],
                None,
            )
            .await
        }
    };
    let out = bench("1.2").await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    // After two runs ($1.00), a third would pass $1.20.
    assert!(
        out.stderr
            .contains("stopped at --job-max-cost $1.2 ($1.0000 spent): 2 of 6 runs measured"),
        "{}",
        out.stderr
    );
    assert_eq!(openai.requests().len(), 2);

    let out = bench("10").await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(openai.requests().len(), 6, "the four left, none again");
}
