//! Engine behaviour against in-process scripted providers.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod engine;
mod policy;
