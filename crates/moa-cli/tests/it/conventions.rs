//! What people expect of a command line, through the binary: completions and man page,
//! `config path|show|init`, `-q`, piped input with a prompt, `--json` listings, NO_COLOR, and
//! chats kept and taken up again.

use moa_testkit::{FakeOpenAi, Reply};

use crate::{moa, Sandbox, KEY};

/// One proposer and an aggregator: the aggregator answers "answer N" for the Nth user turn, the
/// proposer "proposal".
fn script(fake: &FakeOpenAi) {
    fake.respond_with(|r| {
        let messages = r.messages();
        let turn = messages.iter().filter(|(role, _)| role == "user").count();
        if r.model.contains("agg") {
            Reply::text(format!("answer {turn}"))
        } else {
            Reply::text("proposal")
        }
    });
}

const SHAPE: [&str; 4] = [
    "--proposers",
    "together:p/one",
    "--aggregator",
    "together:p/agg",
];

#[tokio::test(flavor = "multi_thread")]
async fn completions_and_man_pages_are_generated_from_the_commands() {
    let dir = tempfile::tempdir().unwrap();
    let bash = moa(dir.path(), &["completions", "bash"], &[], None).await;
    assert_eq!(bash.code, 0, "{}", bash.stderr);
    assert!(bash.stdout.contains("complete -F _moa"), "{}", bash.stdout);
    // Subcommands and their flags are offered.
    assert!(bash.stdout.contains("--show-proposals"));
    assert!(bash.stdout.contains("completions"));
    for shell in ["zsh", "fish", "powershell"] {
        let out = moa(dir.path(), &["completions", shell], &[], None).await;
        assert_eq!(out.code, 0, "{shell}: {}", out.stderr);
        assert!(out.stdout.contains("ask"), "{shell}");
        assert!(out.stdout.contains("max-tokens"), "{shell}");
    }
    let bad = moa(dir.path(), &["completions", "tcsh"], &[], None).await;
    assert_eq!(bad.code, 2);
    assert!(bad.stderr.contains("bash"), "{}", bad.stderr);

    let man = moa(dir.path(), &["man"], &[], None).await;
    assert_eq!(man.code, 0);
    assert!(man.stdout.starts_with(".ie") || man.stdout.contains(".TH moa 1"));
    assert!(man.stdout.contains(".SH SUBCOMMANDS"), "{}", man.stdout);
    let pages = dir.path().join("man1");
    let out = moa(
        dir.path(),
        &["man", "--dir", pages.to_str().unwrap()],
        &[],
        None,
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let ask = std::fs::read_to_string(pages.join("moa-ask.1")).unwrap();
    assert!(ask.contains(".TH moa-ask 1"), "{ask}");
    assert!(ask.contains("show\\-proposals"), "{ask}");
    assert!(pages.join("moa-eval-generate.1").is_file());
}

#[tokio::test(flavor = "multi_thread")]
async fn config_show_redacts_secrets_and_init_writes_a_config_that_loads() {
    let fake = FakeOpenAi::start().await;
    let sandbox = Sandbox::new(
        &fake,
        "preset = \"mine\"\n[presets.mine]\nproposers = [\"together:p/one\"]\naggregator = \"together:p/agg\"\n\
         [providers.gateway]\nbase_url = \"https://gw.example/v1\"\napi_key_env = \"GW_KEY\"\n\
         headers = { \"X-Api-Key\" = \"hdr-secret-123\" }\n",
    );
    let env = [KEY, ("GW_KEY", "gw-secret-456")];
    let out = moa(sandbox.path(), &["config", "show"], &env, None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!out.stdout.contains("hdr-secret-123"), "{}", out.stdout);
    assert!(!out.stdout.contains("gw-secret-456"));
    assert!(!out.stdout.contains("sk-test"));
    let shown: toml::Table = toml::from_str(&out.stdout).unwrap();
    assert_eq!(shown["preset"].as_str(), Some("mine"));
    let gateway = &shown["providers"]["gateway"];
    assert_eq!(gateway["base_url"].as_str(), Some("https://gw.example/v1"));
    assert_eq!(gateway["api_key"].as_str(), Some("set"));
    assert_eq!(gateway["headers"]["X-Api-Key"].as_str(), Some("<redacted>"));
    assert_eq!(
        shown["providers"]["together"]["base_url"].as_str(),
        Some(fake.base_url().as_str())
    );
    assert_eq!(shown["presets"]["mine"]["origin"].as_str(), Some("config"));

    // `config path` names the file read; `init` writes the example where the user config goes,
    // refuses to overwrite it, and what it wrote loads.
    let path = moa(sandbox.path(), &["config", "path"], &env, None).await;
    assert!(
        path.stdout
            .contains(&format!("{}  <- read", sandbox.config.display())),
        "{}",
        path.stdout
    );
    let empty = tempfile::tempdir().unwrap();
    let init = moa(empty.path(), &["config", "init"], &[], None).await;
    assert_eq!(init.code, 0, "{}", init.stderr);
    let written = empty.path().join("xdg/moa/moa.toml");
    assert!(written.is_file());
    let again = moa(empty.path(), &["config", "init"], &[], None).await;
    assert_eq!(again.code, 2);
    assert!(again.stderr.contains("already exists"), "{}", again.stderr);
    let presets = moa(empty.path(), &["presets", "--json"], &[], None).await;
    assert_eq!(presets.code, 0, "{}", presets.stderr);
    assert!(presets.stdout.contains("\"mine\""), "{}", presets.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn piped_text_follows_the_prompt_and_quiet_leaves_stderr_empty() {
    let fake = FakeOpenAi::start().await;
    script(&fake);
    let sandbox = Sandbox::new(&fake, "");
    let mut args = vec!["-q", "ask"];
    args.extend(SHAPE);
    // An unquoted prompt of several words.
    args.extend(["summarise", "this", "file"]);
    let out = moa(sandbox.path(), &args, &[KEY], Some("line one\nline two\n")).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "answer 1\n");
    assert_eq!(out.stderr, "");
    let requests = fake.requests();
    let proposer = requests.iter().find(|r| r.model == "p/one").unwrap();
    assert_eq!(
        proposer.messages(),
        vec![(
            "user".to_string(),
            "summarise this file\n\nline one\nline two\n".to_string()
        )]
    );

    // Piped text alone is the prompt; nothing at all is an error that says what to do.
    let mut alone = vec!["ask"];
    alone.extend(SHAPE);
    let out = moa(sandbox.path(), &alone, &[KEY], Some("just this")).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let last = fake.requests().into_iter().rfind(|r| r.model == "p/one");
    assert_eq!(last.unwrap().messages()[0].1, "just this");
    let out = moa(sandbox.path(), &alone, &[KEY], None).await;
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("no prompt"), "{}", out.stderr);

    // Without -q a project config is announced; with it, not.
    let project = tempfile::tempdir().unwrap();
    std::fs::write(
        project.path().join("moa.toml"),
        "[presets.mine]\nproposers = [\"together:p/one\"]\naggregator = \"together:p/agg\"\n",
    )
    .unwrap();
    // (MOA_CONFIG unset: the file is found, not named.)
    let found = [("MOA_CONFIG", "")];
    let noisy = moa(project.path(), &["presets"], &found, None).await;
    assert!(
        noisy.stderr.contains("using the project config"),
        "{}",
        noisy.stderr
    );
    let quiet = moa(project.path(), &["presets", "-q"], &found, None).await;
    assert_eq!(quiet.stderr, "");
    assert_eq!(quiet.stdout, noisy.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn very_verbose_logs_each_request_without_its_key_and_plain_runs_do_not() {
    let fake = FakeOpenAi::start().await;
    script(&fake);
    let sandbox = Sandbox::new(&fake, "");
    let mut args = vec!["-vv", "ask"];
    args.extend(SHAPE);
    args.push("hello");
    let out = moa(sandbox.path(), &args, &[KEY], None).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let requests: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("request") && l.contains("/chat/completions"))
        .collect();
    assert_eq!(
        requests.len(),
        2,
        "a proposer and the aggregator: {}",
        out.stderr
    );
    assert!(requests
        .iter()
        .all(|l| l.contains("status=200") && l.contains("POST")));
    assert!(
        !out.stderr.contains(KEY.1),
        "the key leaked: {}",
        out.stderr
    );
    let plain = moa(sandbox.path(), &args[1..], &[KEY], None).await;
    assert!(
        !plain.stderr.contains("/chat/completions"),
        "{}",
        plain.stderr
    );
}

/// "hello" to `command`: `ask` takes it as an argument, `chat` as a line on stdin.
fn say_hello(command: &str, args: &mut Vec<&str>) -> Option<&'static str> {
    if command == "ask" {
        args.push("hello");
        None
    } else {
        Some("hello\n")
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ask_and_chat_share_model_layers_rounds_system_and_json() {
    let fake = FakeOpenAi::start().await;
    script(&fake);
    let sandbox = Sandbox::new(&fake, "");
    // `--model M` alone: that model answers alone, one call, with the system message first.
    for command in ["ask", "chat"] {
        let before = fake.requests().len();
        let mut args = vec![command, "-m", "together:p/agg", "--system", "be brief"];
        let stdin = say_hello(command, &mut args);
        let out = moa(sandbox.path(), &args, &[KEY], stdin).await;
        assert_eq!(out.code, 0, "{command}: {}", out.stderr);
        assert!(out.stdout.contains("answer 1"), "{command}: {}", out.stdout);
        let requests = fake.requests();
        assert_eq!(requests.len() - before, 1, "{command}: one model, one call");
        let only = requests.last().unwrap();
        assert_eq!(only.model, "p/agg");
        assert_eq!(only.messages()[0], ("system".into(), "be brief".into()));
    }
    // `--rounds 2` and `--layers 3` are the same run on both commands; with them `--model` is
    // the aggregator.
    for command in ["ask", "chat"] {
        for shape in [["--rounds", "2"], ["--layers", "3"]] {
            let before = fake.requests().len();
            let mut args = vec![command, "--json", "--model", "together:p/agg"];
            args.extend(["--proposers", "together:p/one"]);
            args.extend(shape);
            let stdin = say_hello(command, &mut args);
            let out = moa(sandbox.path(), &args, &[KEY], stdin).await;
            assert_eq!(out.code, 0, "{command} {shape:?}: {}", out.stderr);
            assert_eq!(fake.requests().len() - before, 3, "{command} {shape:?}");
            // (ask prints the trace pretty, chat one line per turn.)
            let trace: serde_json::Value = serde_json::Deserializer::from_str(&out.stdout)
                .into_iter()
                .next()
                .unwrap()
                .unwrap();
            assert_eq!(trace["answer"], "answer 1", "{command}: {trace}");
        }
    }
}

#[cfg(feature = "bedrock")]
#[tokio::test(flavor = "multi_thread")]
async fn providers_json_shows_bedrock_ready_with_aws_credentials_and_a_region() {
    let dir = tempfile::tempdir().unwrap();
    let list = |env: Vec<(&'static str, &'static str)>| {
        let dir = dir.path().to_path_buf();
        async move {
            let out = moa(&dir, &["providers", "--json"], &env, None).await;
            assert_eq!(out.code, 0, "{}", out.stderr);
            let rows: Vec<serde_json::Value> = serde_json::from_str(&out.stdout).unwrap();
            rows.into_iter().find(|r| r["name"] == "bedrock").unwrap()
        }
    };
    let none = list(vec![]).await;
    assert_eq!(none["ready"], false);
    assert_eq!(none["key"], "missing");
    let no_region = list(vec![
        ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
        ("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI"),
    ])
    .await;
    assert_eq!(no_region["key"], "set");
    assert_eq!(no_region["ready"], false);
    assert_eq!(no_region["missing"], "AWS_REGION");
    let ready = list(vec![
        ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
        ("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI"),
        ("AWS_REGION", "eu-west-1"),
    ])
    .await;
    assert_eq!(ready["ready"], true);
    assert_eq!(
        ready["base_url"],
        "https://bedrock-runtime.eu-west-1.amazonaws.com"
    );
    assert!(!ready.to_string().contains("wJalrXUtnFEMI"));

    // The table's rows line up: every KEY column starts where the header's does.
    let table = moa(
        dir.path(),
        &["providers"],
        &[("AWS_REGION", "eu-west-1"), ("OLLAMA_HOST", "gpu-box:9999")],
        None,
    )
    .await;
    let lines: Vec<&str> = table.stdout.lines().collect();
    let at = lines[0]
        .find("KEY\n")
        .unwrap_or_else(|| lines[0].rfind("KEY").unwrap());
    for line in &lines[1..] {
        assert!(line.len() > at && line.as_bytes()[at - 1] == b' ', "{line}");
    }
    assert!(
        table.stdout.contains("http://gpu-box:9999/v1"),
        "{}",
        table.stdout
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn no_color_and_pipes_get_plain_errors() {
    let dir = tempfile::tempdir().unwrap();
    // stderr is a pipe here: never coloured, whatever TERM says.
    let out = moa(
        dir.path(),
        &["ask", "--preset", "nope", "hi"],
        &[("TERM", "xterm-256color")],
        None,
    )
    .await;
    assert_eq!(out.code, 2);
    assert!(out.stderr.starts_with("moa: "), "{}", out.stderr);
    assert!(!out.stderr.contains('\x1b'), "{:?}", out.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chat_is_kept_and_continued_with_its_history() {
    let fake = FakeOpenAi::start().await;
    script(&fake);
    let sandbox = Sandbox::new(&fake, "");
    let mut args = vec!["chat"];
    args.extend(SHAPE);
    let first = moa(sandbox.path(), &args, &[KEY], Some("first question\n")).await;
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert_eq!(first.stdout, "answer 1\n");

    let logs = moa(sandbox.path(), &["logs", "list", "--json"], &[], None).await;
    let runs: Vec<serde_json::Value> = logs
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(runs.len(), 1, "{}", logs.stdout);
    assert_eq!(runs[0]["kind"], "chat");
    assert_eq!(runs[0]["turns"], 1);
    assert_eq!(runs[0]["prompt"], "first question");
    let id = runs[0]["id"].as_str().unwrap().to_string();

    // --continue: the second turn's proposers see the first turn and its answer.
    let mut cont = args.clone();
    cont.push("--continue");
    let second = moa(sandbox.path(), &cont, &[KEY], Some("second question\n")).await;
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert_eq!(second.stdout, "answer 2\n");
    let proposer = fake
        .requests()
        .into_iter()
        .rfind(|r| r.model == "p/one")
        .unwrap();
    let roles: Vec<(String, String)> = proposer.messages();
    assert_eq!(
        roles,
        vec![
            ("user".into(), "first question".into()),
            ("assistant".into(), "answer 1".into()),
            ("user".into(), "second question".into()),
        ]
    );

    // Both turns are in the same run; --resume by a prefix of the id goes on from there.
    let show = moa(sandbox.path(), &["logs", "show", &id, "--json"], &[], None).await;
    let run: serde_json::Value = serde_json::from_str(&show.stdout).unwrap();
    assert_eq!(run["turns"].as_array().unwrap().len(), 2);
    assert_eq!(run["turns"][1]["answer"], "answer 2");
    let mut resume = args.clone();
    resume.extend(["--resume", &id[..id.len() - 2]]);
    let third = moa(sandbox.path(), &resume, &[KEY], Some("third\n")).await;
    assert_eq!(third.stdout, "answer 3\n", "{}", third.stderr);

    // --no-log keeps nothing; an unknown id is an error naming it.
    let mut unlogged = args.clone();
    unlogged.push("--no-log");
    moa(sandbox.path(), &unlogged, &[KEY], Some("not kept\n")).await;
    let logs = moa(sandbox.path(), &["logs", "list", "--json"], &[], None).await;
    assert_eq!(logs.stdout.lines().count(), 1, "{}", logs.stdout);
    let mut missing = args.clone();
    missing.extend(["--resume", "19990101"]);
    let out = moa(sandbox.path(), &missing, &[KEY], Some("x\n")).await;
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("no run has the id `19990101`"),
        "{}",
        out.stderr
    );
}
