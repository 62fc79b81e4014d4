//! Join-token checks end to end (PROTOCOL.md section 2).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};

use crate::helpers::*;

async fn join_with(app: &TestApp, token: &str) -> Result<Value, (u16, String)> {
    let mut c = app.connect().await;
    c.send_json(json!({"type": "join", "token": token})).await;
    match c.end_or_frame().await {
        Ok(v) => Ok(v),
        Err(e) => Err(e),
    }
}

impl Client {
    /// The first frame, or the close that ended the session.
    async fn end_or_frame(&mut self) -> Result<Value, (u16, String)> {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        loop {
            match tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("in time")
            {
                Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(&t).unwrap()),
                Some(Ok(Message::Close(Some(f)))) => {
                    return Err((u16::from(f.code), f.reason.to_string()))
                }
                Some(Ok(_)) => continue,
                other => panic!("unexpected end: {other:?}"),
            }
        }
    }
}

fn claims(extra: Value) -> Value {
    let mut c = json!({"room": unique("r"), "exp": now() + 300, "jti": unique("j")});
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

const INVALID: Result<Value, (u16, String)> = Err((4401, String::new()));

fn assert_invalid(r: Result<Value, (u16, String)>, what: &str) {
    match r {
        Err((4401, reason)) => assert_eq!(reason, "invalid token", "{what}"),
        other => panic!("{what}: expected 4401, got {other:?} (want {INVALID:?})"),
    }
}

#[actix_web::test]
async fn a_good_token_joins_its_room() {
    let app = spawn_app(&[]).await;
    let t = sign(
        &claims(json!({"iat": now(), "nbf": now()})),
        SECRET,
        Algorithm::HS256,
    );
    assert_eq!(join_with(&app, &t).await.unwrap()["type"], "welcome");
}

#[actix_web::test]
async fn a_token_signed_with_another_secret_is_refused() {
    let app = spawn_app(&[]).await;
    let t = sign(
        &claims(json!({})),
        "some-other-secret-0123456789abcdef0123",
        Algorithm::HS256,
    );
    assert_invalid(join_with(&app, &t).await, "wrong secret");
}

#[actix_web::test]
async fn an_unsigned_alg_none_token_is_refused() {
    let app = spawn_app(&[]).await;
    let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let p = URL_SAFE_NO_PAD.encode(claims(json!({})).to_string());
    assert_invalid(join_with(&app, &format!("{h}.{p}.")).await, "alg none");
}

#[actix_web::test]
async fn tokens_with_other_algorithms_are_refused() {
    let app = spawn_app(&[]).await;
    for alg in [Algorithm::HS384, Algorithm::HS512] {
        let t = sign(&claims(json!({})), SECRET, alg);
        assert_invalid(join_with(&app, &t).await, &format!("{alg:?}"));
    }
    // A header naming RS256 over an HMAC signature must not pick the algorithm.
    let good = sign(&claims(json!({})), SECRET, Algorithm::HS256);
    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    parts[0] = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
    assert_invalid(join_with(&app, &parts.join(".")).await, "RS256 header");
}

#[actix_web::test]
async fn an_expired_token_is_refused() {
    let app = spawn_app(&[]).await;
    let t = sign(
        &claims(json!({"exp": now() - 60})),
        SECRET,
        Algorithm::HS256,
    );
    assert_invalid(join_with(&app, &t).await, "expired");
}

#[actix_web::test]
async fn a_token_not_yet_valid_is_refused() {
    let app = spawn_app(&[]).await;
    let t = sign(
        &claims(json!({"nbf": now() + 120})),
        SECRET,
        Algorithm::HS256,
    );
    assert_invalid(join_with(&app, &t).await, "nbf in the future");
    let t = sign(
        &claims(json!({"iat": now() + 120})),
        SECRET,
        Algorithm::HS256,
    );
    assert_invalid(join_with(&app, &t).await, "iat in the future");
}

#[actix_web::test]
async fn tokens_missing_a_required_claim_are_refused() {
    let app = spawn_app(&[]).await;
    for missing in ["room", "exp", "jti"] {
        let t = sign(&claims(json!({ missing: null })), SECRET, Algorithm::HS256);
        assert_invalid(join_with(&app, &t).await, missing);
    }
    let t = sign(
        &claims(json!({"room": "not a room id"})),
        SECRET,
        Algorithm::HS256,
    );
    assert_invalid(join_with(&app, &t).await, "malformed room");
}

#[actix_web::test]
async fn a_token_living_longer_than_the_maximum_is_refused() {
    let app = spawn_app(&[("JOIN_TOKEN_MAX_TTL_SECS", "600")]).await;
    let t = sign(
        &claims(json!({"exp": now() + 3600})),
        SECRET,
        Algorithm::HS256,
    );
    assert_invalid(join_with(&app, &t).await, "lifetime");
}

#[actix_web::test]
async fn a_token_signed_with_the_previous_secret_is_accepted() {
    let app = spawn_app(&[("JOIN_TOKEN_SECRET_PREVIOUS", PREVIOUS_SECRET)]).await;
    let t = sign(&claims(json!({})), PREVIOUS_SECRET, Algorithm::HS256);
    assert_eq!(join_with(&app, &t).await.unwrap()["type"], "welcome");
}

#[actix_web::test]
async fn a_replayed_token_is_refused_but_accepted_with_replay_protection_off() {
    let app = spawn_app(&[]).await;
    let t = token(&unique("r"));
    assert!(join_with(&app, &t).await.is_ok());
    assert_eq!(
        join_with(&app, &t).await,
        Err((4409, "token already used".into()))
    );

    let lax = spawn_app(&[("FEATURE_TOKEN_REPLAY_PROTECTION", "false")]).await;
    let t = token(&unique("r"));
    assert!(join_with(&lax, &t).await.is_ok());
    assert!(join_with(&lax, &t).await.is_ok());
}
