//! Entry points for the fuzz targets in `fuzz/` (built only with the
//! `fuzzing` feature, never part of the relay's API).
//!
//! Each function takes the raw bytes of one fuzz input, drives the code
//! under test with them and panics when an invariant does not hold; a
//! panic is what the fuzzer reports as a finding. The same functions replay
//! the seed corpus and saved findings as plain tests (`fuzz/tests/`).
//!
//! - [`ws_frames`]: the client-frame parser of [`crate::ws`].
//! - [`token_check`]: the join-token check of [`crate::token`].

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::ids::MAX_JTI_LEN;
use crate::token::{now_secs, Claims, JoinTokens};
use crate::ws::{Decoder, Message, WsError};

// ---------------------------------------------------------------------------
// Client frames
// ---------------------------------------------------------------------------

/// Largest control frame payload (RFC 6455 section 5.5).
const MAX_CONTROL: usize = 125;
/// Smallest client frame: two header bytes and the mask.
const MIN_FRAME: usize = 6;

/// A decoded message, in a form that can be compared and printed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Msg {
    Text(Vec<u8>),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong,
    Close(Option<u16>),
}

impl From<Message> for Msg {
    fn from(m: Message) -> Self {
        match m {
            Message::Text(s) => Msg::Text(s.as_bytes().to_vec()),
            Message::Binary(b) => Msg::Binary(b.to_vec()),
            Message::Ping(b) => Msg::Ping(b.to_vec()),
            Message::Pong => Msg::Pong,
            Message::Close(c) => Msg::Close(c),
        }
    }
}

/// How a stream of frames ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    /// The connection is failed with this error.
    Error(WsError),
    /// All bytes were read; this many are left over (an incomplete frame).
    Incomplete(usize),
}

/// Every frame taken (its length and the message it completed), and how
/// the stream ended.
type Outcome = (Vec<(usize, Option<Msg>)>, End);

/// The close code an error maps to, for comparison with [`reference`].
fn close_code(e: WsError) -> u16 {
    match e {
        WsError::Protocol(_) => 1002,
        WsError::TooLarge => 1009,
        WsError::InvalidUtf8 => 1007,
    }
}

/// Feeds the input to the frame decoder the way a session does (a buffer
/// of unread bytes that grows as bytes arrive, decoded until it holds no
/// whole frame), checks each result, and panics on a violated invariant.
///
/// Input layout: two bytes of message limit (little endian; `0xffff` means
/// no limit at all), two bytes of seed for the chunk sizes, then the bytes
/// the client sent. The stream is decoded four times, which must agree
/// frame for frame: in one piece, one byte at a time, in chunks of sizes
/// drawn from the seed, and by a straightforward reference decoder.
pub fn ws_frames(data: &[u8]) {
    if data.len() < 4 {
        return;
    }
    let max_message = match u16::from_le_bytes([data[0], data[1]]) {
        0xffff => usize::MAX,
        n => n as usize,
    };
    let mut seed = u32::from(u16::from_le_bytes([data[2], data[3]])) | 0x1_0000;
    let stream = &data[4..];

    let whole = decode_in_chunks(max_message, stream, |_| stream.len());
    let bytewise = decode_in_chunks(max_message, stream, |_| 1);
    let chunked = decode_in_chunks(max_message, stream, |left| {
        // xorshift32: chunk sizes from 1 to 64 bytes, or the whole rest.
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        match seed % 16 {
            0 => left,
            _ => 1 + (seed >> 8) as usize % 64,
        }
    });
    assert_eq!(whole, bytewise, "whole buffer vs byte by byte");
    assert_eq!(whole, chunked, "whole buffer vs chunks");

    let (ref_frames, ref_end) = reference(max_message, stream);
    assert_eq!(whole.0, ref_frames, "decoder vs reference: frames");
    let end = match whole.1 {
        End::Error(e) => RefEnd::Error(close_code(e)),
        End::Incomplete(n) => RefEnd::Incomplete(n),
    };
    assert_eq!(end, ref_end, "decoder vs reference: end of stream");
}

/// Decodes `stream` with one decoder, appending `next_chunk(bytes_left)`
/// bytes to the unread buffer whenever it holds no whole frame.
fn decode_in_chunks(
    max_message: usize,
    stream: &[u8],
    mut next_chunk: impl FnMut(usize) -> usize,
) -> Outcome {
    let mut decoder = Decoder::new(max_message);
    let mut frames = Vec::new();
    let (mut pos, mut end) = (0, 0);
    loop {
        loop {
            let buf = &stream[pos..end];
            match decoder.decode(buf) {
                Err(e) => return (frames, End::Error(e)),
                Ok(None) => break,
                Ok(Some((used, msg))) => {
                    assert!(
                        (MIN_FRAME..=buf.len()).contains(&used),
                        "took {used} bytes of a buffer of {}",
                        buf.len()
                    );
                    let msg = msg.map(Msg::from);
                    check_message(max_message, msg.as_ref());
                    frames.push((used, msg));
                    pos += used;
                }
            }
        }
        if end == stream.len() {
            return (frames, End::Incomplete(end - pos));
        }
        end += next_chunk(stream.len() - end).clamp(1, stream.len() - end);
    }
}

fn check_message(max_message: usize, msg: Option<&Msg>) {
    match msg {
        Some(Msg::Text(t)) => {
            assert!(
                t.len() <= max_message,
                "text of {} > {max_message}",
                t.len()
            );
            assert!(std::str::from_utf8(t).is_ok(), "text is not UTF-8");
        }
        Some(Msg::Binary(b)) => {
            assert!(
                b.len() <= max_message,
                "binary of {} > {max_message}",
                b.len()
            );
        }
        Some(Msg::Ping(p)) => assert!(p.len() <= MAX_CONTROL, "ping of {}", p.len()),
        Some(Msg::Pong | Msg::Close(_)) | None => {}
    }
}

/// How the reference decoder ended: errors by close code only.
#[derive(Debug, PartialEq, Eq)]
enum RefEnd {
    Error(u16),
    Incomplete(usize),
}

/// A plain reading of RFC 6455 section 5 for client frames, written
/// independently of [`Decoder`] (whole buffer only, byte-wise unmasking),
/// with the same limits and the same order of checks.
fn reference(max_message: usize, stream: &[u8]) -> (Vec<(usize, Option<Msg>)>, RefEnd) {
    let mut frames = Vec::new();
    // The open fragmented message: is it text, and its bytes so far.
    let mut open: Option<(bool, Vec<u8>)> = None;
    let mut rest = stream;
    loop {
        let incomplete = RefEnd::Incomplete(rest.len());
        if rest.len() < 2 {
            return (frames, incomplete);
        }
        let fin = rest[0] >> 7 == 1;
        let rsv = (rest[0] >> 4) & 0b111;
        let opcode = rest[0] & 0x0f;
        let masked = rest[1] >> 7 == 1;
        let len7 = u64::from(rest[1] & 0x7f);
        let is_control = opcode >= 8;
        if rsv != 0 {
            return (frames, RefEnd::Error(1002));
        }
        let opcode_ok = match opcode {
            0 => open.is_some(),
            1 | 2 => open.is_none(),
            8..=10 => true,
            _ => false,
        };
        if !opcode_ok || !masked || (is_control && (!fin || len7 > 125)) {
            return (frames, RefEnd::Error(1002));
        }
        let (len, mut at) = match len7 {
            126 if rest.len() < 4 => return (frames, incomplete),
            126 => (u64::from(rest[2]) << 8 | u64::from(rest[3]), 4),
            127 if rest.len() < 10 => return (frames, incomplete),
            127 => {
                let len = rest[2..10]
                    .iter()
                    .fold(0u64, |acc, &b| acc << 8 | u64::from(b));
                if len > i64::MAX as u64 {
                    return (frames, RefEnd::Error(1002));
                }
                (len, 10)
            }
            n => (n, 2),
        };
        let so_far = open.as_ref().map_or(0, |(_, d)| d.len() as u64);
        if !is_control && so_far + len > max_message as u64 {
            return (frames, RefEnd::Error(1009));
        }
        if rest.len() < at + 4 {
            return (frames, incomplete);
        }
        let mask = [rest[at], rest[at + 1], rest[at + 2], rest[at + 3]];
        at += 4;
        if ((rest.len() - at) as u64) < len {
            return (frames, incomplete);
        }
        let total = at + len as usize;
        let payload: Vec<u8> = rest[at..total]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect();
        let text_or_fail = |text: bool, data: Vec<u8>| {
            if !text {
                Ok(Msg::Binary(data))
            } else if std::str::from_utf8(&data).is_ok() {
                Ok(Msg::Text(data))
            } else {
                Err(1007)
            }
        };
        let msg = match opcode {
            0 => {
                let (text, mut data) = open.take().expect("checked above");
                data.extend_from_slice(&payload);
                if fin {
                    match text_or_fail(text, data) {
                        Ok(m) => Some(m),
                        Err(code) => return (frames, RefEnd::Error(code)),
                    }
                } else {
                    open = Some((text, data));
                    None
                }
            }
            1 | 2 if fin => match text_or_fail(opcode == 1, payload) {
                Ok(m) => Some(m),
                Err(code) => return (frames, RefEnd::Error(code)),
            },
            1 | 2 => {
                open = Some((opcode == 1, payload));
                None
            }
            8 => match payload.len() {
                0 => Some(Msg::Close(None)),
                1 => return (frames, RefEnd::Error(1002)),
                _ if std::str::from_utf8(&payload[2..]).is_err() => {
                    return (frames, RefEnd::Error(1007))
                }
                _ => Some(Msg::Close(Some(
                    u16::from(payload[0]) << 8 | u16::from(payload[1]),
                ))),
            },
            9 => Some(Msg::Ping(payload)),
            _ => Some(Msg::Pong),
        };
        frames.push((total, msg));
        rest = &rest[total..];
    }
}

// ---------------------------------------------------------------------------
// Join tokens
// ---------------------------------------------------------------------------

/// The current join-token secret of the fuzz targets (the one of the unit
/// tests in `src/token.rs`).
pub const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test";
/// The previous secret, accepted during a rotation.
pub const PREVIOUS_SECRET: &[u8] = b"previous-secret-previous-secret-0";
/// A secret the relay does not know.
const WRONG_SECRET: &[u8] = b"another-secret-another-secret-000";
const MAX_TTL_SECS: u64 = 3600;
const LEEWAY_SECS: u64 = 5;
/// Tolerance for the clock moving on between the check and the oracle.
const CLOCK_SLACK_SECS: u64 = 2;

/// Checks one fuzz input as a join token; panics if a token that was not
/// signed by HS256 with a secret the relay holds is accepted, if accepted
/// claims break a rule, or if a token that is plainly valid is refused.
///
/// The first byte chooses how the rest is read:
/// - `0 (mod 3)`: the token itself (lossy UTF-8);
/// - `1`: a key byte, then the header JSON and the claims JSON separated by
///   the first NUL byte; they are encoded and signed as they are;
/// - `2`: a description of header and claims (algorithm, key, times relative
///   to the current time, room, `jti`), built into well-formed JSON.
///
/// Every token is verified twice, with and without a previous secret.
pub fn token_check(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut input = Input(rest);
    let (token, must_accept) = match mode % 3 {
        0 => (String::from_utf8_lossy(rest).into_owned(), false),
        1 => {
            let key = input.byte();
            let rest = input.0;
            let split = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
            let (header, claims) = (&rest[..split], rest.get(split + 1..).unwrap_or(&[]));
            (sign_parts(header, claims, key), false)
        }
        _ => structured_token(&mut input),
    };

    let with_previous = JoinTokens::new(SECRET, Some(PREVIOUS_SECRET), MAX_TTL_SECS, LEEWAY_SECS);
    let current_only = JoinTokens::new(SECRET, None, MAX_TTL_SECS, LEEWAY_SECS);
    let rotating = with_previous.verify(&token);
    let plain = current_only.verify(&token);
    if let Ok(claims) = &rotating {
        check_accepted(&token, claims, &[SECRET, PREVIOUS_SECRET]);
    }
    if let Ok(claims) = &plain {
        check_accepted(&token, claims, &[SECRET]);
        assert_eq!(
            rotating.as_ref().ok(),
            Some(claims),
            "accepted without a previous secret but not with one: {token}"
        );
    }
    if must_accept {
        assert!(
            rotating.is_ok(),
            "valid token refused ({rotating:?}): {token}"
        );
    }
}

/// The unread rest of a fuzz input; reads past its end give zeros.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn byte(&mut self) -> u8 {
        let (&b, rest) = self.0.split_first().unwrap_or((&0, &[]));
        self.0 = rest;
        b
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }

    fn i16(&mut self) -> i64 {
        i64::from(i16::from_le_bytes([self.byte(), self.byte()]))
    }

    fn u64(&mut self) -> u64 {
        (0..8).fold(0, |acc, _| acc << 8 | u64::from(self.byte()))
    }

    fn string(&mut self, max: u8) -> String {
        let n = self.byte() % max;
        String::from_utf8_lossy(self.take(n as usize)).into_owned()
    }
}

fn hs256(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

/// Encodes header and claims as they are and signs them by HS256 with the
/// key `key` chooses: current, previous, unknown secret, no signature, or
/// the current secret's signature with one bit flipped.
fn sign_parts(header: &[u8], claims: &[u8], key: u8) -> String {
    let signed = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let sig = match key % 5 {
        0 => hs256(SECRET, signed.as_bytes()),
        1 => hs256(PREVIOUS_SECRET, signed.as_bytes()),
        2 => hs256(WRONG_SECRET, signed.as_bytes()),
        3 => Vec::new(),
        _ => {
            let mut sig = hs256(SECRET, signed.as_bytes());
            sig[usize::from(key / 5) % 32] ^= 1 << (key % 8);
            sig
        }
    };
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig))
}

/// A JSON value for a time claim: absent, relative to now, any number, a
/// negative or fractional number, a string or null.
fn time_claim(input: &mut Input, now: u64) -> (Option<String>, Option<i64>) {
    match input.byte() % 8 {
        0 | 1 => (None, None),
        2..=4 => {
            let offset = input.i16();
            let t = now.saturating_add_signed(offset);
            (Some(t.to_string()), Some(offset))
        }
        5 => (Some(input.u64().to_string()), None),
        6 => (Some(format!("{}.5", now)), None),
        _ => match input.byte() % 4 {
            0 => (Some(format!("\"{now}\"")), None),
            1 => (Some("null".into()), None),
            2 => (Some(format!("-{}", input.u64())), None),
            _ => (Some(format!("{}e0", now + 60)), None),
        },
    }
}

/// Builds a token from a description in the input; also says whether the
/// relay must accept it (HS256 with a secret it holds, well-formed claims
/// comfortably inside the time rules).
fn structured_token(input: &mut Input) -> (String, bool) {
    let now = now_secs();
    let key = input.byte();
    let algs = [
        "HS256", "HS384", "HS512", "none", "RS256", "hs256", "HS256 ",
    ];
    let alg_choice = input.byte() as usize % (algs.len() + 1);
    let alg = match algs.get(alg_choice) {
        Some(a) => (*a).to_owned(),
        None => input.string(16),
    };
    let flags = input.byte();
    let mut header = format!("{{\"alg\":{}", json_string(&alg));
    if flags & 1 != 0 {
        header.push_str(",\"typ\":\"JWT\"");
    }
    if flags & 2 != 0 {
        header.push_str(&format!(",\"kid\":{}", json_string(&input.string(32))));
    }
    // A second `alg`: a parser that keeps the first or the last would see
    // another algorithm than the one checked.
    let duplicate_alg = flags & 4 != 0;
    if duplicate_alg {
        header.push_str(",\"alg\":\"none\"");
    }
    header.push('}');

    let room = input.string(80);
    let jti = input.string(160);
    let (exp, exp_offset) = time_claim(input, now);
    let (nbf, nbf_offset) = time_claim(input, now);
    let (iat, iat_offset) = time_claim(input, now);
    let mut claims = Vec::new();
    if flags & 8 == 0 {
        claims.push(format!("\"room\":{}", json_string(&room)));
    }
    if flags & 16 == 0 {
        claims.push(format!("\"jti\":{}", json_string(&jti)));
    }
    for (name, value) in [("exp", &exp), ("nbf", &nbf), ("iat", &iat)] {
        if let Some(v) = value {
            claims.push(format!("\"{name}\":{v}"));
        }
    }
    let has_aud = flags & 32 != 0;
    if has_aud {
        claims.push("\"aud\":\"relay\"".into());
    }
    if flags & 64 != 0 {
        claims.push(format!("\"x\":{}", json_string(&input.string(32))));
    }
    let claims = format!("{{{}}}", claims.join(","));

    let leeway = LEEWAY_SECS as i64;
    let ttl = MAX_TTL_SECS as i64;
    let must_accept = key % 5 < 2
        && alg == "HS256"
        && !duplicate_alg
        && !has_aud
        && flags & (8 | 16) == 0
        && valid_room(&room)
        && (1..=MAX_JTI_LEN).contains(&jti.len())
        && exp_offset.is_some_and(|o| (2 - leeway..=ttl + leeway - 2).contains(&o))
        && opt_time_ok(&nbf, nbf_offset)
        && opt_time_ok(&iat, iat_offset);
    (
        sign_parts(header.as_bytes(), claims.as_bytes(), key),
        must_accept,
    )
}

/// An optional `nbf` or `iat` that is absent or plainly not in the future.
fn opt_time_ok(value: &Option<String>, offset: Option<i64>) -> bool {
    value.is_none() || offset.is_some_and(|o| o <= (LEEWAY_SECS - CLOCK_SLACK_SECS) as i64)
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// Room id rule of PROTOCOL.md section 1, restated for the oracle.
fn valid_room(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Checks an accepted token independently of `jsonwebtoken`: three parts,
/// a header naming HS256, an HMAC-SHA256 signature by one of `keys`, and
/// claims that keep every rule of the relay.
fn check_accepted(token: &str, claims: &Claims, keys: &[&[u8]]) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(
        parts.len(),
        3,
        "accepted a token of {} parts: {token}",
        parts.len()
    );
    let decode = |part: &str| {
        URL_SAFE_NO_PAD
            .decode(part)
            .unwrap_or_else(|e| panic!("accepted a token with bad base64 ({e}): {token}"))
    };
    let header: serde_json::Value = serde_json::from_slice(&decode(parts[0]))
        .unwrap_or_else(|e| panic!("accepted a token whose header is not JSON ({e}): {token}"));
    assert_eq!(
        header.get("alg").and_then(|a| a.as_str()),
        Some("HS256"),
        "accepted a token whose header is {header}: {token}"
    );
    let signed = &token[..parts[0].len() + 1 + parts[1].len()];
    let sig = decode(parts[2]);
    assert!(
        keys.iter().any(|k| hs256(k, signed.as_bytes()) == sig),
        "accepted a token not signed with a secret in use: {token}"
    );

    let payload: serde_json::Value = serde_json::from_slice(&decode(parts[1]))
        .unwrap_or_else(|e| panic!("accepted a token whose claims are not JSON ({e}): {token}"));
    assert_eq!(
        payload.get("room").and_then(|r| r.as_str()),
        Some(claims.room.as_str()),
        "room claim differs from the one returned: {token}"
    );
    assert!(valid_room(&claims.room), "accepted room {:?}", claims.room);
    assert!(
        (1..=MAX_JTI_LEN).contains(&claims.jti.len()),
        "accepted a jti of {} bytes",
        claims.jti.len()
    );
    let now = now_secs();
    let late = now + LEEWAY_SECS + CLOCK_SLACK_SECS;
    assert!(
        claims.exp + LEEWAY_SECS + CLOCK_SLACK_SECS >= now,
        "accepted an expired token (exp {}, now {now}): {token}",
        claims.exp
    );
    assert!(
        claims.exp <= late + MAX_TTL_SECS,
        "accepted a lifetime beyond the maximum (exp {}, now {now}): {token}",
        claims.exp
    );
    for (name, t) in [("nbf", claims.nbf), ("iat", claims.iat)] {
        assert!(
            t.is_none_or(|t| t <= late),
            "accepted {name} {t:?} in the future (now {now}): {token}"
        );
    }
}
