//! The room actor.

use std::cell::RefCell;
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use bytes::Bytes;

use super::messages::*;
use crate::bridge::{FromBridge, Inbound, RedisBridge, Subscribe, Unsubscribe};
use crate::cluster::keys::RoomKeys;
use crate::cluster::redis::{Admission, Entry, RedisLink};
use crate::cluster::wire::{self, Event};
use crate::ids::new_member_id;
use crate::metrics::Metrics;
use crate::protocol::{server, Close, ErrorCode};
use crate::registry::{Registry, RoomEmpty};
use std::sync::Weak;

/// Limits a room enforces, from the settings.
#[derive(Clone)]
pub struct RoomConfig {
    pub max_members: usize,
    /// `None` when slow-consumer protection is off.
    pub slow_consumer_threshold: Option<usize>,
    /// Cluster mode: presence and traffic also go through Redis.
    pub cluster: Option<ClusterConfig>,
}

/// What a room needs in cluster mode.
#[derive(Clone)]
pub struct ClusterConfig {
    pub(crate) link: Arc<RedisLink>,
    pub(crate) bridge: Addr<RedisBridge>,
}

/// A member on another instance.
struct RemoteMember {
    /// When this instance learned of it: a presence refresh sent before
    /// that may not have seen it.
    seen: Instant,
}

/// A room's side of the cluster: its names in Redis and its link state.
struct ClusterRoom {
    link: Arc<RedisLink>,
    bridge: Addr<RedisBridge>,
    keys: RoomKeys,
    /// Subscribed to the room's channel, with the remote members known.
    subscribed: bool,
    /// Members were told `cluster_degraded` and are owed `cluster_restored`.
    degraded: bool,
    /// After a restore, instances are given time to re-announce before
    /// their absence from presence is taken for death.
    grace_until: Option<Instant>,
    refreshing: bool,
    /// Remote members announced as left, and when: a presence read sent
    /// before that may still list them.
    gone: MemberMap<Instant>,
    /// Publications handed over by the bridge and not yet handled.
    inbound: Arc<Inbound>,
}

/// Maps keyed by member id. Member ids are drawn at random by the relay, so
/// no client can choose keys that collide: a fast, seeded, non-DoS-hardened
/// hash is enough (it is looked up for every message).
type MemberMap<V> = HashMap<Arc<str>, V, foldhash::fast::RandomState>;

pub struct RoomState {
    id: Arc<str>,
    /// Members on this instance.
    members: MemberMap<MemberHandle>,
    /// Members on other instances (cluster mode), as announced on the
    /// room's channel.
    remote: MemberMap<RemoteMember>,
    cluster: Option<ClusterRoom>,
    config: RoomConfig,
    /// Weak: the registry holds the rooms' addresses.
    registry: Weak<Registry>,
    /// Members on this instance, for the registry to read.
    size: Arc<AtomicUsize>,
    metrics: Metrics,
    log: slog::Logger,
    /// Joins handled so far; the registry compares it with the joins it
    /// forwarded to tell an empty room from one with a join in flight.
    joins_seen: u64,
    /// Set when a handler failed, so `restarting` counts a real restart.
    failed: bool,
    #[cfg(feature = "test-hooks")]
    fail_next_join: bool,
    #[cfg(feature = "test-hooks")]
    fail_next_send: bool,
}

impl RoomState {
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
        if !member.inbox.push(frame.clone()) {
            // The session has ended; its leave is on the way.
            member.pending.fetch_sub(len, Ordering::Relaxed);
        }
        true
    }

    /// Removes a member that cannot keep up: it is closed with 4413 and the
    /// others are told it left.
    fn kick(&mut self, id: &str) {
        if let Some((id, member)) = self.members.remove_entry(id) {
            self.size.store(self.members.len(), Ordering::Relaxed);
            member.recipient.do_send(CloseMember {
                close: Close::SlowConsumer,
            });
            self.announce_left(&id);
            self.leave_cluster(&id);
        }
    }

    /// Tells the other instances a local member has gone.
    fn leave_cluster(&self, id: &str) {
        if let Some(c) = &self.cluster {
            if c.subscribed {
                c.link.leave(&c.keys, id);
            }
        }
    }

    fn fresh_member_id(&self) -> Arc<str> {
        loop {
            let id: Arc<str> = new_member_id().into();
            if !self.members.contains_key(&id) && !self.remote.contains_key(&id) {
                break id;
            }
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

    fn after_leave(&mut self, ctx: &Context<Room>) {
        if self.members.is_empty() {
            if let Some(c) = &mut self.cluster {
                if std::mem::take(&mut c.subscribed) {
                    c.bridge.do_send(Unsubscribe {
                        channel: c.keys.channel.clone(),
                        room: ctx.address().recipient(),
                    });
                    // Behind the members' leaves on the lane, so the others
                    // see them leave before this instance's heartbeat goes.
                    c.link.forget_room(&c.keys);
                }
                c.degraded = false;
                c.gone.clear();
                self.remote.clear();
            }
            if let Some(registry) = self.registry.upgrade() {
                registry.room_empty(RoomEmpty {
                    room: self.id.clone(),
                    joins_seen: self.joins_seen,
                    addr: ctx.address(),
                });
            }
        }
    }

    /// Counts a join for the registry's retirement handshake (and fails
    /// here when a test asked for it).
    fn count_join(&mut self) {
        self.joins_seen += 1;
        #[cfg(feature = "test-hooks")]
        if std::mem::take(&mut self.fail_next_join) {
            panic!("injected room failure");
        }
    }

    fn join(&mut self, msg: Join, ctx: &Context<Room>) -> Result<Arc<str>, JoinRefused> {
        self.count_join();
        if self.members.len() >= self.config.max_members {
            self.after_leave(ctx);
            return Err(JoinRefused::RoomFull);
        }
        let id = self.fresh_member_id();
        self.admit(id.clone(), msg.member);
        Ok(id)
    }

    /// Sends the welcome (listing the members here and on other
    /// instances), announces the new member, and adds it.
    fn admit(&mut self, id: Arc<str>, member: MemberHandle) {
        let welcome = server::welcome(
            &self.id,
            &id,
            self.members
                .keys()
                .chain(self.remote.keys())
                .map(|k| k.as_ref()),
        );
        // The welcome is the first frame a member sees; it goes through the
        // same inbox as everything after it, so nothing overtakes it.
        member.pending.fetch_add(welcome.len(), Ordering::Relaxed);
        if !member.inbox.push(welcome.clone()) {
            member.pending.fetch_sub(welcome.len(), Ordering::Relaxed);
        }
        self.broadcast(&server::member_joined(&id), None);
        self.members.insert(id.clone(), member);
        self.size.store(self.members.len(), Ordering::Relaxed);
        if let Some(c) = &self.cluster {
            c.link.publish(&c.keys, &wire::joined(c.link.node, &id));
        }
    }

    /// A join in cluster mode: subscribe the room's channel if this is the
    /// first local member, then take a place in the room's presence in
    /// Redis (atomically against `MAX_ROOM_MEMBERS`). The room takes
    /// nothing else from its mailbox meanwhile (`ctx.wait`), so that
    /// publications that arrive during the join are applied after it, in
    /// order. Sends of members on the room's thread still go through (they
    /// come by direct call): the joining member is not a member yet, and
    /// they reach the lane ahead of its announcement, as they were sent.
    fn join_cluster(
        &mut self,
        msg: Join,
        ctx: &mut Context<Room>,
    ) -> ActorResponse<Room, Result<Arc<str>, JoinRefused>> {
        self.count_join();
        let Some(c) = &self.cluster else {
            return ActorResponse::reply(Err(JoinRefused::Unavailable));
        };
        if !c.link.is_up() {
            self.after_leave(ctx);
            return ActorResponse::reply(Err(JoinRefused::TryLater));
        }
        let id = self.fresh_member_id();
        let need_sub = !c.subscribed;
        let (link, bridge, keys) = (c.link.clone(), c.bridge.clone(), c.keys.clone());
        let inbound = c.inbound.clone();
        let me = ctx.address().recipient::<FromBridge>();
        let max = self.config.max_members;
        let work = async move {
            if need_sub {
                let sub = bridge.send(Subscribe {
                    channel: keys.channel.clone(),
                    room: me,
                    inbound,
                });
                match sub.await {
                    Ok(Ok(())) => {}
                    _ => return (false, Err(JoinRefused::TryLater)),
                }
            }
            let admitted = match link.join(&keys, &id, max).await {
                Ok(Admission::Admitted(others)) => Ok((id, others)),
                Ok(Admission::Full) => Err(JoinRefused::RoomFull),
                Err(e) => {
                    slog::warn!(link.log, "join failed: Redis"; "error" => %e);
                    Err(JoinRefused::TryLater)
                }
            };
            (need_sub, admitted)
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let member = msg.member;
        ctx.wait(actix::fut::wrap_future::<_, Room>(work).map(
            move |(subscribed, res), shell, ctx| {
                let mut room = shell.state.borrow_mut();
                let r = room
                    .guarded(ctx, |room, ctx| {
                        room.finish_cluster_join(subscribed, res, member, ctx)
                    })
                    .unwrap_or(Err(JoinRefused::Unavailable));
                if r.is_err() {
                    room.after_leave(ctx);
                }
                let _ = tx.send(r);
            },
        ));
        ActorResponse::r#async(actix::fut::wrap_future(async move {
            rx.await.unwrap_or(Err(JoinRefused::Unavailable))
        }))
    }

    fn finish_cluster_join(
        &mut self,
        subscribed: bool,
        res: Result<(Arc<str>, Vec<Entry>), JoinRefused>,
        member: MemberHandle,
        _: &mut Context<Room>,
    ) -> Result<Arc<str>, JoinRefused> {
        let Some(c) = &mut self.cluster else {
            return Err(JoinRefused::Unavailable);
        };
        if subscribed {
            c.subscribed = true;
        }
        let (id, others) = res?;
        if subscribed {
            // The first local member: what Redis holds is the room's
            // membership elsewhere; from now on the channel keeps it current.
            let now = Instant::now();
            let own = c.link.node;
            self.remote = others
                .into_iter()
                .filter(|e| e.node != own)
                .map(|e| (Arc::from(e.member), RemoteMember { seen: now }))
                .collect();
        }
        self.admit(id.clone(), member);
        Ok(id)
    }

    /// A publication from another instance.
    fn on_event(&mut self, event: Event) {
        match event {
            Event::Broadcast { frame } => {
                let delivered = self.broadcast(&frame, None);
                self.metrics.messages_delivered.inc_by(delivered);
            }
            Event::Direct { to, frame } => {
                if self.send_to(&to, &frame) {
                    self.metrics.messages_delivered.inc();
                }
            }
            Event::Joined { member } => {
                let member: Arc<str> = member.into();
                self.learn_remote(member);
            }
            Event::Left { member } => {
                let member: Arc<str> = member.into();
                if self.remote.remove(&member).is_some() {
                    self.announce_left(&member);
                }
                if let Some(c) = &mut self.cluster {
                    c.gone.insert(member, Instant::now());
                }
            }
        }
    }

    fn on_link_down(&mut self) {
        let spans = !self.remote.is_empty();
        let Some(c) = &mut self.cluster else { return };
        c.grace_until = None;
        if c.subscribed && spans && !c.degraded {
            c.degraded = true;
            self.broadcast(&server::notice("cluster_degraded"), None);
        }
    }

    /// A member on another instance, unless it is known already (from
    /// Redis at the first join, from presence, or re-announced): nobody
    /// sees `member_joined` twice.
    fn learn_remote(&mut self, member: Arc<str>) {
        if self.members.contains_key(&member) || self.remote.contains_key(&member) {
            return;
        }
        self.broadcast(&server::member_joined(&member), None);
        self.remote.insert(
            member,
            RemoteMember {
                seen: Instant::now(),
            },
        );
    }

    /// The room fell too far behind the other instances' publications and
    /// some were dropped: its members are told they may have missed
    /// messages, and its view is read again from Redis. The room has caught
    /// up by now (this message was queued behind the backlog).
    fn on_overflow(&mut self, ctx: &mut Context<Room>) {
        let Some(c) = &mut self.cluster else { return };
        c.inbound.overflowed.store(false, Ordering::Release);
        if !c.subscribed || self.members.is_empty() {
            return;
        }
        let link_up = c.link.is_up();
        let already = std::mem::replace(&mut c.degraded, !link_up);
        if !already {
            self.broadcast(&server::notice("cluster_degraded"), None);
        }
        if link_up {
            self.broadcast(&server::notice("cluster_restored"), None);
            if let Some(c) = &mut self.cluster {
                c.refreshing = false;
            }
            self.refresh(ctx);
        }
    }

    fn on_link_up(&mut self, ctx: &mut Context<Room>) {
        let Some(c) = &mut self.cluster else { return };
        if !c.subscribed || self.members.is_empty() {
            return;
        }
        // A restarted Redis has forgotten this instance's members, and the
        // other instances may have missed joins: announce them again. The
        // others ignore members they already know, so nobody sees a
        // member_joined for a member that never left. The refresh writes
        // their presence again and reads everyone else's.
        for id in self.members.keys() {
            c.link.publish(&c.keys, &wire::joined(c.link.node, id));
        }
        c.grace_until = Some(Instant::now() + c.link.timing.restore_grace);
        c.refreshing = false;
        if std::mem::take(&mut c.degraded) {
            self.broadcast(&server::notice("cluster_restored"), None);
        }
        self.refresh(ctx);
    }

    /// This instance's presence heartbeat in the room. It writes this
    /// instance's members again and reads everyone's, and the room's view
    /// of the other instances is reconciled with what Redis holds.
    fn refresh(&mut self, ctx: &mut Context<Room>) {
        let Some(c) = &mut self.cluster else { return };
        if !c.subscribed || self.members.is_empty() || c.refreshing || !c.link.is_up() {
            return;
        }
        c.refreshing = true;
        let (link, keys) = (c.link.clone(), c.keys.clone());
        let members: Vec<Arc<str>> = self.members.keys().cloned().collect();
        let sent = Instant::now();
        let work = async move {
            link.refresh(&keys, members.iter().map(|m| m.as_ref()))
                .await
        };
        ctx.spawn(
            actix::fut::wrap_future::<_, Room>(work).map(move |res, shell, _| {
                let room = &mut *shell.state.borrow_mut();
                if let Some(c) = &mut room.cluster {
                    c.refreshing = false;
                }
                match res {
                    Ok(entries) => room.reconcile(entries, sent),
                    Err(e) => {
                        if let Some(c) = &room.cluster {
                            slog::debug!(c.link.log, "presence refresh failed"; "error" => %e);
                        }
                    }
                }
            }),
        );
    }

    /// Brings the view of the other instances' members in line with the
    /// presence read by a refresh sent at `sent`: members it lists that the
    /// channel never announced (missed while the link was down, or written
    /// back after a false death) join; members it no longer lists (their
    /// instance died, or their leave was missed) leave. This instance's
    /// own entries that are no longer members (a leave lost with a failed
    /// batch, a join that timed out after Redis took it) are removed.
    fn reconcile(&mut self, entries: Vec<Entry>, sent: Instant) {
        let Some(c) = &mut self.cluster else { return };
        if !c.subscribed {
            return;
        }
        let own = c.link.node;
        let stale: Vec<String> = entries
            .iter()
            .filter(|e| e.node == own && !self.members.contains_key(&*e.member))
            .map(|e| e.field.clone())
            .collect();
        c.link.forget_fields(&c.keys, &stale);
        // A leave announced after the read was sent may not be in it.
        let keep_for = c.link.timing.heartbeat * 2 + c.link.command_timeout * 2;
        c.gone.retain(|_, at| at.elapsed() < keep_for);
        let in_grace = c.grace_until.is_some_and(|t| Instant::now() < t);
        let listed: std::collections::HashSet<Arc<str>> = entries
            .into_iter()
            .filter(|e| e.node != own)
            .map(|e| Arc::from(e.member))
            .filter(|m: &Arc<str>| c.gone.get(m).is_none_or(|at| *at <= sent))
            .collect();
        if !in_grace {
            let gone: Vec<Arc<str>> = self
                .remote
                .iter()
                .filter(|(id, r)| r.seen < sent && !listed.contains(*id))
                .map(|(id, _)| id.clone())
                .collect();
            for id in gone {
                self.remote.remove(&id);
                self.announce_left(&id);
            }
        }
        for m in listed {
            self.learn_remote(m);
        }
    }

    fn publish(&mut self, msg: Publish) {
        #[cfg(feature = "test-hooks")]
        if std::mem::take(&mut self.fail_next_send) {
            panic!("injected room failure");
        }
        if !self.members.contains_key(&msg.from) {
            return; // left (or was dropped) while the frame was in flight
        }
        let delivered = match msg.to.as_deref() {
            None => {
                self.count_received(msg.data_len);
                let frame = match &self.cluster {
                    None => server::message(&msg.from, msg.data(), false),
                    Some(c) => {
                        // One buffer: the payload for the other instances,
                        // whose tail is the frame for the local members.
                        // Published even when no other instance is known to
                        // have members: one may have admitted a member whose
                        // announcement is still on its way.
                        let mut buf = wire::broadcast_header(c.link.node);
                        let at = buf.len();
                        server::write_message(&mut buf, &msg.from, msg.data(), false);
                        let payload = buf.freeze();
                        c.link.publish(&c.keys, &payload);
                        payload.slice(at..)
                    }
                };
                self.broadcast(&frame, Some(&msg.from))
            }
            Some(to) if to != &*msg.from && self.members.contains_key(to) => {
                self.count_received(msg.data_len);
                let frame = server::message(&msg.from, msg.data(), true);
                u64::from(self.send_to(to, &frame))
            }
            Some(to) if to != &*msg.from && self.remote.contains_key(to) => {
                self.count_received(msg.data_len);
                if let Some(c) = &self.cluster {
                    let mut buf = wire::direct_header(c.link.node, to);
                    server::write_message(&mut buf, &msg.from, msg.data(), true);
                    c.link.publish(&c.keys, &buf.freeze());
                }
                0
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

    fn leave(&mut self, msg: Leave, ctx: &Context<Room>) {
        if self.members.remove(&msg.member).is_some() {
            self.size.store(self.members.len(), Ordering::Relaxed);
            self.announce_left(&msg.member);
            self.leave_cluster(&msg.member);
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
        ctx: &mut Context<Room>,
        f: impl FnOnce(&mut Self, &mut Context<Room>) -> R,
    ) -> Option<R> {
        match catch_unwind(AssertUnwindSafe(|| f(self, ctx))) {
            Ok(r) => Some(r),
            Err(_) => {
                self.mark_failed();
                ctx.stop();
                None
            }
        }
    }

    /// A handler or a direct call panicked: logged (no content), and the
    /// restart that follows is counted.
    fn mark_failed(&mut self) {
        slog::error!(self.log, "room actor failed; restarting it"; "members" => self.members.len());
        self.failed = true;
    }
}

/// The room actor. Its state sits in a cell shared with [`LocalRoom`]s, so
/// that a session on the room's own thread hands over a `send` by a direct
/// call instead of through the mailbox. Through the mailbox, a message
/// waited for the room's task to come round in the thread's run queue, then
/// the recipients' tasks waited again: under load that first wait was a
/// third of a message's time in the relay. Everything else (joins, leaves,
/// the cluster, supervision) still goes through the actor.
pub struct Room {
    state: Rc<RefCell<RoomState>>,
}

impl Room {
    /// Makes the room reachable by direct call from its own thread from
    /// the moment it exists (its first join usually comes from there, before
    /// the actor has run at all); `started` does it again after a restart.
    pub fn reachable(&self, ctx: &Context<Room>) {
        let id = self.state.borrow().id.clone();
        let reach = Reachable {
            addr: ctx.address().downgrade(),
            state: Rc::downgrade(&self.state),
        };
        ON_THIS_THREAD.with_borrow_mut(|rooms| rooms.insert(id, reach));
    }

    pub fn new(
        id: Arc<str>,
        config: RoomConfig,
        registry: Weak<Registry>,
        size: Arc<AtomicUsize>,
        metrics: Metrics,
        log: slog::Logger,
    ) -> Self {
        let cluster = config.cluster.as_ref().map(|c| ClusterRoom {
            keys: c.link.keys.room(&id),
            link: c.link.clone(),
            bridge: c.bridge.clone(),
            subscribed: false,
            degraded: false,
            grace_until: None,
            refreshing: false,
            gone: MemberMap::default(),
            inbound: Arc::default(),
        });
        let state = RoomState {
            id,
            members: MemberMap::default(),
            remote: MemberMap::default(),
            cluster,
            config,
            registry,
            size,
            metrics,
            log,
            joins_seen: 0,
            failed: false,
            #[cfg(feature = "test-hooks")]
            fail_next_join: false,
            #[cfg(feature = "test-hooks")]
            fail_next_send: false,
        };
        Room {
            state: Rc::new(RefCell::new(state)),
        }
    }
}

/// A room in direct reach: found on the session's own thread. Weak both
/// ways: this table must not keep a retired room alive (its supervisor
/// would restart it for as long as an address is held).
struct Reachable {
    addr: actix::WeakAddr<Room>,
    state: std::rc::Weak<RefCell<RoomState>>,
}

thread_local! {
    /// The rooms running on this thread, by id.
    static ON_THIS_THREAD: RefCell<HashMap<Arc<str>, Reachable>> = RefCell::new(HashMap::new());
}

/// A session's direct line to its room, when both run on one thread.
pub struct LocalRoom {
    addr: Addr<Room>,
    state: std::rc::Weak<RefCell<RoomState>>,
}

impl LocalRoom {
    /// The room `addr` (named `id`), if it runs on the calling thread.
    pub fn find(id: &str, addr: &Addr<Room>) -> Option<LocalRoom> {
        ON_THIS_THREAD.with_borrow(|rooms| {
            let r = rooms.get(id)?;
            (r.addr.upgrade()? == *addr).then(|| LocalRoom {
                addr: addr.clone(),
                state: r.state.clone(),
            })
        })
    }

    /// Handles a `send` at once, as the room's mailbox would have. A room
    /// that has stopped for good drops it, as its mailbox would. `Err`
    /// hands the message back for the mailbox (the room is in a handler
    /// further up this thread's stack, which cannot happen today: sessions
    /// and rooms never call into each other).
    pub fn publish(&self, msg: Publish) -> Result<(), Publish> {
        let Some(state) = self.state.upgrade() else {
            return Ok(());
        };
        let Ok(mut room) = state.try_borrow_mut() else {
            return Err(msg);
        };
        if catch_unwind(AssertUnwindSafe(|| room.publish(msg))).is_err() {
            // As `guarded`: this room alone fails, and its supervisor
            // restarts it.
            room.mark_failed();
            self.addr.do_send(Fail);
        }
        Ok(())
    }

    /// Admits a member at once, as the room's `Join` handler would, when
    /// that needs nothing from the actor: a standalone room with a free
    /// place. Anything else (cluster mode, where the join waits for Redis;
    /// a full room, which may have to be retired; a room that has stopped)
    /// hands the member back for the mailbox.
    pub fn join(
        &self,
        member: MemberHandle,
    ) -> Result<Result<Arc<str>, JoinRefused>, MemberHandle> {
        let Some(state) = self.state.upgrade() else {
            return Err(member);
        };
        let Ok(mut room) = state.try_borrow_mut() else {
            return Err(member);
        };
        if room.cluster.is_some() || room.members.len() >= room.config.max_members {
            return Err(member);
        }
        match catch_unwind(AssertUnwindSafe(|| {
            room.count_join();
            let id = room.fresh_member_id();
            room.admit(id.clone(), member);
            id
        })) {
            Ok(id) => Ok(Ok(id)),
            Err(_) => {
                room.mark_failed();
                self.addr.do_send(Fail);
                Ok(Err(JoinRefused::Unavailable))
            }
        }
    }
}

/// Stops a room that failed in a direct call, for its supervisor to
/// restart; a room left empty by the failure (its only join failed) is
/// reported empty, as after a failed join in the mailbox.
#[derive(Message)]
#[rtype(result = "()")]
struct Fail;

impl Actor for Room {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let room = self.state.borrow();
        room.metrics.rooms_active.inc();
        if let Some(c) = &room.cluster {
            ctx.run_interval(c.link.timing.heartbeat, |shell, ctx| {
                shell.state.borrow_mut().refresh(ctx)
            });
        }
        drop(room);
        self.reachable(ctx);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        let room = self.state.borrow();
        room.metrics.rooms_active.dec();
        let me = Rc::downgrade(&self.state);
        // `try_`: a thread that is ending may have dropped the table first.
        let _ = ON_THIS_THREAD.try_with(|rooms| {
            let mut rooms = rooms.borrow_mut();
            if rooms.get(&room.id).is_some_and(|r| r.state.ptr_eq(&me)) {
                rooms.remove(&room.id);
            }
        });
    }
}

impl Supervised for Room {
    fn restarting(&mut self, _: &mut Self::Context) {
        let room = &mut *self.state.borrow_mut();
        // A refresh in flight was dropped with the old context.
        if let Some(c) = &mut room.cluster {
            c.refreshing = false;
        }
        if std::mem::take(&mut room.failed) {
            room.metrics.room_restarts.inc();
            slog::warn!(room.log, "room actor restarted"; "members" => room.members.len());
        }
    }
}

impl Handler<Join> for Room {
    type Result = ActorResponse<Self, Result<Arc<str>, JoinRefused>>;

    fn handle(&mut self, msg: Join, ctx: &mut Self::Context) -> Self::Result {
        let room = &mut *self.state.borrow_mut();
        if room.cluster.is_some() {
            return match room.guarded(ctx, |room, ctx| room.join_cluster(msg, ctx)) {
                Some(r) => r,
                None => {
                    room.after_leave(ctx);
                    ActorResponse::reply(Err(JoinRefused::Unavailable))
                }
            };
        }
        ActorResponse::reply(
            room.guarded(ctx, |room, ctx| room.join(msg, ctx))
                .unwrap_or_else(|| {
                    // A room whose only join failed must still be retired.
                    room.after_leave(ctx);
                    Err(JoinRefused::Unavailable)
                }),
        )
    }
}

impl Handler<FromBridge> for Room {
    type Result = ();

    fn handle(&mut self, msg: FromBridge, ctx: &mut Self::Context) {
        let room = &mut *self.state.borrow_mut();
        room.guarded(ctx, |room, ctx| match msg {
            FromBridge::Event(event, len) => {
                if let Some(c) = &room.cluster {
                    c.inbound.bytes.fetch_sub(len, Ordering::AcqRel);
                    if c.subscribed {
                        room.on_event(event);
                    }
                }
            }
            FromBridge::Overflow => room.on_overflow(ctx),
            FromBridge::Down => room.on_link_down(),
            FromBridge::Up => room.on_link_up(ctx),
        });
    }
}

impl Handler<Publish> for Room {
    type Result = ();

    fn handle(&mut self, msg: Publish, ctx: &mut Self::Context) {
        let room = &mut *self.state.borrow_mut();
        room.guarded(ctx, |room, _| room.publish(msg));
    }
}

impl Handler<Leave> for Room {
    type Result = ();

    fn handle(&mut self, msg: Leave, ctx: &mut Self::Context) {
        let room = &mut *self.state.borrow_mut();
        room.guarded(ctx, |room, ctx| room.leave(msg, ctx));
    }
}

impl Handler<Flush> for Room {
    type Result = ();

    fn handle(&mut self, _: Flush, _: &mut Self::Context) {}
}

impl Handler<Fail> for Room {
    type Result = ();

    fn handle(&mut self, _: Fail, ctx: &mut Self::Context) {
        ctx.stop();
        self.state.borrow_mut().after_leave(ctx);
    }
}

#[cfg(feature = "test-hooks")]
impl Handler<InjectFailure> for Room {
    type Result = ();

    fn handle(&mut self, msg: InjectFailure, ctx: &mut Self::Context) {
        if let Some(d) = msg.stall {
            std::thread::sleep(d);
            return;
        }
        let room = &mut *self.state.borrow_mut();
        if msg.on_next_join {
            room.fail_next_join = true;
        } else if msg.on_next_send {
            room.fail_next_send = true;
        } else {
            room.guarded(ctx, |_, _| panic!("injected room failure"));
        }
    }
}
