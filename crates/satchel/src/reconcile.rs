//! The reconciliation check: invariants that must hold for every order whatever sequence of
//! purchases, payments, refunds and disputes arrived, however often and in whatever order.
//!
//! - paid ⇒ every downloadable item has exactly one grant and it is not revoked;
//! - fully refunded ⇒ no active grant and no active license;
//! - partially refunded ⇒ no active grant or license on a refunded item;
//! - never paid (pending, failed, expired) ⇒ no grants, licenses, payments or commissions;
//! - refunds add up to the order's refunded total, which never exceeds what was paid;
//! - a commission equals rate × net at payment, its reversals never exceed it, and a fully
//!   refunded order's commission is fully reversed.

use crate::db::Exec;
use crate::sql;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Violation {
    pub order_id: String,
    pub rule: &'static str,
    pub detail: String,
}

#[derive(sqlx::FromRow)]
struct OrderRow {
    id: String,
    status: String,
    total: i64,
    refunded_total: i64,
}

pub async fn check(e: &impl Exec) -> anyhow::Result<Vec<Violation>> {
    let mut out = Vec::new();
    let orders: Vec<OrderRow> = e
        .fetch_all(sql!("SELECT id, status, total, refunded_total FROM orders ORDER BY id"))
        .await?;
    for o in orders {
        let mut v = |rule: &'static str, detail: String| {
            out.push(Violation {
                order_id: o.id.clone(),
                rule,
                detail,
            })
        };
        let grants: Vec<(String, String, String)> = e
            .fetch_all(sql!(
                "SELECT id, order_item_id, status FROM download_grants WHERE order_id = $1",
                &o.id
            ))
            .await?;
        let licenses: Vec<(String, String, String)> = e
            .fetch_all(sql!(
                "SELECT id, order_item_id, status FROM license_keys WHERE order_id = $1",
                &o.id
            ))
            .await?;
        let refunds = e
            .fetch_i64(sql!(
                "SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) FROM refunds WHERE order_id = $1",
                &o.id
            ))
            .await?;
        let payments = e
            .fetch_i64(sql!("SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) FROM payments WHERE order_id = $1 AND status = 'succeeded'", &o.id))
            .await?;
        let paid_ever = matches!(
            o.status.as_str(),
            "paid" | "partially_refunded" | "refunded" | "disputed"
        );
        if refunds != o.refunded_total {
            v(
                "refunds_sum",
                format!("refund rows add to {refunds}, order says {}", o.refunded_total),
            );
        }
        if o.refunded_total > o.total || (paid_ever && o.refunded_total > payments) {
            v(
                "refund_exceeds_payment",
                format!("refunded {} of {} paid", o.refunded_total, payments),
            );
        }
        if !paid_ever {
            if !grants.is_empty() || !licenses.is_empty() || payments != 0 {
                v(
                    "unpaid_has_access",
                    format!("{} grants, {} licenses, {payments} paid", grants.len(), licenses.len()),
                );
            }
        } else if o.total > 0 && payments != o.total {
            v("payment_mismatch", format!("payments {payments} vs total {}", o.total));
        }
        if o.status == "paid" {
            let downloadable: Vec<(String,)> = e
                .fetch_all(sql!(
                    "SELECT i.id FROM order_items i JOIN products p ON p.id = i.product_id WHERE i.order_id = $1 AND p.kind <> 'bundle'
                       AND EXISTS (SELECT 1 FROM files f WHERE f.product_id = p.id)",
                    &o.id
                ))
                .await?;
            for (item,) in downloadable {
                let mine: Vec<_> = grants.iter().filter(|g| g.1 == item).collect();
                if mine.len() != 1 {
                    v("grant_count", format!("item {item} has {} grants", mine.len()));
                } else if mine[0].2 == "revoked" {
                    v(
                        "paid_but_revoked",
                        format!("grant {} revoked on a paid order", mine[0].0),
                    );
                }
            }
        }
        if o.status == "refunded" {
            for g in grants.iter().filter(|g| g.2 == "active") {
                v("refunded_but_live", format!("grant {} still active", g.0));
            }
            for l in licenses.iter().filter(|l| l.2 == "active") {
                v("refunded_but_live", format!("license {} still active", l.0));
            }
        }
        if o.status == "partially_refunded" {
            let refunded_items: Vec<(String,)> = e
                .fetch_all(sql!(
                    "SELECT id FROM order_items WHERE order_id = $1 AND status = 'refunded'",
                    &o.id
                ))
                .await?;
            for (item,) in refunded_items {
                if grants
                    .iter()
                    .chain(licenses.iter())
                    .any(|g| g.1 == item && g.2 == "active")
                {
                    v("refunded_item_live", format!("item {item} still has live access"));
                }
            }
        }
        let commissions: Vec<(String, i64, i64, String, i64, Option<String>)> = e
            .fetch_all(sql!(
                "SELECT c.id, c.amount, c.reversed_amount, c.status, a.commission_bps, a.product_id
                 FROM commissions c JOIN affiliates a ON a.id = c.affiliate_id WHERE c.order_id = $1",
                &o.id
            ))
            .await?;
        if !paid_ever && !commissions.is_empty() {
            v("unpaid_has_commission", format!("{} commissions", commissions.len()));
        }
        for (cid, amount, reversed, status, bps, scope) in commissions {
            let net = match &scope {
                Some(pid) => e
                    .fetch_i64(sql!(
                        "SELECT CAST(COALESCE(SUM(total), 0) AS BIGINT) FROM order_items WHERE order_id = $1 AND product_id = $2 AND parent_item_id IS NULL",
                        &o.id,
                        pid
                    ))
                    .await?,
                None => o.total,
            };
            if amount != crate::affiliates::commission(net, bps) {
                v("commission_rate", format!("{cid}: {amount} ≠ {bps} bps × {net}"));
            }
            if reversed > amount || reversed < 0 {
                v("commission_reversal", format!("{cid}: reversed {reversed} of {amount}"));
            }
            if o.status == "refunded" && (reversed != amount || status != "reversed") {
                v(
                    "commission_not_reversed",
                    format!("{cid}: {status}, reversed {reversed} of {amount}"),
                );
            }
        }
    }
    Ok(out)
}
