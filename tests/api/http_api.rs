//! The HTTP API (PROTOCOL.md section 3).

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;

fn assert_error_body(body: &Value, code: &str) {
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
    assert!(
        body["request_id"].as_str().is_some_and(|r| !r.is_empty()),
        "{body}"
    );
}

#[actix_web::test]
async fn creating_a_room_returns_its_id_and_a_token_that_joins_it() {
    let app = spawn_app(&[]).await;
    let (status, _, body) = app.post("/v1/rooms").await;
    assert_eq!(status, 201);
    let room = body["room"].as_str().unwrap();
    assert_eq!(room.len(), 22);
    assert!(body["expires_at"].as_u64().unwrap() > now());
    let mut c = app.connect().await;
    c.send_json(json!({"type": "join", "token": body["token"]}))
        .await;
    let w = c.recv_json().await;
    assert_eq!(
        (w["type"].as_str(), w["room"].as_str()),
        (Some("welcome"), Some(room))
    );
}

#[actix_web::test]
async fn a_created_room_mints_fresh_single_use_tokens() {
    let app = spawn_app(&[]).await;
    let (_, _, created) = app.post("/v1/rooms").await;
    let room = created["room"].as_str().unwrap();
    let (status, _, body) = app.post(&format!("/v1/rooms/{room}/tokens")).await;
    assert_eq!(status, 201);
    assert!(body["expires_at"].as_u64().unwrap() > now());
    assert_ne!(body["token"], created["token"]);
    let mut c = app.connect().await;
    c.send_json(json!({"type": "join", "token": body["token"]}))
        .await;
    assert_eq!(c.recv_json().await["room"], room);
}

#[actix_web::test]
async fn a_room_with_members_mints_tokens_even_if_the_server_did_not_create_it() {
    let app = spawn_app(&[]).await;
    let room = unique("backend");
    let (_c, _) = app.join(&room).await;
    let (status, _, _) = app.post(&format!("/v1/rooms/{room}/tokens")).await;
    assert_eq!(status, 201);
}

#[actix_web::test]
async fn minting_for_an_unknown_room_is_404() {
    let app = spawn_app(&[]).await;
    let (status, _, body) = app.post("/v1/rooms/doesnotexist/tokens").await;
    assert_eq!(status, 404);
    assert_error_body(&body, "room_not_found");
    assert!(
        !body.to_string().contains("doesnotexist"),
        "error bodies never echo room ids"
    );
}

#[actix_web::test]
async fn minting_for_a_malformed_room_id_is_400() {
    let app = spawn_app(&[]).await;
    for bad in ["bad.room", "a%20b", &"x".repeat(65)] {
        let (status, _, body) = app.post(&format!("/v1/rooms/{bad}/tokens")).await;
        assert_eq!(status, 400, "{bad}");
        assert_error_body(&body, "invalid_room_id");
    }
}

#[actix_web::test]
async fn a_room_expires_after_its_idle_ttl() {
    let app = spawn_app(&[("ROOM_IDLE_TTL_SECS", "1")]).await;
    let (_, _, created) = app.post("/v1/rooms").await;
    let room = created["room"].as_str().unwrap().to_owned();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (status, _, _) = app.post(&format!("/v1/rooms/{room}/tokens")).await;
    assert_eq!(status, 404);
}

#[actix_web::test]
async fn the_room_api_can_be_switched_off() {
    let app = spawn_app(&[("FEATURE_ROOM_API", "false")]).await;
    let (status, _, body) = app.post("/v1/rooms").await;
    assert_eq!(status, 404);
    assert_error_body(&body, "not_found");
    assert_eq!(app.post("/v1/rooms/abc/tokens").await.0, 404);
}

#[actix_web::test]
async fn room_creation_is_rate_limited_per_ip_with_retry_after() {
    let app = spawn_app(&[("MAX_ROOM_CREATES_PER_IP_PER_MIN", "2")]).await;
    assert_eq!(app.post("/v1/rooms").await.0, 201);
    assert_eq!(app.post("/v1/rooms").await.0, 201);
    let (status, headers, body) = app.post("/v1/rooms").await;
    assert_eq!(status, 429);
    assert_error_body(&body, "rate_limited");
    let retry: u64 = headers
        .get("retry-after")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry));
}

#[actix_web::test]
async fn token_minting_is_rate_limited_per_ip() {
    let app = spawn_app(&[("MAX_TOKEN_MINTS_PER_IP_PER_MIN", "1")]).await;
    let (_, _, created) = app.post("/v1/rooms").await;
    let path = format!("/v1/rooms/{}/tokens", created["room"].as_str().unwrap());
    assert_eq!(app.post(&path).await.0, 201);
    let (status, headers, _) = app.post(&path).await;
    assert_eq!(status, 429);
    assert!(headers.contains_key("retry-after"));
}

#[actix_web::test]
async fn every_response_carries_a_request_id_reusing_a_well_formed_one() {
    let app = spawn_app(&[]).await;
    let (_, headers, _) = app.get("/live").await;
    assert!(!headers.get("x-request-id").unwrap().is_empty());
    let res = app
        .http
        .get(app.url("/nowhere"))
        .insert_header(("X-Request-Id", "abc-123"))
        .send()
        .await;
    let mut res = res.unwrap();
    assert_eq!(res.headers().get("x-request-id").unwrap(), "abc-123");
    let body: Value = serde_json::from_slice(&res.body().await.unwrap()).unwrap();
    assert_eq!(body["request_id"], "abc-123");
    let res = app
        .http
        .get(app.url("/live"))
        .insert_header(("X-Request-Id", "bad id with spaces"))
        .send()
        .await;
    assert_ne!(
        res.unwrap().headers().get("x-request-id").unwrap(),
        "bad id with spaces"
    );
}

#[actix_web::test]
async fn live_ready_and_health_have_the_documented_shapes() {
    let app = spawn_app(&[]).await;
    let (status, _, body) = app.get("/live").await;
    let live: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((status, &live["alive"]), (200, &json!(true)));
    assert!(live["timestamp"].as_u64().unwrap() > 1_700_000_000_000);

    let (status, _, body) = app.get("/ready").await;
    let ready: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status, 200);
    assert_eq!(ready["ready"], true);
    assert_eq!(
        ready["checks"],
        json!({"redis": true, "configLoaded": true})
    );

    let (status, _, body) = app.get("/health").await;
    let health: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status, 200);
    assert_eq!(health["status"], "healthy");
    assert_eq!(
        health["checks"]["redis"],
        json!({"status": "pass", "observedValue": null, "observedUnit": "ms"})
    );
    assert_eq!(health["checks"]["memory"]["observedUnit"], "MB");
    assert_eq!(
        health["checks"]["connections"]["observedUnit"],
        "connections"
    );
    assert!(health["uptime"].is_u64() && health["timestamp"].is_u64());
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"));
    assert!(health["instanceId"].is_string());
}

#[actix_web::test]
async fn health_is_degraded_past_a_warning_and_unhealthy_past_a_failure_threshold() {
    // Any process holds more than 1 MB: the memory check warns.
    let warn = spawn_app(&[("HEALTH_MEMORY_WARN_MB", "1")]).await;
    let (status, _, body) = warn.get("/health").await;
    let health: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((status, health["status"].as_str()), (200, Some("degraded")));
    assert_eq!(health["checks"]["memory"]["status"], "warn");
    assert!(
        health["checks"]["memory"]["observedValue"]
            .as_u64()
            .unwrap()
            >= 1
    );
    assert!(warn.logs.text().contains("health check not passing"));

    let fail = spawn_app(&[
        ("HEALTH_MEMORY_WARN_MB", "1"),
        ("HEALTH_MEMORY_FAIL_MB", "1"),
        ("LOG_HEALTH_CHECK_FAILURES", "false"),
    ])
    .await;
    let (status, _, body) = fail.get("/health").await;
    let health: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (status, health["status"].as_str()),
        (503, Some("unhealthy"))
    );
    assert_eq!(health["checks"]["memory"]["status"], "fail");
    assert!(!fail.logs.text().contains("health check not passing"));

    // The connection check counts open sessions against the limit.
    let full = spawn_app(&[("MAX_TOTAL_CONNECTIONS", "1")]).await;
    let _member = full.join(&unique("r")).await;
    let (status, _, body) = full.get("/health").await;
    let health: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status, 503, "{health}");
    assert_eq!(
        health["checks"]["connections"],
        json!({"status": "fail", "observedValue": 1, "observedUnit": "connections"})
    );
}

#[actix_web::test]
async fn metrics_come_as_prometheus_text_or_json_with_the_core_names() {
    let app = spawn_app(&[]).await;
    let (_, mut m) = app.room_of(2).await;
    m[0].0
        .send_json(json!({"type": "send", "data": "abcd"}))
        .await;
    m[1].0.recv_json().await;
    app.get("/live").await;
    let (status, headers, text) = app.get("/metrics").await;
    assert_eq!(status, 200);
    assert!(headers
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    for name in [
        "blindrelay_connections_active",
        "blindrelay_connections_total",
        "blindrelay_connections_rejected_total{reason=\"ip_limit\"}",
        "blindrelay_disconnects_total{reason=\"leave\"}",
        "blindrelay_rooms_active",
        "blindrelay_messages_received_total",
        "blindrelay_messages_delivered_total",
        "blindrelay_message_bytes_received_total",
        "blindrelay_redis_up",
        "blindrelay_room_restarts_total",
        "blindrelay_uptime_seconds",
        "blindrelay_http_requests_total",
        "blindrelay_http_requests_duration_seconds",
    ] {
        assert!(text.contains(name), "missing {name}");
    }
    assert_eq!(app.metric("blindrelay_messages_received_total").await, 1.0);
    assert_eq!(app.metric("blindrelay_messages_delivered_total").await, 1.0);
    assert_eq!(
        app.metric("blindrelay_message_bytes_received_total").await,
        4.0
    );
    assert_eq!(app.metric("blindrelay_connections_active").await, 2.0);
    assert_eq!(app.metric("blindrelay_rooms_active").await, 1.0);

    let body: Value = serde_json::from_str(&app.metrics_json().await).unwrap();
    assert!(body["timestamp"].is_u64());
    assert_eq!(
        body["metrics"]["blindrelay_connections_active"]["type"],
        "gauge"
    );
    assert_eq!(
        body["metrics"]["blindrelay_connections_active"]["value"],
        2.0
    );
    assert_eq!(
        body["metrics"]["blindrelay_connections_total"]["type"],
        "counter"
    );
}

#[actix_web::test]
async fn probes_and_metrics_are_limited_per_ip_but_live_is_not() {
    let app = spawn_app(&[("HTTP_PROBE_LIMIT_PER_MIN", "3")]).await;
    for path in ["/health", "/ready", "/metrics"] {
        for _ in 0..3 {
            assert_eq!(app.get(path).await.0, 200, "{path}");
        }
        let (status, headers, _) = app.get(path).await;
        assert_eq!(status, 429, "{path}");
        assert!(headers.contains_key("retry-after"));
    }
    for _ in 0..10 {
        assert_eq!(app.get("/live").await.0, 200);
    }
}

#[actix_web::test]
async fn an_upgrade_from_a_foreign_origin_is_403() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let app = spawn_app(&[("CORS_ALLOWED_ORIGINS", "https://chat.example")]).await;
    let upgrade = |origin: &'static str| {
        let mut req = format!("ws://127.0.0.1:{}/v1/ws", app.port)
            .into_client_request()
            .unwrap();
        req.headers_mut().insert("Origin", origin.parse().unwrap());
        tokio_tungstenite::connect_async(req)
    };
    match upgrade("https://evil.example").await {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
            assert_eq!(res.status().as_u16(), 403)
        }
        other => panic!("expected 403, got {:?}", other.map(|_| ())),
    }
    assert!(upgrade("https://chat.example").await.is_ok());
    assert_eq!(
        app.metric(r#"blindrelay_connections_rejected_total{reason="origin"}"#)
            .await,
        1.0
    );
}

#[actix_web::test]
async fn connections_beyond_the_per_ip_limit_get_429_and_beyond_the_total_503() {
    let app = spawn_app(&[("MAX_CONNS_PER_IP", "2")]).await;
    let _a = app.connect().await;
    let _b = app.connect().await;
    let (status, headers) = app.refused_upgrade().await;
    assert_eq!(status, 429);
    assert!(headers.contains_key("retry-after"));
    let app = spawn_app(&[("MAX_TOTAL_CONNECTIONS", "1")]).await;
    let _a = app.connect().await;
    let (status, headers) = app.refused_upgrade().await;
    assert_eq!(status, 503);
    assert!(headers.contains_key("retry-after"));
}

#[actix_web::test]
async fn a_closed_connection_gives_its_slot_back() {
    let app = spawn_app(&[("MAX_CONNS_PER_IP", "1")]).await;
    let a = app.connect().await;
    a.close().await;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        match tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/v1/ws", app.port)).await {
            Ok(_) => break,
            Err(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await
            }
            Err(e) => panic!("slot never came back: {e}"),
        }
    }
}

#[actix_web::test]
async fn the_echo_route_is_off_by_default_and_echoes_when_on() {
    let app = spawn_app(&[]).await;
    assert_eq!(app.get("/v1/echo").await.0, 404);
    let app = spawn_app(&[("FEATURE_ECHO_ENDPOINT", "true")]).await;
    let mut c = app.connect_path("/v1/echo").await;
    c.send_text("not even json").await;
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    assert_eq!(
        c.ws.next().await.unwrap().unwrap(),
        Message::text("not even json")
    );
    c.ws.send(Message::binary(vec![0u8, 1, 2])).await.unwrap();
    assert_eq!(
        c.ws.next().await.unwrap().unwrap(),
        Message::binary(vec![0u8, 1, 2])
    );
}

#[actix_web::test]
async fn security_headers_are_set() {
    let app = spawn_app(&[]).await;
    let (_, h, _) = app.get("/live").await;
    assert_eq!(h.get("x-content-type-options").unwrap(), "nosniff");
    assert_eq!(h.get("x-frame-options").unwrap(), "DENY");
    assert!(h.get("content-security-policy").is_some());
    assert!(h.get("strict-transport-security").is_some());
    assert!(h.get("server").is_none());
}

#[actix_web::test]
async fn a_method_a_route_does_not_take_gets_405_with_the_error_body() {
    let app = spawn_app(&[]).await;
    let (status, _, body) = app.get("/v1/rooms").await;
    assert_eq!(status, 405);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_error_body(&body, "method_not_allowed");
    let mut res = app
        .http
        .request(
            awc::http::Method::from_bytes(b"ROOMID123").unwrap(),
            app.url("/live"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 405);
    let body: Value = serde_json::from_slice(&res.body().await.unwrap()).unwrap();
    assert_error_body(&body, "method_not_allowed");
    let (_, _, metrics) = app.get("/metrics").await;
    assert!(
        !metrics.contains("ROOMID123"),
        "no client-chosen metric labels"
    );
}

#[actix_web::test]
async fn behind_a_trusted_proxy_the_client_is_the_right_most_forwarded_address() {
    let post_from = |app: &TestApp, xff: &'static str| {
        app.http
            .post(app.url("/v1/rooms"))
            .insert_header(("X-Forwarded-For", xff))
            .send()
    };
    let app = spawn_app(&[
        ("TRUST_PROXY", "true"),
        ("MAX_ROOM_CREATES_PER_IP_PER_MIN", "1"),
    ])
    .await;
    assert_eq!(
        post_from(&app, "1.1.1.1, 10.0.0.1")
            .await
            .unwrap()
            .status()
            .as_u16(),
        201
    );
    assert_eq!(
        post_from(&app, "2.2.2.2, 10.0.0.1")
            .await
            .unwrap()
            .status()
            .as_u16(),
        429
    );
    assert_eq!(
        post_from(&app, "10.0.0.2").await.unwrap().status().as_u16(),
        201
    );

    let app = spawn_app(&[("MAX_ROOM_CREATES_PER_IP_PER_MIN", "1")]).await;
    assert_eq!(
        post_from(&app, "10.0.0.1").await.unwrap().status().as_u16(),
        201
    );
    assert_eq!(
        post_from(&app, "10.0.0.2").await.unwrap().status().as_u16(),
        429,
        "without TRUST_PROXY the header is ignored"
    );
}

#[actix_web::test]
async fn cors_preflight_and_headers_follow_the_allowed_origins() {
    let app = spawn_app(&[("CORS_ALLOWED_ORIGINS", "https://chat.example")]).await;
    let preflight = |origin: &'static str| {
        app.http
            .request(awc::http::Method::OPTIONS, app.url("/v1/rooms"))
            .insert_header(("Origin", origin))
            .insert_header(("Access-Control-Request-Method", "POST"))
            .send()
    };
    let res = preflight("https://chat.example").await.unwrap();
    assert_eq!(res.status().as_u16(), 204);
    assert_eq!(
        res.headers().get("access-control-allow-origin").unwrap(),
        "https://chat.example"
    );
    assert!(res
        .headers()
        .get("access-control-allow-methods")
        .unwrap()
        .to_str()
        .unwrap()
        .contains("POST"));
    let res = preflight("https://evil.example").await.unwrap();
    assert_eq!(res.status().as_u16(), 403);
    assert!(res.headers().get("access-control-allow-origin").is_none());
    let res = app
        .http
        .post(app.url("/v1/rooms"))
        .insert_header(("Origin", "https://chat.example"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 201);
    assert_eq!(
        res.headers().get("access-control-allow-origin").unwrap(),
        "https://chat.example"
    );
}

#[actix_web::test]
async fn with_request_ids_off_no_header_is_set() {
    let app = spawn_app(&[("FEATURE_REQUEST_ID", "false")]).await;
    let (_, headers, _) = app.get("/live").await;
    assert!(headers.get("x-request-id").is_none());
}

#[actix_web::test]
async fn in_production_an_empty_origin_list_allows_no_browser_origin() {
    let app = spawn_app(&[("APP_ENV", "production")]).await;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://127.0.0.1:{}/v1/ws", app.port)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("Origin", "https://any.example".parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
            assert_eq!(res.status().as_u16(), 403)
        }
        other => panic!("expected 403, got {:?}", other.map(|_| ())),
    }
    // clients that send no Origin (native apps) are not affected
    app.connect().await;
}

/// Sends `bytes` on a fresh connection and reads until the server closes it
/// (or `within` passes).
async fn raw_exchange(port: u16, bytes: &[u8], within: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(within, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn upgrade_request(path: &str, version: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: {version}\r\n\r\n"
    )
}

#[actix_web::test]
async fn an_upgrade_on_another_path_gets_that_path_answer_and_the_connection_closes() {
    let app = spawn_app(&[]).await;
    let health = raw_exchange(
        app.port,
        upgrade_request("/health", "13").as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(
        health.to_ascii_lowercase().contains("connection: close"),
        "{health}"
    );
    let unknown = raw_exchange(
        app.port,
        upgrade_request("/nope", "13").as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert!(unknown.starts_with("HTTP/1.1 404"), "{unknown}");
}

#[actix_web::test]
async fn an_upgrade_with_another_websocket_version_is_refused_with_400() {
    let app = spawn_app(&[]).await;
    let res = raw_exchange(
        app.port,
        upgrade_request("/v1/ws", "8").as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert!(res.starts_with("HTTP/1.1 400"), "{res}");
    assert!(res.contains("bad_upgrade"), "{res}");
    // The instance keeps serving upgrades.
    let (_, welcome) = app.join(&unique("after-bad-upgrade")).await;
    assert_eq!(welcome["type"], "welcome");
}

#[actix_web::test]
async fn a_join_sent_in_the_same_packet_as_the_upgrade_is_not_lost() {
    let app = spawn_app(&[]).await;
    let room = unique("pipelined");
    let join = serde_json::to_vec(&json!({"type": "join", "token": token(&room)})).unwrap();
    let mut bytes = upgrade_request("/v1/ws", "13").into_bytes();
    // A masked client text frame.
    let mask = [1u8, 2, 3, 4];
    bytes.push(0x81);
    assert!(join.len() < 65536);
    if join.len() < 126 {
        bytes.push(0x80 | join.len() as u8);
    } else {
        bytes.push(0x80 | 126);
        bytes.extend_from_slice(&(join.len() as u16).to_be_bytes());
    }
    bytes.extend_from_slice(&mask);
    bytes.extend(join.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    let res = raw_exchange(app.port, &bytes, Duration::from_millis(500)).await;
    assert!(res.starts_with("HTTP/1.1 101"), "{res}");
    assert!(res.contains(r#""type":"welcome""#), "{res}");
}

#[actix_web::test]
async fn operational_metrics_name_the_build_the_connection_limit_and_the_drain() {
    let app = spawn_app(&[("MAX_TOTAL_CONNECTIONS", "1234")]).await;
    let build = format!(
        r#"blindrelay_build_info{{version="{}"}}"#,
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(app.metric(&build).await, 1.0);
    assert_eq!(app.metric("blindrelay_connections_max").await, 1234.0);
    assert_eq!(app.metric("blindrelay_draining").await, 0.0);
    assert!(app.metric("blindrelay_memory_limit_bytes").await >= 0.0);
}

#[actix_web::test]
async fn the_web_client_is_served_with_its_own_policy_and_only_when_switched_on() {
    let app = spawn_app(&[("FEATURE_WEB_CLIENT", "true")]).await;
    let (status, headers, body) = app.get("/").await;
    assert_eq!(status, 200);
    assert!(body.contains(r#"data-testid="create-room""#));
    let csp = headers
        .get("content-security-policy")
        .unwrap()
        .to_str()
        .unwrap();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe"), "{csp}");
    let (status, headers, body) = app.get("/app.js").await;
    assert_eq!(status, 200);
    assert!(headers
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    assert!(body.contains("AES-GCM"));
    // The API keeps the strict policy.
    let (_, headers, _) = app.get("/live").await;
    let api_csp = headers
        .get("content-security-policy")
        .unwrap()
        .to_str()
        .unwrap();
    assert!(!api_csp.contains("script-src"), "{api_csp}");

    // Off by default in production.
    let prod = spawn_app(&[("APP_ENV", "production")]).await;
    assert_eq!(prod.get("/").await.0, 404);
    assert_eq!(prod.get("/app.js").await.0, 404);
}

#[actix_web::test]
async fn the_web_clients_own_origin_may_open_a_websocket_when_it_is_on() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let upgrade = |port: u16, origin: String| {
        let mut req = format!("ws://127.0.0.1:{port}/v1/ws")
            .into_client_request()
            .unwrap();
        req.headers_mut().insert("Origin", origin.parse().unwrap());
        tokio_tungstenite::connect_async(req)
    };
    let status = |r: Result<_, tokio_tungstenite::tungstenite::Error>| match r {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => res.status().as_u16(),
        Err(e) => panic!("{e}"),
    };
    for (on, want) in [("true", 101), ("false", 403)] {
        let app = spawn_app(&[
            ("APP_ENV", "production"),
            ("FEATURE_WEB_CLIENT", on),
            ("CORS_ALLOWED_ORIGINS", "https://chat.example"),
        ])
        .await;
        let own = format!("http://127.0.0.1:{}", app.port);
        assert_eq!(
            status(upgrade(app.port, own).await),
            want,
            "web client {on}"
        );
        let foreign = "http://127.0.0.1:1".to_owned();
        assert_eq!(status(upgrade(app.port, foreign).await), 403);
    }
}
