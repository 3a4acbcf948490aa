//! Runs work items with bounded concurrency, appending every finished record to a journal the
//! moment it lands and reporting progress, so a run killed at any point resumes with no finished
//! item lost and none done twice.

use std::collections::HashMap;
use std::future::Future;
use std::time::Instant;

use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::Result;
use crate::journal::Journal;

/// What the runner needs to know of a finished record.
pub trait Record: Serialize + DeserializeOwned {
    fn key(&self) -> String;
    /// The content hash of the item it answers.
    fn hash(&self) -> &str;
    fn ok(&self) -> bool;
    fn cost(&self) -> Option<f64>;
    /// Tokens, prompt and answer, the record's calls used (for a job's token budget).
    fn tokens(&self) -> u64 {
        0
    }
    fn error(&self) -> Option<&str>;
}

/// A whole job's limits (`--job-max-cost`, `--job-max-tokens`), over every record of the job,
/// earlier runs of it included.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct JobBudget {
    pub max_cost: Option<f64>,
    pub max_tokens: Option<u64>,
}

/// Decides whether a job may start another item. It stops starting them once what has been
/// spent, plus the average item so far for each item in flight and for the next one, would pass
/// a limit: the items in flight still finish (and are kept), so a job ends within about one
/// item per parallel slot of its budget, and a rerun with a larger budget goes on from there.
#[derive(Debug)]
pub struct Gate {
    budget: JobBudget,
    cost: f64,
    tokens: u64,
    /// Items finished in this process, and what they spent (the average's base).
    fresh: usize,
    fresh_cost: f64,
    fresh_tokens: u64,
    in_flight: usize,
    /// Why the job stopped starting items, once it has.
    pub reached: Option<String>,
}

impl Gate {
    /// A gate for `budget`, with `cost` and `tokens` spent by the job's earlier runs.
    pub fn new(budget: JobBudget, cost: f64, tokens: u64) -> Self {
        Self {
            budget,
            cost,
            tokens,
            fresh: 0,
            fresh_cost: 0.0,
            fresh_tokens: 0,
            in_flight: 0,
            reached: None,
        }
    }

    /// Whether another item may start; counts it as in flight if so.
    pub fn may_start(&mut self) -> bool {
        if self.reached.is_some() {
            return false;
        }
        let ahead = (self.in_flight + 1) as f64;
        let average = |spent: f64| match self.fresh {
            0 => 0.0,
            n => spent / n as f64,
        };
        let cost = self.cost + average(self.fresh_cost) * ahead;
        let tokens = self.tokens as f64 + average(self.fresh_tokens as f64) * ahead;
        let over = match (self.budget.max_cost, self.budget.max_tokens) {
            (Some(max), _) if self.cost >= max || (self.fresh > 0 && cost > max) => {
                Some(format!("--job-max-cost ${max} (${:.4} spent)", self.cost))
            }
            (_, Some(max)) if self.tokens >= max || (self.fresh > 0 && tokens > max as f64) => {
                Some(format!("--job-max-tokens {max} ({} used)", self.tokens))
            }
            _ => None,
        };
        if over.is_some() {
            self.reached = over;
            return false;
        }
        self.in_flight += 1;
        true
    }

    /// An item finished, having spent `cost` and `tokens`.
    pub fn finished(&mut self, cost: f64, tokens: u64) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.fresh += 1;
        self.cost += cost;
        self.tokens += tokens;
        self.fresh_cost += cost;
        self.fresh_tokens += tokens;
    }
}

/// Where a run stands, after each finished item.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tick {
    pub done: usize,
    pub total: usize,
    /// Finished in this process (the base for the ETA).
    pub fresh: usize,
    pub failed: usize,
    /// US dollars over every finished record, earlier runs included.
    pub cost: f64,
    pub elapsed_secs: f64,
    /// The key and error of a record that just failed.
    pub failure: Option<(String, String)>,
    /// What the job is waiting on, when that is not the next item (a batch's stage, say).
    pub phase: Option<String>,
}

impl Tick {
    /// Seconds left at the pace of this process so far.
    pub fn eta_secs(&self) -> Option<f64> {
        (self.fresh > 0 && self.done < self.total)
            .then(|| self.elapsed_secs / self.fresh as f64 * (self.total - self.done) as f64)
    }
}

/// A work item: its key and a hash of its content, matched against records.
pub trait Item: Clone {
    fn key(&self) -> String;
    fn hash(&self) -> String;
}

/// The latest record per key.
pub fn latest<R: Record>(records: Vec<R>) -> HashMap<String, R> {
    records.into_iter().map(|r| (r.key(), r)).collect()
}

/// Whether `key` still needs doing: no successful record with the same content hash.
pub fn is_pending<R: Record>(done: &HashMap<String, R>, key: &str, hash: &str) -> bool {
    !done.get(key).is_some_and(|r| r.ok() && r.hash() == hash)
}

/// The items without a successful record of their current content.
pub fn pending<T: Item, R: Record>(items: &[T], done: &HashMap<String, R>) -> Vec<T> {
    items
        .iter()
        .filter(|i| is_pending(done, &i.key(), &i.hash()))
        .cloned()
        .collect()
}

/// Runs `work` over the pending `items`, `parallel` at a time, appending each record to
/// `journal` and to `done` as it finishes. Stops starting items when `budget` is reached (see
/// [`Gate`]) and says why.
pub async fn run<T, R, F, Fut>(
    items: &[T],
    parallel: usize,
    budget: JobBudget,
    journal: &mut Journal<R>,
    done: &mut HashMap<String, R>,
    work: F,
    mut tick: impl FnMut(&Tick),
) -> Result<Option<String>>
where
    T: Item,
    R: Record,
    F: Fn(T) -> Fut,
    Fut: Future<Output = R>,
{
    let todo = pending(items, done);
    let total = items.len();
    let started = Instant::now();
    let mut state = Tick {
        done: total - todo.len(),
        total,
        cost: done
            .values()
            .filter(|r| r.ok())
            .filter_map(|r| r.cost())
            .fold(0.0, |a, c| a + c),
        ..Tick::default()
    };
    tick(&state);
    let spent_tokens = done.values().map(|r| r.tokens()).sum();
    let gate = std::sync::Arc::new(std::sync::Mutex::new(Gate::new(
        budget,
        state.cost,
        spent_tokens,
    )));
    let starts = gate.clone();
    let mut results = futures::stream::iter(todo)
        .take_while(move |_| {
            let start = starts.lock().is_ok_and(|mut g| g.may_start());
            futures::future::ready(start)
        })
        .map(work)
        .buffer_unordered(parallel.max(1));
    while let Some(record) = results.next().await {
        if let Ok(mut g) = gate.lock() {
            g.finished(record.cost().unwrap_or(0.0), record.tokens());
        }
        journal.append(&record)?;
        state.done += 1;
        state.fresh += 1;
        state.elapsed_secs = started.elapsed().as_secs_f64();
        state.cost += record.cost().unwrap_or(0.0);
        state.failure = None;
        if !record.ok() {
            state.failed += 1;
            state.failure = Some((
                record.key(),
                record.error().unwrap_or("unknown error").to_string(),
            ));
        }
        done.insert(record.key(), record);
        tick(&state);
    }
    let reached = gate.lock().ok().and_then(|g| g.reached.clone());
    Ok(reached)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_stops_before_the_average_item_would_pass_the_budget() {
        let budget = JobBudget {
            max_cost: Some(1.0),
            max_tokens: None,
        };
        let mut gate = Gate::new(budget, 0.0, 0);
        // Nothing known yet: two start.
        assert!(gate.may_start() && gate.may_start());
        gate.finished(0.3, 100);
        // $0.30 spent, one in flight: it and the next would bring $0.90.
        assert!(gate.may_start());
        gate.finished(0.3, 100);
        gate.finished(0.3, 100);
        // $0.90 spent: one more would pass $1.00.
        assert!(!gate.may_start());
        assert_eq!(
            gate.reached.as_deref(),
            Some("--job-max-cost $1 ($0.9000 spent)")
        );
        assert!(!gate.may_start(), "once stopped, stays stopped");
    }

    #[test]
    fn earlier_runs_count_and_tokens_have_their_own_limit() {
        let mut spent = Gate::new(
            JobBudget {
                max_cost: Some(1.0),
                max_tokens: None,
            },
            1.0,
            0,
        );
        assert!(
            !spent.may_start(),
            "a resumed job that spent its budget starts nothing"
        );
        let mut tokens = Gate::new(
            JobBudget {
                max_cost: None,
                max_tokens: Some(1000),
            },
            0.0,
            0,
        );
        assert!(tokens.may_start());
        tokens.finished(0.0, 600);
        assert!(!tokens.may_start());
        assert!(tokens.reached.unwrap().starts_with("--job-max-tokens 1000"));
        let mut free = Gate::new(JobBudget::default(), 100.0, 1 << 40);
        assert!(free.may_start(), "no budget, no limit");
    }
}
