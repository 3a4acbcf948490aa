//! Presets: named MoA recipes (layers of proposers and one aggregator), and the built-in ones.

use std::fmt;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::policy::RunPolicy;
use crate::prompt::PromptStyle;

/// A model named as `provider:model`, e.g. `together:Qwen/Qwen2.5-72B-Instruct-Turbo`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModelRef {
    pub provider: String,
    pub model: String,
}

impl ModelRef {
    /// Parses `provider:model`. Only the first colon separates, so model ids may contain colons
    /// (`ollama:llama3.2:3b`).
    pub fn parse(spec: &str) -> Result<Self, PresetError> {
        match spec.split_once(':') {
            Some((provider, model)) if !provider.is_empty() && !model.is_empty() => Ok(Self {
                provider: provider.to_string(),
                model: model.to_string(),
            }),
            _ => Err(PresetError::BadModel {
                spec: spec.to_string(),
            }),
        }
    }
}

impl fmt::Display for ModelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.provider, self.model)
    }
}

/// One agent of a layer: a model and how to call it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AgentSpec {
    /// `provider:model`.
    pub model: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// A system prompt of the agent's own, placed before any references.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// Extra request fields passed through (top_p, stop, seed, ...).
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub extra: Map<String, Value>,
}

impl AgentSpec {
    /// An agent for `model` with provider defaults.
    pub fn new(model: impl Into<String>) -> Self {
        Self {
            model: model.into(),
            temperature: None,
            max_tokens: None,
            system: None,
            extra: Map::new(),
        }
    }

    /// Sets the sampling temperature.
    pub fn with_temperature(mut self, temperature: f64) -> Self {
        self.temperature = Some(temperature);
        self
    }

    /// Sets the output token limit.
    pub fn with_max_tokens(mut self, max_tokens: u32) -> Self {
        self.max_tokens = Some(max_tokens);
        self
    }

    /// The parsed `provider:model`.
    pub fn model_ref(&self) -> Result<ModelRef, PresetError> {
        ModelRef::parse(&self.model)
    }
}

/// A named MoA recipe: proposer layers, then one aggregator.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Preset {
    pub name: String,
    pub description: String,
    /// Proposer layers, in order; may be empty (the aggregator then answers alone).
    pub layers: Vec<Vec<AgentSpec>>,
    pub aggregator: AgentSpec,
    pub prompt_style: PromptStyle,
    /// Quorum, grace, early exit, fallback; the reference's behaviour by default.
    #[serde(skip_serializing_if = "RunPolicy::is_reference")]
    pub policy: RunPolicy,
}

/// A preset or model name that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PresetError {
    #[error("`{spec}` is not a model reference; write it as provider:model, e.g. together:Qwen/Qwen2.5-72B-Instruct-Turbo")]
    BadModel { spec: String },
    #[error("preset `{preset}`: layer {layer} has no proposers")]
    EmptyLayer { preset: String, layer: usize },
    #[error("the layer count must be at least 1 (1 means the aggregator answers alone)")]
    NoLayers,
    #[error("give at least one proposer (provider:model)")]
    NoProposers,
    /// A run policy setting that cannot be used (the message names it).
    #[error("{0}")]
    Policy(String),
}

impl Preset {
    /// The number of MoA layers, counting the aggregator's.
    pub fn layer_count(&self) -> usize {
        self.layers.len() + 1
    }

    /// Every agent, proposers first, aggregator last.
    pub fn agents(&self) -> impl Iterator<Item = &AgentSpec> {
        self.layers
            .iter()
            .flatten()
            .chain(std::iter::once(&self.aggregator))
    }

    /// Every agent, mutably.
    pub fn agents_mut(&mut self) -> impl Iterator<Item = &mut AgentSpec> {
        self.layers
            .iter_mut()
            .flatten()
            .chain(std::iter::once(&mut self.aggregator))
    }

    /// Checks that every model reference parses and no layer is empty.
    pub fn validate(&self) -> Result<(), PresetError> {
        for (i, layer) in self.layers.iter().enumerate() {
            if layer.is_empty() {
                return Err(PresetError::EmptyLayer {
                    preset: self.name.clone(),
                    layer: i + 1,
                });
            }
        }
        for agent in self.agents() {
            agent.model_ref()?;
        }
        if self.policy.quorum == Some(0) {
            return Err(PresetError::Policy(
                "the quorum must be at least 1: a layer completes once that many proposers have \
                 answered"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Reshapes the preset to `layers` MoA layers (the reference's `rounds + 1`), repeating the
    /// first proposer layer, as the reference does with its single list of reference models.
    pub fn with_layer_count(mut self, layers: usize) -> Result<Self, PresetError> {
        if layers == 0 {
            return Err(PresetError::NoLayers);
        }
        let template = self.layers.first().cloned().unwrap_or_default();
        if layers > 1 && template.is_empty() {
            return Err(PresetError::EmptyLayer {
                preset: self.name,
                layer: 1,
            });
        }
        self.layers.truncate(layers - 1);
        while self.layers.len() < layers - 1 {
            self.layers.push(template.clone());
        }
        Ok(self)
    }

    /// Replaces every proposer layer's agents with `proposers`, keeping the layer count (at least one).
    pub fn with_proposers(mut self, proposers: Vec<AgentSpec>) -> Self {
        let count = self.layers.len().max(1);
        self.layers = vec![proposers; count];
        self
    }
}

/// What a front end changes about a preset for one run: the CLI's flags, a server request's
/// `moa` object. Applied in one place ([`PresetChanges::apply`]) so every front end reshapes a
/// preset the same way.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PresetChanges {
    /// `provider:model` names for every proposer layer (keeping the first proposer's settings).
    pub proposers: Option<Vec<String>>,
    /// The aggregator's `provider:model` (keeping its settings).
    pub aggregator: Option<String>,
    /// MoA layers, proposer layers + 1 (the reference's rounds + 1).
    pub layers: Option<usize>,
    pub proposer_temperature: Option<f64>,
    pub proposer_max_tokens: Option<u32>,
    pub aggregator_temperature: Option<f64>,
    pub aggregator_max_tokens: Option<u32>,
    pub prompt_style: Option<crate::prompt::PromptStyle>,
    /// Changes to the run policy (see [`RunPolicy`]).
    pub policy: crate::policy::PolicyChanges,
}

impl PresetChanges {
    /// Whether anything changes.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// `preset` with these changes: models first, then the layer count, then sampling.
    pub fn apply(&self, mut preset: Preset) -> Result<Preset, PresetError> {
        let replace = |model: &str, like: Option<&AgentSpec>| -> Result<AgentSpec, PresetError> {
            ModelRef::parse(model)?;
            Ok(match like {
                Some(like) => AgentSpec {
                    model: model.to_string(),
                    ..like.clone()
                },
                None => AgentSpec::new(model),
            })
        };
        if let Some(models) = &self.proposers {
            if models.is_empty() {
                return Err(PresetError::NoProposers);
            }
            let like = preset.layers.first().and_then(|l| l.first()).cloned();
            let agents = models
                .iter()
                .map(|m| replace(m, like.as_ref()))
                .collect::<Result<Vec<_>, _>>()?;
            preset = preset.with_proposers(agents);
        }
        if let Some(model) = &self.aggregator {
            preset.aggregator = replace(model, Some(&preset.aggregator))?;
        }
        if let Some(layers) = self.layers {
            preset = preset.with_layer_count(layers)?;
        }
        for agent in preset.layers.iter_mut().flatten() {
            if let Some(t) = self.proposer_temperature {
                agent.temperature = Some(t);
            }
            if let Some(m) = self.proposer_max_tokens {
                agent.max_tokens = Some(m);
            }
        }
        if let Some(t) = self.aggregator_temperature {
            preset.aggregator.temperature = Some(t);
        }
        if let Some(m) = self.aggregator_max_tokens {
            preset.aggregator.max_tokens = Some(m);
        }
        if let Some(style) = self.prompt_style {
            preset.prompt_style = style;
        }
        preset.policy = self
            .policy
            .apply(preset.policy, str::to_string)
            .map_err(PresetError::Policy)?;
        preset.validate()?;
        Ok(preset)
    }
}

fn agents(models: &[&str], temperature: f64, max_tokens: u32) -> Vec<AgentSpec> {
    models
        .iter()
        .map(|m| {
            AgentSpec::new(*m)
                .with_temperature(temperature)
                .with_max_tokens(max_tokens)
        })
        .collect()
}

/// The six open proposers of the paper's AlpacaEval runs (run_eval_alpaca_eval.sh).
const PAPER_PROPOSERS: [&str; 6] = [
    "together:microsoft/WizardLM-2-8x22B",
    "together:Qwen/Qwen1.5-110B-Chat",
    "together:Qwen/Qwen1.5-72B-Chat",
    "together:meta-llama/Llama-3-70b-chat-hf",
    "together:mistralai/Mixtral-8x22B-Instruct-v0.1",
    "together:databricks/dbrx-instruct",
];

/// The AWS sample's cheap Bedrock MoA: Claude 3 Haiku, Mixtral 8x7B and Llama 3.2 3B propose,
/// Claude 3 Haiku aggregates at temperature 0. Llama 3.2 is reached through its cross-region
/// inference profile (`us.`), the only way Bedrock serves it on demand.
fn bedrock_haiku() -> Preset {
    const HAIKU: &str = "bedrock:anthropic.claude-3-haiku-20240307-v1:0";
    let proposers = agents(
        &[
            HAIKU,
            "bedrock:mistral.mixtral-8x7b-instruct-v0:1",
            "bedrock:us.meta.llama3-2-3b-instruct-v1:0",
        ],
        0.7,
        512,
    );
    let mut aggregator = AgentSpec::new(HAIKU);
    aggregator.temperature = Some(0.0);
    aggregator.max_tokens = Some(2048);
    Preset {
        name: "bedrock-haiku".into(),
        description:
            "The AWS sample on Bedrock: Haiku, Mixtral 8x7B, Llama 3.2 3B; Haiku aggregates at 0"
                .into(),
        layers: vec![proposers],
        aggregator,
        prompt_style: PromptStyle::Reference,
        policy: Default::default(),
    }
}

/// Self-MoA on the embedded local model: one small model sampled three times at different
/// temperatures and seeds, then aggregated at a low temperature. Sized so a whole run takes
/// seconds on two CPU cores.
fn local_preset() -> Preset {
    let proposer = |temperature: f64, seed: u64| {
        let mut agent = AgentSpec::new("local:smollm2")
            .with_temperature(temperature)
            .with_max_tokens(200);
        agent.extra.insert("seed".into(), Value::from(seed));
        agent.extra.insert("top_p".into(), Value::from(0.9));
        agent
    };
    let mut aggregator = AgentSpec::new("local:smollm2")
        .with_temperature(0.3)
        .with_max_tokens(300);
    aggregator.extra.insert("top_p".into(), Value::from(0.9));
    aggregator.extra.insert("seed".into(), Value::from(0));
    Preset {
        name: "local".into(),
        description: "Self-MoA on SmolLM2-135M in-process: no API key, no server; 3 samples at temperatures 0.4, 0.6, 0.8, aggregated at 0.3".into(),
        layers: vec![vec![proposer(0.4, 1), proposer(0.6, 2), proposer(0.8, 3)]],
        aggregator,
        prompt_style: PromptStyle::Reference,
        policy: Default::default(),
    }
}

/// The built-in preset called `name`.
pub fn builtin(name: &str) -> Option<Preset> {
    builtin_presets().into_iter().find(|p| p.name == name)
}

/// The presets that ship with moa, in display order.
pub fn builtin_presets() -> Vec<Preset> {
    let together_proposers = agents(
        &[
            "together:meta-llama/Llama-3.3-70B-Instruct-Turbo",
            "together:Qwen/Qwen2.5-72B-Instruct-Turbo",
            "together:Qwen/Qwen2.5-Coder-32B-Instruct",
            "together:microsoft/WizardLM-2-8x22B",
        ],
        0.7,
        512,
    );
    let three_layer_proposers = agents(
        &[
            "together:meta-llama/Llama-3.3-70B-Instruct-Turbo",
            "together:Qwen/Qwen2.5-72B-Instruct-Turbo",
            "together:Qwen/Qwen2.5-Coder-32B-Instruct",
            "together:deepseek-ai/DeepSeek-V3",
        ],
        0.7,
        512,
    );
    // The eval generators call the aggregator without temperature or max_tokens, so it gets
    // generate_together's defaults: 0.7 and 2048.
    let paper_proposers = agents(&PAPER_PROPOSERS, 0.7, 2048);
    vec![
        local_preset(),
        bedrock_haiku(),
        Preset {
            name: "together".into(),
            description: "The reference's moa.py: 4 proposers, 2 layers, Qwen2.5-72B aggregator".into(),
            layers: vec![together_proposers],
            // moa.py streams the aggregator with no temperature or max_tokens (server defaults).
            aggregator: AgentSpec::new("together:Qwen/Qwen2.5-72B-Instruct-Turbo"),
            prompt_style: PromptStyle::Reference,
            policy: Default::default(),
        },
        Preset {
            name: "together-3layer".into(),
            description: "The reference's advanced-moa.py: 4 proposers, 3 layers, DeepSeek-V3 aggregator".into(),
            layers: vec![three_layer_proposers.clone(), three_layer_proposers],
            aggregator: AgentSpec::new("together:deepseek-ai/DeepSeek-V3"),
            prompt_style: PromptStyle::Reference,
            policy: Default::default(),
        },
        Preset {
            name: "moa-lite".into(),
            description: "The paper's MoA-Lite (AlpacaEval 2.0): 6 open proposers, 2 layers, Qwen1.5-72B-Chat aggregator".into(),
            layers: vec![paper_proposers.clone()],
            aggregator: AgentSpec::new("together:Qwen/Qwen1.5-72B-Chat")
                .with_temperature(0.7)
                .with_max_tokens(2048),
            prompt_style: PromptStyle::Reference,
            policy: Default::default(),
        },
        Preset {
            name: "moa".into(),
            description: "The paper's Together MoA (AlpacaEval 2.0): 6 open proposers, 3 layers, Qwen1.5-110B-Chat aggregator".into(),
            layers: vec![paper_proposers.clone(), paper_proposers],
            aggregator: AgentSpec::new("together:Qwen/Qwen1.5-110B-Chat")
                .with_temperature(0.7)
                .with_max_tokens(2048),
            prompt_style: PromptStyle::Reference,
            policy: Default::default(),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_refs_split_at_the_first_colon() {
        let r = ModelRef::parse("ollama:llama3.2:3b").unwrap();
        assert_eq!(r.provider, "ollama");
        assert_eq!(r.model, "llama3.2:3b");
        assert_eq!(r.to_string(), "ollama:llama3.2:3b");
        for bad in ["gpt-4o", ":x", "openai:"] {
            assert!(matches!(
                ModelRef::parse(bad),
                Err(PresetError::BadModel { .. })
            ));
        }
    }

    #[test]
    fn builtin_presets_are_valid_and_have_the_papers_shapes() {
        let presets = builtin_presets();
        for p in &presets {
            p.validate().unwrap();
        }
        let by_name = |n: &str| presets.iter().find(|p| p.name == n).unwrap();
        assert_eq!(by_name("local").layer_count(), 2);
        assert_eq!(by_name("bedrock-haiku").layers[0].len(), 3);
        assert_eq!(by_name("bedrock-haiku").aggregator.temperature, Some(0.0));
        assert!(by_name("local")
            .agents()
            .all(|a| a.model == "local:smollm2"));
        assert_eq!(by_name("together").layer_count(), 2);
        assert_eq!(by_name("together-3layer").layer_count(), 3);
        assert_eq!(by_name("moa-lite").layer_count(), 2);
        assert_eq!(by_name("moa").layer_count(), 3);
        assert_eq!(by_name("moa").layers[1].len(), 6);
        assert_eq!(by_name("together").aggregator.temperature, None);
        assert_eq!(
            by_name("moa").aggregator.model,
            "together:Qwen/Qwen1.5-110B-Chat"
        );
    }

    #[test]
    fn layer_count_repeats_the_first_layer() {
        let p = builtin("together").unwrap();
        let three = p.clone().with_layer_count(3).unwrap();
        assert_eq!(three.layers.len(), 2);
        assert_eq!(three.layers[0], three.layers[1]);
        let one = p.clone().with_layer_count(1).unwrap();
        assert!(one.layers.is_empty());
        assert_eq!(p.with_layer_count(0), Err(PresetError::NoLayers));
    }
}
