//! The run policy: quorum and grace, early exit, fallback. Time is tokio's paused clock: the
//! scripted replies' delays pass instantly and in order, so nothing waits on the wall clock.

use std::time::Duration;

use moa_core::{
    CallStatus, DegradedKind, Message, MoaError, RunEvent, RunOptions, RunPolicy, Trace,
};
use moa_testkit::{Ending, Reply, ScriptedProvider};

use crate::engine::{collect, moa, preset};

fn with_policy(layers: Vec<Vec<&str>>, policy: RunPolicy) -> moa_core::Preset {
    let mut p = preset(layers, "t:agg");
    p.policy = policy;
    p
}

fn references(p: &ScriptedProvider) -> String {
    let agg = p.requests().into_iter().find(|r| r.model == "agg").unwrap();
    agg.json["messages"][0]["content"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn run(p: &ScriptedProvider, preset: &moa_core::Preset) -> (Vec<RunEvent>, Trace) {
    let moa = moa(p, preset, RunOptions::default());
    let (events, trace) = collect(&moa, vec![Message::user("Q")]).await;
    (events, trace.unwrap())
}

#[tokio::test(start_paused = true)]
async fn a_quorum_cancels_the_stragglers_and_reports_them() {
    let p = ScriptedProvider::new("t");
    p.push("a", Reply::text("A").with_delay(Duration::from_millis(300)));
    p.push("b", Reply::text("B").with_delay(Duration::from_millis(100)));
    p.push("c", Reply::text("C").with_delay(Duration::from_secs(60)));
    p.push("agg", Reply::text("final"));
    let policy = RunPolicy {
        quorum: Some(2),
        ..RunPolicy::default()
    };
    let (events, trace) = run(&p, &with_policy(vec![vec!["t:a", "t:b", "t:c"]], policy)).await;

    assert_eq!(trace.answer, "final");
    // The straggler's request was dropped, not left running.
    assert_eq!(p.wait_ending(2).await, Ending::ClientGone);
    let calls = &trace.layers[0].calls;
    assert_eq!(
        calls.iter().map(|c| c.status).collect::<Vec<_>>(),
        [CallStatus::Ok, CallStatus::Ok, CallStatus::Cancelled]
    );
    assert_eq!(
        calls[2].latency_ms, 300,
        "cancelled when the second answer came"
    );
    assert!(trace.elapsed_ms < 1000, "{}", trace.elapsed_ms);
    assert_eq!(trace.degraded.len(), 1);
    let degraded = &trace.degraded[0];
    assert_eq!(
        (degraded.layer, degraded.model.as_str(), degraded.kind),
        (Some(1), "t:c", DegradedKind::Cancelled)
    );
    assert!(
        degraded.reason.contains("quorum of 2"),
        "{}",
        degraded.reason
    );
    assert!(events.contains(&RunEvent::ProposerCancelled {
        layer: 1,
        index: 2,
        model: "t:c".into(),
        latency_ms: 300,
    }));
    assert!(events.iter().any(|e| matches!(
        e,
        RunEvent::LayerDone {
            succeeded: 2,
            failed: 0,
            cancelled: 1,
            ..
        }
    )));
    // The aggregator saw the two answers in preset order.
    let system = references(&p);
    assert!(system.ends_with("1. A\n2. B"), "{system}");
}

#[tokio::test(start_paused = true)]
async fn the_grace_lets_a_near_finisher_in() {
    let p = ScriptedProvider::new("t");
    p.push("a", Reply::text("A"));
    p.push("b", Reply::text("B"));
    p.push("c", Reply::text("C").with_delay(Duration::from_secs(2)));
    p.push("d", Reply::text("D").with_delay(Duration::from_secs(30)));
    p.push("agg", Reply::text("final"));
    let policy = RunPolicy {
        quorum: Some(2),
        grace: Duration::from_secs(5),
        ..RunPolicy::default()
    };
    let (_, trace) = run(
        &p,
        &with_policy(vec![vec!["t:a", "t:b", "t:c", "t:d"]], policy),
    )
    .await;
    let statuses: Vec<_> = trace.layers[0].calls.iter().map(|c| c.status).collect();
    assert_eq!(
        statuses,
        [
            CallStatus::Ok,
            CallStatus::Ok,
            CallStatus::Ok,
            CallStatus::Cancelled
        ]
    );
    // The grace runs from the quorum-th answer (at 0 s), so the layer ended at 5 s.
    assert_eq!(trace.layers[0].calls[3].latency_ms, 5000);
    assert!(trace.degraded[0].reason.contains("grace of 5000 ms"));
    assert!(references(&p).ends_with("1. A\n2. B\n3. C"));
}

#[tokio::test(start_paused = true)]
async fn without_a_quorum_every_proposer_is_awaited() {
    let p = ScriptedProvider::new("t");
    p.push("a", Reply::text("A"));
    p.push("b", Reply::text("B").with_delay(Duration::from_secs(60)));
    p.push("agg", Reply::text("final"));
    let (_, trace) = run(&p, &preset(vec![vec!["t:a", "t:b"]], "t:agg")).await;
    assert!(trace.degraded.is_empty());
    assert_eq!(trace.layers[0].calls[1].status, CallStatus::Ok);
    assert!(trace.elapsed_ms >= 60_000);
}

#[tokio::test]
async fn a_layer_that_agrees_skips_the_rest() {
    let p = ScriptedProvider::new("t");
    p.push("a", Reply::text("Paris."));
    p.push("b", Reply::text("  paris.\n"));
    let policy = RunPolicy {
        early_exit: true,
        ..RunPolicy::default()
    };
    let two_layers = with_policy(vec![vec!["t:a", "t:b"], vec!["t:a", "t:b"]], policy);
    let (events, trace) = run(&p, &two_layers).await;
    assert_eq!(trace.answer, "Paris.");
    assert_eq!(trace.early_exit, Some(1));
    assert_eq!(trace.aggregator.status, CallStatus::Skipped);
    assert_eq!(trace.layers.len(), 1, "the second layer never ran");
    assert_eq!(p.requests().len(), 2, "no second layer, no aggregator");
    assert!(events.contains(&RunEvent::EarlyExit { layer: 1 }));
    assert!(events.contains(&RunEvent::AggregatorDelta {
        choice: 0,
        text: "Paris.".into()
    }));

    // Answers that differ go on to the aggregator as usual.
    let p = ScriptedProvider::new("t");
    p.push("a", Reply::text("Paris."));
    p.push("b", Reply::text("Lyon."));
    p.push("agg", Reply::text("Paris."));
    let one_layer = with_policy(vec![vec!["t:a", "t:b"]], two_layers.policy.clone());
    let (_, trace) = run(&p, &one_layer).await;
    assert_eq!(trace.early_exit, None);
    assert_eq!(trace.aggregator.status, CallStatus::Ok);
}

#[tokio::test]
async fn a_failed_aggregator_falls_back_to_the_first_proposal_when_asked() {
    let fallback = RunPolicy {
        fallback: true,
        ..RunPolicy::default()
    };
    let p = ScriptedProvider::new("t");
    p.push("a", Reply::status(500, "a is down"));
    p.push("b", Reply::text("B's answer"));
    p.push("c", Reply::text("C's answer"));
    p.push("agg", Reply::status(503, "overloaded"));
    let layers = vec![vec!["t:a", "t:b", "t:c"]];
    let (events, trace) = run(&p, &with_policy(layers.clone(), fallback.clone())).await;
    // The first proposer in preset order that answered.
    assert_eq!(trace.answer, "B's answer");
    assert_eq!(trace.aggregator.status, CallStatus::Failed);
    let degraded = trace.degraded.last().unwrap();
    assert_eq!(
        (degraded.layer, degraded.kind),
        (None, DegradedKind::Fallback)
    );
    assert!(degraded.reason.contains("overloaded") && degraded.reason.contains("t:b"));
    assert!(events.iter().any(|e| matches!(
        e,
        RunEvent::Fallback { layer: 1, model, .. } if model == "t:b"
    )));

    // Without the option, the run fails as the reference's does.
    let p = ScriptedProvider::new("t");
    p.push("a", Reply::text("A"));
    p.push("agg", Reply::status(503, "overloaded"));
    let plain = moa(
        &p,
        &preset(vec![vec!["t:a"]], "t:agg"),
        RunOptions::default(),
    );
    let (_, trace) = collect(&plain, vec![Message::user("Q")]).await;
    assert!(matches!(trace, Err(MoaError::Aggregator { .. })));

    // An aggregator that had already streamed text is not followed by a proposal.
    let p = ScriptedProvider::new("t");
    p.push("a", Reply::text("A"));
    p.push("agg", Reply::disconnect_after("half an ans"));
    let streamed = moa(
        &p,
        &with_policy(vec![vec!["t:a"]], fallback),
        RunOptions::default(),
    );
    let (_, trace) = collect(&streamed, vec![Message::user("Q")]).await;
    assert!(matches!(trace, Err(MoaError::Aggregator { .. })));
}

fn budgeted(layers: Vec<Vec<&str>>, policy: RunPolicy, max_tokens: u32) -> moa_core::Preset {
    let mut p = with_policy(layers, policy);
    for agent in p.agents_mut() {
        agent.max_tokens = Some(max_tokens);
    }
    p
}

fn max_tokens_sent(p: &ScriptedProvider) -> Vec<(String, Option<u64>)> {
    p.requests()
        .iter()
        .map(|r| (r.model.clone(), r.json["max_tokens"].as_u64()))
        .collect()
}

#[tokio::test]
async fn a_run_its_limits_cannot_pay_for_is_refused_before_any_call() {
    let p = ScriptedProvider::new("t");
    let policy = RunPolicy {
        max_tokens_total: Some(100),
        ..RunPolicy::default()
    };
    let tight = moa(
        &p,
        &with_policy(vec![vec!["t:a", "t:b"]], policy),
        RunOptions::default(),
    );
    let (_, trace) = collect(&tight, vec![Message::user("Q")]).await;
    let err = trace.unwrap_err();
    assert!(matches!(err, MoaError::Budget { .. }), "{err}");
    assert!(err.to_string().contains("max_tokens_total 100"), "{err}");
    assert!(p.requests().is_empty(), "nothing was sent");

    // A cost limit needs every model's price.
    let priced = RunPolicy {
        max_cost: Some(1.0),
        ..RunPolicy::default()
    };
    let unpriced = moa(
        &p,
        &with_policy(vec![vec!["t:a"]], priced),
        RunOptions::default(),
    );
    let (_, trace) = collect(&unpriced, vec![Message::user("Q")]).await;
    assert!(trace.unwrap_err().to_string().contains("t:a has none"));
}

#[tokio::test]
async fn calls_are_capped_to_keep_the_run_within_its_token_limit() {
    let p = ScriptedProvider::new("t");
    p.respond_with(|r| Reply::text(format!("{} says so", r.model)).with_usage(50, 20));
    // Generous per-call caps (1000) that the limit cannot afford for every call.
    let policy = RunPolicy {
        max_tokens_total: Some(1000),
        ..RunPolicy::default()
    };
    let (_, trace) = run(&p, &budgeted(vec![vec!["t:a", "t:b"]], policy, 1000)).await;
    let sent = max_tokens_sent(&p);
    let (a, agg) = (sent[0].1.unwrap(), sent[2].1.unwrap());
    assert_eq!(sent[1].1, Some(a), "proposers share alike");
    // Each proposer's share keeps the aggregator's minimum: its prompt, the two answers at
    // their cap, and 256 tokens of answer.
    assert!((64..1000).contains(&a), "{a}");
    // The aggregator gets what the proposers' actual usage (2 x 70) left.
    assert!(agg < 1000 && agg > a, "{agg}");
    assert!(
        140 + agg <= 1000,
        "actual use plus the cap stays within the limit: {agg}"
    );
    let kinds: Vec<_> = trace.degraded.iter().map(|d| (d.layer, d.kind)).collect();
    assert_eq!(
        kinds,
        [
            (Some(1), DegradedKind::Capped),
            (Some(1), DegradedKind::Capped),
            (None, DegradedKind::Capped)
        ]
    );
    assert!(trace.degraded[2]
        .reason
        .contains(&format!("lowered to {agg}")));
}

#[tokio::test]
async fn a_layer_the_limit_cannot_afford_is_skipped_and_reported() {
    let p = ScriptedProvider::new("t");
    // Layer 1 answers at length, so the second layer's prompts (with layer 1's references)
    // leave nothing for it.
    let long = "word ".repeat(1500);
    p.respond_with(move |r| match r.model.as_str() {
        "agg" => Reply::text("final").with_usage(10, 1),
        _ => Reply::text(long.clone()).with_usage(20, 1500),
    });
    let policy = RunPolicy {
        max_tokens_total: Some(8000),
        ..RunPolicy::default()
    };
    let preset = with_policy(vec![vec!["t:a", "t:b"], vec!["t:a", "t:b"]], policy);
    let (_, trace) = run(&p, &preset).await;
    assert_eq!(trace.answer, "final");
    assert_eq!(trace.layers.len(), 1, "layer 2 was not run");
    let skipped: Vec<_> = trace
        .degraded
        .iter()
        .filter(|d| d.kind == DegradedKind::Skipped)
        .map(|d| (d.layer, d.model.as_str()))
        .collect();
    assert_eq!(skipped, [(Some(2), "t:a"), (Some(2), "t:b")]);
    assert_eq!(p.requests().len(), 3, "two proposers and the aggregator");
}

#[tokio::test]
async fn reference_max_tokens_lowers_the_proposers_caps_only() {
    let p = ScriptedProvider::new("t");
    p.respond_with(|_| Reply::text("ok"));
    let policy = RunPolicy {
        reference_max_tokens: Some(128),
        ..RunPolicy::default()
    };
    let mut preset = budgeted(vec![vec!["t:a", "t:b"]], policy, 1000);
    preset.layers[0][1].max_tokens = Some(50);
    run(&p, &preset).await;
    assert_eq!(
        max_tokens_sent(&p),
        [
            ("a".to_string(), Some(128)),
            ("b".to_string(), Some(50)),
            ("agg".to_string(), Some(1000))
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn the_deadline_is_shared_by_the_layers_and_the_aggregator() {
    let p = ScriptedProvider::new("t");
    p.push("a", Reply::text("A").with_delay(Duration::from_secs(1)));
    p.push("b", Reply::text("B").with_delay(Duration::from_secs(30)));
    p.push(
        "agg",
        Reply::text("final").with_delay(Duration::from_secs(3)),
    );
    let policy = RunPolicy {
        deadline: Some(Duration::from_secs(10)),
        ..RunPolicy::default()
    };
    let (_, trace) = run(&p, &with_policy(vec![vec!["t:a", "t:b"]], policy.clone())).await;
    // One proposer layer and the aggregator: the layer has until 5 s.
    let b = &trace.layers[0].calls[1];
    assert_eq!((b.status, b.latency_ms), (CallStatus::Cancelled, 5000));
    assert!(b.error.as_deref().unwrap().contains("deadline"), "{b:?}");
    assert_eq!(trace.answer, "final");
    assert_eq!(trace.elapsed_ms, 8000);

    // An aggregator still writing at the deadline fails the run (a timeout), or falls back.
    let p = ScriptedProvider::new("t");
    p.push("a", Reply::text("A"));
    p.push(
        "agg",
        Reply::text("late").with_delay(Duration::from_secs(60)),
    );
    let preset = with_policy(vec![vec!["t:a"]], policy.clone());
    let strict = moa(&p, &preset, RunOptions::default());
    let (_, trace) = collect(&strict, vec![Message::user("Q")]).await;
    let err = trace.unwrap_err();
    assert!(
        err.provider_error().is_some_and(|e| e.is_timeout()),
        "{err}"
    );

    let p = ScriptedProvider::new("t");
    p.push("a", Reply::text("A"));
    p.push(
        "agg",
        Reply::text("late").with_delay(Duration::from_secs(60)),
    );
    let fallback = RunPolicy {
        fallback: true,
        ..policy
    };
    let (_, trace) = run(&p, &with_policy(vec![vec!["t:a"]], fallback)).await;
    assert_eq!((trace.answer.as_str(), trace.elapsed_ms), ("A", 10_000));
}

#[tokio::test]
async fn references_too_long_for_the_aggregators_context_are_trimmed_and_reported() {
    let p = ScriptedProvider::new("t").with_context_window(1500);
    p.push("a", Reply::text("a".repeat(4000)));
    p.push("b", Reply::text("b".repeat(4000)));
    p.push("c", Reply::text("short answer"));
    p.push("agg", Reply::text("final"));
    let mut three = preset(vec![vec!["t:a", "t:b", "t:c"]], "t:agg");
    three.aggregator.max_tokens = Some(200);
    let (_, trace) = run(&p, &three).await;
    let trimmed: Vec<_> = trace
        .degraded
        .iter()
        .map(|d| (d.layer, d.model.as_str(), d.kind))
        .collect();
    assert_eq!(
        trimmed,
        [
            (Some(1), "t:a", DegradedKind::Trimmed),
            (Some(1), "t:b", DegradedKind::Trimmed)
        ]
    );
    assert!(trace.degraded[0].reason.contains("context of 1500 tokens"));
    let system = references(&p);
    assert!(system.contains(moa_core::context::TRIMMED));
    assert!(
        system.ends_with("3. short answer"),
        "the short one is whole"
    );
    // The prompt now leaves the answer its 200 tokens (four characters a token).
    let prompt_tokens = (system.chars().count() as u64 + 1).div_ceil(4);
    assert!(prompt_tokens + 200 <= 1500, "{prompt_tokens}");
    // The trace keeps what the proposers wrote; only the aggregator's copy was cut.
    assert_eq!(
        trace.layers[0].calls[0].answer.as_ref().unwrap().len(),
        4000
    );

    // Without a known window nothing is cut.
    let p = ScriptedProvider::new("t");
    p.push("a", Reply::text("a".repeat(4000)));
    p.push("agg", Reply::text("final"));
    let (_, trace) = run(&p, &preset(vec![vec!["t:a"]], "t:agg")).await;
    assert!(trace.degraded.is_empty());
}

#[tokio::test]
async fn self_moa_seq_aggregates_in_windows_carrying_the_synthesis_forward() {
    let p = ScriptedProvider::new("t");
    for (i, model) in ["s1", "s2", "s3", "s4", "s5", "s6"].iter().enumerate() {
        p.push(
            model,
            Reply::text(format!("sample {}", i + 1)).with_usage(10, 5),
        );
    }
    p.push("agg", Reply::text("synthesis A").with_usage(50, 5));
    p.push("agg", Reply::text("synthesis B").with_usage(50, 5));
    p.push("agg", Reply::text("final").with_usage(50, 5));
    let policy = RunPolicy {
        aggregate_window: Some(3),
        ..RunPolicy::default()
    };
    let layers = vec![vec!["t:s1", "t:s2", "t:s3", "t:s4", "t:s5", "t:s6"]];
    let (_, trace) = run(&p, &with_policy(layers, policy)).await;
    assert_eq!(trace.answer, "final");
    let aggregations: Vec<String> = p
        .requests()
        .iter()
        .filter(|r| r.model == "agg")
        .map(|r| {
            r.json["messages"][0]["content"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let tail = |s: &str| s[moa_core::AGGREGATOR_SYSTEM_PROMPT.len()..].to_string();
    assert_eq!(
        aggregations.iter().map(|a| tail(a)).collect::<Vec<_>>(),
        [
            "\n1. sample 1\n2. sample 2\n3. sample 3",
            "\n1. synthesis A\n2. sample 4\n3. sample 5",
            "\n1. synthesis B\n2. sample 6",
        ]
    );
    assert_eq!(trace.windows.len(), 2);
    // Every call is counted: six samples and three aggregations.
    assert_eq!(trace.usage.total_tokens, 6 * 15 + 3 * 55);

    // As many references as a window holds: one aggregation, as without the option.
    let p = ScriptedProvider::new("t");
    p.respond_with(|r| Reply::text(format!("{} answer", r.model)));
    let policy = RunPolicy {
        aggregate_window: Some(3),
        ..RunPolicy::default()
    };
    let (_, trace) = run(&p, &with_policy(vec![vec!["t:a", "t:b", "t:c"]], policy)).await;
    assert!(trace.windows.is_empty());
}
