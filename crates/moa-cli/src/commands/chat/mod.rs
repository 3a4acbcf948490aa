//! `moa chat`: multi-turn MoA, as the reference's bot.py does it. Each turn's proposers see the
//! conversation so far (your turns and the aggregated answers); references are fresh each turn.
//! On a terminal: line editing, history, live proposer status, Ctrl-C to cancel an answer. With
//! stdin not a terminal: one answer per input line on stdout, nothing else there.

mod session;
mod slash;
mod tty;

use anyhow::Context;
use moa_core::RunRequest;
use std::io::{BufRead, IsTerminal};
use std::path::Path;

use super::turn::{self, PlainView, TurnEnd};
use crate::cli::ChatArgs;
use crate::ui::note;
use session::{Outcome, Session};

/// Reads one input, joining lines that end with `\`; `None` at the end of input.
fn read_input(
    lines: &mut impl Iterator<Item = std::io::Result<String>>,
) -> std::io::Result<Option<String>> {
    let mut text = String::new();
    for line in lines {
        let line = line?;
        match line.strip_suffix('\\') {
            Some(head) => {
                text.push_str(head);
                text.push('\n');
            }
            None => {
                text.push_str(&line);
                return Ok(Some(text));
            }
        }
    }
    Ok((!text.is_empty()).then_some(text))
}

/// What a line of input asks for.
pub enum Step {
    /// Leave the chat.
    Leave,
    /// A slash command, done (its output or error already shown on stderr).
    Handled,
    /// A turn for the models.
    Ask,
}

/// Handles `exit`, `quit` and slash commands; `gap` follows each message (a blank line on terminals).
pub fn step(session: &mut Session, input: &str, gap: &str) -> Step {
    if matches!(input.trim(), "exit" | "quit") {
        return Step::Leave;
    }
    match slash::parse(input) {
        Ok(None) => Step::Ask,
        Ok(Some(command)) => match session.apply(command) {
            Ok(Outcome::Exit) => Step::Leave,
            Ok(Outcome::Say(text)) => {
                eprintln!("{text}{gap}");
                Step::Handled
            }
            Err(e) => {
                eprintln!("moa: {e:#}{gap}");
                Step::Handled
            }
        },
        Err(e) => {
            eprintln!("moa: {e}{gap}");
            Step::Handled
        }
    }
}

/// Runs `moa chat`.
pub async fn run(config_path: Option<&Path>, args: ChatArgs) -> anyhow::Result<()> {
    let flags = args.run.flags();
    let resolved = super::resolve(config_path, &flags)?;
    let keep = crate::runlog::enabled(&resolved.config, args.log.no_log);
    let mut session = Session::new(resolved, flags, !args.no_multi_turn);
    session.system = args.system.clone();
    if keep {
        let dir = crate::runlog::dir()
            .context("this system has no user data directory to keep chats in; pass --no-log")?;
        session.log = session::Log::Pending(dir);
    }
    let earlier = match (&args.resume, args.continue_last) {
        (Some(id), _) => Some(id.as_str()),
        (None, true) => Some("last"),
        (None, false) => None,
    };
    if let Some(id) = earlier {
        let dir = crate::runlog::dir().context("this system has no user data directory")?;
        let kind = (id == "last").then_some(crate::runlog::Kind::Chat);
        let (path, run) = crate::runlog::find(&dir, id, kind)?;
        note!(
            "moa: going on with {} ({} turns, started {} UTC)",
            run.header.id,
            run.turns.len(),
            crate::runlog::utc(run.header.started)
        );
        session.resume(path, run);
    }
    if std::io::stdin().is_terminal() {
        return tty::run(&mut session, args.show_proposals).await;
    }
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    let mut failures = 0;
    while let Some(input) = read_input(&mut lines)? {
        let input = input.trim().to_string();
        if input.is_empty() {
            continue;
        }
        match step(&mut session, &input, "") {
            Step::Leave => break,
            Step::Handled => continue,
            Step::Ask => {}
        }
        let mut view = PlainView::new(
            args.show_proposals,
            !args.json,
            session.preset.layer_count(),
        );
        match turn::run(
            &session.moa,
            RunRequest::new(session.messages_for(&input)),
            &mut view,
            false,
        )
        .await?
        {
            TurnEnd::Done(trace) if args.json => {
                println!("{}", serde_json::to_string(&trace)?);
                session.record(&input, *trace);
            }
            TurnEnd::Done(trace) => {
                if !trace.answer.ends_with('\n') {
                    println!();
                }
                session.record(&input, *trace);
            }
            TurnEnd::Failed(error) => {
                failures += 1;
                crate::ui::error(&error.to_string());
            }
            TurnEnd::Cancelled => {}
        }
    }
    if failures > 0 {
        return Err(crate::exit::TurnsFailed(failures).into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backslash_continues_a_line() {
        let mut lines = ["first \\", "second", "third"]
            .into_iter()
            .map(|l| Ok(l.to_string()));
        assert_eq!(
            read_input(&mut lines).unwrap().as_deref(),
            Some("first \nsecond")
        );
        assert_eq!(read_input(&mut lines).unwrap().as_deref(), Some("third"));
        assert_eq!(read_input(&mut lines).unwrap(), None);
    }
}
