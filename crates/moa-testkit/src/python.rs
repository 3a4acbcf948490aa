//! A Python virtual environment with pinned packages from PyPI, made once under a directory the
//! caller chooses (the target directory), for tests that run real third-party clients against
//! moa: the official openai SDK, say.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// One creation at a time within a test binary.
static CREATING: Mutex<()> = Mutex::new(());

/// The Python of a venv at `dir` holding `packages` (pinned requirement strings); made or
/// completed on first use. `Err` says what failed (no python3, no registry, ...).
pub fn venv(dir: &Path, packages: &[&str]) -> Result<PathBuf, String> {
    let _guard = CREATING.lock().unwrap_or_else(|e| e.into_inner());
    let python = dir.join("bin").join("python");
    let stamp = dir.join("moa-requirements.txt");
    let wanted = packages.join("\n");
    if python.is_file() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(&wanted) {
        return Ok(python);
    }
    let run = |command: &mut Command, what: &str| -> Result<(), String> {
        let out = command
            .output()
            .map_err(|e| format!("{what}: cannot run: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "{what} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    };
    if !python.is_file() {
        run(
            Command::new("python3").args(["-m", "venv"]).arg(dir),
            "python3 -m venv",
        )?;
    }
    run(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(packages),
        "pip install",
    )?;
    std::fs::write(&stamp, wanted).map_err(|e| e.to_string())?;
    Ok(python)
}
