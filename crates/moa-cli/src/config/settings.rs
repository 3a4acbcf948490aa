//! The one place where settings layers merge: defaults < config file < environment < flags.

use std::time::Duration;

use moa_core::{ModelRef, Preset, PresetChanges, PromptStyle, RunOptions};

use super::{Config, ConfigError};
use crate::env;

/// The preset run when none is named anywhere and an API key for it is set.
pub const DEFAULT_PRESET: &str = "together";
/// The preset run when none is named anywhere and no API key is set: the embedded local model.
pub const KEYLESS_PRESET: &str = "local";

/// `together` when its key is set (or local models are not built in), else `local`.
fn default_preset() -> &'static str {
    let key = moa_providers::Endpoint::known(DEFAULT_PRESET).and_then(|e| e.api_key_env);
    let has_key = key.as_deref().and_then(env::lookup).is_some();
    if has_key || !crate::local::ENABLED {
        DEFAULT_PRESET
    } else {
        KEYLESS_PRESET
    }
}
/// Seconds one model call may take by default, retries included.
pub const DEFAULT_TIMEOUT_SECS: f64 = 600.0;

/// What the command line says about a run; `None` leaves the lower layers' value.
#[derive(Clone, Debug, Default)]
pub struct Flags {
    pub preset: Option<String>,
    pub proposers: Option<Vec<String>>,
    pub aggregator: Option<String>,
    pub layers: Option<usize>,
    pub temperature: Option<f64>,
    pub max_tokens: Option<u32>,
    pub min_proposals: Option<usize>,
    pub timeout: Option<f64>,
    pub prompt_style: Option<PromptStyle>,
    /// `--quorum`, `--max-cost`, ...
    pub policy: moa_core::PolicyChanges,
}

/// One source's values.
#[derive(Default)]
struct Layer {
    preset: Option<String>,
    timeout: Option<f64>,
    min_proposals: Option<usize>,
    stream_proposers: Option<bool>,
}

impl Layer {
    fn over(self, lower: Layer) -> Layer {
        Layer {
            preset: self.preset.or(lower.preset),
            timeout: self.timeout.or(lower.timeout),
            min_proposals: self.min_proposals.or(lower.min_proposals),
            stream_proposers: self.stream_proposers.or(lower.stream_proposers),
        }
    }
}

/// The resolved settings of a run.
#[derive(Clone, Debug)]
pub struct Settings {
    pub preset: String,
    pub options: RunOptions,
}

fn env_number(name: &'static str) -> Result<Option<f64>, ConfigError> {
    match env::lookup(name) {
        None => Ok(None),
        Some(value) => match value.trim().parse::<f64>() {
            Ok(n) if n.is_finite() && n >= 0.0 => Ok(Some(n)),
            _ => Err(ConfigError::Env {
                name,
                message: "expected a number that is 0 or more".into(),
                value,
            }),
        },
    }
}

impl Settings {
    /// Merges the layers for a run.
    pub fn resolve(config: &Config, flags: &Flags) -> Result<Settings, ConfigError> {
        let defaults = Layer {
            preset: Some(default_preset().to_string()),
            timeout: Some(DEFAULT_TIMEOUT_SECS),
            min_proposals: Some(1),
            stream_proposers: Some(true),
        };
        let file = Layer {
            preset: config.file.preset.clone(),
            timeout: config.file.timeout,
            min_proposals: config.file.min_proposals,
            stream_proposers: config.file.stream_proposers,
        };
        let environment = Layer {
            preset: env::lookup(env::MOA_PRESET),
            timeout: env_number(env::MOA_TIMEOUT)?,
            min_proposals: env_number(env::MOA_MIN_PROPOSALS)?.map(|n| n as usize),
            stream_proposers: None,
        };
        let command_line = Layer {
            preset: flags.preset.clone(),
            timeout: flags.timeout,
            min_proposals: flags.min_proposals,
            stream_proposers: None,
        };
        let merged = command_line.over(environment.over(file.over(defaults)));
        // Each layer checked its own value (clap, Config::parse, env_number), so this is >= 0.
        let timeout = merged.timeout.unwrap_or(DEFAULT_TIMEOUT_SECS);
        Ok(Settings {
            preset: merged.preset.unwrap_or_else(|| DEFAULT_PRESET.to_string()),
            options: RunOptions {
                min_proposals: merged.min_proposals.unwrap_or(1).max(1),
                // Beyond what a Duration holds is as good as no limit.
                timeout: Duration::try_from_secs_f64(timeout)
                    .ok()
                    .filter(|t| !t.is_zero()),
                stream_proposers: merged.stream_proposers.unwrap_or(true),
                prices: std::sync::Arc::new(config.prices()?),
            },
        })
    }
}

/// Applies the command line's changes to `preset` (through [`PresetChanges`], as the server
/// does): models first, then the layer count, then temperature and max_tokens for every agent.
pub fn apply_flags(preset: Preset, flags: &Flags) -> anyhow::Result<Preset> {
    // Model names are checked here first so that errors name the flag.
    let named = [
        ("--proposers", flags.proposers.clone().unwrap_or_default()),
        ("--aggregator", flags.aggregator.iter().cloned().collect()),
    ];
    for (flag, models) in named {
        for model in &models {
            ModelRef::parse(model).map_err(|e| anyhow::anyhow!("{flag}: {e}"))?;
        }
    }
    if flags.proposers.as_ref().is_some_and(Vec::is_empty) {
        anyhow::bail!("--proposers: give at least one provider:model");
    }
    let changes = PresetChanges {
        proposers: flags.proposers.clone(),
        aggregator: flags.aggregator.clone(),
        layers: flags.layers,
        proposer_temperature: flags.temperature,
        proposer_max_tokens: flags.max_tokens,
        aggregator_temperature: flags.temperature,
        aggregator_max_tokens: flags.max_tokens,
        prompt_style: flags.prompt_style,
        policy: flags.policy.clone(),
    };
    // Checked here first so that errors name the flag.
    flags
        .policy
        .apply(moa_core::RunPolicy::default(), moa_core::policy::flag_name)
        .map_err(|e| anyhow::anyhow!(e))?;
    changes
        .apply(preset)
        .map_err(|e| anyhow::anyhow!("{}", e.to_string().replace("the layer count", "--layers")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_beat_the_file_which_beats_defaults() {
        let mut config = Config::default();
        let s = Settings::resolve(&config, &Flags::default()).unwrap();
        assert_eq!(s.preset, default_preset());
        assert_eq!(s.options.timeout, Some(Duration::from_secs(600)));

        config.file.preset = Some("moa".into());
        config.file.timeout = Some(30.0);
        config.file.min_proposals = Some(2);
        let s = Settings::resolve(&config, &Flags::default()).unwrap();
        assert_eq!((s.preset.as_str(), s.options.min_proposals), ("moa", 2));
        assert_eq!(s.options.timeout, Some(Duration::from_secs(30)));

        let flags = Flags {
            preset: Some("moa-lite".into()),
            timeout: Some(0.0),
            ..Flags::default()
        };
        let s = Settings::resolve(&config, &flags).unwrap();
        assert_eq!(s.preset, "moa-lite");
        assert_eq!(s.options.timeout, None, "0 means no limit");
    }

    #[test]
    fn flags_reshape_the_preset() {
        let preset = moa_core::preset::builtin("together").unwrap();
        let flags = Flags {
            proposers: Some(vec!["openai:gpt-4o-mini".into(), "groq:llama".into()]),
            aggregator: Some("openai:gpt-4o".into()),
            layers: Some(3),
            max_tokens: Some(100),
            ..Flags::default()
        };
        let p = apply_flags(preset, &flags).unwrap();
        assert_eq!(p.layers.len(), 2);
        assert_eq!(p.layers[1][1].model, "groq:llama");
        // Replaced proposers keep the preset's per-agent temperature.
        assert_eq!(p.layers[0][0].temperature, Some(0.7));
        assert!(p.agents().all(|a| a.max_tokens == Some(100)));
        assert_eq!(p.aggregator.model, "openai:gpt-4o");

        let bad = Flags {
            proposers: Some(vec!["gpt-4o".into()]),
            ..Flags::default()
        };
        let err = apply_flags(moa_core::preset::builtin("together").unwrap(), &bad).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("--proposers: `gpt-4o` is not a model reference"),
            "{err}"
        );
    }
}
