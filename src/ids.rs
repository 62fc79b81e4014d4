//! Identifiers (PROTOCOL.md section 1): room ids, member ids, instance ids,
//! request ids. Generation uses the operating system's CSPRNG so that ids are
//! unguessable; validation is the single place that decides what is
//! well-formed.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

/// Longest room id accepted anywhere (token claim, URL path).
pub const MAX_ROOM_ID_LEN: usize = 64;
/// Longest `jti` accepted in a join token.
pub const MAX_JTI_LEN: usize = 128;

/// Bytes drawn from the operating system per refill of a thread's pool.
const POOL_BYTES: usize = 512;

thread_local! {
    /// Random bytes from the OS, handed out once each: a connection storm
    /// draws two ids per connection, and a system call for each showed in
    /// its profile. The bytes are the kernel CSPRNG's; only the call is
    /// batched.
    static POOL: std::cell::RefCell<(usize, [u8; POOL_BYTES])> =
        const { std::cell::RefCell::new((POOL_BYTES, [0; POOL_BYTES])) };
}

fn random_bytes(out: &mut [u8]) {
    if out.len() > POOL_BYTES {
        getrandom::fill(out).expect("the operating system's random source failed");
        return;
    }
    POOL.with_borrow_mut(|(used, pool)| {
        if *used + out.len() > POOL_BYTES {
            getrandom::fill(pool).expect("the operating system's random source failed");
            *used = 0;
        }
        out.copy_from_slice(&pool[*used..*used + out.len()]);
        // Handed out once: never again from this pool.
        pool[*used..*used + out.len()].fill(0);
        *used += out.len();
    });
}

/// A number in `0..n` (0 when `n` is 0), from the same pool; the modulo's
/// bias is below 2^-40 for the sizes it is used with.
pub(crate) fn random_below(n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    let mut b = [0u8; 8];
    random_bytes(&mut b);
    (u64::from_le_bytes(b) % n as u64) as usize
}

fn random_b64(bytes: usize) -> String {
    let mut buf = [0u8; 32];
    let buf = &mut buf[..bytes.min(32)];
    random_bytes(buf);
    URL_SAFE_NO_PAD.encode(buf)
}

/// A new room id: 22 chars of base64url, 128 random bits.
pub fn new_room_id() -> String {
    random_b64(16)
}

/// A new member id: 16 chars of base64url, 96 random bits (the contract asks
/// for at least 64), so collisions inside a room are not a practical concern;
/// the room still checks.
pub fn new_member_id() -> String {
    random_b64(12)
}

/// A new `jti` for the tokens the relay mints itself.
pub fn new_jti() -> String {
    random_b64(18)
}

/// A new request id for `X-Request-Id`.
pub fn new_request_id() -> String {
    random_b64(12)
}

/// A new instance id when `INSTANCE_ID` is not set.
pub fn new_instance_id() -> String {
    random_b64(6)
}

fn is_id_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// 1-64 chars of `[A-Za-z0-9_-]`.
pub fn is_valid_room_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_ROOM_ID_LEN && s.bytes().all(is_id_char)
}

/// An incoming `X-Request-Id` is kept only when it is short and plain, so it
/// cannot smuggle anything into logs or headers.
pub fn is_valid_request_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| is_id_char(b) || b == b'.' || b == b':')
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_drawn_across_many_pool_refills_are_all_distinct() {
        let ids: std::collections::HashSet<String> =
            (0..10_000).map(|_| super::new_member_id()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(ids.iter().all(|id| id.len() == 16));
    }

    use super::*;

    #[test]
    fn random_numbers_stay_below_their_bound() {
        assert!((0..1000).all(|_| random_below(10) < 10));
        assert_eq!(random_below(0), 0);
        assert_eq!(random_below(1), 0);
    }

    #[test]
    fn generated_room_ids_have_22_url_safe_chars_and_validate() {
        let id = new_room_id();
        assert_eq!(id.len(), 22);
        assert!(is_valid_room_id(&id));
        assert_ne!(id, new_room_id());
    }

    #[test]
    fn member_ids_are_short_url_safe_and_distinct() {
        let a = new_member_id();
        assert!(a.len() <= 32 && is_valid_room_id(&a));
        assert_ne!(a, new_member_id());
    }

    #[test]
    fn room_ids_outside_the_alphabet_or_too_long_are_refused() {
        assert!(!is_valid_room_id(""));
        assert!(!is_valid_room_id("a b"));
        assert!(!is_valid_room_id("room/1"));
        assert!(!is_valid_room_id(&"a".repeat(65)));
        assert!(is_valid_room_id(&"a".repeat(64)));
        assert!(is_valid_room_id("Abc_-9"));
    }

    #[test]
    fn request_ids_with_control_chars_are_not_reused() {
        assert!(is_valid_request_id("abc-123.x"));
        assert!(!is_valid_request_id("abc\n123"));
        assert!(!is_valid_request_id(&"a".repeat(129)));
    }
}
