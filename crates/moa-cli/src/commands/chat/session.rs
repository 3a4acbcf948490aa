//! A chat's state: the conversation, the preset it runs, usage so far; and what slash commands
//! do to it.

use std::collections::BTreeMap;

use moa_core::{Message, Moa, Preset, PriceTable, RunOptions, Trace, Usage};
use moa_providers::Registry;
use serde::Serialize;

use super::slash::{Slash, HELP};
use crate::commands::{engine, Resolved};
use crate::config::{apply_flags, Config, Flags};
use crate::runlog;

/// One finished turn, kept for /show and /save.
#[derive(Serialize)]
pub struct Turn {
    pub user: String,
    pub answer: String,
    pub trace: Trace,
}

/// The state of one `moa chat`.
pub struct Session {
    config: Config,
    registry: Registry,
    options: RunOptions,
    /// The command line's flags, applied again to a preset chosen with /preset.
    flags: Flags,
    pub preset: Preset,
    pub moa: Moa,
    pub multi_turn: bool,
    /// User turns and aggregated answers, as every proposer sees them next turn.
    pub history: Vec<Message>,
    pub turns: Vec<Turn>,
    pub usage: BTreeMap<String, Usage>,
    /// `--system`: first in every turn's messages.
    pub system: Option<String>,
    /// Where finished turns are kept for `moa logs` and `--continue`.
    pub log: Log,
}

/// The chat's run log.
pub enum Log {
    /// Not kept (`--no-log`, `log = false`).
    Off,
    /// Kept from the first finished turn on, in this directory.
    Pending(std::path::PathBuf),
    Open(runlog::Writer),
}

/// What applying a slash command asks of the loop.
pub enum Outcome {
    /// Print this and go on.
    Say(String),
    /// Leave the chat.
    Exit,
}

impl Session {
    pub fn new(resolved: Resolved, flags: Flags, multi_turn: bool) -> Self {
        Self {
            config: resolved.config,
            registry: resolved.registry,
            options: resolved.options,
            flags,
            preset: resolved.preset,
            moa: resolved.moa,
            multi_turn,
            history: Vec::new(),
            turns: Vec::new(),
            usage: BTreeMap::new(),
            system: None,
            log: Log::Off,
        }
    }

    /// Takes up an earlier chat: its turns become the history the models see, and new turns
    /// are appended to its log.
    pub fn resume(&mut self, path: std::path::PathBuf, run: runlog::Run) {
        if self.system.is_none() {
            self.system = run.header.about.system.clone();
        }
        for turn in &run.turns {
            self.history.push(Message::user(turn.user.clone()));
            self.history.push(Message::assistant(turn.answer.clone()));
        }
        if !matches!(self.log, Log::Off) {
            self.log = Log::Open(runlog::Writer::reopen(path, run.header.id));
        }
    }

    /// Appends a finished turn to the log, starting the log's file on the first one. A log
    /// that cannot be written is reported once and then left alone; the chat goes on.
    fn keep(&mut self, input: &str, trace: &Trace) {
        if let Log::Pending(dir) = &self.log {
            let fields = runlog::About {
                kind: runlog::Kind::Chat,
                preset: self.preset.name.clone(),
                system: self.system.clone(),
                multi_turn: self.multi_turn,
            };
            self.log = match runlog::Writer::create(dir, fields) {
                Ok(writer) => Log::Open(writer),
                Err(e) => {
                    crate::ui::error(&format!("{e:#}; this chat is not kept"));
                    Log::Off
                }
            };
        }
        if let Log::Open(writer) = &self.log {
            if let Err(e) = writer.turn(input, trace) {
                crate::ui::error(&format!("{e:#}; this chat is no longer kept"));
                self.log = Log::Off;
            }
        }
    }

    /// The id of the chat's log, once it has one.
    pub fn log_id(&self) -> Option<&str> {
        match &self.log {
            Log::Open(writer) => Some(&writer.id),
            _ => None,
        }
    }

    /// The messages a turn with `input` sends: the conversation so far (multi-turn) and `input`.
    pub fn messages_for(&self, input: &str) -> Vec<Message> {
        let mut messages: Vec<Message> = self.system.iter().cloned().map(Message::system).collect();
        if self.multi_turn {
            messages.extend(self.history.iter().cloned());
        }
        messages.push(Message::user(input));
        messages
    }

    /// Records a finished turn: its answer joins the history every proposer sees next.
    pub fn record(&mut self, input: &str, trace: Trace) {
        self.keep(input, &trace);
        self.history.push(Message::user(input));
        self.history.push(Message::assistant(trace.answer.clone()));
        for (model, usage) in &trace.usage_by_model {
            self.usage.entry(model.clone()).or_default().add(usage);
        }
        self.turns.push(Turn {
            user: input.to_string(),
            answer: trace.answer.clone(),
            trace,
        });
    }

    /// A one-line description of the current setup.
    pub fn describe(&self) -> String {
        let proposers: Vec<&str> = self
            .preset
            .layers
            .first()
            .map(|l| l.iter().map(|a| a.model.as_str()).collect())
            .unwrap_or_default();
        format!(
            "preset {} · {} layers · proposers {} · aggregator {} · {}",
            self.preset.name,
            self.preset.layer_count(),
            if proposers.is_empty() {
                "none".to_string()
            } else {
                proposers.join(", ")
            },
            self.preset.aggregator.model,
            if self.multi_turn {
                "multi-turn"
            } else {
                "single-turn"
            }
        )
    }

    fn rebind(&mut self, preset: Preset) -> anyhow::Result<String> {
        self.moa = engine(&self.registry, &preset, &self.options)?;
        self.preset = preset;
        Ok(self.describe())
    }

    /// Changes the current preset as `flags` say and rebinds the engine to it.
    fn reshape(&mut self, flags: Flags) -> anyhow::Result<String> {
        let preset = apply_flags(self.preset.clone(), &flags)?;
        self.rebind(preset)
    }

    /// Applies a slash command.
    pub fn apply(&mut self, command: Slash) -> anyhow::Result<Outcome> {
        let say = |s: String| Ok(Outcome::Say(s));
        match command {
            Slash::Help => say(HELP.to_string()),
            Slash::Exit => Ok(Outcome::Exit),
            Slash::Preset(name) => {
                let preset = apply_flags(self.config.preset(&name)?, &self.flags_for_new_preset())?;
                say(self.rebind(preset)?)
            }
            Slash::Proposers(models) => say(self.reshape(Flags {
                proposers: Some(models),
                ..Flags::default()
            })?),
            Slash::Aggregator(model) => say(self.reshape(Flags {
                aggregator: Some(model),
                ..Flags::default()
            })?),
            Slash::Rounds(rounds) => say(self.reshape(Flags {
                layers: Some(rounds + 1),
                ..Flags::default()
            })?),
            Slash::Temperature(t) => {
                self.reshape(Flags {
                    temperature: Some(t),
                    ..Flags::default()
                })?;
                say(format!("temperature {t} for every agent"))
            }
            Slash::Show => say(self.last_proposals()),
            Slash::Save(path) => {
                let body = serde_json::json!({
                    "preset": self.preset.name,
                    "multi_turn": self.multi_turn,
                    "messages": self.history,
                    "turns": self.turns,
                    "usage_by_model": self.usage,
                });
                let text = serde_json::to_string_pretty(&body)?;
                crate::files::write_private(std::path::Path::new(&path), text.as_bytes())
                    .map_err(|e| anyhow::anyhow!("cannot write {path}: {e}"))?;
                say(format!("saved {} turns to {path}", self.turns.len()))
            }
            Slash::Clear => {
                self.history.clear();
                // What follows is a new conversation, and is kept as one.
                if let Log::Open(writer) = &self.log {
                    self.log = Log::Pending(writer.dir());
                }
                say("conversation cleared".into())
            }
            Slash::Usage => say(self.usage_report()),
        }
    }

    /// The command line's temperature and max_tokens still apply to a newly chosen preset.
    fn flags_for_new_preset(&self) -> Flags {
        Flags {
            temperature: self.flags.temperature,
            max_tokens: self.flags.max_tokens,
            policy: self.flags.policy.clone(),
            ..Flags::default()
        }
    }

    fn last_proposals(&self) -> String {
        let Some(turn) = self.turns.last() else {
            return "no turn yet".into();
        };
        let mut out = String::new();
        for layer in &turn.trace.layers {
            for call in &layer.calls {
                let body = match (&call.answer, &call.error) {
                    (Some(answer), _) => answer.clone(),
                    (None, Some(error)) => format!("(failed: {error})"),
                    (None, None) => String::new(),
                };
                out.push_str(&format!(
                    "── layer {} · {} · {:.2}s\n{body}\n\n",
                    layer.layer,
                    call.model,
                    call.latency_ms as f64 / 1000.0
                ));
            }
        }
        out.trim_end().to_string()
    }

    fn usage_report(&self) -> String {
        usage_table(&self.usage, &self.options.prices)
    }
}

/// Tokens and cost per model and in total; a model without a known price shows `?` and makes
/// the total a lower bound.
pub fn usage_table(usage: &BTreeMap<String, Usage>, prices: &PriceTable) -> String {
    if usage.is_empty() {
        return "no tokens used yet".into();
    }
    let mut total = Usage::default();
    let mut cost = 0.0;
    let mut unpriced = false;
    let mut out = format!(
        "{:<50} {:>10} {:>10} {:>10}\n",
        "model", "tokens in", "out", "cost"
    );
    for (model, usage) in usage {
        total.add(usage);
        let shown = match prices.cost(model, usage) {
            Some(c) => {
                cost += c;
                format!("${c:.4}")
            }
            None => {
                unpriced = true;
                "?".to_string()
            }
        };
        out.push_str(&format!(
            "{model:<50} {:>10} {:>10} {shown:>10}\n",
            usage.prompt_tokens, usage.completion_tokens
        ));
    }
    let total_cost = format!("{}${cost:.4}", if unpriced { ">=" } else { "" });
    out.push_str(&format!(
        "{:<50} {:>10} {:>10} {total_cost:>10}",
        "total", total.prompt_tokens, total.completion_tokens
    ));
    if unpriced {
        out.push_str("\n(? = no price known; add one under [prices] in the config)");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_usage_table_prices_what_it_can() {
        let mut usage = BTreeMap::new();
        usage.insert(
            "bedrock:anthropic.claude-3-haiku-20240307-v1:0".to_string(),
            Usage {
                prompt_tokens: 4000,
                completion_tokens: 800,
                total_tokens: 4800,
                cached_tokens: 0,
            },
        );
        let table = usage_table(&usage, &PriceTable::builtin());
        // 4,000 x $0.25/M + 800 x $1.25/M = $0.002.
        assert!(
            table.lines().last().unwrap().ends_with("$0.0020"),
            "{table}"
        );
        usage.insert(
            "acme:mystery".to_string(),
            Usage {
                prompt_tokens: 1,
                completion_tokens: 1,
                total_tokens: 2,
                cached_tokens: 0,
            },
        );
        let table = usage_table(&usage, &PriceTable::builtin());
        assert!(table.contains(">=$0.0020"), "{table}");
        assert!(table.contains("no price known"), "{table}");
    }
}
