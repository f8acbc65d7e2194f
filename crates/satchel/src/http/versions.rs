//! `POST /api/v1/products/{product_id}/versions`: multipart files, or JSON naming completed
//! resumable uploads.

use axum::extract::{FromRequest, Multipart, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::App;
use crate::auth::SellerAuth;
use crate::catalog::{self, NewFile};
use crate::error::{bad_request, not_found, ApiResult};

/// Largest request accepted here; bigger files go through resumable uploads (`/api/v1/uploads`).
pub const MULTIPART_LIMIT: usize = 512 * 1024 * 1024;

pub fn routes() -> OpenApiRouter<App> {
    OpenApiRouter::new().routes(routes!(list_versions, create_version))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct VersionJson {
    version: String,
    #[serde(default)]
    changelog: String,
    /// Completed upload URLs or ids.
    uploads: Vec<String>,
}

/// Publishes a new version: the files become current, and every buyer is emailed the
/// changelog with a link to their library. JSON `{version, changelog, uploads: [...]}` or
/// multipart with fields `version`, `changelog` and one or more file parts.
#[utoipa::path(post, path = "/api/v1/products/{product_id}/versions", tag = "seller", params(("product_id" = String, Path)),
    request_body(content = VersionJson, description = "or multipart/form-data: version, changelog, files"),
    responses((status = 201, description = "Published"), (status = 404, description = "Not one of your products"),
        (status = 409, description = "version_exists, or version_in_progress while another publish of the same version stores its files"), (status = 413, description = "Too large for multipart: use resumable uploads"),
        (status = 422, description = "Invalid field")))]
async fn create_version(
    State(app): State<App>,
    auth: SellerAuth,
    Path(product_id): Path<String>,
    req: Request,
) -> ApiResult<Response> {
    let product = catalog::find_product(&app.db, &product_id)
        .await?
        .filter(|p| p.seller_id == auth.seller_id)
        .ok_or_else(|| not_found("product"))?;
    // The version's claim (taken before any byte is stored) and the keys stored under it:
    // when the publish fails, both are given up, so the version can be published again.
    let mut guard = crate::versions::PublishGuard::new(&app);
    let published = publish_request(&app, &auth, &product, req, &mut guard).await;
    if published.is_err() {
        guard.give_up().await;
    }
    published
}

/// The body of [`create_version`]: reads the version (JSON with finished uploads, or
/// multipart with the files), claims it, stores the files and publishes; `guard` holds the
/// claim and the keys written until the version commits.
async fn publish_request(
    app: &App,
    auth: &SellerAuth,
    product: &crate::db::models::Product,
    req: Request,
    guard: &mut crate::versions::PublishGuard,
) -> ApiResult<Response> {
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let mut attached = Vec::new();
    let (version, changelog, files) = if is_json {
        let crate::http::extract::ApiJson(body) =
            crate::http::extract::ApiJson::<VersionJson>::from_request(req, &app).await?;
        let version = crate::versions::validate_version(&body.version)?;
        guard.claim = Some(crate::versions::claim_version(&app.db, &product.id, &version).await?);
        // Complete uploads are copied to the version's keys first (a link / server-side copy);
        // the transaction below marks them used, so a failed publish changes nothing.
        attached = crate::uploads::attach_to_version(
            app,
            &auth.seller_id,
            &product.id,
            &version,
            &body.uploads,
            &mut guard.stored,
        )
        .await?;
        let files = attached.iter().map(|a| a.file.clone()).collect();
        (version, body.changelog, files)
    } else {
        let mut mp = Multipart::from_request(req, &app)
            .await
            .map_err(|e| bad_request("invalid_multipart", format!("{e}; send multipart/form-data or JSON")))?;
        let (mut version, mut changelog, mut files) = (None, String::new(), Vec::new());
        while let Some(field) = mp.next_field().await.map_err(|e| multipart_error(&e))? {
            match field.name().unwrap_or_default() {
                "version" => {
                    let v = crate::versions::validate_version(&field.text().await.map_err(|e| multipart_error(&e))?)?;
                    // Refused before a byte is stored: a taken version's files stay as published.
                    if version.is_some() {
                        return Err(bad_request("duplicate_version", "send the version field once").field("version"));
                    }
                    guard.claim = Some(crate::versions::claim_version(&app.db, &product.id, &v).await?);
                    version = Some(v);
                }
                "changelog" => changelog = field.text().await.map_err(|e| multipart_error(&e))?,
                _ => {
                    let Some(raw_name) = field.file_name().map(str::to_string) else {
                        continue;
                    };
                    let version = version.clone().ok_or_else(|| {
                        bad_request("version_first", "send the version field before the files").field("version")
                    })?;
                    let name = catalog::safe_file_name(&raw_name)?;
                    let content_type = field.content_type().unwrap_or("application/octet-stream").to_string();
                    let key = catalog::original_key(&auth.seller_id, &product.id, &version, &name);
                    // The field borrows the request; a small channel hands its chunks to storage
                    // while both run, so memory stays bounded whatever the file size.
                    let mut field = field;
                    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(4);
                    let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
                    let feed = async move {
                        loop {
                            match field.chunk().await {
                                Ok(Some(c)) => {
                                    if tx.send(Ok(c)).await.is_err() {
                                        return Ok(());
                                    }
                                }
                                Ok(None) => return Ok(()),
                                Err(e) => {
                                    let err = multipart_error(&e);
                                    let _ = tx.send(Err(std::io::Error::other("upload interrupted"))).await;
                                    return Err(err);
                                }
                            }
                        }
                    };
                    guard.stored.push(key.clone());
                    let (put, fed) = tokio::join!(app.storage.put(&key, Box::pin(stream), &content_type), feed);
                    fed?;
                    let put = put?;
                    files.push(NewFile {
                        name,
                        object_key: key,
                        size: i64::try_from(put.size)?,
                        sha256: put.sha256,
                        content_type,
                    });
                }
            }
        }
        let version =
            version.ok_or_else(|| bad_request("missing_version", "the version field is required").field("version"))?;
        (version, changelog, files)
    };
    let tx = app.db.begin().await?;
    let v = crate::versions::publish(app, &tx, product, &version, &changelog, &files).await?;
    crate::uploads::mark_used(&tx, &attached, &v.id).await?;
    if let Some(c) = guard.claim.as_ref() {
        c.settle(&tx).await?;
    }
    tx.commit().await?;
    guard.published();
    app.jobs_enqueued();
    crate::uploads::drop_staging(app, &attached).await;
    let body = json!({
        "id": v.id, "product_id": product.id, "version": v.version, "changelog_md": v.changelog_md, "published_at": v.created_at,
        "files": files.iter().map(|f| json!({"name": f.name, "size": f.size, "sha256": f.sha256, "content_type": f.content_type})).collect::<Vec<_>>(),
    });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// Versions of one of your products, newest first, with their files (`{items, next_cursor}`).
#[utoipa::path(get, path = "/api/v1/products/{product_id}/versions", tag = "seller", params(("product_id" = String, Path, description = "Product id or slug")),
    responses((status = 200, description = "`{items, next_cursor}`"), (status = 404, description = "Not one of your products")))]
async fn list_versions(
    State(app): State<App>,
    auth: SellerAuth,
    Path(product_id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    use crate::db::Exec;
    let product = catalog::find_product(&app.db, &product_id)
        .await?
        .filter(|p| p.seller_id == auth.seller_id)
        .ok_or_else(|| not_found("product"))?;
    let versions: Vec<crate::db::models::ProductVersion> = app
        .db
        .fetch_all(crate::sql!(
            "SELECT id, product_id, version, changelog_md, created_at FROM product_versions WHERE product_id = $1 ORDER BY id DESC",
            &product.id
        ))
        .await?;
    let mut items = Vec::with_capacity(versions.len());
    for v in versions {
        let files = catalog::version_files(&app.db, &v.id).await?;
        items.push(json!({
            "id": v.id, "version": v.version, "changelog_md": v.changelog_md, "published_at": v.created_at,
            "current": product.current_version_id.as_deref() == Some(v.id.as_str()),
            "files": files.iter().map(|f| json!({"name": f.name, "size": f.size, "sha256": f.sha256, "content_type": f.content_type})).collect::<Vec<_>>(),
        }));
    }
    Ok(Json(
        json!({"product_id": product.id, "slug": product.slug, "items": items, "next_cursor": null}),
    ))
}

fn multipart_error(e: &axum::extract::multipart::MultipartError) -> crate::error::ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        crate::error::ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "this request is too large for a multipart upload; use resumable uploads (/api/v1/uploads) for big files",
        )
    } else {
        bad_request("invalid_multipart", e.body_text())
    }
}
