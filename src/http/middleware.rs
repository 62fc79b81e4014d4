//! Middleware: request ids, security headers, CORS.

use std::sync::Arc;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{web, Error, HttpMessage, HttpResponse, ResponseError};

use super::errors::{ApiError, RequestId};
use crate::ids::{is_valid_request_id, new_request_id};
use crate::settings::{AppEnv, Settings};

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

fn settings(req: &ServiceRequest) -> Arc<Settings> {
    req.app_data::<web::Data<Arc<Settings>>>()
        .map(|s| s.get_ref().clone())
        .expect("settings are registered as app data")
}

/// Keeps a well-formed incoming `X-Request-Id`, else makes one; puts it in
/// the request's extensions (for error bodies) and on the response.
pub(crate) async fn request_id(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let enabled = settings(&req).feature_request_id;
    let id = req
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| enabled && is_valid_request_id(v))
        .map(str::to_owned)
        .unwrap_or_else(new_request_id);
    let rid = RequestId(id.clone());
    req.extensions_mut().insert(rid.clone());
    // Only standard methods reach the router and the HTTP metrics, whose
    // `method` label would otherwise take any token a client sends.
    let standard = matches!(
        *req.method(),
        Method::GET
            | Method::HEAD
            | Method::POST
            | Method::PUT
            | Method::DELETE
            | Method::PATCH
            | Method::OPTIONS
    );
    let mut res = if standard {
        next.call(req).await?.map_into_boxed_body()
    } else {
        let (http_req, _) = req.into_parts();
        ServiceResponse::new(http_req, method_not_allowed(&rid))
    };
    if res.status() == StatusCode::METHOD_NOT_ALLOWED
        && !res.headers().contains_key(header::CONTENT_TYPE)
    {
        // The router's own 405 has no body; every error gets the error body.
        let allow = res.headers().get(header::ALLOW).cloned();
        let (http_req, _) = res.into_parts();
        let mut resp = method_not_allowed(&rid);
        if let Some(allow) = allow {
            resp.headers_mut().insert(header::ALLOW, allow);
        }
        res = ServiceResponse::new(http_req, resp);
    }
    if enabled {
        if let Ok(v) = HeaderValue::from_str(&id) {
            res.headers_mut().insert(X_REQUEST_ID, v);
        }
    }
    Ok(res)
}

fn method_not_allowed(rid: &RequestId) -> HttpResponse {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this method is not allowed on this route",
        rid,
    )
    .error_response()
}

/// Adds the security headers of `FEATURE_SECURITY_HEADERS`.
pub(crate) async fn security_headers(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let s = settings(&req);
    let mut res = next.call(req).await?.map_into_boxed_body();
    if s.feature_security_headers {
        let h = res.headers_mut();
        // The web client's pages carry their own policy (src/http/client.rs);
        // everything else gets the configured one.
        if !h.contains_key(header::CONTENT_SECURITY_POLICY) {
            if let Ok(v) = HeaderValue::from_str(&s.csp_directives) {
                h.insert(header::CONTENT_SECURITY_POLICY, v);
            }
        }
        if s.hsts_max_age > 0 {
            let mut hsts = format!("max-age={}", s.hsts_max_age);
            if s.hsts_include_subdomains {
                hsts.push_str("; includeSubDomains");
            }
            if s.hsts_preload {
                hsts.push_str("; preload");
            }
            if let Ok(v) = HeaderValue::from_str(&hsts) {
                h.insert(header::STRICT_TRANSPORT_SECURITY, v);
            }
        }
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        h.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("strict-origin-when-cross-origin"),
        );
        h.insert(
            HeaderName::from_static("permissions-policy"),
            HeaderValue::from_static("camera=(), microphone=(), geolocation=(), payment=()"),
        );
    }
    res.headers_mut().remove(header::SERVER);
    Ok(res)
}

/// Whether `origin` may use this relay: the configured list; an empty list
/// allows every origin in development and none in production.
pub(crate) fn origin_allowed(settings: &Settings, origin: &str) -> bool {
    if settings.cors_allowed_origins.is_empty() {
        return settings.app_env != AppEnv::Production;
    }
    let origin = origin.trim_end_matches('/');
    settings
        .cors_allowed_origins
        .iter()
        .any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
}

/// CORS for the HTTP API (`FEATURE_CORS`), preflight included.
pub(crate) async fn cors(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let s = settings(&req);
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let allowed = s.feature_cors && origin.as_deref().is_some_and(|o| origin_allowed(&s, o));
    let preflight = s.feature_cors
        && req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut res = if preflight {
        let status = if allowed {
            StatusCode::NO_CONTENT
        } else {
            StatusCode::FORBIDDEN
        };
        let (http_req, _) = req.into_parts();
        ServiceResponse::new(http_req, HttpResponse::new(status))
    } else {
        next.call(req).await?.map_into_boxed_body()
    };
    if allowed {
        let h = res.headers_mut();
        if let Some(Ok(v)) = origin.as_deref().map(HeaderValue::from_str) {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
        }
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
        if s.cors_allow_credentials {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("x-request-id, retry-after"),
        );
        if preflight {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, POST, OPTIONS"),
            );
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("content-type, x-request-id"),
            );
            h.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("600"),
            );
        }
    }
    Ok(res)
}
