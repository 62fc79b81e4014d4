//! Cluster mode with instances run as the real binary, so that they can die
//! the way processes do: SIGKILL (no goodbye), SIGTERM (graceful), or start
//! before Redis is there.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cluster::*;
use crate::helpers::*;
use crate::redis_server::RedisServer;

/// How long the binary may take to answer `/live`.
const START_WITHIN: Duration = Duration::from_secs(10);

/// The `blindrelay` binary, running as a cluster instance.
pub struct RelayProcess {
    pub port: u16,
    child: Child,
    output: Arc<Mutex<Vec<String>>>,
    http: awc::Client,
}

impl RelayProcess {
    /// Starts an instance on a free port with Redis at `redis_url`, the
    /// shared cluster test settings and `extra`; waits until `/live` answers.
    pub async fn start(redis_url: &str, extra: &[(&str, &str)]) -> RelayProcess {
        let mut last = String::new();
        // Another process may take the port before the relay binds it:
        // then try another one.
        for _ in 0..3 {
            let port = free_port();
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_blindrelay"));
            cmd.env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .env("CONFIG_DIR", "/nonexistent")
                .env("HOST", "127.0.0.1")
                .env("LOG_FORMAT", "json")
                .env("JOIN_TOKEN_SECRET", SECRET)
                .env("PORT", port.to_string())
                .env("REDIS_URL", redis_url)
                .envs(CLUSTER.iter().copied())
                .envs(extra.iter().copied())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let mut child = cmd.spawn().expect("the relay binary runs");
            let output = Arc::new(Mutex::new(Vec::new()));
            drain(child.stdout.take().unwrap(), output.clone());
            drain(child.stderr.take().unwrap(), output.clone());
            let mut p = RelayProcess {
                port,
                child,
                output,
                http: awc::Client::builder()
                    .timeout(Duration::from_secs(2))
                    .finish(),
            };
            if p.wait_live().await {
                return p;
            }
            last = p.output();
            if !last.to_ascii_lowercase().contains("in use") {
                break;
            }
        }
        panic!("the relay did not start; its output:\n{last}");
    }

    /// Whether `/live` came to answer 200 (false if the process exited).
    async fn wait_live(&mut self) -> bool {
        let deadline = Instant::now() + START_WITHIN;
        loop {
            if self.child.try_wait().unwrap().is_some() {
                return false;
            }
            if self.get("/live").await.0 == 200 {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until `/ready` answers 200: connected to Redis.
    pub async fn wait_ready(&self) {
        wait_until("the relay is ready", WAIT, async || {
            self.get("/ready").await.0 == 200
        })
        .await;
    }

    /// Everything the process wrote to stdout and stderr so far.
    pub fn output(&self) -> String {
        self.output.lock().unwrap().join("\n")
    }

    /// A GET; status 0 when nothing answers.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let res = self
            .http
            .get(format!("http://127.0.0.1:{}{path}", self.port))
            .send()
            .await;
        match res {
            Ok(mut res) => {
                let body = res.body().await.unwrap_or_default();
                (
                    res.status().as_u16(),
                    serde_json::from_slice(&body).unwrap_or(Value::Null),
                )
            }
            Err(_) => (0, Value::Null),
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Kills the process without warning (SIGKILL) and reaps it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn sigterm(&self) {
        assert!(Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success());
    }

    /// Waits for the process to exit, at most `within`.
    pub async fn exit_status(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the relay did not exit");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("relay on port {} wrote:\n{}", self.port, self.output());
        }
    }
}

fn drain(from: impl Read + Send + 'static, into: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            into.lock().unwrap().push(line);
        }
    });
}

#[actix_web::test]
async fn an_instance_killed_without_warning_has_its_members_announced_as_left_within_the_presence_ttl(
) {
    let redis = RedisServer::start().await;
    let a = instance(&redis, &[]).await;
    let mut b = RelayProcess::start(&redis.url(), &[]).await;
    b.wait_ready().await;
    let (room, m) = room_across(&[a.port, a.port, b.port, b.port]).await;
    let [(mut a1, a1_id), (mut a2, a2_id), (_b1, b1_id), (_b2, b2_id)] = members(m);
    let killed = Instant::now();
    b.kill9();
    let (on_a1, on_a2) = tokio::join!(
        async {
            let ids = lefts(&mut a1, 2).await;
            (ids, killed.elapsed())
        },
        async {
            let ids = lefts(&mut a2, 2).await;
            (ids, killed.elapsed())
        },
    );
    println!(
        "member_left after SIGKILL: {:?} and {:?} (PRESENCE_TTL_MS {:?})",
        on_a1.1, on_a2.1, TTL
    );
    let gone = sorted([b1_id, b2_id]);
    assert_eq!(on_a1.0, gone);
    assert_eq!(on_a2.0, gone);
    for took in [on_a1.1, on_a2.1] {
        assert!(took < TTL + SLACK, "took {took:?}");
    }
    tokio::join!(
        a1.expect_silence(Duration::from_millis(300)),
        a2.expect_silence(Duration::from_millis(300)),
    );
    // the dead instance's members are no longer listed
    let (_c, w) = join_at(a.port, &room).await;
    assert_eq!(listed(&w), sorted([a1_id, a2_id]));
}

#[actix_web::test]
async fn sigterm_announces_the_instance_s_members_as_left_at_once_and_exits_0() {
    let redis = RedisServer::start().await;
    // a TTL far above the promise, so that expiry cannot be what announces them
    let slow_ttl = [("PRESENCE_TTL_MS", "10000")];
    let a = instance(&redis, &slow_ttl).await;
    let mut b = RelayProcess::start(
        &redis.url(),
        &[
            ("PRESENCE_TTL_MS", "10000"),
            ("SHUTDOWN_TIMEOUT_MS", "5000"),
        ],
    )
    .await;
    b.wait_ready().await;
    let (_, m) = room_across(&[a.port, b.port, b.port]).await;
    let [(mut a1, _), (mut b1, b1_id), (mut b2, b2_id)] = members(m);
    let started = Instant::now();
    b.sigterm();
    left_at_once_as_their_instance_stops(&mut a1, [&mut b1, &mut b2], [b1_id, b2_id], started)
        .await;
    assert_eq!(b.exit_status(Duration::from_secs(5)).await.code(), Some(0));
    a1.expect_silence(Duration::from_millis(300)).await;
}

#[actix_web::test]
async fn an_instance_started_before_redis_is_live_but_not_ready_until_redis_answers() {
    let mut redis = RedisServer::start().await;
    redis.stop();
    // start() waits for /live: the instance is up although Redis is not
    let mut p = RelayProcess::start(&redis.url(), &[]).await;
    // it stays up and not ready while it keeps trying (backoff capped at 300 ms)
    let until = Instant::now() + Duration::from_millis(1000);
    while Instant::now() < until {
        assert!(p.is_running(), "the instance exited without Redis");
        assert_eq!(p.get("/live").await.0, 200);
        let (status, ready) = p.get("/ready").await;
        assert_eq!(status, 503, "{ready}");
        assert_eq!(ready["ready"], false, "{ready}");
        assert_eq!(ready["checks"]["redis"], false, "{ready}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    redis.start_again().await;
    let mut ready = Value::Null;
    wait_until("/ready answers 200 once Redis is up", WAIT, async || {
        let (status, body) = p.get("/ready").await;
        ready = body;
        status == 200
    })
    .await;
    assert_eq!(ready["ready"], true, "{ready}");
    assert_eq!(ready["checks"]["redis"], true, "{ready}");
    // and it serves the cluster
    let a = instance(&redis, &[]).await;
    room_across(&[p.port, a.port]).await;
}
