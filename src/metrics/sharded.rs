//! A counter for the per-message path, kept in one slot per thread.
//!
//! Every room message bumps three counters. As plain prometheus atomics
//! they are three cache lines that every worker thread writes, so each
//! increment waits for the line to come over from the core that wrote it
//! last. Here each thread adds to its own padded slot, and the slots are
//! summed only when the metrics are read.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::IntCounter;

const SLOTS: usize = 32;

/// One slot, alone on its cache line (two, for adjacent-line prefetch).
#[repr(align(128))]
#[derive(Default)]
struct Slot(AtomicU64);

struct Inner {
    slots: [Slot; SLOTS],
    /// What is exported: brought up to the slots' sum at each read.
    exported: IntCounter,
    reading: Mutex<()>,
}

#[derive(Clone)]
pub struct ShardedCounter {
    inner: Arc<Inner>,
}

thread_local! {
    static SLOT: usize = {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed) % SLOTS
    };
}

impl ShardedCounter {
    pub fn new(name: &str, help: &str) -> prometheus::Result<Self> {
        Ok(ShardedCounter {
            inner: Arc::new(Inner {
                slots: Default::default(),
                exported: IntCounter::new(name, help)?,
                reading: Mutex::new(()),
            }),
        })
    }

    pub fn inc(&self) {
        self.inc_by(1);
    }

    pub fn inc_by(&self, v: u64) {
        let i = SLOT.with(|i| *i);
        self.inner.slots[i].0.fetch_add(v, Ordering::Relaxed);
    }

    /// The total so far.
    pub fn get(&self) -> u64 {
        self.inner
            .slots
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .sum()
    }
}

impl Collector for ShardedCounter {
    fn desc(&self) -> Vec<&Desc> {
        self.inner.exported.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let _reading = self.inner.reading.lock().unwrap_or_else(|e| e.into_inner());
        let (total, shown) = (self.get(), self.inner.exported.get());
        if total > shown {
            self.inner.exported.inc_by(total - shown);
        }
        self.inner.exported.collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn increments_from_every_thread_add_up_in_what_is_exported() {
        let c = ShardedCounter::new("t_total", "test").unwrap();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        c.inc();
                    }
                    c.inc_by(10);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(c.get(), 4040);
        let fam = c.collect();
        assert_eq!(fam[0].get_metric()[0].get_counter().get_value(), 4040.0);
        // A second read exports the same total, not twice.
        let fam = c.collect();
        assert_eq!(fam[0].get_metric()[0].get_counter().get_value(), 4040.0);
    }
}
