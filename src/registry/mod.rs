//! The room registry: finds or creates the room actor for a join, places
//! rooms on threads, runs each under a `Supervisor`, retires rooms when
//! their last member leaves (`FEATURE_AUTO_ROOM_CLEANUP`), and remembers
//! which rooms exist for `POST /v1/rooms/{room}/tokens` until they have been
//! idle for `ROOM_IDLE_TTL_SECS`.
//!
//! It is a table behind a lock, not an actor: a join looks its room up on
//! the joining session's own thread and goes straight to the room, instead
//! of waking a registry thread on the way there and back (the connection
//! storm benchmark, `docs/benchmarks.md`). The rooms are the actors; every
//! operation here is a few map lookups under the lock and never waits.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::metrics::Metrics;
use crate::room::{Flush, Join, JoinRefused, LocalRoom, MemberHandle, Room, RoomConfig};

/// Registry settings.
#[derive(Clone)]
pub struct RegistryConfig {
    pub room: RoomConfig,
    pub auto_cleanup: bool,
    pub idle_ttl: Duration,
    /// Threads of their own for rooms; 0 puts rooms on the worker threads.
    pub arbiters: usize,
}

/// A member joined a room.
pub struct Joined {
    /// The room actor, for the session's later `Publish` and `Leave`.
    pub room: Addr<Room>,
    /// The id the room gave the member.
    pub member: Arc<str>,
    /// The room's count of local members, which the member lowers itself
    /// the moment it leaves (see [`Registry::place`]).
    pub size: Arc<AtomicUsize>,
    /// The member count of the worker the room runs on, which the member
    /// lowers as it leaves (placement balances members, not rooms).
    pub load: Option<Arc<AtomicUsize>>,
}

/// Sent by a room that has no members left.
pub struct RoomEmpty {
    /// The room's id.
    pub room: Arc<str>,
    /// How many joins the room had handled when it became empty.
    pub joins_seen: u64,
    /// The reporting actor, so that a retired room's late report cannot
    /// retire its successor.
    pub addr: Addr<Room>,
}

#[derive(Default)]
struct Entry {
    addr: Option<Addr<Room>>,
    /// The worker (index in `Inner::workers`) the live room runs on.
    worker: Option<usize>,
    /// The live room's local members, kept by the room.
    size: Arc<AtomicUsize>,
    /// Joins forwarded to the room actor.
    forwarded: u64,
    /// When the room last became empty (or was created empty).
    idle_since: Option<Instant>,
}

/// A worker thread that rooms can run on.
struct Worker {
    thread: ThreadId,
    handle: ArbiterHandle,
    /// Members in rooms on it: raised at each join, lowered by the member
    /// itself as it leaves.
    members: Arc<AtomicUsize>,
}

struct Inner {
    rooms: HashMap<Arc<str>, Entry>,
    /// The worker threads seen in joins.
    workers: Vec<Worker>,
    next_arbiter: usize,
}

pub struct Registry {
    config: RegistryConfig,
    inner: Mutex<Inner>,
    /// `ROOM_ARBITERS` threads, when rooms have threads of their own.
    arbiters: Vec<Arbiter>,
    metrics: Metrics,
    log: slog::Logger,
    me: Weak<Registry>,
}

impl Registry {
    /// Builds the registry and starts its sweeper of idle rooms on the
    /// current arbiter.
    pub fn start(config: RegistryConfig, metrics: Metrics, log: slog::Logger) -> Arc<Self> {
        let arbiters = (0..config.arbiters).map(|_| Arbiter::new()).collect();
        let every = config.idle_ttl.min(Duration::from_secs(60));
        let registry = Arc::new_cyclic(|me| Registry {
            config,
            inner: Mutex::new(Inner {
                rooms: HashMap::new(),
                workers: Vec::new(),
                next_arbiter: 0,
            }),
            arbiters,
            metrics,
            log,
            me: me.clone(),
        });
        let weak = Arc::downgrade(&registry);
        actix_rt::spawn(async move {
            let mut tick = actix_rt::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                match weak.upgrade() {
                    Some(r) => r.sweep(),
                    None => return,
                }
            }
        });
        registry
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic under the lock leaves the maps consistent (every update
        // is a single insert or field write): keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where a member about to join `room` from the worker thread `home`
    /// should run: `Some(worker)` when the room runs on another worker and
    /// has fewer than `max_members` local members (a
    /// room that does not run yet is started first, where the placement
    /// puts it). Colocated members reach their room, and it reaches them,
    /// without waking another thread. `None` with room arbiters: rooms never
    /// run where their members do.
    pub fn place(
        &self,
        room: &Arc<str>,
        home: (ThreadId, ArbiterHandle),
        max_members: usize,
    ) -> Option<ArbiterHandle> {
        if !self.arbiters.is_empty() || max_members == 0 {
            return None;
        }
        let mut inner = self.lock();
        let home = inner.worker_index(home);
        let worker = match inner.rooms.get(room) {
            // A large room's fan-out is better shared by the threads its
            // members are on: past `max_members`, members stay where they
            // are. Nor is a room worth moving to when it has nobody left
            // (its last members lower the count as they leave, before the
            // room has handled their leaves): under churn it is about to be
            // retired, and the next one will start here.
            Some(Entry {
                addr: Some(_),
                size,
                ..
            }) if !(1..max_members).contains(&size.load(Ordering::Relaxed)) => None,
            Some(Entry {
                addr: Some(_),
                worker,
                ..
            }) => *worker,
            _ => {
                let worker = self.start_room(&mut inner, room, home);
                // Idle until the join arrives: if the member never makes it,
                // the sweep retires the room.
                if let Some(e) = inner.rooms.get_mut(room) {
                    e.idle_since = Some(Instant::now());
                }
                worker
            }
        };
        worker
            .filter(|&w| w != home)
            .map(|w| inner.workers[w].handle.clone())
    }

    /// Joins `room`, creating its actor if needed. `home` is the joining
    /// session's worker thread.
    pub async fn join(
        &self,
        room: Arc<str>,
        member: MemberHandle,
        home: (ThreadId, ArbiterHandle),
    ) -> Result<Joined, JoinRefused> {
        let (addr, size, load) = {
            let mut inner = self.lock();
            let home = inner.worker_index(home);
            if inner.rooms.get(&room).is_none_or(|e| e.addr.is_none()) {
                self.start_room(&mut inner, &room, home);
            }
            let Some(entry) = inner.rooms.get_mut(&room) else {
                return Err(JoinRefused::Unavailable);
            };
            let Some(addr) = entry.addr.clone() else {
                return Err(JoinRefused::Unavailable);
            };
            entry.forwarded += 1;
            entry.idle_since = None;
            let (worker, size) = (entry.worker, entry.size.clone());
            let load = worker.map(|w| inner.workers[w].members.clone());
            (addr, size, load)
        };
        if let Some(l) = &load {
            l.fetch_add(1, Ordering::Relaxed);
        }
        // A room on this thread admits the member by direct call, without
        // a round through the room's task and back (see LocalRoom).
        let direct = match LocalRoom::find(&room, &addr) {
            Some(local) => local.join(member),
            None => Err(member),
        };
        let joined = match direct {
            Ok(joined) => Ok(joined),
            Err(member) => addr.send(Join { member }).await,
        };
        if !matches!(joined, Ok(Ok(_))) {
            if let Some(l) = &load {
                l.fetch_sub(1, Ordering::Relaxed);
            }
        }
        match joined {
            Ok(Ok(member)) => Ok(Joined {
                room: addr,
                member,
                size,
                load,
            }),
            Ok(Err(refused)) => Err(refused),
            Err(_) => Err(JoinRefused::Unavailable),
        }
    }

    /// Starts `room`'s actor and records it as the room's live actor (a new
    /// actor has handled no join yet); returns the worker it runs on.
    fn start_room(&self, inner: &mut Inner, room: &Arc<str>, home: usize) -> Option<usize> {
        let size = Arc::<AtomicUsize>::default();
        let (addr, worker) = self.spawn_room(inner, room.clone(), home, size.clone());
        let entry = inner.rooms.entry(room.clone()).or_default();
        entry.addr = Some(addr);
        entry.worker = worker;
        entry.size = size;
        entry.forwarded = 0;
        worker
    }

    /// Starts a room: on the next room arbiter in turn when there are any;
    /// by default on a worker thread, preferably the opener's. There the
    /// opener's frames reach the room, and the room's reach it, without
    /// waking another thread, and the process keeps one busy thread per
    /// core. A worker with clearly more than its share of members passes
    /// the new room to the least loaded: clients connecting in order would
    /// otherwise put every room's opener, and every room, on one worker.
    fn spawn_room(
        &self,
        inner: &mut Inner,
        id: Arc<str>,
        home: usize,
        size: Arc<AtomicUsize>,
    ) -> (Addr<Room>, Option<usize>) {
        let (arbiter, worker) = match self.arbiters.len() {
            0 => {
                let load = |i: usize| inner.workers[i].members.load(Ordering::Relaxed);
                let n = inner.workers.len();
                let fair = (0..n).map(load).sum::<usize>() / n;
                // Some slack, so that churn (rooms opened and closed all the
                // time) does not move their openers back and forth: a move
                // costs more than the connection it balances until the
                // imbalance is real.
                let idx = if load(home) <= fair + fair / 8 + 16 {
                    home
                } else {
                    (0..n).min_by_key(|&i| load(i)).unwrap_or(home)
                };
                (inner.workers[idx].handle.clone(), Some(idx))
            }
            n => {
                inner.next_arbiter = inner.next_arbiter.wrapping_add(1);
                (self.arbiters[inner.next_arbiter % n].handle(), None)
            }
        };
        let config = self.config.room.clone();
        let metrics = self.metrics.clone();
        let log = self.log.new(slog::o!("actor" => "room"));
        let me = self.me.clone();
        let make = move |ctx: &mut Context<Room>| {
            let room = Room::new(id, config, me, size, metrics, log);
            room.reachable(ctx);
            room
        };
        // `home` is the calling session's own thread: start there directly
        // rather than through the arbiter's queue.
        let addr = match worker {
            Some(w) if w == home => Supervisor::start(make),
            _ => Supervisor::start_in_arbiter(&arbiter, make),
        };
        (addr, worker)
    }

    /// A room reports that it has no members left.
    pub fn room_empty(&self, msg: RoomEmpty) {
        let auto_cleanup = self.config.auto_cleanup;
        let mut inner = self.lock();
        if let Some(entry) = inner.rooms.get_mut(&msg.room) {
            // A join forwarded after the room reported empty is still in its
            // mailbox: the room is not empty after all.
            if entry.addr.as_ref() != Some(&msg.addr) || entry.forwarded != msg.joins_seen {
                return;
            }
            entry.idle_since = Some(Instant::now());
            if auto_cleanup {
                // Dropping the last address stops the room actor once the
                // sessions that used it are gone too.
                retire(entry);
            }
        }
    }

    /// Records a room created through `POST /v1/rooms`.
    pub fn create_room(&self, room: &str) {
        self.lock().rooms.entry(room.into()).or_insert(Entry {
            idle_since: Some(Instant::now()),
            ..Entry::default()
        });
    }

    /// Whether a room exists: it has members, or had some (or was created)
    /// less than `ROOM_IDLE_TTL_SECS` ago.
    pub fn room_exists(&self, room: &str) -> bool {
        let ttl = self.config.idle_ttl;
        self.lock()
            .rooms
            .get(room)
            .is_some_and(|e| e.idle_since.is_none_or(|t| t.elapsed() < ttl))
    }

    /// Waits until every room has handled what was sent to it before (at
    /// shutdown: the leaves of the sessions just closed).
    pub async fn flush(&self) {
        let flushes: Vec<_> = self
            .lock()
            .rooms
            .values()
            .filter_map(|e| e.addr.as_ref())
            .map(|a| a.send(Flush))
            .collect();
        futures_util::future::join_all(flushes).await;
    }

    fn sweep(&self) {
        let ttl = self.config.idle_ttl;
        let mut inner = self.lock();
        inner.rooms.retain(|_, e| {
            let keep = e.idle_since.is_none_or(|t| t.elapsed() < ttl);
            if !keep {
                retire(e);
            }
            keep
        });
    }

    /// Test hook: makes the named room's next handler fail (or its thread
    /// stall for `stall`); false when the room has no actor.
    /// Returns once the room has taken the hook in, except for a stall
    /// (which returns at once, while the room's thread is blocked).
    #[cfg(feature = "test-hooks")]
    pub async fn fail_room(&self, room: &str, failure: crate::room::InjectFailure) -> bool {
        let addr = self.lock().rooms.get(room).and_then(|e| e.addr.clone());
        match addr {
            Some(addr) if failure.stall.is_some() => {
                addr.do_send(failure);
                true
            }
            Some(addr) => {
                let _ = addr.send(failure).await;
                true
            }
            None => false,
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        for a in &self.arbiters {
            a.stop();
        }
    }
}

impl Inner {
    fn worker_index(&mut self, (thread, handle): (ThreadId, ArbiterHandle)) -> usize {
        match self.workers.iter().position(|w| w.thread == thread) {
            Some(i) => i,
            None => {
                self.workers.push(Worker {
                    thread,
                    handle,
                    members: Arc::default(),
                });
                self.workers.len() - 1
            }
        }
    }
}

/// The room of `entry` is retired (its actor stops once unused).
fn retire(entry: &mut Entry) {
    entry.addr = None;
    entry.worker = None;
}
