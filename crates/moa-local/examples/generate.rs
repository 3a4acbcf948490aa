//! Generates one answer with a local GGUF model, through the same batching worker the provider
//! uses, and reports speed.
//! `cargo run --release -p moa-local --example generate -- MODEL.gguf "prompt" [max_tokens]`

use std::sync::Arc;
use std::time::Instant;

use moa_core::{ChatRequest, Chunk, Message};
use moa_local::model::Model;
use moa_local::{batch, request};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (path, prompt) = match (args.get(1), args.get(2)) {
        (Some(p), Some(q)) => (p, q),
        _ => return Err("usage: generate MODEL.gguf PROMPT [MAX_TOKENS]".into()),
    };
    let max_tokens = args.get(3).and_then(|n| n.parse().ok()).unwrap_or(128);
    let started = Instant::now();
    let model = Arc::new(Model::load(std::path::Path::new(path))?);
    eprintln!(
        "loaded {} in {:.2}s",
        model.config.name,
        started.elapsed().as_secs_f64()
    );
    let mut chat = ChatRequest::new("x", vec![Message::user(prompt.clone())]);
    chat.temperature = Some(0.0);
    chat.max_tokens = Some(max_tokens);
    let (out, mut answer) = tokio::sync::mpsc::unbounded_channel();
    let prompt = request::prompt_tokens(&model, &chat, &|| false)?;
    let job = batch::Job {
        limit: request::limit(&chat, prompt.len(), model.config.context),
        prompt,
        sampling: request::sampling(&chat),
        out,
    };
    let started = Instant::now();
    batch::spawn(model)?.send(job)?;
    while let Some(chunk) = answer.blocking_recv() {
        match chunk? {
            Chunk::Delta(t) => print!("{t}"),
            // The local model is given no tools and returns no log probabilities.
            Chunk::ToolCall { .. } | Chunk::Logprobs(_) | Chunk::Attempts(_) => {}
            Chunk::Finished {
                usage,
                finish_reason,
            } => {
                let u = usage.unwrap_or_default();
                let secs = started.elapsed().as_secs_f64();
                eprintln!(
                    "\n[{finish_reason:?}] prompt {} tokens, generated {} in {secs:.2}s ({:.1} tokens/s overall)",
                    u.prompt_tokens,
                    u.completion_tokens,
                    u.completion_tokens as f64 / secs
                );
                break;
            }
        }
    }
    Ok(())
}
