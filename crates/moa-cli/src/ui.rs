//! What moa writes to the terminal besides answers: how much (`-q`, `-v`, `-vv`), and in colour
//! or not. Set once from the global flags, read everywhere.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU8, Ordering};

/// 0: quiet; 1: normal; 2: `-v`; 3: `-vv`.
static LEVEL: AtomicU8 = AtomicU8::new(1);

/// Sets the level from the global flags and, from `-v` on, sends the providers' log to stderr:
/// `-v` each retry and why, `-vv` also every HTTP request (method, URL without its query,
/// status, time; never a body, a header or a key).
pub fn init(quiet: bool, verbose: u8) {
    let level = if quiet { 0 } else { 1 + verbose.min(2) };
    LEVEL.store(level, Ordering::Relaxed);
    if level < 2 {
        return;
    }
    let filter = match level {
        2 => "warn,moa_providers=info",
        _ => "warn,moa_providers=debug",
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(colour(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// `-q`: only answers and errors.
pub fn quiet() -> bool {
    LEVEL.load(Ordering::Relaxed) == 0
}

/// Whether to colour what goes to `stream`: a terminal, `NO_COLOR` unset or empty (see
/// no-color.org), and `TERM` not `dumb`.
pub fn colour(stream: &impl IsTerminal) -> bool {
    colour_allowed(
        stream.is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
        std::env::var_os("TERM").as_deref(),
    )
}

fn colour_allowed(
    terminal: bool,
    no_color: Option<&std::ffi::OsStr>,
    term: Option<&std::ffi::OsStr>,
) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty()) && term.is_none_or(|t| t != "dumb")
}

/// The styles moa uses.
#[derive(Clone, Copy)]
pub enum Style {
    /// Errors.
    Error,
    /// Status lines (layers, proposers, the aggregator).
    Dim,
    /// Something finished well.
    Good,
}

/// `text` in `style` when `on`, else as it is.
pub fn paint(on: bool, style: Style, text: &str) -> String {
    if !on {
        return text.to_string();
    }
    let code = match style {
        Style::Error => "1;31",
        Style::Dim => "2",
        Style::Good => "32",
    };
    format!("\x1b[{code}m{text}\x1b[0m")
}

/// A note on stderr (not with `-q`).
macro_rules! note {
    ($($arg:tt)*) => {
        if !$crate::ui::quiet() {
            eprintln!($($arg)*);
        }
    };
}
pub(crate) use note;

/// An error line on stderr, `moa: ` first, red on a terminal.
pub fn error(message: &str) {
    let stderr = std::io::stderr();
    eprintln!(
        "{}",
        paint(colour(&stderr), Style::Error, &format!("moa: {message}"))
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn colour_only_on_terminals_without_no_color_or_a_dumb_term() {
        assert!(colour_allowed(true, None, Some(OsStr::new("xterm"))));
        assert!(colour_allowed(true, Some(OsStr::new("")), None));
        assert!(!colour_allowed(false, None, None));
        assert!(!colour_allowed(true, Some(OsStr::new("1")), None));
        assert!(!colour_allowed(true, None, Some(OsStr::new("dumb"))));
        assert_eq!(paint(false, Style::Error, "x"), "x");
        assert_eq!(paint(true, Style::Error, "x"), "\x1b[1;31mx\x1b[0m");
    }
}
