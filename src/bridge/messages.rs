//! Messages into and out of the bridge actor.

use std::sync::atomic::{AtomicBool, AtomicUsize};

use actix::prelude::*;

use crate::cluster::wire::Event;

/// The bytes of publications handed to one room and not yet handled by it:
/// the bridge adds, the room subtracts. Past `REDIS_RECEIVE_BUFFER_BYTES`
/// the bridge stops handing the room publications and tells it once
/// ([`FromBridge::Overflow`]): its members are told what they missed, and
/// its view of the other instances is read again from Redis.
#[derive(Debug, Default)]
pub(crate) struct Inbound {
    pub bytes: AtomicUsize,
    pub overflowed: AtomicBool,
}

/// What the bridge tells a room.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) enum FromBridge {
    /// A publication from another instance on the room's channel, and its
    /// size (counted in the room's [`Inbound`]).
    Event(Event, usize),
    /// The room fell more than `REDIS_RECEIVE_BUFFER_BYTES` behind; the
    /// publications since were dropped. Queued behind the backlog, so when
    /// the room handles it, it has caught up.
    Overflow,
    /// The link to Redis is lost: members of rooms that span instances are
    /// told `cluster_degraded`.
    Down,
    /// The link is back (reconnected, resubscribed): the room re-announces
    /// its members and tells them `cluster_restored`.
    Up,
}

/// Subscribes a room's channel (the room has its first local member).
/// Answers once Redis has confirmed the subscription.
#[derive(Message)]
#[rtype(result = "Result<(), SubscribeFailed>")]
pub(crate) struct Subscribe {
    /// The room's channel (a keyed hash, never the room id).
    pub channel: String,
    /// Where the channel's publications go.
    pub room: Recipient<FromBridge>,
    /// The room's backlog of publications.
    pub inbound: std::sync::Arc<Inbound>,
}

/// The subscription could not be made (the join is refused with 1013).
#[derive(Debug, thiserror::Error)]
#[error("subscribing the room's channel failed: {0}")]
pub(crate) struct SubscribeFailed(pub String);

/// Unsubscribes a room's channel (the room has lost its last local member).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Unsubscribe {
    /// The room's channel.
    pub channel: String,
    /// The room that subscribed it: a successor that has subscribed the
    /// same channel since is left alone.
    pub room: Recipient<FromBridge>,
}
