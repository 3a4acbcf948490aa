//! The local tokenizer and chat template on ordinary and hostile prompts (SmolLM2's 49,152-token
//! BPE): throughput on English, and how time grows with the length of inputs that are
//! quadratic for a naive BPE (one long word, a run of special tokens).
//!
//! `cargo bench -p moa-local --bench tokenizer` (the model from MOA_MODELS_DIR or the user
//! cache; fetched on first use).

use std::time::{Duration, Instant};

use moa_core::Message;
use moa_local::model::Model;

mod common;

/// The best of `repeats` timings of `f`, and its result.
fn best<T>(repeats: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut out = None;
    let mut fastest = Duration::MAX;
    for _ in 0..repeats {
        let t = Instant::now();
        let value = f();
        fastest = fastest.min(t.elapsed());
        out = Some(value);
    }
    (fastest, out.unwrap_or_else(|| unreachable!("repeats > 0")))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let full = std::env::args().any(|a| a == "--bench");
    let Some(path) = common::smollm2(full)? else {
        return Ok(());
    };
    let model = Model::load(&path)?;
    let tokenizer = &model.tokenizer;
    let repeats = if full { 5 } else { 1 };
    let scale = if full { 1 } else { 16 };

    println!("| input | bytes | tokens | time (best of {repeats}) | MB/s |");
    println!("|---|---|---|---|---|");
    let row = |name: &str, text: &str| {
        let (time, ids) = best(repeats, || tokenizer.encode(text));
        println!(
            "| {name} | {} | {} | {:.2} ms | {:.1} |",
            text.len(),
            ids.len(),
            time.as_secs_f64() * 1e3,
            text.len() as f64 / time.as_secs_f64() / 1e6
        );
    };
    let english = "The quick brown fox jumps over the lazy dog, and then it writes a short essay \
                   about why the sky is blue, citing Rayleigh scattering and the eye's response. ";
    row(
        "English prose, 1 MiB",
        &english.repeat((1 << 20) / english.len() / scale),
    );
    for n in [2_000, 16_000, 128_000] {
        row(&format!("one word of {n} letters"), &"a".repeat(n / scale));
    }
    for n in [60_000, 480_000] {
        let special = "<|im_start|>";
        row(
            &format!("{n} bytes of `{special}`"),
            &special.repeat(n / special.len() / scale),
        );
    }
    row(
        "1 MiB of mixed scripts and emoji",
        &"héllo мир 世界 😀 ".repeat((1 << 20) / 28 / scale),
    );

    // The chat template around a long conversation.
    let messages: Vec<Message> = (0..200)
        .map(|i| match i % 2 {
            0 => Message::user(english.repeat(4)),
            _ => Message::assistant(english.repeat(4)),
        })
        .collect();
    let (time, prompt) = best(repeats, || model.template.render(&messages));
    println!(
        "| chat template, 200 messages | {} | | {:.2} ms | {:.1} |",
        prompt.as_ref().map_or(0, String::len),
        time.as_secs_f64() * 1e3,
        prompt.as_ref().map_or(0, String::len) as f64 / time.as_secs_f64() / 1e6
    );
    Ok(())
}
