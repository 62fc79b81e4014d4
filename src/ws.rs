//! The client side of RFC 6455 framing: turns the bytes a client sent into
//! whole messages (unmasked, reassembled, UTF-8 checked), and refuses
//! anything the RFC forbids with the close code it calls for.
//!
//! Sessions own their connection (see `docs/architecture.md`), so this is
//! the only WebSocket parser on the path. It is incremental: an idle
//! connection holds no buffer at all, and bytes of an incomplete frame are
//! kept only until the rest arrives. Limits are enforced from the frame
//! header, before any payload is buffered.

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;

/// One complete message or control frame from the client.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Message {
    Text(ByteString),
    Binary(Bytes),
    Ping(Bytes),
    Pong,
    /// The close code the client sent, if any.
    Close(Option<u16>),
}

/// Why the connection must be failed, with the close code RFC 6455 names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum WsError {
    /// 1002: a frame the RFC forbids (reserved bits or opcodes, unmasked,
    /// bad fragmentation, oversized or fragmented control frames).
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    /// 1009: a frame or message larger than the limit.
    #[error("message too large")]
    TooLarge,
    /// 1007: text (or a close reason) that is not UTF-8.
    #[error("invalid UTF-8")]
    InvalidUtf8,
}

/// A fragmented message being reassembled.
struct Fragments {
    text: bool,
    data: BytesMut,
}

/// Per-connection decoder state: empty (and allocation-free) between
/// messages.
pub(crate) struct Decoder {
    /// Largest message, fragmented or not.
    max_message: usize,
    fragments: Option<Fragments>,
}

/// The parsed header of one frame.
struct Header {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    header_len: usize,
    payload_len: usize,
}

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

impl Decoder {
    pub(crate) fn new(max_message: usize) -> Self {
        Decoder {
            max_message,
            fragments: None,
        }
    }

    /// Parses the frame at the start of `buf`. Returns how many bytes it
    /// took and the message it completed (a non-final fragment completes
    /// none), or `Ok(None)` when `buf` does not hold the whole frame yet.
    pub(crate) fn decode(
        &mut self,
        buf: &[u8],
    ) -> Result<Option<(usize, Option<Message>)>, WsError> {
        let Some(h) = self.header(buf)? else {
            return Ok(None);
        };
        let total = h.header_len + h.payload_len;
        if buf.len() < total {
            return Ok(None);
        }
        let payload = &buf[h.header_len..total];
        let msg = match h.opcode {
            OP_TEXT | OP_BINARY if h.fin => {
                Some(finish(h.opcode == OP_TEXT, unmask(payload, h.mask))?)
            }
            OP_TEXT | OP_BINARY => {
                let mut data = BytesMut::with_capacity(payload.len());
                unmask_into(&mut data, payload, h.mask);
                self.fragments = Some(Fragments {
                    text: h.opcode == OP_TEXT,
                    data,
                });
                None
            }
            OP_CONTINUATION => {
                // `header` has checked that a message is open.
                let Some(f) = self.fragments.as_mut() else {
                    return Err(WsError::Protocol("continuation without a message"));
                };
                unmask_into(&mut f.data, payload, h.mask);
                if h.fin {
                    let f = self.fragments.take().expect("checked above");
                    Some(finish(f.text, f.data)?)
                } else {
                    None
                }
            }
            OP_PING => Some(Message::Ping(unmask(payload, h.mask).freeze())),
            OP_PONG => Some(Message::Pong),
            _ => Some(close_payload(&unmask(payload, h.mask))?),
        };
        Ok(Some((total, msg)))
    }

    /// Checks a frame header as soon as it is complete, so that a bad or
    /// oversized frame is refused before its payload is waited for.
    fn header(&self, buf: &[u8]) -> Result<Option<Header>, WsError> {
        if buf.len() < 2 {
            return Ok(None);
        }
        let (b0, b1) = (buf[0], buf[1]);
        let fin = b0 & 0x80 != 0;
        if b0 & 0x70 != 0 {
            return Err(WsError::Protocol("reserved bits set with no extension"));
        }
        let opcode = b0 & 0x0F;
        let control = opcode & 0x08 != 0;
        match opcode {
            OP_TEXT | OP_BINARY if self.fragments.is_some() => {
                return Err(WsError::Protocol("new message inside a fragmented one"))
            }
            OP_CONTINUATION if self.fragments.is_none() => {
                return Err(WsError::Protocol("continuation without a message"))
            }
            OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG => {}
            _ => return Err(WsError::Protocol("reserved opcode")),
        }
        if b1 & 0x80 == 0 {
            return Err(WsError::Protocol("unmasked client frame"));
        }
        let len7 = (b1 & 0x7F) as usize;
        if control && (!fin || len7 > 125) {
            return Err(WsError::Protocol("fragmented or oversized control frame"));
        }
        let (len, at) = match len7 {
            126 => {
                if buf.len() < 4 {
                    return Ok(None);
                }
                (u16::from_be_bytes([buf[2], buf[3]]) as u64, 4)
            }
            127 => {
                if buf.len() < 10 {
                    return Ok(None);
                }
                let len = u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes"));
                if len >> 63 != 0 {
                    return Err(WsError::Protocol("payload length with the high bit set"));
                }
                (len, 10)
            }
            n => (n as u64, 2),
        };
        let already = self.fragments.as_ref().map_or(0, |f| f.data.len() as u64);
        if !control && already.saturating_add(len) > self.max_message as u64 {
            return Err(WsError::TooLarge);
        }
        if buf.len() < at + 4 {
            return Ok(None);
        }
        let mask = buf[at..at + 4].try_into().expect("4 bytes");
        Ok(Some(Header {
            fin,
            opcode,
            mask,
            header_len: at + 4,
            // At most `max_message` (or 125): fits.
            payload_len: len as usize,
        }))
    }
}

fn finish(text: bool, data: BytesMut) -> Result<Message, WsError> {
    let data = data.freeze();
    if text {
        ByteString::try_from(data)
            .map(Message::Text)
            .map_err(|_| WsError::InvalidUtf8)
    } else {
        Ok(Message::Binary(data))
    }
}

fn close_payload(p: &[u8]) -> Result<Message, WsError> {
    match p.len() {
        0 => Ok(Message::Close(None)),
        1 => Err(WsError::Protocol("close payload of one byte")),
        _ => {
            std::str::from_utf8(&p[2..]).map_err(|_| WsError::InvalidUtf8)?;
            Ok(Message::Close(Some(u16::from_be_bytes([p[0], p[1]]))))
        }
    }
}

fn unmask(payload: &[u8], mask: [u8; 4]) -> BytesMut {
    let mut out = BytesMut::with_capacity(payload.len());
    unmask_into(&mut out, payload, mask);
    out
}

/// Appends `payload` XOR `mask` to `out`, four bytes at a time.
fn unmask_into(out: &mut BytesMut, payload: &[u8], mask: [u8; 4]) {
    let start = out.len();
    out.extend_from_slice(payload);
    let key = u32::from_ne_bytes(mask);
    let mut chunks = out[start..].chunks_exact_mut(4);
    for c in &mut chunks {
        let v = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]) ^ key;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// A client frame: masked, with the given first byte.
    fn frame(b0: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![b0];
        match payload.len() {
            n if n < 126 => v.push(0x80 | n as u8),
            n if n < 65536 => {
                v.push(0x80 | 126);
                v.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                v.push(0x80 | 127);
                v.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        v.extend_from_slice(&MASK);
        v.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
        v
    }

    fn decode_all(d: &mut Decoder, mut buf: &[u8]) -> Result<Vec<Message>, WsError> {
        let mut out = Vec::new();
        while let Some((used, msg)) = d.decode(buf)? {
            out.extend(msg);
            buf = &buf[used..];
        }
        Ok(out)
    }

    #[test]
    fn a_masked_text_frame_is_unmasked_and_checked() {
        let mut d = Decoder::new(1024);
        let msgs = decode_all(&mut d, &frame(0x81, "héllo, wörld".as_bytes())).unwrap();
        assert_eq!(msgs, vec![Message::Text("héllo, wörld".into())]);
    }

    #[test]
    fn a_frame_split_anywhere_waits_for_the_rest() {
        let f = frame(0x81, &[b'x'; 300]);
        for cut in 0..f.len() {
            let mut d = Decoder::new(1024);
            assert_eq!(
                d.decode(&f[..cut]).unwrap().map(|(n, _)| n),
                None,
                "cut at {cut}"
            );
        }
        let mut d = Decoder::new(1024);
        assert_eq!(d.decode(&f).unwrap().unwrap().0, f.len());
    }

    #[test]
    fn fragments_are_reassembled_around_control_frames() {
        let mut d = Decoder::new(1024);
        let mut bytes = frame(0x01, "hé".as_bytes());
        bytes.extend(frame(0x89, b"p"));
        bytes.extend(frame(0x00, b"l"));
        bytes.extend(frame(0x80, b"lo"));
        let msgs = decode_all(&mut d, &bytes).unwrap();
        assert_eq!(
            msgs,
            vec![
                Message::Ping(Bytes::from_static(b"p")),
                Message::Text("héllo".into())
            ]
        );
    }

    #[test]
    fn text_split_inside_a_character_is_valid_once_whole() {
        let s = "é".as_bytes();
        let mut bytes = frame(0x01, &s[..1]);
        bytes.extend(frame(0x80, &s[1..]));
        assert_eq!(
            decode_all(&mut Decoder::new(64), &bytes).unwrap(),
            vec![Message::Text("é".into())]
        );
    }

    #[test]
    fn invalid_utf8_is_1007() {
        let mut d = Decoder::new(64);
        assert_eq!(
            decode_all(&mut d, &frame(0x81, &[0xff, 0xfe])),
            Err(WsError::InvalidUtf8)
        );
        let mut close = 1000u16.to_be_bytes().to_vec();
        close.push(0xff);
        assert_eq!(
            decode_all(&mut Decoder::new(64), &frame(0x88, &close)),
            Err(WsError::InvalidUtf8)
        );
    }

    #[test]
    fn rfc_violations_are_protocol_errors() {
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("rsv1", frame(0xC1, b"x")),
            ("rsv2", frame(0xA1, b"x")),
            ("rsv3", frame(0x91, b"x")),
            ("reserved opcode", frame(0x83, b"x")),
            ("reserved control opcode", frame(0x8B, b"")),
            ("stray continuation", frame(0x80, b"x")),
            ("fragmented ping", frame(0x09, b"x")),
            ("long ping", frame(0x89, &[0; 126])),
            ("close of one byte", frame(0x88, &[3])),
            ("unmasked", vec![0x81, 0x01, b'x']),
        ];
        for (what, bytes) in cases {
            let got = decode_all(&mut Decoder::new(1024), &bytes);
            assert!(matches!(got, Err(WsError::Protocol(_))), "{what}: {got:?}");
        }
        let mut nested = frame(0x01, b"a");
        nested.extend(frame(0x81, b"b"));
        assert!(matches!(
            decode_all(&mut Decoder::new(64), &nested),
            Err(WsError::Protocol(_))
        ));
    }

    #[test]
    fn an_oversized_frame_is_refused_from_its_header_alone() {
        // A header announcing 2^63 - 1 bytes, and nothing after it.
        let mut h = vec![0x81, 0x80 | 127];
        h.extend_from_slice(&(u64::MAX >> 1).to_be_bytes());
        assert_eq!(Decoder::new(1024).decode(&h).err(), Some(WsError::TooLarge));
        let mut top_bit = vec![0x81, 0x80 | 127];
        top_bit.extend_from_slice(&u64::MAX.to_be_bytes());
        assert!(matches!(
            Decoder::new(1024).decode(&top_bit),
            Err(WsError::Protocol(_))
        ));
    }

    #[test]
    fn the_limit_counts_the_whole_fragmented_message() {
        let mut d = Decoder::new(10);
        let mut bytes = frame(0x01, &[b'a'; 6]);
        bytes.extend(frame(0x80, &[b'b'; 6]));
        assert_eq!(decode_all(&mut d, &bytes), Err(WsError::TooLarge));
    }

    #[test]
    fn close_frames_carry_their_code() {
        let mut d = Decoder::new(64);
        assert_eq!(
            decode_all(&mut d, &frame(0x88, b"")).unwrap(),
            vec![Message::Close(None)]
        );
        let mut p = 4000u16.to_be_bytes().to_vec();
        p.extend_from_slice(b"bye");
        assert_eq!(
            decode_all(&mut d, &frame(0x88, &p)).unwrap(),
            vec![Message::Close(Some(4000))]
        );
    }

    #[test]
    fn a_large_frame_uses_the_long_length_forms() {
        let data = vec![b'z'; 70_000];
        let msgs = decode_all(&mut Decoder::new(100_000), &frame(0x82, &data)).unwrap();
        assert_eq!(msgs, vec![Message::Binary(Bytes::from(data))]);
    }
}
