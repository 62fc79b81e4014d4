//! Every live session, so that a drain reaches them all.
//!
//! Each session used to wait on a shared `watch` channel for the drain
//! signal. That wait is an item of the session's context, polled on every
//! turn of the session (every batch of deliveries), and polling it takes the
//! channel's lock, shared by every session of every thread. The roster costs
//! one lock when a session starts and one when it ends, and nothing per
//! message.

use std::collections::HashMap;
use std::sync::Mutex;

use actix::prelude::*;

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

    /// Starts the drain: every session present is told, and none enters
    /// from now on.
    pub(crate) fn drain(&self) {
        let sessions: Vec<_> = {
            let mut inner = self.lock();
            inner.draining = true;
            inner.sessions.drain().map(|(_, s)| s).collect()
        };
        for s in sessions {
            s.do_send(Drain);
        }
    }
}
