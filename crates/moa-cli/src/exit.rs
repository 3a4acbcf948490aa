//! Exit codes, and which error means which.

use moa_core::MoaError;
use moa_providers::RegistryError;

/// Success.
pub const OK: u8 = 0;
/// The run failed upstream: too few proposers answered, or the aggregator failed.
pub const RUN_FAILED: u8 = 1;
/// Bad usage or config: unknown preset, bad model name, config typo (clap uses 2 as well).
pub const USAGE: u8 = 2;
/// An API key the run needs is not set.
pub const MISSING_KEY: u8 = 3;
/// Interrupted by Ctrl-C.
pub const INTERRUPTED: u8 = 130;

/// The run was interrupted by the user.
#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
pub struct Interrupted;

/// Some turns of a piped chat failed (each was reported as it happened).
#[derive(Debug, thiserror::Error)]
#[error("{0} turn(s) of the chat failed")]
pub struct TurnsFailed(pub usize);

/// API keys a preset needs and the environment lacks.
#[derive(Debug, thiserror::Error)]
#[error("preset `{preset}` needs {}: set {}\n(or pick another preset with --preset; `moa presets` lists them, `moa providers` the key variables)",
    if .missing.len() == 1 { "an API key" } else { "API keys" },
    .missing.iter().map(|(p, v)| format!("{v} (for {p})")).collect::<Vec<_>>().join(", "))]
pub struct MissingKeys {
    pub preset: String,
    /// `(provider, variable)` pairs.
    pub missing: Vec<(String, String)>,
}

/// The exit code for `error`, or `None` if it is a closed stdout (a quiet success).
pub fn code_for(error: &anyhow::Error) -> Option<u8> {
    for cause in error.chain() {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::BrokenPipe {
                return None;
            }
        }
    }
    let code = if error.is::<Interrupted>() {
        INTERRUPTED
    } else if error.is::<MissingKeys>() {
        MISSING_KEY
    } else if let Some(RegistryError::MissingApiKey { .. }) = error.downcast_ref() {
        MISSING_KEY
    } else if let Some(MoaError::Budget { .. }) = error.downcast_ref() {
        // Limits too small for the run: the user's to raise, nothing failed upstream.
        USAGE
    } else if error.is::<MoaError>() || error.is::<TurnsFailed>() {
        RUN_FAILED
    } else {
        // ConfigError, RegistryError, PresetError, an unknown preset, a bad flag value: things
        // the user can fix in what they typed or wrote.
        USAGE
    };
    Some(code)
}
