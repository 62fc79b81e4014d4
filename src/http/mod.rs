//! The HTTP surface (PROTOCOL.md section 3): routes, middleware, the error
//! body, and the WebSocket upgrade that hands a connection to a session.

pub(crate) mod client;
mod errors;
mod middleware;
mod probes;
mod rooms;
pub(crate) mod server;
mod upgrade;
mod ws;

pub(crate) use upgrade::factory as upgrade_factory;

use actix_web::web;

use crate::settings::Settings;

/// Registers every route the settings turn on.
pub(crate) fn routes(cfg: &mut web::ServiceConfig, settings: &Settings) {
    cfg.service(web::resource("/live").route(web::get().to(probes::live)));
    if settings.feature_readiness_endpoint {
        cfg.service(web::resource("/ready").route(web::get().to(probes::ready)));
    }
    if settings.feature_health_endpoint {
        cfg.service(web::resource("/health").route(web::get().to(probes::health)));
    }
    if settings.feature_metrics_endpoint {
        cfg.service(web::resource("/metrics").route(web::get().to(probes::metrics)));
    }
    if settings.feature_room_api {
        cfg.service(web::resource("/v1/rooms").route(web::post().to(rooms::create_room)));
        cfg.service(
            web::resource("/v1/rooms/{room}/tokens").route(web::post().to(rooms::mint_token)),
        );
    }
    cfg.service(web::resource("/v1/ws").route(web::get().to(ws::relay)));
    if settings.feature_echo_endpoint {
        cfg.service(web::resource("/v1/echo").route(web::get().to(ws::echo)));
    }
    if settings.feature_web_client {
        client::routes(cfg);
    }
}

pub(crate) use errors::not_found;
pub(crate) use middleware::{cors, request_id, security_headers};
