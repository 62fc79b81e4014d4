//! Room supervision and cleanup, and graceful shutdown.

use std::time::Duration;

use serde_json::json;

use crate::helpers::*;

#[actix_web::test]
async fn a_failed_room_is_restarted_with_its_members_and_no_other_room_notices() {
    let app = spawn_app(&[]).await;
    let (room, mut m) = app.room_of(2).await;
    let (_, mut other) = app.room_of(2).await;
    assert!(app.handle.fail_room(&room).await);
    // the restarted room still knows both members
    m[0].0
        .send_json(json!({"type": "send", "data": "after restart", "id": "1"}))
        .await;
    assert_eq!(m[0].0.recv_json().await, json!({"type": "ack", "id": "1"}));
    assert_eq!(m[1].0.recv_json().await["data"], "after restart");
    let to = m[0].1.clone();
    m[1].0
        .send_json(json!({"type": "send", "data": "back", "to": to}))
        .await;
    assert_eq!(m[0].0.recv_json().await["direct"], true);
    // no member_left/joined went out for the restart
    m[1].0.expect_silence(Duration::from_millis(100)).await;
    other[0]
        .0
        .send_json(json!({"type": "send", "data": "unaffected"}))
        .await;
    assert_eq!(other[1].0.recv_json().await["data"], "unaffected");
    assert_eq!(app.metric("blindrelay_room_restarts_total").await, 1.0);
    assert!(app.logs.text().contains("room actor restarted"));
}

#[actix_web::test]
async fn a_room_that_fails_on_a_send_from_its_own_thread_is_restarted_with_its_members() {
    // Members of a small room run on the room's thread and hand their sends
    // to it by a direct call, not through its mailbox: a failure there is
    // still this room's alone, and its supervisor restarts it.
    let app = spawn_app(&[]).await;
    let (room, mut m) = app.room_of(2).await;
    assert!(app.handle.fail_next_send(&room).await);
    m[0].0
        .send_json(json!({"type": "send", "data": "lost with the failure", "id": "1"}))
        .await;
    let deadline = std::time::Instant::now() + WAIT;
    while app.metric("blindrelay_room_restarts_total").await != 1.0 {
        assert!(std::time::Instant::now() < deadline, "room never restarted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    m[0].0
        .send_json(json!({"type": "send", "data": "after restart", "id": "2"}))
        .await;
    assert_eq!(m[0].0.recv_json().await, json!({"type": "ack", "id": "2"}));
    assert_eq!(m[1].0.recv_json().await["data"], "after restart");
    // no member_left/joined went out for the restart
    m[1].0.expect_silence(Duration::from_millis(100)).await;
    assert!(app.logs.text().contains("room actor restarted"));
}

#[actix_web::test]
async fn a_room_is_retired_when_its_last_member_leaves() {
    let app = spawn_app(&[]).await;
    let (room, m) = app.room_of(2).await;
    assert_eq!(app.metric("blindrelay_rooms_active").await, 1.0);
    for (c, _) in m {
        c.close().await;
    }
    let deadline = std::time::Instant::now() + WAIT;
    while app.metric("blindrelay_rooms_active").await != 0.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "room actor never stopped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // joining again brings up a fresh room with nobody in it
    let (_c, w) = app.join(&room).await;
    assert_eq!(w["members"], json!([]));
}

#[actix_web::test]
async fn graceful_shutdown_closes_every_session_with_1012_and_refuses_new_ones() {
    let app = spawn_app(&[("SHUTDOWN_TIMEOUT_MS", "3000")]).await;
    let (_, mut m) = app.room_of(2).await;
    let mut idle = app.connect().await;
    let handle = app.handle.clone();
    let shutdown = actix_rt::spawn(async move { handle.shutdown().await });
    for (c, _) in m.iter_mut() {
        c.expect_close(1012, "service restart").await;
    }
    idle.expect_close(1012, "service restart").await;
    tokio::time::timeout(WAIT, shutdown)
        .await
        .expect("shutdown finishes")
        .unwrap();
    assert!(
        tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/v1/ws", app.port))
            .await
            .is_err(),
        "the server no longer listens after shutdown"
    );
    assert!(app.logs.text().contains("shutting down"));
}

#[actix_web::test]
async fn a_drain_spreads_its_closes_over_the_window_in_batches() {
    let app = spawn_app(&[
        ("SHUTDOWN_TIMEOUT_MS", "5000"),
        ("DRAIN_SPREAD_MS", "1500"),
        ("DRAIN_MIN_BATCH", "5"),
        ("MAX_CONNS_PER_IP", "1000"),
    ])
    .await;
    let mut clients = Vec::new();
    for _ in 0..60 {
        clients.push(app.join(&unique("r")).await.0);
    }
    let started = std::time::Instant::now();
    let handle = app.handle.clone();
    let shutdown = actix_rt::spawn(async move { handle.shutdown().await });
    let waits: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            actix_rt::spawn(async move {
                c.expect_close(1012, "service restart").await;
                started.elapsed()
            })
        })
        .collect();
    let mut at = Vec::new();
    for w in waits {
        at.push(w.await.unwrap());
    }
    tokio::time::timeout(WAIT, shutdown)
        .await
        .expect("shutdown finishes")
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(5000),
        "exits within SHUTDOWN_TIMEOUT_MS"
    );
    at.sort();
    // 60 sessions over 1.5 s in batches of at least 5, one per 100 ms step:
    // 12 batches over about 1.1 s, never everyone at once.
    let span = at[at.len() - 1] - at[0];
    assert!(
        span >= Duration::from_millis(700),
        "closes spread over {span:?}"
    );
    let densest = (0..at.len())
        .map(|i| {
            at[i..]
                .iter()
                .take_while(|t| **t - at[i] < Duration::from_millis(40))
                .count()
        })
        .max()
        .unwrap();
    assert!(densest <= 20, "{densest} closes within 40 ms: {at:?}");
    assert!(app.logs.text().contains("draining"));
}

#[actix_web::test]
async fn what_was_accepted_before_the_drain_is_delivered_before_the_1012() {
    let app = spawn_app(&[("SHUTDOWN_TIMEOUT_MS", "3000")]).await;
    let (_, mut m) = app.room_of(3).await;
    for i in 0..20 {
        m[0].0
            .send_json(json!({"type": "send", "data": format!("m{i}"), "id": format!("{i}")}))
            .await;
    }
    for i in 0..20 {
        assert_eq!(
            m[0].0.recv_json().await,
            json!({"type": "ack", "id": format!("{i}")})
        );
    }
    // Accepted, and not yet read by the others: the drain comes now.
    app.handle.begin_drain();
    for (c, _) in m.iter_mut().skip(1) {
        for i in 0..20 {
            assert_eq!(c.recv_json().await["data"], format!("m{i}"));
        }
        c.expect_close(1012, "service restart").await;
    }
    m[0].0.expect_close(1012, "service restart").await;
}

#[actix_web::test]
async fn a_join_sent_while_draining_is_closed_with_1012_at_once() {
    // A long window: the sessions would otherwise wait their turn.
    let app = spawn_app(&[
        ("SHUTDOWN_TIMEOUT_MS", "30000"),
        ("DRAIN_SPREAD_MS", "20000"),
        ("DRAIN_MIN_BATCH", "1"),
    ])
    .await;
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(app.connect().await);
    }
    app.handle.begin_drain();
    let started = std::time::Instant::now();
    for c in idle.iter_mut() {
        c.send_json(json!({"type": "join", "token": token(&unique("r"))}))
            .await;
    }
    for c in idle.iter_mut() {
        c.expect_close(1012, "service restart").await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "refused at the join, not at the end of the window"
    );
    assert_eq!(app.metric("blindrelay_draining").await, 1.0);
}

#[actix_web::test]
async fn while_draining_ready_is_503_and_upgrades_get_503() {
    // Draining without stopping the server, so the probes can be asked.
    let app = spawn_app(&[("SHUTDOWN_TIMEOUT_MS", "2000")]).await;
    let (_c, _) = app.join(&unique("r")).await;
    app.handle.begin_drain();
    let (status, _, body) = app.get("/ready").await;
    assert_eq!(status, 503);
    assert!(body.contains("\"ready\":false"));
    let (status, headers) = app.refused_upgrade().await;
    assert_eq!(status, 503);
    assert!(headers.contains_key("retry-after"));
    assert_eq!(
        app.metric(r#"blindrelay_connections_rejected_total{reason="draining"}"#)
            .await,
        1.0
    );
}

#[actix_web::test]
async fn a_join_that_meets_an_internal_failure_closes_with_1011_and_the_room_recovers() {
    let app = spawn_app(&[]).await;
    let (room, mut m) = app.room_of(1).await;
    assert!(app.handle.fail_next_join(&room).await);
    let mut c = app.connect().await;
    c.send_json(json!({"type": "join", "token": token(&room)}))
        .await;
    c.expect_close(1011, "internal error").await;
    m[0].0.expect_silence(Duration::from_millis(100)).await;
    let (_c2, w) = app.join(&room).await;
    assert_eq!(
        w["members"],
        json!([m[0].1.clone()]),
        "the room kept its member"
    );
    assert_eq!(
        app.metric(r#"blindrelay_disconnects_total{reason="internal_error"}"#)
            .await,
        1.0
    );
    assert_eq!(app.metric("blindrelay_room_restarts_total").await, 1.0);
}
