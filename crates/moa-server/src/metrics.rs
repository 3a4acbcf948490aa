//! `/metrics`: what the server has done, in Prometheus' text format. Counters and histograms
//! are kept here without a metrics library: a few maps behind one lock, written out on scrape.
//!
//! Label values come from the server's presets and plans, and a request may name models of its
//! own (`moa.proposers`), so each family keeps at most [`MAX_SERIES`] label sets; later ones
//! are counted under `other`, so a client cannot grow the server's memory without bound.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;

use moa_core::{CallStatus, Trace};

/// Label sets kept per family.
pub const MAX_SERIES: usize = 1000;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
];

type Labels = Vec<(&'static str, String)>;

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        for (bound, count) in BUCKETS.iter().zip(self.counts.iter_mut()) {
            if seconds <= *bound {
                *count += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }
}

#[derive(Default)]
struct Families {
    requests: BTreeMap<Labels, u64>,
    upstream: BTreeMap<Labels, u64>,
    tokens: BTreeMap<Labels, u64>,
    cost: BTreeMap<Labels, f64>,
    duration: BTreeMap<Labels, Histogram>,
    ttft: BTreeMap<Labels, Histogram>,
}

/// A family's entry for `labels`, or its `other` entry once it holds [`MAX_SERIES`].
fn entry<V: Default>(family: &mut BTreeMap<Labels, V>, labels: Labels) -> &mut V {
    let labels = match family.contains_key(&labels) || family.len() < MAX_SERIES {
        true => labels,
        false => labels
            .into_iter()
            .map(|(k, _)| (k, "other".to_string()))
            .collect(),
    };
    family.entry(labels).or_default()
}

/// The server's metrics.
#[derive(Default)]
pub struct Metrics {
    enabled: bool,
    families: Mutex<Families>,
    in_flight: AtomicI64,
}

/// Counts a run in flight while it lives.
pub struct InFlight(std::sync::Arc<Metrics>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Metrics {
    /// Metrics that count, or (`enabled` false) that ignore everything.
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            ..Self::default()
        }
    }

    fn families(&self) -> std::sync::MutexGuard<'_, Families> {
        self.families.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A run starts; it counts as in flight until the guard drops.
    pub fn run_started(self: &std::sync::Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// A chat request answered with `status` (streams: the status their response began with).
    pub fn request(&self, preset: &str, status: u16) {
        if !self.enabled {
            return;
        }
        let labels = vec![
            ("preset", preset.to_string()),
            ("status", status.to_string()),
        ];
        *entry(&mut self.families().requests, labels) += 1;
    }

    /// A finished run: its latency, time to first token, every upstream call, tokens and cost.
    pub fn run(&self, preset: &str, seconds: f64, trace: &Trace) {
        if !self.enabled {
            return;
        }
        let mut f = self.families();
        let preset_label = || vec![("preset", preset.to_string())];
        entry(&mut f.duration, preset_label()).observe(seconds);
        if let Some(first) = trace.aggregator.first_token_ms {
            let ttft = (trace.aggregator.started_ms + first) as f64 / 1000.0;
            entry(&mut f.ttft, preset_label()).observe(ttft);
        }
        for call in trace.calls() {
            if call.status == CallStatus::Skipped {
                continue;
            }
            let (provider, model) = call.model.split_once(':').unwrap_or(("", &call.model));
            let outcome = match call.status {
                CallStatus::Ok if call.attempts > 1 => "retried",
                status => status.as_str(),
            };
            let labels = vec![
                ("provider", provider.to_string()),
                ("model", model.to_string()),
                ("outcome", outcome.to_string()),
            ];
            *entry(&mut f.upstream, labels) += 1;
        }
        let u = &trace.usage;
        for (kind, n) in [
            ("prompt", u.prompt_tokens),
            ("completion", u.completion_tokens),
            ("cached", u.cached_tokens),
        ] {
            let labels = vec![("preset", preset.to_string()), ("kind", kind.to_string())];
            *entry(&mut f.tokens, labels) += n;
        }
        if let Some(cost) = trace.cost {
            *entry(&mut f.cost, preset_label()) += cost;
        }
    }

    /// Everything, in Prometheus' text format (version 0.0.4).
    pub fn render(&self) -> String {
        let f = self.families();
        let mut out = String::new();
        counter(
            &mut out,
            "moa_requests_total",
            "Chat completion requests by preset and HTTP status.",
            &f.requests,
        );
        counter(
            &mut out,
            "moa_upstream_calls_total",
            "Model calls by provider, model and outcome (ok; retried: succeeded after a retry; failed; cancelled).",
            &f.upstream,
        );
        counter(
            &mut out,
            "moa_tokens_total",
            "Tokens of every model call, by preset and kind (prompt, completion, cached prompt).",
            &f.tokens,
        );
        counter(
            &mut out,
            "moa_cost_usd_total",
            "US dollars at the price table's prices, by preset.",
            &f.cost,
        );
        histogram(
            &mut out,
            "moa_request_duration_seconds",
            "Whole MoA runs, by preset.",
            &f.duration,
        );
        histogram(
            &mut out,
            "moa_time_to_first_token_seconds",
            "From a run's start to the aggregator's first token, by preset.",
            &f.ttft,
        );
        let _ = writeln!(out, "# HELP moa_runs_in_flight MoA runs going on now.");
        let _ = writeln!(out, "# TYPE moa_runs_in_flight gauge");
        let _ = writeln!(
            out,
            "moa_runs_in_flight {}",
            self.in_flight.load(Ordering::Relaxed)
        );
        out
    }
}

/// A label value as the format wants it: backslash, quote and newline escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn labels_text(labels: &Labels, extra: Option<(&str, String)>) -> String {
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    if let Some((k, v)) = extra {
        parts.push(format!("{k}=\"{v}\""));
    }
    match parts.is_empty() {
        true => String::new(),
        false => format!("{{{}}}", parts.join(",")),
    }
}

fn counter<V: std::fmt::Display>(
    out: &mut String,
    name: &str,
    help: &str,
    family: &BTreeMap<Labels, V>,
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} counter");
    for (labels, value) in family {
        let _ = writeln!(out, "{name}{} {value}", labels_text(labels, None));
    }
}

fn histogram(out: &mut String, name: &str, help: &str, family: &BTreeMap<Labels, Histogram>) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} histogram");
    for (labels, h) in family {
        for (bound, count) in BUCKETS.iter().zip(h.counts) {
            let le = labels_text(labels, Some(("le", bound.to_string())));
            let _ = writeln!(out, "{name}_bucket{le} {count}");
        }
        let inf = labels_text(labels, Some(("le", "+Inf".into())));
        let _ = writeln!(out, "{name}_bucket{inf} {}", h.count);
        let _ = writeln!(out, "{name}_sum{} {}", labels_text(labels, None), h.sum);
        let _ = writeln!(out, "{name}_count{} {}", labels_text(labels, None), h.count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_sets_are_bounded() {
        let m = Metrics::new(true);
        for i in 0..MAX_SERIES + 50 {
            m.request(&format!("p{i}"), 200);
        }
        let f = m.families();
        assert_eq!(f.requests.len(), MAX_SERIES + 1);
        let other = vec![
            ("preset", "other".to_string()),
            ("status", "other".to_string()),
        ];
        assert_eq!(f.requests[&other], 50);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
