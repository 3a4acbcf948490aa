//! How a run trades completeness for latency: a quorum and a grace period per proposer layer,
//! an early exit when a layer agrees, a fallback when the aggregator fails. The default is the
//! reference's behaviour: wait for every proposer, always aggregate, fail with the aggregator.

use std::time::Duration;

use serde::{Serialize, Serializer};

/// A preset's run policy (see the module docs). Part of the recipe, so that a preset built for
/// speed carries its settings wherever it runs; the CLI, the config and a server request may
/// change it through [`crate::PresetChanges`].
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RunPolicy {
    /// A proposer layer is complete once this many proposers have answered and `grace` has
    /// passed since the last of them, or when every proposer has finished. The others are
    /// cancelled (their requests dropped, so their connections close) and reported in the
    /// trace's `degraded` list. `None`: wait for all, as the reference does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quorum: Option<usize>,
    /// How long late proposers may still finish once the quorum is in.
    #[serde(
        rename = "grace_ms",
        serialize_with = "millis",
        skip_serializing_if = "Duration::is_zero"
    )]
    pub grace: Duration,
    /// When every answer of a proposer layer is the same (see [`agreed`]), skip the layers
    /// after it and the aggregator, and answer with it. Never with tools (only the aggregator
    /// may call them).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub early_exit: bool,
    /// When the aggregator fails after its retries, answer with the best proposal instead of
    /// failing: the first proposer, in preset order, of the last layer that answered (the
    /// preset lists its strongest model first by convention; the reference's presets do).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub fallback: bool,
    /// The most a run may cost, in US dollars at the price table's prices. Every call is sent
    /// with a `max_tokens` that keeps the run within it (see `engine::budget`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_cost: Option<f64>,
    /// The most tokens, prompt and answer, all of a run's calls may use together.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens_total: Option<u64>,
    /// The longest a run may take. The proposer layers and the aggregator share it evenly:
    /// proposers still running at their layer's share are cancelled; a call still running at
    /// the deadline fails with a timeout.
    #[serde(
        rename = "deadline_ms",
        serialize_with = "optional_millis",
        skip_serializing_if = "Option::is_none"
    )]
    pub deadline: Option<Duration>,
    /// The most tokens a proposer may write (its answer is a reference for the next layer and
    /// the aggregator): lowers any larger `max_tokens` of the preset's proposers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference_max_tokens: Option<u32>,
    /// Self-MoA-Seq (Li et al. 2025): with more references than this, the aggregator reads them
    /// in windows of this many, carrying its running synthesis forward as the first reference
    /// of the next window, so that many samples fit a context that cannot hold them all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aggregate_window: Option<usize>,
}

impl RunPolicy {
    /// Whether this is the reference's behaviour (nothing to show in a preset's description).
    pub fn is_reference(&self) -> bool {
        *self == Self::default()
    }

    /// The quorum for a layer of `size` proposers, if it can end the layer early.
    pub fn quorum_of(&self, size: usize) -> Option<usize> {
        self.quorum.map(|q| q.clamp(1, size)).filter(|q| *q < size)
    }
}

/// Changes to a [`RunPolicy`]: what a flag, a config key or a request sets; `None` keeps the
/// policy's value.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PolicyChanges {
    pub quorum: Option<usize>,
    pub grace: Option<Duration>,
    pub early_exit: Option<bool>,
    pub fallback: Option<bool>,
    pub max_cost: Option<f64>,
    pub max_tokens_total: Option<u64>,
    pub deadline: Option<Duration>,
    pub reference_max_tokens: Option<u32>,
    pub aggregate_window: Option<usize>,
}

impl PolicyChanges {
    /// `policy` with these changes, checked: a quorum of at least 1, a cost that is a number of
    /// dollars. The error names the setting as `name` writes it (`--max-cost` for a flag,
    /// `moa.max_cost` for a request).
    pub fn apply(
        &self,
        mut policy: RunPolicy,
        name: impl Fn(&str) -> String,
    ) -> Result<RunPolicy, String> {
        if self.quorum == Some(0) {
            return Err(format!(
                "{} must be at least 1: a layer completes once that many proposers have answered",
                name("quorum")
            ));
        }
        if self.max_cost.is_some_and(|c| !c.is_finite() || c < 0.0) {
            return Err(format!(
                "{} must be US dollars, 0 or more",
                name("max_cost")
            ));
        }
        if self.deadline.is_some_and(|d| d.is_zero()) {
            return Err(format!("{} must be more than 0", name("deadline")));
        }
        if self.reference_max_tokens == Some(0) {
            return Err(format!(
                "{} must be at least 1",
                name("reference_max_tokens")
            ));
        }
        policy.quorum = self.quorum.or(policy.quorum);
        policy.grace = self.grace.unwrap_or(policy.grace);
        policy.early_exit = self.early_exit.unwrap_or(policy.early_exit);
        policy.fallback = self.fallback.unwrap_or(policy.fallback);
        policy.max_cost = self.max_cost.or(policy.max_cost);
        policy.max_tokens_total = self.max_tokens_total.or(policy.max_tokens_total);
        policy.deadline = self.deadline.or(policy.deadline);
        policy.reference_max_tokens = self.reference_max_tokens.or(policy.reference_max_tokens);
        policy.aggregate_window = self.aggregate_window.or(policy.aggregate_window);
        Ok(policy)
    }
}

/// A setting's name as a flag: `max_cost` → `--max-cost`.
pub fn flag_name(key: &str) -> String {
    format!("--{}", key.replace('_', "-"))
}

fn millis<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

fn optional_millis<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.map_or(0, |d| d.as_millis() as u64))
}

/// The answer every one of `answers` gives, if they agree once white space is collapsed and
/// case folded, and there are at least two of them. Exact agreement, deliberately: a textual
/// similarity score says nothing about whether two answers mean the same (a changed number or
/// a "not" scores as nearly equal), and the short answers that do agree exactly (a number, a
/// label, a name, a line of code) are where skipping the aggregator is safe.
pub fn agreed<'a>(answers: &[&'a str]) -> Option<&'a str> {
    let normal = |s: &str| {
        s.split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_lowercase()
    };
    let (first, rest) = answers.split_first()?;
    if rest.is_empty() {
        return None;
    }
    let want = normal(first);
    rest.iter().all(|a| normal(a) == want).then_some(*first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agreement_ignores_white_space_and_case_only() {
        assert_eq!(agreed(&["Paris.", "  paris.\n", "PARIS."]), Some("Paris."));
        assert_eq!(
            agreed(&["x = 1\ny = 2", "x = 1 y = 2"]),
            Some("x = 1\ny = 2")
        );
        assert_eq!(agreed(&["42", "43"]), None);
        assert_eq!(agreed(&["It is safe.", "It is not safe."]), None);
        assert_eq!(agreed(&["alone"]), None, "one answer is no agreement");
        assert_eq!(agreed(&[]), None);
    }

    #[test]
    fn a_quorum_the_layer_cannot_beat_waits_for_all() {
        let policy = RunPolicy {
            quorum: Some(3),
            ..RunPolicy::default()
        };
        assert_eq!(policy.quorum_of(4), Some(3));
        assert_eq!(policy.quorum_of(3), None);
        assert_eq!(policy.quorum_of(2), None);
        let zero = RunPolicy {
            quorum: Some(0),
            ..RunPolicy::default()
        };
        assert_eq!(zero.quorum_of(4), Some(1));
        assert_eq!(RunPolicy::default().quorum_of(4), None);
    }
}
