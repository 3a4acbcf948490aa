//! `moa serve`: every usable preset behind an OpenAI-compatible API.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use moa_core::{Moa, Preset, RunOptions};
use moa_providers::Registry;
use moa_server::{router, serve, Engines, ServerConfig};

use crate::cli::ServeArgs;
use crate::config::{Config, Flags, Settings};
use crate::env;

/// The presets this server can run, bound once; a request's temperature and max_tokens rebind
/// the aggregator for that request only.
struct PresetEngines {
    registry: Registry,
    options: RunOptions,
    presets: BTreeMap<String, (Preset, Moa)>,
}

impl Engines for PresetEngines {
    fn names(&self) -> Vec<String> {
        self.presets.keys().cloned().collect()
    }

    fn engine(
        &self,
        name: &str,
        temperature: Option<f64>,
        max_tokens: Option<u32>,
    ) -> Option<Result<Moa, String>> {
        let (preset, moa) = self.presets.get(name)?;
        if temperature.is_none() && max_tokens.is_none() {
            return Some(Ok(moa.clone()));
        }
        let mut preset = preset.clone();
        if let Some(t) = temperature {
            preset.aggregator.temperature = Some(t);
        }
        if let Some(m) = max_tokens {
            preset.aggregator.max_tokens = Some(m);
        }
        Some(
            self.registry
                .bind(&preset)
                .map(|plan| Moa::new(plan, self.options.clone()))
                .map_err(|e| e.to_string()),
        )
    }
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

/// Runs `moa serve`.
pub async fn run(config_path: Option<&Path>, args: ServeArgs) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    let mut settings = Settings::resolve(&config, &Flags::default())?;
    // Clients see only the aggregator's tokens, so streaming proposers would cost the server
    // CPU for nothing (about a fifth of it, measured); the config can still ask for it.
    settings.options.stream_proposers = config.file.stream_proposers.unwrap_or(false);
    let registry = config.registry()?;
    crate::local::register(&registry);
    let mut presets = BTreeMap::new();
    for (preset, _) in config.presets()? {
        if !args.presets.is_empty() && !args.presets.contains(&preset.name) {
            continue;
        }
        let missing = registry.missing_keys(&preset);
        if !missing.is_empty() {
            let vars: Vec<String> = missing.into_iter().map(|(_, v)| v).collect();
            eprintln!(
                "moa: not serving preset `{}`: set {}",
                preset.name,
                vars.join(", ")
            );
            continue;
        }
        let moa = super::engine(&registry, &preset, &settings.options)?;
        presets.insert(preset.name.clone(), (preset, moa));
    }
    if presets.is_empty() {
        anyhow::bail!("no preset can be served (see the messages above); set an API key or name presets that run locally");
    }
    let api_key = args
        .api_key
        .or_else(|| env::lookup(env::MOA_SERVER_API_KEY));
    let server_config = ServerConfig {
        api_key,
        max_body_bytes: args.max_body_kb * 1024,
        max_concurrent_runs: args.max_concurrent,
        ..ServerConfig::default()
    };
    let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}:{}: {e}", args.host, args.port))?;
    let address = listener.local_addr()?;
    let names: Vec<&String> = presets.keys().collect();
    eprintln!(
        "moa: serving {} preset(s) ({}) at http://{address}/v1{}",
        names.len(),
        names
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        if server_config.api_key.is_some() {
            " (API key required)"
        } else {
            ""
        }
    );
    let engines = PresetEngines {
        registry,
        options: settings.options,
        presets,
    };
    serve(
        listener,
        router(engines, server_config),
        shutdown_signal(),
        Duration::from_secs_f64(args.grace),
    )
    .await?;
    eprintln!("moa: stopped");
    Ok(())
}
