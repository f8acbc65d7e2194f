//! The seller dashboard in a real Chromium (chromedriver + fantoccini), as a seller uses it:
//! sign in, see a storefront sale on the overview's KPIs and SVG chart, refund it (the
//! buyer's download link then refuses), create a product through the form (with a
//! validation error first), publish a new version through the upload form and see the
//! buyer's library say "updated", suspend a license (validation answers SUSPENDED), create a
//! discount that works at checkout, and sign in with the keyboard alone. A last test walks
//! every page in light and dark mode at desktop and phone width and saves screenshots to
//! `target/screenshots/dashboard-*.png`.
//!
//! Needs Debian `chromium` + `chromium-driver`; without them this is a printed skip
//! (a failure under `SATCHEL_TEST_REQUIRE_ALL=1`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::browser::{tab_to, Browser};

use std::time::Duration;

use fantoccini::key::Key;
use fantoccini::{Client, Locator};
use satchel::db::Exec;
use satchel::sql;
use satchel::testing::{backends, TestApp};
use serde_json::{json, Value};

/// Signs the demo seller in through the form (starting from any dashboard URL).
async fn sign_in(b: &Browser, t: &TestApp, start: &str) {
    b.client.goto(&t.url(start)).await.unwrap();
    b.wait("#email").await;
    assert_eq!(b.path().await, "/dashboard/login");
    b.fill("#email", satchel::demo::DEMO_EMAIL).await;
    b.fill("#password", satchel::demo::DEMO_PASSWORD).await;
    b.click("#sign-in").await;
    b.wait("#sign-out").await;
}

async fn bar_values(c: &Client) -> Vec<i64> {
    let v = c
        .execute(
            "return Array.from(document.querySelectorAll('#sales-chart rect.bar')).map(r => [Number(r.dataset.value), r.getBBox().height])",
            vec![],
        )
        .await
        .unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let value = p[0].as_i64().unwrap();
            let height = p[1].as_f64().unwrap();
            if value > 0 {
                assert!(height > 2.0, "a sale has a visible bar ({height}px)");
            }
            value
        })
        .collect()
}

#[tokio::test]
async fn seller_sees_the_sale_on_the_chart_and_refunds_it() {
    let Some(b) = Browser::start().await else { return };
    for backend in backends().await {
        let t = TestApp::start_demo(backend).await;
        let tag = format!("{backend:?}").to_lowercase();
        let c = &b.client;
        // A buyer buys through the storefront in test mode.
        c.goto(&t.url("/p/demo-templates")).await.unwrap();
        b.fill("#email", "buyer@example.com").await;
        b.click("#buy-now").await;
        b.wait("#pay").await;
        b.click("#pay").await;
        b.wait(".downloads").await;
        let download = c
            .find(Locator::Css("a[href*='/api/v1/downloads/']"))
            .await
            .unwrap()
            .attr("href")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            t.client.get(&download).send().await.unwrap().status(),
            302,
            "the link works"
        );
        let (order_id,): (String,) = t
            .app
            .db
            .fetch_one(sql!("SELECT id FROM orders WHERE email = 'buyer@example.com'"))
            .await
            .unwrap();

        // The seller signs in and sees it: KPIs and a non-zero bar today.
        sign_in(&b, &t, "/dashboard").await;
        assert_eq!(b.path().await, "/dashboard");
        assert_eq!(b.text("[data-kpi='net-revenue']").await, "$29.00");
        assert_eq!(b.text("[data-kpi='orders']").await, "1");
        assert_eq!(b.text("[data-kpi='downloads']").await, "1");
        let bars = bar_values(c).await;
        assert_eq!(bars.len(), 30, "30 days");
        assert_eq!(*bars.last().unwrap(), 2900, "today's bar is the sale: {bars:?}");
        assert_eq!(bars.iter().sum::<i64>(), 2900);
        let svg = c
            .find(Locator::Css("#sales-chart"))
            .await
            .unwrap()
            .html(false)
            .await
            .unwrap();
        assert!(
            svg.contains("role=\"img\"") && svg.contains("<title") && svg.contains("$29.00"),
            "{svg}"
        );
        b.shot(&format!("dashboard-flow-overview-{tag}")).await;
        // Another range is a link away.
        b.click("a[href='/dashboard?range=7d']").await;
        b.wait("a[href='/dashboard?range=7d'][aria-current]").await;
        assert_eq!(bar_values(c).await.len(), 7);

        // The order, then a refund with its confirmation step.
        b.click("nav.nav a[href='/dashboard/orders']").await;
        b.wait("#orders-table").await;
        b.click(&format!("a[href='/dashboard/orders/{order_id}']")).await;
        b.wait("#refund-form").await;
        assert_eq!(b.text("#order-status").await.to_lowercase(), "paid");
        // The download above is in the grant's history, folded until opened.
        let gid = t.grant_of(&order_id).await;
        b.click(&format!("#history-{gid} summary")).await;
        b.wait(&format!("#history-{gid} details[open] table.history")).await;
        let history = b.text(&format!("#history-{gid} table.history")).await;
        assert!(
            history.contains("127.0.0.1") && history.contains("127.0.0.0/24"),
            "{history}"
        );
        b.shot(&format!("dashboard-flow-order-history-{tag}")).await;
        let amount = c
            .find(Locator::Id("amount"))
            .await
            .unwrap()
            .prop("value")
            .await
            .unwrap();
        assert_eq!(amount.as_deref(), Some("29.00"));
        b.fill("#reason", "Bought by mistake").await;
        b.click("#review-refund").await;
        b.wait("#refund-confirm").await;
        assert!(b.text("#refund-confirm").await.contains("every download link"));
        assert_eq!(
            satchel::checkout::find_order(&t.app.db, &order_id)
                .await
                .unwrap()
                .unwrap()
                .status,
            "paid",
            "nothing happens before the confirmation"
        );
        b.shot(&format!("dashboard-flow-refund-confirm-{tag}")).await;
        b.submit("#confirm-refund").await;
        b.wait(".notice").await;
        assert_eq!(b.text("#order-status").await.to_lowercase(), "refunded");
        assert!(b.text(".notice").await.contains("Refund recorded"));

        // The buyer's link now refuses.
        let r = t.client.get(&download).send().await.unwrap();
        assert_eq!(r.status(), 403);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "access_revoked");
        c.goto(&t.url("/dashboard")).await.unwrap();
        b.wait("#sales-chart").await;
        assert_eq!(b.text("[data-kpi='refunds']").await, "$29.00");
        assert_eq!(b.text("[data-kpi='net-revenue']").await, "$0.00");
        b.click("#sign-out").await;
        b.wait("#sign-in").await;
    }
    b.close().await;
}

#[tokio::test]
async fn products_form_versions_upload_and_the_buyers_library() {
    let Some(b) = Browser::start().await else { return };
    let t = TestApp::start_demo(satchel::db::Backend::Sqlite).await;
    let c = &b.client;
    let order = t.buy_paid("demo-ebook", "reader@example.com").await;
    // The purchase happened a minute ago (so a version published now is newer).
    t.app
        .db
        .execute(sql!(
            "UPDATE orders SET paid_at = paid_at - 60 WHERE id = $1",
            order["order_id"].as_str().unwrap()
        ))
        .await
        .unwrap();
    sign_in(&b, &t, "/dashboard/products").await;
    assert_eq!(b.path().await, "/dashboard/products");

    // A bad form: field messages, the input kept, nothing created.
    b.click("#new-product").await;
    b.wait("#product-form").await;
    b.fill("#summary", "Pocket-sized notes for field work.").await;
    b.fill("#price", "twelve").await;
    b.click("#save").await;
    b.wait("#form-errors").await;
    assert!(
        b.text("#title-error").await.contains("Enter the title"),
        "{}",
        b.text("#form-errors").await
    );
    assert!(b.text("#price-error").await.contains("number"));
    let kept = c
        .find(Locator::Id("summary"))
        .await
        .unwrap()
        .prop("value")
        .await
        .unwrap();
    assert_eq!(kept.as_deref(), Some("Pocket-sized notes for field work."));
    let invalid = c
        .find(Locator::Id("price"))
        .await
        .unwrap()
        .attr("aria-invalid")
        .await
        .unwrap();
    assert_eq!(invalid.as_deref(), Some("true"));
    b.shot("dashboard-flow-product-errors").await;

    // Fixed: created, then published from the edit page.
    b.fill("#title", "Field Notes, Vol. 1").await;
    b.fill("#price", "12").await;
    b.fill("#description", "# Field notes\n\n- waterproof\n- 48 pages")
        .await;
    b.click("#preview").await;
    b.wait("#description-preview").await;
    assert!(b.text("#description-preview").await.contains("waterproof"));
    b.submit("#save").await;
    b.wait(".notice").await;
    assert_eq!(b.text(".notice").await, "Product created.");
    b.click("#publish").await;
    b.wait("#archive").await;
    let p = satchel::catalog::find_product(&t.app.db, "field-notes-vol-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((p.status.as_str(), p.price), ("published", 1200));
    assert_eq!(
        t.client
            .get(t.url("/p/field-notes-vol-1"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // A new version of the ebook through the upload form (multipart until tus is served).
    let ebook = satchel::catalog::find_product(&t.app.db, "demo-ebook")
        .await
        .unwrap()
        .unwrap();
    c.goto(&t.url(&format!("/dashboard/products/{}", ebook.id)))
        .await
        .unwrap();
    b.click("#new-version").await;
    b.wait("#version-form").await;
    let suggested = c
        .find(Locator::Id("version"))
        .await
        .unwrap()
        .prop("value")
        .await
        .unwrap();
    assert_eq!(suggested.as_deref(), Some("1.0.1"));
    b.fill("#version", "1.1.0").await;
    b.fill("#changelog", "A new chapter on pricing.").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("indie-makers-handbook-1.1.pdf");
    let bytes = b"%PDF-1.4 handbook 1.1 ".repeat(50_000);
    std::fs::write(&file, &bytes).unwrap();
    c.find(Locator::Id("files"))
        .await
        .unwrap()
        .send_keys(file.to_str().unwrap())
        .await
        .unwrap();
    b.shot("dashboard-flow-version-form").await;
    b.submit("#publish-version").await;
    b.wait(".notice").await;
    assert!(b.text(".notice").await.contains("New version published"));
    let ebook = satchel::catalog::find_product(&t.app.db, "demo-ebook")
        .await
        .unwrap()
        .unwrap();
    let (v, files) = satchel::catalog::current_version(&t.app.db, &ebook)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(v.version, "1.1.0");
    use sha2::Digest;
    assert_eq!(files[0].sha256, hex::encode(sha2::Sha256::digest(&bytes)));

    // The buyer signs in to the library by magic link: the purchase says "updated".
    t.post_json("/api/v1/library/login", &json!({"email": "reader@example.com"}))
        .await;
    t.drain_jobs().await;
    let (text,): (String,) = t
        .app
        .db
        .fetch_one(sql!(
            "SELECT body_text FROM email_outbox WHERE kind = 'magic_link' ORDER BY id DESC LIMIT 1"
        ))
        .await
        .unwrap();
    let link = text.split_whitespace().find(|w| w.contains("/auth/magic/")).unwrap();
    c.goto(link).await.unwrap();
    b.submit("#sign-in").await;
    b.wait("main").await;
    assert_eq!(b.path().await, "/library");
    let page = b.text("main").await;
    assert!(
        page.contains("The Indie Maker's Handbook") && page.to_lowercase().contains("updated"),
        "{page}"
    );
    assert!(page.contains("1.1.0"), "{page}");
    b.close().await;
}

#[tokio::test]
async fn license_suspend_and_a_discount_from_the_dashboard() {
    let Some(b) = Browser::start().await else { return };
    let t = TestApp::start_demo(satchel::db::Backend::Sqlite).await;
    let c = &b.client;
    let order = t.buy_paid("demo-app", "licensee@example.com").await;
    let key = order["items"][0]["license_key"].as_str().unwrap().to_string();
    let (s, _) = t
        .post_json(
            &format!("/api/v1/licenses/{key}/activate"),
            &json!({"device_fingerprint": "studio-mac", "label": "Studio Mac"}),
        )
        .await;
    assert_eq!(s, 200);
    sign_in(&b, &t, "/dashboard/licenses").await;
    b.fill("#q", "licensee@").await;
    b.submit("#search").await;
    b.wait("a.mono").await;
    assert!(b.text("main").await.contains(&key));
    c.find(Locator::LinkText(&key)).await.unwrap().click().await.unwrap();
    b.wait("#suspend").await;
    assert!(b.text("main").await.contains("Studio Mac"));
    b.submit("#suspend").await;
    b.wait(".notice").await;
    assert_eq!(b.text("#license-status").await.to_lowercase(), "suspended");
    let (_, v) = t
        .post_json(
            &format!("/api/v1/licenses/{key}/validate"),
            &json!({"device_fingerprint": "studio-mac"}),
        )
        .await;
    assert_eq!(v["code"], "SUSPENDED", "{v}");
    b.submit("#reinstate").await;
    b.wait(".notice").await;
    let (_, v) = t
        .post_json(
            &format!("/api/v1/licenses/{key}/validate"),
            &json!({"device_fingerprint": "studio-mac"}),
        )
        .await;
    assert_eq!(v["code"], "VALID", "{v}");

    // A discount code: a bad amount first, then one that works at checkout.
    b.click("nav.nav a[href='/dashboard/discounts']").await;
    b.wait("#discount-form").await;
    b.fill("#code", "ui25").await;
    b.fill("#amount", "150").await;
    b.click("#create-discount").await;
    b.wait("#amount-error").await;
    assert!(b.text("#amount-error").await.contains("1–100"));
    let kept = c.find(Locator::Id("code")).await.unwrap().prop("value").await.unwrap();
    assert_eq!(kept.as_deref(), Some("ui25"));
    b.fill("#amount", "25").await;
    b.click("#once_per_customer").await;
    b.submit("#create-discount").await;
    b.wait(".notice").await;
    assert!(b.text("#discounts-table").await.contains("UI25"));
    let (s, o) = t
        .post_json(
            "/api/v1/checkout",
            &json!({"email": "saver@example.com", "items": [{"product_id": "demo-ebook"}], "discount_code": "ui25"}),
        )
        .await;
    assert_eq!(s, 201, "{o}");
    let order = t.order(&o).await;
    assert_eq!(order["total"], 1425, "$19.00 − 25%");
    b.close().await;
}

#[tokio::test]
async fn keyboard_only_sign_in() {
    let Some(b) = Browser::start().await else { return };
    let t = TestApp::start_demo(satchel::db::Backend::Sqlite).await;
    let c = &b.client;
    let enter = String::from(char::from(Key::Enter));
    c.goto(&t.url("/dashboard/login")).await.unwrap();
    tab_to(c, "email")
        .await
        .send_keys(satchel::demo::DEMO_EMAIL)
        .await
        .unwrap();
    tab_to(c, "password")
        .await
        .send_keys(satchel::demo::DEMO_PASSWORD)
        .await
        .unwrap();
    tab_to(c, "sign-in").await.send_keys(&enter).await.unwrap();
    b.wait("#sales-chart").await;
    assert_eq!(b.path().await, "/dashboard");
    // The first Tab on a dashboard page reaches "Skip to content", which moves focus to main.
    let tab = String::from(char::from(Key::Tab));
    c.find(Locator::Css("body"))
        .await
        .unwrap()
        .send_keys(&tab)
        .await
        .unwrap();
    let skip = c.active_element().await.unwrap();
    assert_eq!(skip.text().await.unwrap(), "Skip to content");
    skip.send_keys(&enter).await.unwrap();
    let focused = c.active_element().await.unwrap().attr("id").await.unwrap();
    assert_eq!(focused.as_deref(), Some("main"));
    // The next Tab reaches the first control of the page, with a visible focus outline.
    c.active_element().await.unwrap().send_keys(&tab).await.unwrap();
    let style = c
        .execute(
            "const e = document.activeElement; return [e.textContent, getComputedStyle(e).outlineStyle]",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(style[0], "7 days", "{style}");
    assert_eq!(style[1], "solid", "keyboard focus is visible");
    b.close().await;
}

/// A store with a month of history: sales spread over 60 days (so the chart has a period
/// before), a partial and a full refund, activated licenses, downloads, a discount, an
/// affiliate with commission, a draft product, and sent emails.
async fn seed_activity(t: &TestApp) -> Value {
    let seller = t.demo_seller().await;
    satchel::checkout::create_discount(
        &t.app.db,
        &seller,
        &satchel::checkout::NewDiscount {
            code: "LAUNCH20".into(),
            kind: "percent".into(),
            amount: 20,
            currency: None,
            product_id: None,
            max_redemptions: Some(100),
            once_per_customer: true,
            expires_at: Some(satchel::ids::now() + 20 * 86_400),
        },
    )
    .await
    .unwrap();
    satchel::checkout::create_discount(
        &t.app.db,
        &seller,
        &satchel::checkout::NewDiscount {
            code: "FIVEOFF".into(),
            kind: "fixed".into(),
            amount: 500,
            currency: Some("USD".into()),
            product_id: satchel::catalog::find_product(&t.app.db, "demo-app")
                .await
                .unwrap()
                .map(|p| p.id),
            max_redemptions: None,
            once_per_customer: false,
            expires_at: None,
        },
    )
    .await
    .unwrap();
    let aff = satchel::affiliates::create(
        &t.app.db,
        &seller,
        &satchel::affiliates::NewAffiliate {
            email: "maya@creators.example".into(),
            code: Some("MAYA".into()),
            commission_percent: Some(30.0),
            product_id: None,
        },
    )
    .await
    .unwrap();
    for _ in 0..14 {
        satchel::affiliates::record_click(&t.app.db, &aff.code).await.unwrap();
    }
    let buyers = [
        ("demo-ebook", "ada@example.com", 1),
        ("demo-templates", "grace@example.com", 2),
        ("demo-app", "linus@example.com", 3),
        ("demo-ebook", "margaret@example.com", 5),
        ("demo-album", "hedy@example.com", 6),
        ("demo-app", "alan@example.com", 8),
        ("demo-templates", "katherine@example.com", 9),
        ("demo-ebook", "barbara@example.com", 12),
        ("demo-pro", "dennis@example.com", 13),
        ("demo-app", "frances@example.com", 15),
        ("demo-templates", "radia@example.com", 18),
        ("demo-album", "annie@example.com", 21),
        ("demo-ebook", "joan@example.com", 24),
        ("demo-app", "ken@example.com", 27),
        ("demo-free", "guest@example.com", 28),
        ("demo-templates", "sophie@example.com", 33),
        ("demo-ebook", "evelyn@example.com", 38),
        ("demo-app", "john@example.com", 44),
        ("demo-album", "mary@example.com", 51),
        ("demo-ebook", "edith@example.com", 57),
    ];
    // Oldest first, so ids follow time as they do in a real store.
    let mut buyers = buyers.to_vec();
    buyers.sort_by_key(|b| -b.2);
    let mut last = Value::Null;
    for (i, (slug, email, days_ago)) in buyers.iter().enumerate() {
        let body = if i % 4 == 1 {
            json!({"email": email, "affiliate_code": "MAYA"})
        } else {
            json!({"email": email})
        };
        let (s, o) = t.post_json(&format!("/api/v1/products/{slug}/purchase"), &body).await;
        assert_eq!(s, 201, "{o}");
        if o["status"] == "pending" {
            t.pay(&o).await;
        }
        let o = t.order(&o).await;
        let shift = days_ago * 86_400 + (i as i64 * 3_917) % 30_000;
        for q in [
            "UPDATE orders SET paid_at = paid_at - $2, created_at = created_at - $2 WHERE id = $1",
            "UPDATE payments SET created_at = created_at - $2 WHERE order_id = $1",
            "UPDATE license_keys SET created_at = created_at - $2 WHERE order_id = $1",
        ] {
            t.app
                .db
                .execute(
                    satchel::db::Query::new(q)
                        .bind(o["order_id"].as_str().unwrap())
                        .bind(shift),
                )
                .await
                .unwrap();
        }
        if *days_ago < 20 {
            if let Some(url) = o["items"][0]["download_url"].as_str() {
                t.client.get(url).send().await.unwrap();
            }
            if let Some(key) = o["items"][0]["license_key"].as_str() {
                for device in ["studio-mac", "travel-laptop"].iter().take(1 + i % 2) {
                    let (s, _) = t
                        .post_json(
                            &format!("/api/v1/licenses/{key}/activate"),
                            &json!({"device_fingerprint": device, "label": device.replace('-', " ")}),
                        )
                        .await;
                    assert_eq!(s, 200);
                }
            }
        }
        last = o;
    }
    // A full and a partial refund.
    let (full,): (String,) = t
        .app
        .db
        .fetch_one(sql!("SELECT id FROM orders WHERE email = 'margaret@example.com'"))
        .await
        .unwrap();
    satchel::refunds::seller_refund(
        &t.app,
        &seller,
        &full,
        &satchel::refunds::RefundRequest {
            amount: None,
            reason: "Bought twice".into(),
            items: Vec::new(),
        },
    )
    .await
    .unwrap();
    let (partial,): (String,) = t
        .app
        .db
        .fetch_one(sql!("SELECT id FROM orders WHERE email = 'alan@example.com'"))
        .await
        .unwrap();
    satchel::refunds::seller_refund(
        &t.app,
        &seller,
        &partial,
        &satchel::refunds::RefundRequest {
            amount: Some(1500),
            reason: "Goodwill discount".into(),
            items: Vec::new(),
        },
    )
    .await
    .unwrap();
    // One commission became payable.
    t.app
        .db
        .execute(sql!(
            "UPDATE commissions SET status = 'payable' WHERE id = (SELECT MIN(id) FROM commissions WHERE status = 'pending')"
        ))
        .await
        .unwrap();
    // A draft.
    let tx = t.app.db.begin().await.unwrap();
    satchel::catalog::create_product(
        &tx,
        &seller,
        satchel::catalog::NewProduct {
            title: "Lightroom Presets: Nordic Winter".into(),
            slug: None,
            summary: "Twelve cool-toned presets.".into(),
            description: String::new(),
            price: 1500,
            currency: "USD".into(),
            kind: "one_time".into(),
            billing_interval: None,
            pwyw_min: Some(500),
            category: "presets".into(),
            tags: vec!["photo".into()],
            license_policy: satchel::catalog::LicensePolicy::None,
            download_policy: satchel::catalog::DownloadPolicy::default(),
            watermark_policy: "none".into(),
            status: "draft".into(),
            featured: false,
            bundle_products: Vec::new(),
        },
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    t.drain_jobs().await;
    last
}

/// A small PNG logo (a rounded indigo tile with a lighter diagonal), encoded by hand:
/// stored (uncompressed) deflate blocks inside a zlib stream, CRCs from `crc32fast`.
fn logo_png(size: u32) -> Vec<u8> {
    let mut raw = Vec::new();
    for y in 0..size {
        raw.push(0); // filter: none
        for x in 0..size {
            let r = size as f32 * 0.22;
            let (cx, cy) = (x.min(size - 1 - x) as f32, y.min(size - 1 - y) as f32);
            let outside = cx < r && cy < r && (r - cx).hypot(r - cy) > r;
            let t = (x + y) as f32 / (2.0 * size as f32);
            let band = ((x as i64 - y as i64).abs() as f32) < size as f32 * 0.18;
            let (red, green, blue) = if band {
                (167, 139, 250)
            } else {
                (79 + (t * 30.0) as u8, 70, 229)
            };
            raw.extend_from_slice(&[red, green, blue, if outside { 0 } else { 255 }]);
        }
    }
    let mut z = vec![0x78, 0x01];
    let chunks: Vec<&[u8]> = raw.chunks(65_535).collect();
    for (i, c) in chunks.iter().enumerate() {
        z.push(u8::from(i == chunks.len() - 1));
        let len = u16::try_from(c.len()).unwrap();
        z.extend_from_slice(&len.to_le_bytes());
        z.extend_from_slice(&(!len).to_le_bytes());
        z.extend_from_slice(c);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for byte in &raw {
        a = (a + u32::from(*byte)) % 65_521;
        b = (b + a) % 65_521;
    }
    z.extend_from_slice(&((b << 16) | a).to_be_bytes());
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        png.extend_from_slice(&u32::try_from(data.len()).unwrap().to_be_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(kind);
        crc.update(data);
        png.extend_from_slice(kind);
        png.extend_from_slice(data);
        png.extend_from_slice(&crc.finalize().to_be_bytes());
    };
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&size.to_be_bytes());
    ihdr.extend_from_slice(&size.to_be_bytes());
    ihdr.extend_from_slice(&[8, 6, 0, 0, 0]);
    chunk(b"IHDR", &ihdr);
    chunk(b"IDAT", &z);
    chunk(b"IEND", &[]);
    png
}

/// Makes the window as tall as the page (plus the browser's own chrome) for a full-page shot.
async fn full_page_shot(b: &Browser, name: &str, width: u32) {
    let h = b
        .client
        .execute("return document.documentElement.scrollHeight", vec![])
        .await
        .unwrap()
        .as_u64()
        .unwrap_or(900);
    let inner = b
        .client
        .execute("return window.outerHeight - window.innerHeight", vec![])
        .await
        .unwrap()
        .as_u64()
        .unwrap_or(0);
    let h = u32::try_from(h + inner).unwrap_or(2000).clamp(600, 4000);
    b.client.set_window_size(width, h).await.unwrap();
    b.shot(name).await;
}

#[tokio::test]
async fn dashboard_screenshots_light_and_dark_desktop_and_phone() {
    let t = TestApp::start_demo(satchel::db::Backend::Sqlite).await;
    seed_activity(&t).await;
    let seller = t.demo_seller().await;
    let (order_id,): (String,) = t
        .app
        .db
        .fetch_one(sql!("SELECT id FROM orders WHERE email = 'alan@example.com'"))
        .await
        .unwrap();
    let (license_id,): (String,) = t
        .app
        .db
        .fetch_one(sql!(
            "SELECT l.id FROM license_keys l JOIN orders o ON o.id = l.order_id WHERE o.email = 'linus@example.com'"
        ))
        .await
        .unwrap();
    let (email_id,): (String,) = t
        .app
        .db
        .fetch_one(sql!(
            "SELECT id FROM email_outbox WHERE kind = 'receipt' ORDER BY id DESC LIMIT 1"
        ))
        .await
        .unwrap();
    let app_id = satchel::catalog::find_product(&t.app.db, "demo-app")
        .await
        .unwrap()
        .unwrap()
        .id;
    let pages = [
        ("overview", "/dashboard".to_string()),
        ("products", "/dashboard/products".to_string()),
        ("product-new", "/dashboard/products/new".to_string()),
        ("product-edit", format!("/dashboard/products/{app_id}")),
        ("version-new", format!("/dashboard/products/{app_id}/versions/new")),
        ("orders", "/dashboard/orders".to_string()),
        ("order", format!("/dashboard/orders/{order_id}")),
        ("licenses", "/dashboard/licenses".to_string()),
        ("license", format!("/dashboard/licenses/{license_id}")),
        ("discounts", "/dashboard/discounts".to_string()),
        ("affiliates", "/dashboard/affiliates".to_string()),
        ("emails", "/dashboard/emails".to_string()),
        ("email", format!("/dashboard/emails/{email_id}")),
        ("settings", "/dashboard/settings".to_string()),
        ("admin", "/dashboard/admin/sellers".to_string()),
        ("not-found", "/dashboard/orders/ord_NOPE".to_string()),
    ];
    let _ = seller;
    for (theme, args) in [
        ("light", vec![]),
        ("dark", vec!["--blink-settings=preferredColorScheme=0"]),
    ] {
        let Some(b) = Browser::start_with(&args).await else {
            return;
        };
        let c = &b.client;
        c.goto(&t.url("/dashboard/login")).await.unwrap();
        let dark = c
            .execute("return matchMedia('(prefers-color-scheme: dark)').matches", vec![])
            .await
            .unwrap();
        assert_eq!(dark, Value::Bool(theme == "dark"));
        for (width, device) in [(1280, "desktop"), (390, "phone")] {
            c.set_window_size(width, 900).await.unwrap();
            c.goto(&t.url("/dashboard/login")).await.unwrap();
            b.wait("#email").await;
            full_page_shot(&b, &format!("dashboard-login-{theme}-{device}"), width).await;
        }
        c.set_window_size(1280, 900).await.unwrap();
        sign_in(&b, &t, "/dashboard").await;
        if theme == "light" {
            // The logo, uploaded through the settings form; the store's header shows it.
            let dir = tempfile::tempdir().unwrap();
            let logo = dir.path().join("logo.png");
            std::fs::write(&logo, logo_png(96)).unwrap();
            c.goto(&t.url("/dashboard/settings")).await.unwrap();
            c.find(Locator::Id("logo"))
                .await
                .unwrap()
                .send_keys(logo.to_str().unwrap())
                .await
                .unwrap();
            b.click("#upload-logo").await;
            b.wait("#current-logo").await;
            let loaded = c
                .execute("return document.getElementById('current-logo').naturalWidth", vec![])
                .await
                .unwrap();
            assert_eq!(loaded, json!(96), "the uploaded logo is served and decodes");
        }
        c.goto(&t.url("/")).await.unwrap();
        b.wait(".logo-img").await;
        b.shot(&format!("dashboard-store-header-{theme}")).await;
        for (width, device) in [(1280, "desktop"), (390, "phone")] {
            for (name, path) in &pages {
                c.set_window_size(width, 900).await.unwrap();
                c.goto(&t.url(path)).await.unwrap();
                b.wait("main").await;
                full_page_shot(&b, &format!("dashboard-{name}-{theme}-{device}"), width).await;
            }
        }
        b.close().await;
    }
}

/// The browser uploader's tus path: a 20 MiB file whose first 8 MiB an earlier, interrupted
/// attempt already sent. The page finds that upload (localStorage), asks the server where
/// it stopped (HEAD), sends only the rest in chunks (PATCH) and publishes the version with
/// JSON naming the upload. The published bytes are the whole file and no second upload
/// was created.
#[tokio::test]
async fn tus_uploader_resumes_an_interrupted_upload_and_publishes() {
    use base64::Engine;
    use sha2::Digest;
    let Some(b) = Browser::start().await else { return };
    let t = TestApp::start_demo(satchel::db::Backend::Sqlite).await;
    let c = &b.client;
    let order = t.buy_paid("demo-ebook", "reader@example.com").await;
    t.app
        .db
        .execute(sql!(
            "UPDATE orders SET paid_at = paid_at - 60 WHERE id = $1",
            order["order_id"].as_str().unwrap()
        ))
        .await
        .unwrap();
    let ebook = satchel::catalog::find_product(&t.app.db, "demo-ebook")
        .await
        .unwrap()
        .unwrap();
    sign_in(&b, &t, &format!("/dashboard/products/{}/versions/new", ebook.id)).await;
    b.wait("#version-form").await;
    let session = c.get_named_cookie("satchel_session").await.unwrap().value().to_string();
    let csrf = c
        .find(Locator::Id("version-form"))
        .await
        .unwrap()
        .attr("data-csrf")
        .await
        .unwrap()
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("handbook-2.0.pdf");
    let bytes: Vec<u8> = (0..20 * 1024 * 1024_u32)
        .map(|i| (i.wrapping_mul(31) % 251) as u8)
        .collect();
    std::fs::write(&file, &bytes).unwrap();

    // The interrupted attempt: created, then 8 MiB sent.
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let r = t
        .client
        .post(t.url("/api/v1/uploads"))
        .header("cookie", format!("satchel_session={session}"))
        .header("x-csrf-token", &csrf)
        .header("tus-resumable", "1.0.0")
        .header("upload-length", bytes.len().to_string())
        .header(
            "upload-metadata",
            format!(
                "filename {},filetype {}",
                b64("handbook-2.0.pdf"),
                b64("application/pdf")
            ),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let location = url::Url::parse(&t.url("/"))
        .unwrap()
        .join(r.headers()["location"].to_str().unwrap())
        .unwrap()
        .to_string();
    let r = t
        .client
        .patch(&location)
        .header("cookie", format!("satchel_session={session}"))
        .header("x-csrf-token", &csrf)
        .header("tus-resumable", "1.0.0")
        .header("upload-offset", "0")
        .header("content-type", "application/offset+octet-stream")
        .body(bytes[..8 * 1024 * 1024].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);

    b.fill("#version", "2.0.0").await;
    b.fill("#changelog", "Rewritten from scratch.").await;
    c.find(Locator::Id("files"))
        .await
        .unwrap()
        .send_keys(file.to_str().unwrap())
        .await
        .unwrap();
    // What the page remembered from the interrupted attempt.
    c.execute(
        "const f = document.getElementById('files').files[0]; const form = document.getElementById('version-form');
         localStorage.setItem('satchel-tus:' + form.dataset.productId + ':' + f.name + ':' + f.size + ':' + f.lastModified, arguments[0]);",
        vec![json!(location)],
    )
    .await
    .unwrap();
    b.click("#publish-version").await;
    b.client
        .wait()
        .at_most(Duration::from_secs(120))
        .for_element(Locator::Css(".notice"))
        .await
        .unwrap();
    assert!(b.text(".notice").await.contains("New version published"));
    let ebook = satchel::catalog::find_product(&t.app.db, "demo-ebook")
        .await
        .unwrap()
        .unwrap();
    let (v, files) = satchel::catalog::current_version(&t.app.db, &ebook)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(v.version, "2.0.0");
    assert_eq!(files[0].size, i64::try_from(bytes.len()).unwrap());
    assert_eq!(files[0].sha256, hex::encode(sha2::Sha256::digest(&bytes)));
    let uploads = t.app.db.fetch_i64(sql!("SELECT COUNT(*) FROM uploads")).await.unwrap();
    assert_eq!(uploads, 1, "the interrupted upload was resumed, not started again");
    b.close().await;
}
