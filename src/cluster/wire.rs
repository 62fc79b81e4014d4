//! The payload of one pub/sub message between instances: a small binary
//! header, then for messages the complete outgoing WebSocket frame, built
//! once by the sending instance and written as it is by every receiving
//! instance to every local recipient.
//!
//! ```text
//! [0]      version (1)
//! [1]      kind: b'M' broadcast, b'D' direct, b'J' joined, b'L' left
//! [2..18]  origin node tag (an instance ignores its own publications)
//! [18..26] per-room sequence number, big endian; 0 = none (reserved: see
//!          docs/architecture.md, "Designed for what comes next")
//! then     M: frame
//!          D: u8 length, target member id, frame
//!          J, L: u8 length, member id
//! ```

use bytes::{BufMut, Bytes, BytesMut};

use super::keys::NodeTag;
use crate::ids::is_valid_room_id;

const VERSION: u8 = 1;
const HEADER: usize = 26;

/// One decoded publication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    /// A broadcast: the complete frame for every local member.
    Broadcast { frame: Bytes },
    /// A direct message for one member.
    Direct { to: Box<str>, frame: Bytes },
    /// A member joined on the origin instance.
    Joined { member: Box<str> },
    /// A member left (or was disconnected) on the origin instance.
    Left { member: Box<str> },
}

fn header(kind: u8, origin: NodeTag, extra: usize) -> BytesMut {
    let mut b = BytesMut::with_capacity(HEADER + extra);
    b.put_u8(VERSION);
    b.put_u8(kind);
    b.put_slice(&origin.0);
    b.put_u64(0);
    b
}

fn put_id(b: &mut BytesMut, id: &str) {
    debug_assert!(id.len() <= u8::MAX as usize);
    b.put_u8(id.len() as u8);
    b.put_slice(id.as_bytes());
}

/// The start of a broadcast payload; the caller appends the frame.
pub(crate) fn broadcast_header(origin: NodeTag) -> BytesMut {
    header(b'M', origin, 0)
}

/// The start of a direct-message payload; the caller appends the frame.
pub(crate) fn direct_header(origin: NodeTag, to: &str) -> BytesMut {
    let mut b = header(b'D', origin, 1 + to.len());
    put_id(&mut b, to);
    b
}

pub(crate) fn joined(origin: NodeTag, member: &str) -> Bytes {
    let mut b = header(b'J', origin, 1 + member.len());
    put_id(&mut b, member);
    b.freeze()
}

pub(crate) fn left(origin: NodeTag, member: &str) -> Bytes {
    let mut b = header(b'L', origin, 1 + member.len());
    put_id(&mut b, member);
    b.freeze()
}

/// The origin of a payload, read without decoding the rest (so that an
/// instance drops its own publications at once).
pub(crate) fn origin(payload: &[u8]) -> Option<NodeTag> {
    if payload.len() < HEADER || payload[0] != VERSION {
        return None;
    }
    Some(NodeTag(payload[2..18].try_into().ok()?))
}

fn take_id(payload: &Bytes, at: usize) -> Option<(Box<str>, usize)> {
    let len = *payload.get(at)? as usize;
    let raw = payload.get(at + 1..at + 1 + len)?;
    let id = std::str::from_utf8(raw).ok()?;
    // Ids end up inside JSON frames: only well-formed ones are taken.
    if !is_valid_room_id(id) {
        return None;
    }
    Some((id.into(), at + 1 + len))
}

/// Decodes a payload; `None` for anything malformed (it is dropped).
pub(crate) fn decode(payload: Bytes) -> Option<Event> {
    origin(&payload)?;
    match payload[1] {
        b'M' => Some(Event::Broadcast {
            frame: payload.slice(HEADER..),
        }),
        b'D' => {
            let (to, at) = take_id(&payload, HEADER)?;
            Some(Event::Direct {
                to,
                frame: payload.slice(at..),
            })
        }
        b'J' => {
            let (member, _) = take_id(&payload, HEADER)?;
            Some(Event::Joined { member })
        }
        b'L' => {
            let (member, _) = take_id(&payload, HEADER)?;
            Some(Event::Left { member })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips() {
        let n = NodeTag::random();
        let frame = b"\x81\x05hello";
        let with_frame = |mut b: BytesMut| {
            b.put_slice(frame);
            b.freeze()
        };
        assert_eq!(
            decode(with_frame(broadcast_header(n))),
            Some(Event::Broadcast {
                frame: Bytes::from_static(frame)
            })
        );
        assert_eq!(
            decode(with_frame(direct_header(n, "bob"))),
            Some(Event::Direct {
                to: "bob".into(),
                frame: Bytes::from_static(frame)
            })
        );
        assert_eq!(
            decode(joined(n, "ann")),
            Some(Event::Joined {
                member: "ann".into()
            })
        );
        assert_eq!(
            decode(left(n, "ann")),
            Some(Event::Left {
                member: "ann".into()
            })
        );
        assert_eq!(origin(&left(n, "x")), Some(n));
    }

    #[test]
    fn malformed_payloads_are_refused() {
        let n = NodeTag::random();
        assert_eq!(decode(Bytes::from_static(b"short")), None);
        let mut bad = BytesMut::from(&joined(n, "ann")[..]);
        bad[0] = 9;
        assert_eq!(decode(bad.freeze()), None);
        let mut bad = BytesMut::from(&joined(n, "ann")[..]);
        bad[HEADER] = 200; // length past the end
        assert_eq!(decode(bad.freeze()), None);
        assert_eq!(decode(joined(n, "not valid!")), None);
    }
}
