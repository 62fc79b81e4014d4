//! The room actor.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use actix::prelude::*;
use bytes::Bytes;

use super::messages::*;
use crate::ids::new_member_id;
use crate::metrics::Metrics;
use crate::protocol::{server, Close, ErrorCode};
use crate::registry::{Registry, RoomEmpty};

/// Limits a room enforces, from the settings.
#[derive(Clone)]
pub struct RoomConfig {
    pub max_members: usize,
    /// `None` when slow-consumer protection is off.
    pub slow_consumer_threshold: Option<usize>,
}

pub struct Room {
    id: Arc<str>,
    members: HashMap<Arc<str>, MemberHandle>,
    config: RoomConfig,
    registry: Addr<Registry>,
    metrics: Metrics,
    log: slog::Logger,
    /// Joins handled so far; the registry compares it with the joins it
    /// forwarded to tell an empty room from one with a join in flight.
    joins_seen: u64,
    /// Set when a handler failed, so `restarting` counts a real restart.
    failed: bool,
    #[cfg(feature = "test-hooks")]
    fail_next_join: bool,
}

impl Room {
    pub fn new(
        id: Arc<str>,
        config: RoomConfig,
        registry: Addr<Registry>,
        metrics: Metrics,
        log: slog::Logger,
    ) -> Self {
        Room {
            id,
            members: HashMap::new(),
            config,
            registry,
            metrics,
            log,
            joins_seen: 0,
            failed: false,
            #[cfg(feature = "test-hooks")]
            fail_next_join: false,
        }
    }

    /// Hands `frame` to one member unless that would put more than the
    /// slow-consumer threshold in its queue; false means the member must go.
    fn offer(&self, member: &MemberHandle, frame: &Bytes) -> bool {
        let len = frame.len();
        let before = member.pending.fetch_add(len, Ordering::Relaxed);
        if let Some(limit) = self.config.slow_consumer_threshold {
            if before.saturating_add(len) > limit {
                member.pending.fetch_sub(len, Ordering::Relaxed);
                return false;
            }
        }
        member.recipient.do_send(Deliver {
            frame: Outgoing::Frame(frame.clone()),
        });
        true
    }

    /// Removes a member that cannot keep up: it is closed with 4413 and the
    /// others are told it left.
    fn kick(&mut self, id: &str) {
        if let Some((id, member)) = self.members.remove_entry(id) {
            member.recipient.do_send(Deliver {
                frame: Outgoing::Close(Close::SlowConsumer),
            });
            self.announce_left(&id);
        }
    }

    /// Hands `frame` to one member, or kicks it if it is too far behind.
    fn send_to(&mut self, id: &str, frame: &Bytes) -> bool {
        let Some(member) = self.members.get(id) else {
            return false;
        };
        let ok = self.offer(member, frame);
        if !ok {
            self.kick(id);
        }
        ok
    }

    /// Sends `frame` to every member but `except`; returns how many got it.
    /// Members that cannot keep up are closed with 4413 and announced as left.
    fn broadcast(&mut self, frame: &Bytes, except: Option<&str>) -> u64 {
        let mut delivered = 0;
        let mut slow: Vec<Arc<str>> = Vec::new();
        for (id, member) in &self.members {
            if Some(id.as_ref()) == except {
                continue;
            }
            if self.offer(member, frame) {
                delivered += 1;
            } else {
                slow.push(id.clone());
            }
        }
        for id in slow {
            self.kick(&id);
        }
        delivered
    }

    fn announce_left(&mut self, id: &str) {
        let frame = server::member_left(id);
        self.broadcast(&frame, None);
    }

    fn after_leave(&mut self, ctx: &Context<Self>) {
        if self.members.is_empty() {
            self.registry.do_send(RoomEmpty {
                room: self.id.clone(),
                joins_seen: self.joins_seen,
                addr: ctx.address(),
            });
        }
    }

    fn join(&mut self, msg: Join, ctx: &Context<Self>) -> Result<Arc<str>, JoinRefused> {
        self.joins_seen += 1;
        #[cfg(feature = "test-hooks")]
        if std::mem::take(&mut self.fail_next_join) {
            panic!("injected room failure");
        }
        if self.members.len() >= self.config.max_members {
            self.after_leave(ctx);
            return Err(JoinRefused::RoomFull);
        }
        let id: Arc<str> = loop {
            let id: Arc<str> = new_member_id().into();
            if !self.members.contains_key(&id) {
                break id;
            }
        };
        let welcome = server::welcome(&self.id, &id, self.members.keys().map(|k| k.as_ref()));
        // The welcome is the first frame a member sees; it goes through the
        // same mailbox as everything after it, so nothing overtakes it.
        msg.member
            .pending
            .fetch_add(welcome.len(), Ordering::Relaxed);
        msg.member.recipient.do_send(Deliver {
            frame: Outgoing::Frame(welcome),
        });
        self.broadcast(&server::member_joined(&id), None);
        self.members.insert(id.clone(), msg.member);
        Ok(id)
    }

    fn publish(&mut self, msg: Publish) {
        if !self.members.contains_key(&msg.from) {
            return; // left (or was dropped) while the frame was in flight
        }
        let delivered = match msg.to.as_deref() {
            None => {
                self.count_received(msg.data_len);
                let frame = server::message(&msg.from, &msg.data, false);
                self.broadcast(&frame, Some(&msg.from))
            }
            Some(to) if to != &*msg.from && self.members.contains_key(to) => {
                self.count_received(msg.data_len);
                let frame = server::message(&msg.from, &msg.data, true);
                u64::from(self.send_to(to, &frame))
            }
            Some(_) => {
                let err = server::error(ErrorCode::UnknownMember, msg.ack.as_deref());
                self.send_to(&msg.from, &err);
                return;
            }
        };
        self.metrics.messages_delivered.inc_by(delivered);
        if let Some(id) = msg.ack.as_deref() {
            self.send_to(&msg.from, &server::ack(id));
        }
    }

    fn count_received(&self, data_len: usize) {
        self.metrics.messages_received.inc();
        self.metrics.message_bytes_received.inc_by(data_len as u64);
    }

    fn leave(&mut self, msg: Leave, ctx: &Context<Self>) {
        if self.members.remove(&msg.member).is_some() {
            self.announce_left(&msg.member);
        }
        // Also when the member was already removed (closed as a slow
        // consumer): its leave may be what leaves the room empty.
        self.after_leave(ctx);
    }

    /// Runs a handler body; a panic inside it is treated as a failure of
    /// this room alone: it is logged (no content) and the room is stopped
    /// for its supervisor to restart.
    fn guarded<R>(
        &mut self,
        ctx: &mut Context<Self>,
        f: impl FnOnce(&mut Self, &mut Context<Self>) -> R,
    ) -> Option<R> {
        match catch_unwind(AssertUnwindSafe(|| f(self, ctx))) {
            Ok(r) => Some(r),
            Err(_) => {
                slog::error!(self.log, "room actor failed; restarting it"; "members" => self.members.len());
                self.failed = true;
                ctx.stop();
                None
            }
        }
    }
}

impl Actor for Room {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Self::Context) {
        self.metrics.rooms_active.inc();
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.metrics.rooms_active.dec();
    }
}

impl Supervised for Room {
    fn restarting(&mut self, _: &mut Self::Context) {
        if std::mem::take(&mut self.failed) {
            self.metrics.room_restarts.inc();
            slog::warn!(self.log, "room actor restarted"; "members" => self.members.len());
        }
    }
}

impl Handler<Join> for Room {
    type Result = Result<Arc<str>, JoinRefused>;

    fn handle(&mut self, msg: Join, ctx: &mut Self::Context) -> Self::Result {
        self.guarded(ctx, |room, ctx| room.join(msg, ctx))
            .unwrap_or_else(|| {
                // A room whose only join failed must still be retired.
                self.after_leave(ctx);
                Err(JoinRefused::Unavailable)
            })
    }
}

impl Handler<Publish> for Room {
    type Result = ();

    fn handle(&mut self, msg: Publish, ctx: &mut Self::Context) {
        self.guarded(ctx, |room, _| room.publish(msg));
    }
}

impl Handler<Leave> for Room {
    type Result = ();

    fn handle(&mut self, msg: Leave, ctx: &mut Self::Context) {
        self.guarded(ctx, |room, ctx| room.leave(msg, ctx));
    }
}

#[cfg(feature = "test-hooks")]
impl Handler<InjectFailure> for Room {
    type Result = ();

    fn handle(&mut self, msg: InjectFailure, ctx: &mut Self::Context) {
        if msg.on_next_join {
            self.fail_next_join = true;
        } else {
            self.guarded(ctx, |_, _| panic!("injected room failure"));
        }
    }
}
