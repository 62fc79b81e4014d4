//! The `blindrelay` binary as operators run it: configured from the
//! environment, refusing bad settings before binding, and exiting 0 after a
//! graceful shutdown on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::*;

fn relay() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_blindrelay"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CONFIG_DIR", "/nonexistent")
        .env("HOST", "127.0.0.1")
        .env("LOG_FORMAT", "json");
    cmd
}

#[actix_web::test]
async fn a_bad_setting_stops_start_up_with_status_2_naming_the_variable() {
    let out = relay()
        .env("PORT", "0")
        .env("MAX_CONNS_PER_IP", "lots")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("MAX_CONNS_PER_IP") && err.contains("\"lots\""),
        "{err}"
    );
    let out = relay()
        .env("PORT", "0")
        .env("APP_ENV", "production")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("JOIN_TOKEN_SECRET"));
}

#[actix_web::test]
async fn sigterm_closes_sessions_with_1012_and_exits_0() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = relay()
        .env("PORT", port.to_string())
        .env("JOIN_TOKEN_SECRET", SECRET)
        .env("SHUTDOWN_TIMEOUT_MS", "5000")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let lines = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    let deadline = Instant::now() + WAIT;
    let mut ws = loop {
        match tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/v1/ws")).await {
            Ok((ws, _)) => break Client { ws },
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("relay did not start: {e}"),
        }
    };
    ws.send_json(json!({"type": "join", "token": token("sigterm-room")}))
        .await;
    assert_eq!(ws.recv_json().await["type"], "welcome");
    let started = Instant::now();
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    ws.expect_close(1012, "service restart").await;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "exits within SHUTDOWN_TIMEOUT_MS"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(0));
    let lines = lines.join().unwrap();
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|_| panic!("JSON log line: {l}"));
        assert!(v["msg"].is_string() && v["level"].is_string());
        assert!(!l.contains("sigterm-room") && !l.contains(SECRET));
    }
    assert!(lines.iter().any(|l| l.contains("shutting down")));
}
