//! `moa ask`: one prompt, the final answer streamed to stdout.

use std::io::{IsTerminal, Read};
use std::path::Path;

use anyhow::Context;
use moa_core::{Message, ResponseFormat, RunRequest, ToolDef, Tools};

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

/// The format `--response-format` or `--response-schema` asks for.
fn response_format(args: &AskArgs) -> anyhow::Result<Option<ResponseFormat>> {
    if let Some(path) = &args.response_schema {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the schema file {}", path.display()))?;
        let schema: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("the schema file {} is not JSON", path.display()))?;
        let name = path
            .file_stem()
            .map_or("answer".into(), |s| s.to_string_lossy().into_owned());
        let format = ResponseFormat::json_schema(name, schema, true)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        return Ok(Some(format));
    }
    Ok(match args.response_format.as_deref() {
        Some("json") => Some(ResponseFormat::JsonObject),
        _ => None,
    })
}

/// Runs `moa ask`.
pub async fn run(config_path: Option<&Path>, args: AskArgs) -> anyhow::Result<()> {
    let resolved = super::resolve(config_path, &args.run.flags())?;
    let prompt = read_prompt(&args.prompt)?;
    let mut messages = Vec::new();
    if let Some(system) = args.system.clone() {
        messages.push(Message::system(system));
    }
    messages.push(Message::user(prompt));
    let mut request = RunRequest::new(messages);
    request.response_format = response_format(&args)?;
    if let Some(path) = &args.tools {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the tools file {}", path.display()))?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("the tools file {} is not JSON", path.display()))?;
        let defs =
            ToolDef::parse_openai(value).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        request.tools = Some(Tools {
            defs,
            ..Tools::default()
        });
    }

    let mut view = PlainView::new(
        args.show_proposals,
        !args.json,
        resolved.preset.layer_count(),
    );
    let end = turn::run(&resolved.moa, request, &mut view, true).await?;
    if view.open_line {
        println!();
    }
    match end {
        TurnEnd::Done(trace) if args.json => println!("{}", serde_json::to_string_pretty(&trace)?),
        TurnEnd::Done(trace) => {
            // Tool calls the aggregator made, one JSON object a line, for scripts to act on.
            for call in &trace.aggregator.tool_calls {
                println!("{}", serde_json::to_string(call)?);
            }
        }
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
