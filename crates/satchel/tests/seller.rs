//! The seller API: sign-in, API keys, and isolation — every endpoint tried with a second
//! seller's credentials answers 404 and changes nothing.

#![allow(clippy::unwrap_used)]

use satchel::db::Exec;
use satchel::sql;
use satchel::testing::{backends, TestApp};
use serde_json::{json, Value};

async fn call(t: &TestApp, method: &str, path: &str, key: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = t.client.request(method.parse().unwrap(), t.url(path)).bearer_auth(key);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn sign_in_sessions_and_api_keys() {
    for backend in backends().await {
        let t = TestApp::start_demo(backend).await;
        for (email, pw) in [
            ("demo@satchel.test", "wrong-password"),
            ("nobody@satchel.test", "demo-password"),
        ] {
            let (s, e) = t
                .post_json("/api/v1/auth/login", &json!({"email": email, "password": pw}))
                .await;
            assert_eq!(
                (s, e["error"]["message"].as_str()),
                (401, Some("wrong email or password")),
                "same answer either way"
            );
        }
        let r = t
            .client
            .post(t.url("/api/v1/auth/login"))
            .json(&json!({"email": "Demo@Satchel.test", "password": "demo-password"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
        assert!(
            cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax") && !cookie.contains("Secure"),
            "{cookie}"
        );
        let session = cookie.split(';').next().unwrap().to_string();
        let r = t
            .client
            .get(t.url("/api/v1/seller/orders"))
            .header("cookie", &session)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{backend:?}");
        // Changes by session need the session's CSRF token; nothing happens without it.
        let csrf = {
            let r = t
                .client
                .post(t.url("/api/v1/auth/login"))
                .json(&json!({"email": "demo@satchel.test", "password": "demo-password"}))
                .send()
                .await
                .unwrap();
            let cookie = r.headers()["set-cookie"]
                .to_str()
                .unwrap()
                .split(';')
                .next()
                .unwrap()
                .to_string();
            let body: Value = r.json().await.unwrap();
            (cookie, body["csrf_token"].as_str().unwrap().to_string())
        };
        let discount = json!({"code": "CSRF10", "kind": "percent", "amount": 10});
        let r = t
            .client
            .post(t.url("/api/v1/discounts"))
            .header("cookie", &csrf.0)
            .json(&discount)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{backend:?}");
        assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "csrf_failed");
        let r = t
            .client
            .post(t.url("/api/v1/discounts"))
            .header("cookie", &csrf.0)
            .header("x-csrf-token", "not-the-token")
            .json(&discount)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{backend:?}");
        assert_eq!(
            t.app
                .db
                .fetch_i64(sql!("SELECT COUNT(*) FROM discount_codes"))
                .await
                .unwrap(),
            0,
            "{backend:?}: refused requests change nothing"
        );
        let r = t
            .client
            .post(t.url("/api/v1/discounts"))
            .header("cookie", &csrf.0)
            .header("x-csrf-token", &csrf.1)
            .json(&discount)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{backend:?}");
        let r = t
            .client
            .post(t.url("/api/v1/auth/logout"))
            .header("cookie", &session)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
        let r = t
            .client
            .get(t.url("/api/v1/seller/orders"))
            .header("cookie", &session)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "the session ended");

        let key = satchel::accounts::create_api_key(&t.app.db, "demo@satchel.test", "ci")
            .await
            .unwrap();
        assert_eq!(call(&t, "GET", "/api/v1/seller/orders", &key, None).await.0, 200);
        t.app
            .db
            .execute(sql!("UPDATE api_keys SET revoked_at = 1"))
            .await
            .unwrap();
        assert_eq!(call(&t, "GET", "/api/v1/seller/orders", &key, None).await.0, 401);
        assert_eq!(
            t.client
                .get(t.url("/api/v1/seller/orders"))
                .send()
                .await
                .unwrap()
                .status(),
            401
        );
    }
}

#[tokio::test]
async fn sellers_manage_orders_refunds_discounts_affiliates_licenses_and_only_their_own() {
    for backend in backends().await {
        let t = TestApp::start_demo(backend).await;
        let mine = satchel::accounts::create_api_key(&t.app.db, "demo@satchel.test", "ci")
            .await
            .unwrap();
        satchel::accounts::create_seller_account(&t.app.db, "rival@example.com", "password123", "Rival", "seller")
            .await
            .unwrap();
        let theirs = satchel::accounts::create_api_key(&t.app.db, "rival@example.com", "ci")
            .await
            .unwrap();

        let order = t.buy_paid("demo-app", "buyer@example.com").await;
        let id = order["order_id"].as_str().unwrap().to_string();
        let key = order["items"][0]["license_key"].as_str().unwrap().to_string();
        t.post_json(
            &format!("/api/v1/licenses/{key}/activate"),
            &json!({"device_fingerprint": "d1"}),
        )
        .await;
        let license_id: (String,) = t
            .app
            .db
            .fetch_one(sql!("SELECT id FROM license_keys WHERE license_key = $1", &key))
            .await
            .unwrap();
        let (_, d) = call(
            &t,
            "POST",
            "/api/v1/discounts",
            &mine,
            Some(json!({"code": "HALF", "kind": "percent", "amount": 50})),
        )
        .await;
        let discount_id = d["id"].as_str().unwrap().to_string();

        // The rival sees none of it and can change none of it.
        let (s, list) = call(&t, "GET", "/api/v1/seller/orders", &theirs, None).await;
        assert_eq!((s, list["items"].as_array().unwrap().len()), (200, 0), "{backend:?}");
        for (method, path, body) in [
            ("GET", format!("/api/v1/seller/orders/{id}"), None),
            ("POST", format!("/api/v1/orders/{id}/refund"), Some(json!({}))),
            ("POST", format!("/api/v1/orders/{id}/resend-receipt"), None),
            ("DELETE", format!("/api/v1/discounts/{discount_id}"), None),
            ("POST", format!("/api/v1/seller/licenses/{}/revoke", license_id.0), None),
        ] {
            let (s, e) = call(&t, method, &path, &theirs, body).await;
            assert_eq!(
                (s, e["error"]["code"].as_str()),
                (404, Some("not_found")),
                "{backend:?} {method} {path}"
            );
        }
        let (_, lic) = call(&t, "GET", "/api/v1/seller/licenses", &theirs, None).await;
        assert!(lic["items"].as_array().unwrap().is_empty());
        let (_, disc) = call(&t, "GET", "/api/v1/discounts", &theirs, None).await;
        assert!(disc["items"].as_array().unwrap().is_empty());
        let (status, o) = t
            .client
            .get(t.url(&format!("/api/v1/orders/{id}")))
            .bearer_auth(order["access_token"].as_str().unwrap())
            .send()
            .await
            .map(|r| (r.status().as_u16(), r))
            .unwrap();
        assert_eq!(status, 200);
        assert_eq!(o.json::<Value>().await.unwrap()["status"], "paid", "nothing changed");

        // The owner: orders, search, detail.
        let (_, list) = call(&t, "GET", "/api/v1/seller/orders?q=BUYER@example.com", &mine, None).await;
        assert_eq!(list["items"][0]["id"], id.as_str());
        let (_, detail) = call(&t, "GET", &format!("/api/v1/seller/orders/{id}"), &mine, None).await;
        assert_eq!(detail["items"][0]["license_key"], key.as_str());

        // License actions.
        let lic_path = |a: &str| format!("/api/v1/seller/licenses/{}/{a}", license_id.0);
        assert_eq!(
            call(&t, "POST", &lic_path("suspend"), &mine, None).await.1["status"],
            "suspended"
        );
        let (_, v) = t
            .post_json(
                &format!("/api/v1/licenses/{key}/validate"),
                &json!({"device_fingerprint": "d1"}),
            )
            .await;
        assert_eq!(v["code"], "SUSPENDED");
        assert_eq!(
            call(&t, "POST", &lic_path("reinstate"), &mine, None).await.1["status"],
            "active"
        );
        assert_eq!(
            call(&t, "POST", &lic_path("reset"), &mine, None).await.1["activations"],
            0
        );
        assert_eq!(call(&t, "POST", &lic_path("explode"), &mine, None).await.0, 422);

        // Affiliates.
        let (s, a) = call(
            &t,
            "POST",
            "/api/v1/affiliates",
            &mine,
            Some(json!({"email": "ally@example.com", "code": "ALLY"})),
        )
        .await;
        assert_eq!(s, 201);
        assert!(a["link"].as_str().unwrap().ends_with("/r/ALLY"));
        let r = t
            .client
            .get(t.url("/api/v1/affiliates/payable.csv"))
            .bearer_auth(&mine)
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["content-type"], "text/csv; charset=utf-8");
        assert!(r.text().await.unwrap().starts_with("affiliate_email,"));
        let (_, affs) = call(&t, "GET", "/api/v1/affiliates", &theirs, None).await;
        assert!(affs["items"].as_array().unwrap().is_empty());

        // Refunds: too much is a 422 that changes nothing; then a real refund revokes access.
        let (s, e) = call(
            &t,
            "POST",
            &format!("/api/v1/orders/{id}/refund"),
            &mine,
            Some(json!({"amount": 999_999})),
        )
        .await;
        assert_eq!(
            (s, e["error"]["code"].as_str()),
            (422, Some("amount_exceeds_remaining"))
        );
        let (s, r) = call(
            &t,
            "POST",
            &format!("/api/v1/orders/{id}/refund"),
            &mine,
            Some(json!({"reason": "customer asked"})),
        )
        .await;
        assert_eq!((s, r["status"].as_str()), (200, Some("refunded")), "{r}");
        let (_, v) = t
            .post_json(&format!("/api/v1/licenses/{key}/validate"), &json!({}))
            .await;
        assert_eq!(v["code"], "REVOKED");
        let (s, e) = call(
            &t,
            "POST",
            &format!("/api/v1/orders/{id}/refund"),
            &mine,
            Some(json!({})),
        )
        .await;
        assert_eq!((s, e["error"]["code"].as_str()), (409, Some("order_not_refundable")));
        assert_eq!(
            call(&t, "POST", &format!("/api/v1/orders/{id}/resend-receipt"), &mine, None)
                .await
                .0,
            409
        );
        assert!(satchel::reconcile::check(&t.app.db).await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn product_crud_validates_names_fields_and_isolates_sellers() {
    for backend in backends().await {
        let t = TestApp::start_demo(backend).await;
        let mine = satchel::accounts::create_api_key(&t.app.db, "demo@satchel.test", "ci")
            .await
            .unwrap();
        satchel::accounts::create_seller_account(&t.app.db, "rival@example.com", "password123", "Rival", "seller")
            .await
            .unwrap();
        let theirs = satchel::accounts::create_api_key(&t.app.db, "rival@example.com", "ci")
            .await
            .unwrap();

        let body = json!({"title": "Figma UI Kit", "price": 4900, "currency": "usd", "description": "Hi <script>alert(1)</script>", "tags": ["Figma", "UI"]});
        let (s, p) = call(&t, "POST", "/api/v1/products", &mine, Some(body)).await;
        assert_eq!(
            (s, p["slug"].as_str(), p["status"].as_str()),
            (201, Some("figma-ui-kit"), Some("draft")),
            "{backend:?} {p}"
        );
        assert!(!p["description_html"].as_str().unwrap().contains("<script>"));
        let id = p["id"].as_str().unwrap().to_string();
        assert_eq!(
            t.client
                .get(t.url("/api/v1/products/figma-ui-kit"))
                .send()
                .await
                .unwrap()
                .status(),
            404,
            "drafts are private"
        );

        for (body, status, code, field) in [
            (
                json!({"title": "X", "price": -1, "currency": "USD"}),
                422,
                "invalid_price",
                "price",
            ),
            (
                json!({"title": "X", "price": 1, "currency": "ZZZ"}),
                422,
                "invalid_currency",
                "currency",
            ),
            (
                json!({"title": "Kit", "slug": "figma-ui-kit", "price": 1, "currency": "USD"}),
                409,
                "slug_taken",
                "slug",
            ),
            (
                json!({"title": "", "price": 1, "currency": "USD"}),
                422,
                "invalid_title",
                "title",
            ),
        ] {
            let (s, e) = call(&t, "POST", "/api/v1/products", &mine, Some(body.clone())).await;
            assert_eq!(
                (s, e["error"]["code"].as_str(), e["error"]["field"].as_str()),
                (status, Some(code), Some(field)),
                "{body}"
            );
        }
        let (s, e) = call(
            &t,
            "PATCH",
            &format!("/api/v1/products/{id}"),
            &mine,
            Some(json!({"slug": "demo-ebook"})),
        )
        .await;
        assert_eq!((s, e["error"]["code"].as_str()), (409, Some("slug_taken")));
        assert_eq!(
            call(
                &t,
                "PATCH",
                &format!("/api/v1/products/{id}"),
                &theirs,
                Some(json!({"status": "published"}))
            )
            .await
            .0,
            404
        );
        assert_eq!(
            call(&t, "DELETE", &format!("/api/v1/products/{id}"), &theirs, None)
                .await
                .0,
            404
        );
        let (s, p) = call(
            &t,
            "PATCH",
            &format!("/api/v1/products/{id}"),
            &mine,
            Some(json!({"status": "published", "price": 3900})),
        )
        .await;
        assert_eq!(
            (s, p["status"].as_str(), p["price"].as_i64()),
            (200, Some("published"), Some(3900))
        );
        assert_eq!(
            t.client
                .get(t.url("/api/v1/products/figma-ui-kit"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
        let (_, list) = call(&t, "GET", "/api/v1/seller/products?limit=100", &theirs, None).await;
        assert!(list["items"].as_array().unwrap().is_empty());
        let (_, list) = call(&t, "GET", "/api/v1/seller/products?limit=100", &mine, None).await;
        assert_eq!(list["items"].as_array().unwrap().len(), 8);

        // Deleting: a sold product is archived and stays downloadable; an unsold draft is gone.
        let order = t.buy_paid("demo-templates", "keeper@example.com").await;
        let templates = satchel::catalog::find_product(&t.app.db, "demo-templates")
            .await
            .unwrap()
            .unwrap();
        let (_, r) = call(&t, "DELETE", &format!("/api/v1/products/{}", templates.id), &mine, None).await;
        assert_eq!(r["status"], "archived");
        assert_eq!(
            t.client
                .get(order["items"][0]["download_url"].as_str().unwrap())
                .send()
                .await
                .unwrap()
                .status(),
            302
        );
        let (_, draft) = call(
            &t,
            "POST",
            "/api/v1/products",
            &mine,
            Some(json!({"title": "Scratch", "price": 100, "currency": "USD"})),
        )
        .await;
        let (_, r) = call(
            &t,
            "DELETE",
            &format!("/api/v1/products/{}", draft["id"].as_str().unwrap()),
            &mine,
            None,
        )
        .await;
        assert_eq!(r["status"], "deleted");
    }
}
