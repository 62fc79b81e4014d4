//! WebSocket upgrades: admission (draining, Origin, connection limits),
//! then the session actor takes the connection.

use std::net::IpAddr;
use std::sync::Arc;

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};

use super::errors::{ApiError, RequestId};
use super::middleware::origin_allowed;
use crate::limits::Admission;
use crate::session::{self, Mode};
use crate::settings::Settings;
use crate::state::AppState;

/// The client's address: with `TRUST_PROXY=true` the right-most
/// `X-Forwarded-For` entry (the one our own proxy added), else the peer.
pub(crate) fn client_ip(req: &HttpRequest, settings: &Settings) -> IpAddr {
    if settings.trust_proxy {
        let forwarded = req
            .headers()
            .get_all("x-forwarded-for")
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|s| s.trim().parse::<IpAddr>().ok())
            .last();
        if let Some(ip) = forwarded {
            return ip;
        }
    }
    req.peer_addr()
        .map(|a| a.ip())
        .unwrap_or(IpAddr::from([0, 0, 0, 0]))
}

async fn upgrade(
    app: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
    rid: RequestId,
    mode: Mode,
) -> Result<HttpResponse, ApiError> {
    let app: Arc<AppState> = app.into_inner();
    let s = &app.settings;
    if app.is_draining() {
        app.metrics.reject("draining");
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "this instance is shutting down; reconnect to another",
            &rid,
        )
        .retry_after(1));
    }
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let ok = origin.to_str().is_ok_and(|o| origin_allowed(s, o));
        if !ok {
            app.metrics.reject("origin");
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "origin_not_allowed",
                "Origin not allowed",
                &rid,
            ));
        }
    }
    let ip = client_ip(&req, s);
    let slot = match app.connections.acquire(ip) {
        Ok(slot) => slot,
        Err(Admission::IpLimit) => {
            app.metrics.reject("ip_limit");
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "ip_limit",
                "too many connections from this address (MAX_CONNS_PER_IP)",
                &rid,
            )
            .retry_after(5));
        }
        Err(Admission::GlobalLimit) => {
            app.metrics.reject("global_limit");
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "at_capacity",
                "this instance is at capacity (MAX_TOTAL_CONNECTIONS)",
                &rid,
            )
            .retry_after(5));
        }
    };
    let log = if s.feature_ip_tracking {
        app.log
            .new(slog::o!("client_ip" => ip.to_string(), "request_id" => rid.0.clone()))
    } else {
        app.log.new(slog::o!("request_id" => rid.0.clone()))
    };
    session::start(app.clone(), &req, payload, slot, mode, log).map_err(|_| {
        app.metrics.reject("bad_upgrade");
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_upgrade",
            "not a valid WebSocket upgrade request",
            &rid,
        )
    })
}

/// `GET /v1/ws`
pub(crate) async fn relay(
    app: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
    rid: RequestId,
) -> Result<HttpResponse, ApiError> {
    upgrade(app, req, payload, rid, Mode::Relay).await
}

/// `GET /v1/echo` (`FEATURE_ECHO_ENDPOINT=true` only)
pub(crate) async fn echo(
    app: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
    rid: RequestId,
) -> Result<HttpResponse, ApiError> {
    upgrade(app, req, payload, rid, Mode::Echo).await
}
