//! The affiliate portal: an affiliate signs in by emailed magic link (the library's
//! machinery, purpose `affiliate`) and sees their own programs — code, share links, clicks,
//! sales, pending / payable / paid earnings, a 30-day click → sale view and every sale —
//! and nothing about anyone else.
//!
//! Identity is the email the link was sent to: a session sees exactly the `affiliates` rows
//! with that email (one per store that signed the person up). Every query here is scoped by
//! that email, so another affiliate's program or sale is simply not found. Buyers' emails
//! and order ids never appear; a sale shows a short reference the seller can look up.

use serde_json::{json, Value};

use crate::app::App;
use crate::db::Exec;
use crate::error::{forbidden, not_found, unauthorized, ApiError, ApiResult};
use crate::ids::{hash_secret, now};
use crate::sql;

pub const DAYS_SHOWN: i64 = 30;

/// A signed-in affiliate (a session whose email has at least one affiliate program).
#[derive(Debug, Clone)]
pub struct AffiliateAuth {
    pub user_id: String,
    pub email: String,
    pub csrf_token: String,
}

impl AffiliateAuth {
    pub fn csrf_ok(&self, submitted: &str) -> bool {
        use subtle::ConstantTimeEq;
        !submitted.is_empty() && bool::from(self.csrf_token.as_bytes().ct_eq(submitted.as_bytes()))
    }
}

impl axum::extract::FromRequestParts<App> for AffiliateAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, app: &App) -> Result<Self, ApiError> {
        let token = crate::auth::cookie(&parts.headers, crate::auth::SESSION_COOKIE).ok_or_else(|| {
            unauthorized("sign in with the link we email you (POST /api/v1/affiliate/login or /affiliate/login)")
        })?;
        let row: Option<(String, String, String)> = app
            .db
            .fetch_optional(sql!(
                "SELECT u.id, u.email, s.csrf_token FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.token_hash = $1 AND s.expires_at > $2",
                hash_secret(&token),
                now()
            ))
            .await?;
        let (user_id, email, csrf_token) =
            row.ok_or_else(|| unauthorized("your session has ended; ask for a new sign-in link at /affiliate/login"))?;
        let n = app
            .db
            .fetch_i64(sql!("SELECT COUNT(*) FROM affiliates WHERE email = $1", &email))
            .await?;
        if n == 0 {
            return Err(forbidden(
                "not_an_affiliate",
                "this account is not an affiliate of any store here; ask the store for an affiliate invitation",
            ));
        }
        Ok(AffiliateAuth {
            user_id,
            email,
            csrf_token,
        })
    }
}

/// Emails a sign-in link if `email` is an affiliate here. Always answers the same way.
pub async fn request_link(app: &App, email: &str) -> ApiResult<()> {
    let email = crate::accounts::normalize_email(email)?;
    let row: Option<(String,)> = app
        .db
        .fetch_optional(sql!(
            "SELECT seller_id FROM affiliates WHERE email = $1 ORDER BY id LIMIT 1",
            &email
        ))
        .await?;
    let Some((seller_id,)) = row else { return Ok(()) };
    crate::library::send_magic_link(
        app,
        &email,
        &seller_id,
        "affiliate",
        &format!("{}/affiliate/auth", app.cfg.public_url()),
        "Sign in to your affiliate dashboard",
    )
    .await
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Program {
    pub id: String,
    pub seller_id: String,
    pub code: String,
    pub commission_bps: i64,
    pub product_id: Option<String>,
    pub clicks: i64,
    pub status: String,
    pub created_at: i64,
    pub store_name: String,
    pub product_title: Option<String>,
    pub product_slug: Option<String>,
}

/// The affiliate's programs (one per store), oldest first.
pub async fn programs(e: &impl Exec, email: &str) -> Result<Vec<Program>, crate::db::DbError> {
    e.fetch_all(sql!(
        "SELECT a.id, a.seller_id, a.code, a.commission_bps, a.product_id, a.clicks, a.status, a.created_at,
                s.store_name, p.title AS product_title, p.slug AS product_slug
         FROM affiliates a JOIN sellers s ON s.id = a.seller_id LEFT JOIN products p ON p.id = a.product_id
         WHERE a.email = $1 ORDER BY a.id",
        email
    ))
    .await
}

/// One day of the click → sale view.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Day {
    /// Midnight UTC, unix seconds.
    pub day: i64,
    pub clicks: i64,
    pub sales: i64,
    /// Commission earned on that day's sales (after reversals), minor units.
    pub earned: i64,
}

/// The last `DAYS_SHOWN` days, oldest first, every day present.
pub async fn daily(e: &impl Exec, affiliate_id: &str, at: i64) -> Result<Vec<Day>, crate::db::DbError> {
    let today = at - at.rem_euclid(86_400);
    let start = today - (DAYS_SHOWN - 1) * 86_400;
    let mut days: Vec<Day> = (0..DAYS_SHOWN)
        .map(|i| Day {
            day: start + i * 86_400,
            clicks: 0,
            sales: 0,
            earned: 0,
        })
        .collect();
    let slot = |t: i64| usize::try_from((t - start).div_euclid(86_400)).ok();
    let clicks: Vec<(i64, i64)> = e
        .fetch_all(sql!(
            "SELECT day, clicks FROM affiliate_click_days WHERE affiliate_id = $1 AND day >= $2",
            affiliate_id,
            start
        ))
        .await?;
    for (day, n) in clicks {
        if let Some(d) = slot(day).and_then(|i| days.get_mut(i)) {
            d.clicks += n;
        }
    }
    let sales: Vec<(i64, i64, i64, String)> = e
        .fetch_all(sql!(
            "SELECT created_at, amount, reversed_amount, status FROM commissions WHERE affiliate_id = $1 AND created_at >= $2",
            affiliate_id,
            start
        ))
        .await?;
    for (t, amount, reversed, status) in sales {
        if let Some(d) = slot(t).and_then(|i| days.get_mut(i)) {
            if status != "reversed" {
                d.sales += 1;
            }
            d.earned += amount - reversed;
        }
    }
    Ok(days)
}

/// The currency the affiliate is paid in: their newest commission's, else the store's.
async fn currency(e: &impl Exec, p: &Program) -> Result<String, crate::db::DbError> {
    let row: Option<(String,)> = e
        .fetch_optional(sql!(
            "SELECT currency FROM commissions WHERE affiliate_id = $1 ORDER BY id DESC LIMIT 1",
            &p.id
        ))
        .await?;
    if let Some((c,)) = row {
        return Ok(c);
    }
    let row: Option<(String,)> = e
        .fetch_optional(sql!(
            "SELECT currency FROM products WHERE seller_id = $1 AND status = 'published' ORDER BY id LIMIT 1",
            &p.seller_id
        ))
        .await?;
    Ok(row.map_or_else(|| "USD".to_string(), |r| r.0))
}

/// Everything about one program, for `GET /api/v1/affiliate/me` and the portal page.
pub async fn program_json(app: &App, p: &Program, at: i64) -> ApiResult<Value> {
    let e = crate::affiliates::earnings(&app.db, &p.id).await?;
    let currency = currency(&app.db, p).await?;
    let base = app.cfg.public_url();
    let mut product_links: Vec<Value> = Vec::new();
    if let (Some(slug), Some(title)) = (&p.product_slug, &p.product_title) {
        product_links.push(json!({"title": title, "url": format!("{base}/p/{slug}?ref={}", p.code)}));
    } else {
        let rows: Vec<(String, String)> = app
            .db
            .fetch_all(sql!(
                "SELECT slug, title FROM products WHERE seller_id = $1 AND status = 'published' ORDER BY featured DESC, id DESC LIMIT 6",
                &p.seller_id
            ))
            .await?;
        for (slug, title) in rows {
            product_links.push(json!({"title": title, "url": format!("{base}/p/{slug}?ref={}", p.code)}));
        }
    }
    #[allow(clippy::cast_precision_loss)]
    let conversion = if e.clicks > 0 {
        Some((e.sales as f64 / e.clicks as f64 * 1000.0).round() / 1000.0)
    } else {
        None
    };
    #[allow(clippy::cast_precision_loss)]
    let percent = p.commission_bps as f64 / 100.0;
    Ok(json!({
        "id": p.id, "code": p.code, "status": p.status, "store_name": p.store_name,
        "commission_percent": percent,
        "scope": match (&p.product_id, &p.product_title) {
            (Some(id), title) => json!({"product_id": id, "title": title}),
            (None, _) => json!("store"),
        },
        "share_url": format!("{base}/r/{}", p.code),
        "product_links": product_links,
        "clicks": e.clicks, "sales": e.sales, "conversion": conversion,
        "currency": currency,
        "earnings": {"pending": e.pending, "payable": e.payable, "paid": e.paid},
        "daily": daily(&app.db, &p.id, at).await?,
        "member_since": p.created_at,
    }))
}

/// `GET /api/v1/affiliate/me`: `{email, items: [program], next_cursor}`.
pub async fn me(app: &App, email: &str) -> ApiResult<Value> {
    let at = now();
    let mut items = Vec::new();
    for p in programs(&app.db, email).await? {
        items.push(program_json(app, &p, at).await?);
    }
    Ok(json!({"email": email, "items": items, "next_cursor": null}))
}

#[derive(sqlx::FromRow)]
struct SaleRow {
    id: String,
    order_id: String,
    amount: i64,
    reversed_amount: i64,
    currency: String,
    status: String,
    payable_at: i64,
    created_at: i64,
    updated_at: i64,
    order_total: i64,
    refunded_total: i64,
}

/// A page of one program's sales, newest first. The program must be the caller's (else 404).
pub async fn sales(
    e: &impl Exec,
    email: &str,
    affiliate_id: &str,
    cursor: Option<&str>,
    limit: i64,
) -> ApiResult<(Vec<Value>, Option<String>)> {
    let scope: Option<(Option<String>,)> = e
        .fetch_optional(sql!(
            "SELECT product_id FROM affiliates WHERE id = $1 AND email = $2",
            affiliate_id,
            email
        ))
        .await?;
    let (scope,) = scope.ok_or_else(|| not_found("affiliate program"))?;
    let limit = limit.clamp(1, 100);
    let rows: Vec<SaleRow> = e
        .fetch_all(sql!(
            "SELECT c.id, c.order_id, c.amount, c.reversed_amount, c.currency, c.status, c.payable_at, c.created_at, c.updated_at,
                    o.total AS order_total, o.refunded_total
             FROM commissions c JOIN orders o ON o.id = c.order_id
             WHERE c.affiliate_id = $1 AND ($2 IS NULL OR c.id < $2) ORDER BY c.id DESC LIMIT $3",
            affiliate_id,
            cursor.map(str::to_string),
            limit + 1
        ))
        .await?;
    let more = i64::try_from(rows.len()).unwrap_or(i64::MAX) > limit;
    let mut items = Vec::new();
    let mut last = None;
    for r in rows.into_iter().take(usize::try_from(limit).unwrap_or(0)) {
        let lines: Vec<(String, String, i64)> = e
            .fetch_all(sql!(
                "SELECT product_id, title, total FROM order_items WHERE order_id = $1 AND parent_item_id IS NULL ORDER BY id",
                &r.order_id
            ))
            .await?;
        let lines: Vec<&(String, String, i64)> = lines
            .iter()
            .filter(|(pid, _, _)| scope.as_ref().is_none_or(|s| s == pid))
            .collect();
        let sale = if scope.is_some() {
            lines.iter().map(|l| l.2).sum()
        } else {
            r.order_total
        };
        let reference: String = r
            .order_id
            .chars()
            .rev()
            .take(6)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        items.push(json!({
            "id": r.id,
            "reference": reference,
            "at": r.created_at,
            "products": lines.iter().map(|l| l.1.clone()).collect::<Vec<_>>(),
            "sale_amount": sale,
            "refunded": r.refunded_total > 0,
            "commission": r.amount,
            "reversed": r.reversed_amount,
            "net_commission": r.amount - r.reversed_amount,
            "currency": r.currency,
            "status": r.status,
            "payable_at": r.payable_at,
            "updated_at": r.updated_at,
        }));
        last = Some(r.id);
    }
    Ok((items, if more { last } else { None }))
}
