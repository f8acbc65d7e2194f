//! API key management (list, create once-shown, revoke) with a rival seller, and an admin
//! acting across sellers with `X-Act-As-Seller` — which plain sellers cannot do.

#![allow(clippy::unwrap_used)]

use satchel::db::Exec;
use satchel::sql;
use satchel::testing::{backends, TestApp};
use serde_json::{json, Value};

async fn get(t: &TestApp, key: &str, path: &str) -> (u16, Value) {
    let r = t.client.get(t.url(path)).bearer_auth(key).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn api_keys_are_listed_created_once_and_revoked_per_seller() {
    for backend in backends().await {
        let label = backend.name();
        let t = TestApp::start(backend).await;
        let (_, key) = t.seller_with_key("keys@example.com").await;
        let (_, rival) = t.seller_with_key("rival@example.com").await;

        let r = t
            .client
            .post(t.url("/api/v1/api-keys"))
            .bearer_auth(&key)
            .json(&json!({"name": "CI"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{label}");
        let created: Value = r.json().await.unwrap();
        let new_key = created["key"].as_str().unwrap().to_string();
        assert!(new_key.starts_with("sk_live_") && new_key.len() > 40);
        assert_eq!(created["prefix"], &new_key[..12]);
        let id = created["id"].as_str().unwrap().to_string();

        // Listed without the secret; the rival sees none of them.
        let (s, list) = get(&t, &new_key, "/api/v1/api-keys").await;
        assert_eq!(s, 200);
        let items = list["items"].as_array().unwrap();
        assert_eq!(items.len(), 2, "{label}: {list}");
        assert!(
            !list.to_string().contains(&new_key[12..]),
            "{label}: the key is never listed"
        );
        assert!(items
            .iter()
            .all(|k| k.get("key").is_none() && k.get("key_hash").is_none()));
        let mine = items.iter().find(|k| k["id"] == id.as_str()).unwrap();
        assert_eq!(mine["name"], "CI");
        assert!(mine["last_used_at"].is_i64(), "{label}: used just now");
        assert!(mine["revoked_at"].is_null());
        let (_, theirs) = get(&t, &rival, "/api/v1/api-keys").await;
        assert_eq!(theirs["items"].as_array().unwrap().len(), 1);
        assert!(!theirs.to_string().contains(&id));

        // A rival cannot revoke it; its owner can, and it stops working at once.
        let r = t
            .client
            .delete(t.url(&format!("/api/v1/api-keys/{id}")))
            .bearer_auth(&rival)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{label}");
        assert_eq!(
            get(&t, &new_key, "/api/v1/api-keys").await.0,
            200,
            "{label}: still valid"
        );
        let r = t
            .client
            .delete(t.url(&format!("/api/v1/api-keys/{id}")))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
        assert_eq!(
            get(&t, &new_key, "/api/v1/api-keys").await.0,
            401,
            "{label}: revoked keys are refused"
        );
        let (_, list) = get(&t, &key, "/api/v1/api-keys").await;
        let revoked = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["id"] == id.as_str())
            .unwrap()
            .clone();
        assert!(revoked["revoked_at"].is_i64());
        let r = t
            .client
            .delete(t.url(&format!("/api/v1/api-keys/{id}")))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204, "{label}: revoking twice is fine");

        // Bad input changes nothing.
        let before = t.app.db.fetch_i64(sql!("SELECT COUNT(*) FROM api_keys")).await.unwrap();
        for body in [
            json!({"name": ""}),
            json!({"name": "x".repeat(101)}),
            json!({"nme": "CI"}),
        ] {
            let r = t
                .client
                .post(t.url("/api/v1/api-keys"))
                .bearer_auth(&key)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert!(r.status() == 422 || r.status() == 400, "{label}: {body}");
        }
        let r = t
            .client
            .post(t.url("/api/v1/api-keys"))
            .json(&json!({"name": "x"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        assert_eq!(
            t.app.db.fetch_i64(sql!("SELECT COUNT(*) FROM api_keys")).await.unwrap(),
            before
        );
    }
}

#[tokio::test]
async fn an_admin_acts_across_sellers_and_a_seller_cannot() {
    for backend in backends().await {
        let label = backend.name();
        let t = TestApp::start(backend).await;
        satchel::accounts::create_seller_account(&t.app.db, "admin@example.com", "password123", "HQ", "admin")
            .await
            .unwrap();
        let admin = satchel::accounts::create_api_key(&t.app.db, "admin@example.com", "ops")
            .await
            .unwrap();
        let (seller_a, key_a) = t.seller_with_key("a@example.com").await;
        let (_, key_b) = t.seller_with_key("b@example.com").await;
        let r = t
            .client
            .post(t.url("/api/v1/products"))
            .bearer_auth(&key_a)
            .json(&json!({"title": "A's book", "slug": "a-book", "price": 500, "currency": "USD"}))
            .send()
            .await
            .unwrap();
        let product: Value = r.json().await.unwrap();
        let pid = product["id"].as_str().unwrap().to_string();

        // Sellers list: admins only.
        let (s, list) = get(&t, &admin, "/api/v1/admin/sellers").await;
        assert_eq!(s, 200, "{label}");
        let a = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["id"] == seller_a.as_str())
            .unwrap()
            .clone();
        assert_eq!(a["owner_email"], "a@example.com");
        assert_eq!(a["products"], 1);
        assert_eq!(list["items"].as_array().unwrap().len(), 3);
        let (s, body) = get(&t, &key_a, "/api/v1/admin/sellers").await;
        assert_eq!(s, 403, "{label}");
        assert_eq!(body["error"]["code"], "admin_only");
        let (s, page) = get(&t, &admin, "/api/v1/admin/sellers?limit=2").await;
        assert_eq!(s, 200);
        assert_eq!(page["items"].as_array().unwrap().len(), 2);
        let cursor = page["next_cursor"].as_str().unwrap();
        let (_, rest) = get(&t, &admin, &format!("/api/v1/admin/sellers?limit=2&cursor={cursor}")).await;
        assert_eq!(rest["items"].as_array().unwrap().len(), 1, "{label}: cursor paging");

        // The admin's own identity does not reach A's product; acting as A does.
        let patch = |key: &str, act_as: Option<&str>| {
            let mut req = t
                .client
                .patch(t.url(&format!("/api/v1/products/{pid}")))
                .bearer_auth(key)
                .json(&json!({"title": "Edited by ops"}));
            if let Some(s) = act_as {
                req = req.header("x-act-as-seller", s);
            }
            req.send()
        };
        assert_eq!(patch(&admin, None).await.unwrap().status(), 404, "{label}");
        let r = patch(&admin, Some(&seller_a)).await.unwrap();
        assert_eq!(r.status(), 200, "{label}");
        assert_eq!(r.json::<Value>().await.unwrap()["title"], "Edited by ops");
        let r = t
            .client
            .get(t.url("/api/v1/seller/products"))
            .bearer_auth(&admin)
            .header("x-act-as-seller", &seller_a)
            .send()
            .await
            .unwrap();
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["items"][0]["id"], pid.as_str(), "{label}: A's products, as A");
        let r = t
            .client
            .post(t.url("/api/v1/uploads"))
            .bearer_auth(&admin)
            .header("x-act-as-seller", &seller_a)
            .header("tus-resumable", "1.0.0")
            .header("upload-length", "3")
            .header("upload-metadata", "filename YS50eHQ=")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let owner = t
            .app
            .db
            .fetch_i64(sql!("SELECT COUNT(*) FROM uploads WHERE seller_id = $1", &seller_a))
            .await
            .unwrap();
        assert_eq!(owner, 1, "{label}: the upload belongs to A");

        // A plain seller cannot act as another; an unknown seller is 404. Nothing changes.
        let r = patch(&key_b, Some(&seller_a)).await.unwrap();
        assert_eq!(r.status(), 403, "{label}");
        assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "admin_only");
        assert_eq!(patch(&admin, Some("sel_nope")).await.unwrap().status(), 404);
        let (title,): (String,) = t
            .app
            .db
            .fetch_one(sql!("SELECT title FROM products WHERE id = $1", &pid))
            .await
            .unwrap();
        assert_eq!(title, "Edited by ops");
    }
}

#[tokio::test]
async fn openapi_documents_uploads_images_keys_and_admin() {
    for backend in backends().await {
        let t = TestApp::start(backend).await;
        let spec: Value = t
            .client
            .get(t.url("/api/openapi.json"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let paths = &spec["paths"];
        for (path, methods) in [
            ("/api/v1/uploads", &["options", "post", "get"][..]),
            (
                "/api/v1/uploads/{id}",
                &["options", "head", "patch", "delete", "get"][..],
            ),
            ("/api/v1/products/{product_id}/versions", &["get", "post"][..]),
            ("/api/v1/products/{product_id}/images", &["post"][..]),
            ("/api/v1/products/{product_id}/images/{image_id}", &["delete"][..]),
            ("/media/products/{product_id}/images/{image_id}/thumb", &["get"][..]),
            ("/api/v1/api-keys", &["get", "post"][..]),
            ("/api/v1/api-keys/{id}", &["delete"][..]),
            ("/api/v1/admin/sellers", &["get"][..]),
        ] {
            for m in methods {
                assert!(paths[path][m].is_object(), "{}: {m} {path} documented", backend.name());
            }
        }
    }
}
