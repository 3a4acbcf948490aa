//! Judging through a batch: every pending item's call in one batch; the answers are read into
//! the judge's journal when it ends.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{wait, Ended, DISCOUNT};
use crate::error::{EvalError, Result};
use crate::journal::Journal;
use crate::judge::{Judge, Judgment};
use crate::runner::{self, Item, JobBudget, Record, Tick};
use crate::suite::{Benchmark, Prepared};

/// One line of the batch log: a batch and the items its requests answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchLine {
    pub batch: String,
    /// Request id, item key, item content hash.
    pub requests: Vec<(String, String, String)>,
    /// Its results are in the journal (or it failed as a whole).
    pub collected: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Where a batched judging stands, for the progress line.
struct Progress {
    tick: Tick,
    started: Instant,
}

/// Judges the pending `items` in one batch (or finishes the batch an earlier run left), `poll`
/// apart between status checks. Returns the budget that kept a new batch from starting, if
/// one did.
#[allow(clippy::too_many_arguments)]
pub async fn judge<B: Benchmark>(
    bench: &B,
    items: &[B::Judged],
    judge: &Judge,
    journal: &mut Journal<Judgment>,
    done: &mut HashMap<String, Judgment>,
    log_path: &Path,
    poll: Duration,
    budget: JobBudget,
    mut tick: impl FnMut(&Tick),
) -> Result<Option<String>> {
    let api = judge.batch_api().ok_or_else(|| {
        EvalError::Invalid(format!(
            "{} has no batch API; judge without --batch",
            judge.name
        ))
    })?;
    let mut log = Journal::<BatchLine>::open(log_path)?;
    let mut open: Vec<BatchLine> = Vec::new();
    for line in Journal::<BatchLine>::load(log_path)? {
        open.retain(|b| b.batch != line.batch);
        if !line.collected {
            open.push(line);
        }
    }
    let pending = runner::pending(items, done);
    let mut progress = Progress {
        tick: Tick {
            done: items.len() - pending.len(),
            total: items.len(),
            cost: done
                .values()
                .filter(|j| j.ok)
                .filter_map(|j| j.cost)
                .fold(0.0, |a, c| a + c),
            ..Tick::default()
        },
        started: Instant::now(),
    };
    tick(&progress.tick);
    if open.is_empty() {
        if let Some(max) = budget.max_cost.filter(|max| progress.tick.cost >= *max) {
            return Ok(Some(format!(
                "--job-max-cost ${max} (${:.4} spent)",
                progress.tick.cost
            )));
        }
        let mut requests = Vec::new();
        let mut carried = Vec::new();
        for item in &pending {
            match bench.prepare(item) {
                Prepared::Done(judgment) => record(journal, done, judgment, &mut progress)?,
                Prepared::Call(_, call) => {
                    let id = format!("r{}", requests.len());
                    carried.push((id.clone(), item.key(), item.hash()));
                    requests.push((id, judge.request(call)));
                }
            }
            tick(&progress.tick);
        }
        if requests.is_empty() {
            return Ok(None);
        }
        let batch = api.submit(requests).await.map_err(|e| {
            EvalError::Invalid(format!(
                "submitting the batch to {} failed: {e}",
                judge.name
            ))
        })?;
        let line = BatchLine {
            batch,
            requests: carried,
            collected: false,
            error: None,
        };
        log.append(&line)?;
        open.push(line);
    }
    let by_key: HashMap<String, &B::Judged> = items.iter().map(|i| (i.key(), i)).collect();
    for mut line in open {
        let before = progress.tick.done;
        let ended = wait(api.as_ref(), &line.batch, poll, |n| {
            progress.tick.done = before + (n as usize).min(line.requests.len());
            progress.tick.elapsed_secs = progress.started.elapsed().as_secs_f64();
            tick(&progress.tick);
        })
        .await?;
        progress.tick.done = before;
        let mut outcomes = match ended {
            Ended::Results(outcomes) => outcomes,
            Ended::Failed(why) => {
                line.collected = true;
                line.error = Some(why.clone());
                log.append(&line)?;
                return Err(EvalError::Invalid(format!(
                    "batch {} failed: {why}; rerun the same command to submit its items again",
                    line.batch
                )));
            }
        };
        for (id, key, hash) in &line.requests {
            // An item whose content changed since the batch was sent, or judged meanwhile.
            let Some(item) = by_key.get(key).filter(|i| i.hash() == *hash) else {
                continue;
            };
            if !runner::is_pending(done, key, hash) {
                continue;
            }
            let Prepared::Call(mut judgment, _) = bench.prepare(item) else {
                continue;
            };
            let judgment = match outcomes.remove(id) {
                Some(Ok(completion)) => {
                    judgment.cost = judge.cost(&completion).map(|c| c * DISCOUNT);
                    bench.verdict(item, judgment, completion)
                }
                Some(Err(e)) => judgment.failed(e),
                None => judgment.failed(format!("batch {} has no result for it", line.batch)),
            };
            record(journal, done, judgment, &mut progress)?;
            tick(&progress.tick);
        }
        line.collected = true;
        log.append(&line)?;
    }
    Ok(None)
}

fn record(
    journal: &mut Journal<Judgment>,
    done: &mut HashMap<String, Judgment>,
    judgment: Judgment,
    progress: &mut Progress,
) -> Result<()> {
    journal.append(&judgment)?;
    let state = &mut progress.tick;
    state.done += 1;
    state.fresh += 1;
    state.elapsed_secs = progress.started.elapsed().as_secs_f64();
    state.failure = None;
    if judgment.ok() {
        state.cost += judgment.cost().unwrap_or(0.0);
    } else {
        state.failed += 1;
        state.failure = Some((
            judgment.key.clone(),
            judgment.error.clone().unwrap_or_default(),
        ));
    }
    done.insert(judgment.key.clone(), judgment);
    Ok(())
}
