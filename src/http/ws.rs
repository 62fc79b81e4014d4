//! WebSocket upgrades: admission (draining, Origin, connection limits) and
//! the handshake response. The response carries a [`Ticket`]; the upgrade
//! service (`super::upgrade`) writes it and gives the connection to a new
//! session actor.

use std::net::IpAddr;
use std::sync::Arc;

use actix_http::ws::HandshakeError;
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};

use super::client::same_origin;
use super::errors::{ApiError, RequestId};
use super::middleware::origin_allowed;
use super::upgrade::ViaUpgrade;
use crate::limits::Admission;
use crate::session::{Mode, Ticket};
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
    rid: RequestId,
    mode: Mode,
) -> Result<HttpResponse, ApiError> {
    let app: Arc<AppState> = app.into_inner();
    let s = &app.settings;
    let detailed = s.feature_detailed_errors;
    let bad_upgrade = |app: &AppState, why: &'static str| {
        app.metrics.reject("bad_upgrade");
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_upgrade",
            "not a valid WebSocket upgrade request",
            &rid,
        )
        .detail(detailed, || why.into())
    };
    // Checked before admission: a request that is no upgrade takes no slot.
    let mut handshake = actix_http::ws::handshake(req.head()).map_err(|e| match e {
        // RFC 6455 section 4.4: say which version the server speaks.
        HandshakeError::UnsupportedVersion | HandshakeError::NoVersionHeader => {
            bad_upgrade(&app, "Sec-WebSocket-Version must be 13 (RFC 6455)")
                .with_header(header::SEC_WEBSOCKET_VERSION, "13")
        }
        HandshakeError::GetMethodRequired => bad_upgrade(&app, "an upgrade must be a GET"),
        HandshakeError::NoWebsocketUpgrade => {
            bad_upgrade(&app, "the Upgrade header must be 'websocket'")
        }
        HandshakeError::NoConnectionUpgrade => {
            bad_upgrade(&app, "the Connection header must include 'Upgrade'")
        }
        HandshakeError::BadWebsocketKey => bad_upgrade(
            &app,
            "Sec-WebSocket-Key must be 16 bytes in base64 (24 characters)",
        ),
    })?;
    // Only a request the server handed over as an upgrade can become one
    // (not, say, `Upgrade: websocket, h2c`, which it reads as plain HTTP).
    if req.extensions().get::<ViaUpgrade>().is_none() {
        return Err(bad_upgrade(
            &app,
            "the request was not read as an upgrade: send 'Upgrade: websocket' alone, over HTTP/1.1",
        ));
    }
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
        let ok = origin
            .to_str()
            .is_ok_and(|o| origin_allowed(s, o) || same_origin(s, &req, o));
        if !ok {
            app.metrics.reject("origin");
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "origin_not_allowed",
                "Origin not allowed",
                &rid,
            )
            .detail(detailed, || {
                "the Origin header is not listed in CORS_ALLOWED_ORIGINS".into()
            }));
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
    let mut response = HttpResponse::from(handshake.finish()).map_into_boxed_body();
    response.extensions_mut().insert(Ticket {
        app,
        mode,
        slot,
        log,
    });
    Ok(response)
}

/// `GET /v1/ws`
pub(crate) async fn relay(
    app: web::Data<AppState>,
    req: HttpRequest,
    rid: RequestId,
) -> Result<HttpResponse, ApiError> {
    upgrade(app, req, rid, Mode::Relay).await
}

/// `GET /v1/echo` (`FEATURE_ECHO_ENDPOINT=true` only)
pub(crate) async fn echo(
    app: web::Data<AppState>,
    req: HttpRequest,
    rid: RequestId,
) -> Result<HttpResponse, ApiError> {
    upgrade(app, req, rid, Mode::Echo).await
}
