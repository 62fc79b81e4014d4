//! Messages into and out of a room actor.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use actix::prelude::*;
use bytes::Bytes;
use bytestring::ByteString;

use crate::protocol::Close;

/// What a room (or the session itself) hands to a session for its client.
#[derive(Debug, Clone)]
pub enum Outgoing {
    /// A complete WebSocket frame (header included) holding one JSON
    /// object, shared by all its recipients.
    Frame(Bytes),
    /// Close the session with this code (e.g. 4413 for a slow consumer).
    Close(Close),
}

/// Delivered to a session actor.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Deliver {
    /// The frame to write, or the close to perform.
    pub frame: Outgoing,
}

/// How a room reaches one member's session.
#[derive(Clone)]
pub struct MemberHandle {
    /// The session actor.
    pub recipient: Recipient<Deliver>,
    /// Bytes queued for this client and not yet written: the room adds
    /// before it hands a frame over, the session's writer subtracts once the
    /// frame is written out, so the room can refuse (4413) a client that
    /// does not keep up without ever waiting on it.
    pub pending: Arc<AtomicUsize>,
}

/// Why a join was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinRefused {
    /// `MAX_ROOM_MEMBERS` reached (4403).
    RoomFull,
    /// The room or registry is gone (1011).
    Unavailable,
    /// Cluster mode, and Redis cannot be reached (1013).
    TryLater,
}

/// Adds a member. The room sends `welcome` to it and `member_joined` to the
/// others, then answers with the new member's id.
#[derive(Message)]
#[rtype(result = "Result<Arc<str>, JoinRefused>")]
pub struct Join {
    /// The joining session.
    pub member: MemberHandle,
}

/// A `send` accepted from a member.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Publish {
    /// Sender's member id.
    pub from: Arc<str>,
    /// The raw JSON string literal of `data`, quotes included; never parsed.
    pub data: ByteString,
    /// Length of `data` once decoded (for the metrics).
    pub data_len: usize,
    /// Target member for a direct message.
    pub to: Option<Box<str>>,
    /// The client's `id`, when it asked for an `ack`.
    pub ack: Option<Box<str>>,
}

/// A member leaves (left, closed, or was disconnected).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Leave {
    /// The leaving member's id.
    pub member: Arc<str>,
}

/// Answered once every message queued before it has been handled (the
/// leaves of closed sessions, at shutdown).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Flush;

/// Test hook: makes the room fail (a panic in its handler), as a bug would.
#[cfg(feature = "test-hooks")]
#[derive(Message)]
#[rtype(result = "()")]
pub struct InjectFailure {
    /// Instead of failing, block the room's thread this long (a room that
    /// falls behind).
    pub stall: Option<std::time::Duration>,
    /// Fail in the next `Join` instead of right away.
    pub on_next_join: bool,
}
