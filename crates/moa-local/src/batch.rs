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
        match model.forward_batch(&tokens, &mut caches) {
            Ok(logits) => {
                for (s, l) in active.iter_mut().zip(logits) {
                    s.logits = l;
                }
            }
            Err(e) => {
                for s in active.drain(..) {
                    let _ = s.job.out.send(Err(failed(e.to_string())));
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
            None => {
                let mut cache = model.new_cache();
                match model.forward(&job.prompt, &mut cache) {
                    Ok(logits) => {
                        prefilled.push((job.prompt.clone(), cache.clone(), logits.clone()));
                        (cache, logits)
                    }
                    Err(e) => {
                        let _ = job.out.send(Err(failed(e.to_string())));
                        continue;
                    }
                }
            }
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

/// Samples the sequence's next token and sends its text. False when the sequence is over
/// (finished, at its limit, or no longer listened to).
fn advance(model: &Model, s: &mut Sequence) -> bool {
    let finish = |s: &Sequence, reason: &str| {
        let usage = Usage {
            prompt_tokens: s.job.prompt.len() as u64,
            completion_tokens: s.generated as u64,
            total_tokens: (s.job.prompt.len() + s.generated) as u64,
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
    if s.generated >= s.job.limit {
        return finish(s, "length");
    }
    !s.job.out.is_closed()
}
