//! The storefront in a real Chromium, driven over WebDriver (`chromedriver` + fantoccini):
//! a buyer finds a product from the home page, buys it in test mode, downloads the file
//! (bytes checked against the published sha256); keyboard-only checkout; a refused
//! download and an unknown page render the store's HTML error page. Screenshots of every
//! page land in `target/screenshots/` for a human to look at.
//!
//! Needs Debian `chromium` + `chromium-driver`; without them this is a printed skip
//! (a failure under `SATCHEL_TEST_REQUIRE_ALL=1`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::browser::{tab_to, Browser};

use fantoccini::key::Key;
use fantoccini::Locator;
use satchel::db::Exec;
use satchel::testing::{backends, TestApp};
use serde_json::json;
use sha2::{Digest, Sha256};

async fn demo_app(backend: satchel::db::Backend) -> TestApp {
    let t = TestApp::start(backend).await;
    satchel::demo::seed(&t.app).await.unwrap();
    t
}

#[tokio::test]
async fn buyer_finds_buys_and_downloads_in_a_real_browser() {
    let Some(b) = Browser::start().await else { return };
    for backend in backends().await {
        let t = demo_app(backend).await;
        let c = &b.client;
        let tag = format!("{backend:?}").to_lowercase();

        c.goto(&t.url("/")).await.unwrap();
        assert!(b.text("h1").await.len() > 1);
        b.shot(&format!("home-{tag}")).await;

        // Find the product from the home page's featured grid.
        c.find(Locator::Css("a[href='/p/demo-templates']"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        assert!(c.current_url().await.unwrap().path().ends_with("/p/demo-templates"));
        let published_sha = c
            .find(Locator::Css("code.sha"))
            .await
            .unwrap()
            .attr("data-sha256")
            .await
            .unwrap()
            .unwrap();
        b.shot(&format!("product-{tag}")).await;
        c.execute("document.querySelector('table.files').scrollIntoView()", vec![])
            .await
            .unwrap();
        b.shot(&format!("product-files-{tag}")).await;

        c.find(Locator::Id("email"))
            .await
            .unwrap()
            .send_keys("buyer@example.com")
            .await
            .unwrap();
        c.find(Locator::Id("buy-now")).await.unwrap().click().await.unwrap();
        c.wait().for_element(Locator::Id("pay")).await.unwrap();
        assert!(c.current_url().await.unwrap().path().starts_with("/checkout/test/"));
        assert!(b.text(".testmode").await.contains("TEST MODE"));
        b.shot(&format!("checkout-{tag}")).await;

        c.find(Locator::Id("pay")).await.unwrap().click().await.unwrap();
        c.wait().for_element(Locator::Css(".downloads")).await.unwrap();
        assert!(c.current_url().await.unwrap().path().ends_with("/success"));
        assert_eq!(b.text("h1").await, "Thank you!");
        b.shot(&format!("success-{tag}")).await;

        let href = c
            .find(Locator::Css("a[href*='/api/v1/downloads/']"))
            .await
            .unwrap()
            .attr("href")
            .await
            .unwrap()
            .unwrap();
        let follow = reqwest::Client::new();
        let r = follow.get(&href).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let bytes = r.bytes().await.unwrap();
        assert_eq!(
            hex::encode(Sha256::digest(&bytes)),
            published_sha,
            "downloaded bytes match the product page"
        );

        // Catalog search and the 404 page.
        c.goto(&t.url("/products?q=templates")).await.unwrap();
        assert!(c.find(Locator::Css("a[href='/p/demo-templates']")).await.is_ok());
        c.goto(&t.url("/products")).await.unwrap();
        b.shot(&format!("catalog-{tag}")).await;
        c.goto(&t.url("/no/such/page")).await.unwrap();
        assert_eq!(b.text("h1").await, "Page not found");
        // A mobile-width view of the home page (mobile-first layout).
        c.set_window_size(390, 844).await.unwrap();
        c.goto(&t.url("/")).await.unwrap();
        b.shot(&format!("home-mobile-{tag}")).await;
        c.set_window_size(1280, 900).await.unwrap();
        c.goto(&t.url("/no/such/page")).await.unwrap();
        b.shot(&format!("404-{tag}")).await;

        // A refused download: HTML for the browser, JSON for API clients.
        c.goto(&t.url("/api/v1/downloads/not-a-real-token")).await.unwrap();
        assert!(b.text(".status").await.starts_with('4'));
        assert_eq!(b.text("h1").await, "This download link isn't valid");
        b.shot(&format!("download-refused-{tag}")).await;
        let r = t
            .client
            .get(t.url("/api/v1/downloads/not-a-real-token"))
            .send()
            .await
            .unwrap();
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"));
    }
    b.close().await;
}

#[tokio::test]
async fn keyboard_only_checkout() {
    let Some(b) = Browser::start().await else { return };
    let t = demo_app(satchel::db::Backend::Sqlite).await;
    let c = &b.client;
    let enter = String::from(char::from(Key::Enter));
    c.goto(&t.url("/p/demo-ebook")).await.unwrap();
    let email = tab_to(c, "email").await;
    email.send_keys("keys@example.com").await.unwrap();
    tab_to(c, "buy-now").await.send_keys(&enter).await.unwrap();
    c.wait().for_element(Locator::Id("pay")).await.unwrap();
    tab_to(c, "pay").await.send_keys(&enter).await.unwrap();
    c.wait().for_element(Locator::Css(".downloads")).await.unwrap();
    assert_eq!(b.text("h1").await, "Thank you!");
    b.close().await;
}

#[tokio::test]
async fn pages_send_security_headers_and_ref_cookie() {
    // Plain HTTP (no browser needed): the headers every HTML page must carry.
    let t = demo_app(satchel::db::Backend::Sqlite).await;
    let r = t
        .client
        .get(t.url("/p/demo-ebook?ref=ALICE"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers();
    assert_eq!(h["content-security-policy"], satchel::http::pages::CSP);
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["referrer-policy"], "same-origin");
    let cookies: Vec<_> = h
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert!(
        cookies
            .iter()
            .any(|c| c.starts_with("satchel_ref=ALICE;") && c.contains("HttpOnly")),
        "{cookies:?}"
    );
    let csrf = cookies
        .iter()
        .find_map(|c| c.strip_prefix("satchel_csrf="))
        .and_then(|c| c.split(';').next())
        .unwrap()
        .to_string();

    // The buy form refuses a POST without the matching CSRF cookie…
    let r = t
        .client
        .post(t.url("/p/demo-ebook/buy"))
        .form(&[("csrf", csrf.as_str()), ("email", "x@example.com")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // …and accepts it with the cookie, redirecting to the test checkout.
    let r = t
        .client
        .post(t.url("/p/demo-ebook/buy"))
        .header("cookie", format!("satchel_csrf={csrf}"))
        .form(&[("csrf", csrf.as_str()), ("email", "x@example.com")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert!(r.headers()["location"].to_str().unwrap().starts_with("/checkout/test/"));

    // The JSON API keeps JSON errors even for a browser-ish Accept header.
    let r = t
        .client
        .get(t.url("/api/v1/products/nope"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    // A bad form re-renders with the buyer's input.
    let r = t
        .client
        .post(t.url("/p/demo-ebook/buy"))
        .header("cookie", format!("satchel_csrf={csrf}"))
        .form(&[("csrf", csrf.as_str()), ("email", "not-an-email")])
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error());
    let html = r.text().await.unwrap();
    assert!(
        html.contains("value=\"not-an-email\"") && html.contains("role=\"alert\""),
        "{html}"
    );
}

#[tokio::test]
async fn cart_with_two_products_and_a_discount_code() {
    let Some(b) = Browser::start().await else { return };
    let t = demo_app(satchel::db::Backend::Sqlite).await;
    let seller = satchel::catalog::find_product(&t.app.db, "demo-templates")
        .await
        .unwrap()
        .unwrap()
        .seller_id;
    satchel::checkout::create_discount(
        &t.app.db,
        &seller,
        &satchel::checkout::NewDiscount {
            code: "HALF".into(),
            kind: "percent".into(),
            amount: 50,
            currency: None,
            product_id: None,
            max_redemptions: None,
            once_per_customer: false,
            expires_at: None,
        },
    )
    .await
    .unwrap();
    let c = &b.client;
    for slug in ["demo-templates", "demo-app"] {
        c.goto(&t.url(&format!("/p/{slug}"))).await.unwrap();
        c.find(Locator::Id("add-to-cart")).await.unwrap().click().await.unwrap();
        c.wait().for_element(Locator::Id("cart-checkout")).await.unwrap();
    }
    // $29.00 + $49.00
    assert!(
        b.text(".price.big").await.contains("$78.00"),
        "{}",
        b.text(".price.big").await
    );
    c.find(Locator::Id("email"))
        .await
        .unwrap()
        .send_keys("cart@example.com")
        .await
        .unwrap();
    c.find(Locator::Id("discount_code"))
        .await
        .unwrap()
        .send_keys("HALF")
        .await
        .unwrap();
    b.shot("cart").await;
    c.find(Locator::Id("checkout")).await.unwrap().click().await.unwrap();
    c.wait().for_element(Locator::Id("pay")).await.unwrap();
    assert_eq!(b.text("h1").await, "Pay $39.00");
    assert!(b.text(".discount").await.contains("$39.00"));
    b.shot("checkout-cart").await;
    c.find(Locator::Id("pay")).await.unwrap().click().await.unwrap();
    c.wait().for_element(Locator::Css(".downloads")).await.unwrap();
    assert_eq!(b.text("h1").await, "Thank you!");
    let links = c.find_all(Locator::Css("a[href*='/api/v1/downloads/']")).await.unwrap();
    assert_eq!(links.len(), 2);
    // The cart is emptied after checkout.
    c.goto(&t.url("/cart")).await.unwrap();
    assert!(c.find(Locator::Css("a.button[href='/products']")).await.is_ok());
    b.close().await;
}

#[tokio::test]
async fn success_page_refreshes_itself_while_payment_is_pending() {
    for backend in backends().await {
        let t = demo_app(backend).await;
        let r = t
            .client
            .post(t.url("/api/v1/products/demo-ebook/purchase"))
            .json(&json!({"email": "wait@example.com"}))
            .send()
            .await
            .unwrap();
        let order: serde_json::Value = r.json().await.unwrap();
        let url = t.url(&format!(
            "/orders/{}/success?token={}",
            order["order_id"].as_str().unwrap(),
            order["access_token"].as_str().unwrap()
        ));
        let html = t.client.get(&url).send().await.unwrap().text().await.unwrap();
        assert!(
            html.contains("Confirming payment") && html.contains("http-equiv=\"refresh\""),
            "{html}"
        );
    }
}

#[tokio::test]
async fn dark_mode_pages() {
    // Blink's preferredColorScheme 0 = dark: the pages follow prefers-color-scheme.
    let Some(b) = Browser::start_with(&["--blink-settings=preferredColorScheme=0"]).await else {
        return;
    };
    let t = demo_app(satchel::db::Backend::Sqlite).await;
    let c = &b.client;
    c.goto(&t.url("/")).await.unwrap();
    let dark = c
        .execute("return matchMedia('(prefers-color-scheme: dark)').matches", vec![])
        .await
        .unwrap();
    b.shot("home-dark").await;
    c.goto(&t.url("/p/demo-app")).await.unwrap();
    b.shot("product-dark").await;
    assert_eq!(
        dark,
        serde_json::Value::Bool(true),
        "Chromium honoured the dark colour scheme"
    );
    b.close().await;
}

/// Pay what you want: a price under the minimum re-renders the form with the buyer's input and
/// the reason; a fair price goes through test checkout and is what the order charges.
#[tokio::test]
async fn pay_what_you_want_in_a_real_browser() {
    let Some(b) = Browser::start().await else { return };
    let t = demo_app(satchel::db::Backend::Sqlite).await;
    t.app
        .db
        .execute(satchel::sql!(
            "UPDATE products SET pwyw_min = 900 WHERE slug = 'demo-templates'"
        ))
        .await
        .unwrap();
    let c = &b.client;
    c.goto(&t.url("/p/demo-templates")).await.unwrap();
    b.fill("#email", "fair@example.com").await;
    b.fill("#amount", "5").await;
    b.click("#buy-now").await;
    b.wait("p.error").await;
    let error = b.text("p.error").await;
    assert!(error.contains("9"), "the message names the minimum: {error}");
    let kept = |id: &'static str| async move {
        c.find(Locator::Id(id))
            .await
            .unwrap()
            .prop("value")
            .await
            .unwrap()
            .unwrap_or_default()
    };
    assert_eq!(
        kept("email").await,
        "fair@example.com",
        "the form keeps what the buyer typed"
    );
    assert_eq!(kept("amount").await, "5");
    b.shot("pwyw-below-minimum").await;

    b.fill("#amount", "12.50").await;
    b.click("#buy-now").await;
    b.wait("#pay").await;
    assert!(
        b.text("main").await.contains("12.50"),
        "checkout shows the chosen price"
    );
    b.click("#pay").await;
    b.wait(".downloads").await;
    let total = t
        .app
        .db
        .fetch_i64(satchel::sql!(
            "SELECT total FROM orders WHERE email = 'fair@example.com' AND status = 'paid'"
        ))
        .await
        .unwrap();
    assert_eq!(total, 1250, "the order charges the buyer's price");
    b.close().await;
}
