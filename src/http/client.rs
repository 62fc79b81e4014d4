//! The reference web client (`FEATURE_WEB_CLIENT`): a static page and its
//! script and style, compiled into the binary (nothing to deploy beside it,
//! nothing read from a read-only root filesystem). The page gets its own
//! Content-Security-Policy: its own script and style, `connect-src 'self'`
//! for the API and the WebSocket, nothing else; the API routes keep the
//! strict policy of `CSP_DIRECTIVES`.

use actix_web::http::header::{self, HeaderValue};
use actix_web::{web, HttpRequest, HttpResponse};

use crate::settings::Settings;

const INDEX: &str = include_str!("../../web/index.html");
const SCRIPT: &str = include_str!("../../web/app.js");
const STYLE: &str = include_str!("../../web/app.css");

/// Only this origin's script and style; the API and WebSocket on this
/// origin; no frames, forms, plugins or base URI.
pub(crate) const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/").route(web::get().to(index)));
    cfg.service(web::resource("/app.js").route(web::get().to(script)));
    cfg.service(web::resource("/app.css").route(web::get().to(style)));
    // Browsers ask for it on their own; an empty answer keeps their
    // consoles free of a 404 on every visit.
    cfg.service(web::resource("/favicon.ico").route(web::get().to(HttpResponse::NoContent)));
}

fn page(content_type: &'static str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, HeaderValue::from_static(content_type)))
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(PAGE_CSP),
        ))
        // The invite link's fragment never leaves the browser; the page
        // URL itself is not worth sending anywhere either.
        .insert_header((
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-cache")))
        .body(body)
}

async fn index() -> HttpResponse {
    page("text/html; charset=utf-8", INDEX)
}

async fn script() -> HttpResponse {
    page("text/javascript; charset=utf-8", SCRIPT)
}

async fn style() -> HttpResponse {
    page("text/css; charset=utf-8", STYLE)
}

/// With the web client on, its own pages may open the WebSocket: an
/// `Origin` naming the host the request was sent to is this relay's page.
/// (A page on another site cannot make a browser send this relay's host
/// as its Origin; a non-browser client can send anything, Origin or not.)
pub(crate) fn same_origin(settings: &Settings, req: &HttpRequest, origin: &str) -> bool {
    if !settings.feature_web_client {
        return false;
    }
    let Some(host) = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
    else {
        return false;
    };
    let origin = origin.trim_end_matches('/');
    origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .is_some_and(|o| o.eq_ignore_ascii_case(host))
}
