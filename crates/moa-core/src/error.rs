//! Why a whole run failed.

use serde::Serialize;

use crate::provider::ProviderError;

/// A proposer that failed, kept so the final error can say why each one did.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProposalFailure {
    pub model: String,
    pub error: String,
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
    /// The provider error behind an aggregator failure, or the first proposer's.
    pub fn provider_error(&self) -> Option<&ProviderError> {
        match self {
            MoaError::Aggregator { source, .. } => Some(source),
            MoaError::TooFewProposals { .. } => None,
        }
    }
}
