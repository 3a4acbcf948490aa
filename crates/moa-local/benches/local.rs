//! Local model speed: prefill and generation tokens/s for SmolLM2-135M, and the wall time of a
//! whole local MoA run (the `local` preset), on this machine's CPU.
//!
//! `cargo bench -p moa-local --bench local` (fetches the model into MOA_MODELS_DIR or the user
//! cache on first use).

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use moa_core::{Message, Moa, Plan, PresetError, Provider, RunEvent, RunOptions};
use moa_local::kernels::{self, Kernel};
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
    // Every kernel this CPU runs, measured in turns so drift in the machine's speed falls on
    // all alike; the best of the repeats counts.
    let kernels: Vec<Kernel> = Kernel::ALL.into_iter().filter(|k| k.available()).collect();
    let mut best = vec![(0.0f64, 0.0f64, 0.0f64); kernels.len()];
    for _ in 0..repeats {
        for (kernel, best) in kernels.iter().zip(best.iter_mut()) {
            kernels::use_kernel(*kernel)?;
            let (prefill, decode, batch) = speeds(&model, &prompt, gen_len)?;
            *best = (best.0.max(prefill), best.1.max(decode), best.2.max(batch));
        }
    }
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| model load (mmap + parse) | {:.2} s |",
        load.as_secs_f64()
    );
    for (kernel, (prefill, decode, batch)) in kernels.iter().zip(&best) {
        let k = kernel.name();
        println!(
            "| {k}: prefill, {} tokens | {prefill:.0} tokens/s |",
            prompt.len()
        );
        println!("| {k}: generation, {gen_len} tokens after the prompt | {decode:.1} tokens/s |");
        println!("| {k}: generation, 3 sequences batched, {gen_len} tokens each | {batch:.1} tokens/s in all |");
    }
    // What 8-bit activations cost in accuracy: the next-token logits after the prompt and
    // after each of 32 greedy tokens, against the exact f32 product.
    if kernels.contains(&Kernel::Avx2Q8) && kernels.contains(&Kernel::Avx2F32) {
        let (drift, agree, steps) = drift(&model, &prompt, 32)?;
        println!("| avx2-q8 against avx2-f32: largest logit difference over {steps} positions | {drift:.3} |");
        println!("| avx2-q8 against avx2-f32: same most likely next token | {agree} of {steps} |");
    }
    kernels::use_kernel(Kernel::detect())?;
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

/// Prefill tokens/s, single-stream generation tokens/s, and 3-stream batched tokens/s.
fn speeds(
    model: &Model,
    prompt: &[u32],
    gen_len: usize,
) -> Result<(f64, f64, f64), Box<dyn std::error::Error>> {
    let mut cache = model.new_cache();
    let t = Instant::now();
    let mut logits = model.forward(prompt, &mut cache)?;
    let prefill = prompt.len() as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for _ in 0..gen_len {
        let next = moa_local::sampler::argmax(&logits);
        logits = model.forward(&[next], &mut cache)?;
    }
    let decode = gen_len as f64 / t.elapsed().as_secs_f64();
    // Three sequences after one shared prefill, one token each per step: a layer of proposers.
    let mut cache = model.new_cache();
    let logits = model.forward(prompt, &mut cache)?;
    let mut caches = [cache.clone(), cache.clone(), cache];
    let mut tokens = vec![moa_local::sampler::argmax(&logits); 3];
    let t = Instant::now();
    for _ in 0..gen_len {
        let mut refs: Vec<&mut moa_local::model::Cache> = caches.iter_mut().collect();
        let all = model.forward_batch(&tokens, &mut refs)?;
        tokens = all.iter().map(|l| moa_local::sampler::argmax(l)).collect();
    }
    let batch = 3.0 * gen_len as f64 / t.elapsed().as_secs_f64();
    Ok((prefill, decode, batch))
}

/// The largest difference between the two kernels' logits, and how often their most likely
/// token agrees, over the prompt's next token and `steps` greedy tokens after it (both fed the
/// exact kernel's tokens).
fn drift(
    model: &Model,
    prompt: &[u32],
    steps: usize,
) -> Result<(f32, usize, usize), Box<dyn std::error::Error>> {
    let (mut exact_cache, mut q8_cache) = (model.new_cache(), model.new_cache());
    kernels::use_kernel(Kernel::Avx2F32)?;
    let mut exact = model.forward(prompt, &mut exact_cache)?;
    kernels::use_kernel(Kernel::Avx2Q8)?;
    let mut q8 = model.forward(prompt, &mut q8_cache)?;
    let (mut largest, mut agree) = (0.0f32, 0);
    for step in 0..=steps {
        let diff = exact
            .iter()
            .zip(&q8)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        largest = largest.max(diff);
        let next = moa_local::sampler::argmax(&exact);
        agree += usize::from(next == moa_local::sampler::argmax(&q8));
        if step == steps {
            break;
        }
        kernels::use_kernel(Kernel::Avx2F32)?;
        exact = model.forward(&[next], &mut exact_cache)?;
        kernels::use_kernel(Kernel::Avx2Q8)?;
        q8 = model.forward(&[next], &mut q8_cache)?;
    }
    Ok((largest, agree, steps + 1))
}
