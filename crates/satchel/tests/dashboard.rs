//! The seller dashboard over plain HTTP (reqwest), on SQLite and PostgreSQL: sign-in,
//! CSRF refusals that change nothing, per-seller isolation (another seller's ids are 404),
//! the multipart new-version form, settings that reach the storefront and the emails,
//! the sandboxed email preview, and admin suspension.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use satchel::db::Exec;
use satchel::sql;
use satchel::testing::{backends, TestApp};
use serde_json::{json, Value};

mod common;

use common::dashboard::{cookie_value, get, login, post_form, Session};

async fn second_seller(t: &TestApp) -> Session {
    let tx = t.app.db.begin().await.unwrap();
    satchel::accounts::create_seller_account(&tx, "rival@example.com", "rival-password", "Rival Shop", "seller")
        .await
        .unwrap();
    tx.commit().await.unwrap();
    login(t, "rival@example.com", "rival-password").await
}

#[tokio::test]
async fn sign_in_errors_keep_the_input_and_pages_need_a_session() {
    for backend in backends().await {
        let t = TestApp::start_demo(backend).await;
        // Not signed in: every page goes to the sign-in page, remembering where it was going.
        let r = t.client.get(t.url("/dashboard/orders?q=x")).send().await.unwrap();
        assert_eq!(r.status(), 303);
        assert_eq!(
            r.headers()["location"],
            "/dashboard/login?next=%2Fdashboard%2Forders%3Fq%3Dx"
        );

        let r = t.client.get(t.url("/dashboard/login")).send().await.unwrap();
        let pre = cookie_value(&r, "satchel_csrf").unwrap();
        // Wrong password: 401, the email kept, a message on the field and for the form.
        let r = t
            .client
            .post(t.url("/dashboard/login"))
            .header("cookie", format!("satchel_csrf={pre}"))
            .form(&[
                ("csrf", pre.as_str()),
                ("email", "demo@satchel.test"),
                ("password", "nope-nope"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        assert!(cookie_value(&r, "satchel_session").is_none());
        let html = r.text().await.unwrap();
        assert!(html.contains("value=\"demo@satchel.test\""), "{html}");
        assert!(html.contains("id=\"password-error\"") && html.contains("role=\"alert\""));
        // Empty fields: 422 with a message per field.
        let r = t
            .client
            .post(t.url("/dashboard/login"))
            .header("cookie", format!("satchel_csrf={pre}"))
            .form(&[("csrf", pre.as_str()), ("email", ""), ("password", "")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422);
        let html = r.text().await.unwrap();
        assert!(html.contains("id=\"email-error\"") && html.contains("id=\"password-error\""));
        // Login CSRF: a form posted without the cookie it came with is refused.
        let r = t
            .client
            .post(t.url("/dashboard/login"))
            .form(&[
                ("csrf", pre.as_str()),
                ("email", "demo@satchel.test"),
                ("password", "demo-password"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
        assert!(cookie_value(&r, "satchel_session").is_none());
        // The open-redirect guard on `next`.
        let r = t
            .client
            .post(t.url("/dashboard/login"))
            .header("cookie", format!("satchel_csrf={pre}"))
            .form(&[
                ("csrf", pre.as_str()),
                ("email", "demo@satchel.test"),
                ("password", "demo-password"),
                ("next", "https://evil.example/"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303);
        assert_eq!(r.headers()["location"], "/dashboard");

        // Signed in: the overview, with the storefront's strict CSP and no-sniff.
        let s = login(&t, "demo@satchel.test", "demo-password").await;
        let r = t
            .client
            .get(t.url("/dashboard"))
            .header("cookie", &s.cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-security-policy"], satchel::http::pages::CSP);
        assert_eq!(r.headers()["x-frame-options"], "DENY");
        let html = r.text().await.unwrap();
        assert!(html.contains("<html lang=\"en\">") && html.contains("data-kpi=\"net-revenue\""));
        // Every range is a link; 12 months are 52 weekly bars (drawn wide and compact).
        for (range, bars) in [("7d", 7), ("30d", 30), ("90d", 13), ("12m", 52)] {
            let (status, html) = get(&t, &s, &format!("/dashboard?range={range}")).await;
            assert_eq!(status, 200);
            assert_eq!(html.matches("<rect class=\"bar").count(), 2 * bars, "{range}");
        }
        // The dashboard session is the API's session: the seller API accepts it.
        let r = t
            .client
            .get(t.url("/api/v1/seller/products"))
            .header("cookie", &s.cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        // Sign out ends the session everywhere.
        let r = post_form(&t, &s, "/dashboard/logout", &[("csrf", &s.csrf)]).await;
        assert_eq!(r.status(), 303);
        let r = t
            .client
            .get(t.url("/api/v1/seller/products"))
            .header("cookie", &s.cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
}

#[tokio::test]
async fn forms_without_the_sessions_csrf_token_are_refused_and_change_nothing() {
    for backend in backends().await {
        let t = TestApp::start_demo(backend).await;
        let order = t.buy_paid("demo-app", "csrf@example.com").await;
        let order_id = order["order_id"].as_str().unwrap();
        let key = order["items"][0]["license_key"].as_str().unwrap();
        let (license_id,): (String,) = t
            .app
            .db
            .fetch_one(sql!("SELECT id FROM license_keys WHERE license_key = $1", key))
            .await
            .unwrap();
        let product = satchel::catalog::find_product(&t.app.db, "demo-app")
            .await
            .unwrap()
            .unwrap();
        let s = login(&t, "demo@satchel.test", "demo-password").await;
        let counts = |t: &TestApp| {
            let db = t.app.db.clone();
            async move {
                let q = |s: &'static str| db.fetch_i64(satchel::db::Query::new(s));
                (
                    q("SELECT COUNT(*) FROM discount_codes").await.unwrap(),
                    q("SELECT COUNT(*) FROM refunds").await.unwrap(),
                    q("SELECT COUNT(*) FROM products").await.unwrap(),
                    q("SELECT COUNT(*) FROM product_versions").await.unwrap(),
                    q("SELECT COUNT(*) FROM affiliates").await.unwrap(),
                    q("SELECT COUNT(*) FROM license_keys WHERE status = 'active'")
                        .await
                        .unwrap(),
                    q("SELECT COUNT(*) FROM sessions").await.unwrap(),
                )
            }
        };
        let before = counts(&t).await;
        for token in ["", "wrong-token-wrong-token"] {
            let cases: Vec<(String, Vec<(&str, &str)>)> = vec![
                (
                    "/dashboard/discounts".into(),
                    vec![("code", "EVIL"), ("kind", "percent"), ("amount", "90")],
                ),
                (
                    format!("/dashboard/orders/{order_id}/refund"),
                    vec![("step", "confirm"), ("amount", "49.00")],
                ),
                (
                    "/dashboard/products/new".into(),
                    vec![("title", "Evil"), ("price", "1"), ("currency", "USD")],
                ),
                (
                    format!("/dashboard/licenses/{license_id}/action"),
                    vec![("action", "revoke")],
                ),
                ("/dashboard/affiliates".into(), vec![("email", "evil@example.com")]),
                (
                    format!("/dashboard/products/{}/status", product.id),
                    vec![("status", "archived")],
                ),
                (
                    "/dashboard/settings".into(),
                    vec![("store_name", "Hacked"), ("accent_color", "#000000")],
                ),
                ("/dashboard/logout".into(), vec![]),
            ];
            for (path, mut form) in cases {
                if !token.is_empty() {
                    form.push(("csrf", token));
                }
                let r = post_form(&t, &s, &path, &form).await;
                assert_eq!(r.status(), 403, "{backend:?} {path} with token {token:?}");
                let html = r.text().await.unwrap();
                assert!(html.contains("This form expired"), "{html}");
            }
            // The multipart version form checks the token before storing a byte.
            let mut mp = reqwest::multipart::Form::new();
            if !token.is_empty() {
                mp = mp.text("csrf", token.to_string());
            }
            let mp = mp.text("version", "6.6.6").part(
                "files",
                reqwest::multipart::Part::bytes(b"evil".to_vec()).file_name("evil.zip"),
            );
            let r = t
                .client
                .post(t.url(&format!("/dashboard/products/{}/versions", product.id)))
                .header("cookie", &s.cookie)
                .multipart(mp)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 403);
        }
        assert_eq!(counts(&t).await, before, "{backend:?}: nothing changed");
        let o = satchel::checkout::find_order(&t.app.db, order_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(o.status, "paid");
        let (name,): (String,) = t
            .app
            .db
            .fetch_one(sql!("SELECT store_name FROM sellers WHERE id = $1", &product.seller_id))
            .await
            .unwrap();
        assert_eq!(name, "Satchel Demo Store");
        let stored = t.data_dir.join("files").join(satchel::catalog::original_key(
            &product.seller_id,
            &product.id,
            "6.6.6",
            "evil.zip",
        ));
        assert!(!stored.exists(), "no byte stored for a refused upload");
        // The same forms with the right token work (one of them, to show the token is the key).
        let r = post_form(
            &t,
            &s,
            "/dashboard/discounts",
            &[
                ("csrf", &s.csrf),
                ("code", "GOOD"),
                ("kind", "percent"),
                ("amount", "10"),
            ],
        )
        .await;
        assert_eq!(r.status(), 303);
    }
}

#[tokio::test]
async fn another_sellers_objects_are_not_found() {
    for backend in backends().await {
        let t = TestApp::start_demo(backend).await;
        let order = t.buy_paid("demo-app", "iso@example.com").await;
        let order_id = order["order_id"].as_str().unwrap().to_string();
        let key = order["items"][0]["license_key"].as_str().unwrap();
        let (license_id,): (String,) = t
            .app
            .db
            .fetch_one(sql!("SELECT id FROM license_keys WHERE license_key = $1", key))
            .await
            .unwrap();
        let product = satchel::catalog::find_product(&t.app.db, "demo-app")
            .await
            .unwrap()
            .unwrap();
        t.drain_jobs().await;
        let (email_id,): (String,) = t
            .app
            .db
            .fetch_one(sql!("SELECT id FROM email_outbox ORDER BY id LIMIT 1"))
            .await
            .unwrap();
        let demo = login(&t, "demo@satchel.test", "demo-password").await;
        let r = post_form(
            &t,
            &demo,
            "/dashboard/discounts",
            &[
                ("csrf", &demo.csrf),
                ("code", "MINE"),
                ("kind", "percent"),
                ("amount", "10"),
            ],
        )
        .await;
        assert_eq!(r.status(), 303);
        let (discount_id,): (String,) = t
            .app
            .db
            .fetch_one(sql!("SELECT id FROM discount_codes WHERE code = 'MINE'"))
            .await
            .unwrap();

        // The owner sees everything…
        for path in [
            format!("/dashboard/orders/{order_id}"),
            format!("/dashboard/licenses/{license_id}"),
            format!("/dashboard/products/{}", product.id),
            format!("/dashboard/products/{}/versions/new", product.id),
            format!("/dashboard/emails/{email_id}"),
            format!("/dashboard/emails/{email_id}/body"),
        ] {
            assert_eq!(get(&t, &demo, &path).await.0, 200, "{backend:?} owner {path}");
        }
        // …a rival seller gets 404 for the same ids, in the dashboard's frame.
        let rival = second_seller(&t).await;
        for path in [
            format!("/dashboard/orders/{order_id}"),
            format!("/dashboard/licenses/{license_id}"),
            format!("/dashboard/products/{}", product.id),
            format!("/dashboard/products/{}/versions/new", product.id),
            format!("/dashboard/emails/{email_id}"),
            format!("/dashboard/emails/{email_id}/body"),
        ] {
            let (status, html) = get(&t, &rival, &path).await;
            assert_eq!(status, 404, "{backend:?} rival {path}");
            assert!(html.contains("Not found") && html.contains("Rival Shop"), "{html}");
        }
        // Actions on another seller's ids, with the rival's own valid token: 404, no effect.
        for (path, form) in [
            (
                format!("/dashboard/orders/{order_id}/refund"),
                vec![("step", "confirm"), ("amount", "49.00")],
            ),
            (format!("/dashboard/orders/{order_id}/resend"), vec![]),
            (
                format!("/dashboard/licenses/{license_id}/action"),
                vec![("action", "suspend")],
            ),
            (format!("/dashboard/discounts/{discount_id}/deactivate"), vec![]),
            (
                format!("/dashboard/products/{}/status", product.id),
                vec![("status", "archived")],
            ),
            (
                format!("/dashboard/products/{}", product.id),
                vec![("title", "Stolen"), ("price", "1"), ("currency", "USD")],
            ),
        ] {
            let mut form = form;
            form.push(("csrf", &rival.csrf));
            let r = post_form(&t, &rival, &path, &form).await;
            assert_eq!(r.status(), 404, "{backend:?} rival POST {path}");
        }
        let o = satchel::checkout::find_order(&t.app.db, &order_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(o.status, "paid");
        let (status,): (String,) = t
            .app
            .db
            .fetch_one(sql!("SELECT status FROM license_keys WHERE id = $1", &license_id))
            .await
            .unwrap();
        assert_eq!(status, "active");
        let p = satchel::catalog::find_product(&t.app.db, &product.id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (p.status.as_str(), p.title.as_str()),
            ("published", "Pixel Polish (desktop app)")
        );
        let (active,): (bool,) = t
            .app
            .db
            .fetch_one(sql!("SELECT active FROM discount_codes WHERE id = $1", &discount_id))
            .await
            .unwrap();
        assert!(active);
        // Lists show only the rival's own (empty) store.
        for path in [
            "/dashboard/orders",
            "/dashboard/licenses",
            "/dashboard/products",
            "/dashboard/emails",
            "/dashboard/discounts",
        ] {
            let (status, html) = get(&t, &rival, path).await;
            assert_eq!(status, 200);
            assert!(
                !html.contains(&order_id)
                    && !html.contains("iso@example.com")
                    && !html.contains("Pixel Polish")
                    && !html.contains("MINE"),
                "{backend:?} {path} leaks: {html}"
            );
        }
        let (_, html) = get(&t, &rival, "/dashboard").await;
        assert!(html.contains("data-kpi=\"orders\">0<"), "{html}");
        // A seller is not an admin.
        assert_eq!(get(&t, &rival, "/dashboard/admin/sellers").await.0, 403);
    }
}

#[tokio::test]
async fn new_version_through_the_multipart_form() {
    for backend in backends().await {
        let t = TestApp::start_demo(backend).await;
        let product = satchel::catalog::find_product(&t.app.db, "demo-templates")
            .await
            .unwrap()
            .unwrap();
        let s = login(&t, "demo@satchel.test", "demo-password").await;
        let (status, html) = get(&t, &s, &format!("/dashboard/products/{}/versions/new", product.id)).await;
        assert_eq!(status, 200);
        assert!(html.contains("value=\"1.0.1\""), "the next version is suggested");
        assert!(html.contains("<script src=\"/static/uploader.js\" defer></script>"));
        let send = |version: &'static str, body: Vec<u8>| {
            let mp = reqwest::multipart::Form::new()
                .text("csrf", s.csrf.clone())
                .text("version", version)
                .text("changelog", "## Better\n\n- two new templates")
                .part(
                    "files",
                    reqwest::multipart::Part::bytes(body).file_name("life-os-templates.zip"),
                );
            t.client
                .post(t.url(&format!("/dashboard/products/{}/versions", product.id)))
                .header("cookie", &s.cookie)
                .multipart(mp)
                .send()
        };
        // The published version's bytes are kept when someone reuses its number.
        let original = satchel::catalog::current_version(&t.app.db, &product)
            .await
            .unwrap()
            .unwrap()
            .1[0]
            .sha256
            .clone();
        let r = send("1.0.0", b"would overwrite".to_vec()).await.unwrap();
        assert_eq!(r.status(), 422);
        let html = r.text().await.unwrap();
        assert!(html.contains("Version 1.0.0 already exists"), "{html}");
        let p = satchel::catalog::find_product(&t.app.db, &product.id)
            .await
            .unwrap()
            .unwrap();
        let (_, files) = satchel::catalog::current_version(&t.app.db, &p).await.unwrap().unwrap();
        assert_eq!(files[0].sha256, original);
        let r = t
            .client
            .get(t.url("/api/v1/products/demo-templates"))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap();
        assert_eq!(r["current_version"]["files"][0]["sha256"], original.as_str());
        let body = t
            .client
            .post(t.url("/api/v1/products/demo-templates/purchase"))
            .json(&json!({"email": "v@example.com"}))
            .send()
            .await
            .unwrap();
        assert_eq!(body.status(), 201);

        // A new version: published, current, with the bytes' sha256.
        let bytes = b"PK\x05\x06 new templates".repeat(1000);
        let r = send("1.1.0", bytes.clone()).await.unwrap();
        assert_eq!(r.status(), 303, "{backend:?}");
        assert_eq!(
            r.headers()["location"],
            format!("/dashboard/products/{}?notice=version_published", product.id).as_str()
        );
        let p = satchel::catalog::find_product(&t.app.db, &product.id)
            .await
            .unwrap()
            .unwrap();
        let (v, files) = satchel::catalog::current_version(&t.app.db, &p).await.unwrap().unwrap();
        assert_eq!(v.version, "1.1.0");
        use sha2::Digest;
        assert_eq!(files[0].sha256, hex::encode(sha2::Sha256::digest(&bytes)));
        // No file: a field message, nothing published.
        let mp = reqwest::multipart::Form::new()
            .text("csrf", s.csrf.clone())
            .text("version", "1.2.0")
            .part("files", reqwest::multipart::Part::bytes(Vec::new()).file_name(""));
        let r = t
            .client
            .post(t.url(&format!("/dashboard/products/{}/versions", product.id)))
            .header("cookie", &s.cookie)
            .multipart(mp)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422);
        assert!(r.text().await.unwrap().contains("Choose at least one file"));
        let (_, html) = get(
            &t,
            &s,
            &format!("/dashboard/products/{}?notice=version_published", product.id),
        )
        .await;
        assert!(html.contains("New version published") && html.contains("1.1.0"));

        // The form sent twice at once (a double click): one publish, and the other's refusal
        // leaves the published file in place (its clean-up must not delete the winner's).
        let (a, b) = tokio::join!(send("1.3.0", vec![b'a'; 1 << 20]), send("1.3.0", vec![b'b'; 1 << 20]));
        let (a, b) = (a.unwrap(), b.unwrap());
        let mut statuses = [a.status().as_u16(), b.status().as_u16()];
        statuses.sort_unstable();
        assert_eq!(statuses, [303, 422], "{backend:?}");
        let refused = if a.status() == 422 { a } else { b };
        let html = refused.text().await.unwrap();
        assert!(
            html.contains("Version 1.3.0 already exists") || html.contains("Version 1.3.0 is being published"),
            "{html}"
        );
        let p = satchel::catalog::find_product(&t.app.db, &product.id)
            .await
            .unwrap()
            .unwrap();
        let (v, files) = satchel::catalog::current_version(&t.app.db, &p).await.unwrap().unwrap();
        assert_eq!(v.version, "1.3.0");
        let stored = satchel::storage::collect(t.app.storage.get(&files[0].object_key, None).await.unwrap().body)
            .await
            .unwrap();
        assert_eq!(
            files[0].sha256,
            hex::encode(sha2::Sha256::digest(&stored)),
            "{backend:?}"
        );

        // A version stored under another's path ("2 0" would be 2_0) is refused by name.
        assert_eq!(send("2_0", b"two".to_vec()).await.unwrap().status(), 303);
        let r = send("2 0", b"would share".to_vec()).await.unwrap();
        assert_eq!(r.status(), 422);
        let html = r.text().await.unwrap();
        assert!(html.contains("would share its files with version"), "{html}");
    }
}

#[tokio::test]
async fn settings_reach_the_storefront_and_the_emails() {
    for backend in backends().await {
        let t = TestApp::start_demo(backend).await;
        let s = login(&t, "demo@satchel.test", "demo-password").await;
        // Bad input: field messages, input kept, nothing saved.
        let r = post_form(
            &t,
            &s,
            "/dashboard/settings",
            &[
                ("csrf", &s.csrf),
                ("store_name", "Moonlight Press"),
                ("accent_color", "purple"),
                ("support_email", "nope"),
                ("sender_name", ""),
            ],
        )
        .await;
        assert_eq!(r.status(), 422);
        let html = r.text().await.unwrap();
        assert!(
            html.contains("id=\"accent_color-error\"")
                && html.contains("id=\"support_email-error\"")
                && html.contains("value=\"Moonlight Press\"")
        );
        let css = t
            .client
            .get(t.url("/static/brand.css"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(css.contains("#5b4bdb"));

        let r = post_form(
            &t,
            &s,
            "/dashboard/settings",
            &[
                ("csrf", &s.csrf),
                ("store_name", "Moonlight Press"),
                ("accent_color", "#0F766E"),
                ("support_email", "help@moonlight.example"),
                ("sender_name", "Moonlight Press"),
            ],
        )
        .await;
        assert_eq!(r.status(), 303);
        let css = t
            .client
            .get(t.url("/static/brand.css"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(css.contains("#0f766e"), "{css}");
        let home = t.client.get(t.url("/")).send().await.unwrap().text().await.unwrap();
        assert!(home.contains("Moonlight Press") && !home.contains("logo-img"));

        // A logo: only real images; then the storefront shows it.
        let mp = reqwest::multipart::Form::new().text("csrf", s.csrf.clone()).part(
            "logo",
            reqwest::multipart::Part::bytes(b"<svg onload=alert(1)>".to_vec()).file_name("logo.svg"),
        );
        let r = t
            .client
            .post(t.url("/dashboard/settings/logo"))
            .header("cookie", &s.cookie)
            .multipart(mp)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422);
        assert!(r.text().await.unwrap().contains("Use a PNG, JPEG or WebP image"));
        let png = tiny_png();
        let mp = reqwest::multipart::Form::new().text("csrf", s.csrf.clone()).part(
            "logo",
            reqwest::multipart::Part::bytes(png.clone()).file_name("logo.png"),
        );
        let r = t
            .client
            .post(t.url("/dashboard/settings/logo"))
            .header("cookie", &s.cookie)
            .multipart(mp)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303);
        let home = t.client.get(t.url("/")).send().await.unwrap().text().await.unwrap();
        let img = home.find("class=\"logo-img\"").expect("the header shows the logo");
        let tag_start = home[..img].rfind("<img").expect("inside an img tag");
        let marker = "src=\"";
        let at = tag_start + home[tag_start..].find(marker).expect("src");
        let src = &home[at + marker.len()..];
        let src = &src[..src.find('"').unwrap()];
        let r = t.client.get(t.url(src)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "image/png");
        assert_eq!(r.bytes().await.unwrap().to_vec(), png);

        // The sender name is the From name of the store's emails (.eml outbox here).
        t.buy_paid("demo-ebook", "mail@example.com").await;
        t.drain_jobs().await;
        let (id,): (String,) = t
            .app
            .db
            .fetch_one(sql!(
                "SELECT id FROM email_outbox WHERE kind = 'receipt' ORDER BY id DESC LIMIT 1"
            ))
            .await
            .unwrap();
        let eml = std::fs::read_to_string(t.app.cfg.outbox_dir().join(format!("{id}.eml"))).unwrap();
        assert!(
            eml.contains("From: \"Moonlight Press\" <store@satchel.localhost>")
                || eml.contains("From: Moonlight Press <store@satchel.localhost>"),
            "{eml}"
        );
        let (html,): (String,) = t
            .app
            .db
            .fetch_one(sql!("SELECT body_html FROM email_outbox WHERE id = $1", &id))
            .await
            .unwrap();
        assert!(
            html.contains("help@moonlight.example") && html.contains("#0f766e"),
            "the brand reaches the email"
        );

        // The email preview: the HTML under its own sandboxed policy, framable by the dashboard only.
        let r = t
            .client
            .get(t.url(&format!("/dashboard/emails/{id}/body")))
            .header("cookie", &s.cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let csp = r.headers()["content-security-policy"].to_str().unwrap().to_string();
        assert!(
            csp.contains("sandbox") && csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'self'"),
            "{csp}"
        );
        assert_eq!(r.headers()["x-frame-options"], "SAMEORIGIN");
        let (_, page) = get(&t, &s, &format!("/dashboard/emails/{id}")).await;
        assert!(page.contains(&format!("<iframe src=\"/dashboard/emails/{id}/body\" sandbox")));
        let (_, list) = get(&t, &s, "/dashboard/emails?status=sent").await;
        assert!(list.contains(&format!("/dashboard/emails/{id}")));
        // Settings never show secrets.
        let (_, settings) = get(&t, &s, "/dashboard/settings").await;
        assert!(settings.contains("Test-mode checkout") && settings.contains("Streamed by Satchel"));
        assert!(
            settings.contains("Work from any network"),
            "delivery URLs unbound by default"
        );
    }
}

/// A 1×1 PNG.
fn tiny_png() -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")
        .unwrap()
}

#[tokio::test]
async fn stripe_secrets_are_reported_never_shown() {
    let t = TestApp::start_with(satchel::db::Backend::Sqlite, |cfg| {
        cfg.payments.stripe_secret_key = Some(satchel::config::Secret::new("sk_test_SUPERSECRET123"));
        cfg.payments.stripe_webhook_secret = Some(satchel::config::Secret::new("whsec_ALSOSECRET456"));
    })
    .await;
    satchel::demo::seed(&t.app).await.unwrap();
    let s = login(&t, "demo@satchel.test", "demo-password").await;
    let (_, html) = get(&t, &s, "/dashboard/settings").await;
    assert!(html.contains("Set · test key") && html.contains("Stripe webhook secret"));
    assert!(!html.contains("SUPERSECRET") && !html.contains("ALSOSECRET") && !html.contains("sk_test_"));
}

#[tokio::test]
async fn admin_suspends_and_reactivates_a_seller() {
    for backend in backends().await {
        let t = TestApp::start_demo(backend).await;
        let admin = login(&t, "demo@satchel.test", "demo-password").await;
        // Create a seller from the form (a bad one first: field messages).
        let r = post_form(
            &t,
            &admin,
            "/dashboard/admin/sellers",
            &[
                ("csrf", &admin.csrf),
                ("store_name", "Zine Shop"),
                ("email", "zine@example.com"),
                ("password", "short"),
            ],
        )
        .await;
        assert_eq!(r.status(), 422);
        let html = r.text().await.unwrap();
        assert!(html.contains("id=\"password-error\"") && !html.contains("value=\"short\""));
        let r = post_form(
            &t,
            &admin,
            "/dashboard/admin/sellers",
            &[
                ("csrf", &admin.csrf),
                ("store_name", "Zine Shop"),
                ("email", "zine@example.com"),
                ("password", "zine-password"),
            ],
        )
        .await;
        assert_eq!(r.status(), 303);
        let zine = login(&t, "zine@example.com", "zine-password").await;
        let key = satchel::accounts::create_api_key(&t.app.db, "zine@example.com", "ci")
            .await
            .unwrap();
        let api = |key: String| {
            let c = t.client.clone();
            let url = t.url("/api/v1/seller/products");
            async move { c.get(url).bearer_auth(key).send().await.unwrap().status().as_u16() }
        };
        assert_eq!(api(key.clone()).await, 200);
        let (seller_id,): (String,) = t
            .app
            .db
            .fetch_one(sql!("SELECT id FROM sellers WHERE store_name = 'Zine Shop'"))
            .await
            .unwrap();
        // The admin can't suspend their own store.
        let own = t.demo_seller().await;
        let r = post_form(
            &t,
            &admin,
            &format!("/dashboard/admin/sellers/{own}/status"),
            &[("csrf", &admin.csrf), ("status", "suspended")],
        )
        .await;
        assert_eq!(r.status(), 400);

        let r = post_form(
            &t,
            &admin,
            &format!("/dashboard/admin/sellers/{seller_id}/status"),
            &[("csrf", &admin.csrf), ("status", "suspended")],
        )
        .await;
        assert_eq!(r.status(), 303);
        // Session, API key and sign-in stop working at once.
        let r = t
            .client
            .get(t.url("/dashboard"))
            .header("cookie", &zine.cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303);
        assert_eq!(api(key.clone()).await, 401);
        let (s, v) = t
            .post_json(
                "/api/v1/auth/login",
                &json!({"email": "zine@example.com", "password": "zine-password"}),
            )
            .await;
        assert_eq!((s, v["error"]["code"].as_str()), (403, Some("seller_suspended")));
        let (_, html) = get(&t, &admin, "/dashboard/admin/sellers").await;
        assert!(html.contains("Zine Shop") && html.contains("st-suspended"));

        let r = post_form(
            &t,
            &admin,
            &format!("/dashboard/admin/sellers/{seller_id}/status"),
            &[("csrf", &admin.csrf), ("status", "active")],
        )
        .await;
        assert_eq!(r.status(), 303);
        assert_eq!(api(key).await, 200);
        login(&t, "zine@example.com", "zine-password").await;
    }
}

#[tokio::test]
async fn a_fixed_term_license_is_extended_from_its_page() {
    for backend in backends().await {
        let t = TestApp::start_demo(backend).await;
        t.buy_paid("demo-app", "term@example.com").await;
        let (license_id, expires): (String, i64) = (
            t.app
                .db
                .fetch_one::<(String,)>(sql!("SELECT id FROM license_keys WHERE email = 'term@example.com'"))
                .await
                .unwrap()
                .0,
            satchel::ids::now() + 5 * 86_400,
        );
        t.app
            .db
            .execute(sql!(
                "UPDATE license_keys SET expires_at = $2 WHERE id = $1",
                &license_id,
                expires
            ))
            .await
            .unwrap();
        let s = login(&t, "demo@satchel.test", "demo-password").await;
        let (_, page) = get(&t, &s, &format!("/dashboard/licenses/{license_id}")).await;
        assert!(
            page.contains("id=\"extend\""),
            "{backend:?}: a fixed-term license offers Extend"
        );
        let r = post_form(
            &t,
            &s,
            &format!("/dashboard/licenses/{license_id}/action"),
            &[("csrf", &s.csrf), ("action", "extend"), ("days", "30")],
        )
        .await;
        assert_eq!(r.status(), 303, "{backend:?}");
        let (now_expires,): (Option<i64>,) = t
            .app
            .db
            .fetch_one(sql!("SELECT expires_at FROM license_keys WHERE id = $1", &license_id))
            .await
            .unwrap();
        assert_eq!(now_expires, Some(expires + 30 * 86_400), "{backend:?}");
        // A bad number changes nothing.
        let r = post_form(
            &t,
            &s,
            &format!("/dashboard/licenses/{license_id}/action"),
            &[("csrf", &s.csrf), ("action", "extend"), ("days", "0")],
        )
        .await;
        assert!(r.status().is_client_error(), "{backend:?}: {}", r.status());
        let (after,): (Option<i64>,) = t
            .app
            .db
            .fetch_one(sql!("SELECT expires_at FROM license_keys WHERE id = $1", &license_id))
            .await
            .unwrap();
        assert_eq!(after, now_expires);
    }
}
