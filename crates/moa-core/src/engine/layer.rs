//! When a proposer layer is complete: every call finished, or its quorum in and the grace
//! passed, or its share of the run's deadline spent.

use std::future::Future;
use std::time::Duration;

use futures::future::join_all;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use tokio::time::Instant;

use super::call::{millis, CallContext};
use super::BoundAgent;
use crate::event::{CallStatus, CallTrace, RunEvent};

/// What may end a layer before all of its calls have.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Cutoff {
    /// The layer completes once this many calls have answered and `grace` has passed.
    pub quorum: Option<usize>,
    pub grace: Duration,
    /// The layer completes at this instant whatever has answered (its share of the deadline).
    pub deadline: Option<Instant>,
}

/// The traces of one layer's calls, in preset order. Calls still running when the cutoff
/// ends the layer are dropped, which closes their connections, and traced as cancelled.
pub(super) async fn gather(
    ctx: &CallContext,
    cutoff: Cutoff,
    layer: usize,
    agents: &[BoundAgent],
    calls: impl Iterator<Item = impl Future<Output = CallTrace>>,
    layer_started: Instant,
) -> Vec<CallTrace> {
    if cutoff.quorum.is_none() && cutoff.deadline.is_none() {
        return join_all(calls).await;
    }
    let mut pending: FuturesUnordered<_> = calls
        .enumerate()
        .map(|(index, call)| call.map(move |trace| (index, trace)))
        .collect();
    let mut done: Vec<Option<CallTrace>> = vec![None; agents.len()];
    let mut answered = 0;
    let mut until = cutoff.deadline;
    let mut by_quorum = false;
    loop {
        let next = match until {
            Some(end) => tokio::select! {
                next = pending.next() => next,
                () = tokio::time::sleep_until(end) => break,
            },
            None => pending.next().await,
        };
        let Some((index, trace)) = next else { break };
        answered += usize::from(trace.answer.is_some());
        done[index] = Some(trace);
        if !by_quorum && cutoff.quorum.is_some_and(|q| answered >= q) {
            let end = Instant::now() + cutoff.grace;
            if until.is_none_or(|deadline| end < deadline) {
                until = Some(end);
                by_quorum = true;
            }
            if cutoff.grace.is_zero() && by_quorum {
                break;
            }
        }
    }
    // Dropping the calls still running cancels them.
    drop(pending);
    let reason = match (by_quorum, cutoff.quorum) {
        (true, Some(q)) if cutoff.grace.is_zero() => {
            format!("cancelled: the layer's quorum of {q} answers was in")
        }
        (true, Some(q)) => format!(
            "cancelled: the layer's quorum of {q} answers was in and its grace of {} ms had \
             passed",
            cutoff.grace.as_millis()
        ),
        _ => format!(
            "cancelled: the run's deadline gave this layer {} ms",
            millis(layer_started.elapsed())
        ),
    };
    done.into_iter()
        .zip(agents)
        .enumerate()
        .map(|(index, (trace, agent))| {
            trace.unwrap_or_else(|| {
                let latency_ms = millis(layer_started.elapsed());
                ctx.emit(RunEvent::ProposerCancelled {
                    layer,
                    index,
                    model: agent.spec.model.clone(),
                    latency_ms,
                });
                CallTrace {
                    status: CallStatus::Cancelled,
                    error: Some(reason.clone()),
                    started_ms: ctx.since_start(layer_started),
                    latency_ms,
                    ..CallTrace::new(agent.spec.model.clone())
                }
            })
        })
        .collect()
}
