//! Whole MoA runs over HTTP with the built-in presets: the request bodies the reference sends.

use std::time::Duration;

use futures::StreamExt;
use moa_core::preset::builtin_presets;
use moa_core::{Message, Moa, MoaError, Preset, RunEvent, RunOptions, AGGREGATOR_SYSTEM_PROMPT};
use moa_testkit::{Ending, FakeOpenAi, Reply};

use crate::registry_for;

fn preset(name: &str) -> Preset {
    builtin_presets()
        .into_iter()
        .find(|p| p.name == name)
        .unwrap()
}

/// A layer's answers as the reference numbers them: `\n1. a\n2. b`.
fn numbered(layer: &moa_core::LayerTrace) -> String {
    layer
        .calls
        .iter()
        .enumerate()
        .map(|(i, c)| format!("\n{}. {}", i + 1, c.answer.as_deref().unwrap()))
        .collect()
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// Answers every proposer with "<model> says <n>" so references are recognisable.
fn answer_with_model_names(fake: &FakeOpenAi) {
    fake.respond_with(|r| {
        let short = r.model.rsplit('/').next().unwrap_or_default().to_string();
        Reply::text(format!("{short} says {}", r.seq))
    });
}

#[tokio::test]
async fn together_preset_sends_the_reference_bodies_byte_for_byte() {
    let fake = FakeOpenAi::start().await;
    let registry = registry_for(&fake);
    let proposers = [
        "meta-llama/Llama-3.3-70B-Instruct-Turbo",
        "Qwen/Qwen2.5-72B-Instruct-Turbo",
        "Qwen/Qwen2.5-Coder-32B-Instruct",
        "microsoft/WizardLM-2-8x22B",
    ];
    for (i, m) in proposers.iter().enumerate() {
        fake.push(m, Reply::text(format!("  Answer {} about SF.\n", i + 1)));
    }
    fake.push("Qwen/Qwen2.5-72B-Instruct-Turbo", Reply::text("Final."));
    // The aggregator shares its model with a proposer: queue order decides, so make the
    // proposer's reply the first one for that model.
    let moa = Moa::new(
        registry.bind(&preset("together")).unwrap(),
        RunOptions::default(),
    );
    let prompt = "What are 3 fun things to do in SF?";
    let trace = moa.run_to_end(vec![Message::user(prompt)]).await.unwrap();
    assert_eq!(trace.answer, "Final.");

    let requests = fake.requests();
    assert_eq!(requests.len(), 5);
    for (i, m) in proposers.iter().enumerate() {
        let r = requests
            .iter()
            .find(|r| r.model == *m && r.seq < 4)
            .unwrap();
        assert_eq!(
            r.body_text(),
            format!(
                r#"{{"model":"{m}","messages":[{{"role":"user","content":{}}}],"temperature":0.7,"max_tokens":512,"stream":true,"stream_options":{{"include_usage":true}}}}"#,
                json_str(prompt)
            ),
            "proposer {i}"
        );
    }
    let system = format!(
        "{AGGREGATOR_SYSTEM_PROMPT}\n1. Answer 1 about SF.\n2. Answer 2 about SF.\n3. Answer 3 about SF.\n4. Answer 4 about SF."
    );
    // moa.py streams the aggregator with no temperature and no max_tokens.
    assert_eq!(
        requests[4].body_text(),
        format!(
            r#"{{"model":"Qwen/Qwen2.5-72B-Instruct-Turbo","messages":[{{"role":"system","content":{}}},{{"role":"user","content":{}}}],"stream":true,"stream_options":{{"include_usage":true}}}}"#,
            json_str(&system),
            json_str(prompt)
        )
    );
}

#[tokio::test]
async fn paper_moa_preset_runs_three_layers_with_its_settings() {
    let fake = FakeOpenAi::start().await;
    answer_with_model_names(&fake);
    let registry = registry_for(&fake);
    let moa = Moa::new(
        registry.bind(&preset("moa")).unwrap(),
        RunOptions::default(),
    );
    let trace = moa
        .run_to_end(vec![Message::user("Explain MoA.")])
        .await
        .unwrap();
    assert_eq!(trace.layers.len(), 2);
    let requests = fake.requests();
    assert_eq!(requests.len(), 13);
    let refs = numbered(&trace.layers[0]);
    for r in &requests[..6] {
        assert_eq!(
            r.messages(),
            vec![("user".to_string(), "Explain MoA.".to_string())]
        );
        assert_eq!(r.json["temperature"], 0.7);
        assert_eq!(r.json["max_tokens"], 2048);
    }
    for r in &requests[6..12] {
        assert_eq!(
            r.messages()[0].1,
            format!("{AGGREGATOR_SYSTEM_PROMPT}{refs}")
        );
        assert_eq!(r.messages()[1].1, "Explain MoA.");
    }
    let agg = &requests[12];
    assert_eq!(agg.model, "Qwen/Qwen1.5-110B-Chat");
    assert_eq!(agg.json["temperature"], 0.7);
    assert_eq!(agg.json["max_tokens"], 2048);
    let layer2_refs = numbered(&trace.layers[1]);
    assert_eq!(
        agg.messages()[0].1,
        format!("{AGGREGATOR_SYSTEM_PROMPT}{layer2_refs}")
    );
    // Usage per model sums over both layers.
    let wizard = &trace.usage_by_model["together:microsoft/WizardLM-2-8x22B"];
    let calls: u64 = trace
        .layers
        .iter()
        .flat_map(|l| &l.calls)
        .filter(|c| c.model == "together:microsoft/WizardLM-2-8x22B")
        .map(|c| c.usage.unwrap().total_tokens)
        .sum();
    assert_eq!(wizard.total_tokens, calls);
}

#[tokio::test]
async fn three_layer_preset_and_an_existing_system_message() {
    let fake = FakeOpenAi::start().await;
    answer_with_model_names(&fake);
    let registry = registry_for(&fake);
    let moa = Moa::new(
        registry.bind(&preset("together-3layer")).unwrap(),
        RunOptions::default(),
    );
    let messages = vec![
        Message::system("Answer in French."),
        Message::user("Bonjour?"),
    ];
    let trace = moa.run_to_end(messages).await.unwrap();
    let requests = fake.requests();
    assert_eq!(requests.len(), 9);
    assert_eq!(
        requests[0].messages()[0],
        ("system".to_string(), "Answer in French.".to_string())
    );
    let refs = numbered(&trace.layers[0]);
    assert_eq!(
        requests[5].messages()[0].1,
        format!("Answer in French.\n\n{AGGREGATOR_SYSTEM_PROMPT}{refs}")
    );
    assert_eq!(requests[8].model, "deepseek-ai/DeepSeek-V3");
    assert_eq!(requests[8].messages().len(), 2);
}

#[tokio::test]
async fn proposers_are_requested_concurrently_over_http() {
    let fake = FakeOpenAi::start().await;
    // No proposer answers before all four requests have arrived.
    fake.respond_with(|r| Reply::text(format!("from {}", r.model)).after_requests(4));
    let registry = registry_for(&fake);
    let moa = Moa::new(
        registry.bind(&preset("together")).unwrap(),
        RunOptions::default(),
    );
    let run = moa.run_to_end(vec![Message::user("Q")]);
    let trace = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("proposers were serialised");
    assert_eq!(trace.unwrap().layers[0].calls.len(), 4);
    let requests = fake.requests();
    let last_proposer = requests[..4].iter().map(|r| r.received_at).max().unwrap();
    let first_end = (0..4).filter_map(|s| fake.ended_at(s)).min().unwrap();
    assert!(
        last_proposer <= first_end,
        "all four were in flight together"
    );
}

#[tokio::test]
async fn partial_failure_continues_with_the_rest() {
    let fake = FakeOpenAi::start().await;
    answer_with_model_names(&fake);
    fake.push(
        "Qwen/Qwen2.5-Coder-32B-Instruct",
        Reply::error(400, "invalid_request_error", "context too long"),
    );
    fake.push(
        "microsoft/WizardLM-2-8x22B",
        Reply::disconnect_after("I think"),
    );
    let registry = registry_for(&fake);
    let moa = Moa::new(
        registry.bind(&preset("together")).unwrap(),
        RunOptions::default(),
    );
    let mut stream = moa.run(vec![Message::user("Q")]);
    let mut failures = Vec::new();
    let mut trace = None;
    while let Some(event) = stream.next().await {
        match event.unwrap() {
            RunEvent::ProposerFailed { model, error, .. } => failures.push((model, error)),
            RunEvent::Done(t) => trace = Some(t),
            _ => {}
        }
    }
    failures.sort();
    assert_eq!(failures.len(), 2);
    assert_eq!(failures[0].0, "together:Qwen/Qwen2.5-Coder-32B-Instruct");
    assert_eq!(failures[0].1, "together: HTTP 400: context too long");
    assert!(
        failures[1].1.contains("stream broke off"),
        "{}",
        failures[1].1
    );
    let agg = fake.requests().into_iter().last().unwrap();
    let system = &agg.messages()[0].1;
    assert!(
        system.contains("\n1. Llama-3.3-70B-Instruct-Turbo says"),
        "{system}"
    );
    assert!(
        system.contains("\n2. Qwen2.5-72B-Instruct-Turbo says"),
        "{system}"
    );
    assert!(!system.contains("\n3. "), "{system}");
    assert_eq!(trace.unwrap().layers[0].calls.len(), 4);
}

#[tokio::test]
async fn all_proposers_failing_gives_a_clear_error() {
    let fake = FakeOpenAi::start().await;
    fake.respond_with(|_| Reply::error(401, "invalid_api_key", "Invalid API key provided"));
    let registry = registry_for(&fake);
    let moa = Moa::new(
        registry.bind(&preset("together")).unwrap(),
        RunOptions::default(),
    );
    let err = moa.run_to_end(vec![Message::user("Q")]).await.unwrap_err();
    assert!(matches!(
        err,
        MoaError::TooFewProposals {
            succeeded: 0,
            total: 4,
            ..
        }
    ));
    let text = err.to_string();
    assert!(
        text.starts_with("layer 1: only 0 of 4 proposers answered, 1 needed"),
        "{text}"
    );
    assert!(
        text.contains(
            "together:microsoft/WizardLM-2-8x22B: together: HTTP 401: Invalid API key provided"
        ),
        "{text}"
    );
    // 401 is not retried, and the aggregator is never called.
    assert_eq!(fake.requests().len(), 4);
}

#[tokio::test]
async fn dropping_a_run_closes_every_upstream_connection() {
    let fake = FakeOpenAi::start().await;
    fake.respond_with(|_| Reply::stall_after("thinking..."));
    let registry = registry_for(&fake);
    let moa = Moa::new(
        registry.bind(&preset("together")).unwrap(),
        RunOptions::default(),
    );
    let mut stream = moa.run(vec![Message::user("Q")]);
    let mut streaming = std::collections::HashSet::new();
    while streaming.len() < 4 {
        if let RunEvent::ProposerDelta { index, .. } = stream.next().await.unwrap().unwrap() {
            streaming.insert(index);
        }
    }
    drop(stream);
    for seq in 0..4 {
        let ending = tokio::time::timeout(Duration::from_secs(10), fake.wait_ending(seq)).await;
        assert_eq!(ending, Ok(Ending::ClientGone), "request {seq}");
    }
}

#[tokio::test]
async fn non_streaming_proposers_send_whole_requests() {
    let fake = FakeOpenAi::start().await;
    answer_with_model_names(&fake);
    let registry = registry_for(&fake);
    let options = RunOptions {
        stream_proposers: false,
        ..RunOptions::default()
    };
    let moa = Moa::new(registry.bind(&preset("moa-lite")).unwrap(), options);
    let trace = moa.run_to_end(vec![Message::user("Q")]).await.unwrap();
    let requests = fake.requests();
    assert!(requests[..6].iter().all(|r| !r.is_stream()));
    assert!(requests[6].is_stream(), "the aggregator is always streamed");
    assert!(trace.layers[0].calls.iter().all(|c| c.usage.is_some()));
}

/// The `appended` style keeps the conversation as sent, a prefix whose bytes a second turn
/// repeats, and both aggregations of n = 2 send the same body.
#[tokio::test]
async fn the_appended_style_keeps_a_byte_stable_prefix_across_turns() {
    let fake = FakeOpenAi::start().await;
    answer_with_model_names(&fake);
    let registry = registry_for(&fake);
    let mut preset = preset("together");
    preset.prompt_style = moa_core::PromptStyle::Appended;
    let moa = Moa::new(registry.bind(&preset).unwrap(), RunOptions::default());
    let first = vec![Message::system("Be brief."), Message::user("What is MoA?")];
    let trace = moa.run_to_end(first.clone()).await.unwrap();
    let is_aggregator = |r: &moa_testkit::Recorded| {
        r.json["messages"].as_array().unwrap().last().unwrap()["content"]
            .as_str()
            .unwrap()
            .starts_with(AGGREGATOR_SYSTEM_PROMPT)
    };
    let aggregator = |from: usize| {
        fake.requests()
            .into_iter()
            .skip(from)
            .find(is_aggregator)
            .unwrap()
    };
    let turn1 = aggregator(0);
    // The system prompt is untouched; the references are the last message.
    assert_eq!(turn1.json["messages"][0]["content"], "Be brief.");
    assert_eq!(turn1.json["messages"].as_array().unwrap().len(), 3);

    let seen = fake.requests().len();
    let mut second = first.clone();
    second.push(Message::assistant(trace.answer.clone()));
    second.push(Message::user("And why does it work?"));
    let mut request = moa_core::RunRequest::new(second);
    request.n = 2;
    moa.run_request_to_end(request).await.unwrap();
    let turn2 = aggregator(seen);
    // Byte for byte, turn 2's body starts as turn 1's did, up to the end of the first
    // question: the prefix a provider's cache already holds.
    let (one, two) = (turn1.body_text(), turn2.body_text());
    let question = one.find("What is MoA?").unwrap() + "What is MoA?\"}".len();
    assert_eq!(one[..question], two[..question]);
    // Both aggregations of the turn sent the same body.
    let aggregations: Vec<String> = fake
        .requests()
        .into_iter()
        .skip(seen)
        .filter(is_aggregator)
        .map(|r| r.body_text().to_string())
        .collect();
    assert_eq!(aggregations.len(), 2);
    assert_eq!(aggregations[0], aggregations[1]);
}
