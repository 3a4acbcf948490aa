//! How a run looks in the terminal: proposals on stderr, the answer on stdout.

use std::io::Write;

use moa_core::{RunEvent, Usage};

fn seconds(ms: u64) -> String {
    format!("{:.2}s", ms as f64 / 1000.0)
}

fn tokens(usage: &Option<Usage>) -> String {
    match usage {
        Some(u) if u.cached_tokens > 0 => format!(
            " · {} tokens in ({} cached), {} out",
            u.prompt_tokens, u.cached_tokens, u.completion_tokens
        ),
        Some(u) => format!(
            " · {} tokens in, {} out",
            u.prompt_tokens, u.completion_tokens
        ),
        None => String::new(),
    }
}

/// Writes what `--show-proposals` shows for `event`, if anything.
pub fn proposal(out: &mut impl Write, event: &RunEvent, layers: usize) -> std::io::Result<()> {
    match event {
        RunEvent::ProposerDone {
            layer,
            model,
            answer,
            latency_ms,
            usage,
            ..
        } => {
            writeln!(
                out,
                "── layer {layer}/{layers} · {model} · {}{}",
                seconds(*latency_ms),
                tokens(usage)
            )?;
            writeln!(out, "{answer}\n")
        }
        RunEvent::ProposerFailed {
            layer,
            model,
            error,
            latency_ms,
            ..
        } => writeln!(
            out,
            "✗─ layer {layer}/{layers} · {model} · failed after {}: {error}\n",
            seconds(*latency_ms)
        ),
        RunEvent::ProposerCancelled {
            layer,
            model,
            latency_ms,
            ..
        } => writeln!(
            out,
            "✗─ layer {layer}/{layers} · {model} · cancelled after {}: the quorum was in\n",
            seconds(*latency_ms)
        ),
        RunEvent::AggregatorStarted { model } => {
            writeln!(out, "── aggregator · {model}")
        }
        RunEvent::EarlyExit { layer } => writeln!(
            out,
            "── layer {layer} agreed: the answer is theirs, the aggregator was skipped"
        ),
        RunEvent::Fallback {
            layer,
            model,
            error,
        } => writeln!(
            out,
            "✗─ the aggregator failed ({error}); the answer is {model}'s proposal from layer {layer}"
        ),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proposals_show_model_latency_and_tokens() {
        let mut out = Vec::new();
        let done = RunEvent::ProposerDone {
            layer: 1,
            index: 0,
            model: "p:m".into(),
            answer: "Paris.".into(),
            latency_ms: 1234,
            usage: Some(Usage {
                prompt_tokens: 10,
                completion_tokens: 2,
                total_tokens: 12,
                cached_tokens: 0,
            }),
        };
        proposal(&mut out, &done, 2).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "── layer 1/2 · p:m · 1.23s · 10 tokens in, 2 out\nParis.\n\n"
        );
    }
}
