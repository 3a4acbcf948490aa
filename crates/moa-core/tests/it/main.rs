//! Engine behaviour against in-process scripted providers.

mod engine;
