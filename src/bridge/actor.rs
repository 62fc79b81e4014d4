//! The bridge actor.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use redis::cluster_async::ClusterConnection;
use redis::{PushInfo, PushKind};
use tokio::sync::{mpsc, oneshot};

use super::messages::*;
use crate::cluster::conn::{connection_info, node_urls, Conn};
use crate::cluster::pubsub::{self, Publication};
use crate::cluster::redis::{run_lane, LinkLost, RedisLink};
use crate::cluster::wire;

/// First wait before reconnecting; it doubles up to `REDIS_RECONNECT_MAX_MS`.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Channels per SUBSCRIBE when resubscribing after a reconnect.
const SUBSCRIBE_CHUNK: usize = 1000;

/// How to reach Redis, from the settings.
#[derive(Clone)]
pub(crate) struct BridgeConfig {
    pub url: String,
    /// `REDIS_CLUSTER`: `url` lists seed nodes; pub/sub is sharded.
    pub cluster: bool,
    pub connect_timeout: Duration,
    pub reconnect_max: Duration,
    pub ready_check: bool,
    /// `REDIS_RECEIVE_BUFFER_BYTES`: a room's backlog of publications.
    pub receive_limit: usize,
}

enum SubOp {
    Subscribe(Vec<String>, oneshot::Sender<Result<(), String>>),
    Unsubscribe(String),
    /// Proves the subscription connection alive (a half-open connection
    /// would otherwise stop remote delivery without a word).
    Ping,
}

/// An item of one connection's subscription stream; `None` when that
/// connection has ended.
#[derive(Message)]
#[rtype(result = "()")]
struct Incoming {
    epoch: u64,
    msg: Option<Publication>,
}

/// Where SUBSCRIBE goes: the subscription connection of one Redis (our own
/// RESP2 reader, see [`pubsub`]), or (sharded, `SSUBSCRIBE`) a cluster
/// connection whose messages arrive as RESP3 pushes.
enum Subscriber {
    Single(pubsub::Sink),
    Cluster(ClusterConnection),
}

impl Subscriber {
    async fn subscribe(&mut self, channels: &[String]) -> redis::RedisResult<()> {
        match self {
            Subscriber::Single(s) => s.subscribe(channels).await.map_err(Into::into),
            Subscriber::Cluster(c) => c.ssubscribe(channels).await,
        }
    }

    async fn unsubscribe(&mut self, channel: &str) -> redis::RedisResult<()> {
        match self {
            Subscriber::Single(s) => s.unsubscribe(channel).await.map_err(Into::into),
            Subscriber::Cluster(c) => c.sunsubscribe(channel).await,
        }
    }

    async fn ping(&mut self) -> redis::RedisResult<()> {
        match self {
            Subscriber::Single(s) => s.ping().await.map_err(Into::into),
            Subscriber::Cluster(c) => {
                let cmd = redis::cmd("PING");
                cmd.query_async::<redis::Value>(c).await.map(|_| ())
            }
        }
    }
}

/// A connection attempt succeeded.
struct Connected {
    subscriber: Subscriber,
    /// Publications; ends when the subscription connection is lost.
    stream: BoxStream<'static, Publication>,
    conn: Conn,
}

/// A subscribed room.
struct Route {
    room: Recipient<FromBridge>,
    inbound: Arc<Inbound>,
}

pub(crate) struct RedisBridge {
    link: Arc<RedisLink>,
    config: BridgeConfig,
    /// Channel -> the room subscribed to it.
    routes: HashMap<String, Route>,
    /// Serialised SUBSCRIBE/UNSUBSCRIBE on the current connection.
    subs: Option<mpsc::UnboundedSender<SubOp>>,
    /// Bumped at each new connection, so that the end of an old one is not
    /// taken for the end of the current one.
    epoch: u64,
    connecting: bool,
    /// Ends the current subscription stream (dropping it closes its
    /// connection and its subscriptions).
    stream_cancel: Option<oneshot::Sender<()>>,
    /// The current connection's subscription stream has ended.
    stream_ended: bool,
    backoff: Duration,
    /// The link has been up before (a later up is a reconnect).
    was_up: bool,
    down_since: Option<Instant>,
    log: slog::Logger,
}

impl RedisBridge {
    pub fn new(link: Arc<RedisLink>, config: BridgeConfig) -> Self {
        let log = link.log.clone();
        RedisBridge {
            link,
            config,
            routes: HashMap::new(),
            subs: None,
            epoch: 0,
            connecting: false,
            stream_cancel: None,
            stream_ended: false,
            backoff: FIRST_BACKOFF,
            was_up: false,
            down_since: Some(Instant::now()),
            log,
        }
    }

    fn connect(&mut self, ctx: &mut Context<Self>) {
        if self.connecting {
            return;
        }
        self.connecting = true;
        let link = self.link.clone();
        let config = self.config.clone();
        ctx.spawn(
            async move { connect(&link, &config).await }
                .into_actor(self)
                .map(|res, act, ctx| match res {
                    Ok(c) => act.connected(c, ctx),
                    Err(e) => {
                        act.connecting = false;
                        let wait = jitter(act.backoff);
                        act.backoff = (act.backoff * 2).min(act.config.reconnect_max);
                        slog::warn!(act.log, "cannot reach Redis; retrying";
                            "error" => %e, "retry_in_ms" => wait.as_millis() as u64);
                        ctx.run_later(wait, |act, ctx| act.connect(ctx));
                    }
                }),
        );
    }

    fn connected(&mut self, c: Connected, ctx: &mut Context<Self>) {
        self.epoch += 1;
        let epoch = self.epoch;
        let (tx, rx) = mpsc::unbounded_channel();
        actix_rt::spawn(run_subscriptions(self.link.clone(), c.subscriber, rx));
        self.subs = Some(tx.clone());
        let (cancel, cancelled) = oneshot::channel();
        self.stream_cancel = Some(cancel);
        self.stream_ended = false;
        let stream = c
            .stream
            .take_until(cancelled)
            .map(move |m| Incoming {
                epoch,
                msg: Some(m),
            })
            .chain(futures_util::stream::once(async move {
                Incoming { epoch, msg: None }
            }));
        ctx.add_message_stream(stream);
        // Every active room's channel, before anyone is told the link is up.
        let channels: Vec<String> = self.routes.keys().cloned().collect();
        let resubscribed = async move {
            for chunk in channels.chunks(SUBSCRIBE_CHUNK) {
                let (reply, done) = oneshot::channel();
                tx.send(SubOp::Subscribe(chunk.to_vec(), reply))
                    .map_err(|_| "subscription task ended".to_owned())?;
                done.await
                    .map_err(|_| "subscription task ended".to_owned())??;
            }
            Ok::<(), String>(())
        };
        let conn = c.conn;
        ctx.spawn(resubscribed.into_actor(self).map(move |res, act, ctx| {
            act.connecting = false;
            if act.epoch != epoch {
                return;
            }
            let res = if act.stream_ended {
                Err("the subscription connection closed while resubscribing".to_owned())
            } else {
                res
            };
            if let Err(e) = res {
                slog::warn!(act.log, "resubscribing after connecting failed"; "error" => %e);
                act.subs = None;
                act.stream_cancel = None;
                let wait = jitter(act.backoff);
                ctx.run_later(wait, |act, ctx| act.connect(ctx));
                return;
            }
            act.link.set_up(conn);
            act.link.flush_pending_leaves();
            act.backoff = FIRST_BACKOFF;
            let outage = act.down_since.take().map(|t| t.elapsed());
            if act.was_up {
                act.link.metrics.redis_reconnects.inc();
                slog::info!(act.log, "cluster link restored";
                    "rooms" => act.routes.len(),
                    "outage_ms" => outage.map(|d| d.as_millis() as u64).unwrap_or(0));
            } else {
                slog::info!(act.log, "cluster link up"; "rooms" => act.routes.len());
            }
            act.was_up = true;
            for route in act.routes.values() {
                route.room.do_send(FromBridge::Up);
            }
        }));
    }

    fn lost(&mut self, cause: &str, ctx: &mut Context<Self>) {
        // `fail` has already flipped the flag when it came from elsewhere.
        self.link.set_down();
        if self.down_since.is_some() {
            // Already down: a reconnect is under way.
            return;
        }
        slog::warn!(self.log, "cluster link lost; local rooms keep relaying"; "cause" => cause);
        self.subs = None;
        self.stream_cancel = None;
        self.down_since = Some(Instant::now());
        for route in self.routes.values() {
            route.room.do_send(FromBridge::Down);
        }
        let wait = jitter(FIRST_BACKOFF);
        self.backoff = FIRST_BACKOFF * 2;
        ctx.run_later(wait, |act, ctx| act.connect(ctx));
    }

    /// Measures the round trip, and notices a Redis that stopped answering
    /// even though its connections look open.
    fn heartbeat(&mut self, ctx: &mut Context<Self>) {
        if !self.link.is_up() {
            return;
        }
        if let Some(subs) = &self.subs {
            let _ = subs.send(SubOp::Ping);
        }
        let link = self.link.clone();
        ctx.spawn(
            async move {
                let Some(mut conn) = link.lane_connection() else {
                    return;
                };
                let start = Instant::now();
                let cmd = redis::cmd("PING");
                let ping = cmd.query_async::<redis::Value>(&mut conn);
                match tokio::time::timeout(link.command_timeout, ping).await {
                    Ok(Ok(_)) => link.set_round_trip(start.elapsed()),
                    Ok(Err(e)) => link.fail(format!("heartbeat: {e}")),
                    Err(_) => link.fail(format!(
                        "heartbeat: no answer within {:?}",
                        link.command_timeout
                    )),
                }
            }
            .into_actor(self),
        );
    }
}

/// Between 50 % and 150 % of `d`, so that instances do not reconnect in step.
fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 2];
    let _ = getrandom::fill(&mut b);
    let f = 0.5 + f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX);
    d.mul_f64(f)
}

async fn connect(link: &RedisLink, config: &BridgeConfig) -> Result<Connected, String> {
    let attempt = async {
        if config.cluster {
            connect_cluster(link, config).await
        } else {
            connect_single(link, config).await
        }
    };
    match tokio::time::timeout(config.connect_timeout + link.command_timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!("no connection within {:?}", config.connect_timeout)),
    }
}

async fn connect_single(link: &RedisLink, config: &BridgeConfig) -> Result<Connected, String> {
    let info = connection_info(&config.url).map_err(|e| e.to_string())?;
    let client = redis::Client::open(info).map_err(|e| e.to_string())?;
    let cfg = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(config.connect_timeout))
        .set_response_timeout(Some(link.command_timeout));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await
        .map_err(|e| e.to_string())?;
    if config.ready_check {
        // A Redis still loading its dataset answers LOADING to commands.
        let mut info = redis::cmd("INFO");
        info.arg("persistence");
        check_ready(&mut conn, info, "loading:0", "Redis is loading its dataset").await?;
    }
    // Own publications (Redis sends them back to the subscriber) are
    // dropped by the reader, before any copy or actor message.
    let (sink, stream) = pubsub::connect(client.get_connection_info(), link.node)
        .await
        .map_err(|e| format!("subscription connection: {e}"))?;
    Ok(Connected {
        subscriber: Subscriber::Single(sink),
        stream,
        conn: Conn::Single(conn),
    })
}

async fn connect_cluster(link: &RedisLink, config: &BridgeConfig) -> Result<Connected, String> {
    let nodes = node_urls(&config.url, true)
        .iter()
        .map(|u| connection_info(u))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let build = |pushes: Option<mpsc::UnboundedSender<PushInfo>>| {
        let mut b = redis::cluster::ClusterClientBuilder::new(nodes.clone())
            .connection_timeout(config.connect_timeout)
            .response_timeout(link.command_timeout);
        if let Some(tx) = pushes {
            b = b
                .use_protocol(redis::ProtocolVersion::RESP3)
                .push_sender(tx);
        }
        b.build().map_err(|e| e.to_string())
    };
    let mut conn = build(None)?
        .get_async_connection()
        .await
        .map_err(|e| e.to_string())?;
    if config.ready_check {
        let mut info = redis::cmd("CLUSTER");
        info.arg("INFO");
        check_ready(
            &mut conn,
            info,
            "cluster_state:ok",
            "the Redis Cluster is not in state ok",
        )
        .await?;
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let sub = build(Some(tx))?
        .get_async_connection()
        .await
        .map_err(|e| e.to_string())?;
    // Sharded messages arrive as pushes; a lost node connection as a
    // Disconnection push, which ends the stream (the bridge reconnects and
    // resubscribes everything, as for a single Redis).
    let own = link.node;
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let push = rx.recv().await?;
        match push.kind {
            PushKind::Disconnection => None,
            _ => Some((sharded_message(push), rx)),
        }
    })
    .filter_map(move |m| {
        let theirs = m.filter(|p| wire::origin(&p.payload).is_some_and(|o| o != own));
        futures_util::future::ready(theirs)
    })
    .boxed();
    Ok(Connected {
        subscriber: Subscriber::Cluster(sub),
        stream,
        conn: Conn::Cluster(conn),
    })
}

/// `REDIS_ENABLE_READY_CHECK`: the answer to `info` must have the line
/// `want`, or the connection does not count yet.
async fn check_ready(
    conn: &mut impl redis::aio::ConnectionLike,
    info: redis::Cmd,
    want: &str,
    not_ready: &str,
) -> Result<(), String> {
    let text: String = info.query_async(conn).await.map_err(|e| e.to_string())?;
    if text.lines().any(|l| l.trim() == want) {
        Ok(())
    } else {
        Err(not_ready.to_owned())
    }
}

/// The channel and payload of an `smessage` push; `None` for any other push
/// (subscription confirmations).
fn sharded_message(push: PushInfo) -> Option<Publication> {
    if push.kind != PushKind::SMessage {
        return None;
    }
    let mut data = push.data.into_iter();
    let channel = match data.next()? {
        redis::Value::BulkString(b) => String::from_utf8(b).ok()?,
        _ => return None,
    };
    let payload = match data.next()? {
        redis::Value::BulkString(b) => Bytes::from(b),
        _ => return None,
    };
    Some(Publication { channel, payload })
}

/// Runs SUBSCRIBE/UNSUBSCRIBE one at a time, in the order asked, on one
/// subscription connection: an unsubscribe and a later subscribe of the same
/// channel cannot be swapped.
async fn run_subscriptions(
    link: Arc<RedisLink>,
    mut sink: Subscriber,
    mut ops: mpsc::UnboundedReceiver<SubOp>,
) {
    let timeout = link.command_timeout;
    while let Some(op) = ops.recv().await {
        let (result, reply) = match op {
            SubOp::Subscribe(channels, reply) => (
                tokio::time::timeout(timeout, sink.subscribe(&channels)).await,
                Some(reply),
            ),
            SubOp::Unsubscribe(channel) => (
                tokio::time::timeout(timeout, sink.unsubscribe(&channel)).await,
                None,
            ),
            SubOp::Ping => (tokio::time::timeout(timeout, sink.ping()).await, None),
        };
        let result = match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {timeout:?}")),
        };
        let failed = result.is_err();
        if let Err(e) = &result {
            link.fail(format!("subscription: {e}"));
        }
        if let Some(reply) = reply {
            let _ = reply.send(result);
        }
        if failed {
            // The link is lost and a new connection will get its own task;
            // this one must not fail that link too with a late error.
            // Operations still queued see the channel close and answer
            // "down".
            return;
        }
    }
}

impl Actor for RedisBridge {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        actix_rt::spawn(run_lane(self.link.clone()));
        self.link.set_bridge(ctx.address().recipient());
        self.connect(ctx);
        ctx.run_interval(self.link.timing.heartbeat, |act, ctx| act.heartbeat(ctx));
    }
}

impl Handler<Subscribe> for RedisBridge {
    type Result = ResponseActFuture<Self, Result<(), SubscribeFailed>>;

    fn handle(&mut self, msg: Subscribe, _: &mut Self::Context) -> Self::Result {
        let down = || SubscribeFailed("the cluster link is down".into());
        let subs = match self.subs.clone().filter(|_| self.link.is_up()) {
            Some(subs) => subs,
            None => return Box::pin(actix::fut::ready(Err(down()))),
        };
        let channel = msg.channel.clone();
        let room = msg.room.clone();
        self.routes.insert(
            msg.channel.clone(),
            Route {
                room: msg.room,
                inbound: msg.inbound,
            },
        );
        let subscribe = async move {
            let (reply, done) = oneshot::channel();
            subs.send(SubOp::Subscribe(vec![msg.channel], reply))
                .map_err(|_| down())?;
            done.await.map_err(|_| down())?.map_err(SubscribeFailed)
        };
        Box::pin(subscribe.into_actor(self).map(move |res, act, _| {
            // A failed subscribe leaves no route behind: the room rolls the
            // join back and is retired.
            if res.is_err() && act.routes.get(&channel).is_some_and(|r| r.room == room) {
                act.routes.remove(&channel);
            }
            res
        }))
    }
}

impl Handler<Unsubscribe> for RedisBridge {
    type Result = ();

    fn handle(&mut self, msg: Unsubscribe, _: &mut Self::Context) {
        if self
            .routes
            .get(&msg.channel)
            .is_none_or(|r| r.room != msg.room)
        {
            return;
        }
        self.routes.remove(&msg.channel);
        if let Some(subs) = &self.subs {
            let _ = subs.send(SubOp::Unsubscribe(msg.channel));
        }
    }
}

impl Handler<LinkLost> for RedisBridge {
    type Result = ();

    fn handle(&mut self, msg: LinkLost, ctx: &mut Self::Context) {
        self.lost(&msg.cause, ctx);
    }
}

impl Handler<Incoming> for RedisBridge {
    type Result = ();

    fn handle(&mut self, msg: Incoming, ctx: &mut Self::Context) {
        if msg.epoch != self.epoch {
            return;
        }
        let Some(m) = msg.msg else {
            // Redis closed the subscription (restart, or its output buffer
            // limit for a subscriber that fell behind).
            self.stream_ended = true;
            self.lost("the subscription connection closed", ctx);
            return;
        };
        let Some(route) = self.routes.get(&m.channel) else {
            return;
        };
        let len = m.payload.len();
        let Some(event) = wire::decode(m.payload) else {
            return;
        };
        self.link.metrics.cluster_received.inc();
        let inbound = &route.inbound;
        if inbound.overflowed.load(Ordering::Acquire) {
            return; // dropped: the room will tell its members
        }
        if inbound.bytes.load(Ordering::Acquire) + len > self.config.receive_limit {
            inbound.overflowed.store(true, Ordering::Release);
            self.link.metrics.redis_errors.inc();
            slog::warn!(self.log, "a room fell behind its publications; dropping until it catches up";
                "limit_bytes" => self.config.receive_limit);
            route.room.do_send(FromBridge::Overflow);
            return;
        }
        inbound.bytes.fetch_add(len, Ordering::AcqRel);
        route.room.do_send(FromBridge::Event(event, len));
    }
}
