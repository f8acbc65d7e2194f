//! The buyer's library API: magic-link sign-in, the list of purchases and subscriptions,
//! and the buyer's own actions (cancel/resume a subscription, deactivate a device). Writes
//! need the library session cookie and its CSRF token in `X-CSRF-Token`. The pages live in
//! `library_pages`.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::App;
use crate::error::ApiResult;
use crate::http::extract::ApiJson;
use crate::library::BuyerAuth;

pub fn routes() -> OpenApiRouter<App> {
    OpenApiRouter::new()
        .routes(routes!(request_link))
        .routes(routes!(sign_in_page, consume_link))
        .routes(routes!(library))
        .routes(routes!(cancel_subscription))
        .routes(routes!(resume_subscription))
        .routes(routes!(deactivate_device))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct LinkRequest {
    email: String,
}

/// Emails a single-use sign-in link (15 minutes) to a buyer. Always 202 with the same body,
/// so it reveals nothing about who bought here.
#[utoipa::path(post, path = "/api/v1/library/login", tag = "library", request_body = LinkRequest,
    responses((status = 202, description = "If this email bought here, a link is on its way"), (status = 422, description = "Malformed email")))]
async fn request_link(State(app): State<App>, ApiJson(req): ApiJson<LinkRequest>) -> ApiResult<Response> {
    crate::library::request_link(&app, &req.email).await?;
    let body = json!({"status": "accepted", "message": "If this email address bought something here, a sign-in link is on its way."});
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// The page an emailed sign-in link opens: the email it signs in and a button (a POST to the
/// same address). Opening it spends nothing, so mail scanners and link previews that fetch
/// the link first do not use it up.
#[utoipa::path(method(get, head), path = "/auth/magic/{token}", tag = "library", params(("token" = String, Path)),
    responses((status = 200, description = "HTML page with the sign-in button"), (status = 401, description = "Used or expired link")))]
async fn sign_in_page(State(app): State<App>, Path(token): Path<String>) -> ApiResult<Response> {
    crate::http::pages::sign_in_link_page(&app, &token, "library", "/auth/magic", "your library").await
}

/// Uses a sign-in link (once, before it expires): starts a buyer session and continues to
/// the library.
#[utoipa::path(post, path = "/auth/magic/{token}", tag = "library", params(("token" = String, Path)),
    responses((status = 303, description = "Signed in; on to /library"), (status = 401, description = "Used or expired link")))]
async fn consume_link(State(app): State<App>, Path(token): Path<String>) -> ApiResult<Response> {
    let cookie = crate::library::consume_link(&app, &token).await?;
    Ok((
        StatusCode::SEE_OTHER,
        [(header::SET_COOKIE, cookie), (header::LOCATION, "/library".to_string())],
    )
        .into_response())
}

/// Every purchase of the signed-in buyer (versions, files with sha256, downloads left, links,
/// license keys and devices, the buyer's review), their subscriptions, and the session's
/// `csrf_token` for the write endpoints.
#[utoipa::path(get, path = "/api/v1/library", tag = "library",
    responses((status = 200, description = "`{email, csrf_token, subscriptions, items, next_cursor}`"), (status = 401, description = "Not signed in")))]
async fn library(State(app): State<App>, buyer: BuyerAuth) -> ApiResult<Json<Value>> {
    Ok(Json(crate::library::list(&app, &buyer).await?))
}

fn csrf_header(headers: &HeaderMap) -> Option<&str> {
    headers.get("x-csrf-token").and_then(|v| v.to_str().ok())
}

/// Cancels one of the buyer's subscriptions at the end of the paid period: through Stripe's
/// API for Stripe subscriptions (nothing changes if Stripe refuses: 502), locally in test
/// mode. Access continues until the period end plus the grace days. Repeating it is a no-op.
#[utoipa::path(post, path = "/api/v1/library/subscriptions/{id}/cancel", tag = "library",
    params(("id" = String, Path), ("X-CSRF-Token" = String, Header, description = "`csrf_token` from GET /api/v1/library")),
    responses((status = 200, description = "The subscription"), (status = 401, description = "Not signed in"), (status = 403, description = "CSRF token missing"),
        (status = 404, description = "Not this buyer's subscription"), (status = 409, description = "Already ended"),
        (status = 502, description = "Stripe refused or could not be reached; nothing changed")))]
async fn cancel_subscription(
    State(app): State<App>,
    buyer: BuyerAuth,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    buyer.require_csrf(csrf_header(&headers))?;
    let sub = crate::subscriptions::buyer_set_cancel(&app, &buyer.email, &id, true).await?;
    Ok(Json(sub.json(crate::ids::now())))
}

/// Takes back a cancellation before the paid period ends (through Stripe's API, or locally in
/// test mode). Repeating it is a no-op.
#[utoipa::path(post, path = "/api/v1/library/subscriptions/{id}/resume", tag = "library",
    params(("id" = String, Path), ("X-CSRF-Token" = String, Header, description = "`csrf_token` from GET /api/v1/library")),
    responses((status = 200, description = "The subscription"), (status = 401, description = "Not signed in"), (status = 403, description = "CSRF token missing"),
        (status = 404, description = "Not this buyer's subscription"), (status = 409, description = "Already ended"),
        (status = 502, description = "Stripe refused or could not be reached; nothing changed")))]
async fn resume_subscription(
    State(app): State<App>,
    buyer: BuyerAuth,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    buyer.require_csrf(csrf_header(&headers))?;
    let sub = crate::subscriptions::buyer_set_cancel(&app, &buyer.email, &id, false).await?;
    Ok(Json(sub.json(crate::ids::now())))
}

/// Deactivates a device on one of the buyer's license keys, freeing its seat.
#[utoipa::path(post, path = "/api/v1/library/devices/{activation_id}/deactivate", tag = "library",
    params(("activation_id" = String, Path), ("X-CSRF-Token" = String, Header, description = "`csrf_token` from GET /api/v1/library")),
    responses((status = 200, description = "`{deactivated: true, license}`"), (status = 401, description = "Not signed in"),
        (status = 403, description = "CSRF token missing"), (status = 404, description = "Not an active device of this buyer's licenses"),
        (status = 409, description = "Single-use keys cannot move")))]
async fn deactivate_device(
    State(app): State<App>,
    buyer: BuyerAuth,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    buyer.require_csrf(csrf_header(&headers))?;
    Ok(Json(crate::library::deactivate_device(&app, &buyer, &id).await?))
}
