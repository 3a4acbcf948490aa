use moa_testkit::FakeOpenAi;

use crate::{moa, Sandbox};

#[tokio::test(flavor = "multi_thread")]
async fn presets_lists_built_in_and_config_presets_with_their_models() {
    let fake = FakeOpenAi::start().await;
    let sandbox = Sandbox::new(
        &fake,
        "[presets.mine]\ndescription = \"my mix\"\naggregator = \"openai:gpt-4o\"\n[[presets.mine.layer]]\nproposers = [\"openai:gpt-4o-mini\"]\n[[presets.mine.layer]]\nproposers = [\"groq:llama\"]\n",
    );
    let out = moa(sandbox.path(), &["presets"], &[], None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let first_line = out.stdout.lines().next().unwrap();
    assert_eq!(
        first_line,
        format!(
            "config: {}",
            sandbox.config.canonicalize().unwrap().display()
        )
    );
    for name in [
        "together (built-in, 2 layers",
        "together-3layer (built-in, 3 layers",
        "moa-lite (built-in, 2 layers",
        "moa (built-in, 3 layers",
        "mine (config, 3 layers",
    ] {
        assert!(
            out.stdout.contains(name),
            "{name} missing from:\n{}",
            out.stdout
        );
    }
    assert!(
        out.stdout
            .contains("  layer 2:    groq:llama  [provider defaults]"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains(
            "  aggregator: together:Qwen/Qwen1.5-110B-Chat  [temperature 0.7, max_tokens 2048]"
        ),
        "{}",
        out.stdout
    );

    let json = moa(sandbox.path(), &["presets", "--json"], &[], None).await;
    let list: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 7);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_explicit_config_that_does_not_exist_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = moa(dir.path(), &["presets", "--config", "nope.toml"], &[], None).await;
    assert_eq!(out.code, 2);
    assert_eq!(out.stderr, "moa: config file nope.toml does not exist\n");
}
