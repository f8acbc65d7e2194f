//! tus 1.0 resumable uploads at `/api/v1/uploads` (seller auth): core (HEAD, PATCH),
//! creation, creation-with-upload, termination, checksum and expiration, plus JSON views of a
//! seller's uploads. The state machine lives in [`crate::uploads`].
//!
//! `Location` is the path `/api/v1/uploads/{id}` (a relative reference, which tus clients
//! resolve against the URL they posted to), so uploads keep working behind proxies that
//! rewrite the host.

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::App;
use crate::auth::SellerAuth;
use crate::db::Exec;
use crate::error::{bad_request, ApiError, ApiResult};
use crate::http::extract::ApiQuery;
use crate::sql;
use crate::uploads::{self, Checksum, TUS_VERSION};

pub fn routes() -> OpenApiRouter<App> {
    OpenApiRouter::new()
        .routes(routes!(discover, create_upload, list_uploads))
        .routes(routes!(
            discover_one,
            head_upload,
            patch_upload,
            delete_upload,
            get_upload
        ))
        .layer(axum::middleware::from_fn(tus_protocol))
        .layer(axum::extract::DefaultBodyLimit::disable())
}

const TUS_RESUMABLE: HeaderName = HeaderName::from_static("tus-resumable");

/// Every tus request must say `Tus-Resumable: 1.0.0` (412 otherwise); every answer says it too.
async fn tus_protocol(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let needs_version = matches!(method, Method::POST | Method::HEAD | Method::PATCH | Method::DELETE);
    let given = req
        .headers()
        .get(&TUS_RESUMABLE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut resp = if needs_version && given.as_deref() != Some(TUS_VERSION) {
        let mut r = ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "unsupported_tus_version",
            format!(
                "this server speaks tus {TUS_VERSION}; send Tus-Resumable: {TUS_VERSION} (got {})",
                given.as_deref().unwrap_or("none")
            ),
        )
        .into_response();
        r.headers_mut()
            .insert("tus-version", HeaderValue::from_static(TUS_VERSION));
        r
    } else {
        next.run(req).await
    };
    resp.headers_mut()
        .insert(TUS_RESUMABLE, HeaderValue::from_static(TUS_VERSION));
    resp
}

fn discovery(app: &App) -> Response {
    (
        StatusCode::NO_CONTENT,
        [
            ("tus-version", TUS_VERSION.to_string()),
            ("tus-extension", uploads::TUS_EXTENSIONS.to_string()),
            ("tus-max-size", app.cfg.uploads.max_size.to_string()),
            ("tus-checksum-algorithm", uploads::CHECKSUM_ALGORITHMS.to_string()),
        ],
    )
        .into_response()
}

/// tus discovery: versions, extensions, the size limit and checksum algorithms.
#[utoipa::path(options, path = "/api/v1/uploads", tag = "uploads",
    responses((status = 204, description = "Tus-Version, Tus-Extension, Tus-Max-Size, Tus-Checksum-Algorithm headers")))]
async fn discover(State(app): State<App>) -> Response {
    discovery(&app)
}

/// tus discovery on an upload's URL (same answer).
#[utoipa::path(options, path = "/api/v1/uploads/{id}", tag = "uploads", params(("id" = String, Path)),
    responses((status = 204, description = "Tus-Version, Tus-Extension, Tus-Max-Size, Tus-Checksum-Algorithm headers")))]
async fn discover_one(State(app): State<App>, Path(_id): Path<String>) -> Response {
    discovery(&app)
}

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn header_u64(h: &HeaderMap, name: &str) -> ApiResult<Option<u64>> {
    match header_str(h, name) {
        None => Ok(None),
        Some(v) => v.trim().parse::<u64>().map(Some).map_err(|_| {
            bad_request(
                "invalid_header",
                format!("{name} must be a non-negative integer, got {v:?}"),
            )
        }),
    }
}

fn http_date(unix: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(unix).unwrap_or(0));
    httpdate::fmt_http_date(t)
}

fn is_tus_body(h: &HeaderMap) -> bool {
    header_str(h, "content-type").is_some_and(|v| v.trim().eq_ignore_ascii_case("application/offset+octet-stream"))
}

/// Creates an upload (tus creation; with a body, creation-with-upload). Headers:
/// `Upload-Length` (bytes), `Upload-Metadata` (`filename` required, `filetype` optional).
#[utoipa::path(post, path = "/api/v1/uploads", tag = "uploads",
    params(("Upload-Length" = u64, Header, description = "Total size in bytes"),
        ("Upload-Metadata" = Option<String>, Header, description = "`filename <base64>,filetype <base64>`"),
        ("Tus-Resumable" = String, Header, description = "1.0.0")),
    responses((status = 201, description = "Created: Location, Upload-Offset, Upload-Expires"), (status = 400, description = "Bad header"),
        (status = 401, description = "Not signed in"), (status = 412, description = "Wrong Tus-Resumable"),
        (status = 413, description = "Upload-Length over the limit (nothing stored)"), (status = 422, description = "Unusable file name")))]
async fn create_upload(
    State(app): State<App>,
    auth: SellerAuth,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    if header_str(&headers, "upload-defer-length").is_some() {
        return Err(bad_request(
            "defer_length_unsupported",
            "send Upload-Length: this server needs the size up front",
        ));
    }
    let length = header_u64(&headers, "upload-length")?.ok_or_else(|| {
        bad_request(
            "missing_upload_length",
            "send Upload-Length with the file's size in bytes",
        )
    })?;
    let metadata = header_str(&headers, "upload-metadata").unwrap_or_default();
    let up = uploads::create(&app, &auth.seller_id, length, metadata).await?;
    let mut warning = None;
    let declared = header_u64(&headers, "content-length")?;
    if is_tus_body(&headers) && declared != Some(0) && up.status == "uploading" {
        let checksum = header_str(&headers, "upload-checksum")
            .map(Checksum::parse)
            .transpose()?;
        // creation-with-upload: what the body brought is kept; a refused chunk (checksum,
        // size) still leaves a created upload the client can PATCH.
        match uploads::write(&app, &up, 0, declared, checksum, body.into_data_stream()).await {
            Ok(_) => {}
            Err(ApiError::Client { code, message, .. }) => warning = Some(json!({"code": code, "message": message})),
            Err(e) => return Err(e),
        }
    }
    let up = uploads::find(&app.db, &up.id)
        .await?
        .ok_or_else(|| crate::error::not_found("upload"))?;
    let mut body = up.json(&app.cfg.public_url());
    if let Some(w) = warning {
        body["warning"] = w;
    }
    Ok((
        StatusCode::CREATED,
        [
            (header::LOCATION, format!("/api/v1/uploads/{}", up.id)),
            (HeaderName::from_static("upload-offset"), up.upload_offset.to_string()),
            (HeaderName::from_static("upload-expires"), http_date(up.expires_at)),
        ],
        Json(body),
    )
        .into_response())
}

/// The upload's offset (tus core): `Upload-Offset`, `Upload-Length`, `Upload-Metadata`, `Upload-Expires`.
#[utoipa::path(head, path = "/api/v1/uploads/{id}", tag = "uploads", params(("id" = String, Path)),
    responses((status = 200, description = "Upload-Offset and Upload-Length headers"), (status = 404, description = "Not one of your uploads"),
        (status = 410, description = "Expired")))]
async fn head_upload(State(app): State<App>, auth: SellerAuth, Path(id): Path<String>) -> ApiResult<Response> {
    let up = uploads::find_own(&app, &auth.seller_id, &id).await?;
    let mut resp = StatusCode::OK.into_response();
    let h = resp.headers_mut();
    h.insert("upload-offset", HeaderValue::from(up.upload_offset));
    h.insert("upload-length", HeaderValue::from(up.length.unwrap_or(0)));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(&http_date(up.expires_at)) {
        h.insert("upload-expires", v);
    }
    let meta = up.metadata_header();
    if !meta.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&meta) {
            h.insert("upload-metadata", v);
        }
    }
    Ok(resp)
}

/// Appends bytes at `Upload-Offset` (tus core). Body `application/offset+octet-stream`;
/// optional `Upload-Checksum: sha256 <base64>` (all or nothing).
#[utoipa::path(patch, path = "/api/v1/uploads/{id}", tag = "uploads", params(("id" = String, Path),
        ("Upload-Offset" = u64, Header, description = "Where these bytes start"),
        ("Upload-Checksum" = Option<String>, Header, description = "`sha256 <base64 digest>` or `sha1 …` of this body")),
    request_body(content = Vec<u8>, content_type = "application/offset+octet-stream"),
    responses((status = 204, description = "Stored: the new Upload-Offset"), (status = 404, description = "Not one of your uploads"),
        (status = 409, description = "offset_mismatch"), (status = 410, description = "Expired"),
        (status = 413, description = "Past Upload-Length"), (status = 415, description = "Wrong Content-Type"),
        (status = 423, description = "Another request is writing"), (status = 460, description = "checksum_mismatch: nothing stored")))]
async fn patch_upload(
    State(app): State<App>,
    auth: SellerAuth,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    if !is_tus_body(&headers) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the bytes with Content-Type: application/offset+octet-stream",
        ));
    }
    let offset = header_u64(&headers, "upload-offset")?.ok_or_else(|| {
        bad_request(
            "missing_upload_offset",
            "send Upload-Offset (HEAD the upload to learn it)",
        )
    })?;
    let checksum = header_str(&headers, "upload-checksum")
        .map(Checksum::parse)
        .transpose()?;
    let declared = header_u64(&headers, "content-length")?;
    let up = uploads::find_own(&app, &auth.seller_id, &id).await?;
    let w = uploads::write(&app, &up, offset, declared, checksum, body.into_data_stream()).await?;
    let mut resp = StatusCode::NO_CONTENT.into_response();
    let h = resp.headers_mut();
    h.insert("upload-offset", HeaderValue::from(w.offset));
    if let Ok(v) = HeaderValue::from_str(&http_date(w.expires_at)) {
        h.insert("upload-expires", v);
    }
    if w.complete {
        h.insert("x-upload-complete", HeaderValue::from_static("true"));
    }
    Ok(resp)
}

/// Terminates an upload (tus termination): its bytes are deleted.
#[utoipa::path(delete, path = "/api/v1/uploads/{id}", tag = "uploads", params(("id" = String, Path)),
    responses((status = 204, description = "Deleted"), (status = 404, description = "Not one of your uploads"),
        (status = 423, description = "A write is in progress")))]
async fn delete_upload(State(app): State<App>, auth: SellerAuth, Path(id): Path<String>) -> ApiResult<StatusCode> {
    let up = uploads::find(&app.db, &id)
        .await?
        .filter(|u| u.seller_id == auth.seller_id)
        .ok_or_else(|| crate::error::not_found("upload"))?;
    uploads::terminate(&app, &up).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// One upload as JSON: offset, length, status (`uploading`, `complete`, `used`), sha256.
#[utoipa::path(get, path = "/api/v1/uploads/{id}", tag = "uploads", params(("id" = String, Path)),
    responses((status = 200, description = "The upload"), (status = 404, description = "Not one of your uploads")))]
async fn get_upload(State(app): State<App>, auth: SellerAuth, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let up = uploads::find(&app.db, &id)
        .await?
        .filter(|u| u.seller_id == auth.seller_id)
        .ok_or_else(|| crate::error::not_found("upload"))?;
    Ok(Json(up.json(&app.cfg.public_url())))
}

#[derive(Deserialize, utoipa::IntoParams)]
struct ListQuery {
    /// `uploading`, `complete` or `used`.
    status: Option<String>,
    cursor: Option<String>,
    /// 1–100, default 50.
    limit: Option<i64>,
}

/// Your uploads, newest first: `{items, next_cursor}`.
#[utoipa::path(get, path = "/api/v1/uploads", tag = "uploads", params(ListQuery),
    responses((status = 200, description = "`{items, next_cursor}`")))]
async fn list_uploads(
    State(app): State<App>,
    auth: SellerAuth,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<Value>> {
    let limit = q.limit.unwrap_or(50);
    if !(1..=100).contains(&limit) {
        return Err(bad_request("invalid_limit", "limit must be between 1 and 100").field("limit"));
    }
    let rows: Vec<uploads::Upload> = app
        .db
        .fetch_all(sql!(
            "SELECT id, seller_id, length, upload_offset, file_name, content_type, metadata, object_key, backend_state, sha256, status,
                created_at, updated_at, expires_at, hash_state, lock_token, locked_until, completed_at, version_id
             FROM uploads WHERE seller_id = $1 AND ($2 = '' OR status = $2) AND ($3 = '' OR id < $3) ORDER BY id DESC LIMIT $4",
            &auth.seller_id,
            q.status.unwrap_or_default(),
            q.cursor.unwrap_or_default(),
            limit + 1
        ))
        .await?;
    let more = rows.len() as i64 > limit;
    let items: Vec<Value> = rows
        .iter()
        .take(usize::try_from(limit).unwrap_or(50))
        .map(|u| u.json(&app.cfg.public_url()))
        .collect();
    let next = if more {
        items.last().and_then(|v| v["id"].as_str().map(str::to_string))
    } else {
        None
    };
    Ok(Json(json!({"items": items, "next_cursor": next})))
}
