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

fn millis<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
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
