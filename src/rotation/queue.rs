//! The rotator's work queue: Secrets (namespace and name) with work, pulled by a fixed number of
//! workers. What a worker does is re-derived from the caches when it picks a Secret up, so the
//! queue holds only identifiers, whatever the number of Secrets with work.
//!
//! A Secret is queued at most once. One that gets more work while a worker has it is queued again,
//! once, when that worker finishes. A failure backs the Secret off (doubling from
//! [`RETRY_BASE`] up to the resync period); the scheduler does not queue it before that.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::context::SecretRef;

/// First retry delay after a failure; doubled up to the resync period.
pub(super) const RETRY_BASE: Duration = Duration::from_secs(1);

/// Where a queued Secret is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for a worker.
    Queued,
    /// A worker has it.
    Active,
    /// A worker has it and it got more work: queued again when the worker finishes.
    ActiveAgain,
}

struct Entry {
    phase: Phase,
    /// The instances that used the Secret when it was last queued (names, in its namespace).
    users: Box<[Box<str>]>,
}

/// Failure bookkeeping per Secret: attempts and the earliest next try.
struct Backoff {
    attempts: u32,
    until: Instant,
}

#[derive(Default)]
struct State {
    order: VecDeque<SecretRef>,
    entries: HashMap<SecretRef, Entry>,
    backoff: HashMap<SecretRef, Backoff>,
}

/// A deduplicated FIFO of Secrets with work, shared by the scheduler and the workers.
pub(super) struct WorkQueue {
    state: Mutex<State>,
    /// Woken when a Secret is queued.
    ready: Notify,
    /// Woken when a Secret failed: its backoff bounds the scheduler's next pass.
    failed: Notify,
    /// The longest backoff.
    max_backoff: Duration,
}

/// A Secret a worker took from the queue, with the instances that used it when it was queued.
pub(super) struct Taken {
    /// The Secret.
    pub(super) key: SecretRef,
    /// Instance names in the Secret's namespace.
    pub(super) users: Box<[Box<str>]>,
}

impl WorkQueue {
    /// An empty queue whose backoff grows up to `max_backoff`.
    pub(super) fn new(max_backoff: Duration) -> Self {
        Self {
            state: Mutex::new(State::default()),
            ready: Notify::new(),
            failed: Notify::new(),
            max_backoff,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `key` with the instances that use it now; a queued key only gets the new users, a key
    /// a worker has is queued again when it finishes.
    pub(super) fn push(&self, key: SecretRef, users: Box<[Box<str>]>) {
        let mut state = self.lock();
        match state.entries.get_mut(&key) {
            Some(entry) => {
                entry.users = users;
                if entry.phase == Phase::Active {
                    entry.phase = Phase::ActiveAgain;
                }
            }
            None => {
                state.entries.insert(
                    key.clone(),
                    Entry {
                        phase: Phase::Queued,
                        users,
                    },
                );
                state.order.push_back(key);
                drop(state);
                self.ready.notify_one();
            }
        }
    }

    fn try_take(&self) -> Option<Taken> {
        let mut state = self.lock();
        let key = state.order.pop_front()?;
        let entry = state.entries.get_mut(&key)?;
        entry.phase = Phase::Active;
        let users = std::mem::take(&mut entry.users);
        Some(Taken { key, users })
    }

    /// Waits for the next queued Secret and marks it active.
    pub(super) async fn take(&self) -> Taken {
        loop {
            if let Some(taken) = self.try_take() {
                return taken;
            }
            self.ready.notified().await;
        }
    }

    /// A worker is done with `key`. Success clears its backoff and queues it again if it got more
    /// work meanwhile; failure backs it off and returns the delay.
    pub(super) fn finish(&self, key: &SecretRef, failed: bool) -> Option<Duration> {
        let mut state = self.lock();
        let again = state
            .entries
            .get(key)
            .is_some_and(|e| e.phase == Phase::ActiveAgain);
        if failed {
            state.entries.remove(key);
            let attempts = state
                .backoff
                .get(key)
                .map_or(0, |b| b.attempts)
                .saturating_add(1);
            let delay = RETRY_BASE
                .saturating_mul(1u32 << attempts.min(16).saturating_sub(1))
                .min(self.max_backoff);
            state.backoff.insert(
                key.clone(),
                Backoff {
                    attempts,
                    until: Instant::now() + delay,
                },
            );
            drop(state);
            self.failed.notify_one();
            return Some(delay);
        }
        state.backoff.remove(key);
        if again {
            if let Some(entry) = state.entries.get_mut(key) {
                entry.phase = Phase::Queued;
            }
            state.order.push_back(key.clone());
            drop(state);
            self.ready.notify_one();
        } else {
            state.entries.remove(key);
        }
        None
    }

    /// Until when `key` is backed off, if it failed last time.
    pub(super) fn backoff_until(&self, key: &SecretRef) -> Option<Instant> {
        self.lock().backoff.get(key).map(|b| b.until)
    }

    /// Completes when a Secret failed (and got a backoff) since the last call.
    pub(super) async fn failed(&self) {
        self.failed.notified().await;
    }

    /// Secrets queued or being worked on.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> SecretRef {
        ("dns".to_owned(), name.to_owned())
    }

    fn users(names: &[&str]) -> Box<[Box<str>]> {
        names.iter().map(|n| Box::from(*n)).collect()
    }

    #[tokio::test]
    async fn a_queued_key_is_queued_once_with_its_latest_users() {
        let queue = WorkQueue::new(Duration::from_secs(60));
        queue.push(key("a"), users(&["one"]));
        queue.push(key("b"), users(&["two"]));
        queue.push(key("a"), users(&["one", "three"]));
        assert_eq!(queue.len(), 2);
        let first = queue.take().await;
        assert_eq!(first.key, key("a"));
        assert_eq!(&*first.users, &*users(&["one", "three"]));
        assert_eq!(queue.take().await.key, key("b"));
        assert!(queue.try_take().is_none());
    }

    #[tokio::test]
    async fn an_active_key_with_new_work_is_queued_again_once_after_it_finishes() {
        let queue = WorkQueue::new(Duration::from_secs(60));
        queue.push(key("a"), users(&["one"]));
        let taken = queue.take().await;
        queue.push(key("a"), users(&["one"]));
        queue.push(key("a"), users(&["one", "two"]));
        assert!(queue.try_take().is_none(), "not twice at once");
        assert_eq!(queue.finish(&taken.key, false), None);
        let again = queue.take().await;
        assert_eq!(again.key, key("a"));
        assert_eq!(&*again.users, &*users(&["one", "two"]));
        assert_eq!(queue.finish(&again.key, false), None);
        assert!(queue.try_take().is_none());
        assert_eq!(queue.len(), 0);
    }

    #[tokio::test]
    async fn a_key_without_new_work_leaves_the_queue_when_it_finishes() {
        let queue = WorkQueue::new(Duration::from_secs(60));
        queue.push(key("a"), users(&["one"]));
        let taken = queue.take().await;
        queue.finish(&taken.key, false);
        assert_eq!(queue.len(), 0);
        queue.push(key("a"), users(&["one"]));
        assert_eq!(queue.take().await.key, key("a"));
    }

    #[tokio::test]
    async fn failures_back_off_doubling_up_to_the_limit_and_success_clears_it() {
        let queue = WorkQueue::new(Duration::from_secs(3));
        for expected in [1, 2, 3, 3] {
            queue.push(key("a"), users(&["one"]));
            queue.push(key("a"), users(&["one"]));
            let taken = queue.take().await;
            queue.push(key("a"), users(&["one"]));
            assert_eq!(
                queue.finish(&taken.key, true),
                Some(Duration::from_secs(expected))
            );
            assert!(
                queue.try_take().is_none(),
                "a failed key is not redone at once"
            );
            assert!(queue.backoff_until(&key("a")).is_some());
        }
        queue.push(key("a"), users(&["one"]));
        let taken = queue.take().await;
        queue.finish(&taken.key, false);
        assert!(queue.backoff_until(&key("a")).is_none());
    }

    #[tokio::test]
    async fn a_waiting_worker_is_woken_by_a_push() {
        let queue = std::sync::Arc::new(WorkQueue::new(Duration::from_secs(60)));
        let worker = tokio::spawn({
            let queue = queue.clone();
            async move { queue.take().await.key }
        });
        tokio::task::yield_now().await;
        queue.push(key("a"), users(&["one"]));
        let got = tokio::time::timeout(Duration::from_secs(5), worker)
            .await
            .expect("woken")
            .expect("joined");
        assert_eq!(got, key("a"));
    }
}
