//! The config file: where it is looked for, how it is read, and what it turns into (a provider
//! registry, the preset catalogue, run settings).
//!
//! Search order, first found wins: `--config PATH`, `$MOA_CONFIG`, `./moa.toml`, then
//! `moa.toml` in the user config dir (`~/.config/moa/` on Linux). No file is fine: defaults.
//! A `./moa.toml` found by searching is a project file, held to the rule of [`trust`].

mod file;
mod preset;
mod settings;
pub mod trust;

use std::path::{Path, PathBuf};

use moa_core::Preset;
use moa_core::{Price, PriceTable};
use moa_providers::{Dialect, Endpoint, Registry};

use crate::env;
pub use file::ConfigFile;
pub use settings::{apply_flags, Flags, Settings};

/// A config file that cannot be used, naming the file and, where there is one, the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path} does not exist")]
    NotFound { path: PathBuf },
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("error in config file {path}:\n{message}")]
    Parse { path: PathBuf, message: String },
    #[error("error in config file {path}, key `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error(
        "config file {} was found in the working directory and is not trusted, so it may not \
         change where API keys are sent; it sets {}. If you wrote it, trust it with \
         `moa config trust` (it stays trusted until it changes), or name it with --config",
        path.display(),
        keys.join(", ")
    )]
    Untrusted { path: PathBuf, keys: Vec<String> },
    #[error("{name}={value}: {message}")]
    Env {
        name: &'static str,
        value: String,
        message: String,
    },
}

/// The loaded config: the file's contents and where they came from.
#[derive(Debug, Default)]
pub struct Config {
    /// The file read, if any.
    pub path: Option<PathBuf>,
    pub file: ConfigFile,
}

/// The base URLs the environment gives known providers: `OPENAI_BASE_URL` for openai (as the
/// openai SDK reads it), `OLLAMA_HOST` for ollama (`host`, `host:port` or a URL, as ollama reads
/// it; port 11434 unless given).
fn env_base_urls() -> Result<Vec<(&'static str, String)>, ConfigError> {
    let mut urls = Vec::new();
    if let Some(url) = env::lookup(env::OPENAI_BASE_URL) {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(ConfigError::Env {
                name: env::OPENAI_BASE_URL,
                value: url,
                message: "must start with http:// or https://".into(),
            });
        }
        urls.push(("openai", url.trim_end_matches('/').to_string()));
    }
    if let Some(host) = env::lookup(env::OLLAMA_HOST) {
        let url = ollama_base_url(&host).ok_or_else(|| ConfigError::Env {
            name: env::OLLAMA_HOST,
            value: host.clone(),
            message: "must be host, host:port or an http(s) URL".into(),
        })?;
        urls.push(("ollama", url));
    }
    Ok(urls)
}

/// The OpenAI-compatible base URL of the ollama that `OLLAMA_HOST` names.
fn ollama_base_url(host: &str) -> Option<String> {
    let host = host.trim().trim_end_matches('/');
    let (scheme, rest) = match host.split_once("://") {
        Some((scheme @ ("http" | "https"), rest)) => (scheme, rest),
        Some(_) => return None,
        None => ("http", host),
    };
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
        return None;
    }
    let default_port = if scheme == "https" { "443" } else { "11434" };
    let (name, port) = match rest.strip_prefix('[') {
        // [v6] or [v6]:port
        Some(v6) => {
            let (inner, after) = v6.split_once(']')?;
            let port = match after {
                "" => default_port,
                p => p.strip_prefix(':')?,
            };
            (&rest[..inner.len() + 2], port)
        }
        None => match rest.split_once(':') {
            Some((name, port)) => (name, port),
            None => (rest, default_port),
        },
    };
    if name.is_empty() && port.is_empty() || port.parse::<u16>().is_err() {
        return None;
    }
    // A server's listening address of all interfaces means this machine to a client.
    let name = match name {
        "" | "0.0.0.0" => "127.0.0.1",
        "[::]" => "[::1]",
        n => n,
    };
    Some(format!("{scheme}://{name}:{port}/v1"))
}

/// The user-level config file's path.
pub fn user_config_path() -> Option<PathBuf> {
    directories::ProjectDirs::from("", "", "moa").map(|d| d.config_dir().join("moa.toml"))
}

/// Where a config file can come from, in the order moa looks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// `--config PATH`.
    Flag,
    /// `$MOA_CONFIG`.
    Env,
    /// `./moa.toml`, a project's file (see [`trust`]).
    Project,
    /// The user's own file in the user config directory.
    User,
}

impl Source {
    /// A name for people.
    pub fn label(self) -> &'static str {
        match self {
            Source::Flag => "--config",
            Source::Env => "$MOA_CONFIG",
            Source::Project => "project (working directory)",
            Source::User => "user",
        }
    }

    /// A file named by the flag or the variable must exist; the others are read if they do.
    pub fn named(self) -> bool {
        matches!(self, Source::Flag | Source::Env)
    }
}

/// The places moa looks for its config, in order, each with its path when it has one.
pub fn search(explicit: Option<&Path>) -> [(Source, Option<PathBuf>); 4] {
    [
        (Source::Flag, explicit.map(Path::to_path_buf)),
        (Source::Env, env::lookup(env::MOA_CONFIG).map(PathBuf::from)),
        (
            Source::Project,
            std::env::current_dir().ok().map(|d| d.join("moa.toml")),
        ),
        (Source::User, user_config_path()),
    ]
}

/// The file moa reads, of `search`'s places: the first one named, else the first that exists.
pub fn chosen(places: &[(Source, Option<PathBuf>)]) -> Option<(Source, PathBuf)> {
    places.iter().find_map(|(source, path)| {
        let path = path.as_ref()?;
        (source.named() || path.is_file()).then(|| (*source, path.clone()))
    })
}

impl Config {
    /// Finds and reads the config file, or returns the defaults if there is none.
    pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        match chosen(&search(explicit)) {
            Some((source, path)) if source.named() && !path.is_file() => {
                Err(ConfigError::NotFound { path })
            }
            Some((Source::Project, path)) => {
                Self::read_project(path, trust::store_path().as_deref())
            }
            Some((_, path)) => Self::read(path),
            None => Ok(Config::default()),
        }
    }

    /// Reads a config found in the working directory: unless it is trusted as it is now, it
    /// may not change where keys are sent (see [`trust`]).
    pub fn read_project(path: PathBuf, store: Option<&Path>) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let config = Self::parse(&text, path.clone())?;
        if !trust::is_trusted(store, &path, text.as_bytes()) {
            let keys = trust::endpoint_changes(&config.file);
            if !keys.is_empty() {
                return Err(ConfigError::Untrusted { path, keys });
            }
        }
        crate::ui::note!("moa: using the project config {}", path.display());
        Ok(config)
    }

    /// Reads and parses `path`, a file the user named or their own config.
    pub fn read(path: PathBuf) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses config text that came from `path`.
    pub fn parse(text: &str, path: PathBuf) -> Result<Config, ConfigError> {
        let file: ConfigFile = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.clone(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let config = Config {
            path: Some(path),
            file,
        };
        if let Some(t) = config.file.timeout {
            if !t.is_finite() || t < 0.0 {
                return Err(
                    config.invalid("timeout".into(), "must be seconds, 0 or more (0: no limit)")
                );
            }
        }
        // Presets are checked now, so a typo surfaces whichever preset is run.
        config.presets()?;
        Ok(config)
    }

    fn invalid(&self, key: String, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.clone().unwrap_or_default(),
            key,
            message: message.into(),
        }
    }

    /// The provider registry: the known providers, changed and extended by `[providers.*]`.
    pub fn registry(&self) -> Result<Registry, ConfigError> {
        let mut registry = Registry::new(std::sync::Arc::new(env::lookup));
        // OPENAI_BASE_URL and OLLAMA_HOST move their providers, as the openai SDK and ollama do;
        // a base_url in the config is more specific and wins.
        for (name, base_url) in env_base_urls()? {
            if let Some(endpoint) = registry.endpoint_mut(name) {
                endpoint.base_url = base_url;
            }
        }
        for (name, entry) in &self.file.providers {
            let dialect = match &entry.dialect {
                None => None,
                Some(d) => Some(Dialect::parse(d).ok_or_else(|| {
                    self.invalid(
                        format!("providers.{name}.dialect"),
                        format!(
                            "`{d}` is not a dialect moa speaks; use openai, anthropic or bedrock"
                        ),
                    )
                })?),
            };
            let mut endpoint = match (Endpoint::known(name), &entry.base_url, dialect) {
                (Some(known), _, _) => registry.endpoint(name).cloned().unwrap_or(known),
                (None, _, Some(Dialect::Bedrock)) => {
                    let mut e =
                        Endpoint::known("bedrock").unwrap_or_else(|| Endpoint::custom(name, ""));
                    e.name = name.clone();
                    e
                }
                (None, Some(url), _) => {
                    let mut e = Endpoint::custom(name, url);
                    e.key_required = entry.api_key_env.is_some();
                    e
                }
                (None, None, _) => {
                    return Err(self.invalid(
                        format!("providers.{name}.base_url"),
                        format!("`{name}` is not a known provider, so it needs a base_url"),
                    ))
                }
            };
            if let Some(url) = &entry.base_url {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(self.invalid(
                        format!("providers.{name}.base_url"),
                        "must start with http:// or https://",
                    ));
                }
                endpoint.base_url = url.clone();
            }
            if let Some(dialect) = dialect {
                endpoint.dialect = dialect;
            }
            if let Some(region) = &entry.region {
                endpoint.region = Some(region.clone());
            }
            if let Some(var) = &entry.api_key_env {
                endpoint.api_key_env = Some(var.clone());
            }
            if let Some(required) = entry.api_key_required {
                endpoint.key_required = required;
            }
            if let Some(n) = entry.max_concurrency {
                endpoint.max_concurrency = n;
            }
            if let Some(rpm) = entry.requests_per_minute {
                if !(rpm.is_finite() && rpm > 0.0) {
                    return Err(self.invalid(
                        format!("providers.{name}.requests_per_minute"),
                        "must be a number above 0",
                    ));
                }
                endpoint.requests_per_minute = Some(rpm);
            }
            if let Some(n) = entry.max_retries {
                endpoint.retry.max_retries = n;
            }
            if let Some(b) = entry.stream_usage {
                endpoint.stream_usage = b;
            }
            endpoint
                .headers
                .extend(entry.headers.iter().map(|(k, v)| (k.clone(), v.clone())));
            registry.insert_endpoint(endpoint);
        }
        Ok(registry)
    }

    /// The built-in prices with the config's `[prices]` over them.
    pub fn prices(&self) -> Result<PriceTable, ConfigError> {
        let mut table = PriceTable::builtin();
        for (model, entry) in &self.file.prices {
            if let Err(e) = moa_core::ModelRef::parse(model) {
                return Err(self.invalid(format!("prices.\"{model}\""), e.to_string()));
            }
            let cached = ("cached_input", entry.cached_input.unwrap_or(0.0));
            for (name, value) in [("input", entry.input), ("output", entry.output), cached] {
                if !(value.is_finite() && value >= 0.0) {
                    return Err(self.invalid(
                        format!("prices.\"{model}\".{name}"),
                        "must be a number of US dollars per million tokens, 0 or more",
                    ));
                }
            }
            let price = Price {
                cached_input: entry.cached_input,
                ..Price::new(entry.input, entry.output)
            };
            table.set(model.clone(), price);
        }
        Ok(table)
    }

    /// Every preset: built-in ones, then the config's (which replace built-ins of the same name).
    /// The file's `[policy]` applies to every preset, under each preset's own.
    pub fn presets(&self) -> Result<Vec<(Preset, Origin)>, ConfigError> {
        let f = &self.file;
        let with_file_policy = |lower| {
            preset::policy("policy", f.policy.as_ref(), lower)
                .map_err(|(key, msg)| self.invalid(key, msg))
        };
        let mut presets = Vec::new();
        for mut preset in moa_core::preset::builtin_presets() {
            preset.policy = with_file_policy(preset.policy)?;
            presets.push((preset, Origin::BuiltIn));
        }
        let file_policy = with_file_policy(moa_core::RunPolicy::default())?;
        for (name, entry) in &f.presets {
            let preset = preset::convert(name, entry, file_policy.clone())
                .map_err(|(key, msg)| self.invalid(key, msg))?;
            match presets.iter_mut().find(|(p, _)| p.name == *name) {
                Some(slot) => *slot = (preset, Origin::Config),
                None => presets.push((preset, Origin::Config)),
            }
        }
        Ok(presets)
    }

    /// The preset called `name`.
    pub fn preset(&self, name: &str) -> Result<Preset, anyhow::Error> {
        let presets = self.presets()?;
        match presets.iter().find(|(p, _)| p.name == name) {
            Some((p, _)) => Ok(p.clone()),
            None => {
                let names: Vec<&str> = presets.iter().map(|(p, _)| p.name.as_str()).collect();
                anyhow::bail!(
                    "unknown preset `{name}`; available: {} (see `moa presets`)",
                    names.join(", ")
                )
            }
        }
    }
}

/// Where a preset was defined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    BuiltIn,
    Config,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, PathBuf::from("/tmp/moa.toml"))
    }

    #[test]
    fn unknown_keys_name_the_file_and_key() {
        let err = parse("preset = \"x\"\ntimout = 3\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("error in config file /tmp/moa.toml:"),
            "{err}"
        );
        assert!(err.contains("unknown field `timout`"), "{err}");
        assert!(err.contains("line 2"), "{err}");

        let err = parse("[presets.p]\naggregator = { model = \"a:b\", temprature = 1 }\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `temprature`"), "{err}");

        let err = parse("[providers.together]\nbase = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `base`"), "{err}");
    }

    #[test]
    fn the_run_policy_comes_from_the_top_level_under_each_presets_own() {
        let config = parse(
            "[policy]\nquorum = 3\ngrace_ms = 1500\n[presets.mine]\nproposers = [\"a:b\"]\n\
             aggregator = \"a:c\"\npolicy = { quorum = 2, early_exit = true }\n",
        )
        .unwrap();
        let mine = config.preset("mine").unwrap().policy;
        assert_eq!(mine.quorum, Some(2));
        assert_eq!(mine.grace, Duration::from_millis(1500));
        assert!(mine.early_exit && !mine.fallback);
        let together = config.preset("together").unwrap().policy;
        assert_eq!((together.quorum, together.early_exit), (Some(3), false));
        let plain = parse("").unwrap().preset("together").unwrap().policy;
        assert!(plain.is_reference());
    }

    #[test]
    fn presets_from_the_file_are_converted_and_checked() {
        let config = parse(
            r#"
[presets.mine]
description = "two cheap proposers"
proposers = ["groq:llama-3.1-8b-instant", { model = "openai:gpt-4o-mini", temperature = 0.9, extra = { top_p = 0.5 } }]
layers = 3
aggregator = "openai:gpt-4o"
temperature = 0.4
max_tokens = 300
prompt_style = "tagged"
"#,
        )
        .unwrap();
        let p = config.preset("mine").unwrap();
        assert_eq!(p.layers.len(), 2);
        assert_eq!(p.layers[0][0].temperature, Some(0.4));
        assert_eq!(p.layers[0][1].temperature, Some(0.9));
        assert_eq!(p.layers[0][1].extra["top_p"], 0.5);
        assert_eq!(p.aggregator.max_tokens, Some(300));
        assert_eq!(p.prompt_style, moa_core::PromptStyle::Tagged);

        let err = parse("[presets.bad]\nproposers = [\"nocolon\"]\naggregator = \"a:b\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("key `presets.bad.proposers[0].model`"),
            "{err}"
        );
        let err = parse("[presets.bad]\naggregator = \"a:b\"\nprompt_style = \"fancy\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("key `presets.bad.prompt_style`"), "{err}");
        assert!(err.contains("reference, tagged"), "{err}");
    }

    #[test]
    fn prices_override_the_table_and_bad_ones_name_the_key() {
        let config = parse(
            "[prices.\"together:acme/model\"]\ninput = 0.5\noutput = 1.5\n\n[prices.\"openai:gpt-4o\"]\ninput = 1\noutput = 2\n",
        )
        .unwrap();
        let table = config.prices().unwrap();
        assert_eq!(
            table.price("together:acme/model"),
            Some(Price::new(0.5, 1.5))
        );
        assert_eq!(table.price("openai:gpt-4o"), Some(Price::new(1.0, 2.0)));
        let cached = parse("[prices.\"openai:x\"]\ninput = 1\noutput = 2\ncached_input = 0.1\n")
            .unwrap()
            .prices()
            .unwrap();
        assert_eq!(cached.price("openai:x").unwrap().cached_input, Some(0.1));
        let err = parse("[prices.\"openai:x\"]\ninput = -1\noutput = 2\n")
            .unwrap()
            .prices()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/tmp/moa.toml") && err.contains("prices.\"openai:x\".input"),
            "{err}"
        );
        let err = parse("[prices.\"openai:x\"]\ninput = 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("output"), "{err}");
    }

    #[test]
    fn ollama_host_is_read_as_ollama_reads_it() {
        let cases = [
            ("127.0.0.1", Some("http://127.0.0.1:11434/v1")),
            ("0.0.0.0:8080", Some("http://127.0.0.1:8080/v1")),
            ("gpu-box:11434", Some("http://gpu-box:11434/v1")),
            ("http://gpu-box", Some("http://gpu-box:11434/v1")),
            (
                "https://ollama.example.com/",
                Some("https://ollama.example.com:443/v1"),
            ),
            ("[::1]:9000", Some("http://[::1]:9000/v1")),
            ("[::]", Some("http://[::1]:11434/v1")),
            (":9000", Some("http://127.0.0.1:9000/v1")),
            ("host:port", None),
            ("ftp://host", None),
            ("host/path", None),
            ("user@host", None),
        ];
        for (host, want) in cases {
            assert_eq!(ollama_base_url(host).as_deref(), want, "{host}");
        }
    }

    #[test]
    fn bedrock_endpoints_take_a_region_and_dialects_are_checked() {
        let config = parse(
            "[providers.bedrock]\nregion = \"eu-central-1\"\n\n[providers.claude-proxy]\nbase_url = \"http://127.0.0.1:9/v1\"\ndialect = \"anthropic\"\n",
        )
        .unwrap();
        let registry = config.registry().unwrap();
        assert_eq!(
            registry.endpoint("bedrock").unwrap().region.as_deref(),
            Some("eu-central-1")
        );
        assert_eq!(
            registry.endpoint("claude-proxy").unwrap().dialect,
            Dialect::Anthropic
        );
        let err = parse("[providers.x]\nbase_url = \"http://h\"\ndialect = \"soap\"\n")
            .unwrap()
            .registry()
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("providers.x.dialect") && err.contains("openai, anthropic or bedrock"),
            "{err}"
        );
    }

    #[test]
    fn providers_are_changed_and_added() {
        let config = parse(
            r#"
[providers.together]
base_url = "http://127.0.0.1:9/v1"
max_concurrency = 3
requests_per_minute = 180
[providers.mybox]
base_url = "http://10.1.2.3:8000/v1"
api_key_env = "MYBOX_KEY"
"#,
        )
        .unwrap();
        let registry = config.registry().unwrap();
        let together = registry.endpoint("together").unwrap();
        assert_eq!(together.base_url, "http://127.0.0.1:9/v1");
        assert_eq!(together.max_concurrency, 3);
        assert_eq!(together.requests_per_minute, Some(180.0));
        let err = parse("[providers.together]\nrequests_per_minute = 0\n")
            .unwrap()
            .registry()
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("providers.together.requests_per_minute"),
            "{err}"
        );
        assert_eq!(together.api_key_env.as_deref(), Some("TOGETHER_API_KEY"));
        let mybox = registry.endpoint("mybox").unwrap();
        assert!(mybox.key_required);

        let err = parse("[providers.nowhere]\nmax_retries = 1\n")
            .unwrap()
            .registry()
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("key `providers.nowhere.base_url`"), "{err}");
    }
}
