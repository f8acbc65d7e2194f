//! Checkout and fulfillment: orders priced and fixed at purchase time, and the one
//! fulfillment path every payment confirmation goes through (test mode today, Stripe
//! webhooks through the same function).
//!
//! Fulfillment is idempotent and happens in one transaction: the order flips from `pending`
//! to `paid` with a conditional UPDATE, and only the caller that flipped it creates the
//! download grants. Any number of confirmations, in any order, give the same final state.

use serde::Deserialize;
use serde_json::{json, Value};

use crate::catalog::{self, DownloadPolicy};
use crate::db::models::{Product, PRODUCT_COLS};
use crate::db::{Exec, Tx};
use crate::error::{not_found, unauthorized, unprocessable, ApiResult};
use crate::ids::{hash_secret, new_id, now, random_token};
use crate::sql;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PurchaseRequest {
    /// The buyer's email: receipts and the library are tied to it.
    pub email: String,
    /// Seats (license keys) for licensed products; 1–100.
    #[serde(default = "one")]
    pub quantity: i64,
    /// For pay-what-you-want products: the amount in minor units (≥ the minimum).
    pub amount: Option<i64>,
    /// Affiliate code (browsers carry it in the `satchel_ref` cookie instead).
    pub affiliate_code: Option<String>,
}

fn one() -> i64 {
    1
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Order {
    pub id: String,
    pub seller_id: String,
    pub email: String,
    pub status: String,
    pub currency: String,
    pub subtotal: i64,
    pub discount_total: i64,
    pub total: i64,
    pub access_token_hash: String,
    pub provider: String,
    pub created_at: i64,
    pub paid_at: Option<i64>,
    pub checkout_url: Option<String>,
}

const ORDER_COLS: &str =
    "id, seller_id, email, status, currency, subtotal, discount_total, total, access_token_hash, provider, created_at, paid_at, checkout_url";

pub async fn find_order(e: &impl Exec, id: &str) -> Result<Option<Order>, crate::db::DbError> {
    e.fetch_optional(sql!(format!("SELECT {ORDER_COLS} FROM orders WHERE id = $1"), id))
        .await
}

/// One line of a cart.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CartLine {
    /// Product id or slug.
    pub product_id: String,
    #[serde(default = "one")]
    pub quantity: i64,
    /// Pay-what-you-want amount in minor units.
    pub amount: Option<i64>,
}

/// `POST /api/v1/checkout`: a cart of one or more products from one store, in one currency.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CartRequest {
    pub email: String,
    pub items: Vec<CartLine>,
    pub discount_code: Option<String>,
    /// Affiliate code (browsers carry it in the `satchel_ref` cookie instead).
    pub affiliate_code: Option<String>,
}

/// Creates a pending order for one product. Returns the order and its access token
/// (shown once; the database keeps its hash). Free orders are fulfilled at once.
pub async fn purchase(
    app: &crate::app::App,
    tx: &Tx,
    id_or_slug: &str,
    req: &PurchaseRequest,
    ref_cookie: Option<&str>,
) -> ApiResult<(Order, String)> {
    let line = CartLine {
        product_id: id_or_slug.to_string(),
        quantity: req.quantity,
        amount: req.amount,
    };
    let affiliate = req.affiliate_code.as_deref().or(ref_cookie);
    create_order(app, tx, &req.email, &[line], None, affiliate).await
}

#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct Discount {
    pub id: String,
    pub seller_id: String,
    pub code: String,
    pub kind: String,
    pub amount: i64,
    pub currency: Option<String>,
    pub product_id: Option<String>,
    pub max_redemptions: Option<i64>,
    pub redemptions: i64,
    pub once_per_customer: bool,
    pub expires_at: Option<i64>,
    pub active: bool,
}

const DISCOUNT_COLS: &str =
    "id, seller_id, code, kind, amount, currency, product_id, max_redemptions, redemptions, once_per_customer, expires_at, active";

/// What a seller sends to create a discount code.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDiscount {
    pub code: String,
    /// `percent` (amount 1–100) or `fixed` (amount in minor units of `currency`).
    pub kind: String,
    pub amount: i64,
    pub currency: Option<String>,
    pub product_id: Option<String>,
    pub max_redemptions: Option<i64>,
    #[serde(default)]
    pub once_per_customer: bool,
    pub expires_at: Option<i64>,
}

pub async fn create_discount(e: &impl Exec, seller_id: &str, d: &NewDiscount) -> ApiResult<Discount> {
    let code = d.code.trim().to_ascii_uppercase();
    if code.is_empty() || code.len() > 40 || !code.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(unprocessable("invalid_code", "code must be 1–40 letters, digits, '-' or '_'").field("code"));
    }
    let currency = match d.kind.as_str() {
        "percent" if (1..=100).contains(&d.amount) => None,
        "percent" => return Err(unprocessable("invalid_amount", "a percent discount is 1–100").field("amount")),
        "fixed" if d.amount > 0 => {
            let c = d.currency.clone().unwrap_or_default().to_ascii_uppercase();
            if catalog::currency_exponent(&c).is_none() {
                return Err(
                    unprocessable("invalid_currency", "a fixed discount needs its ISO currency").field("currency"),
                );
            }
            Some(c)
        }
        "fixed" => return Err(unprocessable("invalid_amount", "a fixed discount is a positive amount").field("amount")),
        _ => return Err(unprocessable("invalid_kind", "kind must be percent or fixed").field("kind")),
    };
    if d.max_redemptions.is_some_and(|m| m < 1) {
        return Err(
            unprocessable("invalid_max_redemptions", "max_redemptions must be at least 1").field("max_redemptions"),
        );
    }
    if let Some(pid) = &d.product_id {
        let owned = catalog::find_product(e, pid)
            .await?
            .filter(|p| p.seller_id == seller_id);
        if owned.is_none() {
            return Err(
                unprocessable("invalid_product", "product_id must be one of your products").field("product_id"),
            );
        }
    }
    let id = new_id("dsc");
    let r = e
        .execute(sql!(
            "INSERT INTO discount_codes (id, seller_id, code, kind, amount, currency, product_id, max_redemptions, once_per_customer, expires_at, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            &id,
            seller_id,
            &code,
            &d.kind,
            d.amount,
            currency,
            d.product_id.clone(),
            d.max_redemptions,
            d.once_per_customer,
            d.expires_at,
            now()
        ))
        .await;
    match r {
        Ok(_) => {}
        Err(err) if crate::db::is_unique_violation(&err) => {
            return Err(crate::error::conflict("code_taken", format!("you already have a code {code}")).field("code"))
        }
        Err(err) => return Err(err.into()),
    }
    Ok(e.fetch_one(sql!(
        format!("SELECT {DISCOUNT_COLS} FROM discount_codes WHERE id = $1"),
        &id
    ))
    .await?)
}

/// A seller's discount codes, newest first.
pub async fn list_discounts(e: &impl Exec, seller_id: &str) -> Result<Vec<Discount>, crate::db::DbError> {
    e.fetch_all(sql!(
        format!("SELECT {DISCOUNT_COLS} FROM discount_codes WHERE seller_id = $1 ORDER BY id DESC"),
        seller_id
    ))
    .await
}

/// Finds a usable code for this seller and buyer, or says why not (422 naming `discount_code`).
async fn usable_discount(e: &impl Exec, seller_id: &str, code: &str, email: &str) -> ApiResult<Discount> {
    let bad = |code: &'static str, msg: &str| unprocessable(code, msg.to_string()).field("discount_code");
    let d: Discount = e
        .fetch_optional(sql!(
            format!("SELECT {DISCOUNT_COLS} FROM discount_codes WHERE seller_id = $1 AND code = $2"),
            seller_id,
            code.trim().to_ascii_uppercase()
        ))
        .await?
        .ok_or_else(|| bad("invalid_discount_code", "this discount code does not exist"))?;
    if !d.active {
        return Err(bad("discount_inactive", "this discount code is no longer active"));
    }
    if d.expires_at.is_some_and(|x| x <= now()) {
        return Err(bad("discount_expired", "this discount code has expired"));
    }
    if d.max_redemptions.is_some_and(|m| d.redemptions >= m) {
        return Err(bad("discount_used_up", "this discount code has been used up"));
    }
    if d.once_per_customer {
        let used = e
            .fetch_i64(sql!(
                "SELECT COUNT(*) FROM orders WHERE discount_code_id = $1 AND email = $2 AND status IN ('paid', 'partially_refunded', 'refunded')",
                &d.id,
                email
            ))
            .await?;
        if used > 0 {
            return Err(bad("discount_already_used", "you have already used this discount code"));
        }
    }
    Ok(d)
}

struct Priced {
    product: Product,
    unit: i64,
    quantity: i64,
    discount: i64,
}

/// Prices a cart and writes a pending order (fulfilled at once when the total is zero).
pub async fn create_order(
    app: &crate::app::App,
    tx: &Tx,
    email: &str,
    lines: &[CartLine],
    discount_code: Option<&str>,
    affiliate_code: Option<&str>,
) -> ApiResult<(Order, String)> {
    let email = crate::accounts::normalize_email(email)?;
    if lines.is_empty() || lines.len() > 50 {
        return Err(unprocessable("invalid_items", "a cart holds 1–50 products").field("items"));
    }
    let mut priced: Vec<Priced> = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        let field = format!("items[{i}]");
        let product: Product = catalog::find_for_sale(tx, &line.product_id).await?.ok_or_else(|| {
            crate::error::ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                "not_found",
                format!("product {:?} not found", line.product_id),
            )
            .field(&format!("{field}.product_id"))
        })?;
        if priced.iter().any(|p| p.product.id == product.id) {
            return Err(unprocessable("duplicate_item", "list each product once and use quantity").field(&field));
        }
        if !(1..=100).contains(&line.quantity) {
            return Err(unprocessable("invalid_quantity", "quantity must be between 1 and 100")
                .field(&format!("{field}.quantity")));
        }
        let unit = match (product.pwyw_min, line.amount) {
            (Some(min), Some(a)) if a >= min && a <= 100_000_000 => a,
            (Some(min), Some(_)) => {
                return Err(unprocessable(
                    "amount_below_minimum",
                    format!(
                        "Pay at least {} for {}.",
                        catalog::format_money(min, &product.currency),
                        product.title
                    ),
                )
                .field(&format!("{field}.amount")))
            }
            (Some(_), None) => product.price,
            (None, Some(a)) if a != product.price => {
                return Err(
                    unprocessable("amount_not_allowed", "this product has a fixed price; omit amount")
                        .field(&format!("{field}.amount")),
                )
            }
            (None, _) => product.price,
        };
        if let Some(first) = priced.first() {
            if first.product.currency != product.currency {
                return Err(unprocessable(
                    "mixed_currencies",
                    "every product in a cart must be priced in the same currency",
                )
                .field(&field));
            }
            if first.product.seller_id != product.seller_id {
                return Err(
                    unprocessable("mixed_stores", "a cart can only hold products from one store").field(&field),
                );
            }
        }
        priced.push(Priced {
            product,
            unit,
            quantity: line.quantity,
            discount: 0,
        });
    }
    let seller_id = priced[0].product.seller_id.clone();
    let currency = priced[0].product.currency.clone();
    let subtotal: i64 = priced.iter().map(|p| p.unit * p.quantity).sum();
    let discount = match discount_code.map(str::trim).filter(|c| !c.is_empty()) {
        Some(code) => Some(usable_discount(tx, &seller_id, code, &email).await?),
        None => None,
    };
    if let Some(d) = &discount {
        let eligible: Vec<usize> = (0..priced.len())
            .filter(|&i| d.product_id.as_ref().is_none_or(|pid| *pid == priced[i].product.id))
            .collect();
        if eligible.is_empty() {
            return Err(unprocessable(
                "discount_not_applicable",
                "this code does not apply to the products in your cart",
            )
            .field("discount_code"));
        }
        let base: i64 = eligible.iter().map(|&i| priced[i].unit * priced[i].quantity).sum();
        let total_off = match d.kind.as_str() {
            "percent" => base * d.amount / 100,
            _ => {
                if d.currency.as_deref() != Some(currency.as_str()) {
                    return Err(
                        unprocessable("discount_not_applicable", "this code is for another currency")
                            .field("discount_code"),
                    );
                }
                d.amount.min(base)
            }
        };
        // Spread the discount over eligible lines in proportion to their value; the last line
        // takes the rounding remainder so the parts add up exactly.
        let mut left = total_off;
        for (n, &i) in eligible.iter().enumerate() {
            let line = priced[i].unit * priced[i].quantity;
            let share = if n + 1 == eligible.len() {
                left
            } else if base > 0 {
                total_off * line / base
            } else {
                0
            };
            priced[i].discount = share.min(line);
            left -= priced[i].discount;
        }
    }
    let discount_total: i64 = priced.iter().map(|p| p.discount).sum();
    let total = subtotal - discount_total;
    let free = total == 0;
    if !free && !app.cfg.payments.test_mode_enabled() && app.cfg.payments.stripe_secret_key.is_none() {
        return Err(unprocessable(
            "payments_unavailable",
            "card payments are not configured on this store yet; ask the seller to set up Stripe",
        ));
    }
    let product_ids: Vec<String> = priced.iter().map(|p| p.product.id.clone()).collect();
    let affiliate = crate::affiliates::resolve(tx, affiliate_code, &seller_id, &email, &product_ids).await?;
    let token = random_token(24);
    let order_id = new_id("ord");
    let t = now();
    let mode = if priced.iter().any(|p| p.product.kind == "subscription") {
        "subscription"
    } else {
        "payment"
    };
    tx.execute(sql!(
        "INSERT INTO orders (id, seller_id, email, status, currency, subtotal, discount_total, total, discount_code_id,
            access_token_hash, provider, mode, created_at, updated_at, affiliate_id)
         VALUES ($1, $2, $3, 'pending', $4, $5, $6, $7, $8, $9, $10, $11, $12, $12, $13)",
        &order_id,
        &seller_id,
        &email,
        &currency,
        subtotal,
        discount_total,
        total,
        discount.as_ref().map(|d| d.id.clone()),
        hash_secret(&token),
        if free {
            "free"
        } else if app.cfg.payments.test_mode_enabled() {
            "test"
        } else {
            "stripe"
        },
        mode,
        t,
        affiliate.map(|a| a.id)
    ))
    .await?;
    for p in &priced {
        add_item(tx, &order_id, &p.product, p.unit, p.quantity, p.discount, None).await?;
    }
    if free {
        fulfill(app, tx, &order_id, "free", None).await?;
    }
    let order = find_order(tx, &order_id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("order vanished"))?;
    Ok((order, token))
}

async fn add_item(
    tx: &Tx,
    order_id: &str,
    p: &Product,
    unit: i64,
    qty: i64,
    discount: i64,
    parent: Option<&str>,
) -> ApiResult<String> {
    let item_id = new_id("itm");
    tx.execute(sql!(
        "INSERT INTO order_items (id, order_id, product_id, parent_item_id, title, unit_price, quantity, discount, total)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        &item_id,
        order_id,
        &p.id,
        parent,
        &p.title,
        unit,
        qty,
        discount,
        unit * qty - discount
    ))
    .await?;
    if p.kind == "bundle" {
        let members: Vec<Product> = tx
            .fetch_all(sql!(
                format!("SELECT {PRODUCT_COLS} FROM products p JOIN bundle_items b ON b.product_id = p.id WHERE b.bundle_id = $1 ORDER BY p.id"),
                &p.id
            ))
            .await?;
        for m in members {
            Box::pin(add_item(tx, order_id, &m, 0, qty, 0, Some(&item_id))).await?;
        }
    }
    Ok(item_id)
}

/// Marks the order paid and issues its grants — exactly once, however often it is called.
/// Returns whether this call did the work.
pub async fn fulfill(
    app: &crate::app::App,
    tx: &Tx,
    order_id: &str,
    provider: &str,
    provider_ref: Option<&str>,
) -> ApiResult<bool> {
    fulfill_with(app, tx, order_id, provider, provider_ref, None).await
}

/// [`fulfill`] with the provider's subscription id for subscription orders. A confirmed
/// payment always wins: a declined or expired order that is then paid (a retry) is fulfilled.
pub async fn fulfill_with(
    app: &crate::app::App,
    tx: &Tx,
    order_id: &str,
    provider: &str,
    provider_ref: Option<&str>,
    provider_subscription: Option<&str>,
) -> ApiResult<bool> {
    let t = now();
    let flipped = tx
        .execute(sql!(
            "UPDATE orders SET status = 'paid', paid_at = $2, updated_at = $2, provider_payment_id = COALESCE(provider_payment_id, $3)
             WHERE id = $1 AND status IN ('pending', 'failed', 'expired')",
            order_id,
            t,
            provider_ref
        ))
        .await?;
    if flipped == 0 {
        return Ok(false);
    }
    let order = find_order(tx, order_id).await?.ok_or_else(|| not_found("order"))?;
    tx.execute(sql!(
        "UPDATE discount_codes SET redemptions = redemptions + 1 WHERE id = (SELECT discount_code_id FROM orders WHERE id = $1)",
        order_id
    ))
    .await?;
    tx.execute(sql!(
        "INSERT INTO payments (id, order_id, provider, provider_ref, amount, currency, status, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, 'succeeded', $7)",
        new_id("pay"),
        order_id,
        provider,
        provider_ref,
        order.total,
        &order.currency,
        t
    ))
    .await?;
    let items: Vec<(String, String)> = tx
        .fetch_all(sql!(
            "SELECT id, product_id FROM order_items WHERE order_id = $1 ORDER BY id",
            order_id
        ))
        .await?;
    for (item_id, product_id) in items {
        let Some(p) = catalog::find_product(tx, &product_id).await? else {
            continue;
        };
        if p.current_version_id.is_none() {
            continue; // bundles and license-only items have no files of their own
        }
        let policy: DownloadPolicy = serde_json::from_str(&p.download_policy).unwrap_or_default();
        crate::delivery::create_grant(tx, &app.keys, &order, &item_id, &p, &policy).await?;
    }
    // Buyers' marked copies are prepared off the receipt's path, by a job that exists only
    // if this transaction commits (a first download before it runs computes the same mark).
    let marked: Vec<(String,)> = tx
        .fetch_all(sql!(
            "SELECT g.id FROM download_grants g JOIN products p ON p.id = g.product_id
             WHERE g.order_id = $1 AND p.watermark_policy <> 'none' ORDER BY g.id",
            order_id
        ))
        .await?;
    for (grant_id,) in marked {
        crate::jobs::enqueue(tx, &crate::watermark::PrepareMarks { grant_id }).await?;
    }
    crate::db::Exec::execute(
        tx,
        sql!(
            "INSERT INTO domain_events (id, seller_id, event_type, subject_id, payload, created_at) VALUES ($1, $2, 'order.paid', $3, $4, $5)",
            new_id("evt"),
            &order.seller_id,
            order_id,
            json!({"total": order.total, "currency": order.currency}).to_string(),
            t
        ),
    )
    .await?;
    crate::licensing::issue_for_order(tx, order_id, &order.email).await?;
    crate::affiliates::on_paid(tx, order_id, app.cfg.affiliates.refund_window_days).await?;
    crate::subscriptions::start(tx, order_id, provider_subscription).await?;
    crate::invoices::issue_for_order(tx, &order).await?;
    queue_receipt(app, tx, &order).await?;
    Ok(true)
}

/// Sends the receipt again (buyer lookup, seller "resend receipt"). Returns whether the order
/// was paid and so had something to send.
pub async fn resend_receipt(app: &crate::app::App, order_id: &str) -> ApiResult<bool> {
    let tx = app.db.begin().await?;
    let Some(order) = find_order(&tx, order_id).await? else {
        return Ok(false);
    };
    if !matches!(order.status.as_str(), "paid" | "partially_refunded") {
        return Ok(false);
    }
    queue_receipt(app, &tx, &order).await?;
    tx.commit().await?;
    app.jobs_enqueued();
    Ok(true)
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LookupRequest {
    pub email: String,
    pub order_id: String,
}

/// "Email me my links": if the order exists, belongs to this email and is paid, its receipt
/// is sent again — to that email only. The answer is the same either way, so the endpoint
/// reveals nothing about who bought what.
pub async fn lookup(app: &crate::app::App, req: &LookupRequest) -> ApiResult<()> {
    let email = crate::accounts::normalize_email(&req.email)?;
    if req.order_id.len() > 64 {
        return Ok(());
    }
    if let Some(order) = find_order(&app.db, req.order_id.trim()).await? {
        use subtle::ConstantTimeEq;
        if bool::from(order.email.as_bytes().ct_eq(email.as_bytes())) {
            resend_receipt(app, &order.id).await?;
        }
    }
    Ok(())
}

/// The receipt: what was bought, the download buttons, and where to find it all again.
async fn queue_receipt(app: &crate::app::App, tx: &Tx, order: &Order) -> ApiResult<()> {
    let brand = crate::mail::Brand::of_seller(tx, &order.seller_id).await?;
    let base = app.cfg.public_url();
    let money = |v: i64| catalog::format_money(v, &order.currency);
    let items: Vec<(String, String, i64, i64)> = tx
        .fetch_all(sql!(
            "SELECT id, title, quantity, unit_price * quantity FROM order_items WHERE order_id = $1 AND parent_item_id IS NULL ORDER BY id",
            &order.id
        ))
        .await?;
    let downloads: Vec<(String, String, i64, i64)> = tx
        .fetch_all(sql!(
            "SELECT g.id, i.title, g.expires_at, g.max_downloads FROM download_grants g JOIN order_items i ON i.id = g.order_item_id
             WHERE g.order_id = $1 ORDER BY g.id",
            &order.id
        ))
        .await?;
    let licenses: Vec<(String, String)> = tx
        .fetch_all(sql!(
            "SELECT i.title, l.license_key FROM license_keys l JOIN order_items i ON i.id = l.order_item_id WHERE l.order_id = $1 ORDER BY l.id",
            &order.id
        ))
        .await?;
    let ctx = json!({
        "order_id": order.id,
        "items": items.iter().map(|(_, title, qty, total)| json!({"title": title, "quantity": qty, "total": money(*total)})).collect::<Vec<_>>(),
        "discount": (order.discount_total > 0).then(|| money(order.discount_total)),
        "total": money(order.total),
        "downloads": downloads.iter().map(|(gid, title, exp, max)| json!({
            "title": title,
            "url": format!("{base}/api/v1/downloads/{}", crate::delivery::sign(&app.keys, "d1", &[gid, &exp.to_string()])),
            "max_downloads": max,
            "valid_until": crate::mail::date(*exp),
        })).collect::<Vec<_>>(),
        "licenses": licenses.iter().map(|(title, key)| json!({"title": title, "key": key})).collect::<Vec<_>>(),
        "library_url": format!("{base}/library"),
        "invoice_url": crate::invoices::invoice_of_order(tx, &order.id).await?.map(|i| crate::invoices::url(app, &i.id)),
    });
    let (text, html) = crate::mail::render(
        app.cfg.email.templates_dir.as_deref(),
        &brand,
        "receipt",
        "Your purchase is ready",
        "Your downloads and receipt",
        &ctx,
    )?;
    let subject = format!(
        "Your {} order: {}",
        brand.store_name,
        items.first().map_or("receipt", |i| i.1.as_str())
    );
    crate::mail::queue(
        tx,
        &crate::mail::Email {
            to: order.email.clone(),
            subject,
            text,
            html,
            kind: "receipt".into(),
            seller_id: Some(order.seller_id.clone()),
        },
    )
    .await?;
    Ok(())
}

/// Opens a Stripe Checkout Session for a pending Stripe order (after the order committed —
/// never inside a transaction) and records its id and URL. Idempotent per order.
pub async fn start_stripe_checkout(app: &crate::app::App, order: &Order, access_token: &str) -> ApiResult<Order> {
    if order.provider != "stripe" || order.status != "pending" || order.checkout_url.is_some() {
        return Ok(order.clone());
    }
    let unavailable =
        |m: String| crate::error::provider_unavailable(format!("{m}. Nothing was charged; try again in a moment."));
    let client = crate::payments::stripe_client::StripeClient::from_config(&app.cfg.payments)
        .ok_or_else(|| unavailable("card payments are not configured".into()))?;
    let rows: Vec<(String, i64, i64, Option<String>, String)> = app
        .db
        .fetch_all(sql!(
            "SELECT i.title, i.quantity, i.total, p.billing_interval, p.slug FROM order_items i JOIN products p ON p.id = i.product_id
             WHERE i.order_id = $1 AND i.parent_item_id IS NULL ORDER BY i.id",
            &order.id
        ))
        .await?;
    // One line per order line at its final price, so Stripe charges exactly our total.
    let lines: Vec<crate::payments::stripe_client::Line> = rows
        .iter()
        .map(
            |(title, qty, total, interval, _)| crate::payments::stripe_client::Line {
                name: if *qty > 1 {
                    format!("{title} × {qty}")
                } else {
                    title.clone()
                },
                amount: *total,
                interval: interval.clone(),
            },
        )
        .collect();
    let base = app.cfg.public_url();
    let cancel = rows
        .first()
        .map_or_else(|| format!("{base}/"), |r| format!("{base}/p/{}", r.4));
    let params = crate::payments::stripe_client::checkout_params(
        &order.id,
        &order.currency,
        &order.email,
        &lines,
        &format!("{base}/orders/{}/success?token={access_token}", order.id),
        &cancel,
    );
    let session = client
        .post(
            "/v1/checkout/sessions",
            &params,
            &format!("satchel-checkout-{}", order.id),
        )
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let (Some(id), Some(url)) = (session["id"].as_str(), session["url"].as_str()) else {
        return Err(unavailable("Stripe answered without a session URL".into()));
    };
    app.db
        .execute(sql!(
            "UPDATE orders SET provider_session_id = $2, checkout_url = $3, updated_at = $4 WHERE id = $1",
            &order.id,
            id,
            url,
            now()
        ))
        .await?;
    find_order(&app.db, &order.id).await?.ok_or_else(|| not_found("order"))
}

/// Marks a pending order failed (test-mode "failed", a failed async payment).
pub async fn fail(tx: &Tx, order_id: &str) -> ApiResult<bool> {
    let n = tx
        .execute(sql!(
            "UPDATE orders SET status = 'failed', updated_at = $2 WHERE id = $1 AND status = 'pending'",
            order_id,
            now()
        ))
        .await?;
    Ok(n > 0)
}

/// Checks an order's access token (constant-time on the hashes).
pub fn check_access(order: &Order, token: &str) -> ApiResult<()> {
    use subtle::ConstantTimeEq;
    if bool::from(hash_secret(token).as_bytes().ct_eq(order.access_token_hash.as_bytes())) {
        Ok(())
    } else {
        Err(unauthorized(
            "this order's access token is missing or wrong; use the access_token from the purchase response",
        ))
    }
}

/// The purchase/order response shape of DESIGN §5.
pub async fn order_json(app: &crate::app::App, order: &Order, access_token: Option<&str>) -> ApiResult<Value> {
    let base = app.cfg.public_url();
    let items: Vec<(String, String, String, i64, i64)> = app
        .db
        .fetch_all(sql!(
            "SELECT id, product_id, title, unit_price, quantity FROM order_items WHERE order_id = $1 ORDER BY id",
            &order.id
        ))
        .await?;
    let paid = matches!(order.status.as_str(), "paid" | "partially_refunded");
    let mut out_items = Vec::new();
    for (item_id, product_id, title, unit_price, quantity) in items {
        let mut item = json!({
            "id": item_id, "product_id": product_id, "title": title, "unit_price": unit_price, "quantity": quantity,
        });
        if paid {
            if let Some(url) = crate::delivery::grant_url_for_item(app, &item_id).await? {
                item["download_url"] = json!(url);
            }
            let keys: Vec<(String,)> = app
                .db
                .fetch_all(sql!(
                    "SELECT license_key FROM license_keys WHERE order_item_id = $1 ORDER BY id",
                    &item_id
                ))
                .await?;
            if let Some((first,)) = keys.first() {
                item["license_key"] = json!(first);
                item["license_keys"] = json!(keys.iter().map(|k| &k.0).collect::<Vec<_>>());
            }
        }
        out_items.push(item);
    }
    let checkout_url = match (order.status.as_str(), order.provider.as_str()) {
        ("pending", "stripe") => order.checkout_url.clone(),
        ("pending", _) => access_token.map(|t| format!("{base}/checkout/test/{}?token={t}", order.id)),
        _ => None,
    };
    let mut v = json!({
        "order_id": order.id,
        "status": order.status,
        "email": order.email,
        "currency": order.currency,
        "total": order.total,
        "total_display": catalog::format_money(order.total, &order.currency),
        "checkout_url": checkout_url,
        "items": out_items,
        "created_at": order.created_at,
        "paid_at": order.paid_at,
    });
    let documents = crate::invoices::documents_of_order(&app.db, &order.id).await?;
    if let Some(inv) = documents.iter().find(|d| d.kind == "invoice") {
        v["invoice_url"] = json!(crate::invoices::url(app, &inv.id));
    }
    if !documents.is_empty() {
        v["invoices"] = json!(documents
            .iter()
            .map(|d| crate::invoices::to_json(app, d))
            .collect::<Vec<_>>());
    }
    if let Some(t) = access_token {
        v["access_token"] = json!(t);
    }
    Ok(v)
}
