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
    fn key(&self) -> &str;
    /// The content hash of the item it answers.
    fn hash(&self) -> &str;
    fn ok(&self) -> bool;
    fn cost(&self) -> Option<f64>;
    fn error(&self) -> Option<&str>;
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
    records
        .into_iter()
        .map(|r| (r.key().to_string(), r))
        .collect()
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
/// `journal` and to `done` as it finishes.
pub async fn run<T, R, F, Fut>(
    items: &[T],
    parallel: usize,
    journal: &mut Journal<R>,
    done: &mut HashMap<String, R>,
    work: F,
    mut tick: impl FnMut(&Tick),
) -> Result<()>
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
            .sum(),
        ..Tick::default()
    };
    tick(&state);
    let mut results = futures::stream::iter(todo)
        .map(work)
        .buffer_unordered(parallel.max(1));
    while let Some(record) = results.next().await {
        journal.append(&record)?;
        state.done += 1;
        state.fresh += 1;
        state.elapsed_secs = started.elapsed().as_secs_f64();
        state.cost += record.cost().unwrap_or(0.0);
        state.failure = None;
        if !record.ok() {
            state.failed += 1;
            state.failure = Some((
                record.key().to_string(),
                record.error().unwrap_or("unknown error").to_string(),
            ));
        }
        done.insert(record.key().to_string(), record);
        tick(&state);
    }
    Ok(())
}
