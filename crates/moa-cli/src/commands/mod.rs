//! One module per subcommand; each only translates between the user and the library.

pub mod ask;
pub mod presets;
pub mod providers;

use moa_core::{Moa, Preset};
use moa_providers::Registry;

use crate::config::{self, Config, Flags, Settings};
use crate::exit::MissingKeys;

/// Everything a run needs, resolved from config, environment and flags.
pub struct Resolved {
    pub preset: Preset,
    pub moa: Moa,
}

/// Loads the config, merges the settings layers, applies the flags to the preset, checks API
/// keys, and binds providers.
pub fn resolve(config_path: Option<&std::path::Path>, flags: &Flags) -> anyhow::Result<Resolved> {
    let config = Config::load(config_path)?;
    let settings = Settings::resolve(&config, flags)?;
    let preset = config::apply_flags(config.preset(&settings.preset)?, flags)?;
    let registry: Registry = config.registry()?;
    crate::local::register(&registry);
    let missing = registry.missing_keys(&preset);
    if !missing.is_empty() {
        return Err(MissingKeys {
            preset: preset.name.clone(),
            missing,
        }
        .into());
    }
    crate::local::ensure_models(&preset)?;
    let plan = registry.bind(&preset)?;
    Ok(Resolved {
        moa: Moa::new(plan, settings.options),
        preset,
    })
}
