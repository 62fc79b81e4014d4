//! Cluster mode (PROTOCOL.md sections 6-7): instances sharing one Redis form
//! one relay. Each test runs its own `redis-server` and two in-process
//! instances pointed at it.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::*;
use crate::redis_server::*;

/// `PRESENCE_TTL_MS` in these tests.
pub const TTL: Duration = Duration::from_millis(1500);

/// Settings every cluster instance in these tests shares (with `REDIS_URL`).
pub const CLUSTER: &[(&str, &str)] = &[
    ("PRESENCE_TTL_MS", "1500"),
    ("REDIS_COMMAND_TIMEOUT_MS", "2000"),
    ("REDIS_CONNECT_TIMEOUT", "500"),
    ("REDIS_RECONNECT_MAX_MS", "300"),
    // The tests poll the probes and open many sessions from one address.
    ("HTTP_PROBE_LIMIT_PER_MIN", "100000"),
    ("MAX_CONNS_PER_IP", "1000"),
];

/// Slack on top of the time a promise is given in.
pub const SLACK: Duration = Duration::from_millis(1000);
/// How soon members hear that Redis is gone ("promptly, within ~2 s"; a
/// killed Redis closes its connections at once).
const DEGRADED_WITHIN: Duration = Duration::from_millis(2500);
/// Short windows in which nothing (more) must arrive.
const QUIET: Duration = Duration::from_millis(300);

/// An in-process instance of the cluster on `redis`, once it is ready (an
/// instance still connecting to Redis refuses joins, and a load balancer
/// would not send it any).
pub async fn instance(redis: &RedisServer, extra: &[(&str, &str)]) -> TestApp {
    instance_at(&redis.url(), extra).await
}

/// As [`instance`], with Redis at `url` (credentials, for one).
pub async fn instance_at(url: &str, extra: &[(&str, &str)]) -> TestApp {
    let mut pairs = vec![("REDIS_URL", url)];
    pairs.extend_from_slice(CLUSTER);
    pairs.extend_from_slice(extra);
    let app = spawn_app(&pairs).await;
    wait_until("the instance is ready", WAIT, async || {
        app.get("/ready").await.0 == 200
    })
    .await;
    app
}

/// Presents `token` on the instance at `port`: the welcome, or how the
/// session ended instead.
pub async fn try_join(port: u16, token: &str) -> (Client, Result<Value, End>) {
    let mut c = connect_to(port).await;
    c.send_json(json!({"type": "join", "token": token})).await;
    let outcome = c.frame_or_end().await;
    (c, outcome)
}

/// Joins `room` on the instance at `port`; the welcome must come.
pub async fn join_at(port: u16, room: &str) -> (Client, Value) {
    join_with(port, &token(room)).await
}

pub async fn join_with(port: u16, token: &str) -> (Client, Value) {
    let (c, outcome) = try_join(port, token).await;
    let welcome = outcome.unwrap_or_else(|end| panic!("join refused: {end:?}"));
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    (c, welcome)
}

/// A fresh room with one member joined on each of `ports`, in order. Each
/// welcome must list exactly the members before it, wherever they are, and
/// each earlier member must see `member_joined`, so the room is quiet when
/// this returns.
pub async fn room_across(ports: &[u16]) -> (String, Vec<(Client, String)>) {
    let room = unique("room");
    let members = join_across(&room, ports, Vec::new()).await;
    (room, members)
}

/// Joins one more member to `room` on each of `ports`, after `members`.
pub async fn join_across(
    room: &str,
    ports: &[u16],
    mut members: Vec<(Client, String)>,
) -> Vec<(Client, String)> {
    for &port in ports {
        let (c, w) = join_at(port, room).await;
        assert_eq!(w["room"], room);
        let id = w["member"].as_str().unwrap().to_owned();
        assert_eq!(
            listed(&w),
            sorted(members.iter().map(|(_, id)| id.clone())),
            "the welcome lists the members on every instance"
        );
        for (other, _) in members.iter_mut() {
            assert_eq!(other.recv_json().await, joined(&id));
        }
        members.push((c, id));
    }
    members
}

/// `members` as an array, for destructuring.
pub fn members<const N: usize>(m: Vec<(Client, String)>) -> [(Client, String); N] {
    m.try_into()
        .unwrap_or_else(|m: Vec<_>| panic!("{} members, want {N}", m.len()))
}

pub fn sorted(ids: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut v: Vec<String> = ids.into_iter().collect();
    v.sort();
    v
}

/// The `members` of a welcome, sorted.
pub fn listed(welcome: &Value) -> Vec<String> {
    sorted(serde_json::from_value::<Vec<String>>(welcome["members"].clone()).unwrap())
}

pub fn joined(id: &str) -> Value {
    json!({"type": "member_joined", "member": id})
}

pub fn left(id: &str) -> Value {
    json!({"type": "member_left", "member": id})
}

fn notice(code: &str) -> Value {
    json!({"type": "notice", "code": code})
}

/// The members `gone` (of an instance that is stopping cleanly) are closed
/// with 1012, and `watcher` (on another instance) hears that each left
/// within a second of `started`, long before any presence TTL.
pub async fn left_at_once_as_their_instance_stops(
    watcher: &mut Client,
    gone: [&mut Client; 2],
    ids: [String; 2],
    started: Instant,
) {
    let [g1, g2] = gone;
    let (announced, _, _) = tokio::join!(
        async {
            let ids = lefts(watcher, 2).await;
            (ids, started.elapsed())
        },
        g1.expect_close(1012, "service restart"),
        g2.expect_close(1012, "service restart"),
    );
    println!("member_left after a clean stop: {:?}", announced.1);
    assert_eq!(announced.0, sorted(ids));
    assert!(
        announced.1 < Duration::from_millis(1000),
        "member_left took {:?}",
        announced.1
    );
}

/// Reads `n` frames that must all be `member_left`; the ids, sorted.
pub async fn lefts(c: &mut Client, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let f = c.recv_json().await;
        assert_eq!(f["type"], "member_left", "{f}");
        ids.push(f["member"].as_str().unwrap().to_owned());
    }
    sorted(ids)
}

/// The next frame that is not a `notice` (members of a room with no other
/// instance may or may not be told about the cluster link).
async fn recv_past_notices(c: &mut Client) -> Value {
    loop {
        let f = c.recv_json().await;
        if f["type"] != "notice" {
            return f;
        }
    }
}

/// Asserts nothing but `notice` frames (and pings) arrives within `d`.
async fn expect_only_notices(c: &mut Client, d: Duration) {
    let deadline = tokio::time::Instant::now() + d;
    loop {
        match tokio::time::timeout_at(deadline, c.ws.next()).await {
            Err(_) => return,
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(Some(Ok(Message::Text(t)))) => {
                let f: Value = serde_json::from_str(&t).expect("JSON frame");
                assert_eq!(f["type"], "notice", "expected only notices, got {f}");
            }
            Ok(other) => panic!("expected only notices, got {other:?}"),
        }
    }
}

async fn json_get(app: &TestApp, path: &str) -> (u16, Value) {
    let (status, _, body) = app.get(path).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn retry_after(headers: &awc::http::header::HeaderMap) -> u64 {
    headers
        .get("retry-after")
        .expect("a Retry-After header")
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[actix_web::test]
async fn a_cluster_instance_reports_redis_up_in_ready_health_and_metrics() {
    let redis = RedisServer::start().await;
    // instance() waits for /ready to answer 200
    let a = instance(&redis, &[]).await;
    let (_, ready) = json_get(&a, "/ready").await;
    assert_eq!(ready["ready"], true);
    assert_eq!(
        ready["checks"],
        json!({"redis": true, "configLoaded": true})
    );
    let (status, health) = json_get(&a, "/health").await;
    assert_eq!(status, 200);
    assert_eq!(health["status"], "healthy", "{health}");
    assert_eq!(health["checks"]["redis"]["status"], "pass", "{health}");
    assert_eq!(a.metric("blindrelay_redis_up").await, 1.0);
}

#[actix_web::test]
async fn a_welcome_lists_the_members_on_every_instance() {
    let redis = RedisServer::start().await;
    let a = instance(&redis, &[]).await;
    let b = instance(&redis, &[]).await;
    // room_across checks every welcome against the members before it.
    let (_, mut m) = room_across(&[a.port, a.port, b.port, b.port, a.port]).await;
    for (c, _) in m.iter_mut() {
        c.expect_silence(QUIET).await;
    }
}

#[actix_web::test]
async fn joins_and_leaves_cross_instances() {
    let redis = RedisServer::start().await;
    let a = instance(&redis, &[]).await;
    let b = instance(&redis, &[]).await;
    let (room, m) = room_across(&[a.port, b.port, b.port]).await;
    let [(mut a1, a1_id), (mut b1, b1_id), (b2, b2_id)] = members(m);
    // a leave on B
    b1.send_json(json!({"type": "leave"})).await;
    b1.expect_close(1000, "leave").await;
    assert_eq!(a1.recv_json().await, left(&b1_id));
    // a dropped connection on B
    drop(b2);
    assert_eq!(a1.recv_json().await, left(&b2_id));
    a1.expect_silence(QUIET).await;
    // B no longer lists them
    let (_c, w) = join_at(b.port, &room).await;
    assert_eq!(listed(&w), vec![a1_id]);
    assert_eq!(a1.recv_json().await, joined(w["member"].as_str().unwrap()));
}

#[actix_web::test]
async fn a_broadcast_reaches_every_other_member_on_every_instance_exactly_once() {
    let redis = RedisServer::start().await;
    let a = instance(&redis, &[]).await;
    let b = instance(&redis, &[]).await;
    let (_, mut m) = room_across(&[a.port, a.port, b.port, b.port]).await;
    for sender in 0..m.len() {
        let from = m[sender].1.clone();
        let data = format!("from member {sender}");
        m[sender]
            .0
            .send_json(json!({"type": "send", "data": data, "id": format!("s{sender}")}))
            .await;
        assert_eq!(
            m[sender].0.recv_json().await,
            json!({"type": "ack", "id": format!("s{sender}")})
        );
        for (i, (c, _)) in m.iter_mut().enumerate() {
            if i != sender {
                assert_eq!(
                    c.recv_json().await,
                    json!({"type": "message", "from": from, "data": data})
                );
            }
        }
    }
    // no echo to the sender, no second copy anywhere
    for (c, _) in m.iter_mut() {
        c.expect_silence(QUIET).await;
    }
}

#[actix_web::test]
async fn instances_authenticate_to_a_redis_that_requires_a_password() {
    let redis = RedisServer::start().await;
    redis_cmd(
        &redis,
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("requirepass")
            .arg("s3cret-pw"),
    )
    .await;
    let port = redis.url().rsplit(':').next().unwrap().to_owned();
    // With the user named (Redis 6 ACL form) and with the password alone.
    let a = instance_at(&format!("redis://default:s3cret-pw@127.0.0.1:{port}"), &[]).await;
    let b = instance_at(&format!("redis://:s3cret-pw@127.0.0.1:{port}"), &[]).await;
    let (_, m) = room_across(&[a.port, b.port]).await;
    let [(mut a1, a1_id), (mut b1, b1_id)] = members(m);
    let data = "over an authenticated link";
    a1.send_json(json!({"type": "send", "data": data})).await;
    assert_eq!(
        b1.recv_json().await,
        json!({"type": "message", "from": a1_id, "data": data})
    );
    b1.send_json(json!({"type": "send", "data": data})).await;
    assert_eq!(
        a1.recv_json().await,
        json!({"type": "message", "from": b1_id, "data": data})
    );
}

#[actix_web::test]
async fn a_direct_message_crosses_instances_to_its_target_only() {
    let redis = RedisServer::start().await;
    let a = instance(&redis, &[]).await;
    let b = instance(&redis, &[]).await;
    let (_, m) = room_across(&[a.port, a.port, b.port, b.port]).await;
    let [(mut a1, a1_id), (mut a2, _), (mut b1, _), (mut b2, b2_id)] = members(m);
    a1.send_json(json!({"type": "send", "data": "dm", "to": b2_id, "id": "d1"}))
        .await;
    assert_eq!(a1.recv_json().await, json!({"type": "ack", "id": "d1"}));
    assert_eq!(
        b2.recv_json().await,
        json!({"type": "message", "from": a1_id, "data": "dm", "direct": true})
    );
    b2.send_json(json!({"type": "send", "data": "dm back", "to": a1_id}))
        .await;
    assert_eq!(
        a1.recv_json().await,
        json!({"type": "message", "from": b2_id, "data": "dm back", "direct": true})
    );
    for c in [&mut a1, &mut a2, &mut b1, &mut b2] {
        c.expect_silence(QUIET).await;
    }
}

#[actix_web::test]
async fn a_direct_message_to_nobody_in_a_cluster_room_is_an_unknown_member() {
    let redis = RedisServer::start().await;
    let a = instance(&redis, &[]).await;
    let b = instance(&redis, &[]).await;
    let (_, m) = room_across(&[a.port, b.port]).await;
    let [(mut a1, a1_id), (mut b1, b1_id)] = members(m);
    a1.send_json(json!({"type": "send", "data": "x", "to": "nobody", "id": "7"}))
        .await;
    let e = a1.recv_json().await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str(), e["id"].as_str()),
        (Some("error"), Some("unknown_member"), Some("7")),
        "{e}"
    );
    a1.send_json(json!({"type": "send", "data": "x", "to": a1_id, "id": "8"}))
        .await;
    let e = a1.recv_json().await;
    assert_eq!(
        (e["code"].as_str(), e["id"].as_str()),
        (Some("unknown_member"), Some("8")),
        "{e}"
    );
    b1.expect_silence(QUIET).await;
    // the session goes on
    a1.send_json(json!({"type": "send", "data": "y", "to": b1_id}))
        .await;
    assert_eq!(b1.recv_json().await["data"], "y");
}

#[actix_web::test]
async fn each_sender_s_messages_arrive_in_order_across_instances() {
    // 1,000 messages from each of two senders, on different instances.
    const N: usize = 1000;
    let redis = RedisServer::start().await;
    let limits = [("MAX_MSGS_PER_10S", "100000")];
    let a = instance(&redis, &limits).await;
    let b = instance(&redis, &limits).await;
    let (_, mut m) = room_across(&[a.port, b.port, a.port, b.port]).await;
    let senders = [m[0].1.clone(), m[1].1.clone()];
    for i in 0..N {
        for (c, _) in m[..2].iter_mut() {
            c.send_json(json!({"type": "send", "data": i.to_string()}))
                .await;
        }
    }
    for (r, (c, me)) in m.iter_mut().enumerate() {
        // a sender gets the other sender's messages, not its own
        let expected: Vec<&String> = senders.iter().filter(|s| *s != me).collect();
        let mut next = vec![0usize; expected.len()];
        for _ in 0..N * expected.len() {
            let f = c.recv_json().await;
            assert_eq!(f["type"], "message", "{f}");
            let from = expected
                .iter()
                .position(|s| f["from"] == s.as_str())
                .unwrap_or_else(|| panic!("member {r}: unexpected sender in {f}"));
            assert_eq!(
                f["data"],
                next[from].to_string(),
                "member {r}: out of order from sender {from}"
            );
            next[from] += 1;
        }
        c.expect_silence(QUIET).await;
    }
}

#[actix_web::test]
async fn one_token_presented_on_two_instances_at_once_admits_exactly_one() {
    let redis = RedisServer::start().await;
    let a = instance(&redis, &[]).await;
    let b = instance(&redis, &[]).await;
    for round in 0..30 {
        let room = unique("race");
        let t = token(&room);
        let (mut ca, mut cb) = tokio::join!(connect_to(a.port), connect_to(b.port));
        let join = json!({"type": "join", "token": t});
        tokio::join!(ca.send_json(join.clone()), cb.send_json(join));
        let (ra, rb) = tokio::join!(ca.frame_or_end(), cb.frame_or_end());
        let refused = Err(End::Closed(4409, "token already used".into()));
        match (&ra, &rb) {
            (Ok(w), r) | (r, Ok(w)) if w["type"] == "welcome" && *r == refused => {}
            _ => panic!("round {round}: want one welcome and one 4409, got {ra:?} and {rb:?}"),
        }
        ca.close().await;
        cb.close().await;
    }
}

#[actix_web::test]
async fn a_token_used_on_one_instance_is_refused_on_another() {
    let redis = RedisServer::start().await;
    let a = instance(&redis, &[]).await;
    let b = instance(&redis, &[]).await;
    let room = unique("room");
    let t = token(&room);
    let (mut first, _) = join_with(a.port, &t).await;
    for port in [b.port, a.port] {
        let (_c, outcome) = try_join(port, &t).await;
        assert_eq!(outcome, Err(End::Closed(4409, "token already used".into())));
    }
    first.expect_silence(QUIET).await;
}

#[actix_web::test]
async fn the_room_member_limit_holds_across_instances() {
    let redis = RedisServer::start().await;
    let limit = [("MAX_ROOM_MEMBERS", "2")];
    let a = instance(&redis, &limit).await;
    let b = instance(&redis, &limit).await;
    let (room, m) = room_across(&[a.port, b.port]).await;
    let [(mut a1, _), (mut b1, b1_id)] = members(m);
    for port in [a.port, b.port] {
        let (_c, outcome) = try_join(port, &token(&room)).await;
        assert_eq!(outcome, Err(End::Closed(4403, "room full".into())));
    }
    tokio::join!(a1.expect_silence(QUIET), b1.expect_silence(QUIET));
    // a place freed on B can be taken on A
    b1.send_json(json!({"type": "leave"})).await;
    b1.expect_close(1000, "leave").await;
    assert_eq!(a1.recv_json().await, left(&b1_id));
    let mut newcomer = None;
    wait_until(
        "the freed place can be taken",
        WAIT,
        async || match try_join(a.port, &token(&room)).await {
            (c, Ok(w)) => {
                newcomer = Some((c, w));
                true
            }
            (_, Err(End::Closed(4403, _))) => false,
            (_, other) => panic!("unexpected outcome {other:?}"),
        },
    )
    .await;
    let (_c, w) = newcomer.unwrap();
    assert_eq!(a1.recv_json().await, joined(w["member"].as_str().unwrap()));
}

#[actix_web::test]
async fn a_room_created_on_one_instance_mints_tokens_on_another() {
    let redis = RedisServer::start().await;
    let a = instance(&redis, &[]).await;
    let b = instance(&redis, &[]).await;
    let (status, _, created) = a.post("/v1/rooms").await;
    assert_eq!(status, 201);
    let room = created["room"].as_str().unwrap().to_owned();
    let (status, _, minted) = b.post(&format!("/v1/rooms/{room}/tokens")).await;
    assert_eq!(status, 201, "{minted}");
    let (_b1, w) = join_with(b.port, minted["token"].as_str().unwrap()).await;
    assert_eq!(w["room"], room.as_str());
    // the creator's own token joins on A, into the same room
    let (_a1, w2) = join_with(a.port, created["token"].as_str().unwrap()).await;
    assert_eq!(listed(&w2), vec![w["member"].as_str().unwrap().to_owned()]);
}

#[actix_web::test]
async fn an_unknown_room_is_404_and_a_room_that_had_members_exists_on_every_instance() {
    let redis = RedisServer::start().await;
    let a = instance(&redis, &[]).await;
    let b = instance(&redis, &[]).await;
    let unknown = unique("nosuchroom");
    for app in [&a, &b] {
        let (status, _, _) = app.post(&format!("/v1/rooms/{unknown}/tokens")).await;
        assert_eq!(status, 404);
    }
    // a room that only an application backend's token named
    let room = unique("backend");
    let (member, _) = join_at(a.port, &room).await;
    for app in [&a, &b] {
        let (status, _, _) = app.post(&format!("/v1/rooms/{room}/tokens")).await;
        assert_eq!(status, 201, "while it has a member");
    }
    member.close().await;
    // it stays until ROOM_IDLE_TTL_SECS (an hour) after its last member
    for app in [&b, &a] {
        let (status, _, _) = app.post(&format!("/v1/rooms/{room}/tokens")).await;
        assert_eq!(status, 201, "after its member left");
    }
}

#[actix_web::test]
async fn the_room_creation_limit_per_ip_is_shared_by_the_instances() {
    let redis = RedisServer::start().await;
    let limit = [("MAX_ROOM_CREATES_PER_IP_PER_MIN", "2")];
    let a = instance(&redis, &limit).await;
    let b = instance(&redis, &limit).await;
    assert_eq!(a.post("/v1/rooms").await.0, 201);
    assert_eq!(a.post("/v1/rooms").await.0, 201);
    let (status, headers, body) = b.post("/v1/rooms").await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    assert!((1..=60).contains(&retry_after(&headers)));
    assert_eq!(a.post("/v1/rooms").await.0, 429);
}

#[actix_web::test]
async fn the_token_mint_limit_per_ip_is_shared_by_the_instances() {
    let redis = RedisServer::start().await;
    let limit = [("MAX_TOKEN_MINTS_PER_IP_PER_MIN", "2")];
    let a = instance(&redis, &limit).await;
    let b = instance(&redis, &limit).await;
    let (_, _, created) = a.post("/v1/rooms").await;
    let path = format!("/v1/rooms/{}/tokens", created["room"].as_str().unwrap());
    assert_eq!(a.post(&path).await.0, 201);
    assert_eq!(b.post(&path).await.0, 201);
    let (status, headers, _) = b.post(&path).await;
    assert_eq!(status, 429);
    assert!((1..=60).contains(&retry_after(&headers)));
    assert_eq!(a.post(&path).await.0, 429);
}

#[actix_web::test]
async fn a_clean_shutdown_announces_the_instance_s_members_as_left_at_once() {
    let redis = RedisServer::start().await;
    // a TTL far above the promise, so that expiry cannot be what announces them
    let slow_ttl = [
        ("PRESENCE_TTL_MS", "10000"),
        ("SHUTDOWN_TIMEOUT_MS", "5000"),
    ];
    let a = instance(&redis, &slow_ttl).await;
    let b = instance(&redis, &slow_ttl).await;
    let (room, m) = room_across(&[a.port, b.port, b.port]).await;
    let [(mut a1, a1_id), (mut b1, b1_id), (mut b2, b2_id)] = members(m);
    let started = Instant::now();
    let handle = b.handle.clone();
    let shutdown = actix_rt::spawn(async move { handle.shutdown().await });
    left_at_once_as_their_instance_stops(&mut a1, [&mut b1, &mut b2], [b1_id, b2_id], started)
        .await;
    tokio::time::timeout(WAIT, shutdown)
        .await
        .expect("shutdown finishes")
        .unwrap();
    a1.expect_silence(QUIET).await;
    let (_c, w) = join_at(a.port, &room).await;
    assert_eq!(listed(&w), vec![a1_id]);
}

#[actix_web::test]
async fn losing_redis_degrades_the_cluster_and_its_return_restores_it_without_spurious_leaves() {
    let mut redis = RedisServer::start().await;
    let a = instance(&redis, &[]).await;
    let b = instance(&redis, &[]).await;
    let (room, span) = room_across(&[a.port, b.port]).await;
    let [(mut a1, a1_id), (mut b1, b1_id)] = members(span);
    let (_, local) = room_across(&[a.port, a.port]).await;
    let [(mut l1, l1_id), (mut l2, l2_id)] = members(local);

    redis.stop();
    let lost = Instant::now();
    let (na, nb) = tokio::join!(a1.recv_json(), b1.recv_json());
    println!("cluster_degraded after {:?}", lost.elapsed());
    assert_eq!(na, notice("cluster_degraded"));
    assert_eq!(nb, notice("cluster_degraded"));
    assert!(lost.elapsed() < DEGRADED_WITHIN, "{:?}", lost.elapsed());

    // local delivery goes on
    l1.send_json(json!({"type": "send", "data": "still here", "id": "l-1"}))
        .await;
    assert_eq!(
        recv_past_notices(&mut l1).await,
        json!({"type": "ack", "id": "l-1"})
    );
    assert_eq!(
        recv_past_notices(&mut l2).await,
        json!({"type": "message", "from": l1_id, "data": "still here"})
    );
    l2.send_json(json!({"type": "send", "data": "me too", "to": l1_id, "id": "l-2"}))
        .await;
    assert_eq!(
        recv_past_notices(&mut l2).await,
        json!({"type": "ack", "id": "l-2"})
    );
    assert_eq!(
        recv_past_notices(&mut l1).await,
        json!({"type": "message", "from": l2_id, "data": "me too", "direct": true})
    );

    // new joins fail closed, on either instance, in a known room or a new one
    for (port, r) in [(a.port, room.clone()), (b.port, unique("room"))] {
        let (_c, outcome) = try_join(port, &token(&r)).await;
        assert_eq!(outcome, Err(End::Closed(1013, "try again later".into())));
    }

    // the probes show it, without taking the instances out of service
    for app in [&a, &b] {
        wait_until("/ready shows redis down", WAIT, async || {
            let (status, ready) = json_get(app, "/ready").await;
            status == 200 && ready["checks"]["redis"] == false
        })
        .await;
        let (_, ready) = json_get(app, "/ready").await;
        assert_eq!(ready["ready"], true, "{ready}");
        let (status, health) = json_get(app, "/health").await;
        assert_eq!(status, 200, "{health}");
        assert_eq!(health["status"], "degraded", "{health}");
        assert!(
            health["checks"]["redis"]["status"].is_string()
                && health["checks"]["redis"]["status"] != "pass",
            "{health}"
        );
        wait_until("blindrelay_redis_up is 0", WAIT, async || {
            app.metric("blindrelay_redis_up").await == 0.0
        })
        .await;
    }

    redis.start_again().await;
    let back = Instant::now();
    let (ra, rb) = tokio::join!(a1.recv_json(), b1.recv_json());
    println!("cluster_restored after {:?}", back.elapsed());
    // nothing between the two notices: no member_left for members that stayed
    assert_eq!(ra, notice("cluster_restored"));
    assert_eq!(rb, notice("cluster_restored"));

    // cross-instance delivery works again
    a1.send_json(json!({"type": "send", "data": "after", "id": "x-1"}))
        .await;
    assert_eq!(a1.recv_json().await, json!({"type": "ack", "id": "x-1"}));
    assert_eq!(
        b1.recv_json().await,
        json!({"type": "message", "from": a1_id, "data": "after"})
    );
    b1.send_json(json!({"type": "send", "data": "back", "id": "x-2"}))
        .await;
    assert_eq!(b1.recv_json().await, json!({"type": "ack", "id": "x-2"}));
    assert_eq!(
        a1.recv_json().await,
        json!({"type": "message", "from": b1_id, "data": "back"})
    );

    for app in [&a, &b] {
        wait_until("/ready shows redis up", WAIT, async || {
            let (status, ready) = json_get(app, "/ready").await;
            status == 200 && ready["checks"]["redis"] == true
        })
        .await;
        wait_until("blindrelay_redis_up is 1", WAIT, async || {
            app.metric("blindrelay_redis_up").await == 1.0
        })
        .await;
    }

    // for a whole presence TTL after the return, nobody is announced as
    // having left or joined (the fresh Redis had no presence at first)
    tokio::join!(
        a1.expect_silence(TTL),
        b1.expect_silence(TTL),
        expect_only_notices(&mut l1, TTL),
        expect_only_notices(&mut l2, TTL),
    );

    // new joins work again and see the members on both instances
    let (_c1, w) = join_at(b.port, &room).await;
    let c1_id = w["member"].as_str().unwrap().to_owned();
    assert_eq!(listed(&w), sorted([a1_id.clone(), b1_id.clone()]));
    assert_eq!(a1.recv_json().await, joined(&c1_id));
    assert_eq!(b1.recv_json().await, joined(&c1_id));
    let (_c2, w) = join_at(a.port, &room).await;
    assert_eq!(listed(&w), sorted([a1_id, b1_id, c1_id]));
}

#[actix_web::test]
async fn instances_sharing_a_cluster_secret_stay_one_relay_through_a_token_key_rotation() {
    const NEW_SECRET: &str = "new-token-secret-0123456789abcdef0123456789";
    const CLUSTER_SECRET: &str = "cluster-secret-0123456789abcdef0123456789ab";
    let redis = RedisServer::start().await;
    // A already signs with the new key; B still has only the old one.
    let a = instance(
        &redis,
        &[
            ("JOIN_TOKEN_SECRET", NEW_SECRET),
            ("JOIN_TOKEN_SECRET_PREVIOUS", SECRET),
            ("CLUSTER_SECRET", CLUSTER_SECRET),
        ],
    )
    .await;
    let b = instance(&redis, &[("CLUSTER_SECRET", CLUSTER_SECRET)]).await;
    let (room, m) = room_across(&[a.port, b.port]).await;
    let [(mut a1, a1_id), (mut b1, b1_id)] = members(m);
    a1.send_json(json!({"type": "send", "data": "hi"})).await;
    assert_eq!(
        b1.recv_json().await,
        json!({"type": "message", "from": a1_id, "data": "hi"})
    );
    let new_token = sign(
        &json!({"room": room, "exp": now() + 300, "jti": unique("jti")}),
        NEW_SECRET,
        Algorithm::HS256,
    );
    let (_a2, w) = join_with(a.port, &new_token).await;
    assert_eq!(listed(&w), sorted([a1_id, b1_id]));
    assert_eq!(b1.recv_json().await, joined(w["member"].as_str().unwrap()));
}

/// Plain SHA-256 of `s` as raw bytes, hex and base64url (whole and cut to
/// 128 bits): what a name would hold if it were hashed without a key.
fn sha256_forms(s: &str) -> [Vec<u8>; 4] {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use sha2::{Digest, Sha256};
    let raw = Sha256::digest(s.as_bytes()).to_vec();
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let b64 = URL_SAFE_NO_PAD.encode(&raw).into_bytes();
    let b64_128 = URL_SAFE_NO_PAD.encode(&raw[..16]).into_bytes();
    [raw, hex.into_bytes(), b64, b64_128]
}

#[actix_web::test]
async fn redis_holds_no_room_id_member_id_token_jti_or_data_and_every_key_expires() {
    let redis = RedisServer::start().await;
    let (ia, ib) = (unique("instance-canary-a-"), unique("instance-canary-b-"));
    let a = instance(&redis, &[("INSTANCE_ID", &ia)]).await;
    let b = instance(&redis, &[("INSTANCE_ID", &ib)]).await;
    let mut frames: Vec<Value> = Vec::new();

    // a backend-named room, joined with a token the test signs
    let room = unique("ROOMCANARY");
    let jti = unique("JTICANARY");
    let data = unique("DATACANARY");
    let signed = sign(
        &json!({"room": room, "exp": now() + 300, "jti": jti}),
        SECRET,
        Algorithm::HS256,
    );
    let (a1, w) = join_with(a.port, &signed).await;
    let a1_id = w["member"].as_str().unwrap().to_owned();
    frames.push(w);
    let m = join_across(&room, &[b.port, a.port], vec![(a1, a1_id)]).await;
    let [(mut a1, a1_id), (mut b1, b1_id), (mut a2, a2_id)] = members(m);
    a1.send_json(json!({"type": "send", "data": data, "id": "c1"}))
        .await;
    frames.push(a1.recv_json().await);
    frames.push(b1.recv_json().await);
    frames.push(a2.recv_json().await);
    b1.send_json(json!({"type": "send", "data": data, "to": a1_id, "id": "c2"}))
        .await;
    frames.push(b1.recv_json().await);
    frames.push(a1.recv_json().await);
    assert!(frames.iter().any(|f| f["data"] == data.as_str()));

    // a room the server created on A, joined on B with a token minted on B
    let (status, _, created) = a.post("/v1/rooms").await;
    assert_eq!(status, 201);
    let croom = created["room"].as_str().unwrap().to_owned();
    let ctoken = created["token"].as_str().unwrap().to_owned();
    let (status, _, minted) = b.post(&format!("/v1/rooms/{croom}/tokens")).await;
    assert_eq!(status, 201);
    let mtoken = minted["token"].as_str().unwrap().to_owned();
    let (mut c1, w) = join_with(b.port, &mtoken).await;
    let c1_id = w["member"].as_str().unwrap().to_owned();
    frames.push(w);
    let (_c2, w) = join_with(a.port, &ctoken).await;
    let c2_id = w["member"].as_str().unwrap().to_owned();
    frames.push(w);
    frames.push(c1.recv_json().await);

    // everything is stored now, with every member still joined
    let stored = redis.dump().await;
    let channels = redis.channels().await;
    assert!(!stored.is_empty(), "cluster mode stores something in Redis");
    assert!(!channels.is_empty(), "instances subscribe to room channels");

    let mut needles: Vec<(String, Vec<u8>)> = vec![
        ("room id".into(), room.clone().into_bytes()),
        ("created room id".into(), croom.clone().into_bytes()),
        ("jti".into(), jti.clone().into_bytes()),
        ("data".into(), data.clone().into_bytes()),
        ("signed token".into(), signed.into_bytes()),
        ("created token".into(), ctoken.into_bytes()),
        ("minted token".into(), mtoken.into_bytes()),
        ("token secret".into(), SECRET.as_bytes().to_vec()),
    ];
    for id in [&a1_id, &b1_id, &a2_id, &c1_id, &c2_id] {
        needles.push(("member id".into(), id.clone().into_bytes()));
    }
    // names are keyed hashes: not a plain SHA-256 anyone could recompute
    for (what, s) in [
        ("room id", &room),
        ("created room id", &croom),
        ("jti", &jti),
    ] {
        for form in sha256_forms(s) {
            needles.push((format!("unkeyed SHA-256 of the {what}"), form));
        }
    }
    for key in &stored {
        for (what, needle) in &needles {
            assert!(
                !key.contains(needle),
                "{what} in Redis key {:?} ({}): {:?}",
                key.name(),
                key.kind,
                key.values
                    .iter()
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .collect::<Vec<_>>()
            );
        }
        assert!(
            key.pttl > 0,
            "Redis key {:?} ({}) has no TTL: PTTL {}",
            key.name(),
            key.kind,
            key.pttl
        );
    }
    for channel in &channels {
        for (what, needle) in &needles {
            assert!(
                !contains_bytes(channel, needle),
                "{what} in channel {:?}",
                String::from_utf8_lossy(channel)
            );
        }
    }

    // the instance id appears in /health, never in frames
    let (_, health) = json_get(&a, "/health").await;
    assert_eq!(health["instanceId"], ia.as_str());
    for f in &frames {
        let text = f.to_string();
        assert!(!text.contains(&ia) && !text.contains(&ib), "{text}");
    }
}

#[actix_web::test]
async fn a_redis_cluster_relays_across_instances_with_sharded_pub_sub() {
    let rc = RedisCluster::start().await;
    let urls = rc.urls();
    let mut apps = Vec::new();
    for _ in 0..2 {
        let mut pairs = vec![("REDIS_URL", urls.as_str()), ("REDIS_CLUSTER", "true")];
        pairs.extend_from_slice(CLUSTER);
        let app = spawn_app(&pairs).await;
        wait_until("the instance is ready", WAIT, async || {
            app.get("/ready").await.0 == 200
        })
        .await;
        apps.push(app);
    }
    let (a, b) = (apps[0].port, apps[1].port);
    // Several rooms, so that their hash slots fall on different shards.
    for _ in 0..6 {
        let (_room, m) = room_across(&[a, b, a]).await;
        let [(mut a1, id_a1), (mut b1, id_b1), (mut a2, _)] = members(m);
        a1.send_json(json!({"type": "send", "data": "over-the-shards", "id": "1"}))
            .await;
        assert_eq!(a1.recv_json().await, json!({"type": "ack", "id": "1"}));
        for c in [&mut b1, &mut a2] {
            assert_eq!(
                c.recv_json().await,
                json!({"type": "message", "from": id_a1, "data": "over-the-shards"})
            );
        }
        b1.send_json(json!({"type": "send", "data": "just-you", "to": id_a1}))
            .await;
        assert_eq!(
            a1.recv_json().await,
            json!({"type": "message", "from": id_b1, "data": "just-you", "direct": true})
        );
        a2.expect_silence(QUIET).await;
        b1.send_json(json!({"type": "leave"})).await;
        b1.expect_close(1000, "leave").await;
        assert_eq!(a1.recv_json().await, left(&id_b1));
        assert_eq!(a2.recv_json().await, left(&id_b1));
    }
    // Rooms are subscribed as sharded channels only.
    let (_room, _m) = room_across(&[a, b]).await;
    let counts = rc.channels_per_node().await;
    assert!(
        counts.iter().all(|(classic, _)| *classic == 0),
        "{counts:?}"
    );
    assert!(
        counts.iter().map(|(_, s)| s).sum::<usize>() >= 1,
        "{counts:?}"
    );
    // A token is single-use across the cluster too.
    let t = token(&unique("room"));
    let (_c, first) = try_join(a, &t).await;
    assert_eq!(first.unwrap()["type"], "welcome");
    let (_c, second) = try_join(b, &t).await;
    assert_eq!(
        second.unwrap_err(),
        End::Closed(4409, "token already used".into())
    );
}

/// Runs one command on the test's Redis.
async fn redis_cmd(redis: &RedisServer, cmd: &mut redis::Cmd) -> redis::Value {
    let mut con = redis.connection().await;
    cmd.query_async(&mut con).await.expect("a Redis command")
}

/// Reads frames until `want` has all been seen (in any order); notices
/// about the link are allowed in between, anything else fails the test.
async fn expect_frames(c: &mut Client, mut want: Vec<Value>, within: Duration) {
    let deadline = Instant::now() + within;
    while !want.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        let f = tokio::time::timeout(left, c.recv_json())
            .await
            .unwrap_or_else(|_| panic!("still waiting for {want:?}"));
        if let Some(i) = want.iter().position(|w| *w == f) {
            want.remove(i);
        } else {
            assert_eq!(f["type"], "notice", "unexpected frame {f}");
        }
    }
}

#[actix_web::test]
async fn a_leave_missed_while_the_subscriptions_were_cut_is_announced_after_the_restore() {
    let redis = RedisServer::start().await;
    let a = instance(&redis, &[]).await;
    let b = instance(&redis, &[]).await;
    let (room, m) = room_across(&[a.port, b.port, b.port]).await;
    let [(mut a1, a1_id), (mut b1, b1_id), (mut b2, b2_id)] = members(m);
    // Redis cuts every subscriber, as it does past its output buffer limit;
    // b1 leaves while the instances resubscribe.
    redis_cmd(
        &redis,
        redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub"),
    )
    .await;
    b1.send_json(json!({"type": "leave"})).await;
    b1.expect_close(1000, "leave").await;
    // Within the restore grace and a refresh, a1 hears of it.
    expect_frames(&mut a1, vec![left(&b1_id)], TTL * 3 + SLACK).await;
    // b2, who never left, is still in the room, both ways.
    a1.send_json(json!({"type": "send", "data": "still one room", "id": "x"}))
        .await;
    expect_frames(&mut a1, vec![json!({"type": "ack", "id": "x"})], WAIT).await;
    expect_frames(
        &mut b2,
        vec![
            left(&b1_id),
            json!({"type": "message", "from": a1_id, "data": "still one room"}),
        ],
        WAIT,
    )
    .await;
    let (_c, w) = join_at(a.port, &room).await;
    assert_eq!(listed(&w), sorted([a1_id, b2_id]));
}

#[actix_web::test]
async fn an_instance_taken_for_dead_by_mistake_comes_back_by_itself() {
    let redis = RedisServer::start().await;
    let a = instance(&redis, &[]).await;
    let b = instance(&redis, &[]).await;
    let (room, m) = room_across(&[a.port, b.port]).await;
    let [(mut a1, a1_id), (mut b1, b1_id)] = members(m);
    // Every heartbeat in Redis looks ancient: the next refresh takes the
    // other instance for dead and removes its members.
    let keys: Vec<String> =
        redis::from_redis_value(redis_cmd(&redis, redis::cmd("KEYS").arg("br:*:n")).await).unwrap();
    assert!(!keys.is_empty());
    for k in &keys {
        let fields: Vec<String> =
            redis::from_redis_value(redis_cmd(&redis, redis::cmd("HKEYS").arg(k)).await).unwrap();
        for f in fields {
            redis_cmd(&redis, redis::cmd("HSET").arg(k).arg(f).arg(1)).await;
        }
    }
    // Whoever was taken for dead writes its presence back with its next
    // heartbeat, and the other side learns it again: at worst a member_left
    // then a member_joined, never a member gone for good.
    let settle = TTL * 2 + SLACK;
    tokio::time::sleep(settle).await;
    let (_c, w) = join_at(a.port, &room).await;
    assert_eq!(listed(&w), sorted([a1_id.clone(), b1_id.clone()]));
    let new_id = w["member"].as_str().unwrap().to_owned();
    b1.send_json(json!({"type": "send", "data": "back", "to": a1_id, "id": "d"}))
        .await;
    loop {
        let f = b1.recv_json().await;
        if f == json!({"type": "ack", "id": "d"}) {
            break;
        }
        assert!(
            f == joined(&new_id) || f == left(&a1_id) || f == joined(&a1_id),
            "unexpected {f}"
        );
    }
    loop {
        let f = a1.recv_json().await;
        if f["type"] == "message" {
            assert_eq!(
                f,
                json!({"type": "message", "from": b1_id, "data": "back", "direct": true})
            );
            break;
        }
        assert!(
            f == joined(&new_id) || f == left(&b1_id) || f == joined(&b1_id),
            "unexpected {f}"
        );
    }
}

#[actix_web::test]
async fn repeated_link_losses_leave_one_subscription_per_instance_and_no_duplicates() {
    let redis = RedisServer::start().await;
    let a = instance(&redis, &[]).await;
    let b = instance(&redis, &[]).await;
    let (_room, m) = room_across(&[a.port, b.port]).await;
    let [(mut a1, a1_id), (mut b1, _)] = members(m);
    for round in 0..3 {
        redis_cmd(
            &redis,
            redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub"),
        )
        .await;
        expect_frames(
            &mut a1,
            vec![notice("cluster_degraded"), notice("cluster_restored")],
            WAIT,
        )
        .await;
        expect_frames(
            &mut b1,
            vec![notice("cluster_degraded"), notice("cluster_restored")],
            WAIT,
        )
        .await;
        let subscribers: String = redis::from_redis_value(
            redis_cmd(
                &redis,
                redis::cmd("CLIENT").arg("LIST").arg("TYPE").arg("pubsub"),
            )
            .await,
        )
        .unwrap();
        assert_eq!(
            subscribers.lines().count(),
            2,
            "round {round}: {subscribers}"
        );
        a1.send_json(json!({"type": "send", "data": format!("r{round}")}))
            .await;
        assert_eq!(
            b1.recv_json().await,
            json!({"type": "message", "from": a1_id, "data": format!("r{round}")})
        );
        b1.expect_silence(QUIET).await;
    }
}

#[actix_web::test]
async fn a_room_that_falls_behind_the_other_instances_tells_its_members_and_catches_up() {
    let redis = RedisServer::start().await;
    // The smallest backlog allowed: one maximal frame.
    let small = [
        ("MAX_MESSAGE_BYTES", "1024"),
        ("MAX_BYTES_PER_10S", "1000000"),
        ("MAX_MSGS_PER_10S", "100000"),
        ("REDIS_RECEIVE_BUFFER_BYTES", "5120"),
    ];
    let a = instance(&redis, &small).await;
    let b = instance(&redis, &small).await;
    let (room, m) = room_across(&[a.port, b.port]).await;
    let [(mut a1, _), (mut b1, b1_id)] = members(m);
    // A's room thread stops for a while; B's member keeps talking.
    let stall = Duration::from_millis(700);
    let stalled = {
        let h = a.handle.clone();
        let room = room.clone();
        actix_rt::spawn(async move { h.stall_room(&room, stall).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let data = "x".repeat(1000);
    for i in 0..20 {
        b1.send_json(json!({"type": "send", "data": format!("{i:02}{data}")}))
            .await;
    }
    assert!(stalled.await.unwrap());
    // a1 gets some of them, in order, then is told it missed some...
    let mut last = -1i64;
    loop {
        let f = a1.recv_json().await;
        if f == notice("cluster_degraded") {
            break;
        }
        assert_eq!(f["type"], "message", "{f}");
        let i: i64 = f["data"].as_str().unwrap()[..2].parse().unwrap();
        assert!(i > last, "in order");
        last = i;
    }
    assert!(last < 19, "some were dropped, or no notice was due");
    assert_eq!(a1.recv_json().await, notice("cluster_restored"));
    // ...and the room goes on.
    b1.send_json(json!({"type": "send", "data": "after", "id": "z"}))
        .await;
    assert_eq!(
        a1.recv_json().await,
        json!({"type": "message", "from": b1_id, "data": "after"})
    );
    assert!(a.metric("blindrelay_redis_errors_total").await >= 1.0);
}
