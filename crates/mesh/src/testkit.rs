//! Helpers for multi-node tests (here and in the binary's process tests): waiting for a
//! condition with a deadline instead of sleeping.

use std::future::Future;
use std::time::Duration;

/// Polls `check` every 20 ms until it returns `Some`, and panics with `what` after `deadline`.
/// For tests: a panic is how a test fails.
pub async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let give_up = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() > give_up {
            panic!("timed out after {deadline:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
