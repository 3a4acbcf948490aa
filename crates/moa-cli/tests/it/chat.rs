//! `moa chat` with stdin not a terminal: one answer per input line, scriptable.

use moa_core::AGGREGATOR_SYSTEM_PROMPT;
use moa_testkit::{FakeOpenAi, Recorded, Reply};

use crate::{moa, Sandbox, KEY};

/// Proposers answer "<model> on turn <n>"; aggregators (their first message is the references
/// block) answer "answer <n>", where n counts the user turns in the request.
fn script(fake: &FakeOpenAi) {
    fake.respond_with(|r| {
        let messages = r.messages();
        let turn = messages.iter().filter(|(role, _)| role == "user").count();
        let is_aggregator = messages
            .first()
            .is_some_and(|(_, c)| c.starts_with(AGGREGATOR_SYSTEM_PROMPT))
            && r.model.contains("agg");
        if is_aggregator {
            Reply::text(format!("answer {turn}"))
        } else {
            Reply::text(format!("{} on turn {turn}", r.model))
        }
    });
}

const ARGS: [&str; 6] = [
    "chat",
    "--proposers",
    "together:p/one,together:p/two",
    "--aggregator",
    "together:p/agg",
    "--temperature=0.5",
];

fn by_turn(requests: &[Recorded], turn: usize) -> Vec<Recorded> {
    requests
        .iter()
        .filter(|r| {
            r.messages()
                .iter()
                .filter(|(role, _)| role == "user")
                .count()
                == turn
        })
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_second_turn_carries_the_first_turns_aggregated_answer() {
    let fake = FakeOpenAi::start().await;
    script(&fake);
    let sandbox = Sandbox::new(&fake, "");
    let out = moa(
        sandbox.path(),
        &ARGS,
        &[KEY],
        Some("What is MoA?\nTell me more.\n"),
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "answer 1\nanswer 2\n");
    let requests = fake.requests();
    assert_eq!(requests.len(), 6);
    let second = by_turn(&requests, 2);
    assert_eq!(second.len(), 3);
    for r in second.iter().filter(|r| r.model != "p/agg") {
        // Proposers see the conversation: user, aggregated answer, user.
        assert_eq!(
            r.messages(),
            vec![
                ("user".to_string(), "What is MoA?".to_string()),
                ("assistant".to_string(), "answer 1".to_string()),
                ("user".to_string(), "Tell me more.".to_string()),
            ]
        );
    }
    // The aggregator gets this turn's references, fresh, in a system message before the history.
    let agg = second.iter().find(|r| r.model == "p/agg").unwrap();
    assert_eq!(
        agg.messages()[0].1,
        format!("{AGGREGATOR_SYSTEM_PROMPT}\n1. p/one on turn 2\n2. p/two on turn 2")
    );
    assert_eq!(
        agg.messages()[2],
        ("assistant".to_string(), "answer 1".to_string())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn no_multi_turn_sends_each_line_alone() {
    let fake = FakeOpenAi::start().await;
    script(&fake);
    let sandbox = Sandbox::new(&fake, "");
    let mut args = ARGS.to_vec();
    args.push("--no-multi-turn");
    let out = moa(sandbox.path(), &args, &[KEY], Some("one\ntwo\n")).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "answer 1\nanswer 1\n");
    assert!(fake
        .requests()
        .iter()
        .all(|r| r.messages().iter().all(|(role, _)| role != "assistant")));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_references_spellings_and_more_than_one_round_work() {
    let fake = FakeOpenAi::start().await;
    script(&fake);
    let sandbox = Sandbox::new(&fake, "");
    let args = [
        "chat",
        "--model",
        "together:p/agg",
        "--reference-models",
        "together:p/one",
        "--reference-models",
        "together:p/two",
        "--rounds",
        "2",
    ];
    let out = moa(sandbox.path(), &args, &[KEY], Some("Q\n")).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let requests = fake.requests();
    assert_eq!(
        requests.len(),
        5,
        "two proposer layers of two, then the aggregator"
    );
    // Round 2's proposers get round 1's answers as a numbered list (the reference iterated a
    // string character by character here).
    let round2 = &requests[2..4];
    for r in round2 {
        assert_eq!(
            r.messages()[0].1,
            format!("{AGGREGATOR_SYSTEM_PROMPT}\n1. p/one on turn 1\n2. p/two on turn 1")
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn slash_commands_reshape_save_clear_and_count() {
    let fake = FakeOpenAi::start().await;
    script(&fake);
    let sandbox = Sandbox::new(&fake, "");
    let saved = sandbox.path().join("chat.json");
    let input = format!(
        "first\n/rounds 2\n/proposers together:p/three\n/aggregator together:p/agg2\nsecond\n/usage\n/show\n/save {}\n/clear\nthird\n/bogus\n",
        saved.display()
    );
    let out = moa(sandbox.path(), &ARGS, &[KEY], Some(&input)).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "answer 1\nanswer 2\nanswer 1\n");
    let requests = fake.requests();
    // Turn 1: 2 proposers + aggregator. Turn 2: 2 layers of p/three + p/agg2. Turn 3 likewise.
    assert_eq!(requests.len(), 3 + 3 + 3);
    assert_eq!(requests[3].model, "p/three");
    assert_eq!(requests[5].model, "p/agg2");
    assert!(
        out.stderr
            .contains("preset together · 3 layers · proposers together:p/three"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("together:p/agg2"), "{}", out.stderr);
    assert!(
        out.stderr.contains("── layer 2 · together:p/three"),
        "/show: {}",
        out.stderr
    );
    assert!(out.stderr.contains("conversation cleared"));
    assert!(out
        .stderr
        .contains("unknown command /bogus; /help lists them"));
    let usage_line = out.stderr.lines().find(|l| l.starts_with("total")).unwrap();
    assert!(
        usage_line
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 0
    );
    // After /clear the third turn starts afresh: one user message.
    assert_eq!(requests[6].messages().len(), 1);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&saved).unwrap()).unwrap();
    assert_eq!(json["turns"].as_array().unwrap().len(), 2);
    assert_eq!(json["turns"][1]["answer"], "answer 2");
    assert_eq!(
        json["turns"][1]["trace"]["layers"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(json["messages"].as_array().unwrap().len(), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_turn_is_reported_and_the_chat_goes_on() {
    let fake = FakeOpenAi::start().await;
    script(&fake);
    fake.push(
        "p/agg",
        Reply::error(400, "invalid_request_error", "prompt too long"),
    );
    let sandbox = Sandbox::new(&fake, "");
    let out = moa(sandbox.path(), &ARGS, &[KEY], Some("one\ntwo\n")).await;
    assert_eq!(out.code, 1, "a failed turn makes the exit code 1");
    assert_eq!(
        out.stdout, "answer 1\n",
        "the failed turn left no answer and no history"
    );
    assert!(
        out.stderr
            .contains("aggregator together:p/agg failed: together: HTTP 400: prompt too long"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn preset_temperature_help_and_quit() {
    let fake = FakeOpenAi::start().await;
    script(&fake);
    let sandbox = Sandbox::new(&fake, "");
    let input =
        "/help\n/temperature 0.1\nfirst\n/preset together-3layer\nsecond\nquit\nnever sent\n";
    let out = moa(sandbox.path(), &ARGS, &[KEY], Some(input)).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("/save FILE"), "{}", out.stderr);
    assert!(
        out.stderr.contains("temperature 0.1 for every agent"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("preset together-3layer · 3 layers"),
        "{}",
        out.stderr
    );
    let requests = fake.requests();
    // Turn 1 on the command line's models at the new temperature; turn 2 on the 3-layer preset
    // (the command line's --temperature 0.5 applies to it again); nothing after quit.
    assert_eq!(requests.len(), 3 + 9);
    assert!(requests[..3].iter().all(|r| r.json["temperature"] == 0.1));
    assert_eq!(requests[11].model, "deepseek-ai/DeepSeek-V3");
    assert!(requests[3..].iter().all(|r| r.json["temperature"] == 0.5));
}
