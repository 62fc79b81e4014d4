//! The error body every failed request gets:
//! `{"error":{"code","message"},"request_id"}`. Messages are fixed texts:
//! they never echo a secret, token or room id. With
//! `FEATURE_DETAILED_ERRORS` (development) the error also carries a
//! `detail`: which check failed and what to change, still without echoing
//! what the client sent.

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::sync::Arc;

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{
    dev::Payload, web, FromRequest, HttpMessage, HttpRequest, HttpResponse, ResponseError,
};
use serde_json::json;

use crate::ids::new_request_id;
use crate::settings::Settings;

/// The request's id, set by the request-id middleware.
#[derive(Clone, Debug)]
pub(crate) struct RequestId(pub String);

impl FromRequest for RequestId {
    type Error = Infallible;
    type Future = Ready<Result<Self, Infallible>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let id = req
            .extensions()
            .get::<RequestId>()
            .cloned()
            .unwrap_or_else(|| RequestId(new_request_id()));
        ready(Ok(id))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{status}: {code}")]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: &'static str,
    request_id: String,
    retry_after_secs: Option<u64>,
    /// A header the answer must carry (RFC 6455's `Sec-WebSocket-Version`
    /// on a refused version). Boxed, as is `detail`: both are rare, and the
    /// error travels in every handler's `Result`.
    header: Option<Box<(header::HeaderName, HeaderValue)>>,
    /// Which check failed (`FEATURE_DETAILED_ERRORS` only).
    detail: Option<Box<str>>,
}

impl ApiError {
    pub fn new(
        status: StatusCode,
        code: &'static str,
        message: &'static str,
        rid: &RequestId,
    ) -> Self {
        ApiError {
            status,
            code,
            message,
            request_id: rid.0.clone(),
            retry_after_secs: None,
            header: None,
            detail: None,
        }
    }

    /// Adds which check failed, when detailed errors are on (the text is
    /// only built then).
    pub fn detail(mut self, on: bool, detail: impl FnOnce() -> String) -> Self {
        if on {
            self.detail = Some(detail().into());
        }
        self
    }

    pub fn with_header(mut self, name: header::HeaderName, value: &'static str) -> Self {
        self.header = Some(Box::new((name, HeaderValue::from_static(value))));
        self
    }

    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs.max(1));
        self
    }

    /// `429` for a per-address limit; the detail names its `setting`.
    pub fn rate_limited(
        rid: &RequestId,
        wait: std::time::Duration,
        setting: &'static str,
        detailed: bool,
    ) -> Self {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many requests; retry after the time in Retry-After",
            rid,
        )
        .retry_after(wait.as_secs_f64().ceil() as u64)
        .detail(detailed, || format!("over {setting} from your address"))
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut resp = HttpResponse::build(self.status);
        if let Some(secs) = self.retry_after_secs {
            resp.insert_header((header::RETRY_AFTER, HeaderValue::from(secs)));
        }
        if let Some(h) = &self.header {
            resp.insert_header((h.0.clone(), h.1.clone()));
        }
        let mut error = json!({"code": self.code, "message": self.message});
        if let Some(detail) = &self.detail {
            error["detail"] = json!(&**detail);
        }
        resp.json(json!({"error": error, "request_id": self.request_id}))
    }
}

/// The fallback for every unknown route (and every route switched off).
pub(crate) async fn not_found(
    rid: RequestId,
    settings: Option<web::Data<Arc<Settings>>>,
) -> Result<HttpResponse, ApiError> {
    let detailed = settings.is_some_and(|s| s.feature_detailed_errors);
    Err(
        ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route", &rid).detail(
            detailed,
            || {
                "no route for this method and path; the API is POST /v1/rooms, \
                 POST /v1/rooms/{room}/tokens, GET /v1/ws, GET /live, /ready, /health, /metrics \
                 (routes switched off by a FEATURE_* setting are not found either)"
                    .into()
            },
        ),
    )
}
