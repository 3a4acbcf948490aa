//! Local model speed: prefill and generation tokens/s for SmolLM2-135M, and the wall time of a
//! whole local MoA run (the `local` preset), on this machine's CPU.
//!
//! `cargo bench -p moa-local --bench local` (fetches the model into MOA_MODELS_DIR or the user
//! cache on first use).

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use moa_core::{Message, Moa, Plan, PresetError, Provider, RunEvent, RunOptions};
use moa_local::model::Model;
use moa_local::LocalProvider;

mod common;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let full = std::env::args().any(|a| a == "--bench");
    let Some(path) = common::smollm2(full)? else {
        return Ok(());
    };
    let started = Instant::now();
    let model = Model::load(&path)?;
    let load = started.elapsed();

    let (prompt_len, gen_len, repeats) = if full { (256, 128, 3) } else { (16, 8, 1) };
    let prompt: Vec<u32> = model
        .tokenizer
        .encode(&"The quick brown fox jumps over the lazy dog. ".repeat(prompt_len / 8))
        .into_iter()
        .take(prompt_len)
        .collect();
    let (mut prefill_best, mut decode_best) = (0.0f64, 0.0f64);
    for _ in 0..repeats {
        let mut cache = model.new_cache();
        let t = Instant::now();
        let mut logits = model.forward(&prompt, &mut cache)?;
        prefill_best = prefill_best.max(prompt.len() as f64 / t.elapsed().as_secs_f64());
        let t = Instant::now();
        for _ in 0..gen_len {
            let next = moa_local::sampler::argmax(&logits);
            logits = model.forward(&[next], &mut cache)?;
        }
        decode_best = decode_best.max(gen_len as f64 / t.elapsed().as_secs_f64());
    }
    // Three sequences after one shared prefill, one token each per step: a layer of proposers.
    let mut batch_best = 0.0f64;
    for _ in 0..repeats {
        let mut cache = model.new_cache();
        let logits = model.forward(&prompt, &mut cache)?;
        let mut caches = [cache.clone(), cache.clone(), cache];
        let mut tokens = vec![moa_local::sampler::argmax(&logits); 3];
        let t = Instant::now();
        for _ in 0..gen_len {
            let mut refs: Vec<&mut moa_local::model::Cache> = caches.iter_mut().collect();
            let all = model.forward_batch(&tokens, &mut refs)?;
            tokens = all.iter().map(|l| moa_local::sampler::argmax(l)).collect();
        }
        batch_best = batch_best.max(3.0 * gen_len as f64 / t.elapsed().as_secs_f64());
    }
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| model load (mmap + parse) | {:.2} s |",
        load.as_secs_f64()
    );
    println!(
        "| prefill, {} tokens | {prefill_best:.0} tokens/s |",
        prompt.len()
    );
    println!("| generation, {gen_len} tokens after the prompt | {decode_best:.1} tokens/s |");
    println!("| generation, 3 sequences batched, {gen_len} tokens each | {batch_best:.1} tokens/s in all |");
    if !full {
        return Ok(());
    }

    // A whole run of the local preset, as `moa ask --preset local` does it.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // The model's own folder holds it under its catalogue name.
    let dir = path.parent().ok_or("the model path has no folder")?;
    let provider: Arc<dyn Provider> = Arc::new(LocalProvider::new(dir));
    let preset = moa_core::preset::builtin("local").ok_or("no local preset")?;
    let plan = Plan::bind(&preset, |_| Ok::<_, PresetError>(provider.clone()))?;
    let moa = Moa::new(plan, RunOptions::default());
    for question in [
        "What is the capital of France?",
        "Give me three tips for sleeping better.",
    ] {
        let t = Instant::now();
        let (mut first_answer_token, mut tokens) = (None, 0);
        runtime.block_on(async {
            let mut stream = moa.run(vec![Message::user(question)]);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(RunEvent::AggregatorDelta { .. }) => {
                        first_answer_token.get_or_insert(t.elapsed());
                    }
                    Ok(RunEvent::Done(trace)) => tokens = trace.usage.completion_tokens,
                    Ok(_) => {}
                    Err(e) => eprintln!("run failed: {e}"),
                }
            }
        });
        println!(
            "| local MoA run (3 proposers + aggregator), \"{question}\" | {:.1} s wall, first answer token at {:.1} s, {tokens} tokens generated |",
            t.elapsed().as_secs_f64(),
            first_answer_token.unwrap_or_default().as_secs_f64()
        );
    }
    Ok(())
}
