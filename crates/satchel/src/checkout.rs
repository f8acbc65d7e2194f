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
}

const ORDER_COLS: &str = "id, seller_id, email, status, currency, subtotal, discount_total, total, access_token_hash, provider, created_at, paid_at";

pub async fn find_order(e: &impl Exec, id: &str) -> Result<Option<Order>, crate::db::DbError> {
    e.fetch_optional(sql!(format!("SELECT {ORDER_COLS} FROM orders WHERE id = $1"), id))
        .await
}

/// Creates a pending order for one product. Returns the order and its access token
/// (shown once; the database keeps its hash). Free products are fulfilled at once.
pub async fn purchase(
    app: &crate::app::App,
    tx: &Tx,
    id_or_slug: &str,
    req: &PurchaseRequest,
) -> ApiResult<(Order, String)> {
    let email = crate::accounts::normalize_email(&req.email)?;
    let product: Product = catalog::find_product(tx, id_or_slug)
        .await?
        .filter(|p| p.status == "published")
        .ok_or_else(|| not_found("product"))?;
    if !(1..=100).contains(&req.quantity) {
        return Err(unprocessable("invalid_quantity", "quantity must be between 1 and 100").field("quantity"));
    }
    let unit = match (product.pwyw_min, req.amount) {
        (Some(min), Some(a)) if a >= min => a,
        (Some(min), Some(_)) => {
            return Err(unprocessable(
                "amount_below_minimum",
                format!("pay at least {}", catalog::format_money(min, &product.currency)),
            )
            .field("amount"))
        }
        (Some(_), None) => product.price,
        (None, Some(a)) if a != product.price => {
            return Err(
                unprocessable("amount_not_allowed", "this product has a fixed price; omit amount").field("amount"),
            )
        }
        (None, _) => product.price,
    };
    let total = unit
        .checked_mul(req.quantity)
        .ok_or_else(|| unprocessable("invalid_quantity", "total too large"))?;
    let token = random_token(24);
    let order_id = new_id("ord");
    let t = now();
    let free = total == 0;
    if !free && !app.cfg.payments.test_mode_enabled() {
        return Err(unprocessable(
            "payments_unavailable",
            "card payments are not configured on this store yet; ask the seller to set up Stripe",
        ));
    }
    tx.execute(sql!(
        "INSERT INTO orders (id, seller_id, email, status, currency, subtotal, total, access_token_hash, provider, mode, created_at, updated_at)
         VALUES ($1, $2, $3, 'pending', $4, $5, $5, $6, $7, $8, $9, $9)",
        &order_id,
        &product.seller_id,
        &email,
        &product.currency,
        total,
        hash_secret(&token),
        if free { "free" } else { "test" },
        if product.kind == "subscription" { "subscription" } else { "payment" },
        t
    ))
    .await?;
    add_item(tx, &order_id, &product, unit, req.quantity, None).await?;
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
    parent: Option<&str>,
) -> ApiResult<String> {
    let item_id = new_id("itm");
    tx.execute(sql!(
        "INSERT INTO order_items (id, order_id, product_id, parent_item_id, title, unit_price, quantity, total)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &item_id,
        order_id,
        &p.id,
        parent,
        &p.title,
        unit,
        qty,
        unit * qty
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
            Box::pin(add_item(tx, order_id, &m, 0, qty, Some(&item_id))).await?;
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
    let t = now();
    let flipped = tx
        .execute(sql!(
            "UPDATE orders SET status = 'paid', paid_at = $2, updated_at = $2, provider_payment_id = COALESCE(provider_payment_id, $3)
             WHERE id = $1 AND status = 'pending'",
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
    queue_receipt(app, tx, &order).await?;
    Ok(true)
}

/// The receipt: what was bought, the download buttons, and where to find it all again.
async fn queue_receipt(app: &crate::app::App, tx: &Tx, order: &Order) -> ApiResult<()> {
    use crate::mail::{button, escape};
    let brand = crate::mail::Brand::of_seller(tx, &order.seller_id).await?;
    let base = app.cfg.public_url();
    let items: Vec<(String, String, i64, i64)> = tx
        .fetch_all(sql!(
            "SELECT id, title, unit_price, quantity FROM order_items WHERE order_id = $1 AND parent_item_id IS NULL ORDER BY id",
            &order.id
        ))
        .await?;
    let grants: Vec<(String, String, i64, i64)> = tx
        .fetch_all(sql!(
            "SELECT g.order_item_id, g.id, g.expires_at, g.max_downloads FROM download_grants g WHERE g.order_id = $1 ORDER BY g.id",
            &order.id
        ))
        .await?;
    let titles: Vec<(String, String)> = tx
        .fetch_all(sql!("SELECT id, title FROM order_items WHERE order_id = $1", &order.id))
        .await?;
    let title_of = |id: &str| {
        titles
            .iter()
            .find(|(i, _)| i == id)
            .map(|(_, t)| t.clone())
            .unwrap_or_default()
    };
    let mut html = String::from("<p>Thank you for your purchase! Everything you bought is ready below.</p>");
    let mut text = format!("Thank you for your purchase from {}!\n\n", brand.store_name);
    html.push_str("<table role=\"presentation\" width=\"100%\" style=\"border-collapse:collapse;margin:8px 0 16px;\">");
    for (_, title, unit, qty) in &items {
        let line = catalog::format_money(unit * qty, &order.currency);
        let q = if *qty > 1 { format!(" × {qty}") } else { String::new() };
        html.push_str(&format!(
            "<tr><td style=\"padding:6px 0;border-bottom:1px solid #e5e7eb;\">{}{q}</td><td align=\"right\" style=\"padding:6px 0;border-bottom:1px solid #e5e7eb;\">{line}</td></tr>",
            escape(title)
        ));
        text.push_str(&format!("  {title}{q}  {line}\n"));
    }
    let total = catalog::format_money(order.total, &order.currency);
    html.push_str(&format!("<tr><td style=\"padding:8px 0;font-weight:700;\">Total</td><td align=\"right\" style=\"padding:8px 0;font-weight:700;\">{total}</td></tr></table>"));
    text.push_str(&format!("  Total  {total}\n\n"));
    for (item_id, grant_id, exp, max) in &grants {
        let token = crate::delivery::sign(&app.keys, "d1", &[grant_id, &exp.to_string()]);
        let url = format!("{base}/api/v1/downloads/{token}");
        let t = title_of(item_id);
        html.push_str(&button(&url, &format!("Download {t}")));
        text.push_str(&format!("Download {t}: {url}\n"));
        html.push_str(&format!(
            "<p style=\"color:#6b7280;font-size:13px;margin-top:-12px;\">{max} downloads, link valid for 30 days.</p>"
        ));
        let _ = exp;
    }
    text.push_str(&format!("\nOrder {}\n", order.id));
    html.push_str(&format!(
        "<p style=\"color:#6b7280;font-size:13px;\">Order <code>{}</code></p>",
        escape(&order.id)
    ));
    let subject = format!(
        "Your {} order: {}",
        brand.store_name,
        items.first().map(|i| i.1.as_str()).unwrap_or("receipt")
    );
    let html = crate::mail::render_html(&brand, "Your purchase is ready", "Your downloads and receipt", &html)?;
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
        }
        out_items.push(item);
    }
    let checkout_url = (order.status == "pending")
        .then(|| access_token.map(|t| format!("{base}/checkout/test/{}?token={t}", order.id)))
        .flatten();
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
    if let Some(t) = access_token {
        v["access_token"] = json!(t);
    }
    Ok(v)
}
