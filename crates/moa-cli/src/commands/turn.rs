//! One MoA run as the terminal shows it, shared by `ask` and `chat`: events go to a view, Ctrl-C
//! ends the run (dropping every request in flight), and the caller learns how it ended.

use std::io::Write;

use futures::StreamExt;
use moa_core::{Moa, MoaError, RunEvent, RunRequest, Trace};

use crate::render;

/// How a run ended.
pub enum TurnEnd {
    Done(Box<Trace>),
    Failed(MoaError),
    Cancelled,
}

/// Where a run's events go.
pub trait View {
    fn event(&mut self, event: &RunEvent) -> std::io::Result<()>;
}

/// Runs `request` through `moa`, showing its events; with `cancellable`, Ctrl-C ends it early.
pub async fn run(
    moa: &Moa,
    request: RunRequest,
    view: &mut dyn View,
    cancellable: bool,
) -> anyhow::Result<TurnEnd> {
    let mut interrupt = std::pin::pin!(async {
        if cancellable {
            let _ = tokio::signal::ctrl_c().await;
        } else {
            std::future::pending::<()>().await;
        }
    });
    // Poll once so the Ctrl-C handler is installed before any request is sent.
    let _ = futures::poll!(&mut interrupt);
    let mut stream = moa.run_request(request);
    loop {
        let event = tokio::select! {
            event = stream.next() => event,
            _ = &mut interrupt => return Ok(TurnEnd::Cancelled),
        };
        match event {
            Some(Ok(RunEvent::Done(trace))) => return Ok(TurnEnd::Done(trace)),
            Some(Ok(event)) => view.event(&event)?,
            Some(Err(error)) => return Ok(TurnEnd::Failed(error)),
            None => anyhow::bail!("the run ended without an answer"),
        }
    }
}

/// Plain output: the answer streamed to stdout (unless `print_answer` is off), proposals (if
/// asked) to stderr.
pub struct PlainView {
    pub show_proposals: bool,
    pub print_answer: bool,
    pub layers: usize,
    /// Streamed text has left the cursor mid-line.
    pub open_line: bool,
}

impl PlainView {
    pub fn new(show_proposals: bool, print_answer: bool, layers: usize) -> Self {
        Self {
            show_proposals,
            print_answer,
            layers,
            open_line: false,
        }
    }
}

impl View for PlainView {
    fn event(&mut self, event: &RunEvent) -> std::io::Result<()> {
        if self.show_proposals {
            render::proposal(&mut std::io::stderr(), event, self.layers)?;
        }
        if let (RunEvent::AggregatorDelta { choice: 0, text }, true) = (event, self.print_answer) {
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())?;
            out.flush()?;
            self.open_line = !text.ends_with('\n');
        }
        Ok(())
    }
}
