//! One test per row of the frame and close-code tables (PROTOCOL.md 4-5).

use std::time::Duration;

use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::*;

#[actix_web::test]
async fn a_join_is_welcomed_with_the_room_own_id_and_the_other_members() {
    let app = spawn_app(&[]).await;
    let (room, mut members) = app.room_of(2).await;
    let (mut c, welcome) = app.join(&room).await;
    assert_eq!(welcome["room"], room.as_str());
    let me = welcome["member"].as_str().unwrap();
    assert!(
        me.len() <= 32
            && me
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    );
    let mut listed: Vec<String> = serde_json::from_value(welcome["members"].clone()).unwrap();
    listed.sort();
    let mut expected: Vec<String> = members.iter().map(|(_, id)| id.clone()).collect();
    expected.sort();
    assert_eq!(listed, expected, "members lists the others, not oneself");
    for (m, _) in members.iter_mut() {
        assert_eq!(
            m.recv_json().await,
            json!({"type": "member_joined", "member": me})
        );
    }
    c.expect_silence(Duration::from_millis(100)).await;
}

#[actix_web::test]
async fn a_broadcast_reaches_every_other_member_and_not_the_sender() {
    let app = spawn_app(&[]).await;
    let (_, mut m) = app.room_of(3).await;
    let from = m[0].1.clone();
    m[0].0
        .send_json(json!({"type": "send", "data": "c2VjcmV0", "extra": 1}))
        .await;
    for (c, _) in m[1..].iter_mut() {
        assert_eq!(
            c.recv_json().await,
            json!({"type": "message", "from": from, "data": "c2VjcmV0"})
        );
    }
    m[0].0.expect_silence(Duration::from_millis(200)).await;
}

#[actix_web::test]
async fn rooms_on_threads_of_their_own_relay_the_same() {
    // ROOM_ARBITERS > 0: rooms leave the worker threads for their own.
    let app = spawn_app(&[("ROOM_ARBITERS", "2")]).await;
    for _ in 0..2 {
        let (_, mut m) = app.room_of(3).await;
        let from = m[2].1.clone();
        m[2].0
            .send_json(json!({"type": "send", "data": "aGk", "id": "1"}))
            .await;
        assert_eq!(m[2].0.recv_json().await, json!({"type": "ack", "id": "1"}));
        for (c, _) in m[..2].iter_mut() {
            assert_eq!(
                c.recv_json().await,
                json!({"type": "message", "from": from, "data": "aGk"})
            );
        }
    }
}

/// Every member joins a small room with a `send` right behind its `join`,
/// and every member then hears every other one.
async fn a_small_room_relays_with_sends_behind_joins(app: &TestApp, n: usize) {
    let room = unique("colocated");
    let mut members = Vec::new();
    for i in 0..n {
        let mut c = app.connect().await;
        c.send_json(json!({"type": "join", "token": token(&room)}))
            .await;
        c.send_json(json!({"type": "send", "data": format!("m{i}"), "id": "x"}))
            .await;
        let welcome = c.recv_json().await;
        assert_eq!(welcome["type"], "welcome");
        members.push(c);
    }
    // Each member's ack, and each member's own send reached those before it.
    for (i, c) in members.iter_mut().enumerate() {
        let mut acked = false;
        let mut heard = 0;
        while !acked || heard < n - 1 - i {
            let v = c.recv_json().await;
            match v["type"].as_str() {
                Some("ack") => acked = true,
                Some("message") => heard += 1,
                Some("member_joined") => {}
                other => panic!("unexpected {other:?}: {v}"),
            }
        }
    }
    members[0]
        .send_json(json!({"type": "send", "data": "last"}))
        .await;
    for c in members[1..].iter_mut() {
        assert_eq!(c.recv_json().await["data"], "last");
    }
}

#[actix_web::test]
async fn members_of_a_small_room_move_to_its_thread_and_frames_behind_the_join_follow() {
    let app = spawn_app(&[("WORKERS", "2")]).await;
    // The kernel picks each connection's worker by a hash of its address
    // and port, so six members all land where their room runs about one
    // time in 32: another room, then, until one has had to move (five
    // rooms leave that about one time in 33 million).
    for _ in 0..5 {
        a_small_room_relays_with_sends_behind_joins(&app, 6).await;
        if app.metric("blindrelay_session_moves_total").await >= 1.0 {
            return;
        }
    }
    panic!("no member of five rooms moved to its room's thread");
}

#[actix_web::test]
async fn with_colocation_off_no_member_moves() {
    let app = spawn_app(&[("WORKERS", "2"), ("COLOCATE_MAX_MEMBERS", "0")]).await;
    a_small_room_relays_with_sends_behind_joins(&app, 6).await;
    assert_eq!(app.metric("blindrelay_session_moves_total").await, 0.0);
}

#[actix_web::test]
async fn members_past_the_colocation_size_stay_on_their_thread() {
    let app = spawn_app(&[("WORKERS", "2"), ("COLOCATE_MAX_MEMBERS", "1")]).await;
    a_small_room_relays_with_sends_behind_joins(&app, 6).await;
    // From the second member on, the room already has one.
    assert_eq!(app.metric("blindrelay_session_moves_total").await, 0.0);
}

#[actix_web::test]
async fn a_direct_send_reaches_only_its_target_marked_direct() {
    let app = spawn_app(&[]).await;
    let (_, mut m) = app.room_of(3).await;
    let (from, to) = (m[0].1.clone(), m[2].1.clone());
    m[0].0
        .send_json(json!({"type": "send", "data": "dm", "to": to}))
        .await;
    assert_eq!(
        m[2].0.recv_json().await,
        json!({"type": "message", "from": from, "data": "dm", "direct": true})
    );
    m[1].0.expect_silence(Duration::from_millis(200)).await;
}

#[actix_web::test]
async fn a_send_with_an_id_is_acked() {
    let app = spawn_app(&[]).await;
    let (_, mut m) = app.room_of(2).await;
    m[0].0
        .send_json(json!({"type": "send", "data": "x", "id": "q-1"}))
        .await;
    assert_eq!(
        m[0].0.recv_json().await,
        json!({"type": "ack", "id": "q-1"})
    );
    assert_eq!(m[1].0.recv_json().await["data"], "x");
    let to = m[1].1.clone();
    m[0].0
        .send_json(json!({"type": "send", "data": "y", "to": to, "id": "q-2"}))
        .await;
    assert_eq!(
        m[0].0.recv_json().await,
        json!({"type": "ack", "id": "q-2"})
    );
}

#[actix_web::test]
async fn a_send_to_an_unknown_member_gets_unknown_member_with_its_id() {
    let app = spawn_app(&[]).await;
    let (_, mut m) = app.room_of(2).await;
    m[0].0
        .send_json(json!({"type": "send", "data": "x", "to": "nobody", "id": "7"}))
        .await;
    let e = m[0].0.recv_json().await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str(), e["id"].as_str()),
        (Some("error"), Some("unknown_member"), Some("7"))
    );
    assert!(e["message"].is_string());
    m[1].0.expect_silence(Duration::from_millis(200)).await;
    // the session goes on
    m[0].0
        .send_json(json!({"type": "send", "data": "after"}))
        .await;
    assert_eq!(m[1].0.recv_json().await["data"], "after");
}

#[actix_web::test]
async fn a_send_to_oneself_is_an_unknown_member() {
    let app = spawn_app(&[]).await;
    let (_, mut m) = app.room_of(2).await;
    let me = m[0].1.clone();
    m[0].0
        .send_json(json!({"type": "send", "data": "x", "to": me}))
        .await;
    let e = m[0].0.recv_json().await;
    assert_eq!(e["code"], "unknown_member");
    assert!(e.get("id").is_none());
    m[1].0.expect_silence(Duration::from_millis(200)).await;
}

#[actix_web::test]
async fn data_over_max_message_bytes_is_refused_with_message_too_large_and_not_relayed() {
    let app = spawn_app(&[("MAX_MESSAGE_BYTES", "1000")]).await;
    let (_, mut m) = app.room_of(2).await;
    // 334 three-byte chars: 1002 UTF-8 bytes although only 334 chars.
    let big = "€".repeat(334);
    m[0].0
        .send_json(json!({"type": "send", "data": big, "id": "big"}))
        .await;
    let e = m[0].0.recv_json().await;
    assert_eq!(
        (e["code"].as_str(), e["id"].as_str()),
        (Some("message_too_large"), Some("big"))
    );
    m[1].0.expect_silence(Duration::from_millis(200)).await;
    let exact = "a".repeat(1000);
    m[0].0
        .send_json(json!({"type": "send", "data": exact}))
        .await;
    assert_eq!(
        m[1].0.recv_json().await["data"].as_str().unwrap().len(),
        1000
    );
}

#[actix_web::test]
async fn leave_closes_with_1000_and_the_others_get_member_left() {
    let app = spawn_app(&[]).await;
    let (_, mut m) = app.room_of(2).await;
    let leaver = m[0].1.clone();
    m[0].0.send_json(json!({"type": "leave"})).await;
    m[0].0.expect_close(1000, "leave").await;
    assert_eq!(
        m[1].0.recv_json().await,
        json!({"type": "member_left", "member": leaver})
    );
}

#[actix_web::test]
async fn leave_is_allowed_before_join() {
    let app = spawn_app(&[]).await;
    let mut c = app.connect().await;
    c.send_json(json!({"type": "leave"})).await;
    c.expect_close(1000, "leave").await;
}

#[actix_web::test]
async fn a_member_whose_connection_drops_is_announced_as_left() {
    let app = spawn_app(&[]).await;
    let (_, mut m) = app.room_of(2).await;
    let (gone, id) = m.remove(0);
    drop(gone);
    assert_eq!(
        m[0].0.recv_json().await,
        json!({"type": "member_left", "member": id})
    );
}

#[actix_web::test]
async fn a_binary_frame_closes_with_1003() {
    let app = spawn_app(&[]).await;
    let (_, mut m) = app.room_of(2).await;
    m[0].0
        .ws
        .send(Message::binary(vec![1u8, 2, 3]))
        .await
        .unwrap();
    m[0].0
        .expect_close(1003, "binary frames are not accepted")
        .await;
    assert_eq!(m[1].0.recv_json().await["type"], "member_left");
}

#[actix_web::test]
async fn invalid_utf8_closes_with_1007() {
    let app = spawn_app(&[]).await;
    let (mut c, _) = app.join(&unique("r")).await;
    let frame = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    c.ws.send(Message::Frame(frame)).await.unwrap();
    c.expect_close(1007, "").await;
}

#[actix_web::test]
async fn a_frame_over_the_limit_closes_with_1009() {
    let app = spawn_app(&[("MAX_MESSAGE_BYTES", "1000")]).await;
    let (_, mut m) = app.room_of(2).await;
    let huge = json!({"type": "send", "data": "a".repeat(1000 + 4096 + 10)});
    m[0].0.send_json(huge).await;
    m[0].0.expect_close(1009, "message too large").await;
    assert_eq!(m[1].0.recv_json().await["type"], "member_left");
}

#[actix_web::test]
async fn a_fragmented_message_over_the_limit_closes_with_1009() {
    let app = spawn_app(&[("MAX_MESSAGE_BYTES", "1000")]).await;
    let (mut c, _) = app.join(&unique("r")).await;
    let chunk = vec![b'a'; 3000];
    let first = Frame::message(chunk.clone(), OpCode::Data(Data::Text), false);
    c.ws.send(Message::Frame(first)).await.unwrap();
    let mut more = Frame::message(chunk, OpCode::Data(Data::Continue), false);
    *more.header_mut() = FrameHeader {
        is_final: true,
        opcode: OpCode::Data(Data::Continue),
        ..FrameHeader::default()
    };
    c.ws.send(Message::Frame(more)).await.unwrap();
    c.expect_close(1009, "message too large").await;
}

#[actix_web::test]
async fn frames_that_break_the_protocol_close_with_4400() {
    let app = spawn_app(&[]).await;
    let long_id = "i".repeat(65);
    let cases: Vec<(&str, String, bool)> = vec![
        ("malformed JSON", "{not json".into(), true),
        ("an array", r#"["leave"]"#.into(), true),
        ("an array of strings", r#"["send",null,"hi"]"#.into(), true),
        ("missing type", r#"{"data":"x"}"#.into(), true),
        (
            "unknown type",
            r#"{"type":"shout","data":"x"}"#.into(),
            true,
        ),
        ("send missing data", r#"{"type":"send"}"#.into(), true),
        (
            "data not a string",
            r#"{"type":"send","data":{"a":1}}"#.into(),
            true,
        ),
        (
            "id too long",
            format!(r#"{{"type":"send","data":"x","id":"{long_id}"}}"#),
            true,
        ),
        (
            "second join",
            format!(r#"{{"type":"join","token":"{}"}}"#, token("r2")),
            true,
        ),
        (
            "send before join",
            r#"{"type":"send","data":"x"}"#.into(),
            false,
        ),
        ("join without token", r#"{"type":"join"}"#.into(), false),
    ];
    for (what, frame, join_first) in cases {
        let mut c = if join_first {
            app.join(&unique("r")).await.0
        } else {
            app.connect().await
        };
        c.send_text(&frame).await;
        match c.end().await {
            End::Closed(code, reason) => {
                assert_eq!((code, reason.as_str()), (4400, "invalid frame"), "{what}")
            }
            End::Dropped => panic!("{what}: dropped without a close frame"),
        }
    }
}

#[actix_web::test]
async fn a_bad_token_closes_with_4401() {
    let app = spawn_app(&[]).await;
    let mut c = app.connect().await;
    c.send_json(json!({"type": "join", "token": "not.a.jwt"}))
        .await;
    c.expect_close(4401, "invalid token").await;
}

#[actix_web::test]
async fn a_join_to_a_full_room_closes_with_4403_and_burns_the_token() {
    let app = spawn_app(&[("MAX_ROOM_MEMBERS", "2")]).await;
    let (room, mut m) = app.room_of(2).await;
    let t = token(&room);
    let mut c = app.connect().await;
    c.send_json(json!({"type": "join", "token": t})).await;
    c.expect_close(4403, "room full").await;
    m[0].0.expect_silence(Duration::from_millis(100)).await;
    // room has space again, but the refused token stays burned
    let (gone, _) = m.remove(1);
    gone.close().await;
    assert_eq!(m[0].0.recv_json().await["type"], "member_left");
    let mut again = app.connect().await;
    again.send_json(json!({"type": "join", "token": t})).await;
    again.expect_close(4409, "token already used").await;
    let (_, w) = app.join(&room).await;
    assert_eq!(w["members"].as_array().unwrap().len(), 1);
}

#[actix_web::test]
async fn no_join_within_join_timeout_closes_with_4408() {
    let app = spawn_app(&[("JOIN_TIMEOUT_MS", "200")]).await;
    let mut c = app.connect().await;
    c.expect_close(4408, "join timeout").await;
}

#[actix_web::test]
async fn a_replayed_token_closes_with_4409() {
    let app = spawn_app(&[]).await;
    let room = unique("r");
    let t = token(&room);
    let mut a = app.connect().await;
    a.send_json(json!({"type": "join", "token": t})).await;
    assert_eq!(a.recv_json().await["type"], "welcome");
    let mut b = app.connect().await;
    b.send_json(json!({"type": "join", "token": t})).await;
    b.expect_close(4409, "token already used").await;
}

#[actix_web::test]
async fn sending_faster_than_max_msgs_per_10s_closes_with_4429() {
    let app = spawn_app(&[("MAX_MSGS_PER_10S", "5")]).await;
    let (_, mut m) = app.room_of(2).await;
    for i in 0..6 {
        m[0].0
            .send_json(json!({"type": "send", "data": format!("m{i}")}))
            .await;
    }
    m[0].0.expect_close(4429, "rate limited").await;
    for i in 0..5 {
        assert_eq!(m[1].0.recv_json().await["data"], format!("m{i}"));
    }
    assert_eq!(
        m[1].0.recv_json().await["type"],
        "member_left",
        "the sixth is not relayed"
    );
}

#[actix_web::test]
async fn sending_more_than_max_bytes_per_10s_closes_with_4429() {
    let app = spawn_app(&[("MAX_BYTES_PER_10S", "1000"), ("MAX_MESSAGE_BYTES", "700")]).await;
    let (_, mut m) = app.room_of(2).await;
    m[0].0
        .send_json(json!({"type": "send", "data": "a".repeat(600)}))
        .await;
    m[0].0
        .send_json(json!({"type": "send", "data": "b".repeat(600)}))
        .await;
    m[0].0.expect_close(4429, "rate limited").await;
}

#[actix_web::test]
async fn a_client_that_does_not_read_is_closed_with_4413() {
    let app = spawn_app(&[
        ("SLOW_CONSUMER_BUFFER_THRESHOLD", "262144"),
        ("MAX_MSGS_PER_10S", "100000"),
        ("MAX_BYTES_PER_10S", "1000000000"),
    ])
    .await;
    let (_, mut m) = app.room_of(2).await;
    let data = "z".repeat(60_000);
    let slow_id = m[1].1.clone();
    let (mut slow, _) = m.remove(1);
    // the slow member reads nothing while ~60 MB are sent its way
    let mut left = None;
    for i in 0..1000 {
        m[0].0
            .send_json(json!({"type": "send", "data": data, "id": i.to_string()}))
            .await;
        let f = m[0].0.recv_json().await;
        if f["type"] == "member_left" {
            left = Some(f);
            break;
        }
        assert_eq!(f["type"], "ack");
    }
    assert_eq!(
        left,
        Some(json!({"type": "member_left", "member": slow_id}))
    );
    slow.expect_close(4413, "slow consumer").await;
}

#[actix_web::test]
async fn the_server_pings_and_a_client_that_stops_answering_is_dropped() {
    let app = spawn_app(&[
        ("WS_PING_INTERVAL_MS", "100"),
        ("WS_PING_TIMEOUT_MS", "300"),
    ])
    .await;
    let (_, mut m) = app.room_of(2).await;
    // m[1] keeps reading (tungstenite answers pings); it must see a ping.
    let ping = tokio::time::timeout(WAIT, async {
        loop {
            use futures_util::StreamExt;
            if let Some(Ok(Message::Ping(_))) = m[1].0.ws.next().await {
                return;
            }
        }
    })
    .await;
    assert!(ping.is_ok(), "a ping arrives");
    // m[0] stops reading, so it never answers: dropped, and announced.
    let silent = m[0].1.clone();
    assert_eq!(
        m[1].0.recv_json().await,
        json!({"type": "member_left", "member": silent})
    );
    // the member that answers stays
    m[1].0.expect_silence(Duration::from_millis(600)).await;
    assert_eq!(
        app.metric(r#"blindrelay_disconnects_total{reason="ping_timeout"}"#)
            .await,
        1.0
    );
}

#[actix_web::test]
async fn a_thousand_messages_from_one_sender_arrive_in_order() {
    let app = spawn_app(&[("MAX_MSGS_PER_10S", "100000")]).await;
    let (_, mut m) = app.room_of(3).await;
    for i in 0..1000 {
        m[0].0
            .send_json(json!({"type": "send", "data": i.to_string()}))
            .await;
    }
    for (c, _) in m[1..].iter_mut() {
        for i in 0..1000 {
            assert_eq!(c.recv_json().await["data"], i.to_string());
        }
    }
}

#[actix_web::test]
async fn messages_from_two_senders_each_keep_their_order() {
    let app = spawn_app(&[("MAX_MSGS_PER_10S", "100000")]).await;
    let (_, mut m) = app.room_of(3).await;
    let (a, b) = (m[0].1.clone(), m[1].1.clone());
    for i in 0..200 {
        m[0].0
            .send_json(json!({"type": "send", "data": format!("{i}")}))
            .await;
        m[1].0
            .send_json(json!({"type": "send", "data": format!("{i}")}))
            .await;
    }
    let (mut next_a, mut next_b) = (0, 0);
    while next_a < 200 || next_b < 200 {
        let f = m[2].0.recv_json().await;
        let n: u32 = f["data"].as_str().unwrap().parse().unwrap();
        if f["from"] == a.as_str() {
            assert_eq!(n, next_a);
            next_a += 1;
        } else {
            assert_eq!(f["from"], b.as_str());
            assert_eq!(n, next_b);
            next_b += 1;
        }
    }
}

#[actix_web::test]
async fn after_the_close_frames_the_server_closes_the_connection() {
    use futures_util::StreamExt;
    let app = spawn_app(&[]).await;
    let (mut c, _) = app.join(&unique("r")).await;
    c.send_json(json!({"type": "leave"})).await;
    c.expect_close(1000, "leave").await;
    // tungstenite answers the close; the server must then hang up rather
    // than wait for the client to.
    let rest =
        tokio::time::timeout(WAIT, async { while let Some(Ok(_)) = c.ws.next().await {} }).await;
    assert!(rest.is_ok(), "the server closed the TCP connection");
}

#[actix_web::test]
async fn a_client_that_never_reads_loses_its_connection_and_slot_within_the_close_timeout() {
    let app = spawn_app(&[
        ("SLOW_CONSUMER_BUFFER_THRESHOLD", "262144"),
        ("MAX_MSGS_PER_10S", "100000"),
        ("MAX_BYTES_PER_10S", "1000000000"),
        ("MAX_CONNS_PER_IP", "2"),
        ("WS_CLOSE_TIMEOUT_MS", "300"),
        ("TCP_USER_TIMEOUT_MS", "30000"),
    ])
    .await;
    let (_, mut m) = app.room_of(2).await;
    // Never read again: its socket buffers fill, then the close frame
    // cannot be written.
    let (_slow, _) = m.remove(1);
    let data = "z".repeat(60_000);
    for i in 0..1000 {
        m[0].0
            .send_json(json!({"type": "send", "data": data, "id": i.to_string()}))
            .await;
        if m[0].0.recv_json().await["type"] == "member_left" {
            break;
        }
    }
    // The limit is full until the slow client's connection is gone: that
    // must take about WS_CLOSE_TIMEOUT_MS, not TCP_USER_TIMEOUT_MS.
    let url = format!("ws://127.0.0.1:{}/v1/ws", app.port);
    let started = std::time::Instant::now();
    loop {
        match tokio_tungstenite::connect_async(&url).await {
            Ok(_) => break,
            Err(_) if started.elapsed() < Duration::from_secs(5) => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("the slot was not given back: {e}"),
        }
    }
    // The sender was not disturbed (the ack of the send that tipped the
    // slow member over may still be ahead of this one).
    m[0].0
        .send_json(json!({"type": "send", "data": "x", "id": "last"}))
        .await;
    loop {
        let f = m[0].0.recv_json().await;
        assert_eq!(f["type"], "ack", "{f}");
        if f["id"] == "last" {
            break;
        }
    }
}
