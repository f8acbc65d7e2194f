//! Affiliates end to end, and the reconciliation check after a randomized event storm.

#![allow(clippy::unwrap_used)]

use satchel::affiliates::{self, NewAffiliate};
use satchel::db::Exec;
use satchel::refunds::{RefundOutcome, RefundRequest};
use satchel::sql;
use satchel::testing::{backends, TestApp};
use serde_json::{json, Value};

async fn setup(backend: satchel::db::Backend, window_days: i64) -> (TestApp, String) {
    let t = TestApp::start_demo_with(backend, |c| c.affiliates.refund_window_days = window_days).await;
    let seller = t.demo_seller().await;
    (t, seller)
}

fn new_aff(email: &str, code: &str) -> NewAffiliate {
    NewAffiliate {
        email: email.into(),
        code: Some(code.into()),
        commission_percent: None,
        product_id: None,
    }
}

#[tokio::test]
async fn click_purchase_pending_payable_paid() {
    for backend in backends().await {
        let (t, seller) = setup(backend, 0).await;
        let a = affiliates::create(&t.app.db, &seller, &new_aff("ally@example.com", "ally"))
            .await
            .unwrap();
        assert_eq!(a.commission_bps, 3000, "30 % by default");

        // The click sets the cookie and counts.
        let r = t.client.get(t.url("/r/ALLY?to=/p/demo-ebook")).send().await.unwrap();
        assert_eq!(r.status(), 303);
        assert_eq!(r.headers()["location"], "/p/demo-ebook");
        let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
        assert!(
            cookie.starts_with("satchel_ref=ALLY;")
                && cookie.contains("Max-Age=2592000")
                && cookie.contains("HttpOnly")
        );
        assert_eq!(
            t.client
                .get(t.url("/r/ALLY?to=//evil.example"))
                .send()
                .await
                .unwrap()
                .headers()["location"],
            "/",
            "no open redirect"
        );

        // The cookie survives into the order; a 10 % discount lowers the base.
        satchel::checkout::create_discount(
            &t.app.db,
            &seller,
            &serde_json::from_value(json!({"code": "TEN", "kind": "percent", "amount": 10})).unwrap(),
        )
        .await
        .unwrap();
        let r = t
            .client
            .post(t.url("/api/v1/checkout"))
            .header("cookie", "satchel_ref=ALLY")
            .json(&json!({"email": "buyer@example.com", "items": [{"product_id": "demo-app"}], "discount_code": "TEN"}))
            .send()
            .await
            .unwrap();
        let order: Value = r.json().await.unwrap();
        t.client
            .post(order["checkout_url"].as_str().unwrap())
            .form(&[("outcome", "succeeded")])
            .send()
            .await
            .unwrap();
        let (amount, status): (i64, String) = t
            .app
            .db
            .fetch_one(sql!("SELECT amount, status FROM commissions"))
            .await
            .unwrap();
        assert_eq!(
            (amount, status.as_str()),
            (4410 * 3000 / 10_000, "pending"),
            "{backend:?}: 30 % of the net 44.10"
        );

        // After the refund window (0 days here) the scheduled job makes it payable.
        t.drain_jobs().await;
        satchel::scheduler::tick(&t.app).await.unwrap();
        t.drain_jobs().await;
        let e = affiliates::earnings(&t.app.db, &a.id).await.unwrap();
        assert_eq!((e.clicks, e.sales, e.pending, e.payable, e.paid), (2, 1, 0, 1323, 0));
        let csv = affiliates::payable_csv(&t.app.db, &seller).await.unwrap();
        assert!(csv.contains("\"ally@example.com\",ALLY,USD,1323,\"$13.23\",1"), "{csv}");
        assert_eq!(affiliates::mark_paid(&t.app.db, &seller).await.unwrap(), 1);
        assert_eq!(affiliates::earnings(&t.app.db, &a.id).await.unwrap().paid, 1323);

        // Ignored without failing the purchase: unknown code, self-referral, another store's code.
        let (other, _) =
            satchel::accounts::create_seller_account(&t.app.db, "other@example.com", "password123", "Other", "seller")
                .await
                .unwrap();
        affiliates::create(&t.app.db, &other.id, &new_aff("x@example.com", "FOREIGN"))
            .await
            .unwrap();
        for (email, code) in [
            ("b2@example.com", "NOPE"),
            ("ally@example.com", "ALLY"),
            ("b3@example.com", "FOREIGN"),
        ] {
            let r = t
                .client
                .post(t.url("/api/v1/products/demo-ebook/purchase"))
                .json(&json!({"email": email, "affiliate_code": code}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201, "{code}");
            let o: Value = r.json().await.unwrap();
            let (aff,): (Option<String>,) = t
                .app
                .db
                .fetch_one(sql!(
                    "SELECT affiliate_id FROM orders WHERE id = $1",
                    o["order_id"].as_str().unwrap()
                ))
                .await
                .unwrap();
            assert!(aff.is_none(), "{code} must not be credited");
        }
        assert_eq!(
            affiliates::create(&t.app.db, &seller, &new_aff("z@example.com", "ally"))
                .await
                .unwrap_err()
                .status(),
            409
        );
    }
}

/// A tiny deterministic generator so a failing storm can be replayed.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

#[tokio::test]
async fn reconciliation_holds_after_a_randomized_event_storm() {
    for backend in backends().await {
        let (t, seller) = setup(backend, 30).await;
        affiliates::create(&t.app.db, &seller, &new_aff("ally@example.com", "ALLY"))
            .await
            .unwrap();
        let products = ["demo-ebook", "demo-templates", "demo-app", "demo-album", "demo-single"];
        let mut rng = Lcg(0x05a7_c4e1 + backend.name().len() as u64);
        let mut orders: Vec<String> = Vec::new();
        for i in 0..24 {
            let n = 1 + rng.next(3) as usize;
            let mut items = Vec::new();
            for k in 0..n {
                let p = products[(rng.next(5) as usize + k) % products.len()];
                if !items.iter().any(|v: &Value| v["product_id"] == p) {
                    items.push(json!({"product_id": p}));
                }
            }
            let affiliate = (rng.next(2) == 0).then_some("ALLY");
            let tx = t.app.db.begin().await.unwrap();
            let lines: Vec<satchel::checkout::CartLine> = serde_json::from_value(Value::Array(items)).unwrap();
            let (o, _) =
                satchel::checkout::create_order(&t.app, &tx, &format!("s{i}@example.com"), &lines, None, affiliate)
                    .await
                    .unwrap();
            tx.commit().await.unwrap();
            orders.push(o.id);
        }
        // Events: payment confirmations (some twice, some never, some declined), refunds with
        // provider ids delivered twice in shuffled order.
        let mut events: Vec<(u8, usize, i64)> = Vec::new();
        for (idx, _) in orders.iter().enumerate() {
            match rng.next(6) {
                0 => events.push((2, idx, 0)), // declined
                1 => {}                        // abandoned
                _ => {
                    for _ in 0..=rng.next(2) {
                        events.push((1, idx, 0)); // paid, maybe delivered again
                    }
                    if rng.next(2) == 0 {
                        let amount = if rng.next(2) == 0 {
                            0
                        } else {
                            100 + rng.next(900) as i64
                        };
                        events.push((3, idx, amount)); // refund (0 = full)
                        events.push((3, idx, amount)); // the same refund delivered again
                    }
                }
            }
        }
        for i in (1..events.len()).rev() {
            let j = rng.next(i as u64 + 1) as usize;
            events.swap(i, j);
        }
        for (kind, idx, amount) in events {
            let id = &orders[idx];
            let tx = t.app.db.begin().await.unwrap();
            let ok = match kind {
                1 => satchel::checkout::fulfill(&t.app, &tx, id, "test", Some("pi"))
                    .await
                    .is_ok(),
                2 => satchel::checkout::fail(&tx, id).await.is_ok(),
                _ => {
                    let req = RefundRequest {
                        amount: (amount > 0).then_some(amount),
                        reason: String::new(),
                        items: vec![],
                    };
                    // A refund that arrives before the payment is refused and retried by the sender later;
                    // refusals must leave no trace.
                    matches!(
                        satchel::refunds::apply(&t.app, &tx, id, &req, "stripe", Some(&format!("re_{idx}_{amount}")))
                            .await,
                        Ok(RefundOutcome::Applied { .. } | RefundOutcome::AlreadyApplied)
                    )
                }
            };
            if ok {
                tx.commit().await.unwrap();
            }
        }
        let violations = satchel::reconcile::check(&t.app.db).await.unwrap();
        assert!(violations.is_empty(), "{backend:?}: {violations:#?}");
        let paid = t
            .app
            .db
            .fetch_i64(sql!(
                "SELECT COUNT(*) FROM orders WHERE status IN ('paid', 'partially_refunded', 'refunded')"
            ))
            .await
            .unwrap();
        let refunded = t.app.db.fetch_i64(sql!("SELECT COUNT(*) FROM refunds")).await.unwrap();
        assert!(
            paid > 5 && refunded > 1,
            "the storm exercised payments ({paid}) and refunds ({refunded})"
        );

        // The check does catch a broken invariant.
        t.app
            .db
            .execute(sql!("UPDATE download_grants SET status = 'active'"))
            .await
            .unwrap();
        t.app
            .db
            .execute(sql!(
                "UPDATE orders SET refunded_total = refunded_total + 1 WHERE id = $1",
                &orders[0]
            ))
            .await
            .unwrap();
        assert!(!satchel::reconcile::check(&t.app.db).await.unwrap().is_empty());
    }
}
