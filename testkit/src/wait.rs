//! Polling with a deadline (never a blind sleep).

use std::future::Future;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Default interval between two polls.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Calls `probe` every `interval` until it returns `Ok(Some(value))` or `timeout` has passed.
///
/// `Ok(None)` means "not yet"; `Err(e)` also means "not yet" but is remembered and reported if
/// the deadline passes (so a timeout says what the last failure was).
pub async fn poll_until<T, E, F, Fut>(
    what: &str,
    timeout: Duration,
    interval: Duration,
    mut probe: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<Option<T>, E>>,
    E: std::fmt::Display,
{
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    loop {
        match probe().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(e) => last = format!("; last error: {e}"),
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout {
                what: what.to_owned(),
                seconds: timeout.as_secs(),
                detail: last,
            });
        }
        tokio::time::sleep(interval).await;
    }
}

/// Like [`poll_until`] for a yes/no condition.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut condition: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    poll_until(what, timeout, POLL_INTERVAL, || {
        let fut = condition();
        async move { Ok::<_, Error>(fut.await.then_some(())) }
    })
    .await
}
