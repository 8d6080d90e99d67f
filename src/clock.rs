//! The wall clock, injected: admission, the rotator and the serving-certificate loop read the
//! time through a [`Clock`], so tests can set it.

use std::sync::Arc;

use chrono::{DateTime, Utc};

/// A source of the current time.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// The system clock.
pub fn system() -> Clock {
    Arc::new(Utc::now)
}

/// A clock that always says `at` (tests).
pub fn fixed(at: DateTime<Utc>) -> Clock {
    Arc::new(move || at)
}
