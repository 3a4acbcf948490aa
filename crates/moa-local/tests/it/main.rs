//! The local provider on a tiny GGUF the tests write themselves (random weights), and on the
//! real SmolLM2 model when it is in the cache.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod crafted;
mod provider;
mod reference;
mod serve;
mod tiny;
