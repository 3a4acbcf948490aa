//! OpenTelemetry export (the `otel` feature): each finished run becomes a span, with a span per
//! proposer layer and per upstream call under it, named and attributed by the GenAI semantic
//! conventions, and sent over OTLP/HTTP (protobuf) in batches by the OpenTelemetry SDK.
//!
//! Configured by the standard variables: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (export is on when either is set, or when
//! `OTEL_TRACES_EXPORTER=otlp`), `OTEL_EXPORTER_OTLP_[TRACES_]HEADERS`,
//! `OTEL_EXPORTER_OTLP_[TRACES_]TIMEOUT`, `OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL` (http/protobuf),
//! `OTEL_SERVICE_NAME` (default `moa`), `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER[_ARG]`,
//! `OTEL_SDK_DISABLED`. Spans carry no prompt, answer, key or upstream error text.

use std::cell::Cell;
use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use moa_core::{CallStatus, CallTrace, Trace};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SdkTracer, SdkTracerProvider};

use crate::spans::{RunSpan, SpanSink};

/// The OTLP exporter: a [`SpanSink`] for [`crate::ServerConfig::spans`].
pub struct Otlp {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    /// Where spans go (for the start-up message).
    pub endpoint: String,
}

impl std::fmt::Debug for Otlp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Otlp")
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

/// The trace and span ids the next span built on this thread must have: spans are built after
/// the fact, with the ids their calls already sent upstream.
#[derive(Debug)]
struct ChosenIds;

thread_local! {
    static CHOSEN: Cell<Option<(TraceId, SpanId)>> = const { Cell::new(None) };
}

impl IdGenerator for ChosenIds {
    fn new_trace_id(&self) -> TraceId {
        CHOSEN
            .with(Cell::get)
            .map_or_else(|| RandomIdGenerator::default().new_trace_id(), |c| c.0)
    }

    fn new_span_id(&self) -> SpanId {
        CHOSEN
            .with(Cell::get)
            .map_or_else(|| RandomIdGenerator::default().new_span_id(), |c| c.1)
    }
}

impl Otlp {
    /// The exporter the process environment asks for; `None` when it asks for none.
    pub fn from_env() -> Result<Option<Self>, String> {
        Self::from_vars(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
    }

    /// The exporter `var` (an `OTEL_*` variable's value, by name) asks for.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, String> {
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        let exporter = var("OTEL_TRACES_EXPORTER");
        match exporter.as_deref() {
            Some("none") => return Ok(None),
            None | Some("otlp") => {}
            Some(other) => {
                return Err(format!(
                    "OTEL_TRACES_EXPORTER={other}: moa exports traces over OTLP only (`otlp`, or `none`)"
                ))
            }
        }
        let endpoint = match (
            var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            var("OTEL_EXPORTER_OTLP_ENDPOINT"),
        ) {
            (Some(traces), _) => traces,
            (None, Some(base)) => format!("{}/v1/traces", base.trim_end_matches('/')),
            (None, None) if exporter.is_some() => "http://localhost:4318/v1/traces".to_string(),
            (None, None) => return Ok(None),
        };
        let either = |name: &str| {
            var(&format!("OTEL_EXPORTER_OTLP_TRACES_{name}"))
                .or_else(|| var(&format!("OTEL_EXPORTER_OTLP_{name}")))
        };
        if let Some(protocol) = either("PROTOCOL").filter(|p| p != "http/protobuf") {
            return Err(format!(
                "OTEL_EXPORTER_OTLP_PROTOCOL={protocol}: moa sends OTLP over http/protobuf; \
                 point the endpoint at the collector's HTTP port (4318) and set http/protobuf"
            ));
        }
        let headers = match either("HEADERS") {
            Some(list) => parse_pairs(&list, "OTEL_EXPORTER_OTLP_HEADERS")?,
            None => HashMap::new(),
        };
        let timeout = match either("TIMEOUT") {
            Some(ms) => Duration::from_millis(ms.trim().parse().map_err(|_| {
                format!("OTEL_EXPORTER_OTLP_TIMEOUT={ms}: must be whole milliseconds")
            })?),
            None => Duration::from_secs(10),
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(endpoint.clone())
            .with_headers(headers)
            .with_timeout(timeout)
            .build()
            .map_err(|e| format!("cannot set up the OTLP exporter for {endpoint}: {e}"))?;
        let mut resource = opentelemetry_sdk::Resource::builder_empty();
        if let Some(list) = var("OTEL_RESOURCE_ATTRIBUTES") {
            let pairs = parse_pairs(&list, "OTEL_RESOURCE_ATTRIBUTES")?;
            resource =
                resource.with_attributes(pairs.into_iter().map(|(k, v)| KeyValue::new(k, v)));
        }
        let service = var("OTEL_SERVICE_NAME").unwrap_or_else(|| "moa".into());
        let resource = resource.with_service_name(service).build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_id_generator(ChosenIds)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("moa");
        Ok(Some(Self {
            provider,
            tracer,
            endpoint: without_credentials(&endpoint),
        }))
    }

    /// Sends the spans still queued.
    pub fn flush(&self) -> Result<(), String> {
        self.provider.force_flush().map_err(|e| e.to_string())
    }

    /// Builds and ends one span with the given ids, parent and times.
    #[allow(clippy::too_many_arguments)]
    fn span(
        &self,
        ids: (TraceId, SpanId),
        parent: Option<(SpanId, bool)>,
        name: String,
        kind: SpanKind,
        start: SystemTime,
        end: SystemTime,
        attributes: Vec<KeyValue>,
        status: Status,
    ) {
        let context = match parent {
            Some((span, sampled)) => {
                let flags = match sampled {
                    true => TraceFlags::SAMPLED,
                    false => TraceFlags::default(),
                };
                let parent = SpanContext::new(ids.0, span, flags, true, TraceState::default());
                Context::new().with_remote_span_context(parent)
            }
            None => Context::new(),
        };
        let builder = self
            .tracer
            .span_builder(name)
            .with_kind(kind)
            .with_start_time(start)
            .with_attributes(attributes);
        CHOSEN.with(|c| c.set(Some(ids)));
        let mut span = self.tracer.build_with_context(builder, &context);
        CHOSEN.with(|c| c.set(None));
        span.set_status(status);
        span.end_with_timestamp(end);
    }
}

impl SpanSink for Otlp {
    fn shutdown(&self) -> Result<(), String> {
        self.provider.shutdown().map_err(|e| e.to_string())
    }

    fn run(&self, run: &RunSpan, outcome: Result<&Trace, &str>) {
        let trace_id = TraceId::from(run.context.trace_id);
        let sampled = run.context.sampled;
        let run_id = SpanId::from(run.context.span_id);
        let at = |ms: u64| run.started + Duration::from_millis(ms);
        let end = SystemTime::now().max(run.started);
        let mut attributes = vec![
            KeyValue::new("gen_ai.operation.name", "invoke_agent"),
            KeyValue::new("gen_ai.agent.name", run.preset.clone()),
            KeyValue::new("moa.request_id", run.request_id.clone()),
            KeyValue::new("moa.stream", run.stream),
        ];
        let status = match outcome {
            Ok(trace) => {
                attributes.extend([
                    KeyValue::new(
                        "gen_ai.usage.input_tokens",
                        trace.usage.prompt_tokens as i64,
                    ),
                    KeyValue::new(
                        "gen_ai.usage.output_tokens",
                        trace.usage.completion_tokens as i64,
                    ),
                    KeyValue::new("moa.layers", trace.layers.len() as i64),
                    KeyValue::new("moa.degraded", trace.degraded.len() as i64),
                ]);
                if let Some(cost) = trace.cost {
                    attributes.push(KeyValue::new("moa.cost_usd", cost));
                }
                Status::Unset
            }
            Err(error) => {
                attributes.push(KeyValue::new("error.type", "run_failed"));
                Status::error(error.to_string())
            }
        };
        self.span(
            (trace_id, run_id),
            run.parent.map(|p| (SpanId::from(p), sampled)),
            format!("invoke_agent {}", run.preset),
            SpanKind::Server,
            run.started,
            end,
            attributes,
            status,
        );
        let Ok(trace) = outcome else { return };
        for layer in &trace.layers {
            let layer_id = SpanId::from(moa_core::tracecontext::random_id());
            let start = layer.calls.iter().map(|c| c.started_ms).min().unwrap_or(0);
            let count = |s: CallStatus| layer.calls.iter().filter(|c| c.status == s).count() as i64;
            self.span(
                (trace_id, layer_id),
                Some((run_id, sampled)),
                format!("moa.layer {}", layer.layer),
                SpanKind::Internal,
                at(start),
                at(start + layer.elapsed_ms),
                vec![
                    KeyValue::new("moa.layer", layer.layer as i64),
                    KeyValue::new("moa.proposers", layer.calls.len() as i64),
                    KeyValue::new("moa.proposers.succeeded", count(CallStatus::Ok)),
                    KeyValue::new("moa.proposers.failed", count(CallStatus::Failed)),
                    KeyValue::new("moa.proposers.cancelled", count(CallStatus::Cancelled)),
                ],
                Status::Unset,
            );
            for (index, call) in layer.calls.iter().enumerate() {
                let role = [
                    KeyValue::new("moa.role", "proposer"),
                    KeyValue::new("moa.layer", layer.layer as i64),
                    KeyValue::new("moa.index", index as i64),
                ];
                self.call(trace_id, (layer_id, sampled), run, call, role);
            }
        }
        let aggregators = std::iter::once(("aggregator", &trace.aggregator))
            .chain(trace.windows.iter().map(|c| ("window", c)))
            .chain(trace.other_choices.iter().map(|c| ("choice", c)))
            .chain(trace.repairs.iter().map(|c| ("repair", c)));
        for (role, call) in aggregators {
            self.call(
                trace_id,
                (run_id, sampled),
                run,
                call,
                [KeyValue::new("moa.role", role)],
            );
        }
    }
}

impl Otlp {
    /// One upstream call as a GenAI client span.
    fn call<const N: usize>(
        &self,
        trace_id: TraceId,
        parent: (SpanId, bool),
        run: &RunSpan,
        call: &CallTrace,
        role: [KeyValue; N],
    ) {
        let (provider, model) = call.model.split_once(':').unwrap_or(("", &call.model));
        let mut attributes = vec![
            KeyValue::new("gen_ai.operation.name", "chat"),
            KeyValue::new("gen_ai.provider.name", provider.to_string()),
            KeyValue::new("gen_ai.request.model", model.to_string()),
            KeyValue::new("moa.status", call.status.as_str()),
        ];
        attributes.extend(role);
        if let Some(usage) = &call.usage {
            attributes.push(KeyValue::new(
                "gen_ai.usage.input_tokens",
                usage.prompt_tokens as i64,
            ));
            attributes.push(KeyValue::new(
                "gen_ai.usage.output_tokens",
                usage.completion_tokens as i64,
            ));
            if usage.cached_tokens > 0 {
                attributes.push(KeyValue::new(
                    "gen_ai.usage.cache_read.input_tokens",
                    usage.cached_tokens as i64,
                ));
            }
            if call.usage_estimated {
                attributes.push(KeyValue::new("moa.usage_estimated", true));
            }
        }
        if let Some(reason) = &call.finish_reason {
            let reasons: Vec<opentelemetry::StringValue> = vec![reason.clone().into()];
            attributes.push(KeyValue::new(
                "gen_ai.response.finish_reasons",
                opentelemetry::Value::Array(reasons.into()),
            ));
        }
        if call.attempts > 1 {
            attributes.push(KeyValue::new("moa.attempts", i64::from(call.attempts)));
        }
        if let Some(first) = call.first_token_ms {
            attributes.push(KeyValue::new("moa.time_to_first_token_ms", first as i64));
        }
        if let Some(cost) = call.cost {
            attributes.push(KeyValue::new("moa.cost_usd", cost));
        }
        let status = match (&call.failure, call.status) {
            // The failure's summary (`together: HTTP 500`), never what the upstream wrote.
            (Some(failure), _) => {
                attributes.push(KeyValue::new("error.type", failure.kind()));
                Status::error(failure.summary())
            }
            (None, CallStatus::Failed) => {
                attributes.push(KeyValue::new("error.type", "failed"));
                Status::error("failed")
            }
            _ => Status::Unset,
        };
        let id = call
            .span_id
            .unwrap_or_else(moa_core::tracecontext::random_id);
        let start = run.started + Duration::from_millis(call.started_ms);
        self.span(
            (trace_id, SpanId::from(id)),
            Some(parent),
            format!("chat {model}"),
            SpanKind::Client,
            start,
            start + Duration::from_millis(call.latency_ms),
            attributes,
            status,
        );
    }
}

/// `key=value,key=value` with percent-encoded values, as the OTEL_* lists are written.
fn parse_pairs(list: &str, name: &str) -> Result<HashMap<String, String>, String> {
    list.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').ok_or_else(|| {
                format!(
                    "{name}: `{}` is not key=value",
                    pair.split('=').next().unwrap_or_default().trim()
                )
            })?;
            Ok((key.trim().to_string(), percent_decode(value.trim())))
        })
        .collect()
}

fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `endpoint` without a user name or password in it, for messages.
fn without_credentials(endpoint: &str) -> String {
    match endpoint.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            match path.is_empty() {
                true => format!("{scheme}://{host}"),
                false => format!("{scheme}://{host}/{path}"),
            }
        }
        None => endpoint.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_lists_decode_and_bad_settings_are_named() {
        let pairs = parse_pairs("api-key=a%20b%3Dc, x=1", "OTEL_EXPORTER_OTLP_HEADERS").unwrap();
        assert_eq!(pairs["api-key"], "a b=c");
        assert_eq!(pairs["x"], "1");
        let error = parse_pairs("secret-token", "OTEL_EXPORTER_OTLP_HEADERS").unwrap_err();
        assert!(error.starts_with("OTEL_EXPORTER_OTLP_HEADERS"), "{error}");
        assert_eq!(
            without_credentials("https://user:pw@otel.example:4318/v1/traces"),
            "https://otel.example:4318/v1/traces"
        );
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert!(
            Otlp::from_vars(vars(&[])).unwrap().is_none(),
            "off unless asked"
        );
        let grpc = vars(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ]);
        assert!(Otlp::from_vars(grpc).unwrap_err().contains("http/protobuf"));
        let zipkin = vars(&[("OTEL_TRACES_EXPORTER", "zipkin")]);
        assert!(Otlp::from_vars(zipkin)
            .unwrap_err()
            .contains("OTEL_TRACES_EXPORTER=zipkin"));
        let disabled = vars(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_SDK_DISABLED", "true"),
        ]);
        assert!(Otlp::from_vars(disabled).unwrap().is_none());
    }
}
