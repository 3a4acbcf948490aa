//! The chat-completions request as clients send it, and the response and chunk shapes they expect.

use moa_core::{
    CallTrace, Message, PresetChanges, PromptStyle, ResponseFormat, Role, RunEvent, RunRequest,
    TokenLogprob, ToolChoice, ToolDef, Tools, Trace, Usage,
};
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// `POST /v1/chat/completions` as moa takes it. Every field OpenAI defines is honoured, ignored
/// as harmless, or refused by name (see [`FIELDS`]); nothing is dropped silently.
#[derive(Debug)]
pub struct ChatRequest {
    pub model: String,
    pub stream: bool,
    pub include_usage: bool,
    pub include_proposals: bool,
    /// Send the proposers' progress as extra chunks (`{"moa": {"stream_proposals": true}}`).
    pub stream_proposals: bool,
    /// Changes to the preset for this request (`moa.proposers`, `moa.layers`, ...).
    pub changes: PresetChanges,
    /// `moa.min_proposals`, `moa.timeout` (seconds; 0 for none).
    pub min_proposals: Option<usize>,
    pub timeout: Option<Option<std::time::Duration>>,
    /// The run: messages, the client's sampling fields for the aggregator, tools.
    pub run: RunRequest,
}

/// What happens to each request field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Treatment {
    /// Read by moa itself (model, messages, stream, ...).
    Read,
    /// Sent with the aggregator's call; proposers keep the preset's settings.
    Aggregator,
    /// Accepted and ignored: it changes nothing a client can see.
    Ignored,
    /// Accepted with its neutral value (given); refused otherwise, with the reason.
    NeutralOnly(&'static str),
}

/// Every chat-completions field and what moa does with it; the README's table follows this.
pub const FIELDS: &[(&str, Treatment)] = &[
    ("model", Treatment::Read),
    ("messages", Treatment::Read),
    ("stream", Treatment::Read),
    ("stream_options", Treatment::Read),
    ("moa", Treatment::Read),
    ("n", Treatment::Read),
    ("response_format", Treatment::Read),
    ("temperature", Treatment::Aggregator),
    ("max_tokens", Treatment::Aggregator),
    ("max_completion_tokens", Treatment::Aggregator),
    ("top_p", Treatment::Aggregator),
    ("stop", Treatment::Aggregator),
    ("seed", Treatment::Aggregator),
    ("frequency_penalty", Treatment::Aggregator),
    ("presence_penalty", Treatment::Aggregator),
    ("logit_bias", Treatment::Aggregator),
    ("reasoning_effort", Treatment::Aggregator),
    ("verbosity", Treatment::Aggregator),
    ("user", Treatment::Ignored),
    ("metadata", Treatment::Ignored),
    ("store", Treatment::Ignored),
    ("service_tier", Treatment::Ignored),
    ("tools", Treatment::Read),
    ("tool_choice", Treatment::Read),
    ("parallel_tool_calls", Treatment::Read),
    ("prompt_cache_key", Treatment::Ignored),
    ("safety_identifier", Treatment::Ignored),
    (
        "functions",
        Treatment::NeutralOnly("`functions` is OpenAI's deprecated form; send `tools`"),
    ),
    (
        "function_call",
        Treatment::NeutralOnly("`function_call` is OpenAI's deprecated form; send `tool_choice`"),
    ),
    ("logprobs", Treatment::Aggregator),
    ("top_logprobs", Treatment::Aggregator),
    (
        "modalities",
        Treatment::NeutralOnly("moa answers in text; send [\"text\"]"),
    ),
    ("audio", Treatment::NeutralOnly("moa answers in text")),
    (
        "prediction",
        Treatment::NeutralOnly("predicted outputs are not supported"),
    ),
    (
        "web_search_options",
        Treatment::NeutralOnly("web search is not supported"),
    ),
];

/// Whether `value` is the field's neutral value: what asks for nothing.
fn neutral(field: &str, value: &Value) -> bool {
    match (field, value) {
        (_, Value::Null) => true,
        ("n", v) => v.as_u64() == Some(1),
        ("functions", Value::Array(a)) => a.is_empty(),
        ("function_call", v) => v.as_str() == Some("none"),
        ("logprobs", v) => v.as_bool() == Some(false),
        ("top_logprobs", v) => v.as_u64() == Some(0),
        ("modalities", v) => *v == json!(["text"]),
        _ => false,
    }
}

/// The most choices (`n`) one request may ask for: each is a call to the aggregator.
pub const MAX_CHOICES: u64 = 8;

/// Why a request body cannot be taken: the message names the field.
pub type Refusal = String;

impl ChatRequest {
    /// Reads and checks a request body.
    pub fn parse(body: &[u8]) -> Result<Self, Refusal> {
        let map: Map<String, Value> = serde_json::from_slice(body)
            .map_err(|e| format!("the request body is not a valid chat completion request: {e}"))?;
        let mut request = ChatRequest {
            model: String::new(),
            stream: false,
            include_usage: false,
            include_proposals: false,
            stream_proposals: false,
            changes: PresetChanges::default(),
            min_proposals: None,
            timeout: None,
            run: RunRequest::default(),
        };
        let mut model = None;
        let mut messages = None;
        let mut tools = Tools::default();
        let mut proposers_after_tool_result = false;
        for (field, value) in map {
            let treatment = FIELDS
                .iter()
                .find(|(name, _)| *name == field)
                .map(|(_, t)| *t)
                .ok_or_else(|| {
                    format!(
                        "unknown field `{field}`: moa serve takes OpenAI's chat completion \
                         fields (see the README's table) and its own `moa` object"
                    )
                })?;
            let bad = |what: &str| format!("`{field}` {what}");
            match treatment {
                Treatment::Read => match field.as_str() {
                    "model" => {
                        model = Some(
                            value
                                .as_str()
                                .ok_or_else(|| bad("must be a string"))?
                                .to_string(),
                        )
                    }
                    "messages" => {
                        messages = Some(
                            serde_json::from_value::<Vec<Message>>(value)
                                .map_err(|e| format!("`messages`: {e}"))?,
                        )
                    }
                    "stream" => request.stream = value.as_bool().unwrap_or(false),
                    "stream_options" => {
                        request.include_usage = value
                            .get("include_usage")
                            .and_then(Value::as_bool)
                            .unwrap_or(false)
                    }
                    "tools" if value.is_null() => {}
                    "tools" => tools.defs = ToolDef::parse_openai(value)?,
                    "tool_choice" if value.is_null() => {}
                    "tool_choice" => tools.choice = Some(parse_tool_choice(&value)?),
                    "parallel_tool_calls" => tools.parallel = value.as_bool(),
                    "response_format" => request.run.response_format = parse_format(&value)?,
                    "n" if value.is_null() => {}
                    "n" => {
                        request.run.n = value
                            .as_u64()
                            .filter(|n| (1..=MAX_CHOICES).contains(n))
                            .ok_or_else(|| bad(&format!("must be 1 to {MAX_CHOICES}")))?
                            as usize
                    }
                    _ => {
                        let extension: Extension =
                            serde_json::from_value(value).map_err(|e| format!("`moa`: {e}"))?;
                        request.include_proposals = extension.include_proposals;
                        proposers_after_tool_result = extension.proposers_after_tool_result;
                        request.stream_proposals = extension.stream_proposals;
                        request.min_proposals = extension.min_proposals;
                        request.timeout = match extension.timeout {
                            None => None,
                            Some(t) if t.is_finite() && t >= 0.0 => Some((t > 0.0).then(|| {
                                std::time::Duration::try_from_secs_f64(t)
                                    .unwrap_or(std::time::Duration::MAX)
                            })),
                            Some(_) => {
                                return Err("`moa.timeout` must be seconds, 0 for none".into())
                            }
                        };
                        let prompt_style = extension
                            .prompt_style
                            .as_deref()
                            .map(PromptStyle::parse)
                            .transpose()
                            .map_err(|e| format!("`moa.prompt_style` {e}"))?;
                        let policy = extension.policy()?;
                        request.changes = PresetChanges {
                            proposers: extension.proposers,
                            aggregator: extension.aggregator,
                            layers: extension.layers,
                            proposer_temperature: extension.proposer_temperature,
                            proposer_max_tokens: extension.proposer_max_tokens,
                            prompt_style,
                            policy,
                            ..PresetChanges::default()
                        };
                        if extension.stream_proposals {
                            request.run.stream_proposers = Some(true);
                        }
                    }
                },
                // `logprobs: false` asks for nothing: not sent, so models without log
                // probabilities take it.
                Treatment::Aggregator if neutral(&field, &value) => {}
                Treatment::Aggregator => match field.as_str() {
                    "temperature" => {
                        request.run.aggregator.temperature =
                            Some(value.as_f64().ok_or_else(|| bad("must be a number"))?)
                    }
                    "max_tokens" | "max_completion_tokens" => {
                        let n = value
                            .as_u64()
                            .and_then(|n| u32::try_from(n).ok())
                            .filter(|n| *n > 0)
                            .ok_or_else(|| bad("must be a positive whole number"))?;
                        request.run.aggregator.max_tokens = Some(n);
                    }
                    _ => {
                        request.run.aggregator.extra.insert(field, value);
                    }
                },
                Treatment::Ignored => {}
                Treatment::NeutralOnly(why) => {
                    if !neutral(&field, &value) {
                        return Err(format!("`{field}` is not supported here: {why}"));
                    }
                }
            }
        }
        request.model =
            model.ok_or("`model` is missing: name a preset (GET /v1/models lists them)")?;
        let messages: Vec<Message> = messages.ok_or("`messages` is missing")?;
        match &tools.choice {
            Some(ToolChoice::Function(name)) if !tools.defs.iter().any(|t| &t.name == name) => {
                return Err(format!(
                    "`tool_choice` names `{name}`, which is not among `tools`"
                ))
            }
            Some(ToolChoice::Required) if tools.defs.is_empty() => {
                return Err("`tool_choice` is \"required\" but `tools` is empty".into())
            }
            _ => {}
        }
        // An agent loop's turn after a tool result goes to the aggregator alone unless the
        // client asks otherwise: the aggregator has the result and the whole history, and the
        // loop's next step is usually mechanical; proposers would cost P calls and a layer of
        // latency on every step.
        request.run.skip_proposers =
            messages.last().is_some_and(|m| m.role == Role::Tool) && !proposers_after_tool_result;
        request.run.messages = messages;
        if !tools.defs.is_empty() {
            request.run.tools = Some(tools);
        }
        Ok(request)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Extension {
    /// `{"moa": {"include_proposals": true}}` adds the proposers' answers to the response.
    #[serde(default)]
    pub include_proposals: bool,
    /// Run the proposers even when the last message is a tool result.
    #[serde(default)]
    pub proposers_after_tool_result: bool,
    /// Stream every proposer's progress as extra chunks (see [`progress`]).
    #[serde(default)]
    pub stream_proposals: bool,
    /// This request's proposers (`provider:model`, every proposer layer).
    #[serde(default)]
    pub proposers: Option<Vec<String>>,
    #[serde(default)]
    pub aggregator: Option<String>,
    /// MoA layers (proposer layers + 1).
    #[serde(default)]
    pub layers: Option<usize>,
    #[serde(default)]
    pub proposer_temperature: Option<f64>,
    #[serde(default)]
    pub proposer_max_tokens: Option<u32>,
    #[serde(default)]
    pub min_proposals: Option<usize>,
    /// Seconds per model call; 0 for none.
    #[serde(default)]
    pub timeout: Option<f64>,
    #[serde(default)]
    pub prompt_style: Option<String>,
    /// The run policy: a layer completes once this many proposers answered...
    #[serde(default)]
    pub quorum: Option<usize>,
    /// ...and this many milliseconds have passed since.
    #[serde(default)]
    pub grace_ms: Option<u64>,
    #[serde(default)]
    pub early_exit: Option<bool>,
    #[serde(default)]
    pub fallback: Option<bool>,
    /// US dollars this run may cost.
    #[serde(default)]
    pub max_cost: Option<f64>,
    #[serde(default)]
    pub max_tokens_total: Option<u64>,
    /// Milliseconds this run may take.
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    #[serde(default)]
    pub reference_max_tokens: Option<u32>,
    #[serde(default)]
    pub aggregate_window: Option<usize>,
}

impl Extension {
    /// The run policy's changes, checked with errors that name `moa.<setting>`.
    fn policy(&self) -> Result<moa_core::PolicyChanges, Refusal> {
        let changes = moa_core::PolicyChanges {
            quorum: self.quorum,
            grace: self.grace_ms.map(std::time::Duration::from_millis),
            early_exit: self.early_exit,
            fallback: self.fallback,
            max_cost: self.max_cost,
            max_tokens_total: self.max_tokens_total,
            deadline: self.deadline_ms.map(std::time::Duration::from_millis),
            reference_max_tokens: self.reference_max_tokens,
            aggregate_window: self.aggregate_window,
        };
        changes
            .apply(moa_core::RunPolicy::default(), |name| match name {
                // The request spells the durations in milliseconds.
                "deadline" | "grace" => format!("`moa.{name}_ms`"),
                name => format!("`moa.{name}`"),
            })
            .map(|_| changes)
    }
}

/// A proposer's progress as an extra chunk: `choices` empty (as in the usage chunk, so clients
/// that read usage read past it) and the event in `moa`. A failure says only that it failed:
/// what an upstream wrote never reaches clients.
pub fn progress(env: &Envelope, event: &RunEvent) -> Option<bytes::Bytes> {
    let body = match event {
        RunEvent::ProposerFailed {
            layer,
            index,
            model,
            latency_ms,
            ..
        } => json!({"event": "proposer_failed", "layer": layer, "index": index,
                    "model": model, "latency_ms": latency_ms}),
        RunEvent::Fallback { layer, model, .. } => {
            json!({"event": "fallback", "layer": layer, "model": model})
        }
        RunEvent::LayerStarted { .. }
        | RunEvent::ProposerStarted { .. }
        | RunEvent::ProposerCancelled { .. }
        | RunEvent::EarlyExit { .. }
        | RunEvent::ProposerDelta { .. }
        | RunEvent::ProposerDone { .. }
        | RunEvent::LayerDone { .. }
        | RunEvent::AggregatorStarted { .. } => serde_json::to_value(event).ok()?,
        _ => return None,
    };
    Some(chunk(env, json!([]), Some(("moa", body))))
}

/// OpenAI's `response_format`: text (nothing to check), json_object, or json_schema.
fn parse_format(value: &Value) -> Result<Option<ResponseFormat>, Refusal> {
    match value.get("type").and_then(Value::as_str) {
        None if value.is_null() => Ok(None),
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(ResponseFormat::JsonObject)),
        Some("json_schema") => {
            let spec = value
                .get("json_schema")
                .ok_or("`response_format` of type json_schema needs `json_schema`")?;
            let name = spec.get("name").and_then(Value::as_str).unwrap_or("answer");
            let schema = spec
                .get("schema")
                .cloned()
                .ok_or("`response_format.json_schema` needs `schema`")?;
            let strict = spec.get("strict").and_then(Value::as_bool).unwrap_or(false);
            ResponseFormat::json_schema(name.to_string(), schema, strict)
                .map(Some)
                .map_err(|e| format!("`response_format.json_schema.schema`: {e}"))
        }
        _ => Err("`response_format` must be of type text, json_object or json_schema".into()),
    }
}

/// OpenAI's `tool_choice`: "auto", "none", "required" or {"type": "function", "function": {"name"}}.
fn parse_tool_choice(value: &Value) -> Result<ToolChoice, Refusal> {
    match value {
        Value::String(s) => match s.as_str() {
            "auto" => Ok(ToolChoice::Auto),
            "none" => Ok(ToolChoice::None),
            "required" => Ok(ToolChoice::Required),
            other => Err(format!("`tool_choice` \"{other}\" is not one of auto, none, required")),
        },
        _ => value
            .get("function")
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
            .map(|name| ToolChoice::Function(name.to_string()))
            .ok_or_else(|| "`tool_choice` must be auto, none, required or {\"type\": \"function\", \"function\": {\"name\": …}}".to_string()),
    }
}

/// What identifies one response across its chunks.
pub struct Envelope {
    pub id: String,
    pub created: u64,
    pub model: String,
    /// `data: {"id":…,"object":"chat.completion.chunk","created":…,"model":…,"choices":[{"index":0,"delta":{"content":`
    /// built once, so each content delta costs one allocation and one string escape.
    delta_prefix: String,
}

impl Envelope {
    pub fn new(id: String, created: u64, model: String) -> Self {
        let head = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model});
        let mut delta_prefix = format!("data: {head}");
        delta_prefix.pop(); // the closing brace: choices follow
        delta_prefix.push_str(r#","choices":[{"index":0,"delta":{"content":"#);
        Self {
            id,
            created,
            model,
            delta_prefix,
        }
    }
}

const DELTA_SUFFIX: &str = "},\"logprobs\":null,\"finish_reason\":null}]}\n\n";

/// OpenAI's usage object; prompt tokens read from providers' caches in
/// `prompt_tokens_details.cached_tokens`, as OpenAI reports its own.
fn usage_json(usage: &Usage) -> Value {
    let mut json = json!({
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    });
    if usage.cached_tokens > 0 {
        json["prompt_tokens_details"] = json!({"cached_tokens": usage.cached_tokens});
    }
    json
}

/// The extension's block: every proposer's answer and usage per model.
pub fn proposals(trace: &Trace) -> Value {
    let layers: Vec<Value> = trace
        .layers
        .iter()
        .map(|layer| {
            let calls: Vec<Value> = layer.calls.iter().map(call_json).collect();
            json!({"layer": layer.layer, "calls": calls, "elapsed_ms": layer.elapsed_ms})
        })
        .collect();
    // The aggregator's call without its answer (that is the response's content).
    let mut aggregator = call_json(&trace.aggregator);
    if let Some(call) = aggregator.as_object_mut() {
        call.remove("answer");
        call.remove("logprobs");
    }
    json!({
        "preset": trace.preset,
        "layers": layers,
        "aggregator": aggregator,
        "usage_by_model": trace.usage_by_model,
        "cost_by_model": trace.cost_by_model,
        "cost": trace.cost,
    })
}

/// One call as the client sees it: a failed call says how it failed in the client's terms,
/// never what an upstream wrote.
fn call_json(call: &CallTrace) -> Value {
    let mut value = json!(call);
    if call.error.is_some() {
        let summary = call
            .failure
            .as_ref()
            .map_or_else(|| call.error.clone().unwrap_or_default(), |f| f.summary());
        value["error"] = json!(summary);
    }
    value
}

/// The answer's message: its text, and the tools the aggregator called (content `null` when
/// there is no text, as OpenAI writes it).
fn message(call: &CallTrace) -> Value {
    let answer = call.answer.as_deref().unwrap_or_default();
    let calls = &call.tool_calls;
    if calls.is_empty() {
        return json!({"role": "assistant", "content": answer});
    }
    let content = match answer.is_empty() {
        true => Value::Null,
        false => json!(answer),
    };
    let calls: Vec<Value> = calls
        .iter()
        .map(|c| {
            json!({"id": c.id, "type": "function",
                   "function": {"name": c.name, "arguments": c.arguments}})
        })
        .collect();
    json!({"role": "assistant", "content": content, "tool_calls": calls})
}

/// A streamed piece of tool call `index`: the first carries its id, type and name.
pub fn tool_call_delta(
    env: &Envelope,
    choice: usize,
    index: usize,
    id: Option<&str>,
    name: Option<&str>,
    arguments: &str,
) -> bytes::Bytes {
    let mut call = json!({"index": index});
    if let Some(id) = id {
        call["id"] = json!(id);
        call["type"] = json!("function");
    }
    let mut function = json!({"arguments": arguments});
    if let Some(name) = name {
        function["name"] = json!(name);
    }
    call["function"] = function;
    chunk(
        env,
        json!([{"index": choice, "delta": {"tool_calls": [call]}, "logprobs": null, "finish_reason": null}]),
        None,
    )
}

/// The aggregator's calls, one per choice.
pub fn choices(trace: &Trace) -> impl Iterator<Item = &CallTrace> {
    std::iter::once(&trace.aggregator).chain(&trace.other_choices)
}

/// A choice's finish reason, `stop` when its provider gave none.
pub fn finish_reason(call: &CallTrace) -> String {
    call.finish_reason.clone().unwrap_or_else(|| "stop".into())
}

/// A whole `chat.completion`; `moa` is its extension block, if any ([`moa_block`]).
pub fn completion(env: &Envelope, trace: &Trace, moa: Option<Value>) -> Value {
    let mut body = json!({
        "id": env.id,
        "object": "chat.completion",
        "created": env.created,
        "model": env.model,
        "choices": choices(trace)
            .enumerate()
            .map(|(index, call)| json!({
                "index": index,
                "message": message(call),
                "logprobs": call.logprobs.as_deref().map(logprobs_json),
                "finish_reason": finish_reason(call),
            }))
            .collect::<Vec<_>>(),
        "usage": usage_json(&trace.usage),
    });
    if let Some(moa) = moa {
        body["moa"] = moa;
    }
    body
}

/// The response's `moa` block: every proposal when asked for, the plan that ran when the
/// request changed it or asked, and always what the client should know about the answer
/// (format warnings, what the run's policy gave up, an early exit). `None` when empty. What
/// was given up names the model and the kind only: what an upstream wrote never reaches
/// clients.
pub fn moa_block(trace: &Trace, with_proposals: bool, plan: Option<&Value>) -> Option<Value> {
    let mut moa = match with_proposals {
        true => proposals(trace),
        false => json!({}),
    };
    if let Some(plan) = plan {
        moa["plan"] = plan.clone();
    }
    if !trace.warnings.is_empty() {
        moa["warnings"] = json!(trace.warnings);
    }
    if !trace.degraded.is_empty() {
        moa["degraded"] = trace
            .degraded
            .iter()
            .map(|d| json!({"layer": d.layer, "model": d.model, "kind": d.kind}))
            .collect();
    }
    if let Some(layer) = trace.early_exit {
        moa["early_exit"] = json!({"layer": layer});
    }
    (moa != json!({})).then_some(moa)
}

/// A choice's `logprobs` as OpenAI writes them: per token, its text, log probability, UTF-8
/// bytes, and the alternatives likewise.
pub fn logprobs_json(tokens: &[TokenLogprob]) -> Value {
    let entry = |token: &str, logprob: f64| json!({"token": token, "logprob": logprob, "bytes": token.as_bytes()});
    let content: Vec<Value> = tokens
        .iter()
        .map(|t| {
            let mut e = entry(&t.token, t.logprob);
            e["top_logprobs"] = t
                .top_logprobs
                .iter()
                .map(|a| entry(&a.token, a.logprob))
                .collect();
            e
        })
        .collect();
    json!({"content": content, "refusal": null})
}

/// A chunk with the log probabilities of choice `choice`'s last tokens (its text came in the
/// chunk before; clients join `logprobs.content` across chunks).
pub fn logprobs_delta(env: &Envelope, choice: usize, tokens: &[TokenLogprob]) -> bytes::Bytes {
    chunk(
        env,
        json!([{"index": choice, "delta": {}, "logprobs": logprobs_json(tokens), "finish_reason": null}]),
        None,
    )
}

/// One `chat.completion.chunk` as an SSE frame.
pub fn chunk(env: &Envelope, choices: Value, extra: Option<(&str, Value)>) -> bytes::Bytes {
    let mut body = json!({
        "id": env.id,
        "object": "chat.completion.chunk",
        "created": env.created,
        "model": env.model,
        "choices": choices,
    });
    if let Some((key, value)) = extra {
        body[key] = value;
    }
    bytes::Bytes::from(format!("data: {body}\n\n"))
}

/// The first chunks: the assistant role and empty content, one per choice.
pub fn opening(env: &Envelope, choices: usize) -> bytes::Bytes {
    let frames: Vec<u8> = (0..choices.max(1))
        .flat_map(|index| {
            chunk(
                env,
                json!([{"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]),
                None,
            )
        })
        .collect();
    bytes::Bytes::from(frames)
}

/// A content delta of `choice`.
pub fn delta(env: &Envelope, choice: usize, text: &str) -> bytes::Bytes {
    if choice == 0 {
        return delta_first(env, text);
    }
    chunk(
        env,
        json!([{"index": choice, "delta": {"content": text}, "logprobs": null, "finish_reason": null}]),
        None,
    )
}

/// A content delta of the first choice: the envelope's prefix, the text as a JSON string, the
/// fixed suffix.
fn delta_first(env: &Envelope, text: &str) -> bytes::Bytes {
    let mut frame =
        Vec::with_capacity(env.delta_prefix.len() + text.len() + 2 + DELTA_SUFFIX.len() + 8);
    frame.extend_from_slice(env.delta_prefix.as_bytes());
    // Writing a str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut frame, text);
    frame.extend_from_slice(DELTA_SUFFIX.as_bytes());
    bytes::Bytes::from(frame)
}

/// The chunks that close the choices.
pub fn finish(env: &Envelope, trace: &Trace) -> Vec<u8> {
    choices(trace)
        .enumerate()
        .flat_map(|(index, call)| {
            chunk(
                env,
                json!([{"index": index, "delta": {}, "logprobs": null, "finish_reason": finish_reason(call)}]),
                None,
            )
        })
        .collect()
}

/// The usage chunk (`choices` empty), as OpenAI sends it with include_usage.
pub fn usage_chunk(env: &Envelope, usage: &Usage) -> bytes::Bytes {
    chunk(env, json!([]), Some(("usage", usage_json(usage))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delta_frame_is_the_chunk_json_with_the_text_escaped() {
        let env = Envelope::new("chatcmpl-1".into(), 7, "m\"x".into());
        for text in [
            "plain",
            "quote \" backslash \\ newline \n tab \t",
            "é ✓ 🦀",
            "\u{1}",
        ] {
            let frame = delta(&env, 0, text);
            let frame = std::str::from_utf8(&frame).unwrap();
            let body = frame
                .strip_prefix("data: ")
                .and_then(|f| f.strip_suffix("\n\n"))
                .unwrap();
            let parsed: Value = serde_json::from_str(body).unwrap();
            assert_eq!(
                parsed,
                json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": "m\"x",
                    "choices": [{"index": 0, "delta": {"content": text}, "logprobs": null, "finish_reason": null}]})
            );
            let other = delta(&env, 2, text);
            let other: Value = serde_json::from_str(
                std::str::from_utf8(&other)
                    .unwrap()
                    .strip_prefix("data: ")
                    .unwrap()
                    .trim_end(),
            )
            .unwrap();
            assert_eq!(other["choices"][0]["index"], 2);
            assert_eq!(other["choices"][0]["delta"]["content"], text);
        }
    }
}
