//! One module per subcommand; each only translates between the user and the library.

pub mod ask;
pub mod bench;
pub mod chat;
pub mod config;
pub mod eval;
pub mod logs;
pub mod presets;
pub mod progress;
pub mod providers;
pub mod serve;
pub mod shell;
pub mod turn;

use moa_core::{AgentSpec, Moa, Preset, PromptStyle, RunOptions};
use moa_providers::Registry;

use crate::config::{Config, Flags, Settings};
use crate::exit::MissingKeys;

/// Everything a run needs, resolved from config, environment and flags.
pub struct Resolved {
    pub config: Config,
    pub registry: Registry,
    pub options: RunOptions,
    pub preset: Preset,
    pub moa: Moa,
}

/// Loads the config, merges the settings layers, applies the flags to the preset, checks API
/// keys, and binds providers.
pub fn resolve(config_path: Option<&std::path::Path>, flags: &Flags) -> anyhow::Result<Resolved> {
    let config = Config::load(config_path)?;
    let settings = Settings::resolve(&config, flags)?;
    let preset = crate::config::apply_flags(config.preset(&settings.preset)?, flags)?;
    let registry: Registry = config.registry()?;
    crate::local::register(&registry);
    let moa = engine(&registry, &preset, &settings.options)?;
    Ok(Resolved {
        config,
        registry,
        options: settings.options,
        preset,
        moa,
    })
}

/// The engine for `preset`: its API keys checked, its local models fetched, its providers bound.
pub fn engine(registry: &Registry, preset: &Preset, options: &RunOptions) -> anyhow::Result<Moa> {
    let missing = registry.missing_keys(preset);
    if !missing.is_empty() {
        return Err(MissingKeys {
            preset: preset.name.clone(),
            missing,
        }
        .into());
    }
    crate::local::ensure_models(preset)?;
    Ok(Moa::new(registry.bind(preset)?, options.clone()))
}

/// A preset that calls `model` alone (no proposers): how a single model is measured or judged.
pub fn single_model(model: &str) -> anyhow::Result<Preset> {
    moa_core::ModelRef::parse(model).map_err(|e| anyhow::anyhow!("--model {model}: {e}"))?;
    Ok(Preset {
        name: model.to_string(),
        description: "a single model".into(),
        layers: Vec::new(),
        aggregator: AgentSpec::new(model),
        prompt_style: PromptStyle::Reference,
        policy: Default::default(),
    })
}
