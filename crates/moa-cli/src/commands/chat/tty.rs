//! The interactive chat: line editing with a persistent history, a live status line per proposer,
//! the answer streamed, Ctrl-C to cancel an answer and stay.

use std::io::Write;
use std::path::PathBuf;

use moa_core::{RunEvent, RunRequest};
use rustyline::error::ReadlineError;
use rustyline::DefaultEditor;

use super::session::Session;
use super::{step, Step};
use crate::commands::turn::{self, TurnEnd, View};
use crate::render;
use crate::ui::{self, Style};

/// Where the line history is kept (`~/.local/share/moa/history.txt` on Linux).
pub fn history_path() -> Option<PathBuf> {
    directories::ProjectDirs::from("", "", "moa").map(|d| d.data_dir().join("history.txt"))
}

/// One proposer's line.
struct Status {
    model: String,
    state: String,
}

/// Status lines on stderr, redrawn in place; the answer on stdout.
struct LiveView {
    show_proposals: bool,
    layers: usize,
    lines: Vec<Status>,
    drawn: usize,
    answering: bool,
    /// Status lines dimmed, failures red (a terminal, NO_COLOR unset, TERM not dumb).
    colour: bool,
}

impl LiveView {
    fn redraw(&mut self) -> std::io::Result<()> {
        let mut err = std::io::stderr().lock();
        if self.drawn > 0 {
            write!(err, "\x1b[{}F", self.drawn)?;
        }
        for status in &self.lines {
            let line = format!("  {:<48} {}", status.model, status.state);
            let style = if status.state.starts_with("failed") {
                Style::Error
            } else {
                Style::Dim
            };
            writeln!(err, "\x1b[2K{}", ui::paint(self.colour, style, &line))?;
        }
        self.drawn = self.lines.len();
        err.flush()
    }

    fn set(&mut self, index: usize, state: String) -> std::io::Result<()> {
        if let Some(status) = self.lines.get_mut(index) {
            status.state = state;
        }
        if self.show_proposals {
            return Ok(());
        }
        self.redraw()
    }
}

impl View for LiveView {
    fn event(&mut self, event: &RunEvent) -> std::io::Result<()> {
        if self.show_proposals {
            render::proposal(&mut std::io::stderr(), event, self.layers)?;
        }
        match event {
            RunEvent::LayerStarted { layer, .. } => {
                self.lines.clear();
                self.drawn = 0;
                if !self.show_proposals {
                    let line = format!("layer {layer}/{}", self.layers);
                    eprintln!("{}", ui::paint(self.colour, Style::Dim, &line));
                }
            }
            RunEvent::ProposerStarted { model, .. } => {
                self.lines.push(Status {
                    model: model.clone(),
                    state: "waiting".into(),
                });
                if !self.show_proposals {
                    self.redraw()?;
                }
            }
            RunEvent::ProposerDelta { index, .. } => {
                let streaming = self.lines.get(*index).is_some_and(|s| s.state == "waiting");
                if streaming {
                    self.set(*index, "streaming…".into())?;
                }
            }
            RunEvent::ProposerDone {
                index,
                latency_ms,
                usage,
                ..
            } => {
                let tokens = usage
                    .map(|u| format!(", {} tokens", u.completion_tokens))
                    .unwrap_or_default();
                self.set(
                    *index,
                    format!("done in {:.2}s{tokens}", *latency_ms as f64 / 1000.0),
                )?;
            }
            RunEvent::ProposerFailed { index, error, .. } => {
                let short: String = error.chars().take(60).collect();
                self.set(*index, format!("failed: {short}"))?;
            }
            RunEvent::ProposerCancelled { index, .. } => {
                self.set(*index, "cancelled: the quorum was in".into())?;
            }
            RunEvent::EarlyExit { layer } if !self.show_proposals => {
                let line = format!("layer {layer} agreed: no aggregation needed");
                eprintln!("{}\n", ui::paint(self.colour, Style::Good, &line));
                self.answering = true;
            }
            RunEvent::EarlyExit { .. } => self.answering = true,
            RunEvent::Fallback { model, .. } if !self.show_proposals => {
                let line = format!("the aggregator failed: answering with {model}'s proposal");
                eprintln!("{}\n", ui::paint(self.colour, Style::Error, &line));
            }
            RunEvent::AggregatorStarted { model } => {
                if !self.show_proposals {
                    let line = format!("aggregating with {model}");
                    eprintln!("{}\n", ui::paint(self.colour, Style::Dim, &line));
                }
                self.answering = true;
            }
            RunEvent::AggregatorDelta { text, .. } => {
                let mut out = std::io::stdout().lock();
                out.write_all(text.as_bytes())?;
                out.flush()?;
            }
            _ => {}
        }
        Ok(())
    }
}

/// Reads one input, continuing lines that end with `\`. `None` when the user leaves.
fn read(editor: &mut DefaultEditor) -> anyhow::Result<Option<String>> {
    let mut text = String::new();
    let mut prompt = "moa> ";
    loop {
        match editor.readline(prompt) {
            Ok(line) => match line.strip_suffix('\\') {
                Some(head) => {
                    text.push_str(head);
                    text.push('\n');
                    prompt = "...> ";
                }
                None => {
                    text.push_str(&line);
                    return Ok(Some(text));
                }
            },
            // Ctrl-C at the prompt drops what was typed, as shells do.
            Err(ReadlineError::Interrupted) => {
                text.clear();
                prompt = "moa> ";
            }
            Err(ReadlineError::Eof) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Runs the interactive chat.
pub async fn run(session: &mut Session, show_proposals: bool) -> anyhow::Result<()> {
    let mut editor = DefaultEditor::new()?;
    let history = history_path();
    if let Some(path) = &history {
        let _ = editor.load_history(path);
    }
    match session.log_id() {
        Some(id) => eprintln!("moa chat · {} · going on with {id}", session.describe()),
        None => eprintln!("moa chat · {}", session.describe()),
    }
    eprintln!("/help lists commands; Ctrl-C cancels an answer; Ctrl-D, exit or quit leaves.\n");
    while let Some(input) = read(&mut editor)? {
        let input = input.trim().to_string();
        if input.is_empty() {
            continue;
        }
        let _ = editor.add_history_entry(input.as_str());
        if let Some(path) = &history {
            // Saved after every entry, so a killed chat keeps its history.
            if let Some(dir) = path.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let _ = editor.save_history(path);
            crate::files::make_private(path);
        }
        match step(session, &input, "\n") {
            Step::Leave => break,
            Step::Handled => continue,
            Step::Ask => {}
        }
        let mut view = LiveView {
            show_proposals,
            layers: session.preset.layer_count(),
            lines: Vec::new(),
            drawn: 0,
            answering: false,
            colour: ui::colour(&std::io::stderr()),
        };
        let end = turn::run(
            &session.moa,
            RunRequest::new(session.messages_for(&input)),
            &mut view,
            true,
        )
        .await?;
        match end {
            TurnEnd::Done(trace) => {
                println!("\n");
                session.record(&input, *trace);
            }
            TurnEnd::Failed(error) => {
                eprintln!();
                ui::error(&format!("{error}\n"));
            }
            TurnEnd::Cancelled => {
                if view.answering {
                    println!();
                }
                eprintln!("(cancelled; the conversation is as it was before this turn)\n");
            }
        }
    }
    Ok(())
}
