//! Purchase, order status, the TEST MODE checkout page, downloads and file delivery.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Form, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::App;
use crate::checkout::{self, PurchaseRequest};
use crate::error::{not_found, unauthorized, ApiError, ApiResult};
use crate::http::extract::ApiJson;

pub fn routes() -> OpenApiRouter<App> {
    OpenApiRouter::new()
        .routes(routes!(purchase))
        .routes(routes!(cart_checkout))
        .routes(routes!(referral))
        .routes(routes!(lookup))
        .routes(routes!(stripe_webhook))
        .routes(routes!(get_order))
        .routes(routes!(download))
        .routes(routes!(test_checkout_page, test_checkout_complete))
        .routes(routes!(success_page))
        .routes(routes!(deliver_file))
}

/// Buys one product. Returns `{order_id, status, access_token, checkout_url, items[]}`;
/// free products come back `paid` with their `download_url`s.
#[utoipa::path(post, path = "/api/v1/products/{product_id}/purchase", tag = "checkout",
    params(("product_id" = String, Path, description = "Product id or slug")),
    request_body = PurchaseRequest,
    responses((status = 201, description = "Order created"), (status = 404, description = "Unknown or unpublished product"), (status = 422, description = "Invalid field")))]
async fn purchase(
    State(app): State<App>,
    Path(product_id): Path<String>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<PurchaseRequest>,
) -> ApiResult<Response> {
    let tx = app.db.begin().await?;
    let (order, token) = checkout::purchase(&app, &tx, &product_id, &req, ref_cookie(&headers).as_deref()).await?;
    tx.commit().await?;
    app.jobs_enqueued();
    let order = checkout::start_stripe_checkout(&app, &order, &token).await?;
    let body = checkout::order_json(&app, &order, Some(&token)).await?;
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// Checks out a cart: products of one store in one currency, with an optional discount code.
/// Same response shape as the purchase endpoint.
#[utoipa::path(post, path = "/api/v1/checkout", tag = "checkout", request_body = checkout::CartRequest,
    responses((status = 201, description = "Order created"), (status = 404, description = "Unknown product"), (status = 422, description = "Invalid field (named in error.field)")))]
async fn cart_checkout(
    State(app): State<App>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<checkout::CartRequest>,
) -> ApiResult<Response> {
    let tx = app.db.begin().await?;
    let cookie = ref_cookie(&headers);
    let affiliate = req.affiliate_code.as_deref().or(cookie.as_deref());
    let (order, token) = checkout::create_order(
        &app,
        &tx,
        &req.email,
        &req.items,
        req.discount_code.as_deref(),
        affiliate,
    )
    .await?;
    tx.commit().await?;
    app.jobs_enqueued();
    let order = checkout::start_stripe_checkout(&app, &order, &token).await?;
    let body = checkout::order_json(&app, &order, Some(&token)).await?;
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// The affiliate code from the `satchel_ref` cookie, if any.
pub fn ref_cookie(headers: &HeaderMap) -> Option<String> {
    crate::auth::cookie(headers, crate::affiliates::REF_COOKIE)
}

#[derive(Deserialize, utoipa::IntoParams)]
struct RefQuery {
    /// Where to go next: a path on this store (default `/`).
    to: Option<String>,
}

/// An affiliate link: counts the click, remembers the code for 30 days (newest click wins),
/// and continues to `to`.
#[utoipa::path(get, path = "/r/{code}", tag = "checkout", params(("code" = String, Path), RefQuery),
    responses((status = 303, description = "Cookie set; on to the store")))]
async fn referral(State(app): State<App>, Path(code): Path<String>, Query(q): Query<RefQuery>) -> ApiResult<Response> {
    let to =
        q.to.filter(|t| t.starts_with('/') && !t.starts_with("//") && !t.contains('\\'))
            .unwrap_or_else(|| "/".into());
    let mut resp = Redirect::to(&to).into_response();
    if crate::affiliates::record_click(&app.db, &code).await? {
        if let Some(code) = crate::affiliates::normalize_code(&code) {
            let secure = if app.cfg.public_url().starts_with("https://") {
                "; Secure"
            } else {
                ""
            };
            let cookie = format!(
                "{}={code}; Max-Age={}; Path=/; HttpOnly; SameSite=Lax{secure}",
                crate::affiliates::REF_COOKIE,
                crate::affiliates::REF_COOKIE_DAYS * 86_400
            );
            if let Ok(v) = axum::http::HeaderValue::from_str(&cookie) {
                resp.headers_mut().insert(header::SET_COOKIE, v);
            }
        }
    }
    Ok(resp)
}

/// Stripe webhooks: verified (`Stripe-Signature`, 5-minute tolerance), deduplicated by event
/// id, applied in one transaction; 2xx only once the resulting state is committed.
#[utoipa::path(post, path = "/api/v1/webhooks/stripe", tag = "checkout",
    request_body(content = String, content_type = "application/json", description = "A Stripe event"),
    responses((status = 200, description = "Applied, duplicate or ignored"), (status = 400, description = "Missing, wrong or stale signature; malformed event"),
        (status = 409, description = "Conflicting state; Stripe retries")))]
async fn stripe_webhook(State(app): State<App>, headers: HeaderMap, body: axum::body::Bytes) -> ApiResult<Json<Value>> {
    let sig = headers.get("stripe-signature").and_then(|v| v.to_str().ok());
    let outcome = crate::payments::stripe_webhook::handle(&app, &body, sig).await?;
    let (status, note) = match outcome {
        crate::payments::stripe_webhook::Outcome::Applied(n) => ("applied", n),
        crate::payments::stripe_webhook::Outcome::Duplicate => ("duplicate", "already processed"),
        crate::payments::stripe_webhook::Outcome::Ignored(n) => ("ignored", n),
        crate::payments::stripe_webhook::Outcome::Deferred(_) => ("deferred", "waiting for the payment it refers to"),
    };
    Ok(Json(
        serde_json::json!({ "received": true, "status": status, "note": note }),
    ))
}

/// "Email me my links": sends the order's receipt again to its buyer. Always 202 with the same
/// body, whether or not the email and order matched, so it reveals nothing.
#[utoipa::path(post, path = "/api/v1/orders/lookup", tag = "checkout", request_body = checkout::LookupRequest,
    responses((status = 202, description = "If the order matches, its links are on their way"), (status = 422, description = "Malformed email")))]
async fn lookup(State(app): State<App>, ApiJson(req): ApiJson<checkout::LookupRequest>) -> ApiResult<Response> {
    checkout::lookup(&app, &req).await?;
    let body = serde_json::json!({ "status": "accepted", "message": "If this order was paid with this email address, its download links are on their way there." });
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

/// The order, read with its access token (`Authorization: Bearer {access_token}`).
#[utoipa::path(get, path = "/api/v1/orders/{order_id}", tag = "checkout",
    params(("order_id" = String, Path, description = "Order id")),
    responses((status = 200, description = "Same shape as the purchase response"), (status = 401, description = "Missing or wrong access token"), (status = 404, description = "No such order")))]
async fn get_order(State(app): State<App>, Path(order_id): Path<String>, headers: HeaderMap) -> ApiResult<Json<Value>> {
    let token = bearer(&headers)
        .ok_or_else(|| unauthorized("send Authorization: Bearer {access_token} from the purchase response"))?;
    let order = checkout::find_order(&app.db, &order_id)
        .await?
        .ok_or_else(|| not_found("order"))?;
    checkout::check_access(&order, token)?;
    Ok(Json(checkout::order_json(&app, &order, Some(token)).await?))
}

#[derive(Deserialize, utoipa::IntoParams)]
struct TokenQuery {
    token: String,
}

async fn load_order_with_token(app: &App, order_id: &str, token: &str) -> ApiResult<checkout::Order> {
    let order = checkout::find_order(&app.db, order_id)
        .await?
        .ok_or_else(|| not_found("order"))?;
    checkout::check_access(&order, token)?;
    Ok(order)
}

/// The TEST MODE checkout page (no real payment).
#[utoipa::path(get, path = "/checkout/test/{order_id}", tag = "checkout", params(("order_id" = String, Path), TokenQuery),
    responses((status = 200, description = "HTML page", content_type = "text/html")))]
async fn test_checkout_page(
    State(app): State<App>,
    Path(order_id): Path<String>,
    Query(q): Query<TokenQuery>,
) -> ApiResult<Html<String>> {
    let order = load_order_with_token(&app, &order_id, &q.token).await?;
    crate::http::pages::checkout_page(&app, &order).await
}

#[derive(Deserialize, utoipa::ToSchema)]
struct Outcome {
    outcome: String,
}

/// Completes a TEST MODE checkout through the normal fulfillment path and redirects to the success page.
///
/// No CSRF cookie is asked for here, on purpose: the scripted contract is a bare
/// `POST {checkout_url}` with `outcome`. It is safe because the order's access token in the
/// URL is itself the secret a cross-site attacker lacks (they cannot forge the URL without
/// it), the only effect is completing a *test* payment for that order, and test mode is
/// off on a live store.
#[utoipa::path(post, path = "/checkout/test/{order_id}", tag = "checkout", params(("order_id" = String, Path), TokenQuery),
    request_body(content = Outcome, content_type = "application/x-www-form-urlencoded"),
    responses((status = 303, description = "To the success page"), (status = 403, description = "Test mode is off")))]
async fn test_checkout_complete(
    State(app): State<App>,
    Path(order_id): Path<String>,
    Query(q): Query<TokenQuery>,
    Form(f): Form<Outcome>,
) -> ApiResult<Response> {
    if !app.cfg.payments.test_mode_enabled() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "test_mode_disabled",
            "test-mode payments are turned off on this store",
        ));
    }
    load_order_with_token(&app, &order_id, &q.token).await?;
    let tx = app.db.begin().await?;
    match f.outcome.as_str() {
        "succeeded" => {
            checkout::fulfill(&app, &tx, &order_id, "test", Some(&format!("test_{order_id}"))).await?;
        }
        "failed" => {
            checkout::fail(&tx, &order_id).await?;
        }
        _ => {
            return Err(
                crate::error::bad_request("invalid_outcome", "outcome must be succeeded or failed").field("outcome"),
            )
        }
    }
    tx.commit().await?;
    app.jobs_enqueued();
    Ok(Redirect::to(&format!("/orders/{order_id}/success?token={}", q.token)).into_response())
}

/// The order's success page: links once paid, "confirming payment…" before.
#[utoipa::path(get, path = "/orders/{order_id}/success", tag = "checkout", params(("order_id" = String, Path), TokenQuery),
    responses((status = 200, description = "HTML page", content_type = "text/html")))]
async fn success_page(
    State(app): State<App>,
    Path(order_id): Path<String>,
    Query(q): Query<TokenQuery>,
) -> ApiResult<Response> {
    let order = load_order_with_token(&app, &order_id, &q.token).await?;
    Ok(crate::http::pages::success_page(&app, &order).await?.into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
struct FileQuery {
    /// Which file of the current version (default: the first).
    file: Option<String>,
}

/// Redeems a download link: counts one download and redirects (302) to a short-lived delivery URL.
///
/// The delivery URL is Satchel's signed `/files/…` URL (modes `stream` and `x-accel`) or a
/// presigned object-store URL (mode `presign`, except watermarked products). A request with
/// a `Range` that starts past byte 0, from the IP prefix of a download of this link counted
/// within the file's delivery window, is a continuation (a resume, or another connection of
/// a segmented download manager): it gets a delivery URL without counting again.
///
/// `HEAD` checks the link without counting, logging or mailing anything (mail scanners and
/// link checkers probe links with it): 200 while a `GET` would start a download, else the
/// status of the refusal a `GET` would get.
#[utoipa::path(method(get, head), path = "/api/v1/downloads/{token}", tag = "delivery", params(("token" = String, Path), FileQuery,
        ("Range" = Option<String>, Header, description = "A range past byte 0 marks a continuation of a counted download")),
    responses((status = 302, description = "GET: to the delivery URL"), (status = 200, description = "HEAD: the link would start a download (nothing counted)"),
        (status = 403, description = "download_limit_reached | access_revoked | ip_not_allowed | reconfirm_required"),
        (status = 404, description = "not_found"), (status = 410, description = "link_expired")))]
async fn download(
    State(app): State<App>,
    Path(token): Path<String>,
    Query(q): Query<FileQuery>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: axum::extract::Request,
) -> ApiResult<Response> {
    download_answer(
        &app,
        &token,
        q.file.as_deref(),
        peer,
        req.method() == axum::http::Method::HEAD,
        req.headers(),
    )
    .await
}

/// The route of [`download`], as the router matches it.
pub(crate) const DOWNLOAD_ROUTE: &str = "/api/v1/downloads/{token}";

/// [`download`]'s answer for `token` and the `file` asked for, to a `GET` (or, `head`, a
/// `HEAD`) with `headers`. The HTTP front calls it directly for a request the router would
/// route there with nothing to decode (`front::direct_download`).
pub(crate) async fn download_answer(
    app: &App,
    token: &str,
    file: Option<&str>,
    peer: SocketAddr,
    head: bool,
    // The request's own headers, not a `HeaderMap` extractor: that one copies every header.
    headers: &axum::http::HeaderMap,
) -> ApiResult<Response> {
    let ua = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let ip = crate::http::ratelimit::client_ip(app, headers, Some(peer.ip())).unwrap_or(peer.ip());
    // HEAD is safe: it tells whether the link works and counts nothing (no Location either,
    // or a HEAD would fetch the file uncounted).
    if head {
        crate::delivery::probe(app, token, file, ip).await?;
        return Ok((StatusCode::OK, [(header::CACHE_CONTROL, "no-store")]).into_response());
    }
    // A resume or extra connection of a download counted moments ago is not a new download.
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let resumed = match range {
        Some(r) => crate::delivery::continuation(app, token, file, ip, r, ua).await?,
        None => None,
    };
    let url = match resumed {
        Some(url) => url,
        None => crate::delivery::redeem(app, token, file, ip, ua).await?,
    };
    Ok((
        StatusCode::FOUND,
        [(header::LOCATION, url), (header::CACHE_CONTROL, "no-store".to_string())],
    )
        .into_response())
}

/// Serves a file from a delivery URL: single and suffix ranges, 416, If-Range, ETag, Last-Modified.
///
/// In `x-accel` mode (unwatermarked files) the answer is an empty 200 with `X-Accel-Redirect`
/// for nginx, which then serves the bytes and ranges from its internal location.
#[utoipa::path(get, path = "/files/{token}/{name}", tag = "delivery", params(("token" = String, Path), ("name" = String, Path)),
    responses((status = 200, description = "The file (or, in x-accel mode, an empty answer with X-Accel-Redirect for nginx)"), (status = 206, description = "A range"),
        (status = 403, description = "access_revoked | ip_not_allowed (a URL bound to another network: `delivery.bind_to_ip`)"), (status = 404, description = "not_found"),
        (status = 410, description = "link_expired"), (status = 416, description = "Range not satisfiable")))]
async fn deliver_file(
    State(app): State<App>,
    Path((token, _name)): Path<(String, String)>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let ip = crate::http::ratelimit::client_ip(&app, &headers, Some(peer.ip())).unwrap_or(peer.ip());
    let (grant_id, file) = crate::delivery::open_delivery(&app, &token, ip).await?;
    // A watermarked product's buyer gets their own marked bytes (original + their tail).
    let marked = crate::watermark::composite(&app, &grant_id, &file).await?;
    if marked.is_none() && app.cfg.delivery.mode == crate::config::DeliveryMode::XAccel {
        return Ok(crate::http::ranges::x_accel(&app, &file));
    }
    crate::http::ranges::serve(&app, &file, marked.as_ref(), &headers).await
}
