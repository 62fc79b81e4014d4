//! The session actor: join, send, leave, keep-alive, limits and every close.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_http::ws::OpCode;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessage, CloseReason, ProtocolError};
use bytes::Bytes;
use bytestring::ByteString;

use super::outbound::{echo_frame, Outbound, OutboundBody};
use crate::cluster::StoreError;
use crate::limits::{ConnectionSlot, SendBudget};
use crate::metrics::{CLIENT_CLOSED, PING_TIMEOUT};
use crate::protocol::{server, ClientFrame, Close, ErrorCode, SendFrame};
use crate::registry::{JoinRoom, Joined};
use crate::replay::Burn;
use crate::room::{Deliver, JoinRefused, Leave, MemberHandle, Outgoing, Publish, Room};
use crate::state::AppState;

/// Largest message on the diagnostic echo route (Autobahn sends 16 MiB).
const ECHO_MAX_BYTES: usize = 16 * 1024 * 1024;

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
        member: Arc<str>,
    },
    /// Closed or closing; frames still arriving are ignored.
    Done,
}

pub(crate) struct WsSession {
    app: Arc<AppState>,
    mode: Mode,
    phase: Phase,
    outbound: Rc<Outbound>,
    budget: SendBudget,
    last_pong: Instant,
    /// Whether this session's end has been counted in the metrics.
    counted: bool,
    log: slog::Logger,
}

/// Upgrades the request and starts the session actor for it.
pub(crate) fn start(
    app: Arc<AppState>,
    req: &HttpRequest,
    payload: web::Payload,
    slot: ConnectionSlot,
    mode: Mode,
    log: slog::Logger,
) -> Result<HttpResponse, actix_web::Error> {
    // actix-ws does the handshake and the inbound side; its `Session`
    // (outbound) is not used: frames go out pre-encoded through `Outbound`.
    let (response, _session, stream) = actix_ws::handle(req, payload)?;
    let max = match mode {
        Mode::Relay => app.settings.max_message_bytes + 4096,
        Mode::Echo => ECHO_MAX_BYTES,
    };
    let stream = stream
        .max_frame_size(max)
        .aggregate_continuations()
        .max_continuation_size(max);
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
    let outbound = Outbound::new(limit);
    let body_out = outbound.clone();
    let s = &app.settings;
    let budget = SendBudget::new(s.max_msgs_per_10s, s.max_bytes_per_10s, Instant::now());
    WsSession::create(move |ctx| {
        ctx.add_stream(stream);
        WsSession {
            app,
            mode,
            phase: Phase::AwaitingJoin,
            outbound,
            budget,
            last_pong: Instant::now(),
            counted: false,
            log,
        }
    });
    Ok(response
        .map_body(move |_, ws_body| OutboundBody::new(body_out, ws_body, slot))
        .map_into_boxed_body())
}

impl Actor for WsSession {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.app.metrics.connections_total.inc();
        self.app.metrics.connections_active.inc();
        slog::info!(self.log, "session opened");
        let mut draining = self.app.draining.subscribe();
        ctx.spawn(
            async move {
                let _ = draining.wait_for(|d| *d).await;
            }
            .into_actor(self)
            .map(|_, act, ctx| act.close(ctx, Close::Shutdown)),
        );
        if self.mode == Mode::Echo {
            return;
        }
        let s = &self.app.settings;
        ctx.run_later(Duration::from_millis(s.join_timeout_ms), |act, ctx| {
            if matches!(act.phase, Phase::AwaitingJoin) {
                act.close(ctx, Close::JoinTimeout);
            }
        });
        let timeout = Duration::from_millis(s.ws_ping_timeout_ms);
        ctx.run_interval(
            Duration::from_millis(s.ws_ping_interval_ms),
            move |act, ctx| {
                let sent = Instant::now();
                act.queue_control(ctx, OpCode::Ping, b"");
                ctx.run_later(timeout, move |act, ctx| {
                    if act.last_pong < sent {
                        act.drop_peer(ctx);
                    }
                });
            },
        );
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.leave_room();
        // Ended by the client (or the connection) if nothing else was recorded.
        self.record_end(CLIENT_CLOSED);
        self.app.metrics.connections_active.dec();
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
        if let Phase::Joined { room, member } = std::mem::replace(&mut self.phase, Phase::Done) {
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
        self.leave_room();
        self.outbound.abort();
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
            ClientFrame::Send(send) => self.on_send(ctx, &text, send),
            ClientFrame::Leave => self.close(ctx, Close::Leave),
        }
    }

    fn on_join(&mut self, ctx: &mut Context<Self>, token: &str) {
        if !matches!(self.phase, Phase::AwaitingJoin) {
            slog::debug!(self.log, "invalid frame"; "problem" => "second join");
            return self.close(ctx, Close::InvalidFrame);
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
        let member = MemberHandle {
            recipient: ctx.address().recipient(),
            pending: self.outbound.pending.clone(),
        };
        let join = async move {
            match app.backend.burn(&claims.jti, claims.exp).await {
                Ok(Burn::Fresh) => {}
                Ok(Burn::Replayed) => return Err(Close::TokenReplayed),
                // Replay protection cannot be checked: fail closed.
                Err(StoreError::Unreachable(_)) => return Err(Close::TryAgainLater),
                Err(StoreError::Internal) => return Err(Close::Internal),
            }
            let joined = app
                .registry
                .send(JoinRoom {
                    room: claims.room.into(),
                    member,
                })
                .await;
            match joined {
                Ok(Ok(joined)) => Ok(joined),
                Ok(Err(JoinRefused::RoomFull)) => Err(Close::RoomFull),
                Ok(Err(JoinRefused::TryLater)) => Err(Close::TryAgainLater),
                Ok(Err(JoinRefused::Unavailable)) | Err(_) => Err(Close::Internal),
            }
        };
        // `wait` holds every other event of this session (frames, timers)
        // until the join is settled, so a `send` right behind the `join`
        // finds the session joined.
        ctx.wait(join.into_actor(self).map(|res, act, ctx| match res {
            Ok(Joined { room, member }) => {
                if matches!(act.phase, Phase::Joining) {
                    act.phase = Phase::Joined { room, member };
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

    fn on_send(&mut self, ctx: &mut Context<Self>, text: &ByteString, send: SendFrame<'_>) {
        let Phase::Joined { room, member } = &self.phase else {
            slog::debug!(self.log, "invalid frame"; "problem" => "send before join");
            return self.close(ctx, Close::InvalidFrame);
        };
        let too_large = send.data_len > self.app.settings.max_message_bytes;
        // An oversized send is not relayed, so only its count is charged.
        let charged = if too_large { 0 } else { send.data_len };
        if !self.budget.charge(charged, Instant::now()) {
            return self.close(ctx, Close::RateLimited);
        }
        if too_large {
            let err = server::error(ErrorCode::MessageTooLarge, send.id.as_deref());
            return self.queue(ctx, err);
        }
        if send.to.as_deref() == Some(&**member) {
            let err = server::error(ErrorCode::UnknownMember, send.id.as_deref());
            return self.queue(ctx, err);
        }
        room.do_send(Publish {
            from: member.clone(),
            // A slice of the frame the client sent: shared, not copied.
            data: text.slice_ref(send.data),
            data_len: send.data_len,
            to: send.to.map(|t| t.into()),
            ack: send.id.map(|i| i.into()),
        });
    }

    fn on_client_close(&mut self, ctx: &mut Context<Self>, reason: Option<CloseReason>) {
        self.record_end(CLIENT_CLOSED);
        self.leave_room();
        let reply = match reason.map(|r| u16::from(r.code)) {
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

impl Handler<Deliver> for WsSession {
    type Result = ();

    fn handle(&mut self, msg: Deliver, ctx: &mut Self::Context) {
        match msg.frame {
            Outgoing::Frame(frame) => self.outbound.push_counted(frame),
            // The room has already removed this member; the `Leave` that
            // `close` still sends lets it notice when that left it empty.
            Outgoing::Close(close) => self.close(ctx, close),
        }
    }
}

impl StreamHandler<Result<AggregatedMessage, ProtocolError>> for WsSession {
    fn handle(&mut self, item: Result<AggregatedMessage, ProtocolError>, ctx: &mut Self::Context) {
        match item {
            Ok(AggregatedMessage::Text(text)) => self.on_text(ctx, text),
            Ok(AggregatedMessage::Binary(data)) => match self.mode {
                Mode::Echo => self.queue(ctx, echo_frame(false, &data)),
                Mode::Relay => self.close(ctx, Close::Binary),
            },
            Ok(AggregatedMessage::Ping(payload)) => self.queue_control(ctx, OpCode::Pong, &payload),
            Ok(AggregatedMessage::Pong(_)) => self.last_pong = Instant::now(),
            Ok(AggregatedMessage::Close(reason)) => self.on_client_close(ctx, reason),
            Err(e) => {
                let close = match &e {
                    ProtocolError::Overflow => Close::TooLarge,
                    ProtocolError::Io(io) if io.kind() == std::io::ErrorKind::InvalidData => {
                        Close::InvalidUtf8
                    }
                    // actix-ws's aggregator reports an oversized fragmented
                    // message only through its error text.
                    ProtocolError::Io(io)
                        if io.to_string().contains("maximum continuation size") =>
                    {
                        Close::TooLarge
                    }
                    ProtocolError::Io(_) => {
                        // The connection itself failed: nobody to send a close to.
                        slog::debug!(self.log, "connection error"; "error" => %e);
                        self.leave_room();
                        self.outbound.abort();
                        ctx.stop();
                        return;
                    }
                    _ => Close::Protocol,
                };
                slog::debug!(self.log, "protocol error"; "error" => %e);
                self.close(ctx, close);
            }
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        // The client's side of the connection ended.
        self.leave_room();
        self.outbound.abort();
        ctx.stop();
    }
}
