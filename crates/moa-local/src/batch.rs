//! Continuous batching for one model: a worker thread that advances every active generation by
//! one token per step, all in one pass over the weights. Requests with the same prompt (a layer's
//! proposers) share one prefill. Requests join and leave between steps.

use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;

use moa_core::{Chunk, ProviderError, Usage};
use tokio::sync::mpsc::UnboundedSender;

use crate::failed;
use crate::model::{Cache, Model};
use crate::sampler::{sample, Rng, Sampling};
use crate::tokenizer::Utf8Stream;

/// One generation to run.
pub struct Job {
    pub prompt: Vec<u32>,
    pub sampling: Sampling,
    pub limit: usize,
    pub out: UnboundedSender<Result<Chunk, ProviderError>>,
}

struct Sequence {
    job: Job,
    cache: Cache,
    logits: Vec<f32>,
    rng: Rng,
    text: Utf8Stream,
    generated: usize,
    next: u32,
}

/// Starts the worker for `model`; it ends when every sender is dropped.
pub fn spawn(model: Arc<Model>) -> std::io::Result<Sender<Job>> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("moa-local-batch".into())
        .spawn(move || run(&model, &rx))?;
    Ok(tx)
}

fn run(model: &Model, jobs: &Receiver<Job>) {
    let mut active: Vec<Sequence> = Vec::new();
    loop {
        let mut new = Vec::new();
        if active.is_empty() {
            match jobs.recv() {
                Ok(job) => new.push(job),
                Err(_) => return,
            }
        }
        new.extend(jobs.try_iter());
        admit(model, new, &mut active);
        active.retain_mut(|s| advance(model, s));
        if active.is_empty() {
            continue;
        }
        let tokens: Vec<u32> = active.iter().map(|s| s.next).collect();
        let mut caches: Vec<&mut Cache> = active.iter_mut().map(|s| &mut s.cache).collect();
        match guarded(|| model.forward_batch(&tokens, &mut caches)) {
            Ok(logits) => {
                for (s, l) in active.iter_mut().zip(logits) {
                    s.logits = l;
                }
            }
            Err(e) => {
                for s in active.drain(..) {
                    let _ = s.job.out.send(Err(failed(e.clone())));
                }
            }
        }
    }
}

/// Prefills new jobs, once per distinct prompt, and adds them to `active`.
fn admit(model: &Model, new: Vec<Job>, active: &mut Vec<Sequence>) {
    let mut prefilled: Vec<(Vec<u32>, Cache, Vec<f32>)> = Vec::new();
    for job in new {
        if job.out.is_closed() {
            continue;
        }
        let (cache, logits) = match prefilled.iter().find(|(p, _, _)| *p == job.prompt) {
            Some((_, cache, logits)) => (cache.clone(), logits.clone()),
            None => match prefill(model, &job) {
                Ok(Some((cache, logits))) => {
                    prefilled.push((job.prompt.clone(), cache.clone(), logits.clone()));
                    (cache, logits)
                }
                // Nobody is listening any more.
                Ok(None) => continue,
                Err(e) => {
                    let _ = job.out.send(Err(failed(e)));
                    continue;
                }
            },
        };
        active.push(Sequence {
            rng: Rng::new(job.sampling.seed),
            job,
            cache,
            logits,
            text: Utf8Stream::default(),
            generated: 0,
            next: 0,
        });
    }
}

/// Tokens of a prompt run through the model at once: long prompts go in pieces, so that a
/// dropped request stops between two of them and attention's scratch memory stays bounded.
pub const PREFILL_CHUNK: usize = 512;

/// Runs `job`'s prompt into a new cache: its cache and the logits of its last token, or
/// `None` if the job's receiver went away meanwhile.
fn prefill(model: &Model, job: &Job) -> Result<Option<(Cache, Vec<f32>)>, String> {
    let mut cache = model.new_cache();
    let mut logits = Vec::new();
    for piece in job.prompt.chunks(PREFILL_CHUNK) {
        if job.out.is_closed() {
            return Ok(None);
        }
        logits = guarded(|| model.forward(piece, &mut cache))?;
    }
    if logits.is_empty() {
        return Err("the prompt is empty".into());
    }
    Ok(Some((cache, logits)))
}

/// Runs a model step, turning an error or a panic (a bug, or a model file that slipped past
/// the checks) into an error message, so that one bad step fails its requests, not the process.
fn guarded<T>(step: impl FnOnce() -> candle_core::Result<T>) -> Result<T, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(step)) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(e.to_string()),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown".into());
            Err(format!("the model failed: {what}"))
        }
    }
}

/// Samples the sequence's next token and sends its text. False when the sequence is over
/// (finished, at its limit, or no longer listened to).
fn advance(model: &Model, s: &mut Sequence) -> bool {
    let finish = |s: &Sequence, reason: &str| {
        let usage = Usage {
            prompt_tokens: s.job.prompt.len() as u64,
            completion_tokens: s.generated as u64,
            total_tokens: (s.job.prompt.len() + s.generated) as u64,
            cached_tokens: 0,
        };
        let _ = s.job.out.send(Ok(Chunk::Finished {
            finish_reason: Some(reason.into()),
            usage: Some(usage),
        }));
        false
    };
    if s.generated >= s.job.limit {
        return finish(s, "length");
    }
    if s.job.sampling.ignore_eos {
        for stop in &model.tokenizer.stop {
            if let Some(logit) = s.logits.get_mut(*stop as usize) {
                *logit = f32::NEG_INFINITY;
            }
        }
    }
    let token = sample(&s.logits, &s.job.sampling, &mut s.rng);
    if model.tokenizer.stop.contains(&token) {
        return finish(s, "stop");
    }
    s.generated += 1;
    s.next = token;
    let piece = s.text.push(&model.tokenizer.token_bytes(token));
    if !piece.is_empty() && s.job.out.send(Ok(Chunk::Delta(piece))).is_err() {
        return false;
    }
    // The context is full: this sequence ends here, the others of the batch go on.
    if s.generated >= s.job.limit || s.cache.len + 1 > model.config.context {
        return finish(s, "length");
    }
    !s.job.out.is_closed()
}
