//! The MoA engine: a [`Plan`] (a preset bound to providers) run over a conversation.
//!
//! Layer 1 proposers see the user's messages unchanged; proposers of later layers and the
//! aggregator see the previous layer's answers injected by [`crate::prompt::inject_references`].
//! The proposers of one layer are called concurrently; the aggregator is streamed. A proposer that
//! fails is left out of the references; the run fails only when fewer than `min_proposals`
//! answers remain in a layer.

mod budget;
mod call;
mod layer;
mod stream;

use std::sync::Arc;
use std::time::Duration;

use crate::completion::ChatRequest;
use crate::error::MoaError;
use crate::event::{RunEvent, Trace};
use crate::message::{Message, Role};
use crate::preset::{AgentSpec, ModelRef, Preset, PresetError};
use crate::prompt::{inject_references, PromptStyle, Reference};
use crate::provider::Provider;

pub use stream::{RunStream, EMPTY_ANSWER};

/// An agent bound to the provider that will serve it.
#[derive(Clone)]
pub struct BoundAgent {
    pub spec: AgentSpec,
    /// The model id as the provider knows it.
    pub model_id: String,
    pub provider: Arc<dyn Provider>,
}

impl std::fmt::Debug for BoundAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundAgent")
            .field("spec", &self.spec)
            .field("provider", &self.provider.name())
            .finish()
    }
}

impl BoundAgent {
    /// The request this agent sends for `messages` given `references` from the previous layer.
    pub fn request(
        &self,
        messages: &[Message],
        references: &[Reference],
        style: PromptStyle,
    ) -> ChatRequest {
        let own;
        let messages = match &self.spec.system {
            Some(system) => {
                own = with_system_prompt(messages, system);
                &own[..]
            }
            None => messages,
        };
        ChatRequest {
            model: self.model_id.clone(),
            messages: inject_references(messages, references, style),
            temperature: self.spec.temperature,
            max_tokens: self.spec.max_tokens,
            extra: self.spec.extra.clone(),
            tools: None,
            response_format: None,
            // The conversation as sent is the stable prefix; the references come after it.
            cache_prefix: (style == PromptStyle::Appended).then_some(messages.len()),
            correlation: Default::default(),
        }
    }
}

/// Puts an agent's own system prompt first: before an existing leading system message's text
/// (separated by a blank line), or as a new leading system message.
pub(crate) fn with_system_prompt(messages: &[Message], system: &str) -> Vec<Message> {
    let mut out = messages.to_vec();
    match out.first_mut() {
        Some(first) if first.role == Role::System => {
            first.content = format!("{system}\n\n{}", first.content);
        }
        _ => out.insert(0, Message::system(system)),
    }
    out
}

/// A preset bound to providers, ready to run.
#[derive(Clone, Debug)]
pub struct Plan {
    pub preset: String,
    pub layers: Vec<Vec<BoundAgent>>,
    pub aggregator: BoundAgent,
    pub prompt_style: PromptStyle,
    pub policy: crate::policy::RunPolicy,
}

impl Plan {
    /// Binds every agent of `preset` to the provider `resolve` returns for its `provider:` part.
    pub fn bind<E>(
        preset: &Preset,
        mut resolve: impl FnMut(&ModelRef) -> Result<Arc<dyn Provider>, E>,
    ) -> Result<Plan, E>
    where
        E: From<PresetError>,
    {
        let mut bind = |spec: &AgentSpec| -> Result<BoundAgent, E> {
            let model = spec.model_ref()?;
            Ok(BoundAgent {
                provider: resolve(&model)?,
                model_id: model.model,
                spec: spec.clone(),
            })
        };
        let mut layers = Vec::with_capacity(preset.layers.len());
        for (i, layer) in preset.layers.iter().enumerate() {
            if layer.is_empty() {
                return Err(PresetError::EmptyLayer {
                    preset: preset.name.clone(),
                    layer: i + 1,
                }
                .into());
            }
            layers.push(layer.iter().map(&mut bind).collect::<Result<Vec<_>, E>>()?);
        }
        Ok(Plan {
            preset: preset.name.clone(),
            aggregator: bind(&preset.aggregator)?,
            layers,
            prompt_style: preset.prompt_style,
            policy: preset.policy.clone(),
        })
    }
}

impl Plan {
    /// The preset this plan was bound from (its description aside).
    pub fn preset(&self) -> Preset {
        Preset {
            name: self.preset.clone(),
            description: String::new(),
            layers: self
                .layers
                .iter()
                .map(|layer| layer.iter().map(|a| a.spec.clone()).collect())
                .collect(),
            aggregator: self.aggregator.spec.clone(),
            prompt_style: self.prompt_style,
            policy: self.policy.clone(),
        }
    }

    /// The request proposer `agent` of this plan sends over `messages` (as the proposers see
    /// them: plain text) and the previous layer's `references`: the agent's own settings, the
    /// run's `changes` over them, and the policy's cap on a reference's length. A run's layers
    /// are built with it, and so is a batch of proposer calls.
    pub fn proposer_request(
        &self,
        agent: &BoundAgent,
        messages: &[Message],
        references: &[Reference],
        changes: &CallOverrides,
    ) -> ChatRequest {
        let mut request = agent.request(messages, references, self.prompt_style);
        changes.apply(&mut request);
        if let Some(cap) = self.policy.reference_max_tokens {
            let own = request.max_tokens.unwrap_or(cap);
            request.max_tokens = Some(own.min(cap));
        }
        request
    }

    /// The aggregator's request over `references` written by proposer layer `layer` (0: given
    /// by the caller), as a run without tools, format or windows sends it: the references
    /// trimmed to fit the aggregator's context first (each trim returned), then the run's
    /// `changes` over the aggregator's settings.
    pub fn aggregator_request(
        &self,
        messages: &[Message],
        mut references: Vec<Reference>,
        changes: &CallOverrides,
        layer: usize,
    ) -> (ChatRequest, Vec<crate::event::Degraded>) {
        let aggregator = &self.aggregator;
        let trims = stream::fit_references(
            aggregator,
            &mut references,
            messages,
            changes.max_tokens.or(aggregator.spec.max_tokens),
            layer,
        );
        let mut request = aggregator.request(messages, &references, self.prompt_style);
        changes.apply(&mut request);
        (request, trims)
    }

    /// Binds `preset` to the providers this plan already uses, by provider name: a changed
    /// preset for one request, say. A provider the plan does not use is an error naming it.
    pub fn rebind(&self, preset: &Preset) -> Result<Plan, String> {
        let known: Vec<(String, Arc<dyn Provider>)> = self
            .layers
            .iter()
            .flatten()
            .chain(std::iter::once(&self.aggregator))
            .filter_map(|a| Some((a.spec.model_ref().ok()?.provider, a.provider.clone())))
            .collect();
        Plan::bind(preset, |model| {
            known
                .iter()
                .find(|(name, _)| *name == model.provider)
                .map(|(_, provider)| provider.clone())
                .ok_or_else(|| {
                    let mut names: Vec<&str> = known.iter().map(|(n, _)| n.as_str()).collect();
                    names.dedup();
                    BindError(format!(
                        "provider `{}` is not available here (this preset uses {})",
                        model.provider,
                        names.join(", ")
                    ))
                })
        })
        .map_err(|e| e.0)
    }
}

/// A binding failure's message.
struct BindError(String);

impl From<PresetError> for BindError {
    fn from(e: PresetError) -> Self {
        Self(e.to_string())
    }
}

/// What one request changes about a call of its run, over the preset's settings.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CallOverrides {
    pub temperature: Option<f64>,
    pub max_tokens: Option<u32>,
    /// Further request fields (stop, seed, top_p, ...), replacing the preset's of the same name.
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl CallOverrides {
    /// Writes these over `request`.
    pub fn apply(&self, request: &mut ChatRequest) {
        if let Some(t) = self.temperature {
            request.temperature = Some(t);
        }
        if let Some(m) = self.max_tokens {
            request.max_tokens = Some(m);
        }
        for (key, value) in &self.extra {
            request.extra.insert(key.clone(), value.clone());
        }
    }
}

/// One run: the conversation, and what this request changes about the plan's calls. Every
/// front end (CLI, server, eval) builds one; none reshapes a plan itself.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunRequest {
    pub messages: Vec<Message>,
    /// Changes to the aggregator's call: the client's sampling fields, which shape the answer
    /// it sees. Proposers keep the preset's settings unless `proposers` changes them.
    pub aggregator: CallOverrides,
    /// Changes to every proposer's call (an eval's per-question temperature, say).
    pub proposers: CallOverrides,
    /// References given by the caller (an eval's published proposer outputs): the proposers
    /// are skipped and the aggregator reads these, injected as the run's own would be.
    pub references: Option<Vec<crate::prompt::Reference>>,
    /// Tools the aggregator may call. It then sees the conversation's tool calls and results
    /// as they are; proposers see them as text, with the tools described in their system
    /// message ([`crate::prompt::tools_text`]), and answer in text.
    pub tools: Option<crate::completion::Tools>,
    /// Go straight to the aggregator, with no references (an agent loop's turn after a tool
    /// result, say).
    pub skip_proposers: bool,
    /// How many answers the aggregator writes over the same references (OpenAI's `n`): P + n
    /// calls, not n x (P + 1). 0 and 1 both mean one.
    pub n: usize,
    /// The format the answer must have. Every agent is told it in text; the aggregator's answer
    /// is checked, repaired once if it fails, and only then sent on (in one piece).
    pub response_format: Option<crate::format::ResponseFormat>,
    /// Stream the proposers' answers as they come ([`RunOptions::stream_proposers`] if `None`).
    pub stream_proposers: Option<bool>,
    /// Sent with every model call of the run (see [`crate::Correlation::request_id`]).
    pub request_id: Option<String>,
    /// The distributed trace the run belongs to: every call sends a `traceparent` in it.
    pub trace: Option<crate::TraceContext>,
    /// Give each call a span id of its own under [`Self::trace`] (kept in
    /// [`crate::CallTrace::span_id`]) for a tracer that exports calls as spans; otherwise calls
    /// send `trace` as it is.
    pub call_spans: bool,
}

impl RunRequest {
    /// A run over `messages` as the plan has it.
    pub fn new(messages: Vec<Message>) -> Self {
        Self {
            messages,
            ..Self::default()
        }
    }
}

/// How a run behaves beyond its plan.
#[derive(Clone, Debug, PartialEq)]
pub struct RunOptions {
    /// A layer needs at least this many answers (capped at the layer's size) for the run to go on.
    pub min_proposals: usize,
    /// The longest one model call may take, retries included. `None`: no limit.
    pub timeout: Option<Duration>,
    /// Stream proposers (deltas become events) rather than ask for whole answers.
    pub stream_proposers: bool,
    /// Prices the trace's usage is costed at.
    pub prices: std::sync::Arc<crate::price::PriceTable>,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            min_proposals: 1,
            timeout: Some(Duration::from_secs(600)),
            stream_proposers: true,
            prices: std::sync::Arc::new(crate::price::PriceTable::builtin()),
        }
    }
}

/// A runnable Mixture-of-Agents: a plan and its options. Cheap to clone and share.
#[derive(Clone, Debug)]
pub struct Moa {
    plan: Arc<Plan>,
    options: RunOptions,
}

impl Moa {
    /// An engine for `plan`.
    pub fn new(plan: Plan, options: RunOptions) -> Self {
        Self {
            plan: Arc::new(plan),
            options,
        }
    }

    /// The plan this engine runs.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The run options.
    pub fn options(&self) -> &RunOptions {
        &self.options
    }

    /// Starts a run over `messages`. Nothing happens until the stream is polled; dropping the
    /// stream cancels every request in flight.
    pub fn run(&self, messages: Vec<Message>) -> RunStream {
        self.run_request(RunRequest::new(messages))
    }

    /// Starts a run of `request`: its conversation, with its changes to the plan's calls.
    pub fn run_request(&self, request: RunRequest) -> RunStream {
        RunStream::new(self.plan.clone(), self.options.clone(), request)
    }

    /// Runs to the end and returns the trace, ignoring intermediate events.
    pub async fn run_to_end(&self, messages: Vec<Message>) -> Result<Trace, MoaError> {
        self.run_request_to_end(RunRequest::new(messages)).await
    }

    /// [`Moa::run_request`] to the end: the trace, intermediate events ignored.
    pub async fn run_request_to_end(&self, request: RunRequest) -> Result<Trace, MoaError> {
        use futures::StreamExt;
        let mut stream = self.run_request(request);
        while let Some(event) = stream.next().await {
            if let RunEvent::Done(trace) = event? {
                return Ok(*trace);
            }
        }
        unreachable!("a run stream always ends with Done or an error")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_system_prompt_goes_before_the_conversations() {
        let out = with_system_prompt(&[Message::system("conv"), Message::user("u")], "agent");
        assert_eq!(out[0].content, "agent\n\nconv");
        let out = with_system_prompt(&[Message::user("u")], "agent");
        assert_eq!(out[0], Message::system("agent"));
        assert_eq!(out.len(), 2);
    }
}
