//! The run itself, driven from inside the stream its caller polls: no task is spawned, so
//! dropping the stream drops every in-flight call with it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::time::Instant;

use futures::future::{join_all, BoxFuture};
use futures::stream::FuturesUnordered;
use futures::{FutureExt, Stream, StreamExt};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use super::call::{call, millis, CallContext, Slot};
use super::{Plan, RunOptions, RunRequest};
use crate::error::{MoaError, ProposalFailure};
use crate::event::{CallStatus, CallTrace, Degraded, DegradedKind, LayerTrace, RunEvent, Trace};
use crate::message::Message;
use crate::policy::RunPolicy;
use crate::prompt::{structured_view, text_view, tools_text, Reference};

/// Why a proposer whose answer was empty (or only white space) is left out of the references.
pub const EMPTY_ANSWER: &str = "the answer was empty, so it was left out of the references";

/// The events of one run, ending with [`RunEvent::Done`] or an error.
pub struct RunStream {
    driver: Option<BoxFuture<'static, Result<Trace, MoaError>>>,
    events: UnboundedReceiver<RunEvent>,
    outcome: Option<Result<Trace, MoaError>>,
}

impl RunStream {
    pub(super) fn new(plan: Arc<Plan>, options: RunOptions, request: RunRequest) -> Self {
        let (tx, events) = unbounded_channel();
        let ctx = CallContext {
            events: tx,
            started: Instant::now(),
            timeout: options.timeout,
        };
        Self {
            driver: Some(drive(plan, options, request, ctx).boxed()),
            events,
            outcome: None,
        }
    }
}

impl Stream for RunStream {
    type Item = Result<RunEvent, MoaError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Poll::Ready(Some(event)) = self.events.poll_recv(cx) {
                return Poll::Ready(Some(Ok(event)));
            }
            let Some(driver) = self.driver.as_mut() else {
                // The driver is done and dropped its sender, so the queue is drained.
                return Poll::Ready(
                    self.outcome
                        .take()
                        .map(|r| r.map(|t| RunEvent::Done(Box::new(t)))),
                );
            };
            match Pin::new(driver).poll(cx) {
                Poll::Ready(outcome) => {
                    self.driver = None;
                    self.outcome = Some(outcome);
                }
                Poll::Pending => {
                    // The driver may have queued events before going pending.
                    if let Poll::Ready(Some(event)) = self.events.poll_recv(cx) {
                        return Poll::Ready(Some(Ok(event)));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

/// The traces of one layer's calls, in preset order. Without a quorum, every call finishes.
/// With one, the layer completes once `quorum` calls have answered and the policy's grace has
/// passed since the last of them (or when all have finished): the calls still running are
/// dropped, which closes their connections, and traced as cancelled.
async fn gather(
    ctx: &CallContext,
    policy: &RunPolicy,
    layer: usize,
    agents: &[super::BoundAgent],
    calls: impl Iterator<Item = impl Future<Output = CallTrace>>,
    layer_started: Instant,
) -> Vec<CallTrace> {
    let Some(quorum) = policy.quorum_of(agents.len()) else {
        return join_all(calls).await;
    };
    let mut pending: FuturesUnordered<_> = calls
        .enumerate()
        .map(|(index, call)| call.map(move |trace| (index, trace)))
        .collect();
    let mut done: Vec<Option<CallTrace>> = vec![None; agents.len()];
    let mut answered = 0;
    let mut until: Option<Instant> = None;
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
        if answered >= quorum && until.is_none() {
            if policy.grace.is_zero() {
                break;
            }
            until = Some(Instant::now() + policy.grace);
        }
    }
    // Dropping the calls still running cancels them.
    drop(pending);
    let reason = match policy.grace.is_zero() {
        true => format!("cancelled: the layer's quorum of {quorum} answers was in"),
        false => format!(
            "cancelled: the layer's quorum of {quorum} answers was in and its grace of {} ms \
             had passed",
            policy.grace.as_millis()
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

async fn drive(
    plan: Arc<Plan>,
    options: RunOptions,
    request: RunRequest,
    ctx: CallContext,
) -> Result<Trace, MoaError> {
    let style = plan.prompt_style;
    // Proposers see tool calls and results as text, and the tools (if any) described in text;
    // the aggregator sees them as they are when it is given the tools, as text otherwise.
    let view: Vec<Message> = text_view(&request.messages);
    let tools = request.tools.as_ref().filter(|t| !t.defs.is_empty());
    let messages = match tools {
        Some(tools) => super::with_system_prompt(&view, &tools_text(&tools.defs)),
        None => view.clone(),
    };
    let aggregator_messages = match tools {
        Some(_) => structured_view(&request.messages),
        None => view,
    };
    // A required format is told to every agent, first thing in its system message.
    let format = request.response_format.as_ref();
    let (messages, aggregator_messages) = match format {
        Some(format) => (
            super::with_system_prompt(&messages, &format.instruction()),
            super::with_system_prompt(&aggregator_messages, &format.instruction()),
        ),
        None => (messages, aggregator_messages),
    };
    let stream_proposers = request.stream_proposers.unwrap_or(options.stream_proposers);
    let proposer_layers = match request.skip_proposers || request.references.is_some() {
        true => &[][..],
        false => &plan.layers[..],
    };
    let mut references: Vec<Reference> = request.references.clone().unwrap_or_default();
    let mut degraded: Vec<Degraded> = Vec::new();
    let proposer_overrides = &request.proposers;
    let mut layers = Vec::with_capacity(plan.layers.len());
    for (i, agents) in proposer_layers.iter().enumerate() {
        let layer = i + 1;
        let layer_started = Instant::now();
        ctx.emit(RunEvent::LayerStarted {
            layer,
            proposers: agents.len(),
        });
        let calls = agents.iter().enumerate().map(|(index, agent)| {
            let mut request = agent.request(&messages, &references, style);
            proposer_overrides.apply(&mut request);
            ctx.emit(RunEvent::ProposerStarted {
                layer,
                index,
                model: agent.spec.model.clone(),
            });
            let ctx = &ctx;
            async move {
                let slot = Slot::Proposer { layer, index };
                let mut trace = call(ctx, agent, request, slot, stream_proposers).await;
                // The reference strips every proposer answer before using it as a reference.
                if let Some(answer) = trace.answer.as_mut() {
                    let stripped = answer.trim();
                    if stripped.len() != answer.len() {
                        *answer = stripped.to_string();
                    }
                }
                // An empty answer would reach the next layer as a bare "2." with nothing after
                // it: it is never a reference. The proposer counts as failed, and says why.
                if trace.answer.as_ref().is_some_and(String::is_empty) {
                    trace.answer = None;
                    trace.status = CallStatus::Failed;
                    trace.error = Some(EMPTY_ANSWER.to_string());
                }
                ctx.emit(match &trace.answer {
                    Some(answer) => RunEvent::ProposerDone {
                        layer,
                        index,
                        model: trace.model.clone(),
                        answer: answer.clone(),
                        latency_ms: trace.latency_ms,
                        usage: trace.usage,
                    },
                    None => RunEvent::ProposerFailed {
                        layer,
                        index,
                        model: trace.model.clone(),
                        error: trace.error.clone().unwrap_or_default(),
                        latency_ms: trace.latency_ms,
                    },
                });
                trace
            }
        });
        let traces = gather(&ctx, &plan.policy, layer, agents, calls, layer_started).await;
        let next: Vec<Reference> = traces
            .iter()
            .filter_map(|t| {
                t.answer.as_ref().map(|text| Reference {
                    model: t.model.clone(),
                    text: text.clone(),
                })
            })
            .collect();
        let cancelled: Vec<&CallTrace> = traces
            .iter()
            .filter(|t| t.status == CallStatus::Cancelled)
            .collect();
        ctx.emit(RunEvent::LayerDone {
            layer,
            succeeded: next.len(),
            failed: traces.len() - next.len() - cancelled.len(),
            cancelled: cancelled.len(),
            elapsed_ms: millis(layer_started.elapsed()),
        });
        degraded.extend(cancelled.into_iter().map(|t| Degraded {
            layer: Some(layer),
            model: t.model.clone(),
            kind: DegradedKind::Cancelled,
            reason: t.error.clone().unwrap_or_default(),
        }));
        let needed = options.min_proposals.min(traces.len());
        if next.len() < needed {
            return Err(MoaError::TooFewProposals {
                layer,
                succeeded: next.len(),
                total: traces.len(),
                needed,
                failures: traces
                    .iter()
                    .filter(|t| t.status == CallStatus::Failed)
                    .map(|t| ProposalFailure {
                        model: t.model.clone(),
                        error: t.error.clone().unwrap_or_default(),
                        source: t.failure.clone(),
                    })
                    .collect(),
            });
        }
        references = next;
        layers.push(LayerTrace {
            layer,
            calls: traces,
            elapsed_ms: millis(layer_started.elapsed()),
        });
        // Early exit: the layer agrees, so no later layer or aggregator could add to it. Not
        // with tools (only the aggregator may call them), nor for an answer of the wrong format.
        if plan.policy.early_exit && tools.is_none() {
            let answers: Vec<&str> = references.iter().map(|r| r.text.as_str()).collect();
            if let Some(answer) = crate::policy::agreed(&answers)
                .filter(|a| format.is_none_or(|f| f.check(a).is_ok()))
            {
                ctx.emit(RunEvent::EarlyExit { layer });
                let skipped = CallTrace {
                    status: CallStatus::Skipped,
                    answer: Some(answer.to_string()),
                    finish_reason: Some("stop".into()),
                    started_ms: millis(ctx.started.elapsed()),
                    ..CallTrace::new(plan.aggregator.spec.model.clone())
                };
                let outcomes = vec![skipped; request.n.max(1)];
                for (choice, _) in outcomes.iter().enumerate() {
                    let text = answer.to_string();
                    ctx.emit(RunEvent::AggregatorDelta { choice, text });
                }
                let mut trace = finish(&plan, &options, &ctx, layers, outcomes, degraded);
                trace.early_exit = Some(layer);
                return Ok(trace);
            }
        }
    }

    let aggregator = &plan.aggregator;
    ctx.emit(RunEvent::AggregatorStarted {
        model: aggregator.spec.model.clone(),
    });
    let mut call_request = aggregator.request(&aggregator_messages, &references, style);
    request.aggregator.apply(&mut call_request);
    call_request.tools = tools.cloned();
    call_request.response_format = format.cloned();
    // Several choices are several aggregations of the same references. A seed, if given,
    // differs per choice, or they would all be the same answer.
    let requests: Vec<_> = (0..request.n.max(1))
        .map(|choice| {
            let mut call_request = call_request.clone();
            if let Some(seed) = call_request.extra.get("seed").and_then(|s| s.as_i64()) {
                call_request
                    .extra
                    .insert("seed".into(), (seed.wrapping_add(choice as i64)).into());
            }
            call_request
        })
        .collect();
    let quiet = format.is_some();
    let calls = requests.iter().enumerate().map(|(choice, call_request)| {
        let slot = Slot::Aggregator { choice, quiet };
        call(&ctx, aggregator, call_request.clone(), slot, true)
    });
    let mut outcomes: Vec<_> = join_all(calls).await;
    let failed = |outcomes: &[crate::event::CallTrace]| {
        outcomes
            .iter()
            .find_map(|o| o.failure.clone())
            .map(|source| MoaError::Aggregator {
                model: aggregator.spec.model.clone(),
                source,
            })
    };
    if let Some(error) = failed(&outcomes) {
        // The fallback answers only for an aggregator that sent nothing before failing: what it
        // had streamed has reached the client, and a proposal after it would read as one answer.
        let fallback = references.first().filter(|_| {
            plan.policy.fallback && outcomes.iter().all(|o| o.first_token_ms.is_none())
        });
        let Some(fallback) = fallback else {
            return Err(error);
        };
        let layer = layers.last().map_or(0, |l| l.layer);
        ctx.emit(RunEvent::Fallback {
            layer,
            model: fallback.model.clone(),
            error: error.to_string(),
        });
        for (choice, outcome) in outcomes.iter_mut().enumerate() {
            if outcome.failure.is_none() {
                continue;
            }
            degraded.push(Degraded {
                layer: None,
                model: outcome.model.clone(),
                kind: DegradedKind::Fallback,
                reason: format!(
                    "the aggregator failed ({}); answered with the proposal of {} from layer \
                     {layer}",
                    outcome.error.clone().unwrap_or_default(),
                    fallback.model
                ),
            });
            outcome.answer = Some(fallback.text.clone());
            outcome.finish_reason = Some("stop".into());
            if !quiet {
                let text = fallback.text.clone();
                ctx.emit(RunEvent::AggregatorDelta { choice, text });
            }
        }
    }
    let mut repairs = Vec::new();
    let mut warnings = Vec::new();
    if let Some(format) = format {
        for (choice, outcome) in outcomes.iter_mut().enumerate() {
            let answer = outcome.answer.clone().unwrap_or_default();
            // An answer that calls tools has no text to check.
            if !outcome.tool_calls.is_empty() {
                continue;
            }
            let Err(problem) = format.check(&answer) else {
                continue;
            };
            // One repair: the answer and what is wrong with it, back to the aggregator.
            let mut repair = requests[choice].clone();
            repair.messages.push(Message::assistant(answer));
            repair
                .messages
                .push(Message::user(format.repair_prompt(&problem)));
            let slot = Slot::Aggregator {
                choice,
                quiet: true,
            };
            let repaired = call(&ctx, aggregator, repair, slot, false).await;
            if let Some(error) = failed(std::slice::from_ref(&repaired)) {
                return Err(error);
            }
            let answer = repaired.answer.clone().unwrap_or_default();
            if let Err(problem) = format.check(&answer) {
                if format.strict() {
                    return Err(MoaError::Format {
                        model: aggregator.spec.model.clone(),
                        problem: format!("{problem} (after one repair)"),
                    });
                }
                warnings.push(format!(
                    "choice {choice}: {problem} (after one repair); sent as it is"
                ));
            }
            outcome.answer = repaired.answer.clone();
            outcome.finish_reason = repaired.finish_reason.clone();
            outcome.logprobs = repaired.logprobs.clone();
            repairs.push(repaired);
        }
        // Checked answers go out in one piece: text, log probabilities, tool calls.
        for (choice, outcome) in outcomes.iter().enumerate() {
            let text = outcome.answer.clone().unwrap_or_default();
            if !text.is_empty() {
                ctx.emit(RunEvent::AggregatorDelta { choice, text });
            }
            if let Some(tokens) = outcome.logprobs.clone() {
                ctx.emit(RunEvent::AggregatorLogprobs { choice, tokens });
            }
            for (index, call) in outcome.tool_calls.iter().enumerate() {
                ctx.emit(RunEvent::AggregatorToolCall {
                    choice,
                    index,
                    id: Some(call.id.clone()),
                    name: Some(call.name.clone()),
                    arguments: call.arguments.clone(),
                });
            }
        }
    }
    let mut trace = finish(&plan, &options, &ctx, layers, outcomes, degraded);
    trace.warnings = warnings;
    if !repairs.is_empty() {
        trace.repairs = repairs;
        trace.tally(&options.prices);
    }
    Ok(trace)
}

/// The trace of a run whose aggregator (or early exit) gave `outcomes`, one per choice.
fn finish(
    plan: &Plan,
    options: &RunOptions,
    ctx: &CallContext,
    layers: Vec<LayerTrace>,
    outcomes: Vec<CallTrace>,
    degraded: Vec<Degraded>,
) -> Trace {
    let mut outcomes = outcomes.into_iter();
    let outcome = outcomes
        .next()
        .unwrap_or_else(|| unreachable!("n is at least one"));
    let mut trace = Trace {
        preset: plan.preset.clone(),
        layers,
        answer: outcome.answer.clone().unwrap_or_default(),
        aggregator: outcome,
        other_choices: outcomes.collect(),
        repairs: Vec::new(),
        warnings: Vec::new(),
        degraded,
        early_exit: None,
        usage_by_model: Default::default(),
        usage: Default::default(),
        cost_by_model: Default::default(),
        cost: None,
        elapsed_ms: millis(ctx.started.elapsed()),
    };
    trace.tally(&options.prices);
    trace
}
