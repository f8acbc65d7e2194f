//! The core path on both backends: test-mode purchase → paid → counted download → ranged
//! delivery; limits exact under concurrency; refunds stop links already issued.

#![allow(clippy::unwrap_used)]

use satchel::db::Exec;
use satchel::sql;
use satchel::testing::{backends, TestApp};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

async fn buy(t: &TestApp, slug: &str, body: Value) -> reqwest::Response {
    t.client
        .post(t.url(&format!("/api/v1/products/{slug}/purchase")))
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// Buys `slug` in test mode and returns the paid order JSON.
async fn buy_paid(t: &TestApp, slug: &str) -> Value {
    let r = buy(t, slug, json!({"email": "Buyer@Example.com"})).await;
    assert_eq!(r.status(), 201);
    let order: Value = r.json().await.unwrap();
    assert_eq!(order["status"], "pending");
    let checkout = order["checkout_url"].as_str().unwrap().to_string();
    let page = t.client.get(&checkout).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("TEST MODE"));
    let r = t
        .client
        .post(&checkout)
        .form(&[("outcome", "succeeded")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let success = t.url(r.headers()["location"].to_str().unwrap());
    let html = t.client.get(&success).send().await.unwrap().text().await.unwrap();
    assert!(html.contains("/api/v1/downloads/"), "{html}");
    let token = order["access_token"].as_str().unwrap();
    let r = t
        .client
        .get(t.url(&format!("/api/v1/orders/{}", order["order_id"].as_str().unwrap())))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test]
async fn test_mode_purchase_to_ranged_download_on_both_backends() {
    for backend in backends().await {
        let t = TestApp::start_demo(backend).await;
        // The original bytes are what this test follows; buyers' marked copies of the
        // (watermarked) demo ebook are covered in tests/watermark.rs.
        t.app
            .db
            .execute(satchel::sql!(
                "UPDATE products SET watermark_policy = 'none' WHERE slug = 'demo-ebook'"
            ))
            .await
            .unwrap();
        let order = buy_paid(&t, "demo-ebook").await;
        assert_eq!(order["status"], "paid", "{backend:?}");
        assert_eq!(order["email"], "buyer@example.com");
        assert_eq!(order["total"], 1900);
        let link = order["items"][0]["download_url"].as_str().unwrap().to_string();

        // The file is the one published, byte for byte.
        let product: Value = t
            .client
            .get(t.url("/api/v1/products/demo-ebook"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let sha = product["current_version"]["files"][0]["sha256"]
            .as_str()
            .unwrap()
            .to_string();
        let r = t.client.get(&link).send().await.unwrap();
        assert_eq!(r.status(), 302);
        let file_url = r.headers()["location"].to_str().unwrap().to_string();
        let r = t.client.get(&file_url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "application/pdf");
        assert!(r.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains("indie-makers-handbook.pdf"));
        let etag = r.headers()["etag"].to_str().unwrap().to_string();
        let body = r.bytes().await.unwrap();
        assert_eq!(hex::encode(Sha256::digest(&body)), sha);

        // Ranges, suffixes, 416 and If-Range on the delivery URL — none of them count.
        let r = t
            .client
            .get(&file_url)
            .header("range", "bytes=0-7")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 206);
        assert_eq!(r.headers()["content-range"], format!("bytes 0-7/{}", body.len()));
        assert_eq!(r.bytes().await.unwrap().as_ref(), &body[..8]);
        let r = t
            .client
            .get(&file_url)
            .header("range", "bytes=-6")
            .send()
            .await
            .unwrap();
        assert_eq!(r.bytes().await.unwrap().as_ref(), &body[body.len() - 6..]);
        let r = t
            .client
            .get(&file_url)
            .header("range", format!("bytes={}-", body.len()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 416);
        assert_eq!(r.headers()["content-range"], format!("bytes */{}", body.len()));
        let r = t
            .client
            .get(&file_url)
            .header("range", "bytes=10-19")
            .header("if-range", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 206);
        let r = t
            .client
            .get(&file_url)
            .header("range", "bytes=10-19")
            .header("if-range", "\"stale\"")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "a changed validator gets the whole file");
        let r = t
            .client
            .get(&file_url)
            .header("range", "bytes=5-1,x")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "a malformed range is ignored");
        let remaining = t
            .app
            .db
            .fetch_i64(sql!(
                "SELECT remaining FROM download_grants WHERE order_id = $1",
                order["order_id"].as_str().unwrap()
            ))
            .await
            .unwrap();
        assert_eq!(remaining, 4, "{backend:?}: only the redemption counted");

        // Four more redemptions, then the limit.
        for _ in 0..4 {
            assert_eq!(t.client.get(&link).send().await.unwrap().status(), 302);
        }
        let r = t.client.get(&link).send().await.unwrap();
        assert_eq!(r.status(), 403);
        let err: Value = r.json().await.unwrap();
        assert_eq!(err["error"]["code"], "download_limit_reached");

        // Forged, truncated and garbage tokens: 404, nothing written.
        let events = t
            .app
            .db
            .fetch_i64(sql!("SELECT COUNT(*) FROM download_events"))
            .await
            .unwrap();
        let token = link.rsplit('/').next().unwrap();
        let mut forged = token.to_string();
        let last = forged.pop().unwrap();
        forged.push(if last == 'A' { 'B' } else { 'A' });
        for bad in [
            forged.as_str(),
            &token[..token.len() - 3],
            "garbage",
            &"d1.".repeat(200),
        ] {
            let r = t
                .client
                .get(t.url(&format!("/api/v1/downloads/{bad}")))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 404, "{bad}");
        }
        assert_eq!(
            t.app
                .db
                .fetch_i64(sql!("SELECT COUNT(*) FROM download_events"))
                .await
                .unwrap(),
            events
        );

        // A refund stops the already-issued delivery URL at once.
        t.app
            .db
            .execute(sql!(
                "UPDATE orders SET status = 'refunded' WHERE id = $1",
                order["order_id"].as_str().unwrap()
            ))
            .await
            .unwrap();
        let r = t.client.get(&file_url).send().await.unwrap();
        assert_eq!(r.status(), 403);
        let err: Value = r.json().await.unwrap();
        assert_eq!(err["error"]["code"], "access_revoked");
    }
}

#[tokio::test]
async fn concurrent_redemptions_of_a_grant_of_5_yield_exactly_5() {
    for backend in backends().await {
        let t = TestApp::start_demo(backend).await;
        let order = buy_paid(&t, "demo-templates").await;
        let link = order["items"][0]["download_url"].as_str().unwrap().to_string();
        let mut tasks = Vec::new();
        for _ in 0..500 {
            let (c, l) = (t.client.clone(), link.clone());
            tasks.push(tokio::spawn(async move {
                c.get(&l).send().await.unwrap().status().as_u16()
            }));
        }
        let mut ok = 0;
        let mut limited = 0;
        for task in tasks {
            match task.await.unwrap() {
                302 => ok += 1,
                403 => limited += 1,
                other => panic!("{backend:?}: unexpected status {other}"),
            }
        }
        assert_eq!((ok, limited), (5, 495), "{backend:?}");
        let events = t
            .app
            .db
            .fetch_i64(sql!("SELECT COUNT(*) FROM download_events"))
            .await
            .unwrap();
        assert_eq!(events, 5);
        // The five events are the grant's list, each once (no fork, no skip under the race).
        let gid = t.grant_of(order["order_id"].as_str().unwrap()).await;
        assert_eq!(t.event_list(&gid).await.len(), 5, "{backend:?}");
    }
}

/// Two instances on one database (the scaled-out shape) settle starts of one grant at once,
/// each with its own batcher: exactly the grant's limit counts, and its events stay one
/// list with each of them on it once (no fork where both moved the head together).
#[tokio::test]
async fn two_instances_racing_on_one_grant_keep_its_count_and_its_list() {
    for backend in backends().await {
        // One client hammering one grant is what velocity detection is for: off here, so
        // only the count refuses.
        let t = TestApp::start_demo_with(backend, |c| {
            c.abuse.soft_starts_per_hour = 0;
            c.abuse.suspend_starts_per_hour = 0;
        })
        .await;
        let other = t.second_instance().await;
        let order = buy_paid(&t, "demo-templates").await;
        let gid = t.grant_of(order["order_id"].as_str().unwrap()).await;
        t.app
            .db
            .execute(sql!(
                "UPDATE download_grants SET max_downloads = 40, remaining = 40 WHERE id = $1",
                &gid
            ))
            .await
            .unwrap();
        let link = order["items"][0]["download_url"].as_str().unwrap().to_string();
        let path = link.strip_prefix(&t.base_url).unwrap().to_string();
        let mut tasks = Vec::new();
        for i in 0..200 {
            let base = if i % 2 == 0 { t.base_url.clone() } else { other.clone() };
            let (c, url) = (t.client.clone(), format!("{base}{path}"));
            tasks.push(tokio::spawn(async move {
                let r = c.get(&url).send().await.unwrap();
                let status = r.status().as_u16();
                let body: Value = if status == 302 {
                    Value::Null
                } else {
                    r.json().await.unwrap()
                };
                (status, body["error"]["code"].as_str().unwrap_or_default().to_string())
            }));
        }
        let mut ok = 0;
        for task in tasks {
            match task.await.unwrap() {
                (302, _) => ok += 1,
                (403, code) if code == "download_limit_reached" => {}
                other => panic!("{backend:?}: unexpected answer {other:?}"),
            }
        }
        assert_eq!(ok, 40, "{backend:?}: exactly the limit, across both instances");
        assert_eq!(t.event_list(&gid).await.len(), 40, "{backend:?}");
    }
}

#[tokio::test]
async fn free_products_bad_input_and_order_access() {
    for backend in backends().await {
        let t = TestApp::start_demo(backend).await;
        let r = buy(&t, "demo-free", json!({"email": "fan@example.com"})).await;
        assert_eq!(r.status(), 201);
        let order: Value = r.json().await.unwrap();
        assert_eq!(order["status"], "paid", "{backend:?}: free orders need no payment");
        assert!(order["checkout_url"].is_null());
        assert!(order["items"][0]["download_url"]
            .as_str()
            .unwrap()
            .contains("/api/v1/downloads/"));

        let before = t.app.db.fetch_i64(sql!("SELECT COUNT(*) FROM orders")).await.unwrap();
        for (slug, body, status, code) in [
            ("no-such-product", json!({"email": "a@example.com"}), 404, "not_found"),
            ("demo-ebook", json!({"email": "not-an-email"}), 422, "invalid_email"),
            (
                "demo-ebook",
                json!({"email": "a@example.com", "quantity": 0}),
                422,
                "invalid_quantity",
            ),
            (
                "demo-ebook",
                json!({"email": "a@example.com", "quantity": 100000}),
                422,
                "invalid_quantity",
            ),
            (
                "demo-ebook",
                json!({"email": "a@example.com", "amount": 1}),
                422,
                "amount_not_allowed",
            ),
            (
                "demo-ebook",
                json!({"email": "a@example.com", "surprise": 1}),
                400,
                "invalid_json",
            ),
        ] {
            let r = buy(&t, slug, body.clone()).await;
            assert_eq!(r.status(), status, "{body}");
            let err: Value = r.json().await.unwrap();
            assert_eq!(err["error"]["code"], code, "{body}");
        }
        assert_eq!(
            t.app.db.fetch_i64(sql!("SELECT COUNT(*) FROM orders")).await.unwrap(),
            before,
            "bad input creates nothing"
        );

        let id = order["order_id"].as_str().unwrap();
        assert_eq!(
            t.client
                .get(t.url(&format!("/api/v1/orders/{id}")))
                .send()
                .await
                .unwrap()
                .status(),
            401
        );
        assert_eq!(
            t.client
                .get(t.url(&format!("/api/v1/orders/{id}")))
                .bearer_auth("wrong")
                .send()
                .await
                .unwrap()
                .status(),
            401
        );

        // A declined test payment leaves the order failed, with no grants.
        let r = buy(&t, "demo-album", json!({"email": "b@example.com"})).await;
        let pending: Value = r.json().await.unwrap();
        let checkout = pending["checkout_url"].as_str().unwrap();
        let r = t
            .client
            .post(checkout)
            .form(&[("outcome", "failed")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303);
        let grants = t
            .app
            .db
            .fetch_i64(sql!(
                "SELECT COUNT(*) FROM download_grants WHERE order_id = $1",
                pending["order_id"].as_str().unwrap()
            ))
            .await
            .unwrap();
        assert_eq!(grants, 0);
        // Paying the failed order later does nothing; fulfilling twice issues one grant.
        let r = t
            .client
            .post(checkout)
            .form(&[("outcome", "succeeded")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303);
        let status: (String,) = t
            .app
            .db
            .fetch_one(sql!(
                "SELECT status FROM orders WHERE id = $1",
                pending["order_id"].as_str().unwrap()
            ))
            .await
            .unwrap();
        assert_eq!(status.0, "paid");
    }
}

#[tokio::test]
async fn fulfillment_is_idempotent() {
    for backend in backends().await {
        let t = TestApp::start_demo(backend).await;
        let r = buy(&t, "demo-ebook", json!({"email": "c@example.com"})).await;
        let pending: Value = r.json().await.unwrap();
        let id = pending["order_id"].as_str().unwrap();
        let mut did = 0;
        for _ in 0..3 {
            let tx = t.app.db.begin().await.unwrap();
            if satchel::checkout::fulfill(&t.app, &tx, id, "test", Some("pi_1"))
                .await
                .unwrap()
            {
                did += 1;
            }
            tx.commit().await.unwrap();
        }
        assert_eq!(did, 1);
        let grants = t
            .app
            .db
            .fetch_i64(sql!("SELECT COUNT(*) FROM download_grants WHERE order_id = $1", id))
            .await
            .unwrap();
        assert_eq!(grants, 1, "{backend:?}");
        let payments = t
            .app
            .db
            .fetch_i64(sql!("SELECT COUNT(*) FROM payments WHERE order_id = $1", id))
            .await
            .unwrap();
        assert_eq!(payments, 1);
    }
}

/// Group commit: starts of many grants arriving together settle in shared transactions, and
/// each grant still counts exactly its limit — with IP binding, unknown files and refusals
/// mixed into the same batches.
#[tokio::test]
async fn concurrent_starts_across_many_grants_settle_exactly() {
    for backend in backends().await {
        let t = TestApp::start_demo_with(backend, |c| c.server.trust_forwarded_for = true).await;
        let mut links = Vec::new();
        for i in 0..16 {
            let o = t.buy_paid("demo-templates", &format!("batch{i}@example.com")).await;
            links.push(o["items"][0]["download_url"].as_str().unwrap().to_string());
        }
        let grant_of = |link: &str| link.rsplit('/').next().unwrap().split('.').nth(1).unwrap().to_string();
        // A quarter of the grants bind to the first network that uses them.
        for link in &links[..4] {
            t.app
                .db
                .execute(sql!(
                    "UPDATE download_grants SET ip_policy = 'bind_first' WHERE id = $1",
                    grant_of(link)
                ))
                .await
                .unwrap();
        }
        let mut tasks = Vec::new();
        for (g, link) in links.iter().enumerate() {
            for k in 0..12 {
                let (c, l) = (t.client.clone(), link.clone());
                let ip = format!("10.0.{}.{}", k % 2, g);
                tasks.push(tokio::spawn(async move {
                    let r = c.get(&l).header("x-forwarded-for", ip).send().await.unwrap();
                    (g, r.status().as_u16())
                }));
            }
            // A file the product does not have: refused, counts nothing.
            let (c, l) = (t.client.clone(), format!("{link}?file=missing.zip"));
            tasks.push(tokio::spawn(async move {
                (usize::MAX, c.get(&l).send().await.unwrap().status().as_u16())
            }));
        }
        let mut ok = vec![0; links.len()];
        for task in tasks {
            match task.await.unwrap() {
                (usize::MAX, status) => assert!(
                    status == 404 || status == 403,
                    "{backend:?}: missing file gave {status}"
                ),
                (g, 302) => ok[g] += 1,
                (_, 403) => {}
                (_, other) => panic!("{backend:?}: unexpected status {other}"),
            }
        }
        assert_eq!(
            ok,
            vec![5; links.len()],
            "{backend:?}: every grant counts exactly its limit"
        );
        for (g, link) in links.iter().enumerate() {
            let id = grant_of(link);
            let (remaining, events): (i64, i64) = t
                .app
                .db
                .fetch_one(sql!(
                    "SELECT remaining, (SELECT COUNT(*) FROM download_events e WHERE e.grant_id = g.id) FROM download_grants g WHERE id = $1",
                    &id
                ))
                .await
                .unwrap();
            assert_eq!((remaining, events), (0, 5), "{backend:?} grant {g}");
            assert_eq!(t.event_list(&id).await.len(), 5, "{backend:?} grant {g}: its list");
            let prefixes = t
                .app
                .db
                .fetch_i64(sql!(
                    "SELECT COUNT(DISTINCT ip_prefix) FROM download_events WHERE grant_id = $1",
                    &id
                ))
                .await
                .unwrap();
            if g < 4 {
                assert_eq!(prefixes, 1, "{backend:?}: a bound grant is only used from its network");
            }
        }
    }
}

/// The batcher remembers each version's files; a publish must still be delivered by the very
/// next start (the decrement returns the version it saw), and a file that the current
/// version does not have is a 404 that counts nothing.
#[tokio::test]
async fn a_new_version_is_delivered_at_once_and_a_missing_file_counts_nothing() {
    for backend in backends().await {
        let t = TestApp::start_demo(backend).await;
        t.app
            .db
            .execute(sql!(
                "UPDATE products SET watermark_policy = 'none' WHERE slug = 'demo-ebook'"
            ))
            .await
            .unwrap();
        let key = satchel::accounts::create_api_key(&t.app.db, "demo@satchel.test", "ci")
            .await
            .unwrap();
        let order = t.buy_paid("demo-ebook", "versions@example.com").await;
        let link = order["items"][0]["download_url"].as_str().unwrap().to_string();
        let remaining = || async {
            t.app
                .db
                .fetch_i64(sql!(
                    "SELECT remaining FROM download_grants WHERE order_id = $1",
                    order["order_id"].as_str().unwrap()
                ))
                .await
                .unwrap()
        };
        let fetch = |url: String| {
            let client = t.client.clone();
            async move {
                let r = client.get(&url).send().await.unwrap();
                assert_eq!(r.status(), 302, "{backend:?}: {url}");
                let file = client
                    .get(r.headers()["location"].to_str().unwrap())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(file.status(), 200);
                let name = file.headers()["content-disposition"].to_str().unwrap().to_string();
                (name, file.bytes().await.unwrap())
            }
        };
        // The first start reads version 1's files (and the batcher remembers them).
        let (name, _) = fetch(link.clone()).await;
        assert!(name.contains("indie-makers-handbook.pdf"), "{name}");
        assert_eq!(remaining().await, 4);

        let product = satchel::catalog::find_product(&t.app.db, "demo-ebook")
            .await
            .unwrap()
            .unwrap();
        let new_pdf = satchel::demo_files::ebook_pdf("Second edition");
        let form = reqwest::multipart::Form::new().text("version", "2.0.0").part(
            "file",
            reqwest::multipart::Part::bytes(new_pdf.clone())
                .file_name("second.pdf")
                .mime_str("application/pdf")
                .unwrap(),
        );
        let r = t
            .client
            .post(t.url(&format!("/api/v1/products/{}/versions", product.id)))
            .bearer_auth(&key)
            .multipart(form)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{backend:?}");

        // The very next start delivers the new version, through the same link.
        let (name, body) = fetch(link.clone()).await;
        assert!(name.contains("second.pdf"), "{backend:?}: {name}");
        assert_eq!(body.as_ref(), new_pdf.as_slice());
        assert_eq!(remaining().await, 3);
        // Its event names the file delivered (read off the product row, not looked up).
        let logged: (String, i64) = t
            .app
            .db
            .fetch_one(sql!(
                "SELECT f.name, e.bytes FROM download_events e JOIN download_grants g ON g.id = e.grant_id
                 JOIN files f ON f.id = e.file_id WHERE g.order_id = $1 ORDER BY e.id DESC LIMIT 1",
                order["order_id"].as_str().unwrap()
            ))
            .await
            .unwrap();
        assert_eq!(logged, ("second.pdf".to_string(), new_pdf.len() as i64), "{backend:?}");

        // Version 1's file is no longer current: 404, and nothing counted or logged.
        let events = || async {
            t.app
                .db
                .fetch_i64(sql!(
                    "SELECT COUNT(*) FROM download_events e JOIN download_grants g ON g.id = e.grant_id WHERE g.order_id = $1",
                    order["order_id"].as_str().unwrap()
                ))
                .await
                .unwrap()
        };
        assert_eq!(events().await, 2);
        for name in ["indie-makers-handbook.pdf", "nope.bin"] {
            let r = t.client.get(format!("{link}?file={name}")).send().await.unwrap();
            assert_eq!(r.status(), 404, "{backend:?}: {name}");
            assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "not_found");
        }
        assert_eq!(remaining().await, 3, "{backend:?}: a missing file counts nothing");
        assert_eq!(events().await, 2);
        let (name, _) = fetch(format!("{link}?file=second.pdf")).await;
        assert!(name.contains("second.pdf"));
        assert_eq!(remaining().await, 2);
    }
}
