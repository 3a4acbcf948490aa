//! In-process GGUF models for moa: the `local` provider.
//!
//! A model is named `local:smollm2` (a [known model](catalog::KNOWN_MODELS), fetched into the
//! models directory) or `local:/path/to/model.gguf`. Each model is loaded once per process and
//! shared by every concurrent request; generation runs on blocking threads, never on the async
//! runtime's workers, and stops as soon as its stream is dropped.
//!
//! - [`model`]: llama / qwen2 loading and forward pass; [`attention`] and its in-place KV
//!   cache, [`ops`], [`kernels`] (the quantized products, chosen for the CPU at run time).
//! - [`tokenizer`], [`template`]: both read from the GGUF itself.
//! - [`sampler`]: temperature, top-p, seed.
//! - [`catalog`], [`fetch`]: known models, their verified download.

mod attention;
pub mod batch;
pub mod catalog;
pub mod fetch;
pub mod gguf;
pub mod kernels;
pub mod model;
mod ops;
pub mod request;
pub mod sampler;
pub mod template;
pub mod tokenizer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use futures::StreamExt;
use moa_core::{BoxChunkStream, ChatRequest, Chunk, Provider, ProviderError};

pub use model::{LoadError, Model};

type Loaded = Arc<OnceLock<Result<Arc<Model>, String>>>;

/// The `local` provider: runs GGUF models in this process. Cheap to clone; clones share models.
#[derive(Clone)]
pub struct LocalProvider {
    inner: Arc<Inner>,
}

struct Inner {
    models_dir: PathBuf,
    models: Mutex<HashMap<PathBuf, Loaded>>,
    /// One batching worker per loaded model.
    workers: Mutex<HashMap<PathBuf, std::sync::mpsc::Sender<batch::Job>>>,
}

/// An error of the local provider.
pub(crate) fn failed(message: impl Into<String>) -> ProviderError {
    ProviderError::Other {
        provider: "local".into(),
        message: message.into(),
    }
}

impl LocalProvider {
    /// A provider that finds known models in `models_dir`.
    pub fn new(models_dir: impl Into<PathBuf>) -> Self {
        Self {
            inner: Arc::new(Inner {
                models_dir: models_dir.into(),
                models: Mutex::new(HashMap::new()),
                workers: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The directory known models are kept in.
    pub fn models_dir(&self) -> &Path {
        &self.inner.models_dir
    }

    /// The file for a model id: a known model's name or a path to a GGUF file. Known models must
    /// be present and sound (see [`catalog::status`]).
    pub fn resolve(&self, id: &str) -> Result<PathBuf, ProviderError> {
        let dir = self.models_dir();
        if let Some(known) = catalog::known(id) {
            return match catalog::status(dir, known) {
                catalog::Status::Ready => Ok(catalog::path_in(dir, known)),
                status => Err(failed(format!(
                    "model {id} is not ready in {} ({status:?}); run `moa models pull {id}`",
                    dir.display()
                ))),
            };
        }
        let path = PathBuf::from(id);
        if path.extension().is_some_and(|e| e == "gguf") || id.contains('/') {
            return match path.is_file() {
                true => Ok(path),
                false => Err(failed(format!("no GGUF file at {id}"))),
            };
        }
        let names: Vec<&str> = catalog::KNOWN_MODELS.iter().map(|m| m.name).collect();
        Err(failed(format!(
            "unknown local model `{id}`: use one of {} or a path to a .gguf file",
            names.join(", ")
        )))
    }

    /// The loaded model for `id`, loading it on first use: once, however many ask at once.
    /// Blocks while loading; call it from a blocking thread.
    pub fn model(&self, id: &str) -> Result<Arc<Model>, ProviderError> {
        self.loaded(id).map(|(_, model)| model)
    }

    fn loaded(&self, id: &str) -> Result<(PathBuf, Arc<Model>), ProviderError> {
        let path = self.resolve(id)?;
        let slot = {
            let mut models = self.inner.models.lock().unwrap_or_else(|e| e.into_inner());
            models.entry(path.clone()).or_default().clone()
        };
        let model = slot
            .get_or_init(|| {
                // A model file that slips past the checks fails its requests, not the process.
                std::panic::catch_unwind(|| Model::load(&path))
                    .unwrap_or_else(|_| {
                        Err(model::LoadError::Invalid {
                            path: path.display().to_string(),
                            message: "the model could not be read (its loader panicked)".into(),
                        })
                    })
                    .map(Arc::new)
                    .map_err(|e| e.to_string())
            })
            .clone()
            .map_err(failed)?;
        Ok((path, model))
    }

    /// Queues `job` on the model's batching worker, starting the worker if there is none (or
    /// it has stopped).
    fn submit(
        &self,
        path: PathBuf,
        model: Arc<Model>,
        job: batch::Job,
    ) -> Result<(), ProviderError> {
        let mut workers = self.inner.workers.lock().unwrap_or_else(|e| e.into_inner());
        let job = match workers.get(&path) {
            Some(worker) => match worker.send(job) {
                Ok(()) => return Ok(()),
                Err(std::sync::mpsc::SendError(job)) => job,
            },
            None => job,
        };
        let worker = batch::spawn(model)
            .map_err(|e| failed(format!("cannot start the model's worker: {e}")))?;
        worker
            .send(job)
            .map_err(|_| failed("the model's worker stopped at once"))?;
        workers.insert(path, worker);
        Ok(())
    }

    fn start(
        &self,
        request: ChatRequest,
        out: tokio::sync::mpsc::UnboundedSender<Result<Chunk, ProviderError>>,
    ) -> Result<(), ProviderError> {
        request::check(&request)?;
        let (path, model) = self.loaded(&request.model)?;
        let prompt = request::prompt_tokens(&model, &request, &|| out.is_closed())?;
        let job = batch::Job {
            limit: request::limit(&request, prompt.len(), model.config.context),
            prompt,
            sampling: request::sampling(&request),
            out,
        };
        self.submit(path, model, job)
    }
}

impl Provider for LocalProvider {
    fn name(&self) -> &str {
        "local"
    }

    /// The context of a model already loaded (by an earlier call of the run, typically); a
    /// model not yet loaded is not loaded for this, which would block.
    fn context_window(&self, model: &str) -> Option<u64> {
        // Where `resolve` would find it, without checking the file again.
        let path = match catalog::known(model) {
            Some(known) => catalog::path_in(self.models_dir(), known),
            None => PathBuf::from(model),
        };
        let models = self.inner.models.lock().unwrap_or_else(|e| e.into_inner());
        let loaded = models.get(&path)?.get()?.as_ref().ok()?;
        Some(loaded.config.context as u64)
    }

    fn stream(&self, request: ChatRequest) -> BoxChunkStream {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Result<Chunk, ProviderError>>();
        let provider = self.clone();
        // Loading blocks for a while and generation for seconds: keep both off the async
        // workers. The model's worker batches this request with any others in flight.
        tokio::task::spawn_blocking(move || {
            if let Err(e) = provider.start(request, tx.clone()) {
                let _ = tx.send(Err(e));
            }
        });
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
    }
}
