//! Grading with any configured model as judge: one call per comparison, answer turn or review
//! (the benchmark says which call and how to read the answer), each recorded as a [`Judgment`]
//! line of the judge's journal.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use moa_core::{ChatRequest, Completion, PriceTable, Provider};
use serde::{Deserialize, Serialize};

use crate::runner::{Item, Record};
use crate::suite::{Benchmark, JudgeCall, Prepared};
use crate::{flask, mt_bench};

/// A model used as judge.
#[derive(Clone)]
pub struct Judge {
    /// `provider:model`, as configured.
    pub name: String,
    provider: Arc<dyn Provider>,
    model_id: String,
    prices: Arc<PriceTable>,
    timeout: Option<Duration>,
}

impl Judge {
    pub fn new(
        name: impl Into<String>,
        provider: Arc<dyn Provider>,
        model_id: impl Into<String>,
        prices: Arc<PriceTable>,
        timeout: Option<Duration>,
    ) -> Self {
        Self {
            name: name.into(),
            provider,
            model_id: model_id.into(),
            prices,
            timeout,
        }
    }

    /// The judge provider's batch API, if it has one.
    pub fn batch_api(&self) -> Option<Arc<dyn moa_core::BatchApi>> {
        self.provider.batch()
    }

    /// The request `call` makes of the judge's model.
    pub fn request(&self, call: JudgeCall) -> ChatRequest {
        let mut request = ChatRequest::new(self.model_id.clone(), call.messages);
        request.temperature = call.temperature;
        request.max_tokens = call.max_tokens;
        request.extra = call.extra;
        request
    }

    /// What the judge's answer cost.
    pub fn cost(&self, completion: &Completion) -> Option<f64> {
        completion
            .usage
            .and_then(|u| self.prices.cost(&self.name, &u))
    }

    /// Grades one item of `bench` with one live call.
    pub async fn grade<B: Benchmark>(&self, bench: &B, item: B::Judged) -> Judgment {
        let (mut judgment, call) = match bench.prepare(&item) {
            Prepared::Done(judgment) => return judgment,
            Prepared::Call(judgment, call) => (judgment, call),
        };
        match self.call(call).await {
            Ok(completion) => {
                judgment.cost = self.cost(&completion);
                bench.verdict(&item, judgment, completion)
            }
            Err(e) => judgment.failed(e),
        }
    }

    async fn call(&self, call: JudgeCall) -> Result<Completion, String> {
        let call = self.provider.complete(self.request(call));
        match self.timeout {
            Some(limit) => tokio::time::timeout(limit, call)
                .await
                .map_err(|_| format!("the judge took longer than {}s", limit.as_secs()))?,
            None => call.await,
        }
        .map_err(|e| e.to_string())
    }
}

/// One graded item: a line of the judge's journal.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Judgment {
    pub key: String,
    pub hash: String,
    pub ok: bool,
    pub error: Option<String>,
    pub cost: Option<f64>,
    /// The judge's answer.
    pub text: String,
    /// The user prompt sent (MT-Bench's judgment files keep it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_name: Option<String>,
    /// AlpacaEval: whether the outputs were shown swapped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swapped: Option<bool>,
    /// AlpacaEval: preference in [1, 2] for the baseline (1) against the model (2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preference: Option<f64>,
    /// AlpacaEval: whether the preference came from logprobs (false: from the text alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weighted: Option<bool>,
    /// MT-Bench: the 1–10 rating, −1 when none could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    /// FLASK: score per skill key (`None` for N/A); absent when no scores could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scores: Option<BTreeMap<String, Option<f64>>>,
    pub tstamp: f64,
}

impl Record for Judgment {
    fn key(&self) -> String {
        self.key.clone()
    }
    fn hash(&self) -> &str {
        &self.hash
    }
    fn ok(&self) -> bool {
        self.ok
    }
    fn cost(&self) -> Option<f64> {
        self.cost
    }
    fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }
}

impl Judgment {
    pub(crate) fn start(key: String, hash: String) -> Self {
        Self {
            key,
            hash,
            tstamp: crate::now(),
            ..Self::default()
        }
    }

    pub(crate) fn failed(mut self, error: String) -> Self {
        self.ok = false;
        self.error = Some(error);
        self
    }
}

/// One AlpacaEval comparison: the baseline's and the model's output for an instruction.
#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    pub index: usize,
    pub instruction: String,
    pub baseline: String,
    pub model: String,
    /// Shown in the other order than AlpacaEval's (the position-bias check).
    pub flipped: bool,
}

impl Item for Comparison {
    fn key(&self) -> String {
        match self.flipped {
            false => self.index.to_string(),
            true => format!("{}/flipped", self.index),
        }
    }

    fn hash(&self) -> String {
        let flipped = if self.flipped { "\u{1}flipped" } else { "" };
        crate::fnv1a(&format!(
            "{}\u{1}{}\u{1}{}{flipped}",
            self.instruction, self.baseline, self.model
        ))
    }
}

/// One MT-Bench turn to grade.
#[derive(Clone, Debug, PartialEq)]
pub struct Turn {
    pub question: mt_bench::Question,
    pub answers: Vec<String>,
    /// 1 or 2.
    pub turn: usize,
    pub reference: Option<Vec<String>>,
}

impl Item for Turn {
    fn key(&self) -> String {
        format!("{}/{}", self.question.question_id, self.turn)
    }

    fn hash(&self) -> String {
        crate::fnv1a(&format!(
            "{}\u{1}{}",
            self.question.turns.join("\u{2}"),
            self.answers.join("\u{2}")
        ))
    }
}

/// One FLASK answer to review.
#[derive(Clone, Debug, PartialEq)]
pub struct Review {
    pub instance: flask::Instance,
    pub response: String,
}

impl Item for Review {
    fn key(&self) -> String {
        self.instance.idx.to_string()
    }

    fn hash(&self) -> String {
        crate::fnv1a(&format!(
            "{}\u{1}{}",
            self.instance.instruction, self.response
        ))
    }
}
