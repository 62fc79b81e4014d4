//! The room API: `POST /v1/rooms` and `POST /v1/rooms/{room}/tokens`.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use super::errors::{ApiError, RequestId};
use super::ws::client_ip;
use crate::cluster::{Limit, StoreError};
use crate::ids::{is_valid_room_id, new_room_id};
use crate::state::AppState;

/// Cluster state could not be reached: 503 (Redis, try again shortly) or
/// 500 (this instance is broken). The cause goes to the log only.
fn unavailable(app: &AppState, rid: &RequestId, e: StoreError) -> ApiError {
    slog::warn!(app.log, "room API request failed"; "error" => %e, "request_id" => &rid.0);
    match e {
        StoreError::Unreachable(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "cluster_unavailable",
            "the cluster's shared state is unreachable; try again shortly",
            rid,
        )
        .retry_after(1)
        .detail(app.settings.feature_detailed_errors, || {
            format!("Redis (REDIS_URL) did not answer: {e}")
        }),
    }
}

/// Creates a room and a first join token for it.
pub(crate) async fn create_room(
    app: web::Data<AppState>,
    req: HttpRequest,
    rid: RequestId,
) -> Result<HttpResponse, ApiError> {
    let ip = client_ip(&req, &app.settings);
    app.backend
        .allow(Limit::RoomCreate, ip)
        .await
        .map_err(|e| unavailable(&app, &rid, e))?
        .map_err(|wait| {
            let detailed = app.settings.feature_detailed_errors;
            ApiError::rate_limited(&rid, wait, "MAX_ROOM_CREATES_PER_IP_PER_MIN", detailed)
        })?;
    let room = new_room_id();
    app.backend
        .create_room(&room)
        .await
        .map_err(|e| unavailable(&app, &rid, e))?;
    let (token, expires_at) = app.tokens.mint(&room, app.settings.join_token_ttl_secs);
    Ok(HttpResponse::Created()
        .json(json!({"room": room, "token": token, "expires_at": expires_at})))
}

/// Mints a fresh single-use token for a room that exists.
pub(crate) async fn mint_token(
    app: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    rid: RequestId,
) -> Result<HttpResponse, ApiError> {
    let room = path.into_inner();
    if !is_valid_room_id(&room) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_room_id",
            "room id must be 1-64 characters of A-Z, a-z, 0-9, '_' or '-'",
            &rid,
        )
        .detail(app.settings.feature_detailed_errors, || {
            match room.chars().count() {
                0 => "the room id is empty",
                1..=64 => "the room id holds a character other than A-Z, a-z, 0-9, '_' or '-'",
                _ => "the room id is longer than 64 characters",
            }
            .into()
        }));
    }
    let ip = client_ip(&req, &app.settings);
    app.backend
        .allow(Limit::TokenMint, ip)
        .await
        .map_err(|e| unavailable(&app, &rid, e))?
        .map_err(|wait| {
            let detailed = app.settings.feature_detailed_errors;
            ApiError::rate_limited(&rid, wait, "MAX_TOKEN_MINTS_PER_IP_PER_MIN", detailed)
        })?;
    let exists = app
        .backend
        .room_exists(&room)
        .await
        .map_err(|e| unavailable(&app, &rid, e))?;
    if !exists {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "room_not_found",
            "no such room, or it has expired",
            &rid,
        )
        .detail(app.settings.feature_detailed_errors, || {
            "rooms exist from POST /v1/rooms until ROOM_IDLE_TTL_SECS after their last member left"
                .into()
        }));
    }
    let (token, expires_at) = app.tokens.mint(&room, app.settings.join_token_ttl_secs);
    Ok(HttpResponse::Created().json(json!({"token": token, "expires_at": expires_at})))
}
