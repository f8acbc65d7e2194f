//! License endpoints for the seller's software: activate, validate, deactivate, the public
//! keys that verify certificates offline, and the revocation list.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::App;
use crate::error::ApiResult;
use crate::http::extract::{ApiJson, ApiQuery};
use crate::licensing::{self, ActivateRequest, DeactivateRequest, ValidateRequest};

pub fn routes() -> OpenApiRouter<App> {
    OpenApiRouter::new()
        .routes(routes!(activate))
        .routes(routes!(validate))
        .routes(routes!(deactivate))
        .routes(routes!(public_keys))
        .routes(routes!(revocations))
}

/// Activates a device. Idempotent per fingerprint; refuses beyond the limit
/// (`TOO_MANY_ACTIVATIONS`), for spent single-use keys (`KEY_CONSUMED`) and for revoked,
/// suspended or expired licenses. Returns `{activation_id, certificate, expires_at, license}`.
#[utoipa::path(post, path = "/api/v1/licenses/{key}/activate", tag = "licenses", params(("key" = String, Path)),
    request_body = ActivateRequest,
    responses((status = 200, description = "Activated (or already active on this device)"), (status = 404, description = "NOT_FOUND"),
        (status = 403, description = "REVOKED | SUSPENDED | EXPIRED"), (status = 409, description = "TOO_MANY_ACTIVATIONS | KEY_CONSUMED"),
        (status = 422, description = "invalid_key | bad_check_character | invalid_fingerprint")))]
async fn activate(
    State(app): State<App>,
    Path(key): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ApiJson(req): ApiJson<ActivateRequest>,
) -> ApiResult<Json<Value>> {
    Ok(Json(
        licensing::activate(&app, &key, &req, &peer.ip().to_string()).await?,
    ))
}

/// Validates a key and optionally a device. Always a signed answer (Ed25519 over
/// `signed_payload`, which includes the nonce): `{valid, code, license, activation, nonce, issued_at, kid, signed_payload, signature}`
/// with code VALID, NOT_FOUND, REVOKED, SUSPENDED, EXPIRED, NOT_ACTIVATED, FINGERPRINT_MISMATCH,
/// TOO_MANY_ACTIVATIONS or CHECK_IN_OVERDUE. A validation from an activated device is its check-in.
#[utoipa::path(post, path = "/api/v1/licenses/{key}/validate", tag = "licenses", params(("key" = String, Path)),
    request_body = ValidateRequest,
    responses((status = 200, description = "Signed validation answer"), (status = 422, description = "Malformed key or fields")))]
async fn validate(
    State(app): State<App>,
    Path(key): Path<String>,
    ApiJson(req): ApiJson<ValidateRequest>,
) -> ApiResult<Json<Value>> {
    Ok(Json(licensing::validate(&app, &key, &req).await?))
}

/// Frees a device's seat (`activation_id` or `device_fingerprint`).
#[utoipa::path(post, path = "/api/v1/licenses/{key}/deactivate", tag = "licenses", params(("key" = String, Path)),
    request_body = DeactivateRequest,
    responses((status = 200, description = "Deactivated"), (status = 404, description = "NOT_FOUND | NOT_ACTIVATED"),
        (status = 409, description = "KEY_CONSUMED (single-use keys cannot move)")))]
async fn deactivate(
    State(app): State<App>,
    Path(key): Path<String>,
    ApiJson(req): ApiJson<DeactivateRequest>,
) -> ApiResult<Json<Value>> {
    Ok(Json(licensing::deactivate(&app, &key, &req).await?))
}

/// Ed25519 public keys by key id, to verify certificates and signed answers offline.
#[utoipa::path(get, path = "/api/v1/licenses/public-keys", tag = "licenses",
    responses((status = 200, description = "`{items: [{kid, alg, public_key}], keys: (same), next_cursor: null}`")))]
async fn public_keys(State(app): State<App>) -> Json<Value> {
    let keys = licensing::format::public_keys(&app.keys);
    Json(json!({ "items": keys, "keys": keys, "next_cursor": null }))
}

#[derive(Deserialize, utoipa::IntoParams)]
struct RevocationQuery {
    /// Unix seconds: changes since then (default: all).
    since: Option<i64>,
    cursor: Option<String>,
    /// 1–1000, default 500.
    limit: Option<i64>,
}

/// Licenses revoked, suspended or expired since `since`: signed, paged `{items, next_cursor}`.
#[utoipa::path(get, path = "/api/v1/licenses/revocations", tag = "licenses", params(RevocationQuery),
    responses((status = 200, description = "Signed list")))]
async fn revocations(State(app): State<App>, ApiQuery(q): ApiQuery<RevocationQuery>) -> ApiResult<Json<Value>> {
    let limit = q.limit.unwrap_or(500);
    if !(1..=1000).contains(&limit) {
        return Err(crate::error::bad_request("invalid_limit", "limit must be between 1 and 1000").field("limit"));
    }
    Ok(Json(
        licensing::revocations(&app, q.since.unwrap_or(0), q.cursor.as_deref(), limit).await?,
    ))
}
