//! `drain`: how a relay's graceful shutdown spreads its closes.
//!
//! Opens N joined connections, sends SIGTERM to the server process once all
//! have joined, and records when each connection is closed and with which
//! code, and when the process exits. Reports the spread of the close times
//! (first, percentiles, last), the densest 100 ms and 1 s windows (what the
//! remaining instances would see as reconnects), and the exit time.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use futures_util::StreamExt;
use serde_json::json;
use tokio::sync::{mpsc, Semaphore};
use tokio_tungstenite::tungstenite::Message;

use super::{connect_join_timeout, round3, run_id, targets, ws_config, Common, Minter};

#[derive(Args, Clone)]
pub struct DrainArgs {
    #[command(flatten)]
    pub common: Common,
    /// Number of connections.
    #[arg(long, short = 'n', default_value_t = 10000)]
    pub connections: usize,
    /// Rooms the connections are spread over.
    #[arg(long, default_value_t = 1000)]
    pub rooms: usize,
    /// The server's process id: it gets SIGTERM once every connection has joined.
    #[arg(long)]
    pub signal_pid: i32,
    /// Give up waiting for closes and the exit after this many seconds.
    #[arg(long, default_value_t = 60.0)]
    pub wait: f64,
}

/// True once `pid` has exited (gone, or a zombie its parent has not reaped).
fn exited(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next())
            .is_some_and(|state| state == 'Z' || state == 'X'),
    }
}

/// The most events in any window of `width` (sorted input).
fn densest(at: &[Duration], width: Duration) -> usize {
    let mut best = 0;
    let mut j = 0;
    for i in 0..at.len() {
        while at[i] - at[j] >= width {
            j += 1;
        }
        best = best.max(i + 1 - j);
    }
    best
}

pub async fn drain(a: DrainArgs) {
    let c = &a.common;
    let tg = targets(c);
    let n = a.connections;
    let rooms = a.rooms.max(1).min(n.max(1));
    let per_room = n.div_ceil(rooms);
    let rid = run_id();
    let minter = Arc::new(Minter::new(&c.secret, c.token_ttl, &rid));
    let sem = Arc::new(Semaphore::new(c.connect_concurrency.max(1)));
    let cfg = ws_config(4096);
    let jt = Duration::from_secs_f64(c.join_timeout);
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<bool>();
    // Close times are taken relative to this instant, set at SIGTERM.
    let signalled: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let closes: Arc<Mutex<Vec<(Duration, u16)>>> = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let open = Arc::new(AtomicUsize::new(0));
    eprintln!("drain: opening {n} connections in {rooms} rooms (~{per_room}/room)");
    let t0 = Instant::now();
    for i in 0..n {
        let room = format!("lg{rid}-d{}", i / per_room);
        let target = tg[i % tg.len()].clone();
        let path = c.path.clone();
        let (sem, minter, ready_tx) = (sem.clone(), minter.clone(), ready_tx.clone());
        let (signalled, closes, open) = (signalled.clone(), closes.clone(), open.clone());
        tokio::spawn(async move {
            let token = minter.mint(&room);
            let permit = sem.acquire_owned().await.unwrap();
            let res = connect_join_timeout(&target, &path, &token, cfg, jt).await;
            drop(permit);
            let Ok((mut ws, _)) = res else {
                let _ = ready_tx.send(false);
                return;
            };
            open.fetch_add(1, Relaxed);
            let _ = ready_tx.send(true);
            drop(ready_tx);
            let code = loop {
                match ws.next().await {
                    Some(Ok(Message::Close(cf))) => {
                        break cf.map(|c| u16::from(c.code)).unwrap_or(1005)
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break 1006,
                }
            };
            let at = signalled.lock().unwrap().map(|t| t.elapsed()).unwrap_or_default();
            closes.lock().unwrap().push((at, code));
            open.fetch_sub(1, Relaxed);
        });
    }
    drop(ready_tx);
    let (mut ok, mut failed) = (0usize, 0usize);
    while let Some(r) = ready_rx.recv().await {
        if r { ok += 1 } else { failed += 1 }
        if (ok + failed) % 2000 == 0 {
            eprintln!("drain: {}/{n} ({ok} joined) after {:.1}s", ok + failed, t0.elapsed().as_secs_f64());
        }
    }
    let connect_s = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    eprintln!("drain: {ok} joined; SIGTERM to {}", a.signal_pid);
    let sent = Instant::now();
    *signalled.lock().unwrap() = Some(sent);
    // SAFETY: kill(2) on a process id the operator named.
    let rc = unsafe { libc::kill(a.signal_pid, libc::SIGTERM) };
    if rc != 0 {
        eprintln!("drain: kill({}) failed: {}", a.signal_pid, std::io::Error::last_os_error());
        std::process::exit(1);
    }
    let deadline = sent + Duration::from_secs_f64(a.wait);
    let mut exit_ms = None;
    while Instant::now() < deadline {
        if exit_ms.is_none() && exited(a.signal_pid) {
            exit_ms = Some(sent.elapsed().as_secs_f64() * 1000.0);
        }
        if exit_ms.is_some() && open.load(Relaxed) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let closes = closes.lock().unwrap().clone();
    let mut at: Vec<Duration> = closes.iter().map(|(t, _)| *t).collect();
    at.sort();
    let mut codes = std::collections::BTreeMap::<String, usize>::new();
    for (_, code) in &closes {
        *codes.entry(code.to_string()).or_default() += 1;
    }
    let ms = |d: Duration| round3(d.as_secs_f64() * 1000.0);
    let q = |p: f64| at.get(((at.len() as f64 - 1.0) * p).round() as usize).map(|d| ms(*d));
    let line = json!({
        "scenario": "drain",
        "label": c.label,
        "connections": n,
        "rooms": rooms,
        "joined": ok,
        "failed": failed,
        "connect_s": round3(connect_s),
        "closed": at.len(),
        "still_open": open.load(Relaxed),
        "close_codes": codes,
        "close_ms": {
            "first": at.first().map(|d| ms(*d)),
            "p10": q(0.10), "p50": q(0.50), "p90": q(0.90), "p99": q(0.99),
            "last": at.last().map(|d| ms(*d)),
        },
        "densest_100ms": densest(&at, Duration::from_millis(100)),
        "densest_1s": densest(&at, Duration::from_secs(1)),
        "exit_ms": exit_ms.map(round3),
    });
    println!("{line}");
}
