//! `moa providers`: where each provider is and whether it can be called as things stand.

use std::path::Path;

use moa_providers::{Dialect, Endpoint, Registry, RegistryError};
use serde::Serialize;

use crate::config::Config;

/// One provider as `moa providers` shows it.
#[derive(Serialize)]
struct Row {
    name: String,
    dialect: &'static str,
    base_url: String,
    /// The variables its credentials are read from.
    key_variable: String,
    /// `set`, `not needed`, or `missing`.
    key: &'static str,
    /// Whether a model of it can be called now (credentials, and a region for Bedrock).
    ready: bool,
    /// What is missing, when something is.
    #[serde(skip_serializing_if = "Option::is_none")]
    missing: Option<String>,
}

/// Whether an endpoint's credentials are `set`, `missing`, or `not needed`.
pub fn key_state(registry: &Registry, endpoint: &Endpoint) -> &'static str {
    match (registry.credentials_set(endpoint), endpoint.key_required) {
        (true, _) => "set",
        (false, true) => "missing",
        (false, false) => "not needed",
    }
}

fn row(registry: &Registry, endpoint: &Endpoint) -> Row {
    let key_variable = match endpoint.dialect {
        Dialect::Bedrock => format!(
            "{} or AWS_ACCESS_KEY_ID+AWS_SECRET_ACCESS_KEY",
            endpoint.api_key_env.as_deref().unwrap_or("-")
        ),
        _ => endpoint.api_key_env.clone().unwrap_or_else(|| "-".into()),
    };
    // Building the client checks exactly what a run would: the key, and Bedrock's region.
    let missing = match registry.provider(&endpoint.name) {
        Ok(_) => None,
        Err(RegistryError::MissingApiKey { var, .. }) => Some(var),
        Err(RegistryError::MissingRegion { .. }) => Some("AWS_REGION".into()),
        Err(e) => Some(e.to_string()),
    };
    Row {
        name: endpoint.name.clone(),
        dialect: endpoint.dialect.as_str(),
        base_url: registry
            .request_base_url(endpoint)
            .unwrap_or_else(|| "(by region: set AWS_REGION)".into()),
        key_variable,
        key: key_state(registry, endpoint),
        ready: missing.is_none(),
        missing,
    }
}

/// Runs `moa providers`.
pub fn run(config_path: Option<&Path>, json: bool) -> anyhow::Result<()> {
    let registry = Config::load(config_path)?.registry()?;
    let rows: Vec<Row> = registry.endpoints().map(|e| row(&registry, e)).collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let width =
        |f: fn(&Row) -> usize, title: &str| rows.iter().map(f).fold(title.len(), usize::max);
    let name_w = width(|r| r.name.len(), "PROVIDER");
    let url_w = width(|r| r.base_url.len(), "BASE URL");
    let var_w = width(|r| r.key_variable.len(), "KEY VARIABLE");
    println!(
        "{:<name_w$}  {:<url_w$}  {:<var_w$}  KEY",
        "PROVIDER", "BASE URL", "KEY VARIABLE"
    );
    for r in &rows {
        let state = match (&r.missing, r.key) {
            (Some(what), _) if what == "AWS_REGION" => "missing region (AWS_REGION)".to_string(),
            (Some(_), _) => "missing".to_string(),
            (None, key) => key.to_string(),
        };
        println!(
            "{:<name_w$}  {:<url_w$}  {:<var_w$}  {state}",
            r.name, r.base_url, r.key_variable
        );
    }
    crate::ui::note!("\nModels are named provider:model, e.g. together:Qwen/Qwen2.5-72B-Instruct-Turbo or ollama:llama3.2.");
    Ok(())
}
