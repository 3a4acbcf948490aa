//! The TOML config file as written: every table rejects keys it does not know.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// A whole `moa.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// The preset to run by default.
    pub preset: Option<String>,
    /// Seconds one model call may take, retries included (0: no limit).
    pub timeout: Option<f64>,
    pub min_proposals: Option<usize>,
    /// Stream proposers (default) or ask for whole answers.
    pub stream_proposers: Option<bool>,
    /// Keep `ask` and `chat` runs for `moa logs` and `chat --continue` (default true).
    pub log: Option<bool>,
    /// `[policy]`: the run policy of every preset, under each preset's own.
    pub policy: Option<PolicyEntry>,
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderEntry>,
    #[serde(default)]
    pub presets: BTreeMap<String, PresetEntry>,
    /// `[prices."provider:model"]`: US dollars per million tokens, over the built-in table.
    #[serde(default)]
    pub prices: BTreeMap<String, PriceEntry>,
}

/// `[prices."provider:model"]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceEntry {
    /// US dollars per million input (prompt) tokens.
    pub input: f64,
    /// US dollars per million output (completion) tokens.
    pub output: f64,
    /// US dollars per million input tokens read from the provider's prompt cache (default: the
    /// input price).
    pub cached_input: Option<f64>,
}

/// `[providers.NAME]`: changes a known provider or defines an OpenAI-compatible endpoint.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderEntry {
    pub base_url: Option<String>,
    /// The wire protocol of a provider of the user's own: `openai` (default), `anthropic`,
    /// `bedrock`.
    pub dialect: Option<String>,
    /// Bedrock's AWS region (else AWS_REGION, then AWS_DEFAULT_REGION).
    pub region: Option<String>,
    /// The variable holding the key.
    pub api_key_env: Option<String>,
    /// Whether a missing key is an error (known providers: as in the table; others: true when
    /// `api_key_env` is given).
    pub api_key_required: Option<bool>,
    pub max_concurrency: Option<usize>,
    /// Calls started per minute at most, to stay under a quota.
    pub requests_per_minute: Option<f64>,
    pub max_retries: Option<u32>,
    /// Ask for usage in the last streamed chunk (turn off for servers that reject it).
    pub stream_usage: Option<bool>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// `[presets.NAME]`: a MoA recipe.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresetEntry {
    pub description: Option<String>,
    /// The proposers of every proposer layer (with `layers`), or...
    pub proposers: Option<Vec<AgentEntry>>,
    /// MoA layers counting the aggregator's (default 2).
    pub layers: Option<usize>,
    /// ...each proposer layer spelled out as `[[presets.NAME.layer]]`.
    pub layer: Option<Vec<LayerEntry>>,
    pub aggregator: AgentEntry,
    /// Defaults for every agent of the preset that does not set its own.
    pub temperature: Option<f64>,
    pub max_tokens: Option<u32>,
    pub prompt_style: Option<String>,
    /// `[presets.NAME.policy]`: this preset's run policy.
    pub policy: Option<PolicyEntry>,
}

/// `[policy]` or `[presets.NAME.policy]`: how runs trade completeness for latency and spend.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyEntry {
    /// A layer completes once this many proposers answered and `grace_ms` passed.
    pub quorum: Option<usize>,
    pub grace_ms: Option<u64>,
    /// Answer with a layer's answer when they all agree.
    pub early_exit: Option<bool>,
    /// Answer with the first proposal when the aggregator fails.
    pub fallback: Option<bool>,
    /// US dollars a run may cost at most.
    pub max_cost: Option<f64>,
    /// Tokens, prompt and answer, a run's calls may use together.
    pub max_tokens_total: Option<u64>,
    /// Seconds a run may take.
    pub deadline: Option<f64>,
    /// The most tokens a proposer may write.
    pub reference_max_tokens: Option<u32>,
    /// Self-MoA-Seq: aggregate references this many at a time.
    pub aggregate_window: Option<usize>,
}

/// `[[presets.NAME.layer]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerEntry {
    pub proposers: Vec<AgentEntry>,
}

/// An agent: `"provider:model"` or a table with `model` and optional settings.
#[derive(Debug, Default)]
pub struct AgentEntry {
    pub model: String,
    pub temperature: Option<f64>,
    pub max_tokens: Option<u32>,
    pub system: Option<String>,
    /// Request fields passed through (top_p, stop, seed, ...).
    pub extra: toml::Table,
}

/// The table form of an agent.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentTable {
    model: String,
    temperature: Option<f64>,
    max_tokens: Option<u32>,
    system: Option<String>,
    #[serde(default)]
    extra: toml::Table,
}

/// Accepts a plain string or a table, keeping the table's own precise errors (an untagged enum
/// would only say "did not match any variant").
impl<'de> Deserialize<'de> for AgentEntry {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AgentVisitor;
        impl<'de> Visitor<'de> for AgentVisitor {
            type Value = AgentEntry;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"provider:model\" or a table with a `model` key")
            }
            fn visit_str<E: de::Error>(self, model: &str) -> Result<AgentEntry, E> {
                Ok(AgentEntry {
                    model: model.to_string(),
                    ..AgentEntry::default()
                })
            }
            fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<AgentEntry, M::Error> {
                let t = AgentTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(AgentEntry {
                    model: t.model,
                    temperature: t.temperature,
                    max_tokens: t.max_tokens,
                    system: t.system,
                    extra: t.extra,
                })
            }
        }
        deserializer.deserialize_any(AgentVisitor)
    }
}
