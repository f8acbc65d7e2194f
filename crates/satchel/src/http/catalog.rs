//! Public catalog endpoints.

use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::App;
use crate::catalog::{self, ListParams};
use crate::error::{not_found, ApiResult};
use crate::http::extract::ApiQuery;

pub fn routes() -> OpenApiRouter<App> {
    OpenApiRouter::new()
        .routes(routes!(list_products))
        .routes(routes!(get_product))
        .routes(routes!(cover))
}

/// Published products, newest first, paged by cursor, with optional full-text search.
#[utoipa::path(get, path = "/api/v1/products", tag = "catalog", params(ListParams),
    responses((status = 200, description = "`{items: [Product], next_cursor}`"), (status = 400, description = "Bad parameter")))]
async fn list_products(State(app): State<App>, ApiQuery(params): ApiQuery<ListParams>) -> ApiResult<Json<Value>> {
    let (rows, next) = catalog::list_products(&app.db, &params, None).await?;
    let ids: Vec<String> = rows.iter().map(|p| p.id.clone()).collect();
    let ratings = crate::reviews::ratings(&app.db, &ids).await?;
    let mut items = Vec::with_capacity(rows.len());
    for p in &rows {
        let mut v = catalog::product_json(&app.db, p, false).await?;
        v["rating"] = ratings.get(&p.id).copied().unwrap_or_default().json();
        items.push(v);
    }
    Ok(Json(json!({ "items": items, "next_cursor": next })))
}

/// One product by id (`prd_…`) or slug, with its rendered description and current version.
#[utoipa::path(get, path = "/api/v1/products/{id}", tag = "catalog",
    params(("id" = String, Path, description = "Product id or slug")),
    responses((status = 200, description = "Product"), (status = 404, description = "No such published product")))]
async fn get_product(State(app): State<App>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let p = catalog::find_product(&app.db, &id)
        .await?
        .filter(|p| p.status != "draft")
        .ok_or_else(|| not_found("product"))?;
    // A suspended store's products are hidden like drafts.
    let active = crate::accounts::find_seller(&app.db, &p.seller_id)
        .await?
        .is_some_and(|s| s.status == "active");
    if !active {
        return Err(not_found("product"));
    }
    Ok(Json(catalog::product_json(&app.db, &p, true).await?))
}

/// A product's cover image. SVGs are served with a CSP that forbids scripts and `nosniff`.
#[utoipa::path(get, path = "/media/products/{id}/cover", tag = "catalog", params(("id" = String, Path, description = "Product id or slug")),
    responses((status = 200, description = "The image"), (status = 404, description = "No cover")))]
async fn cover(State(app): State<App>, Path(id): Path<String>) -> ApiResult<axum::response::Response> {
    use axum::http::header;
    use axum::response::IntoResponse;
    let p = catalog::find_product(&app.db, &id)
        .await?
        .filter(|p| p.status != "draft")
        .ok_or_else(|| not_found("product"))?;
    let key = p.cover_key.ok_or_else(|| not_found("cover image"))?;
    let content_type = match key.rsplit('.').next().unwrap_or_default() {
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "gif" => "image/gif",
        _ => "application/octet-stream",
    };
    let got = app.storage.get(&key, None).await.map_err(|e| match e {
        crate::storage::StorageError::NotFound(_) => not_found("cover image"),
        other => other.into(),
    })?;
    Ok((
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
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
