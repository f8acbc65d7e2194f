//! The buyer's library: magic-link sign-in, purchases with files and keys, "updated" badges.

#![allow(clippy::unwrap_used)]

use satchel::db::Exec;
use satchel::sql;
use satchel::testing::{backends, TestApp};
use serde_json::{json, Value};

/// The sign-in link from the newest magic-link email.
async fn magic_link(t: &TestApp) -> String {
    t.drain_jobs().await;
    let (text,): (String,) = t
        .app
        .db
        .fetch_one(sql!(
            "SELECT body_text FROM email_outbox WHERE kind = 'magic_link' ORDER BY id DESC LIMIT 1"
        ))
        .await
        .unwrap();
    text.split_whitespace()
        .find(|w| w.contains("/auth/magic/"))
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn magic_link_sign_in_and_the_library() {
    for backend in backends().await {
        let t = TestApp::start_demo(backend).await;
        let order = t.buy_paid("demo-app", "lib@example.com").await;
        t.buy_paid("demo-ebook", "lib@example.com").await;

        // Asking reveals nothing: same answer for a buyer and a stranger; only the buyer gets mail.
        let (s1, a1) = t
            .post_json("/api/v1/library/login", &json!({"email": "LIB@example.com"}))
            .await;
        let (s2, a2) = t
            .post_json("/api/v1/library/login", &json!({"email": "stranger@example.com"}))
            .await;
        assert_eq!((s1, s2), (202, 202));
        assert_eq!(a1, a2);
        let link = magic_link(&t).await;
        let sent = t
            .app
            .db
            .fetch_i64(sql!("SELECT COUNT(*) FROM email_outbox WHERE kind = 'magic_link'"))
            .await
            .unwrap();
        assert_eq!(sent, 1, "{backend:?}");

        // Opening the link (as a mail scanner or link preview would, with GET or HEAD)
        // shows who it signs in and spends nothing; the page's button (a POST) signs in.
        for _ in 0..2 {
            let page = t.client.get(&link).header("accept", "text/html").send().await.unwrap();
            assert_eq!(page.status(), 200, "{backend:?}");
            let html = page.text().await.unwrap();
            assert!(
                html.contains("lib@example.com") && html.contains("id=\"sign-in\""),
                "{html}"
            );
            assert_eq!(t.client.head(&link).send().await.unwrap().status(), 200);
        }
        let r = t.client.post(&link).send().await.unwrap();
        assert_eq!(r.status(), 303);
        assert_eq!(r.headers()["location"], "/library");
        let session = r.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string();
        assert_eq!(t.client.post(&link).send().await.unwrap().status(), 401, "single use");
        assert_eq!(
            t.client.get(&link).send().await.unwrap().status(),
            401,
            "used: no button"
        );

        let lib: Value = t
            .client
            .get(t.url("/api/v1/library"))
            .header("cookie", &session)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let items = lib["items"].as_array().unwrap();
        assert_eq!(items.len(), 2, "{backend:?}: {lib}");
        let app_item = items.iter().find(|i| i["order_id"] == order["order_id"]).unwrap();
        assert_eq!(app_item["licenses"][0]["key"], order["items"][0]["license_key"]);
        assert_eq!(app_item["downloads"]["remaining"], 10);
        assert_eq!(
            app_item["current_version"]["files"][0]["sha256"]
                .as_str()
                .unwrap()
                .len(),
            64
        );
        assert_eq!(app_item["updated"], false);
        let html = t
            .client
            .get(t.url("/library"))
            .header("cookie", &session)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(html.contains("Pixel Polish") && html.contains("License key"), "{html}");

        // A new version marks the purchase updated until the buyer downloads again.
        let product = satchel::catalog::find_product(&t.app.db, "demo-app")
            .await
            .unwrap()
            .unwrap();
        t.app
            .db
            .execute(sql!(
                "UPDATE product_versions SET created_at = created_at - 100 WHERE product_id = $1",
                &product.id
            ))
            .await
            .unwrap();
        t.app
            .db
            .execute(sql!(
                "UPDATE orders SET paid_at = paid_at - 50 WHERE id = $1",
                order["order_id"].as_str().unwrap()
            ))
            .await
            .unwrap();
        satchel::catalog::insert_version(&t.app.db, &product.id, "1.1.0", "Faster", &[])
            .await
            .unwrap();
        let lib: Value = t
            .client
            .get(t.url("/api/v1/library"))
            .header("cookie", &session)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let app_item = lib["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["order_id"] == order["order_id"])
            .unwrap()
            .clone();
        assert_eq!(app_item["updated"], true, "{backend:?}");
        assert_eq!(app_item["current_version"]["version"], "1.1.0");

        // Not signed in / expired links.
        assert_eq!(
            t.client.get(t.url("/api/v1/library")).send().await.unwrap().status(),
            401
        );
        assert!(t
            .client
            .get(t.url("/library"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
            .contains("Email me a sign-in link"));
        t.post_json("/api/v1/library/login", &json!({"email": "lib@example.com"}))
            .await;
        let link = magic_link(&t).await;
        t.app
            .db
            .execute(sql!("UPDATE magic_links SET expires_at = 1 WHERE used_at IS NULL"))
            .await
            .unwrap();
        assert_eq!(t.client.get(&link).send().await.unwrap().status(), 401, "expired");
        assert_eq!(t.client.post(&link).send().await.unwrap().status(), 401, "expired");
        assert_eq!(
            t.post_json("/api/v1/library/login", &json!({"email": "nope"})).await.0,
            422
        );
    }
}
