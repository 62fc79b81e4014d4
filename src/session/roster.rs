//! Every live session, so that a drain reaches them all, and the drain
//! itself: closes spread over `DRAIN_SPREAD_MS` instead of all at once.
//!
//! Each session used to wait on a shared `watch` channel for the drain
//! signal. That wait is an item of the session's context, polled on every
//! turn of the session (every batch of deliveries), and polling it takes the
//! channel's lock, shared by every session of every thread. The roster costs
//! one lock when a session starts and one when it ends, and nothing per
//! message.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use actix::prelude::*;

use crate::ids::random_below;

/// Tells a session that the instance is draining (close with 1012).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Drain;

#[derive(Default)]
struct Inner {
    next: u64,
    draining: bool,
    sessions: HashMap<u64, Recipient<Drain>>,
}

#[derive(Default)]
pub(crate) struct Roster {
    inner: Mutex<Inner>,
}

impl Roster {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Enters a session; `None` when the instance is already draining (the
    /// session must close at once).
    pub(crate) fn enter(&self, session: Recipient<Drain>) -> Option<u64> {
        let mut inner = self.lock();
        if inner.draining {
            return None;
        }
        inner.next += 1;
        let id = inner.next;
        inner.sessions.insert(id, session);
        Some(id)
    }

    pub(crate) fn leave(&self, id: u64) {
        self.lock().sessions.remove(&id);
    }

    /// Starts the drain: no session enters from now on, and those present
    /// are handed back (in no particular order) for [`spread`] to close.
    pub(crate) fn drain(&self) -> Vec<Recipient<Drain>> {
        let mut inner = self.lock();
        inner.draining = true;
        inner.sessions.drain().map(|(_, s)| s).collect()
    }
}

/// The step between two batches of a drain.
pub(crate) const DRAIN_STEP: Duration = Duration::from_millis(100);

/// How a drain of `n` sessions is cut: the size of each batch (one batch
/// per [`DRAIN_STEP`]). Batches are as small as spreading `n` over `window`
/// allows but never below `min_batch`, so the clients reconnect to the other
/// instances at a bounded rate (`n / window`, or `min_batch` per step for a
/// small instance, which then finishes early instead of idling through the
/// window).
pub(crate) fn batch_size(n: usize, window: Duration, min_batch: usize) -> usize {
    let steps = (window.as_millis() / DRAIN_STEP.as_millis()).max(1) as usize;
    n.div_ceil(steps).max(min_batch).max(1)
}

/// Closes `sessions` with 1012 in batches over `window`: shuffled, so that
/// the clients of one room or of one app version do not all go in the same
/// batch, and each batch a random part of a step late, so that instances
/// draining together do not close in lockstep.
pub(crate) async fn spread(
    mut sessions: Vec<Recipient<Drain>>,
    window: Duration,
    min_batch: usize,
) {
    for i in (1..sessions.len()).rev() {
        sessions.swap(i, random_below(i + 1));
    }
    let size = batch_size(sessions.len(), window, min_batch);
    let start = tokio::time::Instant::now();
    for (i, batch) in sessions.chunks(size).enumerate() {
        if i > 0 {
            let jitter =
                Duration::from_millis(random_below(DRAIN_STEP.as_millis() as usize / 2) as u64);
            tokio::time::sleep_until(start + DRAIN_STEP * i as u32 + jitter).await;
        }
        for s in batch {
            s.do_send(Drain);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_drain_is_spread_over_the_whole_window() {
        // 10,000 sessions over 10 s: 100 steps of 100.
        assert_eq!(batch_size(10_000, Duration::from_secs(10), 50), 100);
        // Even when the division does not fall right, nothing is left over.
        let size = batch_size(10_001, Duration::from_secs(10), 50);
        assert!(10_001usize.div_ceil(size) <= 100);
    }

    #[test]
    fn a_small_drain_takes_few_steps() {
        assert_eq!(batch_size(120, Duration::from_secs(10), 50), 50);
        assert_eq!(batch_size(3, Duration::from_secs(10), 50), 50);
    }

    #[test]
    fn no_window_closes_everyone_at_once() {
        assert_eq!(batch_size(10_000, Duration::ZERO, 50), 10_000);
        assert_eq!(batch_size(0, Duration::ZERO, 1), 1);
    }
}
