//! The HTTP surface: health and readiness probes, JSON errors for unknown routes.
//!
//! `/healthz` answers whether the process is alive (always 200 while it serves HTTP);
//! `/readyz` answers whether it should receive traffic: every registered [`ReadinessCheck`]
//! (store ping, broker ping, …) must pass, and the daemon must not be shutting down. The REST
//! API (`/v1/…`), the agent WebSocket and `/metrics` are mounted here as they land.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{http::StatusCode, web, HttpRequest, HttpResponse};
use async_trait::async_trait;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// How long one readiness check may take before it counts as failed. Probes are polled every
/// few seconds by orchestrators; a hung dependency must not hang the probe.
pub const READINESS_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// One dependency the daemon needs before it can serve traffic.
#[async_trait]
pub trait ReadinessCheck: Send + Sync {
    /// Short stable name shown in `/readyz` output, e.g. `"store"`.
    fn name(&self) -> &str;

    /// `Ok(())` when the dependency answers; otherwise a one-line reason.
    async fn check(&self) -> Result<(), String>;
}

/// The set of readiness checks behind `/readyz`. Empty means ready.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Vec<Arc<dyn ReadinessCheck>>,
}

impl Readiness {
    /// No checks: always ready.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a check.
    pub fn with(mut self, check: Arc<dyn ReadinessCheck>) -> Self {
        self.checks.push(check);
        self
    }

    /// Runs every check concurrently, each bounded by [`READINESS_CHECK_TIMEOUT`].
    pub async fn report(&self) -> ReadinessReport {
        let results = futures::future::join_all(self.checks.iter().map(|check| async move {
            let outcome = match tokio::time::timeout(READINESS_CHECK_TIMEOUT, check.check()).await {
                Ok(Ok(())) => CheckOutcome::ok(),
                Ok(Err(reason)) => CheckOutcome::failed(reason),
                Err(_) => CheckOutcome::failed(format!(
                    "no answer within {} ms",
                    READINESS_CHECK_TIMEOUT.as_millis()
                )),
            };
            (check.name().to_owned(), outcome)
        }))
        .await;
        let ready = results.iter().all(|(_, outcome)| outcome.error.is_none());
        ReadinessReport {
            ready,
            checks: results.into_iter().collect(),
        }
    }
}

/// The result of all readiness checks.
#[derive(Debug, Serialize)]
pub struct ReadinessReport {
    /// Whether every check passed.
    pub ready: bool,
    /// Each check by name.
    pub checks: std::collections::BTreeMap<String, CheckOutcome>,
}

/// The result of one readiness check.
#[derive(Debug, Serialize)]
pub struct CheckOutcome {
    /// `"ok"` or `"failed"`.
    pub status: &'static str,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl CheckOutcome {
    fn ok() -> Self {
        Self {
            status: "ok",
            error: None,
        }
    }

    fn failed(reason: String) -> Self {
        Self {
            status: "failed",
            error: Some(reason),
        }
    }
}

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct AppState {
    /// Checks behind `/readyz`.
    pub readiness: Readiness,
    /// Cancelled when shutdown begins; `/readyz` then answers 503 so traffic drains away.
    pub shutdown: CancellationToken,
}

/// Registers the routes on an actix `App` (used by the daemon and by tests).
pub fn configure(state: AppState) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg: &mut web::ServiceConfig| {
        cfg.app_data(web::Data::new(state))
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
            .default_service(web::to(not_found));
    }
}

/// The body of every error response: `{"error": {"code": …, "message": …}}`.
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// See [`ErrorBody`].
#[derive(Debug, Serialize)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `"not_found"`.
    pub code: &'static str,
    /// Human-readable explanation.
    pub message: String,
}

/// A JSON error response.
pub fn error_response(status: StatusCode, code: &'static str, message: String) -> HttpResponse {
    HttpResponse::build(status).json(ErrorBody {
        error: ErrorDetail { code, message },
    })
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
    }))
}

async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    if state.shutdown.is_cancelled() {
        return HttpResponse::ServiceUnavailable().json(serde_json::json!({
            "status": "shutting_down",
            "checks": {},
        }));
    }
    let report = state.readiness.report().await;
    let (mut response, status) = if report.ready {
        (HttpResponse::Ok(), "ready")
    } else {
        (HttpResponse::ServiceUnavailable(), "not_ready")
    };
    response.json(serde_json::json!({ "status": status, "checks": report.checks }))
}

async fn not_found(req: HttpRequest) -> HttpResponse {
    error_response(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route for {} {}", req.method(), req.path()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::{test, App};

    struct Fixed(&'static str, Result<(), String>);

    #[async_trait]
    impl ReadinessCheck for Fixed {
        fn name(&self) -> &str {
            self.0
        }
        async fn check(&self) -> Result<(), String> {
            self.1.clone()
        }
    }

    fn state(readiness: Readiness) -> AppState {
        AppState {
            readiness,
            shutdown: CancellationToken::new(),
        }
    }

    async fn get(state: AppState, path: &str) -> (StatusCode, serde_json::Value) {
        let app = test::init_service(App::new().configure(configure(state))).await;
        let response =
            test::call_service(&app, test::TestRequest::get().uri(path).to_request()).await;
        let status = response.status();
        let body: serde_json::Value = test::read_body_json(response).await;
        (status, body)
    }

    #[actix_web::test]
    async fn healthz_reports_ok_and_version() {
        let (status, body) = get(state(Readiness::new()), "/healthz").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["status"], "ok");
        assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    }

    #[actix_web::test]
    async fn readyz_is_ready_without_checks() {
        let (status, body) = get(state(Readiness::new()), "/readyz").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["status"], "ready");
    }

    #[actix_web::test]
    async fn readyz_fails_when_any_check_fails() {
        let readiness = Readiness::new()
            .with(Arc::new(Fixed("store", Ok(()))))
            .with(Arc::new(Fixed("broker", Err("connection refused".into()))));
        let (status, body) = get(state(readiness), "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["checks"]["store"]["status"], "ok");
        assert_eq!(body["checks"]["broker"]["error"], "connection refused");
    }

    #[actix_web::test]
    async fn readyz_is_unavailable_during_shutdown() {
        let state = state(Readiness::new());
        state.shutdown.cancel();
        let (status, body) = get(state, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["status"], "shutting_down");
    }

    #[actix_web::test]
    async fn unknown_routes_are_json_404s() {
        let (status, body) = get(state(Readiness::new()), "/nope").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["error"]["code"], "not_found");
        assert_eq!(body["error"]["message"], "no route for GET /nope");
    }
}
