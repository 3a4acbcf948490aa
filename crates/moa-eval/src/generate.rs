//! Answers benchmark tasks with a MoA engine: every turn of a conversation in order, the
//! aggregator's answer becoming the history of the next turn (as the reference's MT-Bench
//! generator does), or, given pre-generated proposer outputs, the aggregator alone over them.

use std::time::Instant;

use moa_core::{CallOverrides, Message, Moa, Reference, RunRequest, Usage};
use serde::{Deserialize, Serialize};

use crate::runner::{Item, Record};
use crate::Task;

/// One task's outcome: a line of the generation journal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    pub key: String,
    pub hash: String,
    pub ok: bool,
    /// The answer to each turn (as many as were answered).
    pub turns: Vec<String>,
    pub error: Option<String>,
    /// US dollars; `None` when a model of the run has no known price.
    pub cost: Option<f64>,
    pub usage: Usage,
    pub latency_ms: u64,
    /// FastChat's answer id, kept so rewriting the answer file does not change it.
    pub answer_id: String,
    pub tstamp: f64,
}

impl Record for Answer {
    fn key(&self) -> String {
        self.key.clone()
    }
    fn hash(&self) -> &str {
        &self.hash
    }
    fn ok(&self) -> bool {
        self.ok
    }
    fn tokens(&self) -> u64 {
        self.usage.total_tokens
    }
    fn cost(&self) -> Option<f64> {
        self.cost
    }
    fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }
}

/// Answers tasks with one engine.
#[derive(Clone, Debug)]
pub struct Generator {
    moa: Moa,
    max_tokens: Option<u32>,
}

impl Generator {
    pub fn new(moa: Moa) -> Self {
        Self {
            moa,
            max_tokens: None,
        }
    }

    /// Caps every agent's answer length (proposers and aggregator).
    pub fn with_max_tokens(mut self, max_tokens: Option<u32>) -> Self {
        self.max_tokens = max_tokens;
        self
    }

    /// The engine it answers with.
    pub fn moa(&self) -> &Moa {
        &self.moa
    }

    /// What `task` changes about every agent's call: its temperature, and the answer cap.
    pub fn overrides(&self, task: &Task) -> CallOverrides {
        CallOverrides {
            temperature: task.temperature,
            max_tokens: self.max_tokens,
            ..CallOverrides::default()
        }
    }

    /// One turn's run: the task's changes to every agent's call, and the task's own
    /// references (if it brings any) in place of the proposers'.
    fn request(
        &self,
        task: &Task,
        history: &[Message],
        references: Option<&[Reference]>,
    ) -> RunRequest {
        let overrides = self.overrides(task);
        RunRequest {
            messages: history.to_vec(),
            aggregator: overrides.clone(),
            proposers: overrides,
            references: references.map(<[Reference]>::to_vec),
            ..RunRequest::default()
        }
    }

    /// Answers every turn of `task`; the first failure ends it.
    pub async fn answer(&self, task: Task) -> Answer {
        let started = Instant::now();
        let mut answer = blank(&task);
        let mut history: Vec<Message> = Vec::new();
        let references = given_references(&task);
        for turn in &task.turns {
            history.push(Message::user(turn.clone()));
            let request = self.request(&task, &history, references.as_deref());
            match self.moa.run_request_to_end(request).await {
                Ok(trace) => {
                    answer.usage.add(&trace.usage);
                    answer.cost = answer.cost.zip(trace.cost).map(|(a, b)| a + b);
                    // The reference strips each answer before storing and reusing it.
                    let text = trace.answer.trim().to_string();
                    history.push(Message::assistant(text.clone()));
                    answer.turns.push(text);
                }
                Err(e) => {
                    answer.error = Some(e.to_string());
                    break;
                }
            }
        }
        answer.ok = answer.error.is_none();
        answer.latency_ms = started.elapsed().as_millis() as u64;
        answer.tstamp = crate::now();
        answer
    }
}

/// The references `task` brings (pre-generated proposer outputs), named as the aggregator sees
/// them.
pub(crate) fn given_references(task: &Task) -> Option<Vec<Reference>> {
    task.references.as_ref().map(|texts| {
        texts
            .iter()
            .enumerate()
            .map(|(i, text)| Reference {
                model: format!("reference-{}", i + 1),
                text: text.clone(),
            })
            .collect()
    })
}

/// A new answer record for `task`, not yet answered.
pub(crate) fn blank(task: &Task) -> Answer {
    Answer {
        key: task.key.clone(),
        hash: task.hash(),
        ok: false,
        turns: Vec::new(),
        error: None,
        cost: Some(0.0),
        usage: Usage::default(),
        latency_ms: 0,
        answer_id: crate::mt_bench::answer_id(),
        tstamp: 0.0,
    }
}
