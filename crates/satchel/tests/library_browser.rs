//! The buyer's library and the affiliate portal in a real Chromium (chromedriver +
//! fantoccini), on SQLite and PostgreSQL: a buyer signs in with the link read from the
//! `.eml` outbox, sees purchases, a license key with its devices, deactivates one, cancels and
//! resumes a subscription, leaves a review that then shows on the product page; an affiliate
//! signs in the same way and sees their clicks, sales and earnings. Screenshots (light, dark,
//! phone width) land in `target/screenshots/`.
//!
//! Needs Debian `chromium` + `chromium-driver`; without them this is a printed skip (a
//! failure under `SATCHEL_TEST_REQUIRE_ALL=1`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::browser::Browser;

use std::path::PathBuf;

use fantoccini::Locator;
use satchel::db::Exec;
use satchel::sql;
use satchel::testing::{backends, TestApp};
use serde_json::{json, Value};

/// The newest sign-in link (`…{marker}{token}`) mailed to `to`, read from the `.eml` outbox.
async fn link_from_outbox(t: &TestApp, to: &str, marker: &str) -> String {
    t.drain_jobs().await;
    let mut files: Vec<PathBuf> = std::fs::read_dir(t.data_dir.join("outbox"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "eml"))
        .collect();
    files.sort();
    for f in files.iter().rev() {
        let raw = std::fs::read_to_string(f).unwrap();
        let raw = raw.replace("=\r\n", "").replace("=\n", "").replace("=3D", "=");
        if !raw.contains(&format!("To: {to}")) {
            continue;
        }
        if let Some(i) = raw.find(marker) {
            let token: String = raw[i + marker.len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                .collect();
            return format!("{}{marker}{token}", t.base_url);
        }
    }
    panic!("no email to {to} with {marker} in the outbox");
}

async fn activate(t: &TestApp, key: &str, fingerprint: &str, label: &str) -> Value {
    let (s, v) = t
        .post_json(
            &format!("/api/v1/licenses/{key}/activate"),
            &json!({"device_fingerprint": fingerprint, "label": label}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    v
}

async fn live_devices(t: &TestApp, key: &str) -> i64 {
    t.app
        .db
        .fetch_i64(sql!(
            "SELECT COUNT(*) FROM license_activations a JOIN license_keys l ON l.id = a.license_id WHERE l.license_key = $1 AND a.deactivated_at IS NULL",
            key
        ))
        .await
        .unwrap()
}

/// Signs into the library in the browser the way a buyer does: the form, then the emailed link.
async fn sign_in(b: &Browser, t: &TestApp, email: &str) {
    let c = &b.client;
    c.goto(&t.url("/library")).await.unwrap();
    c.find(Locator::Id("email"))
        .await
        .unwrap()
        .send_keys(email)
        .await
        .unwrap();
    b.submit("#send-link").await;
    c.wait()
        .for_element(Locator::XPath("//h1[text()='Check your email']"))
        .await
        .unwrap();
    let link = link_from_outbox(t, email, "/auth/magic/").await;
    c.goto(&link).await.unwrap();
    // The link opens a page naming the address; only its button signs in.
    b.wait("#sign-in").await;
    assert!(b.text("main").await.contains(email), "the page names who signs in");
    b.shot("library-sign-in-link").await;
    b.submit("#sign-in").await;
    c.wait().for_element(Locator::Css(".purchase")).await.unwrap();
    assert!(c.current_url().await.unwrap().path().ends_with("/library"));
}

#[tokio::test]
async fn buyer_library_devices_subscription_and_review_in_a_real_browser() {
    let Some(b) = Browser::start_with(&[]).await else {
        return;
    };
    for backend in backends().await {
        let t = TestApp::start_demo(backend).await;
        let tag = backend.name();
        let c = &b.client;
        let email = format!("reader-{tag}@example.com");
        let app_order = t.buy_paid("demo-app", &email).await;
        t.buy_paid("demo-pro", &email).await;
        t.buy_paid("demo-ebook", &email).await;
        let key = app_order["items"][0]["license_key"].as_str().unwrap().to_string();
        activate(&t, &key, "fp-studio-imac-0001", "Studio iMac").await;
        activate(&t, &key, "fp-macbook-air-0002", "MacBook Air").await;
        // Someone else's review, so the product page has more than one.
        t.buy_paid("demo-app", "other@example.com").await;
        satchel::reviews::upsert(
            &t.app.db,
            "other@example.com",
            "demo-app",
            &serde_json::from_value(json!({"rating": 5, "title": "Saved me hours", "body": "Batch export alone is worth it.\nWorks offline too.", "display_name": "Mara K."})).unwrap(),
        )
        .await
        .unwrap();

        c.goto(&t.url("/library")).await.unwrap();
        b.shot_full(&format!("library-signin-{tag}")).await;
        sign_in(&b, &t, &email).await;
        assert!(b.text("h1").await.contains("Everything you bought"));
        let page = b.text("main").await;
        assert!(page.contains("Pixel Polish") && page.contains(&key), "{page}");
        assert!(page.contains("Studio iMac") && page.contains("MacBook Air"));
        assert!(page.contains("2 of 3 devices in use"), "{page}");
        b.shot_full(&format!("library-{tag}")).await;

        // Deactivate the iMac: the seat is freed through the licensing code.
        let (imac_id,): (String,) = t
            .app
            .db
            .fetch_one(sql!("SELECT id FROM license_activations WHERE label = 'Studio iMac'"))
            .await
            .unwrap();
        assert_eq!(live_devices(&t, &key).await, 2);
        b.submit(&format!("#deactivate-{imac_id}")).await;
        c.wait().for_element(Locator::Id("notice")).await.unwrap();
        assert!(b.text("#notice").await.contains("Device deactivated"));
        assert_eq!(live_devices(&t, &key).await, 1, "{backend:?}");
        let page = b.text("main").await;
        assert!(!page.contains("Studio iMac") && page.contains("1 of 3 devices in use"));

        // Cancel the subscription, then resume it.
        let (sub_id,): (String,) = t
            .app
            .db
            .fetch_one(sql!(
                "SELECT s.id FROM subscriptions s JOIN orders o ON o.id = s.order_id WHERE o.email = $1",
                &email
            ))
            .await
            .unwrap();
        assert_eq!(b.text(&format!("#sub-status-{sub_id}")).await, "Active");
        b.click(&format!("#cancel-{sub_id}")).await;
        c.wait()
            .for_element(Locator::Id(&format!("resume-{sub_id}")))
            .await
            .unwrap();
        assert_eq!(b.text(&format!("#sub-status-{sub_id}")).await, "Cancels at period end");
        assert!(b
            .text(&format!("#sub-what-{sub_id}"))
            .await
            .contains("You won't be charged again"));
        let cancel: bool = t
            .app
            .db
            .fetch_one::<(bool,)>(sql!(
                "SELECT cancel_at_period_end FROM subscriptions WHERE id = $1",
                &sub_id
            ))
            .await
            .unwrap()
            .0;
        assert!(cancel, "{backend:?}");
        c.execute(
            &format!("document.getElementById('sub-{sub_id}').scrollIntoView()"),
            vec![],
        )
        .await
        .unwrap();
        b.shot_full(&format!("library-subscription-canceled-{tag}")).await;
        b.click(&format!("#resume-{sub_id}")).await;
        c.wait()
            .for_element(Locator::Id(&format!("cancel-{sub_id}")))
            .await
            .unwrap();
        assert_eq!(b.text(&format!("#sub-status-{sub_id}")).await, "Active");

        // Leave a review: 4 stars, a title and text; it shows on the product page.
        let product_id = app_order["items"][0]["product_id"].as_str().unwrap().to_string();
        b.click(&format!("#review-toggle-{product_id}")).await;
        b.click(&format!("label[for='rate-{product_id}-4']")).await;
        c.find(Locator::Id(&format!("title-{product_id}")))
            .await
            .unwrap()
            .send_keys("Does what it says")
            .await
            .unwrap();
        c.find(Locator::Id(&format!("body-{product_id}")))
            .await
            .unwrap()
            .send_keys("Fast and tidy. I'd like more presets.")
            .await
            .unwrap();
        b.shot_full(&format!("library-review-form-{tag}")).await;
        b.submit(&format!("#save-review-{product_id}")).await;
        c.wait().for_element(Locator::Id("notice")).await.unwrap();
        assert!(b.text("#notice").await.contains("review is saved"));
        assert!(b
            .text(&format!("#p-{product_id} .my-review"))
            .await
            .contains("Does what it says"));

        c.goto(&t.url("/p/demo-app")).await.unwrap();
        let reviews = b.text("#reviews").await;
        assert!(
            reviews.contains("Does what it says") && reviews.contains("Saved me hours"),
            "{reviews}"
        );
        assert!(
            reviews.contains("4.5") && reviews.contains("2 verified reviews"),
            "{reviews}"
        );
        assert!(b.text(".buy .rating").await.contains("4.5"));
        b.shot_full(&format!("product-with-reviews-{tag}")).await;
        // The catalog's card carries the rating too.
        c.goto(&t.url("/products")).await.unwrap();
        assert!(b.text("a[href='/p/demo-app'] .rating").await.contains("4.5"));
        b.shot_full(&format!("catalog-with-ratings-{tag}")).await;

        // Phone width.
        c.set_window_size(390, 844).await.unwrap();
        c.goto(&t.url("/library")).await.unwrap();
        b.shot_pages(&format!("library-mobile-{tag}")).await;
        c.goto(&t.url("/p/demo-app")).await.unwrap();
        b.shot_pages(&format!("product-mobile-{tag}")).await;
        c.set_window_size(1280, 900).await.unwrap();

        // Sign out ends the session.
        c.goto(&t.url("/library")).await.unwrap();
        b.click("#sign-out").await;
        c.wait().for_element(Locator::Id("send-link")).await.unwrap();
        c.delete_all_cookies().await.unwrap();
    }
    b.close().await;
}

#[tokio::test]
async fn library_and_affiliate_portal_in_dark_mode_and_the_affiliate_flow() {
    // Blink's preferredColorScheme 0 = dark.
    let Some(b) = Browser::start_with(&["--blink-settings=preferredColorScheme=0"]).await else {
        return;
    };
    let t = TestApp::start_demo_with(satchel::db::Backend::Sqlite, |c| c.affiliates.refund_window_days = 0).await;
    let c = &b.client;
    let seller = t.demo_seller().await;
    let aff = satchel::affiliates::create(
        &t.app.db,
        &seller,
        &satchel::affiliates::NewAffiliate {
            email: "ally@example.com".into(),
            code: Some("ALLY".into()),
            commission_percent: None,
            product_id: None,
        },
    )
    .await
    .unwrap();
    // Clicks and two referred sales; one becomes payable and is paid out.
    for _ in 0..3 {
        t.client.get(t.url("/r/ALLY?to=/p/demo-app")).send().await.unwrap();
    }
    for (slug, email) in [("demo-app", "b1@example.com"), ("demo-templates", "b2@example.com")] {
        let r = t
            .client
            .post(t.url(&format!("/api/v1/products/{slug}/purchase")))
            .header("cookie", "satchel_ref=ALLY")
            .json(&json!({"email": email}))
            .send()
            .await
            .unwrap();
        let order: Value = r.json().await.unwrap();
        t.pay(&order).await;
    }
    satchel::affiliates::release_payable(&t.app.db).await.unwrap();
    satchel::affiliates::mark_paid(&t.app.db, &seller).await.unwrap();
    let buyer = "night@example.com";
    let order = t.buy_paid("demo-app", buyer).await;
    activate(
        &t,
        order["items"][0]["license_key"].as_str().unwrap(),
        "fp-dark-0001",
        "Work laptop",
    )
    .await;
    t.buy_paid("demo-pro", buyer).await;

    // The affiliate signs in with the emailed link.
    c.goto(&t.url("/affiliate")).await.unwrap();
    assert!(c.current_url().await.unwrap().path().ends_with("/affiliate/login"));
    c.find(Locator::Id("email"))
        .await
        .unwrap()
        .send_keys("ally@example.com")
        .await
        .unwrap();
    b.submit("#send-link").await;
    c.wait()
        .for_element(Locator::XPath("//h1[text()='Check your email']"))
        .await
        .unwrap();
    let link = link_from_outbox(&t, "ally@example.com", "/affiliate/auth/").await;
    c.goto(&link).await.unwrap();
    b.submit("#sign-in").await;
    c.wait().for_element(Locator::Css(".program")).await.unwrap();
    let kpi = |name: &'static str| {
        let b = &b;
        async move { b.text(&format!("[data-kpi='{name}']")).await }
    };
    assert_eq!(kpi("Clicks").await, "3");
    assert_eq!(kpi("Sales").await, "2");
    assert_eq!(kpi("Paid").await, "$23.40", "30 % of $49 + $29");
    assert_eq!(kpi("Pending").await, "$0.00");
    assert!(b.text(".aff-code").await.contains("ALLY"));
    assert!(b.text("table.sales").await.contains("Pixel Polish"));
    assert_eq!(
        c.find(Locator::Id(&format!("share-{}", aff.id)))
            .await
            .unwrap()
            .prop("value")
            .await
            .unwrap()
            .unwrap(),
        t.url("/r/ALLY")
    );
    b.shot_full("affiliate-dark").await;
    c.set_window_size(390, 844).await.unwrap();
    b.shot_pages("affiliate-mobile-dark").await;
    c.set_window_size(1280, 900).await.unwrap();
    c.delete_all_cookies().await.unwrap();

    // A new version published after the purchase: the library marks it "Updated".
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
    satchel::catalog::insert_version(&t.app.db, &product.id, "1.1.0", "Faster exports", &[])
        .await
        .unwrap();

    // The buyer's library in dark mode.
    sign_in(&b, &t, buyer).await;
    let updated = b.text(&format!("#p-{} h3", product.id)).await;
    assert!(updated.contains("Updated"), "{updated}");
    assert!(b.text(&format!("#p-{}", product.id)).await.contains("Version 1.1.0"));
    assert_eq!(
        c.find_all(Locator::Css(".badge-new")).await.unwrap().len(),
        1,
        "only the updated product"
    );
    b.shot_full("library-dark").await;
    c.goto(&t.url("/p/demo-app")).await.unwrap();
    c.execute("document.getElementById('reviews').scrollIntoView()", vec![])
        .await
        .unwrap();
    b.shot_full("product-reviews-empty-dark").await;
    b.close().await;
}

#[tokio::test]
async fn affiliate_portal_light_screenshot() {
    let Some(b) = Browser::start_with(&[]).await else {
        return;
    };
    let t = TestApp::start_demo(satchel::db::Backend::Sqlite).await;
    let seller = t.demo_seller().await;
    // The store's logo in the header.
    let logo = "<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 64 64'><rect width='64' height='64' rx='14' fill='#5b4bdb'/><path d='M18 24h28l-3 26H21z' fill='#fff'/><path d='M25 24a7 7 0 0 1 14 0' stroke='#fff' stroke-width='4' fill='none'/></svg>";
    let key = format!("{seller}/branding/logo.svg");
    t.app
        .storage
        .put(
            &key,
            satchel::storage::bytes_stream(logo.as_bytes().to_vec()),
            "image/svg+xml",
        )
        .await
        .unwrap();
    t.app
        .db
        .execute(sql!("UPDATE sellers SET logo_key = $1 WHERE id = $2", &key, &seller))
        .await
        .unwrap();
    satchel::affiliates::create(
        &t.app.db,
        &seller,
        &serde_json::from_value(json!({"email": "sun@example.com", "code": "SUNNY", "commission_percent": 25}))
            .unwrap(),
    )
    .await
    .unwrap();
    for _ in 0..5 {
        t.client.get(t.url("/p/demo-ebook?ref=SUNNY")).send().await.unwrap();
    }
    let r = t
        .client
        .post(t.url("/api/v1/products/demo-ebook/purchase"))
        .header("cookie", "satchel_ref=SUNNY")
        .json(&json!({"email": "r1@example.com"}))
        .send()
        .await
        .unwrap();
    t.pay(&r.json::<Value>().await.unwrap()).await;
    let c = &b.client;
    c.goto(&t.url("/affiliate/login")).await.unwrap();
    c.find(Locator::Id("email"))
        .await
        .unwrap()
        .send_keys("sun@example.com")
        .await
        .unwrap();
    b.submit("#send-link").await;
    c.wait()
        .for_element(Locator::XPath("//h1[text()='Check your email']"))
        .await
        .unwrap();
    let link = link_from_outbox(&t, "sun@example.com", "/affiliate/auth/").await;
    c.goto(&link).await.unwrap();
    b.submit("#sign-in").await;
    c.wait().for_element(Locator::Css(".program")).await.unwrap();
    assert_eq!(b.text("[data-kpi='Clicks']").await, "5");
    assert_eq!(b.text("[data-kpi='Pending']").await, "$4.75", "25 % of $19");
    b.shot_full("affiliate").await;
    let logo_ok = c
        .execute(
            "const i = document.querySelector('.logo-img'); return i.complete && i.naturalWidth > 0",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(logo_ok, Value::Bool(true), "the logo loads under the page's CSP");
    c.goto(&t.url("/affiliate/login")).await.unwrap();
    assert!(
        c.current_url().await.unwrap().path().ends_with("/affiliate"),
        "signed in: straight to the portal"
    );
    c.delete_all_cookies().await.unwrap();
    c.goto(&t.url("/affiliate/login")).await.unwrap();
    b.shot_full("affiliate-signin").await;
    b.close().await;
}
