//! Affiliates: referral codes, attribution, and a commission ledger that stays right.
//!
//! A visit with `?ref=CODE` (or `/r/CODE`) counts a click and sets the `satchel_ref` cookie
//! for 30 days; the newest click wins. Checkout resolves the code (same store, active, in
//! scope, not the buyer's own) and fixes the affiliate on the order. Fulfillment writes a
//! **pending** commission — rate × net (after discounts, before tax; for a product-scoped
//! affiliate only that product's lines) — in the same transaction as the payment. A
//! scheduled job moves it to **payable** after the refund window; refunds reverse it in
//! proportion (see `refunds`); the seller exports payable commissions as CSV and marks them
//! **paid**. Amounts are integer minor units: rate in basis points, rounded down.

use serde::Deserialize;

use crate::db::{Exec, Tx};
use crate::error::{conflict, unprocessable, ApiResult};
use crate::ids::{new_id, now};
use crate::sql;

pub const REF_COOKIE: &str = "satchel_ref";
pub const REF_COOKIE_DAYS: i64 = 30;

#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct Affiliate {
    pub id: String,
    pub seller_id: String,
    pub email: String,
    pub code: String,
    pub commission_bps: i64,
    pub product_id: Option<String>,
    pub clicks: i64,
    pub status: String,
}

const AFF_COLS: &str = "id, seller_id, email, code, commission_bps, product_id, clicks, status";

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAffiliate {
    pub email: String,
    /// Letters, digits, '-' and '_'; default: derived from the email.
    pub code: Option<String>,
    /// Percent of the net sale, 0–100 (default 30).
    pub commission_percent: Option<f64>,
    /// Limit the affiliate to one product (default: store-wide).
    pub product_id: Option<String>,
}

pub fn normalize_code(code: &str) -> Option<String> {
    let c = code.trim().to_ascii_uppercase();
    (!c.is_empty() && c.len() <= 40 && c.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_'))
        .then_some(c)
}

pub async fn create(e: &impl Exec, seller_id: &str, a: &NewAffiliate) -> ApiResult<Affiliate> {
    let email = crate::accounts::normalize_email(&a.email)?;
    let code = match &a.code {
        Some(c) => normalize_code(c).ok_or_else(|| {
            unprocessable("invalid_code", "code must be 1–40 letters, digits, '-' or '_'").field("code")
        })?,
        None => {
            let local: String = email
                .split('@')
                .next()
                .unwrap_or("aff")
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .take(12)
                .collect();
            format!(
                "{}{}",
                local.to_ascii_uppercase(),
                &crate::ids::random_token(3)
                    .to_ascii_uppercase()
                    .replace(['-', '_'], "X")
            )
        }
    };
    let pct = a.commission_percent.unwrap_or(30.0);
    if !(0.0..=100.0).contains(&pct) || pct.is_nan() {
        return Err(
            unprocessable("invalid_commission", "commission_percent must be between 0 and 100")
                .field("commission_percent"),
        );
    }
    #[allow(clippy::cast_possible_truncation)]
    let bps = (pct * 100.0).round() as i64;
    if let Some(pid) = &a.product_id {
        if crate::catalog::find_product(e, pid)
            .await?
            .filter(|p| p.seller_id == seller_id)
            .is_none()
        {
            return Err(
                unprocessable("invalid_product", "product_id must be one of your products").field("product_id"),
            );
        }
    }
    let id = new_id("aff");
    let r = e
        .execute(sql!(
            "INSERT INTO affiliates (id, seller_id, email, code, commission_bps, product_id, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &id,
            seller_id,
            &email,
            &code,
            bps,
            a.product_id.clone(),
            now()
        ))
        .await;
    match r {
        Ok(_) => {}
        Err(err) if crate::db::is_unique_violation(&err) => {
            return Err(conflict("code_taken", format!("the affiliate code {code} is taken")).field("code"))
        }
        Err(err) => return Err(err.into()),
    }
    Ok(
        e.fetch_one(sql!(format!("SELECT {AFF_COLS} FROM affiliates WHERE id = $1"), &id))
            .await?,
    )
}

pub async fn find_by_code(e: &impl Exec, code: &str) -> Result<Option<Affiliate>, crate::db::DbError> {
    let Some(code) = normalize_code(code) else {
        return Ok(None);
    };
    e.fetch_optional(sql!(
        format!("SELECT {AFF_COLS} FROM affiliates WHERE code = $1 AND status = 'active'"),
        code
    ))
    .await
}

/// Counts a click; returns whether the code exists (unknown codes are ignored, not errors).
pub async fn record_click(e: &impl Exec, code: &str) -> Result<bool, crate::db::DbError> {
    let Some(code) = normalize_code(code) else {
        return Ok(false);
    };
    let row: Option<(String,)> = e
        .fetch_optional(sql!(
            "UPDATE affiliates SET clicks = clicks + 1 WHERE code = $1 AND status = 'active' RETURNING id",
            code
        ))
        .await?;
    let Some((id,)) = row else { return Ok(false) };
    // Per-day counts for the affiliate portal's click → sale view.
    let t = now();
    e.execute(sql!(
        "INSERT INTO affiliate_click_days (affiliate_id, day, clicks) VALUES ($1, $2, 1)
         ON CONFLICT (affiliate_id, day) DO UPDATE SET clicks = affiliate_click_days.clicks + 1",
        &id,
        t - t.rem_euclid(86_400)
    ))
    .await?;
    Ok(true)
}

/// The affiliate to credit for an order, or `None` (unknown code, other store, out of
/// scope, or the buyer referring themselves — the purchase goes ahead either way).
pub async fn resolve(
    e: &impl Exec,
    code: Option<&str>,
    seller_id: &str,
    buyer_email: &str,
    product_ids: &[String],
) -> Result<Option<Affiliate>, crate::db::DbError> {
    let Some(code) = code else { return Ok(None) };
    let Some(a) = find_by_code(e, code).await? else {
        return Ok(None);
    };
    let in_scope = a.product_id.as_ref().is_none_or(|p| product_ids.contains(p));
    Ok((a.seller_id == seller_id && a.email != buyer_email && in_scope).then_some(a))
}

/// Writes the pending commission for a just-paid order (inside the fulfillment transaction).
pub async fn on_paid(tx: &Tx, order_id: &str, refund_window_days: i64) -> ApiResult<()> {
    let row: Option<(String, i64, Option<String>, String)> = tx
        .fetch_optional(sql!(
            "SELECT a.id, a.commission_bps, a.product_id, o.currency FROM orders o JOIN affiliates a ON a.id = o.affiliate_id WHERE o.id = $1",
            order_id
        ))
        .await?;
    let Some((aff_id, bps, scope, currency)) = row else {
        return Ok(());
    };
    let net = match &scope {
        Some(pid) => tx
            .fetch_i64(sql!(
                "SELECT CAST(COALESCE(SUM(total), 0) AS BIGINT) FROM order_items WHERE order_id = $1 AND product_id = $2 AND parent_item_id IS NULL",
                order_id,
                pid
            ))
            .await?,
        None => tx.fetch_i64(sql!("SELECT total FROM orders WHERE id = $1", order_id)).await?,
    };
    let amount = commission(net, bps);
    let t = now();
    tx.execute(sql!(
        "INSERT INTO commissions (id, affiliate_id, order_id, amount, currency, status, payable_at, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7, $7) ON CONFLICT DO NOTHING",
        new_id("com"),
        &aff_id,
        order_id,
        amount,
        &currency,
        t + refund_window_days * 86_400,
        t
    ))
    .await?;
    Ok(())
}

/// Rate × net in minor units, rounded down.
pub fn commission(net: i64, bps: i64) -> i64 {
    net.max(0) * bps / 10_000
}

/// Pending commissions past their refund window become payable. Returns how many moved.
pub async fn release_payable(e: &impl Exec) -> Result<u64, crate::db::DbError> {
    e.execute(sql!(
        "UPDATE commissions SET status = 'payable', updated_at = $1 WHERE status = 'pending' AND payable_at <= $1 AND reversed_amount < amount",
        now()
    ))
    .await
}

/// CSV of a seller's payable commissions: one line per affiliate with the amount owed.
pub async fn payable_csv(e: &impl Exec, seller_id: &str) -> Result<String, crate::db::DbError> {
    let rows: Vec<(String, String, String, i64, i64)> = e
        .fetch_all(sql!(
            "SELECT a.email, a.code, c.currency, CAST(SUM(c.amount - c.reversed_amount) AS BIGINT), COUNT(*)
             FROM commissions c JOIN affiliates a ON a.id = c.affiliate_id
             WHERE a.seller_id = $1 AND c.status = 'payable'
             GROUP BY a.email, a.code, c.currency ORDER BY a.email",
            seller_id
        ))
        .await?;
    let mut out = String::from("affiliate_email,code,currency,amount_minor,amount,commissions\n");
    for (email, code, currency, amount, n) in rows {
        let display = crate::catalog::format_money(amount, &currency);
        out.push_str(&format!(
            "{},{code},{currency},{amount},\"{display}\",{n}\n",
            csv_field(&email)
        ));
    }
    Ok(out)
}

fn csv_field(s: &str) -> String {
    // Neutralize spreadsheet formulas and quote.
    let s = if s.starts_with(['=', '+', '-', '@']) {
        format!("'{s}")
    } else {
        s.to_string()
    };
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Marks every payable commission of the seller paid; returns how many.
pub async fn mark_paid(e: &impl Exec, seller_id: &str) -> Result<u64, crate::db::DbError> {
    e.execute(sql!(
        "UPDATE commissions SET status = 'paid', updated_at = $2
         WHERE status = 'payable' AND affiliate_id IN (SELECT id FROM affiliates WHERE seller_id = $1)",
        seller_id,
        now()
    ))
    .await
}

#[derive(Debug, serde::Serialize)]
pub struct Earnings {
    pub clicks: i64,
    pub sales: i64,
    pub pending: i64,
    pub payable: i64,
    pub paid: i64,
}

/// What an affiliate sees about themselves (and nothing about anyone else).
pub async fn earnings(e: &impl Exec, affiliate_id: &str) -> Result<Earnings, crate::db::DbError> {
    let clicks = e
        .fetch_i64(sql!("SELECT clicks FROM affiliates WHERE id = $1", affiliate_id))
        .await?;
    let sum = |status: &'static str| {
        sql!(
            "SELECT CAST(COALESCE(SUM(amount - reversed_amount), 0) AS BIGINT) FROM commissions WHERE affiliate_id = $1 AND status = $2",
            affiliate_id,
            status
        )
    };
    Ok(Earnings {
        clicks,
        sales: e
            .fetch_i64(sql!(
                "SELECT COUNT(*) FROM commissions WHERE affiliate_id = $1 AND status <> 'reversed'",
                affiliate_id
            ))
            .await?,
        pending: e.fetch_i64(sum("pending")).await?,
        payable: e.fetch_i64(sum("payable")).await?,
        paid: e.fetch_i64(sum("paid")).await?,
    })
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ReleaseCommissions;

impl crate::jobs::Job for ReleaseCommissions {
    const KIND: &'static str = "affiliates.release_payable";
}

pub async fn run_release(app: crate::app::App, _: ReleaseCommissions) -> anyhow::Result<()> {
    let n = release_payable(&app.db).await?;
    if n > 0 {
        tracing::info!(released = n, "commissions became payable");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn commission_rounds_down_in_minor_units() {
        assert_eq!(super::commission(4900, 3000), 1470);
        assert_eq!(super::commission(999, 3333), 332);
        assert_eq!(super::commission(-5, 3000), 0);
    }

    #[test]
    fn csv_neutralizes_formulas() {
        assert_eq!(super::csv_field("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
    }
}
