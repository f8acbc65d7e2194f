//! Product preview images: sellers add (multipart) and delete them; anyone reads them at
//! stable URLs. See [`crate::images`].

use axum::extract::{FromRequest, Multipart, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::App;
use crate::auth::SellerAuth;
use crate::catalog;
use crate::db::models::Product;
use crate::error::{bad_request, not_found, ApiError, ApiResult};

/// Largest request to the images endpoint (several images); each image has its own limit.
const MAX_REQUEST: usize = 256 * 1024 * 1024;

pub fn routes() -> OpenApiRouter<App> {
    OpenApiRouter::new()
        .routes(routes!(add_images))
        .routes(routes!(delete_image))
        .routes(routes!(image_file))
        .routes(routes!(image_thumb))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_REQUEST))
}

async fn own_product(app: &App, auth: &SellerAuth, id: &str) -> ApiResult<Product> {
    catalog::find_product(&app.db, id)
        .await?
        .filter(|p| p.seller_id == auth.seller_id)
        .ok_or_else(|| not_found("product"))
}

fn too_large(max: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "image_too_large",
        format!("each preview image may be at most {max} bytes (uploads.image_max_bytes)"),
    )
    .field("image")
}

/// Adds preview images (multipart, one or more file parts, PNG/JPEG/WebP/GIF). They are
/// appended in order; the first image becomes the cover if the product has none.
#[utoipa::path(post, path = "/api/v1/products/{product_id}/images", tag = "seller", params(("product_id" = String, Path)),
    request_body(content_type = "multipart/form-data", description = "file parts (any field name), e.g. image=@shot.png"),
    responses((status = 201, description = "`{items: [{id, url, thumb_url, width, height}], next_cursor}`: the images added"),
        (status = 404, description = "Not one of your products"), (status = 409, description = "too_many_images"),
        (status = 413, description = "image_too_large"), (status = 415, description = "unsupported_image"),
        (status = 422, description = "invalid_image")))]
async fn add_images(
    State(app): State<App>,
    auth: SellerAuth,
    Path(product_id): Path<String>,
    req: Request,
) -> ApiResult<Response> {
    let product = own_product(&app, &auth, &product_id).await?;
    let max = app.cfg.uploads.image_max_bytes;
    let mut mp = Multipart::from_request(req, &app).await.map_err(|e| {
        bad_request(
            "invalid_multipart",
            format!("{e}; send multipart/form-data with image files"),
        )
    })?;
    let mut added = Vec::new();
    while let Some(mut field) = mp.next_field().await.map_err(|e| multipart_error(&e, max))? {
        if field.file_name().is_none() {
            continue;
        }
        let mut buf = bytes::BytesMut::new();
        while let Some(chunk) = field.chunk().await.map_err(|e| multipart_error(&e, max))? {
            if (buf.len() + chunk.len()) as u64 > max {
                return Err(too_large(max));
            }
            buf.extend_from_slice(&chunk);
        }
        added.push(crate::images::add(&app, &product, buf.freeze()).await?.view());
    }
    if added.is_empty() {
        return Err(bad_request("no_image", "send at least one image file part").field("image"));
    }
    Ok((StatusCode::CREATED, Json(json!({"items": added, "next_cursor": null}))).into_response())
}

fn multipart_error(e: &axum::extract::multipart::MultipartError, max: u64) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        too_large(max)
    } else {
        bad_request("invalid_multipart", e.body_text())
    }
}

/// Deletes a preview image (if it was the cover, the next image becomes the cover).
#[utoipa::path(delete, path = "/api/v1/products/{product_id}/images/{image_id}", tag = "seller",
    params(("product_id" = String, Path), ("image_id" = String, Path)),
    responses((status = 204, description = "Deleted"), (status = 404, description = "Not one of your products or images")))]
async fn delete_image(
    State(app): State<App>,
    auth: SellerAuth,
    Path((product_id, image_id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let product = own_product(&app, &auth, &product_id).await?;
    crate::images::delete(&app, &product, &image_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn serve(app: &App, product_id: &str, image_id: &str, thumb: bool) -> ApiResult<Response> {
    let p = catalog::find_product(&app.db, product_id)
        .await?
        .filter(|p| p.status != "draft")
        .ok_or_else(|| not_found("product"))?;
    let img = crate::images::find(&app.db, &p.id, image_id)
        .await?
        .ok_or_else(|| not_found("image"))?;
    let (key, content_type) = if thumb {
        (img.thumb_key, img.thumb_content_type)
    } else {
        (img.object_key, img.content_type)
    };
    let got = app.storage.get(&key, None).await.map_err(|e| match e {
        crate::storage::StorageError::NotFound(_) => not_found("image"),
        other => other.into(),
    })?;
    Ok((
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_LENGTH, got.meta.size.to_string()),
            // The URL names one image forever (a new image gets a new id).
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable".to_string()),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_string()),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; sandbox".to_string(),
            ),
        ],
        axum::body::Body::from_stream(got.body),
    )
        .into_response())
}

/// A preview image as uploaded.
#[utoipa::path(get, path = "/media/products/{product_id}/images/{image_id}", tag = "catalog",
    params(("product_id" = String, Path, description = "Product id or slug"), ("image_id" = String, Path)),
    responses((status = 200, description = "The image"), (status = 404, description = "No such image")))]
async fn image_file(
    State(app): State<App>,
    Path((product_id, image_id)): Path<(String, String)>,
) -> ApiResult<Response> {
    serve(&app, &product_id, &image_id, false).await
}

/// A preview image's thumbnail (480 px wide).
#[utoipa::path(get, path = "/media/products/{product_id}/images/{image_id}/thumb", tag = "catalog",
    params(("product_id" = String, Path, description = "Product id or slug"), ("image_id" = String, Path)),
    responses((status = 200, description = "The thumbnail"), (status = 404, description = "No such image")))]
async fn image_thumb(
    State(app): State<App>,
    Path((product_id, image_id)): Path<(String, String)>,
) -> ApiResult<Response> {
    serve(&app, &product_id, &image_id, true).await
}
