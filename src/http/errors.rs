//! The error body every failed request gets:
//! `{"error":{"code","message"},"request_id"}`. Messages are fixed texts:
//! they never echo a secret, token or room id.

use std::convert::Infallible;
use std::future::{ready, Ready};

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{dev::Payload, FromRequest, HttpMessage, HttpRequest, HttpResponse, ResponseError};
use serde_json::json;

use crate::ids::new_request_id;

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
        }
    }

    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs.max(1));
        self
    }

    pub fn rate_limited(rid: &RequestId, wait: std::time::Duration) -> Self {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many requests; retry after the time in Retry-After",
            rid,
        )
        .retry_after(wait.as_secs_f64().ceil() as u64)
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
        resp.json(json!({
            "error": {"code": self.code, "message": self.message},
            "request_id": self.request_id,
        }))
    }
}

/// The fallback for every unknown route (and every route switched off).
pub(crate) async fn not_found(rid: RequestId) -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such route",
        &rid,
    ))
}
