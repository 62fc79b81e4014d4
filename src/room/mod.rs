//! A room: one actor per active room, holding its members' recipients and
//! doing the fan-out. Each outgoing frame is serialized once and the same
//! bytes are handed to every recipient. Rooms run under an actix
//! `Supervisor`: a room that fails is restarted with its members kept.

mod actor;
pub mod messages;

pub use actor::{ClusterConfig, LocalRoom, Room, RoomConfig};
pub use messages::*;
