//! The hostile-client catalogue: frames, handshakes, tokens and
//! connection patterns a client may send on purpose to hurt the relay or
//! the other members. Each case checks the answer (a close code or an HTTP
//! status) and that the well-behaved members of the same room are
//! undisturbed. Frames a WebSocket library refuses to write go out through
//! a raw socket.

use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::helpers::*;

/// A client that writes whatever bytes it is told to.
struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// What a raw connection ended with.
#[derive(Debug, PartialEq)]
enum Ending {
    Close(u16),
    /// The connection ended with no close frame.
    Eof,
}

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A client frame: first byte as given (FIN, RSV, opcode), masked unless
/// told otherwise, with the shortest length form.
fn frame(b0: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut f = vec![b0];
    let m = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => f.push(m | n as u8),
        n if n <= 0xFFFF => {
            f.push(m | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(m | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        f.extend_from_slice(&MASK);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    } else {
        f.extend_from_slice(payload);
    }
    f
}

fn text(payload: &str) -> Vec<u8> {
    frame(0x81, payload.as_bytes(), true)
}

fn close_frame(payload: &[u8]) -> Vec<u8> {
    frame(0x88, payload, true)
}

impl Raw {
    /// Opens a connection and sends `request` as is.
    async fn send_request(port: u16, request: &str) -> Raw {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        // The server may refuse before the request is whole.
        let _ = stream.write_all(request.as_bytes()).await;
        Raw {
            stream,
            buf: Vec::new(),
        }
    }

    /// Reads an HTTP response head; returns its status and head text.
    async fn response_head(&mut self) -> (u16, String) {
        let end = tokio::time::timeout(WAIT, async {
            loop {
                if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    return i + 4;
                }
                let mut chunk = [0u8; 4096];
                let n = self.stream.read(&mut chunk).await.unwrap();
                assert!(n > 0, "the connection ended before a response");
                self.buf.extend_from_slice(&chunk[..n]);
            }
        })
        .await
        .expect("a response in time");
        let head = String::from_utf8_lossy(&self.buf[..end]).to_string();
        self.buf.drain(..end);
        let status = head[9..12].parse().unwrap();
        (status, head)
    }

    /// A completed WebSocket handshake on `/v1/ws` with `extra` headers.
    async fn upgrade_with(app: &TestApp, extra: &str) -> Raw {
        let mut raw = Raw::send_request(app.port, &upgrade_request("13", extra)).await;
        let (status, head) = raw.response_head().await;
        assert_eq!(status, 101, "{head}");
        raw
    }

    /// Upgraded and joined to `room`.
    async fn join(app: &TestApp, room: &str) -> Raw {
        let mut raw = Raw::upgrade_with(app, "").await;
        raw.send(&text(
            &json!({"type": "join", "token": token(room)}).to_string(),
        ))
        .await;
        let welcome = raw.next_text().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        raw
    }

    async fn send(&mut self, bytes: &[u8]) {
        // The server may already have closed: what it answered is what
        // the test reads next.
        let _ = self.stream.write_all(bytes).await;
    }

    /// Reads one whole server frame: (opcode, payload); `None` at EOF.
    async fn next_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.buf.len() >= 2 {
                let len7 = (self.buf[1] & 0x7F) as usize;
                let (len, at) = match len7 {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => (
                        u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize,
                        10,
                    ),
                    126 | 127 => (usize::MAX, 0),
                    n => (n, 2),
                };
                if len != usize::MAX && self.buf.len() >= at + len {
                    let op = self.buf[0] & 0x0F;
                    let payload = self.buf[at..at + len].to_vec();
                    self.buf.drain(..at + len);
                    return Some((op, payload));
                }
            }
            let mut chunk = [0u8; 16384];
            match self.stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    async fn next_text(&mut self) -> Value {
        let (op, payload) = tokio::time::timeout(WAIT, self.next_frame())
            .await
            .expect("a frame in time")
            .expect("a frame before the end");
        assert_eq!(op, 1, "a text frame");
        serde_json::from_slice(&payload).unwrap()
    }

    /// Reads until the close frame (skipping anything else) and returns its
    /// code, then checks the server ends the connection.
    async fn ending(&mut self) -> Ending {
        tokio::time::timeout(WAIT, async {
            loop {
                match self.next_frame().await {
                    Some((8, p)) => {
                        let code = match p.len() {
                            0 => 1005,
                            _ => u16::from_be_bytes([p[0], p[1]]),
                        };
                        // The server finishes the connection after its close.
                        while self.next_frame().await.is_some() {}
                        return Ending::Close(code);
                    }
                    Some(_) => continue,
                    None => return Ending::Eof,
                }
            }
        })
        .await
        .expect("the server ends the connection in time")
    }
}

fn upgrade_request(version: &str, extra: &str) -> String {
    format!(
        "GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: {version}\r\n{extra}\r\n"
    )
}

/// Two well-behaved members of one room.
struct Bystanders {
    room: String,
    a: Client,
    b: Client,
}

impl Bystanders {
    async fn new(app: &TestApp) -> Bystanders {
        let room = unique("r");
        let (mut a, _) = app.join(&room).await;
        let (b, _) = app.join(&room).await;
        assert_eq!(a.recv_json().await["type"], "member_joined");
        Bystanders { room, a, b }
    }

    /// The hostile member joined: both saw it.
    async fn saw_join(&mut self) {
        assert_eq!(self.a.recv_json().await["type"], "member_joined");
        assert_eq!(self.b.recv_json().await["type"], "member_joined");
    }

    /// Both saw the hostile member leave, and still talk to each other.
    async fn undisturbed(&mut self) {
        assert_eq!(self.a.recv_json().await["type"], "member_left");
        assert_eq!(self.b.recv_json().await["type"], "member_left");
        self.a
            .send_json(json!({"type": "send", "data": "still here"}))
            .await;
        let got = self.b.recv_json().await;
        assert_eq!(
            (got["type"].as_str(), got["data"].as_str()),
            (Some("message"), Some("still here"))
        );
    }
}

/// Joins a hostile member to a room of two bystanders, has it send
/// `bytes`, and checks the ending and the bystanders.
async fn hostile_member_ends(app: &TestApp, bytes: &[u8], expected: Ending, what: &str) {
    let mut room = Bystanders::new(app).await;
    let mut h = Raw::join(app, &room.room).await;
    room.saw_join().await;
    h.send(bytes).await;
    assert_eq!(h.ending().await, expected, "{what}");
    room.undisturbed().await;
}

#[actix_web::test]
async fn frames_the_rfc_forbids_close_with_1002_and_the_room_goes_on() {
    let app = spawn_app(&[]).await;
    let mut big_ping = vec![0u8; 126];
    big_ping[0] = b'p';
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("RSV1 set", frame(0xC1, b"{}", true)),
        ("RSV2 set", frame(0xA1, b"{}", true)),
        ("RSV3 set", frame(0x91, b"{}", true)),
        (
            "an unmasked frame",
            frame(0x81, br#"{"type":"leave"}"#, false),
        ),
        ("reserved data opcode 0x3", frame(0x83, b"", true)),
        ("reserved data opcode 0x7", frame(0x87, b"", true)),
        ("reserved control opcode 0xB", frame(0x8B, b"", true)),
        ("reserved control opcode 0xF", frame(0x8F, b"", true)),
        ("a ping over 125 bytes", frame(0x89, &big_ping, true)),
        ("a fragmented ping", frame(0x09, b"p", true)),
        ("a stray continuation", frame(0x80, b"x", true)),
        (
            "a new message inside a fragmented one",
            [frame(0x01, b"{", true), text("{}")].concat(),
        ),
        ("a payload length with the high bit set", {
            let mut f = vec![0x81, 0xFF];
            f.extend_from_slice(&(1u64 << 63).to_be_bytes());
            f.extend_from_slice(&MASK);
            f
        }),
        (
            "close code 1005 on the wire",
            close_frame(&1005u16.to_be_bytes()),
        ),
        (
            "close code 1006 on the wire",
            close_frame(&1006u16.to_be_bytes()),
        ),
        ("close code 999", close_frame(&999u16.to_be_bytes())),
        ("close code 1016", close_frame(&1016u16.to_be_bytes())),
        ("close code 5000", close_frame(&5000u16.to_be_bytes())),
        ("a one-byte close payload", close_frame(&[3])),
    ];
    for (what, bytes) in cases {
        hostile_member_ends(&app, &bytes, Ending::Close(1002), what).await;
    }
}

#[actix_web::test]
async fn a_compressed_frame_after_offering_permessage_deflate_closes_with_1002() {
    let app = spawn_app(&[]).await;
    let mut room = Bystanders::new(&app).await;
    let mut raw = Raw::send_request(
        app.port,
        &upgrade_request("13", "Sec-WebSocket-Extensions: permessage-deflate\r\n"),
    )
    .await;
    let (status, head) = raw.response_head().await;
    assert_eq!(status, 101);
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("sec-websocket-extensions"),
        "{head}"
    );
    raw.send(&text(
        &json!({"type": "join", "token": token(&room.room)}).to_string(),
    ))
    .await;
    assert_eq!(raw.next_text().await["type"], "welcome");
    room.saw_join().await;
    raw.send(&frame(
        0xC1,
        &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00],
        true,
    ))
    .await;
    assert_eq!(raw.ending().await, Ending::Close(1002));
    room.undisturbed().await;
}

#[actix_web::test]
async fn text_that_is_not_utf8_closes_with_1007_also_across_fragments_and_in_close_reasons() {
    let app = spawn_app(&[]).await;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("one frame", frame(0x81, &[b'"', 0xff, b'"'], true)),
        (
            // "é" is C3 A9; the first fragment ends inside it, the second
            // does not finish it.
            "split across fragments",
            [
                frame(0x01, &[b'"', 0xC3], true),
                frame(0x80, &[0x28, b'"'], true),
            ]
            .concat(),
        ),
        ("a close reason", close_frame(&[0x03, 0xE8, 0xff, 0xfe])),
    ];
    for (what, bytes) in cases {
        hostile_member_ends(&app, &bytes, Ending::Close(1007), what).await;
    }
}

#[actix_web::test]
async fn a_character_split_across_fragments_is_accepted() {
    let app = spawn_app(&[]).await;
    let mut room = Bystanders::new(&app).await;
    let mut h = Raw::join(&app, &room.room).await;
    room.saw_join().await;
    let whole = r#"{"type":"send","data":"café"}"#.as_bytes();
    let cut = whole.iter().position(|&b| b == 0xC3).unwrap() + 1;
    h.send(
        &[
            frame(0x01, &whole[..cut], true),
            frame(0x80, &whole[cut..], true),
        ]
        .concat(),
    )
    .await;
    let got = room.a.recv_json().await;
    assert_eq!(got["data"], "café");
}

#[actix_web::test]
async fn a_header_declaring_an_endless_payload_closes_with_1009_at_once() {
    let app = spawn_app(&[]).await;
    let mut header = vec![0x81, 0xFF];
    header.extend_from_slice(&(u64::MAX >> 1).to_be_bytes());
    header.extend_from_slice(&MASK);
    let started = Instant::now();
    // Only the header: the answer cannot wait for the payload.
    hostile_member_ends(&app, &header, Ending::Close(1009), "2^63-1 bytes").await;
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[actix_web::test]
async fn floods_of_frames_that_are_not_messages_end_in_4429() {
    let app = spawn_app(&[("MAX_MSGS_PER_10S", "50")]).await;
    let pings: Vec<u8> = (0..200).flat_map(|_| frame(0x89, b"hi", true)).collect();
    let pongs: Vec<u8> = (0..200).flat_map(|_| frame(0x8A, b"", true)).collect();
    let empty_fragments: Vec<u8> = std::iter::once(frame(0x01, b"", true))
        .chain((0..200).map(|_| frame(0x00, b"", true)))
        .flatten()
        .collect();
    for (what, bytes) in [
        ("a burst of pings", pings),
        ("a burst of pongs", pongs),
        ("empty continuation frames that never end", empty_fragments),
    ] {
        hostile_member_ends(&app, &bytes, Ending::Close(4429), what).await;
    }
}

#[actix_web::test]
async fn a_paced_ping_flood_ends_in_4429_and_its_pongs_stop() {
    let app = spawn_app(&[("MAX_MSGS_PER_10S", "20")]).await;
    let mut room = Bystanders::new(&app).await;
    let mut h = Raw::join(&app, &room.room).await;
    room.saw_join().await;
    let mut pongs = 0;
    let ending = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            h.send(&frame(0x89, b"hi", true)).await;
            tokio::time::sleep(Duration::from_millis(10)).await;
            // Whatever has arrived: pongs, or the close.
            while let Ok(Some((op, p))) =
                tokio::time::timeout(Duration::from_millis(1), h.next_frame()).await
            {
                match op {
                    0xA => pongs += 1,
                    8 => return u16::from_be_bytes([p[0], p[1]]),
                    _ => {}
                }
            }
        }
    })
    .await
    .expect("the flood is ended");
    assert_eq!(ending, 4429);
    assert!(pongs <= 20, "{pongs} pongs");
    room.undisturbed().await;
}

#[actix_web::test]
async fn json_nested_ten_thousand_deep_is_refused_or_skipped_without_harm() {
    let app = spawn_app(&[]).await;
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    // Where a string is expected: an invalid frame.
    let as_data = format!(r#"{{"type":"send","data":{deep}}}"#);
    hostile_member_ends(&app, &text(&as_data), Ending::Close(4400), "nested data").await;
    // In a field the protocol does not know: skipped (without recursion),
    // and the send is relayed.
    let mut room = Bystanders::new(&app).await;
    let mut h = Raw::join(&app, &room.room).await;
    room.saw_join().await;
    h.send(&text(&format!(
        r#"{{"type":"send","data":"x","extra":{deep}}}"#
    )))
    .await;
    assert_eq!(room.a.recv_json().await["data"], "x");
    assert_eq!(room.b.recv_json().await["data"], "x");
}

/// A join with `token` from a raw connection ends with `code`, and the
/// room's members are undisturbed (they never saw it join).
async fn a_join_with(app: &TestApp, token: &str, code: u16, what: &str) {
    let mut room = Bystanders::new(app).await;
    let mut raw = Raw::upgrade_with(app, "").await;
    raw.send(&text(&json!({"type": "join", "token": token}).to_string()))
        .await;
    assert_eq!(raw.ending().await, Ending::Close(code), "{what}");
    room.a
        .send_json(json!({"type": "send", "data": "ok"}))
        .await;
    let got = room.b.recv_json().await;
    assert_eq!(got["data"], "ok", "{what}: the room goes on");
}

fn with_header(header: Header, claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &header,
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

#[actix_web::test]
async fn malformed_and_forged_tokens_close_with_4401() {
    let app = spawn_app(&[]).await;
    let room = unique("r");
    let claims = json!({"room": room, "exp": now() + 300, "jti": unique("jti")});
    let good = token(&room);
    let parts: Vec<&str> = good.split('.').collect();
    let b64 = |s: &str| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    };
    let none = format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(&claims.to_string())
    );
    let rs256 = format!(
        "{}.{}.{}",
        b64(r#"{"alg":"RS256","typ":"JWT"}"#),
        parts[1],
        parts[2]
    );
    let cases: Vec<(&str, String)> = vec![
        ("two segments", format!("{}.{}", parts[0], parts[1])),
        ("four segments", format!("{good}.{}", parts[2])),
        (
            "bad base64",
            format!("{}.{}!!.{}", parts[0], parts[1], parts[2]),
        ),
        ("alg none", none),
        ("RS256 header", rs256),
        ("HS384", sign(&claims, SECRET, Algorithm::HS384)),
        (
            "another secret",
            sign(
                &claims,
                "another-secret-0123456789abcdef012345",
                Algorithm::HS256,
            ),
        ),
    ];
    for (what, token) in cases {
        a_join_with(&app, &token, 4401, what).await;
    }
}

#[actix_web::test]
async fn key_location_headers_in_a_token_are_never_fetched() {
    let app = spawn_app(&[]).await;
    let trap = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = format!(
        "http://127.0.0.1:{}/keys",
        trap.local_addr().unwrap().port()
    );
    let room = unique("r");
    let claims = json!({"room": room, "exp": now() + 300, "jti": unique("jti")});
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(at.clone());
    header.jku = Some(at.clone());
    header.x5u = Some(at.clone());
    // Signed with a key the server does not have: a server that fetched
    // keys from the token's own headers would be tempted to.
    let forged = with_header(
        header.clone(),
        &claims,
        "attacker-secret-0123456789abcdef0123",
    );
    a_join_with(&app, &forged, 4401, "forged, with key locations").await;
    // Signed with the right key: the headers are ignored, not followed.
    let honest = with_header(header, &claims, SECRET);
    let mut raw = Raw::upgrade_with(&app, "").await;
    raw.send(&text(&json!({"type": "join", "token": honest}).to_string()))
        .await;
    assert_eq!(raw.next_text().await["type"], "welcome");
    let fetched = tokio::time::timeout(Duration::from_millis(300), trap.accept()).await;
    assert!(
        fetched.is_err(),
        "the server connected to a URL from a token"
    );
}

#[actix_web::test]
async fn a_hundred_kilobyte_token_is_refused_without_harm() {
    let app = spawn_app(&[]).await;
    let huge = "a".repeat(100 * 1024);
    let mut room = Bystanders::new(&app).await;
    let mut raw = Raw::upgrade_with(&app, "").await;
    raw.send(&text(&json!({"type": "join", "token": huge}).to_string()))
        .await;
    // Larger than a message may be (1009), or a token that cannot be one (4401).
    let ending = raw.ending().await;
    assert!(
        matches!(ending, Ending::Close(1009) | Ending::Close(4401)),
        "{ending:?}"
    );
    room.a
        .send_json(json!({"type": "send", "data": "ok"}))
        .await;
    assert_eq!(room.b.recv_json().await["data"], "ok");
}

#[actix_web::test]
async fn an_upgrade_with_another_websocket_version_is_told_version_13() {
    let app = spawn_app(&[]).await;
    for version in ["8", "12", "14", "banana"] {
        let mut raw = Raw::send_request(app.port, &upgrade_request(version, "")).await;
        let (status, head) = raw.response_head().await;
        assert_eq!(status, 400, "{version}: {head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("sec-websocket-version: 13\r\n"),
            "{version}: {head}"
        );
    }
}

#[actix_web::test]
async fn a_flood_of_request_headers_is_refused_and_the_server_serves_on() {
    let app = spawn_app(&[]).await;
    let many: String = (0..500).map(|i| format!("X-Flood-{i}: {i}\r\n")).collect();
    // actix-http's fixed limit on a request head is 128 KiB.
    let huge = format!("X-Huge: {}\r\n", "a".repeat(200 * 1024));
    for (what, extra) in [("500 headers", many), ("a 200 KiB header", huge)] {
        let mut raw = Raw::send_request(app.port, &upgrade_request("13", &extra)).await;
        let status = tokio::time::timeout(WAIT, async {
            let mut chunk = vec![0u8; 4096];
            let mut got = Vec::new();
            loop {
                match raw.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&chunk[..n]),
                }
            }
            String::from_utf8_lossy(&got).to_string()
        })
        .await
        .expect("the server answers or closes in time");
        assert!(
            status.is_empty() || status.starts_with("HTTP/1.1 4"),
            "{what}: {status}"
        );
    }
    let (code, _, _) = app.get("/live").await;
    assert_eq!(code, 200);
}

#[actix_web::test]
async fn a_slowloris_upgrade_is_cut_off_by_the_request_timeout() {
    let app = spawn_app(&[]).await;
    let mut raw = Raw::send_request(app.port, "GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1\r\n").await;
    let started = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(15), async {
        let mut chunk = [0u8; 1024];
        loop {
            // One more header line now and then, never the end of the head.
            let _ = raw.stream.write_all(b"X-Slow: 1\r\n").await;
            match tokio::time::timeout(Duration::from_millis(500), raw.stream.read(&mut chunk))
                .await
            {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(_)) => {} // a 408, then the end
                Err(_) => {}
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the slow request still holds its connection after 15 s"
    );
    assert!(started.elapsed() < Duration::from_secs(12));
}

#[actix_web::test]
async fn a_slow_request_body_does_not_hold_its_connection() {
    let app = spawn_app(&[]).await;
    let mut raw = Raw::send_request(
        app.port,
        "POST /v1/rooms HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{",
    )
    .await;
    let ended = tokio::time::timeout(Duration::from_secs(15), async {
        let mut chunk = [0u8; 1024];
        loop {
            let _ = raw.stream.write_all(b" ").await;
            match tokio::time::timeout(Duration::from_millis(500), raw.stream.read(&mut chunk))
                .await
            {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                _ => {}
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "a body trickled one byte at a time holds its connection"
    );
}

#[actix_web::test]
async fn a_connection_storm_from_one_address_hits_its_limit_and_others_still_connect() {
    let app = spawn_app(&[("MAX_CONNS_PER_IP", "5"), ("TRUST_PROXY", "true")]).await;
    let mut room = Bystanders::new(&app).await;
    let from = |ip: &str| format!("X-Forwarded-For: {ip}\r\n");
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..20 {
        let mut raw =
            Raw::send_request(app.port, &upgrade_request("13", &from("203.0.113.9"))).await;
        match raw.response_head().await {
            (101, _) => held.push(raw),
            (429, head) => {
                assert!(head.to_ascii_lowercase().contains("retry-after"), "{head}");
                refused += 1;
            }
            (s, head) => panic!("unexpected {s}: {head}"),
        }
    }
    assert_eq!((held.len(), refused), (5, 15));
    // Another address is not affected.
    let _other = Raw::upgrade_with(&app, &from("198.51.100.7")).await;
    room.a
        .send_json(json!({"type": "send", "data": "ok"}))
        .await;
    assert_eq!(room.b.recv_json().await["data"], "ok");
}

#[actix_web::test]
async fn a_connection_storm_from_many_addresses_hits_the_global_limit_and_members_stay() {
    let app = spawn_app(&[("MAX_TOTAL_CONNECTIONS", "12"), ("TRUST_PROXY", "true")]).await;
    let mut room = Bystanders::new(&app).await;
    let mut held = Vec::new();
    let mut refused = 0;
    for i in 0..40 {
        let ip = format!("X-Forwarded-For: 192.0.2.{i}\r\n");
        let mut raw = Raw::send_request(app.port, &upgrade_request("13", &ip)).await;
        match raw.response_head().await {
            (101, _) => held.push(raw),
            (503, _) => refused += 1,
            (s, head) => panic!("unexpected {s}: {head}"),
        }
    }
    assert_eq!((held.len(), refused), (10, 30));
    room.a
        .send_json(json!({"type": "send", "data": "ok"}))
        .await;
    assert_eq!(room.b.recv_json().await["data"], "ok");
    // Slots come back when the storm goes.
    drop(held);
    wait_until("slots are released", WAIT, async || {
        app.metric("blindrelay_connections_active").await == 2.0
    })
    .await;
}

/// The JSON body after a response head.
async fn body_after_head(raw: &mut Raw, head: &str) -> Value {
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(|v| v.trim().parse().unwrap())
        })
        .expect("a content length");
    while raw.buf.len() < len {
        let mut chunk = [0u8; 4096];
        let n = raw.stream.read(&mut chunk).await.unwrap();
        assert!(n > 0);
        raw.buf.extend_from_slice(&chunk[..n]);
    }
    serde_json::from_slice(&raw.buf[..len]).unwrap()
}

#[actix_web::test]
async fn detailed_errors_say_which_check_failed_only_when_switched_on() {
    for (detailed, expected) in [("true", true), ("false", false)] {
        let app = spawn_app(&[("FEATURE_DETAILED_ERRORS", detailed)]).await;
        let mut raw = Raw::send_request(app.port, &upgrade_request("12", "")).await;
        let (status, head) = raw.response_head().await;
        assert_eq!(status, 400);
        let body = body_after_head(&mut raw, &head).await;
        assert_eq!(body["error"]["code"], "bad_upgrade");
        let detail = &body["error"]["detail"];
        assert_eq!(detail.is_string(), expected, "{body}");
        if expected {
            assert!(
                detail
                    .as_str()
                    .unwrap()
                    .contains("Sec-WebSocket-Version must be 13"),
                "{body}"
            );
        }
        let (status, _, body) = app.get("/v1/nowhere").await;
        assert_eq!(status, 404);
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["error"]["detail"].is_string(), expected, "{body}");
        let long = "r".repeat(65);
        let (status, _, body) = app.post(&format!("/v1/rooms/{long}/tokens")).await;
        assert_eq!(status, 400);
        assert_eq!(body["error"]["detail"].is_string(), expected, "{body}");
        if expected {
            // Which rule, never the id itself.
            assert!(!body.to_string().contains(&long));
        }
    }
}

#[actix_web::test]
async fn detailed_errors_in_production_are_warned_about_at_start() {
    let app = spawn_app(&[
        ("APP_ENV", "production"),
        ("FEATURE_DETAILED_ERRORS", "true"),
    ])
    .await;
    assert!(app
        .logs
        .text()
        .contains("FEATURE_DETAILED_ERRORS is on in production"));
    let quiet = spawn_app(&[("APP_ENV", "production")]).await;
    assert!(!quiet.logs.text().contains("FEATURE_DETAILED_ERRORS"));
    let mut raw = Raw::send_request(quiet.port, &upgrade_request("12", "")).await;
    let (status, head) = raw.response_head().await;
    assert_eq!(status, 400);
    let body = body_after_head(&mut raw, &head).await;
    assert!(body["error"].get("detail").is_none(), "{body}");
}

#[actix_web::test]
async fn connections_that_never_finish_a_request_cannot_exceed_the_pending_limit() {
    let app = spawn_app(&[("WORKERS", "1"), ("MAX_PENDING_CONNECTIONS", "3")]).await;
    // Upgraded connections leave the count: more of them than the limit.
    let room = unique("r");
    let mut members = Vec::new();
    for _ in 0..5 {
        members.push(app.join(&room).await.0);
    }
    // Three connections that send half a request and wait.
    let mut stalled = Vec::new();
    for _ in 0..3 {
        stalled.push(Raw::send_request(app.port, "GET /live HTTP/1.1\r\n").await);
    }
    let mut fourth = Raw::send_request(app.port, "GET /live HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let early = tokio::time::timeout(Duration::from_millis(500), fourth.response_head()).await;
    assert!(
        early.is_err(),
        "a fourth connection was served past the limit"
    );
    drop(stalled.pop());
    let (status, _) = fourth.response_head().await;
    assert_eq!(status, 200);
    // The members were not affected.
    members[0]
        .send_json(json!({"type": "send", "data": "ok"}))
        .await;
    assert_eq!(members[4].recv_json().await["data"], "ok");
}

/// Joins `room` from a raw connection whose receive buffer is small, as a
/// client that stops reading looks to the server.
async fn join_with_small_receive_buffer(app: &TestApp, room: &str) -> Raw {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket
        .connect(([127, 0, 0, 1], app.port).into())
        .await
        .unwrap();
    stream
        .write_all(upgrade_request("13", "").as_bytes())
        .await
        .unwrap();
    let mut raw = Raw {
        stream,
        buf: Vec::new(),
    };
    assert_eq!(raw.response_head().await.0, 101);
    raw.send(&text(
        &json!({"type": "join", "token": token(room)}).to_string(),
    ))
    .await;
    assert_eq!(raw.next_text().await["type"], "welcome");
    raw
}

/// Sends 10 kB messages from `sender` until the room says the slow member
/// left; returns the bytes sent by then.
async fn bytes_until_the_slow_member_is_dropped(sender: &mut Client) -> usize {
    let data = "z".repeat(10_000);
    let mut sent = 0;
    for i in 0..2000 {
        sender
            .send_json(json!({"type": "send", "data": data, "id": i.to_string()}))
            .await;
        sent += data.len();
        let f = sender.recv_json().await;
        if f["type"] == "member_left" {
            return sent;
        }
        assert_eq!(f["type"], "ack");
    }
    panic!("the slow member was never dropped");
}

#[actix_web::test]
async fn a_client_that_stops_reading_is_dropped_before_the_kernel_holds_megabytes_for_it() {
    let app = spawn_app(&[
        ("SLOW_CONSUMER_BUFFER_THRESHOLD", "70000"),
        ("TCP_NOTSENT_LOWAT_BYTES", "16384"),
        ("MAX_MSGS_PER_10S", "100000"),
        ("MAX_BYTES_PER_10S", "1000000000"),
    ])
    .await;
    let room = unique("r");
    let (mut sender, _) = app.join(&room).await;
    let _slow = join_with_small_receive_buffer(&app, &room).await;
    assert_eq!(sender.recv_json().await["type"], "member_joined");
    let sent = bytes_until_the_slow_member_is_dropped(&mut sender).await;
    // The threshold, the bounded kernel queue and the client's small
    // window: a few hundred kB at most. Unbounded, the kernel alone
    // would have taken megabytes before the relay saw a backlog.
    assert!(
        sent < 1_000_000,
        "{sent} bytes went to a client that reads nothing"
    );
    assert_eq!(
        app.metric(r#"blindrelay_disconnects_total{reason="slow_consumer"}"#)
            .await,
        1.0
    );
}
