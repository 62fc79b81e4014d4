//! Messages into and out of the bridge actor.

use actix::prelude::*;

use crate::cluster::wire::Event;

/// What the bridge tells a room.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) enum FromBridge {
    /// A publication from another instance on the room's channel.
    Event(Event),
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
