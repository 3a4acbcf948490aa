//! Generation through batches. A stage is one step of one turn: a proposer layer, or the
//! aggregator. Every pending item at the earliest stage any item is at goes into one batch per
//! provider; when those end, each item's answers are written to the log and the next stage is
//! built from them, exactly as a live run builds it ([`moa_core::Plan::proposer_request`],
//! [`moa_core::Plan::aggregator_request`]): answers stripped, an empty one left out of the
//! references, too few answers in a layer failing the item, the preset's early exit and
//! fallback honoured. MT-Bench's second turn follows its first turn's answer.
//!
//! The log (`generation.batches.jsonl`) holds every batch submitted, every call's outcome and
//! every item started afresh, so a rerun rebuilds where each item stands from it alone.
//! Time-based policy (quorum, grace, deadline) has nothing to act on in a batch: every call of
//! a layer is waited for. A per-run budget or windowed aggregation is refused.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use moa_core::{
    BatchApi, BoundAgent, ChatRequest, Message, MoaError, Plan, ProposalFailure, Reference, Usage,
    EMPTY_ANSWER,
};
use serde::{Deserialize, Serialize};

use super::{wait, Ended, DISCOUNT};
use crate::error::{EvalError, Result};
use crate::generate::{blank, given_references, Answer, Generator};
use crate::journal::Journal;
use crate::runner::{self, Item, JobBudget, Record, Tick};
use crate::Task;

/// One step of an item's generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Stage {
    /// The conversation's turn, from 0.
    pub turn: usize,
    /// 1 to L: the proposer layers; L + 1: the aggregator.
    pub step: usize,
}

/// A call a batch carries: its request id, the item (key and content hash) and the agent's
/// place in its layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Carried {
    pub id: String,
    pub key: String,
    pub hash: String,
    pub agent: usize,
}

/// One call's outcome.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub key: String,
    pub hash: String,
    pub stage: Stage,
    pub agent: usize,
    /// The agent's model as the preset names it (a changed preset does not reuse it).
    pub model: String,
    pub answer: Option<String>,
    pub error: Option<String>,
    pub usage: Usage,
    /// US dollars, at the batch discount; `None` when the model has no known price.
    pub cost: Option<f64>,
    /// When its batch was submitted (Unix seconds).
    pub submitted: f64,
}

/// A line of the generation's batch log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "line", rename_all = "snake_case")]
pub enum GenerationLine {
    /// A batch exists.
    Submitted(Batch),
    /// A batch's outcomes are in the log, or it failed as a whole.
    Collected {
        batch: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    Call(Outcome),
    /// The item's calls so far are void: its answer failed, and a rerun starts it afresh.
    Reset {
        key: String,
    },
}

/// A batch submitted: the provider it went to, the stage and the calls it carries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    pub batch: String,
    pub provider: String,
    pub stage: Stage,
    /// Unix seconds.
    pub submitted: f64,
    pub calls: Vec<Carried>,
}

/// What the log says: the open batches, and each item's live outcomes.
#[derive(Default)]
struct State {
    open: Vec<Batch>,
    calls: HashMap<String, Vec<Outcome>>,
}

impl State {
    fn load(lines: Vec<GenerationLine>) -> Self {
        let mut state = State::default();
        for line in lines {
            match line {
                GenerationLine::Submitted(batch) => state.open.push(batch),
                GenerationLine::Collected { batch, .. } => state.open.retain(|o| o.batch != batch),
                GenerationLine::Call(outcome) => state
                    .calls
                    .entry(outcome.key.clone())
                    .or_default()
                    .push(outcome),
                GenerationLine::Reset { key } => {
                    state.calls.remove(&key);
                }
            }
        }
        state
    }

    fn spent(&self) -> (f64, u64) {
        self.calls.values().flatten().fold((0.0, 0), |(c, t), o| {
            (c + o.cost.unwrap_or(0.0), t + o.usage.total_tokens)
        })
    }
}

/// The agent at `step` (1-based proposer layer, then the aggregator) and place `index`.
fn agent_at(plan: &Plan, step: usize, index: usize) -> Option<&BoundAgent> {
    match step.checked_sub(1).and_then(|l| plan.layers.get(l)) {
        Some(layer) => layer.get(index),
        None if step == plan.layers.len() + 1 && index == 0 => Some(&plan.aggregator),
        None => None,
    }
}

/// Refuses what a batch cannot honour, and finds each provider's batch API.
fn batch_apis(plan: &Plan) -> Result<HashMap<String, Arc<dyn BatchApi>>> {
    let policy = &plan.policy;
    let refused = [
        ("max_cost", policy.max_cost.is_some()),
        ("max_tokens_total", policy.max_tokens_total.is_some()),
        ("aggregate_window", policy.aggregate_window.is_some()),
    ];
    if let Some((key, _)) = refused.iter().find(|(_, set)| *set) {
        return Err(EvalError::Invalid(format!(
            "preset {} sets `{key}`, which --batch cannot honour (a batch's calls are all \
             written before any is read); drop it for this run (--job-max-cost bounds the whole \
             job), or generate without --batch",
            plan.preset
        )));
    }
    let mut apis = HashMap::new();
    for agent in plan.layers.iter().flatten().chain([&plan.aggregator]) {
        let name = agent.provider.name().to_string();
        if apis.contains_key(&name) {
            continue;
        }
        let api = agent.provider.batch().ok_or_else(|| {
            EvalError::Invalid(format!(
                "{} (provider `{name}`) has no batch API; generate without --batch, or use a \
                 preset whose models are all served by providers that have one (OpenAI, \
                 Anthropic)",
                agent.spec.model
            ))
        })?;
        apis.insert(name, api);
    }
    Ok(apis)
}

/// Calls an item needs at one stage: the agent's place in its layer, and its request.
type Calls = Vec<(usize, ChatRequest)>;

/// The requests of one batch, with what each carries.
#[derive(Default)]
struct Group {
    carried: Vec<Carried>,
    requests: Vec<(String, ChatRequest)>,
}

/// Where an item stands.
enum Next {
    /// The calls it needs at `stage`.
    Calls(Stage, Calls),
    /// Every turn answered, or the item failed (its `error` says why).
    Finished(Answer),
}

/// Rebuilds `task`'s generation from its `outcomes`: the finished answer, or the calls it needs
/// next.
fn advance(generator: &Generator, task: &Task, outcomes: &[Outcome]) -> Next {
    let moa = generator.moa();
    let plan = moa.plan();
    let changes = generator.overrides(task);
    let hash = task.hash();
    let by_call: HashMap<(Stage, usize), &Outcome> = outcomes
        .iter()
        .filter(|o| o.hash == hash)
        .filter(|o| agent_at(plan, o.stage.step, o.agent).is_some_and(|a| a.spec.model == o.model))
        .map(|o| ((o.stage, o.agent), o))
        .collect();
    let mut answer = blank(task);
    let mut first_submitted: Option<f64> = None;
    let given = given_references(task);
    let aggregator_step = plan.layers.len() + 1;
    let mut history: Vec<Message> = Vec::new();
    for (turn, prompt) in task.turns.iter().enumerate() {
        history.push(Message::user(prompt.clone()));
        let mut references = given.clone().unwrap_or_default();
        let mut reference_layer = 0;
        let mut agreed = None;
        let layers = match given {
            Some(_) => &[][..],
            None => &plan.layers[..],
        };
        for (l, agents) in layers.iter().enumerate() {
            let stage = Stage { turn, step: l + 1 };
            let got: Vec<Option<&Outcome>> = (0..agents.len())
                .map(|i| by_call.get(&(stage, i)).copied())
                .collect();
            if got.iter().any(Option::is_none) {
                let calls = agents
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| got[*i].is_none())
                    .map(|(i, agent)| {
                        let request = plan.proposer_request(agent, &history, &references, &changes);
                        (i, request)
                    })
                    .collect();
                return Next::Calls(stage, calls);
            }
            let got: Vec<&Outcome> = got.into_iter().flatten().collect();
            for o in &got {
                spend(&mut answer, &mut first_submitted, o);
            }
            let next: Vec<Reference> = got
                .iter()
                .filter_map(|o| {
                    o.answer.as_ref().map(|text| Reference {
                        model: o.model.clone(),
                        text: text.clone(),
                    })
                })
                .collect();
            let needed = moa.options().min_proposals.min(agents.len());
            if next.len() < needed {
                let error = MoaError::TooFewProposals {
                    layer: l + 1,
                    succeeded: next.len(),
                    total: agents.len(),
                    needed,
                    failures: got
                        .iter()
                        .filter(|o| o.answer.is_none())
                        .map(|o| ProposalFailure {
                            model: o.model.clone(),
                            error: o.error.clone().unwrap_or_default(),
                            source: None,
                        })
                        .collect(),
                };
                return finished(answer, first_submitted, Some(error.to_string()));
            }
            references = next;
            reference_layer = l + 1;
            if plan.policy.early_exit {
                let texts: Vec<&str> = references.iter().map(|r| r.text.as_str()).collect();
                agreed = moa_core::policy::agreed(&texts).map(str::to_string);
                if agreed.is_some() {
                    break;
                }
            }
        }
        let text = match agreed {
            Some(text) => text,
            None => {
                let stage = Stage {
                    turn,
                    step: aggregator_step,
                };
                let Some(o) = by_call.get(&(stage, 0)) else {
                    let (request, _trims) =
                        plan.aggregator_request(&history, references, &changes, reference_layer);
                    return Next::Calls(stage, vec![(0, request)]);
                };
                spend(&mut answer, &mut first_submitted, o);
                match (&o.answer, references.first()) {
                    (Some(text), _) => text.clone(),
                    // The best proposal, as a live run's fallback gives it.
                    (None, Some(best)) if plan.policy.fallback => best.text.clone(),
                    (None, _) => {
                        let why = o.error.clone().unwrap_or_default();
                        let error = format!("aggregator {}: {why}", o.model);
                        return finished(answer, first_submitted, Some(error));
                    }
                }
            }
        };
        // The reference strips each answer before storing and reusing it.
        let text = text.trim().to_string();
        history.push(Message::assistant(text.clone()));
        answer.turns.push(text);
    }
    finished(answer, first_submitted, None)
}

/// Adds what call `o` used to `answer`.
fn spend(answer: &mut Answer, first_submitted: &mut Option<f64>, o: &Outcome) {
    answer.usage.add(&o.usage);
    answer.cost = answer.cost.zip(o.cost).map(|(a, b)| a + b);
    *first_submitted = Some(first_submitted.map_or(o.submitted, |f| f.min(o.submitted)));
}

fn finished(mut answer: Answer, first_submitted: Option<f64>, error: Option<String>) -> Next {
    answer.ok = error.is_none();
    answer.error = error;
    answer.tstamp = crate::now();
    answer.latency_ms =
        first_submitted.map_or(0, |f| ((answer.tstamp - f).max(0.0) * 1000.0) as u64);
    Next::Finished(answer)
}

/// The outcomes of batch `open`'s calls, from its results.
fn outcomes(
    plan: &Plan,
    prices: &moa_core::PriceTable,
    open: &Batch,
    mut results: HashMap<String, std::result::Result<moa_core::Completion, String>>,
) -> Vec<Outcome> {
    let proposer = open.stage.step <= plan.layers.len();
    open.calls
        .iter()
        .filter_map(|c| {
            let model = agent_at(plan, open.stage.step, c.agent)?.spec.model.clone();
            let mut outcome = Outcome {
                key: c.key.clone(),
                hash: c.hash.clone(),
                stage: open.stage,
                agent: c.agent,
                model,
                answer: None,
                error: None,
                usage: Usage::default(),
                cost: Some(0.0),
                submitted: open.submitted,
            };
            match results.remove(&c.id) {
                Some(Ok(completion)) => {
                    let usage = completion.usage.unwrap_or_default();
                    outcome.cost = prices.cost(&outcome.model, &usage).map(|c| c * DISCOUNT);
                    outcome.usage = usage;
                    let text = match proposer {
                        // A live run strips proposer answers and leaves empty ones out.
                        true => completion.text.trim().to_string(),
                        false => completion.text,
                    };
                    match proposer && text.is_empty() {
                        true => outcome.error = Some(EMPTY_ANSWER.to_string()),
                        false => outcome.answer = Some(text),
                    }
                }
                Some(Err(e)) => outcome.error = Some(e),
                None => outcome.error = Some(format!("batch {} has no result for it", open.batch)),
            }
            Some(outcome)
        })
        .collect()
}

/// Answers the pending `tasks` stage by stage through the providers' batch APIs (or finishes
/// what an earlier run left), `poll` apart between status checks. Returns the budget that kept
/// a new batch from starting, if one did.
#[allow(clippy::too_many_arguments)]
pub async fn generate(
    tasks: &[Task],
    generator: &Generator,
    journal: &mut Journal<Answer>,
    done: &mut HashMap<String, Answer>,
    log_path: &Path,
    poll: Duration,
    budget: JobBudget,
    mut tick: impl FnMut(&Tick),
) -> Result<Option<String>> {
    let plan = generator.moa().plan();
    let prices = generator.moa().options().prices.clone();
    let apis = batch_apis(plan)?;
    let mut log = Journal::<GenerationLine>::open(log_path)?;
    let mut state = State::load(Journal::load(log_path)?);
    let started = Instant::now();
    let mut progress = Tick {
        done: tasks.len() - runner::pending(tasks, done).len(),
        total: tasks.len(),
        cost: done
            .values()
            .filter(|a| a.ok)
            .filter_map(|a| a.cost)
            .fold(0.0, |a, c| a + c),
        ..Tick::default()
    };
    tick(&progress);
    loop {
        // Read every batch an earlier round, or an earlier run, left open.
        for open in std::mem::take(&mut state.open) {
            let api = apis.get(&open.provider).ok_or_else(|| {
                EvalError::Invalid(format!(
                    "batch {} went to provider `{}`, which this preset no longer uses; \
                     generate into another --out",
                    open.batch, open.provider
                ))
            })?;
            let label = stage_label(plan, open.stage);
            let ended = wait(api.as_ref(), &open.batch, poll, |n| {
                progress.phase = Some(format!("{label}: {n}/{} calls", open.calls.len()));
                progress.elapsed_secs = started.elapsed().as_secs_f64();
                tick(&progress);
            })
            .await?;
            let results = match ended {
                Ended::Results(results) => results,
                Ended::Failed(why) => {
                    log.append(&GenerationLine::Collected {
                        batch: open.batch.clone(),
                        error: Some(why.clone()),
                    })?;
                    return Err(EvalError::Invalid(format!(
                        "batch {} failed: {why}; rerun the same command to submit its calls again",
                        open.batch
                    )));
                }
            };
            for outcome in outcomes(plan, &prices, &open, results) {
                log.append(&GenerationLine::Call(outcome.clone()))?;
                state
                    .calls
                    .entry(outcome.key.clone())
                    .or_default()
                    .push(outcome);
            }
            log.append(&GenerationLine::Collected {
                batch: open.batch.clone(),
                error: None,
            })?;
        }
        progress.phase = None;

        // Where each pending item stands: finished ones are recorded, the rest grouped by stage.
        let mut next: BTreeMap<Stage, Vec<(Task, Calls)>> = BTreeMap::new();
        for task in runner::pending(tasks, done) {
            let outcomes = state.calls.get(&task.key).map_or(&[][..], Vec::as_slice);
            match advance(generator, &task, outcomes) {
                Next::Calls(stage, calls) => next.entry(stage).or_default().push((task, calls)),
                Next::Finished(answer) => {
                    journal.append(&answer)?;
                    if !answer.ok {
                        log.append(&GenerationLine::Reset {
                            key: answer.key.clone(),
                        })?;
                        state.calls.remove(&answer.key);
                    }
                    progress.done += 1;
                    progress.fresh += 1;
                    progress.elapsed_secs = started.elapsed().as_secs_f64();
                    progress.failure = None;
                    match answer.ok {
                        true => progress.cost += answer.cost.unwrap_or(0.0),
                        false => {
                            progress.failed += 1;
                            progress.failure = Some((
                                answer.key.clone(),
                                answer.error.clone().unwrap_or_default(),
                            ));
                        }
                    }
                    done.insert(answer.key.clone(), answer);
                    tick(&progress);
                }
            }
        }

        // The earliest stage any item is at goes next: one batch per provider.
        let Some((stage, items)) = next.into_iter().next() else {
            return Ok(None);
        };
        let (pending_cost, pending_tokens) = state.spent();
        let answered_tokens: u64 = done.values().filter(|a| a.ok).map(|a| a.tokens()).sum();
        let spent = progress.cost + pending_cost;
        if let Some(max) = budget.max_cost.filter(|max| spent >= *max) {
            return Ok(Some(format!("--job-max-cost ${max} (${spent:.4} spent)")));
        }
        let tokens = answered_tokens + pending_tokens;
        if let Some(max) = budget.max_tokens.filter(|max| tokens >= *max) {
            return Ok(Some(format!("--job-max-tokens {max} ({tokens} used)")));
        }
        let mut groups: BTreeMap<String, Group> = BTreeMap::new();
        for (task, calls) in items {
            for (agent, request) in calls {
                let Some(bound) = agent_at(plan, stage.step, agent) else {
                    continue;
                };
                let group = groups.entry(bound.provider.name().to_string()).or_default();
                let id = format!("r{}", group.requests.len());
                group.carried.push(Carried {
                    id: id.clone(),
                    key: task.key.clone(),
                    hash: task.hash(),
                    agent,
                });
                group.requests.push((id, request));
            }
        }
        for (provider, Group { carried, requests }) in groups {
            let api = &apis[&provider];
            let batch = api.submit(requests).await.map_err(|e| {
                EvalError::Invalid(format!(
                    "submitting {}'s batch to `{provider}` failed: {e}",
                    stage_label(plan, stage)
                ))
            })?;
            let open = Batch {
                batch,
                provider,
                stage,
                submitted: crate::now(),
                calls: carried,
            };
            log.append(&GenerationLine::Submitted(open.clone()))?;
            state.open.push(open);
        }
    }
}

/// "turn 1, layer 2 of 3", "turn 2, aggregator".
fn stage_label(plan: &Plan, stage: Stage) -> String {
    let layers = plan.layers.len();
    match stage.step <= layers {
        true => format!("turn {}, layer {} of {layers}", stage.turn + 1, stage.step),
        false => format!("turn {}, aggregator", stage.turn + 1),
    }
}
