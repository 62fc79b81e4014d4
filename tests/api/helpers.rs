//! Test support: a real relay instance on a free port, a real WebSocket
//! client (tungstenite, not ours), an HTTP client, and token minting.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use blindrelay::{logging, AppHandle, Application, Settings};
use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const SECRET: &str = "test-secret-0123456789abcdef0123456789abcdef";
pub const PREVIOUS_SECRET: &str = "previous-secret-0123456789abcdef0123456789";

/// How long a test waits for something that should happen promptly.
pub const WAIT: Duration = Duration::from_secs(5);

/// Everything the instance logged, as written (JSON lines).
#[derive(Clone, Default)]
pub struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogBuffer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

pub struct TestApp {
    pub port: u16,
    pub handle: AppHandle,
    pub logs: LogBuffer,
    pub http: awc::Client,
}

/// Starts an instance with test defaults, overridden by `overrides`.
pub async fn spawn_app(overrides: &[(&str, &str)]) -> TestApp {
    let mut pairs: Vec<(&str, &str)> = vec![
        ("APP_ENV", "test"),
        ("HOST", "127.0.0.1"),
        ("PORT", "0"),
        ("WORKERS", "2"),
        ("JOIN_TOKEN_SECRET", SECRET),
        ("LOG_LEVEL", "debug"),
        ("FEATURE_IP_TRACKING", "false"),
    ];
    pairs.extend_from_slice(overrides);
    let settings = Settings::from_pairs(pairs).expect("test settings are valid");
    let logs = LogBuffer::default();
    let log = logging::json_logger(logs.clone(), &settings);
    let app = Application::build_with_logger(settings, log)
        .await
        .expect("the app builds");
    let port = app.port();
    let handle = app.handle();
    actix_rt::spawn(app.run_until_stopped());
    TestApp {
        port,
        handle,
        logs,
        http: awc::Client::builder().timeout(WAIT).finish(),
    }
}

static JTI: AtomicU64 = AtomicU64::new(0);

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}x{}",
        std::process::id(),
        JTI.fetch_add(1, Ordering::Relaxed)
    )
}

/// Signs arbitrary claims.
pub fn sign(claims: &Value, secret: &str, alg: Algorithm) -> String {
    jsonwebtoken::encode(
        &Header::new(alg),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// A good single-use token for `room`.
pub fn token(room: &str) -> String {
    sign(
        &json!({"room": room, "exp": now() + 300, "jti": unique("jti")}),
        SECRET,
        Algorithm::HS256,
    )
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A WebSocket client speaking the relay protocol.
pub struct Client {
    pub ws: Ws,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub async fn connect(&self) -> Client {
        self.connect_path("/v1/ws").await
    }

    pub async fn connect_path(&self, path: &str) -> Client {
        let (ws, _) =
            tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}{path}", self.port))
                .await
                .expect("upgrade succeeds");
        Client { ws }
    }

    /// Connects and joins `room`; returns the client and its welcome.
    pub async fn join(&self, room: &str) -> (Client, Value) {
        let mut c = self.connect().await;
        c.send_json(json!({"type": "join", "token": token(room)}))
            .await;
        let welcome = c.recv_json().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        (c, welcome)
    }

    /// Joins `n` members to a fresh room, each having seen the joins after
    /// it, so that the room is quiet when this returns.
    pub async fn room_of(&self, n: usize) -> (String, Vec<(Client, String)>) {
        let room = unique("room");
        let mut members: Vec<(Client, String)> = Vec::new();
        for _ in 0..n {
            let (c, w) = self.join(&room).await;
            let id = w["member"].as_str().unwrap().to_owned();
            for (other, _) in members.iter_mut() {
                let j = other.recv_json().await;
                assert_eq!(j, json!({"type": "member_joined", "member": id}));
            }
            members.push((c, id));
        }
        (room, members)
    }

    pub async fn get(&self, path: &str) -> (u16, awc::http::header::HeaderMap, String) {
        let mut res = self
            .http
            .get(self.url(path))
            .send()
            .await
            .expect("request succeeds");
        let body = res.body().await.expect("body");
        (
            res.status().as_u16(),
            res.headers().clone(),
            String::from_utf8_lossy(&body).into_owned(),
        )
    }

    pub async fn post(&self, path: &str) -> (u16, awc::http::header::HeaderMap, Value) {
        let mut res = self
            .http
            .post(self.url(path))
            .send()
            .await
            .expect("request succeeds");
        let body = res.body().await.expect("body");
        let v = serde_json::from_slice(&body).unwrap_or(Value::Null);
        (res.status().as_u16(), res.headers().clone(), v)
    }

    /// `/metrics` in its JSON form, as text.
    pub async fn metrics_json(&self) -> String {
        let mut res = self
            .http
            .get(self.url("/metrics"))
            .insert_header(("Accept", "application/json"))
            .send()
            .await
            .expect("request succeeds");
        String::from_utf8(res.body().await.expect("body").to_vec()).expect("UTF-8")
    }

    /// Tries a WebSocket upgrade that must be refused; returns the HTTP
    /// status and headers of the refusal.
    pub async fn refused_upgrade(&self) -> (u16, tokio_tungstenite::tungstenite::http::HeaderMap) {
        match tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/v1/ws", self.port)).await
        {
            Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
                (res.status().as_u16(), res.headers().clone())
            }
            Err(e) => panic!("expected an HTTP refusal, got {e}"),
            Ok(_) => panic!("expected an HTTP refusal, the upgrade succeeded"),
        }
    }

    /// Reads one metric's value from the Prometheus text output.
    pub async fn metric(&self, series: &str) -> f64 {
        let (_, _, text) = self.get("/metrics").await;
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("no series {series}"))
            .trim()
            .parse()
            .unwrap()
    }
}

/// What the server did to end a session.
#[derive(Debug, PartialEq)]
pub enum End {
    Closed(u16, String),
    /// The connection ended without a close frame.
    Dropped,
}

impl Client {
    pub async fn send_json(&mut self, v: Value) {
        self.ws
            .send(Message::text(v.to_string()))
            .await
            .expect("send");
    }

    pub async fn send_text(&mut self, s: &str) {
        self.ws
            .send(Message::text(s.to_owned()))
            .await
            .expect("send");
    }

    /// Next JSON frame; pings are answered by tungstenite and skipped.
    pub async fn recv_json(&mut self) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .expect("a frame arrives in time")
                .expect("the connection is open")
                .expect("a valid frame");
            match msg {
                Message::Text(t) => return serde_json::from_str(&t).expect("JSON frame"),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// Asserts nothing but pings arrives within `d`.
    pub async fn expect_silence(&mut self, d: Duration) {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return,
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                Ok(other) => panic!("expected silence, got {other:?}"),
            }
        }
    }

    /// Reads until the session ends; frames before the end are skipped.
    pub async fn end(&mut self) -> End {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .expect("the session ends in time");
            match next {
                Some(Ok(Message::Close(Some(f)))) => {
                    return End::Closed(u16::from(f.code), f.reason.to_string())
                }
                Some(Ok(Message::Close(None))) => return End::Closed(1005, String::new()),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return End::Dropped,
            }
        }
    }

    /// Expects a close with `code` (and, unless empty, `reason`).
    pub async fn expect_close(&mut self, code: u16, reason: &str) {
        match self.end().await {
            End::Closed(c, r) => {
                assert_eq!(c, code, "close code (reason {r:?})");
                if !reason.is_empty() {
                    assert_eq!(r, reason);
                }
            }
            End::Dropped => panic!("expected close {code}, connection dropped"),
        }
    }

    pub async fn close(mut self) {
        let _ = self
            .ws
            .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            }))
            .await;
    }
}

/// A loopback port that nothing listened on a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `cond` until it holds; fails the test, naming `what`, if it does
/// not within `within`.
pub async fn wait_until(what: &str, within: Duration, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if cond().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {within:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Opens a WebSocket session with the relay listening on `port`.
pub async fn connect_to(port: u16) -> Client {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/v1/ws"))
        .await
        .expect("upgrade succeeds");
    Client { ws }
}

impl Client {
    /// The next JSON frame, or how the session ended if it ends first.
    pub async fn frame_or_end(&mut self) -> Result<Value, End> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .expect("a frame or the end arrives in time");
            match next {
                Some(Ok(Message::Text(t))) => {
                    return Ok(serde_json::from_str(&t).expect("JSON frame"))
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(Message::Close(Some(f)))) => {
                    return Err(End::Closed(u16::from(f.code), f.reason.to_string()))
                }
                Some(Ok(Message::Close(None))) => return Err(End::Closed(1005, String::new())),
                Some(Ok(other)) => panic!("expected a text frame, got {other:?}"),
                Some(Err(_)) | None => return Err(End::Dropped),
            }
        }
    }
}
