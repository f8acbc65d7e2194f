//! Search paging across the PostgreSQL search window (the newest rows are checked first, the
//! GIN index answers for older matches) and the SQLite FTS walk: every match exactly once,
//! newest first, across pages — on both databases.

#![allow(clippy::unwrap_used)]

use satchel::db::{Exec, Query};
use satchel::testing::{backends, TestApp};
use serde_json::Value;

async fn bulk(t: &TestApp, seller: &str, from: usize, n: usize, word: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut i = 0;
    while i < n {
        let rows = (n - i).min(500);
        let mut q = Query::new(
            "INSERT INTO products (id, seller_id, slug, title, price, currency, kind, status, created_at, updated_at) VALUES "
                .to_string(),
        );
        for r in 0..rows {
            let k = from + i + r;
            let id = satchel::ids::new_id("prd");
            ids.push(id.clone());
            let vals = [
                q.arg(id),
                q.arg(seller),
                q.arg(format!("s-{k}")),
                q.arg(format!("{word} item {k}")),
                q.arg(100i64),
                q.arg("USD"),
                q.arg("one_time"),
                q.arg("published"),
                q.arg(1i64),
                q.arg(1i64),
            ];
            q.push_sql(&format!("{}({})", if r == 0 { "" } else { ", " }, vals.join(", ")));
        }
        t.app.db.execute(q).await.unwrap();
        i += rows;
    }
    ids
}

#[tokio::test]
async fn search_pages_cover_every_match_once_beyond_the_window() {
    for backend in backends().await {
        let label = backend.name();
        let t = TestApp::start(backend).await;
        let (seller, _) = t.seller_with_key("bulk@example.com").await;
        let mut expected = bulk(&t, &seller, 0, 30, "zebra").await;
        let window = usize::try_from(satchel::catalog::PG_SEARCH_WINDOW).unwrap();
        bulk(&t, &seller, 100, window + 10, "plain").await;
        expected.extend(bulk(&t, &seller, 50_000, 3, "zebra").await);
        expected.reverse();

        let mut seen = Vec::new();
        let mut cursor = String::new();
        loop {
            let r = t
                .client
                .get(t.url(&format!("/api/v1/products?q=zeb&limit=20&cursor={cursor}")))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{label}");
            let v: Value = r.json().await.unwrap();
            seen.extend(
                v["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p["id"].as_str().unwrap().to_string()),
            );
            match v["next_cursor"].as_str() {
                Some(c) => cursor = c.to_string(),
                None => break,
            }
        }
        assert_eq!(
            seen, expected,
            "{label}: every match once, newest first, across the window"
        );
        let v: Value = t
            .client
            .get(t.url("/api/v1/products?q=nothinglikethis"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["items"].as_array().unwrap().len(), 0);
    }
}

#[tokio::test]
async fn a_suspended_store_disappears_from_the_storefront_and_comes_back() {
    for backend in satchel::testing::backends().await {
        let t = satchel::testing::TestApp::start_demo(backend).await;
        let count = |t: &satchel::testing::TestApp| {
            let url = t.url("/api/v1/products?limit=100");
            let client = t.client.clone();
            async move {
                let v: serde_json::Value = client.get(url).send().await.unwrap().json().await.unwrap();
                v["items"].as_array().unwrap().len()
            }
        };
        let before = count(&t).await;
        assert!(before >= 7, "{backend:?}");
        let seller = t.demo_seller().await;
        t.app
            .db
            .execute(satchel::sql!(
                "UPDATE sellers SET status = 'suspended' WHERE id = $1",
                &seller
            ))
            .await
            .unwrap();
        assert_eq!(count(&t).await, 0, "{backend:?}: the catalog hides a suspended store");
        let r = t.client.get(t.url("/api/v1/products/demo-ebook")).send().await.unwrap();
        assert_eq!(r.status(), 404, "{backend:?}");
        let r = t.client.get(t.url("/p/demo-ebook")).send().await.unwrap();
        assert_eq!(r.status(), 404, "{backend:?}");
        let (status, _) = t
            .post_json(
                "/api/v1/products/demo-ebook/purchase",
                &serde_json::json!({"email": "x@example.com"}),
            )
            .await;
        assert_eq!(status, 404, "{backend:?}: nothing can be bought");
        let r = t.client.get(t.url("/api/v1/products?q=handbook")).send().await.unwrap();
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["items"].as_array().unwrap().len(), 0, "{backend:?}: search too");
        t.app
            .db
            .execute(satchel::sql!(
                "UPDATE sellers SET status = 'active' WHERE id = $1",
                &seller
            ))
            .await
            .unwrap();
        assert_eq!(count(&t).await, before, "{backend:?}");
    }
}
