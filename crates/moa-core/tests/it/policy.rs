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
