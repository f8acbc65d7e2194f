//! Seller endpoints: sign-in, orders, refunds, discount codes, affiliates, license actions.
//! Every handler takes a [`SellerAuth`] and scopes to its seller: another seller's objects
//! answer 404, exactly as if they did not exist.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::App;
use crate::auth::SellerAuth;
use crate::db::Exec;
use crate::error::{bad_request, not_found, ApiResult};
use crate::http::extract::{ApiJson, ApiQuery};
use crate::sql;

pub fn routes() -> OpenApiRouter<App> {
    OpenApiRouter::new()
        .routes(routes!(login))
        .routes(routes!(logout))
        .routes(routes!(list_orders))
        .routes(routes!(get_order))
        .routes(routes!(refund))
        .routes(routes!(resend_receipt))
        .routes(routes!(list_discounts, create_discount))
        .routes(routes!(deactivate_discount))
        .routes(routes!(list_affiliates, create_affiliate))
        .routes(routes!(payable_csv))
        .routes(routes!(mark_paid))
        .routes(routes!(list_licenses))
        .routes(routes!(create_product))
        .routes(routes!(update_product, delete_product))
        .routes(routes!(seller_products))
        .routes(routes!(license_action))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Login {
    email: String,
    password: String,
}

/// Signs a seller in: sets the `satchel_session` cookie (HttpOnly, SameSite=Lax, Secure on https).
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "seller", request_body = Login,
    responses((status = 200, description = "Signed in; cookie set"), (status = 401, description = "Wrong email or password")))]
async fn login(State(app): State<App>, ApiJson(req): ApiJson<Login>) -> ApiResult<Response> {
    let user = crate::auth::login(&app, &req.email, &req.password).await?;
    let (cookie, csrf) = crate::auth::create_session(&app, &user.id).await?;
    let body = json!({"user": {"id": user.id, "email": user.email, "role": user.role}, "seller_id": user.seller_id, "csrf_token": csrf});
    Ok(([(header::SET_COOKIE, cookie)], Json(body)).into_response())
}

/// Ends the session.
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "seller", responses((status = 204, description = "Signed out")))]
async fn logout(State(app): State<App>, headers: HeaderMap) -> ApiResult<Response> {
    crate::auth::logout(
        &app,
        crate::auth::cookie(&headers, crate::auth::SESSION_COOKIE).as_deref(),
    )
    .await?;
    let clear = format!(
        "{}=; Max-Age=0; Path=/; HttpOnly; SameSite=Lax",
        crate::auth::SESSION_COOKIE
    );
    Ok((StatusCode::NO_CONTENT, [(header::SET_COOKIE, clear)]).into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
struct OrderQuery {
    /// `pending`, `paid`, `refunded`, …
    status: Option<String>,
    /// Buyer email or order id.
    q: Option<String>,
    cursor: Option<String>,
    /// 1–100, default 50.
    limit: Option<i64>,
}

/// The seller's orders, newest first: `{items, next_cursor}`.
#[utoipa::path(get, path = "/api/v1/seller/orders", tag = "seller", params(OrderQuery),
    responses((status = 200, description = "`{items, next_cursor}`"), (status = 401, description = "Not signed in")))]
async fn list_orders(
    State(app): State<App>,
    auth: SellerAuth,
    ApiQuery(q): ApiQuery<OrderQuery>,
) -> ApiResult<Json<Value>> {
    let limit = q.limit.unwrap_or(50);
    if !(1..=100).contains(&limit) {
        return Err(bad_request("invalid_limit", "limit must be between 1 and 100").field("limit"));
    }
    let mut query = crate::db::Query::new(
        "SELECT id, email, status, currency, total, refunded_total, created_at, paid_at FROM orders WHERE seller_id = $1".to_string(),
    );
    query.args.push(auth.seller_id.clone().into());
    if let Some(s) = q.status.as_deref().filter(|s| !s.is_empty()) {
        let a = query.arg(s);
        query.push_sql(&format!(" AND status = {a}"));
    }
    if let Some(text) = q.q.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        let a = query.arg(text.to_lowercase());
        let b = query.arg(text);
        query.push_sql(&format!(" AND (email = {a} OR id = {b})"));
    }
    query.page_desc("id", q.cursor.as_deref(), limit);
    let mut rows: Vec<OrderSummary> = app.db.fetch_all(query).await?;
    let next = crate::db::next_page(&mut rows, limit, |r| &r.id);
    let items: Vec<Value> = rows
        .iter()
        .map(|o| {
            let mut v = json!(o);
            v["total_display"] = json!(crate::catalog::format_money(o.total, &o.currency));
            v
        })
        .collect();
    Ok(Json(json!({"items": items, "next_cursor": next})))
}

#[derive(sqlx::FromRow, serde::Serialize)]
struct OrderSummary {
    id: String,
    email: String,
    status: String,
    currency: String,
    total: i64,
    refunded_total: i64,
    created_at: i64,
    paid_at: Option<i64>,
}

async fn own_order(app: &App, auth: &SellerAuth, id: &str) -> ApiResult<crate::checkout::Order> {
    crate::checkout::find_order(&app.db, id)
        .await?
        .filter(|o| o.seller_id == auth.seller_id)
        .ok_or_else(|| not_found("order"))
}

/// One order with its items, download grants (`grants`: id, product, remaining, max_downloads,
/// expires_at, status, ip_bound; actions at `/api/v1/seller/grants/{id}/…`), licenses and refunds.
#[utoipa::path(get, path = "/api/v1/seller/orders/{order_id}", tag = "seller", params(("order_id" = String, Path)),
    responses((status = 200, description = "Order"), (status = 404, description = "Not one of your orders")))]
async fn get_order(State(app): State<App>, auth: SellerAuth, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let order = own_order(&app, &auth, &id).await?;
    let mut v = crate::checkout::order_json(&app, &order, None).await?;
    let refunds: Vec<(String, i64, String, String, i64)> = app
        .db
        .fetch_all(sql!(
            "SELECT id, amount, reason, source, created_at FROM refunds WHERE order_id = $1 ORDER BY id",
            &id
        ))
        .await?;
    v["refunds"] = json!(refunds
        .iter()
        .map(|(rid, amount, reason, source, at)| json!({"id": rid, "amount": amount, "reason": reason, "source": source, "created_at": at}))
        .collect::<Vec<_>>());
    let grants = crate::grants::for_order(&app.db, &id).await?;
    v["grants"] = json!(grants
        .iter()
        .map(|g| json!({"id": g.id, "item_id": g.order_item_id, "product": {"id": g.product_id, "title": g.product_title},
            "max_downloads": g.max_downloads, "remaining": g.remaining, "expires_at": g.expires_at, "status": g.status,
            "ip_policy": g.ip_policy, "ip_bound": g.ip_bound}))
        .collect::<Vec<_>>());
    Ok(Json(v))
}

/// Refunds an order, fully or partly (`amount` in minor units; `items` whose access ends).
/// Through Stripe's refund API for card payments; recorded directly in test mode.
#[utoipa::path(post, path = "/api/v1/orders/{order_id}/refund", tag = "seller", params(("order_id" = String, Path)),
    request_body = crate::refunds::RefundRequest,
    responses((status = 200, description = "Refunded"), (status = 404, description = "Not one of your orders"),
        (status = 409, description = "order_not_refundable"), (status = 422, description = "amount_exceeds_remaining | invalid_amount"),
        (status = 502, description = "Stripe refused; nothing changed")))]
async fn refund(
    State(app): State<App>,
    auth: SellerAuth,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<crate::refunds::RefundRequest>,
) -> ApiResult<Json<Value>> {
    let out = crate::refunds::seller_refund(&app, &auth.seller_id, &id, &req).await?;
    let order = own_order(&app, &auth, &id).await?;
    let refund = match out {
        crate::refunds::RefundOutcome::Applied { refund_id, amount, .. } => json!({"id": refund_id, "amount": amount}),
        crate::refunds::RefundOutcome::AlreadyApplied => Value::Null,
    };
    Ok(Json(
        json!({"order_id": order.id, "status": order.status, "refund": refund}),
    ))
}

/// Sends the buyer their receipt (with fresh links) again.
#[utoipa::path(post, path = "/api/v1/orders/{order_id}/resend-receipt", tag = "seller", params(("order_id" = String, Path)),
    responses((status = 202, description = "Queued"), (status = 409, description = "Order not paid")))]
async fn resend_receipt(State(app): State<App>, auth: SellerAuth, Path(id): Path<String>) -> ApiResult<Response> {
    own_order(&app, &auth, &id).await?;
    if !crate::checkout::resend_receipt(&app, &id).await? {
        return Err(crate::error::conflict(
            "order_not_paid",
            "only paid orders have a receipt to send",
        ));
    }
    Ok((StatusCode::ACCEPTED, Json(json!({"status": "queued"}))).into_response())
}

/// The seller's discount codes.
#[utoipa::path(get, path = "/api/v1/discounts", tag = "seller", responses((status = 200, description = "`{items, next_cursor}`")))]
async fn list_discounts(State(app): State<App>, auth: SellerAuth) -> ApiResult<Json<Value>> {
    let items = crate::checkout::list_discounts(&app.db, &auth.seller_id).await?;
    Ok(Json(json!({"items": items, "next_cursor": null})))
}

/// Creates a discount code (percent or fixed, expiry, max redemptions, once per customer, product scope).
#[utoipa::path(post, path = "/api/v1/discounts", tag = "seller", request_body = crate::checkout::NewDiscount,
    responses((status = 201, description = "Created"), (status = 409, description = "code_taken"), (status = 422, description = "Invalid field")))]
async fn create_discount(
    State(app): State<App>,
    auth: SellerAuth,
    ApiJson(d): ApiJson<crate::checkout::NewDiscount>,
) -> ApiResult<Response> {
    let created = crate::checkout::create_discount(&app.db, &auth.seller_id, &d).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": created.id, "code": created.code, "kind": created.kind, "amount": created.amount})),
    )
        .into_response())
}

/// Deactivates a discount code (kept for the orders that used it).
#[utoipa::path(delete, path = "/api/v1/discounts/{id}", tag = "seller", params(("id" = String, Path)),
    responses((status = 204, description = "Deactivated"), (status = 404, description = "Not one of your codes")))]
async fn deactivate_discount(
    State(app): State<App>,
    auth: SellerAuth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let n = app
        .db
        .execute(sql!(
            "UPDATE discount_codes SET active = FALSE WHERE id = $1 AND seller_id = $2",
            &id,
            &auth.seller_id
        ))
        .await?;
    if n == 0 {
        return Err(not_found("discount code"));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The seller's affiliates with clicks and earnings.
#[utoipa::path(get, path = "/api/v1/affiliates", tag = "seller", responses((status = 200, description = "`{items, next_cursor}`")))]
async fn list_affiliates(State(app): State<App>, auth: SellerAuth) -> ApiResult<Json<Value>> {
    let rows: Vec<crate::affiliates::Affiliate> = app
        .db
        .fetch_all(sql!(
            "SELECT id, seller_id, email, code, commission_bps, product_id, clicks, status FROM affiliates WHERE seller_id = $1 ORDER BY id DESC",
            &auth.seller_id
        ))
        .await?;
    let mut items = Vec::new();
    for a in rows {
        let e = crate::affiliates::earnings(&app.db, &a.id).await?;
        items.push(json!({"id": a.id, "email": a.email, "code": a.code, "commission_percent": a.commission_bps as f64 / 100.0,
            "product_id": a.product_id, "clicks": e.clicks, "sales": e.sales, "pending": e.pending, "payable": e.payable, "paid": e.paid,
            "link": format!("{}/r/{}", app.cfg.public_url(), a.code)}));
    }
    Ok(Json(json!({"items": items, "next_cursor": null})))
}

/// Creates an affiliate (default 30 % of net sales, store-wide or one product).
#[utoipa::path(post, path = "/api/v1/affiliates", tag = "seller", request_body = crate::affiliates::NewAffiliate,
    responses((status = 201, description = "Created"), (status = 409, description = "code_taken"), (status = 422, description = "Invalid field")))]
async fn create_affiliate(
    State(app): State<App>,
    auth: SellerAuth,
    ApiJson(a): ApiJson<crate::affiliates::NewAffiliate>,
) -> ApiResult<Response> {
    let created = crate::affiliates::create(&app.db, &auth.seller_id, &a).await?;
    let link = format!("{}/r/{}", app.cfg.public_url(), created.code);
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": created.id, "code": created.code, "link": link})),
    )
        .into_response())
}

/// Payable commissions as CSV, one line per affiliate.
#[utoipa::path(get, path = "/api/v1/affiliates/payable.csv", tag = "seller",
    responses((status = 200, description = "CSV", content_type = "text/csv")))]
async fn payable_csv(State(app): State<App>, auth: SellerAuth) -> ApiResult<Response> {
    let csv = crate::affiliates::payable_csv(&app.db, &auth.seller_id).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"payable-commissions.csv\"",
            ),
        ],
        csv,
    )
        .into_response())
}

/// Marks every payable commission paid (after you paid them out).
#[utoipa::path(post, path = "/api/v1/affiliates/mark-paid", tag = "seller", responses((status = 200, description = "`{marked}`")))]
async fn mark_paid(State(app): State<App>, auth: SellerAuth) -> ApiResult<Json<Value>> {
    Ok(Json(
        json!({"marked": crate::affiliates::mark_paid(&app.db, &auth.seller_id).await?}),
    ))
}

#[derive(Deserialize, utoipa::IntoParams)]
struct LicenseQuery {
    /// A license key (any typing) or buyer email.
    q: Option<String>,
}

/// The seller's licenses (search by key or buyer email).
#[utoipa::path(get, path = "/api/v1/seller/licenses", tag = "seller", params(LicenseQuery),
    responses((status = 200, description = "`{items, next_cursor}`")))]
async fn list_licenses(
    State(app): State<App>,
    auth: SellerAuth,
    ApiQuery(q): ApiQuery<LicenseQuery>,
) -> ApiResult<Json<Value>> {
    let needle =
        q.q.as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| crate::licensing::format::canonical_key(s).unwrap_or_else(|_| s.to_lowercase()));
    let items: Vec<LicenseSummary> = app
        .db
        .fetch_all(sql!(
            "SELECT l.id, l.license_key, l.email, l.license_type, l.status, l.max_activations, l.activations
             FROM license_keys l JOIN orders o ON o.id = l.order_id
             WHERE o.seller_id = $1 AND ($2 = '' OR l.license_key = $2 OR l.email = $2) ORDER BY l.id DESC LIMIT 200",
            &auth.seller_id,
            needle.unwrap_or_default()
        ))
        .await?;
    Ok(Json(json!({"items": items, "next_cursor": null})))
}

#[derive(sqlx::FromRow, serde::Serialize)]
struct LicenseSummary {
    id: String,
    license_key: String,
    email: String,
    license_type: String,
    status: String,
    max_activations: Option<i64>,
    activations: i64,
}

/// `suspend`, `reinstate`, `revoke`, `reset` (deactivate every device) or `extend` a license.
/// `extend` takes `{"days": N}` or `{"until": unix_seconds}`; it is refused (409) for
/// licenses that never expire and for subscription licenses (their expiry follows billing).
#[utoipa::path(post, path = "/api/v1/seller/licenses/{id}/{action}", tag = "seller",
    params(("id" = String, Path), ("action" = String, Path, description = "suspend | reinstate | revoke | reset | extend")),
    request_body(content = Option<crate::licensing::ExtendRequest>, description = "Only for `extend`"),
    responses((status = 200, description = "The license's new state"), (status = 404, description = "Not one of your licenses"),
        (status = 409, description = "never_expires | subscription_license (extend)"),
        (status = 422, description = "Unknown action, or invalid days/until")))]
async fn license_action(
    State(app): State<App>,
    auth: SellerAuth,
    Path((id, action)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    Ok(Json(
        crate::licensing::seller_action(&app, &id, &auth.seller_id, &action, &body).await?,
    ))
}

/// Creates a product (draft unless `status` says otherwise).
#[utoipa::path(post, path = "/api/v1/products", tag = "seller", request_body = crate::catalog::NewProduct,
    responses((status = 201, description = "Created"), (status = 409, description = "slug_taken"), (status = 422, description = "Invalid field (named)")))]
async fn create_product(
    State(app): State<App>,
    auth: SellerAuth,
    ApiJson(p): ApiJson<crate::catalog::NewProduct>,
) -> ApiResult<Response> {
    let tx = app.db.begin().await?;
    let created = crate::catalog::create_product(&tx, &auth.seller_id, p).await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(crate::catalog::product_json(&app.db, &created, true).await?),
    )
        .into_response())
}

/// Changes some fields of one of your products (publish or archive with `status`).
#[utoipa::path(patch, path = "/api/v1/products/{id}", tag = "seller", params(("id" = String, Path)), request_body = crate::catalog::ProductPatch,
    responses((status = 200, description = "Updated"), (status = 404, description = "Not one of your products"), (status = 409, description = "slug_taken"), (status = 422, description = "Invalid field")))]
async fn update_product(
    State(app): State<App>,
    auth: SellerAuth,
    Path(id): Path<String>,
    ApiJson(patch): ApiJson<crate::catalog::ProductPatch>,
) -> ApiResult<Json<Value>> {
    let tx = app.db.begin().await?;
    let p = crate::catalog::update_product(&tx, &auth.seller_id, &id, patch).await?;
    tx.commit().await?;
    Ok(Json(crate::catalog::product_json(&app.db, &p, true).await?))
}

/// Deletes a draft nobody bought; archives anything sold (past buyers keep their downloads).
#[utoipa::path(delete, path = "/api/v1/products/{id}", tag = "seller", params(("id" = String, Path)),
    responses((status = 200, description = "`{status: deleted | archived}`"), (status = 404, description = "Not one of your products")))]
async fn delete_product(State(app): State<App>, auth: SellerAuth, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let tx = app.db.begin().await?;
    let status = crate::catalog::delete_product(&tx, &auth.seller_id, &id).await?;
    tx.commit().await?;
    Ok(Json(json!({"id": id, "status": status})))
}

/// All of your products, any status: `{items, next_cursor}`.
#[utoipa::path(get, path = "/api/v1/seller/products", tag = "seller", params(crate::catalog::ListParams),
    responses((status = 200, description = "`{items, next_cursor}`")))]
async fn seller_products(
    State(app): State<App>,
    auth: SellerAuth,
    ApiQuery(params): ApiQuery<crate::catalog::ListParams>,
) -> ApiResult<Json<Value>> {
    let (rows, next) = crate::catalog::list_products(&app.db, &params, Some(&auth.seller_id)).await?;
    let mut items = Vec::with_capacity(rows.len());
    for p in &rows {
        items.push(crate::catalog::product_json(&app.db, p, false).await?);
    }
    Ok(Json(json!({"items": items, "next_cursor": next})))
}
