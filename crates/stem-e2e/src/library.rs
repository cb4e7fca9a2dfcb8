//! The demo catalogue's producer from the library itself, for what the
//! HTTP API does not offer (chains and chords) and for enqueues that must
//! not go through an enqueuer.

use serde_json::Value;

/// The demo catalogue's producer on `url`, unsigned, from the library
/// (chains and chords have no HTTP endpoint).
pub fn library_producer(url: &str) -> anyhow::Result<stem::client::Stem> {
    let url = url.to_string();
    let config = stem::config::StemConfig::from_lookup(&move |k: &str| {
        (k == "STEM_BROKER_URL").then(|| url.clone())
    })?;
    Ok(stem::client::Stem::connect(&config)?.with_registry(stem_demo::registry()))
}

/// An enqueue of `task` with `args` and default options.
pub fn request(task: &str, args: Value) -> stem::client::EnqueueRequest {
    stem::client::EnqueueRequest {
        name: task.into(),
        args,
        options: Default::default(),
    }
}
