//! The subscription lifecycle: paid → renewed → past due → canceled → expired.
//!
//! Access (download grants and license keys of the subscription's order) lasts until the
//! paid-through date plus the grace period. Provider events may arrive in any order and more
//! than once, so:
//! - renewals (`invoice.paid`) only ever move the paid-through date forward (`max`);
//! - status changes carry the event's creation time and apply only when newer than the last
//!   one applied (`last_event_at`), so an old `updated` cannot resurrect a deleted subscription.
//!
//! In test mode the same functions are driven by `satchel admin` / tests instead of Stripe.

use crate::db::{Exec, Tx};
use crate::error::ApiResult;
use crate::ids::{new_id, now};
use crate::sql;

pub fn interval_secs(interval: &str) -> i64 {
    match interval {
        "day" => 86_400,
        "week" => 7 * 86_400,
        "year" => 365 * 86_400,
        _ => 30 * 86_400,
    }
}

#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct Subscription {
    pub id: String,
    pub order_id: String,
    pub provider_subscription_id: Option<String>,
    pub status: String,
    pub current_period_end: Option<i64>,
    pub cancel_at_period_end: bool,
    pub grace_days: i64,
}

const SUB_COLS: &str =
    "id, order_id, provider_subscription_id, status, current_period_end, cancel_at_period_end, grace_days";

/// Starts the subscription of a just-paid order (called from fulfillment).
pub async fn start(tx: &Tx, order_id: &str, provider_subscription_id: Option<&str>) -> ApiResult<()> {
    let items: Vec<(String, Option<String>, String)> = tx
        .fetch_all(sql!(
            "SELECT p.id, p.billing_interval, p.license_policy FROM order_items i JOIN products p ON p.id = i.product_id
             WHERE i.order_id = $1 AND p.kind = 'subscription'",
            order_id
        ))
        .await?;
    let t = now();
    for (product_id, interval, policy) in items {
        let grace = serde_json::from_str::<serde_json::Value>(&policy)
            .ok()
            .and_then(|v| v["grace_days"].as_i64())
            .unwrap_or(7);
        let period_end = t + interval_secs(interval.as_deref().unwrap_or("month"));
        let sub_ref = provider_subscription_id.map_or_else(|| format!("test_sub_{order_id}"), str::to_string);
        tx.execute(sql!(
            "INSERT INTO subscriptions (id, order_id, provider_subscription_id, status, current_period_end, grace_days, updated_at, product_id, created_at)
             VALUES ($1, $2, $3, 'active', $4, $5, $6, $7, $6) ON CONFLICT DO NOTHING",
            new_id("sub"),
            order_id,
            sub_ref,
            period_end,
            grace,
            t,
            &product_id
        ))
        .await?;
        sync_access(tx, order_id).await?;
    }
    Ok(())
}

pub async fn find_by_provider(e: &impl Exec, provider_id: &str) -> Result<Option<Subscription>, crate::db::DbError> {
    e.fetch_optional(sql!(
        format!("SELECT {SUB_COLS} FROM subscriptions WHERE provider_subscription_id = $1"),
        provider_id
    ))
    .await
}

/// Access end = paid-through + grace, applied to the order's grants and licenses.
async fn sync_access(tx: &Tx, order_id: &str) -> ApiResult<()> {
    let sub: Option<Subscription> = tx
        .fetch_optional(sql!(
            format!("SELECT {SUB_COLS} FROM subscriptions WHERE order_id = $1"),
            order_id
        ))
        .await?;
    let Some(sub) = sub else { return Ok(()) };
    let Some(period_end) = sub.current_period_end else {
        return Ok(());
    };
    let access_end = period_end + sub.grace_days * 86_400;
    let t = now();
    tx.execute(sql!(
        "UPDATE download_grants SET expires_at = $2, updated_at = $3 WHERE order_id = $1 AND status <> 'revoked'",
        order_id,
        access_end,
        t
    ))
    .await?;
    tx.execute(sql!(
        "UPDATE license_keys SET paid_through = $2, expires_at = $3, updated_at = $4,
            status = CASE WHEN status = 'expired' AND $3 > $4 THEN 'active' ELSE status END
         WHERE order_id = $1 AND license_type = 'subscription'",
        order_id,
        period_end,
        access_end,
        t
    ))
    .await?;
    Ok(())
}

/// `invoice.paid`: the subscription is paid through `period_end` (never moves backwards).
pub async fn on_invoice_paid(tx: &Tx, provider_id: &str, period_end: i64) -> ApiResult<bool> {
    let Some(sub) = find_by_provider(tx, provider_id).await? else {
        return Ok(false);
    };
    tx.execute(sql!(
        "UPDATE subscriptions SET current_period_end = CASE WHEN COALESCE(current_period_end, 0) < $2 THEN $2 ELSE current_period_end END,
            status = CASE WHEN status IN ('past_due', 'incomplete') THEN 'active' ELSE status END, updated_at = $3
         WHERE id = $1",
        &sub.id,
        period_end,
        now()
    ))
    .await?;
    sync_access(tx, &sub.order_id).await?;
    Ok(true)
}

/// `invoice.payment_failed`: past due; access continues through the paid period and grace.
pub async fn on_payment_failed(tx: &Tx, provider_id: &str, event_at: i64) -> ApiResult<bool> {
    let n = tx
        .execute(sql!(
            "UPDATE subscriptions SET status = 'past_due', last_event_at = $2, updated_at = $3
             WHERE provider_subscription_id = $1 AND status IN ('active', 'past_due') AND last_event_at <= $2",
            provider_id,
            event_at,
            now()
        ))
        .await?;
    Ok(n > 0)
}

/// `customer.subscription.updated`: status, cancel-at-period-end and period end from the
/// provider's object, applied if this event is the newest seen.
pub async fn on_updated(
    tx: &Tx,
    provider_id: &str,
    status: &str,
    cancel_at_period_end: bool,
    period_end: Option<i64>,
    event_at: i64,
) -> ApiResult<bool> {
    let Some(sub) = find_by_provider(tx, provider_id).await? else {
        return Ok(false);
    };
    let status = match status {
        "active" | "trialing" => "active",
        "past_due" | "unpaid" => "past_due",
        "canceled" | "incomplete_expired" => "canceled",
        _ => "incomplete",
    };
    let n = tx
        .execute(sql!(
            "UPDATE subscriptions SET status = $2, cancel_at_period_end = $3,
                current_period_end = CASE WHEN $4 IS NOT NULL AND COALESCE(current_period_end, 0) < $4 THEN $4 ELSE current_period_end END,
                last_event_at = $5, updated_at = $6
             WHERE id = $1 AND last_event_at <= $5 AND status <> 'canceled'",
            &sub.id,
            status,
            cancel_at_period_end,
            period_end,
            event_at,
            now()
        ))
        .await?;
    if n > 0 {
        sync_access(tx, &sub.order_id).await?;
    }
    Ok(n > 0)
}

/// `customer.subscription.deleted`: canceled for good; access ends at period end + grace.
pub async fn on_deleted(tx: &Tx, provider_id: &str, event_at: i64) -> ApiResult<bool> {
    let Some(sub) = find_by_provider(tx, provider_id).await? else {
        return Ok(false);
    };
    tx.execute(sql!(
        "UPDATE subscriptions SET status = 'canceled', cancel_at_period_end = FALSE,
            last_event_at = CASE WHEN last_event_at < $2 THEN $2 ELSE last_event_at END, updated_at = $3
         WHERE id = $1",
        &sub.id,
        event_at,
        now()
    ))
    .await?;
    sync_access(tx, &sub.order_id).await?;
    Ok(true)
}

/// Marks licenses whose access ended as `expired` (scheduled).
pub async fn expire_due(e: &impl Exec) -> Result<u64, crate::db::DbError> {
    let t = now();
    e.execute(sql!(
        "UPDATE license_keys SET status = 'expired', updated_at = $1 WHERE status = 'active' AND expires_at IS NOT NULL AND expires_at < $1",
        t
    ))
    .await
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ExpireAccess;

impl crate::jobs::Job for ExpireAccess {
    const KIND: &'static str = "subscriptions.expire";
}

pub async fn run_expire(app: crate::app::App, _: ExpireAccess) -> anyhow::Result<()> {
    let n = expire_due(&app.db).await?;
    if n > 0 {
        tracing::info!(expired = n, "licenses expired");
    }
    Ok(())
}

/// Applies a Stripe Subscription object (from a `customer.subscription.updated` event, or the
/// answer to our own update call) if it is the newest seen. One parser for both, so our call
/// and Stripe's event about it always agree. Returns whether the subscription is known.
pub async fn apply_stripe_object(tx: &Tx, obj: &serde_json::Value, event_at: i64) -> ApiResult<bool> {
    let Some(provider_id) = obj["id"].as_str() else {
        return Ok(false);
    };
    if find_by_provider(tx, provider_id).await?.is_none() {
        return Ok(false);
    }
    // API 2024-06-20 has current_period_end on the subscription; newer versions on its items.
    let period_end = obj["current_period_end"].as_i64().or_else(|| {
        obj["items"]["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|it| it["current_period_end"].as_i64())
            .max()
    });
    let status = obj["status"].as_str().unwrap_or("active");
    let cancel = obj["cancel_at_period_end"].as_bool().unwrap_or(false);
    on_updated(tx, provider_id, status, cancel, period_end, event_at).await?;
    Ok(true)
}

/// A subscription as its buyer sees it in the library.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BuyerSubscription {
    pub id: String,
    pub order_id: String,
    pub provider_subscription_id: Option<String>,
    pub status: String,
    pub current_period_end: Option<i64>,
    pub cancel_at_period_end: bool,
    pub grace_days: i64,
    pub updated_at: i64,
    pub provider: String,
    pub product_id: Option<String>,
    pub title: Option<String>,
    pub slug: Option<String>,
    pub price: Option<i64>,
    pub currency: Option<String>,
    pub billing_interval: Option<String>,
}

const BUYER_SUB_SELECT: &str =
    "SELECT s.id, s.order_id, s.provider_subscription_id, s.status, s.current_period_end, s.cancel_at_period_end,
        s.grace_days, s.updated_at, o.provider, s.product_id, p.title, p.slug, p.price, p.currency, p.billing_interval
     FROM subscriptions s JOIN orders o ON o.id = s.order_id LEFT JOIN products p ON p.id = s.product_id";

impl BuyerSubscription {
    /// Downloads and license keys work until this moment (paid-through + grace).
    pub fn access_until(&self) -> Option<i64> {
        self.current_period_end.map(|e| e + self.grace_days * 86_400)
    }

    /// Over for good: canceled by the provider, or (test mode) a canceled period that ran out.
    pub fn ended(&self, at: i64) -> bool {
        self.status == "canceled" || (self.cancel_at_period_end && self.current_period_end.is_some_and(|e| e <= at))
    }

    pub fn can_cancel(&self, at: i64) -> bool {
        !self.ended(at) && !self.cancel_at_period_end
    }

    pub fn can_resume(&self, at: i64) -> bool {
        !self.ended(at) && self.cancel_at_period_end
    }

    pub fn json(&self, at: i64) -> serde_json::Value {
        serde_json::json!({
            "id": self.id, "order_id": self.order_id,
            "product": {"id": self.product_id, "title": self.title, "slug": self.slug},
            "status": self.status, "cancel_at_period_end": self.cancel_at_period_end,
            "current_period_end": self.current_period_end, "access_until": self.access_until(),
            "grace_days": self.grace_days, "ended": self.ended(at),
            "can_cancel": self.can_cancel(at), "can_resume": self.can_resume(at),
            "price": self.price, "currency": self.currency, "billing_interval": self.billing_interval,
        })
    }
}

/// Every subscription bought with `email`, newest first.
pub async fn for_buyer(e: &impl Exec, email: &str) -> Result<Vec<BuyerSubscription>, crate::db::DbError> {
    e.fetch_all(sql!(
        format!("{BUYER_SUB_SELECT} WHERE o.email = $1 ORDER BY s.id DESC"),
        email
    ))
    .await
}

/// One of the buyer's subscriptions (another buyer's is not found).
pub async fn find_for_buyer(
    e: &impl Exec,
    email: &str,
    id: &str,
) -> Result<Option<BuyerSubscription>, crate::db::DbError> {
    e.fetch_optional(sql!(
        format!("{BUYER_SUB_SELECT} WHERE s.id = $1 AND o.email = $2"),
        id,
        email
    ))
    .await
}

/// The buyer cancels at period end (`cancel = true`) or resumes (`false`) a subscription.
///
/// Stripe subscriptions go through Stripe first (`POST /v1/subscriptions/{id}` with
/// `cancel_at_period_end`, an Idempotency-Key its retries reuse); Stripe's answer — the
/// Subscription object — is then applied with [`apply_stripe_object`], the same function
/// that applies Stripe's `customer.subscription.updated` event, so whichever of the two
/// lands first, the state is the same. No transaction is held while Stripe is called. If
/// Stripe refuses or cannot be reached, nothing changes (502). Test-mode subscriptions
/// take the same state change locally through [`on_updated`].
pub async fn buyer_set_cancel(
    app: &crate::app::App,
    email: &str,
    id: &str,
    cancel: bool,
) -> ApiResult<BuyerSubscription> {
    use crate::error::{conflict, not_found, provider_unavailable};
    let sub = find_for_buyer(&app.db, email, id)
        .await?
        .ok_or_else(|| not_found("subscription"))?;
    let t = now();
    if sub.ended(t) {
        return Err(conflict(
            "subscription_ended",
            "this subscription has ended and cannot be changed; buy it again from the store to subscribe anew",
        ));
    }
    if sub.cancel_at_period_end == cancel {
        return Ok(sub);
    }
    let provider_ref = sub.provider_subscription_id.clone().unwrap_or_default();
    if sub.provider == "stripe" {
        let client = crate::payments::stripe_client::StripeClient::from_config(&app.cfg.payments)
            .ok_or_else(|| provider_unavailable("Stripe is not configured on this store, so the subscription cannot be changed right now. Nothing changed."))?;
        if provider_ref.is_empty() || provider_ref.starts_with("test_sub_") {
            return Err(conflict(
                "subscription_not_linked",
                "Stripe has not confirmed this subscription yet; try again in a minute",
            ));
        }
        let key = format!(
            "satchel-sub-{}-{}-{}",
            sub.id,
            if cancel { "cancel" } else { "resume" },
            crate::ids::random_token(9)
        );
        let obj = crate::payments::stripe_client::set_cancel_at_period_end(&client, &provider_ref, cancel, &key)
            .await
            .map_err(|e| provider_unavailable(format!("{e}. Nothing changed; try again in a moment.")))?;
        let tx = app.db.begin().await?;
        apply_stripe_object(&tx, &obj, now()).await?;
        tx.commit().await?;
    } else {
        let tx = app.db.begin().await?;
        on_updated(&tx, &provider_ref, &sub.status, cancel, None, now()).await?;
        tx.commit().await?;
    }
    find_for_buyer(&app.db, email, id)
        .await?
        .ok_or_else(|| not_found("subscription"))
}
