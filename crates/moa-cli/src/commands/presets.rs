//! `moa presets`: every preset with its layers and models.

use std::fmt::Write as _;
use std::path::Path;

use moa_core::{AgentSpec, Preset};

use crate::cli::PresetsArgs;
use crate::config::{Config, Origin};

fn settings(agent: &AgentSpec) -> String {
    let mut parts = Vec::new();
    if let Some(t) = agent.temperature {
        parts.push(format!("temperature {t}"));
    }
    if let Some(m) = agent.max_tokens {
        parts.push(format!("max_tokens {m}"));
    }
    if agent.system.is_some() {
        parts.push("own system prompt".into());
    }
    for (key, value) in &agent.extra {
        parts.push(format!("{key} {value}"));
    }
    if parts.is_empty() {
        "provider defaults".into()
    } else {
        parts.join(", ")
    }
}

/// One preset as the listing shows it.
pub fn describe(preset: &Preset, origin: Origin) -> String {
    let mut out = String::new();
    let origin = match origin {
        Origin::BuiltIn => "built-in",
        Origin::Config => "config",
    };
    let _ = writeln!(
        out,
        "{} ({origin}, {} layers, {} prompt style)",
        preset.name,
        preset.layer_count(),
        preset.prompt_style.name()
    );
    if !preset.description.is_empty() {
        let _ = writeln!(out, "  {}", preset.description);
    }
    for (i, layer) in preset.layers.iter().enumerate() {
        for (j, agent) in layer.iter().enumerate() {
            let label = if j == 0 {
                format!("layer {}:", i + 1)
            } else {
                String::new()
            };
            let _ = writeln!(out, "  {label:<11} {}  [{}]", agent.model, settings(agent));
        }
    }
    let _ = writeln!(
        out,
        "  {:<11} {}  [{}]",
        "aggregator:",
        preset.aggregator.model,
        settings(&preset.aggregator)
    );
    if !preset.policy.is_reference() {
        let p = &preset.policy;
        let mut parts = Vec::new();
        if let Some(q) = p.quorum {
            parts.push(format!("quorum {q}"));
        }
        if !p.grace.is_zero() {
            parts.push(format!("grace {} ms", p.grace.as_millis()));
        }
        if p.early_exit {
            parts.push("early exit".into());
        }
        if p.fallback {
            parts.push("fallback".into());
        }
        if let Some(c) = p.max_cost {
            parts.push(format!("max cost ${c}"));
        }
        if let Some(t) = p.max_tokens_total {
            parts.push(format!("max {t} tokens"));
        }
        if let Some(d) = p.deadline {
            parts.push(format!("deadline {} ms", d.as_millis()));
        }
        if let Some(r) = p.reference_max_tokens {
            parts.push(format!("references up to {r} tokens"));
        }
        if let Some(w) = p.aggregate_window {
            parts.push(format!("aggregated {w} at a time (Self-MoA-Seq)"));
        }
        let _ = writeln!(out, "  {:<11} {}", "policy:", parts.join(", "));
    }
    out
}

/// Runs `moa presets`.
pub fn run(config_path: Option<&Path>, args: PresetsArgs) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    let presets = config.presets()?;
    if args.json {
        let list: Vec<&Preset> = presets.iter().map(|(p, _)| p).collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    if let Some(path) = &config.path {
        println!("config: {}\n", path.display());
    }
    let text: Vec<String> = presets.iter().map(|(p, o)| describe(p, *o)).collect();
    print!("{}", text.join("\n"));
    Ok(())
}
