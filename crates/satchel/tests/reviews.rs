//! Verified-buyer reviews and ratings over HTTP, on SQLite and PostgreSQL: who may write
//! (a paid, not-refunded buyer of the product), one per buyer and product (a second write
//! edits), bad input refused with nothing written, ratings in the catalog JSON and on pages,
//! a refund hiding the buyer's review, the seller hiding/showing (isolated per seller), paging.

#![allow(clippy::unwrap_used)]

use satchel::db::Exec;
use satchel::sql;
use satchel::testing::{backends, TestApp};
use serde_json::{json, Value};

async fn put_review(t: &TestApp, session: &(String, String), product: &str, body: &Value) -> (u16, Value) {
    let r = t
        .client
        .put(t.url(&format!("/api/v1/library/reviews/{product}")))
        .header("cookie", &session.0)
        .header("x-csrf-token", &session.1)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn public(t: &TestApp, product: &str, query: &str) -> (u16, Value) {
    let r = t
        .client
        .get(t.url(&format!("/api/v1/products/{product}/reviews{query}")))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn review_count(t: &TestApp) -> i64 {
    t.app.db.fetch_i64(sql!("SELECT COUNT(*) FROM reviews")).await.unwrap()
}

async fn page(t: &TestApp, path: &str) -> String {
    t.client
        .get(t.url(path))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn only_paid_buyers_review_once_and_bad_input_changes_nothing() {
    for backend in backends().await {
        let t = TestApp::start_demo(backend).await;
        let order = t.buy_paid("demo-app", "ann@example.com").await;
        t.buy_paid("demo-ebook", "ben@example.com").await;
        let ann = t.library_session("ann@example.com").await;
        let ben = t.library_session("ben@example.com").await;
        let good = json!({"rating": 4, "title": "Solid <b>tool</b>", "body": "Fast.\nNo fuss.", "display_name": "Ann"});

        // Not signed in, no CSRF token, a wrong one: refused, nothing written.
        let r = t
            .client
            .put(t.url("/api/v1/library/reviews/demo-app"))
            .json(&good)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        for token in [None, Some("not-the-token")] {
            let mut req = t
                .client
                .put(t.url("/api/v1/library/reviews/demo-app"))
                .header("cookie", &ann.0)
                .json(&good);
            if let Some(tok) = token {
                req = req.header("x-csrf-token", tok);
            }
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 403, "{backend:?} {token:?}");
            assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "csrf_failed");
        }
        // Bad input, each naming its field.
        for (body, status, field) in [
            (json!({"rating": 0}), 422, Some("rating")),
            (json!({"rating": 6, "title": "x"}), 422, Some("rating")),
            (json!({"rating": -3}), 422, Some("rating")),
            (json!({"rating": 5, "title": "t".repeat(121)}), 422, Some("title")),
            (json!({"rating": 5, "body": "b".repeat(5001)}), 422, Some("body")),
            (
                json!({"rating": 5, "display_name": "n".repeat(61)}),
                422,
                Some("display_name"),
            ),
            (json!({"rating": "five"}), 400, None),
            (json!({"rating": 4.5}), 400, None),
            (json!({"rating": 5, "stars": 5}), 400, None),
            (json!({"title": "no rating"}), 400, None),
        ] {
            let (s, v) = put_review(&t, &ann, "demo-app", &body).await;
            assert_eq!(s, status, "{backend:?} {body}: {v}");
            if let Some(f) = field {
                assert_eq!(v["error"]["field"], f, "{v}");
            }
        }
        // A buyer of something else, an unknown product.
        let (s, v) = put_review(&t, &ben, "demo-app", &good).await;
        assert_eq!((s, v["error"]["code"].as_str()), (403, Some("not_a_buyer")), "{v}");
        assert_eq!(put_review(&t, &ann, "no-such-product", &good).await.0, 404);
        assert_eq!(review_count(&t).await, 0, "{backend:?}: nothing written");

        // The buyer's review: 201, then a second write edits it (200, same id).
        let (s, first) = put_review(&t, &ann, "demo-app", &good).await;
        assert_eq!(s, 201, "{first}");
        assert_eq!(
            (first["rating"].as_i64(), first["author"].as_str()),
            (Some(4), Some("Ann"))
        );
        assert!(first.get("email").is_none(), "the email is never public");
        let (s, second) = put_review(&t, &ann, "demo-app", &json!({"rating": 2, "body": "Crashed twice."})).await;
        assert_eq!(s, 200);
        assert_eq!(second["id"], first["id"]);
        assert_eq!(
            (second["rating"].as_i64(), second["author"].as_str()),
            (Some(2), Some("Verified buyer"))
        );
        assert_eq!(review_count(&t).await, 1);
        // Concurrent writes by the same buyer still leave one review.
        let bodies: Vec<Value> = (1..=5).map(|n| json!({ "rating": n })).collect();
        let futs: Vec<_> = bodies.iter().map(|b| put_review(&t, &ann, "demo-app", b)).collect();
        let statuses: Vec<u16> = futures::future::join_all(futs).await.into_iter().map(|r| r.0).collect();
        assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
        assert_eq!(review_count(&t).await, 1, "{backend:?}");
        put_review(&t, &ann, "demo-app", &good).await;

        // Public: the list, the rating in the catalog JSON, the product page (escaped).
        let (s, list) = public(&t, "demo-app", "").await;
        assert_eq!(s, 200);
        assert_eq!(list["items"].as_array().unwrap().len(), 1);
        assert_eq!(list["items"][0]["title"], "Solid <b>tool</b>");
        assert_eq!(list["rating"], json!({"average": 4.0, "count": 1}));
        let product: Value = t
            .client
            .get(t.url("/api/v1/products/demo-app"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(product["rating"], json!({"average": 4.0, "count": 1}));
        let catalog: Value = t
            .client
            .get(t.url("/api/v1/products?limit=100"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let items = catalog["items"].as_array().unwrap();
        let app_item = items.iter().find(|p| p["slug"] == "demo-app").unwrap();
        assert_eq!(app_item["rating"], json!({"average": 4.0, "count": 1}));
        let ebook = items.iter().find(|p| p["slug"] == "demo-ebook").unwrap();
        assert_eq!(ebook["rating"], json!({"average": null, "count": 0}));
        let html = page(&t, "/p/demo-app").await;
        assert!(
            html.contains("Solid &#60;b&#62;tool&#60;/b&#62;") && !html.contains("<b>tool</b>"),
            "escaped"
        );
        assert!(html.contains("1 verified review"));
        let html = page(&t, "/products").await;
        assert!(html.contains("Rated 4.0 out of 5 from 1 review"));

        // A refund hides the buyer's review (and its rating); they can no longer write one.
        let seller = t.demo_seller().await;
        satchel::refunds::seller_refund(
            &t.app,
            &seller,
            order["order_id"].as_str().unwrap(),
            &satchel::refunds::RefundRequest {
                amount: None,
                reason: "asked".into(),
                items: vec![],
            },
        )
        .await
        .unwrap();
        let (_, list) = public(&t, "demo-app", "").await;
        assert_eq!(list["items"].as_array().unwrap().len(), 0, "{backend:?}");
        assert_eq!(list["rating"]["count"], 0);
        assert!(!page(&t, "/p/demo-app").await.contains("Solid &#60;b&#62;"));
        let (s, v) = put_review(&t, &ann, "demo-app", &good).await;
        assert_eq!((s, v["error"]["code"].as_str()), (403, Some("not_a_buyer")));
        // Their library still shows what they wrote, but no longer offers a review form.
        let lib: Value = t
            .client
            .get(t.url("/api/v1/library"))
            .header("cookie", &ann.0)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let item = lib["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["order_id"] == order["order_id"])
            .unwrap();
        assert_eq!(item["can_review"], false);
        assert_eq!(item["review"]["title"], "Solid <b>tool</b>");
        // Buying it again makes the same review count again (one per buyer and product).
        t.buy_paid("demo-app", "ann@example.com").await;
        let (_, list) = public(&t, "demo-app", "").await;
        assert_eq!(list["rating"]["count"], 1, "{backend:?}");
        assert_eq!(review_count(&t).await, 1);
    }
}

#[tokio::test]
async fn sellers_hide_and_show_only_their_own_reviews() {
    for backend in backends().await {
        let t = TestApp::start_demo(backend).await;
        t.buy_paid("demo-templates", "cat@example.com").await;
        let cat = t.library_session("cat@example.com").await;
        let (s, review) = put_review(&t, &cat, "demo-templates", &json!({"rating": 1, "title": "Spam spam"})).await;
        assert_eq!(s, 201);
        let id = review["id"].as_str().unwrap();
        let mine = satchel::accounts::create_api_key(&t.app.db, "demo@satchel.test", "ci")
            .await
            .unwrap();
        satchel::accounts::create_seller_account(&t.app.db, "rival@example.com", "password123", "Rival", "seller")
            .await
            .unwrap();
        let theirs = satchel::accounts::create_api_key(&t.app.db, "rival@example.com", "ci")
            .await
            .unwrap();

        // A rival seller cannot see, hide or show it.
        for action in ["hide", "show"] {
            let r = t
                .client
                .post(t.url(&format!("/api/v1/seller/reviews/{id}/{action}")))
                .bearer_auth(&theirs)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 404, "{backend:?} {action}");
        }
        let rival_list: Value = t
            .client
            .get(t.url("/api/v1/seller/reviews"))
            .bearer_auth(&theirs)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(rival_list["items"], json!([]));
        assert_eq!(
            public(&t, "demo-templates", "").await.1["rating"]["count"],
            1,
            "still shown"
        );
        // Without credentials: 401.
        let r = t
            .client
            .post(t.url(&format!("/api/v1/seller/reviews/{id}/hide")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);

        // The seller hides it: gone from the list, the rating and the page; the seller still lists it.
        let r = t
            .client
            .post(t.url(&format!("/api/v1/seller/reviews/{id}/hide")))
            .bearer_auth(&mine)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.json::<Value>().await.unwrap()["hidden"], true);
        let (_, list) = public(&t, "demo-templates", "").await;
        assert_eq!(
            (
                list["items"].as_array().unwrap().len(),
                list["rating"]["count"].as_i64()
            ),
            (0, Some(0))
        );
        assert!(!page(&t, "/p/demo-templates").await.contains("Spam spam"));
        let seller_list: Value = t
            .client
            .get(t.url("/api/v1/seller/reviews"))
            .bearer_auth(&mine)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let row = &seller_list["items"][0];
        assert_eq!(
            (row["id"].as_str(), row["hidden"].as_bool(), row["shown"].as_bool()),
            (Some(id), Some(true), Some(false))
        );
        assert_eq!(row["email"], "cat@example.com");
        // Editing it does not un-hide it; the library says it is hidden.
        put_review(&t, &cat, "demo-templates", &json!({"rating": 2, "title": "Spam spam"})).await;
        assert_eq!(public(&t, "demo-templates", "").await.1["rating"]["count"], 0);
        let html = t
            .client
            .get(t.url("/library"))
            .header("cookie", &cat.0)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(html.contains("Hidden by the store"), "{backend:?}");
        // Shown again.
        let r = t
            .client
            .post(t.url(&format!("/api/v1/seller/reviews/{id}/show")))
            .bearer_auth(&mine)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            public(&t, "demo-templates", "").await.1["rating"],
            json!({"average": 2.0, "count": 1})
        );
        // Unknown review: 404.
        let r = t
            .client
            .post(t.url("/api/v1/seller/reviews/rev_nope/hide"))
            .bearer_auth(&mine)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
    }
}

#[tokio::test]
async fn reviews_page_by_cursor_and_bad_paging_is_a_400() {
    for backend in backends().await {
        let t = TestApp::start_demo(backend).await;
        for (i, stars) in [5, 4, 4, 3, 5, 1, 5, 4].iter().enumerate() {
            let email = format!("r{i}@example.com");
            t.buy_paid("demo-ebook", &email).await;
            let s = t.library_session(&email).await;
            let (st, _) = put_review(
                &t,
                &s,
                "demo-ebook",
                &json!({"rating": stars, "title": format!("Review {i}")}),
            )
            .await;
            assert_eq!(st, 201);
        }
        let (_, p1) = public(&t, "demo-ebook", "?limit=5").await;
        assert_eq!(p1["items"].as_array().unwrap().len(), 5);
        assert_eq!(p1["items"][0]["title"], "Review 7", "newest first");
        assert_eq!(p1["rating"], json!({"average": 3.9, "count": 8}), "31 / 8 = 3.875");
        let cursor = p1["next_cursor"].as_str().unwrap();
        let (_, p2) = public(&t, "demo-ebook", &format!("?limit=5&cursor={cursor}")).await;
        assert_eq!(p2["items"].as_array().unwrap().len(), 3);
        assert!(p2["next_cursor"].is_null());
        assert_eq!(p2["items"][2]["title"], "Review 0");
        for q in ["?limit=0", "?limit=101", "?limit=x"] {
            let (s, v) = public(&t, "demo-ebook", q).await;
            assert_eq!(s, 400, "{q}: {v}");
        }
        assert_eq!(public(&t, "no-such-product", "").await.0, 404);
        // Every new endpoint is in the OpenAPI document.
        let spec: Value = t
            .client
            .get(t.url("/api/openapi.json"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for path in [
            "/api/v1/products/{id}/reviews",
            "/api/v1/library/reviews/{product_id}",
            "/api/v1/seller/reviews",
            "/api/v1/seller/reviews/{id}/hide",
            "/api/v1/seller/reviews/{id}/show",
            "/api/v1/library/subscriptions/{id}/cancel",
            "/api/v1/library/subscriptions/{id}/resume",
            "/api/v1/library/devices/{activation_id}/deactivate",
            "/api/v1/affiliate/login",
            "/api/v1/affiliate/me",
            "/api/v1/affiliate/programs/{id}/sales",
            "/affiliate",
            "/library",
            "/media/sellers/{seller_id}/logo",
        ] {
            assert!(
                spec["paths"].get(path).is_some(),
                "{path} missing from /api/openapi.json"
            );
        }
        // The product page shows the first six and links to the rest; that page lists 20.
        let html = page(&t, "/p/demo-ebook").await;
        assert_eq!(html.matches("class=\"review\"").count(), 6);
        assert!(html.contains("See all 8 reviews") && html.contains("href=\"/p/demo-ebook/reviews\""));
        let html = page(&t, "/p/demo-ebook/reviews").await;
        assert_eq!(html.matches("class=\"review\"").count(), 8, "{backend:?}");
        assert_eq!(
            t.client.get(t.url("/p/nope/reviews")).send().await.unwrap().status(),
            404
        );
    }
}

#[tokio::test]
async fn the_library_review_form_keeps_input_and_checks_csrf() {
    for backend in backends().await {
        let t = TestApp::start_demo(backend).await;
        let order = t.buy_paid("demo-album", "dee@example.com").await;
        let product = order["items"][0]["product_id"].as_str().unwrap().to_string();
        let dee = t.library_session("dee@example.com").await;
        let post = |form: Vec<(&'static str, String)>| {
            let t = &t;
            let cookie = dee.0.clone();
            let product = product.clone();
            async move {
                t.client
                    .post(t.url(&format!("/library/reviews/{product}")))
                    .header("cookie", cookie)
                    .header("accept", "text/html")
                    .form(&form)
                    .send()
                    .await
                    .unwrap()
            }
        };
        // CSRF missing or wrong: 403, nothing written.
        let r = post(vec![("rating", "5".into())]).await;
        assert_eq!(r.status(), 403, "{backend:?}");
        let r = post(vec![("csrf", "nope".into()), ("rating", "5".into())]).await;
        assert_eq!(r.status(), 403);
        // No star chosen: the page again with the text kept and the message by the field.
        let r = post(vec![
            ("csrf", dee.1.clone()),
            ("rating", "0".into()),
            ("title", "Lovely loops".into()),
            ("body", "Warm <tape> sound".into()),
        ])
        .await;
        assert_eq!(r.status(), 422);
        let html = r.text().await.unwrap();
        assert!(html.contains("Choose from 1 to 5 stars."), "{html}");
        assert!(html.contains("value=\"Lovely loops\"") && html.contains("Warm &#60;tape&#62; sound"));
        assert!(
            html.contains("<details class=\"review-edit\" open>"),
            "the form stays open"
        );
        assert_eq!(review_count(&t).await, 0);
        // Saved: back to the library with a notice, at the product.
        let r = post(vec![
            ("csrf", dee.1.clone()),
            ("rating", "5".into()),
            ("title", "Lovely loops".into()),
        ])
        .await;
        assert_eq!(r.status(), 303);
        assert_eq!(
            r.headers()["location"].to_str().unwrap(),
            format!("/library?done=reviewed#p-{product}")
        );
        let r = post(vec![("csrf", dee.1.clone()), ("rating", "4".into())]).await;
        assert_eq!(
            r.headers()["location"].to_str().unwrap(),
            format!("/library?done=review_updated#p-{product}")
        );
        assert_eq!(review_count(&t).await, 1);
        let html = t
            .client
            .get(t.url("/library?done=review_updated"))
            .header("cookie", &dee.0)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(html.contains("Your review is updated.") && html.contains("Edit your review"));
        // A newer purchase of the same product refunded: the older one still stands, so the
        // form stays (on the newest purchase), and the review stays public.
        let again = t.buy_paid("demo-album", "dee@example.com").await;
        let seller = t.demo_seller().await;
        satchel::refunds::seller_refund(
            &t.app,
            &seller,
            again["order_id"].as_str().unwrap(),
            &satchel::refunds::RefundRequest {
                amount: None,
                reason: String::new(),
                items: vec![],
            },
        )
        .await
        .unwrap();
        let html = t
            .client
            .get(t.url("/library"))
            .header("cookie", &dee.0)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(html.contains(&format!("id=\"review-form-{product}\"")), "{backend:?}");
        assert_eq!(public(&t, "demo-album", "").await.1["rating"]["count"], 1);
        // Unknown notice codes are never echoed.
        let html = t
            .client
            .get(t.url("/library?done=%3Cscript%3E"))
            .header("cookie", &dee.0)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(!html.contains("<script>") && !html.contains("role=\"status\""));
    }
}
