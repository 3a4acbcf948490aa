//! A run's spending limits (`max_cost`, `max_tokens_total`): what has been spent, what a call
//! may still write, and whether the run can fit at all.
//!
//! The rule: every call is sent with a `max_tokens` that keeps the run within its limits,
//! whatever the calls before it spent and with room kept for the calls after it. Before a
//! proposer layer, its proposers share what is left once the aggregator's minimum
//! ([`AGGREGATOR_FLOOR`] tokens of answer over references as long as the proposers may write)
//! is set aside; a share under [`PROPOSER_FLOOR`] skips the layer. The aggregator gets what is
//! left. Prompts are estimated at four characters a token before they are sent, and charged as
//! reported after.

use crate::completion::Usage;
use crate::price::PriceTable;
use crate::RunPolicy;

/// The smallest answer worth asking a proposer for; a smaller share skips the layer.
pub const PROPOSER_FLOOR: u32 = 64;
/// The smallest answer the aggregator is kept room for.
pub const AGGREGATOR_FLOOR: u32 = 256;
/// Above this, a share is not written into a call that set no `max_tokens` of its own: many
/// models refuse a `max_tokens` over their output limit, and 4,096 is under all of them. Such a
/// call is assumed to write no more than this.
pub const UNCAPPED_SHARE: u32 = 4096;

/// The smallest answer the aggregator may be asked for; less fails the run.
pub const AGGREGATOR_MIN: u64 = 16;

/// The `max_tokens` a call with `current` gets when its share of the budget is `share`, if
/// that changes it.
pub fn cap(current: Option<u32>, share: u64) -> Option<u32> {
    let share = u32::try_from(share).unwrap_or(u32::MAX);
    match current {
        Some(m) if share < m => Some(share),
        None if share <= UNCAPPED_SHARE => Some(share),
        _ => None,
    }
}

/// Per-token prices of one model in the budget's units, input and output.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub input: f64,
    pub output: f64,
}

/// One limit: dollars at the models' prices, or tokens at one unit each.
#[derive(Clone, Debug)]
struct Limit {
    name: &'static str,
    max: f64,
    spent: f64,
    cost: bool,
}

/// A run's limits and what it has spent against them.
#[derive(Clone, Debug)]
pub struct Budget {
    limits: Vec<Limit>,
    prices: std::sync::Arc<PriceTable>,
}

impl Budget {
    /// The limits `policy` sets; none when it sets none. A cost limit over a model with no
    /// known price cannot be kept, and is an error naming the model.
    pub fn new(
        policy: &RunPolicy,
        prices: std::sync::Arc<PriceTable>,
        models: &[&str],
    ) -> Result<Self, String> {
        let mut limits = Vec::new();
        if let Some(max) = policy.max_cost {
            if let Some(model) = models.iter().find(|m| prices.price(m).is_none()) {
                return Err(format!(
                    "a cost limit needs every model's price, and {model} has none: add \
                     [prices.\"{model}\"] to the config, or set max_tokens_total instead"
                ));
            }
            limits.push(Limit {
                name: "max_cost",
                max,
                spent: 0.0,
                cost: true,
            });
        }
        if let Some(max) = policy.max_tokens_total {
            limits.push(Limit {
                name: "max_tokens_total",
                max: max as f64,
                spent: 0.0,
                cost: false,
            });
        }
        Ok(Self { limits, prices })
    }

    pub fn is_unlimited(&self) -> bool {
        self.limits.is_empty()
    }

    fn rate(&self, limit: &Limit, model: &str) -> Rate {
        match (limit.cost, self.prices.price(model)) {
            (true, Some(p)) => Rate {
                input: p.input / 1_000_000.0,
                output: p.output / 1_000_000.0,
            },
            // Checked in `new`: a cost limit has every price.
            (true, None) => Rate {
                input: 0.0,
                output: 0.0,
            },
            (false, _) => Rate {
                input: 1.0,
                output: 1.0,
            },
        }
    }

    /// Counts every finished call's usage (calls without usage cost nothing known).
    pub fn charge_calls(&mut self, calls: &[crate::event::CallTrace]) {
        for call in calls {
            if let Some(usage) = &call.usage {
                self.charge(&call.model, usage);
            }
        }
    }

    /// Counts a finished call's usage.
    pub fn charge(&mut self, model: &str, usage: &Usage) {
        for i in 0..self.limits.len() {
            let rate = self.rate(&self.limits[i], model);
            self.limits[i].spent += usage.prompt_tokens as f64 * rate.input
                + usage.completion_tokens as f64 * rate.output;
        }
    }

    /// The most output tokens each of `calls` (model, estimated prompt tokens) may write so
    /// that, with `reserve` (model, prompt tokens, tokens of prompt per token the calls write,
    /// output tokens) kept for a later call, no limit is passed. `None` without limits; 0 when
    /// even the prompts do not fit.
    pub fn share(
        &self,
        calls: &[(&str, u64)],
        reserve: Option<(&str, u64, f64, u32)>,
    ) -> Option<u64> {
        self.limits
            .iter()
            .map(|limit| {
                let left = limit.max - limit.spent;
                let mut fixed = 0.0;
                let mut per_token = 0.0;
                for (model, prompt) in calls {
                    let rate = self.rate(limit, model);
                    fixed += *prompt as f64 * rate.input;
                    per_token += rate.output;
                }
                if let Some((model, prompt, growth, output)) = reserve {
                    let rate = self.rate(limit, model);
                    fixed += prompt as f64 * rate.input + f64::from(output) * rate.output;
                    per_token += growth * rate.input;
                }
                match per_token {
                    p if p <= 0.0 => match left >= fixed {
                        true => u64::MAX,
                        false => 0,
                    },
                    p => ((left - fixed) / p).floor().max(0.0) as u64,
                }
            })
            .min()
    }

    /// Which limit is tightest now, for messages: `max_cost $0.01`.
    pub fn describe(&self) -> String {
        self.limits
            .iter()
            .map(|l| match l.cost {
                true => format!("{} ${}", l.name, l.max),
                false => format!("{} {}", l.name, l.max),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(cost: Option<f64>, tokens: Option<u64>) -> Budget {
        let policy = RunPolicy {
            max_cost: cost,
            max_tokens_total: tokens,
            ..RunPolicy::default()
        };
        let mut prices = PriceTable::empty();
        prices.set("p:cheap", crate::Price::new(1.0, 2.0));
        Budget::new(&policy, std::sync::Arc::new(prices), &["p:cheap"]).unwrap()
    }

    #[test]
    fn a_share_leaves_room_for_the_reserve() {
        // 10,000 tokens: two calls of 1,000 prompt tokens, the aggregator reading 500 of
        // prompt plus both answers and writing 256: 2,000 + 2s + 500 + 2s + 256 <= 10,000.
        let b = budget(None, Some(10_000));
        let share = b.share(
            &[("p:cheap", 1000), ("p:cheap", 1000)],
            Some(("p:cheap", 500, 2.0, 256)),
        );
        assert_eq!(share, Some((10_000 - 2000 - 500 - 256) / 4));
        let mut spent = b.clone();
        spent.charge(
            "p:cheap",
            &Usage {
                prompt_tokens: 9_000,
                completion_tokens: 500,
                total_tokens: 9_500,
                cached_tokens: 0,
            },
        );
        assert_eq!(spent.share(&[("p:cheap", 1000)], None), Some(0));
        assert_eq!(budget(None, None).share(&[("p:cheap", 1000)], None), None);
    }

    #[test]
    fn a_cost_limit_prices_input_and_output() {
        // $0.01 at $1 in / $2 out per million: 1,000 prompt tokens cost $0.001, leaving
        // $0.009 for output at $0.000002 a token.
        let b = budget(Some(0.01), None);
        assert_eq!(b.share(&[("p:cheap", 1000)], None), Some(4500));
        let unpriced = Budget::new(
            &RunPolicy {
                max_cost: Some(1.0),
                ..RunPolicy::default()
            },
            std::sync::Arc::new(PriceTable::empty()),
            &["x:unknown"],
        );
        assert!(unpriced.unwrap_err().contains("x:unknown has none"));
    }
}
