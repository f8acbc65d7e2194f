//! Refunds take access back in one transaction, exactly once.

#![allow(clippy::unwrap_used)]

use satchel::db::Exec;
use satchel::refunds::{apply, RefundOutcome, RefundRequest};
use satchel::sql;
use satchel::testing::{backends, TestApp};
use serde_json::{json, Value};

async fn paid_cart(t: &TestApp) -> Value {
    let body =
        json!({"email": "r@example.com", "items": [{"product_id": "demo-ebook"}, {"product_id": "demo-templates"}]});
    let (status, order) = t.post_json("/api/v1/checkout", &body).await;
    assert_eq!(status, 201);
    t.pay(&order).await;
    t.order(&order).await
}

fn req(amount: Option<i64>, items: Vec<String>) -> RefundRequest {
    RefundRequest {
        amount,
        reason: "test".into(),
        items,
    }
}

async fn refund(
    t: &TestApp,
    order_id: &str,
    r: &RefundRequest,
    provider_ref: Option<&str>,
) -> Result<RefundOutcome, satchel::error::ApiError> {
    let tx = t.app.db.begin().await.unwrap();
    let out = apply(&t.app, &tx, order_id, r, "seller", provider_ref).await;
    if out.is_ok() {
        tx.commit().await.unwrap();
    }
    out
}

#[tokio::test]
async fn partial_then_full_refund_revokes_exactly_what_was_refunded() {
    for backend in backends().await {
        let t = TestApp::start_demo(backend).await;
        let order = paid_cart(&t).await;
        let id = order["order_id"].as_str().unwrap();
        let (ebook_item, ebook_link) = (
            order["items"][0]["id"].as_str().unwrap(),
            order["items"][0]["download_url"].as_str().unwrap(),
        );
        let tmpl_link = order["items"][1]["download_url"].as_str().unwrap();
        assert_eq!(order["items"][0]["title"], "The Indie Maker's Handbook");

        // A commission to reverse.
        let seller: (String,) = t
            .app
            .db
            .fetch_one(sql!("SELECT seller_id FROM orders WHERE id = $1", id))
            .await
            .unwrap();
        t.app.db.execute(sql!("INSERT INTO affiliates (id, seller_id, email, code, created_at) VALUES ('aff_1', $1, 'a@example.com', 'AFF', 0)", &seller.0)).await.unwrap();
        t.app.db.execute(sql!("INSERT INTO commissions (id, affiliate_id, order_id, amount, currency, status, payable_at, created_at, updated_at) VALUES ('com_1', 'aff_1', $1, 1440, 'USD', 'pending', 0, 0, 0)", id)).await.unwrap();

        let out = refund(&t, id, &req(Some(1900), vec![ebook_item.to_string()]), Some("re_A"))
            .await
            .unwrap();
        assert!(
            matches!(out, RefundOutcome::Applied { ref status, amount: 1900, .. } if status == "partially_refunded"),
            "{out:?}"
        );
        let r = t.client.get(ebook_link).send().await.unwrap();
        assert_eq!(r.status(), 403, "{backend:?}: the refunded item's link stops");
        assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "access_revoked");
        assert_eq!(
            t.client.get(tmpl_link).send().await.unwrap().status(),
            302,
            "the rest keeps working"
        );
        let (rev,): (i64,) = t
            .app
            .db
            .fetch_one(sql!("SELECT reversed_amount FROM commissions WHERE id = 'com_1'"))
            .await
            .unwrap();
        assert_eq!(rev, 1440 * 1900 / 4800, "commission reversed in proportion");

        // The same provider refund again (e.g. Stripe's charge.refunded after the seller's call): once.
        assert_eq!(
            refund(&t, id, &req(Some(1900), vec![]), Some("re_A")).await.unwrap(),
            RefundOutcome::AlreadyApplied
        );
        // More than remains: refused, nothing changes.
        let err = refund(&t, id, &req(Some(5000), vec![]), None).await.unwrap_err();
        assert_eq!(err.code(), "amount_exceeds_remaining");
        let (total_refunded,): (i64,) = t
            .app
            .db
            .fetch_one(sql!("SELECT refunded_total FROM orders WHERE id = $1", id))
            .await
            .unwrap();
        assert_eq!(total_refunded, 1900);

        // The rest: a full refund ends everything and reverses the whole commission.
        let out = refund(&t, id, &req(None, vec![]), Some("re_B")).await.unwrap();
        assert!(matches!(out, RefundOutcome::Applied { ref status, amount: 2900, .. } if status == "refunded"));
        assert_eq!(t.client.get(tmpl_link).send().await.unwrap().status(), 403);
        let (status, rev): (String, i64) = t
            .app
            .db
            .fetch_one(sql!(
                "SELECT status, reversed_amount FROM commissions WHERE id = 'com_1'"
            ))
            .await
            .unwrap();
        assert_eq!((status.as_str(), rev), ("reversed", 1440));
        assert_eq!(
            refund(&t, id, &req(Some(1), vec![]), None).await.unwrap_err().code(),
            "order_not_refundable"
        );

        // Two refund emails, one receipt, one order.refunded event per refund.
        t.drain_jobs().await;
        let kinds: Vec<(String,)> = t
            .app
            .db
            .fetch_all(sql!("SELECT kind FROM email_outbox ORDER BY id"))
            .await
            .unwrap();
        assert_eq!(kinds.iter().filter(|k| k.0 == "refund").count(), 2);
        let events = t
            .app
            .db
            .fetch_i64(sql!(
                "SELECT COUNT(*) FROM domain_events WHERE event_type = 'order.refunded'"
            ))
            .await
            .unwrap();
        assert_eq!(events, 2);
    }
}

#[tokio::test]
async fn concurrent_full_refunds_apply_once_and_unpaid_orders_refuse() {
    for backend in backends().await {
        let t = TestApp::start_demo(backend).await;
        let order = paid_cart(&t).await;
        let id = order["order_id"].as_str().unwrap().to_string();
        let mut tasks = Vec::new();
        for i in 0..6 {
            let (app, id) = (t.app.clone(), id.clone());
            tasks.push(tokio::spawn(async move {
                let tx = app.db.begin().await.unwrap();
                match apply(&app, &tx, &id, &req(None, vec![]), "seller", Some(&format!("re_{i}"))).await {
                    Ok(RefundOutcome::Applied { .. }) => {
                        tx.commit().await.unwrap();
                        1
                    }
                    _ => 0,
                }
            }));
        }
        let mut applied = 0;
        for task in tasks {
            applied += task.await.unwrap();
        }
        assert_eq!(applied, 1, "{backend:?}");
        let (refunded, total): (i64, i64) = t
            .app
            .db
            .fetch_one(sql!("SELECT refunded_total, total FROM orders WHERE id = $1", &id))
            .await
            .unwrap();
        assert_eq!(refunded, total, "never more than was paid");

        let r = t
            .client
            .post(t.url("/api/v1/products/demo-ebook/purchase"))
            .json(&json!({"email": "p@example.com"}))
            .send()
            .await
            .unwrap();
        let pending: Value = r.json().await.unwrap();
        let err = refund(&t, pending["order_id"].as_str().unwrap(), &req(None, vec![]), None)
            .await
            .unwrap_err();
        assert_eq!(err.status(), 409);
    }
}
