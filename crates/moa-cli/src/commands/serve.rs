//! `moa serve`: every usable preset behind an OpenAI-compatible API.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use moa_core::{Moa, Preset};
use moa_providers::Registry;
use moa_server::{router, serve_with, Connections, Engines, ServerConfig};

use crate::cli::ServeArgs;
use crate::config::{Config, Flags, Settings};
use crate::env;

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

/// The presets served, bound once, and the registry that binds a request's changed preset
/// (any configured provider whose key is set).
struct PresetEngines {
    registry: Registry,
    presets: BTreeMap<String, Moa>,
}

impl Engines for PresetEngines {
    fn names(&self) -> Vec<String> {
        self.presets.keys().cloned().collect()
    }

    fn engine(&self, name: &str) -> Option<Moa> {
        self.presets.get(name).cloned()
    }

    fn bind(&self, name: &str, changed: &Preset) -> Result<Moa, String> {
        let base = self
            .presets
            .get(name)
            .ok_or_else(|| format!("the model `{name}` does not exist here"))?;
        let missing = self.registry.missing_keys(changed);
        if let Some((provider, _)) = missing.first() {
            return Err(format!(
                "provider `{provider}` has no API key on this server; choose another"
            ));
        }
        let plan = self.registry.bind(changed).map_err(|e| e.to_string())?;
        Ok(Moa::new(plan, base.options().clone()))
    }
}

/// The key clients must send: --api-key, --api-key-file or MOA_SERVER_API_KEY. An empty one
/// is an error, never "no key".
fn server_key(args: &ServeArgs) -> anyhow::Result<Option<String>> {
    let key = match (&args.api_key, &args.api_key_file) {
        (Some(key), _) => Some((key.clone(), "--api-key".to_string())),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                anyhow::anyhow!("cannot read the API key file {}: {e}", path.display())
            })?;
            let key = text.lines().next().unwrap_or_default().trim().to_string();
            Some((key, format!("the API key file {}", path.display())))
        }
        // Set but empty is refused like an empty --api-key, not read as "no key".
        (None, None) => std::env::var(env::MOA_SERVER_API_KEY)
            .ok()
            .map(|k| (k, env::MOA_SERVER_API_KEY.to_string())),
    };
    match key {
        Some((key, from)) if key.trim().is_empty() => anyhow::bail!(
            "{from} gives an empty API key; give a real key, or none to serve only this machine"
        ),
        Some((key, _)) => Ok(Some(key)),
        None => Ok(None),
    }
}

/// Runs `moa serve`.
/// Sends the server's log (access lines, finished streams, failed runs) to stderr.
fn start_log(format: crate::cli::LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let log = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second subscriber (tests starting servers in one process) keeps the first.
    let _ = match format {
        crate::cli::LogFormat::Json => log.json().try_init(),
        crate::cli::LogFormat::Human => {
            let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            log.with_ansi(colour).try_init()
        }
    };
}

pub async fn run(config_path: Option<&Path>, args: ServeArgs) -> anyhow::Result<()> {
    start_log(args.log_format);
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
        if crate::local::unavailable(&preset) {
            crate::ui::note!(
                "moa: not serving preset `{}`: it uses local models, and this build has none (the `local` feature)",
                preset.name
            );
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
        presets.insert(preset.name.clone(), moa);
    }
    if presets.is_empty() {
        anyhow::bail!("no preset can be served (see the messages above); set an API key or name presets that run locally");
    }
    let api_key = server_key(&args)?;
    let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}:{}: {e}", args.host, args.port))?;
    let address = listener.local_addr()?;
    if api_key.is_none() && !address.ip().is_loopback() && !args.insecure_no_auth {
        anyhow::bail!(
            "refusing to serve {address} without an API key: anyone who can reach it could \
             spend your providers' keys. Set MOA_SERVER_API_KEY or --api-key-file, or pass \
             --insecure-no-auth if the network is yours alone"
        );
    }
    let header_timeout = Duration::try_from_secs_f64(args.header_timeout).unwrap_or(Duration::MAX);
    let spans = tracing_export()?;
    let server_config = ServerConfig {
        spans: spans.clone(),
        api_key,
        max_body_bytes: args.max_body_kb * 1024,
        max_concurrent_runs: args.max_concurrent,
        body_timeout: header_timeout,
        hosts: moa_server::Hosts {
            allowed_hosts: args.allowed_hosts.clone(),
            allowed_origins: args.allowed_origins.clone(),
            bound: Some(address),
        },
        fixed_presets: args.fixed_presets,
        metrics: !args.no_metrics,
        ui: !args.no_ui,
        log_prompts: args.log_prompts,
        request_timeout: Duration::try_from_secs_f64(args.request_timeout).unwrap_or(Duration::MAX),
        keep_alive: Duration::try_from_secs_f64(args.keep_alive).unwrap_or(Duration::MAX),
        ..ServerConfig::default()
    };
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
    if server_config.ui {
        eprintln!("moa: playground at http://{address}/");
    }
    // Bound once; a request's sampling fields travel in its RunRequest, and a request that
    // changes a preset's models is bound against the registry.
    let engines = PresetEngines { registry, presets };
    let connections = Connections {
        max: args.max_connections,
        header_timeout,
    };
    serve_with(
        listener,
        router(engines, server_config),
        shutdown_signal(),
        Duration::try_from_secs_f64(args.grace).unwrap_or(Duration::MAX),
        connections,
    )
    .await?;
    if let Some(spans) = spans {
        // The last spans go out before the process ends.
        let flushed = tokio::task::spawn_blocking(move || spans.shutdown()).await;
        if let Ok(Err(e)) = flushed {
            eprintln!("moa: could not send the last spans: {e}");
        }
    }
    eprintln!("moa: stopped");
    Ok(())
}

/// The OTLP exporter the OTEL_* variables ask for (the `otel` feature).
#[cfg(feature = "otel")]
fn tracing_export() -> anyhow::Result<Option<Arc<dyn moa_server::SpanSink>>> {
    let otlp = moa_server::otel::Otlp::from_env().map_err(|e| anyhow::anyhow!(e))?;
    if let Some(otlp) = &otlp {
        eprintln!("moa: exporting spans to {} (OTLP/HTTP)", otlp.endpoint);
    }
    Ok(otlp.map(|o| Arc::new(o) as Arc<dyn moa_server::SpanSink>))
}

/// Without the `otel` feature there is nothing to export with: say so if it was asked for.
#[cfg(not(feature = "otel"))]
fn tracing_export() -> anyhow::Result<Option<Arc<dyn moa_server::SpanSink>>> {
    let asked = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var_os(v).is_some());
    if asked {
        eprintln!(
            "moa: this moa was built without the `otel` feature, so the OTEL_* variables are \
             ignored; build with `--features otel` to export spans"
        );
    }
    Ok(None)
}
