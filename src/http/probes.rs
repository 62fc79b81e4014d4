//! Probes and metrics: `/live`, `/ready`, `/health`, `/metrics`.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use super::errors::{ApiError, RequestId};
use super::ws::client_ip;
use crate::limits::KeyedLimiter;
use crate::metrics::{resident_memory_bytes, Render};
use crate::state::AppState;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn limit(
    app: &AppState,
    limiter: &KeyedLimiter,
    req: &HttpRequest,
    rid: &RequestId,
) -> Result<(), ApiError> {
    limiter
        .check(client_ip(req, &app.settings), Instant::now())
        .map_err(|wait| {
            let detailed = app.settings.feature_detailed_errors;
            ApiError::rate_limited(rid, wait, "HTTP_PROBE_LIMIT_PER_MIN", detailed)
        })
}

/// Always 200 while the process runs; never rate limited.
pub(crate) async fn live() -> HttpResponse {
    HttpResponse::Ok().json(json!({"alive": true, "timestamp": now_ms()}))
}

/// 200 once serving, 503 while starting up or draining.
pub(crate) async fn ready(
    app: web::Data<AppState>,
    req: HttpRequest,
    rid: RequestId,
) -> Result<HttpResponse, ApiError> {
    limit(&app, &app.ready_limit, &req, &rid)?;
    let ready = app.is_ready();
    // Standalone there is nothing to wait for.
    let redis = app.backend.link().is_none_or(|l| l.is_up());
    let body = json!({
        "ready": ready,
        "timestamp": now_ms(),
        "checks": {"redis": redis, "configLoaded": true},
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok(HttpResponse::build(status).json(body))
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Check {
    Pass,
    Warn,
    Fail,
}

impl Check {
    fn as_str(self) -> &'static str {
        match self {
            Check::Pass => "pass",
            Check::Warn => "warn",
            Check::Fail => "fail",
        }
    }
}

/// The seed's health body: redis, memory and connection checks.
pub(crate) async fn health(
    app: web::Data<AppState>,
    req: HttpRequest,
    rid: RequestId,
) -> Result<HttpResponse, ApiError> {
    limit(&app, &app.health_limit, &req, &rid)?;
    let s = &app.settings;
    let mem_mb = resident_memory_bytes() / (1024 * 1024);
    let memory = if mem_mb >= s.health_memory_fail_mb {
        Check::Fail
    } else if mem_mb >= s.health_memory_warn_mb {
        Check::Warn
    } else {
        Check::Pass
    };
    let conns = app.connections.active();
    let max = app.connections.max_total();
    let connections = if conns >= max {
        Check::Fail
    } else if conns * 10 >= max * 9 {
        Check::Warn
    } else {
        Check::Pass
    };
    // An outage degrades (it does not fail: every instance would be taken
    // out at once); the observed value is the last measured round trip.
    let (redis, redis_ms) = match app.backend.link() {
        None => (Check::Pass, None),
        Some(l) if l.is_up() => (
            Check::Pass,
            Some((l.round_trip().as_secs_f64() * 1e6).round() / 1e3),
        ),
        Some(_) => (Check::Warn, None),
    };
    let worst = memory.max(connections).max(redis);
    let (status, code) = match worst {
        Check::Pass => ("healthy", StatusCode::OK),
        Check::Warn => ("degraded", StatusCode::OK),
        Check::Fail => ("unhealthy", StatusCode::SERVICE_UNAVAILABLE),
    };
    if worst != Check::Pass && s.log_health_check_failures {
        slog::warn!(app.log, "health check not passing";
            "status" => status, "redis" => redis.as_str(), "memory" => memory.as_str(),
            "connections" => connections.as_str());
    }
    let body = json!({
        "status": status,
        "timestamp": now_ms(),
        "uptime": app.started.elapsed().as_secs(),
        "checks": {
            "redis": {"status": redis.as_str(), "observedValue": redis_ms, "observedUnit": "ms"},
            "memory": {"status": memory.as_str(), "observedValue": mem_mb, "observedUnit": "MB"},
            "connections": {"status": connections.as_str(), "observedValue": conns, "observedUnit": "connections"},
        },
        "version": s.service_version,
        "instanceId": s.instance_id,
    });
    Ok(HttpResponse::build(code).json(body))
}

/// Prometheus text, or JSON with `Accept: application/json` (always JSON
/// with `METRICS_EXPORT_PROMETHEUS=false`).
pub(crate) async fn metrics(
    app: web::Data<AppState>,
    req: HttpRequest,
    rid: RequestId,
) -> Result<HttpResponse, ApiError> {
    limit(&app, &app.metrics_limit, &req, &rid)?;
    let wants_json = !app.settings.metrics_export_prometheus
        || req
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("application/json"));
    let body = app
        .metrics_actor
        .send(Render { json: wants_json })
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error",
                &rid,
            )
        })?;
    let content_type = if wants_json {
        "application/json"
    } else {
        "text/plain; version=0.0.4; charset=utf-8"
    };
    Ok(HttpResponse::Ok().content_type(content_type).body(body))
}
