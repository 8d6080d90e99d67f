//! Key material from the OS CSPRNG, and the client-side request limiter.

use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

use super::Error;
use crate::policy::{Algorithm, KeySecretData, key_secret_from_bytes};

/// Where key bytes come from (the OS CSPRNG in production; injectable for tests).
pub trait KeySource: Send + Sync {
    /// Fills `buf` with random bytes.
    fn fill(&self, buf: &mut [u8]) -> Result<(), Error>;
}

/// The operating system's CSPRNG (`getrandom`).
#[derive(Clone, Copy, Debug, Default)]
pub struct OsKeySource;

impl KeySource for OsKeySource {
    fn fill(&self, buf: &mut [u8]) -> Result<(), Error> {
        use rand::TryRngCore as _;
        rand::rngs::OsRng
            .try_fill_bytes(buf)
            .map_err(|e| Error::Random(e.to_string()))
    }
}

/// Draws a key of the algorithm's output length and builds the Secret data for it.
pub fn generate(
    source: &dyn KeySource,
    key_name: &str,
    algorithm: Algorithm,
) -> Result<KeySecretData, Error> {
    let mut bytes = vec![0u8; algorithm.output_len()];
    source.fill(&mut bytes)?;
    let data = key_secret_from_bytes(key_name, algorithm, &bytes)
        .map_err(|e| Error::Random(e.to_string()));
    bytes.iter_mut().for_each(|b| *b = 0);
    data
}

/// A token bucket: at most `qps` requests per second on average, `burst` at once.
#[derive(Debug)]
pub struct QpsLimiter {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl QpsLimiter {
    /// A limiter with a full bucket.
    pub fn new(qps: f64, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate: qps.max(0.001),
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Waits for a token.
    pub async fn acquire(&self) {
        loop {
            let wait = {
                let mut state = self.state.lock().await;
                let now = Instant::now();
                let elapsed = now.duration_since(state.1).as_secs_f64();
                state.0 = (state.0 + elapsed * self.rate).min(self.burst);
                state.1 = now;
                if state.0 >= 1.0 {
                    state.0 -= 1.0;
                    return;
                }
                Duration::from_secs_f64((1.0 - state.0) / self.rate)
            };
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_the_algorithm_length_and_differ() {
        for algorithm in Algorithm::ALL {
            let a = generate(&OsKeySource, "bindy-operator", algorithm).expect("key");
            let b = generate(&OsKeySource, "bindy-operator", algorithm).expect("key");
            assert_eq!(a.key.secret.len(), algorithm.output_len());
            assert_ne!(a.key.secret.as_bytes(), b.key.secret.as_bytes());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_limiter_allows_a_burst_then_the_rate() {
        let limiter = QpsLimiter::new(10.0, 5);
        let start = Instant::now();
        for _ in 0..5 {
            limiter.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO, "the burst is immediate");
        for _ in 0..10 {
            limiter.acquire().await;
        }
        let elapsed = start.elapsed().as_secs_f64();
        assert!(
            (0.95..=1.1).contains(&elapsed),
            "10 more at 10/s took {elapsed}s"
        );
    }
}
