//! A real browser for page tests: headless Chromium driven over the DevTools protocol.
//!
//! The protocol is JSON over one WebSocket; the tests need a handful of its methods (open a
//! page, evaluate script, type, take a screenshot), so they are called by name here rather
//! than through a crate that generates the whole protocol (several hundred thousand lines to
//! compile on every CI run). Every wait is bounded: a browser that hangs fails the test.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

/// The longest one protocol call, or one wait for the page, may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Where Chromium is: `MOA_TEST_CHROMIUM`, else the usual install paths; `None` if absent.
pub fn chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("MOA_TEST_CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

/// Whether a missing browser fails the test (`MOA_REQUIRE_BROWSER=1`, as CI sets it) rather
/// than skipping it.
pub fn required() -> bool {
    std::env::var_os("MOA_REQUIRE_BROWSER").is_some_and(|v| v != "0")
}

/// A headless Chromium with one page open, killed when dropped.
pub struct Browser {
    child: Child,
    socket: WebSocket<TcpStream>,
    session: String,
    next_id: u64,
    _profile: tempfile::TempDir,
}

pub type Error = Box<dyn std::error::Error + Send + Sync>;

impl Browser {
    /// Starts `executable` headless with an empty profile and no network of its own (no
    /// updates, sync or background requests), and opens a blank page of `width` x `height`.
    pub fn launch(executable: &Path, width: u32, height: u32) -> Result<Self, Error> {
        let profile = tempfile::tempdir()?;
        let mut child = Command::new(executable)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--remote-debugging-port=0",
                "--remote-allow-origins=*",
            ])
            .arg(format!("--window-size={width},{height}"))
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        // Chromium says where its protocol listens on stderr; the rest of stderr is drained
        // so that the browser never blocks on a full pipe.
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !sent {
                    if let Some(url) = line.strip_prefix("DevTools listening on ") {
                        sent = tx.send(url.trim().to_string()).is_ok();
                    }
                }
            }
        });
        let url = match rx.recv_timeout(CALL_TIMEOUT) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                return Err("Chromium did not start its DevTools endpoint within 60 s".into());
            }
        };
        let address = url
            .strip_prefix("ws://")
            .and_then(|rest| rest.split('/').next())
            .ok_or_else(|| format!("unexpected DevTools address {url}"))?;
        let stream = TcpStream::connect(address)?;
        stream.set_read_timeout(Some(CALL_TIMEOUT))?;
        stream.set_write_timeout(Some(CALL_TIMEOUT))?;
        let (socket, _) = tungstenite::client(url.as_str(), stream)
            .map_err(|e| format!("DevTools handshake: {e}"))?;
        let mut browser = Self {
            child,
            socket,
            session: String::new(),
            next_id: 0,
            _profile: profile,
        };
        let target = browser.browser_call("Target.createTarget", json!({"url": "about:blank"}))?;
        let target_id = target["targetId"]
            .as_str()
            .ok_or("no targetId")?
            .to_string();
        let attached = browser.browser_call(
            "Target.attachToTarget",
            json!({"targetId": target_id, "flatten": true}),
        )?;
        browser.session = attached["sessionId"]
            .as_str()
            .ok_or("no sessionId")?
            .to_string();
        browser.call("Page.enable", json!({}))?;
        browser.call("Runtime.enable", json!({}))?;
        // A headless page has no focus of its own; the clipboard and focus events need one.
        browser.call(
            "Emulation.setFocusEmulationEnabled",
            json!({"enabled": true}),
        )?;
        Ok(browser)
    }

    /// A protocol method of the browser itself.
    pub fn browser_call(&mut self, method: &str, params: Value) -> Result<Value, Error> {
        self.send(method, params, None)
    }

    /// A protocol method of the open page.
    pub fn call(&mut self, method: &str, params: Value) -> Result<Value, Error> {
        let session = self.session.clone();
        self.send(method, params, Some(&session))
    }

    fn send(&mut self, method: &str, params: Value, session: Option<&str>) -> Result<Value, Error> {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        self.socket
            .send(Message::text(message.to_string()))
            .map_err(|e| format!("{method}: {e}"))?;
        // Events arrive between the answers; they are not needed, so they are passed over.
        loop {
            let reply = self.socket.read().map_err(|e| format!("{method}: {e}"))?;
            let Message::Text(text) = reply else { continue };
            let value: Value = serde_json::from_str(text.as_str())?;
            if value["id"].as_u64() != Some(id) {
                continue;
            }
            if let Some(error) = value.get("error") {
                return Err(format!("{method}: {error}").into());
            }
            return Ok(value["result"].clone());
        }
    }

    /// Loads `url` and waits until its document has loaded.
    pub fn navigate(&mut self, url: &str) -> Result<(), Error> {
        let result = self.call("Page.navigate", json!({"url": url}))?;
        if let Some(error) = result.get("errorText").and_then(Value::as_str) {
            return Err(format!("cannot load {url}: {error}").into());
        }
        self.wait_for("document.readyState === 'complete'")?;
        Ok(())
    }

    /// Evaluates `expression` in the page (awaiting it if it is a promise) and returns its
    /// value; a thrown exception is the error.
    pub fn eval(&mut self, expression: &str) -> Result<Value, Error> {
        let result = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "awaitPromise": true, "returnByValue": true,
                   "userGesture": true}),
        )?;
        if let Some(details) = result.get("exceptionDetails") {
            let text = details["exception"]["description"]
                .as_str()
                .or_else(|| details["text"].as_str())
                .unwrap_or("exception");
            return Err(format!("page script failed: {text}").into());
        }
        Ok(result["result"]["value"].clone())
    }

    /// Waits until the page's `condition` (a script expression) is truthy, re-checking each
    /// time the document changes, and returns its value. Fails after a minute.
    pub fn wait_for(&mut self, condition: &str) -> Result<Value, Error> {
        let script = format!(
            r#"new Promise((resolve, reject) => {{
                const check = () => {{ try {{ return ({condition}); }} catch (_) {{ return false; }} }};
                const first = check();
                if (first) {{ resolve(first); return; }}
                const observer = new MutationObserver(() => {{
                    const value = check();
                    if (value) {{ observer.disconnect(); clearTimeout(timer); resolve(value); }}
                }});
                observer.observe(document, {{subtree: true, childList: true, characterData: true, attributes: true}});
                const timer = setTimeout(() => {{ observer.disconnect();
                    reject(new Error('timed out waiting for: ' + {quoted})); }}, {ms});
            }})"#,
            quoted = json!(condition),
            ms = CALL_TIMEOUT.as_millis() - 5_000,
        );
        self.eval(&script)
    }

    /// Types `text` into the focused element, as a keyboard would insert it.
    pub fn type_text(&mut self, text: &str) -> Result<(), Error> {
        self.call("Input.insertText", json!({"text": text}))?;
        Ok(())
    }

    /// Writes a PNG of what the window shows to `path`.
    pub fn screenshot(&mut self, path: &Path) -> Result<(), Error> {
        let shot = self.call("Page.captureScreenshot", json!({"format": "png"}))?;
        let data = shot["data"].as_str().ok_or("no screenshot data")?;
        let png = base64::engine::general_purpose::STANDARD.decode(data)?;
        std::fs::write(path, png)?;
        Ok(())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.socket.close(None);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
