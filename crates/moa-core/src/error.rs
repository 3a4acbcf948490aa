//! Why a whole run failed.

use serde::Serialize;

use crate::provider::ProviderError;

/// A proposer that failed, kept so the final error can say why each one did.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProposalFailure {
    pub model: String,
    pub error: String,
    /// The typed error, when the call failed (not when its answer was empty).
    #[serde(skip)]
    pub source: Option<ProviderError>,
}

/// A run that could not produce an answer.
#[derive(Clone, Debug, thiserror::Error)]
pub enum MoaError {
    /// Too many proposers of a layer failed.
    #[error("layer {layer}: only {succeeded} of {total} proposers answered, {needed} needed (min_proposals){}", list_failures(.failures))]
    TooFewProposals {
        layer: usize,
        succeeded: usize,
        total: usize,
        needed: usize,
        failures: Vec<ProposalFailure>,
    },
    /// The aggregator's answer does not have the format the request requires, even after a
    /// repair.
    #[error("aggregator {model}: {problem}")]
    Format { model: String, problem: String },
    /// The run's limits (`max_cost`, `max_tokens_total`) cannot pay for it.
    #[error("{message}")]
    Budget { message: String },
    /// The aggregator's call failed.
    #[error("aggregator {model} failed: {source}")]
    Aggregator {
        model: String,
        #[source]
        source: ProviderError,
    },
}

fn list_failures(failures: &[ProposalFailure]) -> String {
    failures
        .iter()
        .map(|f| format!("\n  {}: {}", f.model, f.error))
        .collect()
}

impl MoaError {
    /// The error in terms safe to show a server's client: which models failed and how, with
    /// nothing an upstream wrote (see [`ProviderError::summary`]).
    pub fn summary(&self) -> String {
        match self {
            MoaError::TooFewProposals {
                layer,
                succeeded,
                total,
                needed,
                failures,
            } => {
                let list: String = failures
                    .iter()
                    .map(|f| {
                        let why = f.source.as_ref().map_or(f.error.clone(), |e| e.summary());
                        format!("\n  {}: {why}", f.model)
                    })
                    .collect();
                format!("layer {layer}: only {succeeded} of {total} proposers answered, {needed} needed (min_proposals){list}")
            }
            MoaError::Aggregator { model, source } => {
                format!("aggregator {model} failed: {}", source.summary())
            }
            // moa's own check, about the answer's shape: nothing an upstream wrote.
            MoaError::Format { model, problem } => format!("aggregator {model}: {problem}"),
            MoaError::Budget { message } => message.clone(),
        }
    }

    /// Every failure behind the run's failure that has a typed error.
    pub fn provider_errors(&self) -> Vec<&ProviderError> {
        match self {
            MoaError::Aggregator { source, .. } => vec![source],
            MoaError::TooFewProposals { failures, .. } => {
                failures.iter().filter_map(|f| f.source.as_ref()).collect()
            }
            MoaError::Format { .. } | MoaError::Budget { .. } => Vec::new(),
        }
    }

    /// The provider error behind an aggregator failure, or the first proposer's.
    pub fn provider_error(&self) -> Option<&ProviderError> {
        match self {
            MoaError::Aggregator { source, .. } => Some(source),
            MoaError::TooFewProposals { .. }
            | MoaError::Format { .. }
            | MoaError::Budget { .. } => None,
        }
    }
}
