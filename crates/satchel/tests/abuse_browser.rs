//! Abuse handling in a real Chromium (SQLite; the HTTP tests in tests/abuse.rs cover both
//! backends): the buyer opens the emailed re-confirmation link and presses the button; the
//! seller clears a flag from the Abuse page and resets a download from the order page.
//! Screenshots land in `target/screenshots/abuse-*.png`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::browser::Browser;
use satchel::db::Exec;
use satchel::sql;
use satchel::testing::TestApp;

async fn status_of(t: &TestApp, gid: &str) -> String {
    let (s,): (String,) = t
        .app
        .db
        .fetch_one(sql!("SELECT status FROM download_grants WHERE id = $1", gid))
        .await
        .unwrap();
    s
}

async fn wait_status(t: &TestApp, gid: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while status_of(t, gid).await != want {
        assert!(Instant::now() < deadline, "grant {gid} never became {want}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Buys demo-templates and downloads it from `networks` distinct /24s (`confirmed`: as a
/// buyer who already re-confirmed today, so only suspension applies).
async fn spread(t: &TestApp, email: &str, networks: u8, confirmed: bool) -> (String, String, String) {
    let o = t.buy_paid("demo-templates", email).await;
    let order_id = o["order_id"].as_str().unwrap().to_string();
    let url = o["items"][0]["download_url"].as_str().unwrap().to_string();
    let gid = t.grant_of(&order_id).await;
    if confirmed {
        t.app
            .db
            .execute(sql!(
                "UPDATE download_grants SET reconfirmed_at = $2 WHERE id = $1",
                &gid,
                satchel::ids::now()
            ))
            .await
            .unwrap();
    }
    for n in 0..networks {
        let r = t
            .client
            .get(&url)
            .header("x-forwarded-for", format!("198.51.{n}.20"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 302);
    }
    (order_id, gid, url)
}

#[tokio::test]
async fn buyer_reconfirms_and_seller_clears_and_resets_in_a_browser() {
    let t = TestApp::start_demo_with(satchel::db::Backend::Sqlite, |c| {
        c.server.trust_forwarded_for = true;
        c.abuse.suspend_prefixes = 4;
    })
    .await;
    let Some(b) = Browser::start().await else { return };
    let c = &b.client;

    // The buyer: three networks → the emailed link → a page with a button → confirmed.
    let (_, gid, _) = spread(&t, "reader@example.com", 3, false).await;
    wait_status(&t, &gid, "reconfirm").await;
    let (body,): (String,) = t
        .app
        .db
        .fetch_one(sql!(
            "SELECT body_text FROM email_outbox WHERE kind = 'download_reconfirm'"
        ))
        .await
        .unwrap();
    let link = body
        .split_whitespace()
        .find(|w| w.contains("/downloads/reconfirm/"))
        .unwrap()
        .to_string();
    c.goto(&link).await.unwrap();
    b.wait("#confirm").await;
    b.shot("abuse-reconfirm-page").await;
    assert_eq!(
        status_of(&t, &gid).await,
        "reconfirm",
        "opening the page consumes nothing"
    );
    b.click("#confirm").await;
    b.wait("#download").await;
    b.shot("abuse-reconfirm-done").await;
    assert_eq!(status_of(&t, &gid).await, "active");

    // The seller: a suspended download on the Abuse page, cleared with its button.
    let (order_id, gid2, _) = spread(&t, "sharer@example.com", 4, true).await;
    wait_status(&t, &gid2, "suspended").await;
    c.goto(&t.url("/dashboard/abuse")).await.unwrap();
    b.wait("#email").await;
    b.fill("#email", satchel::demo::DEMO_EMAIL).await;
    b.fill("#password", satchel::demo::DEMO_PASSWORD).await;
    b.click("#sign-in").await;
    b.wait("#flags").await;
    assert!(b.text("#flags").await.contains("sharer@example.com"));
    b.shot_full("abuse-flags-page").await;
    let (flag_id,): (String,) = t
        .app
        .db
        .fetch_one(sql!("SELECT id FROM abuse_flags WHERE subject_id = $1", &gid2))
        .await
        .unwrap();
    b.click(&format!("#clear-{flag_id}")).await;
    b.wait("#no-flags").await;
    assert!(b.text(".notice").await.contains("Flag cleared"));
    assert_eq!(status_of(&t, &gid2).await, "active");

    // The order page: the download's row with its actions; Reset restores the allowance.
    c.goto(&t.url(&format!("/dashboard/orders/{order_id}"))).await.unwrap();
    b.wait(&format!("#grant-{gid2}")).await;
    assert!(b.text(&format!("#grant-{gid2}")).await.contains("1 of 5"));
    b.shot_full("abuse-order-downloads").await;
    b.submit(&format!("#reset-{gid2}")).await;
    b.wait(".notice").await;
    assert!(b.text(&format!("#grant-{gid2}")).await.contains("5 of 5"));
    b.close().await;
}
