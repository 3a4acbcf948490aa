use moa_core::AGGREGATOR_SYSTEM_PROMPT;
use moa_testkit::{FakeOpenAi, Reply};

use crate::{moa, Sandbox, KEY};

const AGGREGATOR: &str = "Qwen/Qwen2.5-72B-Instruct-Turbo";

/// Proposers answer "<short model name> proposes"; the aggregator (second request for its
/// model, after the proposer's) answers `final_answer`.
fn script(fake: &FakeOpenAi, final_answer: &'static str) {
    fake.respond_with(move |r| {
        let is_aggregator = r
            .messages()
            .first()
            .is_some_and(|(role, _)| role == "system");
        if is_aggregator {
            Reply::text(final_answer)
        } else {
            Reply::text(format!("{} proposes", r.model.rsplit('/').next().unwrap()))
        }
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn ask_streams_the_final_answer_to_stdout() {
    let fake = FakeOpenAi::start().await;
    script(&fake, "Paris is the capital of France.");
    let sandbox = Sandbox::new(&fake, "");
    let out = moa(
        sandbox.path(),
        &["ask", "What is the capital of France?"],
        &[KEY],
        None,
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "Paris is the capital of France.\n");
    assert_eq!(out.stderr, "");
    let requests = fake.requests();
    assert_eq!(requests.len(), 5);
    assert_eq!(requests[0].header("authorization"), Some("Bearer sk-test"));
    let agg = requests.iter().find(|r| r.messages().len() == 2).unwrap();
    assert_eq!(agg.model, AGGREGATOR);
    assert!(agg.messages()[0].1.starts_with(AGGREGATOR_SYSTEM_PROMPT));
    assert!(agg.messages()[0]
        .1
        .contains("\n1. Llama-3.3-70B-Instruct-Turbo proposes\n2. "));
}

#[tokio::test(flavor = "multi_thread")]
async fn ask_reads_the_prompt_from_stdin_and_adds_a_system_message() {
    let fake = FakeOpenAi::start().await;
    script(&fake, "ok");
    let sandbox = Sandbox::new(&fake, "");
    let out = moa(
        sandbox.path(),
        &["ask", "--system", "Be terse.", "-"],
        &[KEY],
        Some("a prompt\nover two lines\n"),
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let first = &fake.requests()[0];
    assert_eq!(
        first.messages(),
        vec![
            ("system".to_string(), "Be terse.".to_string()),
            ("user".to_string(), "a prompt\nover two lines\n".to_string())
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn show_proposals_prints_each_answer_with_model_and_latency_to_stderr() {
    let fake = FakeOpenAi::start().await;
    script(&fake, "final");
    let sandbox = Sandbox::new(&fake, "");
    let out = moa(
        sandbox.path(),
        &["ask", "--show-proposals", "Q"],
        &[KEY],
        None,
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "final\n");
    for model in [
        "Llama-3.3-70B-Instruct-Turbo",
        "Qwen2.5-Coder-32B-Instruct",
        "WizardLM-2-8x22B",
    ] {
        let header = "── layer 1/2 · together:";
        assert!(out.stderr.contains(header), "{}", out.stderr);
        assert!(
            out.stderr.contains(&format!("{model} proposes\n")),
            "{}",
            out.stderr
        );
    }
    assert!(out.stderr.contains("s · "), "latency shown: {}", out.stderr);
    assert!(
        out.stderr
            .contains(&format!("── aggregator · together:{AGGREGATOR}")),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn json_prints_the_whole_trace() {
    let fake = FakeOpenAi::start().await;
    script(&fake, "final");
    let sandbox = Sandbox::new(&fake, "");
    let out = moa(
        sandbox.path(),
        &["ask", "--json", "--layers", "3", "Q"],
        &[KEY],
        None,
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let trace: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(trace["preset"], "together");
    assert_eq!(trace["answer"], "final");
    assert_eq!(trace["layers"].as_array().unwrap().len(), 2);
    assert_eq!(trace["layers"][1]["calls"].as_array().unwrap().len(), 4);
    assert_eq!(trace["layers"][0]["calls"][0]["status"], "ok");
    assert!(trace["layers"][0]["calls"][0]["latency_ms"].is_u64());
    assert_eq!(
        trace["aggregator"]["model"],
        format!("together:{AGGREGATOR}")
    );
    let by_model = trace["usage_by_model"].as_object().unwrap();
    assert_eq!(by_model.len(), 4);
    let total: u64 = by_model
        .values()
        .map(|u| u["total_tokens"].as_u64().unwrap())
        .sum();
    assert_eq!(trace["usage"]["total_tokens"].as_u64().unwrap(), total);
}

#[tokio::test(flavor = "multi_thread")]
async fn flags_reshape_the_run() {
    let fake = FakeOpenAi::start().await;
    script(&fake, "final");
    let sandbox = Sandbox::new(
        &fake,
        "[providers.mine]\nbase_url = \"http://127.0.0.1:1/v1\"\n",
    );
    let base = fake.base_url();
    let args = [
        "ask",
        "--proposers",
        "together:a/one,together:b/two",
        "--aggregator",
        "together:c/agg",
        "--temperature",
        "0",
        "--max-tokens",
        "77",
        "Q",
    ];
    let out = moa(sandbox.path(), &args, &[KEY], None).await;
    assert_eq!(out.code, 0, "{} {base}", out.stderr);
    let requests = fake.requests();
    assert_eq!(requests.len(), 3);
    for r in &requests {
        // The reference sends a zero temperature as the integer 0.
        assert!(
            r.body_text().contains(r#""temperature":0,"max_tokens":77"#),
            "{}",
            r.body_text()
        );
    }
    assert_eq!(requests[2].model, "c/agg");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_api_key_names_the_variable_and_the_preset() {
    let fake = FakeOpenAi::start().await;
    let sandbox = Sandbox::new(&fake, "");
    let out = moa(
        sandbox.path(),
        &["ask", "--preset", "moa-lite", "Q"],
        &[],
        None,
    )
    .await;
    assert_eq!(out.code, 3);
    assert!(
        out.stderr.starts_with(
            "moa: preset `moa-lite` needs an API key: set TOGETHER_API_KEY (for together)"
        ),
        "{}",
        out.stderr
    );
    assert!(fake.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_config_typo_names_the_file_and_the_key() {
    let fake = FakeOpenAi::start().await;
    let sandbox = Sandbox::new(
        &fake,
        "[presets.x]\naggregator = \"together:m\"\nmax_tokenz = 5\n",
    );
    let out = moa(sandbox.path(), &["ask", "Q"], &[KEY], None).await;
    assert_eq!(out.code, 2);
    let config = sandbox.config.canonicalize().unwrap().display().to_string();
    assert!(
        out.stderr
            .contains(&format!("error in config file {config}")),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("unknown field `max_tokenz`"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn all_proposers_failing_exits_1_with_each_reason() {
    let fake = FakeOpenAi::start().await;
    fake.respond_with(|_| {
        Reply::error(403, "permission_denied", "model not available on your plan")
    });
    let sandbox = Sandbox::new(&fake, "");
    let out = moa(sandbox.path(), &["ask", "Q"], &[KEY], None).await;
    assert_eq!(out.code, 1);
    assert_eq!(out.stdout, "");
    assert!(
        out.stderr
            .contains("layer 1: only 0 of 4 proposers answered, 1 needed"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("together:microsoft/WizardLM-2-8x22B: together: HTTP 403: model not available on your plan"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_config_preset_on_a_custom_endpoint_runs_without_a_key() {
    let fake = FakeOpenAi::start().await;
    script(&fake, "from my own server");
    let config = format!(
        "preset = \"local-mix\"\n[providers.box]\nbase_url = \"{}\"\n[presets.local-mix]\nproposers = [\"box:p1\", \"box:p2\"]\naggregator = {{ model = \"box:agg\", temperature = 0.1 }}\nmax_tokens = 64\nprompt_style = \"tagged\"\n",
        fake.base_url()
    );
    let sandbox = Sandbox::new(&fake, &config);
    let out = moa(sandbox.path(), &["ask", "Q"], &[], None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "from my own server\n");
    let agg = fake.requests_for("agg").remove(0);
    assert_eq!(agg.json["temperature"], 0.1);
    assert_eq!(agg.json["max_tokens"], 64);
    assert!(agg.messages()[0]
        .1
        .contains("<response id=\"1\" model=\"box:p1\">\np1 proposes\n</response>"));
    assert!(agg.header("authorization").is_none());
}

/// The usual fake, but the fourth `together` proposer (WizardLM) sends a little and stalls.
async fn stalled_wizard(final_answer: &'static str) -> FakeOpenAi {
    let fake = FakeOpenAi::start().await;
    script(&fake, final_answer);
    fake.push(
        "microsoft/WizardLM-2-8x22B",
        Reply::stall_after("still thinking"),
    );
    fake
}

#[tokio::test(flavor = "multi_thread")]
async fn timeout_flag_drops_a_stalled_proposer_and_the_run_goes_on() {
    let fake = stalled_wizard("done without the slow one").await;
    let sandbox = Sandbox::new(&fake, "");
    let out = moa(
        sandbox.path(),
        &["ask", "--timeout", "0.5", "--json", "Q"],
        &[KEY],
        None,
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let trace: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let wizard = &trace["layers"][0]["calls"][3];
    assert_eq!(wizard["status"], "failed");
    assert_eq!(wizard["error"], "together: no answer within 0.5s");
    assert_eq!(trace["answer"], "done without the slow one");
    let agg = fake.requests().into_iter().last().unwrap();
    assert!(
        !agg.messages()[0].1.contains("\n4. "),
        "the stalled proposer is left out"
    );
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_exits_130_and_closes_the_upstream_connection() {
    let fake = FakeOpenAi::start().await;
    script(&fake, "unused");
    fake.push(AGGREGATOR, Reply::text("proposal"));
    fake.push(AGGREGATOR, Reply::stall_after("The answer begins"));
    let sandbox = Sandbox::new(&fake, "");
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_moa"))
        .args(["ask", "Q"])
        .current_dir(sandbox.path())
        .env_clear()
        .env("HOME", sandbox.path())
        .env("MOA_CONFIG", &sandbox.config)
        .env(KEY.0, KEY.1)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The aggregator's request is the fifth; once it is streaming, interrupt.
    fake.wait_for_requests(5).await;
    let pid = child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().await.unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr), "moa: interrupted\n");
    assert_eq!(fake.wait_ending(4).await, moa_testkit::Ending::ClientGone);
}

/// The aggregator (the call given `response_format`) answers `first`, and `repaired` when asked
/// to repair; proposers answer in text.
fn structured(fake: &FakeOpenAi, first: &'static str, repaired: &'static str) {
    fake.respond_with(move |r| {
        let last = r
            .messages()
            .last()
            .map(|(_, c)| c.clone())
            .unwrap_or_default();
        match r.json.get("response_format").is_some() {
            true if last.starts_with("Your answer cannot be used") => Reply::text(repaired),
            true => Reply::text(first),
            false => Reply::text("Paris, population about two million"),
        }
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn ask_can_require_json_and_repairs_it_once() {
    let fake = FakeOpenAi::start().await;
    structured(
        &fake,
        "```json\n{\"city\": \"Paris\"}\n```",
        r#"{"city": "Paris"}"#,
    );
    let sandbox = Sandbox::new(&fake, "");
    let out = moa(
        sandbox.path(),
        &[
            "ask",
            "--response-format",
            "json",
            "Capital of France, as JSON?",
        ],
        &[KEY],
        None,
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "{\"city\": \"Paris\"}\n");
    let agg = fake
        .requests()
        .into_iter()
        .find(|r| r.json.get("response_format").is_some())
        .unwrap();
    assert_eq!(
        agg.json["response_format"],
        serde_json::json!({"type": "json_object"})
    );

    // A schema the answer never meets, even after the repair: an error, exit 1.
    let schema = sandbox.path().join("city.json");
    std::fs::write(
        &schema,
        r#"{"type": "object", "required": ["city", "population"]}"#,
    )
    .unwrap();
    let out = moa(
        sandbox.path(),
        &[
            "ask",
            "--json",
            "--response-schema",
            schema.to_str().unwrap(),
            "Paris?",
        ],
        &[KEY],
        None,
    )
    .await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("\"population\" is a required property"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("after one repair"), "{}", out.stderr);

    let bad = sandbox.path().join("bad.json");
    std::fs::write(&bad, "{not json").unwrap();
    let out = moa(
        sandbox.path(),
        &["ask", "--response-schema", bad.to_str().unwrap(), "Paris?"],
        &[KEY],
        None,
    )
    .await;
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("bad.json is not JSON"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ask_offers_tools_and_prints_the_calls_the_aggregator_makes() {
    let fake = FakeOpenAi::start().await;
    fake.respond_with(|r| match r.json.get("tools").is_some() {
        true => Reply::tool_calls(&[("call_1", "get_weather", r#"{"city":"Oslo"}"#)]),
        false => Reply::text("call get_weather for Oslo"),
    });
    let sandbox = Sandbox::new(&fake, "");
    let tools = sandbox.path().join("tools.json");
    std::fs::write(
        &tools,
        r#"[{"type": "function", "function": {"name": "get_weather", "description": "Weather now.",
             "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]"#,
    )
    .unwrap();
    let out = moa(
        sandbox.path(),
        &[
            "ask",
            "--tools",
            tools.to_str().unwrap(),
            "Weather in Oslo?",
        ],
        &[KEY],
        None,
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.stdout,
        "{\"id\":\"call_1\",\"name\":\"get_weather\",\"arguments\":\"{\\\"city\\\":\\\"Oslo\\\"}\"}\n"
    );
    let proposer = fake
        .requests()
        .into_iter()
        .find(|r| r.json.get("tools").is_none())
        .unwrap();
    assert!(proposer.messages()[0]
        .1
        .starts_with("The assistant that answers this conversation can call these tools:\n- get_weather: Weather now."));

    std::fs::write(&tools, r#"[{"type": "retrieval"}]"#).unwrap();
    let out = moa(
        sandbox.path(),
        &["ask", "--tools", tools.to_str().unwrap(), "x"],
        &[KEY],
        None,
    )
    .await;
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("tools.json: `tools`"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn quorum_flags_cancel_a_stalled_proposer_and_the_config_sets_the_policy() {
    let fake = stalled_wizard("done by quorum").await;
    let sandbox = Sandbox::new(&fake, "");
    let out = moa(
        sandbox.path(),
        &["ask", "--quorum", "3", "--json", "Q"],
        &[KEY],
        None,
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let trace: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(trace["layers"][0]["calls"][3]["status"], "cancelled");
    assert_eq!(
        trace["degraded"][0]["model"],
        "together:microsoft/WizardLM-2-8x22B"
    );
    assert_eq!(trace["answer"], "done by quorum");

    // The same from the config file's top level.
    let fake = stalled_wizard("done by quorum").await;
    let sandbox = Sandbox::new(&fake, "[policy]\nquorum = 3\n");
    let out = moa(sandbox.path(), &["ask", "--json", "Q"], &[KEY], None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let trace: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(trace["layers"][0]["calls"][3]["status"], "cancelled");

    let sandbox = Sandbox::new(
        &fake,
        "[presets.x]\naggregator = \"together:m\"\npolicy = { quorum = 0 }\n",
    );
    let out = moa(sandbox.path(), &["ask", "Q"], &[KEY], None).await;
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("presets.x.policy.quorum"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("must be at least 1"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn budget_flags_cap_the_calls_or_refuse_a_run_that_cannot_fit() {
    let fake = FakeOpenAi::start().await;
    script(&fake, "cheap answer");
    let sandbox = Sandbox::new(&fake, "");
    let out = moa(
        sandbox.path(),
        &["ask", "--max-tokens-total", "40", "Q"],
        &[KEY],
        None,
    )
    .await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("max_tokens_total 40"), "{}", out.stderr);
    assert!(fake.requests().is_empty(), "refused before any call");

    // $0.002 at Together's prices: every call is sent with a max_tokens that fits.
    let out = moa(
        sandbox.path(),
        &["ask", "--max-cost", "0.002", "--json", "Q"],
        &[KEY],
        None,
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let trace: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(trace["answer"], "cheap answer");
    for request in fake.requests() {
        let cap = request.json["max_tokens"]
            .as_u64()
            .expect("every call capped");
        assert!(cap < 2048, "{cap}");
    }
    assert!(trace["degraded"]
        .as_array()
        .unwrap()
        .iter()
        .all(|d| d["kind"] == "capped"));

    let out = moa(
        sandbox.path(),
        &["ask", "--max-cost", "-1", "Q"],
        &[KEY],
        None,
    )
    .await;
    assert_eq!(out.code, 2);
}
