//! The progress line long runs (`moa bench`, `moa eval`) keep on a terminal: a bar, done and
//! failed counts, cost so far and time left. Off a terminal, failures are printed as lines.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use moa_eval::runner::Tick;

/// `1m05s`, `42s`.
pub fn duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs >= 60 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{secs}s")
    }
}

pub struct Progress {
    live: bool,
    label: String,
}

impl Progress {
    pub fn new(label: impl Into<String>) -> Self {
        Self {
            live: std::io::stderr().is_terminal() && !crate::ui::quiet(),
            label: label.into(),
        }
    }

    pub fn show(&self, tick: &Tick) {
        if !self.live {
            if let Some((key, error)) = &tick.failure {
                eprintln!("{}: item {key} failed: {error}", self.label);
            }
            return;
        }
        let eta = tick
            .eta_secs()
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
            .map(|d| format!(" · ETA {}", duration(d)))
            .unwrap_or_default();
        let phase = tick
            .phase
            .as_ref()
            .map(|p| format!(" · {p}"))
            .unwrap_or_default();
        let width = 24;
        let filled = (tick.done * width).checked_div(tick.total).unwrap_or(width);
        eprint!(
            "\r\x1b[2K{} [{}{}] {}/{} · {} failed · ${:.4}{eta}{phase}",
            self.label,
            "#".repeat(filled),
            "-".repeat(width - filled),
            tick.done,
            tick.total,
            tick.failed,
            tick.cost
        );
        let _ = std::io::stderr().flush();
    }

    pub fn end(&self) {
        if self.live {
            eprintln!();
        }
    }
}

/// Runs `work` until it ends or Ctrl-C, which stops it (requests in flight are dropped; every
/// finished item is already on disk).
pub async fn until_interrupted<T>(
    work: impl std::future::Future<Output = Result<T, moa_eval::EvalError>>,
    progress: &Progress,
    out: &std::path::Path,
) -> anyhow::Result<T> {
    tokio::select! {
        result = work => {
            progress.end();
            Ok(result?)
        }
        _ = tokio::signal::ctrl_c() => {
            progress.end();
            eprintln!("moa: interrupted; rerun the same command to resume from {}", out.display());
            Err(crate::exit::Interrupted.into())
        }
    }
}
