//! `POST /api/v1/webhooks/stripe`: verified exactly as Stripe documents, stored, deduplicated
//! by event id, and applied in one transaction with the state it changes.
//!
//! Verification: the `Stripe-Signature` header carries `t=` and one or more `v1=`; each `v1`
//! is HMAC-SHA256 of `{t}.{raw body}` keyed with the endpoint secret, compared in constant
//! time; `t` must be within 5 minutes. Anything else is a 400 and changes nothing.
//!
//! Ordering: every handler is idempotent and order-insensitive — fulfillment flips an order
//! to paid once; refunds are keyed by Stripe's refund id; subscription changes apply only
//! when newer. An event that refers to a payment or subscription we have not linked yet (a
//! refund that overtakes its `checkout.session.completed`, a renewal before the checkout) is
//! stored as *deferred* under that id and re-applied, in the same transaction, by the event
//! that links it — so the final state never depends on arrival order or on Stripe retrying.
//! Events for types we do not handle answer 200 (so Stripe stops retrying) and are logged.

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::app::App;
use crate::db::{Exec, Tx};
use crate::error::{bad_request, ApiError, ApiResult};
use crate::ids::now;
use crate::sql;

pub const TOLERANCE_SECS: i64 = 300;

/// Checks a `Stripe-Signature` header against the raw body.
pub fn verify_signature(
    payload: &[u8],
    header: &str,
    secret: &str,
    tolerance: i64,
    now: i64,
) -> Result<(), &'static str> {
    let mut t: Option<i64> = None;
    let mut sigs: Vec<Vec<u8>> = Vec::new();
    for part in header.split(',') {
        let Some((k, v)) = part.trim().split_once('=') else {
            continue;
        };
        match k {
            "t" => t = v.parse().ok(),
            "v1" => {
                if let Ok(b) = hex::decode(v) {
                    sigs.push(b);
                }
            }
            _ => {}
        }
    }
    let t = t.ok_or("the Stripe-Signature header has no timestamp")?;
    if sigs.is_empty() {
        return Err("the Stripe-Signature header has no v1 signature");
    }
    if (now - t).abs() > tolerance {
        return Err("the Stripe-Signature timestamp is outside the 5-minute tolerance");
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).map_err(|_| "bad secret")?;
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(payload);
    let expected = mac.finalize().into_bytes();
    use subtle::ConstantTimeEq;
    if sigs.iter().any(|s| bool::from(s.as_slice().ct_eq(expected.as_slice()))) {
        Ok(())
    } else {
        Err("no signature in the Stripe-Signature header matches this payload")
    }
}

/// What happened to an event.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Applied(&'static str),
    Duplicate,
    Ignored(&'static str),
    /// Waits for the payment or subscription with this id to be linked.
    Deferred(String),
}

fn s<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p)?;
    }
    cur.as_str()
}

fn i(v: &Value, path: &[&str]) -> Option<i64> {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p)?;
    }
    cur.as_i64()
}

/// A payment event we cannot map yet waits for its payment; without an id it is not ours.
fn defer_or_ignore(payment_intent: Option<&str>) -> Outcome {
    match payment_intent {
        Some(pi) => Outcome::Deferred(pi.to_string()),
        None => Outcome::Ignored("no payment to attach this to"),
    }
}

fn retry_later(message: &str) -> ApiError {
    ApiError::new(axum::http::StatusCode::CONFLICT, "retry_later", message.to_string())
}

/// Verifies, stores and applies one delivery. Returns the outcome once it is committed.
pub async fn handle(app: &App, payload: &[u8], signature: Option<&str>) -> ApiResult<Outcome> {
    let secret = app.cfg.payments.stripe_webhook_secret.as_ref().ok_or_else(|| {
        bad_request(
            "webhooks_not_configured",
            "set SATCHEL_STRIPE_WEBHOOK_SECRET to receive Stripe webhooks",
        )
    })?;
    let header = signature.ok_or_else(|| bad_request("missing_signature", "the Stripe-Signature header is missing"))?;
    verify_signature(payload, header, secret.expose(), TOLERANCE_SECS, now())
        .map_err(|m| bad_request("invalid_signature", m))?;
    let event: Value = serde_json::from_slice(payload)
        .map_err(|e| bad_request("invalid_payload", format!("not a JSON event: {e}")))?;
    let id = s(&event, &["id"])
        .ok_or_else(|| bad_request("invalid_payload", "the event has no id"))?
        .to_string();
    let kind = s(&event, &["type"])
        .ok_or_else(|| bad_request("invalid_payload", "the event has no type"))?
        .to_string();
    let tx = app.db.begin().await?;
    tx.execute(sql!(
        "INSERT INTO webhook_events (id, provider, event_type, payload, received_at) VALUES ($1, 'stripe', $2, $3, $4) ON CONFLICT DO NOTHING",
        &id,
        &kind,
        String::from_utf8_lossy(payload).to_string(),
        now()
    ))
    .await?;
    let (processed,): (Option<i64>,) = tx
        .fetch_one(sql!("SELECT processed_at FROM webhook_events WHERE id = $1", &id))
        .await?;
    if processed.is_some() {
        return Ok(Outcome::Duplicate);
    }
    let outcome = apply(app, &tx, &kind, &event).await?;
    let note = record(&tx, &id, &outcome).await?;
    // An event that linked a payment or subscription releases the events waiting for it.
    if matches!(outcome, Outcome::Applied(_)) {
        let obj = &event["data"]["object"];
        for key in [s(obj, &["payment_intent"]), s(obj, &["subscription"])]
            .into_iter()
            .flatten()
        {
            replay_deferred(app, &tx, key).await?;
        }
    }
    tx.commit().await?;
    app.jobs_enqueued();
    tracing::info!(event = %id, kind = %kind, outcome = %note, "stripe webhook");
    Ok(outcome)
}

async fn record(tx: &Tx, id: &str, outcome: &Outcome) -> ApiResult<String> {
    let (note, processed) = match outcome {
        Outcome::Applied(n) => (format!("applied: {n}"), Some(now())),
        Outcome::Ignored(n) => (format!("ignored: {n}"), Some(now())),
        Outcome::Duplicate => ("duplicate".into(), Some(now())),
        Outcome::Deferred(key) => (format!("deferred:{key}"), None),
    };
    tx.execute(sql!(
        "UPDATE webhook_events SET processed_at = $2, outcome = $3 WHERE id = $1",
        id,
        processed,
        &note
    ))
    .await?;
    Ok(note)
}

async fn replay_deferred(app: &App, tx: &Tx, key: &str) -> ApiResult<()> {
    let waiting: Vec<(String, String, String)> = tx
        .fetch_all(sql!(
            "SELECT id, event_type, payload FROM webhook_events WHERE outcome = $1 AND processed_at IS NULL ORDER BY received_at, id",
            format!("deferred:{key}")
        ))
        .await?;
    for (id, kind, payload) in waiting {
        let event: Value = serde_json::from_str(&payload).map_err(anyhow::Error::from)?;
        let outcome = Box::pin(apply(app, tx, &kind, &event)).await?;
        let note = record(tx, &id, &outcome).await?;
        tracing::info!(event = %id, kind = %kind, outcome = %note, "replayed deferred stripe event");
    }
    Ok(())
}

async fn order_for_session(tx: &Tx, obj: &Value) -> ApiResult<Option<String>> {
    let order_id = s(obj, &["metadata", "order_id"]).or_else(|| s(obj, &["client_reference_id"]));
    let Some(order_id) = order_id else { return Ok(None) };
    Ok(crate::checkout::find_order(tx, order_id).await?.map(|o| o.id))
}

async fn order_for_payment(
    tx: &Tx,
    payment_intent: Option<&str>,
    metadata_order: Option<&str>,
) -> ApiResult<Option<String>> {
    if let Some(o) = metadata_order {
        if let Some(found) = crate::checkout::find_order(tx, o).await? {
            return Ok(Some(found.id));
        }
    }
    let Some(pi) = payment_intent else { return Ok(None) };
    let row: Option<(String,)> = tx
        .fetch_optional(sql!("SELECT id FROM orders WHERE provider_payment_id = $1", pi))
        .await?;
    Ok(row.map(|r| r.0))
}

async fn apply(app: &App, tx: &Tx, kind: &str, event: &Value) -> ApiResult<Outcome> {
    let obj = &event["data"]["object"];
    let created = i(event, &["created"]).unwrap_or_else(now);
    match kind {
        "checkout.session.completed" | "checkout.session.async_payment_succeeded" => {
            let Some(order_id) = order_for_session(tx, obj).await? else {
                return Ok(Outcome::Ignored("unknown order"));
            };
            let paid = matches!(s(obj, &["payment_status"]), Some("paid" | "no_payment_required"));
            if !paid {
                return Ok(Outcome::Ignored("awaiting an asynchronous payment"));
            }
            let pi = s(obj, &["payment_intent"]).or_else(|| s(obj, &["id"]));
            tx.execute(sql!(
                "UPDATE orders SET provider_session_id = COALESCE(provider_session_id, $2), provider_customer_id = COALESCE(provider_customer_id, $3),
                    provider_subscription_id = COALESCE(provider_subscription_id, $4) WHERE id = $1",
                &order_id,
                s(obj, &["id"]),
                s(obj, &["customer"]),
                s(obj, &["subscription"])
            ))
            .await?;
            let did =
                crate::checkout::fulfill_with(app, tx, &order_id, "stripe", pi, s(obj, &["subscription"])).await?;
            Ok(Outcome::Applied(if did { "order paid" } else { "already paid" }))
        }
        "checkout.session.async_payment_failed" => {
            let Some(order_id) = order_for_session(tx, obj).await? else {
                return Ok(Outcome::Ignored("unknown order"));
            };
            crate::checkout::fail(tx, &order_id).await?;
            Ok(Outcome::Applied("payment failed"))
        }
        "checkout.session.expired" => {
            let Some(order_id) = order_for_session(tx, obj).await? else {
                return Ok(Outcome::Ignored("unknown order"));
            };
            tx.execute(sql!(
                "UPDATE orders SET status = 'expired', updated_at = $2 WHERE id = $1 AND status = 'pending'",
                &order_id,
                now()
            ))
            .await?;
            Ok(Outcome::Applied("checkout expired"))
        }
        "payment_intent.payment_failed" => {
            // The buyer may still retry inside the same Checkout Session: record, change nothing.
            Ok(Outcome::Ignored("payment attempt failed; the session stays open"))
        }
        "charge.refunded" => {
            let pi = s(obj, &["payment_intent"]);
            let Some(order_id) = order_for_payment(tx, pi, s(obj, &["metadata", "order_id"])).await? else {
                return Ok(defer_or_ignore(pi));
            };
            let order = crate::checkout::find_order(tx, &order_id)
                .await?
                .ok_or_else(|| retry_later("order vanished"))?;
            if order.status == "pending" {
                return Ok(defer_or_ignore(pi));
            }
            let mut refunds: Vec<(String, i64)> = obj["refunds"]["data"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|r| s(r, &["status"]).is_none_or(|st| st == "succeeded" || st == "pending"))
                .filter_map(|r| Some((s(r, &["id"])?.to_string(), i(r, &["amount"])?)))
                .collect();
            if refunds.is_empty() {
                // Older API versions omit the list: use the cumulative amount.
                let already = tx
                    .fetch_i64(sql!("SELECT refunded_total FROM orders WHERE id = $1", &order_id))
                    .await?;
                let amount = i(obj, &["amount_refunded"]).unwrap_or(0) - already;
                if amount > 0 {
                    refunds.push((
                        format!(
                            "{}:{}",
                            s(obj, &["id"]).unwrap_or("ch"),
                            i(obj, &["amount_refunded"]).unwrap_or(0)
                        ),
                        amount,
                    ));
                }
            }
            let mut applied = 0;
            for (refund_id, amount) in refunds {
                let req = crate::refunds::RefundRequest {
                    amount: Some(amount),
                    reason: "refunded in Stripe".into(),
                    items: Vec::new(),
                };
                match crate::refunds::apply(app, tx, &order_id, &req, "stripe", Some(&refund_id)).await {
                    Ok(crate::refunds::RefundOutcome::Applied { .. }) => applied += 1,
                    Ok(crate::refunds::RefundOutcome::AlreadyApplied) => {}
                    // Already fully refunded through another path (e.g. a dispute): nothing left to do.
                    Err(e) if e.code() == "amount_exceeds_remaining" || e.code() == "order_not_refundable" => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(Outcome::Applied(if applied > 0 {
                "refund applied"
            } else {
                "refund already applied"
            }))
        }
        "charge.dispute.created" => {
            let pi = s(obj, &["payment_intent"]);
            let Some(order_id) = order_for_payment(tx, pi, None).await? else {
                return Ok(defer_or_ignore(pi));
            };
            let n = tx
                .execute(sql!(
                    "UPDATE orders SET status = 'disputed', updated_at = $2 WHERE id = $1 AND status IN ('paid', 'partially_refunded')",
                    &order_id,
                    now()
                ))
                .await?;
            if n == 0 {
                let order = crate::checkout::find_order(tx, &order_id).await?;
                if order.is_some_and(|o| o.status == "pending") {
                    return Ok(defer_or_ignore(pi));
                }
            }
            tx.execute(sql!(
                "UPDATE license_keys SET status = 'suspended', updated_at = $2 WHERE order_id = $1 AND status = 'active'",
                &order_id,
                now()
            ))
            .await?;
            Ok(Outcome::Applied("access suspended during the dispute"))
        }
        "charge.dispute.closed" => {
            let pi = s(obj, &["payment_intent"]);
            let Some(order_id) = order_for_payment(tx, pi, None).await? else {
                return Ok(defer_or_ignore(pi));
            };
            match s(obj, &["status"]) {
                Some("lost") => {
                    let dispute = s(obj, &["id"]).unwrap_or("dispute");
                    let req = crate::refunds::RefundRequest {
                        amount: None,
                        reason: "chargeback lost".into(),
                        items: Vec::new(),
                    };
                    match crate::refunds::apply(app, tx, &order_id, &req, "dispute", Some(dispute)).await {
                        Ok(_) => {}
                        Err(e) if e.code() == "order_not_refundable" || e.code() == "invalid_amount" => {}
                        Err(e) => return Err(e),
                    }
                    Ok(Outcome::Applied("chargeback lost: access revoked"))
                }
                Some("won" | "warning_closed") => {
                    tx.execute(sql!(
                        "UPDATE orders SET status = CASE WHEN refunded_total > 0 THEN 'partially_refunded' ELSE 'paid' END, updated_at = $2
                         WHERE id = $1 AND status = 'disputed'",
                        &order_id,
                        now()
                    ))
                    .await?;
                    tx.execute(sql!(
                        "UPDATE license_keys SET status = 'active', updated_at = $2 WHERE order_id = $1 AND status = 'suspended'",
                        &order_id,
                        now()
                    ))
                    .await?;
                    Ok(Outcome::Applied("dispute won: access restored"))
                }
                _ => Ok(Outcome::Ignored("dispute still open")),
            }
        }
        "invoice.paid" => {
            let sub = s(obj, &["subscription"]).or_else(|| s(obj, &["parent", "subscription_details", "subscription"]));
            let Some(sub) = sub else {
                return Ok(Outcome::Ignored("not a subscription invoice"));
            };
            let period_end = obj["lines"]["data"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|l| i(l, &["period", "end"]))
                .max()
                .or_else(|| i(obj, &["period_end"]));
            let Some(period_end) = period_end else {
                return Ok(Outcome::Ignored("invoice without a period"));
            };
            if crate::subscriptions::on_invoice_paid(tx, sub, period_end).await? {
                Ok(Outcome::Applied("subscription renewed"))
            } else {
                Ok(Outcome::Deferred(sub.to_string()))
            }
        }
        "invoice.payment_failed" => {
            let sub = s(obj, &["subscription"]).or_else(|| s(obj, &["parent", "subscription_details", "subscription"]));
            let Some(sub) = sub else {
                return Ok(Outcome::Ignored("not a subscription invoice"));
            };
            if crate::subscriptions::find_by_provider(tx, sub).await?.is_none() {
                return Ok(Outcome::Deferred(sub.to_string()));
            }
            crate::subscriptions::on_payment_failed(tx, sub, created).await?;
            Ok(Outcome::Applied("subscription past due"))
        }
        "customer.subscription.updated" => {
            let Some(sub) = s(obj, &["id"]) else {
                return Ok(Outcome::Ignored("no subscription id"));
            };
            // The same parser applies the answer to the buyer's own cancel/resume call.
            if crate::subscriptions::apply_stripe_object(tx, obj, created).await? {
                Ok(Outcome::Applied("subscription updated"))
            } else {
                Ok(Outcome::Deferred(sub.to_string()))
            }
        }
        "customer.subscription.deleted" => {
            let Some(sub) = s(obj, &["id"]) else {
                return Ok(Outcome::Ignored("no subscription id"));
            };
            if crate::subscriptions::find_by_provider(tx, sub).await?.is_none() {
                return Ok(Outcome::Deferred(sub.to_string()));
            }
            crate::subscriptions::on_deleted(tx, sub, created).await?;
            Ok(Outcome::Applied("subscription canceled"))
        }
        _ => Ok(Outcome::Ignored("event type not handled")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(payload: &[u8], secret: &str, t: i64) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("{t}.").as_bytes());
        mac.update(payload);
        format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn signatures_verify_like_stripe() {
        let body = br#"{"id":"evt_1"}"#;
        let h = header(body, "whsec_test", 1000);
        assert!(verify_signature(body, &h, "whsec_test", 300, 1100).is_ok());
        assert!(
            verify_signature(body, &format!("{h},v1=00ff,v0=abc"), "whsec_test", 300, 1100).is_ok(),
            "extra schemes ignored"
        );
        assert!(
            verify_signature(body, &format!("t=1000,v1=00ff,{}", &h[7..]), "whsec_test", 300, 1100).is_ok(),
            "any v1 may match"
        );
        assert!(
            verify_signature(b"{\"id\":\"evt_2\"}", &h, "whsec_test", 300, 1100).is_err(),
            "tampered body"
        );
        assert!(
            verify_signature(body, &h, "whsec_other", 300, 1100).is_err(),
            "wrong secret"
        );
        assert!(verify_signature(body, &h, "whsec_test", 300, 1400).is_err(), "stale");
        assert!(verify_signature(body, &h, "whsec_test", 300, 600).is_err(), "future");
        assert!(verify_signature(body, "garbage", "whsec_test", 300, 1100).is_err());
        assert!(verify_signature(body, "t=1000", "whsec_test", 300, 1100).is_err());
    }
}
