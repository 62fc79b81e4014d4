//! Rate limits and admission limits: the per-connection token buckets
//! (`MAX_MSGS_PER_10S`, `MAX_BYTES_PER_10S`), the per-IP request limiters
//! (room creation, token minting, probe endpoints) and the connection
//! counters (`MAX_CONNS_PER_IP`, `MAX_TOTAL_CONNECTIONS`). Pure logic over an
//! injected clock, so it is unit-tested without sleeping.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A token bucket holding at most `capacity` tokens and refilling the whole
/// capacity every `period`, continuously (no burst at window edges).
#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: f64,
    tokens: f64,
    per_sec: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(capacity: u64, period: Duration, now: Instant) -> Self {
        let capacity = capacity as f64;
        TokenBucket {
            capacity,
            tokens: capacity,
            per_sec: capacity / period.as_secs_f64().max(f64::MIN_POSITIVE),
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.per_sec).min(self.capacity);
        self.last = now;
    }

    /// Takes `n` tokens if they are there; otherwise takes nothing.
    pub fn try_take(&mut self, n: u64, now: Instant) -> bool {
        self.refill(now);
        let n = n as f64;
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }

    /// Time until one token is available again.
    pub fn wait_for_one(&mut self, now: Instant) -> Duration {
        self.refill(now);
        if self.tokens >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - self.tokens) / self.per_sec)
        }
    }

    fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.capacity
    }
}

/// Per-connection message and byte budgets.
#[derive(Debug, Clone)]
pub struct SendBudget {
    msgs: TokenBucket,
    bytes: TokenBucket,
}

impl SendBudget {
    pub fn new(msgs_per_10s: u64, bytes_per_10s: u64, now: Instant) -> Self {
        let period = Duration::from_secs(10);
        SendBudget {
            msgs: TokenBucket::new(msgs_per_10s, period, now),
            bytes: TokenBucket::new(bytes_per_10s, period, now),
        }
    }

    /// Charges one message of `len` bytes; false means the sender is over a
    /// limit (and is closed with 4429).
    pub fn charge(&mut self, len: usize, now: Instant) -> bool {
        self.msgs.try_take(1, now) && self.bytes.try_take(len as u64, now)
    }
}

/// Limits events per key (a client IP) to `per_minute`, as one token bucket
/// per key. Full buckets are forgotten, so memory follows the active keys.
pub struct KeyedLimiter {
    per_minute: u64,
    buckets: Mutex<HashMap<IpAddr, TokenBucket>>,
}

/// Keys are swept once the map grows past this many entries.
const SWEEP_AT: usize = 4096;

impl KeyedLimiter {
    pub fn new(per_minute: u64) -> Self {
        KeyedLimiter {
            per_minute,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// `Ok` when the event is allowed, else how long until it would be.
    pub fn check(&self, key: IpAddr, now: Instant) -> Result<(), Duration> {
        let mut map = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= SWEEP_AT && !map.contains_key(&key) {
            map.retain(|_, b| !b.is_full(now));
        }
        let per_minute = self.per_minute;
        let bucket = map
            .entry(key)
            .or_insert_with(|| TokenBucket::new(per_minute, Duration::from_secs(60), now));
        if bucket.try_take(1, now) {
            Ok(())
        } else {
            Err(bucket.wait_for_one(now))
        }
    }
}

/// Why a WebSocket upgrade was refused by the connection counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    IpLimit,
    GlobalLimit,
}

/// Counts open WebSocket connections, per IP and in all.
pub struct ConnectionLimiter {
    per_ip: usize,
    total_max: usize,
    total: AtomicUsize,
    by_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// Holds one connection slot; dropping it gives the slot back.
pub struct ConnectionSlot {
    limiter: Arc<ConnectionLimiter>,
    ip: IpAddr,
}

impl ConnectionLimiter {
    pub fn new(per_ip: usize, total_max: usize) -> Self {
        ConnectionLimiter {
            per_ip,
            total_max,
            total: AtomicUsize::new(0),
            by_ip: Mutex::new(HashMap::new()),
        }
    }

    pub fn active(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    pub fn max_total(&self) -> usize {
        self.total_max
    }

    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionSlot, Admission> {
        let mut by_ip = self.by_ip.lock().unwrap_or_else(|e| e.into_inner());
        if self.total.load(Ordering::Relaxed) >= self.total_max {
            return Err(Admission::GlobalLimit);
        }
        let n = by_ip.entry(ip).or_insert(0);
        if *n >= self.per_ip {
            return Err(Admission::IpLimit);
        }
        *n += 1;
        self.total.fetch_add(1, Ordering::Relaxed);
        Ok(ConnectionSlot {
            limiter: Arc::clone(self),
            ip,
        })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut by_ip = self.limiter.by_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                by_ip.remove(&self.ip);
            }
        }
        self.limiter.total.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    #[test]
    fn a_bucket_allows_its_capacity_then_refuses_then_refills() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, Duration::from_secs(10), t0);
        for _ in 0..10 {
            assert!(b.try_take(1, t0));
        }
        assert!(!b.try_take(1, t0));
        assert!(!b.try_take(1, t0 + Duration::from_millis(500)));
        assert!(b.try_take(1, t0 + Duration::from_millis(1100)));
        assert!(b.try_take(5, t0 + Duration::from_secs(60)));
        assert!(
            !b.try_take(11, t0 + Duration::from_secs(600)),
            "never more than capacity"
        );
    }

    #[test]
    fn the_send_budget_counts_messages_and_bytes() {
        let t0 = Instant::now();
        let mut b = SendBudget::new(3, 100, t0);
        assert!(b.charge(40, t0));
        assert!(b.charge(40, t0));
        assert!(!b.charge(40, t0), "bytes exhausted");
        let mut b = SendBudget::new(2, 1000, t0);
        assert!(b.charge(1, t0) && b.charge(1, t0));
        assert!(!b.charge(1, t0), "messages exhausted");
    }

    #[test]
    fn the_keyed_limiter_is_per_ip_and_says_when_to_retry() {
        let t0 = Instant::now();
        let l = KeyedLimiter::new(2);
        assert!(l.check(ip(1), t0).is_ok());
        assert!(l.check(ip(1), t0).is_ok());
        let wait = l.check(ip(1), t0).unwrap_err();
        assert!(wait > Duration::from_secs(29) && wait <= Duration::from_secs(30));
        assert!(l.check(ip(2), t0).is_ok());
        assert!(l.check(ip(1), t0 + Duration::from_secs(31)).is_ok());
    }

    #[test]
    fn connection_slots_are_limited_per_ip_and_globally_and_returned_on_drop() {
        let l = Arc::new(ConnectionLimiter::new(2, 3));
        let a = l.acquire(ip(1)).unwrap();
        let _b = l.acquire(ip(1)).unwrap();
        assert_eq!(l.acquire(ip(1)).err(), Some(Admission::IpLimit));
        let _c = l.acquire(ip(2)).unwrap();
        assert_eq!(l.acquire(ip(3)).err(), Some(Admission::GlobalLimit));
        drop(a);
        assert_eq!(l.active(), 2);
        assert!(l.acquire(ip(1)).is_ok());
    }
}
