//! License endpoints for the seller's software: activate, validate, deactivate, the public
//! keys that verify certificates offline, and the revocation list.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use axum::extract::{ConnectInfo, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::response::Response;
use axum::Json;
use serde::Deserialize;
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::App;
use crate::error::ApiResult;
use crate::http::extract::{ApiJson, ApiQuery};
use crate::licensing::guessing::Miss;
use crate::licensing::{self, ActivateRequest, DeactivateRequest, ValidateRequest};

pub fn routes() -> OpenApiRouter<App> {
    OpenApiRouter::new()
        .routes(routes!(activate))
        .routes(routes!(validate))
        .routes(routes!(deactivate))
        .routes(routes!(public_keys))
        .routes(routes!(revocations))
}

const GUESSING: &str =
    "rate_limited, with Retry-After: too many calls from your network, or a network flagged for key guessing";

/// The calling network, let through the key-guessing throttle (see
/// `licensing::guessing`): a network flagged for guessing gets one license call per few
/// seconds, 429 `rate_limited` with `Retry-After` otherwise.
struct Caller {
    ip: Option<IpAddr>,
}

impl FromRequestParts<App> for Caller {
    type Rejection = Response;
    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Response> {
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
        let ip = crate::http::ratelimit::client_ip(app, &parts.headers, peer);
        let now = Instant::now();
        let network = ip
            .filter(|_| app.licensing.guesses.throttling(now))
            .map(crate::delivery::ip_prefix);
        match network.map(|n| app.licensing.guesses.admit(&n, now)) {
            Some(Err(wait)) => Err(crate::http::ratelimit::too_many(
                "too many unknown or mistyped license keys from your network",
                wait,
            )),
            _ => Ok(Caller { ip }),
        }
    }
}

impl Caller {
    /// Counts an answer that named no license (`code`: the error or validation code); the
    /// call that crosses the threshold raises the abuse flag.
    async fn observe(&self, app: &App, code: &str) {
        let (Some(kind), Some(ip)) = (Miss::from_code(code), self.ip) else {
            return;
        };
        let network = crate::delivery::ip_prefix(ip);
        let Some(detail) = app.licensing.guesses.miss(&network, kind, Instant::now()) else {
            return;
        };
        let window = i64::try_from(app.cfg.licenses.guess_window_secs).unwrap_or(i64::MAX / 2);
        match licensing::guessing::raise_flag(&app.db, &network, &detail, window).await {
            Ok(_) => tracing::warn!(%network, %detail, "license key guessing: network flagged and throttled"),
            Err(e) => tracing::error!(%network, error = %e, "could not record the license key guessing flag"),
        }
    }

    /// [`Caller::observe`] on a handler's result.
    async fn observe_result(&self, app: &App, r: &ApiResult<Value>) {
        let code = match r {
            Ok(v) => v.get("code").and_then(Value::as_str).unwrap_or_default(),
            Err(e) => e.code(),
        };
        self.observe(app, code).await;
    }
}

/// Activates a device. Idempotent per fingerprint; refuses beyond the limit
/// (`TOO_MANY_ACTIVATIONS`), for spent single-use keys (`KEY_CONSUMED`) and for revoked,
/// suspended or expired licenses. Returns `{activation_id, certificate, expires_at, license}`.
#[utoipa::path(post, path = "/api/v1/licenses/{key}/activate", tag = "licenses", params(("key" = String, Path)),
    request_body = ActivateRequest,
    responses((status = 200, description = "Activated (or already active on this device)"), (status = 404, description = "NOT_FOUND"),
        (status = 403, description = "REVOKED | SUSPENDED | EXPIRED"), (status = 409, description = "TOO_MANY_ACTIVATIONS | KEY_CONSUMED"),
        (status = 422, description = "invalid_key | bad_check_character | invalid_fingerprint"), (status = 429, description = GUESSING)))]
async fn activate(
    State(app): State<App>,
    Path(key): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    caller: Caller,
    ApiJson(req): ApiJson<ActivateRequest>,
) -> ApiResult<Json<Value>> {
    let ip = caller.ip.unwrap_or(peer.ip()).to_string();
    let r = licensing::activate(&app, &key, &req, &ip).await;
    caller.observe_result(&app, &r).await;
    r.map(Json)
}

/// Validates a key and optionally a device. Always a signed answer (Ed25519 over
/// `signed_payload`, which includes the nonce): `{valid, code, license, activation, nonce, issued_at, kid, signed_payload, signature}`
/// with code VALID, NOT_FOUND, REVOKED, SUSPENDED, EXPIRED, NOT_ACTIVATED, FINGERPRINT_MISMATCH,
/// TOO_MANY_ACTIVATIONS or CHECK_IN_OVERDUE. A validation from an activated device is its check-in.
#[utoipa::path(post, path = "/api/v1/licenses/{key}/validate", tag = "licenses", params(("key" = String, Path)),
    request_body = ValidateRequest,
    responses((status = 200, description = "Signed validation answer"), (status = 422, description = "Malformed key or fields"),
        (status = 429, description = GUESSING)))]
async fn validate(
    State(app): State<App>,
    Path(key): Path<String>,
    caller: Caller,
    ApiJson(req): ApiJson<ValidateRequest>,
) -> ApiResult<Json<Value>> {
    let r = licensing::validate(&app, &key, &req).await;
    caller.observe_result(&app, &r).await;
    r.map(Json)
}

/// Frees a device's seat (`activation_id` or `device_fingerprint`).
#[utoipa::path(post, path = "/api/v1/licenses/{key}/deactivate", tag = "licenses", params(("key" = String, Path)),
    request_body = DeactivateRequest,
    responses((status = 200, description = "Deactivated"), (status = 404, description = "NOT_FOUND | NOT_ACTIVATED"),
        (status = 409, description = "KEY_CONSUMED (single-use keys cannot move)"), (status = 429, description = GUESSING)))]
async fn deactivate(
    State(app): State<App>,
    Path(key): Path<String>,
    caller: Caller,
    ApiJson(req): ApiJson<DeactivateRequest>,
) -> ApiResult<Json<Value>> {
    let r = licensing::deactivate(&app, &key, &req).await;
    caller.observe_result(&app, &r).await;
    r.map(Json)
}

/// Ed25519 public keys by key id, to verify certificates and signed answers offline.
#[utoipa::path(get, path = "/api/v1/licenses/public-keys", tag = "licenses",
    responses((status = 200, description = "`{items: [{kid, alg, public_key}], keys: (same), next_cursor: null}`")))]
async fn public_keys(State(app): State<App>) -> Json<Value> {
    let mut doc = licensing::format::public_keys(&app.keys).to_json();
    doc["keys"] = doc["items"].clone();
    Json(doc)
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
