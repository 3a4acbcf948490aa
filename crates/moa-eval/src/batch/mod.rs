//! Evaluation through a provider's batch API (OpenAI Batch, Anthropic Message Batches): many
//! calls submitted at once, answered within a day, billed at half the list price. Judging puts
//! every pending item in one batch ([`judge`]); generation puts each layer of every pending item
//! in one batch per provider, and builds the next layer when it ends ([`generate`]).
//!
//! Every batch's id is written to a log in the run folder the moment the batch exists, so a run
//! stopped while a batch works (Ctrl-C, a kill, a reboot) picks the same batch up again instead
//! of paying for a second one.

mod generate;
mod judge;

use std::collections::HashMap;
use std::time::Duration;

use moa_core::{BatchApi, BatchStatus, Completion};

use crate::error::{EvalError, Result};

pub use generate::{generate, GenerationLine};
pub use judge::{judge, BatchLine};

/// What the batch APIs bill against the list price (OpenAI and Anthropic: 50%).
pub const DISCOUNT: f64 = 0.5;

/// How a batch ended.
enum Ended {
    /// Each request's answer, or why it has none, by request id.
    Results(HashMap<String, std::result::Result<Completion, String>>),
    /// The batch as a whole failed: why.
    Failed(String),
}

/// Checks on batch `id` every `poll` until it ends, telling `running` how many of its requests
/// are done at each check; then reads its results.
async fn wait(
    api: &dyn BatchApi,
    id: &str,
    poll: Duration,
    mut running: impl FnMut(u64),
) -> Result<Ended> {
    loop {
        let status = api.status(id).await.map_err(|e| {
            EvalError::Invalid(format!(
                "checking batch {id} failed: {e}; rerun the same command to check again"
            ))
        })?;
        match status {
            BatchStatus::Running { done, .. } => {
                running(done);
                tokio::time::sleep(poll).await;
            }
            BatchStatus::Ended => break,
            BatchStatus::Failed(why) => return Ok(Ended::Failed(why)),
        }
    }
    let results = api.results(id).await.map_err(|e| {
        EvalError::Invalid(format!(
            "reading batch {id}'s results failed: {e}; rerun the same command to read them again"
        ))
    })?;
    Ok(Ended::Results(
        results.into_iter().map(|r| (r.id, r.outcome)).collect(),
    ))
}
