//! Seller grant actions, abuse flags (API), and the buyer's download re-confirmation pages.
//!
//! The re-confirmation link from the email opens a page with a button (GET changes
//! nothing, so mail scanners that follow links do not use it up); the button POSTs to the
//! same URL, which consumes the link and re-opens the downloads.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::abuse::{FlagQuery, LinkState, Viewer};
use crate::app::App;
use crate::auth::SellerAuth;
use crate::error::ApiResult;
use crate::http::extract::ApiQuery;
use crate::http::pages::{esc, plain_page};

pub fn routes() -> OpenApiRouter<App> {
    OpenApiRouter::new()
        .routes(routes!(grant_events))
        .routes(routes!(grant_action))
        .routes(routes!(list_flags))
        .routes(routes!(flag_action))
        .routes(routes!(reconfirm_page, reconfirm_submit))
}

/// Who sees which flags: an admin not acting as a seller sees every flag.
pub fn viewer(auth: &SellerAuth, headers: &HeaderMap) -> Viewer {
    Viewer {
        user_id: auth.user_id.clone(),
        seller_id: auth.seller_id.clone(),
        all: auth.role == "admin" && !headers.contains_key(crate::auth::ACT_AS_HEADER),
    }
}

/// `reset` (downloads back to the maximum, IP binding cleared, re-confirmation or suspension
/// lifted), `extend` (`{"days": 1..=3650}`) or `revoke` one of your download grants.
/// A refunded purchase's grant stays revoked (409 `order_refunded`). Audit-logged.
#[utoipa::path(post, path = "/api/v1/seller/grants/{grant_id}/{action}", tag = "seller",
    params(("grant_id" = String, Path), ("action" = String, Path, description = "reset | extend | revoke")),
    request_body(content = Option<crate::grants::ExtendGrant>, description = "Only for `extend`"),
    responses((status = 200, description = "The grant's new state, with a fresh `download_url`"),
        (status = 400, description = "invalid_json (extend)"), (status = 404, description = "Not one of your grants"),
        (status = 409, description = "order_refunded"), (status = 422, description = "invalid_action | invalid_days")))]
async fn grant_action(
    State(app): State<App>,
    auth: SellerAuth,
    Path((grant_id, action)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    Ok(Json(
        crate::grants::seller_action(&app, &auth.seller_id, &auth.user_id, &grant_id, &action, &body).await?,
    ))
}

/// One of your grants' download history, newest first: `{items, next_cursor}`; each item
/// `{id, at, ip, ip_prefix, user_agent, outcome, bytes, file_id, file_name}`.
#[utoipa::path(get, path = "/api/v1/seller/grants/{grant_id}/events", tag = "seller",
    params(("grant_id" = String, Path), crate::grants::EventQuery),
    responses((status = 200, description = "`{items, next_cursor}`"), (status = 401, description = "Not signed in"),
        (status = 404, description = "Not one of your grants"), (status = 422, description = "invalid_limit")))]
async fn grant_events(
    State(app): State<App>,
    auth: SellerAuth,
    Path(grant_id): Path<String>,
    ApiQuery(q): ApiQuery<crate::grants::EventQuery>,
) -> ApiResult<Json<Value>> {
    let (items, next) = crate::grants::events(&app.db, &auth.seller_id, &grant_id, &q).await?;
    Ok(Json(json!({ "items": items, "next_cursor": next })))
}

/// Abuse flags, newest first: `{items, next_cursor}`. A seller sees its own (download
/// sharing); an admin sees every store's, and store-wide ones (license key guessing).
#[utoipa::path(get, path = "/api/v1/seller/abuse-flags", tag = "seller", params(FlagQuery),
    responses((status = 200, description = "`{items, next_cursor}`"), (status = 401, description = "Not signed in"),
        (status = 422, description = "invalid_status | invalid_limit")))]
async fn list_flags(
    State(app): State<App>,
    auth: SellerAuth,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<FlagQuery>,
) -> ApiResult<Json<Value>> {
    let (rows, next) = crate::abuse::list_flags(&app, &viewer(&auth, &headers), &q).await?;
    Ok(Json(json!({
        "items": rows.iter().map(crate::abuse::FlagRow::json).collect::<Vec<_>>(),
        "next_cursor": next,
    })))
}

/// Resolves an open flag: `clear` (the download works again, detection starts afresh),
/// `suspend` (keeps the download suspended) or `revoke` (ends it). Flags on a network
/// (license key guessing) can only be cleared. Audit-logged.
#[utoipa::path(post, path = "/api/v1/seller/abuse-flags/{flag_id}/{action}", tag = "seller",
    params(("flag_id" = String, Path), ("action" = String, Path, description = "clear | suspend | revoke")),
    responses((status = 200, description = "The resolved flag"), (status = 404, description = "Not one of your flags"),
        (status = 409, description = "flag_resolved | action_not_applicable"), (status = 422, description = "invalid_action")))]
async fn flag_action(
    State(app): State<App>,
    auth: SellerAuth,
    headers: HeaderMap,
    Path((flag_id, action)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    Ok(Json(
        crate::abuse::flag_action(&app, &viewer(&auth, &headers), &flag_id, &action).await?,
    ))
}

/// The page a re-confirmation email links to: a button that confirms (this GET changes nothing).
#[utoipa::path(get, path = "/downloads/reconfirm/{token}", tag = "delivery", params(("token" = String, Path)),
    responses((status = 200, description = "HTML page with the confirm button"), (status = 404, description = "Not a valid link"),
        (status = 410, description = "link_expired | link_used | link_replaced")))]
async fn reconfirm_page(State(app): State<App>, Path(token): Path<String>) -> ApiResult<Response> {
    let page = match crate::abuse::reconfirm_state(&app, &token).await? {
        LinkState::Ready { product } => (
            StatusCode::OK,
            plain_page(
                &app,
                "Confirm your downloads",
                &format!(
                    "<h1>Confirm it's you</h1><p>Your download link for <strong>{}</strong> was used from several networks, so we paused it. Confirm that you are the buyer to continue.</p>\
                     <form method=\"post\" action=\"/downloads/reconfirm/{}\"><button class=\"btn\" id=\"confirm\">Confirm and continue</button></form>",
                    esc(&product),
                    esc(&token)
                ),
            )
            .await?,
        ),
        LinkState::Used => (
            StatusCode::GONE,
            plain_page(&app, "Already confirmed", "<h1>Already confirmed</h1><p>This link was already used: your downloads work again. Start the download from your receipt or your library.</p>").await?,
        ),
        LinkState::Closed => (
            StatusCode::FORBIDDEN,
            plain_page(&app, "Download unavailable", "<h1>This download is unavailable</h1><p>The download link was suspended or revoked. Contact the store.</p>").await?,
        ),
    };
    Ok(page.into_response())
}

/// Confirms: consumes the link (once, before it expires) and re-opens the downloads.
#[utoipa::path(post, path = "/downloads/reconfirm/{token}", tag = "delivery", params(("token" = String, Path)),
    responses((status = 200, description = "Confirmed; HTML page with the download link"), (status = 403, description = "access_revoked"),
        (status = 404, description = "Not a valid link"), (status = 410, description = "link_expired | link_used | link_replaced")))]
async fn reconfirm_submit(State(app): State<App>, Path(token): Path<String>) -> ApiResult<Response> {
    let url = crate::abuse::confirm(&app, &token).await?;
    Ok(plain_page(
        &app,
        "Confirmed",
        &format!(
            "<h1>Thanks, you're confirmed</h1><p>Your downloads work again.</p><p><a class=\"btn\" id=\"download\" href=\"{}\">Start the download</a></p>",
            esc(&url)
        ),
    )
    .await?
    .into_response())
}
