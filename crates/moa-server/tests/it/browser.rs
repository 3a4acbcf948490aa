//! The playground page in a real browser: headless Chromium loads `/` from the server, asks
//! the mixture a question, and the test watches the proposer panes fill in before the answer
//! appears. The upstream is the fake OpenAI server, so everything between the page and the
//! wire is the real thing. Skipped when no Chromium is installed, unless MOA_REQUIRE_BROWSER is
//! set (CI sets it, after installing Chromium).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use moa_core::{AgentSpec, Moa, Preset, Price, PriceTable, PromptStyle, RunOptions};
use moa_providers::{Endpoint, Registry, RetryPolicy};
use moa_server::{router, serve, FixedEngines, ServerConfig};
use moa_testkit::browser::{self, Browser};
use moa_testkit::{FakeOpenAi, Reply};
use serde_json::Value;

/// An upstream key and address planted in an upstream error: the page must never show them.
const PLANTED: &str = "upstream at http://10.9.8.7:4000/v1 refused key sk-planted-123";

struct Page {
    runtime: tokio::runtime::Runtime,
    fake: FakeOpenAi,
    base: String,
}

/// The server on loopback with preset `mix`: two proposer layers (p1, p2 and a failing p3;
/// then p1, p2), aggregator `agg`, every model priced; proposers and aggregator stream in
/// small pieces.
fn serve_page(config: ServerConfig) -> Page {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (fake, base) = runtime.block_on(async {
        let fake = FakeOpenAi::start().await;
        fake.respond_with(|r| match r.model.as_str() {
            "p3" => Reply::error(500, "server_error", PLANTED),
            "agg" => Reply::text(format!(
                "The mixture agrees: Paris (turn {}).",
                r.messages()
                    .iter()
                    .filter(|(role, _)| role == "user")
                    .count()
            ))
            .with_usage(200, 9)
            .with_chunk_chars(3),
            model => Reply::text(format!("{model} says Paris is the capital."))
                .with_usage(20, 7)
                .with_chunk_chars(4),
        });
        let mut registry = Registry::new(Arc::new(|_| None));
        let mut endpoint = Endpoint::custom("up", &fake.base_url());
        endpoint.retry = RetryPolicy::none();
        registry.insert_endpoint(endpoint);
        let preset = Preset {
            name: "mix".into(),
            description: String::new(),
            layers: vec![
                vec![
                    AgentSpec::new("up:p1"),
                    AgentSpec::new("up:p2"),
                    AgentSpec::new("up:p3"),
                ],
                vec![AgentSpec::new("up:p1"), AgentSpec::new("up:p2")],
            ],
            aggregator: AgentSpec::new("up:agg"),
            prompt_style: PromptStyle::Reference,
            policy: Default::default(),
        };
        let mut prices = PriceTable::empty();
        for model in ["up:p1", "up:p2", "up:p3", "up:agg"] {
            prices.set(model, Price::new(1.0, 2.0));
        }
        let options = RunOptions {
            prices: Arc::new(prices),
            ..RunOptions::default()
        };
        let moa = Moa::new(registry.bind(&preset).unwrap(), options);
        let app = router(FixedEngines(BTreeMap::from([("mix".into(), moa)])), config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(serve(
            listener,
            app,
            std::future::pending(),
            Duration::from_secs(1),
        ));
        (fake, base)
    });
    Page {
        runtime,
        fake,
        base,
    }
}

/// Chromium, or `None` (with a note) when it is not installed and not required.
fn launch() -> Option<Browser> {
    let Some(executable) = browser::chromium() else {
        assert!(
            !browser::required(),
            "MOA_REQUIRE_BROWSER is set but no Chromium was found (install Debian's `chromium`, \
             or set MOA_TEST_CHROMIUM)"
        );
        eprintln!("skipped: no Chromium (install Debian's `chromium` to run the browser tests)");
        return None;
    };
    Some(Browser::launch(&executable, 1280, 1100).expect("Chromium starts"))
}

/// Records, in the page, the order in which panes finished and the answer began.
const WATCH: &str = r#"(() => {
    window.seen = [];
    new MutationObserver(() => {
        for (const pane of document.querySelectorAll('.pane.done, .pane.failed')) {
            const key = 'pane ' + pane.dataset.layer + '/' + pane.dataset.index;
            if (!window.seen.includes(key)) window.seen.push(key);
        }
        const answer = document.querySelector('.answer');
        if (answer && answer.textContent && !window.seen.includes('answer')) window.seen.push('answer');
    }).observe(document.getElementById('log'), {subtree: true, childList: true, characterData: true, attributes: true});
    return true;
})()"#;

fn ask(browser: &mut Browser, question: &str) {
    browser
        .eval("document.getElementById('prompt').focus()")
        .unwrap();
    browser.type_text(question).unwrap();
    browser
        .eval("document.getElementById('send').click(), true")
        .unwrap();
}

fn text(browser: &mut Browser, script: &str) -> String {
    browser
        .eval(script)
        .unwrap()
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn the_playground_streams_each_layers_proposers_then_the_answer_and_keeps_the_conversation() {
    let Some(mut browser) = launch() else { return };
    let page = serve_page(ServerConfig::default());
    browser.navigate(&format!("{}/", page.base)).unwrap();
    browser.wait_for("document.body.dataset.ready").unwrap();
    assert_eq!(
        text(&mut browser, "document.getElementById('preset').value"),
        "mix"
    );
    assert_eq!(
        text(&mut browser, "document.getElementById('plan').textContent"),
        "layer 1: up:p1, up:p2, up:p3 · layer 2: up:p1, up:p2 → up:agg"
    );

    browser.eval(WATCH).unwrap();
    ask(&mut browser, "What is the capital of France?");
    browser
        .wait_for("document.querySelector('.run[data-done]')")
        .unwrap();

    // Five proposer panes in two layers: four answered, p3 failed and says so.
    let panes = browser
        .eval(
            "[...document.querySelectorAll('.pane')].map(p => [p.dataset.layer + '/' + p.dataset.index, \
             p.className, p.querySelector('.model').textContent, p.querySelector('.text').textContent, \
             p.querySelector('.stats').textContent])",
        )
        .unwrap();
    let panes = panes.as_array().unwrap();
    assert_eq!(panes.len(), 5, "{panes:?}");
    for pane in panes {
        let (key, class, model) = (&pane[0], &pane[1], pane[2].as_str().unwrap());
        if model == "up:p3" {
            assert_eq!(class, "pane failed", "{pane:?}");
            assert!(pane[4].as_str().unwrap().contains("500"), "{pane:?}");
        } else {
            assert_eq!(class, "pane done", "{key} {pane:?}");
            let name = model.trim_start_matches("up:");
            assert_eq!(pane[3], format!("{name} says Paris is the capital."));
            // Latency, tokens and the call's cost: 20 in at $1/M and 7 out at $2/M.
            let stats = pane[4].as_str().unwrap();
            assert!(stats.contains("20 in / 7 out tokens"), "{stats}");
            assert!(stats.contains("$0.000034"), "{stats}");
        }
    }
    assert_eq!(
        text(
            &mut browser,
            "document.querySelector('.answer').textContent"
        ),
        "The mixture agrees: Paris (turn 1)."
    );
    let title = text(
        &mut browser,
        "document.querySelector('.layer h3').textContent",
    );
    assert!(
        title.starts_with("Layer 1 · 2 answered · 1 failed"),
        "{title}"
    );
    // The panes were live: every pane had finished before the answer's first token showed.
    let seen: Vec<String> = serde_json::from_value(browser.eval("window.seen").unwrap()).unwrap();
    assert_eq!(seen.last().map(String::as_str), Some("answer"), "{seen:?}");
    assert_eq!(seen.len(), 6, "{seen:?}");
    // Nothing an upstream wrote about itself reaches the page.
    let all = text(&mut browser, "document.body.innerText");
    assert!(
        !all.contains("10.9.8.7") && !all.contains("sk-planted"),
        "{all}"
    );

    // The trace copies as JSON: the request, the answer and every call.
    browser
        .browser_call(
            "Browser.grantPermissions",
            serde_json::json!({"origin": page.base,
                               "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]}),
        )
        .unwrap();
    browser
        .eval("document.querySelector('.run .copy').click(), true")
        .unwrap();
    browser
        .wait_for("document.querySelector('.run .copy').textContent === 'Copied'")
        .unwrap();
    let copied = text(&mut browser, "navigator.clipboard.readText()");
    let trace: Value = serde_json::from_str(&copied).unwrap();
    assert_eq!(trace["answer"], "The mixture agrees: Paris (turn 1).");
    assert_eq!(trace["request"]["model"], "mix");
    assert_eq!(trace["moa"]["layers"].as_array().unwrap().len(), 2);
    assert_eq!(trace["moa"]["aggregator"]["model"], "up:agg");
    assert_eq!(trace["usage"]["total_tokens"], 4 * 27 + 209);

    // A second turn carries the first answer: the conversation is multi-turn.
    ask(&mut browser, "And of Italy?");
    browser
        .wait_for("document.querySelectorAll('.run[data-done]').length === 2")
        .unwrap();
    let answers = browser
        .eval("[...document.querySelectorAll('.answer')].map(a => a.textContent)")
        .unwrap();
    assert_eq!(answers[1], "The mixture agrees: Paris (turn 2).");
    let last = page.fake.requests_for("agg").pop().unwrap();
    let messages = last.messages();
    let roles: Vec<&str> = messages.iter().map(|(role, _)| role.as_str()).collect();
    assert_eq!(roles, ["system", "user", "assistant", "user"]);
    assert_eq!(messages[2].1, "The mixture agrees: Paris (turn 1).");

    browser
        .eval("document.querySelector('.run[data-done]').scrollIntoView(), true")
        .unwrap();
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("playground.png");
    browser.screenshot(&shot).unwrap();
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000);
    eprintln!("screenshot: {}", shot.display());
    drop(page.runtime);
}

#[test]
fn with_an_api_key_the_playground_asks_for_it_and_keeps_it_in_memory_only() {
    let Some(mut browser) = launch() else { return };
    let page = serve_page(ServerConfig {
        api_key: Some("playground-key-42".into()),
        ..ServerConfig::default()
    });
    browser.navigate(&format!("{}/", page.base)).unwrap();
    browser
        .wait_for("!document.getElementById('keyform').hidden")
        .unwrap();
    // A wrong key is refused and asked for again.
    browser
        .eval("document.getElementById('key').focus()")
        .unwrap();
    browser.type_text("wrong").unwrap();
    browser
        .eval("document.getElementById('keyform').requestSubmit(), true")
        .unwrap();
    browser
        .wait_for("document.getElementById('error').textContent.includes('refused')")
        .unwrap();
    browser
        .eval("document.getElementById('key').focus()")
        .unwrap();
    browser.type_text("playground-key-42").unwrap();
    browser
        .eval("document.getElementById('keyform').requestSubmit(), true")
        .unwrap();
    browser.wait_for("document.body.dataset.ready").unwrap();
    ask(&mut browser, "Capital of France?");
    browser
        .wait_for("document.querySelector('.run[data-done]')")
        .unwrap();
    assert_eq!(
        text(
            &mut browser,
            "document.querySelector('.answer').textContent"
        ),
        "The mixture agrees: Paris (turn 1)."
    );
    // The key is in no storage, cookie, field or the address.
    let kept = text(
        &mut browser,
        "JSON.stringify([localStorage.length, sessionStorage.length, document.cookie, \
         document.getElementById('key').value, location.href, document.documentElement.outerHTML.includes('playground-key-42')])",
    );
    assert_eq!(kept, format!("[0,0,\"\",\"\",\"{}/\",false]", page.base));
    drop(page.runtime);
}

#[test]
fn the_playground_changes_the_mixture_for_a_request() {
    let Some(mut browser) = launch() else { return };
    let page = serve_page(ServerConfig::default());
    browser.navigate(&format!("{}/", page.base)).unwrap();
    browser.wait_for("document.body.dataset.ready").unwrap();
    // One proposer layer of p2, and p1 as the aggregator, for this request only.
    browser
        .eval("document.getElementById('edit').open = true; document.getElementById('proposers').focus()")
        .unwrap();
    browser.type_text("up:p2").unwrap();
    browser
        .eval("document.getElementById('aggregator').focus()")
        .unwrap();
    browser.type_text("up:p1").unwrap();
    browser
        .eval("document.getElementById('layers').focus()")
        .unwrap();
    browser.type_text("2").unwrap();
    ask(&mut browser, "Capital of France?");
    browser
        .wait_for("document.querySelector('.run[data-done]')")
        .unwrap();
    let models = browser
        .eval("[...document.querySelectorAll('.pane .model')].map(m => m.textContent)")
        .unwrap();
    assert_eq!(models, serde_json::json!(["up:p2"]));
    assert_eq!(
        text(
            &mut browser,
            "document.querySelector('.answer').textContent"
        ),
        "p1 says Paris is the capital."
    );
    let sent = page.fake.requests_for("p1").pop().unwrap();
    assert_eq!(sent.messages()[0].0, "system", "p1 aggregated");
    drop(page.runtime);
}
