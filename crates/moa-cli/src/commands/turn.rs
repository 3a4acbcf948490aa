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
    /// Time passed with no event (about ten times a second): a spinner turns.
    fn tick(&mut self) -> std::io::Result<()> {
        Ok(())
    }
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
    let mut ticks = tokio::time::interval(std::time::Duration::from_millis(100));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let event = tokio::select! {
            event = stream.next() => event,
            _ = &mut interrupt => return Ok(TurnEnd::Cancelled),
            _ = ticks.tick() => {
                view.tick()?;
                continue;
            }
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
    /// One status line on stderr until the answer starts (set on terminals only).
    pub progress: bool,
    status: Status,
}

/// What the status line says: the layer, how many of its proposers are done, a spinner.
#[derive(Default)]
struct Status {
    layer: usize,
    proposers: usize,
    done: usize,
    failed: usize,
    frame: usize,
    shown: bool,
    over: bool,
}

const SPINNER: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

impl Status {
    fn line(&self, layers: usize) -> String {
        let failed = match self.failed {
            0 => String::new(),
            n => format!(", {n} failed"),
        };
        format!(
            "{} layer {}/{layers} · {}/{} proposers done{failed}",
            SPINNER[self.frame % SPINNER.len()],
            self.layer,
            self.done,
            self.proposers
        )
    }
}

impl PlainView {
    pub fn new(show_proposals: bool, print_answer: bool, layers: usize) -> Self {
        Self {
            show_proposals,
            print_answer,
            layers,
            open_line: false,
            progress: false,
            status: Status::default(),
        }
    }

    fn draw(&mut self) -> std::io::Result<()> {
        if !self.progress || self.status.over || self.status.layer == 0 {
            return Ok(());
        }
        let line = self.status.line(self.layers);
        let on = crate::ui::colour(&std::io::stderr());
        let mut err = std::io::stderr().lock();
        write!(
            err,
            "\r\x1b[2K{}",
            crate::ui::paint(on, crate::ui::Style::Dim, &line)
        )?;
        self.status.shown = true;
        err.flush()
    }

    /// Takes the status line away for good (the answer, or the end of the run, is next).
    pub fn clear_progress(&mut self) -> std::io::Result<()> {
        self.status.over = true;
        if std::mem::take(&mut self.status.shown) {
            let mut err = std::io::stderr().lock();
            write!(err, "\r\x1b[2K")?;
            err.flush()?;
        }
        Ok(())
    }
}

impl View for PlainView {
    fn tick(&mut self) -> std::io::Result<()> {
        self.status.frame += 1;
        self.draw()
    }

    fn event(&mut self, event: &RunEvent) -> std::io::Result<()> {
        match event {
            RunEvent::LayerStarted { layer, proposers } => {
                self.status.layer = *layer;
                self.status.proposers = *proposers;
                self.status.done = 0;
                self.status.failed = 0;
                self.draw()?;
            }
            RunEvent::ProposerDone { .. } => {
                self.status.done += 1;
                self.draw()?;
            }
            // (A proposer cancelled once the quorum is in did not fail: its layer is over.)
            RunEvent::ProposerFailed { .. } => {
                self.status.failed += 1;
                self.draw()?;
            }
            RunEvent::AggregatorStarted { .. }
            | RunEvent::EarlyExit { .. }
            | RunEvent::Fallback { .. } => self.clear_progress()?,
            _ => {}
        }
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
