//! A WebSocket session: one actor per connection, driving actix-ws from
//! inside the actor. The inbound actix-ws `MessageStream` is added to the
//! actor's context as a stream (so frames are handled one at a time, in
//! order, as actor messages); outbound frames, already encoded, go through
//! the [`outbound`] queue into the response body.

mod actor;
mod outbound;

pub(crate) use actor::{start, Mode};
