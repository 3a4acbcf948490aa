//! The quick start's first command with the real SmolLM2 model, in-process. The model is fetched
//! on the first run (by moa itself, as a user's first run would) and kept under the target
//! directory for later runs.

use std::path::PathBuf;

use crate::moa;

fn models_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("models")
}

#[tokio::test(flavor = "multi_thread")]
async fn local_preset_answers_with_no_api_key() {
    let dir = tempfile::tempdir().unwrap();
    let models = models_dir();
    let env = [("MOA_MODELS_DIR", models.to_str().unwrap())];
    // No preset named and no key set: the local preset is the default.
    let out = moa(
        dir.path(),
        &["ask", "--json", "What is the capital of France?"],
        &env,
        None,
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let trace: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(trace["preset"], "local");
    let calls = trace["layers"][0]["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 3);
    for call in calls {
        assert_eq!(call["status"], "ok", "{call}");
        assert_eq!(call["model"], "local:smollm2");
        assert!(
            !call["answer"].as_str().unwrap().trim().is_empty(),
            "{call}"
        );
        assert!(call["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    }
    assert!(!trace["answer"].as_str().unwrap().trim().is_empty());
    assert_eq!(trace["aggregator"]["model"], "local:smollm2");
    // The aggregator saw the three proposals: its prompt was far longer than theirs.
    let prompt = |c: &serde_json::Value| c["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(prompt(&trace["aggregator"]) > prompt(&calls[0]) + 10);

    let listed = moa(dir.path(), &["models", "list"], &env, None).await;
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    assert!(
        listed.stdout.contains("smollm2   ready"),
        "{}",
        listed.stdout
    );
    let pulled = moa(dir.path(), &["models", "pull", "smollm2"], &env, None).await;
    assert!(
        pulled.stdout.starts_with("smollm2 is already here"),
        "{}",
        pulled.stdout
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_models_and_missing_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("MOA_MODELS_DIR", dir.path().to_str().unwrap())];
    let out = moa(dir.path(), &["models", "pull", "gpt-5"], &env, None).await;
    assert_eq!(out.code, 2);
    assert_eq!(out.stderr, "moa: unknown model `gpt-5`; known: smollm2\n");
    let out = moa(
        dir.path(),
        &[
            "ask",
            "--proposers",
            "local:/nope/m.gguf",
            "--aggregator",
            "local:/nope/m.gguf",
            "Q",
        ],
        &env,
        None,
    )
    .await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("local: no GGUF file at /nope/m.gguf"),
        "{}",
        out.stderr
    );
}
