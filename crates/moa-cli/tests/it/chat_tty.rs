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
