//! Refunds: one transaction that takes access back.
//!
//! Full or partial, started by the seller (dashboard/API) or by the payment provider
//! (`charge.refunded`, a lost dispute). In one transaction: the refund row (deduplicated by
//! the provider's refund id, so a seller refund followed by Stripe's own `charge.refunded`
//! applies once in either order), the order's status and refunded total, download grants
//! and license keys revoked (all of them on a full refund; on a partial refund those of the
//! items named), affiliate commission reversed in proportion, a refund email, and an
//! `order.refunded` event. Every download and delivery URL re-checks the order and grant on
//! each request, so access stops at once.

use serde::Deserialize;
use serde_json::json;

use crate::checkout::{find_order, Order};
use crate::db::{Exec, Tx};
use crate::error::{conflict, not_found, unprocessable, ApiResult};
use crate::ids::{new_id, now};
use crate::sql;

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefundRequest {
    /// Minor units; default: everything not yet refunded.
    pub amount: Option<i64>,
    #[serde(default)]
    pub reason: String,
    /// Order item ids whose access ends with this (partial) refund; a full refund ends all.
    #[serde(default)]
    pub items: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundOutcome {
    Applied {
        refund_id: String,
        status: String,
        amount: i64,
    },
    /// This provider refund id was already applied (a duplicate or the other side of a race).
    AlreadyApplied,
}

/// Applies a refund. `provider_ref` is the provider's refund id (Stripe `re_…`) when known.
pub async fn apply(
    app: &crate::app::App,
    tx: &Tx,
    order_id: &str,
    req: &RefundRequest,
    source: &str,
    provider_ref: Option<&str>,
) -> ApiResult<RefundOutcome> {
    if let Some(r) = provider_ref {
        let seen = tx
            .fetch_i64(sql!("SELECT COUNT(*) FROM refunds WHERE provider_ref = $1", r))
            .await?;
        if seen > 0 {
            return Ok(RefundOutcome::AlreadyApplied);
        }
    }
    let order: Order = find_order(tx, order_id).await?.ok_or_else(|| not_found("order"))?;
    if !matches!(order.status.as_str(), "paid" | "partially_refunded" | "disputed") {
        return Err(conflict(
            "order_not_refundable",
            format!("an order that is {} cannot be refunded", order.status),
        ));
    }
    let refunded_so_far = tx
        .fetch_i64(sql!("SELECT refunded_total FROM orders WHERE id = $1", order_id))
        .await?;
    let remaining = order.total - refunded_so_far;
    let amount = req.amount.unwrap_or(remaining);
    if amount <= 0 {
        return Err(unprocessable("invalid_amount", "the refund amount must be positive").field("amount"));
    }
    if amount > remaining {
        return Err(unprocessable(
            "amount_exceeds_remaining",
            format!(
                "at most {} can still be refunded",
                crate::catalog::format_money(remaining, &order.currency)
            ),
        )
        .field("amount"));
    }
    for item in &req.items {
        let belongs = tx
            .fetch_i64(sql!(
                "SELECT COUNT(*) FROM order_items WHERE id = $1 AND order_id = $2",
                item,
                order_id
            ))
            .await?;
        if belongs == 0 {
            return Err(unprocessable("invalid_item", format!("{item} is not an item of this order")).field("items"));
        }
    }
    let t = now();
    let full = amount == remaining;
    let status = if full { "refunded" } else { "partially_refunded" };
    let refund_id = new_id("ref");
    // The conditional update guards against a concurrent refund overshooting the total.
    let n = tx
        .execute(sql!(
            "UPDATE orders SET refunded_total = refunded_total + $2, status = $3, updated_at = $4
             WHERE id = $1 AND refunded_total + $2 <= total",
            order_id,
            amount,
            status,
            t
        ))
        .await?;
    if n == 0 {
        return Err(conflict(
            "refund_conflict",
            "another refund changed this order; reload and try again",
        ));
    }
    tx.execute(sql!(
        "INSERT INTO refunds (id, order_id, provider_ref, amount, reason, source, status, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, 'succeeded', $7)",
        &refund_id,
        order_id,
        provider_ref,
        amount,
        &req.reason,
        source,
        t
    ))
    .await?;
    // Access: everything on a full refund, the named items (and their bundle members) otherwise.
    let mut items: Vec<String> = if full {
        tx.fetch_all::<(String,)>(sql!("SELECT id FROM order_items WHERE order_id = $1", order_id))
            .await?
            .into_iter()
            .map(|r| r.0)
            .collect()
    } else {
        req.items.clone()
    };
    let children: Vec<(String, String)> = tx
        .fetch_all(sql!(
            "SELECT id, parent_item_id FROM order_items WHERE order_id = $1 AND parent_item_id IS NOT NULL",
            order_id
        ))
        .await?;
    let members: Vec<String> = children
        .into_iter()
        .filter(|(_, parent)| items.contains(parent))
        .map(|(c, _)| c)
        .collect();
    items.extend(members);
    for item in &items {
        tx.execute(sql!("UPDATE order_items SET status = 'refunded' WHERE id = $1", item))
            .await?;
        tx.execute(sql!(
            "UPDATE download_grants SET status = 'revoked', updated_at = $2 WHERE order_item_id = $1",
            item,
            t
        ))
        .await?;
        tx.execute(sql!(
            "UPDATE license_keys SET status = 'revoked', updated_at = $2 WHERE order_item_id = $1 AND status <> 'revoked'",
            item,
            t
        ))
        .await?;
    }
    // Commission: reverse the refunded share of the commission (all of it on a full refund).
    let commissions: Vec<(String, i64, i64)> = tx
        .fetch_all(sql!(
            "SELECT id, amount, reversed_amount FROM commissions WHERE order_id = $1 AND status <> 'reversed'",
            order_id
        ))
        .await?;
    for (cid, c_amount, reversed) in commissions {
        let new_reversed = if full {
            c_amount
        } else {
            (reversed + c_amount * amount / order.total.max(1)).min(c_amount)
        };
        tx.execute(sql!(
            "UPDATE commissions SET reversed_amount = $2, status = CASE WHEN $2 >= amount THEN 'reversed' ELSE status END, updated_at = $3 WHERE id = $1",
            &cid,
            new_reversed,
            t
        ))
        .await?;
    }
    tx.execute(sql!(
        "INSERT INTO domain_events (id, seller_id, event_type, subject_id, payload, created_at) VALUES ($1, $2, 'order.refunded', $3, $4, $5)",
        new_id("evt"),
        &order.seller_id,
        order_id,
        json!({"refund_id": refund_id, "amount": amount, "currency": order.currency, "full": full, "source": source}).to_string(),
        t
    ))
    .await?;
    let note = crate::invoices::issue_credit_note(tx, &order, &refund_id, amount, &req.reason).await?;
    let note_url = crate::invoices::url(app, &note.id);
    queue_refund_email(
        tx,
        app.cfg.email.templates_dir.as_deref(),
        &order,
        amount,
        full,
        &note_url,
    )
    .await?;
    Ok(RefundOutcome::Applied {
        refund_id,
        status: status.to_string(),
        amount,
    })
}

async fn queue_refund_email(
    tx: &Tx,
    templates_dir: Option<&std::path::Path>,
    order: &Order,
    amount: i64,
    full: bool,
    credit_note_url: &str,
) -> ApiResult<()> {
    let brand = crate::mail::Brand::of_seller(tx, &order.seller_id).await?;
    let money = crate::catalog::format_money(amount, &order.currency);
    let ctx = json!({"amount": money, "order_id": order.id, "full": full, "credit_note_url": credit_note_url});
    let (text, html) = crate::mail::render(
        templates_dir,
        &brand,
        "refund",
        "Your refund is on its way",
        &format!("{money} refunded"),
        &ctx,
    )?;
    crate::mail::queue(
        tx,
        &crate::mail::Email {
            to: order.email.clone(),
            subject: format!("Refund of {money} from {}", brand.store_name),
            text,
            html,
            kind: "refund".into(),
            seller_id: Some(order.seller_id.clone()),
        },
    )
    .await?;
    Ok(())
}

/// A seller's refund: through Stripe's refund API for Stripe orders (recorded under Stripe's
/// refund id), recorded directly for test-mode and free orders. Validates before calling
/// Stripe, so a refused refund never reaches the provider.
pub async fn seller_refund(
    app: &crate::app::App,
    seller_id: &str,
    order_id: &str,
    req: &RefundRequest,
) -> ApiResult<RefundOutcome> {
    let order = find_order(&app.db, order_id)
        .await?
        .filter(|o| o.seller_id == seller_id)
        .ok_or_else(|| not_found("order"))?;
    // Dry run in a transaction that is rolled back: every check, no effect.
    {
        let tx = app.db.begin().await?;
        apply(app, &tx, order_id, req, "seller", None).await?;
    }
    let provider_ref = if order.provider == "stripe" {
        let client = crate::payments::stripe_client::StripeClient::from_config(&app.cfg.payments).ok_or_else(|| {
            crate::error::provider_unavailable(
                "Stripe is not configured on this store, so this card payment cannot be refunded here",
            )
        })?;
        let (pi,): (Option<String>,) = app
            .db
            .fetch_one(sql!("SELECT provider_payment_id FROM orders WHERE id = $1", order_id))
            .await?;
        let pi = pi.ok_or_else(|| conflict("no_payment", "this order has no recorded Stripe payment to refund"))?;
        let refunded_so_far = app
            .db
            .fetch_i64(sql!("SELECT refunded_total FROM orders WHERE id = $1", order_id))
            .await?;
        let amount = req.amount.unwrap_or(order.total - refunded_so_far);
        // One key per (order, amount already refunded, amount): a retried request is the same refund.
        let key = format!("satchel-refund-{order_id}-{refunded_so_far}-{amount}");
        let id = crate::payments::stripe_client::refund(&client, &pi, amount, order_id, &key)
            .await
            .map_err(|e| crate::error::provider_unavailable(format!("Stripe refused the refund: {e}")))?;
        Some(id)
    } else {
        None
    };
    let tx = app.db.begin().await?;
    let out = apply(app, &tx, order_id, req, "seller", provider_ref.as_deref()).await?;
    tx.commit().await?;
    app.jobs_enqueued();
    Ok(out)
}
