//! Grading with any configured model as judge: one call per comparison, answer turn or review,
//! each recorded as a [`Judgment`] line of the judge's journal.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use moa_core::{ChatRequest, Completion, Message, PriceTable, Provider};
use serde::{Deserialize, Serialize};

use crate::runner::{Item, Record};
use crate::{alpaca, flask, mt_bench};

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

    async fn call(
        &self,
        messages: Vec<Message>,
        temperature: Option<f64>,
        max_tokens: Option<u32>,
        extra: serde_json::Map<String, serde_json::Value>,
    ) -> Result<(Completion, Option<f64>), String> {
        let mut request = ChatRequest::new(self.model_id.clone(), messages);
        request.temperature = temperature;
        request.max_tokens = max_tokens;
        request.extra = extra;
        let call = self.provider.complete(request);
        let completion = match self.timeout {
            Some(limit) => tokio::time::timeout(limit, call)
                .await
                .map_err(|_| format!("the judge took longer than {}s", limit.as_secs()))?,
            None => call.await,
        }
        .map_err(|e| e.to_string())?;
        let cost = completion
            .usage
            .and_then(|u| self.prices.cost(&self.name, &u));
        Ok((completion, cost))
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
    fn key(&self) -> &str {
        &self.key
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
    fn start(key: String, hash: String) -> Self {
        Self {
            key,
            hash,
            tstamp: crate::now(),
            ..Self::default()
        }
    }

    fn failed(mut self, error: String) -> Self {
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
}

impl Item for Comparison {
    fn key(&self) -> String {
        self.index.to_string()
    }

    fn hash(&self) -> String {
        crate::fnv1a(&format!(
            "{}\u{1}{}\u{1}{}",
            self.instruction, self.baseline, self.model
        ))
    }
}

/// AlpacaEval's weighted judge on one comparison.
pub async fn alpaca(judge: &Judge, prompt: &alpaca::JudgePrompt, item: Comparison) -> Judgment {
    let mut out = Judgment::start(item.key(), item.hash());
    if item.baseline == item.model {
        out.ok = true;
        out.preference = Some(1.5);
        out.swapped = Some(false);
        out.cost = Some(0.0);
        return out;
    }
    let swapped = alpaca::is_swapped(&item.instruction);
    let (first, second) = if swapped {
        (&item.model, &item.baseline)
    } else {
        (&item.baseline, &item.model)
    };
    let messages = prompt.messages(&item.instruction, first, second);
    out.swapped = Some(swapped);
    let (completion, cost) = match judge
        .call(messages, Some(1.0), Some(1), alpaca::judge_request_fields())
        .await
    {
        Ok(r) => r,
        Err(e) => return out.failed(e),
    };
    out.cost = cost;
    out.text = completion.text.clone();
    let weighted = completion
        .logprobs
        .as_ref()
        .and_then(|l| l.first())
        .and_then(|first| alpaca::preference_from_logprobs(&first.top_logprobs));
    let (preference, is_weighted) = match weighted {
        Some(p) => (Some(p), true),
        None => (alpaca::preference_from_text(&completion.text), false),
    };
    match preference {
        Some(p) => {
            out.ok = true;
            out.preference = Some(alpaca::unswap(p, swapped));
            out.weighted = Some(is_weighted);
            out
        }
        None => {
            let text = completion.text;
            out.failed(format!("the judge answered {text:?}, neither m nor M"))
        }
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

/// FastChat's single-answer grading of one turn.
pub async fn mt_bench(
    judge: &Judge,
    prompts: &std::collections::HashMap<String, mt_bench::JudgePrompt>,
    item: Turn,
) -> Judgment {
    let out = Judgment::start(item.key(), item.hash());
    let (name, messages) = match mt_bench::judge_messages(
        prompts,
        &item.question,
        &item.answers,
        item.turn,
        item.reference.as_deref(),
    ) {
        Ok(r) => r,
        Err(e) => return out.failed(e.to_string()),
    };
    let user_prompt = messages[1].content.clone();
    let mut out = Judgment {
        user_prompt: Some(user_prompt),
        prompt_name: Some(name),
        ..out
    };
    match judge
        .call(messages, Some(0.0), Some(2048), Default::default())
        .await
    {
        Ok((completion, cost)) => {
            out.ok = true;
            out.cost = cost;
            out.score = Some(mt_bench::parse_score(&completion.text));
            out.text = completion.text;
            out
        }
        Err(e) => out.failed(e),
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

/// FLASK's review of one answer.
pub async fn flask(judge: &Judge, reviewer: &flask::Reviewer, item: Review) -> Judgment {
    let out = Judgment::start(item.key(), item.hash());
    let messages = match reviewer.messages(&item.instance, &item.response) {
        Ok(m) => m,
        Err(e) => return out.failed(e.to_string()),
    };
    // The reference writes temperature and max_tokens into its request records but does not
    // send them: the API's defaults apply.
    match judge.call(messages, None, None, Default::default()).await {
        Ok((completion, cost)) => Judgment {
            ok: true,
            cost,
            scores: flask::parse_review(&completion.text),
            text: completion.text,
            ..out
        },
        Err(e) => out.failed(e),
    }
}
