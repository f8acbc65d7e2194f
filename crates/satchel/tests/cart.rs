//! Carts, bundles and discount codes: totals fixed at purchase, the right grants, and clear
//! refusals that create nothing.

#![allow(clippy::unwrap_used)]

use satchel::checkout::{create_discount, NewDiscount};
use satchel::db::Exec;
use satchel::sql;
use satchel::testing::{backends, TestApp};
use serde_json::{json, Value};

fn discount(code: &str, kind: &str, amount: i64) -> NewDiscount {
    NewDiscount {
        code: code.into(),
        kind: kind.into(),
        amount,
        currency: (kind == "fixed").then(|| "USD".to_string()),
        product_id: None,
        max_redemptions: None,
        once_per_customer: false,
        expires_at: None,
    }
}

async fn checkout(t: &TestApp, body: Value) -> (u16, Value) {
    let r = t
        .client
        .post(t.url("/api/v1/checkout"))
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn a_cart_with_a_bundle_and_a_discount_gets_the_right_totals_and_grants() {
    for backend in backends().await {
        let t = TestApp::start_demo(backend).await;
        let seller = t.demo_seller().await;
        let ebook = satchel::catalog::find_product(&t.app.db, "demo-ebook")
            .await
            .unwrap()
            .unwrap();
        let app = satchel::catalog::find_product(&t.app.db, "demo-app")
            .await
            .unwrap()
            .unwrap();
        let album = satchel::catalog::find_product(&t.app.db, "demo-album")
            .await
            .unwrap()
            .unwrap();
        let bundle: satchel::catalog::NewProduct = serde_json::from_value(json!({
            "title": "Starter bundle", "slug": "starter-bundle", "price": 2500, "currency": "USD", "kind": "bundle",
            "status": "published", "bundle_products": [ebook.id, album.id, app.id],
        }))
        .unwrap();
        satchel::catalog::create_product(&t.app.db, &seller, bundle)
            .await
            .unwrap();
        create_discount(&t.app.db, &seller, &discount("FIVE", "fixed", 500))
            .await
            .unwrap();

        let (status, order) = checkout(
            &t,
            json!({"email": "b@example.com", "items": [{"product_id": "starter-bundle"}, {"product_id": "demo-templates"}], "discount_code": "five"}),
        )
        .await;
        assert_eq!(status, 201, "{order}");
        assert_eq!(order["total"], 2500 + 2900 - 500, "{backend:?}");
        let (sub, disc): (i64, i64) = t
            .app
            .db
            .fetch_one(sql!(
                "SELECT subtotal, discount_total FROM orders WHERE id = $1",
                order["order_id"].as_str().unwrap()
            ))
            .await
            .unwrap();
        assert_eq!((sub, disc), (5400, 500));
        let line_discounts = t
            .app
            .db
            .fetch_i64(sql!(
                "SELECT CAST(SUM(discount) AS BIGINT) FROM order_items WHERE order_id = $1",
                order["order_id"].as_str().unwrap()
            ))
            .await
            .unwrap();
        assert_eq!(line_discounts, 500, "line discounts add up to the order's");
        t.pay(&order).await;

        let grants: Vec<(String,)> = t
            .app
            .db
            .fetch_all(sql!(
                "SELECT p.slug FROM download_grants g JOIN products p ON p.id = g.product_id WHERE g.order_id = $1 ORDER BY p.slug",
                order["order_id"].as_str().unwrap()
            ))
            .await
            .unwrap();
        let slugs: Vec<&str> = grants.iter().map(|g| g.0.as_str()).collect();
        assert_eq!(
            slugs,
            vec!["demo-album", "demo-app", "demo-ebook", "demo-templates"],
            "{backend:?}: bundle members each granted"
        );
        // The licensed bundle member gets its key, shown on the order.
        let keys = t
            .app
            .db
            .fetch_i64(sql!(
                "SELECT COUNT(*) FROM license_keys WHERE order_id = $1",
                order["order_id"].as_str().unwrap()
            ))
            .await
            .unwrap();
        assert_eq!(keys, 1);
        let paid = t.order(&order).await;
        let with_key: Vec<&Value> = paid["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["license_key"].is_string())
            .collect();
        assert_eq!(with_key.len(), 1);
        assert!(with_key[0]["license_key"].as_str().unwrap().starts_with("PXL-"));
        let (redeemed,): (i64,) = t
            .app
            .db
            .fetch_one(sql!("SELECT redemptions FROM discount_codes WHERE code = 'FIVE'"))
            .await
            .unwrap();
        assert_eq!(redeemed, 1);

        // Percent codes are spread across lines and rounded exactly.
        create_discount(&t.app.db, &seller, &discount("TENOFF", "percent", 10))
            .await
            .unwrap();
        let (_, o) = checkout(&t, json!({"email": "c@example.com", "items": [{"product_id": "demo-ebook"}, {"product_id": "demo-templates", "quantity": 2}], "discount_code": "TENOFF"})).await;
        assert_eq!(o["total"], (1900 + 5800) - 770);
    }
}

#[tokio::test]
async fn bad_carts_and_codes_are_refused_with_the_field_named_and_nothing_created() {
    for backend in backends().await {
        let t = TestApp::start_demo(backend).await;
        let seller = t.demo_seller().await;
        let eur: satchel::catalog::NewProduct = serde_json::from_value(
            json!({"title": "Euro thing", "slug": "euro", "price": 900, "currency": "EUR", "status": "published"}),
        )
        .unwrap();
        satchel::catalog::create_product(&t.app.db, &seller, eur).await.unwrap();
        let mut expired = discount("OLD", "percent", 50);
        expired.expires_at = Some(1);
        create_discount(&t.app.db, &seller, &expired).await.unwrap();
        let mut once = discount("ONCE", "percent", 50);
        once.max_redemptions = Some(1);
        create_discount(&t.app.db, &seller, &once).await.unwrap();
        let app_id = satchel::catalog::find_product(&t.app.db, "demo-app")
            .await
            .unwrap()
            .unwrap()
            .id;
        let mut scoped = discount("APPONLY", "percent", 20);
        scoped.product_id = Some(app_id);
        create_discount(&t.app.db, &seller, &scoped).await.unwrap();

        // ONCE gets used up by a paid order.
        let (_, o) = checkout(
            &t,
            json!({"email": "first@example.com", "items": [{"product_id": "demo-ebook"}], "discount_code": "ONCE"}),
        )
        .await;
        t.pay(&o).await;

        let before = t.app.db.fetch_i64(sql!("SELECT COUNT(*) FROM orders")).await.unwrap();
        for (body, status, code, field) in [
            (
                json!({"email": "a@example.com", "items": []}),
                422,
                "invalid_items",
                "items",
            ),
            (
                json!({"email": "a@example.com", "items": [{"product_id": "demo-ebook"}, {"product_id": "euro"}]}),
                422,
                "mixed_currencies",
                "items[1]",
            ),
            (
                json!({"email": "a@example.com", "items": [{"product_id": "demo-ebook"}, {"product_id": "demo-ebook"}]}),
                422,
                "duplicate_item",
                "items[1]",
            ),
            (
                json!({"email": "a@example.com", "items": [{"product_id": "nope"}]}),
                404,
                "not_found",
                "items[0].product_id",
            ),
            (
                json!({"email": "a@example.com", "items": [{"product_id": "demo-ebook", "quantity": 0}]}),
                422,
                "invalid_quantity",
                "items[0].quantity",
            ),
            (
                json!({"email": "a@example.com", "items": [{"product_id": "demo-ebook"}], "discount_code": "OLD"}),
                422,
                "discount_expired",
                "discount_code",
            ),
            (
                json!({"email": "a@example.com", "items": [{"product_id": "demo-ebook"}], "discount_code": "ONCE"}),
                422,
                "discount_used_up",
                "discount_code",
            ),
            (
                json!({"email": "a@example.com", "items": [{"product_id": "demo-ebook"}], "discount_code": "APPONLY"}),
                422,
                "discount_not_applicable",
                "discount_code",
            ),
            (
                json!({"email": "a@example.com", "items": [{"product_id": "demo-ebook"}], "discount_code": "NOPE"}),
                422,
                "invalid_discount_code",
                "discount_code",
            ),
        ] {
            let (s, body_out) = checkout(&t, body.clone()).await;
            assert_eq!(s, status, "{backend:?} {body}: {body_out}");
            assert_eq!(body_out["error"]["code"], code, "{body}");
            assert_eq!(body_out["error"]["field"], field, "{body}");
        }
        assert_eq!(
            t.app.db.fetch_i64(sql!("SELECT COUNT(*) FROM orders")).await.unwrap(),
            before
        );

        // Bad discount definitions.
        assert_eq!(
            create_discount(&t.app.db, &seller, &discount("X", "percent", 150))
                .await
                .unwrap_err()
                .status(),
            422
        );
        assert_eq!(
            create_discount(&t.app.db, &seller, &discount("ONCE", "percent", 5))
                .await
                .unwrap_err()
                .status(),
            409
        );
    }
}
