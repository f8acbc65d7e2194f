//! Invoices and credit notes: issued with the payment and the refund, numbered without gaps
//! or duplicates per seller (also under concurrent checkouts), immutable once issued, linked
//! from the receipt, the order and the success page, and isolated per seller.

#![allow(clippy::unwrap_used)]

use satchel::db::Exec;
use satchel::sql;
use satchel::testing::{backends, TestApp};
use serde_json::{json, Value};

fn year() -> i32 {
    time::OffsetDateTime::now_utc().year()
}

async fn page(t: &TestApp, url: &str) -> (u16, String) {
    let r = t.client.get(url).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn seller_key(t: &TestApp, email: &str) -> String {
    if satchel::accounts::find_user(&t.app.db, email).await.unwrap().is_none() {
        satchel::accounts::create_seller_account(&t.app.db, email, "password123", "Rival", "seller")
            .await
            .unwrap();
    }
    satchel::accounts::create_api_key(&t.app.db, email, "test")
        .await
        .unwrap()
}

#[tokio::test]
async fn paid_orders_get_numbered_invoices_and_refunds_credit_notes() {
    for backend in backends().await {
        let t = TestApp::start_demo(backend).await;
        let order = t.buy_paid("demo-ebook", "reader@example.com").await;
        let url = order["invoice_url"]
            .as_str()
            .expect("paid order has an invoice_url")
            .to_string();
        let (status, html) = page(&t, &url).await;
        assert_eq!(status, 200, "{backend:?}");
        let number = format!("INV-{}-00001", year());
        for needle in [&number, "reader@example.com", "$19.00", "Demo", "Invoice", "Test mode"] {
            assert!(html.contains(needle), "{backend:?}: invoice lacks {needle:?}");
        }

        // The receipt links the same document.
        let (receipt,): (String,) = t
            .app
            .db
            .fetch_one(sql!("SELECT body_text FROM email_outbox WHERE kind = 'receipt'"))
            .await
            .unwrap();
        assert!(
            receipt.contains(&url),
            "{backend:?}: receipt links the invoice: {receipt}"
        );
        // And the success page.
        let id = order["order_id"].as_str().unwrap();
        let token = order["access_token"].as_str().unwrap();
        let (_, success) = page(&t, &t.url(&format!("/orders/{id}/success?token={token}"))).await;
        assert!(
            success.contains(&url.replace(&t.base_url, "")) || success.contains(&url),
            "{backend:?}"
        );

        // And the buyer's library, next to the purchase.
        let (cookie, _) = t.library_session("reader@example.com").await;
        let library = t
            .client
            .get(t.url("/library"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            library.contains(&url.replace(&t.base_url, "")) || library.contains(&url),
            "{backend:?}: library links the invoice"
        );

        // A second order takes the next number.
        let second = t.buy_paid("demo-templates", "other@example.com").await;
        let (_, html2) = page(&t, second["invoice_url"].as_str().unwrap()).await;
        assert!(html2.contains(&format!("INV-{}-00002", year())), "{backend:?}");

        // Fulfilling again (a duplicate confirmation) issues nothing new.
        let tx = t.app.db.begin().await.unwrap();
        assert!(!satchel::checkout::fulfill(&t.app, &tx, id, "test", None).await.unwrap());
        tx.commit().await.unwrap();
        assert_eq!(
            t.app.db.fetch_i64(sql!("SELECT COUNT(*) FROM invoices")).await.unwrap(),
            2,
            "{backend:?}"
        );

        // A partial refund issues a credit note that refers to the invoice.
        let key = seller_key(&t, "demo@satchel.test").await;
        let r = t
            .client
            .post(t.url(&format!("/api/v1/orders/{id}/refund")))
            .bearer_auth(&key)
            .json(&json!({"amount": 500, "reason": "Wrong format"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{backend:?}: {}", r.text().await.unwrap());
        let after = t.order(&order).await;
        let docs = after["invoices"].as_array().unwrap();
        assert_eq!(docs.len(), 2, "{backend:?}: {after}");
        assert_eq!(docs[1]["kind"], "credit_note");
        assert_eq!(docs[1]["total"], -500);
        assert_eq!(docs[1]["number"], format!("CN-{}-00001", year()));
        let (_, note) = page(&t, docs[1]["url"].as_str().unwrap()).await;
        for needle in ["Credit note", &number, "Wrong format", "-$5.00"] {
            assert!(note.contains(needle), "{backend:?}: credit note lacks {needle:?}");
        }
        let (refund_mail,): (String,) = t
            .app
            .db
            .fetch_one(sql!("SELECT body_text FROM email_outbox WHERE kind = 'refund'"))
            .await
            .unwrap();
        assert!(refund_mail.contains(docs[1]["url"].as_str().unwrap()), "{backend:?}");

        // A refused refund (more than remains) issues no credit note.
        let r = t
            .client
            .post(t.url(&format!("/api/v1/orders/{id}/refund")))
            .bearer_auth(&key)
            .json(&json!({"amount": 99_999}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422, "{backend:?}");
        assert_eq!(
            t.app
                .db
                .fetch_i64(sql!("SELECT COUNT(*) FROM invoices WHERE kind = 'credit_note'"))
                .await
                .unwrap(),
            1,
            "{backend:?}"
        );

        // Forged or altered links find nothing.
        let (s, _) = page(&t, &format!("{url}x")).await;
        assert_eq!(s, 404, "{backend:?}");
        let (s, _) = page(&t, &t.url("/invoices/i1.inv_X.k.garbage")).await;
        assert_eq!(s, 404, "{backend:?}");
    }
}

#[tokio::test]
async fn settings_print_on_new_invoices_only_and_sellers_are_isolated() {
    for backend in backends().await {
        let t = TestApp::start_demo(backend).await;
        let first = t.buy_paid("demo-ebook", "a@example.com").await;
        let key = seller_key(&t, "demo@satchel.test").await;
        let put = |body: Value| {
            t.client
                .put(t.url("/api/v1/seller/invoice-settings"))
                .bearer_auth(&key)
                .json(&body)
                .send()
        };
        // Bad input changes nothing.
        let r = put(json!({"prefix": "IN V!"})).await.unwrap();
        assert_eq!(r.status(), 422, "{backend:?}");
        assert_eq!(r.json::<Value>().await.unwrap()["error"]["field"], "prefix");
        let r = put(json!({"legal_nam": "typo"})).await.unwrap();
        assert_eq!(r.status(), 400, "{backend:?}: unknown fields are refused");
        let got: Value = t
            .client
            .get(t.url("/api/v1/seller/invoice-settings"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(got["prefix"], "", "{backend:?}");

        let r = put(json!({"legal_name": "Demo Books Ltd", "address": ["1 Paper Lane", "  ", "Leeds LS1 1AA"],
                           "tax_id": "GB123456789", "prefix": "db", "footer": "Thank you for supporting independent work."}))
        .await
        .unwrap();
        assert_eq!(r.status(), 200, "{backend:?}");
        let saved: Value = r.json().await.unwrap();
        assert_eq!(saved["prefix"], "DB");
        assert_eq!(saved["address"], json!(["1 Paper Lane", "Leeds LS1 1AA"]));

        let second = t.buy_paid("demo-ebook", "b@example.com").await;
        let (_, html) = page(&t, second["invoice_url"].as_str().unwrap()).await;
        for needle in [
            "Demo Books Ltd",
            "1 Paper Lane",
            "GB123456789",
            &format!("DB-{}-00001", year()),
            "independent work",
        ] {
            assert!(html.contains(needle), "{backend:?}: {needle:?}");
        }
        // The first invoice was issued before: it stays exactly as it was.
        let (_, old) = page(&t, first["invoice_url"].as_str().unwrap()).await;
        assert!(
            !old.contains("Demo Books Ltd") && old.contains(&format!("INV-{}-00001", year())),
            "{backend:?}"
        );

        // Seller lists: the demo seller sees both, a rival sees none.
        let mine: Value = t
            .client
            .get(t.url("/api/v1/seller/invoices"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(mine["items"].as_array().unwrap().len(), 2, "{backend:?}");
        assert!(mine["next_cursor"].is_null());
        let rival = seller_key(&t, "rival@example.com").await;
        let theirs: Value = t
            .client
            .get(t.url("/api/v1/seller/invoices"))
            .bearer_auth(&rival)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(theirs["items"], json!([]), "{backend:?}");
        let r = t
            .client
            .get(t.url("/api/v1/seller/invoice-settings"))
            .bearer_auth(&rival)
            .send()
            .await
            .unwrap();
        assert_eq!(r.json::<Value>().await.unwrap()["legal_name"], "", "{backend:?}");
        let r = t.client.get(t.url("/api/v1/seller/invoices")).send().await.unwrap();
        assert_eq!(r.status(), 401, "{backend:?}");
    }
}

#[tokio::test]
async fn concurrent_checkouts_take_consecutive_numbers() {
    for backend in backends().await {
        let t = std::sync::Arc::new(TestApp::start_demo(backend).await);
        let mut orders = Vec::new();
        for i in 0..20 {
            orders.push(t.purchase("demo-ebook", &format!("buyer{i}@example.com")).await);
        }
        let tasks: Vec<_> = orders
            .into_iter()
            .map(|o| {
                let t = t.clone();
                tokio::spawn(async move { t.pay(&o).await })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let rows: Vec<(String,)> = t
            .app
            .db
            .fetch_all(sql!(
                "SELECT number FROM invoices WHERE kind = 'invoice' ORDER BY number"
            ))
            .await
            .unwrap();
        let expected: Vec<String> = (1..=20).map(|n| format!("INV-{}-{n:05}", year())).collect();
        assert_eq!(
            rows.into_iter().map(|r| r.0).collect::<Vec<_>>(),
            expected,
            "{backend:?}"
        );
    }
}
