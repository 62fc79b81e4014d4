//! The registry actor.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::messages::*;
use crate::metrics::Metrics;
use crate::room::{Flush, Join, JoinRefused, Room, RoomConfig};

/// Registry settings.
#[derive(Clone)]
pub struct RegistryConfig {
    pub room: RoomConfig,
    pub auto_cleanup: bool,
    pub idle_ttl: Duration,
    pub arbiters: usize,
}

struct Entry {
    addr: Option<Addr<Room>>,
    /// Joins forwarded to the room actor.
    forwarded: u64,
    /// When the room last became empty (or was created empty).
    idle_since: Option<Instant>,
}

pub struct Registry {
    config: RegistryConfig,
    rooms: HashMap<Arc<str>, Entry>,
    arbiters: Vec<ArbiterHandle>,
    next_arbiter: usize,
    metrics: Metrics,
    log: slog::Logger,
}

impl Registry {
    pub fn new(config: RegistryConfig, metrics: Metrics, log: slog::Logger) -> Self {
        Registry {
            config,
            rooms: HashMap::new(),
            arbiters: Vec::new(),
            next_arbiter: 0,
            metrics,
            log,
        }
    }

    fn spawn_room(&mut self, id: Arc<str>, me: Addr<Registry>) -> Addr<Room> {
        let arbiter = &self.arbiters[self.next_arbiter % self.arbiters.len()];
        self.next_arbiter = self.next_arbiter.wrapping_add(1);
        let config = self.config.room.clone();
        let metrics = self.metrics.clone();
        let log = self.log.new(slog::o!("actor" => "room"));
        Supervisor::start_in_arbiter(arbiter, move |_| Room::new(id, config, me, metrics, log))
    }

    fn sweep(&mut self) {
        let ttl = self.config.idle_ttl;
        self.rooms
            .retain(|_, e| e.idle_since.is_none_or(|t| t.elapsed() < ttl));
    }
}

impl Actor for Registry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.arbiters = (0..self.config.arbiters.max(1))
            .map(|_| Arbiter::new().handle())
            .collect();
        let every = self.config.idle_ttl.min(Duration::from_secs(60));
        ctx.run_interval(every, |act, _| act.sweep());
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        for a in &self.arbiters {
            a.stop();
        }
    }
}

impl Handler<JoinRoom> for Registry {
    type Result = ResponseFuture<Result<Joined, JoinRefused>>;

    fn handle(&mut self, msg: JoinRoom, ctx: &mut Self::Context) -> Self::Result {
        let existing = self.rooms.get(&msg.room).and_then(|e| e.addr.clone());
        let addr = existing.unwrap_or_else(|| self.spawn_room(msg.room.clone(), ctx.address()));
        let entry = self.rooms.entry(msg.room).or_insert(Entry {
            addr: None,
            forwarded: 0,
            idle_since: None,
        });
        if entry.addr.as_ref() != Some(&addr) {
            // A new room actor has handled no join yet.
            entry.addr = Some(addr.clone());
            entry.forwarded = 0;
        }
        entry.forwarded += 1;
        entry.idle_since = None;
        let join = addr.send(Join { member: msg.member });
        Box::pin(async move {
            match join.await {
                Ok(Ok(member)) => Ok(Joined { room: addr, member }),
                Ok(Err(refused)) => Err(refused),
                Err(_) => Err(JoinRefused::Unavailable),
            }
        })
    }
}

impl Handler<RoomEmpty> for Registry {
    type Result = ();

    fn handle(&mut self, msg: RoomEmpty, _: &mut Self::Context) {
        let auto_cleanup = self.config.auto_cleanup;
        if let Some(entry) = self.rooms.get_mut(&msg.room) {
            // A join forwarded after the room reported empty is still in its
            // mailbox: the room is not empty after all.
            if entry.addr.as_ref() != Some(&msg.addr) || entry.forwarded != msg.joins_seen {
                return;
            }
            entry.idle_since = Some(Instant::now());
            if auto_cleanup {
                // Dropping the last address stops the room actor once the
                // sessions that used it are gone too.
                entry.addr = None;
            }
        }
    }
}

impl Handler<FlushRooms> for Registry {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: FlushRooms, _: &mut Self::Context) -> Self::Result {
        let flushes: Vec<_> = self
            .rooms
            .values()
            .filter_map(|e| e.addr.as_ref())
            .map(|a| a.send(Flush))
            .collect();
        Box::pin(async move {
            futures_util::future::join_all(flushes).await;
        })
    }
}

impl Handler<CreateRoom> for Registry {
    type Result = ();

    fn handle(&mut self, msg: CreateRoom, _: &mut Self::Context) {
        self.rooms.entry(msg.room).or_insert(Entry {
            addr: None,
            forwarded: 0,
            idle_since: Some(Instant::now()),
        });
    }
}

impl Handler<RoomExists> for Registry {
    type Result = bool;

    fn handle(&mut self, msg: RoomExists, _: &mut Self::Context) -> bool {
        let ttl = self.config.idle_ttl;
        self.rooms
            .get(&msg.room)
            .is_some_and(|e| e.idle_since.is_none_or(|t| t.elapsed() < ttl))
    }
}

#[cfg(feature = "test-hooks")]
impl Handler<FailRoom> for Registry {
    type Result = bool;

    fn handle(&mut self, msg: FailRoom, _: &mut Self::Context) -> bool {
        match self.rooms.get(&msg.room).and_then(|e| e.addr.as_ref()) {
            Some(addr) => {
                addr.do_send(crate::room::InjectFailure {
                    stall: msg.stall,
                    on_next_join: msg.on_next_join,
                });
                true
            }
            None => false,
        }
    }
}
