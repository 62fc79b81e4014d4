//! The HTTP surface (PROTOCOL.md section 3): routes, middleware, the error
//! body, and the WebSocket upgrade that hands a connection to a session.

mod errors;
mod middleware;
mod probes;
mod rooms;
mod ws;

use actix_web::web;

use crate::settings::Settings;

/// Registers every route the settings turn on.
pub(crate) fn routes(cfg: &mut web::ServiceConfig, settings: &Settings) {
    cfg.route("/live", web::get().to(probes::live));
    if settings.feature_readiness_endpoint {
        cfg.route("/ready", web::get().to(probes::ready));
    }
    if settings.feature_health_endpoint {
        cfg.route("/health", web::get().to(probes::health));
    }
    if settings.feature_metrics_endpoint {
        cfg.route("/metrics", web::get().to(probes::metrics));
    }
    if settings.feature_room_api {
        cfg.route("/v1/rooms", web::post().to(rooms::create_room));
        cfg.route("/v1/rooms/{room}/tokens", web::post().to(rooms::mint_token));
    }
    cfg.route("/v1/ws", web::get().to(ws::relay));
    if settings.feature_echo_endpoint {
        cfg.route("/v1/echo", web::get().to(ws::echo));
    }
}

pub(crate) use errors::not_found;
pub(crate) use middleware::{cors, request_id, security_headers};
