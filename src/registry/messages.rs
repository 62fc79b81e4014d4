//! Messages to the registry.

use std::sync::Arc;

use actix::prelude::*;

use crate::room::{JoinRefused, MemberHandle, Room};

/// A member joined a room.
pub struct Joined {
    /// The room actor, for the session's later `Publish` and `Leave`.
    pub room: Addr<Room>,
    /// The id the room gave the member.
    pub member: Arc<str>,
}

/// Join `room`, creating its actor if needed.
#[derive(Message)]
#[rtype(result = "Result<Joined, JoinRefused>")]
pub struct JoinRoom {
    /// The room id from the token.
    pub room: Arc<str>,
    /// The joining session.
    pub member: MemberHandle,
}

/// Sent by a room that has no members left.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RoomEmpty {
    /// The room's id.
    pub room: Arc<str>,
    /// How many joins the room had handled when it became empty.
    pub joins_seen: u64,
    /// The reporting actor, so that a retired room's late report cannot
    /// retire its successor.
    pub addr: Addr<Room>,
}

/// Records a room created through `POST /v1/rooms`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CreateRoom {
    /// The new room's id.
    pub room: Arc<str>,
}

/// Whether a room exists: it has members, or had some (or was created)
/// less than `ROOM_IDLE_TTL_SECS` ago.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct RoomExists {
    /// The room id asked about.
    pub room: Arc<str>,
}

/// Waits until every room has handled what was sent to it before (at
/// shutdown: the leaves of the sessions just closed).
#[derive(Message)]
#[rtype(result = "()")]
pub struct FlushRooms;

/// Test hook: makes the named room's next handler fail.
#[cfg(feature = "test-hooks")]
#[derive(Message)]
#[rtype(result = "bool")]
pub struct FailRoom {
    /// Block the room's thread this long instead of failing.
    pub stall: Option<std::time::Duration>,
    /// The room to break.
    pub room: Arc<str>,
    /// Fail in the room's next join instead of right away.
    pub on_next_join: bool,
}
