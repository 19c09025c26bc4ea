//! What the tokio baselines share: the runtime a user would build for them.
//! Included by `src/bin/tt_*.rs` with `#[path]` (the bench package has no library).

/// tokio's current-thread runtime for `workers <= 1` (one thread, like one volley worker),
/// else the multi-thread runtime with that many workers. Exits with a message if it cannot
/// start.
pub fn runtime(name: &str, workers: usize) -> tokio::runtime::Runtime {
    let rt = if workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
    };
    rt.unwrap_or_else(|e| {
        eprintln!("{name}: cannot start the runtime: {e}");
        std::process::exit(1);
    })
}
