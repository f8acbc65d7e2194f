//! API key management for sellers (`/api/v1/api-keys`) and the admin's view across sellers
//! (`/api/v1/admin/sellers`). An admin acts on one seller's store with the
//! `X-Act-As-Seller` header on any seller endpoint (see [`crate::auth`]).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::App;
use crate::auth::{AdminAuth, SellerAuth};
use crate::db::Exec;
use crate::error::{bad_request, not_found, ApiResult};
use crate::http::extract::{ApiJson, ApiQuery};
use crate::ids::now;
use crate::sql;

pub fn routes() -> OpenApiRouter<App> {
    OpenApiRouter::new()
        .routes(routes!(list_keys, create_key))
        .routes(routes!(revoke_key))
        .routes(routes!(list_sellers))
}

#[derive(sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
struct KeyRow {
    id: String,
    name: String,
    /// The first characters of the key, to recognise it.
    prefix: String,
    created_at: i64,
    last_used_at: Option<i64>,
    revoked_at: Option<i64>,
}

/// Your API keys (never the keys themselves): `{items, next_cursor}`.
#[utoipa::path(get, path = "/api/v1/api-keys", tag = "seller",
    responses((status = 200, description = "`{items: [{id, name, prefix, created_at, last_used_at, revoked_at}], next_cursor}`"),
        (status = 401, description = "Not signed in")))]
async fn list_keys(State(app): State<App>, auth: SellerAuth) -> ApiResult<Json<Value>> {
    let items: Vec<KeyRow> = app
        .db
        .fetch_all(sql!(
            "SELECT id, name, prefix, created_at, last_used_at, revoked_at FROM api_keys WHERE seller_id = $1 ORDER BY id DESC",
            &auth.seller_id
        ))
        .await?;
    Ok(Json(json!({"items": items, "next_cursor": null})))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewKey {
    /// What the key is for, like "CI" or "laptop".
    name: String,
}

/// Creates an API key. The key is in this answer only: store it now.
#[utoipa::path(post, path = "/api/v1/api-keys", tag = "seller", request_body = NewKey,
    responses((status = 201, description = "`{id, name, prefix, key, created_at}`"), (status = 422, description = "invalid_name")))]
async fn create_key(State(app): State<App>, auth: SellerAuth, ApiJson(req): ApiJson<NewKey>) -> ApiResult<Response> {
    let (id, key) = crate::accounts::mint_api_key(&app.db, &auth.seller_id, &auth.user_id, &req.name).await?;
    let row: KeyRow = app
        .db
        .fetch_one(sql!(
            "SELECT id, name, prefix, created_at, last_used_at, revoked_at FROM api_keys WHERE id = $1",
            &id
        ))
        .await?;
    let mut body = json!(row);
    body["key"] = json!(key);
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// Revokes one of your API keys at once (requests with it get 401 from now on).
#[utoipa::path(delete, path = "/api/v1/api-keys/{id}", tag = "seller", params(("id" = String, Path)),
    responses((status = 204, description = "Revoked (or already revoked)"), (status = 404, description = "Not one of your keys")))]
async fn revoke_key(State(app): State<App>, auth: SellerAuth, Path(id): Path<String>) -> ApiResult<StatusCode> {
    let exists = app
        .db
        .fetch_i64(sql!(
            "SELECT COUNT(*) FROM api_keys WHERE id = $1 AND seller_id = $2",
            &id,
            &auth.seller_id
        ))
        .await?;
    if exists == 0 {
        return Err(not_found("API key"));
    }
    app.db
        .execute(sql!(
            "UPDATE api_keys SET revoked_at = $3 WHERE id = $1 AND seller_id = $2 AND revoked_at IS NULL",
            &id,
            &auth.seller_id,
            now()
        ))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::IntoParams)]
struct SellerQuery {
    cursor: Option<String>,
    /// 1–100, default 50.
    limit: Option<i64>,
}

#[derive(sqlx::FromRow, serde::Serialize)]
struct SellerRow {
    id: String,
    name: String,
    store_name: String,
    status: String,
    support_email: Option<String>,
    created_at: i64,
    owner_email: Option<String>,
    products: i64,
}

/// Every seller of this store (admin only), newest first. Act on one with the header
/// `X-Act-As-Seller: {id}` on any seller endpoint.
#[utoipa::path(get, path = "/api/v1/admin/sellers", tag = "seller", params(SellerQuery),
    responses((status = 200, description = "`{items, next_cursor}`"), (status = 403, description = "Not an admin")))]
async fn list_sellers(
    State(app): State<App>,
    _admin: AdminAuth,
    ApiQuery(q): ApiQuery<SellerQuery>,
) -> ApiResult<Json<Value>> {
    let limit = q.limit.unwrap_or(50);
    if !(1..=100).contains(&limit) {
        return Err(bad_request("invalid_limit", "limit must be between 1 and 100").field("limit"));
    }
    let mut rows: Vec<SellerRow> = app
        .db
        .fetch_all(sql!(
            "SELECT s.id, s.name, s.store_name, s.status, s.support_email, s.created_at,
                (SELECT MIN(u.email) FROM users u WHERE u.seller_id = s.id) AS owner_email,
                (SELECT COUNT(*) FROM products p WHERE p.seller_id = s.id) AS products
             FROM sellers s WHERE ($1 = '' OR s.id < $1) ORDER BY s.id DESC LIMIT $2",
            q.cursor.unwrap_or_default(),
            limit + 1
        ))
        .await?;
    let next = if rows.len() as i64 > limit {
        rows.truncate(usize::try_from(limit).unwrap_or(50));
        rows.last().map(|r| r.id.clone())
    } else {
        None
    };
    Ok(Json(json!({"items": rows, "next_cursor": next})))
}
