//! Names in Redis (PROTOCOL.md section 7): every key and channel names a
//! room, a `jti` or a client address only by a keyed hash under
//! `CLUSTER_SECRET`, so Redis never holds one in clear. Member ids stored in
//! presence are encrypted under the same secret (they must come back out for
//! `welcome`); the field that indexes them is a keyed hash.
//!
//! Every key of one room carries the same hash tag (`{...}`), so that in a
//! Redis Cluster a room's keys and channel share a hash slot and one Lua
//! script can touch them all.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Bytes of HMAC output kept in a name: 128 bits, as many as a server-made
/// room id has, so names do not collide in practice.
const TAG_BYTES: usize = 16;

/// Length of a node tag in its text form (base64url of 16 bytes).
pub(crate) const NODE_TAG_LEN: usize = 22;

/// Derives names and encrypts member ids under the cluster secret.
#[derive(Clone)]
pub(crate) struct Keys {
    mac: HmacSha256,
}

/// The names of one room's keys and channel.
#[derive(Clone, Debug)]
pub(crate) struct RoomKeys {
    /// Presence: member field -> `<node tag><encrypted member id>`.
    pub members: String,
    /// Instances with members in the room: node tag -> last heartbeat (ms,
    /// Redis clock).
    pub nodes: String,
    /// Marks a room created through the API, or recently used.
    pub exists: String,
    /// The room's pub/sub channel.
    pub channel: String,
    /// The hash that names the room, for the field and cipher derivations.
    tag: String,
}

impl Keys {
    pub fn new(secret: &[u8]) -> Self {
        Keys {
            mac: HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length"),
        }
    }

    fn prf(&self, domain: &[u8], parts: &[&[u8]]) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(domain);
        for p in parts {
            // Length-prefixed, so that ("ab","c") and ("a","bc") differ.
            mac.update(&(p.len() as u32).to_be_bytes());
            mac.update(p);
        }
        mac.finalize().into_bytes().into()
    }

    fn tag(&self, domain: &[u8], parts: &[&[u8]]) -> String {
        URL_SAFE_NO_PAD.encode(&self.prf(domain, parts)[..TAG_BYTES])
    }

    pub fn room(&self, room: &str) -> RoomKeys {
        let tag = self.tag(b"room", &[room.as_bytes()]);
        RoomKeys {
            members: format!("br:{{{tag}}}:m"),
            nodes: format!("br:{{{tag}}}:n"),
            exists: format!("br:{{{tag}}}:r"),
            channel: format!("br:{{{tag}}}:c"),
            tag,
        }
    }

    /// The replay-guard key of a `jti`.
    pub fn jti(&self, jti: &str) -> String {
        format!("br:j:{}", self.tag(b"jti", &[jti.as_bytes()]))
    }

    /// A per-IP limiter key; `kind` names the limit.
    pub fn limit(&self, kind: &str, ip: &std::net::IpAddr) -> String {
        let ip = ip.to_string();
        format!("br:l:{kind}:{}", self.tag(b"ip", &[ip.as_bytes()]))
    }

    /// The presence field of a member.
    pub fn member_field(&self, room: &RoomKeys, member: &str) -> String {
        self.tag(b"member", &[room.tag.as_bytes(), member.as_bytes()])
    }

    /// Encrypts a member id for its presence value. The keystream is a PRF
    /// of the room and the member's field; a field names one member id only,
    /// so no keystream is ever used for two different ids.
    pub fn seal_member(&self, room: &RoomKeys, field: &str, member: &str) -> String {
        let pad = self.prf(b"seal", &[room.tag.as_bytes(), field.as_bytes()]);
        let bytes: Vec<u8> = member
            .bytes()
            .zip(pad.iter().cycle())
            .map(|(b, k)| b ^ k)
            .collect();
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Reverses [`Keys::seal_member`]; `None` for anything that does not
    /// decode to a well-formed member id.
    pub fn open_member(&self, room: &RoomKeys, field: &str, sealed: &str) -> Option<String> {
        let bytes = URL_SAFE_NO_PAD.decode(sealed).ok()?;
        if bytes.is_empty() || bytes.len() > 32 {
            return None;
        }
        let pad = self.prf(b"seal", &[room.tag.as_bytes(), field.as_bytes()]);
        let plain: Vec<u8> = bytes
            .iter()
            .zip(pad.iter().cycle())
            .map(|(b, k)| b ^ k)
            .collect();
        let id = String::from_utf8(plain).ok()?;
        crate::ids::is_valid_room_id(&id).then_some(id)
    }
}

/// This process's identity in Redis and on the wire: random per process, so
/// that two pods given the same `INSTANCE_ID` still tell their own
/// publications apart.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) struct NodeTag(pub [u8; TAG_BYTES]);

impl NodeTag {
    pub fn random() -> Self {
        let mut b = [0u8; TAG_BYTES];
        getrandom::fill(&mut b).expect("the operating system's random source failed");
        NodeTag(b)
    }

    pub fn text(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }

    pub fn from_text(s: &str) -> Option<Self> {
        let v = URL_SAFE_NO_PAD.decode(s).ok()?;
        Some(NodeTag(v.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names_hide_the_room_id_and_share_one_hash_tag() {
        let k = Keys::new(b"0123456789abcdef0123456789abcdef");
        let r = k.room("my-secret-room");
        for name in [&r.members, &r.nodes, &r.exists, &r.channel] {
            assert!(!name.contains("my-secret-room"));
            assert!(name.starts_with(&format!("br:{{{}}}", r.tag)), "{name}");
        }
        assert_ne!(k.room("a").channel, k.room("b").channel);
        let other = Keys::new(b"another-secret-another-secret-xx");
        assert_ne!(other.room("a").channel, k.room("a").channel);
    }

    #[test]
    fn a_sealed_member_id_opens_only_with_its_room_and_field() {
        let k = Keys::new(b"0123456789abcdef0123456789abcdef");
        let r = k.room("room");
        let f = k.member_field(&r, "member-1");
        let sealed = k.seal_member(&r, &f, "member-1");
        assert!(!sealed.contains("member-1"));
        assert_eq!(k.open_member(&r, &f, &sealed).as_deref(), Some("member-1"));
        let other = k.room("other");
        assert_ne!(
            k.open_member(&other, &f, &sealed).as_deref(),
            Some("member-1")
        );
        assert_eq!(k.open_member(&r, &f, "!!"), None);
    }

    #[test]
    fn jti_and_ip_keys_do_not_show_their_input() {
        let k = Keys::new(b"0123456789abcdef0123456789abcdef");
        assert!(!k.jti("token-id-42").contains("token-id-42"));
        let ip: std::net::IpAddr = "10.1.2.3".parse().unwrap();
        assert!(!k.limit("c", &ip).contains("10.1.2.3"));
    }

    #[test]
    fn node_tags_round_trip_through_text() {
        let n = NodeTag::random();
        assert_eq!(n.text().len(), NODE_TAG_LEN);
        assert_eq!(NodeTag::from_text(&n.text()), Some(n));
    }
}
