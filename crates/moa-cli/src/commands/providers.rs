//! `moa providers`: where each provider is and whether its key is set.

use std::path::Path;

use crate::config::Config;
use crate::env;

/// Runs `moa providers`.
pub fn run(config_path: Option<&Path>) -> anyhow::Result<()> {
    let registry = Config::load(config_path)?.registry()?;
    println!(
        "{:<11} {:<40} {:<22} KEY",
        "PROVIDER", "BASE URL", "KEY VARIABLE"
    );
    for endpoint in registry.endpoints() {
        let var = endpoint.api_key_env.as_deref().unwrap_or("-");
        let state = match (
            endpoint.api_key_env.as_deref().and_then(env::lookup),
            endpoint.key_required,
        ) {
            (Some(_), _) => "set",
            (None, true) => "missing",
            (None, false) => "not needed",
        };
        println!(
            "{:<11} {:<40} {:<22} {state}",
            endpoint.name, endpoint.base_url, var
        );
    }
    println!("\nModels are named provider:model, e.g. together:Qwen/Qwen2.5-72B-Instruct-Turbo or ollama:llama3.2.");
    Ok(())
}
