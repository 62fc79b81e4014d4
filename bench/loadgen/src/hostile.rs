//! `hostile`: the server's memory under hostile connections.
//!
//! A relay that is reachable from the internet will be sent connections that cost it memory
//! without ever doing anything useful: requests whose headers never end, upgrades that never
//! join, frames that never complete, floods of pings, clients that stop reading. This scenario
//! opens N connections of one such kind at a time and measures what they cost the server and
//! whether the server gets rid of them:
//!
//! 1. read the server's RSS (sum of VmRSS over `--server-pid`);
//! 2. open N connections of the kind, spread over `--sources` loopback source addresses
//!    (127.0.0.2, 127.0.0.3, ...) so that a per-IP connection limit does not refuse them;
//! 3. hold them `--hold` seconds, sampling the RSS every 100 ms for the peak (the sampling runs
//!    from the first connection attempt until the last connection is closed);
//! 4. close them all (abruptly: the socket is dropped), wait `--settle` seconds, read the RSS.
//!
//! One JSON line per kind on stdout; `refused` counts connections the server would not take
//! (HTTP status at the upgrade, or how the setup failed), `closed_by_server` what the server did
//! to the opened ones before the loadgen closed them (close code, `http:<status>`, `eof`,
//! `reset`). Non-readers never read during the hold: their TCP state is taken at its end, and
//! then they read for a moment to find out how the server ended them.
//!
//! Bytes the server has written but the client has not read sit in kernel socket buffers, not in
//! the server's RSS; `tcp_mem_*_kib` (all TCP buffers of the machine, from /proc/net/sockstat)
//! shows that side.
//!
//! The connections are raw TCP streams with hand-written frames (a WebSocket library refuses to
//! write the malformed or unfinished frames this needs). Client frames are masked, as RFC 6455
//! requires, so that the server sees well-formed frames that merely never end.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_tungstenite::tungstenite::Message;

use super::{
    connect_join_timeout, parse_pids, procs_rss_kib, run_id, targets, ws_config, Common, Minter,
};

// ---------------------------------------------------------------- CLI

#[derive(Args, Clone)]
pub(crate) struct HostileArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Connections per kind.
    #[arg(long, short = 'n', default_value_t = 1000)]
    pub(crate) connections: usize,
    /// Loopback source addresses to spread the connections over (127.0.0.2, 127.0.0.3, ...):
    /// N / K per address must stay within the server's MAX_CONNS_PER_IP (default 50).
    #[arg(long, default_value_t = 40)]
    sources: usize,
    /// Seconds to hold the connections once all are open.
    #[arg(long, default_value_t = 5.0)]
    hold: f64,
    /// Seconds to wait after closing them before the last RSS reading.
    #[arg(long, default_value_t = 5.0)]
    settle: f64,
    /// Comma-separated kinds to run, in the order given, out of
    /// slowloris,handshake,partial-frame,fragments,ping-flood,non-reader.
    #[arg(
        long,
        default_value = "slowloris,handshake,partial-frame,fragments,ping-flood,non-reader"
    )]
    kinds: String,
    /// non-reader: the server's MAX_MSGS_PER_10S, which the room's sender stays within.
    #[arg(long, default_value_t = 100)]
    sender_msgs_per_10s: u64,
    /// non-reader: the server's MAX_BYTES_PER_10S, which the room's sender stays within.
    #[arg(long, default_value_t = 1_048_576)]
    sender_bytes_per_10s: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Slowloris,
    Handshake,
    PartialFrame,
    Fragments,
    PingFlood,
    NonReader,
}

impl Kind {
    const ALL: [Kind; 6] = [
        Kind::Slowloris,
        Kind::Handshake,
        Kind::PartialFrame,
        Kind::Fragments,
        Kind::PingFlood,
        Kind::NonReader,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::Slowloris => "slowloris",
            Kind::Handshake => "handshake",
            Kind::PartialFrame => "partial-frame",
            Kind::Fragments => "fragments",
            Kind::PingFlood => "ping-flood",
            Kind::NonReader => "non-reader",
        }
    }

    /// Members per room for the kinds that join (non-reader rooms also get one sender).
    fn room_size(self) -> usize {
        match self {
            Kind::NonReader => NON_READERS_PER_ROOM,
            _ => 25,
        }
    }
}

/// Non-readers per room: with the room's sender that makes 50, the server's default
/// MAX_ROOM_MEMBERS.
const NON_READERS_PER_ROOM: usize = 49;
/// Length of the `data` of the non-reader rooms' messages.
const SENDER_DATA_LEN: usize = 8000;
/// slowloris: total size of the header lines that are sent (the request never ends).
const SLOWLORIS_BYTES: usize = 100 * 1024;
/// partial-frame: payload length announced in the frame header, and the bytes actually sent.
const PARTIAL_DECLARED: usize = 65_000;
const PARTIAL_SENT: usize = 60_000;
/// fragments: size of the one non-final fragment.
const FRAGMENT_LEN: usize = 60_000;
/// non-reader: how long to read after the hold to see how the server ended the connection.
const NON_READER_DRAIN: Duration = Duration::from_millis(2500);

// ---------------------------------------------------------------- frames

const OP_TEXT: u8 = 0x1;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;

static MASK_SEED: AtomicU64 = AtomicU64::new(0x1234_5678_9abc_def0);

/// A fresh masking key (splitmix64 of a counter: unpredictable enough for a test client).
fn mask_key() -> [u8; 4] {
    let mut z = MASK_SEED.fetch_add(0x9E37_79B9_7F4A_7C15, Relaxed);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) as u32).to_be_bytes()
}

/// One masked client frame. `declared` is the payload length written into the header; it may be
/// larger than `payload` to announce bytes that never follow.
fn client_frame(fin: bool, opcode: u8, payload: &[u8], declared: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 14);
    f.push(if fin { 0x80 } else { 0 } | opcode);
    if declared < 126 {
        f.push(0x80 | declared as u8);
    } else if declared <= 0xffff {
        f.push(0x80 | 126);
        f.extend_from_slice(&(declared as u16).to_be_bytes());
    } else {
        f.push(0x80 | 127);
        f.extend_from_slice(&(declared as u64).to_be_bytes());
    }
    let key = mask_key();
    f.extend_from_slice(&key);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    f
}

/// Reads the server's frames from a byte stream (server frames are not masked; a mask is undone
/// anyway). Keeps unparsed bytes between calls, so `next` can be cancelled and called again.
struct FrameReader {
    buf: Vec<u8>,
}

impl FrameReader {
    /// Takes one complete frame (opcode, payload) off the buffer, if there is one.
    fn take(&mut self) -> Option<(u8, Vec<u8>)> {
        let b = &self.buf;
        if b.len() < 2 {
            return None;
        }
        let opcode = b[0] & 0x0f;
        let masked = b[1] & 0x80 != 0;
        let (mut pos, len) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (4, u16::from_be_bytes([b[2], b[3]]) as usize),
            127 if b.len() >= 10 => (
                10,
                u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize,
            ),
            126 | 127 => return None,
            n => (2, n as usize),
        };
        let mut key = [0u8; 4];
        if masked {
            if b.len() < pos + 4 {
                return None;
            }
            key.copy_from_slice(&b[pos..pos + 4]);
            pos += 4;
        }
        if b.len() < pos.saturating_add(len) {
            return None;
        }
        let mut payload = b[pos..pos + len].to_vec();
        if masked {
            payload
                .iter_mut()
                .enumerate()
                .for_each(|(i, x)| *x ^= key[i % 4]);
        }
        self.buf.drain(..pos + len);
        Some((opcode, payload))
    }

    /// The next frame; `None` at end of stream.
    async fn next<R: AsyncRead + Unpin>(
        &mut self,
        rd: &mut R,
    ) -> std::io::Result<Option<(u8, Vec<u8>)>> {
        loop {
            if let Some(f) = self.take() {
                return Ok(Some(f));
            }
            self.buf.reserve(16 * 1024);
            if rd.read_buf(&mut self.buf).await? == 0 {
                return Ok(None);
            }
        }
    }
}

/// The status code of a close frame's payload (1005: none given).
fn close_code(payload: &[u8]) -> u16 {
    if payload.len() >= 2 {
        u16::from_be_bytes([payload[0], payload[1]])
    } else {
        1005
    }
}

fn io_key(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionReset => "reset".into(),
        k => format!("io:{k:?}"),
    }
}

/// Reads (and discards) until the server ends the connection; returns how it did: its close
/// code, `eof` (FIN without a close frame) or the read error (`reset`, ...).
async fn until_end<R: AsyncRead + Unpin>(r: &mut FrameReader, rd: &mut R) -> String {
    loop {
        match r.next(rd).await {
            Ok(Some((OP_CLOSE, p))) => return close_code(&p).to_string(),
            Ok(Some(_)) => {}
            Ok(None) => return "eof".into(),
            Err(e) => return io_key(&e),
        }
    }
}

/// `http:<status>` from the start of an HTTP response, if it is one.
fn http_status(head: &[u8]) -> Option<String> {
    let line = head.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/") {
        return None;
    }
    let status: u16 = parts.next()?.parse().ok()?;
    Some(format!("http:{status}"))
}

// ---------------------------------------------------------------- connections

/// What every connection task needs.
struct Ctx {
    /// Resolved targets; connection i goes to `targets[i % len]`.
    targets: Vec<SocketAddr>,
    /// The same, as given (for the Host header and the tungstenite senders).
    target_names: Vec<String>,
    path: String,
    /// Bind client sockets to 127.0.0.2.. (only for IPv4 loopback targets).
    bind_sources: bool,
    sources: usize,
    minter: Minter,
    run_id: String,
    open_timeout: Duration,
}

/// Source address of connection i: 127.0.0.2, 127.0.0.3, ..., round-robin over `sources`.
fn source_addr(i: usize, sources: usize) -> SocketAddr {
    let base = u32::from(Ipv4Addr::new(127, 0, 0, 2));
    SocketAddr::new(Ipv4Addr::from(base + (i % sources) as u32).into(), 0)
}

/// An opened connection: the socket and the bytes already read from it.
struct Conn {
    s: TcpStream,
    r: FrameReader,
}

async fn connect(ctx: &Ctx, i: usize, rcvbuf: Option<u32>) -> Result<TcpStream, String> {
    let target = ctx.targets[i % ctx.targets.len()];
    let sock = if target.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    };
    let sock = sock.map_err(|e| format!("socket:{}", io_key(&e)))?;
    if let Some(size) = rcvbuf {
        // before connect(), so that the window offered in the handshake is already small
        sock.set_recv_buffer_size(size)
            .map_err(|e| format!("rcvbuf:{}", io_key(&e)))?;
    }
    if ctx.bind_sources {
        sock.bind(source_addr(i, ctx.sources))
            .map_err(|e| format!("bind:{}", io_key(&e)))?;
    }
    let s = sock
        .connect(target)
        .await
        .map_err(|e| format!("connect:{:?}", e.kind()))?;
    let _ = s.set_nodelay(true);
    Ok(s)
}

/// A complete WebSocket upgrade; anything but 101 is returned as `http:<status>`.
async fn upgrade(s: &mut TcpStream, host: &str, path: &str) -> Result<FrameReader, String> {
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("write:{}", io_key(&e)))?;
    let mut buf = Vec::with_capacity(1024);
    loop {
        if let Some(end) = memchr::memmem::find(&buf, b"\r\n\r\n") {
            return match http_status(&buf[..end]) {
                Some(st) if st == "http:101" => Ok(FrameReader {
                    buf: buf[end + 4..].to_vec(),
                }),
                Some(st) => Err(st),
                None => Err("bad_response".into()),
            };
        }
        if buf.len() > 64 * 1024 {
            return Err("bad_response".into());
        }
        buf.reserve(4096);
        match s.read_buf(&mut buf).await {
            Ok(0) => return Err(http_status(&buf).unwrap_or_else(|| "eof_before_101".into())),
            Ok(_) => {}
            Err(e) => return Err(io_key(&e)),
        }
    }
}

/// Sends `join` and waits for `welcome`.
async fn join(c: &mut Conn, token: &str) -> Result<(), String> {
    let msg = format!(r#"{{"type":"join","token":"{token}"}}"#);
    let frame = client_frame(true, OP_TEXT, msg.as_bytes(), msg.len());
    c.s.write_all(&frame)
        .await
        .map_err(|e| format!("write:{}", io_key(&e)))?;
    loop {
        match c.r.next(&mut c.s).await {
            Ok(Some((OP_TEXT, p))) => {
                let v: serde_json::Value = serde_json::from_slice(&p).unwrap_or_default();
                if v["type"] == "welcome" {
                    return Ok(());
                }
            }
            Ok(Some((OP_CLOSE, p))) => {
                return Err(format!("close_before_welcome:{}", close_code(&p)))
            }
            Ok(Some(_)) => {}
            Ok(None) => return Err("eof_before_welcome".into()),
            Err(e) => return Err(io_key(&e)),
        }
    }
}

/// Opens connection i of a kind, up to the point where it starts to misbehave.
async fn open(kind: Kind, ctx: &Ctx, i: usize) -> Result<Conn, String> {
    let host = &ctx.target_names[i % ctx.target_names.len()];
    let rcvbuf = if kind == Kind::NonReader {
        Some(4096)
    } else {
        None
    };
    let mut s = connect(ctx, i, rcvbuf).await?;

    if kind == Kind::Slowloris {
        // A request head that never ends: ~100 KiB of header lines, never the blank line.
        let mut req = format!("GET {} HTTP/1.1\r\nHost: x\r\n", ctx.path).into_bytes();
        let pad = "a".repeat(4000);
        let (mut i, mut n) = (0, 0);
        while n < SLOWLORIS_BYTES {
            let line = format!("X-Pad-{i}: {pad}\r\n");
            n += line.len();
            i += 1;
            req.extend_from_slice(line.as_bytes());
        }
        s.write_all(&req)
            .await
            .map_err(|e| format!("write:{}", io_key(&e)))?;
        return Ok(Conn {
            s,
            r: FrameReader { buf: Vec::new() },
        });
    }

    let r = upgrade(&mut s, host, &ctx.path).await?;
    let mut c = Conn { s, r };
    if kind == Kind::Handshake {
        return Ok(c);
    }

    let room = format!("lg{}-{}-{}", ctx.run_id, kind.name(), i / kind.room_size());
    join(&mut c, &ctx.minter.mint(&room)).await?;

    let write = |e: std::io::Error| format!("write:{}", io_key(&e));
    match kind {
        Kind::PartialFrame => {
            // A text frame announcing 65,000 bytes, of which only 60,000 follow.
            let mut body = br#"{"type":"send","data":""#.to_vec();
            body.resize(PARTIAL_SENT, b'a');
            let frame = client_frame(true, OP_TEXT, &body, PARTIAL_DECLARED);
            c.s.write_all(&frame).await.map_err(write)?;
        }
        Kind::Fragments => {
            // The first fragment of a text message (FIN=0) that is never continued.
            let mut body = br#"{"type":"send","data":""#.to_vec();
            body.resize(FRAGMENT_LEN, b'a');
            let frame = client_frame(false, OP_TEXT, &body, body.len());
            c.s.write_all(&frame).await.map_err(write)?;
        }
        // ping-flood starts flooding in the hold phase (right away); non-reader just stops reading
        _ => {}
    }
    Ok(c)
}

/// Pings (125-byte payloads) as fast as the socket takes them, reading and discarding whatever
/// the server sends, until the server ends the connection; returns how it did.
async fn ping_flood(c: &mut Conn, pings: &AtomicU64) -> String {
    const BATCH: u64 = 8;
    let batch: Vec<u8> = (0..BATCH)
        .flat_map(|_| client_frame(true, OP_PING, &[b'p'; 125], 125))
        .collect();
    let (mut rd, mut wr) = c.s.split();
    let writer = async {
        while wr.write_all(&batch).await.is_ok() {
            pings.fetch_add(BATCH, Relaxed);
        }
    };
    tokio::pin!(writer);
    tokio::select! {
        end = until_end(&mut c.r, &mut rd) => end,
        // writing failed: the server has closed; read what it said
        _ = &mut writer => until_end(&mut c.r, &mut rd).await,
    }
}

/// What the server does to an opened connection while it is held. Only returns if the server
/// ends the connection.
async fn watch_server(kind: Kind, c: &mut Conn, pings: &AtomicU64) -> String {
    match kind {
        Kind::Slowloris => {
            // an HTTP response (408, 431, ...) and then the end of the stream
            let mut head = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                match c.s.read(&mut chunk).await {
                    Ok(0) => return http_status(&head).unwrap_or_else(|| "eof".into()),
                    Ok(n) if head.len() < 1024 => head.extend_from_slice(&chunk[..n]),
                    Ok(_) => {}
                    Err(e) => return http_status(&head).unwrap_or_else(|| io_key(&e)),
                }
            }
        }
        Kind::PingFlood => ping_flood(c, pings).await,
        // never reads: what the server did is looked at after the hold
        Kind::NonReader => std::future::pending().await,
        _ => until_end(&mut c.r, &mut c.s).await,
    }
}

/// Resolves once the driver says the hold is over.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // (the guard returned by `wait_for` is not `Send`: drop it here)
    let _ = stop.wait_for(|s| *s).await;
}

/// TCP state of a socket (TCP_INFO), e.g. CLOSE_WAIT once the server has sent its FIN.
fn tcp_state(s: &TcpStream) -> String {
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            &mut info as *mut libc::tcp_info as *mut libc::c_void,
            &mut len,
        )
    };
    if rc != 0 {
        return "unknown".into();
    }
    let names = [
        "?",
        "ESTABLISHED",
        "SYN_SENT",
        "SYN_RECV",
        "FIN_WAIT1",
        "FIN_WAIT2",
        "TIME_WAIT",
        "CLOSE",
        "CLOSE_WAIT",
        "LAST_ACK",
        "LISTEN",
        "CLOSING",
    ];
    names
        .get(info.tcpi_state as usize)
        .unwrap_or(&"?")
        .to_string()
}

/// Memory of all TCP socket buffers of the machine, KiB (`mem` pages of /proc/net/sockstat):
/// data the server has written that the client has not read sits there, outside the server's
/// RSS. Both ends of every loopback connection count, so this includes the loadgen's side.
fn tcp_mem_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let line = s.lines().find(|l| l.starts_with("TCP:"))?;
    let mut it = line.split_whitespace();
    it.find(|&w| w == "mem")?;
    let pages: u64 = it.next()?.parse().ok()?;
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    Some(pages * page / 1024)
}

/// Counts by key, for the JSON maps.
#[derive(Default)]
struct Counts(Mutex<BTreeMap<String, u64>>);

impl Counts {
    fn add(&self, key: impl Into<String>) {
        *self.0.lock().unwrap().entry(key.into()).or_insert(0) += 1;
    }
    fn json(&self) -> serde_json::Value {
        json!(self.0.lock().unwrap().clone())
    }
}

/// Per-kind results shared by the connection tasks.
#[derive(Default)]
struct Outcomes {
    refused: Counts,
    closed_by_server: Counts,
    /// non-reader: TCP state of the client sockets at the end of the hold, before reading.
    tcp_state: Counts,
    pings: AtomicU64,
}

/// One hostile connection: open it, report, then watch what the server does until told to stop;
/// returning drops (closes) the socket.
async fn conn_task(
    kind: Kind,
    i: usize,
    ctx: Arc<Ctx>,
    sem: Arc<Semaphore>,
    out: Arc<Outcomes>,
    ready: mpsc::UnboundedSender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let permit = sem.acquire_owned().await.unwrap();
    let opened = tokio::time::timeout(ctx.open_timeout, open(kind, &ctx, i))
        .await
        .unwrap_or_else(|_| Err("timeout".into()));
    drop(permit);
    let mut c = match opened {
        Ok(c) => c,
        Err(reason) => {
            out.refused.add(reason);
            let _ = ready.send(false);
            return;
        }
    };
    let _ = ready.send(true);
    drop(ready);
    tokio::select! {
        end = watch_server(kind, &mut c, &out.pings) => out.closed_by_server.add(end),
        _ = stopped(&mut stop) => {
            if kind == Kind::NonReader {
                // Look without reading first, then read what is there to find a close frame
                // (the server may still be waiting, within its close deadline, to write it).
                out.tcp_state.add(tcp_state(&c.s));
                if let Ok(end) = tokio::time::timeout(NON_READER_DRAIN, until_end(&mut c.r, &mut c.s)).await {
                    out.closed_by_server.add(end);
                }
            }
        }
    }
}

// ---------------------------------------------------------------- non-reader senders

/// A token bucket mirroring the server's per-connection budget, so that the sender stays within
/// it. (The server charges when it reads a frame: if it falls behind and then reads a backlog at
/// once, a sender that kept to the rate on its side can still be closed with 4429.)
struct Bucket {
    tokens: f64,
    cap: f64,
    per_sec: f64,
    last: Instant,
}

impl Bucket {
    /// `per_10s` at 95 % (the server's clock and ours do not start at the same instant).
    fn new(per_10s: u64) -> Self {
        let cap = per_10s as f64 * 0.95;
        Bucket {
            tokens: cap,
            cap,
            per_sec: cap / 10.0,
            last: Instant::now(),
        }
    }
    fn refill(&mut self) {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.per_sec)
            .min(self.cap);
        self.last = now;
    }
    /// Time until `n` tokens are there.
    fn wait(&mut self, n: f64) -> Duration {
        self.refill();
        Duration::from_secs_f64(((n - self.tokens) / self.per_sec).max(0.0))
    }
    fn take(&mut self, n: f64) {
        self.refill();
        self.tokens -= n;
    }
}

#[derive(Default)]
struct SenderStats {
    joined: AtomicUsize,
    sent: AtomicU64,
    failed: Counts,
    /// how senders were closed during the hold (they should not be)
    closed: Counts,
}

/// The well-behaved member of a non-reader room: sends 8,000-character messages as fast as its
/// budget allows until the hold ends or the server closes it. Reads (acks) all the while.
async fn sender_task(
    ctx: Arc<Ctx>,
    room: String,
    target: String,
    a: HostileArgs,
    stats: Arc<SenderStats>,
    ready: mpsc::UnboundedSender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let token = ctx.minter.mint(&room);
    let res = connect_join_timeout(
        &target,
        &ctx.path,
        &token,
        ws_config(8192),
        ctx.open_timeout,
    )
    .await;
    let ws = match res {
        Ok((ws, _)) => ws,
        Err(f) => {
            stats.failed.add(f.key());
            let _ = ready.send(false);
            return;
        }
    };
    stats.joined.fetch_add(1, Relaxed);
    let _ = ready.send(true);
    drop(ready);
    let (mut tx, mut rx) = ws.split();
    let msg = Message::text(format!(
        r#"{{"type":"send","data":"{}"}}"#,
        "a".repeat(SENDER_DATA_LEN)
    ));
    let t0 = Instant::now();
    let mut sent = 0u64;
    let (mut msgs, mut bytes) = (
        Bucket::new(a.sender_msgs_per_10s),
        Bucket::new(a.sender_bytes_per_10s),
    );
    loop {
        let wait = msgs.wait(1.0).max(bytes.wait(SENDER_DATA_LEN as f64));
        tokio::select! {
            _ = stopped(&mut stop) => return,
            r = rx.next() => match r {
                Some(Ok(Message::Close(cf))) => {
                    let code = cf.map(|c| u16::from(c.code)).unwrap_or(1005);
                    eprintln!(
                        "hostile: sender of {room} closed with {code} after {sent} messages in {:.2}s",
                        t0.elapsed().as_secs_f64()
                    );
                    stats.closed.add(code.to_string());
                    return;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    stats.closed.add("eof");
                    return;
                }
            },
            _ = tokio::time::sleep(wait) => {
                msgs.take(1.0);
                bytes.take(SENDER_DATA_LEN as f64);
                if tx.send(msg.clone()).await.is_err() {
                    stats.closed.add("write_error");
                    return;
                }
                stats.sent.fetch_add(1, Relaxed);
                sent += 1;
            }
        }
    }
}

// ---------------------------------------------------------------- driver

pub(crate) async fn hostile(a: HostileArgs) {
    let c = &a.common;
    let mut kinds = Vec::new();
    for k in a.kinds.split(',').map(str::trim).filter(|k| !k.is_empty()) {
        match Kind::ALL.iter().find(|x| x.name() == k) {
            Some(&x) => kinds.push(x),
            None => {
                eprintln!("hostile: unknown kind {k:?}");
                std::process::exit(2);
            }
        }
    }
    if a.sources == 0 || a.sources > 250 {
        eprintln!("hostile: --sources must be 1..=250");
        std::process::exit(2);
    }
    let names = targets(c);
    let mut addrs = Vec::new();
    for t in &names {
        match tokio::net::lookup_host(t.as_str())
            .await
            .ok()
            .and_then(|mut it| it.next())
        {
            Some(x) => addrs.push(x),
            None => {
                eprintln!("hostile: cannot resolve {t}");
                std::process::exit(2);
            }
        }
    }
    // Source addresses in 127/8 only work towards IPv4 loopback.
    let bind_sources = addrs.iter().all(|x| x.is_ipv4() && x.ip().is_loopback());
    if !bind_sources {
        eprintln!("hostile: targets are not all IPv4 loopback: not binding source addresses");
    }
    let per_source = a.connections.div_ceil(a.sources);
    if bind_sources && per_source > 50 {
        eprintln!("hostile: warning: {per_source} connections per source address (server default MAX_CONNS_PER_IP is 50)");
    }
    let rid = run_id();
    let ctx = Arc::new(Ctx {
        targets: addrs,
        target_names: names,
        path: c.path.clone(),
        bind_sources,
        sources: a.sources,
        minter: Minter::new(&c.secret, c.token_ttl, &rid),
        run_id: rid,
        open_timeout: Duration::from_secs_f64(c.join_timeout),
    });
    for kind in kinds {
        run_kind(&a, &ctx, kind).await;
    }
}

async fn run_kind(a: &HostileArgs, ctx: &Arc<Ctx>, kind: Kind) {
    let c = &a.common;
    let n = a.connections;
    let pids = parse_pids(&c.server_pid);
    let out = Arc::new(Outcomes::default());
    let sem = Arc::new(Semaphore::new(c.connect_concurrency.max(1)));
    let (stop_tx, stop_rx) = watch::channel(false);

    // RSS (and TCP buffer memory): one reading before, then every 100 ms for the peak until all
    // are closed.
    let rss_before = procs_rss_kib(&pids);
    let peak = Arc::new(AtomicU64::new(rss_before.unwrap_or(0)));
    let tcp_before = tcp_mem_kib();
    let tcp_peak = Arc::new(AtomicU64::new(tcp_before.unwrap_or(0)));
    let sampler = {
        let (peak, tcp_peak, pids, mut stop) = (
            peak.clone(),
            tcp_peak.clone(),
            pids.clone(),
            stop_rx.clone(),
        );
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if let Some(r) = procs_rss_kib(&pids) {
                            peak.fetch_max(r, Relaxed);
                        }
                        if let Some(t) = tcp_mem_kib() {
                            tcp_peak.fetch_max(t, Relaxed);
                        }
                    }
                    // the sender is dropped once every connection is closed
                    r = stop.changed() => if r.is_err() { return },
                }
            }
        })
    };

    eprintln!(
        "hostile: {}: opening {n} connections from {} source addresses",
        kind.name(),
        a.sources
    );
    let t0 = Instant::now();
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<bool>();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let t = conn_task(
            kind,
            i,
            ctx.clone(),
            sem.clone(),
            out.clone(),
            ready_tx.clone(),
            stop_rx.clone(),
        );
        tasks.push(tokio::spawn(t));
    }
    drop(ready_tx);
    let mut opened = 0usize;
    let mut done = 0usize;
    while let Some(ok) = ready_rx.recv().await {
        done += 1;
        opened += ok as usize;
        if done.is_multiple_of(250) {
            eprintln!(
                "hostile: {}: {done}/{n} ({opened} opened) after {:.2}s",
                kind.name(),
                t0.elapsed().as_secs_f64()
            );
        }
    }
    let open_s = t0.elapsed().as_secs_f64();

    // non-reader: one sender per room, which joins now and sends until the end of the hold
    let stats = Arc::new(SenderStats::default());
    let mut senders = Vec::new();
    if kind == Kind::NonReader {
        let rooms = n.div_ceil(NON_READERS_PER_ROOM);
        let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<bool>();
        for r in 0..rooms {
            let room = format!("lg{}-{}-{r}", ctx.run_id, kind.name());
            // the room's non-readers start at connection r * 49 and take targets round-robin
            let target =
                ctx.target_names[(r * NON_READERS_PER_ROOM) % ctx.target_names.len()].clone();
            let t = sender_task(
                ctx.clone(),
                room,
                target,
                a.clone(),
                stats.clone(),
                ready_tx.clone(),
                stop_rx.clone(),
            );
            senders.push(tokio::spawn(t));
        }
        drop(ready_tx);
        while ready_rx.recv().await.is_some() {}
        eprintln!(
            "hostile: {}: {} of {rooms} senders joined",
            kind.name(),
            stats.joined.load(Relaxed)
        );
    }

    eprintln!(
        "hostile: {}: {opened} opened in {open_s:.2}s, holding {}s",
        kind.name(),
        a.hold
    );
    tokio::time::sleep(Duration::from_secs_f64(a.hold)).await;

    // close them all (each task drops its socket when it returns)
    let _ = stop_tx.send(true);
    for t in tasks.into_iter().chain(senders) {
        let _ = t.await;
    }
    drop(stop_tx);
    let _ = sampler.await;
    let rss_peak = procs_rss_kib(&pids).map(|r| peak.load(Relaxed).max(r));
    eprintln!("hostile: {}: closed, settling {}s", kind.name(), a.settle);
    tokio::time::sleep(Duration::from_secs_f64(a.settle)).await;
    let rss_after = procs_rss_kib(&pids);
    let tcp_after = tcp_mem_kib();

    let diff = |x: Option<u64>| match (x, rss_before) {
        (Some(x), Some(b)) => Some(x as i64 - b as i64),
        _ => None,
    };
    let mut line = json!({
        "scenario": "hostile",
        "label": c.label,
        "kind": kind.name(),
        "n": n,
        "sources": if ctx.bind_sources { a.sources } else { 0 },
        "opened": opened,
        "refused": out.refused.json(),
        "closed_by_server": out.closed_by_server.json(),
        "rss_before_kib": rss_before,
        "rss_peak_kib": rss_peak,
        "rss_after_kib": rss_after,
        "peak_over_before_kib": diff(rss_peak),
        "after_over_before_kib": diff(rss_after),
        "tcp_mem_before_kib": tcp_before,
        "tcp_mem_peak_kib": tcp_before.map(|b| tcp_peak.load(Relaxed).max(b)),
        "tcp_mem_after_kib": tcp_after,
        "open_s": super::round3(open_s),
        "hold_s": a.hold,
        "settle_s": a.settle,
    });
    match kind {
        Kind::PingFlood => line["pings_written"] = json!(out.pings.load(Relaxed)),
        Kind::NonReader => {
            line["tcp_state_at_hold_end"] = out.tcp_state.json();
            line["senders"] = json!({
                "rooms": n.div_ceil(NON_READERS_PER_ROOM),
                "joined": stats.joined.load(Relaxed),
                "failed": stats.failed.json(),
                "messages_sent": stats.sent.load(Relaxed),
                "data_bytes": SENDER_DATA_LEN,
                "closed_by_server": stats.closed.json(),
            });
        }
        _ => {}
    }
    println!("{line}");
}
