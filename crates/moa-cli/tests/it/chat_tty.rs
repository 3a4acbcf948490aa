//! `moa chat` in a pseudo-terminal, as a person would use it: typed turns, a slash command,
//! Ctrl-C in the middle of an answer, Ctrl-D to leave, and the history file left behind.

use std::process::Command;

use moa_core::AGGREGATOR_SYSTEM_PROMPT;
use moa_testkit::{Ending, FakeOpenAi, Reply};
use rexpect::process::WaitStatus;
use tokio::task::block_in_place;

use crate::{Sandbox, KEY};

#[tokio::test(flavor = "multi_thread")]
async fn a_terminal_chat_with_ctrl_c_slash_commands_and_history() {
    let fake = FakeOpenAi::start().await;
    fake.respond_with(|r| {
        let turn = r
            .messages()
            .iter()
            .filter(|(role, _)| role == "user")
            .count();
        let aggregator = r
            .messages()
            .first()
            .is_some_and(|(_, c)| c.starts_with(AGGREGATOR_SYSTEM_PROMPT));
        if aggregator {
            Reply::text(format!("answer {turn}"))
        } else {
            Reply::text(format!("{} proposes", r.model))
        }
    });
    let sandbox = Sandbox::new(&fake, "");
    let mut command = Command::new(env!("CARGO_BIN_EXE_moa"));
    command
        .args([
            "chat",
            "--proposers",
            "together:p/one,together:p/two",
            "--aggregator",
            "together:p/agg",
        ])
        .current_dir(sandbox.path())
        .env_clear()
        .env("HOME", sandbox.path())
        .env("MOA_CONFIG", &sandbox.config)
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("TERM", "xterm")
        .env(KEY.0, KEY.1);
    let mut chat = rexpect::session::spawn_command(command, Some(30_000)).unwrap();
    block_in_place(|| {
        // rexpect reads bytes as Latin-1: match ASCII pieces only.
        chat.exp_string("preset together").unwrap();
        chat.exp_string("2 layers").unwrap();
        chat.exp_string("moa> ").unwrap();
        chat.send_line("What is MoA?").unwrap();
        // A live status line per proposer, then the answer.
        chat.exp_string("layer 1/2").unwrap();
        chat.exp_string("together:p/one").unwrap();
        chat.exp_string("done in").unwrap();
        chat.exp_string("aggregating with together:p/agg").unwrap();
        chat.exp_string("answer 1").unwrap();
        chat.exp_string("moa> ").unwrap();
        chat.send_line("Tell me more.").unwrap();
        chat.exp_string("answer 2").unwrap();
        chat.exp_string("moa> ").unwrap();
    });
    // The second turn's proposers saw the first turn's answer.
    let requests = fake.requests();
    assert_eq!(requests.len(), 6);
    assert!(requests[3]
        .messages()
        .contains(&("assistant".to_string(), "answer 1".to_string())));

    // An answer that hangs halfway: Ctrl-C cancels it, closes its connection, and the chat stays.
    fake.push("p/agg", Reply::stall_after("The third answer begins"));
    block_in_place(|| {
        chat.send_line("And then?").unwrap();
        chat.exp_string("The third answer begins").unwrap();
        chat.send_control('c').unwrap();
        chat.exp_string("(cancelled; the conversation is as it was before this turn)")
            .unwrap();
        chat.exp_string("moa> ").unwrap();
    });
    assert_eq!(fake.wait_ending(8).await, Ending::ClientGone);

    block_in_place(|| {
        chat.send_line("/rounds 2").unwrap();
        chat.exp_string("3 layers").unwrap();
        chat.exp_string("moa> ").unwrap();
        chat.send_line("Once more.").unwrap();
        // The cancelled turn left no trace: this is the third user turn.
        chat.exp_string("answer 3").unwrap();
        chat.exp_string("moa> ").unwrap();
        chat.send_control('d').unwrap();
        chat.exp_eof().unwrap();
    });
    assert_eq!(fake.requests().len(), 9 + 5);
    let status = chat.process().wait().unwrap();
    assert!(matches!(status, WaitStatus::Exited(_, 0)), "{status:?}");
    let history =
        std::fs::read_to_string(sandbox.path().join(".local/share/moa/history.txt")).unwrap();
    for line in [
        "What is MoA?",
        "Tell me more.",
        "And then?",
        "/rounds 2",
        "Once more.",
    ] {
        assert!(
            history.contains(line),
            "{line} missing from the history file:\n{history}"
        );
    }
}

/// Runs `moa` in a pseudo-terminal with `env` and returns everything it wrote.
fn in_terminal(sandbox: &Sandbox, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_moa"));
    command
        .args(args)
        .current_dir(sandbox.path())
        .env_clear()
        .env("HOME", sandbox.path())
        .env("MOA_CONFIG", &sandbox.config)
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env(KEY.0, KEY.1)
        .envs(env.iter().copied());
    let mut session = rexpect::session::spawn_command(command, Some(30_000)).unwrap();
    block_in_place(|| session.exp_eof().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_terminal_gets_colour_and_progress_unless_no_color_or_a_dumb_term() {
    let fake = FakeOpenAi::start().await;
    fake.respond_with(|r| match r.model.contains("agg") {
        true => Reply::text("the answer"),
        false => Reply::text("a proposal"),
    });
    let sandbox = Sandbox::new(&fake, "");
    let bad = ["ask", "--preset", "nope", "hi"];
    let coloured = in_terminal(&sandbox, &bad, &[("TERM", "xterm")]);
    assert!(coloured.contains("\x1b[1;31mmoa: "), "{coloured:?}");
    for plain in [
        [("TERM", "xterm"), ("NO_COLOR", "1")],
        [("TERM", "dumb"), ("X", "")],
    ] {
        let out = in_terminal(&sandbox, &bad, &plain);
        assert!(out.contains("moa: "), "{out:?}");
        assert!(!out.contains('\x1b'), "{plain:?}: {out:?}");
    }
    // `ask` on a terminal: a status line while proposers work, wiped before the answer.
    let ask = [
        "ask",
        "--proposers",
        "together:p/one,together:p/two",
        "--aggregator",
        "together:p/agg",
        "What is MoA?",
    ];
    let out = in_terminal(&sandbox, &ask, &[("TERM", "xterm")]);
    assert!(out.contains("layer 1/2"), "{out:?}");
    assert!(out.contains("/2 proposers done"), "{out:?}");
    let wiped = out.rfind("\r\x1b[2K").unwrap();
    let answer = out.find("the answer").unwrap();
    assert!(wiped < answer, "{out:?}");
    // -q: the answer alone.
    let quiet = in_terminal(
        &sandbox,
        &["-q"].iter().chain(&ask).copied().collect::<Vec<_>>(),
        &[("TERM", "xterm")],
    );
    assert_eq!(quiet.trim(), "the answer", "{quiet:?}");
}
