use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use moa_core::{
    AgentSpec, CallStatus, Message, Moa, MoaError, Plan, Preset, PresetError, PromptStyle,
    Provider, RunEvent, RunOptions, Trace, AGGREGATOR_SYSTEM_PROMPT,
};
use moa_testkit::{Ending, Reply, ScriptedProvider};

pub(crate) fn preset(layers: Vec<Vec<&str>>, aggregator: &str) -> Preset {
    Preset {
        name: "test".into(),
        description: String::new(),
        layers: layers
            .into_iter()
            .map(|l| l.into_iter().map(AgentSpec::new).collect())
            .collect(),
        aggregator: AgentSpec::new(aggregator),
        prompt_style: PromptStyle::Reference,
        policy: Default::default(),
    }
}

pub(crate) fn moa(provider: &ScriptedProvider, preset: &Preset, options: RunOptions) -> Moa {
    let provider: Arc<dyn Provider> = Arc::new(provider.clone());
    let plan = Plan::bind(preset, |_| Ok::<_, PresetError>(provider.clone())).unwrap();
    Moa::new(plan, options)
}

pub(crate) async fn collect(
    moa: &Moa,
    messages: Vec<Message>,
) -> (Vec<RunEvent>, Result<Trace, MoaError>) {
    let mut events = Vec::new();
    let mut stream = moa.run(messages);
    while let Some(item) = stream.next().await {
        match item {
            Ok(RunEvent::Done(trace)) => {
                assert!(stream.next().await.is_none(), "Done is the last item");
                return (events, Ok(*trace));
            }
            Ok(event) => events.push(event),
            Err(e) => {
                assert!(stream.next().await.is_none(), "an error is the last item");
                return (events, Err(e));
            }
        }
    }
    panic!("stream ended without Done or an error");
}

#[tokio::test]
async fn two_layers_inject_references_in_proposer_order() {
    let p = ScriptedProvider::new("t");
    // The first proposer finishes last; references still follow proposer order.
    p.push(
        "a",
        Reply::text("  alpha answer \n").with_delay(Duration::from_millis(30)),
    );
    p.push("b", Reply::text("beta answer"));
    p.push("agg", Reply::text("final answer"));
    let moa = moa(
        &p,
        &preset(vec![vec!["t:a", "t:b"]], "t:agg"),
        RunOptions::default(),
    );
    let (events, trace) = collect(&moa, vec![Message::user("Q?")]).await;
    let trace = trace.unwrap();

    let requests = p.requests();
    assert_eq!(requests.len(), 3);
    for r in &requests[..2] {
        assert_eq!(r.messages(), vec![("user".to_string(), "Q?".to_string())]);
    }
    let agg = requests.iter().find(|r| r.model == "agg").unwrap();
    assert_eq!(
        agg.messages(),
        vec![
            (
                "system".to_string(),
                format!("{AGGREGATOR_SYSTEM_PROMPT}\n1. alpha answer\n2. beta answer")
            ),
            ("user".to_string(), "Q?".to_string()),
        ]
    );

    assert_eq!(trace.answer, "final answer");
    assert_eq!(trace.layers.len(), 1);
    assert_eq!(
        trace.layers[0].calls[0].answer.as_deref(),
        Some("alpha answer")
    );
    let deltas: String = events
        .iter()
        .filter_map(|e| match e {
            RunEvent::AggregatorDelta { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(deltas, "final answer");
    // Usage per model and in total add up.
    let sum: u64 = trace.usage_by_model.values().map(|u| u.total_tokens).sum();
    assert_eq!(sum, trace.usage.total_tokens);
    assert_eq!(trace.usage_by_model.len(), 3);
    assert!(trace.usage.total_tokens > 0);
}

#[tokio::test]
async fn three_layers_feed_each_layer_the_previous_one() {
    let p = ScriptedProvider::new("t");
    p.push("a", Reply::text("a1"));
    p.push("b", Reply::text("b1"));
    p.push("a", Reply::text("a2"));
    p.push("c", Reply::text("c2"));
    let preset = preset(vec![vec!["t:a", "t:b"], vec!["t:a", "t:c"]], "t:agg");
    let moa = moa(&p, &preset, RunOptions::default());
    let messages = vec![Message::system("Be brief."), Message::user("Q?")];
    let (_, trace) = collect(&moa, messages).await;
    let trace = trace.unwrap();
    assert_eq!(trace.layers.len(), 2);

    let requests = p.requests();
    assert_eq!(requests.len(), 5);
    let layer1_block = format!("Be brief.\n\n{AGGREGATOR_SYSTEM_PROMPT}\n1. a1\n2. b1");
    let layer2_block = format!("Be brief.\n\n{AGGREGATOR_SYSTEM_PROMPT}\n1. a2\n2. c2");
    // Layer 1: the user's messages unchanged.
    assert_eq!(requests[0].messages()[0].1, "Be brief.");
    assert_eq!(requests[1].messages()[0].1, "Be brief.");
    // Layer 2: layer 1's answers appended to the existing system message.
    assert_eq!(requests[2].messages()[0].1, layer1_block);
    assert_eq!(requests[3].messages()[0].1, layer1_block);
    assert_eq!(requests[2].messages().len(), 2);
    // The aggregator: layer 2's answers only.
    assert_eq!(requests[4].model, "agg");
    assert_eq!(requests[4].messages()[0].1, layer2_block);
}

#[tokio::test]
async fn proposers_of_a_layer_run_concurrently() {
    let p = ScriptedProvider::new("t");
    // Each proposer answers only once all four requests are in: a sequential engine would
    // wait forever here.
    for m in ["a", "b", "c", "d"] {
        p.push(m, Reply::text(m).after_requests(4));
    }
    let moa = moa(
        &p,
        &preset(vec![vec!["t:a", "t:b", "t:c", "t:d"]], "t:agg"),
        RunOptions::default(),
    );
    let run = collect(&moa, vec![Message::user("Q")]);
    let (_, trace) = tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("proposers did not run concurrently");
    assert_eq!(trace.unwrap().layers[0].calls.len(), 4);
}

#[tokio::test]
async fn a_failed_proposer_is_left_out_and_reported() {
    let p = ScriptedProvider::new("t");
    p.push("a", Reply::text("A"));
    p.push("b", Reply::error(500, "server_error", "boom"));
    p.push("c", Reply::text("C"));
    let moa = moa(
        &p,
        &preset(vec![vec!["t:a", "t:b", "t:c"]], "t:agg"),
        RunOptions::default(),
    );
    let (events, trace) = collect(&moa, vec![Message::user("Q")]).await;
    let trace = trace.unwrap();
    let failed: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            RunEvent::ProposerFailed {
                model,
                error,
                index,
                ..
            } => Some((model, error, *index)),
            _ => None,
        })
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].0, "t:b");
    assert_eq!(failed[0].2, 1);
    assert!(
        failed[0].1.contains("500") && failed[0].1.contains("boom"),
        "{}",
        failed[0].1
    );
    assert!(events.contains(&RunEvent::LayerDone {
        layer: 1,
        succeeded: 2,
        failed: 1,
        cancelled: 0,
        elapsed_ms: match events
            .iter()
            .find(|e| matches!(e, RunEvent::LayerDone { .. }))
        {
            Some(RunEvent::LayerDone { elapsed_ms, .. }) => *elapsed_ms,
            _ => unreachable!(),
        },
    }));
    assert_eq!(trace.layers[0].calls[1].status, CallStatus::Failed);
    let agg = p.requests().into_iter().find(|r| r.model == "agg").unwrap();
    assert_eq!(
        agg.messages()[0].1,
        format!("{AGGREGATOR_SYSTEM_PROMPT}\n1. A\n2. C")
    );
}

#[tokio::test]
async fn all_proposers_failing_is_a_clear_error() {
    let p = ScriptedProvider::new("t");
    p.push("a", Reply::error(401, "invalid_api_key", "bad key"));
    p.push("b", Reply::malformed("{oops"));
    let moa = moa(
        &p,
        &preset(vec![vec!["t:a", "t:b"]], "t:agg"),
        RunOptions::default(),
    );
    let (_, trace) = collect(&moa, vec![Message::user("Q")]).await;
    let err = trace.unwrap_err();
    let text = err.to_string();
    assert!(matches!(
        err,
        MoaError::TooFewProposals {
            layer: 1,
            succeeded: 0,
            total: 2,
            needed: 1,
            ..
        }
    ));
    assert!(text.contains("t:a: t: HTTP 401: bad key"), "{text}");
    assert!(text.contains("t:b: t: malformed response"), "{text}");
    // The aggregator was never called.
    assert!(p.requests().iter().all(|r| r.model != "agg"));
}

#[tokio::test]
async fn min_proposals_is_enforced_per_layer() {
    let p = ScriptedProvider::new("t");
    p.push("a", Reply::text("A"));
    p.push("b", Reply::error(500, "server_error", "x"));
    p.push("c", Reply::error(500, "server_error", "y"));
    let options = RunOptions {
        min_proposals: 2,
        ..RunOptions::default()
    };
    let moa = moa(
        &p,
        &preset(vec![vec!["t:a", "t:b", "t:c"]], "t:agg"),
        options,
    );
    let (_, trace) = collect(&moa, vec![Message::user("Q")]).await;
    assert!(matches!(
        trace.unwrap_err(),
        MoaError::TooFewProposals {
            succeeded: 1,
            needed: 2,
            ..
        }
    ));
}

#[tokio::test(start_paused = true)]
async fn a_stalled_proposer_times_out_and_the_run_goes_on() {
    let p = ScriptedProvider::new("t");
    p.push("a", Reply::stall_after("partial"));
    p.push("b", Reply::text("B"));
    let options = RunOptions {
        timeout: Some(Duration::from_secs(5)),
        ..RunOptions::default()
    };
    let moa = moa(&p, &preset(vec![vec!["t:a", "t:b"]], "t:agg"), options);
    let (_, trace) = collect(&moa, vec![Message::user("Q")]).await;
    let trace = trace.unwrap();
    let stalled = &trace.layers[0].calls[0];
    assert_eq!(stalled.status, CallStatus::Failed);
    assert!(stalled
        .error
        .as_deref()
        .unwrap()
        .contains("no answer within 5s"));
    assert!(stalled.latency_ms >= 5000);
    // The timed-out call was dropped, not left running.
    assert_eq!(p.wait_ending(0).await, Ending::ClientGone);
}

#[tokio::test]
async fn aggregator_failure_fails_the_run() {
    let p = ScriptedProvider::new("t");
    p.push("agg", Reply::disconnect_after("half an ans"));
    let moa = moa(
        &p,
        &preset(vec![vec!["t:a"]], "t:agg"),
        RunOptions::default(),
    );
    let (events, trace) = collect(&moa, vec![Message::user("Q")]).await;
    let err = trace.unwrap_err();
    assert!(matches!(err, MoaError::Aggregator { ref model, .. } if model == "t:agg"));
    // What had streamed was still delivered as events.
    assert!(events
        .iter()
        .any(|e| matches!(e, RunEvent::AggregatorDelta { .. })));
}

#[tokio::test]
async fn dropping_the_stream_cancels_every_call_in_flight() {
    let p = ScriptedProvider::new("t");
    p.push("a", Reply::stall_after("a..."));
    p.push("b", Reply::stall_after("b..."));
    let moa = moa(
        &p,
        &preset(vec![vec!["t:a", "t:b"]], "t:agg"),
        RunOptions::default(),
    );
    let mut stream = moa.run(vec![Message::user("Q")]);
    let mut seen = 0;
    while let Some(event) = stream.next().await {
        if let RunEvent::ProposerDelta { .. } = event.unwrap() {
            seen += 1;
            if seen == 2 {
                break;
            }
        }
    }
    assert!(p.endings().is_empty(), "nothing ended before the drop");
    drop(stream);
    assert_eq!(p.wait_ending(0).await, Ending::ClientGone);
    assert_eq!(p.wait_ending(1).await, Ending::ClientGone);
}

#[tokio::test]
async fn events_come_in_order_and_trace_matches_them() {
    let p = ScriptedProvider::new("t");
    let moa = moa(
        &p,
        &preset(vec![vec!["t:a", "t:b"]], "t:agg"),
        RunOptions::default(),
    );
    let (events, trace) = collect(&moa, vec![Message::user("Q")]).await;
    let trace = trace.unwrap();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| match e {
            RunEvent::LayerStarted { .. } => "layer",
            RunEvent::ProposerStarted { .. } => "start",
            RunEvent::ProposerDelta { .. } => "delta",
            RunEvent::ProposerDone { .. } => "done",
            RunEvent::ProposerFailed { .. } => "failed",
            RunEvent::LayerDone { .. } => "layer-done",
            RunEvent::AggregatorStarted { .. } => "agg",
            RunEvent::AggregatorDelta { .. } => "agg-delta",
            RunEvent::AggregatorToolCall { .. } => "agg-tool",
            RunEvent::AggregatorLogprobs { .. } => "agg-logprobs",
            RunEvent::ProposerCancelled { .. } => "cancelled",
            RunEvent::EarlyExit { .. } => "early-exit",
            RunEvent::Fallback { .. } => "fallback",
            RunEvent::Done(_) => "end",
        })
        .collect();
    assert_eq!(kinds[..3], ["layer", "start", "start"]);
    let layer_done = kinds.iter().position(|k| *k == "layer-done").unwrap();
    assert_eq!(kinds.iter().filter(|k| **k == "done").count(), 2);
    assert!(kinds[..layer_done].iter().all(|k| *k != "agg-delta"));
    assert_eq!(kinds[layer_done + 1], "agg");
    assert!(kinds[layer_done + 2..].iter().all(|k| *k == "agg-delta"));
    // Each proposer's deltas add up to its answer.
    for (index, call) in trace.layers[0].calls.iter().enumerate() {
        let text: String = events
            .iter()
            .filter_map(|e| match e {
                RunEvent::ProposerDelta { index: i, text, .. } if *i == index => {
                    Some(text.as_str())
                }
                _ => None,
            })
            .collect();
        assert_eq!(Some(text.trim()), call.answer.as_deref());
        assert!(call.first_token_ms.is_some());
    }
}

#[tokio::test]
async fn agent_settings_reach_the_request() {
    let p = ScriptedProvider::new("t");
    let mut preset = preset(vec![vec!["t:a"]], "t:agg");
    let agent = &mut preset.layers[0][0];
    agent.temperature = Some(0.3);
    agent.max_tokens = Some(99);
    agent.system = Some("You are a poet.".into());
    agent.extra.insert("top_p".into(), serde_json::json!(0.9));
    let moa = moa(&p, &preset, RunOptions::default());
    collect(&moa, vec![Message::user("Q")]).await.1.unwrap();
    let r = &p.requests()[0];
    assert_eq!(r.json["temperature"], 0.3);
    assert_eq!(r.json["max_tokens"], 99);
    assert_eq!(r.json["top_p"], 0.9);
    assert_eq!(r.messages()[0], ("system".into(), "You are a poet.".into()));
    // The aggregator has no settings of its own: none are sent.
    let agg = &p.requests()[1];
    assert!(agg.json.get("temperature").is_none());
    assert!(agg.json.get("max_tokens").is_none());
}

#[tokio::test]
async fn a_single_layer_is_the_aggregator_alone() {
    let p = ScriptedProvider::new("t");
    let moa = moa(&p, &preset(vec![], "t:agg"), RunOptions::default());
    let (_, trace) = collect(&moa, vec![Message::user("Q")]).await;
    assert!(trace.unwrap().layers.is_empty());
    assert_eq!(
        p.requests()[0].messages(),
        vec![("user".to_string(), "Q".to_string())]
    );
}

#[tokio::test]
async fn empty_answers_are_never_references_and_missing_usage_is_estimated() {
    let p = ScriptedProvider::new("t");
    p.push("a", Reply::text(" \n "));
    p.push("b", Reply::text("beta answer"));
    p.push("c", Reply::text("gamma answer here").without_usage());
    p.push("agg", Reply::text("final"));
    let moa = moa(
        &p,
        &preset(vec![vec!["t:a", "t:b", "t:c"]], "t:agg"),
        RunOptions::default(),
    );
    let (events, trace) = collect(&moa, vec![Message::user("Q?")]).await;
    let trace = trace.unwrap();
    // The aggregator sees two references, numbered without a gap, and nothing of the empty one.
    let system = &p.requests()[3].messages()[0].1;
    assert_eq!(
        system,
        &format!("{AGGREGATOR_SYSTEM_PROMPT}\n1. beta answer\n2. gamma answer here")
    );
    let dropped = events.iter().find_map(|e| match e {
        RunEvent::ProposerFailed {
            index: 0, error, ..
        } => Some(error.clone()),
        _ => None,
    });
    assert_eq!(dropped.as_deref(), Some(moa_core::EMPTY_ANSWER));
    let calls = &trace.layers[0].calls;
    assert_eq!(calls[0].status, CallStatus::Failed);
    assert!(!calls[1].usage_estimated);
    // "gamma answer here" is 17 characters: 5 tokens by the estimate; the prompt "Q?" is
    // 1 + 4 per message + 3.
    assert!(calls[2].usage_estimated);
    let usage = calls[2].usage.unwrap();
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (8, 5));
    let json = serde_json::to_value(&trace).unwrap();
    assert_eq!(json["layers"][0]["calls"][2]["usage_estimated"], true);
    assert!(json["layers"][0]["calls"][1]
        .get("usage_estimated")
        .is_none());
}

#[tokio::test]
async fn a_stream_that_stops_before_its_finish_event_is_a_failure() {
    struct Truncated;
    impl Provider for Truncated {
        fn name(&self) -> &str {
            "cut"
        }
        fn stream(&self, _: moa_core::ChatRequest) -> moa_core::BoxChunkStream {
            futures::stream::iter([Ok(moa_core::Chunk::Delta("half an ans".into()))]).boxed()
        }
    }
    let provider: Arc<dyn Provider> = Arc::new(Truncated);
    let plan = Plan::bind(&preset(vec![], "cut:m"), |_| {
        Ok::<_, PresetError>(provider.clone())
    })
    .unwrap();
    let err = Moa::new(plan, RunOptions::default())
        .run_to_end(vec![Message::user("Q")])
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("ended before its finish event"),
        "{err}"
    );
    // The same through complete() (collecting the stream), as non-streamed proposers do.
    let err = Truncated
        .complete(moa_core::ChatRequest::new("m", vec![]))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("ended before its finish event"),
        "{err}"
    );
}

#[tokio::test]
async fn a_requests_overrides_reach_the_aggregator_and_tool_history_reads_as_text() {
    let p = ScriptedProvider::new("t");
    p.respond_with(|r| Reply::text(format!("{} answers", r.model)));
    let moa = moa(
        &p,
        &preset(vec![vec!["t:a", "t:b"]], "t:agg"),
        RunOptions::default(),
    );
    let messages: Vec<Message> = serde_json::from_str(
        r#"[{"role":"user","content":"Weather in Paris?"},
            {"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"weather","arguments":"{\"city\":\"Paris\"}"}}]},
            {"role":"tool","content":"18C","tool_call_id":"c1"}]"#,
    )
    .unwrap();
    let mut request = moa_core::RunRequest::new(messages);
    request.aggregator.temperature = Some(0.2);
    request.aggregator.max_tokens = Some(64);
    request
        .aggregator
        .extra
        .insert("stop".into(), serde_json::json!(["END"]));
    let trace = moa.run_request_to_end(request).await.unwrap();
    assert_eq!(trace.answer, "agg answers");

    let requests = p.requests();
    let expected_history = vec![
        ("user".to_string(), "Weather in Paris?".to_string()),
        (
            "assistant".to_string(),
            r#"[tool call c1: weather({"city":"Paris"})]"#.to_string(),
        ),
        (
            "user".to_string(),
            "[tool result c1: weather]\n18C".to_string(),
        ),
    ];
    for r in requests.iter().filter(|r| r.model != "agg") {
        assert_eq!(r.messages(), expected_history);
        for field in ["temperature", "max_tokens", "stop"] {
            assert!(r.json.get(field).is_none(), "{field} reached a proposer");
        }
    }
    let agg = requests.iter().find(|r| r.model == "agg").unwrap();
    assert_eq!(agg.messages()[1..], expected_history[..]);
    assert_eq!(agg.json["temperature"], 0.2);
    assert_eq!(agg.json["max_tokens"], 64);
    assert_eq!(agg.json["stop"], serde_json::json!(["END"]));
}

#[tokio::test]
async fn given_references_replace_the_proposers() {
    let p = ScriptedProvider::new("t");
    p.respond_with(|r| Reply::text(format!("{} answers", r.model)));
    let moa = moa(
        &p,
        &preset(vec![vec!["t:a", "t:b"]], "t:agg"),
        RunOptions::default(),
    );
    let mut request = moa_core::RunRequest::new(vec![Message::user("Q?")]);
    request.references = Some(vec![
        moa_core::Reference {
            model: "published-1".into(),
            text: "first".into(),
        },
        moa_core::Reference {
            model: "published-2".into(),
            text: "second".into(),
        },
    ]);
    request.proposers.temperature = Some(0.9);
    let trace = moa.run_request_to_end(request).await.unwrap();
    assert!(trace.layers.is_empty());
    let requests = p.requests();
    assert_eq!(requests.len(), 1, "only the aggregator was called");
    assert_eq!(
        requests[0].messages()[0].1,
        format!("{AGGREGATOR_SYSTEM_PROMPT}\n1. first\n2. second")
    );
    assert!(
        requests[0].json.get("temperature").is_none(),
        "proposer changes stay with proposers"
    );
}
