//! blindrelay: a blind relay for end-to-end-encrypted, ephemeral chat.
//!
//! It moves opaque ciphertext between the members of a room over
//! WebSocket. The wire contract is PROTOCOL.md; `docs/architecture.md` shows
//! the actors and the path of one message.
#![forbid(unsafe_code)]

pub mod cli;
pub mod ids;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod protocol;
pub mod replay;
pub mod settings;
pub mod startup;
pub mod token;

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;

mod bridge;
mod cluster;
mod http;
mod registry;
mod room;
mod session;
mod state;
mod ws;

pub use settings::Settings;
pub use startup::{AppHandle, Application};
