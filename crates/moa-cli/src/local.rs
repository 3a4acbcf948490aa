//! Local models from the command line: registering the `local` provider, fetching known models a
//! run needs (saying so), and `moa models`.

use moa_core::Preset;
use moa_providers::Registry;

use crate::cli::ModelsCommand;
#[cfg(feature = "local")]
use crate::env;

/// Whether this build runs local models.
pub const ENABLED: bool = cfg!(feature = "local");

const DISABLED: &str = "this moa was built without local models (the `local` cargo feature); rebuild with default features, or use an API preset";

fn local_models(preset: &Preset) -> Vec<String> {
    let mut models: Vec<String> = preset
        .agents()
        .filter_map(|a| a.model_ref().ok())
        .filter(|m| m.provider == "local")
        .map(|m| m.model)
        .collect();
    models.sort();
    models.dedup();
    models
}

/// Whether `preset` needs local models this build cannot run.
pub fn unavailable(preset: &Preset) -> bool {
    !ENABLED && !local_models(preset).is_empty()
}

/// Where local models are kept.
#[cfg(feature = "local")]
pub fn models_dir() -> std::path::PathBuf {
    env::lookup(env::MOA_MODELS_DIR)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(moa_local::catalog::default_models_dir)
}

/// Adds the `local` provider to `registry`.
#[cfg(feature = "local")]
pub fn register(registry: &Registry) {
    let provider = moa_local::LocalProvider::new(models_dir());
    registry.insert_provider("local", std::sync::Arc::new(provider));
}

/// Without local models there is nothing to add.
#[cfg(not(feature = "local"))]
pub fn register(_registry: &Registry) {}

/// Fetches the known local models `preset` needs and lacks, telling the user on stderr.
pub fn ensure_models(preset: &Preset) -> anyhow::Result<()> {
    let needed = local_models(preset);
    if needed.is_empty() {
        return Ok(());
    }
    if !ENABLED {
        anyhow::bail!("preset `{}` uses local models, but {DISABLED}", preset.name);
    }
    #[cfg(feature = "local")]
    for name in needed {
        use moa_local::catalog::{self, Status};
        let Some(known) = catalog::known(&name) else {
            continue;
        };
        let dir = models_dir();
        let why = match catalog::status(&dir, known) {
            Status::Ready => continue,
            Status::Missing => "is not here yet".to_string(),
            Status::Partial => "was only partly downloaded".to_string(),
            Status::Corrupt(reason) => format!("is damaged ({reason})"),
        };
        crate::ui::note!(
            "moa: local model {name} {why}; fetching it ({} MB, once) into {}",
            known.size / 1_000_000,
            dir.display()
        );
        let path = moa_local::fetch::pull(&dir, known, true)?;
        crate::ui::note!(
            "moa: {name} is ready at {} (sha256 verified)",
            path.display()
        );
    }
    Ok(())
}

/// Runs `moa models`.
pub fn models(command: ModelsCommand) -> anyhow::Result<()> {
    if !ENABLED {
        anyhow::bail!("{DISABLED}");
    }
    #[cfg(feature = "local")]
    {
        use moa_local::catalog::{self, Status};
        let dir = models_dir();
        match command {
            ModelsCommand::List { json } => {
                let rows: Vec<(&catalog::KnownModel, &str)> = catalog::KNOWN_MODELS
                    .iter()
                    .map(|known| {
                        let state = match catalog::status(&dir, known) {
                            Status::Ready => "ready",
                            Status::Missing => "missing",
                            Status::Partial => "partial",
                            Status::Corrupt(_) => "damaged",
                        };
                        (known, state)
                    })
                    .collect();
                if json {
                    let list: Vec<serde_json::Value> = rows
                        .iter()
                        .map(|(known, state)| {
                            serde_json::json!({
                                "name": known.name,
                                "model": format!("local:{}", known.name),
                                "state": state,
                                "path": catalog::path_in(&dir, known),
                                "size_bytes": known.size,
                                "licence": known.licence,
                                "about": known.about,
                            })
                        })
                        .collect();
                    println!("{}", serde_json::to_string_pretty(&list)?);
                    return Ok(());
                }
                println!(
                    "models directory: {} (set {} to change it)\n",
                    dir.display(),
                    env::MOA_MODELS_DIR
                );
                println!(
                    "{:<9} {:<10} {:<8} {:<11} ABOUT",
                    "NAME", "STATE", "SIZE", "LICENCE"
                );
                for (known, state) in rows {
                    println!(
                        "{:<9} {:<10} {:<8} {:<11} {}",
                        known.name,
                        state,
                        format!("{} MB", known.size / 1_000_000),
                        known.licence,
                        known.about
                    );
                }
                crate::ui::note!("\nUse one as local:NAME, or any GGUF file as local:/path/to/model.gguf (llama and qwen2 architectures).");
            }
            ModelsCommand::Pull { name } => {
                let names: Vec<&str> = catalog::KNOWN_MODELS.iter().map(|m| m.name).collect();
                let known = catalog::known(&name).ok_or_else(|| {
                    anyhow::anyhow!("unknown model `{name}`; known: {}", names.join(", "))
                })?;
                if catalog::status(&dir, known) == Status::Ready {
                    println!(
                        "{name} is already here: {}",
                        catalog::path_in(&dir, known).display()
                    );
                    return Ok(());
                }
                crate::ui::note!(
                    "moa: fetching {name} ({} MB) into {}",
                    known.size / 1_000_000,
                    dir.display()
                );
                let path = moa_local::fetch::pull(&dir, known, true)?;
                println!("{name} is ready at {} (sha256 verified)", path.display());
            }
        }
    }
    #[cfg(not(feature = "local"))]
    let _ = command;
    Ok(())
}
