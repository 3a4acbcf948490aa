//! The providers moa knows by name, as rows of data, and the registry that turns
//! `provider:model` into a shared client.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use moa_core::{ModelRef, Plan, Preset, PresetError, Provider};

use crate::anthropic::{Anthropic, AnthropicConfig};
#[cfg(feature = "bedrock")]
use crate::bedrock::{AwsCredentials, Bedrock, BedrockAuth, BedrockConfig};
use crate::http::Limits;
use crate::openai::{OpenAiCompatible, OpenAiConfig};
use crate::retry::RetryPolicy;

/// The wire protocol an endpoint speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// OpenAI's chat completions (most vendors and local servers).
    OpenAi,
    /// Anthropic's Messages API.
    Anthropic,
    /// Amazon Bedrock's Converse API.
    Bedrock,
}

impl Dialect {
    pub fn as_str(self) -> &'static str {
        match self {
            Dialect::OpenAi => "openai",
            Dialect::Anthropic => "anthropic",
            Dialect::Bedrock => "bedrock",
        }
    }

    /// The dialect called `name` in config.
    pub fn parse(name: &str) -> Option<Self> {
        [Dialect::OpenAi, Dialect::Anthropic, Dialect::Bedrock]
            .into_iter()
            .find(|d| d.as_str() == name)
    }
}

/// The variables a Bedrock client reads (besides the region's).
pub const AWS_BEARER_TOKEN: &str = "AWS_BEARER_TOKEN_BEDROCK";
pub const AWS_ACCESS_KEY_ID: &str = "AWS_ACCESS_KEY_ID";
pub const AWS_SECRET_ACCESS_KEY: &str = "AWS_SECRET_ACCESS_KEY";
pub const AWS_SESSION_TOKEN: &str = "AWS_SESSION_TOKEN";
pub const AWS_REGION: &str = "AWS_REGION";
pub const AWS_DEFAULT_REGION: &str = "AWS_DEFAULT_REGION";

/// One vendor: where it is, which dialect it speaks and which variable holds its key.
#[derive(Clone, Copy, Debug)]
pub struct KnownProvider {
    pub name: &'static str,
    pub dialect: Dialect,
    pub base_url: &'static str,
    pub api_key_env: &'static str,
    /// Whether a request without a key makes sense (local servers need none).
    pub key_required: bool,
    pub about: &'static str,
}

/// Every OpenAI-compatible provider moa knows by name.
pub const KNOWN_PROVIDERS: [KnownProvider; 11] = [
    KnownProvider {
        name: "together",
        dialect: Dialect::OpenAi,
        base_url: "https://api.together.xyz/v1",
        api_key_env: "TOGETHER_API_KEY",
        key_required: true,
        about: "Together AI (the reference's provider)",
    },
    KnownProvider {
        name: "openai",
        dialect: Dialect::OpenAi,
        base_url: "https://api.openai.com/v1",
        api_key_env: "OPENAI_API_KEY",
        key_required: true,
        about: "OpenAI",
    },
    KnownProvider {
        name: "anthropic",
        dialect: Dialect::Anthropic,
        base_url: "https://api.anthropic.com/v1",
        api_key_env: "ANTHROPIC_API_KEY",
        key_required: true,
        about: "Anthropic (Messages API)",
    },
    KnownProvider {
        name: "bedrock",
        dialect: Dialect::Bedrock,
        // Derived from the region unless config sets one.
        base_url: "",
        api_key_env: AWS_BEARER_TOKEN,
        key_required: true,
        about: "Amazon Bedrock (Converse; SigV4 from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or AWS_BEARER_TOKEN_BEDROCK; region from AWS_REGION)",
    },
    KnownProvider {
        name: "groq",
        dialect: Dialect::OpenAi,
        base_url: "https://api.groq.com/openai/v1",
        api_key_env: "GROQ_API_KEY",
        key_required: true,
        about: "Groq",
    },
    KnownProvider {
        name: "fireworks",
        dialect: Dialect::OpenAi,
        base_url: "https://api.fireworks.ai/inference/v1",
        api_key_env: "FIREWORKS_API_KEY",
        key_required: true,
        about: "Fireworks AI",
    },
    KnownProvider {
        name: "openrouter",
        dialect: Dialect::OpenAi,
        base_url: "https://openrouter.ai/api/v1",
        api_key_env: "OPENROUTER_API_KEY",
        key_required: true,
        about: "OpenRouter",
    },
    KnownProvider {
        name: "deepinfra",
        dialect: Dialect::OpenAi,
        base_url: "https://api.deepinfra.com/v1/openai",
        api_key_env: "DEEPINFRA_API_KEY",
        key_required: true,
        about: "DeepInfra",
    },
    KnownProvider {
        name: "ollama",
        dialect: Dialect::OpenAi,
        base_url: "http://localhost:11434/v1",
        api_key_env: "OLLAMA_API_KEY",
        key_required: false,
        about: "Ollama on this machine",
    },
    KnownProvider {
        name: "vllm",
        dialect: Dialect::OpenAi,
        base_url: "http://localhost:8000/v1",
        api_key_env: "VLLM_API_KEY",
        key_required: false,
        about: "a vLLM server on this machine",
    },
    KnownProvider {
        name: "llamacpp",
        dialect: Dialect::OpenAi,
        base_url: "http://localhost:8080/v1",
        api_key_env: "LLAMACPP_API_KEY",
        key_required: false,
        about: "a llama.cpp server on this machine",
    },
];

/// Settings of one named endpoint: a table row, possibly changed by config.
#[derive(Clone, Debug, PartialEq)]
pub struct Endpoint {
    pub name: String,
    pub dialect: Dialect,
    /// Bedrock's region (else AWS_REGION, then AWS_DEFAULT_REGION).
    pub region: Option<String>,
    pub base_url: String,
    /// The variable the key is read from.
    pub api_key_env: Option<String>,
    pub key_required: bool,
    /// At most this many requests in flight (0: no limit).
    pub max_concurrency: usize,
    /// Calls started per minute at most (`None`: no quota).
    pub requests_per_minute: Option<f64>,
    pub retry: RetryPolicy,
    pub limits: Limits,
    pub stream_usage: bool,
    pub headers: Vec<(String, String)>,
}

impl Endpoint {
    /// The endpoint of a known provider, with defaults.
    pub fn known(name: &str) -> Option<Self> {
        KNOWN_PROVIDERS
            .iter()
            .find(|p| p.name == name)
            .map(|p| Self {
                name: p.name.to_string(),
                dialect: p.dialect,
                base_url: p.base_url.to_string(),
                api_key_env: Some(p.api_key_env.to_string()),
                key_required: p.key_required,
                ..Self::custom(p.name, p.base_url)
            })
    }

    /// An endpoint of the user's own, needing no key unless one is configured.
    pub fn custom(name: &str, base_url: &str) -> Self {
        Self {
            name: name.to_string(),
            dialect: Dialect::OpenAi,
            region: None,
            base_url: base_url.to_string(),
            api_key_env: None,
            key_required: false,
            max_concurrency: 64,
            requests_per_minute: None,
            retry: RetryPolicy::default(),
            limits: Limits::default(),
            stream_usage: true,
            headers: Vec::new(),
        }
    }
}

/// Why a model could not be bound to a provider.
#[derive(Clone, Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("unknown provider `{name}`; known providers: {known}; or define [providers.{name}] with a base_url in the config")]
    UnknownProvider { name: String, known: String },
    #[error("provider `{provider}` needs an API key: set the environment variable {var}")]
    MissingApiKey { provider: String, var: String },
    #[error("provider `{provider}` needs an AWS region: set AWS_REGION, or `region` under [providers.{provider}] in the config")]
    MissingRegion { provider: String },
    #[error("provider `{provider}` speaks {dialect}, which this moa was built without: rebuild with `--features {feature}` (`cargo install --path crates/moa-cli --features {feature}`)")]
    NotBuilt {
        provider: String,
        dialect: &'static str,
        feature: &'static str,
    },
    #[error(transparent)]
    Preset(#[from] PresetError),
}

/// Reads an environment variable; injected so tests and front ends choose the source.
pub type EnvLookup = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// The providers available to a process: endpoints by name, built once and shared.
pub struct Registry {
    endpoints: BTreeMap<String, Endpoint>,
    providers: Mutex<HashMap<String, Arc<dyn Provider>>>,
    http: reqwest::Client,
    env: EnvLookup,
}

/// Bedrock's runtime endpoint in `region`.
pub fn bedrock_runtime_url(region: &str) -> String {
    format!("https://bedrock-runtime.{region}.amazonaws.com")
}

/// The HTTP client every endpoint shares (one connection pool per host).
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .user_agent(concat!("moa/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(10))
        // A redirect could carry a key header to a host the user did not choose: API calls
        // are never redirected; a 3xx is an error like any other status.
        .redirect(reqwest::redirect::Policy::none())
        .tcp_nodelay(true)
        .build()
        // Building fails only if the TLS backend cannot initialise, which ring cannot.
        .unwrap_or_default()
}

impl Registry {
    /// A registry of the known providers, reading keys through `env`.
    pub fn new(env: EnvLookup) -> Self {
        let endpoints = KNOWN_PROVIDERS
            .iter()
            .filter_map(|p| Endpoint::known(p.name))
            .map(|e| (e.name.clone(), e))
            .collect();
        Self {
            endpoints,
            providers: Mutex::new(HashMap::new()),
            http: http_client(),
            env,
        }
    }

    /// A registry reading keys from the process environment.
    pub fn from_env() -> Self {
        Self::new(Arc::new(|name| {
            std::env::var(name).ok().filter(|v| !v.is_empty())
        }))
    }

    /// Adds or replaces an endpoint.
    pub fn insert_endpoint(&mut self, endpoint: Endpoint) {
        self.endpoints.insert(endpoint.name.clone(), endpoint);
    }

    /// The endpoint called `name`, to change it.
    pub fn endpoint_mut(&mut self, name: &str) -> Option<&mut Endpoint> {
        self.endpoints.get_mut(name)
    }

    /// The endpoint called `name`.
    pub fn endpoint(&self, name: &str) -> Option<&Endpoint> {
        self.endpoints.get(name)
    }

    /// Every endpoint, by name.
    pub fn endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        self.endpoints.values()
    }

    /// Registers a provider that is not an HTTP endpoint (a local model, a test double).
    pub fn insert_provider(&self, name: &str, provider: Arc<dyn Provider>) {
        self.lock().insert(name.to_string(), provider);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<dyn Provider>>> {
        self.providers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The shared provider called `name`, built on first use.
    pub fn provider(&self, name: &str) -> Result<Arc<dyn Provider>, RegistryError> {
        if let Some(p) = self.lock().get(name) {
            return Ok(p.clone());
        }
        let endpoint = self
            .endpoints
            .get(name)
            .ok_or_else(|| RegistryError::UnknownProvider {
                name: name.to_string(),
                known: self.names().join(", "),
            })?;
        let provider = match endpoint.dialect {
            Dialect::OpenAi | Dialect::Anthropic => self.keyed(endpoint)?,
            Dialect::Bedrock => self.bedrock(endpoint)?,
        };
        Ok(self
            .lock()
            .entry(name.to_string())
            .or_insert(provider)
            .clone())
    }

    fn key(&self, endpoint: &Endpoint) -> Result<Option<String>, RegistryError> {
        let key = endpoint
            .api_key_env
            .as_deref()
            .and_then(|var| (self.env)(var));
        if key.is_none() && endpoint.key_required {
            return Err(RegistryError::MissingApiKey {
                provider: endpoint.name.clone(),
                var: endpoint.api_key_env.clone().unwrap_or_default(),
            });
        }
        Ok(key)
    }

    /// An OpenAI-compatible or Anthropic endpoint, authenticated by one key.
    fn keyed(&self, endpoint: &Endpoint) -> Result<Arc<dyn Provider>, RegistryError> {
        let api_key = self.key(endpoint)?;
        Ok(match endpoint.dialect {
            Dialect::Anthropic => Arc::new(Anthropic::new(
                AnthropicConfig {
                    name: endpoint.name.clone(),
                    base_url: endpoint.base_url.clone(),
                    api_key,
                    max_concurrency: endpoint.max_concurrency,
                    requests_per_minute: endpoint.requests_per_minute,
                    retry: endpoint.retry.clone(),
                    limits: endpoint.limits.clone(),
                    headers: endpoint.headers.clone(),
                },
                self.http.clone(),
            )),
            _ => Arc::new(OpenAiCompatible::new(
                OpenAiConfig {
                    name: endpoint.name.clone(),
                    base_url: endpoint.base_url.clone(),
                    api_key,
                    max_concurrency: endpoint.max_concurrency,
                    requests_per_minute: endpoint.requests_per_minute,
                    retry: endpoint.retry.clone(),
                    limits: endpoint.limits.clone(),
                    stream_usage: endpoint.stream_usage,
                    headers: endpoint.headers.clone(),
                },
                self.http.clone(),
            )),
        })
    }

    /// The region a Bedrock endpoint calls: its own, else AWS_REGION, then AWS_DEFAULT_REGION.
    pub fn region(&self, endpoint: &Endpoint) -> Option<String> {
        endpoint
            .region
            .clone()
            .or_else(|| (self.env)(AWS_REGION))
            .or_else(|| (self.env)(AWS_DEFAULT_REGION))
    }

    /// Where an endpoint's requests go: its base URL, or for Bedrock without one, the runtime
    /// endpoint of its region (`None` while it has no region).
    pub fn request_base_url(&self, endpoint: &Endpoint) -> Option<String> {
        match endpoint.dialect {
            Dialect::Bedrock if endpoint.base_url.is_empty() => {
                self.region(endpoint).map(|r| bedrock_runtime_url(&r))
            }
            _ => Some(endpoint.base_url.clone()),
        }
    }

    /// Whether the credentials an endpoint's calls would carry are set: its key variable, or
    /// for Bedrock an AWS access key and secret instead.
    pub fn credentials_set(&self, endpoint: &Endpoint) -> bool {
        let key = endpoint
            .api_key_env
            .as_deref()
            .and_then(|var| (self.env)(var))
            .is_some();
        key || endpoint.dialect == Dialect::Bedrock
            && (self.env)(AWS_ACCESS_KEY_ID).is_some()
            && (self.env)(AWS_SECRET_ACCESS_KEY).is_some()
    }

    /// A Bedrock endpoint, in a build without Bedrock: says how to get one.
    #[cfg(not(feature = "bedrock"))]
    fn bedrock(&self, endpoint: &Endpoint) -> Result<Arc<dyn Provider>, RegistryError> {
        Err(RegistryError::NotBuilt {
            provider: endpoint.name.clone(),
            dialect: "Amazon Bedrock",
            feature: "bedrock",
        })
    }

    /// A Bedrock endpoint: a Bedrock API key if one is set, else SigV4 with the AWS variables.
    #[cfg(feature = "bedrock")]
    fn bedrock(&self, endpoint: &Endpoint) -> Result<Arc<dyn Provider>, RegistryError> {
        let region = self
            .region(endpoint)
            .ok_or_else(|| RegistryError::MissingRegion {
                provider: endpoint.name.clone(),
            })?;
        let bearer = endpoint
            .api_key_env
            .as_deref()
            .and_then(|var| (self.env)(var));
        let auth = match (
            bearer,
            (self.env)(AWS_ACCESS_KEY_ID),
            (self.env)(AWS_SECRET_ACCESS_KEY),
        ) {
            (Some(key), _, _) => BedrockAuth::ApiKey(key),
            (None, Some(access_key_id), Some(secret_access_key)) => {
                BedrockAuth::SigV4(AwsCredentials {
                    access_key_id,
                    secret_access_key,
                    session_token: (self.env)(AWS_SESSION_TOKEN),
                })
            }
            _ => {
                return Err(RegistryError::MissingApiKey {
                    provider: endpoint.name.clone(),
                    var: format!(
                        "{AWS_ACCESS_KEY_ID} and {AWS_SECRET_ACCESS_KEY} (or {})",
                        endpoint.api_key_env.as_deref().unwrap_or(AWS_BEARER_TOKEN)
                    ),
                })
            }
        };
        Ok(Arc::new(Bedrock::new(
            BedrockConfig {
                name: endpoint.name.clone(),
                region,
                base_url: (!endpoint.base_url.is_empty()).then(|| endpoint.base_url.clone()),
                auth,
                max_concurrency: endpoint.max_concurrency,
                requests_per_minute: endpoint.requests_per_minute,
                retry: endpoint.retry.clone(),
                limits: endpoint.limits.clone(),
            },
            self.http.clone(),
        )))
    }

    /// Every provider name the registry can serve.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.endpoints.keys().cloned().collect();
        names.extend(self.lock().keys().cloned());
        names.sort();
        names.dedup();
        names
    }

    /// The API key variables `preset` needs that are not set, as `(provider, variable)`
    /// (a missing AWS region is reported here too, as its variable).
    pub fn missing_keys(&self, preset: &Preset) -> Vec<(String, String)> {
        let mut missing = Vec::new();
        for agent in preset.agents() {
            if let Ok(model) = agent.model_ref() {
                let (provider, var) = match self.provider(&model.provider) {
                    Err(RegistryError::MissingApiKey { provider, var }) => (provider, var),
                    Err(RegistryError::MissingRegion { provider }) => {
                        (provider, AWS_REGION.to_string())
                    }
                    _ => continue,
                };
                if !missing.contains(&(provider.clone(), var.clone())) {
                    missing.push((provider, var));
                }
            }
        }
        missing
    }

    /// Binds every agent of `preset` to its provider.
    pub fn bind(&self, preset: &Preset) -> Result<Plan, RegistryError> {
        Plan::bind(preset, |model: &ModelRef| self.provider(&model.provider))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&'static str, &'static str)]) -> EnvLookup {
        let vars: HashMap<&str, &str> = vars.iter().copied().collect();
        Arc::new(move |k| vars.get(k).map(|v| v.to_string()))
    }

    #[test]
    fn known_providers_are_served_once_and_shared() {
        let r = Registry::new(env(&[("TOGETHER_API_KEY", "k")]));
        let a = r.provider("together").unwrap();
        let b = r.provider("together").unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.name(), "together");
    }

    #[test]
    fn a_missing_key_names_the_variable() {
        let r = Registry::new(env(&[]));
        let err = r.provider("groq").err().unwrap();
        assert_eq!(
            err.to_string(),
            "provider `groq` needs an API key: set the environment variable GROQ_API_KEY"
        );
        // Local servers work without one.
        assert!(r.provider("ollama").is_ok());
    }

    #[test]
    fn unknown_providers_list_the_known_ones() {
        let r = Registry::new(env(&[]));
        let err = r.provider("acme").err().unwrap().to_string();
        assert!(err.contains("unknown provider `acme`"), "{err}");
        assert!(
            err.contains("together") && err.contains("llamacpp"),
            "{err}"
        );
    }

    #[test]
    #[cfg(feature = "bedrock")]
    fn bedrock_needs_a_region_and_credentials_and_says_which() {
        let r = Registry::new(env(&[]));
        let err = r.provider("bedrock").err().unwrap().to_string();
        assert!(err.contains("needs an AWS region: set AWS_REGION"), "{err}");
        let r = Registry::new(env(&[("AWS_REGION", "us-west-2")]));
        let err = r.provider("bedrock").err().unwrap().to_string();
        assert_eq!(
            err,
            "provider `bedrock` needs an API key: set the environment variable \
             AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_BEARER_TOKEN_BEDROCK)"
        );
        for vars in [
            &[
                ("AWS_DEFAULT_REGION", "eu-west-1"),
                ("AWS_BEARER_TOKEN_BEDROCK", "k"),
            ][..],
            &[
                ("AWS_REGION", "us-east-1"),
                ("AWS_ACCESS_KEY_ID", "AKID"),
                ("AWS_SECRET_ACCESS_KEY", "s"),
            ][..],
        ] {
            let r = Registry::new(env(vars));
            assert_eq!(r.provider("bedrock").unwrap().name(), "bedrock");
        }
        let anthropic = Registry::new(env(&[])).provider("anthropic").err().unwrap();
        assert!(anthropic.to_string().contains("ANTHROPIC_API_KEY"));
    }

    #[test]
    fn bedrock_status_reads_the_same_variables_as_its_client() {
        let none = Registry::new(env(&[]));
        let bedrock = none.endpoint("bedrock").unwrap();
        assert!(!none.credentials_set(bedrock));
        assert_eq!(none.request_base_url(bedrock), None);
        let aws = Registry::new(env(&[
            ("AWS_ACCESS_KEY_ID", "AKID"),
            ("AWS_SECRET_ACCESS_KEY", "secret"),
            ("AWS_DEFAULT_REGION", "eu-west-1"),
        ]));
        let bedrock = aws.endpoint("bedrock").unwrap();
        assert!(aws.credentials_set(bedrock));
        assert_eq!(
            aws.request_base_url(bedrock).as_deref(),
            Some("https://bedrock-runtime.eu-west-1.amazonaws.com")
        );
        // An AWS key pair is no key for other providers.
        assert!(!aws.credentials_set(aws.endpoint("openai").unwrap()));
    }

    #[test]
    fn missing_keys_of_a_preset_are_listed_once() {
        let r = Registry::new(env(&[]));
        let preset = moa_core::preset::builtin("together").unwrap();
        assert_eq!(
            r.missing_keys(&preset),
            vec![("together".to_string(), "TOGETHER_API_KEY".to_string())]
        );
    }
}
