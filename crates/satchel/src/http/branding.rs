//! The store's logo (`sellers.logo_key`, set from the dashboard's settings), served from
//! storage for the storefront header. The URL carries a short hash of the key, so a new logo
//! is a new URL and browsers may cache each one for a day. Also the buyer-facing stylesheet
//! (`/static/buyer.css`: ratings, reviews, library, affiliate portal), compiled in.

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::App;
use crate::db::Exec;
use crate::error::{not_found, ApiResult};
use crate::sql;

pub fn routes() -> OpenApiRouter<App> {
    OpenApiRouter::new().routes(routes!(logo)).routes(routes!(buyer_css))
}

const BUYER_CSS: &str = include_str!("../../static/buyer.css");

/// The stylesheet of the buyer-facing pages (on top of `/static/app.css`).
#[utoipa::path(get, path = "/static/buyer.css", tag = "ops", responses((status = 200, description = "CSS", content_type = "text/css")))]
async fn buyer_css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        BUYER_CSS,
    )
        .into_response()
}

/// Where the header finds a seller's logo.
pub fn logo_url(seller_id: &str, logo_key: &str) -> String {
    let v = hex::encode(&Sha256::digest(logo_key.as_bytes())[..4]);
    format!("/media/sellers/{seller_id}/logo?v={v}")
}

/// Content type by extension; SVGs are locked down by the response's own CSP.
fn content_type(key: &str) -> &'static str {
    match key.rsplit('.').next().unwrap_or_default().to_ascii_lowercase().as_str() {
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "avif" => "image/avif",
        _ => "application/octet-stream",
    }
}

/// A store's logo image.
#[utoipa::path(get, path = "/media/sellers/{seller_id}/logo", tag = "catalog",
    params(("seller_id" = String, Path, description = "Seller id")),
    responses((status = 200, description = "The image"), (status = 404, description = "No such store, or no logo set")))]
async fn logo(State(app): State<App>, Path(seller_id): Path<String>) -> ApiResult<Response> {
    let row: Option<(Option<String>,)> = app
        .db
        .fetch_optional(sql!(
            "SELECT logo_key FROM sellers WHERE id = $1 AND status = 'active'",
            &seller_id
        ))
        .await?;
    let key = row
        .and_then(|r| r.0)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| not_found("logo"))?;
    let got = app.storage.get(&key, None).await.map_err(|e| match e {
        crate::storage::StorageError::NotFound(_) => not_found("logo"),
        other => other.into(),
    })?;
    Ok((
        [
            (header::CONTENT_TYPE, content_type(&key)),
            (header::CACHE_CONTROL, "public, max-age=86400"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'; sandbox",
            ),
        ],
        axum::body::Body::from_stream(got.body),
    )
        .into_response())
}
