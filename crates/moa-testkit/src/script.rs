//! The per-model script both fakes follow, and the record of what they received.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::watch;

use crate::reply::Reply;

/// One request a fake received.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// Arrival order, from 0.
    pub seq: usize,
    pub model: String,
    pub path: String,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The raw body as received.
    pub body: Bytes,
    /// The body parsed as JSON (`Null` if it was not JSON).
    pub json: Value,
    pub received_at: Instant,
}

impl Recorded {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn body_text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap_or("<not utf-8>")
    }

    /// The request's messages as `(role, content)` pairs, in any dialect: OpenAI's messages;
    /// Anthropic's and Bedrock's `system` field first as a `system` message, and content given
    /// as blocks joined.
    pub fn messages(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let system = text_of(&self.json["system"]);
        if !system.is_empty() {
            out.push(("system".to_string(), system));
        }
        if let Some(messages) = self.json["messages"].as_array() {
            for m in messages {
                out.push((
                    m["role"].as_str().unwrap_or_default().to_string(),
                    text_of(&m["content"]),
                ));
            }
        }
        out
    }

    /// Whether the request asked for a stream (a `stream` field, or Bedrock's
    /// `converse-stream` path).
    pub fn is_stream(&self) -> bool {
        self.json["stream"].as_bool() == Some(true) || self.path.ends_with("/converse-stream")
    }
}

/// A content value as text: a string, or the `text` of each block joined by newlines.
fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|b| b["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// How a response ended, as the fake saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// The whole response was handed to the connection.
    Completed,
    /// The response was dropped before it finished: the client went away.
    ClientGone,
}

type Responder = Arc<dyn Fn(&Recorded) -> Reply + Send + Sync>;

#[derive(Default)]
struct Inner {
    requests: Vec<Recorded>,
    queues: HashMap<String, VecDeque<Reply>>,
    responder: Option<Responder>,
}

/// Shared script and recorder.
pub(crate) struct Script {
    inner: Mutex<Inner>,
    received: watch::Sender<usize>,
    endings: watch::Sender<Vec<(usize, Ending, Instant)>>,
}

impl Script {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner::default()),
            received: watch::channel(0).0,
            endings: watch::channel(Vec::new()).0,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock is a test failure already; keep the data usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn push(&self, model: &str, reply: Reply) {
        self.lock()
            .queues
            .entry(model.to_string())
            .or_default()
            .push_back(reply);
    }

    pub fn respond_with(&self, responder: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) {
        self.lock().responder = Some(Arc::new(responder));
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.lock().requests.clone()
    }

    /// Records a request and picks its reply: the model's queue first, then the responder, then
    /// a default answer naming the model.
    pub fn record(&self, mut request: Recorded) -> (usize, Reply) {
        let mut inner = self.lock();
        let seq = inner.requests.len();
        request.seq = seq;
        let queued = inner
            .queues
            .get_mut(&request.model)
            .and_then(VecDeque::pop_front);
        let reply = match (queued, &inner.responder) {
            (Some(reply), _) => reply,
            (None, Some(responder)) => responder(&request),
            (None, None) => Reply::text(format!("Answer from {}.", request.model)),
        };
        inner.requests.push(request);
        drop(inner);
        self.received.send_modify(|n| *n += 1);
        (seq, reply)
    }

    pub async fn wait_for_requests(&self, count: usize) {
        let mut rx = self.received.subscribe();
        // The sender lives as long as self, so this cannot fail.
        let _ = rx.wait_for(|n| *n >= count).await;
    }

    pub async fn wait_ending(&self, seq: usize) -> Ending {
        let mut rx = self.endings.subscribe();
        let endings = rx
            .wait_for(|e| e.iter().any(|(s, _, _)| *s == seq))
            .await
            .map(|e| e.clone())
            .unwrap_or_default();
        endings
            .iter()
            .find(|(s, _, _)| *s == seq)
            .map(|(_, e, _)| *e)
            .unwrap_or(Ending::ClientGone)
    }

    pub fn endings(&self) -> Vec<(usize, Ending)> {
        self.endings
            .borrow()
            .iter()
            .map(|(s, e, _)| (*s, *e))
            .collect()
    }

    pub fn ended_at(&self, seq: usize) -> Option<Instant> {
        self.endings
            .borrow()
            .iter()
            .find(|(s, _, _)| *s == seq)
            .map(|(_, _, at)| *at)
    }

    /// Holds back a reply until its gate opens and its delay passes.
    pub async fn gate(&self, reply: &Reply) {
        if let Some(count) = reply.after_requests {
            self.wait_for_requests(count).await;
        }
        if !reply.delay.is_zero() {
            tokio::time::sleep(reply.delay).await;
        }
    }

    fn end(&self, seq: usize, ending: Ending) {
        self.endings
            .send_modify(|e| e.push((seq, ending, Instant::now())));
    }
}

/// Records how a response ended when it is dropped.
pub(crate) struct EndGuard {
    pub script: Arc<Script>,
    pub seq: usize,
    pub completed: bool,
}

impl EndGuard {
    /// Marks the response as delivered in full (or broken off as scripted).
    pub fn finish(&mut self) {
        self.completed = true;
    }
}

impl Drop for EndGuard {
    fn drop(&mut self) {
        let ending = if self.completed {
            Ending::Completed
        } else {
            Ending::ClientGone
        };
        self.script.end(self.seq, ending);
    }
}
