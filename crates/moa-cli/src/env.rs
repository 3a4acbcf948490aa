//! Every environment variable moa reads, in one place. API key variables are data in the
//! provider table (`moa providers` lists them) and are read through [`lookup`].

/// Path of the config file to use instead of searching.
pub const MOA_CONFIG: &str = "MOA_CONFIG";
/// The preset to run when no --preset is given.
pub const MOA_PRESET: &str = "MOA_PRESET";
/// Seconds one model call may take, retries included (0: no limit).
pub const MOA_TIMEOUT: &str = "MOA_TIMEOUT";
/// How many proposers of a layer must answer.
pub const MOA_MIN_PROPOSALS: &str = "MOA_MIN_PROPOSALS";

/// Where local models are kept (default: the user cache dir, `~/.cache/moa/models` on Linux).
#[cfg_attr(not(feature = "local"), allow(dead_code))]
pub const MOA_MODELS_DIR: &str = "MOA_MODELS_DIR";

/// Where `moa eval` finds benchmark data (default: the user cache dir, `~/.cache/moa/eval-data`).
pub const MOA_EVAL_DATA: &str = "MOA_EVAL_DATA";

/// The bearer token `moa serve` requires from its clients (or --api-key).
pub const MOA_SERVER_API_KEY: &str = "MOA_SERVER_API_KEY";

/// The openai provider's base URL, as the openai SDK reads it (a config base_url wins).
pub const OPENAI_BASE_URL: &str = "OPENAI_BASE_URL";
/// Where ollama listens, as the ollama CLI reads it (a config base_url wins).
pub const OLLAMA_HOST: &str = "OLLAMA_HOST";

/// Whether `moa ask` and `moa chat` keep their runs for `moa logs` (`0` or `false`: no).
pub const MOA_LOG: &str = "MOA_LOG";

/// A variable's value; unset and empty are the same.
pub fn lookup(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}
