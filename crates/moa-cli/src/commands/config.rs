//! `moa config path | show | init | edit | trust | untrust`: which file is read, what is in
//! effect, a commented example to start from, and which project files may decide where keys go.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::Value;

use crate::cli::ConfigCommand;
use crate::config::{self, trust, Config, Flags, Settings};
use crate::env;
use crate::ui::note;

/// Runs `moa config ...`.
pub fn run(explicit: Option<&Path>, command: ConfigCommand) -> anyhow::Result<()> {
    match command {
        ConfigCommand::Path => path(explicit),
        ConfigCommand::Show => show(explicit),
        ConfigCommand::Init { path, force } => {
            let path = match path {
                Some(p) => p,
                None => user_path()?,
            };
            init(&path, force)
        }
        ConfigCommand::Edit => edit(explicit),
        ConfigCommand::Trust { path } => set_trust(path, true),
        ConfigCommand::Untrust { path } => set_trust(path, false),
    }
}

fn user_path() -> anyhow::Result<PathBuf> {
    config::user_config_path().context("this system has no user config directory; name a path")
}

/// The places searched, in order, each with whether it is there; the first found is read.
fn path(explicit: Option<&Path>) -> anyhow::Result<()> {
    let places = config::search(explicit);
    let read = config::chosen(&places).map(|(source, _)| source);
    println!("moa reads the first of these that is given and exists:");
    for (i, (source, candidate)) in places.iter().enumerate() {
        let state = match candidate {
            None => "not given".to_string(),
            Some(p) if read == Some(*source) && p.is_file() => format!("{}  <- read", p.display()),
            Some(p) if read == Some(*source) => {
                format!("{}  <- named, but does not exist (an error)", p.display())
            }
            Some(p) if p.is_file() => format!("{}  (exists, not read)", p.display()),
            Some(p) => format!("{}  (not there)", p.display()),
        };
        println!("  {}. {:<28} {state}", i + 1, source.label());
    }
    if read.is_none() {
        println!("No file: the built-in defaults are in effect (`moa config init` writes one).");
    }
    Ok(())
}

/// A header's value: never shown, only whether there is one.
fn redact(value: &str) -> String {
    match value.len() {
        0 => String::new(),
        _ => "<redacted>".into(),
    }
}

/// JSON to TOML, dropping nulls (TOML has none).
fn to_toml(value: Value) -> Option<toml::Value> {
    Some(match value {
        Value::Null => return None,
        Value::Bool(b) => toml::Value::Boolean(b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => toml::Value::Integer(i),
            None => toml::Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => toml::Value::String(s),
        Value::Array(items) => toml::Value::Array(items.into_iter().filter_map(to_toml).collect()),
        Value::Object(map) => toml::Value::Table(
            map.into_iter()
                .filter_map(|(k, v)| to_toml(v).map(|v| (k, v)))
                .collect(),
        ),
    })
}

/// The settings in effect, as TOML: the file over the built-in defaults and the environment,
/// every provider with where its key comes from (never the key), header values redacted.
fn show(explicit: Option<&Path>) -> anyhow::Result<()> {
    let config = Config::load(explicit)?;
    let settings = Settings::resolve(&config, &Flags::default())?;
    let registry = config.registry()?;
    let mut doc = toml::Table::new();
    doc.insert("preset".into(), settings.preset.clone().into());
    let timeout = settings.options.timeout.map_or(0.0, |t| t.as_secs_f64());
    doc.insert("timeout".into(), timeout.into());
    doc.insert(
        "min_proposals".into(),
        (settings.options.min_proposals as i64).into(),
    );
    doc.insert(
        "stream_proposers".into(),
        settings.options.stream_proposers.into(),
    );
    doc.insert("log".into(), crate::runlog::enabled(&config, false).into());
    let mut providers = toml::Table::new();
    for endpoint in registry.endpoints() {
        let mut p = toml::Table::new();
        p.insert("dialect".into(), endpoint.dialect.as_str().into());
        if !endpoint.base_url.is_empty() {
            p.insert("base_url".into(), endpoint.base_url.clone().into());
        }
        if let Some(region) = &endpoint.region {
            p.insert("region".into(), region.clone().into());
        }
        if let Some(var) = &endpoint.api_key_env {
            p.insert("api_key_env".into(), var.clone().into());
            // (Bedrock's AWS key pair counts too, as it does for its client.)
            let state = super::providers::key_state(&registry, endpoint);
            p.insert("api_key".into(), state.into());
        }
        p.insert(
            "max_concurrency".into(),
            (endpoint.max_concurrency as i64).into(),
        );
        p.insert(
            "max_retries".into(),
            i64::from(endpoint.retry.max_retries).into(),
        );
        if !endpoint.headers.is_empty() {
            let headers: toml::Table = endpoint
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), redact(v).into()))
                .collect();
            p.insert("headers".into(), headers.into());
        }
        providers.insert(endpoint.name.clone(), p.into());
    }
    doc.insert("providers".into(), providers.into());
    let mut presets = toml::Table::new();
    for (preset, origin) in config.presets()? {
        let mut value = serde_json::to_value(&preset)?;
        if let Value::Object(map) = &mut value {
            map.remove("name");
            map.insert(
                "origin".into(),
                match origin {
                    config::Origin::BuiltIn => "built-in",
                    config::Origin::Config => "config",
                }
                .into(),
            );
        }
        if let Some(v) = to_toml(value) {
            presets.insert(preset.name.clone(), v);
        }
    }
    doc.insert("presets".into(), presets.into());
    match &config.path {
        Some(p) => println!(
            "# moa config show: {} over the built-in defaults",
            p.display()
        ),
        None => println!("# moa config show: the built-in defaults (no config file)"),
    }
    println!("# Keys are never shown: api_key says whether the variable is set; header values are redacted.\n");
    print!("{}", toml::to_string(&doc)?);
    Ok(())
}

/// A commented example config, every line of which parses.
pub const EXAMPLE: &str = include_str!("../../moa.example.toml");

fn init(path: &Path, force: bool) -> anyhow::Result<()> {
    if path.exists() && !force {
        anyhow::bail!(
            "{} already exists; `moa config edit` opens it, or --force replaces it",
            path.display()
        );
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    crate::files::write_private(path, EXAMPLE.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    note!("moa: wrote an example config to {}", path.display());
    Ok(())
}

/// Opens the file in use (or the user config, written from the example first) in the editor,
/// then checks what was saved.
fn edit(explicit: Option<&Path>) -> anyhow::Result<()> {
    let path = match config::chosen(&config::search(explicit)) {
        Some((_, p)) => p,
        None => user_path()?,
    };
    if !path.exists() {
        init(&path, false)?;
    }
    let editor = env::lookup("VISUAL")
        .or_else(|| env::lookup("EDITOR"))
        .unwrap_or_else(|| "vi".into());
    // $EDITOR may carry arguments (`code --wait`), as git allows.
    let mut words = editor.split_whitespace();
    let program = words.next().context("$EDITOR is empty")?;
    let status = std::process::Command::new(program)
        .args(words)
        .arg(&path)
        .status()
        .with_context(|| format!("cannot start the editor `{editor}` (set VISUAL or EDITOR)"))?;
    if !status.success() {
        anyhow::bail!("the editor `{editor}` exited with {status}");
    }
    Config::read(path.clone())?;
    note!("moa: {} is valid", path.display());
    Ok(())
}

fn set_trust(path: Option<PathBuf>, trusting: bool) -> anyhow::Result<()> {
    let path = path.unwrap_or_else(|| PathBuf::from("moa.toml"));
    if !path.is_file() {
        anyhow::bail!("config file {} does not exist", path.display());
    }
    let store = trust::store_path().context("no data directory for moa's trust list")?;
    trust::set_trusted(&store, &path, trusting)
        .with_context(|| format!("cannot update the trust list {}", store.display()))?;
    let verb = if trusting {
        "trusted"
    } else {
        "no longer trusted"
    };
    note!(
        "moa: {} is {verb} (as it is now; recorded in {})",
        path.display(),
        store.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_parses_as_it_is_and_with_every_setting_uncommented() {
        let config = Config::parse(EXAMPLE, PathBuf::from("moa.example.toml")).unwrap();
        config.registry().unwrap();
        assert!(config.presets().unwrap().len() > 1);
        // A commented setting is `# key = value` or `# [table]`; prose is anything else.
        let setting = |line: &str| {
            line.starts_with('[')
                || line.split_once(" = ").is_some_and(|(key, _)| {
                    key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                })
        };
        let uncommented: Vec<&str> = EXAMPLE
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest) if setting(rest) => rest,
                _ => l,
            })
            .collect();
        assert!(uncommented.len() > 20);
        let config =
            Config::parse(&uncommented.join("\n"), PathBuf::from("moa.example.toml")).unwrap();
        config.registry().unwrap();
        Settings::resolve(&config, &Flags::default()).unwrap();
    }
}
