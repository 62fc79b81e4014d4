//! The Redis side of the seam: everything an instance asks of Redis, with a
//! timeout on every call, and the publish lane that carries room traffic.
//!
//! Two kinds of connection:
//! - request/response commands (replay guard, room registry, per-IP limits,
//!   presence scripts) go through a deadpool-redis pool;
//! - room traffic (publications, presence removals, re-announcements) goes
//!   through the *publish lane*: one queue, drained in order into pipelines
//!   on one dedicated connection, so that a sender's messages, and a
//!   member's leave after its messages, reach Redis in the order they were
//!   accepted. A pool would hand consecutive publishes to different
//!   connections and reorder them.
//!
//! The subscription connection belongs to the bridge actor
//! ([`crate::bridge`]), which also decides when the link is up.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use actix::Recipient;
use bytes::Bytes;
use deadpool_redis::{PoolConfig, Timeouts};
use tokio::sync::{mpsc, oneshot};

use super::conn::{node_urls, Conn, Pool};
use super::keys::{Keys, NodeTag, RoomKeys};
use super::scripts::Scripts;
use super::wire;
use crate::metrics::Metrics;
use crate::replay::Burn;
use crate::settings::Settings;

/// Redis could not be reached (or answered with an error) within the
/// timeout: the caller fails closed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RedisError {
    #[error("the cluster link is down")]
    LinkDown,
    #[error("the publish lane dropped the command (the link went down)")]
    Dropped,
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("getting a pooled connection: {0}")]
    Pool(String),
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    #[error("unexpected reply: {0}")]
    Reply(#[from] redis::ParsingError),
}

impl RedisError {
    /// Whether trying again on another connection may succeed.
    fn is_retryable(&self) -> bool {
        match self {
            RedisError::Pool(_) => true,
            RedisError::Redis(e) => e.is_io_error() || e.is_connection_dropped(),
            RedisError::LinkDown
            | RedisError::Dropped
            | RedisError::Timeout(_)
            | RedisError::Reply(_) => false,
        }
    }
}

/// The outcome of a presence join.
pub(crate) enum Admission {
    /// The room has `MAX_ROOM_MEMBERS` members, cluster-wide.
    Full,
    /// Joined; the other members and the instance each is on.
    Admitted(Vec<Entry>),
}

/// One member's presence entry, read back from Redis.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// Its field in the room's presence hash.
    pub field: String,
    pub member: Box<str>,
    /// The instance it is on.
    pub node: NodeTag,
}

/// Told when the link fails (by the lane or a command), so that the bridge
/// goes degraded and reconnects.
#[derive(actix::Message)]
#[rtype(result = "()")]
pub(crate) struct LinkLost {
    /// What failed, for the log (never content).
    pub cause: String,
}

/// Timings derived from `PRESENCE_TTL_MS`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timing {
    /// How often each instance refreshes its presence in each of its rooms.
    pub heartbeat: Duration,
    /// An instance whose heartbeat is older than this is dead.
    pub dead_after: Duration,
    /// Lifetime of a room's presence keys without any refresh.
    pub key_ttl: Duration,
    /// After the link is restored, how long absence from presence is not
    /// taken for a leave: the other live instances reconnect (within the
    /// jittered backoff cap, 1.5 × `REDIS_RECONNECT_MAX_MS`) and re-announce
    /// in that time. Capped at `dead_after`, so that an instance that dies
    /// right after an outage is still announced within the TTL.
    pub restore_grace: Duration,
}

impl Timing {
    /// The heartbeat runs five times per TTL and an instance is dead after
    /// three missed beats, so the others notice within 0.8 TTL (three beats,
    /// plus one until the next check), inside the contract's TTL.
    pub fn new(ttl: Duration, reconnect_max: Duration) -> Self {
        let heartbeat = ttl / 5;
        Timing {
            heartbeat,
            dead_after: heartbeat * 3,
            key_ttl: (ttl * 4).max(Duration::from_secs(60)),
            restore_grace: (heartbeat + reconnect_max.mul_f64(1.5)).min(heartbeat * 3),
        }
    }
}

struct LaneOp {
    cmd: redis::Cmd,
    bytes: usize,
    /// A PUBLISH (counted in `blindrelay_redis_publishes_total`).
    publish: bool,
    /// In a Redis Cluster, the room's channel: a pipeline may only touch
    /// one hash slot, so the lane sends one pipeline per room (in order
    /// within it). Empty for a single Redis.
    group: String,
    /// Where the command's reply goes; `None`: ignored.
    reply: Option<oneshot::Sender<redis::Value>>,
}

/// Ops taken from the lane into one pipeline at most.
const LANE_BATCH: usize = 512;

/// A leave that happened while the link was down, announced on restore.
struct PendingLeave {
    keys: RoomKeys,
    member: Box<str>,
}

/// The shared handle on the cluster link: held by the HTTP handlers (via
/// the backend), the rooms and the bridge.
pub(crate) struct RedisLink {
    pub keys: Keys,
    pub node: NodeTag,
    node_text: String,
    pub timing: Timing,
    pub command_timeout: Duration,
    retries: u32,
    idle_ttl: Duration,
    leeway_secs: u64,
    replay_enabled: bool,
    publish_limit: usize,
    pool: Pool,
    /// Redis Cluster: sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`).
    pub sharded: bool,
    pub scripts: Scripts,
    pub metrics: Metrics,
    lane_tx: LaneSender,
    lane_rx: Mutex<Option<LaneReceiver>>,
    lane_conn: Mutex<Option<Conn>>,
    /// Bytes queued in the lane and not yet written to Redis.
    lane_bytes: AtomicUsize,
    /// Ops queued or in flight in the lane.
    lane_ops: AtomicUsize,
    pending_leaves: Mutex<Vec<PendingLeave>>,
    up: AtomicBool,
    ever_up: AtomicBool,
    /// Last measured round trip, in microseconds.
    rtt_us: AtomicU64,
    bridge: OnceLock<Recipient<LinkLost>>,
    pub log: slog::Logger,
}

impl RedisLink {
    pub fn new(settings: &Settings, metrics: Metrics, log: slog::Logger) -> anyhow::Result<Self> {
        let url = settings
            .redis_url
            .clone()
            .ok_or_else(|| anyhow::anyhow!("REDIS_URL is not set"))?;
        let command_timeout = Duration::from_millis(settings.redis_command_timeout_ms);
        let pool = Pool::new(
            node_urls(&url, settings.redis_cluster),
            settings.redis_cluster,
            PoolConfig {
                max_size: settings.redis_pool_size,
                timeouts: Timeouts {
                    wait: Some(command_timeout),
                    create: Some(Duration::from_millis(settings.redis_connect_timeout_ms)),
                    recycle: Some(command_timeout),
                },
                ..PoolConfig::default()
            },
        )?;
        let (lane_tx, lane_rx) = mpsc::unbounded_channel();
        let node = NodeTag::random();
        Ok(RedisLink {
            keys: Keys::new(&settings.cluster_secret),
            node,
            node_text: node.text(),
            timing: Timing::new(
                Duration::from_millis(settings.presence_ttl_ms),
                Duration::from_millis(settings.redis_reconnect_max_ms),
            ),
            command_timeout,
            retries: settings.redis_max_retries_per_request,
            idle_ttl: Duration::from_secs(settings.room_idle_ttl_secs),
            leeway_secs: settings.join_token_leeway_secs,
            replay_enabled: settings.feature_token_replay_protection,
            publish_limit: settings.redis_publish_buffer_bytes,
            pool,
            sharded: settings.redis_cluster,
            scripts: Scripts::new(),
            metrics,
            lane_tx,
            lane_rx: Mutex::new(Some(lane_rx)),
            lane_conn: Mutex::new(None),
            lane_bytes: AtomicUsize::new(0),
            lane_ops: AtomicUsize::new(0),
            pending_leaves: Mutex::new(Vec::new()),
            up: AtomicBool::new(false),
            ever_up: AtomicBool::new(false),
            rtt_us: AtomicU64::new(0),
            bridge: OnceLock::new(),
            log,
        })
    }

    pub fn set_bridge(&self, bridge: Recipient<LinkLost>) {
        let _ = self.bridge.set(bridge);
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Whether the link has been up at least once since start (readiness).
    pub fn ever_up(&self) -> bool {
        self.ever_up.load(Ordering::Acquire)
    }

    /// Last measured round trip to Redis.
    pub fn round_trip(&self) -> Duration {
        Duration::from_micros(self.rtt_us.load(Ordering::Relaxed))
    }

    pub fn set_round_trip(&self, rtt: Duration) {
        self.rtt_us.store(rtt.as_micros() as u64, Ordering::Relaxed);
        self.metrics.redis_roundtrip.set(rtt.as_secs_f64());
    }

    /// Called by the bridge once connected, subscribed and ready.
    pub fn set_up(&self, conn: Conn) {
        *self.lane_conn.lock().unwrap_or_else(|e| e.into_inner()) = Some(conn);
        self.up.store(true, Ordering::Release);
        self.ever_up.store(true, Ordering::Release);
        self.metrics.redis_up.set(1);
    }

    /// Marks the link down; true if it was up (the caller reports it).
    pub fn set_down(&self) -> bool {
        let was = self.up.swap(false, Ordering::AcqRel);
        self.metrics.redis_up.set(0);
        was
    }

    /// Reports a failure: the link goes down and the bridge reconnects.
    pub fn fail(&self, cause: String) {
        if self.set_down() {
            if let Some(b) = self.bridge.get() {
                b.do_send(LinkLost { cause });
            }
        }
    }

    /// Whether the lane has nothing queued or in flight (for shutdown).
    pub fn lane_idle(&self) -> bool {
        self.lane_ops.load(Ordering::Acquire) == 0
    }

    // ---- the publish lane -------------------------------------------------

    fn push(&self, cmd: redis::Cmd, bytes: usize, publish: bool, keys: &RoomKeys) {
        self.push_op(cmd, bytes, publish, keys, None);
    }

    fn push_op(
        &self,
        cmd: redis::Cmd,
        bytes: usize,
        publish: bool,
        keys: &RoomKeys,
        reply: Option<oneshot::Sender<redis::Value>>,
    ) {
        if !self.is_up() {
            return;
        }
        let queued = self.lane_bytes.fetch_add(bytes, Ordering::AcqRel) + bytes;
        if queued > self.publish_limit {
            self.lane_bytes.fetch_sub(bytes, Ordering::AcqRel);
            // Redis does not keep up: rather than grow without bound, the
            // link is declared lost, members are told (cluster_degraded)
            // and the bridge reconnects.
            self.fail("publish queue over REDIS_PUBLISH_BUFFER_BYTES".into());
            return;
        }
        self.lane_ops.fetch_add(1, Ordering::AcqRel);
        let group = if self.sharded {
            keys.channel.clone()
        } else {
            String::new()
        };
        let op = LaneOp {
            cmd,
            bytes,
            publish,
            group,
            reply,
        };
        gather(&self.lane_tx, op);
    }

    /// Publishes a payload on a room's channel (one PUBLISH per room
    /// message, whatever the number of recipients).
    pub fn publish(&self, keys: &RoomKeys, payload: &Bytes) {
        let mut cmd = redis::cmd(if self.sharded { "SPUBLISH" } else { "PUBLISH" });
        cmd.arg(&keys.channel).arg(&payload[..]);
        self.push(cmd, payload.len() + keys.channel.len(), true, keys);
    }

    /// A local member left: its presence goes and the other instances are
    /// told, in order behind its last messages. While the link is down the
    /// leave is remembered and announced on restore.
    pub fn leave(&self, keys: &RoomKeys, member: &str) {
        if !self.is_up() {
            self.pending_leaves
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(PendingLeave {
                    keys: keys.clone(),
                    member: member.into(),
                });
            return;
        }
        self.push_leave(keys, member);
    }

    fn push_leave(&self, keys: &RoomKeys, member: &str) {
        let field = self.keys.member_field(keys, member);
        let mut cmd = redis::cmd("HDEL");
        cmd.arg(&keys.members).arg(&field);
        self.push(cmd, 64, false, keys);
        self.publish(keys, &wire::left(self.node, member));
    }

    /// Announces on the lane the leaves remembered while the link was down.
    pub fn flush_pending_leaves(&self) {
        let pending = std::mem::take(
            &mut *self
                .pending_leaves
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for p in pending {
            self.push_leave(&p.keys, &p.member);
        }
    }

    /// Removes presence entries by field (stale entries of this instance:
    /// a member whose leave was lost with a failed batch, or whose join timed
    /// out after Redis had taken it).
    pub fn forget_fields(&self, keys: &RoomKeys, fields: &[String]) {
        if fields.is_empty() {
            return;
        }
        let mut cmd = redis::cmd("HDEL");
        cmd.arg(&keys.members).arg(fields);
        self.push(cmd, 64 * fields.len(), false, keys);
    }

    /// This instance has no member left in the room: its heartbeat there
    /// goes, in order behind its members' leaves (a later join puts it back).
    pub fn forget_room(&self, keys: &RoomKeys) {
        let mut cmd = redis::cmd("HDEL");
        cmd.arg(&keys.nodes).arg(&self.node_text);
        self.push(cmd, 64, false, keys);
    }

    /// Runs a command on the lane, in order with the room's traffic, and
    /// waits for its reply (for as long as a batch before it may take, and
    /// its own).
    async fn call(
        &self,
        keys: &RoomKeys,
        cmd: redis::Cmd,
        bytes: usize,
    ) -> Result<redis::Value, RedisError> {
        if !self.is_up() {
            return Err(RedisError::LinkDown);
        }
        let (tx, rx) = oneshot::channel();
        self.push_op(cmd, bytes, false, keys, Some(tx));
        let wait = self.command_timeout * 2;
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(_)) => Err(RedisError::Dropped),
            Err(_) => Err(RedisError::Timeout(wait)),
        }
    }

    fn presence_entry(&self, keys: &RoomKeys, member: &str) -> (String, String) {
        let field = self.keys.member_field(keys, member);
        let value = format!(
            "{}{}",
            self.node_text,
            self.keys.seal_member(keys, &field, member)
        );
        (field, value)
    }

    /// Takes the lane's receiver (once) for [`run_lane`].
    fn take_lane(&self) -> Option<LaneReceiver> {
        self.lane_rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    pub fn lane_connection(&self) -> Option<Conn> {
        self.lane_conn
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    // ---- request/response commands ---------------------------------------

    /// Runs `f` on a pooled connection under the command timeout, retrying
    /// up to `REDIS_MAX_RETRIES_PER_REQUEST` times on connection errors.
    async fn with_conn<T, F, Fut>(&self, mut f: F) -> Result<T, RedisError>
    where
        F: FnMut(super::conn::Pooled) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        if !self.is_up() {
            return Err(RedisError::LinkDown);
        }
        let mut attempt = 0;
        loop {
            let once = async {
                let conn = self.pool.get().await.map_err(RedisError::Pool)?;
                Ok::<T, RedisError>(f(conn).await?)
            };
            let result = match tokio::time::timeout(self.command_timeout, once).await {
                Ok(r) => r,
                Err(_) => Err(RedisError::Timeout(self.command_timeout)),
            };
            match result {
                Err(e) if e.is_retryable() && attempt < self.retries => attempt += 1,
                Err(e) => {
                    self.metrics.redis_errors.inc();
                    return Err(e);
                }
                ok => return ok,
            }
        }
    }

    /// Burns a `jti` cluster-wide until its token's `exp` (+ leeway): of
    /// concurrent presentations on any instances, exactly one is fresh.
    pub async fn burn(&self, jti: &str, exp: u64) -> Result<Burn, RedisError> {
        if !self.replay_enabled {
            return Ok(Burn::Fresh);
        }
        let key = self.keys.jti(jti);
        let until_ms = (exp + self.leeway_secs) * 1000;
        // A random value, so that a retry after a lost reply can tell its
        // own earlier success from another instance's.
        let nonce = crate::ids::new_request_id();
        self.with_conn(|mut conn| {
            let key = key.clone();
            let nonce = nonce.clone();
            async move {
                let set: Option<String> = redis::cmd("SET")
                    .arg(&key)
                    .arg(&nonce)
                    .arg("NX")
                    .arg("PXAT")
                    .arg(until_ms)
                    .query_async(&mut conn)
                    .await?;
                if set.is_some() {
                    return Ok(Burn::Fresh);
                }
                let held: Option<String> =
                    redis::cmd("GET").arg(&key).query_async(&mut conn).await?;
                Ok(if held.as_deref() == Some(nonce.as_str()) {
                    Burn::Fresh
                } else {
                    Burn::Replayed
                })
            }
        })
        .await
    }

    /// Records a room created through the API.
    pub async fn create_room(&self, room: &str) -> Result<(), RedisError> {
        let keys = self.keys.room(room);
        let ttl = self.idle_ttl.as_millis() as u64;
        self.with_conn(|mut conn| {
            let key = keys.exists.clone();
            async move {
                redis::cmd("SET")
                    .arg(&key)
                    .arg("1")
                    .arg("PX")
                    .arg(ttl)
                    .query_async::<()>(&mut conn)
                    .await
            }
        })
        .await
    }

    /// Whether a room exists: it has members on some instance, or was
    /// created or had members less than `ROOM_IDLE_TTL_SECS` ago.
    pub async fn room_exists(&self, room: &str) -> Result<bool, RedisError> {
        let keys = self.keys.room(room);
        self.with_conn(|mut conn| {
            let keys = keys.clone();
            async move {
                let n: u64 = redis::cmd("EXISTS")
                    .arg(&keys.exists)
                    .arg(&keys.members)
                    .query_async(&mut conn)
                    .await?;
                Ok(n > 0)
            }
        })
        .await
    }

    /// One event against a per-IP limit of `per_minute`, shared by every
    /// instance: `Ok(Err(wait))` when over it.
    pub async fn limit(
        &self,
        kind: &str,
        ip: &IpAddr,
        per_minute: u64,
    ) -> Result<Result<(), Duration>, RedisError> {
        let key = self.keys.limit(kind, ip);
        let wait_ms: u64 = self
            .with_conn(|mut conn| {
                let key = key.clone();
                async move {
                    self.scripts
                        .limit
                        .key(&key)
                        .arg(per_minute)
                        .arg(60_000u64)
                        .invoke_async(&mut conn)
                        .await
                }
            })
            .await?;
        Ok(if wait_ms == 0 {
            Ok(())
        } else {
            Err(Duration::from_millis(wait_ms))
        })
    }

    /// Takes a place in a room for `member`, atomically against
    /// `MAX_ROOM_MEMBERS` cluster-wide.
    pub async fn join(
        &self,
        keys: &RoomKeys,
        member: &str,
        max_members: usize,
    ) -> Result<Admission, RedisError> {
        let (field, value) = self.presence_entry(keys, member);
        let mut cmd = self.presence_script(&self.scripts.join, keys);
        cmd.arg(field).arg(value).arg(max_members);
        let reply: Vec<redis::Value> = redis::from_redis_value(self.call(keys, cmd, 256).await?)?;
        let mut it = reply.into_iter();
        match it.next() {
            Some(redis::Value::Int(1)) => {}
            _ => return Ok(Admission::Full),
        }
        Ok(Admission::Admitted(self.entries(keys, it)))
    }

    /// A presence script call with its keys and shared arguments (see
    /// [`super::scripts`]); the caller adds the script's own.
    fn presence_script(&self, source: &str, keys: &RoomKeys) -> redis::Cmd {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(source)
            .arg(3)
            .arg(&keys.members)
            .arg(&keys.nodes)
            .arg(&keys.exists)
            .arg(&self.node_text)
            .arg(self.timing.dead_after.as_millis() as u64)
            .arg(self.timing.key_ttl.as_millis() as u64)
            .arg(self.idle_ttl.as_millis() as u64);
        cmd
    }

    /// Decodes `field, value, ...` pairs; what does not decode is skipped.
    fn entries(&self, keys: &RoomKeys, mut it: impl Iterator<Item = redis::Value>) -> Vec<Entry> {
        let mut out = Vec::new();
        while let (Some(f), Some(v)) = (it.next(), it.next()) {
            let (Ok(f), Ok(v)) = (
                redis::from_redis_value::<String>(f),
                redis::from_redis_value::<String>(v),
            ) else {
                continue;
            };
            if let Some(entry) = self.open_entry(keys, f, &v) {
                out.push(entry);
            }
        }
        out
    }

    fn open_entry(&self, keys: &RoomKeys, field: String, value: &str) -> Option<Entry> {
        let (node, sealed) = value.split_at_checked(super::keys::NODE_TAG_LEN)?;
        let node = NodeTag::from_text(node)?;
        let member = self.keys.open_member(keys, &field, sealed)?;
        Some(Entry {
            field,
            member: member.into(),
            node,
        })
    }

    /// This instance's heartbeat in a room, which also writes its members'
    /// presence again; returns every member entry alive in the room. It runs
    /// on the lane, so it cannot overtake a leave of this instance's.
    pub async fn refresh<'a>(
        &self,
        keys: &RoomKeys,
        members: impl Iterator<Item = &'a str>,
    ) -> Result<Vec<Entry>, RedisError> {
        let pairs: Vec<(String, String)> = members.map(|m| self.presence_entry(keys, m)).collect();
        let mut cmd = self.presence_script(&self.scripts.refresh, keys);
        cmd.arg(pairs.len());
        for (f, v) in &pairs {
            cmd.arg(f).arg(v);
        }
        let reply: Vec<redis::Value> =
            redis::from_redis_value(self.call(keys, cmd, 256 + 64 * pairs.len()).await?)?;
        Ok(self.entries(keys, reply.into_iter()))
    }
}

thread_local! {
    /// Lane operations made on this thread since its current pass over its
    /// ready tasks began, per lane (one per instance; tests run several in
    /// one process): handed to the lane together when the pass ends.
    static GATHERED: std::cell::RefCell<Vec<(LaneSender, Vec<LaneOp>)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// The two sides of a lane: batches of operations, in order.
type LaneSender = mpsc::UnboundedSender<Vec<LaneOp>>;
type LaneReceiver = mpsc::UnboundedReceiver<Vec<LaneOp>>;

/// Queues `op` for the lane behind `tx` with the others this thread makes
/// in the same pass, so that the lane's thread is woken once per pass and
/// takes them as one batch, rather than woken by the first and handed the
/// rest in small pieces. One thread's operations keep their order; a room's
/// all come from its own thread.
fn gather(tx: &LaneSender, op: LaneOp) {
    let first = GATHERED.with_borrow_mut(|g| {
        let first = g.is_empty();
        match g.iter_mut().find(|(t, _)| t.same_channel(tx)) {
            Some((_, ops)) => ops.push(op),
            None => g.push((tx.clone(), vec![op])),
        }
        first
    });
    if !first {
        return;
    }
    if actix_rt::Arbiter::try_current().is_some() {
        // Runs after the tasks already ready on this thread.
        actix_rt::spawn(async { hand_over_gathered() });
    } else {
        // Not on an actix thread: nothing would run the task; at once.
        hand_over_gathered();
    }
}

fn hand_over_gathered() {
    for (tx, ops) in GATHERED.with_borrow_mut(std::mem::take) {
        // The lane ends only with the process; its ops then go unsent, as
        // they would have.
        let _ = tx.send(ops);
    }
}

/// Drains the publish lane: takes what is queued (up to [`LANE_BATCH`]
/// ops) into one pipeline, writes it on the lane connection, waits for the
/// replies, and goes on. One batch in flight at a time keeps the order;
/// batching keeps the system calls and Redis round trips per message low.
pub(crate) async fn run_lane(link: Arc<RedisLink>) {
    let Some(mut rx) = link.take_lane() else {
        return;
    };
    let mut batch: Vec<LaneOp> = Vec::with_capacity(LANE_BATCH);
    while let Some(first) = rx.recv().await {
        batch.extend(first);
        while batch.len() < LANE_BATCH {
            match rx.try_recv() {
                Ok(more) => batch.extend(more),
                Err(_) => break,
            }
        }
        let ops = batch.len();
        let bytes: usize = batch.iter().map(|op| op.bytes).sum();
        let conn = link.lane_connection();
        if let (true, Some(conn)) = (link.is_up(), conn) {
            let publishes = batch.iter().filter(|op| op.publish).count() as u64;
            let sent = send_batch(&link, conn, &mut batch);
            match tokio::time::timeout(link.command_timeout, sent).await {
                Ok(Ok(())) => link.metrics.redis_publishes.inc_by(publishes),
                Ok(Err(e)) => {
                    link.metrics.redis_errors.inc();
                    link.fail(format!("publish lane: {e}"));
                }
                Err(_) => {
                    link.metrics.redis_errors.inc();
                    link.fail(format!(
                        "publish lane: timed out after {:?}",
                        link.command_timeout
                    ));
                }
            }
        }
        // Dropped while the link is down: members have been told
        // (cluster_degraded) that messages may be missing.
        batch.clear();
        link.lane_bytes.fetch_sub(bytes, Ordering::AcqRel);
        link.lane_ops.fetch_sub(ops, Ordering::AcqRel);
    }
}

/// Writes one batch: one pipeline to a single Redis; to a Redis Cluster one
/// pipeline per room (a pipeline may touch one hash slot only), sent
/// together, each in order.
async fn send_batch(
    link: &RedisLink,
    conn: Conn,
    batch: &mut Vec<LaneOp>,
) -> redis::RedisResult<()> {
    if !link.sharded {
        return send_pipeline(conn, batch.drain(..)).await;
    }
    let mut groups: Vec<(String, Vec<LaneOp>)> = Vec::new();
    for op in batch.drain(..) {
        match groups.iter_mut().find(|(g, _)| *g == op.group) {
            Some((_, ops)) => ops.push(op),
            None => groups.push((op.group.clone(), vec![op])),
        }
    }
    let sends = groups
        .into_iter()
        .map(|(_, ops)| send_pipeline(conn.clone(), ops.into_iter()));
    futures_util::future::join_all(sends)
        .await
        .into_iter()
        .collect()
}

/// One pipeline; the replies that were asked for go to their callers (on an
/// error they get none, and see the link go down).
async fn send_pipeline(
    mut conn: Conn,
    ops: impl Iterator<Item = LaneOp>,
) -> redis::RedisResult<()> {
    let mut pipe = redis::pipe();
    let mut replies = Vec::new();
    for op in ops {
        pipe.add_command(op.cmd);
        match op.reply {
            Some(r) => replies.push(r),
            None => {
                pipe.ignore();
            }
        }
    }
    let values: Vec<redis::Value> = pipe.query_async(&mut conn).await?;
    for (reply, value) in replies.into_iter().zip(values) {
        let _ = reply.send(value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_notice_a_dead_one_within_the_presence_ttl() {
        let t = Timing::new(Duration::from_millis(15_000), Duration::from_secs(5));
        assert_eq!(t.heartbeat, Duration::from_millis(3_000));
        assert!(t.dead_after + t.heartbeat < Duration::from_millis(15_000));
        // Dead right after an outage: grace, then the next refresh.
        assert!(t.restore_grace + t.heartbeat < Duration::from_millis(15_000));
        // Others reconnect within 1.5 x the backoff cap after this one.
        assert!(t.restore_grace >= Duration::from_millis(7_500));
        assert!(t.key_ttl >= Duration::from_millis(60_000));
    }
}
