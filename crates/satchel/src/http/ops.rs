//! Health (`/healthz`: the process answers), readiness (`/readyz`: database and storage
//! reachable) and Prometheus metrics (`/metrics`).

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::App;
use crate::db::Exec;

pub fn routes() -> OpenApiRouter<App> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, description = "Process is alive")))]
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// The database and the object storage are reachable.
#[utoipa::path(get, path = "/readyz", tag = "ops", responses((status = 200, description = "Ready"), (status = 503, description = "A dependency is down")))]
async fn readyz(State(app): State<App>) -> impl IntoResponse {
    let db = app.db.ping().await.map_err(|e| e.to_string());
    let storage = app.storage.check().await.map_err(|e| e.to_string());
    let ok = db.is_ok() && storage.is_ok();
    if let Err(e) = &db {
        tracing::warn!(error = %e, "readiness: database unreachable");
    }
    if let Err(e) = &storage {
        tracing::warn!(error = %e, "readiness: storage unreachable");
    }
    let body = json!({
        "status": if ok { "ready" } else { "unavailable" },
        "database": { "backend": app.db.backend().name(), "ok": db.is_ok() },
        "storage": { "backend": app.storage.kind(), "ok": storage.is_ok() },
    });
    (
        if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        Json(body),
    )
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "ops", responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
async fn metrics(State(app): State<App>) -> impl IntoResponse {
    let depth = crate::jobs::depth(&app.db).await.unwrap_or(-1);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(depth) + &app.download_starts.render_metrics(),
    )
}
