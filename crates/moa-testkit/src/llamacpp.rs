//! A real llama.cpp server (llama-cpp-python's OpenAI-compatible server) on loopback, for the
//! tests that check moa against software nobody here wrote. It is started only when it is
//! installed: CI has no 7-minute llama.cpp build, and runs the faithful fake
//! ([`crate::Reply::llamacpp_empty_stream`]) instead.
//!
//! The Python that has it is `$MOA_TEST_PYTHON`, else `python3`. Install it with
//! `pip install 'llama-cpp-python[server]'`.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A running llama.cpp server; killed when dropped.
pub struct LlamaCppServer {
    child: Child,
    base_url: String,
}

fn python() -> String {
    std::env::var("MOA_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

impl LlamaCppServer {
    /// Starts the server on `model` (a GGUF file) with `parallel` requests served at once.
    /// `Ok(None)` when llama-cpp-python is not installed; `Err` when it is but did not start.
    pub async fn start(model: &Path) -> Result<Option<Self>, String> {
        let python = python();
        let installed = Command::new(&python)
            .args(["-c", "import llama_cpp.server"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .is_ok_and(|s| s.success());
        if !installed {
            return Ok(None);
        }
        // The server takes a port number; a port the system just gave out is free.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let mut child = Command::new(&python)
            .args(["-m", "llama_cpp.server", "--model"])
            .arg(model)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--n_ctx", "4096", "--verbose", "false"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {python} -m llama_cpp.server: {e}"))?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        let mut seen = Vec::new();
        // Uvicorn says when it listens; the model loads before that.
        let ready = tokio::time::timeout(Duration::from_secs(120), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("Uvicorn running on") {
                    return true;
                }
                seen.push(line);
            }
            false
        })
        .await;
        if ready != Ok(true) {
            return Err(format!(
                "llama.cpp's server did not come up: {}",
                seen.join("\n")
            ));
        }
        // Keep draining its log so that it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Some(Self {
            child,
            base_url: format!("http://127.0.0.1:{port}/v1"),
        }))
    }

    /// The OpenAI-compatible base URL, `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The server's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}
