//! A real `redis-server` for the cluster tests: one per test, on a free
//! loopback port, with no persistence, so that killing it and starting it
//! again on the same port gives the relay a fresh, empty Redis.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::helpers::free_port;

/// How long a freshly spawned `redis-server` may take to answer.
const START_WITHIN: Duration = Duration::from_secs(5);

pub struct RedisServer {
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers.
    pub async fn start() -> RedisServer {
        let mut last_error = String::new();
        // Another process may take the port between our probe and the
        // server's bind: then the server exits at once and we try another.
        for _ in 0..5 {
            let port = free_port();
            match spawn_on(port).await {
                Ok(child) => {
                    return RedisServer {
                        port,
                        child: Some(child),
                    }
                }
                Err(e) => last_error = e,
            }
        }
        panic!("redis-server did not start: {last_error}");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server without warning (SIGKILL) and reaps it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a fresh, empty server on the same port.
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "stop() the server first");
        let deadline = Instant::now() + START_WITHIN;
        loop {
            match spawn_on(self.port).await {
                Ok(child) => {
                    self.child = Some(child);
                    return;
                }
                // The old socket may linger for a moment.
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => panic!("redis-server did not start again on {}: {e}", self.port),
            }
        }
    }

    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("a valid Redis URL")
            .get_multiplexed_async_connection()
            .await
            .expect("the test connects to its Redis")
    }

    /// Every key in the server with its type, everything it holds (members,
    /// fields, values and scores, as bytes) and its `PTTL`.
    pub async fn dump(&self) -> Vec<StoredKey> {
        let mut con = self.connection().await;
        let mut keys: Vec<Vec<u8>> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut con)
                .await
                .expect("SCAN");
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        keys.sort();
        keys.dedup();
        let mut out = Vec::new();
        for key in keys {
            let kind: String = redis::cmd("TYPE")
                .arg(&key)
                .query_async(&mut con)
                .await
                .expect("TYPE");
            let read = match kind.as_str() {
                "string" => Some(redis::cmd("GET").arg(&key).clone()),
                "hash" => Some(redis::cmd("HGETALL").arg(&key).clone()),
                "set" => Some(redis::cmd("SMEMBERS").arg(&key).clone()),
                "zset" => Some(
                    redis::cmd("ZRANGE")
                        .arg(&key)
                        .arg(0)
                        .arg(-1)
                        .arg("WITHSCORES")
                        .clone(),
                ),
                "list" => Some(redis::cmd("LRANGE").arg(&key).arg(0).arg(-1).clone()),
                "stream" => Some(redis::cmd("XRANGE").arg(&key).arg("-").arg("+").clone()),
                // "none": the key expired between SCAN and TYPE.
                _ => None,
            };
            let mut values = Vec::new();
            if let Some(cmd) = read {
                let v: redis::Value = cmd.query_async(&mut con).await.expect("read a key");
                flatten(v, &mut values);
            }
            let pttl: i64 = redis::cmd("PTTL")
                .arg(&key)
                .query_async(&mut con)
                .await
                .expect("PTTL");
            out.push(StoredKey {
                key,
                kind,
                values,
                pttl,
            });
        }
        out
    }

    /// The pub/sub channels, classic and sharded, that have at least one
    /// subscriber.
    pub async fn channels(&self) -> Vec<Vec<u8>> {
        let mut con = self.connection().await;
        let mut all = Vec::new();
        for kind in ["CHANNELS", "SHARDCHANNELS"] {
            let some: Vec<Vec<u8>> = redis::cmd("PUBSUB")
                .arg(kind)
                .query_async(&mut con)
                .await
                .expect("PUBSUB");
            all.extend(some);
        }
        all
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One key as found in Redis.
#[derive(Debug)]
pub struct StoredKey {
    pub key: Vec<u8>,
    pub kind: String,
    pub values: Vec<Vec<u8>>,
    pub pttl: i64,
}

impl StoredKey {
    /// Whether the key's name or anything it holds contains `needle`.
    pub fn contains(&self, needle: &[u8]) -> bool {
        contains_bytes(&self.key, needle) || self.values.iter().any(|v| contains_bytes(v, needle))
    }

    pub fn name(&self) -> String {
        String::from_utf8_lossy(&self.key).into_owned()
    }
}

pub fn contains_bytes(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

fn flatten(v: redis::Value, out: &mut Vec<Vec<u8>>) {
    use redis::Value as V;
    match v {
        V::Nil | V::Okay => {}
        V::Int(i) => out.push(i.to_string().into_bytes()),
        V::BulkString(b) => out.push(b),
        V::SimpleString(s) => out.push(s.into_bytes()),
        V::Double(d) => out.push(d.to_string().into_bytes()),
        V::Array(items) | V::Set(items) => items.into_iter().for_each(|i| flatten(i, out)),
        V::Map(pairs) => pairs.into_iter().for_each(|(k, v)| {
            flatten(k, out);
            flatten(v, out);
        }),
        other => out.push(format!("{other:?}").into_bytes()),
    }
}

/// `redis-server` on loopback `port`, in the foreground, with no
/// persistence (a restart is a fresh, empty Redis).
fn redis_server(port: u16) -> Command {
    let mut cmd = Command::new("redis-server");
    cmd.args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        "--protected-mode",
        "no",
    ]);
    cmd
}

async fn spawn_on(port: u16) -> Result<Child, String> {
    let mut child = redis_server(port)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run redis-server: {e}"))?;
    let deadline = Instant::now() + START_WITHIN;
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return Err(format!("redis-server on port {port} exited: {status}"));
        }
        // Checking the pid tells our server from another one that may
        // already listen on the port (then ours exits on its failed bind).
        if server_pid(port).await == Some(child.id()) {
            return Ok(child);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("redis-server on port {port} never answered"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The `process_id` of the Redis server answering on `port`, if any.
async fn server_pid(port: u16) -> Option<u32> {
    let attempt = async {
        let s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let mut s = tokio::io::BufReader::new(s);
        s.get_mut().write_all(b"INFO server\r\n").await?;
        let mut header = String::new();
        s.read_line(&mut header).await?;
        let len: usize = header
            .strip_prefix('$')
            .and_then(|l| l.trim().parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("unexpected reply {header:?}")))?;
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).await?;
        Ok::<String, std::io::Error>(String::from_utf8_lossy(&body).into_owned())
    };
    let info = tokio::time::timeout(Duration::from_millis(500), attempt)
        .await
        .ok()?
        .ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|pid| pid.trim().parse().ok())
}

/// A three-node Redis Cluster (no replicas) on free loopback ports, for the
/// sharded pub/sub test. Each node also needs its cluster bus port (+10000)
/// free, so ports are taken from a range where that stays below 65536.
pub struct RedisCluster {
    ports: Vec<u16>,
    children: Vec<Child>,
    dir: std::path::PathBuf,
}

fn port_pair_free(port: u16) -> bool {
    let bind = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
    bind(port) && bind(port + 10_000)
}

impl RedisCluster {
    pub async fn start() -> RedisCluster {
        let dir = std::env::temp_dir().join(format!(
            "blindrelay-rc-{}-{}",
            std::process::id(),
            crate::helpers::unique("")
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut ports = Vec::new();
        let mut children = Vec::new();
        let seed = (std::process::id() % 5000) as u16;
        let mut candidate = 20_000 + seed * 3;
        while ports.len() < 3 {
            candidate += 1;
            assert!(candidate < 55_000, "no free ports for a Redis Cluster");
            if !port_pair_free(candidate) {
                continue;
            }
            let conf = dir.join(format!("nodes-{candidate}.conf"));
            let child = redis_server(candidate)
                .args([
                    "--cluster-enabled",
                    "yes",
                    "--cluster-node-timeout",
                    "2000",
                    "--cluster-config-file",
                    conf.to_str().unwrap(),
                    "--dir",
                    dir.to_str().unwrap(),
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server runs");
            let pid = child.id();
            children.push(child);
            let deadline = Instant::now() + START_WITHIN;
            while server_pid(candidate).await != Some(pid) {
                assert!(
                    Instant::now() < deadline,
                    "cluster node on {candidate} never answered"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            ports.push(candidate);
        }
        let nodes: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli runs");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = RedisCluster {
            ports,
            children,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut ok = true;
            for p in &cluster.ports {
                let mut con = node(*p).await;
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(&mut con)
                    .await
                    .expect("CLUSTER INFO");
                ok &= info.contains("cluster_state:ok");
            }
            if ok {
                return cluster;
            }
            assert!(
                Instant::now() < deadline,
                "the Redis Cluster never became ok"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The seed nodes, as `REDIS_URL` takes them with `REDIS_CLUSTER=true`.
    pub fn urls(&self) -> String {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Per node: (classic channels, sharded channels) with subscribers.
    pub async fn channels_per_node(&self) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        for p in &self.ports {
            let mut con = node(*p).await;
            let mut counts = [0usize; 2];
            for (i, kind) in ["CHANNELS", "SHARDCHANNELS"].iter().enumerate() {
                let some: Vec<Vec<u8>> = redis::cmd("PUBSUB")
                    .arg(*kind)
                    .query_async(&mut con)
                    .await
                    .expect("PUBSUB");
                counts[i] = some.len();
            }
            out.push((counts[0], counts[1]));
        }
        out
    }
}

async fn node(port: u16) -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("the test connects to a cluster node")
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
