//! The RedisBridge actor: the subscription side of the cluster link. It
//! subscribes a room's channel when the room gets its first local member
//! and unsubscribes when it loses its last, routes each publication from
//! another instance to its room (dropping its own at once), watches the
//! link (a heartbeat PING measures the round trip), and when the link is
//! lost tells every room, reconnects with capped exponential backoff and
//! jitter, resubscribes every active room, flushes the leaves that happened
//! meanwhile, and tells every room it is back.
//!
//! It also starts the publish lane ([`crate::cluster::redis::run_lane`]) on
//! its own thread.

mod actor;
pub(crate) mod messages;

pub(crate) use actor::{BridgeConfig, RedisBridge};
pub(crate) use messages::*;
