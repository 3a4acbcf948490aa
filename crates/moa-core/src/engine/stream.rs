//! The run itself, driven from inside the stream its caller polls: no task is spawned, so
//! dropping the stream drops every in-flight call with it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::time::Instant;

use futures::future::{join_all, BoxFuture};
use futures::{FutureExt, Stream};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use super::budget::{self, Budget};
use super::call::{call, estimate_prompt_tokens, estimate_tokens, millis, CallContext, Slot};
use super::layer::{gather, Cutoff};
use super::{Plan, RunOptions, RunRequest};
use crate::completion::ChatRequest;
use crate::error::{MoaError, ProposalFailure};
use crate::event::{CallStatus, CallTrace, Degraded, DegradedKind, LayerTrace, RunEvent, Trace};
use crate::message::Message;
use crate::prompt::{structured_view, text_view, tools_text, PromptStyle, Reference};

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
        let started = Instant::now();
        let ctx = CallContext {
            events: tx,
            started,
            timeout: options.timeout,
            deadline: plan.policy.deadline.map(|d| started + d),
            request_id: request.request_id.clone(),
            trace: request.trace,
            call_spans: request.call_spans,
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

async fn drive(
    plan: Arc<Plan>,
    options: RunOptions,
    request: RunRequest,
    ctx: CallContext,
) -> Result<Trace, MoaError> {
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
    let mut budget = open_budget(&plan, &options, &aggregator_messages, request.n.max(1))?;
    let mut layers = Vec::with_capacity(plan.layers.len());
    let shared = Shared {
        plan: &plan,
        options: &options,
        request: &request,
        ctx: &ctx,
        aggregator_messages: &aggregator_messages,
        tools,
        format,
        layer_count: proposer_layers.len(),
        stream_proposers,
    };
    for (i, agents) in proposer_layers.iter().enumerate() {
        let layer = i + 1;
        let mut requests: Vec<ChatRequest> = agents
            .iter()
            .map(|agent| plan.proposer_request(agent, &messages, &references, &request.proposers))
            .collect();
        let share = layer_share(
            &budget,
            &plan,
            agents,
            &requests,
            &aggregator_messages,
            request.n.max(1),
        );
        if share.is_some_and(|s| s < u64::from(budget::PROPOSER_FLOOR)) {
            // The limits leave too little for this layer and the aggregator: the aggregator
            // reads what the layers before it wrote.
            degraded.extend(agents.iter().map(|a| Degraded {
                layer: Some(layer),
                model: a.spec.model.clone(),
                kind: DegradedKind::Skipped,
                reason: format!(
                    "skipped: the run's limits ({}) leave too little for this layer and the \
                     aggregator",
                    budget.describe()
                ),
            }));
            break;
        }
        if let Some(share) = share {
            for (agent, call_request) in agents.iter().zip(requests.iter_mut()) {
                if let Some(cap) = budget::cap(call_request.max_tokens, share) {
                    call_request.max_tokens = Some(cap);
                    degraded.push(capped(Some(layer), &agent.spec.model, cap, &budget));
                }
            }
        }
        let (trace, next) =
            run_layer(&shared, layer, agents, requests, &mut budget, &mut degraded).await?;
        references = next;
        layers.push(trace);
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
                let mut trace = finish(&plan, &ctx, layers, outcomes, degraded);
                trace.early_exit = Some(layer);
                trace.tally(&options.prices);
                return Ok(trace);
            }
        }
    }

    aggregate(&shared, references, layers, degraded, budget).await
}

/// One proposer layer: its calls (started, stripped, an empty answer failed), completed as the
/// policy says (see [`gather`]), charged to the budget and reported; its answers are the next
/// references. Fewer answers than `min_proposals` fail the run.
async fn run_layer(
    shared: &Shared<'_>,
    layer: usize,
    agents: &[super::BoundAgent],
    requests: Vec<ChatRequest>,
    budget: &mut Budget,
    degraded: &mut Vec<Degraded>,
) -> Result<(LayerTrace, Vec<Reference>), MoaError> {
    let (plan, options, ctx) = (shared.plan, shared.options, shared.ctx);
    let (layer_count, stream_proposers) = (shared.layer_count, shared.stream_proposers);
    let layer_started = Instant::now();
    ctx.emit(RunEvent::LayerStarted {
        layer,
        proposers: agents.len(),
    });
    let calls = agents
        .iter()
        .zip(requests)
        .enumerate()
        .map(|(index, (agent, request))| {
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
    let cutoff = Cutoff {
        quorum: plan.policy.quorum_of(agents.len()),
        grace: plan.policy.grace,
        deadline: plan.policy.deadline.map(|d| {
            // The deadline is shared evenly by the proposer layers and the aggregator.
            let share = d.mul_f64(layer as f64 / (layer_count + 1) as f64);
            ctx.started + share
        }),
    };
    let traces = gather(ctx, cutoff, layer, agents, calls, layer_started).await;
    budget.charge_calls(&traces);
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
    let trace = LayerTrace {
        layer,
        calls: traces,
        elapsed_ms: millis(layer_started.elapsed()),
    };
    Ok((trace, next))
}

/// What the phases of a run read of it.
struct Shared<'a> {
    plan: &'a Plan,
    options: &'a RunOptions,
    request: &'a RunRequest,
    ctx: &'a CallContext,
    aggregator_messages: &'a [Message],
    tools: Option<&'a crate::completion::Tools>,
    format: Option<&'a crate::format::ResponseFormat>,
    /// Proposer layers this run has (none with given references).
    layer_count: usize,
    stream_proposers: bool,
}

/// The aggregator's phase: the references fitted to its context (and read in windows, with
/// Self-MoA-Seq), one call per choice within the budget, the fallback when it fails, the
/// format check and repair; then the trace.
async fn aggregate(
    shared: &Shared<'_>,
    mut references: Vec<Reference>,
    layers: Vec<LayerTrace>,
    mut degraded: Vec<Degraded>,
    mut budget: Budget,
) -> Result<Trace, MoaError> {
    let Shared {
        plan,
        options,
        request,
        ctx,
        aggregator_messages,
        tools,
        format,
        ..
    } = *shared;
    let style = plan.prompt_style;
    let aggregator = &plan.aggregator;
    let reference_layer = layers.last().map_or(0, |l| l.layer);
    degraded.extend(fit_references(
        aggregator,
        &mut references,
        aggregator_messages,
        request.aggregator.max_tokens.or(aggregator.spec.max_tokens),
        reference_layer,
    ));
    let windows = match plan.policy.aggregate_window {
        Some(window) => {
            let (synthesis, rest, calls) = aggregate_windows(
                ctx,
                aggregator,
                aggregator_messages,
                &request.aggregator,
                style,
                std::mem::take(&mut references),
                window,
            )
            .await?;
            budget.charge_calls(&calls);
            references = synthesis.into_iter().chain(rest).collect();
            calls
        }
        None => Vec::new(),
    };
    ctx.emit(RunEvent::AggregatorStarted {
        model: aggregator.spec.model.clone(),
    });
    let mut call_request = aggregator.request(aggregator_messages, &references, style);
    request.aggregator.apply(&mut call_request);
    call_request.tools = tools.cloned();
    call_request.response_format = format.cloned();
    // Several choices are several aggregations of the same references. A seed, if given,
    // differs per choice, or they would all be the same answer.
    let mut requests: Vec<_> = (0..request.n.max(1))
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
    // The aggregator writes what the limits leave, or the run fails rather than pass them.
    let prompts: Vec<(&str, u64)> = requests
        .iter()
        .map(|r| {
            (
                aggregator.spec.model.as_str(),
                estimate_prompt_tokens(&r.messages),
            )
        })
        .collect();
    if let Some(share) = budget.share(&prompts, None) {
        if share < budget::AGGREGATOR_MIN {
            return Err(MoaError::Budget {
                message: format!(
                    "the run's limits ({}) leave the aggregator {share} tokens of answer, after \
                     the proposers spent theirs; raise them",
                    budget.describe()
                ),
            });
        }
        if let Some(cap) = budget::cap(requests[0].max_tokens, share) {
            for r in &mut requests {
                r.max_tokens = Some(cap);
            }
            degraded.push(capped(None, &aggregator.spec.model, cap, &budget));
        }
    }
    let quiet = format.is_some();
    let calls = requests.iter().enumerate().map(|(choice, call_request)| {
        let slot = Slot::Aggregator { choice, quiet };
        call(ctx, aggregator, call_request.clone(), slot, true)
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
        let layer = reference_layer;
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
            let repaired = call(ctx, aggregator, repair, slot, false).await;
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
    let mut trace = finish(plan, ctx, layers, outcomes, degraded);
    trace.warnings = warnings;
    trace.repairs = repairs;
    trace.windows = windows;
    trace.tally(&options.prices);
    Ok(trace)
}

/// The run's limits, refusing a run that cannot pay for even the aggregator's prompt and its
/// minimum answer ([`budget::AGGREGATOR_FLOOR`] tokens per choice).
fn open_budget(
    plan: &Plan,
    options: &RunOptions,
    aggregator_messages: &[Message],
    choices: usize,
) -> Result<Budget, MoaError> {
    let models: Vec<&str> = plan
        .layers
        .iter()
        .flatten()
        .chain(std::iter::once(&plan.aggregator))
        .map(|a| a.spec.model.as_str())
        .collect();
    let budget = Budget::new(&plan.policy, options.prices.clone(), &models)
        .map_err(|message| MoaError::Budget { message })?;
    let prompt = aggregator_prompt(aggregator_messages);
    let prompts = vec![(plan.aggregator.spec.model.as_str(), prompt); choices];
    match budget.share(&prompts, None) {
        Some(share) if share < u64::from(budget::AGGREGATOR_FLOOR) => Err(MoaError::Budget {
            message: format!(
                "the run's limits ({}) cannot pay for the aggregator's prompt (about {prompt} \
                 tokens) and a {}-token answer; raise them",
                budget.describe(),
                budget::AGGREGATOR_FLOOR
            ),
        }),
        _ => Ok(budget),
    }
}

/// The aggregator's prompt before references: the conversation and its system prompt.
fn aggregator_prompt(messages: &[Message]) -> u64 {
    estimate_prompt_tokens(messages) + estimate_tokens(crate::prompt::AGGREGATOR_SYSTEM_PROMPT)
}

/// The most each proposer of a layer may write so that the aggregator keeps its minimum over
/// references as long as theirs; `None` without limits.
fn layer_share(
    budget: &Budget,
    plan: &Plan,
    agents: &[super::BoundAgent],
    requests: &[ChatRequest],
    aggregator_messages: &[Message],
    choices: usize,
) -> Option<u64> {
    if budget.is_unlimited() {
        return None;
    }
    let prompts: Vec<(&str, u64)> = agents
        .iter()
        .zip(requests)
        .map(|(a, r)| (a.spec.model.as_str(), estimate_prompt_tokens(&r.messages)))
        .collect();
    let choices_u64 = choices as u64;
    let reserve = (
        plan.aggregator.spec.model.as_str(),
        aggregator_prompt(aggregator_messages) * choices_u64,
        (agents.len() * choices) as f64,
        budget::AGGREGATOR_FLOOR.saturating_mul(choices as u32),
    );
    budget.share(&prompts, Some(reserve))
}

/// Self-MoA-Seq: while more references are left than one window holds, the aggregator
/// synthesises a window of them (the running synthesis first, then the next answers) in a
/// whole, unstreamed call. Returns the last synthesis, the references the final window still
/// has to read, and the calls made.
async fn aggregate_windows(
    ctx: &CallContext,
    aggregator: &super::BoundAgent,
    messages: &[Message],
    overrides: &super::CallOverrides,
    style: PromptStyle,
    mut rest: Vec<Reference>,
    window: usize,
) -> Result<(Option<Reference>, Vec<Reference>, Vec<CallTrace>), MoaError> {
    let mut synthesis: Option<Reference> = None;
    let mut calls = Vec::new();
    let mut read = 0;
    loop {
        let room = window - usize::from(synthesis.is_some());
        if rest.len() <= room {
            return Ok((synthesis, rest, calls));
        }
        let batch: Vec<Reference> = rest.drain(..room).collect();
        read += batch.len();
        let these: Vec<Reference> = synthesis.take().into_iter().chain(batch).collect();
        let mut call_request = aggregator.request(messages, &these, style);
        overrides.apply(&mut call_request);
        let slot = Slot::Aggregator {
            choice: 0,
            quiet: true,
        };
        let trace = call(ctx, aggregator, call_request, slot, false).await;
        if let Some(source) = trace.failure.clone() {
            return Err(MoaError::Aggregator {
                model: aggregator.spec.model.clone(),
                source,
            });
        }
        synthesis = Some(Reference {
            model: format!("{} (synthesis of {read} answers)", aggregator.spec.model),
            text: trace.answer.clone().unwrap_or_default().trim().to_string(),
        });
        calls.push(trace);
    }
}

/// Tokens kept for the aggregator's answer when it sets no max_tokens, in the context guard.
const ANSWER_ROOM: u64 = 1024;

/// Trims `references` to fit the aggregator's context window (its provider's word, else the
/// built-in table; unknown: nothing is trimmed), keeping room for its prompt and answer.
pub(super) fn fit_references(
    aggregator: &super::BoundAgent,
    references: &mut [Reference],
    aggregator_messages: &[Message],
    max_tokens: Option<u32>,
    layer: usize,
) -> Vec<Degraded> {
    let window = aggregator
        .provider
        .context_window(&aggregator.model_id)
        .or_else(|| crate::context::builtin_window(&aggregator.spec.model));
    let Some(window) = window else {
        return Vec::new();
    };
    // Each reference's numbering or tags take a few tokens of their own.
    let fixed = aggregator_prompt(aggregator_messages)
        + max_tokens.map_or(ANSWER_ROOM, u64::from)
        + 16 * references.len() as u64;
    let trims = crate::context::fit(references, window.saturating_sub(fixed));
    trims
        .into_iter()
        .map(|t| Degraded {
            layer: Some(layer).filter(|l| *l > 0),
            model: references[t.index].model.clone(),
            kind: DegradedKind::Trimmed,
            reason: format!(
                "reference trimmed from about {} to {} tokens to fit {}'s context of {window} \
                 tokens",
                t.from_tokens, t.to_tokens, aggregator.spec.model
            ),
        })
        .collect()
}

fn capped(layer: Option<usize>, model: &str, cap: u32, budget: &Budget) -> Degraded {
    Degraded {
        layer,
        model: model.to_string(),
        kind: DegradedKind::Capped,
        reason: format!(
            "max_tokens lowered to {cap} to stay within the run's limits ({})",
            budget.describe()
        ),
    }
}

/// The trace of a run whose aggregator (or early exit) gave `outcomes`, one per choice; the
/// caller adds what else the run made, then tallies it.
fn finish(
    plan: &Plan,
    ctx: &CallContext,
    layers: Vec<LayerTrace>,
    outcomes: Vec<CallTrace>,
    degraded: Vec<Degraded>,
) -> Trace {
    let mut outcomes = outcomes.into_iter();
    let outcome = outcomes
        .next()
        .unwrap_or_else(|| unreachable!("n is at least one"));
    Trace {
        preset: plan.preset.clone(),
        layers,
        answer: outcome.answer.clone().unwrap_or_default(),
        aggregator: outcome,
        other_choices: outcomes.collect(),
        windows: Vec::new(),
        repairs: Vec::new(),
        warnings: Vec::new(),
        degraded,
        early_exit: None,
        usage_by_model: Default::default(),
        usage: Default::default(),
        cost_by_model: Default::default(),
        cost: None,
        elapsed_ms: millis(ctx.started.elapsed()),
    }
}
