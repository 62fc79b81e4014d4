//! The room registry: finds or creates the room actor for a join, spreads
//! rooms over a pool of arbiters, runs each under a `Supervisor`, retires
//! rooms when their last member leaves (`FEATURE_AUTO_ROOM_CLEANUP`), and
//! remembers which rooms exist for `POST /v1/rooms/{room}/tokens` until they
//! have been idle for `ROOM_IDLE_TTL_SECS`.

mod actor;
pub mod messages;

pub use actor::{Registry, RegistryConfig};
pub use messages::*;
