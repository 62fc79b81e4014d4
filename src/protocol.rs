//! The typed wire protocol (PROTOCOL.md sections 4 and 5): client frames are
//! parsed once where they arrive, server frames are built once and shared,
//! and every close code lives in one table.
//!
//! `data` is never decoded: it is kept as the raw JSON string token it came
//! in as, and written out byte for byte inside the `message` frame, so the
//! relay neither parses nor transforms what it carries.
//!
//! Server frames are built as complete WebSocket frames (header included):
//! frames from a server are not masked, so the same bytes can go to every
//! recipient, and a fan-out costs one reference count per recipient.

use std::borrow::Cow;
use std::fmt::Write as _;

use actix_http::ws::{OpCode, Parser};
use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;

/// Longest `id` a client may attach to a `send`.
pub const MAX_SEND_ID_CHARS: usize = 64;

/// A parsed client frame: one variant per command.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientFrame<'a> {
    /// `{"type":"join","token":...}`
    Join { token: Cow<'a, str> },
    /// `{"type":"send","data":...}`, optionally with `to` and `id`.
    Send(SendFrame<'a>),
    /// `{"type":"leave"}`
    Leave,
}

/// A `send` command; `data` is the raw JSON string literal, quotes included.
#[derive(Debug, PartialEq, Eq)]
pub struct SendFrame<'a> {
    pub data: &'a str,
    /// Length of `data` once decoded, in UTF-8 bytes (what the limits count).
    pub data_len: usize,
    pub to: Option<Cow<'a, str>>,
    pub id: Option<Cow<'a, str>>,
}

/// Why a text frame is not a valid client frame (always closes with 4400).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame is not a JSON object with a known type")]
    Malformed,
    #[error("unknown frame type")]
    UnknownType,
    #[error("required field missing or of the wrong type")]
    BadField,
    #[error("send id longer than 64 characters")]
    IdTooLong,
}

/// Every field any frame may carry; unknown fields are ignored. A flat
/// struct rather than an internally tagged enum because serde cannot borrow a
/// `RawValue` through a tagged enum.
#[derive(Deserialize)]
struct RawFrame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    token: Option<&'a RawValue>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
    #[serde(default, borrow)]
    to: Option<&'a RawValue>,
    #[serde(default, borrow)]
    id: Option<&'a RawValue>,
}

/// A JSON string value, decoded (borrowed when it has no escapes).
fn json_string(raw: Option<&RawValue>) -> Result<Option<Cow<'_, str>>, FrameError> {
    match raw {
        None => Ok(None),
        Some(raw) if raw.get() == "null" => Ok(None),
        Some(raw) => {
            let s = raw.get();
            if !s.starts_with('"') {
                return Err(FrameError::BadField);
            }
            if s.contains('\\') {
                serde_json::from_str::<String>(s)
                    .map(|v| Some(Cow::Owned(v)))
                    .map_err(|_| FrameError::BadField)
            } else {
                Ok(Some(Cow::Borrowed(&s[1..s.len() - 1])))
            }
        }
    }
}

/// Decoded length of a raw JSON string literal; only strings with escapes
/// pay for a decode.
fn decoded_len(raw: &str) -> Result<usize, FrameError> {
    if raw.contains('\\') {
        serde_json::from_str::<Cow<'_, str>>(raw)
            .map(|s| s.len())
            .map_err(|_| FrameError::BadField)
    } else {
        Ok(raw.len() - 2)
    }
}

impl<'a> ClientFrame<'a> {
    /// Parses one text frame.
    pub fn parse(text: &'a str) -> Result<Self, FrameError> {
        // serde would also fill the struct from a JSON array, by position.
        if !text.trim_start().starts_with('{') {
            return Err(FrameError::Malformed);
        }
        let raw: RawFrame<'a> = serde_json::from_str(text).map_err(|_| FrameError::Malformed)?;
        match raw.kind.as_ref() {
            "join" => {
                let token = json_string(raw.token)?.ok_or(FrameError::BadField)?;
                Ok(ClientFrame::Join { token })
            }
            "send" => {
                let data = raw.data.ok_or(FrameError::BadField)?.get();
                if !data.starts_with('"') {
                    return Err(FrameError::BadField);
                }
                let data_len = decoded_len(data)?;
                let to = json_string(raw.to)?;
                let id = json_string(raw.id)?;
                if id
                    .as_deref()
                    .is_some_and(|id| id.chars().count() > MAX_SEND_ID_CHARS)
                {
                    return Err(FrameError::IdTooLong);
                }
                Ok(ClientFrame::Send(SendFrame {
                    data,
                    data_len,
                    to,
                    id,
                }))
            }
            "leave" => Ok(ClientFrame::Leave),
            _ => Err(FrameError::UnknownType),
        }
    }
}

/// Non-fatal error codes carried in `{"type":"error"}` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    UnknownMember,
    MessageTooLarge,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::UnknownMember => "unknown_member",
            ErrorCode::MessageTooLarge => "message_too_large",
        }
    }
    fn message(self) -> &'static str {
        match self {
            ErrorCode::UnknownMember => "no such member in this room",
            ErrorCode::MessageTooLarge => "data exceeds MAX_MESSAGE_BYTES; not relayed",
        }
    }
}

/// Writes `s` as a JSON string literal.
fn push_json_str(out: &mut String, s: &str) {
    // serde_json's escaping cannot fail for a &str.
    out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned()));
}

/// Encodes one unmasked, final WebSocket frame.
pub fn ws_frame(op: OpCode, payload: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(payload.len() + 10);
    Parser::write_message(&mut buf, payload, op, true, false);
    buf.freeze()
}

/// A close frame with `code` and `reason` (at most 123 bytes are sent).
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    ws_frame(OpCode::Close, &payload)
}

/// Server-to-client frames, each built once into shareable bytes.
pub mod server {
    use super::*;

    fn text(json: String) -> Bytes {
        ws_frame(OpCode::Text, json.as_bytes())
    }

    /// `{"type":"message","from":..,"data":..}` with `data` copied verbatim.
    /// The hot path: written straight behind its WebSocket header, so the
    /// payload is copied once.
    pub fn message(from: &str, raw_data: &str, direct: bool) -> Bytes {
        let mut buf = BytesMut::new();
        write_message(&mut buf, from, raw_data, direct);
        buf.freeze()
    }

    /// Appends the `message` frame to `buf` (in cluster mode, behind the
    /// header of the payload for the other instances, so that one buffer
    /// serves both).
    pub fn write_message(buf: &mut BytesMut, from: &str, raw_data: &str, direct: bool) {
        const HEAD: &str = r#"{"type":"message","from":""#;
        const DATA: &str = r#"","data":"#;
        const DIRECT: &str = r#","direct":true"#;
        let len = HEAD.len()
            + from.len()
            + DATA.len()
            + raw_data.len()
            + if direct { DIRECT.len() } else { 0 }
            + 1;
        buf.reserve(len + 10);
        buf.put_u8(0x81); // FIN + text
        if len < 126 {
            buf.put_u8(len as u8);
        } else if len <= u16::MAX as usize {
            buf.put_u8(126);
            buf.put_u16(len as u16);
        } else {
            buf.put_u8(127);
            buf.put_u64(len as u64);
        }
        for part in [HEAD, from, DATA, raw_data] {
            buf.put_slice(part.as_bytes());
        }
        if direct {
            buf.put_slice(DIRECT.as_bytes());
        }
        buf.put_u8(b'}');
    }

    pub fn welcome<'m>(room: &str, member: &str, others: impl Iterator<Item = &'m str>) -> Bytes {
        let mut s = String::with_capacity(96);
        s.push_str(r#"{"type":"welcome","room":""#);
        s.push_str(room);
        s.push_str(r#"","member":""#);
        s.push_str(member);
        s.push_str(r#"","members":["#);
        for (i, m) in others.enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push('"');
            s.push_str(m);
            s.push('"');
        }
        s.push_str("]}");
        text(s)
    }

    pub fn member_joined(member: &str) -> Bytes {
        text(format!(r#"{{"type":"member_joined","member":"{member}"}}"#))
    }

    pub fn member_left(member: &str) -> Bytes {
        text(format!(r#"{{"type":"member_left","member":"{member}"}}"#))
    }

    pub fn ack(id: &str) -> Bytes {
        let mut s = String::with_capacity(id.len() + 24);
        s.push_str(r#"{"type":"ack","id":"#);
        push_json_str(&mut s, id);
        s.push('}');
        text(s)
    }

    pub fn error(code: ErrorCode, id: Option<&str>) -> Bytes {
        let mut s = String::with_capacity(96);
        let _ = write!(
            s,
            r#"{{"type":"error","code":"{}","message":"{}""#,
            code.as_str(),
            code.message()
        );
        if let Some(id) = id {
            s.push_str(r#","id":"#);
            push_json_str(&mut s, id);
        }
        s.push('}');
        text(s)
    }

    pub fn notice(code: &str) -> Bytes {
        text(format!(r#"{{"type":"notice","code":"{code}"}}"#))
    }
}

/// Every close the server initiates (PROTOCOL.md section 5), with the reason
/// text sent to the client and the `reason` label of
/// `blindrelay_disconnects_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Close {
    Leave,
    Binary,
    /// A violation of RFC 6455 itself (bad opcode, unmasked frame, ...).
    Protocol,
    InvalidUtf8,
    TooLarge,
    Internal,
    Shutdown,
    TryAgainLater,
    InvalidFrame,
    InvalidToken,
    RoomFull,
    JoinTimeout,
    TokenReplayed,
    RateLimited,
    SlowConsumer,
}

impl Close {
    pub const ALL: [Close; 15] = [
        Close::Leave,
        Close::Binary,
        Close::Protocol,
        Close::InvalidUtf8,
        Close::TooLarge,
        Close::Internal,
        Close::Shutdown,
        Close::TryAgainLater,
        Close::InvalidFrame,
        Close::InvalidToken,
        Close::RoomFull,
        Close::JoinTimeout,
        Close::TokenReplayed,
        Close::RateLimited,
        Close::SlowConsumer,
    ];

    pub fn code(self) -> u16 {
        match self {
            Close::Leave => 1000,
            Close::Binary => 1003,
            Close::Protocol => 1002,
            Close::InvalidUtf8 => 1007,
            Close::TooLarge => 1009,
            Close::Internal => 1011,
            Close::Shutdown => 1012,
            Close::TryAgainLater => 1013,
            Close::InvalidFrame => 4400,
            Close::InvalidToken => 4401,
            Close::RoomFull => 4403,
            Close::JoinTimeout => 4408,
            Close::TokenReplayed => 4409,
            Close::RateLimited => 4429,
            Close::SlowConsumer => 4413,
        }
    }

    pub fn reason_text(self) -> &'static str {
        match self {
            Close::Leave => "leave",
            Close::Binary => "binary frames are not accepted",
            Close::Protocol => "protocol error",
            Close::InvalidUtf8 => "",
            Close::TooLarge => "message too large",
            Close::Internal => "internal error",
            Close::Shutdown => "service restart",
            Close::TryAgainLater => "try again later",
            Close::InvalidFrame => "invalid frame",
            Close::InvalidToken => "invalid token",
            Close::RoomFull => "room full",
            Close::JoinTimeout => "join timeout",
            Close::TokenReplayed => "token already used",
            Close::RateLimited => "rate limited",
            Close::SlowConsumer => "slow consumer",
        }
    }

    /// Label for `blindrelay_disconnects_total{reason}`.
    pub fn metric_reason(self) -> &'static str {
        match self {
            Close::Leave => "leave",
            Close::Binary => "binary_frame",
            Close::Protocol => "protocol_error",
            Close::InvalidUtf8 => "invalid_utf8",
            Close::TooLarge => "message_too_large",
            Close::Internal => "internal_error",
            Close::Shutdown => "shutdown",
            Close::TryAgainLater => "try_again_later",
            Close::InvalidFrame => "invalid_frame",
            Close::InvalidToken => "invalid_token",
            Close::RoomFull => "room_full",
            Close::JoinTimeout => "join_timeout",
            Close::TokenReplayed => "token_replayed",
            Close::RateLimited => "rate_limited",
            Close::SlowConsumer => "slow_consumer",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_send_keeps_data_verbatim_and_counts_decoded_bytes() {
        let f = ClientFrame::parse(r#"{"type":"send","data":"h\u00e9llo","x":1}"#).unwrap();
        match f {
            ClientFrame::Send(s) => {
                assert_eq!(s.data, r#""h\u00e9llo""#);
                assert_eq!(s.data_len, "héllo".len());
                assert!(s.to.is_none() && s.id.is_none());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_send_with_to_and_id_is_parsed() {
        let f = ClientFrame::parse(r#"{"type":"send","data":"x","to":"abc","id":"7"}"#).unwrap();
        assert_eq!(
            f,
            ClientFrame::Send(SendFrame {
                data: "\"x\"",
                data_len: 1,
                to: Some("abc".into()),
                id: Some("7".into())
            })
        );
    }

    #[test]
    fn frames_that_break_the_contract_are_refused() {
        for bad in [
            "not json",
            "[]",
            r#"["leave"]"#,
            r#"["send",null,"hi"]"#,
            r#"{"data":"x"}"#,
            r#"{"type":"sing"}"#,
            r#"{"type":"send"}"#,
            r#"{"type":"send","data":5}"#,
            r#"{"type":"send","data":"x","to":5}"#,
            r#"{"type":"join"}"#,
            r#"{"type":"join","token":1}"#,
        ] {
            assert!(ClientFrame::parse(bad).is_err(), "{bad}");
        }
        let long = format!(r#"{{"type":"send","data":"x","id":"{}"}}"#, "i".repeat(65));
        assert_eq!(ClientFrame::parse(&long), Err(FrameError::IdTooLong));
        let ok = format!(r#"{{"type":"send","data":"x","id":"{}"}}"#, "é".repeat(64));
        assert!(ClientFrame::parse(&ok).is_ok());
    }

    /// Decodes a server frame as a client would.
    fn decode(frame: &Bytes) -> (OpCode, Vec<u8>) {
        let mut buf = BytesMut::from(&frame[..]);
        let (fin, op, payload) = Parser::parse(&mut buf, false, usize::MAX).unwrap().unwrap();
        assert!(fin && buf.is_empty(), "one whole frame");
        (op, payload.map(|p| p.to_vec()).unwrap_or_default())
    }

    fn json(frame: &Bytes) -> String {
        let (op, payload) = decode(frame);
        assert_eq!(op, OpCode::Text);
        String::from_utf8(payload).unwrap()
    }

    #[test]
    fn frames_of_every_length_class_decode() {
        for len in [0, 1, 125, 126, 65_535, 65_536, 70_000] {
            let data = vec![b'a'; len];
            let (op, payload) = decode(&ws_frame(OpCode::Binary, &data));
            assert_eq!((op, payload.len()), (OpCode::Binary, len));
        }
        let (op, payload) = decode(&close_frame(4413, "slow consumer"));
        assert_eq!(op, OpCode::Close);
        assert_eq!(&payload[..2], &4413u16.to_be_bytes());
        assert_eq!(&payload[2..], b"slow consumer");
        for len in [10, 200, 70_000] {
            let raw = format!("\"{}\"", "d".repeat(len));
            let v: serde_json::Value =
                serde_json::from_str(&json(&server::message("m", &raw, len > 100))).unwrap();
            assert_eq!(v["data"].as_str().unwrap().len(), len);
        }
        let (_, long) = decode(&close_frame(1000, &"é".repeat(100)));
        assert!(long.len() <= 125, "control frames stay within 125 bytes");
    }

    #[test]
    fn server_frames_are_valid_json() {
        let frames = [
            server::message("m1", r#""a\"b""#, true),
            server::welcome("r", "m", ["a", "b"].into_iter()),
            server::member_joined("m"),
            server::member_left("m"),
            server::ack("q\"x"),
            server::error(ErrorCode::UnknownMember, Some("1")),
            server::notice("cluster_degraded"),
        ];
        for f in frames {
            let text = json(&f);
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert!(v["type"].is_string(), "{text}");
        }
        let m: serde_json::Value =
            serde_json::from_str(&json(&server::message("m1", r#""a\"b""#, true))).unwrap();
        assert_eq!(m["data"], "a\"b");
        assert_eq!(m["direct"], true);
    }

    #[test]
    fn close_codes_match_the_contract_table() {
        let codes: Vec<u16> = Close::ALL.iter().map(|c| c.code()).collect();
        assert_eq!(
            codes,
            [
                1000, 1003, 1002, 1007, 1009, 1011, 1012, 1013, 4400, 4401, 4403, 4408, 4409, 4429,
                4413
            ]
        );
    }
}
