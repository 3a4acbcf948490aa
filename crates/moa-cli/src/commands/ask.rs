//! `moa ask`: one prompt, the final answer streamed to stdout.

use std::io::{IsTerminal, Read};
use std::path::Path;

use anyhow::Context;
use moa_core::{Message, ResponseFormat, RunRequest, ToolDef, Tools};

use super::turn::{self, PlainView, TurnEnd};
use crate::cli::AskArgs;
use crate::exit::Interrupted;

/// The most read from stdin: a prompt, or a document given as context.
const MAX_STDIN: u64 = 16 << 20;

/// Whether stdin carries piped input worth reading: a pipe or a file, not a terminal, not
/// /dev/null or a socket (a socket a parent holds open would never end).
fn stdin_is_piped() -> bool {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return false;
    }
    #[cfg(unix)]
    {
        use std::os::fd::AsFd;
        use std::os::unix::fs::FileTypeExt;
        let Ok(fd) = stdin.as_fd().try_clone_to_owned() else {
            return false;
        };
        match std::fs::File::from(fd).metadata() {
            Ok(m) => m.file_type().is_fifo() || m.file_type().is_file(),
            Err(_) => false,
        }
    }
    #[cfg(not(unix))]
    true
}

fn read_stdin() -> anyhow::Result<String> {
    let mut bytes = Vec::new();
    std::io::stdin()
        .take(MAX_STDIN + 1)
        .read_to_end(&mut bytes)
        .context("cannot read stdin")?;
    if bytes.len() as u64 > MAX_STDIN {
        anyhow::bail!(
            "stdin holds more than {} MiB; give the model less (a model's context is far smaller)",
            MAX_STDIN >> 20
        );
    }
    String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("stdin is not UTF-8 text"))
}

/// The prompt from the words given and piped input, as `llm` reads them: words alone are the
/// prompt; piped input alone is the prompt; both, and the piped text follows the words as
/// context. `-` reads the prompt from stdin only.
fn read_prompt(words: &[String]) -> anyhow::Result<String> {
    if words == ["-"] {
        if std::io::stdin().is_terminal() {
            crate::ui::note!("(reading the prompt from stdin; end it with Ctrl-D)");
        }
        let prompt = read_stdin()?;
        if prompt.trim().is_empty() {
            anyhow::bail!("the prompt read from stdin is empty");
        }
        return Ok(prompt);
    }
    let given = words.join(" ");
    let piped = match stdin_is_piped() {
        true => read_stdin()?,
        false => String::new(),
    };
    Ok(match (given.trim().is_empty(), piped.trim().is_empty()) {
        (false, true) => given,
        (true, false) => piped,
        (false, false) => format!("{given}\n\n{piped}"),
        (true, true) => anyhow::bail!(
            "no prompt: give one (`moa ask what is MoA?`) or pipe one in (`cat notes.txt | moa ask summarise this`)"
        ),
    })
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

/// Keeps the run for `moa logs` (and `moa chat --resume ID`); a log that cannot be written is
/// reported, and the answer stands.
fn keep_run(
    resolved: &super::Resolved,
    system: Option<String>,
    prompt: &str,
    trace: &moa_core::Trace,
) {
    let Some(dir) = crate::runlog::dir() else {
        return;
    };
    let fields = crate::runlog::About {
        kind: crate::runlog::Kind::Ask,
        preset: resolved.preset.name.clone(),
        system,
        multi_turn: true,
    };
    let kept = crate::runlog::Writer::create(&dir, fields).and_then(|w| w.turn(prompt, trace));
    if let Err(e) = kept {
        crate::ui::error(&format!(
            "{e:#}; this run is not kept (--no-log stops trying)"
        ));
    }
}

/// Runs `moa ask`.
pub async fn run(config_path: Option<&Path>, args: AskArgs) -> anyhow::Result<()> {
    let resolved = super::resolve(config_path, &args.run.flags())?;
    let prompt = read_prompt(&args.prompt)?;
    let keep = crate::runlog::enabled(&resolved.config, args.log.no_log);
    let mut messages = Vec::new();
    if let Some(system) = args.system.clone() {
        messages.push(Message::system(system));
    }
    messages.push(Message::user(prompt.clone()));
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
    // On a terminal, which proposers are done and a spinner, cleared before the answer.
    view.progress = !args.show_proposals && !crate::ui::quiet() && std::io::stderr().is_terminal();
    let end = turn::run(&resolved.moa, request, &mut view, true).await?;
    view.clear_progress()?;
    if view.open_line {
        println!();
    }
    if let (TurnEnd::Done(trace), true) = (&end, keep) {
        keep_run(&resolved, args.system.clone(), &prompt, trace);
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
