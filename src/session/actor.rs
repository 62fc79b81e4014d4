//! The session actor: join, send, leave, keep-alive, limits and every close;
//! and the connection itself, which the actor owns from the moment the
//! handshake is written (see `docs/architecture.md` for why).

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_http::ws::OpCode;
use bytes::{Buf, Bytes, BytesMut};
use bytestring::ByteString;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;

use super::outbound::{echo_frame, Outbound};
use super::roster::Drain;
use crate::cluster::StoreError;
use crate::limits::{ConnectionSlot, SendBudget};
use crate::metrics::{CLIENT_CLOSED, PING_TIMEOUT};
use crate::protocol::{server, ClientFrame, Close, ErrorCode, SendFrame};
use crate::registry::Joined;
use crate::replay::Burn;
use crate::room::{CloseMember, Inbox, JoinRefused, Leave, LocalRoom, MemberHandle, Publish, Room};
use crate::state::AppState;
use crate::ws::{Decoder, Message, WsError};

/// Largest message on the diagnostic echo route (Autobahn sends 16 MiB).
const ECHO_MAX_BYTES: usize = 16 * 1024 * 1024;
/// Size of each worker thread's read buffer.
const READ_BUF_BYTES: usize = 64 * 1024;
/// Reads per turn of one session before it lets the others run.
const READS_PER_TURN: usize = 16;

thread_local! {
    /// One read buffer per worker thread, shared by all its sessions: a
    /// session only owns bytes while a frame is incomplete.
    static READ_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_BUF_BYTES].into_boxed_slice());
}

/// What the session does with frames.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// The relay protocol of PROTOCOL.md section 4.
    Relay,
    /// `/v1/echo`: every message back unchanged, no join, no pings.
    Echo,
}

enum Phase {
    AwaitingJoin,
    /// Token verified; waiting for replay check and room.
    Joining,
    Joined {
        room: Addr<Room>,
        /// The same room, when it runs on this session's thread: `send`s
        /// go to it by a direct call. Decided once, at the join, so that a
        /// member's messages all take one path and stay in order.
        local: Option<LocalRoom>,
        member: Arc<str>,
        /// The room's local member count, lowered at once on leaving.
        size: Arc<AtomicUsize>,
        /// Its worker's member count, likewise.
        load: Option<Arc<AtomicUsize>>,
    },
    /// Closed or closing; frames still arriving are ignored.
    Done,
}

/// An accepted upgrade, handed from the HTTP handler (which checked
/// admission and wrote nothing yet) to whoever writes the handshake.
pub(crate) struct Ticket {
    pub(crate) app: Arc<AppState>,
    pub(crate) mode: Mode,
    pub(crate) slot: ConnectionSlot,
    pub(crate) log: slog::Logger,
}

pub(crate) struct WsSession {
    app: Arc<AppState>,
    mode: Mode,
    phase: Phase,
    /// The client's connection; `None` once handed to [`linger`] or dropped.
    stream: Option<TcpStream>,
    decoder: Decoder,
    /// Bytes read but not yet handled: an incomplete frame, or frames held
    /// back while a join settles. Empty (unallocated) when idle.
    unread: BytesMut,
    outbound: Outbound,
    /// Frames from the room, moved into `outbound` at each turn.
    inbox: Arc<Inbox>,
    /// Wakes the connection pump for frames queued outside it (pings).
    waker: Option<Waker>,
    /// Closing without a close handshake: drop the socket at once.
    aborted: bool,
    /// Held until the connection is gone, so a client that stops reading
    /// still counts against the limits.
    slot: Option<ConnectionSlot>,
    budget: SendBudget,
    last_pong: Instant,
    /// Whether this session's end has been counted in the metrics.
    counted: bool,
    log: slog::Logger,
    /// Set on a session that moved in from another thread: the room to join.
    resume: Option<Arc<str>>,
    /// This actor handed its connection to another thread: it ends silently.
    moved_out: bool,
    /// This session's place in the roster of live sessions.
    roster_id: Option<u64>,
    /// The join timeout, cancelled once joined.
    join_timer: Option<SpawnHandle>,
}

/// Starts the session actor on the current worker thread, for a connection
/// whose handshake has been written; `unread` is what the client sent
/// right behind its upgrade request.
pub(crate) fn start(ticket: Ticket, stream: TcpStream, unread: BytesMut) {
    let Ticket {
        app,
        mode,
        slot,
        log,
    } = ticket;
    let max = match mode {
        Mode::Relay => app.settings.max_message_bytes + 4096,
        Mode::Echo => ECHO_MAX_BYTES,
    };
    let threshold = match mode {
        Mode::Relay => app.settings.slow_consumer_buffer_threshold,
        // Conformance suites send runs of messages up to 16 MiB back to back.
        Mode::Echo => app
            .settings
            .slow_consumer_buffer_threshold
            .max(4 * ECHO_MAX_BYTES),
    };
    let limit = app
        .settings
        .feature_slow_consumer_protection
        .then_some(threshold);
    let s = &app.settings;
    let budget = SendBudget::new(s.max_msgs_per_10s, s.max_bytes_per_10s, Instant::now());
    let parts = Parts {
        app,
        mode,
        decoder: Decoder::new(max),
        unread,
        outbound: Outbound::new(limit),
        inbox: Arc::default(),
        slot,
        budget,
        log,
        resume: None,
    };
    WsSession::create(move |ctx| parts.into_session(ctx, Some(stream)));
}

impl Actor for WsSession {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let resume = self.resume.take();
        if resume.is_none() {
            self.app.metrics.connections_total.inc();
            self.app.metrics.connections_active.inc();
            slog::info!(self.log, "session opened");
        }
        match self.app.sessions.enter(ctx.address().recipient()) {
            Some(id) => self.roster_id = Some(id),
            None => return self.close(ctx, Close::Shutdown),
        }
        if self.mode == Mode::Echo {
            return;
        }
        let s = &self.app.settings;
        self.join_timer = Some(ctx.run_later(
            Duration::from_millis(s.join_timeout_ms),
            |act, ctx| {
                if matches!(act.phase, Phase::AwaitingJoin) {
                    act.close(ctx, Close::JoinTimeout);
                }
            },
        ));
        let timeout = Duration::from_millis(s.ws_ping_timeout_ms);
        ctx.run_interval(
            Duration::from_millis(s.ws_ping_interval_ms),
            move |act, ctx| {
                let sent = Instant::now();
                act.queue_control(ctx, OpCode::Ping, b"");
                if let Some(w) = &act.waker {
                    w.wake_by_ref();
                }
                ctx.run_later(timeout, move |act, ctx| {
                    if act.last_pong < sent {
                        act.drop_peer(ctx);
                    }
                });
            },
        );
        if let Some(room) = resume {
            match self.stream {
                Some(_) => self.join_room(ctx, room),
                None => self.abort(ctx),
            }
        }
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        if let Some(id) = self.roster_id.take() {
            self.app.sessions.leave(id);
        }
        if self.moved_out {
            return;
        }
        let dropped = self.inbox.close();
        self.outbound.pending.fetch_sub(dropped, Ordering::Relaxed);
        self.leave_room();
        // Ended by the client (or the connection) if nothing else was recorded.
        self.record_end(CLIENT_CLOSED);
        self.app.metrics.connections_active.dec();
        let (Some(stream), Some(slot)) = (self.stream.take(), self.slot.take()) else {
            return;
        };
        if self.aborted || self.outbound.is_empty() {
            self.outbound.clear();
            return;
        }
        let deadline = Duration::from_millis(self.app.settings.ws_close_timeout_ms);
        // Most closes fit in the socket buffer: write them now, so the close
        // frame and the FIN leave in this turn rather than the next.
        match self.outbound.write_to(&stream) {
            Ok(true) => {
                drop(slot);
                if socket2::SockRef::from(&stream)
                    .shutdown(std::net::Shutdown::Write)
                    .is_ok()
                {
                    actix_rt::spawn(async move {
                        let _ = tokio::time::timeout(deadline, await_fin(&stream)).await;
                    });
                }
            }
            Ok(false) => {
                let outbound = std::mem::replace(&mut self.outbound, Outbound::new(None));
                actix_rt::spawn(linger(stream, outbound, slot, deadline));
            }
            Err(_) => self.outbound.clear(),
        }
    }
}

/// Everything a session carries over from where it was made: from the
/// handshake, or from the worker thread it left to join its room there.
struct Parts {
    app: Arc<AppState>,
    mode: Mode,
    decoder: Decoder,
    unread: BytesMut,
    outbound: Outbound,
    inbox: Arc<Inbox>,
    slot: ConnectionSlot,
    budget: SendBudget,
    log: slog::Logger,
    /// The room to join once started (a session that moved).
    resume: Option<Arc<str>>,
}

impl Parts {
    /// The session on the current thread, its connection pump started;
    /// `None` for a connection that could not be registered here (the
    /// session then ends at once).
    fn into_session(self, ctx: &mut Context<WsSession>, stream: Option<TcpStream>) -> WsSession {
        ctx.spawn(Pump);
        WsSession {
            app: self.app,
            mode: self.mode,
            phase: match self.resume {
                Some(_) => Phase::Joining,
                None => Phase::AwaitingJoin,
            },
            stream,
            decoder: self.decoder,
            unread: self.unread,
            outbound: self.outbound,
            inbox: self.inbox,
            waker: None,
            aborted: false,
            slot: Some(self.slot),
            budget: self.budget,
            last_pong: Instant::now(),
            counted: false,
            log: self.log,
            resume: self.resume,
            moved_out: false,
            roster_id: None,
            join_timer: None,
        }
    }
}

/// Finishes a closed connection off the actor: writes what is left (the
/// close frame last), gives the slot back, sends FIN and reads until the
/// client's, so that the close frame is not lost to a reset. All of it
/// within `WS_CLOSE_TIMEOUT_MS`, whatever the client does.
async fn linger(
    stream: TcpStream,
    mut outbound: Outbound,
    slot: ConnectionSlot,
    deadline: Duration,
) {
    let finish = async {
        while !outbound.write_to(&stream)? {
            stream.writable().await?;
        }
        drop(slot);
        socket2::SockRef::from(&stream).shutdown(std::net::Shutdown::Write)?;
        await_fin(&stream).await
    };
    let _ = tokio::time::timeout(deadline, finish).await;
    outbound.clear();
}

/// Reads (and drops) what the client still sends until its FIN.
async fn await_fin(stream: &TcpStream) -> io::Result<()> {
    let mut sink = [0u8; 256];
    loop {
        stream.readable().await?;
        match stream.try_read(&mut sink) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

/// The connection as an item of the session's context: polled after every
/// batch of mailbox messages, so whatever those queued goes out in one
/// write, and whenever the socket is readable or writable again.
struct Pump;

impl ActorFuture<WsSession> for Pump {
    type Output = ();

    fn poll(
        self: Pin<&mut Self>,
        act: &mut WsSession,
        ctx: &mut Context<WsSession>,
        task: &mut std::task::Context<'_>,
    ) -> Poll<()> {
        act.pump(ctx, task)
    }
}

impl WsSession {
    fn record_end(&mut self, reason: &'static str) {
        if !self.counted {
            self.counted = true;
            self.app.metrics.disconnect(reason);
            slog::info!(self.log, "session closed"; "reason" => reason);
        }
    }

    fn leave_room(&mut self) {
        if let Phase::Joined {
            room,
            member,
            size,
            load,
            ..
        } = std::mem::replace(&mut self.phase, Phase::Done)
        {
            let _ = size.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
            if let Some(load) = load {
                load.fetch_sub(1, Ordering::Relaxed);
            }
            room.do_send(Leave { member });
        }
    }

    /// Queues a frame for the client; a client too far behind is closed
    /// with 4413.
    fn queue(&mut self, ctx: &mut Context<Self>, frame: Bytes) {
        if self.outbound.push(frame).is_err() {
            self.close(ctx, Close::SlowConsumer);
        }
    }

    fn queue_control(&mut self, ctx: &mut Context<Self>, op: OpCode, payload: &[u8]) {
        if self.outbound.push_control(op, payload).is_err() {
            self.close(ctx, Close::SlowConsumer);
        }
    }

    /// Ends the session with a close frame (PROTOCOL.md section 5).
    fn close(&mut self, ctx: &mut Context<Self>, close: Close) {
        self.record_end(close.metric_reason());
        self.leave_room();
        self.phase = Phase::Done;
        // A slow consumer is not reading: what is queued would only delay
        // the close frame.
        self.outbound.close(close, close == Close::SlowConsumer);
        ctx.stop();
    }

    /// Drops a peer that stopped answering pings: no close handshake.
    fn drop_peer(&mut self, ctx: &mut Context<Self>) {
        self.record_end(PING_TIMEOUT);
        self.abort(ctx);
    }

    /// Ends the session without a close frame (the peer is gone or mute).
    fn abort(&mut self, ctx: &mut Context<Self>) {
        self.leave_room();
        self.phase = Phase::Done;
        self.aborted = true;
        ctx.stop();
    }

    fn on_text(&mut self, ctx: &mut Context<Self>, text: ByteString) {
        if self.mode == Mode::Echo {
            return self.queue(ctx, echo_frame(true, text.as_bytes()));
        }
        if matches!(self.phase, Phase::Done) {
            return;
        }
        let frame = match ClientFrame::parse(&text) {
            Ok(f) => f,
            Err(e) => {
                slog::debug!(self.log, "invalid frame"; "problem" => %e);
                return self.close(ctx, Close::InvalidFrame);
            }
        };
        match frame {
            ClientFrame::Join { token } => self.on_join(ctx, &token),
            ClientFrame::Send(send) => {
                if let Some(mut publish) = self.on_send(ctx, &text, send) {
                    if let Phase::Joined { room, local, .. } = &self.phase {
                        // The frame itself travels to the room: moved, not copied.
                        publish.text = text;
                        match local {
                            Some(local) => {
                                if let Err(publish) = local.publish(publish) {
                                    room.do_send(publish);
                                }
                            }
                            None => room.do_send(publish),
                        }
                    }
                }
            }
            ClientFrame::Leave => self.close(ctx, Close::Leave),
        }
    }

    fn on_join(&mut self, ctx: &mut Context<Self>, token: &str) {
        if !matches!(self.phase, Phase::AwaitingJoin) {
            slog::debug!(self.log, "invalid frame"; "problem" => "second join");
            return self.close(ctx, Close::InvalidFrame);
        }
        // A join while draining would take a place only to lose it: 1012
        // at once, before the token is burned, so that the client can use
        // it on another instance.
        if self.app.is_draining() {
            return self.close(ctx, Close::Shutdown);
        }
        let claims = match self.app.tokens.verify(token) {
            Ok(c) => c,
            Err(e) => {
                slog::debug!(self.log, "join refused"; "problem" => %e);
                return self.close(ctx, Close::InvalidToken);
            }
        };
        self.phase = Phase::Joining;
        let app = self.app.clone();
        let home = (std::thread::current().id(), Arbiter::current());
        let admit = async move {
            match app.backend.burn(&claims.jti, claims.exp).await {
                Ok(Burn::Fresh) => {}
                Ok(Burn::Replayed) => return Err(Close::TokenReplayed),
                // Replay protection cannot be checked: fail closed.
                Err(StoreError::Unreachable(_)) => return Err(Close::TryAgainLater),
            }
            let room: Arc<str> = claims.room.into();
            let there = app
                .registry
                .place(&room, home, app.settings.colocate_max_members);
            Ok((room, there))
        };
        // `wait` holds every other event of this session (frames, timers)
        // until the join is settled, so a `send` right behind the `join`
        // finds the session joined.
        ctx.wait(admit.into_actor(self).map(|res, act, ctx| match res {
            Ok((room, None)) => act.join_room(ctx, room),
            Ok((room, Some(there))) => act.move_to(ctx, there, room),
            Err(close) => act.close(ctx, close),
        }));
    }

    /// Joins `room` from this thread (the token has been checked and burnt).
    fn join_room(&mut self, ctx: &mut Context<Self>, room: Arc<str>) {
        if !matches!(self.phase, Phase::Joining) {
            return;
        }
        let app = self.app.clone();
        let member = MemberHandle {
            recipient: ctx.address().recipient(),
            inbox: self.inbox.clone(),
            pending: self.outbound.pending.clone(),
        };
        let home = (std::thread::current().id(), Arbiter::current());
        let id = room.clone();
        let join = async move {
            match app.registry.join(room, member, home).await {
                Ok(joined) => Ok(joined),
                Err(JoinRefused::RoomFull) => Err(Close::RoomFull),
                Err(JoinRefused::TryLater) => Err(Close::TryAgainLater),
                Err(JoinRefused::Unavailable) => Err(Close::Internal),
            }
        };
        ctx.wait(join.into_actor(self).map(move |res, act, ctx| match res {
            Ok(Joined {
                room,
                member,
                size,
                load,
            }) => {
                if matches!(act.phase, Phase::Joining) {
                    act.phase = Phase::Joined {
                        local: LocalRoom::find(&id, &room),
                        room,
                        member,
                        size,
                        load,
                    };
                    // Every timer is polled on each turn of the session.
                    if let Some(t) = act.join_timer.take() {
                        ctx.cancel_future(t);
                    }
                } else {
                    room.do_send(Leave { member });
                }
            }
            Err(close) => {
                if close == Close::Internal {
                    slog::error!(act.log, "join failed: room unavailable");
                }
                act.close(ctx, close)
            }
        }));
    }

    /// Moves this session, connection and all, to the worker thread its
    /// room runs on (`COLOCATE_MAX_MEMBERS`), where a new actor picks it up and
    /// joins. Nothing has been sent to the room yet, and frames the client
    /// sent behind its join travel along, unread.
    fn move_to(&mut self, ctx: &mut Context<Self>, there: ArbiterHandle, room: Arc<str>) {
        if !matches!(self.phase, Phase::Joining) {
            return;
        }
        let (Some(stream), Some(slot)) = (self.stream.take(), self.slot.take()) else {
            return;
        };
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                let _ = self.lost(ctx, e);
                return;
            }
        };
        self.moved_out = true;
        self.app.metrics.session_moves.inc();
        let parts = Parts {
            app: self.app.clone(),
            mode: self.mode,
            decoder: std::mem::replace(&mut self.decoder, Decoder::new(0)),
            unread: std::mem::take(&mut self.unread),
            outbound: std::mem::replace(&mut self.outbound, Outbound::new(None)),
            inbox: self.inbox.clone(),
            slot,
            budget: self.budget.clone(),
            log: self.log.clone(),
            resume: Some(room),
        };
        ctx.stop();
        // Registered with the new thread's reactor there, once it runs.
        WsSession::start_in_arbiter(&there, move |ctx| {
            parts.into_session(ctx, TcpStream::from_std(stream).ok())
        });
    }

    /// Checks a `send`; returns the `Publish` for it (its `text` still to
    /// be filled in) when it is to be relayed.
    fn on_send(
        &mut self,
        ctx: &mut Context<Self>,
        text: &ByteString,
        send: SendFrame<'_>,
    ) -> Option<Publish> {
        let Phase::Joined { member, .. } = &self.phase else {
            slog::debug!(self.log, "invalid frame"; "problem" => "send before join");
            self.close(ctx, Close::InvalidFrame);
            return None;
        };
        let too_large = send.data_len > self.app.settings.max_message_bytes;
        // An oversized send is not relayed, so only its count is charged.
        let charged = if too_large { 0 } else { send.data_len };
        if !self.budget.charge(charged, Instant::now()) {
            self.close(ctx, Close::RateLimited);
            return None;
        }
        if too_large {
            let err = server::error(ErrorCode::MessageTooLarge, send.id.as_deref());
            self.queue(ctx, err);
            return None;
        }
        if send.to.as_deref() == Some(&**member) {
            let err = server::error(ErrorCode::UnknownMember, send.id.as_deref());
            self.queue(ctx, err);
            return None;
        }
        // `send.data` borrows from `text`.
        let start = send.data.as_ptr() as usize - text.as_ptr() as usize;
        let publish = Publish {
            from: member.clone(),
            text: ByteString::new(),
            data: start..start + send.data.len(),
            data_len: send.data_len,
            to: send.to.map(|t| t.into()),
            ack: send.id.map(|i| i.into()),
        };
        Some(publish)
    }

    fn on_client_close(&mut self, ctx: &mut Context<Self>, code: Option<u16>) {
        self.record_end(CLIENT_CLOSED);
        self.leave_room();
        self.phase = Phase::Done;
        let reply = match code {
            None => 1000,
            Some(code) if is_valid_close_code(code) => code,
            Some(_) => 1002,
        };
        self.outbound.close_with(reply, "", false);
        ctx.stop();
    }
}

/// Close codes a peer may send (RFC 6455 section 7.4).
fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

impl Handler<Drain> for WsSession {
    type Result = ();

    fn handle(&mut self, _: Drain, ctx: &mut Self::Context) {
        self.close(ctx, Close::Shutdown);
    }
}

impl Handler<CloseMember> for WsSession {
    type Result = ();

    fn handle(&mut self, msg: CloseMember, ctx: &mut Self::Context) {
        // The room has already removed this member; the `Leave` that
        // `close` still sends lets it notice when that left it empty.
        self.close(ctx, msg.close);
    }
}

impl WsSession {
    /// One turn of the connection: handle frames held back by a join,
    /// read and handle what the client sent, write what is queued.
    fn pump(&mut self, ctx: &mut Context<Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        if self.stream.is_none() {
            return Poll::Ready(());
        }
        if !self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            self.waker = Some(cx.waker().clone());
        }
        let Self {
            inbox, outbound, ..
        } = self;
        inbox.take(cx.waker(), |frame| outbound.push_counted(frame));
        if !self.unread.is_empty() {
            self.handle_bytes(ctx, None);
        }
        let mut reads = 0;
        while self.reading(ctx) {
            if reads == READS_PER_TURN {
                cx.waker().wake_by_ref();
                break;
            }
            reads += 1;
            // `poll_read` rather than readiness and `try_read`: a short read
            // tells tokio the socket is drained, which saves the system call
            // that would only have said so.
            let read = READ_BUF.with_borrow_mut(|buf| {
                let Some(stream) = self.stream.as_mut() else {
                    return Poll::Ready(Ok(0));
                };
                let mut rb = ReadBuf::new(&mut buf[..]);
                let polled = Pin::new(stream).poll_read(cx, &mut rb);
                let n = rb.filled().len();
                match polled {
                    Poll::Ready(Ok(())) if n > 0 => {
                        self.handle_bytes(ctx, Some(&buf[..n]));
                        Poll::Ready(Ok(n))
                    }
                    other => other.map_ok(|()| 0),
                }
            });
            let eof = match read {
                Poll::Pending => break,
                Poll::Ready(Ok(n)) => Ok(n == 0),
                Poll::Ready(Err(e)) => Err(e),
            };
            match eof {
                Ok(false) => {}
                // The client's side of the connection ended.
                Ok(true) => return self.lost(ctx, io::ErrorKind::UnexpectedEof.into()),
                Err(e) => return self.lost(ctx, e),
            }
        }
        self.flush(ctx, cx);
        Poll::Pending
    }

    /// Whether frames should be read now: not while a join settles (they
    /// wait, in order, behind it) nor once the session is closing.
    fn reading(&self, ctx: &Context<Self>) -> bool {
        !ctx.waiting() && !matches!(self.phase, Phase::Done) && ctx.state() == ActorState::Running
    }

    /// Handles every whole frame in `unread` followed by `fresh`, keeping
    /// the rest (an incomplete frame, or frames behind a join) in `unread`.
    fn handle_bytes(&mut self, ctx: &mut Context<Self>, fresh: Option<&[u8]>) {
        if self.unread.is_empty() {
            if let Some(fresh) = fresh {
                let used = self.handle_frames(ctx, fresh);
                if used < fresh.len() && self.reading_or_waiting(ctx) {
                    self.unread.extend_from_slice(&fresh[used..]);
                }
            }
            return;
        }
        let mut buf = std::mem::take(&mut self.unread);
        if let Some(fresh) = fresh {
            buf.extend_from_slice(fresh);
        }
        let used = self.handle_frames(ctx, &buf);
        buf.advance(used);
        if !buf.is_empty() && self.reading_or_waiting(ctx) {
            self.unread = buf;
        }
    }

    fn reading_or_waiting(&self, ctx: &Context<Self>) -> bool {
        !matches!(self.phase, Phase::Done) && ctx.state() == ActorState::Running
    }

    /// Handles the whole frames at the start of `buf`; returns the bytes used.
    fn handle_frames(&mut self, ctx: &mut Context<Self>, buf: &[u8]) -> usize {
        let mut used = 0;
        while self.reading(ctx) {
            match self.decoder.decode(&buf[used..]) {
                Ok(None) => break,
                Ok(Some((n, msg))) => {
                    used += n;
                    if !self.charge_frame(msg.as_ref()) {
                        self.close(ctx, Close::RateLimited);
                        break;
                    }
                    if let Some(msg) = msg {
                        self.on_message(ctx, msg);
                    }
                }
                Err(e) => {
                    slog::debug!(self.log, "protocol error"; "error" => %e);
                    let close = match e {
                        WsError::Protocol(_) => Close::Protocol,
                        WsError::TooLarge => Close::TooLarge,
                        WsError::InvalidUtf8 => Close::InvalidUtf8,
                    };
                    self.close(ctx, close);
                    break;
                }
            }
        }
        used
    }

    /// Charges a frame that is not a whole message to the send budget:
    /// pings, pongs and fragments cost a message each (pings their payload
    /// too), so that a flood of them ends in 4429 like a flood of sends,
    /// rather than being answered forever. Whole messages are charged
    /// where they are handled (`on_send`), and only if they are relayed.
    /// The echo route (conformance suites, off in production) is exempt.
    fn charge_frame(&mut self, msg: Option<&Message>) -> bool {
        let bytes = match msg {
            None | Some(Message::Pong) => 0,
            Some(Message::Ping(payload)) => payload.len(),
            Some(_) => return true,
        };
        self.mode == Mode::Echo || self.budget.charge(bytes, Instant::now())
    }

    fn on_message(&mut self, ctx: &mut Context<Self>, msg: Message) {
        match msg {
            Message::Text(text) => self.on_text(ctx, text),
            Message::Binary(data) => match self.mode {
                Mode::Echo => self.queue(ctx, echo_frame(false, &data)),
                Mode::Relay => self.close(ctx, Close::Binary),
            },
            Message::Ping(payload) => self.queue_control(ctx, OpCode::Pong, &payload),
            Message::Pong => self.last_pong = Instant::now(),
            Message::Close(code) => self.on_client_close(ctx, code),
        }
    }

    /// Writes what is queued; registers for writability if the socket is
    /// full.
    fn flush(&mut self, ctx: &mut Context<Self>, cx: &mut std::task::Context<'_>) {
        // A closing session's last frames are written by `linger`.
        if self.outbound.is_empty() || ctx.state() != ActorState::Running {
            return;
        }
        let Some(stream) = self.stream.as_ref() else {
            return;
        };
        loop {
            match self.outbound.write_to(stream) {
                Ok(true) => return,
                Ok(false) => match stream.poll_write_ready(cx) {
                    Poll::Pending => return,
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => {
                        let _ = self.lost(ctx, e);
                        return;
                    }
                },
                Err(e) => {
                    let _ = self.lost(ctx, e);
                    return;
                }
            }
        }
    }

    /// The connection failed or the client went away: nobody to send a
    /// close frame to.
    fn lost(&mut self, ctx: &mut Context<Self>, e: io::Error) -> Poll<()> {
        slog::debug!(self.log, "connection ended"; "error" => %e);
        self.abort(ctx);
        Poll::Ready(())
    }
}
