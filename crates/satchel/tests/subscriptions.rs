//! The subscription lifecycle, with events duplicated and out of order.

#![allow(clippy::unwrap_used)]

use satchel::db::Exec;
use satchel::sql;
use satchel::subscriptions as subs;
use satchel::testing::{backends, TestApp};
use serde_json::Value;

async fn grant_expiry(t: &TestApp, order_id: &str) -> i64 {
    t.app
        .db
        .fetch_i64(sql!(
            "SELECT expires_at FROM download_grants WHERE order_id = $1",
            order_id
        ))
        .await
        .unwrap()
}

async fn in_tx<F, Fut>(t: &TestApp, f: F) -> bool
where
    F: FnOnce(satchel::db::Tx) -> Fut,
    Fut: std::future::Future<Output = (satchel::db::Tx, bool)>,
{
    let tx = t.app.db.begin().await.unwrap();
    let (tx, r) = f(tx).await;
    tx.commit().await.unwrap();
    r
}

#[tokio::test]
async fn paid_renewed_past_due_canceled_expired() {
    for backend in backends().await {
        let t = TestApp::start_demo(backend).await;
        let order = t.purchase("demo-pro", "sub@example.com").await;
        t.pay(&order).await;
        let id = order["order_id"].as_str().unwrap().to_string();
        let sub_ref = format!("test_sub_{id}");
        let s = subs::find_by_provider(&t.app.db, &sub_ref).await.unwrap().unwrap();
        assert_eq!(s.status, "active", "{backend:?}");
        let end1 = s.current_period_end.unwrap();
        assert!(
            (end1 - satchel::ids::now() - 30 * 86_400).abs() < 60,
            "a month from now"
        );
        assert_eq!(
            grant_expiry(&t, &id).await,
            end1 + 7 * 86_400,
            "access = paid-through + 7 days grace"
        );

        // Renewal, delivered twice, then an older renewal: only forward.
        let end2 = end1 + 30 * 86_400;
        for period in [end2, end2, end1] {
            let r = sub_ref.clone();
            assert!(
                in_tx(&t, |tx| async move {
                    let ok = subs::on_invoice_paid(&tx, &r, period).await.unwrap();
                    (tx, ok)
                })
                .await
            );
        }
        assert_eq!(grant_expiry(&t, &id).await, end2 + 7 * 86_400);

        // Payment fails: past due, but the link still works.
        let r = sub_ref.clone();
        assert!(
            in_tx(&t, |tx| async move {
                let ok = subs::on_payment_failed(&tx, &r, 100).await.unwrap();
                (tx, ok)
            })
            .await
        );
        assert_eq!(
            subs::find_by_provider(&t.app.db, &sub_ref)
                .await
                .unwrap()
                .unwrap()
                .status,
            "past_due"
        );
        let o: Value = t
            .client
            .get(t.url(&format!("/api/v1/orders/{id}")))
            .bearer_auth(order["access_token"].as_str().unwrap())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let link = o["items"][0]["download_url"].as_str().unwrap().to_string();
        assert_eq!(t.client.get(&link).send().await.unwrap().status(), 302);

        // Cancel at period end (event 300), then a stale "active" update (event 200) is ignored.
        let r = sub_ref.clone();
        assert!(
            in_tx(&t, |tx| async move {
                let ok = subs::on_updated(&tx, &r, "active", true, None, 300).await.unwrap();
                (tx, ok)
            })
            .await
        );
        let r = sub_ref.clone();
        assert!(
            !in_tx(&t, |tx| async move {
                let ok = subs::on_updated(&tx, &r, "past_due", false, None, 200).await.unwrap();
                (tx, ok)
            })
            .await
        );
        let s = subs::find_by_provider(&t.app.db, &sub_ref).await.unwrap().unwrap();
        assert!(s.cancel_at_period_end && s.status == "active");

        // Deleted; an older update arriving afterwards cannot resurrect it.
        let r = sub_ref.clone();
        assert!(
            in_tx(&t, |tx| async move {
                let ok = subs::on_deleted(&tx, &r, 400).await.unwrap();
                (tx, ok)
            })
            .await
        );
        let r = sub_ref.clone();
        assert!(
            !in_tx(&t, |tx| async move {
                let ok = subs::on_updated(&tx, &r, "active", false, Some(end2 + 999_999), 350)
                    .await
                    .unwrap();
                (tx, ok)
            })
            .await
        );
        let s = subs::find_by_provider(&t.app.db, &sub_ref).await.unwrap().unwrap();
        assert_eq!((s.status.as_str(), s.current_period_end), ("canceled", Some(end2)));
        assert_eq!(
            grant_expiry(&t, &id).await,
            end2 + 7 * 86_400,
            "access runs to period end + grace"
        );

        // Once period end + grace has passed the link is refused as expired.
        t.app
            .db
            .execute(sql!(
                "UPDATE subscriptions SET current_period_end = $1 WHERE provider_subscription_id = $2",
                satchel::ids::now() - 8 * 86_400,
                &sub_ref
            ))
            .await
            .unwrap();
        let r = sub_ref.clone();
        in_tx(&t, |tx| async move {
            let ok = subs::on_deleted(&tx, &r, 500).await.unwrap();
            (tx, ok)
        })
        .await;
        let r = t.client.get(&link).send().await.unwrap();
        assert_eq!(r.status(), 410);
        assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "link_expired");

        // Unknown subscriptions are no-ops.
        assert!(
            !in_tx(&t, |tx| async move {
                let ok = subs::on_invoice_paid(&tx, "sub_unknown", 1).await.unwrap();
                (tx, ok)
            })
            .await
        );
    }
}
