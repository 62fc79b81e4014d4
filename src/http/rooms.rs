//! The room API: `POST /v1/rooms` and `POST /v1/rooms/{room}/tokens`.

use std::time::Instant;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use super::errors::{ApiError, RequestId};
use super::ws::client_ip;
use crate::ids::{is_valid_room_id, new_room_id};
use crate::registry::{CreateRoom, RoomExists};
use crate::state::AppState;

fn unavailable(rid: &RequestId) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "internal error",
        rid,
    )
}

/// Creates a room and a first join token for it.
pub(crate) async fn create_room(
    app: web::Data<AppState>,
    req: HttpRequest,
    rid: RequestId,
) -> Result<HttpResponse, ApiError> {
    let ip = client_ip(&req, &app.settings);
    app.room_creates
        .check(ip, Instant::now())
        .map_err(|wait| ApiError::rate_limited(&rid, wait))?;
    let room = new_room_id();
    app.registry
        .send(CreateRoom {
            room: room.as_str().into(),
        })
        .await
        .map_err(|_| unavailable(&rid))?;
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
        ));
    }
    let ip = client_ip(&req, &app.settings);
    app.token_mints
        .check(ip, Instant::now())
        .map_err(|wait| ApiError::rate_limited(&rid, wait))?;
    let exists = app
        .registry
        .send(RoomExists {
            room: room.as_str().into(),
        })
        .await
        .map_err(|_| unavailable(&rid))?;
    if !exists {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "room_not_found",
            "no such room, or it has expired",
            &rid,
        ));
    }
    let (token, expires_at) = app.tokens.mint(&room, app.settings.join_token_ttl_secs);
    Ok(HttpResponse::Created().json(json!({"token": token, "expires_at": expires_at})))
}
