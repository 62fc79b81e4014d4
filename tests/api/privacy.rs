//! Metadata rules (PROTOCOL.md section 7): what is said never shows up in
//! logs or metrics, nor do room ids, member ids or tokens.

use std::time::Duration;

use serde_json::json;

use crate::helpers::*;

#[actix_web::test]
async fn a_canary_sent_as_data_appears_in_no_log_line_and_no_metrics_output() {
    let app = spawn_app(&[("LOG_LEVEL", "trace"), ("MAX_MESSAGE_BYTES", "100")]).await;
    let canary = unique("CANARY-7f3a9c-");
    let (room, mut m) = app.room_of(2).await;
    let ids: Vec<String> = m.iter().map(|(_, id)| id.clone()).collect();
    m[0].0
        .send_json(json!({"type": "send", "data": canary, "id": "a1"}))
        .await;
    assert_eq!(m[0].0.recv_json().await["type"], "ack");
    assert_eq!(m[1].0.recv_json().await["data"], canary.as_str());
    let to = ids[0].clone();
    m[1].0
        .send_json(json!({"type": "send", "data": canary, "to": to}))
        .await;
    m[0].0.recv_json().await;
    // an oversized message and a bad frame, to exercise the error paths
    m[0].0
        .send_json(json!({"type": "send", "data": format!("{canary}{}", "x".repeat(200))}))
        .await;
    m[0].0.recv_json().await;
    let bad_token = format!("{canary}.{canary}.{canary}");
    let mut c = app.connect().await;
    c.send_json(json!({"type": "join", "token": bad_token}))
        .await;
    c.expect_close(4401, "invalid token").await;
    let mut c = app.connect().await;
    c.send_text(&format!("{{\"type\":\"{canary}\"}}")).await;
    c.expect_close(4400, "invalid frame").await;
    let jti = unique("JTI-CANARY-");
    let good_token = sign(
        &json!({"room": room, "exp": now() + 300, "jti": jti}),
        SECRET,
        jsonwebtoken::Algorithm::HS256,
    );
    let (mut c3, _) = {
        let mut c = app.connect().await;
        c.send_json(json!({"type": "join", "token": good_token}))
            .await;
        let w = c.recv_json().await;
        (c, w)
    };
    c3.send_json(json!({"type": "leave"})).await;
    c3.expect_close(1000, "leave").await;
    for (c, _) in m {
        c.close().await;
    }
    let (_, _, text) = app.get("/metrics").await;
    let json_metrics = app.metrics_json().await;
    tokio::time::sleep(Duration::from_millis(200)).await; // async log drain
    let logs = app.logs.text();
    assert!(
        logs.contains("session closed"),
        "the logs did record the sessions"
    );
    for (what, secret) in [
        ("data", canary.as_str()),
        ("room id", room.as_str()),
        ("token", good_token.as_str()),
    ]
    .into_iter()
    .chain(ids.iter().map(|id| ("member id", id.as_str())))
    {
        assert!(!logs.contains(secret), "{what} in logs");
        assert!(!text.contains(secret), "{what} in metrics");
        assert!(!json_metrics.contains(secret), "{what} in JSON metrics");
    }
    assert!(
        !logs.contains("127.0.0.1"),
        "no client IP without FEATURE_IP_TRACKING"
    );
}
