//! `moa ask`: one prompt, the final answer streamed to stdout.

use std::io::{IsTerminal, Read, Write};
use std::path::Path;

use anyhow::Context;
use futures::StreamExt;
use moa_core::{Message, RunEvent};

use crate::cli::AskArgs;
use crate::exit::Interrupted;
use crate::render;

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

    let layers = resolved.preset.layer_count();
    // Poll once so the Ctrl-C handler is installed before any request is sent.
    let mut interrupt = std::pin::pin!(tokio::signal::ctrl_c());
    let _ = futures::poll!(&mut interrupt);
    let mut stream = resolved.moa.run(messages);
    let mut stdout = std::io::stdout().lock();
    let mut stderr = std::io::stderr();
    let mut ended_with_newline = true;
    loop {
        let event = tokio::select! {
            event = stream.next() => event,
            _ = &mut interrupt => {
                drop(stream);
                if !ended_with_newline {
                    let _ = writeln!(stdout);
                }
                return Err(Interrupted.into());
            }
        };
        let event = match event {
            Some(Ok(event)) => event,
            Some(Err(error)) => {
                if !ended_with_newline {
                    writeln!(stdout)?;
                }
                if args.json {
                    let body = serde_json::json!({ "error": error.to_string() });
                    writeln!(stdout, "{}", serde_json::to_string_pretty(&body)?)?;
                }
                return Err(error.into());
            }
            None => return Ok(()),
        };
        if args.show_proposals {
            render::proposal(&mut stderr, &event, layers)?;
        }
        match event {
            RunEvent::AggregatorDelta { text } if !args.json => {
                stdout.write_all(text.as_bytes())?;
                stdout.flush()?;
                ended_with_newline = text.ends_with('\n');
            }
            RunEvent::Done(trace) => {
                if args.json {
                    writeln!(stdout, "{}", serde_json::to_string_pretty(&trace)?)?;
                } else if !ended_with_newline {
                    writeln!(stdout)?;
                }
                stdout.flush()?;
                return Ok(());
            }
            _ => {}
        }
    }
}
