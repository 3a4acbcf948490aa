//! `moa serve` as a process: it serves the presets whose keys are set, and on SIGTERM lets a
//! stream in flight finish before it exits.

use std::process::Stdio;
use std::time::Duration;

use futures::StreamExt;
use moa_testkit::{FakeOpenAi, Reply};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::{Sandbox, KEY};

#[tokio::test(flavor = "multi_thread")]
async fn serve_answers_and_drains_on_sigterm() {
    let fake = FakeOpenAi::start().await;
    // Slow enough that SIGTERM lands mid-stream.
    fake.respond_with(|r| {
        Reply::text(format!("{} says hello to you all", r.model))
            .with_chunk_delay(Duration::from_millis(30))
    });
    let sandbox = Sandbox::new(&fake, "");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_moa"))
        .args([
            "serve",
            "--port",
            "0",
            "--presets",
            "together,local",
            "--grace",
            "10",
        ])
        .current_dir(sandbox.path())
        .env_clear()
        .env("HOME", sandbox.path())
        .env("MOA_CONFIG", &sandbox.config)
        .env(KEY.0, KEY.1)
        .env("MOA_SERVER_API_KEY", "sk-local")
        .env(
            "MOA_MODELS_DIR",
            std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("models"),
        )
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut stderr = Vec::new();
    let base = loop {
        let line = lines
            .next_line()
            .await
            .unwrap()
            .expect("moa serve exited early");
        stderr.push(line.clone());
        if let Some(rest) = line
            .strip_prefix("moa: serving")
            .and_then(|l| l.split(" at ").nth(1))
        {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    // A build without local models (the Dockerfile's) serves the rest and says why not `local`.
    let serving = if cfg!(feature = "local") {
        "serving 2 preset(s) (local, together)"
    } else {
        assert!(
            stderr.iter().any(|l| l
                == "moa: not serving preset `local`: it uses local models, and this build has none (the `local` feature)"),
            "{stderr:?}"
        );
        "serving 1 preset(s) (together)"
    };
    assert!(stderr.last().unwrap().contains(serving), "{stderr:?}");
    assert!(stderr.last().unwrap().ends_with("(API key required)"));
    let http = reqwest::Client::new();
    let body = serde_json::json!({"model": "together", "messages": [{"role": "user", "content": "Hi"}], "stream": true});
    let response = http
        .post(format!("{base}/chat/completions"))
        .bearer_auth("sk-local")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut stream = response.bytes_stream();
    let mut text = String::from_utf8_lossy(&stream.next().await.unwrap().unwrap()).into_owned();
    // The first chunk is in: ask the server to stop, then read the rest.
    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    while let Some(chunk) = stream.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    assert!(
        text.ends_with("data: [DONE]\n\n"),
        "the stream was cut: {text}"
    );
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    while let Ok(Some(line)) = lines.next_line().await {
        stderr.push(line);
    }
    assert_eq!(stderr.last().map(String::as_str), Some("moa: stopped"));
}

/// Runs `moa serve` expecting it to refuse to start; a server that starts instead fails the
/// guard timeout rather than hanging the suite.
async fn refused(args: &[&str], env: &[(&str, &str)]) -> String {
    let fake = FakeOpenAi::start().await;
    let sandbox = Sandbox::new(&fake, "");
    let mut all = vec!["serve", "--port", "0", "--presets", "together"];
    all.extend_from_slice(args);
    let mut env = env.to_vec();
    env.push(KEY);
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        crate::moa(sandbox.path(), &all, &env, None),
    )
    .await
    .expect("moa serve started instead of refusing");
    assert_eq!(out.code, 2, "a usage error: {}", out.stderr);
    out.stderr
}

#[tokio::test]
async fn serve_refuses_a_public_address_without_a_key() {
    let stderr = refused(&["--host", "0.0.0.0"], &[]).await;
    assert!(stderr.contains("refusing to serve 0.0.0.0:"), "{stderr}");
    assert!(stderr.contains("MOA_SERVER_API_KEY"), "{stderr}");
}

#[tokio::test]
async fn serve_refuses_an_empty_key_rather_than_serving_without_one() {
    let stderr = refused(&["--api-key", ""], &[]).await;
    assert!(
        stderr.contains("--api-key gives an empty API key"),
        "{stderr}"
    );
    let stderr = refused(&[], &[("MOA_SERVER_API_KEY", " ")]).await;
    assert!(
        stderr.contains("MOA_SERVER_API_KEY gives an empty API key"),
        "{stderr}"
    );
}
