//! What tokens cost: a dated table of list prices for the models in moa's presets, which
//! config can override or extend, and the cost of a run's usage.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::completion::Usage;

/// When the built-in prices were read off the vendors' price pages. Prices change: override
/// them in config (`[prices."provider:model"]`) when they do.
pub const PRICES_AS_OF: &str = "2025-01";

/// US dollars per million tokens.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Price {
    pub input: f64,
    pub output: f64,
    /// Input read from the provider's prompt cache; `None`: no discount, the input price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input: Option<f64>,
}

impl Price {
    /// A price with no cached-input discount.
    pub fn new(input: f64, output: f64) -> Self {
        Self {
            input,
            output,
            cached_input: None,
        }
    }

    /// What `usage` costs at this price, in US dollars: cached prompt tokens at the cached
    /// rate, the rest of the prompt at the input rate.
    pub fn cost(&self, usage: &Usage) -> f64 {
        let cached = usage.cached_tokens.min(usage.prompt_tokens);
        let fresh = usage.prompt_tokens - cached;
        (fresh as f64 * self.input
            + cached as f64 * self.cached_input.unwrap_or(self.input)
            + usage.completion_tokens as f64 * self.output)
            / 1_000_000.0
    }
}

/// Cached-input prices (US dollars per million tokens) where the vendor discounts them:
/// OpenAI's prompt caching (half price) and Anthropic's cache reads (a tenth of the input
/// price, directly and on Bedrock). Cache writes are charged at the input price here;
/// Anthropic bills them at 1.25x.
const CACHED: &[(&str, f64)] = &[
    ("openai:gpt-4o", 1.25),
    ("openai:gpt-4o-mini", 0.075),
    ("anthropic:claude-3-haiku-20240307", 0.03),
    ("anthropic:claude-3-5-haiku-20241022", 0.08),
    ("anthropic:claude-3-5-sonnet-20241022", 0.30),
];

/// (`provider:model`, input, output) in US dollars per million tokens, on-demand list prices.
const BUILTIN: &[(&str, f64, f64)] = &[
    // Together AI serverless (the reference's presets and the paper's models).
    (
        "together:meta-llama/Llama-3.3-70B-Instruct-Turbo",
        0.88,
        0.88,
    ),
    ("together:Qwen/Qwen2.5-72B-Instruct-Turbo", 1.20, 1.20),
    ("together:Qwen/Qwen2.5-Coder-32B-Instruct", 0.80, 0.80),
    ("together:microsoft/WizardLM-2-8x22B", 1.20, 1.20),
    ("together:deepseek-ai/DeepSeek-V3", 1.25, 1.25),
    ("together:Qwen/Qwen1.5-110B-Chat", 1.80, 1.80),
    ("together:Qwen/Qwen1.5-72B-Chat", 0.90, 0.90),
    ("together:meta-llama/Llama-3-70b-chat-hf", 0.90, 0.90),
    ("together:mistralai/Mixtral-8x22B-Instruct-v0.1", 1.20, 1.20),
    ("together:databricks/dbrx-instruct", 1.20, 1.20),
    // Amazon Bedrock on-demand, us-east-1 / us-west-2 (the AWS sample's models).
    ("bedrock:anthropic.claude-3-haiku-20240307-v1:0", 0.25, 1.25),
    (
        "bedrock:us.anthropic.claude-3-haiku-20240307-v1:0",
        0.25,
        1.25,
    ),
    ("bedrock:mistral.mixtral-8x7b-instruct-v0:1", 0.45, 0.70),
    ("bedrock:meta.llama3-2-3b-instruct-v1:0", 0.15, 0.15),
    ("bedrock:us.meta.llama3-2-3b-instruct-v1:0", 0.15, 0.15),
    (
        "bedrock:anthropic.claude-3-5-sonnet-20240620-v1:0",
        3.00,
        15.00,
    ),
    (
        "bedrock:anthropic.claude-3-5-sonnet-20241022-v2:0",
        3.00,
        15.00,
    ),
    (
        "bedrock:us.anthropic.claude-3-5-sonnet-20241022-v2:0",
        3.00,
        15.00,
    ),
    // Anthropic.
    ("anthropic:claude-3-haiku-20240307", 0.25, 1.25),
    ("anthropic:claude-3-5-haiku-20241022", 0.80, 4.00),
    ("anthropic:claude-3-5-sonnet-20241022", 3.00, 15.00),
    // OpenAI.
    ("openai:gpt-4o", 2.50, 10.00),
    ("openai:gpt-4o-2024-05-13", 5.00, 15.00),
    ("openai:gpt-4o-mini", 0.15, 0.60),
];

/// Prices by `provider:model`. Models on this machine (`local:`) cost nothing.
#[derive(Clone, Debug, PartialEq)]
pub struct PriceTable {
    prices: BTreeMap<String, Price>,
}

impl Default for PriceTable {
    fn default() -> Self {
        Self::builtin()
    }
}

impl PriceTable {
    /// The built-in list prices (as of [`PRICES_AS_OF`]).
    pub fn builtin() -> Self {
        Self {
            prices: BUILTIN
                .iter()
                .map(|&(model, input, output)| {
                    let cached_input = CACHED.iter().find(|(m, _)| *m == model).map(|(_, c)| *c);
                    let price = Price {
                        input,
                        output,
                        cached_input,
                    };
                    (model.to_string(), price)
                })
                .collect(),
        }
    }

    /// No prices at all.
    pub fn empty() -> Self {
        Self {
            prices: BTreeMap::new(),
        }
    }

    /// Sets (or replaces) the price of `model`.
    pub fn set(&mut self, model: impl Into<String>, price: Price) {
        self.prices.insert(model.into(), price);
    }

    /// The price of `model` (`provider:model`), if known.
    pub fn price(&self, model: &str) -> Option<Price> {
        if model.starts_with("local:") {
            return Some(Price::new(0.0, 0.0));
        }
        self.prices.get(model).copied()
    }

    /// What `usage` of `model` costs, if its price is known.
    pub fn cost(&self, model: &str, usage: &Usage) -> Option<f64> {
        self.price(model).map(|p| p.cost(usage))
    }

    /// Every priced model.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Price)> {
        self.prices.iter().map(|(m, p)| (m.as_str(), *p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(prompt: u64, completion: u64) -> Usage {
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
            cached_tokens: 0,
        }
    }

    #[test]
    fn cached_prompt_tokens_cost_the_cached_rate() {
        let table = PriceTable::builtin();
        // gpt-4o: 1,000,000 prompt tokens of which 600,000 cached: 0.4 x $2.50 + 0.6 x $1.25.
        let mut u = usage(1_000_000, 0);
        u.cached_tokens = 600_000;
        let cost = table.cost("openai:gpt-4o", &u).unwrap();
        assert!((cost - 1.75).abs() < 1e-9, "{cost}");
        // No cached rate: the input price.
        let together = "together:Qwen/Qwen2.5-72B-Instruct-Turbo";
        let cost = table.cost(together, &u).unwrap();
        assert!((cost - 1.20).abs() < 1e-9, "{cost}");
    }

    #[test]
    fn costs_are_per_million_tokens_and_overridable() {
        let mut table = PriceTable::builtin();
        let haiku = "bedrock:anthropic.claude-3-haiku-20240307-v1:0";
        // 2,000 in at $0.25/M + 400 out at $1.25/M = $0.0005 + $0.0005.
        let cost = table.cost(haiku, &usage(2000, 400)).unwrap();
        assert!((cost - 0.001).abs() < 1e-12, "{cost}");
        table.set(haiku, Price::new(1.0, 2.0));
        let cost = table.cost(haiku, &usage(1_000_000, 500_000)).unwrap();
        assert!((cost - 2.0).abs() < 1e-9, "{cost}");
        assert_eq!(table.cost("acme:unknown", &usage(1, 1)), None);
        assert_eq!(table.cost("local:smollm2", &usage(100, 100)), Some(0.0));
    }

    #[test]
    fn every_built_in_preset_model_has_a_price() {
        let table = PriceTable::builtin();
        for preset in crate::preset::builtin_presets() {
            for agent in preset.agents() {
                assert!(
                    table.price(&agent.model).is_some(),
                    "{} in preset {} has no price",
                    agent.model,
                    preset.name
                );
            }
        }
    }
}
