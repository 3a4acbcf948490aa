//! What a run reports as it goes ([`RunEvent`]) and the record it leaves ([`Trace`]).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::completion::Usage;
use crate::price::PriceTable;

/// One step of a MoA run. Layers are numbered from 1; proposer indexes from 0 within a layer.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum RunEvent {
    /// A proposer layer begins.
    LayerStarted { layer: usize, proposers: usize },
    /// A proposer's request is about to be sent.
    ProposerStarted {
        layer: usize,
        index: usize,
        model: String,
    },
    /// Text from a streaming proposer.
    ProposerDelta {
        layer: usize,
        index: usize,
        text: String,
    },
    /// A proposer finished; its (stripped) answer will be a reference for the next layer.
    ProposerDone {
        layer: usize,
        index: usize,
        model: String,
        answer: String,
        latency_ms: u64,
        usage: Option<Usage>,
    },
    /// A proposer failed after retries and is left out of the references.
    ProposerFailed {
        layer: usize,
        index: usize,
        model: String,
        error: String,
        latency_ms: u64,
    },
    /// A proposer still running when its layer completed (its quorum was in and the grace had
    /// passed) was cancelled; it is left out of the references.
    ProposerCancelled {
        layer: usize,
        index: usize,
        model: String,
        latency_ms: u64,
    },
    /// Every answer of `layer` agreed: the later layers and the aggregator are skipped, and the
    /// agreed answer follows as the aggregator's text.
    EarlyExit { layer: usize },
    /// The aggregator failed after its retries; the answer that follows is `model`'s proposal
    /// (from `layer`) instead. `error` says how the aggregator failed.
    Fallback {
        layer: usize,
        model: String,
        error: String,
    },
    /// Every proposer of a layer has finished, failed or been cancelled.
    LayerDone {
        layer: usize,
        succeeded: usize,
        failed: usize,
        /// Proposers cancelled by the quorum.
        cancelled: usize,
        elapsed_ms: u64,
    },
    /// The aggregator's request is about to be sent.
    AggregatorStarted { model: String },
    /// Text of the final answer.
    AggregatorDelta {
        /// Which of the request's choices (0 unless it asked for several).
        choice: usize,
        text: String,
    },
    /// A piece of a tool call of the final answer (see [`crate::Chunk::ToolCall`]).
    AggregatorToolCall {
        choice: usize,
        index: usize,
        id: Option<String>,
        name: Option<String>,
        arguments: String,
    },
    /// Log probabilities of the final answer's last tokens, when the request asked for them.
    AggregatorLogprobs {
        choice: usize,
        tokens: Vec<crate::completion::TokenLogprob>,
    },
    /// The run finished; the whole trace.
    Done(Box<Trace>),
}

/// Whether a call succeeded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CallStatus {
    Ok,
    Failed,
    /// Cancelled by the run's policy (a layer's quorum was in).
    Cancelled,
    /// Not called: a layer's answers agreed (early exit), so the aggregator was not needed.
    Skipped,
}

fn is_first(attempts: &u32) -> bool {
    *attempts <= 1
}

impl CallStatus {
    /// The status as a lowercase word (`ok`, `failed`, `cancelled`, `skipped`).
    pub fn as_str(self) -> &'static str {
        match self {
            CallStatus::Ok => "ok",
            CallStatus::Failed => "failed",
            CallStatus::Cancelled => "cancelled",
            CallStatus::Skipped => "skipped",
        }
    }
}

/// One model call of a run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CallTrace {
    /// `provider:model`.
    pub model: String,
    pub status: CallStatus,
    /// The answer (proposers: stripped, as used for references).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The typed error behind `error`, for front ends that map it (HTTP statuses).
    #[serde(skip)]
    pub failure: Option<crate::provider::ProviderError>,
    /// The tools the model called (the aggregator only: proposers are offered none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<crate::message::ToolCall>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<String>,
    /// Per token of the answer, its log probability, when asked for and given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Vec<crate::completion::TokenLogprob>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// The provider reported no usage, so `usage` is moa's estimate (four characters a token).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub usage_estimated: bool,
    /// US dollars for this call, when its model has a price (set when the run is tallied).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<f64>,
    /// Which attempt answered: more than 1 when the provider retried (a 429, a 5xx, a broken
    /// connection) before it succeeded. 0 for calls that did not answer.
    #[serde(skip_serializing_if = "is_first")]
    pub attempts: u32,
    /// The call's span id in the run's trace, when the run gave calls spans
    /// ([`crate::RunRequest::call_spans`]).
    #[serde(skip)]
    pub span_id: Option<u64>,
    /// When the call started, from the start of the run.
    pub started_ms: u64,
    /// Time to the first text, if any arrived.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_token_ms: Option<u64>,
    pub latency_ms: u64,
}

impl CallTrace {
    /// A call of `model` that has not produced anything (yet): fill in what happened.
    pub fn new(model: String) -> Self {
        Self {
            model,
            status: CallStatus::Ok,
            answer: None,
            error: None,
            failure: None,
            tool_calls: Vec::new(),
            finish_reason: None,
            logprobs: None,
            usage: None,
            usage_estimated: false,
            cost: None,
            attempts: 0,
            span_id: None,
            started_ms: 0,
            first_token_ms: None,
            latency_ms: 0,
        }
    }
}

/// One proposer layer of a run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LayerTrace {
    pub layer: usize,
    pub calls: Vec<CallTrace>,
    pub elapsed_ms: u64,
}

/// The full record of a run: every answer of every layer, usage per model, timings.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Trace {
    pub preset: String,
    pub layers: Vec<LayerTrace>,
    pub aggregator: CallTrace,
    /// The aggregator's further calls when the request asked for several choices (`n`): choice
    /// 1, 2, ... over the same references.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub other_choices: Vec<CallTrace>,
    /// The aggregator's calls over the earlier windows of references (Self-MoA-Seq, see
    /// `RunPolicy::aggregate_window`), in order; the last window's is `aggregator`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<CallTrace>,
    /// Calls that repaired an answer whose format failed the check (`response_format`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub repairs: Vec<CallTrace>,
    /// What the client should know about the answer: an answer that still failed its format
    /// check after a repair, when the format is not strict.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// What the run's policy gave up to finish sooner or at all: cancelled proposers, an
    /// aggregator replaced by a proposal. Empty when the run did everything its plan says.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub degraded: Vec<Degraded>,
    /// The proposer layer whose answers agreed, when the run exited early.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub early_exit: Option<usize>,
    /// The final answer, as streamed.
    pub answer: String,
    /// Token counts per `provider:model`, summed over every call the model made.
    pub usage_by_model: BTreeMap<String, Usage>,
    /// Token counts over the whole run.
    pub usage: Usage,
    /// US dollars per `provider:model`, for the models with a known price.
    pub cost_by_model: BTreeMap<String, f64>,
    /// US dollars for the whole run; `None` if a model that reported usage has no price.
    pub cost: Option<f64>,
    pub elapsed_ms: u64,
}

/// One thing a run's policy gave up (see [`Trace::degraded`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Degraded {
    /// The proposer layer, or `None` for the aggregator.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer: Option<usize>,
    /// `provider:model` of the call given up.
    pub model: String,
    pub kind: DegradedKind,
    /// What happened, in words (may quote an upstream's error: for the user, not for clients
    /// of a server).
    pub reason: String,
}

/// What was given up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DegradedKind {
    /// A proposer still running when its layer's quorum was in (and the grace had passed).
    Cancelled,
    /// The aggregator failed; a proposal answered instead.
    Fallback,
    /// A call's `max_tokens` was lowered to keep the run within its limits.
    Capped,
    /// A proposer layer was not run: the run's limits left too little for it.
    Skipped,
    /// A reference was cut to fit the aggregator's context window.
    Trimmed,
}

impl Trace {
    /// Every call of the run: the proposers layer by layer, then the aggregator, its other
    /// choices, its earlier windows and its repairs.
    pub fn calls(&self) -> impl Iterator<Item = &CallTrace> {
        self.layers
            .iter()
            .flat_map(|l| &l.calls)
            .chain(std::iter::once(&self.aggregator))
            .chain(&self.other_choices)
            .chain(&self.windows)
            .chain(&self.repairs)
    }

    /// Sums usage and cost per model and in total from the calls.
    pub(crate) fn tally(&mut self, prices: &PriceTable) {
        let mut by_model: BTreeMap<String, Usage> = BTreeMap::new();
        let mut total = Usage::default();
        let calls = self
            .layers
            .iter_mut()
            .flat_map(|l| l.calls.iter_mut())
            .chain(std::iter::once(&mut self.aggregator))
            .chain(self.other_choices.iter_mut())
            .chain(self.windows.iter_mut())
            .chain(self.repairs.iter_mut());
        for call in calls {
            if let Some(usage) = &call.usage {
                call.cost = prices.cost(&call.model, usage);
                by_model.entry(call.model.clone()).or_default().add(usage);
                total.add(usage);
            }
        }
        let mut cost = Some(0.0);
        self.cost_by_model.clear();
        for (model, usage) in &by_model {
            match prices.cost(model, usage) {
                Some(c) => {
                    self.cost_by_model.insert(model.clone(), c);
                    cost = cost.map(|sum| sum + c);
                }
                None => cost = None,
            }
        }
        self.cost = cost;
        self.usage_by_model = by_model;
        self.usage = total;
    }
}
