//! Messages into and out of a room actor.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use actix::prelude::*;
use bytes::Bytes;
use bytestring::ByteString;
use futures_util::task::AtomicWaker;

use crate::protocol::Close;

/// Sent by a room to a member's session: close it (4413 for a member that
/// does not keep up).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct CloseMember {
    pub close: Close,
}

/// The frames a room hands to one member's session: complete WebSocket
/// frames, each shared by all its recipients, in the order the room sent
/// them. The session's connection pump takes them all at each turn.
///
/// Not an actor message per frame: an envelope and a mailbox node per
/// delivery cost more than the delivery itself (a 100-member room makes 99
/// per message). The room still reaches the session as an actor for
/// everything else ([`CloseMember`]), and the queue is bounded by the
/// member's `pending` bytes (`SLOW_CONSUMER_BUFFER_THRESHOLD`).
#[derive(Default)]
pub struct Inbox {
    frames: Mutex<VecDeque<Bytes>>,
    waker: AtomicWaker,
    closed: AtomicBool,
}

impl Inbox {
    /// Queues a frame and wakes the session; false once the session has
    /// ended (the frame is dropped).
    pub fn push(&self, frame: Bytes) -> bool {
        {
            let mut frames = self.frames.lock().unwrap_or_else(|e| e.into_inner());
            if self.closed.load(Ordering::Relaxed) {
                return false;
            }
            frames.push_back(frame);
        }
        self.waker.wake();
        true
    }

    /// Registers the session's task for wake-ups, then takes every frame
    /// queued so far.
    pub fn take(&self, waker: &std::task::Waker, mut each: impl FnMut(Bytes)) {
        self.waker.register(waker);
        let mut frames = self.frames.lock().unwrap_or_else(|e| e.into_inner());
        frames.drain(..).for_each(&mut each);
        if frames.capacity() > 16 {
            *frames = VecDeque::new();
        }
    }

    /// The session has ended: later pushes are refused. Returns the bytes
    /// of the frames that were still queued.
    pub fn close(&self) -> usize {
        let mut frames = self.frames.lock().unwrap_or_else(|e| e.into_inner());
        self.closed.store(true, Ordering::Relaxed);
        frames.drain(..).map(|f| f.len()).sum()
    }
}

/// How a room reaches one member's session.
#[derive(Clone)]
pub struct MemberHandle {
    /// The session actor.
    pub recipient: Recipient<CloseMember>,
    /// Where the room puts the member's frames.
    pub inbox: Arc<Inbox>,
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
    /// The client's whole `send` frame; `data` is the part of it that is
    /// relayed. Kept whole rather than sliced: slicing would give the buffer
    /// a shared reference count (one more allocation per message).
    pub text: ByteString,
    /// Where the raw JSON string literal of `data` (quotes included, never
    /// parsed) lies in `text`.
    pub data: std::ops::Range<usize>,
    /// Length of `data` once decoded (for the metrics).
    pub data_len: usize,
    /// Target member for a direct message.
    pub to: Option<Box<str>>,
    /// The client's `id`, when it asked for an `ack`.
    pub ack: Option<Box<str>>,
}

impl Publish {
    /// The raw JSON string literal of `data`.
    pub fn data(&self) -> &str {
        self.text.get(self.data.clone()).unwrap_or("\"\"")
    }
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
    /// Fail in the next `send` instead of right away.
    pub on_next_send: bool,
}
