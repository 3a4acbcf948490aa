//! What the server benches share.

/// A named multi-threaded runtime, so each part's CPU can be read per thread.
pub fn runtime(name: &'static str, workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name(name)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"))
}
