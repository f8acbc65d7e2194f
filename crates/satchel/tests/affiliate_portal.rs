//! The affiliate portal over HTTP, on SQLite and PostgreSQL: magic-link sign-in (the same
//! answer for strangers; links are purpose-bound), an affiliate's click → purchase → pending
//! → payable → paid (and a refund's reversal) seen in `GET /api/v1/affiliate/me`, the sales
//! list and the `/affiliate` page — and two affiliates never seeing each other's data.

#![allow(clippy::unwrap_used)]

use satchel::affiliates::{self, NewAffiliate};
use satchel::db::Exec;
use satchel::sql;
use satchel::testing::{backends, TestApp};
use serde_json::{json, Value};

fn new_aff(email: &str, code: &str, product_id: Option<String>) -> NewAffiliate {
    NewAffiliate {
        email: email.into(),
        code: Some(code.into()),
        commission_percent: None,
        product_id,
    }
}

async fn get(t: &TestApp, path: &str, cookie: Option<&str>) -> (u16, Value) {
    let mut req = t.client.get(t.url(path));
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    let r = req.send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn buy_with_ref(t: &TestApp, slug: &str, email: &str, code: &str) -> Value {
    let r = t
        .client
        .post(t.url(&format!("/api/v1/products/{slug}/purchase")))
        .header("cookie", format!("satchel_ref={code}"))
        .json(&json!({ "email": email }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let order: Value = r.json().await.unwrap();
    t.pay(&order).await;
    order
}

#[tokio::test]
async fn affiliates_sign_in_and_see_only_their_own_earnings() {
    for backend in backends().await {
        let t = TestApp::start_demo_with(backend, |c| c.affiliates.refund_window_days = 0).await;
        let seller = t.demo_seller().await;
        let ebook = satchel::catalog::find_product(&t.app.db, "demo-ebook")
            .await
            .unwrap()
            .unwrap();
        let ally = affiliates::create(&t.app.db, &seller, &new_aff("ally@example.com", "ALLY", None))
            .await
            .unwrap();
        let bob = affiliates::create(
            &t.app.db,
            &seller,
            &new_aff("bob@example.com", "BOB", Some(ebook.id.clone())),
        )
        .await
        .unwrap();

        // Signing in: the same answer for an affiliate and a stranger; only the affiliate gets mail.
        let (s1, a1) = t
            .post_json("/api/v1/affiliate/login", &json!({"email": "ALLY@example.com"}))
            .await;
        let (s2, a2) = t
            .post_json("/api/v1/affiliate/login", &json!({"email": "nobody@example.com"}))
            .await;
        assert_eq!((s1, s2), (202, 202));
        assert_eq!(a1, a2);
        assert_eq!(
            t.post_json("/api/v1/affiliate/login", &json!({"email": "nope"}))
                .await
                .0,
            422
        );
        let sent = t
            .app
            .db
            .fetch_i64(sql!(
                "SELECT COUNT(*) FROM email_outbox WHERE kind = 'magic_link_affiliate'"
            ))
            .await
            .unwrap();
        assert_eq!(sent, 1, "{backend:?}");
        // Links are bound to their purpose: an affiliate link does not open the library and vice versa.
        let (body,): (String,) = t
            .app
            .db
            .fetch_one(sql!(
                "SELECT body_text FROM email_outbox WHERE kind = 'magic_link_affiliate'"
            ))
            .await
            .unwrap();
        let link = body
            .split_whitespace()
            .find(|w| w.contains("/affiliate/auth/"))
            .unwrap();
        let token = link.rsplit('/').next().unwrap();
        let r = t
            .client
            .get(t.url(&format!("/auth/magic/{token}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "an affiliate link is not a library link");
        // Opening the link (a mail scanner, say) spends nothing; the page's button signs in.
        for _ in 0..2 {
            let page = t.client.get(link).send().await.unwrap();
            assert_eq!(page.status(), 200);
            assert!(page.text().await.unwrap().contains("ally@example.com"));
        }
        let r = t.client.post(link).send().await.unwrap();
        assert_eq!(r.status(), 303);
        assert_eq!(r.headers()["location"], "/affiliate");
        assert_eq!(t.client.post(link).send().await.unwrap().status(), 401, "single use");
        assert_eq!(
            t.client.get(link).send().await.unwrap().status(),
            401,
            "used: no button either"
        );

        // Clicks (the /r/ link and ?ref= on a page), then referred purchases.
        t.client.get(t.url("/r/ALLY?to=/p/demo-app")).send().await.unwrap();
        t.client
            .get(t.url("/p/demo-templates?ref=ALLY"))
            .header("accept", "text/html")
            .send()
            .await
            .unwrap();
        t.client.get(t.url("/r/BOB")).send().await.unwrap();
        let o1 = buy_with_ref(&t, "demo-app", "b1@example.com", "ALLY").await; // $49 → 14.70
        buy_with_ref(&t, "demo-templates", "b2@example.com", "ALLY").await; // $29 → 8.70
        buy_with_ref(&t, "demo-ebook", "b3@example.com", "BOB").await; // $19 → 5.70
        buy_with_ref(&t, "demo-app", "b4@example.com", "BOB").await; // out of Bob's scope: nothing

        let ally_s = t.affiliate_session("ally@example.com").await;
        let bob_s = t.affiliate_session("bob@example.com").await;
        let (s, me) = get(&t, "/api/v1/affiliate/me", Some(&ally_s)).await;
        assert_eq!(s, 200, "{me}");
        assert_eq!(me["email"], "ally@example.com");
        let items = me["items"].as_array().unwrap();
        assert_eq!(items.len(), 1, "{backend:?}: {me}");
        let p = &items[0];
        assert_eq!(
            (p["code"].as_str(), p["clicks"].as_i64(), p["sales"].as_i64()),
            (Some("ALLY"), Some(2), Some(2))
        );
        assert_eq!(p["earnings"], json!({"pending": 2340, "payable": 0, "paid": 0}));
        assert_eq!(p["commission_percent"], 30.0);
        assert_eq!(p["share_url"], t.url("/r/ALLY"));
        assert_eq!(p["currency"], "USD");
        let today = p["daily"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(
            (
                today["clicks"].as_i64(),
                today["sales"].as_i64(),
                today["earned"].as_i64()
            ),
            (Some(2), Some(2), Some(2340))
        );
        let text = me.to_string();
        assert!(
            !text.contains("BOB") && !text.contains("b1@example.com") && !text.contains("b3@example.com"),
            "{text}"
        );

        let (s, bob_me) = get(&t, "/api/v1/affiliate/me", Some(&bob_s)).await;
        assert_eq!(s, 200);
        let bp = &bob_me["items"][0];
        assert_eq!(
            (bp["code"].as_str(), bp["clicks"].as_i64(), bp["sales"].as_i64()),
            (Some("BOB"), Some(1), Some(1))
        );
        assert_eq!(bp["earnings"]["pending"], 570);
        assert_eq!(bp["scope"]["product_id"], ebook.id.as_str());
        assert_eq!(bp["product_links"][0]["url"], t.url("/p/demo-ebook?ref=BOB"));
        assert!(!bob_me.to_string().contains("ALLY"));

        // Sales: their own program only; another's is not found.
        let (s, sales) = get(
            &t,
            &format!("/api/v1/affiliate/programs/{}/sales", ally.id),
            Some(&ally_s),
        )
        .await;
        assert_eq!(s, 200);
        let rows = sales["items"].as_array().unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (
                rows[1]["products"][0].as_str(),
                rows[1]["sale_amount"].as_i64(),
                rows[1]["commission"].as_i64()
            ),
            (Some("Pixel Polish (desktop app)"), Some(4900), Some(1470))
        );
        assert_eq!(rows[1]["status"], "pending");
        assert!(!sales.to_string().contains("b1@example.com"), "no buyer details");
        assert!(
            !sales.to_string().contains(o1["order_id"].as_str().unwrap()),
            "no order ids"
        );
        let (s, _) = get(
            &t,
            &format!("/api/v1/affiliate/programs/{}/sales", bob.id),
            Some(&ally_s),
        )
        .await;
        assert_eq!(s, 404, "{backend:?}: another affiliate's sales");
        let (s, p1) = get(
            &t,
            &format!("/api/v1/affiliate/programs/{}/sales?limit=1", ally.id),
            Some(&ally_s),
        )
        .await;
        assert_eq!((s, p1["items"].as_array().unwrap().len()), (200, 1));
        let cursor = p1["next_cursor"].as_str().unwrap();
        let (_, p2) = get(
            &t,
            &format!("/api/v1/affiliate/programs/{}/sales?limit=1&cursor={cursor}", ally.id),
            Some(&ally_s),
        )
        .await;
        assert_eq!(p2["items"][0]["sale_amount"], 4900);
        assert_eq!(
            get(
                &t,
                &format!("/api/v1/affiliate/programs/{}/sales?limit=0", ally.id),
                Some(&ally_s)
            )
            .await
            .0,
            400
        );

        // Pending → payable (the scheduled job after the refund window) → paid, all visible.
        t.drain_jobs().await;
        satchel::scheduler::tick(&t.app).await.unwrap();
        t.drain_jobs().await;
        let (_, me) = get(&t, "/api/v1/affiliate/me", Some(&ally_s)).await;
        assert_eq!(
            me["items"][0]["earnings"],
            json!({"pending": 0, "payable": 2340, "paid": 0}),
            "{backend:?}"
        );
        let html = t
            .client
            .get(t.url("/affiliate"))
            .header("cookie", &ally_s)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            html.contains("$23.40") && html.contains(">ALLY<") && html.contains("Payable"),
            "{html}"
        );
        assert!(!html.contains("BOB") && !html.contains("b1@example.com"));
        // A refund reverses Bob's (payable, unpaid) commission: his sale shows as reversed.
        satchel::refunds::seller_refund(
            &t.app,
            &seller,
            &t.app
                .db
                .fetch_one::<(String,)>(sql!(
                    "SELECT order_id FROM commissions WHERE affiliate_id = $1",
                    &bob.id
                ))
                .await
                .unwrap()
                .0,
            &satchel::refunds::RefundRequest {
                amount: None,
                reason: String::new(),
                items: vec![],
            },
        )
        .await
        .unwrap();
        let (_, bob_me) = get(&t, "/api/v1/affiliate/me", Some(&bob_s)).await;
        assert_eq!(bob_me["items"][0]["sales"], 0, "{bob_me}");
        assert_eq!(
            bob_me["items"][0]["earnings"],
            json!({"pending": 0, "payable": 0, "paid": 0})
        );
        let (_, bob_sales) = get(
            &t,
            &format!("/api/v1/affiliate/programs/{}/sales", bob.id),
            Some(&bob_s),
        )
        .await;
        assert_eq!(bob_sales["items"][0]["status"], "reversed");
        assert_eq!(bob_sales["items"][0]["net_commission"], 0);

        affiliates::mark_paid(&t.app.db, &seller).await.unwrap();
        let (_, me) = get(&t, "/api/v1/affiliate/me", Some(&ally_s)).await;
        assert_eq!(
            me["items"][0]["earnings"],
            json!({"pending": 0, "payable": 0, "paid": 2340})
        );

        // Not signed in, and a signed-in buyer who is no affiliate.
        assert_eq!(get(&t, "/api/v1/affiliate/me", None).await.0, 401);
        let r = t.client.get(t.url("/affiliate")).send().await.unwrap();
        assert_eq!(
            (r.status().as_u16(), r.headers()["location"].to_str().unwrap()),
            (303, "/affiliate/login")
        );
        let (buyer_cookie, _) = t.library_session("b1@example.com").await;
        let (s, v) = get(&t, "/api/v1/affiliate/me", Some(&buyer_cookie)).await;
        assert_eq!((s, v["error"]["code"].as_str()), (403, Some("not_an_affiliate")));

        // Sign out needs the page's CSRF token, then ends the session.
        let html = t
            .client
            .get(t.url("/affiliate"))
            .header("cookie", &ally_s)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let csrf = html
            .split("name=\"csrf\" value=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .to_string();
        let r = t
            .client
            .post(t.url("/affiliate/logout"))
            .header("cookie", &ally_s)
            .form(&[("csrf", "wrong")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
        assert_eq!(get(&t, "/api/v1/affiliate/me", Some(&ally_s)).await.0, 200);
        let r = t
            .client
            .post(t.url("/affiliate/logout"))
            .header("cookie", &ally_s)
            .form(&[("csrf", csrf.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303);
        assert_eq!(
            get(&t, "/api/v1/affiliate/me", Some(&ally_s)).await.0,
            401,
            "{backend:?}"
        );
    }
}

#[tokio::test]
async fn the_sign_in_pages_answer_the_same_for_everyone() {
    for backend in backends().await {
        let t = TestApp::start_demo(backend).await;
        let seller = t.demo_seller().await;
        affiliates::create(&t.app.db, &seller, &new_aff("cara@example.com", "CARA", None))
            .await
            .unwrap();
        let page = |email: &'static str| {
            let t = &t;
            async move {
                let r = t
                    .client
                    .post(t.url("/affiliate/login"))
                    .form(&[("email", email)])
                    .send()
                    .await
                    .unwrap();
                (r.status().as_u16(), r.text().await.unwrap())
            }
        };
        let (s1, h1) = page("cara@example.com").await;
        let (s2, h2) = page("stranger@example.com").await;
        assert_eq!((s1, s2), (200, 200));
        assert!(h1.contains("Check your email") && h2.contains("Check your email"));
        let (s3, h3) = page("not an email").await;
        assert_eq!(s3, 422, "{backend:?}");
        assert!(h3.contains("role=\"alert\"") && h3.contains("value=\"not an email\""));
        let sent = t
            .app
            .db
            .fetch_i64(sql!(
                "SELECT COUNT(*) FROM email_outbox WHERE kind = 'magic_link_affiliate'"
            ))
            .await
            .unwrap();
        assert_eq!(sent, 1);
        let (s, _) = get(&t, "/affiliate/login", None).await;
        assert_eq!(s, 200);
    }
}

#[tokio::test]
async fn affiliate_sign_in_is_rate_limited_per_network() {
    let t = TestApp::start_demo_with(satchel::db::Backend::Sqlite, |c| {
        c.server.rate_limits = true;
        c.server.trust_forwarded_for = true;
    })
    .await;
    let ask = |from: &'static str| {
        let t = &t;
        async move {
            t.client
                .post(t.url("/api/v1/affiliate/login"))
                .header("x-forwarded-for", from)
                .json(&json!({"email": "someone@example.com"}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    for _ in 0..10 {
        assert_eq!(ask("203.0.113.5").await, 202);
    }
    assert_eq!(ask("203.0.113.77").await, 429, "the same /24 shares the bucket");
    let r = t
        .client
        .post(t.url("/affiliate/login"))
        .header("x-forwarded-for", "203.0.113.8")
        .form(&[("email", "someone@example.com")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429, "the form shares it too");
    assert_eq!(ask("198.51.100.7").await, 202, "another network is unaffected");
}
