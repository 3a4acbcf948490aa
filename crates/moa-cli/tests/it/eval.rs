//! `moa eval` end to end against fakes that replay the published AlpacaEval outputs (answers
//! keyed by model and instruction) and judges whose verdicts are fixed per item, so every number
//! the pipeline reports can be computed by hand. Reads ../shared/data; skipped without it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use moa_testkit::{FakeOpenAi, Reply};
use serde_json::Value;

use crate::{moa, spawn_moa, Sandbox, KEY};

fn shared_data() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data");
    if dir.join("alpaca_eval").is_dir() {
        Some(dir)
    } else {
        eprintln!("skipped: ../shared/data is not here");
        None
    }
}

/// A Python with the official `alpaca_eval` package: `MOA_ALPACA_EVAL_PYTHON`, else the venv
/// `.ci/run` makes (`target/alpaca-eval`). Missing: the check is skipped, unless
/// `MOA_REQUIRE_ALPACA_EVAL` is set (CI sets it), which fails the test.
fn alpaca_eval_python() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let python = std::env::var_os("MOA_ALPACA_EVAL_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/alpaca-eval/bin/python"));
    let works = std::process::Command::new(&python)
        .args(["-c", "import alpaca_eval"])
        .output()
        .is_ok_and(|o| o.status.success());
    match (works, std::env::var_os("MOA_REQUIRE_ALPACA_EVAL").is_some()) {
        (true, _) => Some(python),
        (false, true) => panic!(
            "MOA_REQUIRE_ALPACA_EVAL is set but {} cannot import alpaca_eval \
             (python3 -m venv target/alpaca-eval && target/alpaca-eval/bin/pip install alpaca-eval==0.6.6)",
            python.display()
        ),
        (false, false) => {
            eprintln!("skipped: the official alpaca_eval package is not installed");
            None
        }
    }
}

/// `moa eval generate` of the first `limit` AlpacaEval items with the lite preset into `out`,
/// then `extra`.
fn alpaca_generate<'a>(
    data: &'a str,
    limit: &'a str,
    out: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "eval",
        "generate",
        "--bench",
        "alpaca_eval",
        "--preset",
        "lite",
        "--data",
        data,
        "--limit",
        limit,
        "--out",
        out,
    ];
    args.extend_from_slice(extra);
    args
}

fn published(data: &Path, model: &str) -> Vec<(String, String)> {
    let path = data.join(format!("alpaca_eval/results/{model}/model_outputs.json"));
    let rows: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    rows.iter()
        .map(|r| {
            (
                r["instruction"].as_str().unwrap().to_string(),
                r["output"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// A JSON file the run wrote.
fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> T {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Outputs of a published model, keyed by instruction.
fn by_instruction(data: &Path, model: &str) -> HashMap<String, String> {
    published(data, model).into_iter().collect()
}

const PRESET: &str = r#"
[presets.lite]
proposers = ["together:Qwen/Qwen1.5-110B-Chat", "together:meta-llama/Llama-3-70b-chat-hf"]
aggregator = "together:Qwen/Qwen1.5-72B-Chat"
"#;

/// The text between `start` and `end` after `start`'s first occurrence.
fn between<'a>(text: &'a str, start: &str, end: &str) -> &'a str {
    let from = text.find(start).unwrap() + start.len();
    &text[from..from + text[from..].find(end).unwrap()]
}

/// How much the fake judge prefers the evaluated model on instruction `index`.
fn p_model(index: usize) -> f64 {
    if index % 2 == 1 {
        0.9
    } else {
        0.2
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn alpaca_eval_generates_from_published_proposals_and_judges_with_logprobs() {
    let Some(data) = shared_data() else { return };
    let baseline = published(&data, "gpt4_1106_preview");
    let proposers: HashMap<&str, HashMap<String, String>> = [
        (
            "Qwen/Qwen1.5-110B-Chat",
            by_instruction(&data, "Qwen1.5-110B-Chat"),
        ),
        (
            "meta-llama/Llama-3-70b-chat-hf",
            by_instruction(&data, "Meta-Llama-3-70B-Instruct"),
        ),
    ]
    .into_iter()
    .collect();
    let lite = by_instruction(&data, "Together-MoA-Lite");
    let index_of: HashMap<String, usize> = baseline
        .iter()
        .enumerate()
        .map(|(i, (instruction, _))| (instruction.clone(), i))
        .collect();
    let baseline_of: HashMap<String, String> = baseline.iter().cloned().collect();

    let fake = FakeOpenAi::start().await;
    let (proposers_, lite_, index_of_, baseline_of_) = (
        proposers.clone(),
        lite.clone(),
        index_of.clone(),
        baseline_of.clone(),
    );
    fake.respond_with(move |r| {
        let messages = r.messages();
        let user = messages.last().unwrap().1.clone();
        if r.model == "judge" {
            let instruction = between(&user, "\"instruction\": \"\"\"", "\"\"\",");
            let shown_first = between(&user, "\"output\": \"\"\"", "\"\"\"");
            let model_first = shown_first != baseline_of_[instruction];
            // MoA-Lite's answers win as p_model says; any other model's (a single proposer's
            // published outputs) with 0.2.
            let p = match user.contains(lite_[instruction].trim()) {
                true => p_model(index_of_[instruction]),
                false => 0.2,
            };
            let p_m = if model_first { p } else { 1.0 - p };
            return Reply::text(if p_m >= 0.5 { "m" } else { "M" })
                .with_top_logprobs(&[("m", p_m.ln()), ("M", (1.0 - p_m).ln()), ("The", -9.0)])
                .with_usage(700, 1);
        }
        if r.model == "Qwen/Qwen1.5-72B-Chat" {
            // The aggregator: the published MoA-Lite answer to this instruction.
            return Reply::text(lite_[&user].clone()).with_usage(3000, 400);
        }
        Reply::text(proposers_[r.model.as_str()][&user].clone()).with_usage(100, 300)
    });
    let extra = format!("{PRESET}\n[prices.\"together:judge\"]\ninput = 10.0\noutput = 30.0\n");
    let sandbox = Sandbox::new(&fake, &extra);
    let data_arg = data.to_str().unwrap();
    let generate = alpaca_generate(data_arg, "12", "run", &[]);
    let out = moa(sandbox.path(), &generate, &[KEY], None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);

    // The official format: every instruction in order, generator = the run's name, the
    // aggregator's (here: the published MoA-Lite) answers.
    let outputs: Vec<Value> = read_json(&sandbox.path().join("run/model_outputs.json"));
    assert_eq!(outputs.len(), 12);
    for (i, row) in outputs.iter().enumerate() {
        let instruction = &baseline[i].0;
        assert_eq!(row["instruction"].as_str().unwrap(), instruction);
        // As the reference names it: `<aggregator model>-together`.
        assert_eq!(row["generator"], "Qwen/Qwen1.5-72B-Chat-together");
        assert_eq!(row["output"].as_str().unwrap(), lite[instruction].trim());
        assert!(row["dataset"].is_string());
    }
    // The aggregator saw the proposers' published answers, injected byte for byte.
    let aggregator_calls = fake.requests_for("Qwen/Qwen1.5-72B-Chat");
    assert_eq!(aggregator_calls.len(), 12);
    // The reference's generator settings for every agent: temperature 0.7, 2048 tokens.
    for call in fake.requests() {
        let body: Value = serde_json::from_str(call.body_text()).unwrap();
        assert_eq!(body["temperature"].as_f64(), Some(0.7), "{}", call.model);
        assert_eq!(body["max_tokens"], 2048, "{}", call.model);
    }
    for call in aggregator_calls {
        let messages = call.messages();
        let instruction = &messages[1].1;
        let expected = format!(
            "{}\n1. {}\n2. {}",
            moa_core::AGGREGATOR_SYSTEM_PROMPT,
            proposers["Qwen/Qwen1.5-110B-Chat"][instruction].trim(),
            proposers["meta-llama/Llama-3-70b-chat-hf"][instruction].trim()
        );
        assert_eq!(messages[0].1, expected);
    }

    // Judging: 12 comparisons, one judge call each.
    let judge = [
        "eval",
        "judge",
        "--out",
        "run",
        "--judge",
        "together:judge",
        "--data",
        data_arg,
    ];
    let out = moa(sandbox.path(), &judge, &[KEY], None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let judge_calls = fake.requests_for("judge");
    assert_eq!(judge_calls.len(), 12);
    let body: Value = serde_json::from_str(judge_calls[0].body_text()).unwrap();
    assert_eq!(body["max_tokens"], 1);
    assert_eq!(body["temperature"].as_f64(), Some(1.0));
    assert_eq!(body["logprobs"], true);
    assert_eq!(body["top_logprobs"], 5);
    let prompt_file = std::fs::read_to_string(
        data.join("alpaca_eval/evaluators_configs/alpaca_eval_clf_gpt4_turbo/alpaca_eval_clf.txt"),
    )
    .unwrap();
    let system = between(&prompt_file, "<|im_start|>system\n", "<|im_end|>").trim();
    assert_eq!(body["messages"][0]["content"], system);
    // The outputs were shown swapped exactly where AlpacaEval swaps them (CPython's
    // random.Random("is_switched_outputs" + instruction + "0").choice([False, True])).
    let mut swapped = ['?'; 12];
    for call in &judge_calls {
        let user = &call.messages()[1].1;
        let instruction = between(user, "\"instruction\": \"\"\"", "\"\"\",");
        let first = between(user, "\"output\": \"\"\"", "\"\"\"");
        swapped[index_of[instruction]] = if first == baseline_of[instruction] {
            '0'
        } else {
            '1'
        };
    }
    assert_eq!(swapped.iter().collect::<String>(), "010000100111");

    // Preferences 1 + p_model: 0.2 on even items, 0.9 on odd ones. Mean 0.55; deviations
    // ±0.35; SE = sqrt(12 · 0.35² / 11 / 12) = 0.105529…
    let results: Value = read_json(&sandbox.path().join("run/results.json"));
    let m = &results["metrics"];
    assert_eq!(m["bench"], "alpaca_eval");
    assert!((m["win_rate"].as_f64().unwrap() - 55.0).abs() < 1e-9, "{m}");
    let se = (0.35f64 * 0.35 / 11.0).sqrt() * 100.0;
    assert!(
        (m["standard_error"].as_f64().unwrap() - se).abs() < 1e-9,
        "{m}"
    );
    assert_eq!(
        (m["n_wins"].as_u64(), m["n_wins_base"].as_u64()),
        (Some(6), Some(6))
    );
    assert!(
        m["length_controlled_winrate"].is_null(),
        "no difficulty data, no LC"
    );
    // 12 calls of 700 + 1 tokens at $10/$30 per million.
    let cost = 12.0 * (700.0 * 10.0 + 30.0) / 1e6;
    assert!((results["judge_cost"].as_f64().unwrap() - cost).abs() < 1e-12);
    let annotations: Vec<Value> = read_json(&sandbox.path().join("run/annotations.json"));
    assert_eq!(annotations.len(), 12);
    assert!((annotations[1]["preference"].as_f64().unwrap() - 1.9).abs() < 1e-9);
    assert_eq!(
        annotations[0]["generator_2"],
        "Qwen/Qwen1.5-72B-Chat-together"
    );
    // Not the official annotator's name: another judge ran.
    assert_eq!(
        annotations[0]["annotator"],
        "together:judge with the weighted_alpaca_eval_gpt4_turbo prompt, preference from logprobs"
    );
    assert!(out.stdout.contains("55.00"), "{}", out.stdout);

    // The official package reads the same files and computes the same numbers.
    if let Some(python) = alpaca_eval_python() {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/alpaca_eval_check.py");
        let checked = std::process::Command::new(&python)
            .arg(&script)
            .arg(sandbox.path().join("run"))
            .output()
            .unwrap();
        assert!(
            checked.status.success(),
            "{}",
            String::from_utf8_lossy(&checked.stderr)
        );
        let theirs: Value = serde_json::from_slice(&checked.stdout).unwrap();
        assert_eq!(theirs["annotations"], 12);
        assert_eq!(
            theirs["generators"],
            serde_json::json!(["Qwen/Qwen1.5-72B-Chat-together"])
        );
        for key in [
            "win_rate",
            "standard_error",
            "n_wins",
            "n_wins_base",
            "n_draws",
            "n_total",
            "discrete_win_rate",
        ] {
            let (a, b) = (m[key].as_f64().unwrap(), theirs[key].as_f64().unwrap());
            assert!((a - b).abs() < 1e-9, "{key}: moa {a}, alpaca_eval {b}");
        }
        // The length-controlled win rate: the package's GLM (scikit-learn) and ours fitted on
        // the same annotations and the same df_gamed-shaped file (the real one is on the Hub).
        let mut gamed = String::from(
            "model,index,preference,std_delta_len,instruction_difficulty,not_gamed_baseline\n",
        );
        // Twenty gamed models whose preferences follow length and difficulty, so the fit has
        // something to find.
        for model in 0..20 {
            for i in 0..12 {
                let difficulty = ((i * 37) % 11) as f64 / 5.0 - 1.0;
                let delta = (model as f64 - 9.5) / 4.0 + ((i * 7) % 5) as f64 / 10.0;
                let z = -1.5 * delta.tanh() + difficulty;
                let preference = 1.0 / (1.0 + (-z).exp());
                gamed.push_str(&format!(
                    "gamed_{model},{i},{preference},{delta},{difficulty},False\n"
                ));
            }
        }
        std::fs::write(sandbox.path().join("gamed.csv"), gamed).unwrap();
        let with_lc = [&judge[..], &["--lc-data", "gamed.csv"]].concat();
        let out = moa(sandbox.path(), &with_lc, &[KEY], None).await;
        assert_eq!(out.code, 0, "{}", out.stderr);
        let results: Value = read_json(&sandbox.path().join("run/results.json"));
        let ours = results["metrics"]["length_controlled_winrate"]
            .as_f64()
            .unwrap();
        let checked = std::process::Command::new(&python)
            .arg(&script)
            .arg(sandbox.path().join("run"))
            .arg(sandbox.path().join("gamed.csv"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&checked.stderr);
        assert!(checked.status.success(), "{stderr}");
        let theirs: Value = serde_json::from_slice(&checked.stdout).unwrap();
        let lc = theirs["length_controlled_winrate"].as_f64().unwrap();
        eprintln!("LC win rate: moa {ours}, alpaca_eval {lc}");
        assert!((ours - lc).abs() < 0.01, "LC: moa {ours}, alpaca_eval {lc}");
    }

    // Judging again asks nothing: every comparison is in the journal.
    let out = moa(sandbox.path(), &judge, &[KEY], None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(fake.requests_for("judge").len(), 12);

    // A single proposer's published outputs judged on the same items, then compared with the
    // MoA run item by item: MoA wins the 6 odd items (0.9 against 0.2) and ties the rest.
    let single = format!("{data_arg}/alpaca_eval/results/Qwen1.5-110B-Chat/model_outputs.json");
    let judge_single = [
        "eval",
        "judge",
        "--bench",
        "alpaca_eval",
        "--outputs",
        &single,
        "--out",
        "single",
        "--judge",
        "together:judge",
        "--data",
        data_arg,
        "--limit",
        "12",
    ];
    let out = moa(sandbox.path(), &judge_single, &[KEY], None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let compare = ["eval", "compare", "run", "single"];
    let out = moa(
        sandbox.path(),
        &[&compare[..], &["--json"]].concat(),
        &[],
        None,
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let c: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        (&c["paired"], &c["a_better"], &c["b_better"], &c["ties"]),
        (
            &Value::from(12),
            &Value::from(6),
            &Value::from(0),
            &Value::from(6)
        )
    );
    assert!(
        (c["difference"].as_f64().unwrap() - 35.0).abs() < 1e-9,
        "{c}"
    );
    assert!(
        (c["sign_test_p"].as_f64().unwrap() - 2.0 / 64.0).abs() < 1e-12,
        "{c}"
    );
    assert!(
        c["ci_low"].as_f64().unwrap() > 0.0 && c["significant"] == true,
        "{c}"
    );
    let out = moa(sandbox.path(), &compare, &[], None).await;
    assert!(out.stdout.contains("A is better"), "{}", out.stdout);
    // The report does the same against each later run, with each run's own interval.
    let out = moa(
        sandbox.path(),
        &["eval", "report", "run", "single", "--json"],
        &[],
        None,
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let r: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(r["runs"].as_array().unwrap().len(), 2);
    assert_eq!(r["paired"].as_array().unwrap().len(), 1);
    assert_eq!(r["paired"][0], c, "the report's pairing is compare's");
    let interval = &r["intervals"][0];
    assert!(
        (interval["mean"].as_f64().unwrap() - 55.0).abs() < 1e-9,
        "{r}"
    );
    assert!(
        interval["ci_low"].as_f64().unwrap() < 55.0 && interval["ci_high"].as_f64().unwrap() > 55.0
    );
    let out = moa(
        sandbox.path(),
        &["eval", "report", "run", "single"],
        &[],
        None,
    )
    .await;
    assert!(
        out.stdout.contains("95% intervals") && out.stdout.contains("A is better"),
        "{}",
        out.stdout
    );
    // A run against itself: no difference, not significant.
    let out = moa(
        sandbox.path(),
        &["eval", "compare", "run", "run"],
        &[],
        None,
    )
    .await;
    assert!(out.stdout.contains("not significant"), "{}", out.stdout);

    // --reference-paths: the published proposals from files; only the aggregator is called.
    let before = fake.requests().len();
    let refs = format!(
        "{0}/alpaca_eval/results/Qwen1.5-110B-Chat/model_outputs.json,{0}/alpaca_eval/results/Meta-Llama-3-70B-Instruct/model_outputs.json",
        data_arg
    );
    let with_refs = alpaca_generate(data_arg, "3", "refs", &["--reference-paths", &refs]);
    let out = moa(sandbox.path(), &with_refs, &[KEY], None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let new: Vec<_> = fake.requests().into_iter().skip(before).collect();
    assert_eq!(new.len(), 3);
    for call in &new {
        assert_eq!(call.model, "Qwen/Qwen1.5-72B-Chat");
        let messages = call.messages();
        let expected = format!(
            "{}\n1. {}\n2. {}",
            moa_core::AGGREGATOR_SYSTEM_PROMPT,
            proposers["Qwen/Qwen1.5-110B-Chat"][&messages[1].1],
            proposers["meta-llama/Llama-3-70b-chat-hf"][&messages[1].1]
        );
        assert_eq!(
            messages[0].1, expected,
            "references as in the files, untrimmed"
        );
        // The reference calls the aggregator with generate_with_references' defaults.
        let body: Value = serde_json::from_str(call.body_text()).unwrap();
        assert_eq!(body["temperature"].as_f64(), Some(0.7));
        assert_eq!(body["max_tokens"], 2048);
    }

    // A null output (a proposer that failed) is sent as the text "None", as the reference's
    // generators do; `--null-references skip` leaves it out, and proposers stay uncalled
    // even when no reference is left.
    std::fs::write(
        sandbox.path().join("nulls.json"),
        r#"[{"output": "first"}, {"output": null}, {"output": "third"}]"#,
    )
    .unwrap();
    for (how, second) in [("none", Some("None")), ("skip", None)] {
        let before = fake.requests().len();
        let args = alpaca_generate(
            data_arg,
            "3",
            how,
            &["--reference-paths", "nulls.json", "--null-references", how],
        );
        let out = moa(sandbox.path(), &args, &[KEY], None).await;
        assert_eq!(out.code, 0, "{}", out.stderr);
        let new: Vec<_> = fake.requests().into_iter().skip(before).collect();
        assert_eq!(new.len(), 3, "only the aggregator, once per item");
        let baseline_second = &baseline[1].0;
        let call = new
            .iter()
            .find(|c| c.messages().last().unwrap().1 == *baseline_second)
            .unwrap();
        let messages = call.messages();
        match second {
            Some(text) => assert_eq!(
                messages[0].1,
                format!("{}\n1. {text}", moa_core::AGGREGATOR_SYSTEM_PROMPT)
            ),
            None => assert_eq!(messages.len(), 1, "no references, no system message"),
        }
    }

    // The report compares the run with published leaderboard numbers.
    let leaderboard = format!(
        "{data_arg}/alpaca_eval/leaderboards/weighted_alpaca_eval_gpt4_turbo_leaderboard.csv"
    );
    let out = moa(
        sandbox.path(),
        &[
            "eval",
            "report",
            "run",
            "--leaderboard",
            &leaderboard,
            "--leaderboard-models",
            "Together-MoA,gpt-4o-2024-05-13",
            "--html",
            "report.html",
        ],
        &[],
        None,
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("Qwen/Qwen1.5-72B-Chat-together") && out.stdout.contains("65.38"),
        "{}",
        out.stdout
    );
    let html = std::fs::read_to_string(sandbox.path().join("report.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("Together-MoA (leaderboard)"));
}

#[tokio::test(flavor = "multi_thread")]
async fn mt_bench_answers_both_turns_at_category_temperatures_and_grades_them() {
    let Some(data) = shared_data() else { return };
    let fake = FakeOpenAi::start().await;
    fake.respond_with(|r| {
        let messages = r.messages();
        if r.model == "judge" {
            // Turn-2 prompts carry the whole conversation; math prompts a reference answer.
            let user = &messages[1].1;
            let score = if user.contains("<|The Start of Reference Answer|>") {
                4
            } else if user.contains("[The Start of Reference Answer]") {
                6
            } else if user.contains("### Assistant A:") {
                8
            } else {
                9
            };
            return Reply::text(format!("Fine. Rating: [[{score}]]"));
        }
        let turn = messages.iter().filter(|(role, _)| role == "user").count();
        Reply::text(format!("answer {turn} from {}", r.model))
    });
    let sandbox = Sandbox::new(&fake, PRESET);
    let data_arg = data.to_str().unwrap();
    let out = moa(
        sandbox.path(),
        &[
            "eval",
            "generate",
            "--bench",
            "mt_bench",
            "--preset",
            "lite",
            "--data",
            data_arg,
            "--out",
            "mt",
            "--parallel",
            "8",
        ],
        &[KEY],
        None,
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let answers =
        std::fs::read_to_string(sandbox.path().join("mt/model_answer/lite.jsonl")).unwrap();
    let lines: Vec<Value> = answers
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 80);
    let ids: Vec<u64> = lines
        .iter()
        .map(|l| l["question_id"].as_u64().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "sorted by question id");
    assert_eq!(lines[0]["model_id"], "lite");
    assert_eq!(lines[0]["answer_id"].as_str().unwrap().len(), 22);
    assert_eq!(
        lines[0]["choices"][0]["turns"],
        serde_json::json!([
            "answer 1 from Qwen/Qwen1.5-72B-Chat",
            "answer 2 from Qwen/Qwen1.5-72B-Chat"
        ])
    );
    // Temperatures per category, for proposers and aggregator alike; max_tokens 1024.
    let questions: HashMap<String, String> =
        std::fs::read_to_string(data.join("mt_bench/question.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .map(|q| {
                (
                    q["turns"][0].as_str().unwrap().to_string(),
                    q["category"].as_str().unwrap().to_string(),
                )
            })
            .collect();
    for call in fake.requests() {
        let messages = call.messages();
        let first_user = &messages.iter().find(|(r, _)| r == "user").unwrap().1;
        let body: Value = serde_json::from_str(call.body_text()).unwrap();
        let expected = match questions[first_user].as_str() {
            "writing" | "roleplay" => 0.7,
            "stem" | "humanities" => 0.1,
            _ => 0.0,
        };
        assert_eq!(
            body["temperature"].as_f64().unwrap(),
            expected,
            "{}",
            questions[first_user]
        );
        assert_eq!(body["max_tokens"], 1024);
        // Turn 2 sees turn 1's aggregated answer as the assistant's.
        if messages.iter().filter(|(r, _)| r == "user").count() == 2 {
            assert!(messages
                .iter()
                .any(|(r, c)| r == "assistant" && c == "answer 1 from Qwen/Qwen1.5-72B-Chat"));
        }
    }

    let out = moa(
        sandbox.path(),
        &[
            "eval",
            "judge",
            "--out",
            "mt",
            "--judge",
            "together:judge",
            "--data",
            data_arg,
            "--parallel",
            "8",
        ],
        &[KEY],
        None,
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    // 50 general questions: turn 1 → 9, turn 2 → 8; 30 math/reasoning/coding: 6 and 4.
    let results: Value = read_json(&sandbox.path().join("mt/results.json"));
    let m = &results["metrics"];
    assert!(
        (m["turn_1"].as_f64().unwrap() - (50.0 * 9.0 + 30.0 * 6.0) / 80.0).abs() < 1e-9,
        "{m}"
    );
    assert!(
        (m["turn_2"].as_f64().unwrap() - (50.0 * 8.0 + 30.0 * 4.0) / 80.0).abs() < 1e-9,
        "{m}"
    );
    assert_eq!(m["by_category"]["math"], 5.0);
    assert_eq!(m["by_category"]["writing"], 8.5);
    let judgments = std::fs::read_to_string(
        sandbox
            .path()
            .join("mt/data/mt_bench/model_judgment/judge_single.jsonl"),
    )
    .unwrap();
    // Where and as FastChat's show_result.py reads them: judges named by model alone.
    let first: Value = serde_json::from_str(judgments.lines().next().unwrap()).unwrap();
    assert_eq!(first["judge"], serde_json::json!(["judge", "single-v1"]));
    assert_eq!(first["score"], 9.0);
    // The reference answers reach the math judge prompts.
    let reference =
        std::fs::read_to_string(data.join("mt_bench/reference_answer/gpt-4.jsonl")).unwrap();
    let r111: Value = reference
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|r| r["question_id"] == 111)
        .unwrap();
    let ref_text = r111["choices"][0]["turns"][0].as_str().unwrap();
    assert!(fake
        .requests_for("judge")
        .iter()
        .any(|r| r.messages()[1].1.contains(ref_text)));
}

#[tokio::test(flavor = "multi_thread")]
async fn flask_reviews_are_aggregated_per_skill() {
    let Some(data) = shared_data() else { return };
    let fake = FakeOpenAi::start().await;
    fake.respond_with(|r| {
        if r.model == "judge" {
            return Reply::text(
                "Good.\n{'Readability': 5, 'Logical_Correctness': 3, 'Conciseness': 4, 'Factuality': 'N/A', 'Commonsense Understanding': 2}",
            )
            .with_usage(700, 1);
        }
        Reply::text(format!("answer from {}", r.model))
    });
    let extra = format!("{PRESET}\n[prices.\"together:judge\"]\ninput = 10.0\noutput = 30.0\n");
    let sandbox = Sandbox::new(&fake, &extra);
    let data_arg = data.to_str().unwrap();
    let out = moa(
        sandbox.path(),
        &[
            "eval", "generate", "--bench", "flask", "--preset", "lite", "--data", data_arg,
            "--out", "fl", "--limit", "4",
        ],
        &[KEY],
        None,
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let answers =
        std::fs::read_to_string(sandbox.path().join("fl/model_output/lite.jsonl")).unwrap();
    assert_eq!(
        answers.lines().next().unwrap(),
        r#"{"question_id":1,"text":"answer from Qwen/Qwen1.5-72B-Chat"}"#
    );
    let judge = [
        "eval",
        "judge",
        "--out",
        "fl",
        "--judge",
        "together:judge",
        "--data",
        data_arg,
        "--parallel",
        "1",
    ];
    // A judging budget smaller than one call: the first review is made and kept, then the job
    // stops, says how far it got, and a rerun without the budget makes only the other three.
    let out = moa(
        sandbox.path(),
        &[&judge[..], &["--job-max-cost", "0.000001"]].concat(),
        &[KEY],
        None,
    )
    .await;
    assert_ne!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("stopped at --job-max-cost $0.000001 ($0.0070 spent): 1 of 4 items judged"),
        "{}",
        out.stderr
    );
    assert_eq!(fake.requests_for("judge").len(), 1);
    let out = moa(sandbox.path(), &judge, &[KEY], None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(fake.requests_for("judge").len(), 4);
    let csv = std::fs::read_to_string(sandbox.path().join("fl/skill_scores.csv")).unwrap();
    assert_eq!(
        csv,
        // Keys read lower-cased with `_` as space; "logical …" counts for its second word;
        // N/A (factuality) counts for nothing.
        "skill,score,count,avg\ncorrectness,12,4,3\ncommonsense,8,4,2\nreadability,20,4,5\nconciseness,16,4,4\n"
    );
    // Reviews as FLASK writes them: an unrated skill is "N/A".
    let review = std::fs::read_to_string(sandbox.path().join("fl/review.jsonl")).unwrap();
    let first: Value = serde_json::from_str(review.lines().next().unwrap()).unwrap();
    assert_eq!(first["score"]["factuality"], "N/A", "{first}");
    assert_eq!(first["score"]["readability"], 5.0, "{first}");
    // Judge calls run concurrently, so their order varies: every review has the ground truth
    // and the rubric, and the skills asked about include readability in one of them.
    let reviews: Vec<String> = fake
        .requests_for("judge")
        .iter()
        .map(|r| r.messages()[1].1.clone())
        .collect();
    assert!(reviews
        .iter()
        .all(|r| r.contains("[Ground truth Answer]") && r.contains("Score 5: ")));
    assert!(
        reviews.iter().any(|r| r.contains("\nReadability: ")),
        "{reviews:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_generation_killed_midway_resumes_without_asking_twice() {
    let Some(data) = shared_data() else { return };
    let fake = FakeOpenAi::start().await;
    let stall = Arc::new(AtomicBool::new(true));
    let gate = stall.clone();
    let third = published(&data, "gpt4_1106_preview")[2].0.clone();
    fake.respond_with(move |r| {
        let prompt = r.messages().last().unwrap().1.clone();
        if prompt == third && gate.load(Ordering::SeqCst) {
            Reply::stall_after("")
        } else {
            Reply::text(format!("answer {}", prompt.len()))
        }
    });
    let sandbox = Sandbox::new(&fake, "");
    let data_arg = data.to_str().unwrap();
    let args = [
        "eval",
        "generate",
        "--bench",
        "alpaca_eval",
        "--model",
        "together:solo",
        "--data",
        data_arg,
        "--limit",
        "5",
        "--parallel",
        "1",
        "--out",
        "run",
    ];
    let mut child = spawn_moa(sandbox.path(), &args);
    fake.wait_for_requests(3).await;
    child.start_kill().unwrap(); // SIGKILL
    child.wait().await.unwrap();
    let journal = sandbox.path().join("run/generation.jsonl");
    assert_eq!(
        std::fs::read_to_string(&journal).unwrap().lines().count(),
        2
    );

    stall.store(false, Ordering::SeqCst);
    let out = moa(sandbox.path(), &args, &[KEY], None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let prompts: Vec<String> = fake
        .requests()
        .iter()
        .map(|r| r.messages().last().unwrap().1.clone())
        .collect();
    let instructions: Vec<String> = published(&data, "gpt4_1106_preview")
        .into_iter()
        .take(5)
        .map(|r| r.0)
        .collect();
    let expected = [
        &instructions[0],
        &instructions[1],
        &instructions[2],
        &instructions[2],
        &instructions[3],
        &instructions[4],
    ];
    assert_eq!(prompts.iter().collect::<Vec<_>>(), expected);
    let outputs: Vec<Value> = read_json(&sandbox.path().join("run/model_outputs.json"));
    assert_eq!(outputs.len(), 5);
    assert_eq!(
        outputs[4]["output"],
        format!("answer {}", instructions[4].len())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_temperature_the_benchmark_sets_itself_is_refused() {
    let fake = FakeOpenAi::start().await;
    let sandbox = Sandbox::new(&fake, PRESET);
    for (bench, flag, says) in [
        (
            "alpaca_eval",
            "--force-temperature",
            "--force-temperature applies to mt_bench",
        ),
        (
            "mt_bench",
            "--temperature",
            "mt_bench takes each category's temperature",
        ),
    ] {
        let args = [
            "eval", "generate", "--bench", bench, "--preset", "lite", "--out", "x", flag, "0.5",
        ];
        let out = moa(sandbox.path(), &args, &[KEY], None).await;
        assert_ne!(out.code, 0);
        assert!(out.stderr.contains(says), "{}", out.stderr);
    }
    assert!(fake.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_judging_killed_while_the_batch_works_resumes_the_same_batch() {
    let Some(data) = shared_data() else { return };
    let baseline_of: HashMap<String, String> =
        published(&data, "gpt4_1106_preview").into_iter().collect();
    let index_of: HashMap<String, usize> = published(&data, "gpt4_1106_preview")
        .into_iter()
        .enumerate()
        .map(|(i, (instruction, _))| (instruction, i))
        .collect();
    let fake = FakeOpenAi::start().await;
    fake.respond_with(move |r| {
        let user = r.messages().last().unwrap().1.clone();
        let instruction = between(&user, "\"instruction\": \"\"\"", "\"\"\",");
        let shown_first = between(&user, "\"output\": \"\"\"", "\"\"\"");
        let p = p_model(index_of[instruction]);
        let p_m = match shown_first != baseline_of[instruction] {
            true => p,
            false => 1.0 - p,
        };
        Reply::text(if p_m >= 0.5 { "m" } else { "M" })
            .with_top_logprobs(&[("m", p_m.ln()), ("M", (1.0 - p_m).ln())])
            .with_usage(700, 1)
    });
    fake.hold_batches(true);
    let extra = format!("{PRESET}\n[prices.\"together:judge\"]\ninput = 10.0\noutput = 30.0\n");
    let sandbox = Sandbox::new(&fake, &extra);
    let data_arg = data.to_str().unwrap();
    let outputs = format!("{data_arg}/alpaca_eval/results/Qwen1.5-110B-Chat/model_outputs.json");
    let judge = |out: &'static str| {
        vec![
            "eval".to_string(),
            "judge".into(),
            "--bench".into(),
            "alpaca_eval".into(),
            "--outputs".into(),
            outputs.clone(),
            "--out".into(),
            out.into(),
            "--judge".into(),
            "together:judge".into(),
            "--data".into(),
            data_arg.into(),
            "--limit".into(),
            "6".into(),
        ]
    };
    let mut batched = judge("batched");
    batched.extend(["--batch".into(), "--batch-poll".into(), "0.01".into()]);
    let batched: Vec<&str> = batched.iter().map(String::as_str).collect();

    // The batch is created and polled (so its id is in the log), then the run is killed.
    let mut child = spawn_moa(sandbox.path(), &batched);
    fake.wait_for_batch_polls(1).await;
    child.start_kill().unwrap(); // SIGKILL
    child.wait().await.unwrap();
    let batches = fake.batches();
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0].custom_ids, ["r0", "r1", "r2", "r3", "r4", "r5"]);
    assert_eq!(fake.requests_for("judge").len(), 6);
    let journal = sandbox
        .path()
        .join("batched/judgments/together_judge.jsonl");
    assert_eq!(
        std::fs::read_to_string(&journal)
            .unwrap_or_default()
            .lines()
            .count(),
        0,
        "nothing judged yet"
    );

    // The batch ends; the rerun reads the same batch instead of submitting another.
    fake.hold_batches(false);
    let out = moa(sandbox.path(), &batched, &[KEY], None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(fake.batches().len(), 1, "no second batch");
    assert!(fake.batch_polls("batch_fake0") >= 2);
    assert_eq!(fake.requests_for("judge").len(), 6, "no call made twice");
    let results: Value = read_json(&sandbox.path().join("batched/results.json"));
    assert_eq!(results["judged"], 6);

    // The same items judged live: the same numbers at twice the price.
    let live = judge("live");
    let live: Vec<&str> = live.iter().map(String::as_str).collect();
    let out = moa(sandbox.path(), &live, &[KEY], None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let live: Value = read_json(&sandbox.path().join("live/results.json"));
    assert_eq!(results["metrics"], live["metrics"]);
    let (b, l) = (
        results["judge_cost"].as_f64().unwrap(),
        live["judge_cost"].as_f64().unwrap(),
    );
    assert!(
        l > 0.0 && (b * 2.0 - l).abs() < 1e-12,
        "batched ${b}, live ${l}"
    );

    // A run with everything judged submits nothing.
    let out = moa(sandbox.path(), &batched, &[KEY], None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(fake.batches().len(), 1);
}

/// A three-layer preset on the fake (two proposer layers, then the aggregator), priced.
const DEEP: &str = r#"
[presets.deep]
proposers = ["together:p-one", "together:p-two"]
aggregator = "together:agg"
layers = 3
[prices."together:p-one"]
input = 1.0
output = 2.0
[prices."together:p-two"]
input = 3.0
output = 4.0
[prices."together:agg"]
input = 5.0
output = 6.0
"#;

/// What a request asked, apart from how it was sent (stream flags, batch wrapping): model,
/// messages exactly as sent, temperature and max_tokens.
fn asked(r: &moa_testkit::Recorded) -> String {
    let j = &r.json;
    format!(
        "{} {} {} {}",
        r.model, j["messages"], j["temperature"], j["max_tokens"]
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_generation_killed_mid_layer_resumes_and_matches_live_generation() {
    let Some(data) = shared_data() else { return };
    let instructions: Vec<String> = published(&data, "gpt4_1106_preview")
        .into_iter()
        .take(3)
        .map(|r| r.0)
        .collect();
    let second = instructions[1].clone();
    let fake = FakeOpenAi::start().await;
    fake.respond_with(move |r| {
        let body_len = r.json["messages"].to_string().len();
        let last = r.messages().last().unwrap().1.clone();
        let text = match r.model.as_str() {
            // An empty answer (after stripping) is never a reference.
            "p-two" if last == second => "  \n".to_string(),
            "agg" => format!("  final over {body_len}  "),
            model => format!("\n{model} says {body_len}\n"),
        };
        Reply::text(text).with_usage(100, 10)
    });
    fake.hold_batches(true);
    let sandbox = Sandbox::new(&fake, DEEP);
    let data_arg = data.to_str().unwrap();
    let generate = |out: &'static str, batch: bool| {
        let mut args = vec![
            "eval",
            "generate",
            "--bench",
            "alpaca_eval",
            "--preset",
            "deep",
            "--data",
            data_arg,
            "--limit",
            "3",
            "--out",
            out,
        ];
        if batch {
            args.extend(["--batch", "--batch-poll", "0.01"]);
        }
        args
    };

    // Layer 1's batch is submitted and polled, then the run is killed.
    let mut child = spawn_moa(sandbox.path(), &generate("batched", true));
    fake.wait_for_batch_polls(1).await;
    child.start_kill().unwrap(); // SIGKILL
    child.wait().await.unwrap();
    let batches = fake.batches();
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0].custom_ids.len(), 6, "3 items x 2 proposers");
    let journal = sandbox.path().join("batched/generation.jsonl");
    assert_eq!(
        std::fs::read_to_string(&journal)
            .unwrap_or_default()
            .lines()
            .count(),
        0,
        "nothing answered yet"
    );

    // The rerun reads the same batch, then sends layer 2 and the aggregators as two more.
    fake.hold_batches(false);
    let out = moa(sandbox.path(), &generate("batched", true), &[KEY], None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let batches = fake.batches();
    assert_eq!(batches.len(), 3, "layer 1 (resumed), layer 2, aggregator");
    assert_eq!(
        batches
            .iter()
            .map(|b| b.custom_ids.len())
            .collect::<Vec<_>>(),
        [6, 6, 3]
    );
    let batched_requests: Vec<String> = fake.requests().iter().map(asked).collect();
    assert_eq!(batched_requests.len(), 15, "no call made twice");

    // The same items generated live: the same requests, byte for byte, and the same answers.
    let out = moa(sandbox.path(), &generate("live", false), &[KEY], None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let mut live_requests: Vec<String> = fake.requests()[15..].iter().map(asked).collect();
    let mut batched_requests = batched_requests;
    live_requests.sort();
    batched_requests.sort();
    assert_eq!(batched_requests, live_requests);
    let answers = |run: &str| -> Vec<Value> {
        read_json::<Vec<Value>>(&sandbox.path().join(run).join("model_outputs.json"))
    };
    let (batched, live) = (answers("batched"), answers("live"));
    assert_eq!(batched, live);
    assert!(batched[0]["output"]
        .as_str()
        .unwrap()
        .starts_with("final over "));
    // The second item's aggregator saw only p-one's answer: its empty one was left out.
    let agg_of_second = fake
        .requests_for("agg")
        .into_iter()
        .find(|r| r.messages().last().unwrap().1 == instructions[1])
        .unwrap();
    let system = &agg_of_second.messages()[0].1;
    assert!(system.contains("p-one says") && !system.contains("p-two says"));

    // Half the live price.
    let cost = |run: &str| -> f64 {
        let text = std::fs::read_to_string(sandbox.path().join(run).join("generation.jsonl"));
        text.unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["cost"]
                    .as_f64()
                    .unwrap()
            })
            .sum()
    };
    let (b, l) = (cost("batched"), cost("live"));
    assert!(
        l > 0.0 && (b * 2.0 - l).abs() < 1e-12,
        "batched ${b}, live ${l}"
    );

    // Everything answered: a rerun submits nothing.
    let out = moa(sandbox.path(), &generate("batched", true), &[KEY], None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(fake.batches().len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn mt_bench_batch_generation_answers_the_second_turn_after_the_first() {
    let Some(data) = shared_data() else { return };
    let fake = FakeOpenAi::start().await;
    fake.respond_with(|r| {
        let turns = r
            .messages()
            .iter()
            .filter(|(role, _)| role == "user")
            .count();
        Reply::text(format!("{} on turn {turns}", r.model)).with_usage(50, 5)
    });
    let sandbox = Sandbox::new(&fake, DEEP);
    let data_arg = data.to_str().unwrap();
    let generate = |out: &'static str, batch: bool| {
        let mut args = vec![
            "eval", "generate", "--bench", "mt_bench", "--preset", "deep", "--data", data_arg,
            "--limit", "2", "--out", out,
        ];
        if batch {
            args.extend(["--batch", "--batch-poll", "0.01"]);
        }
        args
    };
    let out = moa(sandbox.path(), &generate("batched", true), &[KEY], None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    // Two turns of (layer 1, layer 2, aggregator).
    let sizes: Vec<usize> = fake.batches().iter().map(|b| b.custom_ids.len()).collect();
    assert_eq!(sizes, [4, 4, 2, 4, 4, 2]);
    let batched: Vec<String> = fake.requests().iter().map(asked).collect();
    let out = moa(sandbox.path(), &generate("live", false), &[KEY], None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let mut live: Vec<String> = fake.requests()[batched.len()..].iter().map(asked).collect();
    let mut batched = batched;
    live.sort();
    batched.sort();
    assert_eq!(batched, live);
    let turns = |run: &str| -> Vec<Value> {
        let dir = sandbox.path().join(run).join("model_answer");
        let file = std::fs::read_dir(&dir)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        std::fs::read_to_string(file)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap()["choices"][0]["turns"].clone())
            .collect()
    };
    let answered = turns("batched");
    assert_eq!(answered, turns("live"));
    assert_eq!(
        answered[0],
        serde_json::json!(["agg on turn 1", "agg on turn 2"])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn both_orders_measure_a_judge_that_prefers_whatever_comes_first() {
    let Some(data) = shared_data() else { return };
    let fake = FakeOpenAi::start().await;
    // A judge with pure position bias: the first output shown wins with 0.8.
    fake.respond_with(|_| {
        Reply::text("m")
            .with_top_logprobs(&[("m", 0.8f64.ln()), ("M", 0.2f64.ln())])
            .with_usage(700, 1)
    });
    let sandbox = Sandbox::new(&fake, PRESET);
    let data_arg = data.to_str().unwrap();
    let outputs = format!("{data_arg}/alpaca_eval/results/Qwen1.5-110B-Chat/model_outputs.json");
    let args = [
        "eval",
        "judge",
        "--bench",
        "alpaca_eval",
        "--outputs",
        &outputs,
        "--out",
        "both",
        "--judge",
        "together:judge",
        "--data",
        data_arg,
        "--limit",
        "6",
        "--both-orders",
    ];
    let out = moa(sandbox.path(), &args, &[KEY], None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        fake.requests_for("judge").len(),
        12,
        "every comparison twice"
    );
    // AlpacaEval shows the model first only on item 1 of the first six ("010000"): 0.8 there,
    // 0.2 elsewhere; traded, the other way round. The winner never holds.
    let results: Value = read_json(&sandbox.path().join("both/results.json"));
    let m = &results["metrics"];
    assert!((m["win_rate"].as_f64().unwrap() - 30.0).abs() < 1e-9, "{m}");
    let bias = &m["position_bias"];
    assert_eq!(bias["pairs"], 6);
    assert_eq!(bias["agreement"].as_f64(), Some(0.0));
    assert!(
        (bias["win_rate_traded"].as_f64().unwrap() - 70.0).abs() < 1e-9,
        "{bias}"
    );
    assert!(
        (bias["mean_abs_difference"].as_f64().unwrap() - 60.0).abs() < 1e-9,
        "{bias}"
    );
    assert!(
        out.stdout.contains("the winner held in 0.0% of 6"),
        "{}",
        out.stdout
    );
    // annotations.json keeps AlpacaEval's order only.
    let annotations: Vec<Value> = read_json(&sandbox.path().join("both/annotations.json"));
    assert_eq!(annotations.len(), 6);
    // Single-answer benchmarks have no order to trade.
    let out = moa(
        sandbox.path(),
        &[
            "eval",
            "judge",
            "--bench",
            "mt_bench",
            "--outputs",
            &outputs,
            "--out",
            "mt",
            "--judge",
            "together:judge",
            "--data",
            data_arg,
            "--both-orders",
        ],
        &[KEY],
        None,
    )
    .await;
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("--both-orders applies to alpaca_eval"),
        "{}",
        out.stderr
    );
}
