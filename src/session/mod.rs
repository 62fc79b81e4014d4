//! A WebSocket session: one actor per connection, driving actix-ws from
//! inside the actor. The inbound `MessageStream` is added to the actor's
//! context as a stream (so frames are handled one at a time, in order, as
//! actor messages); outbound frames go through the [`outbox`] and its
//! writer task.

mod actor;
mod body;
pub(crate) mod outbox;

pub(crate) use actor::{start, Mode};
