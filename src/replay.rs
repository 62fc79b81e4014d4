//! Replay protection: each `jti` is accepted once until its token's `exp`.
//! Standalone this lives in memory, bounded by expiry: an entry leaves as
//! soon as its token could no longer be used anyway. The interface is async
//! because the cluster keeps the same set in Redis.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::sync::Mutex;

use crate::token::now_secs;

/// Result of presenting a `jti`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Burn {
    /// First use: the `jti` is now burned.
    Fresh,
    /// Seen before, within its lifetime.
    Replayed,
}

#[derive(Default)]
struct Burned {
    seen: HashSet<String>,
    by_exp: BinaryHeap<Reverse<(u64, String)>>,
}

/// The set of burned `jti`s.
pub struct ReplayGuard {
    enabled: bool,
    leeway_secs: u64,
    burned: Mutex<Burned>,
}

impl ReplayGuard {
    pub fn new(enabled: bool, leeway_secs: u64) -> Self {
        ReplayGuard {
            enabled,
            leeway_secs,
            burned: Mutex::new(Burned::default()),
        }
    }

    /// Burns `jti` (valid until `exp`); says whether it was fresh.
    pub async fn burn(&self, jti: &str, exp: u64) -> Burn {
        self.burn_at(jti, exp, now_secs())
    }

    fn burn_at(&self, jti: &str, exp: u64, now: u64) -> Burn {
        if !self.enabled {
            return Burn::Fresh;
        }
        let mut b = self.burned.lock().unwrap_or_else(|e| e.into_inner());
        // A token stays usable until exp + leeway, so it is remembered as long.
        while let Some(Reverse((until, _))) = b.by_exp.peek() {
            if *until >= now {
                break;
            }
            if let Some(Reverse((_, old))) = b.by_exp.pop() {
                b.seen.remove(&old);
            }
        }
        if b.seen.contains(jti) {
            return Burn::Replayed;
        }
        b.seen.insert(jti.to_owned());
        b.by_exp
            .push(Reverse((exp + self.leeway_secs, jti.to_owned())));
        Burn::Fresh
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.burned.lock().unwrap().seen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jti_is_accepted_once() {
        let g = ReplayGuard::new(true, 5);
        assert_eq!(g.burn_at("a", 100, 10), Burn::Fresh);
        assert_eq!(g.burn_at("a", 100, 11), Burn::Replayed);
        assert_eq!(g.burn_at("b", 100, 11), Burn::Fresh);
    }

    #[test]
    fn entries_leave_once_their_token_has_expired() {
        let g = ReplayGuard::new(true, 5);
        g.burn_at("a", 100, 10);
        g.burn_at("b", 200, 10);
        g.burn_at("c", 300, 106);
        assert_eq!(g.len(), 2, "a expired at 105 and was dropped");
    }

    #[test]
    fn with_protection_off_every_jti_is_fresh() {
        let g = ReplayGuard::new(false, 5);
        assert_eq!(g.burn_at("a", 100, 10), Burn::Fresh);
        assert_eq!(g.burn_at("a", 100, 10), Burn::Fresh);
    }
}
