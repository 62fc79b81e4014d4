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

#[test]
fn help_and_version_print_and_exit_0_and_an_unknown_argument_is_a_usage_error() {
    for arg in ["--help", "-h"] {
        let out = relay().arg(arg).output().unwrap();
        assert_eq!(out.status.code(), Some(0));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.starts_with("Usage: blindrelay"), "{text}");
        assert!(text.contains("healthcheck") && text.contains("check-config"));
    }
    let out = relay().arg("--version").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("blindrelay {}", env!("CARGO_PKG_VERSION"))
    );
    // Not a server started with the argument ignored: an error, with usage.
    let out = relay().args(["--port", "80"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown option \"--port\"") && err.contains("Usage:"),
        "{err}"
    );
}

/// The variables documented in docs/configuration.md.
fn documented_variables() -> Vec<String> {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/configuration.md"
    ))
    .unwrap();
    doc.lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|n| {
            n.chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn check_config_prints_every_setting_with_the_secrets_redacted() {
    let out = relay()
        .arg("check-config")
        .env("APP_ENV", "production")
        .env("JOIN_TOKEN_SECRET", SECRET)
        .env("CLUSTER_SECRET", "cluster-secret-cluster-secret-cluster")
        .env(
            "REDIS_URL",
            "redis://relay:hunter2hunter2@redis.internal:6379/0",
        )
        .env("MAX_ROOM_MEMBERS", "7")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("\nMAX_ROOM_MEMBERS=7\n"), "{text}");
    assert!(text.contains("\nAPP_ENV=production\n"));
    assert!(text.contains("REDIS_URL=redis://relay:[redacted]@redis.internal:6379/0"));
    for secret in [
        SECRET,
        "hunter2hunter2",
        "cluster-secret-cluster-secret-cluster",
    ] {
        assert!(!text.contains(secret), "a secret was printed");
    }
    let printed: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .collect();
    let documented = documented_variables();
    for var in &documented {
        // NODE_ENV is an alias of APP_ENV.
        if var != "NODE_ENV" {
            assert!(printed.contains(&var.as_str()), "{var} is not printed");
        }
    }
    for var in printed {
        assert!(
            documented.iter().any(|d| d == var),
            "{var} is not documented"
        );
    }
}

#[test]
fn check_config_reports_every_error_at_once_with_status_2() {
    let out = relay()
        .arg("check-config")
        .env("APP_ENV", "production")
        .env("PORT", "eighty")
        .env("FEATURE_CORS", "maybe")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    for var in ["JOIN_TOKEN_SECRET", "PORT", "FEATURE_CORS"] {
        assert!(
            err.lines()
                .any(|l| l.starts_with(&format!("blindrelay: configuration error: {var}: "))),
            "{var} missing from: {err}"
        );
    }
}

#[actix_web::test]
async fn healthcheck_exits_0_while_the_instance_is_live_and_1_when_it_is_not() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let check = |extra: &[&str]| {
        relay()
            .arg("healthcheck")
            .args(extra)
            .env("PORT", port.to_string())
            .output()
            .unwrap()
    };
    let down = check(&["--timeout-ms", "500"]);
    assert_eq!(down.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&down.stderr).contains("cannot connect"));
    let mut child = relay()
        .env("PORT", port.to_string())
        .env("JOIN_TOKEN_SECRET", SECRET)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while check(&[]).status.code() != Some(0) {
        assert!(Instant::now() < deadline, "healthcheck never passed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(check(&["--ready"]).status.code(), Some(0));
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(check(&[]).status.code(), Some(1));
}
