//! `moa ask`: one prompt, the final answer streamed to stdout.

use std::io::{IsTerminal, Read};
use std::path::Path;

use anyhow::Context;
use moa_core::Message;

use super::turn::{self, PlainView, TurnEnd};
use crate::cli::AskArgs;
use crate::exit::Interrupted;

fn read_prompt(arg: &str) -> anyhow::Result<String> {
    if arg != "-" {
        return Ok(arg.to_string());
    }
    let mut stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprintln!("(reading the prompt from stdin; end it with Ctrl-D)");
    }
    let mut prompt = String::new();
    stdin
        .read_to_string(&mut prompt)
        .context("cannot read the prompt from stdin")?;
    if prompt.trim().is_empty() {
        anyhow::bail!("the prompt read from stdin is empty");
    }
    Ok(prompt)
}

/// Runs `moa ask`.
pub async fn run(config_path: Option<&Path>, args: AskArgs) -> anyhow::Result<()> {
    let resolved = super::resolve(config_path, &args.run.flags())?;
    let prompt = read_prompt(&args.prompt)?;
    let mut messages = Vec::new();
    if let Some(system) = args.system {
        messages.push(Message::system(system));
    }
    messages.push(Message::user(prompt));

    let mut view = PlainView::new(
        args.show_proposals,
        !args.json,
        resolved.preset.layer_count(),
    );
    let end = turn::run(&resolved.moa, messages, &mut view, true).await?;
    if view.open_line {
        println!();
    }
    match end {
        TurnEnd::Done(trace) if args.json => println!("{}", serde_json::to_string_pretty(&trace)?),
        TurnEnd::Done(_) => {}
        TurnEnd::Failed(error) => {
            if args.json {
                let body = serde_json::json!({ "error": error.to_string() });
                println!("{}", serde_json::to_string_pretty(&body)?);
            }
            return Err(error.into());
        }
        TurnEnd::Cancelled => return Err(Interrupted.into()),
    }
    Ok(())
}
