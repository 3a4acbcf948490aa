//! The `moa` binary end to end, against a fake OpenAI-compatible server on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod ask;
mod bench;
mod chat;
#[cfg(unix)]
mod chat_tty;
mod config;
mod conventions;
mod eval;
#[cfg(all(unix, feature = "local"))]
mod llamacpp;
#[cfg(feature = "local")]
mod local;
mod presets;
#[cfg(unix)]
mod serve;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use moa_testkit::FakeOpenAi;
use tokio::io::AsyncWriteExt;

/// A scratch directory with a config whose `together` provider is the fake.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl Sandbox {
    pub fn new(fake: &FakeOpenAi, extra_config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("moa.toml");
        let text = format!(
            "{extra_config}\n[providers.together]\nbase_url = \"{}\"\nmax_retries = 1\n",
            fake.base_url()
        );
        std::fs::write(&config, text).unwrap();
        Self { dir, config }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// What a finished `moa` process left.
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// The sandbox's own config, named as the user names a file they wrote (a `moa.toml` merely
/// found in the working directory may not re-point providers; see `config.rs`).
fn named_config(dir: &Path) -> Vec<(&'static str, std::ffi::OsString)> {
    let config = dir.join("moa.toml");
    match config.is_file() {
        true => vec![("MOA_CONFIG", config.into_os_string())],
        false => Vec::new(),
    }
}

/// Runs `moa` in `dir` with a clean environment (no keys, no MOA_* but MOA_CONFIG naming
/// `dir/moa.toml` if there is one, HOME in `dir`); `env` can unset it with an empty value.
pub async fn moa(dir: &Path, args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_moa"));
    command
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("HOME", dir)
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("XDG_CONFIG_HOME", dir.join("xdg"))
        .env("XDG_DATA_HOME", dir.join("xdg-data"))
        .envs(named_config(dir))
        .envs(env.iter().copied())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A test that gives up on it (a guard timeout) leaves no process behind.
        .kill_on_drop(true);
    let mut child = command.spawn().unwrap();
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(text.as_bytes()).await.unwrap();
        drop(pipe);
    }
    let out = child.wait_with_output().await.unwrap();
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub const KEY: (&str, &str) = ("TOGETHER_API_KEY", "sk-test");

/// Starts `moa` in `dir` in the background (clean environment plus the test key, output
/// discarded), for tests that kill it midway.
pub fn spawn_moa(dir: &Path, args: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_moa"))
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("HOME", dir)
        .env("XDG_CONFIG_HOME", dir.join("xdg"))
        .envs(named_config(dir))
        .env(KEY.0, KEY.1)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}
