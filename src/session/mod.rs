//! A WebSocket session: one actor per connection, owning the connection.
//! The actor's context polls the socket as one of its items (reading into a
//! per-thread buffer, frames parsed by [`crate::ws`] and handled one at a
//! time, in order); outbound frames, already encoded, wait in the
//! [`outbound`] queue and go out in one write per turn.

mod actor;
mod outbound;
mod roster;

pub(crate) use actor::{start, Mode, Ticket};
pub(crate) use roster::{spread as spread_drain, Roster};
